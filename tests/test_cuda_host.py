"""The CUDA kernels' arithmetic on a CPU: each family's .cu compiled for the host with g++ through
kernels/cuda/host_shim.h (fastopt.cuda_build.build_host_library), run for 10 steps through both entry points (flat and
table) and compared with fastopt.reference.

What this checks without a GPU: the element operations (operation for operation against the reference), the
traversals (64-bit grid-stride loops, the vector body with its scalar head and tail, chunks of the table), the
bfloat16/float16 conversions, and that inactive slots and the memory around every tensor are never touched. What it
cannot check: anything the host emulation does not model (see host_shim.h), -ftz (the host keeps denormals), and
CuPy's compile and launch (tests/test_cuda_device.py does that on a GPU).

Layouts: every array sits in a NaN-poisoned buffer aligned to 64 bytes, at an element offset chosen per case:
"aligned" (all arrays at offset 0: vector body only), "shifted" (all at the same odd offset: scalar head, vector body,
scalar tail), "mixed" (different offsets per array: the all-scalar path). The gradients are bounded away from zero so
that every element of every parameter must change: an element the kernel skipped cannot pass.
"""

from __future__ import annotations

import itertools
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

try:
    import fastopt  # noqa: F401
except ImportError:  # a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastopt import codegen, cuda_build, reference
from fastopt.records import RECORDS
from fastopt.specs import SPECS, boolean

try:
    from tolerances import TOLERANCES
except ImportError:  # pragma: no cover - tests/tolerances.py is the one place tolerances live
    TOLERANCES = {np.dtype(np.float64): dict(rtol=1e-12, atol=1e-14),
                  np.dtype(np.float32): dict(rtol=2e-6, atol=1e-7)}

if cuda_build.find_cxx() is None:
    pytest.skip("no C++ compiler (g++) to build the CUDA kernels for the host", allow_module_level=True)

STEPS = 10
SIZES = (0, 1, 3, 4097, 100003)
LAYOUTS = ("aligned", "shifted", "mixed")


# ---- configurations: every flag combination of every spec, with and without weight decay ---------------------------



def _configs():
    out = []
    for spec in SPECS.values():
        if spec.kernel not in cuda_build.FAMILIES:   # shaped slots (Adafactor): no CUDA kernels, the backend refuses
            continue
        axes = []
        for h in spec.hypers:
            if h.check is boolean:
                axes.append((h.name, (False, True)))
            elif h.name == "momentum":
                axes.append((h.name, (0.0, 0.9)))
            elif h.name == "weight_decay":
                axes.append((h.name, (0.0, 0.05)))
        for values in itertools.product(*(v for _, v in axes)):
            chosen = dict(zip((n for n, _ in axes), values))
            for extra in (RECORDS[spec.name].cuda_grid, {}):
                hyper = {**spec.defaults, **extra, **chosen}
                try:
                    spec.validate(hyper)
                except ValueError:
                    continue
                break
            else:
                continue
            label = "-".join(f"{k}={v}" for k, v in chosen.items()) or "defaults"
            out.append(pytest.param(spec.name, hyper, id=f"{spec.name}-{label}"))
    return out


CONFIGS = _configs()
# Families with per-tensor reductions (kernel contract v2) have no flat entry: the per-tensor scalars need the chunk's
# tensor. Their table entry runs the reductions first (HostKernels.table), as the cuda backend's plan does.
FLAT_CONFIGS = [c for c in CONFIGS if not SPECS[c.values[0]].reductions]


# ---- storage: poisoned, aligned buffers ---------------------------------------------------------------------------

POISON16 = np.uint16(0x7E5A)   # a quiet NaN in binary16 and in bfloat16 bits


def _poison(dtype):
    return POISON16 if dtype == np.uint16 else dtype.type(np.nan)


class Arena:
    """Arrays placed at chosen element offsets inside NaN-poisoned, 64-byte aligned buffers."""

    GUARD = 24

    def __init__(self):
        self.buffers = []

    def place(self, values: np.ndarray, offset: int) -> np.ndarray:
        dtype = values.dtype
        total = offset + values.size + self.GUARD
        raw = np.empty(total * dtype.itemsize + 64, dtype=np.uint8)
        start = (-raw.ctypes.data) % 64
        buf = raw[start:start + total * dtype.itemsize].view(dtype)
        buf[...] = _poison(dtype)
        view = buf[offset:offset + values.size]
        view[...] = values
        self.buffers.append((buf, offset, values.size))
        return view

    def check_guards(self):
        for buf, offset, n in self.buffers:
            bits = buf.view(np.uint16 if buf.dtype.itemsize == 2 else
                            np.uint32 if buf.dtype.itemsize == 4 else np.uint64)
            poison = np.array([_poison(buf.dtype)], dtype=buf.dtype).view(bits.dtype)[0]
            outside = np.concatenate([bits[:offset], bits[offset + n:]])
            assert np.all(outside == poison), "a kernel wrote outside its tensor"


def _offsets(layout, dtype, nroles):
    """Element offset of each role (param, grad, slots...) for a layout."""
    v = cuda_build.vector_width(dtype)
    if layout == "aligned":
        return [0] * nroles
    if layout == "shifted":
        return [v - 1] * nroles if v > 1 else [1] * nroles
    return [(r % v) for r in range(nroles)] if v > 1 else [r % 2 for r in range(nroles)]


# ---- the problem: params, grads per step, slots ---------------------------------------------------------------------

def _grads(rng, n, dtype, steps):
    """Bounded away from zero (|g| in [0.5, 1.5)), each element's sign fixed over the steps, so every parameter element
    moves the same way every step and must end up changed."""
    mags = rng.uniform(0.5, 1.5, size=(steps, n))
    signs = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    return (mags * signs).astype(dtype)


class Problem:
    def __init__(self, name, hyper, sizes, dtype, seed=0):
        self.spec = SPECS[name]
        self.hyper = hyper
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.params = [rng.standard_normal(n).astype(dtype) for n in sizes]
        self.grads = [_grads(rng, n, dtype, STEPS) for n in sizes]
        self.slots = []     # per slot: list per tensor (initial values), or None when inactive
        for slot in self.spec.slots:
            if slot.active(hyper):
                self.slots.append([np.full(n, slot.init(hyper), dtype=dtype) for n in sizes])
            else:
                self.slots.append(None)
        self.flags = self.spec.flags(hyper)

    def reference(self):
        """The reference trajectory: final params and active slots per tensor."""
        fn = reference.function(self.spec.kernel)
        params = [p.copy() for p in self.params]
        slots = [None if s is None else [a.copy() for a in s] for s in self.slots]
        for t in range(len(params)):
            for step in range(1, STEPS + 1):
                ss = [np.full(params[t].size, np.nan, self.dtype) if s is None else s[t] for s in slots]
                fn(params[t], self.grads[t][step - 1], *ss, *self.spec.scalars(self.hyper, step), *self.flags)
        return params, slots


