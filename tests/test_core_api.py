"""What a first-time user meets (issue 11.6) and the functional API's speed mechanism (issue 11.3)."""

import inspect
import os
import pydoc
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from registry import BUSY

import fastopt
from fastopt import dispatch, functional
from fastopt.specs import SPECS

ROOT = Path(__file__).resolve().parent.parent


# ---- signatures ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(fastopt.OPTIMIZERS))
def test_classes_have_real_signatures_from_the_spec(name):
    cls = fastopt.OPTIMIZERS[name]
    signature = inspect.signature(cls)
    parameters = list(signature.parameters.values())
    assert parameters[0].name == "params"
    assert parameters[1].name == "lr" and parameters[1].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert parameters[-1].name == "backend" and parameters[-1].kind is inspect.Parameter.KEYWORD_ONLY
    common = parameters[-4:-1]  # every optimizer: clipping by the total norm and capturable, keyword-only
    assert [(p.name, p.default, p.kind) for p in common] == [
        ("max_grad_norm", None, inspect.Parameter.KEYWORD_ONLY), ("norm_type", 2.0, inspect.Parameter.KEYWORD_ONLY),
        ("capturable", False, inspect.Parameter.KEYWORD_ONLY)]
    defaults = {p.name: p.default for p in parameters[1:-4]}
    assert defaults == {**cls.spec.defaults, **cls.default_overrides}
    assert f"{cls.__name__}(params, lr=" in pydoc.render_doc(cls)  # help() shows it


def test_lr_and_more_can_be_positional_as_in_torch():
    a, b = [np.ones(3)], [np.ones(3)]
    fastopt.SGD(a, 0.1, 0.9).step([np.ones(3)])
    fastopt.SGD(b, lr=0.1, momentum=0.9).step([np.ones(3)])
    np.testing.assert_array_equal(a[0], b[0])
    opt = fastopt.Adam([np.ones(3)], 0.01, (0.8, 0.9))
    assert opt.defaults["lr"] == 0.01 and opt.defaults["betas"] == (0.8, 0.9)
    with pytest.raises(TypeError, match="multiple values for argument 'lr'"):
        fastopt.SGD([np.ones(3)], 0.1, lr=0.2)
    with pytest.raises(TypeError, match="positional"):
        fastopt.SGD([np.ones(3)], 0.1, 0.9, 0.0, 0.0, False, True, "cpu")
    with pytest.raises(TypeError):
        fastopt.Adam([np.ones(3)], 0.1, (0.9, 0.999), 1e-8, 0.0, False, True)  # maximize is keyword-only


# ---- messages that say what to pass -------------------------------------------------------------------------------

def test_torch_tensors_and_parameter_generators_are_refused_saying_what_to_pass():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    with pytest.raises(TypeError, match=r"model\.parameters\(\).*detach\(\)\.numpy\(\).*fastopt\.torch"):
        fastopt.Adam(model.parameters())
    with pytest.raises(TypeError, match=r"params\[0\].*detach\(\)\.numpy\(\)"):
        fastopt.Adam(list(model.parameters()))
    params = [p.detach().numpy() for p in model.parameters()]
    opt = fastopt.Adam(params)
    with pytest.raises(TypeError, match=r"grads\[0\].*detach\(\)\.numpy\(\)"):
        opt.step([torch.zeros(2, 3), torch.zeros(2)])
    with pytest.raises(TypeError, match=r"params\[0\].*detach\(\)\.numpy\(\)"):
        functional.init_state("adam", [torch.zeros(3)])


def test_a_float64_grad_for_a_float32_param_says_astype():
    opt = fastopt.Adam([np.zeros(3, np.float32)])
    with pytest.raises(TypeError, match=r"grads\[0\].*float32.*astype\('float32'\)"):
        opt.step([np.zeros(3)])


