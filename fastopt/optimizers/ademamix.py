"""AdEMAMix (optax.contrib.ademamix): AdamW whose numerator mixes a fast and a slow average of the gradients,
(m_fast / bias_correction1 + alpha * m_slow) / (sqrt(v / bias_correction2 + eps_root) + eps), with the paper's
warm-ups of alpha and beta3.

Follows optax.contrib.ademamix (optax 0.2.8), its order of operations included, which decides where float32 and
float64 overflow. Names, torch-style, and optax's:

    lr            learning_rate (optax has no default; 1e-3 here)
    betas         (b1, b2, b3) = (0.9, 0.999, 0.9999): fast average, second moment, slow average
    eps, eps_root eps (1e-8), eps_root (0.0)
    weight_decay  weight_decay (0.0), decoupled as in optax: p -= lr * (update + weight_decay * p)
    alpha         alpha (5.0): the slow average's weight
    alpha_warmup  T_alpha (0: none): optax takes alpha as a schedule of its count t = step - 1; with a warm-up, the
                  schedule is the paper's alpha_t = alpha * t / T_alpha while t < T_alpha, then alpha
    beta3_warmup  T_beta3 (0: none): likewise b3 as the paper's schedule, which moves 1 / log(beta) linearly from
                  beta1 to beta3: beta3_t = min(exp(log(beta1) log(beta3) / ((1 - t / T) log(beta3) +
                  t / T log(beta1))), beta3) while t < T_beta3, then beta3 (computed on the host in float64)
    maximize      not in optax: the gradient is negated first (exactly what optax computes on -g)

State: `exp_avg_fast` (optax's m1), `exp_avg_slow` (m2) and `exp_avg_sq` (nu), the names of the authors' PyTorch
implementation, and `step`. Only the fast average and the second moment are bias-corrected.

Pagliardini et al., "The AdEMAMix Optimizer: Better, Faster, Older", 2024.
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from fastopt.optimizers._optax import inverse, oracle
from fastopt.optimizers.adan import beta_triple
from fastopt.records import BenchCase, ConvergenceEntry, Record, register_record
from fastopt.specs import Hyper, OptimizerSpec, Slot, _real, above_zero, at_least_zero, boolean, register


def _warmup_length(value):
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0
    return None if ok else "a whole number of steps >= 0 (0: no warm-up)"


def _finite_at_least_zero(value):
    return None if _real(value) and 0 <= value < math.inf else "a finite number >= 0"


def warmups(h, step: int) -> tuple[float, float]:
    """(alpha, beta3) for a param's step `step` (from 1), in float64: optax evaluates its schedules at the number of
    earlier steps, t = step - 1."""
    b1, _, b3 = h["betas"]
    t = step - 1
    t_alpha, t_beta3 = h["alpha_warmup"], h["beta3_warmup"]
    alpha = h["alpha"] * t / t_alpha if t < t_alpha else h["alpha"]
    if t >= t_beta3 or b1 >= b3:   # past the warm-up; or beta1 >= beta3, where the paper's min(., beta3) is beta3
        beta3 = b3
    elif b1 == 0:                  # the formula's limit as beta1 -> 0: beta3 ** (T / t), and beta1 = 0 at t = 0
        beta3 = 0.0 if t == 0 else b3 ** (t_beta3 / t)
    else:
        a = t / t_beta3
        beta3 = min(math.exp(math.log(b1) * math.log(b3) / ((1 - a) * math.log(b3) + a * math.log(b1))), b3)
    return alpha, beta3


def reference(param, grad, exp_avg_fast, exp_avg_slow, exp_avg_sq, grad_sign, lr, weight_decay, beta1,
              one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3, alpha, eps, eps_root,
              bias_correction1, bias_correction2):
    g = grad * grad.dtype.type(grad_sign)
    exp_avg_fast[...] = one_minus_beta1 * g + beta1 * exp_avg_fast   # optax's update_moment: (1 - b) * x + b * avg
    exp_avg_slow[...] = one_minus_beta3 * g + beta3 * exp_avg_slow
    exp_avg_sq[...] = one_minus_beta2 * (g * g) + beta2 * exp_avg_sq
    m_hat = exp_avg_fast * inverse(bias_correction1, param)
    nu_hat = exp_avg_sq * inverse(bias_correction2, param)
    u = (m_hat + alpha * exp_avg_slow) / (np.sqrt(nu_hat + eps_root) + eps)
    if weight_decay != 0:   # optax.add_decayed_weights skips a zero weight decay (no 0 * inf)
        u = u + weight_decay * param
    param -= lr * u


def _scalars(h, step):
    b1, b2, _ = h["betas"]
    alpha, b3 = warmups(h, step)
    return (-1.0 if h["maximize"] else 1.0, h["lr"], h["weight_decay"], b1, 1.0 - b1, b2, 1.0 - b2, b3, 1.0 - b3,
            alpha, h["eps"], h["eps_root"], 1.0 - b1 ** step, 1.0 - b2 ** step)


# ---- the golden oracle: optax.contrib.ademamix (tests/golden/make_golden.py; jax and optax imported only there) ----

def _schedule(h, which, count):
    """optax calls a schedule with its count (un-jitted: a concrete array); a Python float, like a constant b3 or
    alpha, meets the arrays in their dtype after 1 - beta3 is computed in float64."""
    return warmups(h, int(count) + 1)[which]


def _build(optax, h):
    b1, b2, b3 = h["betas"]
    alpha = functools.partial(_schedule, h, 0) if h["alpha_warmup"] else h["alpha"]
    beta3 = functools.partial(_schedule, h, 1) if h["beta3_warmup"] else b3
    return optax.contrib.ademamix(h["lr"], b1, b2, beta3, alpha, eps=h["eps"], eps_root=h["eps_root"],
                                  weight_decay=h["weight_decay"])


def _state_of(state):
    s = state[0]   # chain(scale_by_ademamix, add_decayed_weights, scale_by_learning_rate)
    return {"exp_avg_fast": s.m1, "exp_avg_slow": s.m2, "exp_avg_sq": s.nu}, s.count


def _strategy(st):
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-3, 0.3),
        betas=st.tuples(st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.5, 0.999]),
                        st.sampled_from([0.9, 0.999, 0.9999])),
        eps=st.sampled_from([1e-8, 1e-3]), weight_decay=st.sampled_from([0.0, 0.0, 1e-2, 0.3]),
        alpha=st.sampled_from([0.0, 2.0, 5.0]), alpha_warmup=st.sampled_from([0, 3]),
        beta3_warmup=st.sampled_from([0, 4]), eps_root=st.sampled_from([0.0, 1e-8]), maximize=st.booleans()))


register_record(Record(
    optimizer="ademamix", strategy=_strategy,
    # optax cannot judge make_golden's extremes (XLA flushes subnormals): kernels vs reference there instead
    extreme_unjudged={"default": {}, "warmups_wd": {"alpha_warmup": 2, "beta3_warmup": 3, "weight_decay": 0.01},
                      "tiny_eps": {"lr": 1e-5, "eps": "tiny", "maximize": True}},
    busy=dict(lr=0.05, betas=(0.8, 0.99, 0.999), eps=1e-6, weight_decay=0.01, alpha=3.0, alpha_warmup=3,
              beta3_warmup=4, eps_root=1e-8, maximize=True),
    golden={
        "default": {},
        # both warm-ups end inside the 12 steps
        "warmups": {"lr": 0.01, "betas": [0.9, 0.99, 0.999], "alpha_warmup": 8, "beta3_warmup": 10},
        "wd_maximize_eps": {"lr": 0.005, "alpha": 2.0, "weight_decay": 0.1, "eps": 1e-6, "eps_root": 1e-8,
                            "maximize": True},
    },
    # No extreme-magnitude files: XLA on CPU flushes subnormal results to zero (see fastopt/optimizers/adan.py);
    # tests/test_extremes_unjudged.py checks the kernels against the reference at those magnitudes.
    oracle=oracle(_build, _state_of),
    bench=(BenchCase("ademamix", "AdEMAMix", {"lr": 1e-3}, torch_fused=False),),
    convergence=(ConvergenceEntry("AdEMAMix", "AdEMAMix", {"lr": 0.001, "alpha_warmup": 100, "beta3_warmup": 100},
                                  {"lr": 0.3, "alpha": 2.0, "betas": (0.9, 0.999, 0.99)}, "indigo"),),
))

ADEMAMIX = register(OptimizerSpec(
    name="ademamix", class_name="AdEMAMix", kernel="ademamix",
    hypers=(Hyper("lr", 1e-3, at_least_zero), Hyper("betas", (0.9, 0.999, 0.9999), beta_triple),
            Hyper("eps", 1e-8, above_zero), Hyper("weight_decay", 0.0, at_least_zero),
            Hyper("alpha", 5.0, _finite_at_least_zero), Hyper("alpha_warmup", 0, _warmup_length),
            Hyper("beta3_warmup", 0, _warmup_length), Hyper("eps_root", 0.0, at_least_zero),
            Hyper("maximize", False, boolean)),
    slots=(Slot("exp_avg_fast"), Slot("exp_avg_slow"), Slot("exp_avg_sq")),
    scalar_names=("grad_sign", "lr", "weight_decay", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "beta3",
                  "one_minus_beta3", "alpha", "eps", "eps_root", "bias_correction1", "bias_correction2"),
    scalars=_scalars,
))
