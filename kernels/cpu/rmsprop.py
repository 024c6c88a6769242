"""RMSprop, plain or centred, with optional momentum, fused. See fastopt.reference.rmsprop."""

import numpy as np
from numba import njit, prange

from ._common import SPAN_OPTIONS, direction, driver, span


@njit(**SPAN_OPTIONS)
def _span(p, g, sq, buf, g_avg, lr, grad_sign, weight_decay, alpha, one_minus_alpha, eps, momentum, centered,
          use_momentum):
    decay = weight_decay != 0
    for i in range(p.size):
        param = p[i]
        d = direction(g[i], param, grad_sign, weight_decay, decay)
        s = alpha * sq[i] + one_minus_alpha * (d * d)
        sq[i] = s
        if centered:
            mean = g_avg[i] + one_minus_alpha * (d - g_avg[i])
            g_avg[i] = mean
            avg = np.sqrt(s - mean * mean) + eps
        else:
            avg = np.sqrt(s) + eps
        if use_momentum:
            b = momentum * buf[i] + d / avg
            buf[i] = b
            p[i] = param - lr * b
        else:
            p[i] = param - lr * (d / avg)


@driver
def update(chunks, table, lr, grad_sign, weight_decay, alpha, one_minus_alpha, eps, momentum, centered, use_momentum):
    for c in prange(chunks.shape[0]):
        t, a, b = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g, sq, buf, g_avg = (span(table[0, t], a, b, lr), span(table[1, t], a, b, lr), span(table[2, t], a, b, lr),
                                span(table[3, t], a, b, lr), span(table[4, t], a, b, lr))
        _span(p, g, sq, buf, g_avg, lr, grad_sign, weight_decay, alpha, one_minus_alpha, eps, momentum, centered,
              use_momentum)
