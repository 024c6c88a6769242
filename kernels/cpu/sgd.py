"""SGD with optional momentum, dampening and Nesterov, fused. See fastopt.reference.sgd.

`element` is the update of one element; fastopt.codegen generates the loop and the driver around it."""

from numba import njit

from ._common import ELEMENT_OPTIONS, direction


@njit(**ELEMENT_OPTIONS)
def element(p, g, buf, lr, grad_sign, weight_decay, momentum, buffer_decay, grad_scale, use_momentum, nesterov):
    d = direction(g, p, grad_sign, weight_decay, weight_decay != 0)
    if use_momentum:
        buf = buffer_decay * buf + grad_scale * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf
