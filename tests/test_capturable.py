"""The capturable step (cuda backend, `Optimizer(..., capturable=True)`) without a GPU.

Each capturable kernel family declares `fo_<family>_scalars` next to its element operation: the kernel scalars of a
step from the hyperparameters, in float64, as the spec's Python `scalars(hyper, step)` computes them on the host. The
host build runs that very function on the CPU: here it must give Python's values bit for bit for steps 1..1000 (the
host build calls the same C library `pow` that Python's `**` calls). On the device, CUDA's double `pow` is within 2
ulp of the correctly rounded result (CUDA C Programming Guide, double-precision functions); the bias corrections
1 - beta**t then carry an absolute error of at most 2 ulp(beta**t), which tests/test_cuda_device.py's capturable tests
bound as DEVICE_TOLERANCE below (relative to each scalar and to beta**t / (1 - beta**t)). sqrt is not used: the
bias correction's square root is pow(x, 0.5), as torch and the host compute it. The advance kernel then rounds each
scalar once to the compute type, as the host path does with numpy.float32(value).

The plan's capturable launches against the host-scalar launches (bit for bit, through an lr change) are tested with
the other stand-in tests in tests/test_cuda_host.py; graph capture and replay in tests/test_cuda_device.py (GPU).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import fastopt
except ImportError:  # a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import fastopt
from fastopt import codegen, cuda_build
from fastopt.specs import SPECS

CAPTURABLE = [name for name, spec in SPECS.items() if cuda_build.is_capturable(spec.kernel)]
STEPS = 1000
# What the device's pow may add (see the module docstring): in units of float64 eps, times max(1, the amplification
# beta**t / (1 - beta**t) of an error in beta**t into 1 - beta**t).
DEVICE_TOLERANCE_ULPS = 4

needs_cxx = pytest.mark.skipif(cuda_build.find_cxx() is None, reason="no C++ compiler (g++) for the host build")


def _hypers(spec, rng, count=6):
    """Defaults, then random values of every numeric hyperparameter and every boolean (validated)."""
    out = [spec.normalize(spec.defaults)]
    for _ in range(200):
        if len(out) >= count:
            break
        h = dict(spec.defaults)
        for hp in spec.hypers:
            d = hp.default
            if isinstance(d, bool):
                h[hp.name] = bool(rng.integers(2))
            elif isinstance(d, tuple) and rng.integers(2):   # betas; other pairs (Rprop's etas) keep their default
                h[hp.name] = tuple(float(rng.choice([0.0, 0.5, 0.9, 0.99, 0.999, 0.9999])) for _ in d)
            elif hp.name in ("lr", "eps", "weight_decay", "momentum", "dampening"):
                h[hp.name] = float(rng.choice([0.0, 1e-8, 1e-3, 0.05, 0.9, 3.0]))
        try:
            spec.validate(h)
        except (ValueError, TypeError):
            continue
        out.append(spec.normalize(h))
    return out


def test_the_capturable_families_are_adam_and_sgd_at_least():
    assert {"adam", "adamw", "sgd", "adagrad", "rmsprop", "adadelta", "adamax", "lion", "signum", "yogi",
            "adabelief", "rprop", "lamb", "lars", "radam", "adopt", "ademamix"} <= set(CAPTURABLE)
    assert not any(SPECS[n].host_state for n in CAPTURABLE)   # host state (NAdam, ASGD, schedule-free): host-side


@needs_cxx
@pytest.mark.parametrize("name", CAPTURABLE)
def test_device_scalars_are_pythons_for_steps_1_to_1000(name):
    """The family's fo_<family>_scalars, run by the host build, against spec.scalars(hyper, step), bit for bit."""
    import ctypes
    spec = SPECS[name]
    lib = cuda_build.build_host_library(spec.kernel)
    fn = getattr(lib, f"fo_host_{spec.kernel}_scalars")
    out = np.empty(len(spec.scalar_names))
    for hyper in _hypers(spec, np.random.default_rng(0)):
        values = np.array(codegen.hyper_values(spec.kernel, hyper), dtype=np.float64)
        for step in range(1, STEPS + 1):
            fn(values.ctypes.data, ctypes.c_longlong(step), out.ctypes.data)
            want = np.array(spec.scalars(hyper, step), dtype=np.float64)
            if not np.array_equal(out, want):
                bad = [(n, g, w) for n, g, w in zip(spec.scalar_names, out, want) if g != w]
                pytest.fail(f"{name} {hyper} step {step}: {bad}")


@needs_cxx
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", CAPTURABLE)
def test_advance_counts_the_step_and_rounds_each_scalar_once(name, dtype):
    """advance: step + 1 in device memory, the scalars rounded once to the compute type, then 1 and 1 (the gradient
    transform: unscale_by, clip_coef), as the host path passes numpy.float32(value)."""
    spec = SPECS[name]
    lib = cuda_build.build_host_library(spec.kernel)
    tag = {"float32": "f32", "float64": "f64"}[dtype]
    ctype = np.float32 if dtype == "float32" else np.float64
    hyper = _hypers(spec, np.random.default_rng(1))[-1]
    flags = spec.flags(hyper)
    mask = sum(1 << i for i, f in enumerate(flags) if f)
    values = np.array(codegen.hyper_values(spec.kernel, hyper), dtype=np.float64)
    step = np.array([41], dtype=np.int64)
    scalars = np.full(len(spec.scalar_names) + 2, np.nan, dtype=ctype)
    scalars64 = np.full(len(spec.scalar_names), np.nan)
    for want_step in range(42, 52):
        assert getattr(lib, f"fo_host_{spec.kernel}_advance_{tag}")(mask, values.ctypes.data, step.ctypes.data,
                                                                    scalars.ctypes.data, scalars64.ctypes.data,
                                                                    1, 32) == 0
        assert step[0] == want_step
        want = np.array([*spec.scalars(hyper, want_step), 1.0, 1.0]).astype(ctype)
        np.testing.assert_array_equal(scalars, want)
        np.testing.assert_array_equal(scalars64, spec.scalars(hyper, want_step))   # what the combine launch reads


