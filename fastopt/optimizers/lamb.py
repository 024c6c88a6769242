"""LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
arXiv:1904.00962), following optax.lamb (optax 0.2.8):

    exp_avg = (1 - beta1) * g + beta1 * exp_avg;  exp_avg_sq = (1 - beta2) * g**2 + beta2 * exp_avg_sq
    u = (exp_avg / (1 - beta1**t)) / (sqrt(exp_avg_sq / (1 - beta2**t)) + eps) + weight_decay * p
    p = p - lr * (u * trust_ratio),  trust_ratio = ||p|| / ||u|| per tensor (1 when either norm is 0)

Arguments, torch-style, and optax's names: lr = learning_rate (1e-3), betas = (b1, b2) = (0.9, 0.999), eps = eps
(1e-6), weight_decay = weight_decay (0), maximize (not in optax: follows the negated gradient). State: exp_avg and
exp_avg_sq (optax's mu and nu). optax's eps_root is not offered.

Per-group switches (optax masks whole tensors; a param group is the torch way to say which):
`exclude_from_weight_decay=True` drops the decay term (optax's `mask` False), `exclude_from_trust_ratio=True` applies
the update with trust ratio 1 (optax's chain without scale_by_trust_ratio). Biases and norms are usually put in such a
group: `fastopt.exclude_bias_and_norm(params, exclude_from_weight_decay=True, exclude_from_trust_ratio=True)`.

The trust ratio is a per-tensor scalar of kernel contract v2: ||p|| and ||u|| are sums of squares in float64 in
fastopt.reference.reduce_tensor's fixed order (u computed without writing, before the update), their square roots
and ratio in float64, rounded once to the param's dtype. optax sums in the param's dtype in XLA's order, so the
trajectories differ from optax's by roundings of the norms: measured on the golden files (12 steps), at most
0.36 eps (float32) and 0.32 eps (float64) of |optax| + 1 apart, inside the usual golden tolerance.

How it differs elsewhere. apex's FusedLAMB first clips the gradients by their global norm (max_grad_norm=1.0 by
default; here `max_grad_norm=` is opt-in, as on every optimizer), defaults weight_decay to 0.01 (here 0, as optax),
and with use_nvlamb=False applies the trust ratio only in groups with weight_decay != 0 (here, as in optax, every
tensor gets one). The paper (Algorithm 2) scales the ratio's numerator by a clipping function phi and has no bias
correction; optax and this class use the identity and correct the moments as Adam does.
"""

from __future__ import annotations

import math

import numpy as np

from fastopt.records import BenchCase, Record, register_record
from fastopt.reference import _direction, tensor_scalars
from fastopt.specs import (
    Hyper,
    OptimizerSpec,
    Reduction,
    Slot,
    _grad_sign,
    above_zero,
    at_least_zero,
    beta_pair,
    boolean,
    register,
)

from ._optax import inverse, oracle


def update_value(param, grad, exp_avg, exp_avg_sq, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2,
                 one_minus_beta2, eps, bias_correction1, bias_correction2, use_trust_ratio):
    """The update before the trust ratio (optax: scale_by_adam then add_decayed_weights), state left as it is."""
    d = _direction(param, grad, grad_sign, 0.0)
    m = one_minus_beta1 * d + beta1 * exp_avg
    v = one_minus_beta2 * (d * d) + beta2 * exp_avg_sq
    u = (m * inverse(bias_correction1, d)) / (np.sqrt(v * inverse(bias_correction2, d)) + eps)
    if weight_decay != 0:
        u = u + weight_decay * param
    return u


def reference(param, grad, exp_avg, exp_avg_sq, *scalars):
    """One tensor's step: its trust ratio from its reductions (fastopt.reference.tensor_scalars), then `step`."""
    ratio = tensor_scalars(SPEC, param, grad, (exp_avg, exp_avg_sq), scalars, ())
    step(param, grad, exp_avg, exp_avg_sq, *scalars, *ratio)


def step(param, grad, exp_avg, exp_avg_sq, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2,
         one_minus_beta2, eps, bias_correction1, bias_correction2, use_trust_ratio, trust_ratio):
    """optax's order: scale_by_adam, add_decayed_weights (skipped when 0), scale_by_trust_ratio, then -lr."""
    u = update_value(param, grad, exp_avg, exp_avg_sq, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2,
                     one_minus_beta2, eps, bias_correction1, bias_correction2, use_trust_ratio)
    d = _direction(param, grad, grad_sign, 0.0)
    exp_avg[...] = one_minus_beta1 * d + beta1 * exp_avg
    exp_avg_sq[...] = one_minus_beta2 * (d * d) + beta2 * exp_avg_sq
    param += (-lr) * (u * trust_ratio)


