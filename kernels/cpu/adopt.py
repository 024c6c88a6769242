"""ADOPT, fused: one pass reads p, g, exp_avg, exp_avg_sq and writes them back. See fastopt.optimizers.adopt.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS


@njit(**ELEMENT_OPTIONS)
def element(p, g, exp_avg, exp_avg_sq, grad_sign, lr, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2,
            eps, clip_value, nesterov, use_clipping):
    g = g * grad_sign
    root = np.sqrt(exp_avg_sq)   # the second moment of the earlier steps only
    floor = root if (root > eps or np.isnan(root)) else eps   # jnp.maximum: NaN wins
    d = g / floor
    if use_clipping:   # jnp.clip: a NaN stays NaN
        lo = -clip_value
        d = lo if d < lo else d
        d = clip_value if d > clip_value else d
    exp_avg_sq = one_minus_beta2 * (g * g) + beta2 * exp_avg_sq
    exp_avg = one_minus_beta1 * d + beta1 * exp_avg
    u = one_minus_beta1 * d + beta1 * exp_avg if nesterov else exp_avg
    if weight_decay != 0:
        u = u + weight_decay * p
    return p - lr * u, exp_avg, exp_avg_sq
