"""Adan, fused: one pass reads p, g, exp_avg, exp_avg_sq, exp_avg_diff, pre_grad and writes them back. See
fastopt.optimizers.adan.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS


@njit(**ELEMENT_OPTIONS)
def element(p, g, exp_avg, exp_avg_sq, exp_avg_diff, pre_grad, grad_sign, lr, weight_decay, beta1, one_minus_beta1,
            beta2, one_minus_beta2, beta3, one_minus_beta3, eps, eps_root, bias_correction1, bias_correction2,
            bias_correction3, first_step):
    one = type(p)(1)
    g = g * grad_sign
    diff = g - pre_grad
    diff = type(p)(0) if first_step != 0 else diff   # optax takes no difference on the first step (a select)
    exp_avg = one_minus_beta1 * g + beta1 * exp_avg
    exp_avg_diff = one_minus_beta2 * diff + beta2 * exp_avg_diff
    sq = g + one_minus_beta2 * diff
    exp_avg_sq = one_minus_beta3 * (sq * sq) + beta3 * exp_avg_sq
    # optax divides by the bias corrections; XLA multiplies by their reciprocals (fastopt.optimizers._optax)
    m_hat = exp_avg * (one / bias_correction1)
    v_hat = exp_avg_diff * (one / bias_correction2)
    n_hat = exp_avg_sq * (one / bias_correction3)
    u = (m_hat + one_minus_beta2 * v_hat) / (np.sqrt(n_hat + eps_root) + eps)
    if weight_decay != 0:
        u = u + weight_decay * p
    return p - lr * u, exp_avg, exp_avg_sq, exp_avg_diff, g
