"""RAdam, fused: one pass reads p, g, exp_avg, exp_avg_sq and writes them back. See fastopt.optimizers.radam.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS, decayed_direction, lerp


@njit(**ELEMENT_OPTIONS)
def element(p, g, exp_avg, exp_avg_sq, grad_sign, weight_decay, decay_factor, one_minus_beta1, beta2,
            one_minus_beta2, bias_correction1, lr, eps, bias_correction2_sqrt, rect, rectified, decoupled):
    p, d = decayed_direction(g, p, grad_sign, weight_decay, decay_factor, decoupled)
    exp_avg = lerp(exp_avg, d, one_minus_beta1)
    exp_avg_sq = beta2 * exp_avg_sq + (one_minus_beta2 * d) * d   # torch's addcmul order
    plain = (exp_avg / bias_correction1) * lr
    # torch: bias_correction2 ** 0.5 / (sqrt(v) + eps) is reciprocal(sqrt(v) + eps) * bias_correction2 ** 0.5
    adaptive = (type(p)(1) / (np.sqrt(exp_avg_sq) + eps)) * bias_correction2_sqrt
    update = (plain * adaptive) * rect if rectified != 0 else plain   # both, then a select (one branch per step)
    return p - update, exp_avg, exp_avg_sq
