"""The cuda backend on a GPU (skipped without CuPy and a device): every spec against the reference, torch tensors
through DLPack / __cuda_array_interface__ updated in place, a tensor above 2^31 elements on the flat path, the table
path against the flat path bit for bit, and one launch per group. benchmarks/gpu_check.sh runs this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import fastopt  # noqa: F401
except ImportError:  # a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastopt import cuda_build, reference
from fastopt.backends.cuda import BACKEND
from fastopt.specs import SPECS

try:
    from tolerances import TOLERANCES
except ImportError:  # pragma: no cover
    TOLERANCES = {np.dtype(np.float64): dict(rtol=1e-12, atol=1e-14),
                  np.dtype(np.float32): dict(rtol=2e-6, atol=1e-7)}

_reason = BACKEND.unavailable_reason()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_reason is not None, reason=f"cuda backend: {_reason}")]

if _reason is None:
    import cupy as cp

STEPS = 5


def _hypers(spec):
    """Defaults, and every flag switched on with weight decay and maximize (where the spec allows it)."""
    out = [dict(spec.defaults)]
    h = dict(spec.defaults)
    for name in ("amsgrad", "centered", "nesterov", "maximize"):
        if name in h:
            h[name] = True
    if "momentum" in h:
        h["momentum"] = 0.9
    if "weight_decay" in h:
        h["weight_decay"] = 0.05
    spec.validate(h)
    out.append(h)
    return out


def _state(spec, hyper, params_np, dtype):
    state_dtype = np.float64 if dtype == np.float64 else np.float32
    return {s.name: ([np.full(p.size, s.init(hyper), state_dtype) for p in params_np] if s.active(hyper) else None)
            for s in spec.slots}


def _run_device(spec, hyper, params_np, grads_np, slots_np, flat_buffers=False):
    """Run STEPS steps on the device; return the final params and slots as NumPy arrays."""
    if flat_buffers:
        def upload(arrays):
            buf = cp.asarray(np.concatenate(arrays)) if arrays else cp.empty(0)
            out, start = [], 0
            for a in arrays:
                out.append(buf[start:start + a.size])
                start += a.size
            return out
    else:
        def upload(arrays):
            return [cp.asarray(a) for a in arrays]
    params = upload(params_np)
    slots = {k: None if v is None else upload(v) for k, v in slots_np.items()}
    plan = BACKEND.prepare(spec, params, slots, spec.flags(hyper))
    for step in range(1, STEPS + 1):
        grads = upload([g[step - 1] for g in grads_np])
        plan.run(grads, spec.scalars(hyper, step))
    cp.cuda.get_current_stream().synchronize()
    return [p.get() for p in params], {k: None if v is None else [a.get() for a in v] for k, v in slots.items()}, plan


def _run_reference(spec, hyper, params_np, grads_np, slots_np):
    fn = reference.function(spec.kernel)
    params = [p.astype(np.float64 if p.dtype == np.float64 else np.float32) for p in params_np]
    slots = {k: None if v is None else [a.copy() for a in v] for k, v in slots_np.items()}
    for t, p in enumerate(params):
        for step in range(1, STEPS + 1):
            g = grads_np[t][step - 1].astype(p.dtype)
            ss = [np.full(p.size, np.nan, p.dtype) if slots[s.name] is None else slots[s.name][t] for s in spec.slots]
            fn(p, g, *ss, *spec.scalars(hyper, step), *spec.flags(hyper))
            if params_np[t].dtype == np.float16:
                p[...] = p.astype(np.float16).astype(np.float32)
    return params, slots


def _problem(dtype, sizes, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [rng.standard_normal((STEPS, n)).astype(dtype) for n in sizes]
    return params, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["float32", "float64", "float16"])
@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.kernel in cuda_build.FAMILIES])
def test_every_spec_matches_reference(name, dtype):
    spec = SPECS[name]
    sizes = (0, 1, 3, 4097, 100003)
    for hyper in _hypers(spec):
        params_np, grads_np = _problem(dtype, sizes)
        for flat in (False, True):
            slots_np = _state(spec, hyper, params_np, dtype)
            got_p, got_s, _ = _run_device(spec, hyper, params_np, grads_np, slots_np, flat_buffers=flat)
            want_p, want_s = _run_reference(spec, hyper, params_np, grads_np, _state(spec, hyper, params_np, dtype))
            tol = TOLERANCES[np.dtype(np.float64 if dtype == np.float64 else np.float32)]
            for t in range(len(sizes)):
                np.testing.assert_allclose(got_p[t].astype(want_p[t].dtype), want_p[t], **tol,
                                           err_msg=f"{name} {hyper} flat={flat} tensor {t}")
                for k, v in want_s.items():
                    if v is not None:
                        np.testing.assert_allclose(got_s[k][t], v[t], **tol, err_msg=f"{name} {k} tensor {t}")


def test_table_path_and_flat_path_agree_bit_for_bit():
    spec = SPECS["adamw"]
    hyper = dict(spec.defaults, amsgrad=True)
    sizes = (5, 0, 4096, 3, 70001, 1)
    params_np, grads_np = _problem(np.float32, sizes, seed=4)
    out = {}
    for flat_buffers in (False, True):
        p, s, plan = _run_device(spec, hyper, params_np, grads_np, _state(spec, hyper, params_np, np.float32),
                                 flat_buffers=flat_buffers)
        assert (plan._kernel is plan.flat_kernel) == flat_buffers
        out[flat_buffers] = (p, s)
    for t in range(len(sizes)):
        np.testing.assert_array_equal(out[False][0][t], out[True][0][t])
        for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            np.testing.assert_array_equal(out[False][1][k][t], out[True][1][k][t])


def test_one_launch_per_group_and_no_table_upload_when_grads_stay():
    spec = SPECS["adam"]
    hyper = dict(spec.defaults)
    sizes = (17, 4096, 3, 100000)
    params = [cp.asarray(np.random.default_rng(0).standard_normal(n).astype(np.float32)) for n in sizes]
    grads = [cp.ones(n, dtype=np.float32) for n in sizes]
    slots = {s.name: ([cp.zeros(n, np.float32) for n in sizes] if s.active(hyper) else None) for s in spec.slots}
    plan = BACKEND.prepare(spec, params, slots, spec.flags(hyper))
    launches, selects = [], []
    launch, select = plan._launch, plan._select
    plan._launch = lambda *a: (launches.append(a), launch(*a))
    plan._select = lambda *a: (selects.append(a), select(*a))
    for step in range(1, 4):
        plan.run(grads, spec.scalars(hyper, step))
    assert len(launches) == 3 and len(selects) == 1
    new_grads = [g.copy() for g in grads]
    plan.run(new_grads, spec.scalars(hyper, 4))
    assert len(launches) == 4 and len(selects) == 2
    cp.cuda.get_current_stream().synchronize()


def test_torch_cuda_tensors_are_updated_in_place():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    spec = SPECS["adam"]
    hyper = dict(spec.defaults, weight_decay=0.01)
    p_t = torch.randn(10007, device="cuda", dtype=torch.float32)
    g_t = torch.randn(10007, device="cuda", dtype=torch.float32)
    before = p_t.cpu().numpy().copy()
    ptr = p_t.data_ptr()
    assert BACKEND.owns(p_t)
    p = BACKEND.as_array(p_t)
    assert int(p.data.ptr) == ptr                       # zero-copy
    dl = cp.from_dlpack(p_t)                            # the DLPack route views the same memory too
    assert int(dl.data.ptr) == ptr
    slots = {s.name: ([BACKEND.full_like(p, 0.0, np.float32)] if s.active(hyper) else None) for s in spec.slots}
    plan = BACKEND.prepare(spec, [p], slots, spec.flags(hyper))
    torch.cuda.synchronize()
    plan.run([BACKEND.as_array(g_t)], spec.scalars(hyper, 1))
    cp.cuda.get_current_stream().synchronize()
    want = before.copy()
    ss = [np.zeros_like(want), np.zeros_like(want), np.zeros_like(want)]
    reference.adam(want, g_t.cpu().numpy(), *ss, *spec.scalars(hyper, 1), *spec.flags(hyper))
    assert p_t.data_ptr() == ptr
    np.testing.assert_allclose(p_t.cpu().numpy(), want, **TOLERANCES[np.dtype(np.float32)])


def test_more_than_2_to_the_31_elements_on_the_flat_path():
    n = 2 ** 31 + 17
    free, _ = cp.cuda.Device().mem_info
    if free < 2 * 4 * n + (1 << 30):
        pytest.skip(f"needs {2 * 4 * n / 2**30:.1f} GiB free on the device, {free / 2**30:.1f} GiB are")
    spec = SPECS["sgd"]
    hyper = dict(spec.defaults, lr=0.25)
    p = cp.full(n, 1.0, dtype=cp.float32)
    g = cp.full(n, 2.0, dtype=cp.float32)
    idx = np.array([0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 31 + 1, n - 2, n - 1])
    rng = np.random.default_rng(5)
    pv = rng.standard_normal(len(idx)).astype(np.float32)
    gv = rng.standard_normal(len(idx)).astype(np.float32)
    p[cp.asarray(idx)] = cp.asarray(pv)
    g[cp.asarray(idx)] = cp.asarray(gv)
    plan = BACKEND.prepare(spec, [p], {"momentum_buffer": None}, spec.flags(hyper))
    plan.run([g], spec.scalars(hyper, 1))
    assert plan._kernel is plan.flat_kernel
    cp.cuda.get_current_stream().synchronize()
    want = pv.copy()
    reference.sgd(want, gv, None, *spec.scalars(hyper, 1), *spec.flags(hyper))
    np.testing.assert_array_equal(p[cp.asarray(idx)].get(), want)
    assert int((p == cp.float32(0.5)).sum()) == n - len(idx)   # 1 - 0.25 * 2 everywhere else
    del p, g
    cp.get_default_memory_pool().free_all_blocks()


def test_arrays_on_different_devices_are_refused():
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one device only")
    spec = SPECS["sgd"]
    with cp.cuda.Device(0):
        a = cp.zeros(10, cp.float32)
    with cp.cuda.Device(1):
        b = cp.zeros(10, cp.float32)
    with pytest.raises(ValueError, match="different CUDA devices"):
        BACKEND.prepare(spec, [a, b], {"momentum_buffer": None}, spec.flags(spec.defaults))


# ---- bfloat16 params, torch parameters on torch's stream, a huge tensor on the table path, occupancy (issue 9/14) -

def _bf16_bits(x32: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (finite inputs), as the kernels do."""
    u = np.ascontiguousarray(x32, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _bf16_f32(bits: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(bits).astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.kernel in cuda_build.FAMILIES])
