"""The `numpy` backend: runs `fastopt.reference` tensor by tensor. The oracle, and the fallback without Numba."""

from __future__ import annotations

import numpy as np

from fastopt import reference

SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))


class NumpyArrays:
    """Array handling shared by the two NumPy backends (numpy and cpu)."""

    def owns(self, array) -> bool:
        return isinstance(array, np.ndarray)

    def as_array(self, array):
        # Kernels and the reference see plain ndarrays: a view of an np.matrix (where `*` is a matrix product), a
        # memmap or any other subclass, over the same memory.
        return array if type(array) is np.ndarray else array.view(np.ndarray)

    def state_dtype(self, param_dtype):
        if param_dtype not in SUPPORTED:
            raise TypeError(f"the {self.name} backend updates float32 and float64 params, got {param_dtype}")
        return param_dtype

    def full_like(self, param, value, dtype, size=None):
        return np.full(param.shape if size is None else size, value, dtype=dtype)

    def to_numpy(self, array):
        return np.array(array, copy=True)

    def copy_into(self, target, source):
        np.copyto(target, source)


class _ReferencePlan:
    def __init__(self, spec, params, slots, flags):
        reference.function(spec.kernel)   # fail here, at prepare, if the family has no reference function
        self.spec = spec
        self.params = params
        self.slots = [slots[s.name] for s in spec.slots]
        self.flags = flags

    def run(self, grads, scalars, grad_scale=None, grad_factor=None):
        with np.errstate(all="ignore"):  # non-finite gradients propagate silently, as in the fused kernels
            reference.run(self.spec, self.params, grads, self.slots, scalars, self.flags, grad_scale, grad_factor)

    def reduce_grads(self, grads, op: str, power: float = 2.0, grad_scale=None) -> list:
        with np.errstate(all="ignore"):
            return [reference.reduce_tensor(reference.unscaled(g, grad_scale), op, power) for g in grads]


class NumpyBackend(NumpyArrays):
    name = "numpy"

    def unavailable_reason(self):
        return None

    def prepare(self, spec, params, slots, flags):
        return _ReferencePlan(spec, params, slots, flags)


BACKEND = NumpyBackend()
