"""NAdam's and ASGD's host scalar state against torch.optim, live (needs torch): `mu_product`, `eta` and `mu` depend on
the hyperparameters' history, which the golden files (fixed hyperparameters) cannot show. Each test changes them
mid-run, as an lr scheduler or a user would, and requires the host values to equal torch's exactly after every step,
the params to follow torch within the golden tolerance, and checkpoints to move both ways.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tolerances import golden_mismatch  # noqa: E402

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from fastopt import functional  # noqa: E402

STEPS = 9
SHAPES = [(7,), (3, 5)]


def _schedule(name, t):
    """The hyperparameters of step t (from 1): changed every few steps."""
    if name == "nadam":
        return {"lr": 0.01 * (1 + t % 3), "betas": (0.9, 0.999) if t < 4 else (0.6, 0.99),
                "momentum_decay": 4e-3 if t < 6 else 0.3, "weight_decay": 0.01}
    return {"lr": 0.05 / t, "lambd": 0.05, "alpha": 0.75 if t < 5 else 1.5, "t0": 2.0 if t < 7 else 4.0,
            "weight_decay": 0.01}


def _problem(dtype):
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(STEPS)]
    return params, grads


def _torch_run(name, dtype, params, grads, steps=STEPS, opt=None, start=1):
    """torch.optim's trajectory; yields (t, params as NumPy, its optimizer) after every step."""
    tensors = [torch.tensor(p) for p in params] if opt is None else opt.param_groups[0]["params"]
    if opt is None:
        opt = getattr(torch.optim, {"nadam": "NAdam", "asgd": "ASGD"}[name])(tensors, foreach=False,
                                                                              **_schedule(name, 1))
    for t in range(start, start + steps):
        opt.param_groups[0].update(_schedule(name, t))
        for p, g in zip(tensors, grads[t - 1]):
            p.grad = torch.tensor(g)
        opt.step()
        yield t, [p.detach().numpy().copy() for p in tensors], opt


def _host_of(state_entry, name):
    names = {"nadam": ("mu_product",), "asgd": ("eta", "mu")}[name]
    return tuple(float(state_entry[n]) for n in names)


def _close(actual, expected, dtype, what):
    problem = golden_mismatch(actual, expected, dtype, extreme=False)
    assert problem is None, f"{what}: {problem}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("name", ["nadam", "asgd"])
def test_classes_follow_torch_through_hyperparameter_changes(name, backend, dtype):
    params, grads = _problem(dtype)
    mine = [p.copy() for p in params]
    opt = fastopt.OPTIMIZERS[name](mine, backend=backend, **_schedule(name, 1))
    for t, expected, theirs in _torch_run(name, dtype, params, grads):
        opt.param_groups[0].update(_schedule(name, t))
        opt.step(grads[t - 1])
        for i, p in enumerate(mine):
            _close(p, expected[i], dtype, f"{name} param {i} after step {t}")
            assert _host_of(opt.state_dict()["state"][i], name) == _host_of(
                theirs.state[theirs.param_groups[0]["params"][i]], name), f"{name}: host state after step {t}"


@pytest.mark.parametrize("name", ["nadam", "asgd"])
def test_functional_follows_torch_through_hyperparameter_changes(name):
    params, grads = _problem("float64")
    mine = [p.copy() for p in params]
    state = functional.init_state(name, mine, **_schedule(name, 1))
    for t, expected, theirs in _torch_run(name, "float64", params, grads):
        functional.update(name, mine, grads[t - 1], state, step=t, **_schedule(name, t))
        for i, p in enumerate(mine):
            _close(p, expected[i], "float64", f"{name} param {i} after step {t}")
            entry = {k: v[i] for k, v in state.items() if isinstance(v, list) and isinstance(v[i], float)}
            assert _host_of(entry, name) == _host_of(theirs.state[theirs.param_groups[0]["params"][i]], name)


