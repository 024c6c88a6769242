"""Every fused backend matches the NumPy reference: every optimizer, float32 and float64, shapes from empty to ~1M,
random hyperparameters covering every flag, several steps, many tensors per group."""

import os

import numpy as np
import pytest

pytest.importorskip("hypothesis")
from conftest import FUSED_BACKENDS, to_backend, to_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from registry import HYPERPARAMETERS
from tolerances import assert_close

import fastopt
from fastopt.kernels.cpu._common import CHUNK
from fastopt.specs import SPECS

DTYPES = [np.float32, np.float64]
SIZES = [0, 1, 3, 4097, CHUNK + 5]


def make_problem(shapes, dtype, steps, seed, special=False):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    if special:  # non-finite gradients are not an input error: they must propagate exactly as in the reference
        for g in grads[1]:
            flat = g.reshape(-1)
            flat[0:3], flat[5] = (np.nan, np.inf, -np.inf), np.nan
    return params, grads


def run(cls_name, hyper, backend, params, grads):
    arrays = [to_backend(p, backend) for p in params]
    opt = fastopt.OPTIMIZERS[cls_name](arrays, backend=backend, **hyper)
    step_grads = [[to_backend(g, backend) for g in gs] for gs in grads]
    for gs in step_grads:
        opt.step(gs)
    return [to_numpy(a) for a in arrays], opt.state_dict()


def compare(name, hyper, backend, params, grads, dtype):
    fused, fused_state = run(name, hyper, backend, params, grads)
    ref, ref_state = run(name, hyper, "numpy", params, grads)
    for i, (f, r) in enumerate(zip(fused, ref)):
        assert f.dtype == r.dtype == dtype
        assert_close(f, r, dtype, f"{name} {hyper} params[{i}]", backend)
    assert fused_state["state"].keys() == ref_state["state"].keys()
    for key, entry in ref_state["state"].items():
        assert fused_state["state"][key].keys() == entry.keys()
        if SPECS[name].counts_steps:  # SGD keeps no step count, as in torch
            assert fused_state["state"][key]["step"] == entry["step"] == len(grads)
        for slot, value in entry.items():
            if slot != "step":
                assert_close(fused_state["state"][key][slot], value, dtype, f"{name} {hyper} state[{key}][{slot}]",
                             backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(SPECS))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_matches_reference(fused_backend, name, dtype, data):
    hyper = data.draw(HYPERPARAMETERS[name], label="hyper")
    shapes = data.draw(st.lists(st.sampled_from(SIZES), min_size=1, max_size=4), label="sizes")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    params, grads = make_problem(shapes, dtype, steps=10, seed=seed)
    compare(name, hyper, fused_backend, params, grads, dtype)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_matches_reference_on_a_million_parameters(fused_backend, name):
    params, grads = make_problem([(1000, 1000), (17,)], np.float32, steps=3, seed=1)
    compare(name, {}, fused_backend, params, grads, np.float32)  # torch's defaults


@pytest.mark.parametrize("name", sorted(SPECS))
def test_non_finite_gradients_propagate_like_the_reference(fused_backend, name):
    params, grads = make_problem([(50,), (7, 3)], np.float64, steps=4, seed=2, special=True)
    compare(name, {}, fused_backend, params, grads, np.float64)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_many_tensors_and_mixed_dtypes_in_one_group(fused_backend, name):
    rng = np.random.default_rng(3)
    shapes = [(int(n),) for n in rng.integers(0, 300, size=200)] + [(CHUNK * 2 + 1,), (0, 4)]
    params, grads = make_problem(shapes, np.float32, steps=5, seed=4)
    for i in range(0, len(params), 3):  # every third tensor in float64: two plans in one group
        params[i] = params[i].astype(np.float64)
        for gs in grads:
            gs[i] = gs[i].astype(np.float64)
    fused, _ = run(name, {}, fused_backend, params, grads)
    ref, _ = run(name, {}, "numpy", params, grads)
    for f, r in zip(fused, ref):
        assert_close(f, r, r.dtype, name, fused_backend)


@pytest.mark.skipif(bool(os.environ.get("FASTOPT_TEST_BACKENDS")), reason="backends narrowed by FASTOPT_TEST_BACKENDS")
def test_fused_backends_are_tested_here():
    # CI has Numba: a silently skipped cpu backend would leave every kernel untested.
    assert "cpu" in FUSED_BACKENDS
