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
    if decoupled:  # AdamW: shrink the parameter, leave the gradient alone
        if weight_decay != 0:
            param *= decay_factor
        d = _direction(param, grad, grad_sign, 0.0)
    else:
        d = _direction(param, grad, grad_sign, weight_decay)
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


def run(spec, params, grads, slots, scalars, flags) -> None:
    """One step of `spec` over a list of tensors, in place: `slots` holds, per slot of `spec.slots`, a list of arrays
    (one per param) or None for an inactive slot (the function then gets None)."""
    fn = function(spec.kernel)
    per_slot = [[None] * len(params) if s is None else s for s in slots]
    for i, (param, grad) in enumerate(zip(params, grads)):
        fn(param, grad, *(slot[i] for slot in per_slot), *scalars, *flags)