@pytest.mark.parametrize("name", ["nadam", "asgd"])
def test_torch_drop_in_follows_torch_and_its_checkpoints_move_both_ways(name):
    params, grads = _problem("float32")
    tensors = [torch.tensor(p) for p in params]
    cls = ft.OPTIMIZERS[name]
    opt = cls(tensors, **_schedule(name, 1))
    theirs = None
    for t, expected, theirs in _torch_run(name, "float32", params, grads, steps=4):
        opt.param_groups[0].update(_schedule(name, t))
        for p, g in zip(tensors, grads[t - 1]):
            p.grad = torch.tensor(g)
        opt.step()
        for i, p in enumerate(tensors):
            _close(p.detach().numpy(), expected[i], "float32", f"{name} param {i} after step {t}")
            assert _host_of(opt.state[p], name) == _host_of(theirs.state[theirs.param_groups[0]["params"][i]], name)
            assert all(opt.state[p][n].dtype == torch.float32 and opt.state[p][n].dim() == 0
                       for n in ("mu_product",) if name == "nadam")
    # fastopt.torch -> torch.optim and torch.optim -> fastopt.torch, then both go on: same trajectory and host state
    twin_params = [p.detach().clone() for p in tensors]
    twin = getattr(torch.optim, cls.spec.class_name)(twin_params, foreach=False)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))   # as through torch.save: torch's own shares tensors
    back_params = [p.detach().clone() for p in tensors]
    back = cls(back_params)
    back.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for t in (5, 6):
        for o, ps in ((opt, tensors), (twin, twin_params), (back, back_params)):
            o.param_groups[0].update(_schedule(name, t))
            for p, g in zip(ps, grads[t - 1]):
                p.grad = torch.tensor(g)
            o.step()
        for i in range(len(SHAPES)):
            want = _host_of(twin.state[twin_params[i]], name)
            assert _host_of(opt.state[tensors[i]], name) == want == _host_of(back.state[back_params[i]], name)
            _close(opt.param_groups[0]["params"][i].detach().numpy(), twin_params[i].numpy(), "float32", name)
            _close(back_params[i].numpy(), twin_params[i].numpy(), "float32", name)


@pytest.mark.parametrize("name", ["nadam", "asgd"])
def test_numpy_checkpoints_convert_to_torch_and_back(name):
    # float32: torch's load_state_dict casts the 0-d state to the params' dtype, so a float64 torch optimizer goes on
    # with a float64 mu_product after a load (and a float32 one from a fresh start); fastopt keeps torch's fresh rule
    params, grads = _problem("float32")
    mine = [p.copy() for p in params]
    opt = fastopt.OPTIMIZERS[name](mine, **_schedule(name, 1))
    for t in range(1, 4):
        opt.param_groups[0].update(_schedule(name, t))
        opt.step(grads[t - 1])
    saved = opt.state_dict()
    tensors = [torch.tensor(p) for p in mine]
    theirs = getattr(torch.optim, opt.spec.class_name)(tensors, foreach=False)
    theirs.load_state_dict(ft.to_torch_state_dict(saved, theirs))
    assert _host_of(theirs.state[tensors[0]], name) == _host_of(saved["state"][0], name)
    _, expected, _ = next(_torch_run(name, "float32", None, grads, steps=1, opt=theirs, start=4))
    opt.param_groups[0].update(_schedule(name, 4))
    opt.step(grads[3])
    for i, p in enumerate(mine):
        _close(p, expected[i], "float32", f"{name} param {i} after the loaded step")
    assert _host_of(opt.state_dict()["state"][1], name) == _host_of(theirs.state[tensors[1]], name)
    again = fastopt.OPTIMIZERS[name]([p.copy() for p in mine])
    again.load_state_dict(ft.from_torch_state_dict(theirs.state_dict(), again))
    assert _host_of(again.state_dict()["state"][0], name) == _host_of(opt.state_dict()["state"][0], name)
    assert type(again.state_dict()["state"][0][{"nadam": "mu_product", "asgd": "eta"}[name]]) is float


def test_torch_drop_in_refuses_a_checkpoint_missing_host_state():
    p = torch.zeros(3)
    opt = ft.NAdam([p])
    p.grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()
    del saved["state"][0]["mu_product"]
    with pytest.raises(ValueError, match="mu_product"):
        ft.NAdam([torch.zeros(3)]).load_state_dict(saved)
    saved = opt.state_dict()
    saved["state"][0]["mu_product"] = torch.tensor(float("nan"))
    with pytest.raises(ValueError, match=r"mu_product.*finite"):
        ft.NAdam([torch.zeros(3)]).load_state_dict(saved)
