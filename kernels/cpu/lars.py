"""LARS, fused: the per-tensor reductions (||p||^2 and ||u||^2, u from `update_value`) run first, then one pass reads
p, g, momentum_buffer and writes them back with the tensor's trust ratio. See fastopt.optimizers.lars.reference."""

from numba import njit

from ._common import ELEMENT_OPTIONS


@njit(**ELEMENT_OPTIONS)
def update_value(p, g, b, lr, grad_sign, weight_decay, momentum, trust_coefficient, trust_eps, use_trust_ratio,
                 nesterov):
    u = g * grad_sign
    if weight_decay != 0:
        u = u + weight_decay * p
    return u


@njit(**ELEMENT_OPTIONS)
def element(p, g, b, lr, grad_sign, weight_decay, momentum, trust_coefficient, trust_eps, use_trust_ratio, trust_ratio,
            nesterov):
    u = update_value(p, g, b, lr, grad_sign, weight_decay, momentum, trust_coefficient, trust_eps, use_trust_ratio,
                     nesterov)
    u = (-lr) * (u * trust_ratio)
    b = u + momentum * b
    p = p + ((u + momentum * b) if nesterov else b)
    return p, b
