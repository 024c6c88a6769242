"""Adam and AdamW, fused: one pass reads p, g, m, v (and v_max) and writes them back. See fastopt.reference.adam.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS, decayed_direction, lerp


@njit(**ELEMENT_OPTIONS)
def element(p, g, m, v, v_max, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
            step_size, bias_correction2_sqrt, decay_factor, amsgrad, decoupled):
    p, d = decayed_direction(g, p, grad_sign, weight_decay, decay_factor, decoupled)
    m = lerp(m, d, one_minus_beta1)
    v = beta2 * v + (one_minus_beta2 * d) * d   # torch's addcmul order: d * d alone overflows sooner
    second = v
    if amsgrad:
        if not (v_max > v or np.isnan(v_max)):  # torch.maximum: NaN wins
            v_max = v
        second = v_max
    p = p - (step_size * m) / (np.sqrt(second) / bias_correction2_sqrt + eps)   # torch's addcdiv order
    return p, m, v, v_max
