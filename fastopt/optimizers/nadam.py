"""NAdam (torch.optim.NAdam): Adam with Nesterov momentum, whose momentum coefficient mu_t = beta1 (1 - 0.5 *
0.96 ** (t * momentum_decay)) warms up over the steps.

Follows torch.optim.NAdam exactly (single-tensor path): argument names and defaults (`momentum_decay`,
`decoupled_weight_decay` included), the state names `step`, `mu_product`, `exp_avg` and `exp_avg_sq`, and the order of
operations. `mu_product`, the running product of the mu_t, is per-param host state (fastopt.specs.HostScalar): torch
keeps it as a float32 0-d tensor and multiplies it by each step's mu_t computed from that step's betas and
momentum_decay, so it depends on their history; here it is a float rounded to float32 exactly as torch rounds it,
saved in state_dict as a plain float. The two addcdiv values come from it in float64 on the host, as torch computes
them. One difference: `eps` must be > 0 here (torch also takes 0). Dozat, "Incorporating Nesterov Momentum into Adam",
ICLR 2016 workshop.
"""

from __future__ import annotations

import numpy as np

from fastopt.optimizers._torch_host import torch_oracle
from fastopt.records import BenchCase, ConvergenceEntry, Record, register_record
from fastopt.reference import _decayed_direction, _lerp
from fastopt.specs import (
    HostScalar,
    Hyper,
    OptimizerSpec,
    Slot,
    above_zero,
    at_least_zero,
    beta_pair,
    boolean,
    register,
    replay_scalars,
)


def reference(param, grad, exp_avg, exp_avg_sq, grad_sign, weight_decay, decay_factor, one_minus_beta1, beta2,
              one_minus_beta2, bias_correction2, eps, grad_step, exp_avg_step, decoupled):
    d = _decayed_direction(param, grad, grad_sign, weight_decay, decay_factor, decoupled)
    exp_avg[...] = _lerp(exp_avg, d, one_minus_beta1)
    exp_avg_sq[...] = beta2 * exp_avg_sq + (one_minus_beta2 * d) * d   # mul_(beta2).addcmul_(d, d, 1 - beta2)
    denom = np.sqrt(exp_avg_sq / bias_correction2) + eps
    param += (grad_step * d) / denom              # addcdiv: value * d first, then / denom
    param += (exp_avg_step * exp_avg) / denom


def _one(h) -> float:
    return 1.0


_HOST = (HostScalar("mu_product", _one),)


def _advance(h, step, host):
    """torch's host arithmetic of one step: mu_t and mu_{t+1} in float64, mu_product *= mu_t in float32 (a float32
    0-d tensor times a Python float), then the two addcdiv values in float64 from the rounded product."""
    beta1, beta2 = h["betas"]
    lr, decay = h["lr"], h["momentum_decay"]
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * decay)))
    mu_product = float(np.float32(host[0]) * np.float32(mu))
    scalars = (-1.0 if h["maximize"] else 1.0, h["weight_decay"], 1 - lr * h["weight_decay"], 1.0 - beta1, beta2,
               1.0 - beta2, 1 - beta2 ** step, h["eps"], -lr * (1.0 - mu) / (1.0 - mu_product),
               (-lr * mu_next) / (1.0 - mu_product * mu_next))
    return scalars, (mu_product,)


def _scalars(h, step):
    return replay_scalars(h, step, _HOST, _advance)


def _flags(h) -> tuple:
    return (h["decoupled_weight_decay"],)


def _strategy(st):
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-3, 0.3), betas=st.tuples(st.sampled_from([0.0, 0.3, 0.9]), st.sampled_from([0.5, 0.9, 0.999])),
        eps=st.sampled_from([1e-8, 1e-3]), weight_decay=st.sampled_from([0.0, 0.0, 1e-2, 0.3]),
        momentum_decay=st.sampled_from([0.0, 4e-3, 0.5]), decoupled_weight_decay=st.booleans(),
        maximize=st.booleans()))


register_record(Record(
    optimizer="nadam", strategy=_strategy,
    busy=dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.01, momentum_decay=0.01, maximize=True),
    golden={
        "default": {},
        "lr_betas_eps_wd_maximize": {"lr": 0.05, "betas": [0.8, 0.9], "eps": 1e-6, "weight_decay": 0.1,
                                     "maximize": True},
        "decoupled_wd": {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
        "momentum_decay": {"lr": 0.01, "momentum_decay": 0.3},
        "low_betas": {"lr": 0.01, "betas": [0.3, 0.5]},   # 1 - beta1 >= 0.5: torch's lerp takes its other formula
    },
    extreme={"default": {}, "wd": {"weight_decay": 0.01}, "tiny_eps": {"lr": 1e-5, "eps": "tiny"}},
    oracle=torch_oracle,
    bench=(BenchCase("nadam", "NAdam", {"lr": 1e-3}, torch_fused=False),),
    convergence=(ConvergenceEntry("NAdam", "NAdam", {"lr": 0.002}, {"lr": 0.3}, "crimson"),),
))

NADAM = register(OptimizerSpec(
    name="nadam", class_name="NAdam", kernel="nadam",
    hypers=(Hyper("lr", 2e-3, at_least_zero), Hyper("betas", (0.9, 0.999), beta_pair),
            Hyper("eps", 1e-8, above_zero), Hyper("weight_decay", 0.0, at_least_zero),
            Hyper("momentum_decay", 4e-3, at_least_zero), Hyper("decoupled_weight_decay", False, boolean),
            Hyper("maximize", False, boolean)),
    slots=(Slot("exp_avg"), Slot("exp_avg_sq")),
    scalar_names=("grad_sign", "weight_decay", "decay_factor", "one_minus_beta1", "beta2", "one_minus_beta2",
                  "bias_correction2", "eps", "grad_step", "exp_avg_step"),
    scalars=_scalars,
    flag_names=("decoupled",),
    flags=_flags,
    host_state=_HOST,
    advance=_advance,
))
