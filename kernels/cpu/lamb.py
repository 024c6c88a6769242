"""LAMB, fused: the per-tensor reductions (||p||^2 and ||u||^2, u from `update_value`, nothing written) run first,
then one pass reads p, g, exp_avg, exp_avg_sq and writes them back with the tensor's trust ratio.
See fastopt.optimizers.lamb.reference."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS


@njit(**ELEMENT_OPTIONS)
def _moments(p, g, m, v, grad_sign, beta1, one_minus_beta1, beta2, one_minus_beta2):
    d = g * grad_sign
    return d, one_minus_beta1 * d + beta1 * m, one_minus_beta2 * (d * d) + beta2 * v


@njit(**ELEMENT_OPTIONS)
def _update(p, m, v, weight_decay, eps, bias_correction1, bias_correction2):
    one = type(m)(1)
    # optax divides by the bias corrections; XLA multiplies by their reciprocals (fastopt/optimizers/_optax.py)
    u = (m * (one / bias_correction1)) / (np.sqrt(v * (one / bias_correction2)) + eps)
    if weight_decay != 0:
        u = u + weight_decay * p
    return u


@njit(**ELEMENT_OPTIONS)
def update_value(p, g, m, v, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                 bias_correction1, bias_correction2, use_trust_ratio):
    _, m, v = _moments(p, g, m, v, grad_sign, beta1, one_minus_beta1, beta2, one_minus_beta2)
    return _update(p, m, v, weight_decay, eps, bias_correction1, bias_correction2)


@njit(**ELEMENT_OPTIONS)
def element(p, g, m, v, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
            bias_correction1, bias_correction2, use_trust_ratio, trust_ratio):
    _, m, v = _moments(p, g, m, v, grad_sign, beta1, one_minus_beta1, beta2, one_minus_beta2)
    u = _update(p, m, v, weight_decay, eps, bias_correction1, bias_correction2)
    p = p + (-lr) * (u * trust_ratio)
    return p, m, v
