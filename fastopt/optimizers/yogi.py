"""Yogi (Zaheer et al. 2018, "Adaptive Methods for Nonconvex Optimization", NeurIPS), following optax.yogi.

    exp_avg = (1 - beta1) * g + beta1 * exp_avg
    exp_avg_sq = exp_avg_sq - (1 - beta2) * sign(exp_avg_sq - g * g) * g * g
    p = p - lr * ((exp_avg / (1 - beta1 ** t)) / (sqrt(exp_avg_sq / (1 - beta2 ** t)) + eps) + weight_decay * p)

Arguments, torch-style, and optax's names: lr = learning_rate (no default in optax: 1e-2, the paper's),
betas = (b1, b2) = (0.9, 0.999), eps = eps = 1e-3, weight_decay (not in optax.yogi: optax's add_decayed_weights
after the scaling, as optax.adamw places it, so decoupled and multiplied by lr; 0 by default, which is optax.yogi
exactly), initial_accumulator_value = scale_by_yogi's initial_accumulator_value = 1e-6 (both moments start there, as
in optax), maximize (follows the negated gradient). State: exp_avg (optax's mu), exp_avg_sq (optax's nu).
"""

from __future__ import annotations

import numpy as np

from fastopt.records import BenchCase, ConvergenceEntry, Record, register_record
from fastopt.reference import _direction
from fastopt.specs import (
    Hyper,
    OptimizerSpec,
    Slot,
    _grad_sign,
    _initial_accumulator,
    above_zero,
    at_least_zero,
    beta_pair,
    boolean,
    register,
)

from ._optax import inverse, oracle, sign


def reference(param, grad, exp_avg, exp_avg_sq, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2,
              one_minus_beta2, eps, bias_correction1, bias_correction2):
    """optax's order: scale_by_yogi, add_decayed_weights (skipped when the decay is 0), then -lr times that. g * g
    is formed on its own (overflowing float32 above |g| ~ 1.8e19), as optax does."""
    d = _direction(param, grad, grad_sign, 0.0)
    exp_avg[...] = one_minus_beta1 * d + beta1 * exp_avg
    d2 = d * d
    exp_avg_sq[...] = exp_avg_sq - (one_minus_beta2 * sign(exp_avg_sq - d2)) * d2
    u = (exp_avg * inverse(bias_correction1, d)) / (np.sqrt(exp_avg_sq * inverse(bias_correction2, d)) + eps)
    if weight_decay != 0:
        u = u + weight_decay * param
    param += (-lr) * u


def _scalars(h, step):
    beta1, beta2 = h["betas"]
    # 1 - beta ** step in float64 as optax computes it (XLA's pow matched Python's here, bit for bit)
    return (h["lr"], _grad_sign(h), h["weight_decay"], beta1, 1.0 - beta1, beta2, 1.0 - beta2, h["eps"],
            1 - beta1 ** step, 1 - beta2 ** step)


# ---- the golden oracle: optax.yogi (scale_by_yogi chained with add_decayed_weights where needed)

def _build(optax, h):
    b1, b2 = h["betas"]
    if h["weight_decay"] == 0 and h["initial_accumulator_value"] == 1e-6:
        return optax.yogi(h["lr"], b1=b1, b2=b2, eps=h["eps"])
    return optax.chain(optax.scale_by_yogi(b1=b1, b2=b2, eps=h["eps"],
                                           initial_accumulator_value=h["initial_accumulator_value"]),
                       optax.add_decayed_weights(h["weight_decay"]), optax.scale_by_learning_rate(h["lr"]))


def _state_of(state):
    yogi = state[0]
    return {"exp_avg": yogi.mu, "exp_avg_sq": yogi.nu}, yogi.count


# ---- the test and benchmark record

def _strategy(st):
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-4, 0.1), betas=st.tuples(st.sampled_from([0.0, 0.3, 0.9]), st.sampled_from([0.9, 0.999])),
        eps=st.sampled_from([1e-8, 1e-3]), weight_decay=st.sampled_from([0.0, 1e-2, 0.3]),
        initial_accumulator_value=st.sampled_from([0.0, 1e-6, 0.5]), maximize=st.booleans()))


register_record(Record(
    optimizer="yogi", strategy=_strategy,
    # optax cannot judge make_golden's extremes (XLA flushes subnormals): kernels vs reference there instead
    extreme_unjudged={"default": {}, "wd_init": {"weight_decay": 0.01, "initial_accumulator_value": 0.5},
                      "tiny_eps": {"lr": 1e-5, "eps": "tiny", "maximize": True},
                      # zero initial state: where a gradient is 0, exp_avg_sq stays 0 and the step divides by eps
                      "no_init": {"initial_accumulator_value": 0.0}},
    busy=dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, initial_accumulator_value=0.1, maximize=True),
    golden={
        "default": {},
        "lr_betas_eps": {"lr": 0.003, "betas": [0.8, 0.99], "eps": 1e-6},
        "wd_init_maximize": {"weight_decay": 0.1, "initial_accumulator_value": 0.5, "maximize": True},
        "low_beta1_no_init": {"lr": 0.005, "betas": [0.3, 0.9], "initial_accumulator_value": 0.0},
    },
    # No extreme-magnitude files: XLA on CPU flushes subnormal results to zero (fastopt/optimizers/lion.py).
    oracle=oracle(_build, _state_of),
    bench=(BenchCase("yogi", "Yogi", {"lr": 1e-2}, torch_fused=False),),
    convergence=(ConvergenceEntry("Yogi", "Yogi", {"lr": 0.01, "betas": (0.9, 0.999)},
                                  {"lr": 0.3, "betas": (0.9, 0.999)}, "navy"),),
))

register(OptimizerSpec(
    name="yogi", class_name="Yogi", kernel="yogi",
    hypers=(Hyper("lr", 1e-2, at_least_zero), Hyper("betas", (0.9, 0.999), beta_pair),
            Hyper("eps", 1e-3, above_zero), Hyper("weight_decay", 0.0, at_least_zero),
            Hyper("initial_accumulator_value", 1e-6, at_least_zero), Hyper("maximize", False, boolean)),
    slots=(Slot("exp_avg", init=_initial_accumulator), Slot("exp_avg_sq", init=_initial_accumulator)),
    scalar_names=("lr", "grad_sign", "weight_decay", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "eps",
                  "bias_correction1", "bias_correction2"),
    scalars=_scalars,
))
