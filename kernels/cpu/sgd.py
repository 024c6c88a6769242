"""SGD with optional momentum, dampening and Nesterov, fused. See fastopt.reference.sgd."""

from numba import njit, prange

from ._common import SPAN_OPTIONS, direction, driver, span


@njit(**SPAN_OPTIONS)
def _span(p, g, buf, lr, grad_sign, weight_decay, momentum, buffer_decay, grad_scale, use_momentum, nesterov):
    decay = weight_decay != 0
    for i in range(p.size):
        param = p[i]
        d = direction(g[i], param, grad_sign, weight_decay, decay)
        if use_momentum:
            b = buffer_decay * buf[i] + grad_scale * d
            buf[i] = b
            d = d + momentum * b if nesterov else b
        p[i] = param - lr * d


@driver
def update(chunks, table, lr, grad_sign, weight_decay, momentum, buffer_decay, grad_scale, use_momentum, nesterov):
    for c in prange(chunks.shape[0]):
        t, a, b = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g, buf = span(table[0, t], a, b, lr), span(table[1, t], a, b, lr), span(table[2, t], a, b, lr)
        _span(p, g, buf, lr, grad_sign, weight_decay, momentum, buffer_decay, grad_scale, use_momentum, nesterov)
