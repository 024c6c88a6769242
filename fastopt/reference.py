"""The NumPy oracle: one readable function per kernel family, following torch.optim's order of operations.

Every function updates `param` and its state arrays in place and follows the kernel calling convention of
`fastopt.specs` (param, grad, *slots, *scalars, *flags). The scalars are plain Python floats: NumPy casts them to the
array's dtype, exactly as the fused kernels receive them. Works in float32 and float64.

The order of every operation is torch's CPU single-tensor path, because the order decides where float32 and float64
overflow or underflow: `addcmul(v, g, g, value=c)` computes `v + (c * g) * g` (so Adam's `(1 - beta2) * g` comes
before `* g`, and |g| up to ~1.8e19 / sqrt(1 - beta2) stays finite in float32 where `g * g` alone overflows above
1.8e19), `addcdiv(p, m, d, value=c)` computes `p + (c * m) / d`, and `lerp` picks one of two formulas by its weight
(`_lerp`). What this reference cannot follow is torch's fused multiply-add: torch evaluates `add(alpha=)`, `addcmul`
and `lerp` with one rounding each (measured: torch 2.13 on AVX512, vector loop and scalar tail alike), NumPy rounds
product and sum separately. That costs about one rounding per operation in finite arithmetic (tests/test_golden.py),
and decides overflow in one place, RMSprop's centred variance (see `rmsprop`).
"""

from __future__ import annotations

import numpy as np


def _lerp(start, end, weight):
    """torch.lerp(start, end, weight) as its CPU kernel evaluates it, less the fused multiply-add: the weight, cast to
    the array's dtype, picks `start + w * (end - start)` for |w| < 0.5 and `end - (end - start) * (1 - w)` otherwise,
    with 1 - w computed in the array's dtype."""
    w = start.dtype.type(weight)
    if abs(w) < 0.5:
        return start + w * (end - start)
    return end - (end - start) * (start.dtype.type(1) - w)


def _direction(param, grad, grad_sign, weight_decay):
    """maximize flips the gradient, then L2 weight decay adds weight_decay * param (torch's order)."""
    d = grad * grad.dtype.type(grad_sign)
    if weight_decay != 0:
        d = d + weight_decay * param
    return d


def _decayed_direction(param, grad, grad_sign, weight_decay, decay_factor, decoupled):
    """The Adam family's weight decay: decoupled (AdamW) shrinks `param` in place by decay_factor (1 - lr *
    weight_decay) and leaves the gradient alone; coupled adds weight_decay * param to the gradient (_direction)."""
    if not decoupled:
        return _direction(param, grad, grad_sign, weight_decay)
    if weight_decay != 0:
        param *= decay_factor
    return _direction(param, grad, grad_sign, 0.0)


def sgd(param, grad, momentum_buffer, lr, grad_sign, weight_decay, momentum, buffer_decay, grad_scale,
        use_momentum, nesterov):
    d = _direction(param, grad, grad_sign, weight_decay)
    if use_momentum:
        momentum_buffer[...] = buffer_decay * momentum_buffer + grad_scale * d
        d = d + momentum * momentum_buffer if nesterov else momentum_buffer
    param -= lr * d


def adagrad(param, grad, sum_, clr, grad_sign, weight_decay, eps):
    d = _direction(param, grad, grad_sign, weight_decay)
    sum_ += d * d
    param -= (clr * d) / (np.sqrt(sum_) + eps)   # addcdiv: lr * grad first, then / std


def rmsprop(param, grad, square_avg, momentum_buffer, grad_avg, lr, grad_sign, weight_decay, alpha, one_minus_alpha,
            eps, momentum, centered, use_momentum):
    d = _direction(param, grad, grad_sign, weight_decay)
    square_avg[...] = alpha * square_avg + (one_minus_alpha * d) * d   # addcmul: (1 - alpha) * g first, then * g
    if centered:
        grad_avg[...] = _lerp(grad_avg, d, one_minus_alpha)
        variance = square_avg - grad_avg * grad_avg
        # torch forms this with a fused multiply-add, so grad_avg**2 is never rounded on its own: once square_avg is
        # inf and grad_avg**2 overflows too, torch gets inf - finite = inf (the element stops moving), not inf - inf.
        variance = np.where(np.isposinf(square_avg) & np.isfinite(grad_avg), square_avg, variance)
        avg = np.sqrt(variance) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if use_momentum:
        momentum_buffer[...] = momentum * momentum_buffer + d / avg
        param -= lr * momentum_buffer
    else:
        param -= (lr * d) / avg   # addcdiv: lr * grad first, then / avg