def _compare(got, want, dtype, what):
    tol = TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(got, want, err_msg=what, **tol)


# ---- float32 / float64: flat and table entry points ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name,hyper", FLAT_CONFIGS)
def test_flat_matches_reference(name, hyper, dtype):
    prob = Problem(name, hyper, SIZES, dtype)
    want_p, want_s = prob.reference()
    kernels = cuda_build.HostKernels(prob.spec.kernel)
    nslots = len(prob.spec.slots)
    for t, n in enumerate(SIZES):
        for layout in LAYOUTS:
            arena = Arena()
            offs = _offsets(layout, dtype.__name__, 2 + nslots)
            p = arena.place(prob.params[t], offs[0])
            grad_buf = arena.place(np.zeros(n, dtype), offs[1])
            slots = [arena.place(s[t] if s is not None else np.full(n, np.nan, dtype), offs[2 + k])
                     for k, s in enumerate(prob.slots)]
            before = p.copy()
            for step in range(1, STEPS + 1):
                grad_buf[...] = prob.grads[t][step - 1]
                kernels.flat(p, grad_buf, slots, prob.spec.scalars(hyper, step), prob.flags)
            where = f"{name} {dtype.__name__} n={n} {layout}"
            arena.check_guards()
            assert np.all(p != before), f"{where}: some parameter elements were never written"
            _compare(p, want_p[t], dtype, f"{where}: param")
            for k, s in enumerate(prob.slots):
                if s is None:
                    assert np.all(np.isnan(slots[k])), f"{where}: inactive slot {prob.spec.slots[k].name} touched"
                else:
                    _compare(slots[k], want_s[k][t], dtype, f"{where}: {prob.spec.slots[k].name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name,hyper", CONFIGS)
def test_table_matches_reference(name, hyper, dtype):
    # Every size twice, each copy in a different layout, all in one table; chunks of 1000 elements (not a multiple of
    # the vector width, so chunks start misaligned too) walked by 5 blocks of 32 threads (grid-stride over chunks).
    sizes = SIZES + SIZES[::-1]
    prob = Problem(name, hyper, sizes, dtype, seed=1)
    want_p, want_s = prob.reference()
    kernels = cuda_build.HostKernels(prob.spec.kernel)
    nslots = len(prob.spec.slots)
    arena = Arena()
    params, grads, slots = [], [], [[] if s is not None else None for s in prob.slots]
    for t, n in enumerate(sizes):
        offs = _offsets(LAYOUTS[t % len(LAYOUTS)], dtype.__name__, 2 + nslots)
        params.append(arena.place(prob.params[t], offs[0]))
        grads.append(arena.place(np.zeros(n, dtype), offs[1]))
        for k, s in enumerate(prob.slots):
            if s is not None:
                slots[k].append(arena.place(s[t], offs[2 + k]))
    before = [p.copy() for p in params]
    for step in range(1, STEPS + 1):
        for t in range(len(sizes)):
            grads[t][...] = prob.grads[t][step - 1]
        kernels.table(params, grads, slots, prob.spec.scalars(hyper, step), prob.flags, chunk_elems=1000, grid=5,
                      block=32)
    arena.check_guards()
    for t, n in enumerate(sizes):
        where = f"{name} {dtype.__name__} tensor {t} n={n}"
        assert np.all(params[t] != before[t]), f"{where}: some parameter elements were never written"
        _compare(params[t], want_p[t], dtype, f"{where}: param")
        for k, s in enumerate(prob.slots):
            if s is not None:
                _compare(slots[k][t], want_s[k][t], dtype, f"{where}: {prob.spec.slots[k].name}")


@pytest.mark.parametrize("name,hyper", [FLAT_CONFIGS[i] for i in range(0, len(FLAT_CONFIGS), 3)])
def test_host_build_is_bit_exact(name, hyper):
    """Same operations in the same order, no contraction (-ffp-contract=off): the host build reproduces the reference
    bit for bit. (The device differs from it only by -ftz: tolerances.py.)"""
    for dtype in (np.float32, np.float64):
        prob = Problem(name, hyper, (4097,), dtype, seed=2)
        want_p, want_s = prob.reference()
        kernels = cuda_build.HostKernels(prob.spec.kernel)
        p = prob.params[0].copy()
        slots = [np.full(4097, np.nan, dtype) if s is None else s[0].copy() for s in prob.slots]
        for step in range(1, STEPS + 1):
            kernels.flat(p, prob.grads[0][step - 1], slots, prob.spec.scalars(hyper, step), prob.flags)
        np.testing.assert_array_equal(p, want_p[0])
        for k, s in enumerate(prob.slots):
            if s is not None:
                np.testing.assert_array_equal(slots[k], want_s[k][0])


# ---- float16 and bfloat16 parameters: compute in float32, round the parameter once per step -------------------------

