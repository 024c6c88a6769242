"""The cuda backend's Adafactor plan (fastopt/backends/cuda_adafactor.py) through the stand-in for CuPy of
tests/test_cuda_host.py, whose launches of kernels/cuda/adafactor.cu run its host build (g++, every thread in turn):
several steps against the NumPy reference bit for bit (float32, float64; vectors, a 0-d scalar, matrices, 3-D and
4-D tensors, empty tensors, a row longer than a reduction chunk), with the gradient transform of AMP (grad_scale) and
clipping (the factor from the plan's own gradient norm), the grads' pointers rewritten only when their addresses
change, nothing allocated per step, and the refusals. No GPU needed; tests/test_cuda_device.py runs it on one.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import test_adafactor_cuda_host as host
import test_cuda_host as fake
from test_cuda_host import fake_cupy  # noqa: F401 - the stand-in for CuPy, a fixture

from fastopt import cuda_build, reference
from fastopt.backends import cuda_adafactor
from fastopt.specs import SPECS

SPEC = SPECS["adafactor"]
CHUNK = reference.REDUCE_CHUNK
SHAPES = [(7,), (), (0,), (1, 1), (2, 5, 6), (3, 1, 4, 9), (0, 3), (40, 37), (2, CHUNK + 5), (1,), (CHUNK + 9,)]
# the stand-in's occupancy (blocks per SM) of each kernel: different sizes of grid, every grid-stride loop looping
OCCUPANCY = {"lanes": 3, "segsum": 1, "colsums": 2, "moments": 1, "rmean": 1, "factors": 1, "apply": 4}
# (overrides, grad_scale, max_grad_norm)
CONFIGS = [({}, None, None), ({"lr": 0.05, "weight_decay": 0.1, "maximize": True}, 512.0, 5.0),
           ({"lr": 0.3, "beta2_decay": -0.5, "eps": (1e-3, 0.1), "d": 1.5}, None, 1e9),
           ({"eps": (1e-30, 1e-3), "d": 100.0}, 4.0, None)]
STEPS = 3


class _AdaKernel:
    """A CuPy RawKernel of adafactor.cu whose launch runs the host build's entry point of the same kernel, after
    checking each argument's type as the device would need it (int64 counts, the scalars' struct as laid out)."""

    def __init__(self, name, launches):
        self.name = name
        base, _, ctype = name.partition("<")
        self.kind = base[len("fo_adafactor_"):]
        self.tag = {"float>": "f32", "double>": "f64", "": None}[ctype]
        self.launches = launches
        self.kernel = type("Function", (), {"ptr": id(self)})()

    def __call__(self, grid, block, args):
        assert block == (cuda_build.BLOCK,) and len(grid) == 1 and grid[0] >= 1
        self.launches.append((self.kind, grid, block))
        fake._LOG.append(("launch", self.kind, grid[0], fake._FakeStream.current().ptr))
        lib = host._library()
        host._declare(lib)
        out, keep = [], []
        for a in args:
            if isinstance(a, fake._FakeArray):
                out.append(a.data.ptr)
            elif isinstance(a, np.void):
                assert a.dtype == cuda_adafactor.SCALARS and a.dtype.itemsize == ctypes.sizeof(host.Scalars)
                keep.append(host.Scalars.from_buffer_copy(a.tobytes()))
                out.append(ctypes.byref(keep[-1]))
            else:
                assert type(a) is np.int64, f"{self.name}: {type(a).__name__} where the kernel takes long long"
                out.append(int(a))
        name = "fo_host_adafactor_segsum" if self.tag is None else f"fo_host_adafactor_{self.kind}_{self.tag}"
        # 32 threads a block: the kernels' results do not depend on the block size (no shared memory or warp ops)
        assert getattr(lib, name)(*out, grid[0], 32) == 0


@pytest.fixture
def stand_in(fake_cupy, monkeypatch):  # noqa: F811 - the fixture above
    """The stand-in, compiling adafactor.cu into _AdaKernels, counting every allocation."""
    original = fake_cupy.RawModule

    class RawModule:
        def __init__(self, code, options, name_expressions):
            self.ada = code.startswith("// fastopt kernel family adafactor,")
            self.inner = None if self.ada else original(code, options, name_expressions)
            assert "--fmad=false" in options
            assert self.ada is False or "fo_adafactor_segsum" in name_expressions
            self.names = set(name_expressions)

        def get_function(self, name):
            if not self.ada:
                return self.inner.get_function(name)
            assert name in self.names
            kernel = _AdaKernel(name, fake_cupy.launches)
            fake_cupy.kernels[kernel.kernel.ptr] = kernel
            return kernel

    for kind, blocks in OCCUPANCY.items():
        monkeypatch.setitem(fake._OCCUPANCY, kind, blocks)
    fake_cupy.RawModule = RawModule
    fake_cupy.allocations = 0
    empty, zeros = fake_cupy.empty, fake_cupy.zeros

    def counted(make):
        def alloc(n, dtype):
            fake_cupy.allocations += 1
            return make(n, dtype)
        return alloc

    fake_cupy.empty, fake_cupy.zeros = counted(empty), counted(zeros)
    if cuda_build.find_cxx() is None:
        pytest.skip("no C++ compiler (g++) for the host build")
    return fake_cupy


def _problem(dtype, hyper, seed, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    params = [np.array(rng.standard_normal(s), dtype=dtype) for s in shapes]
    slots = [reference.new_slots(SPEC, p, hyper) for p in params]
    grads = [[np.array(rng.standard_normal(s) * 3.0, dtype=dtype) for s in shapes] for _ in range(STEPS)]
    return params, slots, grads


def _device(params, slots):
    """The stand-in's arrays (copies) and the slots dict prepare takes: per slot, per param, an array or None."""
    d_params = [fake._FakeArray(p.copy()) for p in params]
    d_slots = {s.name: [None if row[k] is None else fake._FakeArray(row[k].copy()) for row in slots]
               for k, s in enumerate(SPEC.slots)}
    return d_params, d_slots


