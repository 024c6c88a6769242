"""The contract every backend keeps.

The functional layer validates everything first, then asks a backend for a `Plan` once per set of tensors (one param
group, one dtype, one step count) and runs it every step:

    plan = backend.prepare(spec, params, slots, flags)  # once: tables, chunking, kernel lookup, compile if needed
    plan.run(grads, scalars)                             # every step: one fused pass, nothing allocated
    plan.run(grads, scalars, unscale_by, clip_coef)      # the same, the update seeing (g / unscale_by) * clip_coef
    plan.reduce_grads(grads, op, power, unscale_by)      # per tensor, a reduction of the (unscaled) gradients

Reductions (`fastopt.reference.REDUCTIONS`: sumsq, sum, maxabs, nonfinite, sumpow, minabs, nonzero) are in float64,
deterministic run to run; numpy and cpu follow the order `fastopt.reference.reduce_chunk` documents, bit for bit.

`params` are C-contiguous arrays (the backend's own array type, in their own shapes) of one dtype; `slots` maps
every slot of `spec.slots` to a list of arrays shaped like the params, or to None for an inactive slot; `grads`
are validated, C-contiguous and shaped like the params, and are often the very same objects step after step (a
plan may cache what it builds from them by identity); `flags` is `spec.flags(hyper)`; `scalars`
is `spec.scalars(hyper, step)` as Python floats (the backend casts them to the compute dtype): the layers above pass
hyperparameters through `OptimizerSpec.normalize`, so a Fraction or NumPy scalar lr arrives as a float.

Arrays reach a backend through its own `as_array`: the NumPy backends see plain ndarray views (never an np.matrix,
where `*` is a matrix product, nor a memmap), so the reference's arithmetic is elementwise whatever the user passed.
State views sit at their param's offset modulo 16 bytes (`functional.state_arrays`), so vector paths stay usable.
A plan holds every array whose address it records; the layers above rebuild plans (never copy them) when params
change, and after a copy or unpickling of an optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Plan(Protocol):
    def run(self, grads: Sequence, scalars: tuple, grad_scale=None, grad_factor=None) -> None: ...

    def reduce_grads(self, grads: Sequence, op: str, power: float = 2.0, grad_scale=None) -> list: ...


class Backend(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """None when this backend works here, else one line saying what is missing."""

    def owns(self, array) -> bool:
        """True for the array types this backend updates (NumPy for numpy/cpu, CUDA arrays for cuda)."""

    def as_array(self, array):
        """The backend's own array viewing the same memory (zero-copy), e.g. a CuPy view of a torch CUDA tensor."""

    def state_dtype(self, param_dtype):
        """The dtype of state arrays for parameters of this dtype, or raise TypeError if the dtype is unsupported."""

    def full_like(self, param, value: float, dtype, size: int | None = None):
        """A new array shaped like `param` (1-D of `size` elements if given), on its device, of `dtype`, filled with
        `value`."""

    def to_numpy(self, array):
        """A NumPy copy (for state_dict)."""

    def copy_into(self, target, source) -> None:
        """Copy the NumPy array `source` into `target` (for load_state_dict)."""

    def prepare(self, spec, params: Sequence, slots: dict, flags: tuple) -> Plan: ...
