"""The CUDA reductions (kernel contract v2) without a GPU, through the host build of the same sources.

Order (kernels/cuda/common.cuh, fo_block_reduce): launch 1 gives each chunk of the chunk table a partial, thread j of
a block of B threads accumulating elements j, j + B, ... in order and the B values combined as a tree
(v[j] (+)= v[j + s], s = B/2 ... 1); launch 2 gives each tensor its value, thread j combining chunk partials j, j + B,
... in order, then the same tree. `_model` below computes exactly that in Python (float64), and the host build must
match it bit for bit, for every grid size (the grid never changes the order).

Against fastopt.reference.reduce_tensor (8 lanes per chunk of 32768, chunks in order) the sums differ by roundings
only. A float64 sum of non-negative or signed terms t_i evaluated with at most k additions on any path from a term to
the result is within gamma_k * sum|t_i| of the exact sum (gamma_k = k u / (1 - k u), u = 2^-53; Higham, Accuracy and
Stability of Numerical Algorithms, 2nd ed., eq. 4.4); so the two orders are within (gamma_kd + gamma_kr) * sum|t_i|
of each other, kd and kr their depths (`_depth_cuda`, `_depth_reference`). The terms themselves are the same floats in
both (x*x of a float32 x is exact in float64; of a float64 x one rounding, the same in both), except sumpow's pow,
which is not correctly rounded (one more u per term). max|x|, min|x| and the counts are exact in any order: equal.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import fastopt  # noqa: F401
except ImportError:  # a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastopt import cuda_build, reference
from fastopt.specs import SPECS

if cuda_build.find_cxx() is None:
    pytest.skip("no C++ compiler (g++) to build the CUDA kernels for the host", allow_module_level=True)

OPS = ("sumsq", "sum", "maxabs", "nonfinite", "sumpow", "minabs", "nonzero")
SIZES = (0, 1, 3, 1000, 1001, 4097, 70001)
U = 2.0 ** -53


def _combine(op, a, b):
    if op == "maxabs":
        return np.where((a > b) | (a != a), a, b)
    if op == "minabs":
        return np.where((a < b) | (a != a), a, b)
    return a + b


def _tree(op, v):
    """The block's tree over B values (B a power of two)."""
    v = v.copy()
    s = v.size // 2
    while s:
        v[:s] = _combine(op, v[:s], v[s:2 * s])
        s //= 2
    return float(v[0])


