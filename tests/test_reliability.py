"""Every way a user can change arrays behind the optimizer's back is followed or refused (issue 10, issue 9.2):
params edited in param_groups, copies, a failed step, damaged or foreign state, odd scalar and array types, threads.
"""

import copy
import pickle
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from conftest import BACKENDS
from registry import BUSY

import fastopt
from fastopt import functional
from fastopt.specs import SPECS

NUMPY_BACKENDS = [b for b in BACKENDS if b in ("numpy", "cpu")]


def rng_arrays(seed, shapes, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


# ---- 10.2: params replaced or appended through param_groups ---------------------------------------------------------

@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
def test_a_param_replaced_in_param_groups_is_followed_like_torch(backend):
    a, b = rng_arrays(0, [(1000,), (4,)])
    c = rng_arrays(1, [(10,)])[0]
    g0, g1 = rng_arrays(2, [(1000,), (4,)]), rng_arrays(3, [(10,), (4,)])
    opt = fastopt.Adam([a, b], lr=0.1, backend=backend)
    opt.step(g0)
    a_after_first = a.copy()
    opt.param_groups[0]["params"][0] = c  # torch allows it: c is a new param, b keeps its state
    c0 = c.copy()
    opt.step(g1)
    np.testing.assert_array_equal(a, a_after_first)  # the replaced array is no longer touched
    b_ref = rng_arrays(0, [(1000,), (4,)])[1]
    ref_b = fastopt.Adam([b_ref], lr=0.1, backend=backend)
    ref_b.step([g0[1]])
    ref_b.step([g1[1]])
    np.testing.assert_array_equal(b, b_ref)
    ref_c = fastopt.Adam([c0], lr=0.1, backend=backend)
    ref_c.step([g1[0]])
    np.testing.assert_array_equal(c, c0)
    saved = opt.state_dict()
    assert saved["state"][0]["step"] == 1 and saved["state"][1]["step"] == 2
    assert saved["state"][0]["exp_avg"].shape == (10,)


@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
def test_a_param_appended_or_the_list_replaced_is_followed(backend):
    a, b = rng_arrays(0, [(5,), (6,)])
    opt = fastopt.SGD([a], lr=0.1, momentum=0.9, backend=backend)
    opt.step([np.ones(5)])
    opt.param_groups[0]["params"].append(b)
    opt.step([np.ones(5), np.ones(6)])
    b0 = rng_arrays(0, [(5,), (6,)])[1]
    np.testing.assert_array_equal(b, b0 - 0.1)  # b's first step: a fresh momentum buffer
    with pytest.raises(ValueError, match=r"grads: expected 2 arrays"):
        opt.step([np.ones(5)])
    opt.param_groups[0]["params"] = [b]  # a new list holding one of the params
    opt.step([np.ones(6)])
    np.testing.assert_allclose(b, b0 - 0.1 - 0.1 * 1.9)  # b kept its buffer: 0.9 * 1 + 1


def test_a_bad_replacement_is_refused_and_changes_nothing():
    a, b = rng_arrays(0, [(5,), (6,)])
    opt = fastopt.Adam([a, b], lr=0.1)
    opt.step([np.ones(5), np.ones(6)])
    before = (a.copy(), b.copy(), opt.state_dict())
    readonly = np.zeros(5)
    readonly.setflags(write=False)
    for bad, error, message in [(readonly, ValueError, "read-only"), (b, ValueError, "share memory"),
                                (np.zeros(5, np.int32), TypeError, r"params\[0\]"), ("x", TypeError, "array")]:
        opt.param_groups[0]["params"][0] = bad
        with pytest.raises(error, match=message):
            opt.step([np.ones(5), np.ones(6)])
        np.testing.assert_array_equal(a, before[0])
        np.testing.assert_array_equal(b, before[1])
    opt.param_groups[0]["params"][0] = a  # restored: training goes on where it was
    opt.step([np.ones(5), np.ones(6)])
    assert opt.state_dict()["state"][0]["step"] == 2


# ---- 9.2 / 10.7: a failed step leaves nothing behind; groups are stepped all or none ---------------------------------

def test_a_step_that_fails_in_a_later_group_changes_and_caches_nothing(monkeypatch):
    a, b = rng_arrays(0, [(5,), (6,)])
    opt = fastopt.Adam([{"params": [a]}, {"params": [b]}], lr=0.1)
    grads = [[np.ones(5)], [np.ones(6)]]
    opt.param_groups[1]["lr"] = Fraction(1, 10)  # a Fraction is a real number: it works, converted once
    opt.step(grads)
    assert opt.state_dict()["state"][1]["step"] == 1
    before = (a.copy(), b.copy(), opt.state_dict())
    fresh = [[np.ones(5)], [np.ones(6)]]
    opt.param_groups[1]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step(fresh)
    assert [g.grads for g in opt._groups] == [tuple(grads[0]), tuple(grads[1])]  # fresh grads not recorded
    np.testing.assert_array_equal(a, before[0])  # group 0 was fine, and was not stepped either
    np.testing.assert_array_equal(b, before[1])
    opt.param_groups[1]["lr"] = 0.1

    calls = []

    def failing_run(self, grads, hyper, step):  # the second group's kernel fails after the checks
        calls.append(step)
        if len(calls) == 2:
            raise RuntimeError("simulated kernel failure")
        original(self, grads, hyper, step)

    original = functional.FusedUpdate.run
    monkeypatch.setattr(functional.FusedUpdate, "run", failing_run)
    with pytest.raises(RuntimeError, match="simulated"):
        opt.step(fresh)
    monkeypatch.undo()
    assert [g.grads for g in opt._groups] == [tuple(grads[0]), tuple(grads[1])]
    assert [s["step"] for s in opt.state_dict()["state"].values()] == [1, 1]
    assert before[2]["state"][0]["step"] == 1


def test_fraction_and_numpy_scalar_hyperparameters_reach_backends_as_floats():
    params = rng_arrays(0, [(7,), (3,)])
    by_float, by_odd = [p.copy() for p in params], [p.copy() for p in params]
    opt_f = fastopt.Adam([{"params": by_float[:1]}, {"params": by_float[1:], "lr": 0.25}], lr=0.1,
                         betas=(0.8, 0.9), backend="numpy")
    opt_o = fastopt.Adam([{"params": by_odd[:1]}, {"params": by_odd[1:], "lr": Fraction(1, 4)}],
                         lr=np.float64(0.1), betas=[Fraction(4, 5), np.float64(0.9)], backend="numpy")
    for g in [rng_arrays(s, [(7,), (3,)]) for s in range(3)]:
        opt_f.step([g[:1], g[1:]])
        opt_o.step([g[:1], g[1:]])
    for x, y in zip(by_float, by_odd):
        np.testing.assert_array_equal(x, y)


# ---- 10.1: copies own their arrays ----------------------------------------------------------------------------------

def _addresses(opt):
    out = []
    for group, record in zip(opt.param_groups, opt._groups):
        out += [p.__array_interface__["data"][0] for p in group["params"]]
        out += [a.__array_interface__["data"][0] for arrays in record.state.values() for a in arrays
            if a is not None]
    return set(out)


@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_copy_after_a_step_owns_its_arrays_and_continues_the_trajectory(backend, how, name):
    params = rng_arrays(0, [(3, 4), (5,)])
    grads = [rng_arrays(s, [(3, 4), (5,)]) for s in range(4)]
    opt = fastopt.OPTIMIZERS[name](params, backend=backend, **BUSY[name])
    opt.step(grads[0])
    clone = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert clone.backend is opt.backend
    assert not _addresses(clone) & _addresses(opt)
    original = [p.copy() for p in params]
    for g in grads[1:]:
        clone.step(g)
    for p, p0 in zip(params, original):  # stepping the copy leaves the original alone
        np.testing.assert_array_equal(p, p0)
    del opt  # and the copy never needed the original's memory
    reference = fastopt.OPTIMIZERS[name](rng_arrays(0, [(3, 4), (5,)]), backend=backend, **BUSY[name])
    for g in grads:
        reference.step(g)
    for x, y in zip(clone.param_groups[0]["params"], reference.param_groups[0]["params"]):
        np.testing.assert_array_equal(x, y)
    clone.add_param_group({"params": [np.zeros(2)]})  # the backend came back by name: the same object
    clone.step([grads[0], [np.ones(2)]])


# ---- 10.3: the functional layer checks state as strictly as params ---------------------------------------------------

def _functional_case(backend="cpu"):
    params = rng_arrays(0, [(6,), (3,)], np.float32)
    state = functional.init_state("adam", params, backend=backend)
    grads = rng_arrays(1, [(6,), (3,)], np.float32)
    return params, state, grads


def _readonly_bytes(n):
    return np.frombuffer(bytes(4 * n), dtype=np.float32)


STATE_DAMAGE = {
    "read-only array": (lambda p, s: s["exp_avg"].__setitem__(0, _readonly_bytes(6)), ValueError, "read-only"),
    "aliases its param": (lambda p, s: s["exp_avg"].__setitem__(1, p[1]), ValueError, "share memory"),
    "aliases another slot": (lambda p, s: s["exp_avg_sq"].__setitem__(0, s["exp_avg"][0]), ValueError,
                             "share memory"),
    "overlaps another state": (lambda p, s: s["exp_avg_sq"].__setitem__(0, s["exp_avg"][0].base[:6]),
                               ValueError, "share memory"),
    "wrong dtype": (lambda p, s: s["exp_avg"].__setitem__(0, np.zeros(6)), TypeError, "dtype"),
    "wrong shape": (lambda p, s: s["exp_avg"].__setitem__(0, np.zeros(5, np.float32)), ValueError, "shape"),
    "not an array": (lambda p, s: s["exp_avg"].__setitem__(0, [0.0] * 6), TypeError, "exp_avg"),
    "too few": (lambda p, s: s["exp_avg"].pop(), ValueError, "exp_avg"),
    "missing slot": (lambda p, s: s.pop("exp_avg_sq"), ValueError, "exp_avg_sq"),
    "non-contiguous": (lambda p, s: s["exp_avg"].__setitem__(0, np.zeros(12, np.float32)[::2]), ValueError,
                       "contiguous"),
}


@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
@pytest.mark.parametrize("case", sorted(STATE_DAMAGE))
def test_functional_state_is_checked_like_params(backend, case):
    params, state, grads = _functional_case(backend)
    damage, error, message = STATE_DAMAGE[case]
    state = {k: list(v) for k, v in state.items()}
    damage(params, state)
    before = [p.copy() for p in params], {k: [np.array(a, copy=True) for a in v] for k, v in state.items()
                                          if isinstance(v, list)}
    with pytest.raises(error, match=message):
        functional.adam(params, grads, state, step=1, backend=backend)
    for p, p0 in zip(params, before[0]):
        np.testing.assert_array_equal(p, p0)


def test_a_read_only_memmap_as_state_is_refused(tmp_path):
    params, state, grads = _functional_case()
    path = tmp_path / "m.bin"
    np.zeros(6, np.float32).tofile(path)
    state["exp_avg"][0] = np.memmap(path, dtype=np.float32, mode="r", shape=(6,))
    with pytest.raises(ValueError, match=r"state\['exp_avg'\]\[0\].*read-only"):
        functional.adam(params, grads, state, step=1)


# ---- 10.4: SGD keeps no step; its first step is the one that creates the buffer --------------------------------------

def test_sgd_saves_no_step_and_a_loaded_buffer_is_continued():
    params = rng_arrays(0, [(4,)])
    grads = [rng_arrays(s, [(4,)]) for s in range(6)]
    straight = [p.copy() for p in params]
    opt = fastopt.SGD(straight, lr=0.1, momentum=0.9, dampening=0.5)
    for g in grads:
        opt.step(g)
    first = [p.copy() for p in params]
    before = fastopt.SGD(first, lr=0.1, momentum=0.9, dampening=0.5)
    for g in grads[:3]:
        before.step(g)
    saved = before.state_dict()
    assert set(saved["state"][0]) == {"momentum_buffer"}  # torch's layout: no step
    after = fastopt.SGD(first, lr=0.1)
    after.load_state_dict(saved)
    for g in grads[3:]:
        after.step(g)
    np.testing.assert_array_equal(first[0], straight[0])


def test_sgd_momentum_switched_on_later_starts_its_buffer_like_torch():
    torch = pytest.importorskip("torch")
    p0 = rng_arrays(0, [(5,)])[0]
    grads = [rng_arrays(s, [(5,)])[0] for s in range(5)]
    ours = p0.copy()
    opt = fastopt.SGD([ours], lr=0.1, dampening=0.5, backend="numpy")
    theirs = torch.tensor(p0, requires_grad=True)
    topt = torch.optim.SGD([theirs], lr=0.1, dampening=0.5)
    for i, g in enumerate(grads):
        if i == 2:
            opt.param_groups[0]["momentum"] = 0.9
            topt.param_groups[0]["momentum"] = 0.9
        opt.step([g])
        theirs.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop"])
def test_a_torch_state_dict_with_tensors_loads_and_continues_torchs_trajectory(name):
    torch = pytest.importorskip("torch")
    hyper = {"sgd": dict(lr=0.1, momentum=0.9, dampening=0.3), "adam": dict(lr=0.05, amsgrad=True),
             "rmsprop": dict(lr=0.01, momentum=0.9, centered=True)}[name]
    p0 = rng_arrays(0, [(6,)])[0]
    grads = [rng_arrays(s, [(6,)])[0] for s in range(8)]
    theirs = torch.tensor(p0, requires_grad=True)
    topt = getattr(torch.optim, SPECS[name].class_name)([theirs], **hyper)
    for g in grads[:3]:
        theirs.grad = torch.tensor(g)
        topt.step()
    saved = topt.state_dict()  # tensors inside, `step` a tensor (none for SGD)
    ours = theirs.detach().numpy().copy()
    opt = fastopt.OPTIMIZERS[name]([ours], backend="numpy")
    opt.load_state_dict(saved)
    for g in grads[3:]:
        theirs.grad = torch.tensor(g)
        topt.step()
        opt.step([g])
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_functional_sgd_decides_the_first_step_by_the_buffer_like_torch():
    torch = pytest.importorskip("torch")
    p0 = rng_arrays(0, [(5,)])[0]
    grads = [rng_arrays(s, [(5,)])[0] for s in range(4)]
    ours = [p0.copy()]
    state = functional.init_state("sgd", ours, momentum=0.9, dampening=0.5)
    assert state == {}  # as torch: no buffer before the first step
    theirs = torch.tensor(p0, requires_grad=True)
    topt = torch.optim.SGD([theirs], lr=0.1, momentum=0.9, dampening=0.5)
    for g in grads:
        functional.sgd(ours, [g], state, lr=0.1, momentum=0.9, dampening=0.5, backend="numpy")
        theirs.grad = torch.tensor(g)
        topt.step()
    assert set(state) == {"momentum_buffer"}
    np.testing.assert_allclose(ours[0], theirs.detach().numpy(), rtol=1e-14, atol=1e-15)


def test_a_failed_first_functional_sgd_step_creates_no_buffer():
    state = {}
    with pytest.raises(ValueError, match="shape"):
        functional.sgd([np.zeros(3)], [np.zeros(4)], state, lr=0.1, momentum=0.9)
    assert state == {}  # so the next (good) step is still the first, as in torch


# ---- 10.6: damaged state is refused, naming the entry ----------------------------------------------------------------

def _adam_after_a_step():
    params = rng_arrays(0, [(3,), (2,)])
    opt = fastopt.Adam(params, lr=0.1)
    opt.step([np.ones(3), np.ones(2)])
    return opt, params


DAMAGED = {
    "slot missing everywhere": (lambda sd: [e.pop("exp_avg_sq") for e in sd["state"].values()], "exp_avg_sq"),
    "NaN step": (lambda sd: sd["state"][0].update(step=float("nan")), r"state\[0\]\['step'\]"),
    "inf step": (lambda sd: sd["state"][0].update(step=float("inf")), r"state\[0\]\['step'\]"),
    "absurd step": (lambda sd: sd["state"][1].update(step=10 ** 400), r"state\[1\]\['step'\]"),
    "NaN step array": (lambda sd: sd["state"][0].update(step=np.array(np.nan, np.float32)), r"state\[0\]"),
    "bool step": (lambda sd: sd["state"][0].update(step=True), r"state\[0\]\['step'\]"),
    "foreign slot": (lambda sd: sd["state"][0].update(momentum_buffer=np.zeros(3)), "momentum_buffer"),
    "keys made strings (JSON)": (lambda sd: sd.update(state={str(k): v for k, v in sd["state"].items()}), "'0'"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_state_is_refused_naming_the_entry(case):
    opt, params = _adam_after_a_step()
    saved = opt.state_dict()
    before = [p.copy() for p in params], opt.state_dict()
    damage, message = DAMAGED[case]
    damage(saved)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(saved)
    assert opt.state_dict()["state"][0]["step"] == before[1]["state"][0]["step"]
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["exp_avg"], before[1]["state"][0]["exp_avg"])


def test_an_adam_state_loaded_into_sgd_with_momentum_is_refused():
    opt, _ = _adam_after_a_step()
    sgd = fastopt.SGD(rng_arrays(0, [(3,), (2,)]), lr=0.1, momentum=0.9)
    saved = opt.state_dict()
    saved["param_groups"] = sgd.state_dict()["param_groups"]
    with pytest.raises(ValueError, match=r"state\[0\].*exp_avg"):
        sgd.load_state_dict(saved)


# ---- 10.7 / 10.8: ndarray subclasses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("shape", [(3, 3), (2, 3)])
def test_np_matrix_params_update_elementwise(backend, shape):
    plain = rng_arrays(0, [shape])[0]
    matrix = np.asmatrix(plain.copy())
    grads = [rng_arrays(s, [shape])[0] for s in range(3)]
    a = fastopt.Adam([plain], lr=0.1, amsgrad=True, backend=backend)
    b = fastopt.Adam([matrix], lr=0.1, amsgrad=True, backend=backend)
    for g in grads:
        a.step([g])
        b.step([np.asmatrix(g)])
    assert type(matrix) is np.matrix
    np.testing.assert_array_equal(np.asarray(matrix), plain)


@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
def test_memmap_params_take_ndarray_grads_and_the_other_way_round(backend, tmp_path):
    values = rng_arrays(0, [(8,)])[0]
    path = tmp_path / "p.bin"
    values.tofile(path)
    mapped = np.memmap(path, dtype=np.float64, mode="r+", shape=(8,))
    plain = values.copy()
    grad_file = tmp_path / "g.bin"
    np.ones(8).tofile(grad_file)
    mapped_grad = np.memmap(grad_file, dtype=np.float64, mode="r", shape=(8,))
    opt_a = fastopt.SGD([mapped], lr=0.1, backend=backend)
    opt_b = fastopt.SGD([plain], lr=0.1, backend=backend)
    opt_a.step([np.ones(8)])
    opt_b.step([mapped_grad])
    np.testing.assert_array_equal(np.asarray(mapped), values - 0.1)
    np.testing.assert_array_equal(plain, values - 0.1)


# ---- 10.9: environment and threads ----------------------------------------------------------------------------------

def test_a_bad_fastopt_backend_variable_is_named(monkeypatch):
    monkeypatch.setenv("FASTOPT_BACKEND", "gpu")
    with pytest.raises(ValueError, match="FASTOPT_BACKEND"):
        fastopt.Adam([np.zeros(3)])
    with pytest.raises(ValueError, match="FASTOPT_BACKEND"):
        functional.init_state("adam", [np.zeros(3)])


def test_one_optimizer_stepped_from_two_threads_runs_one_step_at_a_time(monkeypatch):
    params = [np.zeros(4)]
    opt = fastopt.SGD(params, lr=1.0, backend="numpy")
    inside, most = [0], [0]
    original = functional.FusedUpdate.run

    def slow_run(self, grads, hyper, step):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.002)  # let another thread in, if nothing keeps it out
        original(self, grads, hyper, step)
        inside[0] -= 1

    monkeypatch.setattr(functional.FusedUpdate, "run", slow_run)
    grads = [np.ones(4)]

    def train():
        for _ in range(20):
            opt.step(grads)

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1
    np.testing.assert_array_equal(params[0], -40.0)  # no step lost