def test_bfloat16_params_match_the_float32_reference_rounded_each_step(name):
    spec = SPECS[name]
    sizes = (0, 1, 3, 4097, 100003)
    rng = np.random.default_rng(11)
    fn = reference.function(spec.kernel)
    tol = TOLERANCES[np.dtype(np.float32)]
    for hyper in _hypers(spec):
        p_bits = [_bf16_bits(rng.standard_normal(n).astype(np.float32)) for n in sizes]
        g_bits = [_bf16_bits(rng.standard_normal((STEPS, n)).astype(np.float32)) for n in sizes]
        want_p = [_bf16_f32(b) for b in p_bits]
        want_s = _state(spec, hyper, p_bits, np.float32)
        for t, p in enumerate(want_p):
            for step in range(1, STEPS + 1):
                ss = [np.full(p.size, np.nan, np.float32) if want_s[s.name] is None else want_s[s.name][t]
                      for s in spec.slots]
                fn(p, _bf16_f32(g_bits[t][step - 1]), *ss, *spec.scalars(hyper, step), *spec.flags(hyper))
                p[...] = _bf16_f32(_bf16_bits(p))
        for flat in (False, True):
            got_p, got_s, plan = _run_device(spec, hyper, p_bits, g_bits, _state(spec, hyper, p_bits, np.float32),
                                             flat_buffers=flat)
            assert (plan._kernel is plan.flat_kernel) == flat
            for t in range(len(sizes)):
                np.testing.assert_allclose(_bf16_f32(got_p[t]), want_p[t], **tol,
                                           err_msg=f"{name} {hyper} bfloat16 flat={flat} tensor {t}")
                for k, v in want_s.items():
                    if v is not None:
                        np.testing.assert_allclose(got_s[k][t], v[t], **tol, err_msg=f"{name} {k} tensor {t}")


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch


