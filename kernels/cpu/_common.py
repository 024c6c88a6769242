"""What every Numba kernel shares: compile options, and the chunk table that spreads many tensors over threads.

Each kernel family is one function, `element` (the update of one element); fastopt.codegen generates around it
a serial loop over one span of 1-D arrays (compiled with error_model='numpy' so LLVM vectorises it), and a `prange`
over the rows of a chunk table, (tensor, start, stop), that hands spans to threads. So one call updates a whole
param group however its elements are split into tensors, and a big tensor is shared out between threads.

The tensors reach the kernel as a table of addresses, `table[role, tensor]` (role 0: params, 1: grads, 2...: the
spec's slots in order), which the backend fills once and refreshes only the grads' row. Measured here: Numba typed
lists cost ~3.5 us per array to build each step and ~0.4 s of uncached compilation in a new process; the table
costs ~1 us per grad array and nothing to compile, and 1024 tensors of 1k run as fast as one of 1M.
"""

import warnings
from types import FunctionType
from typing import NamedTuple

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic

CHUNK = 1 << 15


def _disk_cache_usable() -> bool:
    """Whether Numba finds a writable cache directory for this package (NUMBA_CACHE_DIR, __pycache__ beside the
    kernels, or the user's cache dir). Without one, `cache=True` raises at decoration time; compiling without the
    disk cache (slower first step in each process) beats falling back to the NumPy reference."""
    try:
        njit(cache=True)(_probe)
    except RuntimeError as error:  # "cannot cache function ...: no locator available for file ..."
        warnings.warn(f"fastopt: no writable Numba cache directory ({error}); the cpu kernels compile in every "
                      "process without the disk cache. Set NUMBA_CACHE_DIR to a writable directory to keep them.",
                      RuntimeWarning, stacklevel=2)
        return False
    return True


def _probe():
    return 0


CACHE = _disk_cache_usable()

# No fastmath: these loops are memory-bound, and measured here (16M float32 Adam, 2 cores) the kernels ran at the
# same speed with and without it (1.20x torch's fused Adam either way). Without it, LLVM neither contracts a*b+c nor
# reorders, so every kernel performs exactly the reference's operations and matches it bit for bit.
# Numba's cache is keyed on each kernel file, not on this one: after editing options here, delete
# kernels/cpu/__pycache__/*.nbi and *.nbc, or the old machine code is loaded.
SPAN_OPTIONS = {"cache": CACHE, "error_model": "numpy", "nogil": True}
DRIVER_OPTIONS = {"parallel": True, "cache": CACHE, "nogil": True}
SERIAL_DRIVER_OPTIONS = {"cache": CACHE, "error_model": "numpy", "nogil": True}
# A family's `element` (the update of one element), inlined into the loop fastopt.codegen generates around it.
ELEMENT_OPTIONS = {"inline": "always", **SPAN_OPTIONS}


class Driver(NamedTuple):
    """One driver compiled twice: `serial` runs in the calling thread (prange is range), `parallel` shares the chunk
    table between Numba's threads. The backend picks one per plan by the bytes a step moves."""
    serial: object
    parallel: object


def driver(function) -> Driver:
    """Compile `function` (a loop over a chunk table) as a serial and a parallel kernel.

    Numba keys its disk cache on the function's qualified name and first line, not on the compile options, so the
    two variants are compiled from copies that differ in name (update_serial / update_parallel): each keeps its own
    cache entry."""
    def variant(suffix, options):
        copy = FunctionType(function.__code__, function.__globals__, function.__name__ + suffix,
                            function.__defaults__, function.__closure__)
        copy.__qualname__ = function.__qualname__ + suffix
        copy.__module__ = function.__module__
        copy.__doc__ = function.__doc__
        return njit(**options)(copy)

    return Driver(serial=variant("_serial", SERIAL_DRIVER_OPTIONS), parallel=variant("_parallel", DRIVER_OPTIONS))


@intrinsic
def _pointer(typingctx, address, like):
    """The int64 `address` as a pointer to values of the type of the scalar `like`."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return types.CPointer(like)(address, like), codegen


@njit(inline="always", cache=CACHE)
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


@njit(inline="always", **SPAN_OPTIONS)
def decayed_direction(g, param, grad_sign, weight_decay, decay_factor, decoupled):
    """The Adam family's weight decay (fastopt.reference._decayed_direction): (param, direction). Decoupled (AdamW)
    shrinks the param by decay_factor and leaves the gradient alone; coupled adds weight_decay * param to it."""
    if decoupled and weight_decay != 0:
        param = param * decay_factor
    return param, direction(g, param, grad_sign, weight_decay, weight_decay != 0 and not decoupled)


@njit(inline="always", **SPAN_OPTIONS)
def lerp(start, end, weight):
    """torch.lerp as its CPU kernel evaluates it, less the fused multiply-add (fastopt.reference._lerp): both formulas,
    then a select on the weight (a branch there stops LLVM vectorising the generated loop)."""
    near_start = start + weight * (end - start)
    near_end = end - (end - start) * (type(start)(1) - weight)
    return near_start if abs(weight) < 0.5 else near_end


def chunk_table(sizes, chunk=CHUNK):
    """int64 rows (tensor, start, stop) covering every element of every tensor once; empty tensors get no row."""
    rows = [(t, start, min(start + chunk, n)) for t, n in enumerate(sizes) for start in range(0, n, chunk)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)
