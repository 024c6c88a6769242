"""Adan (optax.adan): Adam with a Nesterov-style momentum estimated from the difference of successive gradients.

Follows optax.adan (optax 0.2.8), its order of operations included, which decides where float32 and float64
overflow. Names, torch-style, and optax's:

    lr            learning_rate (optax has no default; 1e-3 here)
    betas         (b1, b2, b3) = (0.98, 0.92, 0.99): decay rates of the gradient, gradient-difference and squared
                  averages (optax's convention: avg = (1 - b) * x + b * avg)
    eps, eps_root eps, eps_root (1e-8 each): sqrt(n_hat + eps_root) + eps
    weight_decay  weight_decay (0.0), decoupled as in optax: p -= lr * (update + weight_decay * p)
    maximize      not in optax: the gradient is negated first (exactly what optax computes on -g)

State: `exp_avg` (optax's m), `exp_avg_sq` (n), `exp_avg_diff` (v) and `pre_grad` (g, the previous gradient), the
names of the authors' PyTorch implementation, and `step`. optax takes no gradient difference on the first step.

optax differs from the paper and the authors' implementation: it weights the gradient difference by 1 - b2 where they
weight it by b2 (0.08 instead of 0.92 at the defaults), both in the squared term and in the update. We follow optax.

Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models", 2022.
"""

from __future__ import annotations

import numpy as np

from fastopt.optimizers._optax import inverse, oracle
from fastopt.records import BenchCase, ConvergenceEntry, Record, register_record
from fastopt.specs import Hyper, OptimizerSpec, Slot, _real, above_zero, at_least_zero, boolean, register


def beta_triple(value):
    """A hyperparameter check: three decay rates in [0, 1) (also used by AdEMAMix)."""
    ok = isinstance(value, (tuple, list)) and len(value) == 3 and all(_real(b) and 0 <= b < 1 for b in value)
    return None if ok else "a triple (beta1, beta2, beta3) of numbers in [0, 1)"


def reference(param, grad, exp_avg, exp_avg_sq, exp_avg_diff, pre_grad, grad_sign, lr, weight_decay, beta1,
              one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3, eps, eps_root, bias_correction1,
              bias_correction2, bias_correction3, first_step):
    g = grad * grad.dtype.type(grad_sign)
    diff = np.zeros_like(g) if first_step else g - pre_grad
    exp_avg[...] = one_minus_beta1 * g + beta1 * exp_avg        # optax's update_moment: (1 - b) * x + b * avg
    exp_avg_diff[...] = one_minus_beta2 * diff + beta2 * exp_avg_diff
    sq = g + one_minus_beta2 * diff
    exp_avg_sq[...] = one_minus_beta3 * (sq * sq) + beta3 * exp_avg_sq
    m_hat = exp_avg * inverse(bias_correction1, param)
    v_hat = exp_avg_diff * inverse(bias_correction2, param)
    n_hat = exp_avg_sq * inverse(bias_correction3, param)
    u = (m_hat + one_minus_beta2 * v_hat) / (np.sqrt(n_hat + eps_root) + eps)
    if weight_decay != 0:   # optax.add_decayed_weights skips a zero weight decay (no 0 * inf)
        u = u + weight_decay * param
    param -= lr * u
    pre_grad[...] = g


def _scalars(h, step):
    b1, b2, b3 = h["betas"]
    return (-1.0 if h["maximize"] else 1.0, h["lr"], h["weight_decay"], b1, 1.0 - b1, b2, 1.0 - b2, b3, 1.0 - b3,
            h["eps"], h["eps_root"], 1.0 - b1 ** step, 1.0 - b2 ** step, 1.0 - b3 ** step,
            1.0 if step == 1 else 0.0)


# ---- the golden oracle: optax.adan (tests/golden/make_golden.py; jax and optax are imported only there) -------------

def _build(optax, h):
    b1, b2, b3 = h["betas"]
    return optax.adan(h["lr"], b1, b2, b3, eps=h["eps"], eps_root=h["eps_root"], weight_decay=h["weight_decay"])


def _state_of(state):
    s = state[0]   # chain(scale_by_adan, add_decayed_weights, scale_by_learning_rate)
    return {"exp_avg": s.m, "exp_avg_sq": s.n, "exp_avg_diff": s.v, "pre_grad": s.g}, s.t


def _strategy(st):
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-3, 0.3),
        betas=st.tuples(st.sampled_from([0.0, 0.9, 0.98]), st.sampled_from([0.0, 0.5, 0.92]),
                        st.sampled_from([0.5, 0.99, 0.999])),
        eps=st.sampled_from([1e-8, 1e-3]), eps_root=st.sampled_from([0.0, 1e-8]),
        weight_decay=st.sampled_from([0.0, 0.0, 1e-2, 0.3]), maximize=st.booleans()))


register_record(Record(
    optimizer="adan", strategy=_strategy,
    # optax cannot judge make_golden's extremes (XLA flushes subnormals): kernels vs reference there instead
    extreme_unjudged={"default": {}, "wd_maximize": {"lr": 0.01, "weight_decay": 0.01, "maximize": True},
                      "tiny_eps": {"lr": 1e-5, "eps": "tiny", "eps_root": 0.0}},
    busy=dict(lr=0.05, betas=(0.9, 0.8, 0.99), eps=1e-6, eps_root=1e-8, weight_decay=0.01, maximize=True),
    golden={
        "default": {},
        "lr_wd_maximize": {"lr": 0.05, "weight_decay": 0.1, "maximize": True},
        "betas_eps": {"lr": 0.02, "betas": [0.9, 0.5, 0.999], "eps": 1e-6, "eps_root": 0.0},
    },
    # No extreme-magnitude files: XLA on CPU flushes subnormal results to zero (measured: optax's float32 exp_avg is 0
    # where (1 - b1) * 1e-36 is 2e-38 in IEEE arithmetic). tests/test_extremes_unjudged.py checks the
    # kernels against the reference at those magnitudes instead.
    oracle=oracle(_build, _state_of),
    bench=(BenchCase("adan", "Adan", {"lr": 1e-3}, torch_fused=False),),
    convergence=(ConvergenceEntry("Adan", "Adan", {"lr": 0.001}, {"lr": 0.3}, "olive"),),
))

ADAN = register(OptimizerSpec(
    name="adan", class_name="Adan", kernel="adan",
    hypers=(Hyper("lr", 1e-3, at_least_zero), Hyper("betas", (0.98, 0.92, 0.99), beta_triple),
            Hyper("eps", 1e-8, above_zero), Hyper("weight_decay", 0.0, at_least_zero),
            Hyper("eps_root", 1e-8, at_least_zero), Hyper("maximize", False, boolean)),
    slots=(Slot("exp_avg"), Slot("exp_avg_sq"), Slot("exp_avg_diff"), Slot("pre_grad")),
    scalar_names=("grad_sign", "lr", "weight_decay", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "beta3",
                  "one_minus_beta3", "eps", "eps_root", "bias_correction1", "bias_correction2", "bias_correction3",
                  "first_step"),
    scalars=_scalars,
))
