"""Adam and AdamW, fused: one pass reads p, g, m, v (and v_max) and writes them back. See fastopt.reference.adam."""

import numpy as np
from numba import njit, prange

from ._common import SPAN_OPTIONS, driver, span


@njit(**SPAN_OPTIONS)
def _span(p, g, m, v, v_max, grad_sign, weight_decay, one_minus_beta1, beta2, one_minus_beta2, eps, step_size,
          bias_correction2_sqrt, decay_factor, amsgrad, decoupled):
    coupled_decay = weight_decay != 0 and not decoupled
    decoupled_decay = weight_decay != 0 and decoupled
    small_weight = abs(one_minus_beta1) < 0.5   # torch.lerp's two formulas (fastopt.reference._lerp)
    one_minus_weight = m.dtype.type(1) - one_minus_beta1
    for i in range(p.size):
        param = p[i]
        if decoupled_decay:
            param = param * decay_factor
        d = g[i] * grad_sign
        if coupled_decay:
            d = d + weight_decay * param
        near_start = m[i] + one_minus_beta1 * (d - m[i])   # both, then a select: a branch here stops vectorising
        near_end = d - (d - m[i]) * one_minus_weight
        m_i = near_start if small_weight else near_end
        v_i = beta2 * v[i] + (one_minus_beta2 * d) * d   # torch's addcmul order: d * d alone overflows sooner
        m[i] = m_i
        v[i] = v_i
        if amsgrad:
            previous = v_max[i]
            if previous > v_i or np.isnan(previous):  # torch.maximum: NaN wins
                v_i = previous
            v_max[i] = v_i
        p[i] = param - (step_size * m_i) / (np.sqrt(v_i) / bias_correction2_sqrt + eps)   # torch's addcdiv order


@driver
def update(chunks, table, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size,
           bias_correction2_sqrt, decay_factor, amsgrad, decoupled):
    for c in prange(chunks.shape[0]):
        t, a, b = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g, m, v, v_max = (span(table[0, t], a, b, lr), span(table[1, t], a, b, lr), span(table[2, t], a, b, lr),
                             span(table[3, t], a, b, lr), span(table[4, t], a, b, lr))
        _span(p, g, m, v, v_max, grad_sign, weight_decay, one_minus_beta1, beta2, one_minus_beta2, eps, step_size,
              bias_correction2_sqrt, decay_factor, amsgrad, decoupled)
