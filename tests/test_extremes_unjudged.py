"""The float extremes where the oracle cannot judge: the cpu backend and the host build of the CUDA kernels against
the reference, bit for bit, inf and NaN included.

Optimizers that follow optax have no `*-extreme_*` golden files: XLA on CPU flushes subnormal results to zero, so at
make_golden's smallest magnitudes (and with a subnormal eps) optax differs from IEEE arithmetic. What the extreme
files check for the others (that the kernels perform the reference's operations in its order, where the order
decides overflow and underflow) is checked here on the same data (make_golden's magnitudes and draws), without an
oracle, for every record's `extreme_unjudged` configurations.
"""

from __future__ import annotations

import numpy as np
import pytest
from golden.make_golden import EXTREME_STEPS, TINY_EPS, draw_extreme

from fastopt import reference
from fastopt.records import RECORDS
from fastopt.specs import SPECS

CONFIGS = {name: record.extreme_unjudged for name, record in RECORDS.items() if record.extreme_unjudged}
CASES = [(name, config, dtype) for name, configs in CONFIGS.items() for config in configs
         for dtype in ("float32", "float64")]


def _case(name, config, dtype):
    spec = SPECS[name]
    hyper = dict(spec.defaults)
    hyper.update({k: TINY_EPS[dtype] if v == "tiny" else v for k, v in CONFIGS[name][config].items()})
    spec.validate(hyper)
    params0, grads = draw_extreme(name, config, dtype)
    return spec, hyper, [p.astype(dtype) for p in params0], [g.astype(dtype) for g in grads]


def _replay(spec, hyper, params0, grads, events=None):
    """The reference: params after every step, and the final slots of each param. `events`, a set, collects the
    floating-point exceptions NumPy reports on the way ("overflow", "underflow", ...)."""
    fn = reference.function(spec.kernel)
    params = [p.copy() for p in params0]
    slots = [[np.full_like(p, s.init(hyper)) for s in spec.slots] for p in params]
    trajectory = []
    record = {"all": "ignore"} if events is None else {"all": "call", "call": lambda kind, flag: events.add(kind)}
    with np.errstate(**record):   # overflow and underflow on purpose
        for step in range(1, EXTREME_STEPS + 1):
            scalars = spec.scalars(hyper, step)
            for p, g, s in zip(params, grads, slots):
                fn(p, g[step - 1], *s, *scalars, *spec.flags(hyper))
            trajectory.append([p.copy() for p in params])
    return trajectory, slots


def test_the_optax_optimizers_are_covered():
    assert {"lion", "signum", "adabelief", "yogi", "adan", "adopt", "ademamix"} <= set(CONFIGS)


@pytest.mark.parametrize("name, config, dtype", CASES)
def test_cpu_backend_matches_the_reference_at_the_extremes(name, config, dtype):
    import fastopt
    from fastopt import dispatch

    why_not = dispatch.available_backends()["cpu"]
    if why_not:
        pytest.skip(f"the cpu backend is not available here: {why_not}")
    spec, hyper, params0, grads = _case(name, config, dtype)
    want, want_slots = _replay(spec, hyper, params0, grads)
    params = [p.copy() for p in params0]
    opt = fastopt.OPTIMIZERS[name](params, backend="cpu", **hyper)
    for step in range(EXTREME_STEPS):
        opt.step([g[step] for g in grads])
        for i, p in enumerate(params):
            np.testing.assert_array_equal(p, want[step][i], err_msg=f"{name}/{config}: param {i}, step {step + 1}")
    state = opt.state_dict()["state"]
    for i in range(len(params)):
        for s, value in zip(spec.slots, want_slots[i]):
            np.testing.assert_array_equal(state[i][s.name], value, err_msg=f"{name}/{config}: {s.name} of {i}")


@pytest.mark.parametrize("name, config, dtype", CASES)
def test_cuda_host_build_matches_the_reference_at_the_extremes(name, config, dtype):
    from fastopt import cuda_build

    if cuda_build.find_cxx() is None:
        pytest.skip("no C++ compiler (g++) to build the CUDA kernels for the host")
    spec, hyper, params0, grads = _case(name, config, dtype)
    want, want_slots = _replay(spec, hyper, params0, grads)
    kernels = cuda_build.HostKernels(spec.kernel)
    for i, p0 in enumerate(params0):
        p = p0.copy()
        slots = [np.full_like(p, s.init(hyper)) for s in spec.slots]
        for step in range(1, EXTREME_STEPS + 1):
            kernels.flat(p, grads[i][step - 1].copy(), slots, spec.scalars(hyper, step), spec.flags(hyper))
            np.testing.assert_array_equal(p, want[step - 1][i], err_msg=f"{name}/{config}: param {i}, step {step}")
        for s, value, expected in zip(spec.slots, slots, want_slots[i]):
            np.testing.assert_array_equal(value, expected, err_msg=f"{name}/{config}: {s.name} of param {i}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_extreme_data_reaches_the_float_limits(name):
    """Bit-for-bit agreement proves little unless the runs reach the limits: across its configurations, each
    optimizer's reference runs must report its record's `extreme_events` in both dtypes, and those that overflow must
    end with inf or NaN in their state."""
    expected = RECORDS[name].extreme_events
    for dtype in ("float32", "float64"):
        events, nonfinite = set(), 0
        for config in CONFIGS[name]:
            spec, hyper, params0, grads = _case(name, config, dtype)
            _, slots = _replay(spec, hyper, params0, grads, events)
            nonfinite += sum(int(np.sum(~np.isfinite(a))) for arrays in slots for a in arrays)
        assert expected <= events, f"{name} {dtype}: only {sorted(events)}"
        assert nonfinite or "overflow" not in expected, f"{name} {dtype}: no inf or NaN in the final state"
