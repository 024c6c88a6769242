"""RMSprop, plain or centred, with optional momentum, fused. See fastopt.reference.rmsprop."""

import numpy as np
from numba import njit, prange

from ._common import SPAN_OPTIONS, direction, driver, span


@njit(**SPAN_OPTIONS)
def _span(p, g, sq, buf, g_avg, lr, grad_sign, weight_decay, alpha, one_minus_alpha, eps, momentum, centered,
          use_momentum):
    decay = weight_decay != 0
    small_weight = abs(one_minus_alpha) < 0.5   # torch.lerp's two formulas (fastopt.reference._lerp)
    one_minus_weight = sq.dtype.type(1) - one_minus_alpha
    for i in range(p.size):
        param = p[i]
        d = direction(g[i], param, grad_sign, weight_decay, decay)
        s = alpha * sq[i] + (one_minus_alpha * d) * d   # torch's addcmul order: d * d alone overflows sooner
        sq[i] = s
        if centered:
            a = g_avg[i]
            near_start = a + one_minus_alpha * (d - a)   # both, then a select: a branch here stops vectorising
            near_end = d - (d - a) * one_minus_weight
            mean = near_start if small_weight else near_end
            g_avg[i] = mean
            variance = s - mean * mean
            if s == np.inf and abs(mean) < np.inf:   # plain comparisons: np.isinf here stops vectorising
                variance = s   # torch's fused s - mean * mean: inf - finite, never inf - inf (see the reference)
            avg = np.sqrt(variance) + eps
        else:
            avg = np.sqrt(s) + eps
        if use_momentum:
            b = momentum * buf[i] + d / avg
            buf[i] = b
            p[i] = param - lr * b
        else:
            p[i] = param - (lr * d) / avg   # torch's addcdiv order


@driver
def update(chunks, table, lr, grad_sign, weight_decay, alpha, one_minus_alpha, eps, momentum, centered, use_momentum):
    for c in prange(chunks.shape[0]):
        t, a, b = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g, sq, buf, g_avg = (span(table[0, t], a, b, lr), span(table[1, t], a, b, lr), span(table[2, t], a, b, lr),
                                span(table[3, t], a, b, lr), span(table[4, t], a, b, lr))
        _span(p, g, sq, buf, g_avg, lr, grad_sign, weight_decay, alpha, one_minus_alpha, eps, momentum, centered,
              use_momentum)