def test_hyper_values_flatten_pairs_and_booleans():
    spec = SPECS["adam"]
    hyper = spec.normalize({**spec.defaults, "betas": (0.8, 0.95), "maximize": True})
    assert codegen.hyper_names("adam") == ("lr", "betas_0", "betas_1", "eps", "weight_decay", "amsgrad", "maximize")
    assert codegen.hyper_values("adam", hyper) == (1e-3, 0.8, 0.95, 1e-8, 0.0, 0.0, 1.0)


# ---- the API: capturable=True is validated before anything is built -------------------------------------------------

def test_capturable_must_be_a_bool():
    with pytest.raises(TypeError, match="capturable"):
        fastopt.Adam([np.zeros(3, np.float32)], capturable=1)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_capturable_is_refused_off_the_cuda_backend(backend):
    with pytest.raises(ValueError, match="capturable=True needs the cuda backend"):
        fastopt.Adam([np.zeros(3, np.float32)], backend=backend, capturable=True)


def test_capturable_is_refused_for_an_optimizer_without_a_capturable_step(monkeypatch):
    # Pretend the arrays are on the cuda backend so that the optimizer check is the one that fails.
    opt = fastopt.NAdam([np.zeros(3, np.float32)], backend="numpy")   # host state: not capturable
    opt.backend = type("B", (), {"name": "cuda"})()
    with pytest.raises(ValueError, match=r"capturable=True: NAdam has no capturable step; these have: .*Adam"):
        opt._check_capturable()
    opt = fastopt.Adam([np.zeros(3, np.float32)], backend="numpy", max_grad_norm=1.0)
    opt.backend = type("B", (), {"name": "cuda"})()
    with pytest.raises(ValueError, match="max_grad_norm"):
        opt._check_capturable()


def test_a_non_capturable_optimizer_has_no_hyperparameter_writer_and_steps_as_before():
    p = np.ones(3, np.float32)
    opt = fastopt.Adam([p], backend="numpy")
    assert opt.capturable is False
    with pytest.raises(ValueError, match="not capturable"):
        opt.write_hyperparameters()
    opt.step([np.ones(3, np.float32)])
    assert np.all(p < 1)


def test_every_class_takes_capturable_and_says_so():
    for cls in (fastopt.Adam, fastopt.AdamW, fastopt.SGD, fastopt.RMSprop):
        assert "capturable=False (keyword)" in cls.__init__.__doc__
        assert cls([np.zeros(2, np.float32)], backend="numpy", capturable=False).capturable is False


def test_device_tolerance_is_stated_per_scalar():
    """The bound tests/test_cuda_device.py applies on a GPU, checked here to be a real bound (finite, and tight
    enough that a wrong step count, off by one, breaks it for every capturable spec at some early step)."""
    for name in CAPTURABLE:
        spec = SPECS[name]
        hyper = spec.normalize({**spec.defaults, **({"momentum": 0.9} if "momentum" in spec.defaults else {})})
        off_by_one = depends = False
        for step in range(1, 20):
            want = np.array(spec.scalars(hyper, step))
            wrong = np.array(spec.scalars(hyper, step + 1))
            tol = device_tolerance(spec, hyper, step)
            assert np.all(np.isfinite(tol))
            depends |= bool(np.any(wrong != want))
            off_by_one |= bool(np.any(np.abs(wrong - want) > tol))
        assert off_by_one or not depends, name   # (RMSprop's, Lion's... scalars do not depend on the step)


def device_tolerance(spec, hyper, step) -> np.ndarray:
    """Per scalar, the largest difference allowed between the device's fo_<family>_scalars and Python's."""
    want = np.abs(np.array(spec.scalars(hyper, step), dtype=np.float64))
    amplification = 1.0
    for value in itertools.chain.from_iterable(v if isinstance(v, tuple) else (v,) for v in hyper.values()):
        if isinstance(value, float) and 0 < value < 1:
            power = value ** step
            amplification = max(amplification, power / (1 - power))
    return DEVICE_TOLERANCE_ULPS * np.finfo(np.float64).eps * amplification * np.maximum(want, 1e-300)


def test_the_functional_api_validates_capturable_before_anything_runs():
    from fastopt import functional
    p = np.ones(3, np.float32)
    state = functional.init_state("adam", [p])
    with pytest.raises(TypeError, match="capturable"):
        functional.adam([p], [np.ones(3, np.float32)], state, step=1, capturable="yes")
    for backend in ("numpy", "cpu"):
        with pytest.raises(ValueError, match="capturable=True needs the cuda backend"):
            functional.adam([p], [np.ones(3, np.float32)], state, step=1, backend=backend, capturable=True)
    assert np.all(p == 1) and np.all(state["exp_avg"][0] == 0)   # nothing ran
    functional.adam([p], [np.ones(3, np.float32)], state, step=1, capturable=False)
    assert np.all(p < 1)
