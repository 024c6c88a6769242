"""AdEMAMix, fused: one pass reads p, g, exp_avg_fast, exp_avg_slow, exp_avg_sq and writes them back. See
fastopt.optimizers.ademamix.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS


@njit(**ELEMENT_OPTIONS)
def element(p, g, exp_avg_fast, exp_avg_slow, exp_avg_sq, grad_sign, lr, weight_decay, beta1, one_minus_beta1, beta2,
            one_minus_beta2, beta3, one_minus_beta3, alpha, eps, eps_root, bias_correction1, bias_correction2):
    one = type(p)(1)
    g = g * grad_sign
    exp_avg_fast = one_minus_beta1 * g + beta1 * exp_avg_fast
    exp_avg_slow = one_minus_beta3 * g + beta3 * exp_avg_slow
    exp_avg_sq = one_minus_beta2 * (g * g) + beta2 * exp_avg_sq
    # optax divides by the bias corrections; XLA multiplies by their reciprocals (fastopt.optimizers._optax)
    m_hat = exp_avg_fast * (one / bias_correction1)
    nu_hat = exp_avg_sq * (one / bias_correction2)
    u = (m_hat + alpha * exp_avg_slow) / (np.sqrt(nu_hat + eps_root) + eps)
    if weight_decay != 0:
        u = u + weight_decay * p
    return p - lr * u, exp_avg_fast, exp_avg_slow, exp_avg_sq
