"""LARS (You et al. 2017, "Large Batch Training of Convolutional Networks", arXiv:1708.03888), following optax.lars
(optax 0.2.8):

    u = g + weight_decay * p
    u = -lr * (u * trust_ratio),  trust_ratio = trust_coefficient * ||p|| / (||u|| + trust_eps) per tensor
                                  (1 when either norm is 0)
    momentum_buffer = u + momentum * momentum_buffer
    p = p + (u + momentum * momentum_buffer if nesterov else momentum_buffer)

Arguments, torch-style, and optax's names: lr = learning_rate (1.0: optax has no default; the trust coefficient
already scales the step), weight_decay (0), trust_coefficient (0.001), trust_eps = eps (0: named apart from the
`eps` > 0 of every other optimizer, which guards a division), momentum (0.9), nesterov (False),
maximize (not in optax: follows the negated gradient). State: momentum_buffer (optax's trace, which holds
-lr-scaled steps).

Per-group switches, optax's weight_decay_mask and trust_ratio_mask for every tensor of a param group:
`exclude_from_weight_decay=True` drops the decay term, `exclude_from_trust_ratio=True` uses trust ratio 1 (plain
momentum SGD for that group, as optax's mask gives). Biases and norms are usually put in such a group:
`fastopt.exclude_bias_and_norm(params, exclude_from_weight_decay=True, exclude_from_trust_ratio=True)`.

The trust ratio is a per-tensor scalar of kernel contract v2 (see fastopt.optimizers.lamb: float64 norms in a fixed
order, the ratio rounded once to the param's dtype; optax sums in the param's dtype: measured on the golden files,
within 0.61 eps of optax, inside the usual golden tolerance).

How it differs elsewhere: the paper and torch-style LARS implementations (e.g. NVIDIA's and timm's) keep the momentum
of lr-free steps and multiply by lr afterwards, and scale the ratio as lr * eta * ||p|| / (||g|| + wd * ||p||); optax
and this class use the norm of the decayed update itself, and keep lr inside the momentum.
"""

from __future__ import annotations

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
    boolean,
    register,
)

from ._optax import oracle
from .lamb import _mask, trust_ratio


def update_value(param, grad, momentum_buffer, lr, grad_sign, weight_decay, momentum, trust_coefficient, trust_eps,
                 use_trust_ratio, nesterov):
    """The update before the trust ratio (optax: add_decayed_weights, skipped when 0)."""
    u = _direction(param, grad, grad_sign, 0.0)
    if weight_decay != 0:
        u = u + weight_decay * param
    return u


def reference(param, grad, momentum_buffer, lr, grad_sign, weight_decay, momentum, trust_coefficient, trust_eps,
              use_trust_ratio, nesterov):
    """One tensor's step: its trust ratio from its reductions (fastopt.reference.tensor_scalars), then `step`."""
    scalars = (lr, grad_sign, weight_decay, momentum, trust_coefficient, trust_eps, use_trust_ratio)
    (ratio,) = tensor_scalars(SPEC, param, grad, (momentum_buffer,), scalars, (nesterov,))
    step(param, grad, momentum_buffer, *scalars, ratio, nesterov)


def step(param, grad, momentum_buffer, lr, grad_sign, weight_decay, momentum, trust_coefficient, trust_eps,
         use_trust_ratio, trust_ratio, nesterov):
    """optax's order: add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate, trace."""
    u = update_value(param, grad, momentum_buffer, lr, grad_sign, weight_decay, momentum, trust_coefficient, trust_eps,
                     use_trust_ratio, nesterov)
    u = (-lr) * (u * trust_ratio)
    momentum_buffer[...] = u + momentum * momentum_buffer
    param += (u + momentum * momentum_buffer) if nesterov else momentum_buffer


def _tensor_scalars(scalars, reduced, dtype):
    if not scalars[6]:   # use_trust_ratio 0: the group is excluded from the trust ratio
        return (1.0,)
    return (trust_ratio(reduced[0], reduced[1], scalars[4], scalars[5], dtype),)