def adadelta(param, grad, square_avg, acc_delta, lr, grad_sign, weight_decay, rho, one_minus_rho, eps):
    d = _direction(param, grad, grad_sign, weight_decay)
    square_avg[...] = rho * square_avg + (one_minus_rho * d) * d   # addcmul order, as in adam
    delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * d
    acc_delta[...] = rho * acc_delta + (one_minus_rho * delta) * delta
    param -= lr * delta


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, grad_sign, weight_decay, beta1, one_minus_beta1,
         beta2, one_minus_beta2, eps, step_size, bias_correction2_sqrt, decay_factor, amsgrad, decoupled):
    d = _decayed_direction(param, grad, grad_sign, weight_decay, decay_factor, decoupled)
    exp_avg[...] = _lerp(exp_avg, d, one_minus_beta1)
    # addcmul: (1 - beta2) * g first, then * g; g * g alone would overflow float32 for |g| > 1.8e19
    exp_avg_sq[...] = beta2 * exp_avg_sq + (one_minus_beta2 * d) * d
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second_moment = max_exp_avg_sq
    else:
        second_moment = exp_avg_sq
    denom = np.sqrt(second_moment) / bias_correction2_sqrt + eps
    param -= (step_size * exp_avg) / denom   # addcdiv: step_size * exp_avg first, then / denom


# ---- the one reference driver: the numpy backend, the bench's chain baseline and the tests all step through it ------

def function(family: str):
    """The reference function of a kernel family: defined above, or `reference` in fastopt/optimizers/<family>.py."""
    fn = globals().get(family)
    if callable(fn) and not family.startswith("_"):
        return fn
    import importlib

    try:
        module = importlib.import_module(f"fastopt.optimizers.{family}")
    except ImportError as error:
        raise KeyError(f"no reference function for kernel family {family!r}") from error
    return module.reference


def new_slots(spec, param, hyper) -> list:
    """One param's fresh state, per slot of `spec.slots`: an array of the slot's shape for this param filled with
    its init value, or None where the param keeps no such slot (inactive, or shaped state: fastopt.specs.Slot)."""
    out = []
    for s in spec.slots:
        shape = s.shape_for(np.shape(param), hyper)
        out.append(None if shape is None else np.full(shape, s.init(hyper), dtype=np.asarray(param).dtype))
    return out


def run(spec, params, grads, slots, scalars, flags, grad_scale=None, grad_factor=None) -> None:
    """One step of `spec` over a list of tensors, in place: `slots` holds, per slot of `spec.slots`, a list of arrays
    (one per param) or None for an inactive slot (the function then gets None). The gradient the update sees is
    grad / grad_scale (AMP), then * grad_factor (clipping), each rounded in the gradient's dtype; `grads` stay as
    they are."""
    fn = function(spec.kernel)
    per_slot = [[None] * len(params) if s is None else s for s in slots]
    for i, (param, grad) in enumerate(zip(params, grads)):
        grad = unscaled(grad, grad_scale)
        if grad_factor is not None:
            grad = grad * grad.dtype.type(grad_factor)
        mine = [slot[i] for slot in per_slot]
        fn(param, grad, *mine, *scalars, *flags)


def tensor_scalars(spec, param, grad, slots, scalars, flags) -> tuple:
    """One tensor's per-tensor scalars (kernel contract v2), which the reference function of a family with
    reductions computes itself (so it keeps the calling convention, param, grad, *slots, *scalars, *flags): its
    reductions (`spec.reductions`, each by
    `reduce_tensor`, the update from the family's `update_value(param, grad, *slots, *scalars, *flags)` computed
    without writing), then `spec.tensor_scalars`. Empty for a spec without reductions. `grad` is as the update sees
    it; `slots` are this tensor's (None when inactive)."""
    if not spec.reductions:
        return ()
    names = [s.name for s in spec.slots]
    reduced = []
    for r in spec.reductions:
        if r.of == "param":
            x = param
        elif r.of == "grad":
            x = grad
        elif r.of == "update":
            x = update_function(spec.kernel)(param, grad, *slots, *scalars, *flags)
        else:
            x = slots[names.index(r.of)]
        reduced.append(float(np.size(x)) if r.op == "count" else reduce_tensor(x, r.op))
    return tuple(spec.tensor_scalars(scalars, tuple(reduced), param.dtype))


