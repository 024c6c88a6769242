"""The capturable step's schedules on the step count, beyond tests/test_capturable.py's random hyperparameters
(which vary lr, eps, weight decay, betas and booleans only): AdEMAMix's alpha and beta3 warm-ups (every branch of
fastopt.optimizers.ademamix.warmups: during and after each warm-up, beta1 = 0, beta1 >= beta3) and RAdam's
rectification for beta2 near its thresholds. The host build runs fo_<family>_scalars and must give the spec's Python
scalars bit for bit; then the plan's capturable launches must equal the host-scalar launches through the CuPy
stand-in with the warm-ups on (tests/test_cuda_host.py's check, with these hyperparameters)."""

from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest
from test_cuda_host import fake_cupy  # noqa: F401  (the stand-in fixture the reused check takes)
from test_cuda_host import test_capturable_steps_equal_eager_steps_bit_for_bit_and_follow_an_lr_change as _stand_in

from fastopt import codegen, cuda_build
from fastopt.specs import SPECS

needs_cxx = pytest.mark.skipif(cuda_build.find_cxx() is None, reason="no C++ compiler (g++) for the host build")


def _ademamix_hypers():
    spec = SPECS["ademamix"]
    betas = [(0.9, 0.999, 0.9999), (0.0, 0.999, 0.999), (0.5, 0.9, 0.99), (0.99, 0.999, 0.9), (0.9, 0.5, 0.9)]
    for b, alpha, t_alpha, t_beta3 in itertools.product(betas, (0.0, 5.0, 2.5), (0, 1, 3, 250), (0, 1, 4, 250)):
        yield spec.normalize({**spec.defaults, "betas": b, "alpha": alpha, "alpha_warmup": t_alpha,
                              "beta3_warmup": t_beta3})


def _radam_hypers():
    spec = SPECS["radam"]
    # rho_inf = 2 / (1 - beta2) - 1: below 5 (never rectified), 5 (2/3), 2 (1/3: rho_inf - 2 = 0), just above 5
    for beta2 in (0.0, 1 / 3, 0.5, 2 / 3, 0.7, 0.75, 0.9, 0.999, 0.9999):
        yield spec.normalize({**spec.defaults, "betas": (0.9, beta2)})


@needs_cxx
@pytest.mark.parametrize("name,hypers", [("ademamix", _ademamix_hypers), ("radam", _radam_hypers)])
def test_device_scalars_are_pythons_through_the_schedules(name, hypers):
    spec = SPECS[name]
    fn = getattr(cuda_build.build_host_library(spec.kernel), f"fo_host_{spec.kernel}_scalars")
    out = np.empty(len(spec.scalar_names))
    seen = set()
    for hyper in hypers():
        values = np.array(codegen.hyper_values(spec.kernel, hyper), dtype=np.float64)
        for step in range(1, 300):
            fn(values.ctypes.data, ctypes.c_longlong(step), out.ctypes.data)
            want = np.array(spec.scalars(hyper, step), dtype=np.float64)
            if not np.array_equal(out, want):
                bad = [(n, g, w) for n, g, w in zip(spec.scalar_names, out, want) if g != w]
                pytest.fail(f"{name} {hyper} step {step}: {bad}")
            seen.add(tuple(want[-2:]) if name == "radam" else (want[7] != hyper["betas"][2], want[9] != hyper["alpha"]))
    # the grid reaches both sides of each schedule
    if name == "ademamix":
        assert {(True, True), (False, False), (True, False), (False, True)} <= seen
    else:
        assert {r for _, r in seen} == {0.0, 1.0}


@pytest.mark.parametrize("layout", ["separate", "flat-buffers"])
@pytest.mark.parametrize("name,hyper", [
    ("ademamix", {"alpha": 2.0, "alpha_warmup": 3, "beta3_warmup": 5, "betas": (0.5, 0.99, 0.999)}),
    ("ademamix", {"alpha_warmup": 20, "beta3_warmup": 6, "betas": (0.0, 0.99, 0.999), "weight_decay": 0.01}),
    ("radam", {"betas": (0.8, 0.75), "decoupled_weight_decay": True, "weight_decay": 0.01}),
    ("adopt", {"nesterov": True, "use_clipping": True, "weight_decay": 0.01})])
def test_capturable_steps_equal_eager_steps_with_the_schedules_on(fake_cupy, name, hyper, layout):  # noqa: F811
    _stand_in(fake_cupy, name, hyper, layout)
