"""Gradient clipping (fastopt.clip_grad_norm_, max_grad_norm=), AMP (step(grad_scale=, found_inf=), GradScaler) and
the reductions under them, against torch (CPU) and the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastopt import cuda_build, optim, reference
from fastopt.amp import GradScaler
from fastopt.clip import clip_grad_norm_

torch = pytest.importorskip("torch")

BACKENDS = ("numpy", "cpu")
NORMS = (2.0, 1.0, 3.0, 0.5, math.inf, -math.inf, 0.0, "inf")
SHAPES = ((5, 7), (33,), (40001,), (1,))


def _grads(rng, dtype, scale=3.0):
    return [(rng.standard_normal(s) * scale).astype(dtype) for s in SHAPES]


def _torch_clip(grads, max_norm, norm_type, **kw):
    ts = [torch.zeros(g.shape, dtype=getattr(torch, g.dtype.name), requires_grad=True) for g in grads]
    for t, g in zip(ts, grads):
        t.grad = torch.tensor(g)
    total = torch.nn.utils.clip_grad_norm_(ts, max_norm, norm_type, foreach=False, **kw)
    return float(total), [t.grad.numpy() for t in ts]


# float64 accumulation here, float32 in torch: the norms agree to float32 rounding, plus pow's error for odd p.
TOL = {np.float32: dict(rtol=2e-5, atol=0), np.float64: dict(rtol=1e-12, atol=0)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", NORMS)
def test_clip_grad_norm_matches_torch(norm_type, dtype, backend):
    rng = np.random.default_rng(0)
    grads = _grads(rng, dtype)
    want_total, want = _torch_clip(grads, 1.5, norm_type)
    mine = [g.copy() for g in grads]
    total = clip_grad_norm_(mine, 1.5, norm_type, backend=backend)
    assert total.dtype == dtype
    np.testing.assert_allclose(float(total), want_total, **TOL[dtype])
    for m, w in zip(mine, want):
        np.testing.assert_allclose(m, w, **TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.0])
def test_clip_with_non_finite_grads_as_torch_and_the_error_changes_nothing(bad, norm_type, backend):
    rng = np.random.default_rng(1)
    grads = _grads(rng, np.float32)
    grads[2][17] = bad
    want_total, want = _torch_clip(grads, 1.0, norm_type)
    mine = [g.copy() for g in grads]
    total = clip_grad_norm_(mine, 1.0, norm_type, backend=backend)
    assert (math.isnan(total) and math.isnan(want_total)) or total == want_total
    for m, w in zip(mine, want):
        np.testing.assert_array_equal(np.isnan(m), np.isnan(w))
        np.testing.assert_allclose(m[np.isfinite(w)], w[np.isfinite(w)], rtol=2e-5)
    kept = [g.copy() for g in grads]
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(kept, 1.0, norm_type, error_if_nonfinite=True, backend=backend)
    for k, g in zip(kept, grads):
        np.testing.assert_array_equal(k, g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_zero_grads_and_small_norms_leave_grads_unchanged(backend):
    zeros = [np.zeros(s, np.float32) for s in SHAPES]
    assert clip_grad_norm_(zeros, 1.0, backend=backend) == 0
    assert all(not z.any() for z in zeros)
    small = [np.full(s, 1e-4, np.float64) for s in SHAPES]
    copy = [s.copy() for s in small]
    clip_grad_norm_(copy, 10.0, backend=backend)
    for c, s in zip(copy, small):
        np.testing.assert_array_equal(c, s)
    assert clip_grad_norm_([], 1.0) == 0


def test_clip_refuses_bad_arguments_and_changes_nothing():
    g = [np.ones(3, np.float32)]
    for kwargs, error in (({"max_norm": "1"}, TypeError), ({"max_norm": 1.0, "norm_type": "two"}, TypeError),
                          ({"max_norm": 1.0, "norm_type": float("nan")}, ValueError),
                          ({"max_norm": 1.0, "error_if_nonfinite": 1}, TypeError)):
        with pytest.raises(error):
            clip_grad_norm_(g, **kwargs)
    with pytest.raises(TypeError, match="floating"):
        clip_grad_norm_([np.ones(3, np.int64)], 1.0)
    np.testing.assert_array_equal(g[0], 1)


def _pair(dtype, seed=2):
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    steps = [[(rng.standard_normal(s) * 3).astype(dtype) for s in SHAPES] for _ in range(4)]
    return p0, steps


def _torch_params(p0):
    return [torch.tensor(p, requires_grad=True) for p in p0]


ADAM_TOL = {np.float32: dict(rtol=2e-6, atol=2e-6), np.float64: dict(rtol=1e-13, atol=1e-13)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.0])
def test_max_grad_norm_is_clip_then_adam_and_cpu_equals_numpy_bit_for_bit(norm_type, dtype):
    p0, steps = _pair(dtype)
    finals = {}
    for backend in BACKENDS:
        ps = [p.copy() for p in p0]
        opt = optim.Adam(ps, lr=1e-2, weight_decay=0.01, backend=backend, max_grad_norm=1.0, norm_type=norm_type)
        for g in steps:
            given = [x.copy() for x in g]
            opt.step(given)
            for a, b in zip(given, g):
                np.testing.assert_array_equal(a, b)   # folded into the update: grads are not written
        finals[backend] = ps
    tp = _torch_params(p0)
    topt = torch.optim.Adam(tp, lr=1e-2, weight_decay=0.01, foreach=False)
    for g in steps:
        for t, x in zip(tp, g):
            t.grad = torch.tensor(x)
        torch.nn.utils.clip_grad_norm_(tp, 1.0, norm_type, foreach=False)
        topt.step()
    # Bit for bit what fastopt's own clip_grad_norm_ then a plain step give (the same coefficient, the same g * coef).
    ps = [p.copy() for p in p0]
    plain = optim.Adam(ps, lr=1e-2, weight_decay=0.01, backend="numpy")
    for g in steps:
        g = [x.copy() for x in g]
        clip_grad_norm_(g, 1.0, norm_type, backend="numpy")
        plain.step(g)
    for a, b, c, t in zip(finals["numpy"], finals["cpu"], ps, tp):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        # torch's norm rounds in float32 (ours accumulates in float64): its coefficient can differ by an ulp, which
        # Adam's g / sqrt(v) amplifies for gradients near zero; the same trajectory up to a fraction of lr.
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=0, atol=1e-2 * 1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_amp_step_matches_torch_fused_adam_and_skips_on_inf(dtype, backend):
    p0, steps = _pair(dtype, seed=3)
    ps = [p.copy() for p in p0]
    opt = optim.AdamW(ps, lr=1e-2, amsgrad=True, backend=backend)
    tp = _torch_params(p0)
    topt = torch.optim.AdamW(tp, lr=1e-2, amsgrad=True, fused=True)
    scale = 3072.0   # not a power of two: dividing and multiplying by the reciprocal differ
    for k, g in enumerate(steps):
        scaled = [x * dtype(scale) for x in g]
        if k == 2:
            scaled[1][4] = np.nan if dtype == np.float32 else np.inf
        before = [p.copy() for p in ps]
        opt.step(scaled, grad_scale=np.array([scale], dtype=np.float32))
        assert opt.last_step_skipped == (k == 2)
        if k == 2:
            for a, b in zip(before, ps):
                np.testing.assert_array_equal(a, b)
        for t, x in zip(tp, scaled):
            t.grad = torch.tensor(x)
        topt.grad_scale = torch.tensor(scale)
        topt.found_inf = torch.tensor(1.0 if k == 2 else 0.0)
        topt.step()
    state = opt.state_dict()["state"]
    for i, (p, t) in enumerate(zip(ps, tp)):
        np.testing.assert_allclose(p, t.detach().numpy(), **ADAM_TOL[dtype])
        tstate = topt.state[t]
        assert state[i]["step"] == float(tstate["step"]) == 3
        for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            np.testing.assert_allclose(state[i][name], tstate[name].numpy(), **ADAM_TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_found_inf_given_skips_or_runs_as_told(backend):
    p0, steps = _pair(np.float32, seed=4)
    ps = [p.copy() for p in p0]
    opt = optim.SGD(ps, lr=0.1, momentum=0.9, backend=backend)
    opt.step(steps[0], found_inf=np.float32(1.0))
    for a, b in zip(ps, p0):
        np.testing.assert_array_equal(a, b)
    assert opt.state_dict()["state"] == {}   # the first step never ran: no momentum buffer either
    ref = [p.copy() for p in p0]
    optim.SGD(ref, lr=0.1, momentum=0.9, backend=backend).step([g / np.float32(4) for g in steps[0]])
    opt.step(steps[0], grad_scale=4.0, found_inf=0.0)
    for a, b in zip(ps, ref):
        np.testing.assert_array_equal(a, b)


def test_amp_arguments_are_checked_before_anything_changes():
    p = [np.ones(3, np.float32)]
    opt = optim.Adam(p, backend="numpy")
    for kwargs, error in (({"grad_scale": 0.0}, ValueError), ({"grad_scale": -2.0}, ValueError),
                          ({"grad_scale": np.ones(2)}, TypeError), ({"found_inf": "yes"}, TypeError),
                          ({"grad_scale": True}, TypeError)):
        with pytest.raises(error):
            opt.step([np.ones(3, np.float32)], **kwargs)
    np.testing.assert_array_equal(p[0], 1)
    assert opt.state_dict()["state"] == {}
    with pytest.raises(TypeError, match="max_grad_norm"):
        optim.Adam(p, max_grad_norm="1")
    with pytest.raises(TypeError, match="norm_type"):
        optim.Adam(p, max_grad_norm=1.0, norm_type=None)


def test_grad_scaler_follows_torch_scale_schedule():
    rng = np.random.default_rng(5)
    p = [rng.standard_normal(6).astype(np.float32)]
    opt = optim.SGD(p, lr=0.01, backend="cpu")
    mine = GradScaler(init_scale=2.0 ** 10, growth_factor=2.0, backoff_factor=0.25, growth_interval=3)
    t = torch.tensor(p[0].copy(), requires_grad=True)
    topt = torch.optim.SGD([t], lr=0.01)
    theirs = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_factor=2.0, backoff_factor=0.25,
                                  growth_interval=3)
    for k in range(12):
        g = rng.standard_normal(6).astype(np.float32)
        if k in (4, 9):
            g[2] = np.inf
        mine.step(opt, [g * np.float32(mine.get_scale())])
        mine.update()
        theirs.scale(torch.ones(()))   # torch's scaler starts its scale lazily, at the first scale()
        t.grad = torch.tensor(g) * theirs.get_scale()
        theirs.step(topt)
        theirs.update()
        assert mine.get_scale() == theirs.get_scale(), k
    np.testing.assert_allclose(p[0], t.detach().numpy(), rtol=1e-6, atol=1e-7)
    state = mine.state_dict()
    copy = GradScaler()
    copy.load_state_dict(state)
    assert copy.get_scale() == mine.get_scale() and copy.state_dict() == state


def test_grad_scaler_unscale_then_step_and_bad_arguments():
    p = [np.zeros(4, np.float32)]
    opt = optim.SGD(p, lr=1.0, backend="cpu")
    scaler = GradScaler(init_scale=8.0)
    g = [np.full(4, 8.0, np.float32)]
    scaler.unscale_(opt, g)
    np.testing.assert_array_equal(g[0], 1.0)
    with pytest.raises(RuntimeError, match="already"):
        scaler.unscale_(opt, g)
    scaler.step(opt, g)
    np.testing.assert_array_equal(p[0], -1.0)
    scaler.update()
    for kwargs in ({"init_scale": 0.0}, {"growth_factor": 0.5}, {"backoff_factor": 1.5}, {"growth_interval": 0}):
        with pytest.raises(ValueError):
            GradScaler(**kwargs)


# ---- the reductions: cpu kernels == reference bit for bit ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", sorted(reference.REDUCTIONS))
def test_cpu_reductions_equal_the_reference(op, dtype):
    from fastopt.backends import cpu
    if cpu.BACKEND.unavailable_reason():
        pytest.skip(cpu.BACKEND.unavailable_reason())
    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal(n).astype(dtype) * 3 for n in (0, 1, 7, 8, 9, (1 << 15) + 5, 3 * (1 << 15))]
    arrays[3][2] = np.inf
    got = cpu.reduce_arrays(arrays, op, 3.0)
    want = [reference.reduce_tensor(a, op, 3.0) for a in arrays]
    if op == "sumpow":   # pow is not correctly rounded: Numba's and NumPy's differ by an ulp at times
        np.testing.assert_allclose(got, want, rtol=1e-14)
    else:
        np.testing.assert_array_equal(got, want)
    # the order is fixed: the same bits every run
    assert cpu.reduce_arrays(arrays, op, 3.0) == got


def test_reference_reduction_order_is_the_documented_one():
    x = np.arange(1, 20, dtype=np.float64) / 7
    lanes = np.zeros(8)
    for i, v in enumerate(x):
        lanes[i % 8] += v * v
    want = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
    assert reference.reduce_chunk(x, "sumsq") == want


# ---- the gradient transform in the CUDA kernels, through the host build ---------------------------------------------

@pytest.mark.skipif(cuda_build.find_cxx() is None, reason="no C++ compiler for the host build")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_host_build_applies_grad_scale_and_factor_as_the_reference(dtype):
    from fastopt.specs import SPECS
    spec = SPECS["adam"]
    hyper = spec.normalize({**spec.defaults, "amsgrad": True, "weight_decay": 0.01})
    rng = np.random.default_rng(7)
    n = 1003
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 3072).astype(dtype)
    slots = [np.zeros(n, dtype) for _ in spec.slots]
    want_p, want_s = p.copy(), [s.copy() for s in slots]
    kernels = cuda_build.HostKernels("adam")
    for step in (1, 2, 3):
        scalars = spec.scalars(hyper, step)
        reference.run(spec, [want_p], [g], [[s] for s in want_s], scalars, spec.flags(hyper), 3072.0, 0.37)
        kernels.flat(p, g, slots, (*scalars, 3072.0, 0.37), spec.flags(hyper))
    np.testing.assert_array_equal(p, want_p)
    for a, b in zip(slots, want_s):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_every_optimizer_clips_and_unscales_alike_on_numpy_and_cpu(name):
    """The gradient transform is generated for every family: cpu equals the reference bit for bit with it, and a
    skipped step leaves every optimizer as it was."""
    from fastopt.records import RECORDS
    cls = optim.OPTIMIZERS[name]
    busy = RECORDS[cls.spec.name].busy if cls.spec.name in RECORDS else {}
    rng = np.random.default_rng(8)
    p0 = [rng.standard_normal(s).astype(np.float32) for s in ((3, 5), (70000,))]
    steps = [[(rng.standard_normal(p.shape) * 40).astype(np.float32) for p in p0] for _ in range(3)]
    finals = []
    for backend in BACKENDS:
        ps = [p.copy() for p in p0]
        opt = cls(ps, backend=backend, max_grad_norm=0.5, **busy)
        for k, g in enumerate(steps):
            opt.step(g, grad_scale=8.0 if k else None)
        before = [p.copy() for p in ps]
        bad = [g.copy() for g in steps[0]]
        bad[1][7] = np.inf
        opt.step(bad, grad_scale=8.0)
        assert opt.last_step_skipped
        for a, b in zip(before, ps):
            np.testing.assert_array_equal(a, b)
        finals.append(ps)
    for a, b in zip(*finals):
        np.testing.assert_array_equal(a, b)