def _round_like(x32, dtype_name):
    if dtype_name == "float16":
        return x32.astype(np.float16).astype(np.float32)
    if dtype_name == "bfloat16":
        return _bf16_f32(_bf16_bits(x32))
    return x32


@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
def test_torch_parameters_are_updated_in_place_on_torchs_current_stream(dtype_name):
    """nn.Parameters (requires_grad: both exports refuse them) are viewed zero-copy through detach(); the grads come
    from a backward pass on a side stream and the step is launched there, with no synchronization in between."""
    torch = _torch_cuda()
    dtype = getattr(torch, dtype_name)
    sizes = (7, 4097, 1, 70001)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n, device="cuda", dtype=dtype)) for n in sizes]
    spec = SPECS["adam"]
    hyper = dict(spec.defaults, lr=1e-2, weight_decay=0.01)
    for p in params:
        assert BACKEND.owns(p)
        assert int(BACKEND.as_array(p).data.ptr) == p.data_ptr()       # zero-copy
        assert int(cp.from_dlpack(p.detach()).data.ptr) == p.data_ptr()  # the DLPack route views the same memory
    views = [BACKEND.as_array(p) for p in params]
    slots = {s.name: ([BACKEND.full_like(v, 0.0, np.float32) for v in views] if s.active(hyper) else None)
             for s in spec.slots}
    plan = BACKEND.prepare(spec, views, slots, spec.flags(hyper))
    assert plan.on_torch_stream
    before = [p.detach().float().cpu().numpy() for p in params]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        weights = [torch.linspace(0.5, 1.5, n, device="cuda") for n in sizes]
        loss = sum(((p.float() * w) ** 2).sum() for p, w in zip(params, weights))
        loss.backward()
        assert plan._stream().ptr == side.cuda_stream
        plan.run([BACKEND.as_array(p.grad) for p in params], spec.scalars(hyper, 1))
        after = [p.detach().float().cpu().numpy() for p in params]   # ordered after the step on this stream
    torch.cuda.synchronize()
    for t, p in enumerate(params):
        g32 = p.grad.float().cpu().numpy()
        want = before[t].copy()
        ss = [np.zeros_like(want), np.zeros_like(want), np.zeros_like(want)]
        reference.adam(want, g32, *ss, *spec.scalars(hyper, 1), *spec.flags(hyper))
        np.testing.assert_allclose(after[t], _round_like(want, dtype_name), **TOLERANCES[np.dtype(np.float32)],
                                   err_msg=f"{dtype_name} tensor {t}")
        assert p.requires_grad and p.data_ptr() == int(views[t].data.ptr)


