"""The `cpu` backend: fused Numba kernels (fastopt.kernels.cpu), one parallel call per param group and dtype."""

from __future__ import annotations

import importlib
import operator

from fastopt.backends.numpy import NumpyArrays

from fastopt.specs import SPECS

_import_error: str | None = None
try:  # Numba can fail at import (no writable cache directory, llvmlite mismatch): fall back, say why.
    from numba.typed import List

    from fastopt.kernels.cpu._common import chunk_table

    for _family in {spec.kernel for spec in SPECS.values()}:
        importlib.import_module(f"fastopt.kernels.cpu.{_family}")  # compiles nothing yet; checks cache locators
except Exception as error:  # noqa: BLE001 - any import failure means "not available", with its message
    _import_error = f"numba kernels could not be loaded: {type(error).__name__}: {error}"


def _typed_list(arrays):
    return List([a.reshape(-1) for a in arrays])


class _NumbaPlan:
    def __init__(self, spec, params, slots, flags):
        self.kernel = importlib.import_module(f"fastopt.kernels.cpu.{spec.kernel}").update
        self.cast = params[0].dtype.type  # scalars in the array's dtype keep the loop in float32 for float32
        self.chunks = chunk_table([p.size for p in params])
        self.params = _typed_list(params)
        # An inactive slot is never touched by the kernel: any list of the right type stands in for it.
        self.slots = [self.params if slots[s.name] is None else _typed_list(slots[s.name]) for s in spec.slots]
        self.flags = flags
        self._grad_objects: list = []
        self._grads = None

    def run(self, grads, scalars):
        # Building a typed list costs ~1 us per array: keep it while the caller passes the same grad arrays.
        if len(grads) != len(self._grad_objects) or not all(map(operator.is_, grads, self._grad_objects)):
            self._grads = _typed_list(grads)
            self._grad_objects = list(grads)
        self.kernel(self.chunks, self.params, self._grads, *self.slots, *map(self.cast, scalars), *self.flags)


class CpuBackend(NumpyArrays):
    name = "cpu"

    def unavailable_reason(self):
        return _import_error

    def prepare(self, spec, params, slots, flags):
        return _NumbaPlan(spec, params, slots, flags)


BACKEND = CpuBackend()