def _scalars(h, step):
    weight_decay = 0.0 if h["exclude_from_weight_decay"] else h["weight_decay"]
    return (h["lr"], _grad_sign(h), weight_decay, h["momentum"], h["trust_coefficient"], h["trust_eps"],
            0.0 if h["exclude_from_trust_ratio"] else 1.0)


def _flags(h) -> tuple:
    return (h["nesterov"],)


# ---- the golden oracle: optax.lars -----------------------------------------------------------------------------------

def _build(optax, h):
    return optax.lars(h["lr"], weight_decay=h["weight_decay"], trust_coefficient=h["trust_coefficient"],
                      eps=h["trust_eps"], momentum=h["momentum"], nesterov=h["nesterov"],
                      weight_decay_mask=lambda p: _mask(p, not h["exclude_from_weight_decay"]),
                      trust_ratio_mask=lambda p: _mask(p, not h["exclude_from_trust_ratio"]))


def _state_of(state):
    # chain(add_decayed_weights, masked(scale_by_trust_ratio), scale_by_learning_rate, trace): no step count (NaN)
    return {"momentum_buffer": state[3].trace}, float("nan")


def _strategy(st):
    return st.fixed_dictionaries(dict(
        lr=st.floats(0.01, 2.0), weight_decay=st.sampled_from([0.0, 1e-3, 0.1]),
        trust_coefficient=st.sampled_from([1e-3, 0.02, 1.0]), trust_eps=st.sampled_from([0.0, 1e-8]),
        momentum=st.sampled_from([0.0, 0.5, 0.9]), nesterov=st.booleans(), maximize=st.booleans(),
        exclude_from_weight_decay=st.booleans(), exclude_from_trust_ratio=st.booleans()))


RECORD = Record(
    optimizer="lars", strategy=_strategy,
    busy=dict(lr=0.5, weight_decay=0.01, trust_coefficient=0.02, trust_eps=1e-8, momentum=0.9, nesterov=True,
              maximize=True),
    golden={
        "default": {},
        "lr_wd_trust": {"lr": 0.5, "weight_decay": 0.01, "trust_coefficient": 0.02, "trust_eps": 1e-8},
        "nesterov_maximize": {"lr": 2.0, "momentum": 0.5, "nesterov": True, "maximize": True},
        "excluded": {"lr": 0.05, "weight_decay": 0.01, "exclude_from_weight_decay": True,
                     "exclude_from_trust_ratio": True},
        "no_trust_ratio": {"lr": 0.05, "weight_decay": 0.01, "exclude_from_trust_ratio": True},
    },
    oracle=oracle(_build, _state_of),
    bench=(BenchCase("lars", "LARS", {"lr": 1.0}, torch_fused=False),),
)

SPEC = OptimizerSpec(
    name="lars", class_name="LARS", kernel="lars",
    hypers=(Hyper("lr", 1.0, at_least_zero), Hyper("weight_decay", 0.0, at_least_zero),
            Hyper("trust_coefficient", 1e-3, above_zero), Hyper("trust_eps", 0.0, at_least_zero),
            Hyper("momentum", 0.9, at_least_zero), Hyper("nesterov", False, boolean),
            Hyper("maximize", False, boolean), Hyper("exclude_from_weight_decay", False, boolean),
            Hyper("exclude_from_trust_ratio", False, boolean)),
    slots=(Slot("momentum_buffer"),),
    scalar_names=("lr", "grad_sign", "weight_decay", "momentum", "trust_coefficient", "trust_eps", "use_trust_ratio"),
    scalars=_scalars,
    flag_names=("nesterov",),
    flags=_flags,
    reductions=(Reduction("sumsq", "param"), Reduction("sumsq", "update")),
    tensor_scalar_names=("trust_ratio",),
    tensor_scalars=_tensor_scalars,
)

register(SPEC)
register_record(RECORD)
