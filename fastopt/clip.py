"""Gradient clipping by global norm, with torch.nn.utils.clip_grad_norm_'s semantics.

    total_norm = fastopt.clip_grad_norm_(grads, max_norm=1.0)   # grads scaled in place when the norm exceeds it

The norm is one multi-tensor pass over the grads (the reduction kernels of fastopt.kernels.cpu._reduce on the cpu
backend, fastopt.reference on numpy, kernels/cuda/reduce.cu on cuda), accumulated in float64 in a fixed order, so the
result is the same run to run. Optimizers take `max_grad_norm=` instead: there the coefficient is folded into the
update, so the grads are read once more by the update and never written (fastopt.optim.Optimizer.step).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from fastopt import dispatch, reference

_INF_NAMES = ("inf", "Inf", "INF")


def norm_type_value(norm_type) -> float:
    """norm_type as a float (torch accepts numbers and the string 'inf'); TypeError/ValueError naming it otherwise."""
    if isinstance(norm_type, str) and norm_type in _INF_NAMES:
        return math.inf
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type: expected a number or 'inf', got {norm_type!r}")
    value = float(norm_type)
    if math.isnan(value):
        raise ValueError("norm_type: expected a number or 'inf', got nan")
    return value


def max_norm_value(max_norm, name: str = "max_norm") -> float:
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {max_norm!r}")
    return float(max_norm)


def reduction_for(norm_type: float) -> tuple[str, float]:
    """The reduction (fastopt.reference.REDUCTIONS) whose group value gives the p-norm, and its power."""
    if norm_type == math.inf:
        return "maxabs", 1.0
    if norm_type == -math.inf:
        return "minabs", 1.0
    if norm_type == 0:
        return "nonzero", 1.0
    if norm_type == 2:
        return "sumsq", 2.0
    if norm_type == 1:
        return "sumpow", 1.0   # |x| ** 1 is |x| exactly
    return "sumpow", norm_type


def norm_from(group_value: float, norm_type: float) -> float:
    """The p-norm (float64) from the group value of reduction_for(norm_type)."""
    if norm_type in (math.inf, -math.inf, 0):
        return group_value
    if norm_type == 2:
        return math.sqrt(group_value) if group_value == group_value else group_value
    with np.errstate(all="ignore"):
        return float(np.float64(group_value) ** (1.0 / norm_type))


def total_norm_of(per_tensor: list, norm_type: float) -> float:
    """The total norm from per-tensor values, as torch's norm of the per-tensor norms: for p > 0 and +-inf that is
    the norm of all elements; for p = 0 it counts the tensors with a non-zero element."""
    op, _ = reduction_for(norm_type)
    if op == "nonzero":
        return float(sum(1 for v in per_tensor if v != 0))
    return norm_from(reference.reduce_group(per_tensor, op), norm_type)


def _per_tensor(backend, arrays, op: str, power: float) -> list:
    """Per array, the reduction `op`: one multi-tensor pass per dtype on the cpu backend."""
    if backend.name == "cpu":
        from fastopt.backends import cpu
        return cpu.reduce_arrays(arrays, op, power)
    if backend.name == "cuda":
        from fastopt.backends import cuda
        return cuda.reduce_arrays(arrays, op, power)
    with np.errstate(all="ignore"):
        return [reference.reduce_tensor(a, op, power) for a in arrays]


def clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite: bool = False, *, backend=None):
    """Scale `grads` in place so that their total `norm_type`-norm is at most `max_norm`, as
    torch.nn.utils.clip_grad_norm_: coefficient min(max_norm / (total_norm + 1e-6), 1) in the grads' dtype, every grad
    multiplied by it (by 1 when the norm is within bounds). Returns the total norm (a NumPy scalar of the first
    grad's dtype; float32 for float16/bfloat16). With error_if_nonfinite=True a NaN or infinite norm raises
    RuntimeError (torch's error) and leaves the grads as they were.

    grads: an array or a list of arrays of one kind (NumPy, or CUDA arrays for the cuda backend)."""
    arrays = [grads] if hasattr(grads, "shape") else list(grads)   # one array, or any iterable of them
    max_norm = max_norm_value(max_norm)
    norm_type = norm_type_value(norm_type)
    if not isinstance(error_if_nonfinite, bool):
        raise TypeError(f"error_if_nonfinite: expected True or False, got {error_if_nonfinite!r}")
    if not arrays:
        return np.float32(0.0)
    chosen = dispatch.choose_backend(arrays, backend)
    views = [chosen.as_array(g) for g in arrays]
    for i, v in enumerate(views):
        dtype = np.dtype(v.dtype)
        if dtype.kind != "f" and not (chosen.name == "cuda" and dtype == np.uint16):
            raise TypeError(f"grads[{i}]: expected a floating-point array, got dtype {dtype}")
    op, power = reduction_for(norm_type)
    total = total_norm_of(_per_tensor(chosen, views, op, power), norm_type)
    out_dtype = _result_dtype(views[0].dtype)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so "
                           "it cannot be clipped. To disable this error and scale the gradients by the non-finite "
                           "norm anyway, set `error_if_nonfinite=False`")
    for v in views:
        coef = reference.clip_coefficient(total, max_norm, _result_dtype(v.dtype))
        _scale_in_place(chosen, v, coef)
    return out_dtype.type(total)


def _result_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    return dtype if dtype in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype(np.float32)


def _scale_in_place(backend, array, coef: float) -> None:
    if backend.name == "cuda":
        from fastopt.backends import cuda
        cuda.scale_in_place(array, coef)
        return
    with np.errstate(all="ignore"):
        np.multiply(array, array.dtype.type(coef), out=array)
