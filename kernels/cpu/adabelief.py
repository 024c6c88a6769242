"""AdaBelief, fused: one pass reads p, g, exp_avg, exp_avg_var and writes them back. See
fastopt.optimizers.adabelief.reference.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS


@njit(**ELEMENT_OPTIONS)
def element(p, g, m, s, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, eps_root,
            bias_correction1, bias_correction2, bias_correction1_next, nesterov):
    d = g * grad_sign
    m = one_minus_beta1 * d + beta1 * m
    e = d - m
    s = (one_minus_beta2 * (e * e) + beta2 * s) + eps_root
    one = type(m)(1)
    # optax divides by the bias corrections; XLA multiplies by their reciprocals (fastopt/optimizers/_optax.py)
    if nesterov:
        m_hat = beta1 * (m * (one / bias_correction1_next)) + one_minus_beta1 * (d * (one / bias_correction1))
    else:
        m_hat = m * (one / bias_correction1)
    u = m_hat / (np.sqrt(s * (one / bias_correction2)) + eps)
    if weight_decay != 0:
        u = u + weight_decay * p
    p = p + (-lr) * u
    return p, m, s
