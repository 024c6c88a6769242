"""The `cpu` backend: fused Numba kernels (fastopt.kernels.cpu), one call per param group and dtype.

A step that moves fewer than PARALLEL_MIN_BYTES runs serially in the calling thread; a larger one is shared between
Numba's threads (see fastopt.threads for how they wait afterwards). The choice is made once, when the plan is built.
"""

from __future__ import annotations

import operator

import numpy as np

from fastopt import codegen, reference
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
    from fastopt.kernels.cpu import _reduce
    from fastopt.kernels.cpu._common import CACHE, chunk_table
    threads.start()

    @numba.njit(cache=CACHE)
    def _address(array):
        """The address of an array's data: ~0.2 us through a compiled call, ~1 us through __array_interface__ (read
        for every fresh grad array, every step). One compiled variant per dtype and ndim, cached on disk."""
        return array.ctypes.data
except Exception as error:  # noqa: BLE001 - any import failure means "not available", with its message
    _import_error = f"numba kernels could not be loaded: {type(error).__name__}: {error}"


def _addresses(arrays):
    try:
        return [_address(a) for a in arrays]
    except (TypeError, NotImplementedError, numba.core.errors.NumbaError):  # a type Numba does not take
        return [a.__array_interface__["data"][0] for a in arrays]


class _NumbaPlan:
    """The kernel, its chunk table, and the address table: row 0 params, row 1 grads, then the spec's slots.

    The plan holds every array whose address is in the table, so none is freed while the kernel may touch it.
    """

    def __init__(self, spec, params, slots, flags):
        self.spec = spec
        self.active = tuple(slots[s.name] is not None for s in spec.slots)
        # Generated around the family's `element`, for this set of active slots.
        driver = codegen.numba_driver(spec.kernel, self.active)
        arrays = 3 + 2 * sum(slots[s.name] is not None for s in spec.slots)  # p, g read, p written; slots both
        self.bytes_per_step = arrays * sum(p.nbytes for p in params)
        # With one thread (NUMBA_NUM_THREADS=1, or set_num_threads(1) in this thread) a parallel region only costs.
        self.parallel = self.bytes_per_step >= PARALLEL_MIN_BYTES and numba.get_num_threads() > 1
        self.driver = driver
        self.kernel = driver.parallel if self.parallel else driver.serial
        self.lock = threads.KERNEL_LOCK if self.parallel else None
        self.cast = params[0].dtype.type  # scalars in the array's dtype keep the loop in float32 for float32
        self.chunks = chunk_table([p.size for p in params])
        self.chunk_tensor = self.chunks[:, 0].tolist()
        self.ntensors = len(params)
        self.partials = np.empty(len(self.chunks), dtype=np.float64)   # scratch of the reductions, allocated once
        self.arrays = [params, *(slots[s.name] for s in spec.slots)]
        self.table = np.zeros((2 + len(spec.slots), len(params)), dtype=np.int64)
        self.table[0] = _addresses(params)
        for row, slot in enumerate(spec.slots, start=2):
            # An inactive slot is never touched by the kernel: the params' addresses stand in for it.
            self.table[row] = self.table[0] if slots[slot.name] is None else _addresses(slots[slot.name])
        self.flags = flags
        self._grads: list = []
        if spec.reductions:   # kernel contract v2: scratch of the per-tensor reductions, allocated once
            self.reduced = np.empty((len(self.chunks), len(spec.reductions)), dtype=np.float64)
            self.lanes = np.empty((len(self.chunks), len(spec.reductions), codegen.REDUCE_BLOCK), dtype=np.float64)
            self.tensor_values = np.empty((len(params), len(spec.tensor_scalar_names)), dtype=params[0].dtype)
            self.dtype = params[0].dtype

    def _set_grads(self, grads):
        # Refresh the grads' row only when the caller passes other arrays than last step.
        if len(grads) != len(self._grads) or not all(map(operator.is_, grads, self._grads)):
            self.table[1] = _addresses(grads)
            self._grads = list(grads)

    def run(self, grads, scalars, grad_scale=None, grad_factor=None):
        """One fused step; `grad_scale` (AMP) divides and `grad_factor` (clipping) multiplies each gradient element
        inside the update, the gradients themselves left as they are."""
        self._set_grads(grads)
        kernel = self.kernel
        if grad_scale is not None or grad_factor is not None:
            driver = codegen.numba_driver(self.spec.kernel, self.active, grad_scale is not None,
                                          grad_factor is not None)
            kernel = driver.parallel if self.parallel else driver.serial
        cast = self.cast
        args = (self.chunks, self.table, *map(cast, scalars), *self.flags,
                cast(1.0 if grad_scale is None else grad_scale), cast(1.0 if grad_factor is None else grad_factor))
        if self.spec.reductions:
            self._tensor_scalars(args, scalars, grad_scale is not None, grad_factor is not None)
            args = (*args, self.tensor_values)
        if self.lock is None:
            kernel(*args)
        else:
            with self.lock:
                kernel(*args)

    def _tensor_scalars(self, args, scalars, unscale, clip):
        """Kernel contract v2: the per-tensor reductions in one pass over the group (partials per chunk, combined
        per tensor in chunk order: fastopt.reference.reduce_tensor's order), then each tensor's scalars."""
        reducer = codegen.numba_reducer(self.spec.kernel, self.active, unscale, clip)
        kernel = reducer.parallel if self.parallel else reducer.serial
        if self.lock is None:
            kernel(*args, self.lanes, self.reduced)
        else:
            with self.lock:
                kernel(*args, self.lanes, self.reduced)
        ops = [r.op for r in self.spec.reductions]
        per = [[reference.reduction_start(op) for op in ops] for _ in range(self.ntensors)]
        for c, t in enumerate(self.chunk_tensor):   # each tensor's chunks in order (reference.reduce_tensor)
            row, values = per[t], self.reduced[c]
            for r, op in enumerate(ops):
                row[r] = reference.combine(op, row[r], float(values[r]))
        for t in range(self.ntensors):
            self.tensor_values[t] = self.spec.tensor_scalars(scalars, tuple(per[t]), self.dtype)

    def reduce_grads(self, grads, op: str, power: float = 2.0, grad_scale=None) -> list:
        """Per tensor, the reduction `op` (fastopt.reference.REDUCTIONS) of the gradients as the update sees them
        (divided by grad_scale when given), in fastopt.reference's order: bit for bit the reference's value."""
        self._set_grads(grads)
        out = self.partials
        kernel = _reduce.partials.parallel if self.parallel else _reduce.partials.serial
        cast = self.cast
        args = (self.chunks, self.table, 1, reference.REDUCTIONS[op], float(power), grad_scale is not None,
                cast(1.0 if grad_scale is None else grad_scale), cast(0.0), out)
        if self.lock is None:
            kernel(*args)
        else:
            with self.lock:
                kernel(*args)
        values = [reference.reduction_start(op)] * self.ntensors
        for c, t in enumerate(self.chunk_tensor):   # each tensor's chunks in order (fastopt.reference.reduce_tensor)
            values[t] = reference.combine(op, values[t], float(out[c]))
        return values