def _bf16_round(x32: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (NaN kept NaN), as the kernels do."""
    u = x32.astype(np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def _bf16_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


HALF = {
    "float16": (lambda x: x.astype(np.float16), lambda h: h.astype(np.float32)),
    "bfloat16": (_bf16_round, _bf16_to_f32),
}


@pytest.mark.parametrize("half", list(HALF))
@pytest.mark.parametrize("name,hyper", CONFIGS)
def test_half_params_match_float32_reference_rounded_each_step(name, hyper, half):
    to_half, to_f32 = HALF[half]
    sizes = (1, 3, 4097, 5003)
    prob = Problem(name, hyper, sizes, np.float32, seed=3)
    spec = prob.spec
    fn = reference.function(spec.kernel)
    kernels = cuda_build.HostKernels(spec.kernel)
    nslots = len(spec.slots)
    arena = Arena()
    for mode in ("flat", "table"):
        params, grads, slots = [], [], [[] if s is not None else None for s in prob.slots]
        want_p = []
        want_s = [None if s is None else [] for s in prob.slots]
        for t, n in enumerate(sizes):
            offs = _offsets(LAYOUTS[t % len(LAYOUTS)], half, 2 + nslots)
            params.append(arena.place(to_half(prob.params[t]), offs[0]))
            grads.append(arena.place(to_half(np.zeros(n, np.float32)), offs[1]))
            want_p.append(to_f32(params[t]).copy())
            for k, s in enumerate(prob.slots):
                if s is not None:
                    slots[k].append(arena.place(s[t].copy(), offs[2 + k]))
                    want_s[k].append(s[t].copy())
        if mode == "flat" and spec.reductions:
            continue   # no flat entry (see FLAT_CONFIGS)
        for step in range(1, STEPS + 1):
            scalars = spec.scalars(hyper, step)
            for t in range(len(sizes)):
                grads[t][...] = to_half(prob.grads[t][step - 1])
                g32 = to_f32(grads[t]).copy()
                ss = [np.full(sizes[t], np.nan, np.float32) if s is None else s[t] for s in want_s]
                fn(want_p[t], g32, *ss, *scalars, *prob.flags)
                want_p[t][...] = to_f32(to_half(want_p[t]))
            if mode == "flat":
                for t in range(len(sizes)):
                    kernels.flat(params[t], grads[t], [None if s is None else s[t] for s in slots], scalars,
                                 prob.flags)
            else:
                kernels.table(params, grads, slots, scalars, prob.flags, chunk_elems=1024, grid=3, block=32)
        arena.check_guards()
        for t in range(len(sizes)):
            where = f"{name} {half} {mode} tensor {t}"
            _compare(to_f32(params[t]), want_p[t], np.float32, f"{where}: param")
            for k, s in enumerate(want_s):
                if s is not None:
                    _compare(slots[k][t], s[t], np.float32, f"{where}: {spec.slots[k].name}")


# ---- the table itself ----------------------------------------------------------------------------------------------

def test_chunk_table_covers_every_element_once():
    sizes = [0, 1, 1000, 1001, 0, 2 ** 33 + 5]
    chunk = 1000
    codes = cuda_build.build_chunk_table(sizes, chunk)
    t = codes >> 32
    idx = codes & 0xFFFFFFFF
    for i, n in enumerate(sizes):
        mine = np.sort(idx[t == i])
        assert np.array_equal(mine, np.arange(-(-n // chunk)))
    assert len(codes) == sum(-(-n // chunk) for n in sizes)


def test_chunk_elems_choice():
    assert cuda_build.choose_chunk_elems(10 ** 9, 1056) == 65536
    small = cuda_build.choose_chunk_elems(10 ** 6, 1056)
    assert small % (cuda_build.BLOCK * 4) == 0 and 10 ** 6 // small >= 500
    assert cuda_build.choose_chunk_elems(0, 1056) == cuda_build.BLOCK * 4


# ---- the cuda backend's plan, driven through a stand-in for CuPy whose kernels are the host build ------------------
# Checks what fastopt/backends/cuda.py does on the host side without a GPU: flat-layout detection, the chunk and
# pointer tables, the argument lists of both kernels (a wrong order or type gives wrong numbers here), one launch per
# run, the grad table rewritten only when the grads' addresses change, grid sizes from the occupancy query, the
# stream of every launch and copy, and torch-like tensors viewed zero-copy.

_LOG = []   # ("launch", kind, grid, stream), ("set", stream), ("record", stream), ("wait", stream, recorded on)


class _FakeMem:
    def __init__(self, ptr, owner):
        self.ptr = ptr
        self._owner = owner          # as CuPy's UnownedMemory keeps the exporting object


class _FakeArray:
    def __init__(self, a, device=0, owner=None):
        self.a = a
        self.data = type("MemoryPointer", (), {"ptr": a.ctypes.data, "mem": _FakeMem(a.ctypes.data, owner)})()
        self.device = _FakeDevice(device)
        self.size, self.dtype, self.shape = a.size, a.dtype, a.shape
        self.sets = 0

    def __getitem__(self, key):
        return _FakeArray(self.a[key], self.device.id)

    @property
    def flags(self):
        return self.a.flags

    def get(self, stream=None):
        return self.a.copy()

    def set(self, arr, stream=None):
        self.sets += 1
        _LOG.append(("set", None if stream is None else stream.ptr))
        self.a[...] = arr


class _FakeDevice:
    def __init__(self, id=0):
        self.id = id
        self.attributes = {"MultiProcessorCount": 2}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _FakeStream:
    stack: typing.ClassVar[list] = []   # the current-stream stack of the stand-in (reset by the fixture)

    def __init__(self, ptr):
        self.ptr = ptr

    def __enter__(self):
        _FakeStream.stack.append(self)
        return self

    def __exit__(self, *exc):
        _FakeStream.stack.pop()
        return False

    def synchronize(self):
        pass

    def wait_event(self, event):
        _LOG.append(("wait", self.ptr, event.recorded_on))

    @staticmethod
    def current():
        return _FakeStream.stack[-1] if _FakeStream.stack else _FakeStream(0)

    @classmethod
    def from_external(cls, obj):
        return cls(obj.__cuda_stream__()[1])


class _FakeEvent:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.recorded_on = None

    def record(self, stream=None):
        self.recorded_on = stream.ptr
        _LOG.append(("record", stream.ptr))


# Blocks of 256 threads resident per SM for each kind of kernel (the stand-in's occupancy calculator).
_OCCUPANCY = {"flat": 3, "table": 5, "reduce": 4, "combine": 6, "partials": 4, "advance": 8, "flatdev": 3,
              "tabledev": 5, "reducedev": 4, "combinedev": 6}


def _addr(a):
    return a.data.ptr


class _FakeKernel:
    """A CuPy RawKernel whose launch runs the host build of the same kernel (grid as given, 32 threads per block:
    the arithmetic does not depend on the block size except for the reductions' tree, whose order the host build
    reproduces for any power of two)."""

    def __init__(self, name, launches):
        self.name = name
        family, rest = name[3:].split("<")
        self.family, self.kind = family.rsplit("_", 1)
        args = [a.strip() for a in rest.rstrip(">").split(",")]
        self.ctype = args[1]
        self.mask = sum(1 << i for i, f in enumerate(args[2:]) if f == "true")
        self.launches = launches
        self.kernel = type("Function", (), {"ptr": id(self)})()

    def __call__(self, grid, block, args):
        import ctypes
        self.launches.append((self.kind, grid, block))
        _LOG.append(("launch", self.kind, grid[0], _FakeStream.current().ptr))
        lib = cuda_build.build_host_library(self.family)
        tag = {"float": "f32", "double": "f64"}[self.ctype]
        want = np.float32 if self.ctype == "float" else np.float64
        g, b = grid[0], 32
        if self.family == cuda_build.REDUCE:
            if self.kind == "partials":
                chunks, nchunks, chunk_elems, ptrs, sizes, op, power, unscale, partials = args
                assert type(op) is np.int32 and type(power) is np.float64 and type(unscale) is want
                rc = getattr(lib, f"fo_host_reduce_partials_{tag}")(
                    _addr(chunks), int(nchunks), int(chunk_elems), _addr(ptrs), _addr(sizes), int(op), float(power),
                    float(unscale), _addr(partials), g, b)
            else:
                offsets, ntensors, op, partials, values = args
                assert type(op) is np.int32 and type(ntensors) is np.int64
                rc = getattr(lib, f"fo_host_reduce_combine_{tag}")(
                    _addr(offsets), int(ntensors), int(op), _addr(partials), _addr(values), g, b)
            assert rc == 0
            return
        fam = cuda_build.FAMILIES[self.family]
        nsc = len(fam.kernel_scalars)
        if self.kind == "advance":
            hyper, step, scalars, scalars64 = args
            assert hyper.dtype == np.float64 and step.dtype == np.int64 and scalars.dtype == want
            assert scalars64.dtype == np.float64
            assert getattr(lib, f"fo_host_{self.family}_advance_{tag}")(
                self.mask, _addr(hyper), _addr(step), _addr(scalars), _addr(scalars64), g, b) == 0
            return
        if self.kind == "reducedev":
            *table, scalars, partials = args
            assert scalars.dtype == want and partials.dtype == np.float64
            chunks, nchunks, chunk_elems, ptrs, gptrs, sizes, ntensors = table
            assert getattr(lib, f"fo_host_{self.family}_reducedev_{tag}")(
                self.mask, _addr(chunks), int(nchunks), int(chunk_elems), _addr(ptrs), _addr(gptrs), _addr(sizes),
                int(ntensors), _addr(scalars), _addr(partials), g, b) == 0
            return
        if self.kind == "combinedev":
            offsets, ntensors, partials, scalars64, reduced, ts = args
            assert scalars64.dtype == np.float64 and ts.dtype == want and type(ntensors) is np.int64
            assert getattr(lib, f"fo_host_{self.family}_combinedev_{tag}")(
                self.mask, _addr(offsets), int(ntensors), _addr(partials), _addr(scalars64), _addr(reduced),
                _addr(ts), g, b) == 0
            return
        if self.kind == "flatdev":
            ptrs = [int(a) for a in args[:-2]]
            assert all(type(a) is np.uint64 for a in args[:-2]) and type(args[-2]) is np.int64
            assert args[-1].dtype == want
            assert getattr(lib, f"fo_host_{self.family}_flatdev_{tag}")(
                self.mask, int(args[-2]), (ctypes.c_void_p * len(ptrs))(*ptrs), _addr(args[-1]), g, b) == 0
            return
        if self.kind == "tabledev":
            chunks, nchunks, chunk_elems, ptrs, gptrs, sizes, ntensors, scalars, *ts = args
            assert scalars.dtype == want and len(ts) == (1 if fam.reductions else 0)
            assert getattr(lib, f"fo_host_{self.family}_tabledev_{tag}")(
                self.mask, _addr(chunks), int(nchunks), int(chunk_elems), _addr(ptrs), _addr(gptrs), _addr(sizes),
                int(ntensors), _addr(scalars), *[_addr(a) for a in ts], g, b) == 0
            return
        if self.kind == "combine":
            offsets, ntensors, partials, *doubles, reduced, ts = args
            assert len(doubles) == len(fam.scalar_names) and all(type(s) is np.float64 for s in doubles)
            rc = getattr(lib, f"fo_host_{self.family}_combine_{tag}")(
                self.mask, _addr(offsets), int(ntensors), _addr(partials),
                (ctypes.c_double * len(doubles))(*map(float, doubles)), _addr(reduced), _addr(ts), g, b)
            assert rc == 0
            return
        if self.kind == "flat":
            scal = args[-nsc:]
        else:
            scal = args[7:7 + nsc]
            extra = args[7 + nsc:]
            assert len(extra) == (1 if fam.reductions else 0)
        assert all(type(s) is want for s in scal), "scalars must be passed in the compute type"
        scalars = (ctypes.c_double * nsc)(*[float(s) for s in scal])
        if self.kind == "flat":
            ptrs = [int(a) for a in args[:-nsc - 1]]
            assert all(type(a) is np.uint64 for a in args[:-nsc - 1]) and type(args[-nsc - 1]) is np.int64
            rc = getattr(lib, f"fo_host_{self.family}_flat_{tag}")(
                self.mask, int(args[-nsc - 1]), (ctypes.c_void_p * len(ptrs))(*ptrs), scalars, g, b)
        else:
            chunks, nchunks, chunk_elems, ptrs, gptrs, sizes, ntensors = args[:7]
            head = (self.mask, _addr(chunks), int(nchunks), int(chunk_elems), _addr(ptrs), _addr(gptrs), _addr(sizes),
                    int(ntensors), scalars)
            rc = getattr(lib, f"fo_host_{self.family}_{self.kind}_{tag}")(*head, *[_addr(a) for a in extra], g, b)
        assert rc == 0


def _occupancy(kernels_by_ptr):
    def query(func, block_size, dynamic_smem):
        assert block_size == cuda_build.BLOCK and dynamic_smem == 0
        return _OCCUPANCY[kernels_by_ptr[func].kind]
    return query


class _FakeCupy:
    ndarray = _FakeArray
    uint16 = np.uint16

    def __init__(self, version="14.2.0"):
        self.__version__ = version
        self.launches = []
        self.kernels = {}
        fake = self

        class RawModule:
            def __init__(self, code, options, name_expressions):
                assert "--fmad=false" in options
                self.names = set(name_expressions)

            def get_function(self, name):
                assert name in self.names
                kernel = _FakeKernel(name, fake.launches)
                fake.kernels[kernel.kernel.ptr] = kernel
                return kernel

        self.RawModule = RawModule
        self.cuda = type("cuda", (), {
            "Device": _FakeDevice,
            "Stream": _FakeStream,
            "Event": _FakeEvent,
            "get_current_stream": staticmethod(_FakeStream.current),
            "runtime": type("runtime", (), {"getDevice": staticmethod(lambda: 0)}),
            "driver": type("driver", (), {
                "occupancyMaxActiveBlocksPerMultiprocessor": staticmethod(_occupancy(self.kernels))}),
        })

    def empty(self, n, dtype):
        return _FakeArray(np.empty(n, dtype))

    def zeros(self, n, dtype):
        return _FakeArray(np.zeros(n, dtype))

    def asarray(self, obj):
        """A copy of a NumPy array; zero-copy from __cuda_array_interface__ (the exporting object becomes the owner)."""
        import ctypes
        if isinstance(obj, np.ndarray):
            return _FakeArray(np.array(obj, copy=True))
        face = obj.__cuda_array_interface__
        dtype = np.dtype(face["typestr"])
        n = int(np.prod(face["shape"]))
        raw = (ctypes.c_char * (n * dtype.itemsize)).from_address(face["data"][0])
        return _FakeArray(np.frombuffer(raw, dtype=dtype).reshape(face["shape"]), owner=obj)

    def from_dlpack(self, obj):
        obj.__dlpack__()
        raise AssertionError("the stand-ins export through __cuda_array_interface__")


@pytest.fixture
def fake_cupy(monkeypatch):
    from fastopt.backends import cuda as cuda_backend
    fake = _FakeCupy()
    monkeypatch.setattr(cuda_backend, "_cupy", fake)
    monkeypatch.setattr(cuda_backend, "_import_error", None)
    monkeypatch.setattr(cuda_backend, "_modules", {})
    monkeypatch.setattr(cuda_backend, "_sm_counts", {})
    monkeypatch.setattr(cuda_backend, "_warned_cache", False, raising=False)
    monkeypatch.setattr(cuda_backend, "_torch", lambda: None, raising=False)   # torch here is a CPU build
    _LOG.clear()
    _FakeStream.stack.clear()
    return fake


@pytest.mark.parametrize("layout", ["separate", "flat-buffers", "flat-params-separate-grads"])
@pytest.mark.parametrize("name", ["adam", "rmsprop", "sgd"])
def test_cuda_plan_through_a_stand_in_for_cupy(fake_cupy, name, layout):
    from fastopt.backends.cuda import BACKEND
    spec = SPECS[name]
    hyper = {**spec.defaults, "weight_decay": 0.05}
    if "momentum" in hyper:
        hyper["momentum"] = 0.9
    sizes = (3, 0, 4097, 1, 20000)
    prob = Problem(name, hyper, sizes, np.float32, seed=6)
    want_p, want_s = prob.reference()

    def place(arrays, flat):
        if not flat:
            return [_FakeArray(a.copy()) for a in arrays]
        buf = np.concatenate(arrays)
        out, start = [], 0
        for a in arrays:
            out.append(_FakeArray(buf[start:start + a.size]))
            start += a.size
        return out

    flat_state = layout != "separate"
    params = place(prob.params, flat_state)
    slots = {s.name: None if v is None else place(v, flat_state) for s, v in zip(spec.slots, prob.slots)}
    plan = BACKEND.prepare(spec, params, slots, prob.flags)
    grad_bufs = place([np.zeros(n, np.float32) for n in sizes], layout == "flat-buffers")
    for step in range(1, STEPS + 1):
        for t in range(len(sizes)):
            grad_bufs[t].a[...] = prob.grads[t][step - 1]
        plan.run(grad_bufs, spec.scalars(hyper, step))
    kinds = {k for k, _, _ in fake_cupy.launches}
    assert len(fake_cupy.launches) == STEPS                      # one launch per step for the whole group
    assert kinds == ({"flat"} if layout == "flat-buffers" else {"table"})
    if layout != "flat-buffers":
        assert plan._table[2].sets == 1                          # the grads' table, written once
    for t in range(len(sizes)):
        _compare(params[t].a, want_p[t], np.float32, f"{name} {layout} tensor {t}")
        for k, s in enumerate(prob.slots):
            if s is not None:
                _compare(slots[spec.slots[k].name][t].a, want_s[k][t], np.float32, f"{name} slot {k} tensor {t}")


# ---- torch-like tensors, failed steps, grid sizes, streams, the disk cache (issue 9) --------------------------------

class _TorchLikeTensor:
    """Behaves as a torch CUDA tensor does for these purposes: while it requires grad (every nn.Parameter) both
    exports refuse it (__cuda_array_interface__ raises RuntimeError, which hasattr does not catch; __dlpack__
    raises), and detach() returns a tensor on the same memory that exports."""

    def __init__(self, a, requires_grad=False):
        self.a = a
        self.requires_grad = requires_grad
        self.dtype = a.dtype

    @property
    def __cuda_array_interface__(self):
        if self.requires_grad:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad. "
                               "If gradients aren't required, use var.detach() to get Variable that doesn't "
                               "require grad.")
        return {"shape": self.a.shape, "typestr": self.a.dtype.str, "data": (self.a.ctypes.data, False),
                "strides": None, "version": 2}

    def __dlpack__(self, stream=None):
        if self.requires_grad:
            raise RuntimeError("Can't export tensors that require gradient, use tensor.detach()")
        raise NotImplementedError

    def __dlpack_device__(self):
        return (2, 0)   # kDLCUDA, device 0

    def detach(self):
        return _TorchLikeTensor(self.a, requires_grad=False)


class _FakeTorch:
    """The parts of torch the cuda backend reads: Tensor, dtypes, and the current stream per device."""
    Tensor = _TorchLikeTensor
    bfloat16 = object()
    int16 = np.int16

    def __init__(self):
        self.stream_handle = 0xA000
        torch = self

        class _Stream:
            @property
            def cuda_stream(self):
                return torch.stream_handle

        self.cuda = type("cuda", (), {"current_stream": staticmethod(lambda device=None: _Stream())})


@pytest.fixture
def fake_torch(fake_cupy, monkeypatch):
    from fastopt.backends import cuda as cuda_backend
    torch = _FakeTorch()
    monkeypatch.setattr(cuda_backend, "_torch", lambda: torch)
    return torch


def _adam_problem(sizes, seed=7):
    spec = SPECS["adam"]
    hyper = {**spec.defaults, "weight_decay": 0.01}
    return spec, hyper, Problem("adam", hyper, sizes, np.float32, seed=seed)


def _separate(arrays):
    return [a.copy() for a in arrays]


def test_torch_parameters_that_require_grad_are_viewed_zero_copy_and_updated(fake_torch):
    from fastopt.backends.cuda import BACKEND
    sizes = (5, 4097, 1)
    spec, hyper, prob = _adam_problem(sizes)
    want_p, _ = prob.reference()
    store = _separate(prob.params)
    params = [_TorchLikeTensor(a, requires_grad=True) for a in store]
    for t in params:
        assert BACKEND.owns(t)
        view = BACKEND.as_array(t)                       # owns() said yes, so this must work
        assert view.data.ptr == t.a.ctypes.data          # zero-copy: the parameter's own memory
        assert t.requires_grad                            # the caller's tensor is left as it was
    assert not BACKEND.owns(_TorchLikeTensor(np.zeros(3, np.float32)).a)   # NumPy stays the cpu backend's
    views = [BACKEND.as_array(t) for t in params]
    slots = {s.name: None if v is None else [_FakeArray(a.copy()) for a in v] for s, v in zip(spec.slots, prob.slots)}
    plan = BACKEND.prepare(spec, views, slots, prob.flags)
    grads = [_TorchLikeTensor(np.zeros(n, np.float32)) for n in sizes]
    for step in range(1, STEPS + 1):
        for t, g in enumerate(grads):
            g.a[...] = prob.grads[t][step - 1]
        plan.run([BACKEND.as_array(g) for g in grads], spec.scalars(hyper, step))
    for t in range(len(sizes)):
        _compare(store[t], want_p[t], np.float32, f"torch-like param {t}")


class _RefusingTensor(_TorchLikeTensor):
    """A stand-in that refuses export without saying why (no requires_grad attribute)."""

    def __init__(self, a, requires_grad=True):
        super().__init__(a, requires_grad)
        self._refuses = requires_grad
        del self.requires_grad

    @property
    def __cuda_array_interface__(self):
        if self._refuses:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad.")
        return _TorchLikeTensor(self.a).__cuda_array_interface__

    def __dlpack__(self, stream=None):
        raise RuntimeError("Can't export tensors that require gradient, use tensor.detach()")

    def detach(self):
        return _RefusingTensor(self.a, requires_grad=False)


@pytest.mark.parametrize("make", [_TorchLikeTensor, _RefusingTensor])
def test_owns_and_as_array_agree_for_tensors_that_refuse_export(fake_cupy, make):
    from fastopt.backends.cuda import BACKEND
    a = np.arange(6, dtype=np.float32)
    t = make(a, requires_grad=True)
    assert BACKEND.owns(t)
    view = BACKEND.as_array(t)
    assert view.data.ptr == a.ctypes.data and view.shape == a.shape and view.dtype == a.dtype


def test_a_step_that_fails_its_checks_leaves_nothing_behind(fake_cupy):
    from fastopt.backends.cuda import BACKEND
    sizes = (3, 4097, 20000)
    spec, hyper, prob = _adam_problem(sizes)
    params = [_FakeArray(a) for a in _separate(prob.params)]
    slots = {s.name: None if v is None else [_FakeArray(a.copy()) for a in v] for s, v in zip(spec.slots, prob.slots)}
    plan = BACKEND.prepare(spec, params, slots, prob.flags)
    good = [_FakeArray(prob.grads[t][0].copy()) for t in range(len(sizes))]
    plan.run(good, spec.scalars(hyper, 1))
    assert len(fake_cupy.launches) == 1
    elsewhere = [good[0], _FakeArray(prob.grads[1][0].copy(), device=1), good[2]]
    too_few = good[:2]
    for bad, message in ((elsewhere, "device"), (too_few, "expected 3 arrays")):
        for _ in range(2):   # the same objects again must be checked again, never launched with last step's table
            with pytest.raises(ValueError, match=message):
                plan.run(bad, spec.scalars(hyper, 2))
        assert len(fake_cupy.launches) == 1
    plan.run(good, spec.scalars(hyper, 2))   # the good grads still run
    assert len(fake_cupy.launches) == 2


def test_grids_come_from_the_occupancy_of_the_kernel_launched(fake_cupy):
    from fastopt.backends.cuda import BACKEND
    sizes = (3, 0, 4097, 1, 20000)
    spec, hyper, prob = _adam_problem(sizes)
    sms = _FakeDevice().attributes["MultiProcessorCount"]
    for flat in (True, False):
        buf = np.concatenate(prob.params)
        params = [_FakeArray(v) for v in np.split(buf, np.cumsum(sizes)[:-1])]
        slots = {s.name: None if v is None else [_FakeArray(np.zeros(n, np.float32)) for n in sizes]
                 for s, v in zip(spec.slots, prob.slots)}
        if flat:
            slots = {k: None if v is None else
                     [_FakeArray(x) for x in np.split(np.zeros(sum(sizes), np.float32), np.cumsum(sizes)[:-1])]
                     for k, v in slots.items()}
        plan = BACKEND.prepare(spec, params, slots, prob.flags)
        gbuf = np.concatenate([g[0] for g in prob.grads])
        grads = [_FakeArray(v) for v in np.split(gbuf, np.cumsum(sizes)[:-1])] if flat else \
            [_FakeArray(g[0].copy()) for g in prob.grads]
        plan.run(grads, spec.scalars(hyper, 1))
        kind, grid, _ = fake_cupy.launches[-1]
        assert kind == ("flat" if flat else "table")
        resident = _OCCUPANCY[kind] * sms
        if flat:   # 24101 elements in float4 vectors of 256-thread blocks: 24 blocks of work, 6 resident
            assert grid[0] == min(-(-sum(sizes) // (cuda_build.BLOCK * 4)), resident) == 6
        else:      # chunks sized for the resident blocks, one wave of them
            nchunks = int(plan._prefix[1])
            assert plan._prefix[2] == cuda_build.choose_chunk_elems(sum(sizes), resident)
            assert grid[0] == min(nchunks, resident) == 10


def test_torch_arrays_launch_on_torchs_current_stream_and_the_grad_table_waits_for_its_readers(fake_torch):
    from fastopt.backends.cuda import BACKEND
    sizes = (3, 4097, 5)
    spec, hyper, prob = _adam_problem(sizes)
    store = _separate(prob.params)
    views = [BACKEND.as_array(_TorchLikeTensor(a, requires_grad=True)) for a in store]
    slots = {s.name: None if v is None else [_FakeArray(a.copy()) for a in v] for s, v in zip(spec.slots, prob.slots)}
    plan = BACKEND.prepare(spec, views, slots, prob.flags)
    g1 = [BACKEND.as_array(_TorchLikeTensor(prob.grads[t][0].copy())) for t in range(len(sizes))]
    _LOG.clear()
    plan.run(g1, spec.scalars(hyper, 1))
    # (before them: the one-time build of the other tables, synchronized before use)
    assert _LOG[-2:] == [("set", 0xA000), ("launch", "table", _LOG[-1][2], 0xA000)]   # torch's stream, not CuPy's
    plan.run(g1, spec.scalars(hyper, 2))
    assert _LOG[-1][3] == 0xA000
    # The next step runs on another torch stream with new grads: the table the last launch (stream A) may still be
    # reading is overwritten only after it, on the new stream B.
    fake_torch.stream_handle = 0xB000
    g2 = [BACKEND.as_array(_TorchLikeTensor(prob.grads[t][1].copy())) for t in range(len(sizes))]
    _LOG.clear()
    plan.run(g2, spec.scalars(hyper, 3))
    assert _LOG == [("record", 0xA000), ("wait", 0xB000, 0xA000), ("set", 0xB000),
                    ("launch", "table", _LOG[-1][2], 0xB000)]
    # Same stream again, new grads: stream order suffices, no event.
    g3 = [BACKEND.as_array(_TorchLikeTensor(prob.grads[t][2].copy())) for t in range(len(sizes))]
    _LOG.clear()
    plan.run(g3, spec.scalars(hyper, 4))
    assert [e[0] for e in _LOG] == ["set", "launch"]


def test_cupy_arrays_launch_on_cupys_current_stream_and_switching_streams_waits(fake_cupy):
    from fastopt.backends.cuda import BACKEND
    sizes = (3, 4097, 5)
    spec, hyper, prob = _adam_problem(sizes)
    params = [_FakeArray(a) for a in _separate(prob.params)]
    slots = {s.name: None if v is None else [_FakeArray(a.copy()) for a in v] for s, v in zip(spec.slots, prob.slots)}
    plan = BACKEND.prepare(spec, params, slots, prob.flags)
    with _FakeStream(0x51):
        plan.run([_FakeArray(g[0].copy()) for g in prob.grads], spec.scalars(hyper, 1))
    _LOG.clear()
    with _FakeStream(0x52):
        plan.run([_FakeArray(g[1].copy()) for g in prob.grads], spec.scalars(hyper, 2))
    assert [e[:2] for e in _LOG] == [("record", 0x51), ("wait", 0x52), ("set", 0x52), ("launch", "table")]
    assert _LOG[-1][3] == 0x52


@pytest.mark.parametrize("version,warns", [("13.6.0", True), ("14.0.1", True), ("14.1.0", False), ("14.2.0", False)])
def test_a_cupy_without_a_disk_cache_for_name_expressions_is_named(fake_cupy, version, warns):
    import warnings

    from fastopt.backends import cuda as cuda_backend
    fake_cupy.__version__ = version
    assert cuda_backend.cupy_caches_on_disk(fake_cupy) is not warns
    spec = SPECS["sgd"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cuda_backend.BACKEND.prepare(spec, [_FakeArray(np.zeros(4, np.float32))], {"momentum_buffer": None},
                                     spec.flags(spec.defaults))
    named = [w for w in caught if "disk" in str(w.message) and version in str(w.message)]
    assert len(named) == (1 if warns else 0)


def test_the_backend_documents_its_capturable_step():
    from fastopt.backends import cuda as cuda_backend
    doc = cuda_backend.__doc__
    assert "Not capturable in a CUDA graph" not in doc
    assert "capturable=True" in doc and "write_hyperparameters" in doc and "fo_<family>_scalars" in doc


def test_the_gpu_checks_smoke_run_drives_every_family_flat_and_table(fake_cupy, monkeypatch):
    """`python -m fastopt smoke` (what compute-sanitizer and ncu wrap on the GPU) through the stand-in: every spec,
    both paths, each launch's arithmetic done by the host build, and a skipped element is reported."""
    import fastopt.__main__ as cli
    from fastopt.backends import cuda as cuda_backend
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(cuda_backend.BACKEND, "_checked", True)
    monkeypatch.setattr(cuda_backend.BACKEND, "_reason", None)
    pools = []
    fake_cupy.cuda.set_allocator = staticmethod(lambda allocator: pools.append(allocator))
    # The families of this module's plan (Adafactor's own plan has its stand-in in tests/test_adafactor_cuda_plan.py)
    assert cli.smoke(sorted(cuda_build.FAMILIES), ["float32", "float64"], [1, 3, 4097], 2, pool=False) == 0
    assert pools == [None]
    kinds = {(k.family, k.kind) for k in fake_cupy.kernels.values()}
    # every entry point but the capturable step's (advance, flatdev, tabledev: tests/test_cuda_host.py's capturable
    # tests and the GPU's graph tests drive those)
    assert kinds == {(f, kind) for f, fam in cuda_build.FAMILIES.items() for kind in codegen.cuda_kinds(fam)}
    # A kernel that skips an element is caught.
    call = _FakeKernel.__call__

    def skipping(self, grid, block, args):
        if self.kind == "flat":
            args = (*args[:-len(cuda_build.FAMILIES[self.family].kernel_scalars) - 1],
                    np.int64(int(args[-len(cuda_build.FAMILIES[self.family].kernel_scalars) - 1]) - 1),
                    *args[-len(cuda_build.FAMILIES[self.family].kernel_scalars):])
        call(self, grid, block, args)
    monkeypatch.setattr(_FakeKernel, "__call__", skipping)
    assert cli.smoke(["sgd"], ["float32"], [5], 1) == 1


# ---- kernel contract v2 through the stand-in: per-tensor reductions, gradient reductions ----------------------------

@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.reductions and s.kernel in cuda_build.FAMILIES])
def test_a_plan_with_reductions_launches_reduce_combine_update_and_allocates_nothing_per_step(fake_cupy, name):
    from fastopt.backends.cuda import BACKEND
    spec = SPECS[name]
    hyper = {**spec.defaults, "weight_decay": 0.05}
    sizes = (3, 0, 4097, 1, 20000)
    prob = Problem(name, hyper, sizes, np.float32, seed=8)
    want_p, want_s = prob.reference()
    params = [_FakeArray(a.copy()) for a in prob.params]
    slots = {s.name: [_FakeArray(a.copy()) for a in v] for s, v in zip(spec.slots, prob.slots)}
    plan = BACKEND.prepare(spec, params, slots, prob.flags)
    scratch = (plan.d_partials, plan.d_reduced, plan.d_tensor_scalars)   # allocated at prepare time
    grads = [_FakeArray(np.zeros(n, np.float32)) for n in sizes]
    for step in range(1, STEPS + 1):
        for t in range(len(sizes)):
            grads[t].a[...] = prob.grads[t][step - 1]
        plan.run(grads, spec.scalars(hyper, step))
    assert [k for k, _, _ in fake_cupy.launches] == ["reduce", "combine", "table"] * STEPS
    assert (plan.d_partials, plan.d_reduced, plan.d_tensor_scalars) == scratch
    assert plan._table[2].sets == 1                           # the grads' table, written once
    # The host build through HostKernels.table (which runs the same three kernels) gives the very same bits.
    host = cuda_build.HostKernels(spec.kernel)
    hp = [a.copy() for a in prob.params]
    hs = [[a.copy() for a in v] for v in prob.slots]
    nchunk = int(plan._prefix[2])
    for step in range(1, STEPS + 1):
        host.table(hp, [g[step - 1] for g in prob.grads], hs, spec.scalars(hyper, step), prob.flags,
                   chunk_elems=nchunk, grid=3, block=32)
    for t in range(len(sizes)):
        np.testing.assert_array_equal(params[t].a, hp[t])
        _compare(params[t].a, want_p[t], np.float32, f"{name} tensor {t}")
        for k in range(len(prob.slots)):
            _compare(slots[spec.slots[k].name][t].a, want_s[k][t], np.float32, f"{name} slot {k} tensor {t}")


