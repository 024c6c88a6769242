"""Rprop, fused: one pass reads p, g, prev, step_size and writes them back. See fastopt.optimizers.rprop.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

from numba import njit

from ._common import ELEMENT_OPTIONS


@njit(**ELEMENT_OPTIONS)
def element(p, g, prev, step_size, grad_sign, etaminus, etaplus, step_size_min, step_size_max):
    one = type(p)(1)
    d = g * grad_sign
    agreement = d * prev   # rounded in the array's dtype, as torch's sign(grad * prev): an underflow counts as 0
    factor = etaplus if agreement > 0 else (etaminus if agreement < 0 else (one if agreement == 0 else agreement))
    step_size = step_size * factor
    step_size = step_size_min if step_size < step_size_min else step_size   # torch.clamp: NaN stays NaN
    step_size = step_size_max if step_size_max < step_size else step_size
    d = type(p)(0) if factor == etaminus else d   # torch: grad[sign.eq(etaminus)] = 0
    sign = type(p)(d > 0) - type(p)(d < 0)   # torch.sign: 0 for NaN, and +0 for -0.0
    return p - sign * step_size, d, step_size
