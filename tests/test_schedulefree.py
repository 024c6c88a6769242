"""Schedule-free SGD and AdamW: the train()/eval() switch and what the generic tests cannot see.

The generic tests (test_backends, test_golden, test_cuda_host, ...) drive the step through the declaration. Here:
trajectories of the schedulefree package with eval()/train() switches mid-run (tests/golden/schedulefree, written by
tests/golden/make_golden_schedulefree.py; replayed through the classes on both CPU backends, the cpu backend bit for
bit equal to the numpy one), the switch pass through the host build of the CUDA kernels, the mode in state_dict,
copies and the package's own checkpoint layout, and that a refused call changes nothing.
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from tolerances import golden_mismatch

try:
    from test_cuda_host import fake_cupy  # the stand-in for CuPy, a fixture
except BaseException:  # noqa: BLE001 - test_cuda_host skips itself where g++ is missing
    fake_cupy = None

import fastopt
from fastopt import cuda_build, reference
from fastopt.specs import SPECS

DATA = Path(__file__).resolve().parent / "golden" / "schedulefree"
FILES = sorted(DATA.glob("*.npz"))
CLASSES = {"schedulefree_sgd": fastopt.ScheduleFreeSGD, "schedulefree_adamw": fastopt.ScheduleFreeAdamW}


def load(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def _hyper(meta):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in meta["hyper"].items()}


def replay(meta, arrays, backend):
    n = len(meta["shapes"])
    params = [arrays[f"p{i}_init"].copy() for i in range(n)]
    opt = CLASSES[meta["optimizer"]](params, backend=backend, **_hyper(meta))
    after_steps, after_evals = [], []
    for t in range(meta["steps"] + 1):
        if t in meta["switches"] or t == meta["steps"]:
            opt.eval()
            after_evals.append([p.copy() for p in params])
            if t == meta["steps"]:
                break
            opt.train()
        with np.errstate(all="ignore"):
            opt.step([arrays[f"p{i}_grads"][t] for i in range(n)])
        after_steps.append([p.copy() for p in params])
    return opt, after_steps, after_evals


def test_switch_golden_files_exist():
    have = {(load(p)[0]["optimizer"], load(p)[0]["dtype"]) for p in FILES}
    assert have == {(name, dtype) for name in CLASSES for dtype in ("float32", "float64")}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_switches_follow_the_schedulefree_package(path):
    meta, arrays = load(path)
    assert sorted(meta["hyper"]) == sorted(SPECS[meta["optimizer"]].defaults), "stale file: regenerate it"
    runs = {backend: replay(meta, arrays, backend) for backend in ("numpy", "cpu")}
    _, steps, evals = runs["numpy"]
    for t, params in enumerate(steps):
        for i, p in enumerate(params):
            problem = golden_mismatch(p, arrays[f"p{i}_params"][t], meta["dtype"], False, meta["optimizer"])
            assert problem is None, f"{path.stem}: param {i} after step {t + 1}: {problem}"
    for k, params in enumerate(evals):
        for i, p in enumerate(params):
            problem = golden_mismatch(p, arrays[f"p{i}_evals"][k], meta["dtype"], False, meta["optimizer"])
            assert problem is None, f"{path.stem}: param {i} after eval() {k}: {problem}"
    opt = runs["numpy"][0]
    state = opt.state_dict()["state"]
    for i in range(len(meta["shapes"])):
        for name in ("z", "exp_avg_sq"):
            if f"p{i}_state_{name}" in arrays:
                problem = golden_mismatch(state[i][name], arrays[f"p{i}_state_{name}"], meta["dtype"], False,
                                          meta["optimizer"])
                assert problem is None, f"{path.stem}: state {name} of param {i}: {problem}"
    # the fused cpu backend: bit for bit the reference, the switches included
    for a, b in zip(runs["cpu"][1] + runs["cpu"][2], steps + evals):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_the_switch_files_catch_a_wrong_switch():
    """A comparison that cannot fail proves nothing: eval() with train()'s weight must fail the golden check."""
    path = next(p for p in FILES if "adamw-default-float32" in p.stem)
    meta, arrays = load(path)
    _, _, evals = replay(meta, arrays, "numpy")
    params = [arrays[f"p{i}_init"].copy() for i in range(len(meta["shapes"]))]
    opt = fastopt.ScheduleFreeAdamW(params, backend="numpy")
    for t in range(5):   # the second switch comes after 5 steps (after one step, z = y: every weight agrees)
        opt.step([arrays[f"p{i}_grads"][t] for i in range(len(params))])
    z = opt.state_dict()["state"][1]["z"]
    wrong = reference._lerp(params[1].copy(), z, 1 - 0.9)   # train()'s weight where eval() needs 1 - 1/0.9
    assert meta["switches"][1] == 5
    assert golden_mismatch(wrong, arrays["p1_evals"][1], "float32", False, meta["optimizer"]) is not None
    assert golden_mismatch(evals[1][1], arrays["p1_evals"][1], "float32", False, meta["optimizer"]) is None