def _prepare(params, slots, hyper):
    from fastopt.backends.cuda import BACKEND
    d_params, d_slots = _device(params, slots)
    return BACKEND.prepare(SPEC, d_params, d_slots, SPEC.flags(hyper)), d_params, d_slots


def _reference_step(params, slots, grads, hyper, step, grad_scale, grad_factor):
    with np.errstate(all="ignore"):
        reference.run(SPEC, params, grads, [[row[k] for row in slots] for k in range(len(SPEC.slots))],
                      SPEC.scalars(hyper, step), (), grad_scale, grad_factor)


def _assert_same(d_params, d_slots, params, slots, what):
    for i, (got, want) in enumerate(zip(d_params, params)):
        np.testing.assert_array_equal(got.a, want, err_msg=f"{what}: param {i} {want.shape}")
    for k, s in enumerate(SPEC.slots):
        for i, row in enumerate(slots):
            if row[k] is None:
                assert d_slots[s.name][i] is None
            else:
                np.testing.assert_array_equal(d_slots[s.name][i].a, row[k], err_msg=f"{what}: {s.name} of {i}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_plan_matches_the_reference_bit_for_bit(stand_in, config, dtype):
    overrides, grad_scale, max_norm = CONFIGS[config]
    hyper = SPEC.normalize({**SPEC.defaults, **overrides})
    params, slots, grads = _problem(dtype, hyper, seed=config)
    plan, d_params, d_slots = _prepare(params, slots, hyper)
    d_grads = [fake._FakeArray(np.zeros(s, dtype)) for s in SHAPES]
    for step in range(1, STEPS + 1):
        scaled = [np.array(g * dtype(grad_scale), dtype=dtype) if grad_scale else g for g in grads[step - 1]]
        for d, g in zip(d_grads, scaled):
            d.a[...] = g
        grad_factor = None
        if max_norm is not None:   # clipping as the optimizer does it: the plan's own norm of the unscaled grads
            norms = plan.reduce_grads(d_grads, "sumsq", 2.0, grad_scale)
            want = [float(np.sum(np.square(g.astype(np.float64) / (grad_scale or 1.0)))) for g in scaled]
            np.testing.assert_allclose(norms, want, rtol=1e-12)   # reduce.cu's order: within a few ulps
            total = float(np.sqrt(sum(norms)))
            grad_factor = min(1.0, max_norm / (total + 1e-6))
        plan.run(d_grads, SPEC.scalars(hyper, step), grad_scale, grad_factor)
        _reference_step(params, slots, scaled, hyper, step, grad_scale, grad_factor)
        _assert_same(d_params, d_slots, params, slots, f"step {step}")
    kinds = [k for k, _, _ in stand_in.launches if k not in ("partials", "combine")]
    assert kinds == ["lanes", "segsum", "colsums", "moments", "rmean", "lanes", "segsum", "factors", "apply"] * STEPS
    assert plan.d_grad_ptrs.sets == 1                      # the same grads every step: their pointers written once


@pytest.mark.parametrize("shapes", [[(5,), (1,), ()], [(3, 4), (2, 2, 2)], [(0,), (0, 2)]],
                         ids=["vectors", "matrices", "empty"])
def test_groups_of_one_kind_launch_only_their_phases(stand_in, shapes):
    hyper = SPEC.normalize(dict(SPEC.defaults, weight_decay=0.1))
    params, slots, grads = _problem(np.float32, hyper, seed=3, shapes=shapes)
    plan, d_params, d_slots = _prepare(params, slots, hyper)
    for step in range(1, STEPS + 1):
        plan.run([fake._FakeArray(g) for g in grads[step - 1]], SPEC.scalars(hyper, step))
        _reference_step(params, slots, grads[step - 1], hyper, step, None, None)
    _assert_same(d_params, d_slots, params, slots, " ".join(map(str, shapes)))
    kinds = [k for k, _, _ in stand_in.launches]
    want = {"vectors": ["lanes", "segsum", "lanes", "segsum", "factors", "apply"],
            "matrices": ["lanes", "segsum", "colsums", "moments", "rmean", "lanes", "segsum", "factors", "apply"],
            "empty": []}
    key = "empty" if not sum(p.size for p in params) else "vectors" if len(shapes[0]) < 2 else "matrices"
    assert kinds == want[key] * (STEPS if want[key] else 0)


def test_grads_pointers_rewritten_only_when_their_addresses_change(stand_in):
    hyper = SPEC.normalize(SPEC.defaults)
    params, slots, grads = _problem(np.float64, hyper, seed=5)
    plan, d_params, d_slots = _prepare(params, slots, hyper)
    first = [fake._FakeArray(g.copy()) for g in grads[0]]
    plan.run(first, SPEC.scalars(hyper, 1))
    _reference_step(params, slots, grads[0], hyper, 1, None, None)
    assert plan.d_grad_ptrs.sets == 1
    # new objects over the same memory: looked at, nothing written
    for d, g in zip(first, grads[1]):
        d.a[...] = g
    plan.run([fake._FakeArray(d.a) for d in first], SPEC.scalars(hyper, 2))
    _reference_step(params, slots, grads[1], hyper, 2, None, None)
    assert plan.d_grad_ptrs.sets == 1
    # other memory: rewritten, and the step reads the new grads (the old buffers hold stale values)
    for d in first:
        d.a[...] = 1e6
    plan.run([fake._FakeArray(g.copy()) for g in grads[2]], SPEC.scalars(hyper, 3))
    _reference_step(params, slots, grads[2], hyper, 3, None, None)
    assert plan.d_grad_ptrs.sets == 2
    _assert_same(d_params, d_slots, params, slots, "after three steps")


def test_scratch_is_allocated_at_prepare_and_nothing_per_step(stand_in):
    hyper = SPEC.normalize(SPEC.defaults)
    params, slots, grads = _problem(np.float32, hyper, seed=6)
    plan, _, _ = _prepare(params, slots, hyper)
    assert stand_in.allocations > 0
    d_grads = [fake._FakeArray(g) for g in grads[0]]
    plan.reduce_grads(d_grads, "sumsq")        # its scratch (reduce.cu's) on its first call, as every cuda plan
    before = stand_in.allocations
    for step in range(1, 6):
        plan.reduce_grads(d_grads, "nonfinite")
        plan.run(d_grads, SPEC.scalars(hyper, step), 2.0, 0.5)
    assert stand_in.allocations == before


def test_found_inf_counts_the_non_finite_gradients(stand_in):
    """AMP's skip decision reads this count (fastopt.optim): every non-finite value of every tensor, unscaled."""
    hyper = SPEC.normalize(SPEC.defaults)
    params, slots, grads = _problem(np.float32, hyper, seed=8)
    plan, _, _ = _prepare(params, slots, hyper)
    g = [a.copy() for a in grads[0]]
    g[0][3], g[7][5, 2], g[-1][-1] = np.inf, np.nan, -np.inf
    counts = plan.reduce_grads([fake._FakeArray(a) for a in g], "nonfinite", 2.0, 8.0)
    assert counts == [float(np.count_nonzero(~np.isfinite(a))) for a in g]
    assert sum(counts) == 3


def test_half_params_are_refused_naming_the_dtype(stand_in):
    from fastopt.backends.cuda import BACKEND
    p = fake._FakeArray(np.zeros(4, np.float16))
    with pytest.raises(TypeError, match="float16"):
        BACKEND.prepare(SPEC, [p], {"row_var": [None], "col_var": [None],
                                    "variance": [fake._FakeArray(np.zeros(4, np.float32))]}, ())
    assert stand_in.launches == []


def test_wrong_grads_are_refused_and_change_nothing(stand_in):
    hyper = SPEC.normalize(SPEC.defaults)
    params, slots, grads = _problem(np.float32, hyper, seed=9)
    plan, d_params, d_slots = _prepare(params, slots, hyper)
    with pytest.raises(ValueError, match="grads"):
        plan.run([fake._FakeArray(g) for g in grads[0][:-1]], SPEC.scalars(hyper, 1))
    other = [fake._FakeArray(g, device=1) for g in grads[0]]
    with pytest.raises(ValueError, match="device"):
        plan.run(other, SPEC.scalars(hyper, 1))
    assert stand_in.launches == [] and plan.d_grad_ptrs.sets == 0
    _assert_same(d_params, d_slots, params, slots, "after refused steps")


# ---- through fastopt.Adafactor(backend="cuda"): AMP's skip and the state_dict ----------------------------------------

class _CupyLike(fake._FakeArray):
    """A stand-in array the cuda backend owns (its type's module is CuPy's, it is the stand-in's ndarray)."""

    __module__ = "cupy.stand_in"

    @property
    def ndim(self):
        return self.a.ndim

    @property
    def nbytes(self):
        return self.a.nbytes

    def __getitem__(self, key):
        return _CupyLike(self.a[key], self.device.id)

    def reshape(self, shape):
        out = self.a.reshape(shape)
        assert np.shares_memory(out, self.a) or not out.size   # a view, as CuPy's reshape of a contiguous array
        return _CupyLike(out, self.device.id)


@pytest.fixture
def arrays(stand_in, monkeypatch):
    from fastopt.backends.cuda import BACKEND
    monkeypatch.setattr(BACKEND, "_checked", True)   # available: the stand-in is the device
    monkeypatch.setattr(BACKEND, "_reason", None)
    stand_in.full = lambda shape, value, dtype: _CupyLike(np.full(shape, value, dtype))
    stand_in.asnumpy = lambda a: a.a.copy()
    return stand_in


def test_the_optimizer_steps_skips_on_found_inf_and_round_trips_its_state(arrays):
    import fastopt
    rng = np.random.default_rng(12)
    shapes = [(6, 9), (9,), (2, 3, 4), (1,), (0, 4)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    mine = [_CupyLike(a.copy()) for a in start]
    ref = [a.copy() for a in start]
    opt = fastopt.Adafactor(mine, lr=0.05, weight_decay=0.1, backend="cuda")
    want = fastopt.Adafactor(ref, lr=0.05, weight_decay=0.1, backend="numpy")
    assert opt.backend.name == "cuda"
    for step in range(5):
        g = [(rng.standard_normal(s) * 8).astype(np.float32) for s in shapes]
        if step == 2:
            g[2][1, 2, 3] = np.nan
        opt.step([_CupyLike(a.copy()) for a in g], grad_scale=8.0)
        want.step([a.copy() for a in g], grad_scale=8.0)
        assert opt.last_step_skipped == want.last_step_skipped == (step == 2)
        for a, b in zip(mine, ref):
            np.testing.assert_array_equal(a.a, b, err_msg=f"step {step}")
    ours, theirs = opt.state_dict(), want.state_dict()
    assert ours["state"].keys() == theirs["state"].keys()
    for k, entry in theirs["state"].items():
        assert ours["state"][k].keys() == entry.keys()
        for name, value in entry.items():
            np.testing.assert_array_equal(np.asarray(ours["state"][k][name]), np.asarray(value), err_msg=name)
    # into a new optimizer on new arrays: the next step continues both trajectories alike
    back = [_CupyLike(a.a.copy()) for a in mine]
    again = fastopt.Adafactor(back, lr=0.05, weight_decay=0.1, backend="cuda")
    again.load_state_dict(ours)
    g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    again.step([_CupyLike(a.copy()) for a in g])
    want.step([a.copy() for a in g])
    for a, b in zip(back, ref):
        np.testing.assert_array_equal(a.a, b)
    kinds = [k for k, _, _ in arrays.launches]
    assert kinds.count("apply") == 5 and kinds.count("partials") == 5   # AdafactorPlan's steps (one skipped), and
    # AMP's count of non-finite gradients (reduce.cu) before each step that had a grad_scale


def test_smoke_runs_through_the_stand_in_and_catches_untouched_elements(arrays):
    """`python -m fastopt smoke`'s Adafactor part (cuda_adafactor.smoke): passes on the real plan; with no step
    taken every tensor is reported (so a kernel that skipped elements would be)."""
    runs, failures = cuda_adafactor.smoke(["float16", "float32", "float64"], [1, 3, 40], 2, np.random.default_rng(0))
    assert runs == 4 and failures == []
    runs, failures = cuda_adafactor.smoke(["float32"], [1, 3], 0, np.random.default_rng(0))
    assert runs == 2 and len(failures) == 2 * (2 + 4)   # two vectors, a 0-d scalar, two matrices, a 3-D tensor


def test_the_optimizer_refuses_half_params_naming_the_dtype_and_changes_nothing(arrays):
    import fastopt
    p = _CupyLike(np.full((3, 4), 0.5, np.float16))
    opt = fastopt.Adafactor([p], backend="cuda")
    for _ in range(2):   # the same answer again: nothing cached from the failed step
        with pytest.raises(TypeError, match="float16"):
            opt.step([_CupyLike(np.ones((3, 4), np.float16))])
    assert np.all(p.a == np.float16(0.5)) and arrays.launches == []
    assert opt.state_dict()["state"] == {}


needs_nvrtc = pytest.mark.skipif(cuda_build.nvrtc_version() is None, reason="CuPy's NVRTC bindings cannot load NVRTC")


@needs_nvrtc
def test_the_plans_source_compiles_through_nvrtc_as_cupy_would(monkeypatch):
    """What the plan's RawModule compiles, with CuPy's options and these name expressions, for sm_80 and sm_90 (the
    PTX through ptxas without spills where ptxas is new enough); a scalars' layout other than the struct's fails."""
    import io
    out = io.StringIO()
    assert cuda_adafactor.check_nvrtc(("sm_80", "sm_90"), out) == 0, out.getvalue()
    assert out.getvalue().count("13 kernels") == 2
    monkeypatch.setattr(cuda_adafactor, "SCALARS", np.dtype(cuda_adafactor.SCALARS.descr[:5] + [("x", "i4")]))
    with pytest.raises(RuntimeError, match="fo_ada_scalars differs"):
        cuda_adafactor.nvrtc_compile("sm_90")


def test_torch_arrays_launch_on_torchs_stream_and_new_grads_wait_for_the_last_step(stand_in, monkeypatch):
    """Every launch on torch's current stream for torch tensors (CuPy's otherwise, as every cuda plan); grads at new
    addresses on another stream: their pointers are written only after an event of the last step's stream."""
    from fastopt.backends import cuda as cuda_backend
    from fastopt.backends.cuda import BACKEND
    torch = fake._FakeTorch()
    monkeypatch.setattr(cuda_backend, "_torch", lambda: torch)
    hyper = SPEC.normalize(SPEC.defaults)
    params, slots, grads = _problem(np.float32, hyper, seed=10, shapes=[(4, 5), (6,)])
    views = [BACKEND.as_array(fake._TorchLikeTensor(p.copy(), requires_grad=True)) for p in params]
    _, d_slots = _device(params, slots)
    plan = BACKEND.prepare(SPEC, views, d_slots, ())
    fake._LOG.clear()
    plan.run([BACKEND.as_array(fake._TorchLikeTensor(g.copy())) for g in grads[0]], SPEC.scalars(hyper, 1))
    assert fake._LOG[0] == ("set", 0xA000)
    assert {e[3] for e in fake._LOG[1:]} == {0xA000} and len(fake._LOG) == 1 + 9
    torch.stream_handle = 0xB000
    fake._LOG.clear()
    plan.run([BACKEND.as_array(fake._TorchLikeTensor(g.copy())) for g in grads[1]], SPEC.scalars(hyper, 2))
    assert fake._LOG[:3] == [("record", 0xA000), ("wait", 0xB000, 0xA000), ("set", 0xB000)]
    assert {e[3] for e in fake._LOG[3:]} == {0xB000}
    with fake._FakeStream(0x51):   # CuPy's current stream is not torch's: the launches stay on torch's
        plan.run([BACKEND.as_array(fake._TorchLikeTensor(g.copy())) for g in grads[2]], SPEC.scalars(hyper, 3))
    assert fake._LOG[-1][3] == 0xB000
    for t, g in enumerate(grads):
        _reference_step(params, slots, g, hyper, t + 1, None, None)
    for got, want in zip(views, params):
        np.testing.assert_array_equal(got.a, want)


def test_the_plans_tables_are_those_the_host_build_test_checks():
    """build_tables (vectorised) gives exactly the tables of tests/test_adafactor_cuda_host.py's _Tables."""
    hyper = SPEC.normalize(SPEC.defaults)
    params = [np.zeros(s, np.float32) for s in SHAPES]
    rows = [reference.new_slots(SPEC, p, hyper) for p in params]
    want = host._Tables(params, {s.name: [row[k] for row in rows] for k, s in enumerate(SPEC.slots)})
    got = cuda_adafactor.build_tables(SHAPES, 1000)
    np.testing.assert_array_equal(got["tensors"], want.tensors)
    for mine, theirs in ((got["pass1"], want.pass1), (got["pass2"], want.pass2)):
        np.testing.assert_array_equal(mine[0], theirs[0])
        np.testing.assert_array_equal(mine[1], theirs[1])
    for name in ("cblocks", "ftensors", "chunks"):
        np.testing.assert_array_equal(got[name], getattr(want, name), err_msg=name)
    assert got["rows"] == want.rows and got["colpart"] == want.colpart.size


@pytest.mark.skipif(cuda_build.find_nvcc() is None, reason="no nvcc")
def test_check_kernels_compiles_every_kernel_without_spills():
    """`python -m fastopt check-kernels`' Adafactor part: the plan's source through nvcc, one line per kernel."""
    import io
    out = io.StringIO()
    assert cuda_adafactor.check_kernels(("sm_90",), out) == 0, out.getvalue()
    lines = [line for line in out.getvalue().splitlines() if line.startswith("sm_90")]
    assert sorted(line.split()[2] for line in lines) == sorted(cuda_adafactor.name_expressions())
