"""Adafactor (Shazeer and Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
arXiv:1804.04235), following torch.optim.Adafactor (torch 2.13, single-tensor path):

    G = grad (-grad when maximize);  w = t ** beta2_decay;  rho = min(lr, 1 / sqrt(t))
    alpha = max(eps2, ||p|| / sqrt(numel)) * rho               (p before the decay)
    p = p * (1 - lr * weight_decay)                            (only when weight_decay != 0)
    ndim >= 2 (factored over the last two dims, leading dims batched):
        row_var = lerp(row_var, mean(G**2, dim=-1), w);  col_var = lerp(col_var, mean(G**2, dim=-2), w)
        V = (row_var @ col_var) / max(mean(row_var, dim=-2), eps1)
    else:  variance = lerp(variance, G * G, w);  V = variance
    U = rsqrt(max(V, eps1 * eps1)) * G
    p = p + (-alpha / max(1, ||U|| / (sqrt(numel) * d))) * U

Arguments and defaults as torch's: lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3) (eps1 None: the param dtype's machine
epsilon), d=1.0, weight_decay=0.0, maximize=False. State as torch's: `step`, and `row_var` (shape [..., m, 1]) with
`col_var` ([..., 1, n]) for params of 2 or more dimensions, `variance` (the param's shape) for the others: shaped
slots (fastopt.specs.Slot.shape), so a state_dict moves to and from torch.optim.Adafactor unchanged.

Sums in float64 in a fixed order (what the cpu kernels do, bit for bit): ||p||^2 and a vector's ||U||^2 in
fastopt.reference.reduce_tensor's order; a row's sum of G**2 (and of U**2) in reduce_tensor's order over the row;
||U||^2 of a factored tensor as its rows' sums added in row order; a column's sum of G**2 over blocks of
`block_rows(m, n)` rows, each block summed row by row from its first row, the blocks added in order. Each mean is
its float64 sum divided by the count, rounded once to the param's dtype; alpha and the step's factor in float64 as
torch computes them, the factor rounded once to the dtype. torch sums in the param's dtype in its own order, so
the trajectories differ from torch's by those roundings: measured on the golden files (12 steps), at most 1.74 eps
(float32) and 1.43 eps (float64) of |torch| + 1 apart, inside tests/tolerances.py's usual golden tolerance.
"""

from __future__ import annotations

import math

import numpy as np

from fastopt.records import ConvergenceEntry, Record, register_record
from fastopt.reference import _lerp, reduce_tensor
from fastopt.specs import (
    Hyper,
    OptimizerSpec,
    Reduction,
    Slot,
    _grad_sign,
    _real,
    at_least_zero,
    boolean,
    register,
)

# Column sums run over blocks of rows (the cpu kernels' work items): at most COLUMN_BLOCKS blocks per matrix, each of
# at least BLOCK_ELEMENTS elements, so the float64 scratch of the partial columns stays small (COLUMN_BLOCKS rows of
# n). The order depends on the shape alone, never on the thread count.
COLUMN_BLOCKS = 32
BLOCK_ELEMENTS = 1 << 12