def update_function(family: str):
    """`update_value` of fastopt/optimizers/<family>.py: the update a family's "update" reduction reads."""
    import importlib

    return importlib.import_module(f"fastopt.optimizers.{family}").update_value


# ---- reductions (kernel contract v2): deterministic, and in the order the cpu kernels use ---------------------------
#
# A reduction of a tensor is split into chunks of REDUCE_CHUNK elements (fastopt.kernels.cpu._common.CHUNK, the cpu
# chunk table). Inside a chunk, element i goes to lane i % LANES; each lane accumulates in element order, in float64
# (float32 values are widened exactly), and the lanes combine as ((0+1)+(2+3))+((4+5)+(6+7)). A tensor's value is its
# chunks' partials combined in order from 0, and a group's is its tensors' values combined in order. The cpu kernels
# do exactly this (bit for bit); NumPy's own sum (pairwise) rounds differently, and the CUDA kernels combine per
# thread and block (see kernels/cuda/common.cuh), within the error bound stated in tests/test_reductions.py.

REDUCE_CHUNK = 1 << 15
LANES = 8
# op name -> code shared with the kernels
REDUCTIONS = {"sumsq": 0, "sum": 1, "maxabs": 2, "nonfinite": 3, "sumpow": 4, "minabs": 5, "nonzero": 6}
_MAX, _MIN = REDUCTIONS["maxabs"], REDUCTIONS["minabs"]


def reduction_start(op: str) -> float:
    return np.inf if op == "minabs" else 0.0


def _terms(x, op, power):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        if op == "sumsq":
            return x * x
        if op == "sum":
            return x
        if op in ("maxabs", "minabs"):
            return np.abs(x)
        if op == "nonfinite":
            return (~np.isfinite(x)).astype(np.float64)
        if op == "sumpow":
            return np.abs(x) ** power
        if op == "nonzero":
            return (x != 0).astype(np.float64)
    raise ValueError(f"unknown reduction {op!r}; expected one of {sorted(REDUCTIONS)}")


def combine(op: str, a: float, b: float) -> float:
    """Two partials of `op` combined (NaN wins for the max and the min, as torch's norms)."""
    if op == "maxabs":
        return a if (a > b or a != a) else b
    if op == "minabs":
        return a if (a < b or a != a) else b
    return a + b


def reduce_chunk(x, op: str, power: float = 2.0) -> float:
    """The partial of one chunk (at most REDUCE_CHUNK values), lanes as described above."""
    terms = _terms(x, op, power)
    if op in ("maxabs", "minabs"):   # exact whatever the order; NaN wins
        out = reduction_start(op)
        if terms.size:
            pick = np.max(terms) if op == "maxabs" else np.min(terms)
            out = combine(op, float(pick), out)
        return float(out)
    n = terms.size
    m = n - n % LANES
    with np.errstate(all="ignore"):
        lanes = np.cumsum(terms[:m].reshape(-1, LANES), axis=0)[-1].copy() if m else np.zeros(LANES)
        for j in range(n - m):   # the tail: lane j gets element m + j
            lanes[j] += terms[m + j]
        return float(((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])))


def reduce_tensor(x, op: str, power: float = 2.0) -> float:
    """One tensor's value: its chunks' partials combined in order."""
    flat = np.asarray(x).reshape(-1)
    out = reduction_start(op)
    with np.errstate(all="ignore"):
        for start in range(0, flat.size, REDUCE_CHUNK):
            out = combine(op, out, reduce_chunk(flat[start:start + REDUCE_CHUNK], op, power))
    return float(out)


def reduce_group(values, op: str) -> float:
    """Tensors' values combined in order."""
    out = reduction_start(op)
    with np.errstate(all="ignore"):
        for v in values:
            out = combine(op, out, float(v))
    return float(out)


def unscaled(grad, grad_scale):
    """The gradient as the update sees it under AMP: divided by grad_scale in the gradient's dtype (torch's fused
    optimizers divide; GradScaler.unscale_ multiplies by the reciprocal, which can differ by an ulp)."""
    return grad if grad_scale is None else grad / grad.dtype.type(grad_scale)


def clip_coefficient(total_norm: float, max_norm: float, dtype) -> float:
    """torch.nn.utils.clip_grad_norm_'s factor, min(max_norm / (total_norm + 1e-6), 1), computed in `dtype` as
    torch computes it on the grads' dtype."""
    t = np.dtype(dtype).type
    with np.errstate(all="ignore"):
        coef = t(max_norm) / (t(total_norm) + t(1e-6))
        return float(min(coef, t(1.0)) if coef == coef else coef)
