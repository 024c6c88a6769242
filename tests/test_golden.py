"""The NumPy reference against torch.optim: golden trajectories replayed without torch.

tests/golden/make_golden.py ran torch.optim (single-tensor path) for a dozen steps per optimizer, configuration and
dtype and stored every parameter after every step and the final state; here each trajectory is replayed through
`fastopt.reference`, with the slots initialised from `spec.slots` and the scalars from `spec.scalars(hyper, step)`,
exactly as every backend drives its kernels.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fastopt import reference
from fastopt.specs import SPECS

DATA = Path(__file__).resolve().parent / "golden" / "data"
FILES = sorted(DATA.glob("*.npz"))

# How close the reference must come to torch, per dtype: the one place these numbers live. An element passes when
#     |reference - torch| <= rtol * |torch| + atol
# The reference performs torch's operations in torch's order on the same float64 host scalars cast to the array's
# dtype, so all that differs is rounding inside an operation: torch's CPU kernels evaluate `a + alpha*b` (add,
# addcmul, addcdiv, lerp) with a fused multiply-add in their vectorised loop, addcmul rounds value*t1 before *t2,
# and lerp with weight >= 0.5 uses its other formula, where NumPy rounds every product separately in the order the
# reference writes it. That is about one rounding per operation; none of these updates amplifies it (Adam-like
# denominators sqrt(v)/c + eps halve a relative error in v), and over 12 steps the differences mostly cancel.
# Observed maxima over every golden file (torch 2.13 CPU, AVX2, NumPy 2.4) of |diff| / (eps * (|torch| + 1)):
# 1.84 in float64 (SGD/RMSprop momentum buffers), 1.73 in float32 (an Adagrad sum of squares); measured relative to
# |torch| alone the worst element away from zero is ~25 eps. atol is absolute because every array here is O(1) by
# construction (N(0, 1) parameters, gradients of scale <= 3, states between ~1e-3 and ~20): it serves elements
# near zero, whose values are differences of O(1) terms (a momentum average that cancels, a parameter crossing
# zero). 4 eps leaves 2x headroom for regenerating on a CPU whose vector width splits FMA and scalar lanes
# differently; anything beyond it is a semantic difference, not rounding -- find it, do not widen these.
TOLERANCES = {
    np.dtype(np.float64): {"rtol": 4 * np.finfo(np.float64).eps, "atol": 4 * np.finfo(np.float64).eps},  # 8.9e-16
    np.dtype(np.float32): {"rtol": 4 * np.finfo(np.float32).eps, "atol": 4 * np.finfo(np.float32).eps},  # 4.8e-7
}


def load(path: Path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    return meta, arrays


def _id(path: Path) -> str:
    return path.stem


def check_close(actual, expected, what, tol):
    """Elementwise |actual - expected| <= rtol*|expected| + atol; names the worst element when it fails."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != torch's {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != torch's {expected.shape}"
    assert np.all(np.isfinite(expected)), f"{what}: torch's values are not finite"
    e = expected.astype(np.float64)
    err = np.abs(actual.astype(np.float64) - e)
    bound = tol["rtol"] * np.abs(e) + tol["atol"]
    if not np.all(err <= bound):   # also fails on NaN
        i = np.unravel_index(np.nanargmax(np.where(np.isnan(err), np.inf, err - bound)), err.shape)
        raise AssertionError(f"{what}: reference {actual[i]!r} vs torch {expected[i]!r} at {i}: |diff| {err[i]:.3g} "
                             f"> {bound[i]:.3g} (rtol {tol['rtol']:.3g}, atol {tol['atol']:.3g})")


def check_trajectory(path, meta, arrays, trajectory):
    tol = TOLERANCES[np.dtype(meta["dtype"])]
    for step, params in enumerate(trajectory, start=1):
        for i, p in enumerate(params):
            check_close(p, arrays[f"p{i}_params"][step - 1], f"{path.stem}: param {i} after step {step}", tol)


def replay(meta, arrays, *, step_offset=0):
    """Run the reference over the stored gradients; yield (step, params) after every step, then return the state."""
    spec = SPECS[meta["optimizer"]]
    hyper = dict(meta["hyper"])
    if "betas" in hyper:
        hyper["betas"] = tuple(hyper["betas"])
    fn = getattr(reference, spec.kernel)
    dtype = np.dtype(meta["dtype"])
    n = len(meta["shapes"])
    params = [arrays[f"p{i}_init"].copy() for i in range(n)]
    slots = [[np.full_like(p, s.init(hyper)) if s.active(hyper) else None for s in spec.slots] for p in params]
    flags = spec.flags(hyper)
    trajectory = []
    for step in range(1, meta["steps"] + 1):
        scalars = spec.scalars(hyper, step + step_offset)
        for i, p in enumerate(params):
            grad = arrays[f"p{i}_grads"][step - 1]
            assert grad.dtype == dtype
            fn(p, grad, *slots[i], *scalars, *flags)
        trajectory.append([p.copy() for p in params])
    states = [{s.name: arr for s, arr in zip(spec.slots, ps) if arr is not None} for ps in slots]
    return trajectory, states


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_reference_follows_torch(path):
    meta, arrays = load(path)
    spec = SPECS[meta["optimizer"]]
    tol = TOLERANCES[np.dtype(meta["dtype"])]
    assert sorted(meta["hyper"]) == sorted(spec.defaults), f"{path.stem}: stale golden file, regenerate it"
    trajectory, states = replay(meta, arrays)
    check_trajectory(path, meta, arrays, trajectory)
    active = sorted(s.name for s in spec.slots if s.active(meta["hyper"]))
    for i, state in enumerate(states):
        # torch keeps exactly the active slots, under the same names
        assert meta["state_keys"][i] == active, f"{path.stem}: torch's state {meta['state_keys'][i]} != {active}"
        for name, value in state.items():
            check_close(value, arrays[f"p{i}_state_{name}"], f"{path.stem}: state {name} of param {i}", tol)
        torch_step = float(arrays[f"p{i}_step"])   # NaN: torch keeps no step (SGD)
        assert math.isnan(torch_step) or torch_step == meta["steps"], f"{path.stem}: torch took {torch_step} steps"