def test_reduce_grads_is_two_launches_over_the_group_with_the_host_builds_values(fake_cupy):
    from fastopt.backends.cuda import BACKEND
    sizes = (3, 0, 4097, 1, 20000)
    spec, _, prob = _adam_problem(sizes)
    params = [_FakeArray(a) for a in _separate(prob.params)]
    slots = {s.name: None if v is None else [_FakeArray(a.copy()) for a in v] for s, v in zip(spec.slots, prob.slots)}
    plan = BACKEND.prepare(spec, params, slots, prob.flags)
    grads_np = [g[0].copy() for g in prob.grads]
    grads_np[2][5] = np.inf
    grads = [_FakeArray(g) for g in grads_np]
    for op, scale in (("sumsq", None), ("nonfinite", None), ("sumsq", 512.0), ("maxabs", 2.0)):
        before = len(fake_cupy.launches)
        got = plan.reduce_grads(grads, op, 2.0, scale)
        assert [k for k, _, _ in fake_cupy.launches[before:]] == ["partials", "combine"]
        reducer = plan._grad_reducer
        want = cuda_build.HostReduce()(grads_np, op, 2.0, 1.0 if scale is None else scale,
                                       chunk_elems=reducer.chunk_elems, block=32)
        np.testing.assert_array_equal(np.array(got), want)
        assert reducer.d_ptrs.sets == 1                       # the same grads: their table written once
    with pytest.raises(ValueError, match="expected 5 arrays"):
        plan.reduce_grads(grads[:2], "sumsq")


