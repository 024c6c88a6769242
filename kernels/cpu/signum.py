"""Signum, fused: one pass reads p, g, momentum_buffer and writes p and momentum_buffer. See
fastopt.optimizers.signum.reference.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

from numba import njit

from ._common import ELEMENT_OPTIONS


@njit(**ELEMENT_OPTIONS)
def element(p, g, m, lr, grad_sign, weight_decay, beta, one_minus_beta):
    d = g * grad_sign
    m = one_minus_beta * d + beta * m
    one = type(m)(1)
    u = one if m > 0 else (-one if m < 0 else m)   # jnp.sign: +-0 and NaN stay as they are
    if weight_decay != 0:
        u = u + weight_decay * p
    p = p + (-lr) * u
    return p, m
