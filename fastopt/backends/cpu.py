"""The `cpu` backend: fused Numba kernels (fastopt.kernels.cpu), one parallel call per param group and dtype."""

from __future__ import annotations

import importlib
import operator

import numpy as np

from fastopt.backends.numpy import NumpyArrays
from fastopt.specs import SPECS

_import_error: str | None = None
try:  # Numba can fail at import (no writable cache directory, llvmlite mismatch): fall back, say why.
    from fastopt.kernels.cpu._common import chunk_table

    for _family in {spec.kernel for spec in SPECS.values()}:
        importlib.import_module(f"fastopt.kernels.cpu.{_family}")  # compiles nothing yet; checks cache locators
except Exception as error:  # noqa: BLE001 - any import failure means "not available", with its message
    _import_error = f"numba kernels could not be loaded: {type(error).__name__}: {error}"


def _addresses(arrays):
    return [a.__array_interface__["data"][0] for a in arrays]


class _NumbaPlan:
    """The kernel, its chunk table, and the address table: row 0 params, row 1 grads, then the spec's slots.

    The plan holds every array whose address is in the table, so none is freed while the kernel may touch it.
    """

    def __init__(self, spec, params, slots, flags):
        self.kernel = importlib.import_module(f"fastopt.kernels.cpu.{spec.kernel}").update
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
        self.kernel(self.chunks, self.table, *map(self.cast, scalars), *self.flags)


class CpuBackend(NumpyArrays):
    name = "cpu"

    def unavailable_reason(self):
        return _import_error

    def prepare(self, spec, params, slots, flags):
        return _NumbaPlan(spec, params, slots, flags)


BACKEND = CpuBackend()