def test_fastopt_adam_steps_torch_parameters_with_their_grads():
    torch = _torch_cuda()
    import fastopt
    params = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (5, 4097)]
    opt = fastopt.Adam(params, lr=1e-2)
    (sum((p ** 2).sum() for p in params)).backward()
    before = [p.detach().cpu().numpy().copy() for p in params]
    opt.step([p.grad for p in params])
    torch.cuda.synchronize()
    for p, b in zip(params, before):
        np.testing.assert_allclose(p.detach().cpu().numpy(), b - 1e-2 * np.sign(b), rtol=1e-4, atol=1e-6)


def test_more_than_2_to_the_31_elements_on_the_table_path():
    n = 2 ** 31 + 17
    free, _ = cp.cuda.Device().mem_info
    if free < 3 * 4 * n + (1 << 30):
        pytest.skip(f"needs {3 * 4 * n / 2**30:.1f} GiB free on the device, {free / 2**30:.1f} GiB are")
    spec = SPECS["sgd"]
    hyper = dict(spec.defaults, lr=0.25, momentum=0.5)
    small_p, small_g, small_b = cp.full(5, 3.0, cp.float32), cp.full(5, 1.0, cp.float32), cp.zeros(5, cp.float32)
    p = cp.full(n, 1.0, dtype=cp.float32)
    g = cp.full(n, 2.0, dtype=cp.float32)
    buf = cp.zeros(n, dtype=cp.float32)
    idx = np.array([0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 31 + 1, n - 2, n - 1])
    rng = np.random.default_rng(6)
    pv, gv = rng.standard_normal(len(idx)).astype(np.float32), rng.standard_normal(len(idx)).astype(np.float32)
    p[cp.asarray(idx)] = cp.asarray(pv)
    g[cp.asarray(idx)] = cp.asarray(gv)
    plan = BACKEND.prepare(spec, [small_p, p], {"momentum_buffer": [small_b, buf]}, spec.flags(hyper))
    plan.run([small_g, g], spec.scalars(hyper, 1))
    assert plan._kernel is plan.table_kernel
    cp.cuda.get_current_stream().synchronize()
    want, want_buf = pv.copy(), np.zeros_like(pv)
    reference.sgd(want, gv, want_buf, *spec.scalars(hyper, 1), *spec.flags(hyper))
    np.testing.assert_array_equal(p[cp.asarray(idx)].get(), want)
    np.testing.assert_array_equal(buf[cp.asarray(idx)].get(), want_buf)
    assert int((p == cp.float32(0.5)).sum()) == n - len(idx)   # 1 - 0.25 * 2 everywhere else
    del p, g, buf
    cp.get_default_memory_pool().free_all_blocks()


