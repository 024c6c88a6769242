"""Schedule-Free SGD and AdamW, fused: one pass reads p, g, z (and exp_avg_sq) and writes them back; with `switch`
(train()/eval()) one pass reads p and z, which arrives in the grad's place, and writes p. See
fastopt.optimizers.schedulefree.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS, lerp


@njit(**ELEMENT_OPTIONS)
def element(p, g, z, v, lr, ckp1, y_step, beta2, one_minus_beta2, bias_correction2, eps, weight_decay, first,
            adaptive, switch):
    end = g if switch else (p if first != 0 else z)   # the first step's z is the param itself (the package clones)
    y = lerp(p, end, ckp1)
    if switch:
        return y, z, v
    d = g
    if adaptive:
        v = v * beta2 + (one_minus_beta2 * g) * g   # mul_, then addcmul_'s order
        d = g / (np.sqrt(v / bias_correction2) + eps)
    if weight_decay != 0:
        d = d + weight_decay * p
    return y + y_step * d, end - lr * d, v