def test_reduce_arrays_keeps_its_scratch_for_the_same_arrays(fake_cupy):
    from fastopt.backends import cuda as cuda_backend
    monkey = cuda_backend._reducers
    monkey.clear()
    arrays_np = [np.random.default_rng(9).standard_normal(n).astype(np.float64) for n in (7, 5000, 0, 3)]
    arrays = [_FakeArray(a) for a in arrays_np]
    first = cuda_backend.reduce_arrays(arrays, "sumsq")
    reducer = next(iter(monkey.values()))
    second = cuda_backend.reduce_arrays(arrays, "sumsq")
    assert first == second and len(monkey) == 1 and next(iter(monkey.values())) is reducer
    assert reducer.d_ptrs.sets == 1
    want = cuda_build.HostReduce()(arrays_np, "sumsq", chunk_elems=reducer.chunk_elems, block=32)
    np.testing.assert_array_equal(np.array(first), want)
    with pytest.raises(ValueError, match="unknown reduction"):
        cuda_backend.reduce_arrays(arrays, "median")
    monkey.clear()


def test_families_with_shaped_slots_go_to_their_own_plan(fake_cupy, monkeypatch):
    """Adafactor (shaped slots) runs in fastopt.backends.cuda_adafactor (tests/test_adafactor_cuda_plan.py runs it);
    a family with neither generated kernels nor a plan of its own is still refused by name."""
    import dataclasses

    from fastopt.backends import cuda_adafactor
    from fastopt.backends.cuda import BACKEND
    spec = SPECS["adafactor"]
    assert spec.kernel not in cuda_build.FAMILIES
    made = []
    monkeypatch.setattr(cuda_adafactor, "AdafactorPlan", lambda *args: made.append(args) or "its plan")
    p, var = _FakeArray(np.zeros(4, np.float32)), _FakeArray(np.zeros(4, np.float32))
    slots = {"row_var": [None], "col_var": [None], "variance": [var]}
    assert BACKEND.prepare(spec, [p], slots, spec.flags(spec.defaults)) == "its plan"
    assert made[0][1] == [p] and made[0][2] == slots
    with pytest.raises(NotImplementedError, match="cuda backend"):
        BACKEND.prepare(dataclasses.replace(spec, kernel="nokernels"), [p], slots, spec.flags(spec.defaults))


