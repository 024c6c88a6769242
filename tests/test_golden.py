"""The NumPy reference against torch.optim: golden trajectories replayed without torch.

tests/golden/make_golden.py ran torch.optim (single-tensor path) for a dozen steps per optimizer, configuration and
dtype and stored every parameter after every step and the final state; here each trajectory is replayed through
`fastopt.reference`, with the slots initialised from `spec.slots` and the scalars from `spec.scalars(hyper, step)`,
exactly as every backend drives its kernels. The `*-extreme_*` files do the same at the magnitudes where float32 and
float64 overflow and underflow (gradients near 1e-36 ... 1e200, eps down to the smallest subnormal): there inf and
NaN must sit exactly where torch has them, and the cpu backend and the host build of the CUDA kernels must equal the
reference bit for bit. Tolerances: tests/tolerances.py.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from tolerances import golden_mismatch

from fastopt import reference
from fastopt.specs import SPECS

DATA = Path(__file__).resolve().parent / "golden" / "data"
FILES = sorted(DATA.glob("*.npz"))

# How close the reference must come to torch is stated, with its reasons, in tests/tolerances.py (GOLDEN_TOLERANCES).
EXTREME = [p for p in FILES if "-extreme_" in p.stem]


def load(path: Path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    return meta, arrays


def _id(path: Path) -> str:
    return path.stem


def check_close(actual, expected, what, meta):
    """The reference against torch under tests/tolerances.py's golden tolerances; names the worst element."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != torch's {expected.dtype}"
    problem = golden_mismatch(actual, expected, meta["dtype"], extreme=meta.get("extreme", False),
                              optimizer=meta["optimizer"])
    assert problem is None, f"{what}: {problem}"


def check_trajectory(path, meta, arrays, trajectory):
    for step, params in enumerate(trajectory, start=1):
        for i, p in enumerate(params):
            check_close(p, arrays[f"p{i}_params"][step - 1], f"{path.stem}: param {i} after step {step}", meta)


def replay(meta, arrays, *, step_offset=0):
    """Run the reference over the stored gradients; yield (step, params) after every step, then return the state."""
    spec = SPECS[meta["optimizer"]]
    hyper = dict(meta["hyper"])
    if "betas" in hyper:
        hyper["betas"] = tuple(hyper["betas"])
    fn = reference.function(spec.kernel)
    dtype = np.dtype(meta["dtype"])
    n = len(meta["shapes"])
    params = [arrays[f"p{i}_init"].copy() for i in range(n)]
    slots = [reference.new_slots(spec, p, hyper) for p in params]
    flags = spec.flags(hyper)
    trajectory = []
    for step in range(1, meta["steps"] + 1):
        scalars = spec.scalars(hyper, step + step_offset)
        for i, p in enumerate(params):
            grad = arrays[f"p{i}_grads"][step - 1]
            assert grad.dtype == dtype
            with np.errstate(all="ignore"):   # the extreme files overflow and underflow on purpose
                fn(p, grad, *slots[i], *scalars, *flags)
        trajectory.append([p.copy() for p in params])
    states = [{s.name: arr for s, arr in zip(spec.slots, ps) if arr is not None} for ps in slots]
    return trajectory, states


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_reference_follows_torch(path):
    meta, arrays = load(path)
    spec = SPECS[meta["optimizer"]]
    assert sorted(meta["hyper"]) == sorted(spec.defaults), f"{path.stem}: stale golden file, regenerate it"
    trajectory, states = replay(meta, arrays)
    check_trajectory(path, meta, arrays, trajectory)
    for i, state in enumerate(states):
        # torch keeps exactly the slots this param has (active, and of a shape for it), under the same names
        active = sorted(s.name for s in spec.slots if s.shape_for(meta["shapes"][i], meta["hyper"]) is not None)
        assert meta["state_keys"][i] == active, f"{path.stem}: torch's state {meta['state_keys'][i]} != {active}"
        for name, value in state.items():
            check_close(value, arrays[f"p{i}_state_{name}"], f"{path.stem}: state {name} of param {i}", meta)
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
            f"(list its configurations in its record, fastopt.records, and run tests/golden/make_golden.py)")
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


@pytest.mark.parametrize("path", [p for p in FILES if p.stem.endswith("-float32") and p not in EXTREME], ids=_id)
def test_tolerances_catch_semantic_bugs(path):
    """A comparison that cannot fail proves nothing: each mutant must be caught, even at float32 tolerances.
    (The extreme files run 5 steps at magnitudes where some flags change nothing visible; what they must catch is
    the operation order, and they do: the reference before torch's order failed 24 of their 30 files.)"""
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


# ---- the fused kernels where the operation order matters: bit for bit with the reference ----------------------------
# The extreme files and the files whose lerp takes its other branch (weight >= 0.5), replayed through the cpu backend
# (the public optimizer classes) and through the host build of the CUDA kernels: both must equal the reference bit for
# bit, inf and NaN included, since they perform its operations in its order (tests/tolerances.py).
ORDER_FILES = EXTREME + [p for p in FILES if "-centered_low_alpha-" in p.stem or "-low_beta1-" in p.stem]


def _hyper(meta):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in meta["hyper"].items()}


@pytest.mark.parametrize("path", ORDER_FILES, ids=_id)
def test_cpu_backend_follows_the_reference_bit_for_bit(path):
    import fastopt
    from fastopt import dispatch

    why_not = dispatch.available_backends()["cpu"]
    if why_not:
        pytest.skip(f"the cpu backend is not available here: {why_not}")
    meta, arrays = load(path)
    want, want_state = replay(meta, arrays)
    n = len(meta["shapes"])
    params = [arrays[f"p{i}_init"].copy() for i in range(n)]
    opt = fastopt.OPTIMIZERS[meta["optimizer"]](params, backend="cpu", **_hyper(meta))
    for step in range(meta["steps"]):
        opt.step([arrays[f"p{i}_grads"][step] for i in range(n)])
        for i in range(n):
            np.testing.assert_array_equal(params[i], want[step][i], err_msg=f"{path.stem}: param {i}, step {step + 1}")
    state = opt.state_dict()["state"]
    for i in range(n):
        for name, value in want_state[i].items():
            np.testing.assert_array_equal(state[i][name], value, err_msg=f"{path.stem}: state {name} of param {i}")


@pytest.mark.parametrize("path", ORDER_FILES, ids=_id)
def test_cuda_host_build_follows_the_reference_bit_for_bit(path):
    from fastopt import cuda_build

    if cuda_build.find_cxx() is None:
        pytest.skip("no C++ compiler (g++) to build the CUDA kernels for the host")
    meta, arrays = load(path)
    spec = SPECS[meta["optimizer"]]
    hyper = _hyper(meta)
    want, want_state = replay(meta, arrays)
    kernels = cuda_build.HostKernels(spec.kernel)
    for i in range(len(meta["shapes"])):
        p = arrays[f"p{i}_init"].copy()
        slots = [np.full_like(p, s.init(hyper)) if s.active(hyper) else None for s in spec.slots]
        for step in range(1, meta["steps"] + 1):
            kernels.flat(p, arrays[f"p{i}_grads"][step - 1].copy(), slots, spec.scalars(hyper, step), spec.flags(hyper))
            np.testing.assert_array_equal(p, want[step - 1][i], err_msg=f"{path.stem}: param {i}, step {step}")
        for s, value in zip(spec.slots, slots):
            if value is not None:
                np.testing.assert_array_equal(value, want_state[i][s.name], err_msg=f"{path.stem}: {s.name} of {i}")
