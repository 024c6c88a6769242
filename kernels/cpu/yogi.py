"""Yogi, fused: one pass reads p, g, exp_avg, exp_avg_sq and writes them back. See fastopt.optimizers.yogi.reference.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS


@njit(**ELEMENT_OPTIONS)
def element(p, g, m, v, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
            bias_correction1, bias_correction2):
    d = g * grad_sign
    m = one_minus_beta1 * d + beta1 * m
    d2 = d * d
    x = v - d2
    one = type(m)(1)
    direction = one if x > 0 else (-one if x < 0 else x)   # jnp.sign: +-0 and NaN stay as they are
    v = v - (one_minus_beta2 * direction) * d2
    # optax divides by the bias corrections; XLA multiplies by their reciprocals (fastopt/optimizers/_optax.py)
    u = (m * (one / bias_correction1)) / (np.sqrt(v * (one / bias_correction2)) + eps)
    if weight_decay != 0:
        u = u + weight_decay * p
    p = p + (-lr) * u
    return p, m, v
