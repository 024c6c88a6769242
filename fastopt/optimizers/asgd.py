"""ASGD (torch.optim.ASGD): averaged stochastic gradient descent. The param takes SGD steps with a decaying step size
eta and a decay of the param itself (1 - lambd * eta); `ax` keeps the average of the params from step t0 on.

Follows torch.optim.ASGD exactly (single-tensor path): argument names and defaults (`lambd`, `alpha`, `t0`,
`weight_decay`), the state names `step`, `eta`, `mu` and `ax`, and the order of operations. `eta` and `mu` are per-param
host state (fastopt.specs.HostScalar): torch keeps them as float32 0-d tensors, and step t uses the values step t - 1
stored (computed with step t - 1's lr, lambd, alpha and t0; `eta` starts as lr at the first step, `mu` as 1), so with
an lr schedule eta lags lr by one step as in torch. They are floats here, rounded to float32 as torch rounds them, and
saved in state_dict as plain floats. While mu is 1 (the first t0 steps), `ax` is a copy of the param, as in torch.
Checks torch does not make: lambd, alpha and t0 are numbers >= 0. Polyak and Juditsky, "Acceleration of Stochastic
Approximation by Averaging", SIAM J. Control Optim., 1992.
"""

from __future__ import annotations

import numpy as np

from fastopt.optimizers._torch_host import torch_oracle
from fastopt.records import BenchCase, ConvergenceEntry, Record, register_record
from fastopt.reference import _direction
from fastopt.specs import HostScalar, Hyper, OptimizerSpec, Slot, at_least_zero, boolean, register, replay_scalars


def reference(param, grad, ax, grad_sign, weight_decay, decay, neg_eta, mu):
    d = _direction(param, grad, grad_sign, weight_decay)
    param *= decay                # param.mul_(1 - lambd * eta)
    param += neg_eta * d          # param.add_(grad, alpha=-eta)
    if mu != 1:
        ax += (param - ax) * mu   # ax.add_(param.sub(ax).mul_(mu))
    else:
        ax[...] = param           # ax.copy_(param)


def _eta_init(h) -> float:
    return float(np.float32(h["lr"]))


def _one(h) -> float:
    return 1.0


_HOST = (HostScalar("eta", _eta_init), HostScalar("mu", _one))


def _advance(h, step, host):
    """Step `step` uses eta and mu as the previous step stored them, then stores new ones (float64 arithmetic,
    rounded to float32: torch.as_tensor of a Python float, copied into the float32 0-d state tensor)."""
    eta, mu = host
    lr, lambd = h["lr"], h["lambd"]
    scalars = (-1.0 if h["maximize"] else 1.0, h["weight_decay"], 1 - lambd * eta, -eta, mu)
    new_eta = float(np.float32(lr / ((1 + lambd * lr * step) ** h["alpha"])))
    new_mu = float(np.float32(1 / max(1, step - h["t0"])))
    return scalars, (new_eta, new_mu)


def _scalars(h, step):
    return replay_scalars(h, step, _HOST, _advance)


def _strategy(st):
    # t0 below 10 (tests/test_backends.py's steps) reaches the averaging branch; 1e6 stays in the copying one
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-3, 0.3), lambd=st.sampled_from([0.0, 1e-4, 0.1]), alpha=st.sampled_from([0.0, 0.75, 1.5]),
        t0=st.sampled_from([0.0, 3.0, 1e6]), weight_decay=st.sampled_from([0.0, 0.0, 1e-2, 0.3]),
        maximize=st.booleans()))


register_record(Record(
    optimizer="asgd", strategy=_strategy,
    busy=dict(lr=0.05, lambd=0.01, alpha=0.5, t0=2.0, weight_decay=0.01, maximize=True),
    golden={   # 12 steps: t0 below that reaches the averaging, with mu = 1 / (t - t0) changing every step
        # with the default lambd (1e-4) eta changes by under 1e-6 a step: a step count off by one would pass unseen
        # at float32's tolerance (tests/test_golden.py's mutants), so the defaults' file sets lambd
        "lambd": {"lambd": 0.01},
        "lr_lambd_alpha_wd_maximize": {"lr": 0.05, "lambd": 0.01, "alpha": 0.5, "weight_decay": 0.1,
                                       "maximize": True},
        "averaging": {"lr": 0.02, "lambd": 0.05, "t0": 3.0},
        "averaging_from_start": {"lr": 0.02, "lambd": 0.1, "alpha": 1.0, "t0": 0.0},
    },
    extreme={"default": {}, "wd": {"weight_decay": 0.01}, "averaging": {"t0": 1.0}},
    oracle=torch_oracle,
    bench=(BenchCase("asgd", "ASGD", {"lr": 1e-2, "t0": 0.0}, torch_fused=False),),
    convergence=(ConvergenceEntry("ASGD", "ASGD", {"lr": 0.05, "t0": 100.0}, {"lr": 0.6, "t0": 20.0}, "sienna"),),
))

ASGD = register(OptimizerSpec(
    name="asgd", class_name="ASGD", kernel="asgd",
    hypers=(Hyper("lr", 1e-2, at_least_zero), Hyper("lambd", 1e-4, at_least_zero), Hyper("alpha", 0.75, at_least_zero),
            Hyper("t0", 1e6, at_least_zero), Hyper("weight_decay", 0.0, at_least_zero),
            Hyper("maximize", False, boolean)),
    slots=(Slot("ax"),),
    scalar_names=("grad_sign", "weight_decay", "decay", "neg_eta", "mu"),
    scalars=_scalars,
    host_state=_HOST,
    advance=_advance,
))
