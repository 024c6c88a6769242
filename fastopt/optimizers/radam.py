"""RAdam (torch.optim.RAdam): Adam whose adaptive step is switched on, and scaled by a variance rectification term,
once the approximated simple moving average's length rho_t exceeds 5 (from step 6 on, whatever beta2).

Follows torch.optim.RAdam exactly (single-tensor path): argument names and defaults (`decoupled_weight_decay`
included), the state names `exp_avg` and `exp_avg_sq`, `step` from 1, and the order of operations, which decides
where float32 and float64 overflow. rho_t and the rectification term are host arithmetic on the step count, in
float64 as torch computes them; the kernel receives them with a 0/1 scalar saying which branch this step takes. One
difference: `eps` must be > 0 here (torch also takes 0). Liu et al., "On the Variance of the Adaptive Learning Rate and
Beyond", ICLR 2020.
"""

from __future__ import annotations

import numpy as np

from fastopt.records import BenchCase, ConvergenceEntry, Record, register_record
from fastopt.reference import _decayed_direction, _lerp
from fastopt.specs import Hyper, OptimizerSpec, Slot, above_zero, at_least_zero, beta_pair, boolean, register


def reference(param, grad, exp_avg, exp_avg_sq, grad_sign, weight_decay, decay_factor, one_minus_beta1, beta2,
              one_minus_beta2, bias_correction1, lr, eps, bias_correction2_sqrt, rect, rectified, decoupled):
    d = _decayed_direction(param, grad, grad_sign, weight_decay, decay_factor, decoupled)
    exp_avg[...] = _lerp(exp_avg, d, one_minus_beta1)
    exp_avg_sq[...] = beta2 * exp_avg_sq + (one_minus_beta2 * d) * d   # mul_(beta2).addcmul_(d, d, 1 - beta2)
    update = (exp_avg / bias_correction1) * lr
    if rectified:
        # torch writes bias_correction2 ** 0.5 / (sqrt(v) + eps); a number divided by a tensor is, in torch,
        # reciprocal(tensor) * number: 1 / x is rounded (and may overflow) before the product
        adaptive = (param.dtype.type(1) / (np.sqrt(exp_avg_sq) + eps)) * bias_correction2_sqrt
        update = (update * adaptive) * rect
    param -= update


def _scalars(h, step):
    beta1, beta2 = h["betas"]
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
    rectified = rho_t > 5.0
    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5 if rectified else 1.0
    return (-1.0 if h["maximize"] else 1.0, h["weight_decay"], 1 - h["lr"] * h["weight_decay"], 1.0 - beta1, beta2,
            1.0 - beta2, bias_correction1, h["lr"], h["eps"], bias_correction2 ** 0.5, rect, float(rectified))


def _flags(h) -> tuple:
    return (h["decoupled_weight_decay"],)


def _strategy(st):
    # 10 steps (tests/test_backends.py) reach rho_t > 5 from step 6 with beta2 0.9 or 0.999, never with 0.5
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-3, 0.3), betas=st.tuples(st.sampled_from([0.0, 0.3, 0.9]), st.sampled_from([0.5, 0.9, 0.999])),
        eps=st.sampled_from([1e-8, 1e-3]), weight_decay=st.sampled_from([0.0, 0.0, 1e-2, 0.3]),
        decoupled_weight_decay=st.booleans(), maximize=st.booleans()))


register_record(Record(
    optimizer="radam", strategy=_strategy,
    busy=dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.01, maximize=True),
    golden={   # 12 steps: rho_t > 5 from step 6 on, so every file has steps of both branches (but beta2 = 0.5)
        "default": {},
        "lr_betas_eps_wd_maximize": {"lr": 0.05, "betas": [0.8, 0.9], "eps": 1e-6, "weight_decay": 0.1,
                                     "maximize": True},
        "decoupled_wd": {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
        # 1 - beta1 >= 0.5 takes the other branch of torch's lerp; rho_inf = 3 with beta2 = 0.5: never rectified
        "low_betas": {"lr": 0.01, "betas": [0.3, 0.5]},
    },
    # Note: the extreme files run 5 steps, all before rho_t > 5 (tests/golden/make_golden.py's EXTREME_STEPS)
    extreme={"default": {}, "wd": {"weight_decay": 0.01}, "tiny_eps": {"lr": 1e-5, "eps": "tiny"}},
    bench=(BenchCase("radam", "RAdam", {"lr": 1e-3}, torch_fused=False),),
    # the toy's lr is larger than the MLP's: rectification starts at step 6, leaving few of the toy's 30 steps
    convergence=(ConvergenceEntry("RAdam", "RAdam", {"lr": 0.001}, {"lr": 1.0}, "indigo"),),
))

RADAM = register(OptimizerSpec(
    name="radam", class_name="RAdam", kernel="radam",
    hypers=(Hyper("lr", 1e-3, at_least_zero), Hyper("betas", (0.9, 0.999), beta_pair),
            Hyper("eps", 1e-8, above_zero), Hyper("weight_decay", 0.0, at_least_zero),
            Hyper("decoupled_weight_decay", False, boolean), Hyper("maximize", False, boolean)),
    slots=(Slot("exp_avg"), Slot("exp_avg_sq")),
    scalar_names=("grad_sign", "weight_decay", "decay_factor", "one_minus_beta1", "beta2", "one_minus_beta2",
                  "bias_correction1", "lr", "eps", "bias_correction2_sqrt", "rect", "rectified"),
    scalars=_scalars,
    flag_names=("decoupled",),
    flags=_flags,
))
