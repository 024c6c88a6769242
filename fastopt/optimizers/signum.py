"""Signum: SGD on the sign of the momentum (Bernstein et al. 2018, "signSGD: Compressed Optimisation for Non-Convex
Problems", arXiv:1802.04434), following optax.signum.

    momentum_buffer = (1 - momentum) * g + momentum * momentum_buffer
    p = p - lr * (sign(momentum_buffer) + weight_decay * p)

Arguments, torch-style, and optax's names: lr = learning_rate (no default in optax: 1e-3); momentum = beta = 0.9
(the paper's and the torch implementations' name for Signum's one decay rate, as in torch.optim.SGD); weight_decay
(not in optax.signum: optax's add_decayed_weights after the sign, where optax.lion places it, so decoupled and
multiplied by lr; 0 by default, which is optax.signum exactly); maximize (follows the negated gradient). State:
momentum_buffer (optax's ema; torch.optim.SGD's name). The moving average is not debiased (optax's debias=False:
only its sign is used).
"""

from __future__ import annotations

from fastopt.records import BenchCase, ConvergenceEntry, Record, register_record
from fastopt.reference import _direction
from fastopt.specs import Hyper, OptimizerSpec, Slot, _grad_sign, at_least_zero, boolean, in_unit_interval, register

from ._optax import oracle, sign


def reference(param, grad, momentum_buffer, lr, grad_sign, weight_decay, beta, one_minus_beta):
    """optax's order: ema (not debiased), scale_by_sign, add_decayed_weights (skipped when the decay is 0), then -lr
    times that."""
    d = _direction(param, grad, grad_sign, 0.0)
    momentum_buffer[...] = one_minus_beta * d + beta * momentum_buffer
    u = sign(momentum_buffer)
    if weight_decay != 0:
        u = u + weight_decay * param
    param += (-lr) * u


def _scalars(h, step):
    return (h["lr"], _grad_sign(h), h["weight_decay"], h["momentum"], 1.0 - h["momentum"])


# ---- the golden oracle: optax.signum (with add_decayed_weights where weight_decay != 0)

def _build(optax, h):
    beta = h["momentum"]
    if h["weight_decay"] == 0:
        return optax.signum(h["lr"], beta)
    return optax.chain(optax.ema(beta, debias=False), optax.scale_by_sign(),
                       optax.add_decayed_weights(h["weight_decay"]), optax.scale_by_learning_rate(h["lr"]))


def _state_of(state):
    ema = state[0]
    return {"momentum_buffer": ema.ema}, ema.count


# ---- the test and benchmark record

def _strategy(st):
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-4, 0.1), momentum=st.sampled_from([0.0, 0.3, 0.9, 0.99]),
        weight_decay=st.sampled_from([0.0, 1e-3, 0.5]), maximize=st.booleans()))


register_record(Record(
    optimizer="signum", strategy=_strategy,
    # optax cannot judge make_golden's extremes (XLA flushes subnormals): kernels vs reference there instead
    extreme_unjudged={"default": {}, "wd_maximize": {"lr": 1e-3, "weight_decay": 0.1, "maximize": True}},
    extreme_events=frozenset({"underflow"}),  # sign-based: averages of gradients only underflow
    busy=dict(lr=0.01, momentum=0.9, weight_decay=0.1, maximize=True),
    golden={
        "default": {},
        "lr_momentum": {"lr": 0.01, "momentum": 0.5},
        "wd_maximize": {"lr": 3e-3, "momentum": 0.95, "weight_decay": 0.1, "maximize": True},
    },
    # No extreme-magnitude files: XLA on CPU flushes subnormal results to zero, so at make_golden's small
    # magnitudes optax's sign is 0 where IEEE arithmetic gives +-1 (fastopt/optimizers/lion.py).
    oracle=oracle(_build, _state_of),
    bench=(BenchCase("signum", "Signum", {"lr": 1e-3}, torch_fused=False),),
    convergence=(ConvergenceEntry("Signum", "Signum", {"lr": 1e-3, "momentum": 0.9},
                                  {"lr": 0.2, "momentum": 0.9}, "olive"),),
))

register(OptimizerSpec(
    name="signum", class_name="Signum", kernel="signum",
    hypers=(Hyper("lr", 1e-3, at_least_zero), Hyper("momentum", 0.9, in_unit_interval),
            Hyper("weight_decay", 0.0, at_least_zero), Hyper("maximize", False, boolean)),
    slots=(Slot("momentum_buffer"),),
    scalar_names=("lr", "grad_sign", "weight_decay", "beta", "one_minus_beta"),
    scalars=_scalars,
))
