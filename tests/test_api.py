"""The torch-style API: structures of params and grads, param groups, live hyperparameters, state_dict, functional."""

import pickle

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # tests/registry.py draws hyperparameters with it
from conftest import BACKENDS, to_backend, to_numpy
from registry import BUSY, HYPERPARAMETERS
from tolerances import EXACT_BACKENDS, assert_close

import fastopt
from fastopt import functional
from fastopt.specs import SPECS


def problem(seed=0, shapes=((4, 3), (5,), (0,))):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(8)]
    return params, grads


def test_every_spec_and_shorthand_has_a_class_and_a_registry_entry():
    assert set(SPECS) <= set(fastopt.OPTIMIZERS)
    assert set(SPECS) == set(HYPERPARAMETERS) == set(BUSY)
    for cls in fastopt.OPTIMIZERS.values():
        assert getattr(fastopt, cls.__name__) is cls


def test_defaults_are_torchs():
    p = [np.zeros(3)]
    assert fastopt.SGD(p).defaults == dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                                           maximize=False)
    assert fastopt.Adam(p).defaults["betas"] == (0.9, 0.999) and fastopt.Adam(p).defaults["eps"] == 1e-8
    assert fastopt.AdamW(p).defaults["weight_decay"] == 1e-2
    assert fastopt.Momentum(p).defaults["momentum"] == 0.9 and not fastopt.Momentum(p).defaults["nesterov"]
    assert fastopt.Nesterov(p).defaults["nesterov"] and fastopt.Nesterov(p).defaults["momentum"] == 0.9
    assert fastopt.Adadelta(p).defaults["lr"] == 1.0 and fastopt.Adagrad(p).defaults["eps"] == 1e-10
    assert fastopt.RMSprop(p).defaults["alpha"] == 0.99


def test_shorthands_are_sgd_with_momentum():
    params, grads = problem()
    a, b = [p.copy() for p in params], [p.copy() for p in params]
    opt_a, opt_b = fastopt.Nesterov(a, lr=0.1), fastopt.SGD(b, lr=0.1, momentum=0.9, nesterov=True)
    for g in grads:
        opt_a.step(g)
        opt_b.step(g)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dict_params_take_dict_grads_and_match_list_params(backend):
    params, grads = problem()
    names = ["w", "b", "empty"]
    as_list = [to_backend(p, backend) for p in params]
    as_dict = {n: to_backend(p, backend) for n, p in zip(names, params)}
    opt_list, opt_dict = fastopt.Adam(as_list, lr=0.1), fastopt.Adam(as_dict, lr=0.1)
    for g in grads:
        opt_list.step([to_backend(x, backend) for x in g])
        opt_dict.step({n: to_backend(x, backend) for n, x in zip(reversed(names), reversed(g))})  # order-free
    for n, p in zip(names, as_list):
        np.testing.assert_array_equal(to_numpy(as_dict[n]), to_numpy(p))
    assert opt_dict.state_dict()["param_groups"][0]["param_names"] == names


