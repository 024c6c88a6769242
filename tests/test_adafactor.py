"""Adafactor: the fused cpu kernels against the NumPy reference (bit for bit: same operations, same fixed-order
float64 sums), both against torch.optim.Adafactor run live on random configurations and shapes, state_dicts moved
to and from torch, the gradient transform (clipping, AMP), the scratch allocated once, and the cuda backend's refusal.
The golden files (tests/test_golden.py) pin the reference to torch on stored trajectories."""

from __future__ import annotations

import copy
import tracemalloc

import numpy as np
import pytest
import torch
from tolerances import golden_mismatch

import fastopt
import fastopt.backends.cpu as cpu
import fastopt.torch as fotorch
from fastopt import functional
from fastopt.optimizers.adafactor import block_rows
from fastopt.specs import SPECS

SPEC = SPECS["adafactor"]
CHUNK = 1 << 15
# vectors (one over a chunk boundary), a 0-d scalar, an empty tensor, a 1x1 and a size-1 edge, 3-D and 4-D tensors
# (factored over the last two dims), a matrix with many row blocks, one whose rows span more than a chunk
SHAPES = [(7,), (CHUNK + 3,), (), (0,), (1, 1), (1,), (2, 5, 6), (2, 1, 3, 4), (300, 41), (3, 2 * CHUNK + 5)]
CONFIGS = [
    {},
    {"lr": 0.05, "weight_decay": 0.1, "maximize": True},
    {"lr": 0.3, "beta2_decay": -0.5, "eps": (1e-3, 0.1), "d": 1.5},
    {"d": 100.0, "eps": (None, 0.0), "beta2_decay": 0.0},
]


def _draw(shapes, dtype, steps, seed=0):
    rng = np.random.default_rng(seed)
    params = [np.array(rng.standard_normal(s), dtype=dtype) for s in shapes]   # 0-d: an array, not a scalar
    grads = [[np.array(rng.standard_normal(s) * 2.0 * 0.8 ** k, dtype=dtype) for s in shapes] for k in range(steps)]
    return params, grads


def _run(backend, params, grads, hyper, **step_kwargs):
    params = [p.copy() for p in params]
    opt = fastopt.Adafactor(params, backend=backend, **hyper)
    for g in grads:
        opt.step(g, **step_kwargs)
    return params, opt


def test_column_blocks_are_bounded():
    assert block_rows(300, 41) == 100          # 3 blocks of 100 rows (each >= 4096 elements)
    assert block_rows(4096, 4096) == 128       # 32 blocks: the column scratch is 32 rows of n
    assert block_rows(1, 1) == 1 and block_rows(0, 5) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", range(len(CONFIGS)))