def test_grids_are_one_wave_of_what_occupancy_allows():
    spec = SPECS["adam"]
    hyper = dict(spec.defaults)
    params = [cp.zeros(1 << 22, cp.float32), cp.zeros(3, cp.float32)]
    slots = {s.name: ([cp.zeros_like(p) for p in params] if s.active(hyper) else None) for s in spec.slots}
    plan = BACKEND.prepare(spec, params, slots, spec.flags(hyper))
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    for kernel, resident in ((plan.flat_kernel, plan.flat_resident), (plan.table_kernel, plan.table_resident)):
        per_sm = resident // sms
        assert resident == per_sm * sms and 1 <= per_sm <= 2048 // 256
        # the occupancy calculator agrees with the registers the kernel was built with (65536 per SM)
        assert per_sm <= 65536 // (kernel.num_regs * 256) or per_sm == 2048 // 256
    plan.run([cp.ones_like(p) for p in params], spec.scalars(hyper, 1))
    assert plan._blocks <= plan.table_resident
    cp.cuda.get_current_stream().synchronize()


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta"])
def test_fastopt_torch_matches_torch_optim_on_cuda_parameters_on_a_side_stream(name):
    """fastopt.torch's drop-ins on CUDA nn.Parameters (the cuda backend underneath), trained on a non-default
    torch stream with no synchronization between backward and step, against torch.optim on the same GPU."""
    torch = _torch_cuda()
    ft = pytest.importorskip("fastopt.torch")
    kwargs = {"lr": 1e-2, "weight_decay": 0.01}
    if name == "SGD":
        kwargs["momentum"] = 0.9
    torch.manual_seed(0)
    shapes = [(64, 33), (33,), (1,), (4097,)]
    ref = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in shapes]
    mine = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opts = [(ref, getattr(torch.optim, name)(ref, **kwargs)), (mine, getattr(ft, name)(mine, **kwargs))]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(5):
            for params, opt in opts:
                opt.zero_grad()
                sum(((p * (i + 1)) ** 2).sum() for i, p in enumerate(params)).backward()
                opt.step()
    torch.cuda.synchronize()
    tol = TOLERANCES[np.dtype(np.float32)]
    for a, b in zip(ref, mine):
        np.testing.assert_allclose(b.detach().cpu().numpy(), a.detach().cpu().numpy(), rtol=tol["rtol"] * 4,
                                   atol=tol["atol"] * 4, err_msg=f"{name}: fastopt.torch vs torch.optim on the GPU")


# ---- kernel contract v2 on the device: per-tensor reductions (LAMB, LARS), gradient norms -------------------------

REDUCTION_SPECS = [n for n, s in SPECS.items() if s.reductions and s.kernel in cuda_build.FAMILIES]


def _random_shapes(rng, count=7):
    return [int(n) for n in rng.choice([0, 1, 3, 255, 4097, 65537, 300001], size=count)]


