"""Host scalar state (fastopt.specs.HostScalar, OptimizerSpec.host_state/advance): per-param floats kept on the host
between steps, for state that is not a function of (hyperparameters, step) alone (torch's NAdam `mu_product`, ASGD
`eta`/`mu`).

The mechanism is tested on a toy spec that needs nothing else: SGD's kernel family whose learning rate is host state,
`lr_now`, starting at `lr` and multiplied by `gamma` after each step. Its trajectory depends on gamma's history, so
only a layer that carries the value through the steps gets it right; every expected value below is computed by hand.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from fastopt import functional, optim
from fastopt.specs import SGD, HostScalar, Hyper, OptimizerSpec, Slot, at_least_zero, boolean, register, replay_scalars


def _lr_init(h):
    return h["lr"]


def _never(h):
    return False


def _toy_advance(h, step, host):
    (lr_now,) = host
    scalars = (lr_now, -1.0 if h["maximize"] else 1.0, 0.0, 0.0, 0.0, 1.0)
    return scalars, (lr_now * h["gamma"],)


_TOY_HOST = (HostScalar("lr_now", _lr_init),)


def _toy_scalars(h, step):
    return replay_scalars(h, step, _TOY_HOST, _toy_advance)


def _no_momentum(h):
    return (False, False)


# Same kernel family, slots, scalars and flags as SGD (so it runs SGD's kernels); not registered, so no generic test
# sees it.
TOY = OptimizerSpec(
    name="toy_decay", class_name="ToyDecay", kernel="sgd",
    hypers=(Hyper("lr", 0.5, at_least_zero), Hyper("gamma", 0.5, at_least_zero), Hyper("maximize", False, boolean)),
    slots=(Slot("momentum_buffer", active=_never),),
    scalar_names=SGD.scalar_names, scalars=_toy_scalars,
    flag_names=SGD.flag_names, flags=_no_momentum,
    host_state=_TOY_HOST, advance=_toy_advance,
)


class Toy(optim.Optimizer):
    spec = TOY


BACKENDS = ["numpy", "cpu"]


def _params(dtype=np.float64):
    return [np.array([1.0, 2.0, 3.0], dtype), np.array([[4.0, 5.0]], dtype)]


def _ones(params):
    return [np.ones_like(p) for p in params]


# ---- the declaration -------------------------------------------------------------------------------------------------

def test_register_wants_host_state_and_advance_together():
    for broken in (dict(host_state=_TOY_HOST, advance=None), dict(host_state=(), advance=_toy_advance)):
        spec = OptimizerSpec(**{**TOY.__dict__, "name": "toy_broken", **broken})
        with pytest.raises(ValueError, match="host_state and advance"):
            register(spec)


def test_replay_scalars_follows_advance():
    h = {"lr": 0.5, "gamma": 0.5, "maximize": False}
    assert [replay_scalars(h, s, _TOY_HOST, _toy_advance)[0] for s in (1, 2, 3)] == [0.5, 0.25, 0.125]


def test_fused_update_needs_the_host_values():
    params = _params()
    state = {"momentum_buffer": None}
    update = functional.FusedUpdate(TOY, params, state, {"lr": 0.5, "gamma": 0.5, "maximize": False},
                                    optim.dispatch.get_backend("numpy"))
    with pytest.raises(TypeError, match="host"):
        update.run(_ones(params), {"lr": 0.5, "gamma": 0.5, "maximize": False}, 1)
    assert params[0].tolist() == [1.0, 2.0, 3.0]
    assert update.run(_ones(params), {"lr": 0.5, "gamma": 0.5, "maximize": False}, 1, host=(0.5,)) == (0.25,)
    assert params[0].tolist() == [0.5, 1.5, 2.5]


# ---- the classes -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_class_carries_host_state_through_steps_and_hyper_changes(backend):
    params = _params()
    opt = Toy(params, lr=0.5, gamma=0.5, backend=backend)
    grads = _ones(params)
    opt.step(grads)                       # lr_now 0.5, then 0.25
    opt.step(grads)                       # the same grads: the repeated-step path; lr_now 0.25, then 0.125
    opt.param_groups[0]["gamma"] = 2.0    # history: the next lr is still 0.125, then 0.25
    opt.step(grads)
    opt.param_groups[0]["lr"] = 100.0     # lr only sets the initial value: ignored after the first step
    opt.step(grads)
    assert params[0].tolist() == [1.0 - 0.5 - 0.25 - 0.125 - 0.25, 2.0 - 1.125, 3.0 - 1.125]
    entries = opt.state_dict()["state"]
    assert entries[0]["step"] == 4 and entries[1]["step"] == 4
    assert entries[0]["lr_now"] == 0.5 and type(entries[0]["lr_now"]) is float


def test_initial_value_is_taken_at_the_first_step():
    params = _params()
    opt = Toy(params, lr=0.5)
    assert opt.state_dict()["state"] == {}
    opt.param_groups[0]["lr"] = 0.125     # changed before the first step: init(hyper) sees it, as torch does
    opt.step(_ones(params))
    assert params[0].tolist() == [0.875, 1.875, 2.875]
    assert opt.state_dict()["state"][0]["lr_now"] == 0.0625


def test_params_with_different_host_values_run_apart():
    params = _params()
    opt = Toy(params, lr=0.5)
    opt.step(_ones(params))
    saved = opt.state_dict()
    saved["state"][1]["lr_now"] = 4.0
    opt.load_state_dict(saved)
    opt.step(_ones(params))
    assert params[0].tolist() == [0.25, 1.25, 2.25]       # lr_now 0.25
    assert params[1].tolist() == [[-0.5, 0.5]]            # lr_now 4.0
    state = opt.state_dict()["state"]
    assert (state[0]["lr_now"], state[1]["lr_now"]) == (0.125, 2.0)


def test_an_appended_param_starts_from_the_initial_value():
    params = _params()
    opt = Toy(params, lr=0.5)
    opt.step(_ones(params))
    new = np.array([10.0])
    opt.param_groups[0]["params"].append(new)
    opt.step(_ones(params) + [np.ones(1)])
    assert params[0].tolist() == [0.25, 1.25, 2.25] and new.tolist() == [9.5]
    state = opt.state_dict()["state"]
    assert (state[0]["lr_now"], state[2]["lr_now"], state[2]["step"]) == (0.125, 0.25, 1)


def test_a_failed_step_leaves_the_host_values():
    params = _params()
    opt = Toy(params, lr=0.5)
    opt.step(_ones(params))
    with pytest.raises(ValueError):
        opt.step([np.ones(3), np.ones(3)])   # the second grad has the wrong shape
    opt.param_groups[0]["gamma"] = -1.0
    with pytest.raises(ValueError, match="gamma"):
        opt.step(_ones(params))
    assert opt.state_dict()["state"][0]["lr_now"] == 0.25


@pytest.mark.parametrize("value", [0.25, np.float32(0.25), np.array(0.25), np.float64(0.25), 1])
def test_load_state_dict_takes_numbers_numpy_scalars_and_0d_arrays(value):
    params = _params()
    opt = Toy(params, lr=0.5)
    opt.step(_ones(params))
    saved = opt.state_dict()
    saved["state"][0]["lr_now"] = value
    opt.load_state_dict(saved)
    assert opt.state_dict()["state"][0]["lr_now"] == float(value)
    assert type(opt.state_dict()["state"][0]["lr_now"]) is float


def test_load_state_dict_takes_torch_tensors():
    torch = pytest.importorskip("torch")
    params = _params()
    opt = Toy(params, lr=0.5)
    opt.step(_ones(params))
    saved = opt.state_dict()
    saved["state"][0]["lr_now"] = torch.tensor(0.375)
    opt.load_state_dict(saved)
    assert opt.state_dict()["state"][0]["lr_now"] == 0.375


@pytest.mark.parametrize("value, error, match", [
    (float("nan"), ValueError, r"state\[0\]\['lr_now'\].*finite"),
    (float("inf"), ValueError, r"state\[0\]\['lr_now'\].*finite"),
    ("0.5", TypeError, r"state\[0\]\['lr_now'\]"),
    (True, TypeError, r"state\[0\]\['lr_now'\]"),
    (np.array([0.5]), ValueError, r"state\[0\]\['lr_now'\].*0-d"),
    (None, ValueError, r"state\[0\].*step 1 but no \['lr_now'\].*damaged"),
])
def test_load_state_dict_refuses_bad_host_values_and_changes_nothing(value, error, match):
    params = _params()
    opt = Toy(params, lr=0.5)
    opt.step(_ones(params))
    before = opt.state_dict()
    saved = copy.deepcopy(before)
    if value is None:
        del saved["state"][0]["lr_now"]
    else:
        saved["state"][0]["lr_now"] = value
    saved["param_groups"][0]["gamma"] = 3.0
    with pytest.raises(error, match=match):
        opt.load_state_dict(saved)
    assert opt.state_dict()["state"][0]["lr_now"] == 0.25 and opt.param_groups[0]["gamma"] == 0.5


def test_state_dict_round_trip_continues_the_run():
    a, b = _params(), _params()
    first, second = Toy(a, lr=0.5, gamma=3.0), Toy(b, lr=0.5)
    first.step(_ones(a))
    first.step(_ones(a))
    b[0][...], b[1][...] = a[0], a[1]
    second.load_state_dict(first.state_dict())
    first.step(_ones(a))
    second.step(_ones(b))
    assert a[0].tolist() == b[0].tolist() and second.state_dict()["state"][1]["lr_now"] == 0.5 * 27


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_carry_the_host_values(how):
    params = _params()
    opt = Toy(params, lr=0.5, gamma=3.0)
    opt.step(_ones(params))
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    twin_params = twin.param_groups[0]["params"]
    opt.step(_ones(params))
    twin.step(_ones(twin_params))
    assert twin_params[0].tolist() == params[0].tolist() == [1.0 - 0.5 - 1.5, 2.0 - 2.0, 3.0 - 2.0]
    assert twin.state_dict()["state"][0]["lr_now"] == opt.state_dict()["state"][0]["lr_now"] == 4.5


# ---- the functional layer --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_keeps_host_values_in_the_state_dict(backend):
    params = _params()
    state = functional.init_state(TOY, params, backend=backend, lr=0.5)
    assert state == {"lr_now": [0.5, 0.5]}
    first_list = state["lr_now"]
    functional.update(TOY, params, _ones(params), state, step=1, backend=backend, lr=0.5)
    functional.update(TOY, params, _ones(params), state, step=2, backend=backend, lr=0.5, gamma=4.0)
    assert params[0].tolist() == [0.25, 1.25, 2.25]
    assert state["lr_now"] == [1.0, 1.0] and first_list == [0.5, 0.5]   # a new list each step
    state["lr_now"] = [1.0, np.float32(0.5)]                              # per param, any real number type
    functional.update(TOY, params, _ones(params), state, step=3, backend=backend, lr=0.5)
    assert params[0].tolist() == [-0.75, 0.25, 1.25] and params[1].tolist() == [[2.75, 3.75]]
    assert state["lr_now"] == [0.5, 0.25]


@pytest.mark.parametrize("values, error, match", [
    ([0.5], ValueError, r"state\['lr_now'\]: expected a list of 2"),
    (None, ValueError, r"state\['lr_now'\]: expected a list of 2"),
    ([0.5, float("nan")], ValueError, r"state\['lr_now'\]\[1\].*finite"),
    ([0.5, "x"], TypeError, r"state\['lr_now'\]\[1\]"),
])
def test_functional_refuses_bad_host_values_and_changes_nothing(values, error, match):
    params = _params()
    state = functional.init_state(TOY, params, lr=0.5)
    state["lr_now"] = values
    with pytest.raises(error, match=match):
        functional.update(TOY, params, _ones(params), state, step=1, lr=0.5)
    assert params[0].tolist() == [1.0, 2.0, 3.0] and state["lr_now"] is values
