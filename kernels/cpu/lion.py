"""Lion, fused: one pass reads p, g, exp_avg and writes p and exp_avg. See fastopt.optimizers.lion.reference.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

from numba import njit

from ._common import ELEMENT_OPTIONS


@njit(**ELEMENT_OPTIONS)
def element(p, g, m, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2):
    d = g * grad_sign
    c = one_minus_beta1 * d + beta1 * m
    one = type(c)(1)
    u = one if c > 0 else (-one if c < 0 else c)   # jnp.sign: +-0 and NaN stay as they are
    if weight_decay != 0:
        u = u + weight_decay * p
    m = one_minus_beta2 * d + beta2 * m
    p = p + (-lr) * u
    return p, m
