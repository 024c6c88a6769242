"""LAMB and LARS on kernel contract v2's per-tensor reductions (their optax golden files are judged by
tests/test_golden.py with the others): the cpu backend against the reference bit for bit (several chunks, parallel and
serial plans, clipping and AMP folded in), the per-tensor trust ratio's meaning, and the per-group exclusions."""

import math

import numpy as np
import pytest

import fastopt
from fastopt import reference
from fastopt.kernels.cpu._common import CHUNK
from fastopt.optimizers import lamb, lars
from fastopt.specs import SPECS, OptimizerSpec, Reduction, Slot, register

MODULES = {"LAMB": lamb, "LARS": lars}
CLASSES = {"LAMB": fastopt.LAMB, "LARS": fastopt.LARS}


CONFIGS = {
    "LAMB": [dict(lr=0.05), dict(lr=0.01, betas=(0.5, 0.99), eps=1e-3, weight_decay=0.1, maximize=True)],
    "LARS": [dict(lr=0.5), dict(lr=1.0, weight_decay=0.01, trust_coefficient=0.02, trust_eps=1e-8, momentum=0.5,
                                nesterov=True, maximize=True)],
}


def _problem(dtype, sizes, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    params[-1][:] = 0   # a zero tensor: trust ratio 1
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(3)]
    return params, grads


def _run(cls, backend, params, grads, hyper, **step):
    params = [p.copy() for p in params]
    opt = CLASSES[cls](params, backend=backend, **hyper)
    for g in grads:
        opt.step(g, **step)
    return params, opt


@pytest.mark.parametrize("cls", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [(5, 3 * CHUNK + 17, 0, 9), (1 << 20, 7)], ids=["serial", "parallel"])
def test_cpu_matches_reference_bit_for_bit(cls, dtype, sizes):
    params, grads = _problem(dtype, sizes)
    for hyper in CONFIGS[cls]:
        for step in ({}, {"grad_scale": 8.0}):
            want, _ = _run(cls, "numpy", params, grads, dict(hyper, max_grad_norm=5.0), **step)
            got, _ = _run(cls, "cpu", params, grads, dict(hyper, max_grad_norm=5.0), **step)
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)
            assert not all(np.array_equal(a, p) for a, p in zip(got, params))


def test_trust_ratio_is_per_tensor():
    """LARS without momentum or decay steps each tensor by lr * trust_coefficient * ||p|| along g / ||g||, whatever
    the other tensors' gradients; a zero tensor (either norm 0) takes the plain step -lr * g."""
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(50), 3 * rng.standard_normal(20), np.zeros(4)]
    grads = [100 * rng.standard_normal(50), 1e-3 * rng.standard_normal(20), rng.standard_normal(4)]
    for backend in ("numpy", "cpu"):
        got, _ = _run("LARS", backend, params, [grads], dict(lr=0.5, trust_coefficient=0.01, momentum=0.0))
        for p0, g, p in zip(params[:2], grads[:2], got[:2]):
            step = p - p0
            assert np.linalg.norm(step) == pytest.approx(0.5 * 0.01 * np.linalg.norm(p0), rel=1e-12)
            np.testing.assert_allclose(step / np.linalg.norm(step), -g / np.linalg.norm(g), rtol=0, atol=1e-10)
        np.testing.assert_array_equal(got[2], -0.5 * grads[2])


def test_lamb_trust_ratio_is_the_norms_ratio():
    """One LAMB step moves each tensor by lr * ||p|| (the update is rescaled to the param's norm)."""
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(30), 0.1 * rng.standard_normal(10)]
    grads = [rng.standard_normal(30), 50 * rng.standard_normal(10)]
    got, _ = _run("LAMB", "cpu", params, [grads], dict(lr=0.01, weight_decay=0.1))
    for p0, p in zip(params, got):
        assert np.linalg.norm(p - p0) == pytest.approx(0.01 * np.linalg.norm(p0), rel=1e-12)


