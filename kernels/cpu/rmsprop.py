"""RMSprop, plain or centred, with optional momentum, fused. See fastopt.reference.rmsprop.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS, direction, lerp


@njit(**ELEMENT_OPTIONS)
def element(p, g, sq, buf, g_avg, lr, grad_sign, weight_decay, alpha, one_minus_alpha, eps, momentum, centered,
            use_momentum):
    d = direction(g, p, grad_sign, weight_decay, weight_decay != 0)
    sq = alpha * sq + (one_minus_alpha * d) * d   # torch's addcmul order: d * d alone overflows sooner
    if centered:
        g_avg = lerp(g_avg, d, one_minus_alpha)
        variance = sq - g_avg * g_avg
        if sq == np.inf and abs(g_avg) < np.inf:   # plain comparisons: np.isinf here stops vectorising
            variance = sq   # torch's fused s - mean * mean: inf - finite, never inf - inf (see the reference)
        avg = np.sqrt(variance) + eps
    else:
        avg = np.sqrt(sq) + eps
    if use_momentum:
        buf = momentum * buf + d / avg
        p = p - lr * buf
    else:
        p = p - (lr * d) / avg   # torch's addcdiv order
    return p, sq, buf, g_avg
