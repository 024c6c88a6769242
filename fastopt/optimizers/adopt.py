"""ADOPT (optax.contrib.adopt): Adam that normalises the gradient by the second moment of the EARLIER steps only,
then averages it, with the normalised gradient clipped to +-(step - 1) ** 0.25 by default.

Follows optax.contrib.adopt (optax 0.2.8), its order of operations included, which decides where float32 and float64
overflow. Names, torch-style, and optax's:

    lr            learning_rate (optax has no default; 1e-3 here)
    betas         (b1, b2) = (0.9, 0.9999)
    eps           eps (1e-6): g / max(sqrt(exp_avg_sq), eps)
    weight_decay  not in optax.contrib.adopt (0.0): decoupled as optax.adamw chains it,
                  chain(scale_by_adopt, add_decayed_weights(weight_decay), scale_by_learning_rate(lr)), i.e.
                  p -= lr * (update + weight_decay * p)
    nesterov      nesterov (False)
    use_clipping  use_clipping (True), with optax's default clip_value_fn, count ** 0.25 (count = step - 1)
    maximize      not in optax: the gradient is negated first (exactly what optax computes on -g)

State: `exp_avg` (optax's mu) and `exp_avg_sq` (nu), the names of the authors' PyTorch implementation, and `step`.
The first step only fills exp_avg_sq with g * g (optax's b2 -> 0 and b1 -> 1 then: exp_avg stays 0, the parameter
moves only by its weight decay); from the second step on, exp_avg averages g / max(sqrt(exp_avg_sq), eps) with
exp_avg_sq from before the step.

Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal Rate", NeurIPS 2024.
"""

from __future__ import annotations

import numpy as np

from fastopt.optimizers._optax import oracle
from fastopt.records import BenchCase, ConvergenceEntry, Record, register_record
from fastopt.specs import Hyper, OptimizerSpec, Slot, above_zero, at_least_zero, beta_pair, boolean, register


def reference(param, grad, exp_avg, exp_avg_sq, grad_sign, lr, weight_decay, beta1, one_minus_beta1, beta2,
              one_minus_beta2, eps, clip_value, nesterov, use_clipping):
    g = grad * grad.dtype.type(grad_sign)
    d = g / np.maximum(np.sqrt(exp_avg_sq), eps)   # jnp.maximum: NaN wins, as in np.maximum
    if use_clipping:   # jnp.clip: max(-c, .) then min(c, .); a NaN stays NaN (comparisons with NaN are false)
        c = param.dtype.type(clip_value)
        d = np.where(d < -c, -c, d)
        d = np.where(d > c, c, d)
    exp_avg_sq[...] = one_minus_beta2 * (g * g) + beta2 * exp_avg_sq   # optax's update_moment: (1 - b) * x + b * avg
    exp_avg[...] = one_minus_beta1 * d + beta1 * exp_avg
    u = one_minus_beta1 * d + beta1 * exp_avg if nesterov else exp_avg
    if weight_decay != 0:   # optax.add_decayed_weights skips a zero weight decay (no 0 * inf)
        u = u + weight_decay * param
    param -= lr * u


def _scalars(h, step):
    b1, b2 = h["betas"]
    if step == 1:   # optax: b1 -> 1 and b2 -> 0 on the first step (where count == 0)
        b1, b2 = 1.0, 0.0
    return (-1.0 if h["maximize"] else 1.0, h["lr"], h["weight_decay"], b1, 1.0 - b1, b2, 1.0 - b2, h["eps"],
            float(step - 1) ** 0.25)


def _flags(h):
    return (h["nesterov"], h["use_clipping"])


# ---- the golden oracle: optax.contrib.adopt (tests/golden/make_golden.py; jax and optax are imported only there) ----

def _build(optax, h):
    b1, b2 = h["betas"]
    kw = dict(eps=h["eps"], nesterov=h["nesterov"], use_clipping=h["use_clipping"])
    if h["weight_decay"] == 0:
        return optax.contrib.adopt(h["lr"], b1, b2, **kw)
    return optax.chain(optax.contrib.scale_by_adopt(b1, b2, **kw), optax.add_decayed_weights(h["weight_decay"]),
                       optax.scale_by_learning_rate(h["lr"]))


def _state_of(state):
    s = state[0]   # chain(scale_by_adopt, [add_decayed_weights,] scale_by_learning_rate)
    return {"exp_avg": s.mu, "exp_avg_sq": s.nu}, s.count


def _strategy(st):
    return st.fixed_dictionaries(dict(
        lr=st.floats(1e-3, 0.3),
        betas=st.tuples(st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.5, 0.999, 0.9999])),
        eps=st.sampled_from([1e-6, 1e-3]), weight_decay=st.sampled_from([0.0, 0.0, 1e-2, 0.3]),
        nesterov=st.booleans(), use_clipping=st.booleans(), maximize=st.booleans()))


register_record(Record(
    optimizer="adopt", strategy=_strategy,
    # optax cannot judge make_golden's extremes (XLA flushes subnormals): kernels vs reference there instead
    extreme_unjudged={"default": {}, "nesterov_wd": {"nesterov": True, "weight_decay": 0.01},
                      "no_clipping_tiny_eps": {"lr": 1e-5, "use_clipping": False, "eps": "tiny", "maximize": True}},
    busy=dict(lr=0.05, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.01, nesterov=True, use_clipping=True,
              maximize=True),
    golden={
        "default": {},
        "nesterov_wd_maximize": {"lr": 0.01, "nesterov": True, "weight_decay": 0.1, "maximize": True},
        "no_clipping": {"lr": 0.02, "betas": [0.8, 0.99], "eps": 1e-3, "use_clipping": False},
        # a small beta2 keeps exp_avg_sq near the last g * g, so |g| / sqrt(exp_avg_sq) often passes the clip value
        "low_betas_nesterov": {"lr": 0.05, "betas": [0.5, 0.5], "nesterov": True},
    },
    # No extreme-magnitude files: XLA on CPU flushes subnormal results to zero (see fastopt/optimizers/adan.py);
    # tests/test_extremes_unjudged.py checks the kernels against the reference at those magnitudes.
    oracle=oracle(_build, _state_of),
    bench=(BenchCase("adopt", "ADOPT", {"lr": 1e-3}, torch_fused=False),),
    # ADOPT's first step only fills exp_avg_sq, so without weight decay the parameter stays put; the study's toy test
    # expects every path to leave its start on the first step, hence the small weight decay on the toy.
    convergence=(ConvergenceEntry("ADOPT", "ADOPT", {"lr": 0.001},
                                  {"lr": 0.5, "betas": (0.9, 0.99), "weight_decay": 0.01}, "teal"),),
))

ADOPT = register(OptimizerSpec(
    name="adopt", class_name="ADOPT", kernel="adopt",
    hypers=(Hyper("lr", 1e-3, at_least_zero), Hyper("betas", (0.9, 0.9999), beta_pair),
            Hyper("eps", 1e-6, above_zero), Hyper("weight_decay", 0.0, at_least_zero),
            Hyper("nesterov", False, boolean), Hyper("use_clipping", True, boolean),
            Hyper("maximize", False, boolean)),
    slots=(Slot("exp_avg"), Slot("exp_avg_sq")),
    scalar_names=("grad_sign", "lr", "weight_decay", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "eps",
                  "clip_value"),
    scalars=_scalars,
    flag_names=("nesterov", "use_clipping"),
    flags=_flags,
))