def reduce_arrays(arrays, op: str, power: float = 2.0) -> list:
    """Per array, the reduction `op` (fastopt.reference.REDUCTIONS): one multi-tensor pass per dtype through the
    reduction kernels (float32, float64), the reference for other dtypes; bit for bit the reference's values."""
    values: list = [None] * len(arrays)
    for dtype, indices in _by_dtype(arrays).items():
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            for i in indices:
                values[i] = reference.reduce_tensor(arrays[i], op, power)
            continue
        chunks = chunk_table([arrays[i].size for i in indices])
        table = np.array([_addresses([arrays[i] for i in indices])], dtype=np.int64).reshape(1, -1)
        out = np.empty(len(chunks), dtype=np.float64)
        big = 2 * sum(arrays[i].nbytes for i in indices) >= PARALLEL_MIN_BYTES and numba.get_num_threads() > 1
        kernel = _reduce.partials.parallel if big else _reduce.partials.serial
        args = (chunks, table, 0, reference.REDUCTIONS[op], float(power), False, dtype.type(1), dtype.type(0), out)
        if big:
            with threads.KERNEL_LOCK:
                kernel(*args)
        else:
            kernel(*args)
        per = [reference.reduction_start(op)] * len(indices)
        for c, t in enumerate(chunks[:, 0].tolist()):
            per[t] = reference.combine(op, per[t], float(out[c]))
        for k, i in enumerate(indices):
            values[i] = per[k]
    return values


def _by_dtype(arrays) -> dict:
    groups: dict = {}
    for i, a in enumerate(arrays):
        groups.setdefault(np.dtype(a.dtype), []).append(i)
    return groups


class CpuBackend(NumpyArrays):
    name = "cpu"

    def unavailable_reason(self):
        return _import_error

    def prepare(self, spec, params, slots, flags):
        if any(s.shape is not None for s in spec.slots):   # shaped state: the family's kernel module brings its plan
            import importlib

            module = importlib.import_module(f"fastopt.kernels.cpu.{spec.kernel}")
            return module.Plan(spec, params, slots, flags, _addresses, PARALLEL_MIN_BYTES)
        return _NumbaPlan(spec, params, slots, flags)


BACKEND = CpuBackend()
