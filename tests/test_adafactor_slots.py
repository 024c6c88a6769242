"""Shaped state (fastopt.specs.Slot.shape): a slot whose shape, or presence, depends on its param, allocated,
checked, saved, loaded and copied by the generic layers (functional and the classes) with no special case.

A toy optimizer, not registered (so no generic test sees it), run on the numpy backend: `rows` holds per-row sums of
the gradient for params of 2 or more dims (shape [..., m, 1]), `vec` a running square for the others, `full` is an
ordinary slot shaped like its param.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from fastopt import functional, optim, reference
from fastopt.specs import Hyper, OptimizerSpec, Slot, at_least_zero


def _rows(param_shape, hyper):
    return (*param_shape[:-1], 1) if len(param_shape) >= 2 else None


def _vec(param_shape, hyper):
    return None if len(param_shape) >= 2 else tuple(param_shape)


def toyshaped(param, grad, rows, full, vec, lr):
    full += grad
    if rows is not None:
        rows += grad.sum(axis=-1, keepdims=True)
        param -= lr * (grad + rows)
    else:
        vec += grad * grad
        param -= lr * grad / np.sqrt(vec + 1)


def _scalars(h, step):
    return (h["lr"],)


TOY = OptimizerSpec(name="toyshaped", class_name="ToyShaped", kernel="toyshaped",
                    hypers=(Hyper("lr", 0.1, at_least_zero),),
                    slots=(Slot("rows", shape=_rows), Slot("full"), Slot("vec", shape=_vec)),
                    scalar_names=("lr",), scalars=_scalars)


class ToyShaped(optim.Optimizer):
    spec = TOY


SHAPES = [(3, 4), (5,), (2, 3, 2), ()]


@pytest.fixture(autouse=True)
def _toy_reference(monkeypatch):
    monkeypatch.setattr(reference, "toyshaped", toyshaped, raising=False)   # reference.function finds it


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in SHAPES]


def _grads(k):
    rng = np.random.default_rng(100 + k)
    return [rng.standard_normal(s) for s in SHAPES]


def _expected(steps):
    params = _params()
    slots = [reference.new_slots(TOY, p, {"lr": 0.1}) for p in params]
    for k in range(steps):
        for p, g, s in zip(params, _grads(k), slots):
            toyshaped(p, g, *s, 0.1)
    return params, slots


def test_slot_shape_for():
    hyper = {"lr": 0.1}
    assert TOY.slots[0].shape_for((3, 4), hyper) == (3, 1)
    assert TOY.slots[0].shape_for((5,), hyper) is None
    assert TOY.slots[1].shape_for((3, 4), hyper) == (3, 4)
    assert TOY.slots[2].shape_for((), hyper) == ()


def test_functional_allocates_and_steps():
    params = _params()
    state = functional.init_state(TOY, params, backend="numpy")
    assert [None if a is None else a.shape for a in state["rows"]] == [(3, 1), None, (2, 3, 1), None]
    assert [None if a is None else a.shape for a in state["vec"]] == [None, (5,), None, ()]
    assert [a.shape for a in state["full"]] == SHAPES
    for k in range(3):
        functional.update(TOY, params, _grads(k), state, step=k + 1, backend="numpy")
    want, slots = _expected(3)
    for i, p in enumerate(params):
        np.testing.assert_array_equal(p, want[i])
        for j, s in enumerate(TOY.slots):
            if slots[i][j] is None:
                assert state[s.name][i] is None
            else:
                np.testing.assert_array_equal(state[s.name][i], slots[i][j])


def test_functional_refuses_wrong_shapes_and_changes_nothing():
    params = _params()
    state = functional.init_state(TOY, params, backend="numpy")
    before = [p.copy() for p in params]
    bad = dict(state, rows=[np.zeros((3, 4)), None, state["rows"][2], None])
    with pytest.raises(ValueError, match=r"state\['rows'\]\[0\]: expected shape \(3, 1\)"):
        functional.update(TOY, params, _grads(0), bad, step=1, backend="numpy")
    stray = dict(state, vec=[np.zeros((3, 4)), state["vec"][1], None, state["vec"][3]])
    with pytest.raises(ValueError, match=r"state\['vec'\]\[0\]: expected None"):
        functional.update(TOY, params, _grads(0), stray, step=1, backend="numpy")
    lost = dict(state, rows=[None, None, state["rows"][2], None])
    with pytest.raises(ValueError, match=r"state\['rows'\]\[0\]: expected an array of shape \(3, 1\)"):
        functional.update(TOY, params, _grads(0), lost, step=1, backend="numpy")
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)


def test_class_state_dict_round_trip_and_copies():
    params = _params()
    opt = ToyShaped(params, backend="numpy")
    for k in range(2):
        opt.step(_grads(k))
    saved = opt.state_dict()
    assert sorted(saved["state"][0]) == ["full", "rows", "step"]
    assert sorted(saved["state"][1]) == ["full", "step", "vec"]
    assert saved["state"][2]["rows"].shape == (2, 3, 1) and saved["state"][3]["vec"].shape == ()
    twin = ToyShaped([p.copy() for p in params], backend="numpy")
    twin.load_state_dict(saved)
    clone, pickled = copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))
    for o in (opt, twin, clone, pickled):
        o.step(_grads(2))
    want, _ = _expected(3)
    for o in (opt, twin, clone, pickled):
        for p, w in zip(o.param_groups[0]["params"], want):
            np.testing.assert_array_equal(p, w)


def test_load_state_dict_refuses_wrong_shape_naming_the_entry():
    opt = ToyShaped(_params(), backend="numpy")
    opt.step(_grads(0))
    saved = opt.state_dict()
    wrong = copy.deepcopy(saved)
    wrong["state"][0]["rows"] = np.zeros((3, 4))
    fresh = ToyShaped(_params(), backend="numpy")
    with pytest.raises(ValueError, match=r"state\[0\]\['rows'\] has shape \(3, 4\), expected \(3, 1\)"):
        fresh.load_state_dict(wrong)
    stray = copy.deepcopy(saved)
    stray["state"][0]["vec"] = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"state\[0\] has \['vec'\], which toyshaped does not keep"):
        fresh.load_state_dict(stray)
    lost = copy.deepcopy(saved)
    del lost["state"][2]["rows"]
    with pytest.raises(ValueError, match=r"has step 1 but no \['rows'\]"):
        fresh.load_state_dict(lost)
    assert fresh.state_dict()["state"] == {}   # nothing changed
