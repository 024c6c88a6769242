"""The NumPy oracle: one readable function per kernel family, following torch.optim's order of operations.

Every function updates `param` and its state arrays in place and follows the kernel calling convention of
`fastopt.specs` (param, grad, *slots, *scalars, *flags). The scalars are plain Python floats: NumPy casts them to the
array's dtype, exactly as the fused kernels receive them. Works in float32 and float64.

Where torch uses `lerp` (Adam's first moment, RMSprop's centred average) we write `a + w * (b - a)`, its formula for
w < 0.5; `nan_maximum` is torch.maximum (NaN wins).
"""

from __future__ import annotations

import numpy as np


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
    param -= clr * (d / (np.sqrt(sum_) + eps))


def rmsprop(param, grad, square_avg, momentum_buffer, grad_avg, lr, grad_sign, weight_decay, alpha, one_minus_alpha,
            eps, momentum, centered, use_momentum):
    d = _direction(param, grad, grad_sign, weight_decay)
    square_avg[...] = alpha * square_avg + one_minus_alpha * (d * d)
    if centered:
        grad_avg += one_minus_alpha * (d - grad_avg)
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if use_momentum:
        momentum_buffer[...] = momentum * momentum_buffer + d / avg
        param -= lr * momentum_buffer
    else:
        param -= lr * (d / avg)


def adadelta(param, grad, square_avg, acc_delta, lr, grad_sign, weight_decay, rho, one_minus_rho, eps):
    d = _direction(param, grad, grad_sign, weight_decay)
    square_avg[...] = rho * square_avg + one_minus_rho * (d * d)
    delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * d
    acc_delta[...] = rho * acc_delta + one_minus_rho * (delta * delta)
    param -= lr * delta


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, grad_sign, weight_decay, beta1, one_minus_beta1,
         beta2, one_minus_beta2, eps, step_size, bias_correction2_sqrt, decay_factor, amsgrad, decoupled):
    if decoupled:  # AdamW: shrink the parameter, leave the gradient alone
        if weight_decay != 0:
            param *= decay_factor
        d = _direction(param, grad, grad_sign, 0.0)
    else:
        d = _direction(param, grad, grad_sign, weight_decay)
    exp_avg += one_minus_beta1 * (d - exp_avg)
    exp_avg_sq[...] = beta2 * exp_avg_sq + one_minus_beta2 * (d * d)
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second_moment = max_exp_avg_sq
    else:
        second_moment = exp_avg_sq
    denom = np.sqrt(second_moment) / bias_correction2_sqrt + eps
    param -= step_size * (exp_avg / denom)