@pytest.mark.parametrize("name", REDUCTION_SPECS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_reduction_specs_match_the_reference_on_random_shapes(name, dtype):
    """cuda against the reference (which the cpu backend matches bit for bit), three random lists of shapes."""
    spec = SPECS[name]
    rng = np.random.default_rng(11)
    for _ in range(3):
        sizes = _random_shapes(rng)
        hyper = dict(spec.defaults, weight_decay=float(rng.choice([0.0, 0.05])))
        params_np, grads_np = _problem(dtype, sizes, seed=int(rng.integers(1 << 30)))
        got_p, got_s, plan = _run_device(spec, hyper, params_np, grads_np, _state(spec, hyper, params_np, dtype))
        assert plan._kernel is plan.table_kernel
        want_p, want_s = _run_reference(spec, hyper, params_np, grads_np, _state(spec, hyper, params_np, dtype))
        tol = TOLERANCES[np.dtype(dtype)]
        for t in range(len(sizes)):
            np.testing.assert_allclose(got_p[t], want_p[t], **tol, err_msg=f"{name} sizes={sizes} tensor {t}")
            for k, v in want_s.items():
                if v is not None:
                    np.testing.assert_allclose(got_s[k][t], v[t], **tol, err_msg=f"{name} {k} tensor {t}")


@pytest.mark.parametrize("name", REDUCTION_SPECS)
def test_reduction_specs_are_bitwise_the_same_run_to_run(name):
    spec = SPECS[name]
    hyper = dict(spec.defaults, weight_decay=0.05)
    sizes = (3, 70001, 0, 1 << 20, 4097)
    params_np, grads_np = _problem(np.float32, sizes, seed=12)
    runs = [_run_device(spec, hyper, params_np, grads_np, _state(spec, hyper, params_np, np.float32))
            for _ in range(2)]
    for t in range(len(sizes)):
        np.testing.assert_array_equal(runs[0][0][t], runs[1][0][t])
    np.testing.assert_array_equal(runs[0][2].d_reduced.get(), runs[1][2].d_reduced.get())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("op", ["sumsq", "sum", "maxabs", "nonfinite", "minabs", "nonzero"])
def test_gradient_reductions_are_the_host_builds_bit_for_bit(op, dtype):
    """The device computes the order the host build models (common.cuh, fo_block_reduce) exactly: same bits as the
    host build given the device's chunk size and block size (pow, for sumpow, is left out: not correctly rounded)."""
    from fastopt.backends import cuda as cuda_backend
    rng = np.random.default_rng(13)
    arrays_np = [(rng.standard_normal(n) * 3).astype(dtype) for n in (0, 1, 3, 4097, 70001, 1 << 20)]
    arrays_np[3][7] = np.inf
    arrays = [cp.asarray(a) for a in arrays_np]
    got = cuda_backend.reduce_arrays(arrays, op)
    again = cuda_backend.reduce_arrays(arrays, op)
    assert got == again                                            # bitwise run to run (floats compare exactly)
    reducer = next(r for k, r in cuda_backend._reducers.items() if k[2] == tuple(a.size for a in arrays_np))
    want = cuda_build.HostReduce()(arrays_np, op, chunk_elems=reducer.chunk_elems, grid=3, block=cuda_build.BLOCK)
    np.testing.assert_array_equal(np.array(got), want)


def test_clip_grad_norm_on_the_device_matches_the_cpu_backend():
    import fastopt
    rng = np.random.default_rng(14)
    grads_np = [rng.standard_normal(n).astype(np.float32) for n in (5, 4097, 100003)]
    for norm_type in (2.0, 1.0, float("inf"), 3.0):
        dev = [cp.asarray(g) for g in grads_np]
        host = [g.copy() for g in grads_np]
        total_dev = fastopt.clip_grad_norm_(dev, 1.0, norm_type)
        total_cpu = fastopt.clip_grad_norm_(host, 1.0, norm_type, backend="cpu")
        np.testing.assert_allclose(float(total_dev), float(total_cpu), rtol=1e-6)
        for d, h in zip(dev, host):
            np.testing.assert_allclose(d.get(), h, rtol=2e-6, atol=1e-7)


# ---- the capturable step: CUDA graph capture and replay (tests/test_capturable.py checks the arithmetic on a CPU) --

def _capturable_pair(name, sizes, seed, **hyper):
    import fastopt
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads_np = [rng.standard_normal((8, n)).astype(np.float32) for n in sizes]
    cls = getattr(fastopt, SPECS[name].class_name)
    out = []
    for _ in range(2):
        params = [cp.asarray(a) for a in start]
        out.append((params, cls(params, capturable=True, **hyper)))
    return out, grads_np


@pytest.mark.parametrize("name,hyper", [("adam", {"weight_decay": 0.01, "amsgrad": True}),
                                        ("adamw", {}), ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
                                        ("lamb", {"weight_decay": 0.01}), ("lars", {"nesterov": True}),
                                        ("radam", {}), ("adopt", {"nesterov": True}),
                                        ("ademamix", {"alpha_warmup": 3, "beta3_warmup": 4})])
def test_a_captured_step_replayed_equals_eager_capturable_steps_and_follows_lr(name, hyper):
    pairs, grads_np = _capturable_pair(name, (3, 4097, 70001), 21, **hyper)
    (eager_p, eager), (graph_p, graphed) = pairs
    grads = [cp.empty(g.shape[1], cp.float32) for g in grads_np]
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for g, src in zip(grads, grads_np):
            g.set(src[0])
        graphed.step(grads)            # warm-up: plans, tables and device buffers built, hyperparameters written
        eager.step(grads)
        stream.synchronize()
        stream.begin_capture()
        graphed.step(grads)
        graph = stream.end_capture()
        for k in range(1, 8):
            if k == 4:                 # an lr change between replays
                for opt in (graphed, eager):
                    opt.param_groups[0]["lr"] = opt.param_groups[0]["lr"] * 0.5
                graphed.write_hyperparameters()
            for g, src in zip(grads, grads_np):
                g.set(src[k])
            graph.launch(stream)
            eager.step(grads)
        stream.synchronize()
    for a, b in zip(graph_p, eager_p):
        np.testing.assert_array_equal(a.get(), b.get())
    if SPECS[name].counts_steps:   # the replays counted on the device: state_dict reads the count back
        assert graphed.state_dict()["state"][0]["step"] == eager.state_dict()["state"][0]["step"] == 8


def test_device_scalars_are_within_the_stated_tolerance_of_pythons():
    """The advance kernel on the device for 1000 steps (float64 compute type, so no rounding to float32 hides a
    difference) against spec.scalars within tests/test_capturable.py's device_tolerance."""
    from test_capturable import device_tolerance

    from fastopt.backends import cuda as cuda_backend
    for name in ("adam", "sgd"):
        spec = SPECS[name]
        hyper = spec.normalize({**spec.defaults, "momentum": 0.9} if name == "sgd" else dict(spec.defaults))
        p = cp.zeros(4, cp.float64)
        slots = {s.name: ([cp.zeros(4, cp.float64)] if s.active(hyper) else None) for s in spec.slots}
        plan = cuda_backend.BACKEND.prepare(spec, [p], slots, spec.flags(hyper))
        plan.make_capturable(hyper, 0)
        for step in range(1, 1001):
            plan._launch_kernel(plan.advance_kernel, 1, cp.cuda.get_current_stream(),
                                (plan.d_hyper, plan.d_step, plan.d_scalars))
            got = plan.d_scalars.get()[:len(spec.scalar_names)]
            want = np.array(spec.scalars(hyper, step))
            assert np.all(np.abs(got - want) <= device_tolerance(spec, hyper, step)), (name, step, got, want)


def test_functional_capturable_steps_equal_the_class_and_replay_in_a_graph():
    import fastopt
    from fastopt import functional
    rng = np.random.default_rng(22)
    sizes = (5, 4097)
    start = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads_np = [rng.standard_normal((6, n)).astype(np.float32) for n in sizes]
    grads = [cp.empty(n, cp.float32) for n in sizes]
    p_cls = [cp.asarray(a) for a in start]
    p_fun = [cp.asarray(a) for a in start]
    opt = fastopt.Adam(p_cls, lr=0.01, capturable=True)
    state = functional.init_state("adam", p_fun)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for g, src in zip(grads, grads_np):
            g.set(src[0])
        opt.step(grads)
        functional.adam(p_fun, grads, state, step=1, lr=0.01, capturable=True)
        stream.synchronize()
        stream.begin_capture()
        functional.adam(p_fun, grads, state, step=2, lr=0.01, capturable=True)
        graph = stream.end_capture()
        for k in range(1, 6):
            for g, src in zip(grads, grads_np):
                g.set(src[k])
            graph.launch(stream)
            opt.step(grads)
        stream.synchronize()
    for a, b in zip(p_fun, p_cls):
        np.testing.assert_array_equal(a.get(), b.get())


# ---- Adafactor (shaped state; fastopt/backends/cuda_adafactor.py) --------------------------------------------------

ADAFACTOR_SHAPES = [(7,), (), (0,), (1, 1), (2, 5, 6), (3, 1, 4, 9), (0, 3), (300, 257), (2, 40000), (4097,),
                    (1 << 20,), (1024, 1024)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("config", [{}, {"lr": 0.05, "weight_decay": 0.1, "maximize": True},
                                    {"lr": 0.3, "beta2_decay": -0.5, "eps": (1e-3, 0.1), "d": 1.5}])
def test_adafactor_matches_the_reference_bit_for_bit(config, dtype):
    """The host build matches the reference bit for bit (tests/test_adafactor_cuda_host.py); so does the device:
    correctly rounded division and sqrt, no contraction (--fmad=false), and no denormal in these values (-ftz)."""
    spec = SPECS["adafactor"]
    hyper = spec.normalize({**spec.defaults, **config})
    rng = np.random.default_rng(31)
    params_np = [np.array(rng.standard_normal(s), dtype=dtype) for s in ADAFACTOR_SHAPES]
    slots_np = [reference.new_slots(spec, p, hyper) for p in params_np]
    params = [cp.asarray(p) for p in params_np]
    slots = {s.name: [None if row[k] is None else cp.asarray(row[k]) for row in slots_np]
             for k, s in enumerate(spec.slots)}
    plan = BACKEND.prepare(spec, params, slots, spec.flags(hyper))
    grads = [cp.empty(s, dtype) for s in ADAFACTOR_SHAPES]
    for step in range(1, STEPS + 1):
        grads_np = [np.array(rng.standard_normal(s) * 3.0, dtype=dtype) for s in ADAFACTOR_SHAPES]
        for g, src in zip(grads, grads_np):
            g.set(src)
        plan.run(grads, spec.scalars(hyper, step), 256.0 if step % 2 else None, 0.75 if step == 2 else None)
        with np.errstate(all="ignore"):
            reference.run(spec, params_np, grads_np, [[row[k] for row in slots_np] for k in range(3)],
                          spec.scalars(hyper, step), (), 256.0 if step % 2 else None, 0.75 if step == 2 else None)
    cp.cuda.get_current_stream().synchronize()
    for i, (got, want) in enumerate(zip(params, params_np)):
        np.testing.assert_array_equal(got.get(), want, err_msg=f"param {i} {ADAFACTOR_SHAPES[i]}")
    for k, s in enumerate(spec.slots):
        for i, row in enumerate(slots_np):
            if row[k] is not None:
                np.testing.assert_array_equal(slots[s.name][i].get(), row[k], err_msg=f"{s.name} of {i}")


def test_adafactor_class_on_the_gpu_equals_the_numpy_backend_with_clipping_and_amp():
    """fastopt.Adafactor(backend='cuda') against the same optimizer on the numpy backend: clipping's norm comes from
    reduce.cu (its own order), so within the usual float32 tolerance; a step with an inf gradient is skipped."""
    import fastopt
    rng = np.random.default_rng(32)
    shapes = [(64, 33), (33,), (2, 3, 40), (1,)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    mine = [cp.asarray(a) for a in start]
    ref = [a.copy() for a in start]
    opts = [fastopt.Adafactor(mine, lr=0.05, max_grad_norm=1.0, backend="cuda"),
            fastopt.Adafactor(ref, lr=0.05, max_grad_norm=1.0, backend="numpy")]
    for step in range(4):
        grads_np = [(rng.standard_normal(s) * 4).astype(np.float32) for s in shapes]
        if step == 2:
            grads_np[1][3] = np.inf
        opts[0].step([cp.asarray(g * 8) for g in grads_np], grad_scale=8.0)
        opts[1].step([g * 8 for g in grads_np], grad_scale=8.0)
        assert opts[0].last_step_skipped == opts[1].last_step_skipped == (step == 2)
    tol = TOLERANCES[np.dtype(np.float32)]
    for a, b in zip(mine, ref):
        np.testing.assert_allclose(a.get(), b, rtol=tol["rtol"] * 4, atol=tol["atol"] * 4)
    state = opts[0].state_dict()
    again = fastopt.Adafactor([cp.asarray(a) for a in start], lr=0.05, backend="cuda")
    again.load_state_dict(state)
    for k, v in state["state"].items():
        for name, value in v.items():
            np.testing.assert_array_equal(np.asarray(again.state_dict()["state"][k][name]), np.asarray(value))