def test_reductions_are_computed_before_the_update_without_writing():
    """The "update" reduction reads the moments as they will be after this step, from the state before it: the
    reference's tensor scalars equal the norms of a separately computed update, and the state is untouched."""
    spec = lamb.SPEC
    rng = np.random.default_rng(3)
    p, g, m, v = (rng.standard_normal(CHUNK + 5).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    hyper = fastopt.functional.with_defaults(spec, {"weight_decay": 0.1})
    scalars = spec.scalars(hyper, 3)
    before = [x.copy() for x in (p, g, m, v)]
    (ratio,) = reference.tensor_scalars(spec, p, g, (m, v), scalars, ())
    for x, y in zip((p, g, m, v), before):
        np.testing.assert_array_equal(x, y)
    u = reference.update_function("lamb")(p, g, m, v, *scalars)
    want = np.float32(math.sqrt(reference.reduce_tensor(p, "sumsq")) / math.sqrt(reference.reduce_tensor(u, "sumsq")))
    assert ratio == want
    assert ratio == pytest.approx(float(np.linalg.norm(p.astype(np.float64)) / np.linalg.norm(u.astype(np.float64))),
                                  rel=1e-6)


def test_plan_scratch_is_allocated_once(monkeypatch):
    """The reductions' scratch belongs to the plan, made at prepare time: the same arrays step after step."""
    from fastopt.backends import cpu
    plans = []
    prepare = cpu.CpuBackend.prepare

    def recording(self, *args):
        plans.append(prepare(self, *args))
        return plans[-1]

    monkeypatch.setattr(cpu.CpuBackend, "prepare", recording)
    params, grads = _problem(np.float32, (100, 3))
    opt = CLASSES["LAMB"](params, backend="cpu")
    opt.step(grads[0])
    assert len(plans) == 1
    scratch = (plans[0].reduced, plans[0].lanes, plans[0].tensor_values)
    opt.step(grads[1])
    assert len(plans) == 1 and all(a is b for a, b in zip(scratch, (plans[0].reduced, plans[0].lanes,
                                                                     plans[0].tensor_values)))


@pytest.mark.parametrize("cls", sorted(CONFIGS))
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_group_exclusions(cls, backend):
    """exclude_from_weight_decay is weight_decay 0 bit for bit; exclude_from_trust_ratio is the step with trust ratio
    1; a group's switches leave the other group alone."""
    params, grads = _problem(np.float64, (40, 7, 3))
    hyper = CONFIGS[cls][1]
    no_decay, _ = _run(cls, backend, params, grads, dict(hyper, weight_decay=0.0))
    excluded, _ = _run(cls, backend, params, grads, dict(hyper, exclude_from_weight_decay=True))
    for a, b in zip(excluded, no_decay):
        np.testing.assert_array_equal(a, b)
    module = MODULES[cls]
    p, g = params[0].copy(), grads[0][0]
    slots = [np.zeros_like(p) for _ in module.SPEC.slots]
    h = fastopt.functional.with_defaults(module.SPEC, dict(hyper, exclude_from_trust_ratio=True))
    scalars, flags = module.SPEC.scalars(h, 1), module.SPEC.flags(h)
    assert module.SPEC.tensor_scalars(scalars, (1.0, 4.0), p.dtype) == (1.0,)
    module.step(p, g, *slots, *scalars, 1.0, *flags)   # the step with trust ratio 1
    got, _ = _run(cls, backend, [params[0]], [[grads[0][0]]], dict(hyper, exclude_from_trust_ratio=True))
    np.testing.assert_array_equal(got[0], p)
    assert not np.array_equal(got[0], _run(cls, backend, [params[0]], [[grads[0][0]]], hyper)[0][0])
    both = [p.copy() for p in params]
    opt = CLASSES[cls]([{"params": both[:2]}, {"params": both[2:], "exclude_from_trust_ratio": True,
                                                "exclude_from_weight_decay": True}], backend=backend, **hyper)
    for gs in grads:
        opt.step([gs[:2], gs[2:]])
    alone, _ = _run(cls, backend, params[:2], [gs[:2] for gs in grads], hyper)
    for a, b in zip(both[:2], alone):
        np.testing.assert_array_equal(a, b)


def test_exclude_bias_and_norm_splits_by_ndim():
    rng = np.random.default_rng(4)
    weight, bias, scale, conv = rng.standard_normal((4, 3)), np.zeros(4), np.ones(3), rng.standard_normal((2, 3, 3, 3))
    groups = fastopt.exclude_bias_and_norm([weight, bias, scale, conv], exclude_from_trust_ratio=True)
    assert [len(g["params"]) for g in groups] == [2, 2]
    assert groups[0]["params"][0] is weight and groups[0]["params"][1] is conv and set(groups[0]) == {"params"}
    assert groups[1]["params"][0] is bias and groups[1]["exclude_from_trust_ratio"] is True
    opt = fastopt.LARS(groups, lr=0.1)
    assert opt.param_groups[1]["exclude_from_trust_ratio"] and not opt.param_groups[0]["exclude_from_trust_ratio"]
    assert fastopt.exclude_bias_and_norm([weight]) == [{"params": [weight]}]
    with pytest.raises(TypeError, match="params"):
        fastopt.exclude_bias_and_norm(weight)


@pytest.mark.parametrize("reductions, names", [
    ((Reduction("median", "param"),), ("r",)),
    ((Reduction("sumsq", "nothing"),), ("r",)),
    ((Reduction("sumsq", "param"),), ()),
])
def test_register_refuses_bad_reductions(reductions, names):
    before = dict(SPECS)
    bad = OptimizerSpec(name="bad_reduction", class_name="BadReduction", kernel="badred", hypers=(),
                        slots=(Slot("m"),), scalar_names=("lr",), scalars=lambda h, s: (1.0,),
                        reductions=reductions, tensor_scalar_names=names)
    with pytest.raises(ValueError):
        register(bad)
    assert SPECS == before
