"""Schedule-Free SGD and AdamW, following the `schedulefree` package (SGDScheduleFree, AdamWScheduleFree, 1.4.1).

Defazio et al., "The Road Less Scheduled", 2024. The optimizer keeps two points: z (the SGD/Adam iterate, state slot
`z`) and x (a weighted average of the z's), and evaluates gradients at y = (1 - beta1) z + beta1 x; the param holds y
while training and x while evaluating. One step, as the package computes it (k = steps taken before this one):

    sched = (k + 1) / warmup_steps if k < warmup_steps else 1;  lr_k = lr * sched;  lr_max = max(lr_max, lr_k)
    weight = (k + 1) ** r * lr_max ** weight_lr_power;  weight_sum += weight;  ckp1 = weight / weight_sum
    AdamW only: v = beta2 v + (1 - beta2) g^2;  d = g / (sqrt(v / (1 - beta2^(k+1))) + eps)   (SGD: d = g)
    d = d + weight_decay * y;  y = lerp(y, z, ckp1) + lr_k (beta1 (1 - ckp1) - 1) d;  z = z - lr_k d

and `eval()` / `train()` move every param that has state: y -> x is lerp(y, z, 1 - 1/beta1), x -> y is
lerp(x, z, 1 - beta1), each one fused pass over the params and z (fastopt.modes). Both run in the kernel family
"schedulefree" (slots z and exp_avg_sq; flags `adaptive`, AdamW's second moment, and `switch`, the train/eval pass).

Names: the package's, which are torch-style already (`lr`, `betas` (beta1, beta2), `eps`, `weight_decay`, and the
method's `warmup_steps`, `r`, `weight_lr_power`; SGD's momentum is `momentum`, the package's name, as torch's SGD has
it). Defaults are the package's. State per param: `z` and (AdamW) `exp_avg_sq`, the package's names and values, so
checkpoints map one to one; the mode is `param_groups[i]["train_mode"]` as in the package.

Differences from the package, all deliberate:
- A new optimizer starts in train mode (the package starts in eval mode and refuses to step until `train()` is called;
  a first `train()` before any step moves nothing in either, so loops written for the package run unchanged).
  Stepping in eval mode raises ValueError, as the package raises. `foreach` is an implementation switch: not taken.
- The package keeps k, lr_max and weight_sum per param group; fastopt keeps them per param (`step`, and the host
  scalars `lr_max` and `weight_sum` in each state entry), and every param of a group steps together, so they agree.
  load_state_dict takes the package's own checkpoints too: a group's k, lr_max and weight_sum become its params'.
- Checks the package does not make: lr, weight_decay >= 0; eps > 0 (0 divides 0 by 0 where every gradient was 0);
  beta1 (momentum) in (0, 1) (eval divides by it; the package checks momentum too), beta2 in [0, 1); warmup_steps a
  whole number >= 0; r finite; weight_lr_power >= 0 (a negative power with lr = 0 divides by zero in the package).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from fastopt.modes import ModeSwitch, register_mode_switch
from fastopt.records import BenchCase, ConvergenceEntry, Record, register_record
from fastopt.reference import _lerp
from fastopt.specs import (
    HostScalar,
    Hyper,
    OptimizerSpec,
    Slot,
    above_zero,
    at_least_zero,
    finite,
    register,
    replay_scalars,
)

# ---- the reference (NumPy, in place) --------------------------------------------------------------------------------

def reference(param, grad, z, exp_avg_sq, lr, ckp1, y_step, beta2, one_minus_beta2, bias_correction2, eps,
              weight_decay, first, adaptive, switch):
    if switch:   # train()/eval(): z arrives in the grad's place; nothing but the param changes
        param[...] = _lerp(param, grad, ckp1)
        return
    if first:    # the package's z starts as a copy of the param, made by its first step
        z[...] = param
    if adaptive:
        exp_avg_sq[...] = exp_avg_sq * beta2 + (one_minus_beta2 * grad) * grad   # mul_, then addcmul_'s order
        d = grad / (np.sqrt(exp_avg_sq / bias_correction2) + eps)
    else:
        d = grad
    if weight_decay != 0:
        d = d + weight_decay * param      # decay at y, as the package adds it to the normalised gradient
    param[...] = _lerp(param, z, ckp1) + y_step * d
    z[...] = z - lr * d


def _minus_one(h) -> float:
    return -1.0   # the package's lr_max before the first step


# ---- the host arithmetic --------------------------------------------------------------------------------------------
# Per param, as host state (fastopt.specs.HostScalar), the package's lr_max and weight_sum; k is the step count.

_HOST = (HostScalar("lr_max", _minus_one), HostScalar("weight_sum"))


def _weights(h, step, host):
    """(this step's lr, ckp1, host after) from the host values before step `step`, in the package's arithmetic."""
    lr_max, weight_sum = host
    warmup, k = h["warmup_steps"], step - 1
    lr = h["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
    lr_max = max(lr, lr_max)
    try:
        weight = ((k + 1) ** h["r"]) * (lr_max ** h["weight_lr_power"])
    except OverflowError:
        raise ValueError(f"schedule-free: the average's weight (step ** r * lr_max ** weight_lr_power) overflows at "
                         f"step {step} with r={h['r']!r}, weight_lr_power={h['weight_lr_power']!r}") from None
    weight_sum = weight_sum + weight
    ckp1 = weight / weight_sum if weight_sum != 0 else 0.0   # the package: 0 on ZeroDivisionError
    return lr, ckp1, (lr_max, weight_sum)


def _sgd_advance(h, step, host):
    lr, ckp1, after = _weights(h, step, host)
    return (lr, ckp1, lr * (h["momentum"] * (1 - ckp1) - 1), 0.0, 1.0, 1.0, 0.0, h["weight_decay"],
            1.0 if step == 1 else 0.0), after


def _adamw_advance(h, step, host):
    beta1, beta2 = h["betas"]
    lr, ckp1, after = _weights(h, step, host)
    return (lr, ckp1, lr * (beta1 * (1 - ckp1) - 1), beta2, 1 - beta2, 1 - beta2 ** step, h["eps"],
            h["weight_decay"], 1.0 if step == 1 else 0.0), after


def _sgd_scalars(h, step):
    return replay_scalars(h, step, _HOST, _sgd_advance)


def _adamw_scalars(h, step):
    return replay_scalars(h, step, _HOST, _adamw_advance)


def _sgd_flags(h):
    return (False, False)


def _adamw_flags(h):
    return (True, False)


def _switch_weight(beta1, to_train) -> float:
    return 1 - beta1 if to_train else 1 - 1 / beta1   # x -> y, y -> x (z is fixed)


def _switch_scalars(beta1, to_train):
    return (0.0, _switch_weight(beta1, to_train), 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0)


def _sgd_switch_scalars(h, to_train):
    return _switch_scalars(h["momentum"], to_train)


def _adamw_switch_scalars(h, to_train):
    return _switch_scalars(h["betas"][0], to_train)


def _sgd_switch_flags(h):
    return (False, True)


def _adamw_switch_flags(h):
    return (True, True)


# ---- checks ---------------------------------------------------------------------------------------------------------

def _open_unit(value):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < 1
    return None if ok else "a number in (0, 1)"


def _betas(value):
    ok = (isinstance(value, (tuple, list)) and len(value) == 2 and _open_unit(value[0]) is None
          and isinstance(value[1], numbers.Real) and not isinstance(value[1], bool) and 0 <= value[1] < 1)
    return None if ok else "a pair (beta1, beta2) with beta1 in (0, 1) (eval() divides by it) and beta2 in [0, 1)"


def _whole(value):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0 \
        and value == int(value)
    return None if ok else "a whole number >= 0"


def _common_hypers():
    return (Hyper("warmup_steps", 0, _whole), Hyper("r", 0.0, finite), Hyper("weight_lr_power", 2.0, at_least_zero))


def _z_slot():
    return Slot("z")


def _adaptive(h) -> bool:
    return "betas" in h


# ---- records --------------------------------------------------------------------------------------------------------

def _schedule_strategy(st):
    return dict(weight_decay=st.sampled_from([0.0, 0.0, 1e-2, 0.3]), warmup_steps=st.sampled_from([0, 0, 3, 10]),
                r=st.sampled_from([0.0, 0.0, 0.5, 2.0]), weight_lr_power=st.sampled_from([2.0, 2.0, 0.0, 1.0]))


def _sgd_strategy(st):
    return st.fixed_dictionaries(dict(lr=st.floats(1e-3, 1.0), momentum=st.sampled_from([0.3, 0.5, 0.9, 0.99]),
                                      **_schedule_strategy(st)))


def _adamw_strategy(st):
    # beta1 0.3: 1 - beta1 >= 0.5 and 1 - 1/beta1 <= -0.5 take the other branch of torch's lerp in the switches
    return st.fixed_dictionaries(dict(lr=st.floats(1e-3, 0.1),
                                      betas=st.tuples(st.sampled_from([0.3, 0.9, 0.95]), st.sampled_from([0.9, 0.999])),
                                      eps=st.sampled_from([1e-8, 1e-3]), **_schedule_strategy(st)))


def _run_schedulefree(name, hyper, dtype, params0, grads, steps, switches=()):
    """The oracle: the schedulefree package (torch), on the given params and grads; `switches` lists the steps
    before which eval() then train() are called. Returns (trajectory, states) as make_golden.run_torch does."""
    import schedulefree
    import torch

    tdtype = getattr(torch, dtype)
    params = [torch.tensor(np.asarray(p, dtype=dtype), dtype=tdtype) for p in params0]
    kwargs = dict(hyper)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    cls = schedulefree.AdamWScheduleFree if name == "schedulefree_adamw" else schedulefree.SGDScheduleFree
    opt = cls(params, **kwargs)
    opt.train()
    trajectory = [np.empty((steps,) + p.shape, dtype=dtype) for p in params0]
    for t in range(steps):
        if t in switches:
            opt.eval()
            opt.train()
        for p, g in zip(params, grads):
            p.grad = torch.tensor(np.asarray(g[t], dtype=dtype), dtype=tdtype)
        opt.step()
        for i, p in enumerate(params):
            trajectory[i][t] = p.detach().numpy()
    states = [({k: v.detach().numpy().copy() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)},
               float(opt.param_groups[0]["k"])) for p in params]
    return trajectory, states


def _oracle(name, hyper, dtype, params0, grads, steps):
    return _run_schedulefree(name, hyper, dtype, params0, grads, steps)


register_record(Record(
    optimizer="schedulefree_sgd", strategy=_sgd_strategy,
    busy=dict(lr=0.5, momentum=0.9, weight_decay=0.01, warmup_steps=3, r=0.5, weight_lr_power=1.0),
    golden={
        "default": {},
        "lr_momentum_wd": {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.05},
        "warmup_r_power": {"lr": 0.2, "warmup_steps": 5, "r": 1.0, "weight_lr_power": 1.0},
        # 1 - momentum >= 0.5 and 1 - 1/momentum <= -0.5: the other branch of torch's lerp in the switches
        "low_momentum": {"lr": 0.05, "momentum": 0.3, "warmup_steps": 2, "weight_lr_power": 0.0},
    },
    extreme={"default": {}, "wd": {"lr": 0.01, "weight_decay": 0.01}},
    oracle=_oracle,
    cuda_grid={"warmup_steps": 3, "r": 0.5},
    bench=(BenchCase("schedulefree_sgd", "ScheduleFreeSGD", {"lr": 1e-2}, torch_fused=False),),
    convergence=(ConvergenceEntry("ScheduleFreeSGD", "ScheduleFreeSGD", {"lr": 0.1, "warmup_steps": 50},
                                  {"lr": 1.0}, "olive"),),
))

register_record(Record(
    optimizer="schedulefree_adamw", strategy=_adamw_strategy,
    busy=dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, warmup_steps=3, r=0.5,
              weight_lr_power=1.0),
    golden={
        "default": {},
        "lr_betas_eps_wd": {"lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1},
        "warmup_r_power": {"lr": 0.02, "warmup_steps": 5, "r": 1.0, "weight_lr_power": 1.0},
        "low_beta1": {"lr": 0.01, "betas": [0.3, 0.9], "warmup_steps": 2, "weight_lr_power": 0.0},
    },
    extreme={"default": {}, "wd": {"weight_decay": 0.01}, "tiny_eps": {"lr": 1e-5, "eps": "tiny"}},
    oracle=_oracle,
    cuda_grid={"warmup_steps": 3, "r": 0.5},
    bench=(BenchCase("schedulefree_adamw", "ScheduleFreeAdamW", {"lr": 2.5e-3}, torch_fused=False),),
    convergence=(ConvergenceEntry("ScheduleFreeAdamW", "ScheduleFreeAdamW", {"lr": 0.0025, "warmup_steps": 50},
                                  {"lr": 0.3}, "teal"),),
))


# ---- mode switches, then the declarations ---------------------------------------------------------------------------

_GROUP_STATE = (("k", "step"), ("lr_max", "lr_max"), ("weight_sum", "weight_sum"))  # the package's
register_mode_switch("schedulefree_sgd", ModeSwitch(key="train_mode", slot="z", flags=_sgd_switch_flags,
                                                    scalars=_sgd_switch_scalars, group_state=_GROUP_STATE))
register_mode_switch("schedulefree_adamw", ModeSwitch(key="train_mode", slot="z", flags=_adamw_switch_flags,
                                                      scalars=_adamw_switch_scalars, group_state=_GROUP_STATE))

_SCALARS = ("lr", "ckp1", "y_step", "beta2", "one_minus_beta2", "bias_correction2", "eps", "weight_decay", "first")
_FLAGS = ("adaptive", "switch")

SCHEDULEFREE_SGD = register(OptimizerSpec(
    name="schedulefree_sgd", class_name="ScheduleFreeSGD", kernel="schedulefree",
    hypers=(Hyper("lr", 1.0, at_least_zero), Hyper("momentum", 0.9, _open_unit),
            Hyper("weight_decay", 0.0, at_least_zero), *_common_hypers()),
    slots=(_z_slot(), Slot("exp_avg_sq", active=_adaptive)),
    scalar_names=_SCALARS, scalars=_sgd_scalars, flag_names=_FLAGS, flags=_sgd_flags,
    host_state=_HOST, advance=_sgd_advance,
))

SCHEDULEFREE_ADAMW = register(OptimizerSpec(
    name="schedulefree_adamw", class_name="ScheduleFreeAdamW", kernel="schedulefree",
    hypers=(Hyper("lr", 0.0025, at_least_zero), Hyper("betas", (0.9, 0.999), _betas),
            Hyper("eps", 1e-8, above_zero), Hyper("weight_decay", 0.0, at_least_zero), *_common_hypers()),
    slots=(_z_slot(), Slot("exp_avg_sq", active=_adaptive)),
    scalar_names=_SCALARS, scalars=_adamw_scalars, flag_names=_FLAGS, flags=_adamw_flags,
    host_state=_HOST, advance=_adamw_advance,
))