def _threads(op, terms, block):
    """Thread j's value: terms j, j + B, ... combined in order from the start value."""
    start = reference.reduction_start(op)
    rows = -(-terms.size // block)
    padded = np.full(rows * block, np.nan)
    padded[:terms.size] = terms
    acc = np.full(block, start)
    for r in range(rows):
        row = padded[r * block:(r + 1) * block]
        live = np.arange(block) + r * block < terms.size
        acc = np.where(live, _combine(op, acc, row), acc)
    return acc


def _model(op, terms, chunk_elems, block):
    """One tensor's value in the device's order (see the module docstring), from its terms (float64)."""
    partials = [_tree(op, _threads(op, terms[s:s + chunk_elems], block)) for s in range(0, terms.size, chunk_elems)]
    return _tree(op, _threads(op, np.array(partials, dtype=np.float64), block))


def _terms(x, op, power=3.0, unscale=1.0):
    x = np.asarray(x)
    if unscale != 1.0:
        x = x / x.dtype.type(unscale)
    if op == "sumpow":   # the C library's pow, as the host build calls it (NumPy's ** has fast paths of its own)
        return np.array([math.pow(abs(v), power) for v in x.astype(np.float64).tolist()], dtype=np.float64)
    return reference._terms(x.astype(np.float64), op, power)


def _arrays(dtype, seed=0, special=False):
    rng = np.random.default_rng(seed)
    out = [(rng.standard_normal(n) * rng.uniform(0.1, 10)).astype(dtype) for n in SIZES]
    if special:   # zeros, infinities and NaN (NaN must win max/min; inf and NaN are counted)
        out[3][::7] = 0
        out[4][5] = np.inf
        out[5][17] = np.nan
        out[5][18] = -np.inf
    return out


@pytest.mark.parametrize("special", [False, True], ids=["finite", "nonfinite"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("op", OPS)
def test_host_build_computes_the_device_order_exactly_whatever_the_grid(op, dtype, special):
    arrays = _arrays(dtype, special=special)
    red = cuda_build.HostReduce()
    want = [_model(op, _terms(a, op), 1000, 32) for a in arrays]
    for grid in (1, 3, 8):
        got = red(arrays, op, 3.0, chunk_elems=1000, grid=grid, block=32)
        np.testing.assert_array_equal(got, want, err_msg=f"{op} grid={grid}")


def test_count_is_the_number_of_elements_whatever_they_hold():
    arrays = _arrays(np.float64, special=True)
    got = cuda_build.HostReduce()(arrays, "count", chunk_elems=1000, block=32)
    np.testing.assert_array_equal(got, [a.size for a in arrays])


def test_amp_unscale_is_applied_before_the_term():
    arrays = _arrays(np.float32, seed=3)
    got = cuda_build.HostReduce()(arrays, "sumsq", unscale_by=1024.0, chunk_elems=1000, block=32)
    want = [_model("sumsq", _terms(a, "sumsq", unscale=1024.0), 1000, 32) for a in arrays]
    np.testing.assert_array_equal(got, want)


def test_the_device_block_size_is_modelled_too():
    """The device launches 256 threads per block and chunks of up to 65536 elements: the same model, the same bits."""
    arrays = _arrays(np.float32, seed=4)
    got = cuda_build.HostReduce()(arrays, "sumsq", chunk_elems=2048, grid=3, block=cuda_build.BLOCK)
    want = [_model("sumsq", _terms(a, "sumsq"), 2048, cuda_build.BLOCK) for a in arrays]
    np.testing.assert_array_equal(got, want)


def _depth_cuda(n, chunk_elems, block):
    if n == 0:
        return 0
    nchunks = -(-n // chunk_elems)
    return -(-min(n, chunk_elems) // block) + int(math.log2(block)) + -(-nchunks // block) + int(math.log2(block))


def _depth_reference(n):
    chunk = reference.REDUCE_CHUNK
    return -(-min(n, chunk) // reference.LANES) + 3 + -(-n // chunk)


def _gamma(k):
    return k * U / (1 - k * U)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("op", OPS)
def test_within_the_derived_bound_of_the_reference(op, dtype):
    arrays = _arrays(dtype, seed=5) + [np.random.default_rng(6).standard_normal(100_000).astype(dtype)]
    got = cuda_build.HostReduce()(arrays, op, 3.0, chunk_elems=4096, block=cuda_build.BLOCK)
    for a, value in zip(arrays, got):
        want = reference.reduce_tensor(a, op, 3.0)
        if op in ("maxabs", "minabs", "nonfinite", "nonzero"):
            assert value == want, op
            continue
        magnitude = float(np.sum(np.abs(_terms(a, op))))
        k = _depth_cuda(a.size, 4096, cuda_build.BLOCK) + _depth_reference(a.size) + (1 if op == "sumpow" else 0)
        assert abs(value - want) <= _gamma(k) * magnitude, (op, a.size, value, want)


# ---- the per-tensor reductions of a family: launches 1 and 2, then its per-tensor scalars ---------------------------

def _family_problem(name, dtype, seed=0):
    spec = SPECS[name]
    hyper = {**spec.defaults, "weight_decay": 0.05}
    rng = np.random.default_rng(seed)
    sizes = (0, 1, 3, 1000, 4097, 20001)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
    slots = [[np.abs(rng.standard_normal(n)).astype(dtype) * 0.1 for n in sizes] for _ in spec.slots]
    return spec, hyper, params, grads, slots


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.reductions and s.kernel in cuda_build.FAMILIES])
def test_family_reductions_and_tensor_scalars_are_the_models(name, dtype):
    """Each declared reduction (param, grad, a slot or the update value, nothing written) in the device order, bit
    for bit, and the per-tensor scalars bit for bit what the spec's Python `tensor_scalars` makes of those values."""
    spec, hyper, params, grads, slots = _family_problem(name, dtype)
    kernels = cuda_build.HostKernels(spec.kernel)
    flags = spec.flags(hyper)
    scalars = spec.scalars(hyper, 3)
    before = [[a.copy() for a in s] for s in slots], [p.copy() for p in params]
    reduced, ts = kernels.reduce(params, grads, slots, scalars, flags, chunk_elems=1000, grid=4, block=32)
    for t, p in enumerate(params):
        mine = [s[t] for s in slots]
        for r, red in enumerate(spec.reductions):
            if red.of == "param":
                x = p
            elif red.of == "grad":
                x = grads[t]
            elif red.of == "update":
                x = reference.update_function(spec.kernel)(p, grads[t], *mine, *scalars, *flags)
            else:
                x = mine[[s.name for s in spec.slots].index(red.of)]
            want = float(np.size(x)) if red.op == "count" else _model(red.op, _terms(x, red.op), 1000, 32)
            assert reduced[t, r] == want, (name, t, red)
        want = spec.tensor_scalars(scalars, tuple(float(v) for v in reduced[t]), p.dtype)
        np.testing.assert_array_equal(ts[t], np.array(want, dtype=dtype))
    for s, b in zip(slots, before[0]):   # the reductions write nothing
        for a, c in zip(s, b):
            np.testing.assert_array_equal(a, c)
    for a, c in zip(params, before[1]):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.reductions and s.kernel in cuda_build.FAMILIES])
def test_family_update_is_bit_exact_given_the_reference_tensor_scalars(name, dtype):
    """The update kernel, handed the per-tensor scalars the reference computes, reproduces the reference's step bit
    for bit (the only difference left between the two is the reductions' order, bounded above)."""
    spec, hyper, params, grads, slots = _family_problem(name, dtype, seed=1)
    import importlib
    step_fn = importlib.import_module(f"fastopt.optimizers.{spec.kernel}").step
    kernels = cuda_build.HostKernels(spec.kernel)
    flags = spec.flags(hyper)
    want_p = [p.copy() for p in params]
    want_s = [[a.copy() for a in s] for s in slots]
    for step in range(1, 4):
        scalars = spec.scalars(hyper, step)
        ts = np.empty((len(params), len(spec.tensor_scalar_names)), dtype=dtype)
        for t in range(len(params)):
            mine = [s[t] for s in want_s]
            ts[t] = reference.tensor_scalars(spec, want_p[t], grads[t], mine, scalars, flags)
            step_fn(want_p[t], grads[t], *mine, *scalars, *ts[t], *flags)
        kernels.table(params, grads, slots, scalars, flags, chunk_elems=1000, grid=4, block=32, tensor_scalars=ts)
    for t in range(len(params)):
        np.testing.assert_array_equal(params[t], want_p[t])
        for s, w in zip(slots, want_s):
            np.testing.assert_array_equal(s[t], w[t])