def block_rows(m: int, n: int) -> int:
    """Rows per block of an (m, n) matrix in the column sums' order."""
    return max(1, min(m, max(-(-m // COLUMN_BLOCKS), -(-BLOCK_ELEMENTS // max(n, 1)))))


def _factored(param_shape) -> bool:
    return len(param_shape) >= 2


def row_shape(param_shape, hyper):
    """row_var: the param's shape with the last dim 1, for params of 2 or more dims (torch's keepdim mean)."""
    return (*param_shape[:-1], 1) if _factored(param_shape) else None


def col_shape(param_shape, hyper):
    """col_var: the param's shape with the second-to-last dim 1, for params of 2 or more dims."""
    return (*param_shape[:-2], 1, param_shape[-1]) if _factored(param_shape) else None


def variance_shape(param_shape, hyper):
    """variance: the param's shape, for params of fewer than 2 dims (vectors, scalars)."""
    return None if _factored(param_shape) else tuple(param_shape)


def eps1_of(eps1: float, dtype) -> float:
    """eps1 as the kernels use it: the dtype's machine epsilon when not given (torch: eps=(None, ...))."""
    return float(np.finfo(dtype).eps) if eps1 < 0 else eps1


def step_factor(param_sumsq: float, update_sumsq: float, size: int, rho: float, eps2: float, d: float) -> float:
    """-alpha / denominator in float64, as torch computes them from the two norms (Python floats, Python max). The
    count's square root by sqrt (torch: numel ** 0.5, pow), correctly rounded here and in every kernel language."""
    root = math.sqrt(size)
    alpha = max(eps2, math.sqrt(param_sumsq) / root) * rho
    denom = max(1.0, math.sqrt(update_sumsq) / (root * d))
    return -alpha / denom


def _slices(x):
    """A factored tensor as (B, m, n) (a view): torch batches the leading dims."""
    return x.reshape(-1, x.shape[-2], x.shape[-1])


def column_sums(g3) -> np.ndarray:
    """Per slice, the float64 sums of g**2 over each column, in block order (see the module docstring)."""
    sq = np.square(g3.astype(np.float64))
    b, m, n = g3.shape
    rows = block_rows(m, n)
    out = np.zeros((b, n))
    for s in range(b):
        total = np.zeros(n)
        for r0 in range(0, m, rows):
            block = sq[s, r0].copy()
            for r in range(r0 + 1, min(r0 + rows, m)):
                block = block + sq[s, r]
            total = total + block
        out[s] = total
    return out


def _clamp_min(x, low):
    """torch's clamp_(min=low): NaN stays NaN."""
    return np.where(np.isnan(x), x, np.maximum(x, low))


def update_value(param, grad, row_var, col_var, variance, lr, grad_sign, weight_decay, decay_factor,
                 one_minus_beta2, rho, eps1, eps2, d):
    """U, and the moments it was made from (written by `reference`, not here): (U, row_var, col_var, variance)."""
    t = param.dtype.type
    e1 = eps1_of(eps1, param.dtype)
    g = grad * t(grad_sign)
    if row_var is not None:
        g3 = _slices(g)
        _, m, n = g3.shape
        rows = g3.reshape(-1, n)
        row_sums = np.array([reduce_tensor(r, "sumsq") for r in rows]).reshape(row_var.shape)
        new_row = _lerp(row_var, (row_sums / n).astype(param.dtype), one_minus_beta2)
        new_col = _lerp(col_var, (column_sums(g3) / m).astype(param.dtype).reshape(col_var.shape), one_minus_beta2)
        r3, c3 = _slices(new_row), _slices(new_col)
        means = np.array([reduce_tensor(r3[s], "sum") / m for s in range(r3.shape[0])]).astype(param.dtype)
        means = _clamp_min(means, t(e1)).reshape(-1, 1, 1)
        v = ((r3 * c3) / means).reshape(param.shape)
        new_var = None
    else:
        new_row = new_col = None
        new_var = _lerp(variance, g * g, one_minus_beta2)
        v = new_var
    u = (t(1) / np.sqrt(_clamp_min(v, t(e1 * e1)))) * g
    return u, new_row, new_col, new_var


def update_sumsq(u, factored: bool) -> float:
    """||U||^2: a factored tensor's rows' sums (each in reduce_tensor's order) added in row order; a vector's in
    reduce_tensor's order."""
    if not factored:
        return reduce_tensor(u, "sumsq")
    total = 0.0
    for row in u.reshape(-1, u.shape[-1]):
        total += reduce_tensor(row, "sumsq")
    return total


def reference(param, grad, row_var, col_var, variance, lr, grad_sign, weight_decay, decay_factor, one_minus_beta2,
              rho, eps1, eps2, d):
    """One tensor's step, in place, in torch's order (the module docstring); the sums as the cpu kernels do them."""
    if param.size == 0:
        return
    pp = reduce_tensor(param, "sumsq")
    u, new_row, new_col, new_var = update_value(param, grad, row_var, col_var, variance, lr, grad_sign,
                                                weight_decay, decay_factor, one_minus_beta2, rho, eps1, eps2, d)
    factor = step_factor(pp, update_sumsq(u, row_var is not None), param.size, rho, eps2, d)
    if row_var is not None:
        row_var[...] = new_row
        col_var[...] = new_col
    else:
        variance[...] = new_var
    if weight_decay != 0:
        param *= param.dtype.type(decay_factor)
    param += param.dtype.type(factor) * u


def _scalars(h, step):
    eps1, eps2 = h["eps"]
    return (h["lr"], _grad_sign(h), h["weight_decay"], 1.0 - h["lr"] * h["weight_decay"], step ** h["beta2_decay"],
            min(h["lr"], 1 / (step ** 0.5)), -1.0 if eps1 is None else eps1, eps2, h["d"])


def _tensor_scalars(scalars, reduced, dtype):
    """The step's factor -alpha / denominator from ||p||^2, ||U||^2 and the element count, rounded to `dtype`."""
    with np.errstate(all="ignore"):
        return (float(np.dtype(dtype).type(step_factor(reduced[0], reduced[1], int(reduced[2]), scalars[5],
                                                       scalars[7], scalars[8]))),)


# ---- hyperparameter checks (torch's) --------------------------------------------------------------------------------

def at_most_zero(value):
    return None if _real(value) and value <= 0 else "a number <= 0"


def at_least_one(value):
    return None if _real(value) and value >= 1 else "a number >= 1"


def eps_pair(value):
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and \
        (value[0] is None or (_real(value[0]) and value[0] >= 0)) and _real(value[1]) and value[1] >= 0
    return None if ok else "a pair (eps1, eps2): eps1 None or a number >= 0, eps2 a number >= 0"


# ---- the record ------------------------------------------------------------------------------------------------------

def _strategy(st):
    return st.fixed_dictionaries(dict(
        lr=st.sampled_from([1e-2, 0.05, 0.3]), beta2_decay=st.sampled_from([-0.8, -0.5, 0.0]),
        eps=st.tuples(st.sampled_from([None, 1e-30, 1e-3]), st.sampled_from([1e-3, 0.0, 0.1])),
        d=st.sampled_from([1.0, 1.5, 100.0]), weight_decay=st.sampled_from([0.0, 0.1]), maximize=st.booleans()))


RECORD = Record(
    optimizer="adafactor", strategy=_strategy,
    busy=dict(lr=0.05, beta2_decay=-0.5, eps=(1e-20, 1e-3), d=1.5, weight_decay=0.1, maximize=True),
    golden={
        "default": {},
        "wd_maximize": {"lr": 0.05, "weight_decay": 0.1, "maximize": True},
        "eps_d_decay": {"lr": 0.3, "beta2_decay": -0.5, "eps": [1e-3, 0.1], "d": 1.5},
        "large_d": {"d": 100.0, "eps": [None, 0.0], "beta2_decay": -0.9},
    },
    # vectors, a matrix, a 3-D tensor (torch factors the last two dims), a 1x1 matrix and a size-1 vector
    golden_shapes=((7,), (3, 13), (2, 5, 6), (1, 1), (1,), (4, 33)),
    # No case in the generic benchmark (fastopt.bench): its byte model (one pass, every slot the param's size) and its
    # chain baseline (slots allocated like the params) do not fit shaped state and three passes;
    # benchmarks/adafactor_speed.py measures against the phases' own roofline and torch.
    convergence=(ConvergenceEntry("Adafactor", "Adafactor", {"lr": 1e-2}, {"lr": 0.3}, "darkcyan"),),
)

SPEC = OptimizerSpec(
    name="adafactor", class_name="Adafactor", kernel="adafactor",
    hypers=(Hyper("lr", 1e-2, at_least_zero), Hyper("beta2_decay", -0.8, at_most_zero),
            Hyper("eps", (None, 1e-3), eps_pair), Hyper("d", 1.0, at_least_one),
            Hyper("weight_decay", 0.0, at_least_zero), Hyper("maximize", False, boolean)),
    slots=(Slot("row_var", shape=row_shape), Slot("col_var", shape=col_shape),
           Slot("variance", shape=variance_shape)),
    scalar_names=("lr", "grad_sign", "weight_decay", "decay_factor", "one_minus_beta2", "rho", "eps1", "eps2", "d"),
    scalars=_scalars,
    reductions=(Reduction("sumsq", "param"), Reduction("sumsq", "update"), Reduction("count", "param")),
    tensor_scalar_names=("factor",),
    tensor_scalars=_tensor_scalars,
)

register(SPEC)
register_record(RECORD)
