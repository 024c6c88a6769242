"""Lion, Signum, AdaBelief and Yogi at the float extremes: the cpu backend and the host build of the CUDA kernels
against the reference, bit for bit, inf and NaN included.

Their oracle, optax, has no `*-extreme_*` golden files: XLA on CPU flushes subnormal results to zero, so at
make_golden's smallest magnitudes (and with a subnormal eps) optax differs from IEEE arithmetic. Measured offline
with optax 0.2.8, per magnitude: at every other magnitude the references equal optax bit for bit (Yogi's float64
overflow runs within 2 ulp), with inf and NaN in the same places. Here the kernels are checked against the reference
on make_golden's extreme data, subnormal eps included, without an oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
from golden.make_golden import EXTREME_STEPS, TINY_EPS, draw_extreme

from fastopt import reference
from fastopt.specs import SPECS

CONFIGS = {
    "lion": {"default": {}, "wd_maximize": {"lr": 1e-3, "weight_decay": 0.1, "maximize": True}},
    "signum": {"default": {}, "wd_maximize": {"lr": 1e-3, "weight_decay": 0.1, "maximize": True}},
    "adabelief": {"default": {}, "nesterov_wd": {"nesterov": True, "weight_decay": 0.01},
                  "tiny_eps": {"lr": 1e-5, "eps": "tiny", "eps_root": 0.0}},
    "yogi": {"default": {}, "wd_init": {"weight_decay": 0.01, "initial_accumulator_value": 0.5},
             "tiny_eps": {"lr": 1e-5, "eps": "tiny", "maximize": True},
             # zero initial state: where the draw's gradient is 0, exp_avg_sq stays 0 and the step divides by eps alone
             "no_init": {"initial_accumulator_value": 0.0}},
}
# What the reference runs must report across an optimizer's configurations, so that agreement means something: Lion
# and Signum square nothing (their state is an average of gradients, their step lr * sign), so at these magnitudes
# they only underflow (the smallest gradients' averages go subnormal); AdaBelief and Yogi square the gradient.
EVENTS = {"lion": {"underflow"}, "signum": {"underflow"}, "adabelief": {"overflow", "underflow"},
          "yogi": {"overflow", "underflow"}}
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
    """The reference's params after every step and final slots; `events` (a set) collects the floating-point
    exceptions NumPy reports on the way."""
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
    """Bit-for-bit agreement proves little unless the runs reach the limits: each optimizer's reference runs must
    report EVENTS in both dtypes; those that overflow must end with inf or NaN in their state."""
    for dtype in ("float32", "float64"):
        events, nonfinite = set(), 0
        for config in CONFIGS[name]:
            spec, hyper, params0, grads = _case(name, config, dtype)
            _, slots = _replay(spec, hyper, params0, grads, events)
            nonfinite += sum(int(np.sum(~np.isfinite(a))) for arrays in slots for a in arrays)
        assert EVENTS[name] <= events, f"{name} {dtype}: only {sorted(events)}"
        assert nonfinite or "overflow" not in EVENTS[name], f"{name} {dtype}: no inf or NaN in the final state"
