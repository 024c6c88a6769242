"""Adadelta, fused. See fastopt.reference.adadelta.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS, direction


@njit(**ELEMENT_OPTIONS)
def element(p, g, sq, acc, lr, grad_sign, weight_decay, rho, one_minus_rho, eps):
    d = direction(g, p, grad_sign, weight_decay, weight_decay != 0)
    sq = rho * sq + (one_minus_rho * d) * d   # torch's addcmul order: d * d alone overflows sooner
    delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * d
    acc = rho * acc + (one_minus_rho * delta) * delta
    return p - lr * delta, sq, acc
