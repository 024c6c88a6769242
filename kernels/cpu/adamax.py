"""Adamax, fused: one pass reads p, g, exp_avg, exp_inf and writes them back. See fastopt.optimizers.adamax.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS, direction, lerp


@njit(**ELEMENT_OPTIONS)
def element(p, g, exp_avg, exp_inf, grad_sign, weight_decay, one_minus_beta1, beta2, eps, clr):
    d = direction(g, p, grad_sign, weight_decay, weight_decay != 0)
    exp_avg = lerp(exp_avg, d, one_minus_beta1)
    decayed = exp_inf * beta2
    bound = abs(d) + eps
    exp_inf = decayed if (decayed > bound or np.isnan(decayed)) else bound   # torch.maximum: NaN wins
    return p - (clr * exp_avg) / exp_inf, exp_avg, exp_inf   # torch's addcdiv order
