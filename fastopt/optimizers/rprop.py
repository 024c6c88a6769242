"""Rprop (torch.optim.Rprop): resilient backpropagation, a per-element step size that grows by etaplus while the
gradient keeps its sign and shrinks by etaminus when it flips (that step then leaves the element where it is).

Follows torch.optim.Rprop exactly (single-tensor path): argument names and defaults, the state names `prev` and
`step_size` (filled with the lr of the first step: lr is read only then, as in torch), `step` from 1, and torch's
edge cases: the sign of grad * prev as rounded in the array's dtype (an underflow to 0 counts as no sign), torch.sign
of NaN being 0, and clamp keeping NaN. Checks torch leaves out: `step_sizes` must be 0 <= min <= max.
Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation Learning: The RPROP Algorithm", 1993.
"""

from __future__ import annotations

import numbers

import numpy as np

from fastopt.records import BenchCase, ConvergenceEntry, Record, register_record
from fastopt.specs import Hyper, OptimizerSpec, Slot, at_least_zero, boolean, register


def reference(param, grad, prev, step_size, grad_sign, etaminus, etaplus, step_size_min, step_size_max):
    t = param.dtype.type
    d = grad * t(grad_sign)
    agreement = d * prev   # torch: sign(grad * prev), the product rounded in the array's dtype
    factor = np.where(agreement > 0, t(etaplus),
                      np.where(agreement < 0, t(etaminus), np.where(agreement == 0, t(1), agreement)))  # NaN stays
    # step_size.mul_(factor).clamp_(min, max): NaN stays NaN, and min > max would give max, as in torch
    step_size[...] = np.minimum(np.maximum(step_size * factor, t(step_size_min)), t(step_size_max))
    d = np.where(factor == t(etaminus), t(0), d)   # torch: grad[sign.eq(etaminus)] = 0
    sign = (d > 0).astype(param.dtype) - (d < 0).astype(param.dtype)   # torch.sign: 0 for NaN and for -0.0
    param -= sign * step_size   # addcmul_(sign, step_size, value=-1): every product here is exact
    prev[...] = d


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def etas_pair(value):
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_real, value)) and \
        0 < value[0] < 1 < value[1]
    return None if ok else "a pair (etaminus, etaplus) with 0 < etaminus < 1 < etaplus"


def step_sizes_pair(value):
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_real, value)) and \
        0 <= value[0] <= value[1]
    return None if ok else "a pair (min, max) of step sizes with 0 <= min <= max"


def _initial_step_size(h) -> float:
    return h["lr"]


def _scalars(h, step):
    (etaminus, etaplus), (smallest, largest) = h["etas"], h["step_sizes"]
    return (-1.0 if h["maximize"] else 1.0, etaminus, etaplus, smallest, largest)


def _strategy(st):
    # step sizes start at lr and move by factors of 0.3-1.5 over 10 steps: both clamps are reached
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-3, 0.3), etas=st.sampled_from([(0.5, 1.2), (0.3, 1.5)]),
        step_sizes=st.sampled_from([(1e-6, 50.0), (1e-3, 0.2), (0.0, 0.05)]), maximize=st.booleans()))


register_record(Record(
    optimizer="rprop", strategy=_strategy,
    busy=dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2), maximize=True),
    golden={
        "default": {},
        "lr_etas_step_sizes_maximize": {"lr": 0.05, "etas": [0.3, 1.5], "step_sizes": [1e-3, 0.2], "maximize": True},
        "clamped": {"lr": 0.5, "etas": [0.2, 1.9], "step_sizes": [0.05, 0.6]},
    },
    extreme={"default": {}, "clamped_maximize": {"etas": [0.2, 1.9], "step_sizes": [1e-3, 0.03], "maximize": True}},
    bench=(BenchCase("rprop", "Rprop", {"lr": 1e-2}, torch_fused=False),),
    convergence=(ConvergenceEntry("Rprop", "Rprop", {"lr": 1e-4, "step_sizes": (1e-6, 1e-2)}, {"lr": 0.1},
                                  "chocolate"),),
))

RPROP = register(OptimizerSpec(
    name="rprop", class_name="Rprop", kernel="rprop",
    hypers=(Hyper("lr", 1e-2, at_least_zero), Hyper("etas", (0.5, 1.2), etas_pair),
            Hyper("step_sizes", (1e-6, 50.0), step_sizes_pair), Hyper("maximize", False, boolean)),
    slots=(Slot("prev"), Slot("step_size", init=_initial_step_size)),
    scalar_names=("grad_sign", "etaminus", "etaplus", "step_size_min", "step_size_max"),
    scalars=_scalars,
))
