"""AdaBelief (Zhuang et al. 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
arXiv:2010.07468), following optax.adabelief.

    exp_avg = (1 - beta1) * g + beta1 * exp_avg
    exp_avg_var = (1 - beta2) * (g - exp_avg) ** 2 + beta2 * exp_avg_var + eps_root
    m_hat = exp_avg / (1 - beta1 ** t)            (Nesterov: beta1 * exp_avg / (1 - beta1 ** (t + 1))
                                                             + (1 - beta1) * g / (1 - beta1 ** t))
    p = p - lr * (m_hat / (sqrt(exp_avg_var / (1 - beta2 ** t)) + eps) + weight_decay * p)

Arguments, torch-style, and optax's names: lr = learning_rate (no default in optax: 1e-3, the paper's),
betas = (b1, b2) = (0.9, 0.999), eps = eps = 1e-16, weight_decay (not in optax.adabelief: optax's
add_decayed_weights after the scaling, as optax.adamw places it, so decoupled and multiplied by lr; 0 by default,
which is optax.adabelief exactly), eps_root = eps_root = 1e-16, nesterov = nesterov, maximize (follows the negated
gradient). State: exp_avg (optax's mu), exp_avg_var (optax's nu; the name of the authors' PyTorch code).
This is optax's AdaBelief: eps_root is added to the state itself and eps outside the square root. The authors'
adabelief-pytorch places eps differently and has further options (rectification), so its steps differ.
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
    above_zero,
    at_least_zero,
    beta_pair,
    boolean,
    register,
)

from ._optax import inverse, oracle


def reference(param, grad, exp_avg, exp_avg_var, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2,
              one_minus_beta2, eps, eps_root, bias_correction1, bias_correction2, bias_correction1_next, nesterov):
    """optax's order: scale_by_belief, add_decayed_weights (skipped when the decay is 0), then -lr times that."""
    d = _direction(param, grad, grad_sign, 0.0)
    exp_avg[...] = one_minus_beta1 * d + beta1 * exp_avg
    e = d - exp_avg
    exp_avg_var[...] = (one_minus_beta2 * (e * e) + beta2 * exp_avg_var) + eps_root
    if nesterov:
        m_hat = (beta1 * (exp_avg * inverse(bias_correction1_next, d))
                 + one_minus_beta1 * (d * inverse(bias_correction1, d)))
    else:
        m_hat = exp_avg * inverse(bias_correction1, d)
    u = m_hat / (np.sqrt(exp_avg_var * inverse(bias_correction2, d)) + eps)
    if weight_decay != 0:
        u = u + weight_decay * param
    param += (-lr) * u


def _scalars(h, step):
    beta1, beta2 = h["betas"]
    # 1 - beta ** step in float64 as optax computes it (XLA's pow matched Python's here, bit for bit)
    return (h["lr"], _grad_sign(h), h["weight_decay"], beta1, 1.0 - beta1, beta2, 1.0 - beta2, h["eps"],
            h["eps_root"], 1 - beta1 ** step, 1 - beta2 ** step, 1 - beta1 ** (step + 1))


def _flags(h) -> tuple:
    return (h["nesterov"],)


# ---- the golden oracle: optax.adabelief (chained with add_decayed_weights where weight_decay != 0)

def _build(optax, h):
    b1, b2 = h["betas"]
    if h["weight_decay"] == 0:
        return optax.adabelief(h["lr"], b1=b1, b2=b2, eps=h["eps"], eps_root=h["eps_root"], nesterov=h["nesterov"])
    return optax.chain(optax.scale_by_belief(b1=b1, b2=b2, eps=h["eps"], eps_root=h["eps_root"],
                                             nesterov=h["nesterov"]),
                       optax.add_decayed_weights(h["weight_decay"]), optax.scale_by_learning_rate(h["lr"]))


def _state_of(state):
    belief = state[0]
    return {"exp_avg": belief.mu, "exp_avg_var": belief.nu}, belief.count


# ---- the test and benchmark record

def _strategy(st):
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-4, 0.1), betas=st.tuples(st.sampled_from([0.0, 0.3, 0.9]), st.sampled_from([0.9, 0.999])),
        eps=st.sampled_from([1e-16, 1e-8, 1e-3]), weight_decay=st.sampled_from([0.0, 1e-2, 0.3]),
        eps_root=st.sampled_from([0.0, 1e-16, 1e-8]), nesterov=st.booleans(), maximize=st.booleans()))


register_record(Record(
    optimizer="adabelief", strategy=_strategy,
    # optax cannot judge make_golden's extremes (XLA flushes subnormals): kernels vs reference there instead
    extreme_unjudged={"default": {}, "nesterov_wd": {"nesterov": True, "weight_decay": 0.01},
                      "tiny_eps": {"lr": 1e-5, "eps": "tiny", "eps_root": 0.0}},
    busy=dict(lr=0.01, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.01, eps_root=1e-12, nesterov=True, maximize=True),
    golden={
        "default": {},
        "lr_betas_eps": {"lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-8, "eps_root": 1e-12},
        "nesterov_wd_maximize": {"lr": 0.01, "weight_decay": 0.1, "nesterov": True, "maximize": True},
        "low_beta1_nesterov_no_eps_root": {"lr": 0.005, "betas": [0.3, 0.9], "eps_root": 0.0, "nesterov": True},
    },
    # No extreme-magnitude files: XLA on CPU flushes subnormal results to zero (fastopt/optimizers/lion.py).
    oracle=oracle(_build, _state_of),
    bench=(BenchCase("adabelief", "AdaBelief", {"lr": 1e-3}, torch_fused=False),),
    convergence=(ConvergenceEntry("AdaBelief", "AdaBelief", {"lr": 0.001, "betas": (0.9, 0.999)},
                                  {"lr": 0.3, "betas": (0.9, 0.999)}, "teal"),),
))

register(OptimizerSpec(
    name="adabelief", class_name="AdaBelief", kernel="adabelief",
    hypers=(Hyper("lr", 1e-3, at_least_zero), Hyper("betas", (0.9, 0.999), beta_pair),
            Hyper("eps", 1e-16, above_zero), Hyper("weight_decay", 0.0, at_least_zero),
            Hyper("eps_root", 1e-16, at_least_zero), Hyper("nesterov", False, boolean),
            Hyper("maximize", False, boolean)),
    slots=(Slot("exp_avg"), Slot("exp_avg_var")),
    scalar_names=("lr", "grad_sign", "weight_decay", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "eps",
                  "eps_root", "bias_correction1", "bias_correction2", "bias_correction1_next"),
    scalars=_scalars,
    flag_names=("nesterov",),
    flags=_flags,
))
