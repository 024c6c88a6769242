"""What every Numba kernel shares: compile options, and the chunk table that spreads many tensors over threads.

Each kernel family is two functions: a serial loop over one span of 1-D arrays (compiled with
error_model='numpy' so LLVM vectorises it), and a `prange` over the rows of a chunk table, (tensor, start, stop),
that hands spans to threads. So one call updates a whole param group however its elements are split into tensors,
and a big tensor is shared out between threads.

The tensors reach the kernel as a table of addresses, `table[role, tensor]` (role 0: params, 1: grads, 2...: the
spec's slots in order), which the backend fills once and refreshes only the grads' row. Measured here: Numba typed
lists cost ~3.5 us per array to build each step and ~0.4 s of uncached compilation in a new process; the table
costs ~1 us per grad array and nothing to compile, and 1024 tensors of 1k run as fast as one of 1M.
"""

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic

CHUNK = 1 << 15

# No fastmath: these loops are memory-bound, and measured here (16M float32 Adam, 2 cores) the kernels ran at the
# same speed with and without it (1.20x torch's fused Adam either way). Without it, LLVM neither contracts a*b+c nor
# reorders, so every kernel performs exactly the reference's operations and matches it bit for bit.
# Numba's cache is keyed on each kernel file, not on this one: after editing options here, delete
# kernels/cpu/__pycache__/*.nbi and *.nbc, or the old machine code is loaded.
SPAN_OPTIONS = {"cache": True, "error_model": "numpy", "nogil": True}
DRIVER_OPTIONS = {"parallel": True, "cache": True, "nogil": True}


@intrinsic
def _pointer(typingctx, address, like):
    """The int64 `address` as a pointer to values of the type of the scalar `like`."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return types.CPointer(like)(address, like), codegen


@njit(inline="always", cache=True)
def span(address, start, stop, like):
    """Elements [start, stop) of the 1-D array at `address`, whose dtype is that of the scalar `like`."""
    return carray(_pointer(address, like), stop)[start:]


@njit(inline="always", **SPAN_OPTIONS)
def direction(g, param, grad_sign, weight_decay, decay):
    """maximize flips the gradient, then L2 weight decay adds weight_decay * param (torch's order)."""
    d = g * grad_sign
    if decay:
        d = d + weight_decay * param
    return d


def chunk_table(sizes, chunk=CHUNK):
    """int64 rows (tensor, start, stop) covering every element of every tensor once; empty tensors get no row."""
    rows = [(t, start, min(start + chunk, n)) for t, n in enumerate(sizes) for start in range(0, n, chunk)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)
