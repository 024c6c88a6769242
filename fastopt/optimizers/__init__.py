"""One module per kernel family added since the kernel contract v2 (docs/adding-an-optimizer.md).

Each module `<family>.py` holds, for its optimizers: the declaration(s), registered with `fastopt.specs.register`;
the NumPy reference function `reference(param, grad, *slots, *scalars, *flags)`; and the test and benchmark record(s),
registered with `fastopt.records.register_record`. fastopt.specs imports them all, sorted by name, when it loads.
"""
