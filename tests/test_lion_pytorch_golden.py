"""Lion's second oracle: fastopt's reference against lion-pytorch's Lion, replayed from stored files without torch.

tests/golden/make_golden_lion_pytorch.py ran lion_pytorch.Lion over Lion's golden configurations and data (the
first oracle, optax.lion, is checked in tests/test_golden.py). The two compute the same step in different orders:
lion-pytorch decays first, p * (1 - lr * weight_decay) with 1 - lr * weight_decay rounded in the array's dtype (in
float32, 1 - 1e-7 rounds to 1 - 1.19e-7), then adds -lr * sign(c); optax (and fastopt) add -lr * (sign(c) +
weight_decay * p). That is a different rounding on every step, and it accumulates over the dozen steps: observed at
most 9.7 eps * max(1, |p|) in float32 and 5.8 in float64; hence PARAM_EPS = 16. The momentum differs by torch's
fused multiply-add in add(alpha=) (observed <= 0.16 eps * max(1, |m|); STATE_EPS = 1). Without weight decay the
sign steps are the same operations, so those files must match bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_golden import load, replay

FILES = sorted((Path(__file__).resolve().parent / "golden" / "lion_pytorch").glob("*.npz"))
PARAM_EPS = 16
STATE_EPS = 1


def mismatch(actual, expected, eps_multiple):
    """None when |actual - expected| <= eps_multiple * eps * max(1, |expected|) everywhere, else the worst element."""
    eps = np.finfo(expected.dtype).eps
    err = np.abs(actual.astype(np.float64) - expected)
    bound = eps_multiple * eps * np.maximum(1.0, np.abs(expected))
    if np.all(err <= bound):
        return None
    i = np.unravel_index(np.argmax(err - bound), err.shape)
    return f"{actual[i]!r} vs lion-pytorch {expected[i]!r} at {i}: |diff| {err[i]:.3g} > {bound[i]:.3g}"


def check(meta, arrays, trajectory, states):
    exact = meta["hyper"]["weight_decay"] == 0
    for step, params in enumerate(trajectory, start=1):
        for i, p in enumerate(params):
            expected = arrays[f"p{i}_params"][step - 1]
            if exact:
                np.testing.assert_array_equal(p, expected, err_msg=f"param {i} after step {step}")
            else:
                problem = mismatch(p, expected, PARAM_EPS)
                assert problem is None, f"{meta['config']} {meta['dtype']}: param {i} after step {step}: {problem}"
    for i, state in enumerate(states):
        problem = mismatch(state["exp_avg"], arrays[f"p{i}_state_exp_avg"], STATE_EPS)
        assert problem is None, f"{meta['config']} {meta['dtype']}: exp_avg of param {i}: {problem}"


def test_every_configuration_and_dtype_is_stored():
    from fastopt.records import RECORDS

    have = {(load(p)[0]["config"], load(p)[0]["dtype"]) for p in FILES}
    want = {(c, d) for c in RECORDS["lion"].golden for d in ("float32", "float64")}
    assert have == want, "regenerate with tests/golden/make_golden_lion_pytorch.py"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_reference_follows_lion_pytorch(path):
    meta, arrays = load(path)
    assert meta["oracle"] == "lion_pytorch.Lion"
    trajectory, states = replay(meta, arrays)
    check(meta, arrays, trajectory, states)


@pytest.mark.parametrize("path", [p for p in FILES if "-low_betas_wd-" in p.stem], ids=lambda p: p.stem)
def test_the_tolerance_catches_semantic_bugs(path):
    """A comparison that cannot fail proves nothing: wrong weight decay, swapped betas and a flipped maximize must
    each be caught, in both dtypes."""
    meta, arrays = load(path)
    b1, b2 = meta["hyper"]["betas"]
    missed = []
    for label, change in (("weight decay ignored", {"weight_decay": 0.0}), ("betas swapped", {"betas": [b2, b1]}),
                          ("maximize flipped", {"maximize": not meta["hyper"]["maximize"]})):
        trajectory, states = replay(dict(meta, hyper=dict(meta["hyper"], **change)), arrays)
        try:
            check(meta, arrays, trajectory, states)
        except AssertionError:
            continue
        missed.append(label)
    assert not missed, f"{path.stem}: the comparison does not notice {missed}"
