"""Adagrad, fused. See fastopt.reference.adagrad.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

import numpy as np
from numba import njit

from ._common import ELEMENT_OPTIONS, direction


@njit(**ELEMENT_OPTIONS)
def element(p, g, total, clr, grad_sign, weight_decay, eps):
    d = direction(g, p, grad_sign, weight_decay, weight_decay != 0)
    total = total + d * d
    return p - (clr * d) / (np.sqrt(total) + eps), total   # torch's addcdiv order