# ---- the switch pass through the host build of the CUDA kernels ------------------------------------------------------

@pytest.mark.skipif(cuda_build.find_cxx() is None, reason="no C++ compiler for the host build")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("to_train", [False, True])
def test_host_build_switch_matches_reference(name, dtype, to_train):
    from fastopt.modes import MODE_SWITCHES

    spec, switch = SPECS[name], MODE_SWITCHES[name]
    hyper = spec.normalize({**spec.defaults, **({"betas": (0.3, 0.9)} if "betas" in spec.defaults
                                                   else {"momentum": 0.3})})
    rng = np.random.default_rng(3)
    kernels = cuda_build.HostKernels(spec.kernel)
    for weights in (hyper, spec.normalize(spec.defaults)):   # both branches of torch's lerp
        for n in (0, 1, 5, 4099):
            p = rng.standard_normal(n).astype(dtype)
            z = rng.standard_normal(n).astype(dtype)
            want = p.copy()
            reference.function(spec.kernel)(want, z, None, None, *switch.scalars(weights, to_train),
                                            *switch.flags(weights))
            unused = [np.full(n, np.nan, dtype) for _ in spec.slots]
            kernels.flat(p, z.copy(), unused, switch.scalars(weights, to_train), switch.flags(weights))
            np.testing.assert_array_equal(p, want)
            assert all(np.isnan(u).all() for u in unused), "the switch touched a slot"


# ---- the mode: checks, state_dict, copies ----------------------------------------------------------------------------

def _started(name="schedulefree_adamw", backend="cpu", steps=3):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(5).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)]
    opt = CLASSES[name](params, backend=backend, lr=0.01, warmup_steps=2)
    grads = [np.ones_like(p) for p in params]
    for _ in range(steps):
        opt.step(grads)
    return opt, params, grads


def test_starts_in_train_mode_and_train_before_any_step_moves_nothing():
    params = [np.arange(4, dtype=np.float64)]
    opt = fastopt.ScheduleFreeSGD(params)
    assert opt.param_groups[0]["train_mode"] is True
    assert opt.eval() is opt and opt.train() is opt     # no state yet: x = y = the param
    np.testing.assert_array_equal(params[0], np.arange(4.0))


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_eval_then_train_returns_to_y(backend):
    opt, params, _grads = _started(backend=backend)
    y = [p.copy() for p in params]
    opt.eval()
    assert not any(np.array_equal(a, b) for a, b in zip(params, y)), "eval() did not move the params"
    x = [p.copy() for p in params]
    opt.eval()   # already there: nothing moves
    assert all(np.array_equal(a, b) for a, b in zip(params, x))
    opt.train()
    for a, b in zip(params, y):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_in_eval_mode_is_refused_and_changes_nothing():
    opt, params, grads = _started()
    opt.eval()
    before = copy.deepcopy(opt.state_dict())
    held = [p.copy() for p in params]
    with pytest.raises(ValueError, match="train_mode"):
        opt.step(grads)
    assert all(np.array_equal(a, b) for a, b in zip(params, held))
    after = opt.state_dict()
    assert after["state"][0]["step"] == before["state"][0]["step"] == 3
    np.testing.assert_array_equal(after["state"][0]["z"], before["state"][0]["z"])


def test_a_switch_with_a_bad_hyperparameter_is_refused_and_moves_nothing():
    opt, params, _ = _started()
    opt.param_groups[0]["betas"] = (0.0, 0.999)   # eval() would divide by beta1
    held = [p.copy() for p in params]
    with pytest.raises(ValueError, match="betas"):
        opt.eval()
    assert all(np.array_equal(a, b) for a, b in zip(params, held))
    assert opt.param_groups[0]["train_mode"] is True


def test_state_dict_records_the_mode_and_load_restores_it():
    opt, params, grads = _started()
    opt.eval()
    saved = opt.state_dict()
    assert saved["param_groups"][0]["train_mode"] is False
    assert saved["state"][0]["lr_max"] == 0.01 and saved["state"][0]["step"] == 3
    fresh = fastopt.ScheduleFreeAdamW([p.copy() for p in params], lr=0.01, warmup_steps=2)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["train_mode"] is False
    with pytest.raises(ValueError, match="train_mode"):
        fresh.step(grads)
    bad = copy.deepcopy(saved)
    bad["param_groups"][0]["train_mode"] = "no"
    with pytest.raises(TypeError, match="train_mode"):
        fresh.load_state_dict(bad)
    assert fresh.param_groups[0]["train_mode"] is False