@pytest.mark.parametrize("mode", ["serial", "parallel"])
def test_cpu_matches_the_reference_bit_for_bit(mode, config, dtype, monkeypatch):
    monkeypatch.setattr(cpu, "PARALLEL_MIN_BYTES", 1 << 62 if mode == "serial" else 0)
    params, grads = _draw(SHAPES, dtype, 3, seed=config)
    want, ref = _run("numpy", params, grads, CONFIGS[config])
    got, opt = _run("cpu", params, grads, CONFIGS[config])
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(a, b, err_msg=f"param {i} {SHAPES[i]}")
    ours, theirs = opt.state_dict()["state"], ref.state_dict()["state"]
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].keys() == theirs[key].keys()
        for name in ours[key]:
            np.testing.assert_array_equal(ours[key][name], theirs[key][name], err_msg=f"{key} {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clipping_and_amp_bit_for_bit(dtype):
    params, grads = _draw(SHAPES[4:], dtype, 3, seed=5)
    scaled = [[g * dtype(1024) for g in step] for step in grads]
    for kwargs, opt_kwargs in (({"grad_scale": 1024.0}, {}), ({}, {"max_grad_norm": 0.5}),
                               ({"grad_scale": 1024.0}, {"max_grad_norm": 0.5})):
        outs = []
        for backend in ("numpy", "cpu"):
            ps = [p.copy() for p in params]
            opt = fastopt.Adafactor(ps, backend=backend, **opt_kwargs)
            for g in (scaled if kwargs else grads):
                opt.step(g, **kwargs)
            outs.append(ps)
        for a, b in zip(*outs):
            np.testing.assert_array_equal(a, b, err_msg=f"{kwargs} {opt_kwargs}")
    # a non-finite gradient skips the whole step on both backends
    bad = [g.copy() for g in grads[0]]
    bad[-1].flat[0] = np.inf
    for backend in ("numpy", "cpu"):
        ps = [p.copy() for p in params]
        opt = fastopt.Adafactor(ps, backend=backend)
        opt.step(bad, grad_scale=1.0)
        assert opt.last_step_skipped and opt.state_dict()["state"] == {}
        for a, b in zip(ps, params):
            np.testing.assert_array_equal(a, b)


def _torch_run(params, grads, hyper, dtype):
    tp = [torch.tensor(p) for p in params]
    opt = torch.optim.Adafactor(tp, foreach=False, **hyper)
    for step in grads:
        for p, g in zip(tp, step):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.numpy() for p in tp], opt


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_follows_torch_live(dtype, backend):
    """Random configurations and shapes (no empty tensor: torch divides by its size), within the golden tolerance
    (tests/tolerances.py) of torch.optim.Adafactor over 10 steps, states included."""
    rng = np.random.default_rng(11)
    shapes = [(9,), (), (1, 1), (4, 33), (3, 2, 7), (65, 3)]
    for trial in range(3):
        hyper = {"lr": float(rng.choice([1e-2, 0.1])), "beta2_decay": float(rng.choice([-0.8, -0.6])),
                 "eps": (None if trial == 0 else 1e-3, float(rng.choice([1e-3, 0.05]))),
                 "d": float(rng.choice([1.0, 2.0])), "weight_decay": float(rng.choice([0.0, 0.2])),
                 "maximize": bool(trial == 1)}
        params, grads = _draw(shapes, dtype, 10, seed=100 + trial)
        want, topt = _torch_run(params, grads, hyper, dtype)
        got, opt = _run(backend, params, grads, hyper)
        for i, (a, b) in enumerate(zip(got, want)):
            problem = golden_mismatch(a, b, np.dtype(dtype).name, extreme=False)
            assert problem is None, f"trial {trial} param {i} {shapes[i]}: {problem}"
        ours = opt.state_dict()["state"]
        for i, p in enumerate(topt.param_groups[0]["params"]):
            theirs = {k: v.numpy() for k, v in topt.state[p].items() if k != "step"}
            assert sorted(ours[i]) == sorted([*theirs, "step"])
            assert ours[i]["step"] == float(topt.state[p]["step"])
            for name, value in theirs.items():
                problem = golden_mismatch(ours[i][name], value, np.dtype(dtype).name, extreme=False)
                assert problem is None, f"trial {trial} {name} of {i}: {problem}"


def test_state_dicts_move_to_and_from_torch():
    shapes = [(6,), (4, 5), (2, 3, 4)]
    params, grads = _draw(shapes, np.float64, 6, seed=3)
    hyper = {"lr": 0.05, "weight_decay": 0.1, "eps": (None, 1e-3)}
    # fastopt for 3 steps, then torch takes over from the converted state, and the other way round
    ours, opt = _run("cpu", params, grads[:3], hyper)
    tp = [torch.tensor(p) for p in ours]
    topt = torch.optim.Adafactor(tp, foreach=False, **hyper)
    topt.load_state_dict(fotorch.to_torch_state_dict(opt.state_dict(), topt))
    for step in grads[3:]:
        for p, g in zip(tp, step):
            p.grad = torch.tensor(g)
        topt.step()
    want, _ = _torch_run(params, grads, hyper, np.float64)
    for a, b in zip(tp, want):
        assert golden_mismatch(a.numpy(), b, "float64", extreme=False) is None
    theirs, topt = _torch_run(params, grads[:3], hyper, np.float64)
    back = fastopt.Adafactor([p.copy() for p in theirs], backend="cpu", **hyper)
    back.load_state_dict(fotorch.from_torch_state_dict(topt.state_dict(), back))
    ps = back.param_groups[0]["params"]
    for step in grads[3:]:
        back.step(step)
    for a, b in zip(ps, want):
        assert golden_mismatch(a, b, "float64", extreme=False) is None
    saved = back.state_dict()
    assert saved["state"][0].keys() == {"step", "variance"}
    assert saved["state"][1]["row_var"].shape == (4, 1) and saved["state"][1]["col_var"].shape == (1, 5)
    assert saved["state"][2]["row_var"].shape == (2, 3, 1) and saved["state"][2]["col_var"].shape == (2, 1, 4)
    wrong = copy.deepcopy(saved)
    wrong["state"][1]["row_var"] = np.zeros((4, 5))
    with pytest.raises(ValueError, match=r"state\[1\]\['row_var'\] has shape \(4, 5\), expected \(4, 1\)"):
        back.load_state_dict(wrong)