# ---- the capturable step through the stand-in -----------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["separate", "flat-buffers"])
@pytest.mark.parametrize("name,hyper", [
    ("adam", {"weight_decay": 0.01, "amsgrad": True}), ("adamw", {"maximize": True}),
    ("sgd", {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.05}), ("sgd", {})]
    + [(n, {}) for n, s in SPECS.items() if n not in ("adam", "adamw", "sgd") and cuda_build.is_capturable(s.kernel)])
def test_capturable_steps_equal_eager_steps_bit_for_bit_and_follow_an_lr_change(fake_cupy, name, hyper, layout):
    """Two launches per step (advance, then the update reading the device scalars) with the same arguments every
    step; the results are the host-scalar steps' bit for bit, through an lr change written by set_hyper at step 4;
    the hyperparameters are copied to the device only when they change."""
    from fastopt.backends.cuda import BACKEND
    spec = SPECS[name]
    hyper = spec.normalize({**spec.defaults, **hyper})
    later = {**hyper, "lr": hyper["lr"] * 0.5}
    sizes = (3, 0, 4097, 1, 20000)
    prob = Problem(name, hyper, sizes, np.float32, seed=9)
    flat = layout == "flat-buffers"
    runs = {}
    for capturable in (False, True):
        params = _place(prob.params, flat)
        slots = {s.name: None if v is None else _place(v, flat) for s, v in zip(spec.slots, prob.slots)}
        plan = BACKEND.prepare(spec, params, slots, prob.flags)
        grads = _place([np.zeros(n, np.float32) for n in sizes], flat)
        if capturable:
            plan.make_capturable(hyper, 0)
            fake_cupy.launches.clear()
        for step in range(1, STEPS + 1):
            h = hyper if step < 4 else later
            for t in range(len(sizes)):
                grads[t].a[...] = prob.grads[t][step - 1]
            if capturable:
                plan.set_hyper(h)
                plan.run_capturable(grads)
            else:
                plan.run(grads, spec.scalars(h, step))
        runs[capturable] = params, slots
        if capturable:
            kinds = [k for k, _, _ in fake_cupy.launches]
            if spec.reductions:   # kernel contract v2: the reductions read the device scalars too
                assert kinds == ["advance", "reducedev", "combinedev", "tabledev"] * STEPS
            else:
                assert kinds == ["advance", "flatdev" if flat else "tabledev"] * STEPS
            assert plan.d_hyper.sets == 2 and plan.device_step() == STEPS   # initial values, then the lr change
    (p0, s0), (p1, s1) = runs[False], runs[True]
    for t in range(len(sizes)):
        np.testing.assert_array_equal(p1[t].a, p0[t].a)
        for k in s0:
            if s0[k] is not None:
                np.testing.assert_array_equal(s1[k][t].a, s0[k][t].a)


def _place(arrays, flat):
    if not flat:
        return [_FakeArray(a.copy()) for a in arrays]
    buf = np.concatenate(arrays)
    out, start = [], 0
    for a in arrays:
        out.append(_FakeArray(buf[start:start + a.size]))
        start += a.size
    return out


def test_a_family_without_a_capturable_step_refuses_to_become_one(fake_cupy):
    from fastopt.backends.cuda import BACKEND
    spec = SPECS["nadam"]   # host state (mu_product): kept per param on the host
    assert not cuda_build.is_capturable("nadam")
    plan = BACKEND.prepare(spec, [_FakeArray(np.zeros(4, np.float32))], {s.name: None for s in spec.slots},
                           spec.flags(spec.defaults))
    with pytest.raises(ValueError, match="capturable"):
        plan.make_capturable(spec.normalize(spec.defaults), 0)
