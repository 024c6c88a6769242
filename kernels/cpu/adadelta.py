"""Adadelta, fused. See fastopt.reference.adadelta."""

import numpy as np
from numba import njit, prange

from ._common import SPAN_OPTIONS, direction, driver, span


@njit(**SPAN_OPTIONS)
def _span(p, g, sq, acc, lr, grad_sign, weight_decay, rho, one_minus_rho, eps):
    decay = weight_decay != 0
    for i in range(p.size):
        param = p[i]
        d = direction(g[i], param, grad_sign, weight_decay, decay)
        s = rho * sq[i] + (one_minus_rho * d) * d   # torch's addcmul order: d * d alone overflows sooner
        sq[i] = s
        delta = np.sqrt(acc[i] + eps) / np.sqrt(s + eps) * d
        acc[i] = rho * acc[i] + (one_minus_rho * delta) * delta
        p[i] = param - lr * delta


@driver
def update(chunks, table, lr, grad_sign, weight_decay, rho, one_minus_rho, eps):
    for c in prange(chunks.shape[0]):
        t, a, b = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g, sq, acc = (span(table[0, t], a, b, lr), span(table[1, t], a, b, lr), span(table[2, t], a, b, lr),
                         span(table[3, t], a, b, lr))
        _span(p, g, sq, acc, lr, grad_sign, weight_decay, rho, one_minus_rho, eps)
