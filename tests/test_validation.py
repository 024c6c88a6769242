"""Bad input raises a clear TypeError/ValueError that names the argument, and changes nothing."""

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # tests/registry.py draws hyperparameters with it
from conftest import BACKENDS, to_backend, to_numpy
from registry import BUSY

import fastopt
from fastopt.specs import SPECS


def snapshot(opt, params):
    return [to_numpy(p).copy() for p in params], opt.state_dict()


def assert_unchanged(opt, params, before):
    old_params, old_state = before
    new_params, new_state = snapshot(opt, params)
    for a, b in zip(old_params, new_params):
        np.testing.assert_array_equal(a, b)
    assert old_state["param_groups"] == new_state["param_groups"]
    assert old_state["state"].keys() == new_state["state"].keys()
    for key, entry in old_state["state"].items():
        for slot, value in entry.items():
            np.testing.assert_array_equal(new_state["state"][key][slot], value)


def started(backend, name="adam", dtype=np.float32):
    """An optimizer that has taken one step (so it has state to damage), its params, and good grads."""
    rng = np.random.default_rng(0)
    params = [to_backend(rng.standard_normal(s).astype(dtype), backend) for s in [(3, 4), (5,)]]
    grads = [to_backend(rng.standard_normal(p.shape).astype(dtype), backend) for p in params]
    opt = fastopt.OPTIMIZERS[name](params, **BUSY[name])
    opt.step(grads)
    return opt, params, grads