def test_torch_drop_in_follows_torch():
    shapes = [(6,), (4, 5), (2, 3, 4)]
    params, grads = _draw(shapes, np.float32, 5, seed=4)
    hyper = {"lr": 0.05, "weight_decay": 0.1, "maximize": True}
    want, _ = _torch_run(params, grads, hyper, np.float32)
    tp = [torch.tensor(p) for p in params]
    opt = fotorch.Adafactor(tp, **hyper)
    for step in grads:
        for p, g in zip(tp, step):
            p.grad = torch.tensor(g)
        opt.step()
    for a, b in zip(tp, want):
        assert golden_mismatch(a.numpy(), b, "float32", extreme=False) is None
    state = opt.state_dict()["state"]
    assert state[1]["row_var"].shape == (4, 1) and "variance" not in state[1]
    twin = torch.optim.Adafactor([torch.tensor(p) for p in params], foreach=False, **hyper)
    twin.load_state_dict(opt.state_dict())   # torch takes the drop-in's state dict as it is
    with pytest.raises(ValueError, match="needs a contiguous param"):
        t = torch.zeros(5, 4).t()
        t.grad = torch.ones(4, 5).t().contiguous().t()
        bad = fotorch.Adafactor([t])
        bad.step()


def test_a_step_allocates_no_scratch():
    params, grads = _draw([(512, 1024), (4096,)], np.float32, 3, seed=6)
    opt = fastopt.Adafactor(params, backend="cpu")
    opt.step(grads[0])
    opt.step(grads[1])
    tracemalloc.start()
    opt.step(grads[2])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 << 10, f"a step allocated {peak} bytes (the plan's scratch is {512 * 8 * 4} bytes and more)"


def test_bad_hyperparameters_are_refused_naming_them():
    params = [np.zeros((3, 4))]
    for bad, match in (({"beta2_decay": 0.5}, "beta2_decay"), ({"eps": (-1.0, 1e-3)}, "eps"),
                       ({"eps": (None,)}, "eps"), ({"d": 0.5}, "invalid d="), ({"weight_decay": -1.0}, "weight_decay"),
                       ({"lr": -1.0}, "lr")):
        with pytest.raises(ValueError, match=match):
            fastopt.Adafactor(params, **bad)


def test_functional_state_is_shaped():
    params, grads = _draw([(4, 6), (5,)], np.float32, 2, seed=8)
    state = functional.init_state("adafactor", params)
    assert state["row_var"][0].shape == (4, 1) and state["col_var"][0].shape == (1, 6)
    assert state["variance"][0] is None and state["row_var"][1] is None and state["variance"][1].shape == (5,)
    for step, g in enumerate(grads, start=1):
        functional.adafactor(params, g, state, step=step)


def test_torch_drop_in_refuses_wrong_state_shapes_naming_the_entry():
    params, grads = _draw([(4, 5), (6,)], np.float32, 1, seed=9)
    tp = [torch.tensor(p) for p in params]
    opt = fotorch.Adafactor(tp)
    for p, g in zip(tp, grads[0]):
        p.grad = torch.tensor(g)
    opt.step()
    saved = opt.state_dict()
    fresh = fotorch.Adafactor([torch.tensor(p) for p in params])
    wrong = copy.deepcopy(saved)
    wrong["state"][0]["row_var"] = torch.zeros(4, 5)
    with pytest.raises(ValueError, match=r"\['state'\]\[0\]\['row_var'\]: has shape \(4, 5\), expected \(4, 1\)"):
        fresh.load_state_dict(wrong)
    stray = copy.deepcopy(saved)
    stray["state"][0]["variance"] = torch.zeros(4, 5)
    with pytest.raises(ValueError, match=r"keeps no 'variance' for a param of shape \(4, 5\)"):
        fresh.load_state_dict(stray)
    assert not fresh.state   # nothing loaded