def test_param_groups_have_their_own_hyperparameters():
    params, grads = problem()
    grouped = [p.copy() for p in params]
    separate = [p.copy() for p in params]
    opt = fastopt.SGD([{"params": grouped[:1], "lr": 0.5}, {"params": grouped[1:]}], lr=0.1, momentum=0.9)
    first = fastopt.SGD(separate[:1], lr=0.5, momentum=0.9)
    rest = fastopt.SGD(separate[1:], lr=0.1, momentum=0.9)
    for g in grads:
        opt.step([g[:1], g[1:]])
        first.step(g[:1])
        rest.step(g[1:])
    for x, y in zip(grouped, separate):
        np.testing.assert_array_equal(x, y)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_lr_set_in_param_groups_takes_effect_without_a_new_plan(backend):
    params, grads = problem()
    live = [to_backend(p, backend) for p in params]
    fresh = [to_backend(p, backend) for p in params]
    opt = fastopt.Adam(live, lr=0.1)
    opt.step([to_backend(x, backend) for x in grads[0]])
    plan = opt._groups[0].updates
    opt.param_groups[0]["lr"] = 0.0
    opt.step([to_backend(x, backend) for x in grads[1]])
    assert opt._groups[0].updates is plan  # nothing was rebuilt or recompiled
    reference = fastopt.Adam(fresh, lr=0.1)
    reference.step([to_backend(x, backend) for x in grads[0]])
    for x, y in zip(live, fresh):  # lr 0: params unchanged by the second step
        np.testing.assert_array_equal(to_numpy(x), to_numpy(y))
    assert opt.state_dict()["state"][0]["step"] == 2


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("save_on", BACKENDS)
@pytest.mark.parametrize("load_on", BACKENDS)
def test_resuming_from_a_pickled_state_dict_is_bitwise_the_same_trajectory(name, save_on, load_on):
    hyper = BUSY[name]
    params, grads = problem(seed=5)
    straight = [to_backend(p, load_on) for p in params]
    opt = fastopt.OPTIMIZERS[name](straight, **hyper)
    for g in grads:
        opt.step([to_backend(x, load_on) for x in g])

    first = [to_backend(p, save_on) for p in params]
    before = fastopt.OPTIMIZERS[name](first, **hyper)
    for g in grads[:3]:
        before.step([to_backend(x, save_on) for x in g])
    saved = pickle.loads(pickle.dumps(before.state_dict()))
    resumed_params = [to_backend(to_numpy(p), load_on) for p in first]
    after = fastopt.OPTIMIZERS[name](resumed_params, lr=123.0)  # hyperparameters come back from the state too
    after.load_state_dict(saved)
    for g in grads[3:]:
        after.step([to_backend(x, load_on) for x in g])
    end, expected = after.state_dict(), opt.state_dict()
    assert end["param_groups"] == expected["param_groups"]
    assert end["state"].keys() == expected["state"].keys()
    bit_exact = save_on == load_on or {save_on, load_on} <= EXACT_BACKENDS | {"numpy"}
    for x, y in zip(resumed_params, straight):
        if bit_exact:  # the same arithmetic from the same state
            np.testing.assert_array_equal(to_numpy(x), to_numpy(y))
        else:  # the first steps ran on other kernels: equal within the kernels' tolerance
            assert_close(to_numpy(x), to_numpy(y), np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trips_exactly_and_is_a_copy(backend):
    params, grads = problem()
    arrays = [to_backend(p, backend) for p in params]
    opt = fastopt.Adam(arrays, amsgrad=True)
    assert opt.state_dict()["state"] == {}  # like torch: no state before the first step
    for g in grads[:2]:
        opt.step([to_backend(x, backend) for x in g])
    saved = opt.state_dict()
    assert set(saved["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert all(isinstance(v, np.ndarray) for k, v in saved["state"][0].items() if k != "step")
    snapshot = pickle.dumps(saved)
    opt.step([to_backend(x, backend) for x in grads[2]])
    assert pickle.dumps(saved) == snapshot  # later steps do not write into a saved state
    opt.load_state_dict(pickle.loads(snapshot))
    again = opt.state_dict()
    for key, entry in saved["state"].items():
        for slot, value in entry.items():
            np.testing.assert_array_equal(again["state"][key][slot], value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_functional_api_matches_the_class(backend, name):
    hyper = BUSY[name]
    params, grads = problem(seed=9)
    by_class = [to_backend(p, backend) for p in params]
    by_function = [to_backend(p, backend) for p in params]
    opt = fastopt.OPTIMIZERS[name](by_class, **hyper)
    state = functional.init_state(name, by_function, **hyper)
    for step, g in enumerate(grads, start=1):
        opt.step([to_backend(x, backend) for x in g])
        getattr(functional, name)(by_function, [to_backend(x, backend) for x in g], state, step=step, **hyper)
    for x, y in zip(by_class, by_function):
        np.testing.assert_array_equal(to_numpy(x), to_numpy(y))


def test_flatten_gives_views_of_one_buffer_and_trains_the_same():
    params, grads = problem()
    buffer, views = fastopt.flatten(params)
    assert buffer.size == sum(p.size for p in params)
    for v, p in zip(views, params):
        assert v.base is buffer and v.shape == p.shape
        np.testing.assert_array_equal(v, p)
    separate = [p.copy() for p in params]
    a, b = fastopt.Adam(views, lr=0.1), fastopt.Adam(separate, lr=0.1)
    for g in grads:
        a.step(g)
        b.step(g)
    for x, y in zip(views, separate):
        np.testing.assert_array_equal(x, y)


def test_reusing_grad_arrays_in_place_is_seen_by_the_next_step():
    # The cpu plan caches its view of the grads by identity: writing new values into them must still count.
    params, grads = problem()
    reused = [g.copy() for g in grads[0]]
    a, b = [p.copy() for p in params], [p.copy() for p in params]
    opt_a, opt_b = fastopt.Adam(a, lr=0.1), fastopt.Adam(b, lr=0.1)
    for g in grads:
        for target, value in zip(reused, g):
            target[...] = value
        opt_a.step(reused)
        opt_b.step([x.copy() for x in g])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_changing_a_flag_mid_training_allocates_the_new_state():
    params, grads = problem()
    opt = fastopt.Adam([p.copy() for p in params], lr=0.1)
    opt.step(grads[0])
    opt.param_groups[0]["amsgrad"] = True
    opt.step(grads[1])
    assert "max_exp_avg_sq" in opt.state_dict()["state"][0]


def test_state_of_a_group_is_one_contiguous_buffer_per_slot():
    # With flattened params and grads, params, grads and state are all single spans: the cuda backend's flat path.
    params, grads = problem()
    _, views = fastopt.flatten(params)
    opt = fastopt.Adam(views, amsgrad=True)
    opt.step(grads[0])
    for slot in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        arrays = opt._groups[0].state[slot]
        base = arrays[0].base
        assert base is not None and all(a.base is base for a in arrays)
        start = arrays[0].__array_interface__["data"][0]
        offsets = [a.__array_interface__["data"][0] - start for a in arrays if a.size]
        assert offsets == [0, 12 * 8]  # back to back, in params' order (float64: 8 bytes; the third is empty)
        assert start % 16 == views[0].__array_interface__["data"][0] % 16  # and aligned like the params