BAD_GRADS = {
    "missing": (lambda g: g[:1], ValueError, "grads"),
    "extra": (lambda g: g + [g[0].copy()], ValueError, "grads"),
    "None": (lambda g: [g[0], None], TypeError, r"grads\[1\]"),
    "not an array": (lambda g: [g[0], [1.0] * 5], TypeError, r"grads\[1\]"),
    "wrong shape": (lambda g: [g[0].reshape(4, 3), g[1]], ValueError, r"grads\[0\].*shape"),
    "wrong dtype": (lambda g: [g[0], g[1].astype(np.float64)], TypeError, r"grads\[1\].*dtype"),
    "non-contiguous": (lambda g: [g[0].T.copy().T, g[1]], ValueError, r"grads\[0\].*contiguous"),
    "not a list": (lambda g: g[0], TypeError, "grads"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(BAD_GRADS))
def test_bad_grads_are_refused_and_change_nothing(backend, case):
    opt, params, grads = started(backend)
    make, error, message = BAD_GRADS[case]
    before = snapshot(opt, params)
    with pytest.raises(error, match=message):
        opt.step(make(list(grads)))
    assert_unchanged(opt, params, before)


def test_a_bad_grad_in_a_later_group_changes_no_earlier_group():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(4), rng.standard_normal(3)
    opt = fastopt.SGD([{"params": [a]}, {"params": [b]}], lr=0.1)
    before = a.copy(), b.copy()
    with pytest.raises(ValueError, match="shape"):
        opt.step([[np.ones(4)], [np.ones(5)]])
    np.testing.assert_array_equal(a, before[0])
    np.testing.assert_array_equal(b, before[1])
    assert opt.state_dict()["state"] == {}


def test_dict_grads_must_have_the_params_names():
    opt = fastopt.Adam({"w": np.zeros(3), "b": np.zeros(2)})
    with pytest.raises(ValueError, match=r"missing \['b'\].*unexpected \['bias'\]"):
        opt.step({"w": np.ones(3), "bias": np.ones(2)})
    with pytest.raises(TypeError, match="dict"):
        opt.step([np.ones(3), np.ones(2)])


BAD_PARAMS = {
    "integer": (lambda: [np.arange(4)], TypeError, "floating-point"),
    "float16 on numpy": (lambda: [np.zeros(4, np.float16)], TypeError, "float16"),
    "non-contiguous": (lambda: [np.zeros((4, 4))[:, 1]], ValueError, "contiguous"),
    "the same array twice": (lambda: [np.zeros(4)] * 2, ValueError, "share memory"),
    "overlapping views": (lambda: (lambda x: [x[:5], x[3:]])(np.zeros(8)), ValueError, "share memory"),
    "not an array": (lambda: [[0.0, 1.0]], TypeError, r"params\[0\]"),
    "empty list": (lambda: [], ValueError, "at least one array"),
    "a set": (lambda: {np.zeros(3).tobytes()}, TypeError, "params"),
}


def _read_only():
    array = np.zeros(4)
    array.flags.writeable = False
    return [array]


BAD_PARAMS["read-only"] = (_read_only, ValueError, "read-only")


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_bad_params_are_refused(case):
    make, error, message = BAD_PARAMS[case]
    with pytest.raises(error, match=message):
        fastopt.Adam(make())


def bad_hyperparameters():
    """(optimizer, hyperparameter, bad value) for every hyperparameter: NaN, out of range, wrong type."""
    out_of_range = {"lr": -1e-3, "eps": 0.0, "momentum": -0.1, "weight_decay": -1e-4, "lr_decay": -1.0,
                    "initial_accumulator_value": -1.0, "rho": 1.5, "alpha": -0.01, "betas": (0.9, 1.0),
                    "dampening": float("inf")}
    cases = []
    for name, spec in SPECS.items():
        for h in spec.hypers:
            if isinstance(h.default, bool):
                cases.append((name, h.name, 1, TypeError))
            elif h.name == "betas":
                cases += [(name, "betas", (0.9, float("nan")), ValueError), (name, "betas", (0.9,), ValueError),
                          (name, "betas", (-0.1, 0.9), ValueError), (name, "betas", "0.9", TypeError)]
            else:
                cases += [(name, h.name, float("nan"), ValueError), (name, h.name, "0.1", TypeError)]
            if h.name in out_of_range:
                cases.append((name, h.name, out_of_range[h.name], ValueError))
    return cases


@pytest.mark.parametrize("name,hyper,value,error", bad_hyperparameters())
def test_bad_hyperparameters_are_refused_at_construction_and_at_step(name, hyper, value, error):
    with pytest.raises(error, match=hyper):
        fastopt.OPTIMIZERS[name]([np.zeros(3)], **{hyper: value})
    opt, params, grads = started("numpy", name)
    before = snapshot(opt, params)
    opt.param_groups[0][hyper] = value  # param_groups are live: a bad edit is caught at the next step
    with pytest.raises(error, match=hyper):
        opt.step(grads)
    opt.param_groups[0].update(before[1]["param_groups"][0])
    assert_unchanged(opt, params, before)


def test_nesterov_needs_momentum_and_no_dampening():
    with pytest.raises(ValueError, match="nesterov"):
        fastopt.SGD([np.zeros(3)], nesterov=True)
    with pytest.raises(ValueError, match="nesterov"):
        fastopt.SGD([np.zeros(3)], nesterov=True, momentum=0.9, dampening=0.1)


def test_unknown_hyperparameter_is_named():
    with pytest.raises(TypeError, match="betas2"):
        fastopt.Adam([np.zeros(3)], betas2=0.9)


BAD_STATES = {
    "wrong shape": (lambda sd: sd["state"][0].update(exp_avg=np.zeros(7, np.float32)), ValueError, "shape"),
    "negative step": (lambda sd: sd["state"][0].update(step=-1), ValueError, "step"),
    "fractional step": (lambda sd: sd["state"][1].update(step=1.5), ValueError, "step"),
    "group count": (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), ValueError, "groups"),
    "bad lr": (lambda sd: sd["param_groups"][0].update(lr=-1.0), ValueError, "lr"),
    "slot on one param only": (lambda sd: sd["state"][1].pop("exp_avg"), ValueError, "exp_avg"),
    "integer state": (lambda sd: sd["state"][0].update(exp_avg=np.zeros((3, 4), np.int64)), TypeError, "exp_avg"),
    "not a state dict": (lambda sd: sd.pop("state"), TypeError, "state_dict"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_bad_state_dicts_are_refused_and_change_nothing(case):
    opt, params, grads = started("numpy")
    saved = opt.state_dict()
    opt.step(grads)
    before = snapshot(opt, params)
    damage, error, message = BAD_STATES[case]
    damage(saved)
    with pytest.raises(error, match=message):
        opt.load_state_dict(saved)
    assert_unchanged(opt, params, before)


def test_mixing_array_kinds_or_backends_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        fastopt.Adam([np.zeros(3)], backend="gpu")
    with pytest.raises(TypeError, match="cuda"):
        fastopt.Adam([np.zeros(3)], backend="cuda")
