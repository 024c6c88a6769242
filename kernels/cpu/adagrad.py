"""Adagrad, fused. See fastopt.reference.adagrad."""

import numpy as np
from numba import njit, prange

from ._common import SPAN_OPTIONS, direction, driver, span


@njit(**SPAN_OPTIONS)
def _span(p, g, total, clr, grad_sign, weight_decay, eps):
    decay = weight_decay != 0
    for i in range(p.size):
        param = p[i]
        d = direction(g[i], param, grad_sign, weight_decay, decay)
        s = total[i] + d * d
        total[i] = s
        p[i] = param - (clr * d) / (np.sqrt(s) + eps)   # torch's addcdiv order


@driver
def update(chunks, table, clr, grad_sign, weight_decay, eps):
    for c in prange(chunks.shape[0]):
        t, a, b = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g, total = span(table[0, t], a, b, clr), span(table[1, t], a, b, clr), span(table[2, t], a, b, clr)
        _span(p, g, total, clr, grad_sign, weight_decay, eps)