def test_the_fallback_warning_points_at_the_users_line(monkeypatch):
    cpu = dispatch.get_backend("cpu")
    monkeypatch.setattr(type(cpu), "unavailable_reason", lambda self: "simulated")
    monkeypatch.setattr(dispatch, "_warned_fallback", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastopt.Adam([np.zeros(3)])  # this line
    line = inspect.currentframe().f_lineno - 1
    [warning] = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert Path(warning.filename).resolve() == Path(__file__).resolve() and warning.lineno == line


def test_a_plain_checkout_on_sys_path_finds_the_cpu_kernels(tmp_path):
    # No install: only the checkout and the dependencies' site-packages on the path (-S: no .pth files, so the
    # editable install's finder is not there).
    site = str(Path(np.__file__).resolve().parent.parent)
    code = ("import fastopt, fastopt.kernels.cpu, fastopt.backends.cpu as c;"
            f"assert fastopt.__file__.startswith({str(ROOT)!r}), fastopt.__file__;"
            "assert c.BACKEND.unavailable_reason() is None, c.BACKEND.unavailable_reason();"
            "print(fastopt.kernels.cpu.__file__)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), site]), "NUMBA_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(ROOT / "kernels" / "cpu" / "__init__.py")


# ---- the functional API caches its plans --------------------------------------------------------------------------

def _count_prepares(monkeypatch):
    calls = []
    backend = dispatch.get_backend("cpu")
    original = type(backend).prepare

    def counting(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(type(backend), "prepare", counting)
    return calls


@pytest.mark.parametrize("name", sorted(SPECS))
def test_functional_update_reuses_its_plan_for_the_same_arrays(monkeypatch, name):
    functional.clear_cache()
    calls = _count_prepares(monkeypatch)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s) for s in [(30,), (4, 5)]]
    by_class = [p.copy() for p in params]
    state = functional.init_state(name, params, **BUSY[name])
    opt = fastopt.OPTIMIZERS[name](by_class, **BUSY[name])
    grads = [np.zeros_like(p) for p in params]
    for step in range(1, 6):
        for g in grads:
            g[...] = rng.standard_normal(g.shape)
        fresh = [g.copy() for g in grads] if step % 2 else grads  # fresh grad arrays on odd steps
        getattr(functional, name)(params, fresh, state, step=step, **BUSY[name])
        opt.step(fresh)
    for x, y in zip(params, by_class):
        np.testing.assert_array_equal(x, y)
    assert len(calls) == 2  # one plan for the functional calls, one for the class


def test_the_plan_cache_is_keyed_on_identities_it_holds_and_is_bounded(monkeypatch):
    functional.clear_cache()
    calls = _count_prepares(monkeypatch)
    for _ in range(functional._CACHE_SIZE + 3):
        params = [np.zeros(8)]  # new arrays every time: the old ones are held by the cache, so no id is reused
        state = functional.init_state("adam", params)
        functional.adam(params, [np.ones(8)], state, step=1, lr=0.1)
        np.testing.assert_allclose(params[0], -0.1)
    assert len(calls) == functional._CACHE_SIZE + 3
    assert len(functional._CACHE) == functional._CACHE_SIZE
    state["exp_avg"] = [np.zeros(8)]  # a state array replaced: a new plan, on the new array
    functional.adam(params, [np.ones(8)], state, step=2, lr=0.1)
    assert len(calls) == functional._CACHE_SIZE + 4
    assert state["exp_avg"][0][0] != 0
    state["exp_avg_sq"][0] = np.zeros(8)  # an element of a state list replaced in place: a new plan too
    functional.adam(params, [np.ones(8)], state, step=3, lr=0.1)
    assert len(calls) == functional._CACHE_SIZE + 5
    assert state["exp_avg_sq"][0][0] != 0
    functional.clear_cache()
    assert not functional._CACHE


def test_a_plain_tensor_is_a_valid_grad_for_an_nn_parameter():
    torch = pytest.importorskip("torch")
    from fastopt import functional

    param = torch.nn.Parameter(torch.zeros(3))
    functional.check_grads([torch.zeros(3)], [param], ["params[0]"], ["grads[0]"])  # torch gives Parameters Tensors
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        functional.check_grads([np.zeros(3, np.float32)], [param], ["params[0]"], ["grads[0]"])