def trust_ratio(param_sumsq: float, update_sumsq: float, coefficient: float, eps: float, dtype) -> float:
    """optax.scale_by_trust_ratio's factor from the two sums of squares: coefficient * ||p|| / (||u|| + eps), 1 when
    either norm is 0; in float64, rounded once to `dtype`."""
    p_norm, u_norm = math.sqrt(param_sumsq), math.sqrt(update_sumsq)
    if p_norm == 0.0 or u_norm == 0.0:
        return 1.0
    with np.errstate(all="ignore"):
        return float(np.dtype(dtype).type(np.float64(coefficient) * p_norm / (u_norm + eps)))


def _tensor_scalars(scalars, reduced, dtype):
    if not scalars[-1]:   # use_trust_ratio 0: the group is excluded from the trust ratio
        return (1.0,)
    return (trust_ratio(reduced[0], reduced[1], 1.0, 0.0, dtype),)


def _scalars(h, step):
    beta1, beta2 = h["betas"]
    # 1 - beta ** step in float64 as optax computes it (fastopt/optimizers/_optax.py)
    weight_decay = 0.0 if h["exclude_from_weight_decay"] else h["weight_decay"]
    return (h["lr"], _grad_sign(h), weight_decay, beta1, 1.0 - beta1, beta2, 1.0 - beta2, h["eps"],
            1 - beta1 ** step, 1 - beta2 ** step, 0.0 if h["exclude_from_trust_ratio"] else 1.0)


# ---- the golden oracle: optax.lamb -----------------------------------------------------------------------------------

def _build(optax, h):
    b1, b2 = h["betas"]
    mask = not h["exclude_from_weight_decay"]
    if h["exclude_from_trust_ratio"]:   # optax.lamb's chain without scale_by_trust_ratio
        return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=h["eps"]),
                           optax.add_decayed_weights(h["weight_decay"], mask=lambda p: _mask(p, mask)),
                           optax.scale_by_learning_rate(h["lr"]))
    return optax.lamb(h["lr"], b1=b1, b2=b2, eps=h["eps"], weight_decay=h["weight_decay"],
                      mask=lambda p: _mask(p, mask))


def _mask(params, value: bool):
    """optax's mask pytree: the same value for every param."""
    return [value for _ in params]


def _state_of(state):
    adam = state[0]   # chain(scale_by_adam, add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate)
    return {"exp_avg": adam.mu, "exp_avg_sq": adam.nu}, adam.count


def _strategy(st):
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-4, 0.1), betas=st.tuples(st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.9, 0.999])),
        eps=st.sampled_from([1e-6, 1e-3]), weight_decay=st.sampled_from([0.0, 1e-2, 0.5]), maximize=st.booleans(),
        exclude_from_weight_decay=st.booleans(), exclude_from_trust_ratio=st.booleans()))


RECORD = Record(
    optimizer="lamb", strategy=_strategy,
    busy=dict(lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1, maximize=True),
    # No all-defaults file: with weight_decay 0 and eps 1e-6 the trust ratio cancels the bias corrections' common
    # factor, so a step count off by one moves float32 params by less than the tolerance (tests/test_golden.py's
    # mutants); a small decay makes the file see it.
    golden={
        "small_wd": {"weight_decay": 0.01},
        "lr_betas_eps": {"lr": 0.01, "betas": [0.8, 0.95], "eps": 1e-3},
        "wd_maximize": {"lr": 3e-3, "weight_decay": 0.1, "maximize": True},
        "excluded": {"lr": 3e-3, "weight_decay": 0.1, "exclude_from_weight_decay": True,
                     "exclude_from_trust_ratio": True},
        "no_trust_ratio": {"lr": 3e-3, "weight_decay": 0.1, "exclude_from_trust_ratio": True},
    },
    oracle=oracle(_build, _state_of),
    bench=(BenchCase("lamb", "LAMB", {"lr": 1e-3}, torch_fused=False),),
)

SPEC = OptimizerSpec(
    name="lamb", class_name="LAMB", kernel="lamb",
    hypers=(Hyper("lr", 1e-3, at_least_zero), Hyper("betas", (0.9, 0.999), beta_pair), Hyper("eps", 1e-6, above_zero),
            Hyper("weight_decay", 0.0, at_least_zero), Hyper("maximize", False, boolean),
            Hyper("exclude_from_weight_decay", False, boolean), Hyper("exclude_from_trust_ratio", False, boolean)),
    slots=(Slot("exp_avg"), Slot("exp_avg_sq")),
    scalar_names=("lr", "grad_sign", "weight_decay", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "eps",
                  "bias_correction1", "bias_correction2", "use_trust_ratio"),
    scalars=_scalars,
    reductions=(Reduction("sumsq", "param"), Reduction("sumsq", "update")),
    tensor_scalar_names=("trust_ratio",),
    tensor_scalars=_tensor_scalars,
)

register(SPEC)
register_record(RECORD)
