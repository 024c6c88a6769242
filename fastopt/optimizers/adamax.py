"""Adamax (torch.optim.Adamax): Adam with the infinity norm, `exp_inf = max(beta2 * exp_inf, |g| + eps)`.

Follows torch.optim.Adamax exactly (single-tensor path): argument names and defaults, the state names `exp_avg` and
`exp_inf`, `step` from 1, and the order of operations, which decides where float32 and float64 overflow. One
difference: `eps` must be > 0 here (torch also takes 0, which divides 0 by 0 for a parameter whose gradients were
all zero). Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015, section 7.1.
"""

from __future__ import annotations

import numpy as np

from fastopt.records import BenchCase, ConvergenceEntry, Record, register_record
from fastopt.reference import _direction, _lerp
from fastopt.specs import Hyper, OptimizerSpec, Slot, above_zero, at_least_zero, beta_pair, boolean, register


def reference(param, grad, exp_avg, exp_inf, grad_sign, weight_decay, one_minus_beta1, beta2, eps, clr):
    d = _direction(param, grad, grad_sign, weight_decay)
    exp_avg[...] = _lerp(exp_avg, d, one_minus_beta1)
    # torch.maximum(exp_inf * beta2, |d| + eps, out=exp_inf): NaN in either wins, as in np.maximum
    exp_inf[...] = np.maximum(exp_inf * beta2, np.abs(d) + eps)
    param -= (clr * exp_avg) / exp_inf   # addcdiv(value=-clr): clr * exp_avg first, then / exp_inf


def _scalars(h, step):
    beta1, beta2 = h["betas"]
    return (-1.0 if h["maximize"] else 1.0, h["weight_decay"], 1.0 - beta1, beta2, h["eps"],
            h["lr"] / (1 - beta1 ** step))


def _strategy(st):
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-3, 0.3), betas=st.tuples(st.sampled_from([0.0, 0.3, 0.9]), st.sampled_from([0.5, 0.999])),
        eps=st.sampled_from([1e-8, 1e-3]), weight_decay=st.sampled_from([0.0, 0.0, 1e-2, 0.3]),
        maximize=st.booleans()))


register_record(Record(
    optimizer="adamax", strategy=_strategy,
    busy=dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, maximize=True),
    golden={
        "default": {},
        "lr_betas_eps_wd_maximize": {"lr": 0.05, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1,
                                     "maximize": True},
        # 1 - beta1 >= 0.5 takes the other branch of torch's lerp in the first moment; a small beta2 lets |g| + eps
        # win the maximum often
        "low_betas": {"lr": 0.01, "betas": [0.3, 0.5]},
    },
    extreme={"default": {}, "wd": {"weight_decay": 0.01}, "tiny_eps": {"lr": 1e-5, "eps": "tiny"}},
    bench=(BenchCase("adamax", "Adamax", {"lr": 2e-3}, torch_fused=False),),
    convergence=(ConvergenceEntry("Adamax", "Adamax", {"lr": 0.002}, {"lr": 0.3}, "darkgoldenrod"),),
))

ADAMAX = register(OptimizerSpec(
    name="adamax", class_name="Adamax", kernel="adamax",
    hypers=(Hyper("lr", 2e-3, at_least_zero), Hyper("betas", (0.9, 0.999), beta_pair),
            Hyper("eps", 1e-8, above_zero), Hyper("weight_decay", 0.0, at_least_zero),
            Hyper("maximize", False, boolean)),
    slots=(Slot("exp_avg"), Slot("exp_inf")),
    scalar_names=("grad_sign", "weight_decay", "one_minus_beta1", "beta2", "eps", "clr"),
    scalars=_scalars,
))