@pytest.mark.parametrize("make_copy", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))], ids=["deepcopy",
                                                                                                       "pickle"])
def test_copies_keep_mode_and_host_state(make_copy):
    opt, params, grads = _started()
    twin = make_copy(opt)
    twin_params = twin.param_groups[0]["params"]
    for _ in range(2):
        opt.step(grads)
        twin.step(grads)
    opt.eval()
    twin.eval()
    for a, b in zip(params, twin_params):
        np.testing.assert_array_equal(a, b)
    assert twin.param_groups[0]["train_mode"] is False


def test_changing_lr_mid_run_keeps_the_package_history():
    """lr_max and weight_sum are host state: after lr changes they follow the steps taken, not the current lr."""
    opt, _params, grads = _started(steps=3)
    opt.param_groups[0]["lr"] = 0.001
    opt.step(grads)
    entry = opt.state_dict()["state"][0]
    # the package: lr_max = max over steps of lr * warm-up (0.005, 0.01, 0.01, 0.001) = 0.01
    assert entry["lr_max"] == 0.01
    assert entry["weight_sum"] == 0.005 ** 2 + 0.01 ** 2 + 0.01 ** 2 + 0.01 ** 2


def test_loads_the_packages_checkpoint_layout():
    """schedulefree keeps k, lr_max and weight_sum per group and no step per param: each param gets its group's."""
    opt, params, grads = _started()
    saved = opt.state_dict()
    package = {"state": {i: {k: v for k, v in e.items() if k not in ("step", "lr_max", "weight_sum")}
                         for i, e in saved["state"].items()},
               "param_groups": [{**saved["param_groups"][0], "k": 3, "lr_max": saved["state"][0]["lr_max"],
                                 "weight_sum": saved["state"][0]["weight_sum"], "scheduled_lr": 0.01,
                                 "foreach": True}]}
    a = fastopt.ScheduleFreeAdamW([p.copy() for p in params], lr=0.01, warmup_steps=2)
    b = fastopt.ScheduleFreeAdamW([p.copy() for p in params], lr=0.01, warmup_steps=2)
    a.load_state_dict(saved)
    b.load_state_dict(package)
    a.step(grads)
    b.step(grads)
    for pa, pb in zip(a.param_groups[0]["params"], b.param_groups[0]["params"]):
        np.testing.assert_array_equal(pa, pb)
    assert b.state_dict()["state"][0]["step"] == 4


def test_a_new_group_takes_the_current_mode():
    opt, _params, _grads = _started()
    opt.eval()
    opt.add_param_group({"params": [np.zeros(3, np.float32)]})
    assert opt.param_groups[1]["train_mode"] is False
    opt.train()
    assert [g["train_mode"] for g in opt.param_groups] == [True, True]


# ---- the cuda backend's plans for the step and the switch, through test_cuda_host's stand-in for CuPy ----------------

def test_cuda_plan_runs_the_switch_through_the_cupy_stand_in(request):
    """The cuda backend's plan with every slot inactive and z in the grads' place (what train()/eval() launch)."""
    if cuda_build.find_cxx() is None:
        pytest.skip("no C++ compiler for the host build")
    from test_cuda_host import _FakeArray

    from fastopt.backends.cuda import BACKEND
    from fastopt.modes import MODE_SWITCHES

    fake = request.getfixturevalue("fake_cupy")
    spec, switch = SPECS["schedulefree_adamw"], MODE_SWITCHES["schedulefree_adamw"]
    hyper = spec.normalize(spec.defaults)
    rng = np.random.default_rng(5)
    sizes = (3, 0, 4097, 1, 20000)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    zs = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    gpu = [_FakeArray(p.copy()) for p in params]
    plan = BACKEND.prepare(spec, gpu, {s.name: None for s in spec.slots}, switch.flags(hyper))
    for to in (False, True):
        plan.run([_FakeArray(z.copy()) for z in zs], switch.scalars(hyper, to))
        for p, z in zip(params, zs):
            reference.function(spec.kernel)(p, z, None, None, *switch.scalars(hyper, to), *switch.flags(hyper))
    assert len(fake.launches) == 2                                   # one launch per switch for the whole group
    for a, b in zip(gpu, params):
        np.testing.assert_array_equal(a.a, b)
