"""NAdam, fused: one pass reads p, g, exp_avg, exp_avg_sq and writes them back. See fastopt.optimizers.nadam.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS, decayed_direction, lerp


@njit(**ELEMENT_OPTIONS)
def element(p, g, exp_avg, exp_avg_sq, grad_sign, weight_decay, decay_factor, one_minus_beta1, beta2,
            one_minus_beta2, bias_correction2, eps, grad_step, exp_avg_step, decoupled):
    p, d = decayed_direction(g, p, grad_sign, weight_decay, decay_factor, decoupled)
    exp_avg = lerp(exp_avg, d, one_minus_beta1)
    exp_avg_sq = beta2 * exp_avg_sq + (one_minus_beta2 * d) * d   # torch's addcmul order
    denom = np.sqrt(exp_avg_sq / bias_correction2) + eps
    p = p + (grad_step * d) / denom           # torch's two addcdivs, in its order
    p = p + (exp_avg_step * exp_avg) / denom
    return p, exp_avg, exp_avg_sq
