"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675), following optax.lion.

    c = (1 - beta1) * g + beta1 * exp_avg
    p = p - lr * (sign(c) + weight_decay * p)
    exp_avg = (1 - beta2) * g + beta2 * exp_avg

Arguments, torch-style, and optax's names: lr = learning_rate (no default in optax: 1e-4, lion-pytorch's),
betas = (b1, b2) = (0.9, 0.99), weight_decay = weight_decay (1e-3 as in optax; decoupled and multiplied by lr),
maximize (not in optax: follows the negated gradient). State: exp_avg (optax's mu, lion-pytorch's exp_avg).
optax's mu_dtype and mask are not offered (the state has the param's dtype; use param groups for masks).

lion-pytorch's Lion (the second oracle) computes the same step with the decay applied first,
p * (1 - lr * weight_decay) - lr * sign(c), which rounds differently (tests/test_lion_pytorch_golden.py).
"""

from __future__ import annotations

from fastopt.records import BenchCase, ConvergenceEntry, Record, register_record
from fastopt.reference import _direction
from fastopt.specs import Hyper, OptimizerSpec, Slot, _grad_sign, at_least_zero, beta_pair, boolean, register

from ._optax import oracle, sign


def reference(param, grad, exp_avg, lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2):
    """optax's order: scale_by_lion, then add_decayed_weights (skipped when the decay is 0), then -lr times that."""
    d = _direction(param, grad, grad_sign, 0.0)
    u = sign(one_minus_beta1 * d + beta1 * exp_avg)
    if weight_decay != 0:
        u = u + weight_decay * param
    exp_avg[...] = one_minus_beta2 * d + beta2 * exp_avg
    param += (-lr) * u


def _scalars(h, step):
    beta1, beta2 = h["betas"]
    return (h["lr"], _grad_sign(h), h["weight_decay"], beta1, 1.0 - beta1, beta2, 1.0 - beta2)


# ---- the golden oracle: optax.lion -----------------------------------------------------------------------------------

def _build(optax, h):
    b1, b2 = h["betas"]
    return optax.lion(h["lr"], b1=b1, b2=b2, weight_decay=h["weight_decay"])


def _state_of(state):
    lion_state = state[0]   # chain(scale_by_lion, add_decayed_weights, scale_by_learning_rate)
    return {"exp_avg": lion_state.mu}, lion_state.count


# ---- the test and benchmark record -----------------------------------------------------------------------------------

def _strategy(st):
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-4, 0.1), betas=st.tuples(st.sampled_from([0.0, 0.3, 0.9]), st.sampled_from([0.0, 0.9, 0.99])),
        weight_decay=st.sampled_from([0.0, 1e-3, 0.5]), maximize=st.booleans()))


register_record(Record(
    optimizer="lion", strategy=_strategy,
    # optax cannot judge make_golden's extremes (XLA flushes subnormals): kernels vs reference there instead
    extreme_unjudged={"default": {}, "wd_maximize": {"lr": 1e-3, "weight_decay": 0.1, "maximize": True}},
    extreme_events=frozenset({"underflow"}),  # sign-based: averages of gradients only underflow
    busy=dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.1, maximize=True),
    golden={
        "default": {},
        "lr_betas": {"lr": 0.01, "betas": [0.8, 0.95]},
        "no_wd_maximize": {"lr": 3e-3, "weight_decay": 0.0, "maximize": True},
        "low_betas_wd": {"lr": 0.02, "betas": [0.3, 0.6], "weight_decay": 0.5},
    },
    # No extreme-magnitude files: XLA on CPU flushes subnormal results to zero (measured: float32 1e-38 * 0.1 gives
    # 0), so at make_golden's small magnitudes optax's sign(c) is 0 where IEEE arithmetic gives +-1. The overflow
    # magnitudes alone would be a fair comparison (fastopt/optimizers/_optax.py).
    oracle=oracle(_build, _state_of),
    bench=(BenchCase("lion", "Lion", {"lr": 1e-4}, torch_fused=False),),
    convergence=(ConvergenceEntry("Lion", "Lion", {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0},
                                  {"lr": 0.2, "betas": (0.9, 0.99), "weight_decay": 0.0}, "gold"),),
))

register(OptimizerSpec(
    name="lion", class_name="Lion", kernel="lion",
    hypers=(Hyper("lr", 1e-4, at_least_zero), Hyper("betas", (0.9, 0.99), beta_pair),
            Hyper("weight_decay", 1e-3, at_least_zero), Hyper("maximize", False, boolean)),
    slots=(Slot("exp_avg"),),
    scalar_names=("lr", "grad_sign", "weight_decay", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2"),
    scalars=_scalars,
))
