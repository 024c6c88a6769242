"""ASGD, fused: one pass reads p, g, ax and writes p and ax back. See fastopt.optimizers.asgd.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

from numba import njit

from ._common import ELEMENT_OPTIONS, direction


@njit(**ELEMENT_OPTIONS)
def element(p, g, ax, grad_sign, weight_decay, decay, neg_eta, mu):
    d = direction(g, p, grad_sign, weight_decay, weight_decay != 0)
    p = p * decay
    p = p + neg_eta * d
    averaged = ax + (p - ax) * mu
    return p, averaged if mu != 1 else p   # torch copies the param while mu is 1 (mu is the same for every element)
