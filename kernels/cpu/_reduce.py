"""Reductions over a param group's tensors (kernel contract v2): partials per row of the chunk table, in the order of
fastopt.reference.reduce_chunk (lanes i % 8 accumulated in float64 in element order, combined ((0+1)+(2+3))+...),
so the cpu backend matches the reference bit for bit. One call reduces one role of the address table (params, grads,
or a slot); the backend combines the partials per tensor and over the group (fastopt.reference.combine's order).

`divide`: the values are x / scale, rounded in the array's dtype first (AMP's unscaled gradient, as the update sees
it). The sums keep eight independent float64 accumulators, so LLVM can vectorise them without reordering anything.
"""

import numpy as np
from numba import njit, prange

from ._common import SPAN_OPTIONS, driver, span


@njit(inline="always", **SPAN_OPTIONS)
def _value(x, divide, scale):
    return np.float64(x / scale if divide else x)


@njit(inline="always", **SPAN_OPTIONS)
def _term(v, op, power):
    if op == 0:
        return v * v
    if op == 1:
        return v
    if op == 3:
        return 0.0 if abs(v) < np.inf else 1.0   # comparisons only: inf and NaN count
    if op == 6:
        return 0.0 if v == 0 else 1.0
    if op == 2:
        return abs(v)   # maxabs (per-tensor reductions of a spec; clipping's inf-norm goes through _extreme)
    return abs(v) ** power   # 4: sumpow


@njit(inline="always", **SPAN_OPTIONS)
def _max_nan(a, b):
    """The larger of two partials of max |x|, NaN winning (fastopt.reference.combine)."""
    return a if (a > b or a != a) else b


@njit(**SPAN_OPTIONS)
def _sumsq(x, divide, scale):
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    m = x.size - x.size % 8
    for i in range(0, m, 8):
        v0, v1, v2, v3 = _value(x[i], divide, scale), _value(x[i + 1], divide, scale), \
            _value(x[i + 2], divide, scale), _value(x[i + 3], divide, scale)
        v4, v5, v6, v7 = _value(x[i + 4], divide, scale), _value(x[i + 5], divide, scale), \
            _value(x[i + 6], divide, scale), _value(x[i + 7], divide, scale)
        a0 += v0 * v0
        a1 += v1 * v1
        a2 += v2 * v2
        a3 += v3 * v3
        a4 += v4 * v4
        a5 += v5 * v5
        a6 += v6 * v6
        a7 += v7 * v7
    lanes = np.array([a0, a1, a2, a3, a4, a5, a6, a7])
    for j in range(x.size - m):
        v = _value(x[m + j], divide, scale)
        lanes[j] += v * v
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))


@njit(**SPAN_OPTIONS)
def _lanes(x, op, power, divide, scale):
    lanes = np.zeros(8)
    m = x.size - x.size % 8
    for i in range(0, m, 8):
        for j in range(8):
            lanes[j] += _term(_value(x[i + j], divide, scale), op, power)
    for j in range(x.size - m):
        lanes[j] += _term(_value(x[m + j], divide, scale), op, power)
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))


@njit(**SPAN_OPTIONS)
def _extreme(x, op, divide, scale):
    out = np.inf if op == 5 else 0.0
    for i in range(x.size):
        v = abs(_value(x[i], divide, scale))
        if op == 2:
            if v > out or v != v:
                out = v
        elif v < out or v != v:
            out = v
        if out != out:
            break   # NaN wins
    return out


@driver
def partials(chunks, table, row, op, power, divide, scale, like, out):
    """out[c] = the partial of chunk c of role `row` (see the module docstring); `like` carries the dtype."""
    for c in prange(chunks.shape[0]):
        t, a, b = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        x = span(table[row, t], a, b, like)
        if op == 0:
            out[c] = _sumsq(x, divide, scale)
        elif op == 2 or op == 5:
            out[c] = _extreme(x, op, divide, scale)
        else:
            out[c] = _lanes(x, op, power, divide, scale)