def test_every_optimizer_has_golden_data():
    have = {}
    for path in FILES:
        meta, _ = load(path)
        have.setdefault(meta["optimizer"], set()).add(meta["dtype"])
    for name in SPECS:
        assert have.get(name) == {"float32", "float64"}, (
            f"{name}: golden files for {sorted(have.get(name, ()))}; expected float32 and float64 "
            f"(add its configurations to tests/golden/make_golden.py and run it)")
    assert set(have) <= set(SPECS), f"golden files for unknown optimizers {sorted(set(have) - set(SPECS))}"


def _probe_values(h):
    if isinstance(h.default, bool):
        return [False, True]
    if isinstance(h.default, (int, float)):
        return [h.default, 0.0, 0.5]
    return [h.default]


def reachable_flags(spec):
    """Every value each flag takes over valid hyperparameters (a grid of defaults, 0, 0.5 and both booleans)."""
    seen = [set() for _ in spec.flag_names]
    for values in itertools.product(*(_probe_values(h) for h in spec.hypers)):
        hyper = {h.name: v for h, v in zip(spec.hypers, values)}
        try:
            spec.validate(hyper)
        except (TypeError, ValueError):
            continue
        for k, f in enumerate(spec.flags(hyper)):
            seen[k].add(bool(f))
    return seen


@pytest.mark.parametrize("name", sorted(SPECS))
def test_golden_data_covers_every_flag_and_hyperparameter(name):
    spec = SPECS[name]
    covered = [set() for _ in spec.flag_names]
    non_default = set()
    for path in FILES:
        meta, _ = load(path)
        if meta["optimizer"] != name:
            continue
        hyper = meta["hyper"]
        for k, f in enumerate(spec.flags(hyper)):
            covered[k].add(bool(f))
        non_default |= {h.name for h in spec.hypers if list(np.atleast_1d(hyper[h.name])) != list(
            np.atleast_1d(h.default))}
    for flag, want, got in zip(spec.flag_names, reachable_flags(spec), covered):
        assert want <= got, f"{name}: flag {flag} takes {sorted(want)} but golden data covers only {sorted(got)}"
    missing = {h.name for h in spec.hypers} - non_default
    assert not missing, f"{name}: no golden file sets a non-default {sorted(missing)}"


def test_golden_files_record_their_torch_version():
    assert FILES, f"no golden files under {DATA}"
    for path in FILES:
        meta, _ = load(path)
        assert meta["torch_version"], path.stem


def mutants(meta):
    """Plausible semantic bugs for one golden file: every boolean hyperparameter flipped (where the result is still
    valid), and the step off by one where the scalars depend on it (bias correction, lr_decay, SGD's first step)."""
    spec = SPECS[meta["optimizer"]]
    hyper = meta["hyper"]
    for h in spec.hypers:
        if isinstance(h.default, bool):
            flipped = dict(hyper, **{h.name: not hyper[h.name]})
            try:
                spec.validate({k: tuple(v) if isinstance(v, list) else v for k, v in flipped.items()})
            except (TypeError, ValueError):
                continue
            yield f"{h.name} flipped", dict(meta, hyper=flipped), 0
    if any(spec.scalars(hyper, 1) != spec.scalars(hyper, s) for s in range(2, meta["steps"] + 1)):
        yield "step off by one", meta, 1


@pytest.mark.parametrize("path", [p for p in FILES if p.stem.endswith("-float32")], ids=_id)
def test_tolerances_catch_semantic_bugs(path):
    """A comparison that cannot fail proves nothing: each mutant must be caught, even at float32 tolerances."""
    meta, arrays = load(path)
    original, _ = replay(meta, arrays)
    caught, missed = [], []
    for label, mutated, offset in mutants(meta):
        trajectory, _ = replay(mutated, arrays, step_offset=offset)
        if all(np.array_equal(a, b) for pa, pb in zip(original, trajectory) for a, b in zip(pa, pb)):
            continue   # an equivalent mutant (e.g. SGD's first step with dampening 0): nothing to catch
        try:
            check_trajectory(path, meta, arrays, trajectory)
        except AssertionError:
            caught.append(label)
        else:
            missed.append(label)
    assert not missed, f"{path.stem}: the golden comparison does not notice {missed}"
    assert caught, f"{path.stem}: no mutant applies"


@pytest.mark.parametrize("path", [p for p in FILES if "amsgrad" in p.stem], ids=_id)
def test_amsgrad_files_exercise_the_running_maximum(path):
    """AMSGrad golden data is only a test of the maximum if max_exp_avg_sq has departed from exp_avg_sq."""
    meta, arrays = load(path)
    assert meta["hyper"]["amsgrad"]
    assert any(np.any(arrays[f"p{i}_state_max_exp_avg_sq"] > arrays[f"p{i}_state_exp_avg_sq"])
               for i in range(len(meta["shapes"])))
