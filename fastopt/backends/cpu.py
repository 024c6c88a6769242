"""The `cpu` backend: fused Numba kernels (fastopt.kernels.cpu), one call per param group and dtype.

A step that moves fewer than PARALLEL_MIN_BYTES runs serially in the calling thread; a larger one is shared between
Numba's threads (see fastopt.threads for how they wait afterwards). The choice is made once, when the plan is built.
"""

from __future__ import annotations

import operator

import numpy as np

from fastopt import codegen
from fastopt.backends.numpy import NumpyArrays

# Bytes a step moves (every read and write of params, grads and state) below which it runs serially: waking a
# second thread costs more than it saves. Measured on 2 cores (Adam and SGD, float32 and float64, inside a training
# loop and alone, benchmarks/cpu_threads.py): see docs/benchmarks.md for the figures.
PARALLEL_MIN_BYTES = 16 << 20

_import_error: str | None = None
try:  # Numba can fail at import (llvmlite mismatch, ...): fall back, say why.
    import numba

    if numba.config.DISABLE_JIT:
        raise ImportError("NUMBA_DISABLE_JIT is set, so Numba compiles nothing")
    from fastopt import threads
    from fastopt.kernels.cpu._common import chunk_table
    threads.start()
except Exception as error:  # noqa: BLE001 - any import failure means "not available", with its message
    _import_error = f"numba kernels could not be loaded: {type(error).__name__}: {error}"


def _addresses(arrays):
    return [a.__array_interface__["data"][0] for a in arrays]


class _NumbaPlan:
    """The kernel, its chunk table, and the address table: row 0 params, row 1 grads, then the spec's slots.

    The plan holds every array whose address is in the table, so none is freed while the kernel may touch it.
    """

    def __init__(self, spec, params, slots, flags):
        # Generated around the family's `element`, for this set of active slots.
        driver = codegen.numba_driver(spec.kernel, tuple(slots[s.name] is not None for s in spec.slots))
        arrays = 3 + 2 * sum(slots[s.name] is not None for s in spec.slots)  # p, g read, p written; slots both
        self.bytes_per_step = arrays * sum(p.nbytes for p in params)
        # With one thread (NUMBA_NUM_THREADS=1, or set_num_threads(1) in this thread) a parallel region only costs.
        self.parallel = self.bytes_per_step >= PARALLEL_MIN_BYTES and numba.get_num_threads() > 1
        self.driver = driver
        self.kernel = driver.parallel if self.parallel else driver.serial
        self.lock = threads.KERNEL_LOCK if self.parallel else None
        self.cast = params[0].dtype.type  # scalars in the array's dtype keep the loop in float32 for float32
        self.chunks = chunk_table([p.size for p in params])
        self.arrays = [params, *(slots[s.name] for s in spec.slots)]
        self.table = np.zeros((2 + len(spec.slots), len(params)), dtype=np.int64)
        self.table[0] = _addresses(params)
        for row, slot in enumerate(spec.slots, start=2):
            # An inactive slot is never touched by the kernel: the params' addresses stand in for it.
            self.table[row] = self.table[0] if slots[slot.name] is None else _addresses(slots[slot.name])
        self.flags = flags
        self._grads: list = []

    def run(self, grads, scalars):
        # Refresh the grads' row only when the caller passes other arrays than last step.
        if len(grads) != len(self._grads) or not all(map(operator.is_, grads, self._grads)):
            self.table[1] = _addresses(grads)
            self._grads = list(grads)
        if self.lock is None:
            self.kernel(self.chunks, self.table, *map(self.cast, scalars), *self.flags)
        else:
            with self.lock:
                self.kernel(self.chunks, self.table, *map(self.cast, scalars), *self.flags)


class CpuBackend(NumpyArrays):
    name = "cpu"

    def unavailable_reason(self):
        return _import_error

    def prepare(self, spec, params, slots, flags):
        return _NumbaPlan(spec, params, slots, flags)


BACKEND = CpuBackend()
