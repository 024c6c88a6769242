"""What every Numba kernel shares: compile options, and the chunk table that spreads many tensors over threads.

Each kernel family is two functions: a serial loop over one span of 1-D arrays (compiled with
error_model='numpy' so LLVM vectorises it), and a `prange` over the rows of a chunk table, (tensor, start, stop),
that hands spans to threads. So one call updates a whole param group however its elements are split into tensors,
and a big tensor is shared out between threads. Measured here: the span-function form runs at the speed of a flat
prange over one array; indexing the typed lists inside the prange loop itself ran at half that speed.
"""

import numpy as np
from numba import njit

CHUNK = 1 << 15

# No fastmath: these loops are memory-bound, and measured here (16M float32 Adam, 2 cores) the kernels ran at the
# same speed with and without it (1.20x torch's fused Adam either way). Without it, LLVM neither contracts a*b+c nor
# reorders, so every kernel performs exactly the reference's operations and matches it bit for bit.
# Numba's cache is keyed on each kernel file, not on this one: after editing options here, delete
# kernels/cpu/__pycache__/*.nbi and *.nbc, or the old machine code is loaded.
SPAN_OPTIONS = dict(cache=True, error_model="numpy", nogil=True)
DRIVER_OPTIONS = dict(parallel=True, cache=True, nogil=True)


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
