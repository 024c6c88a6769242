"""What the generic tests do not reach for Adamax, RAdam and Rprop (torch.optim's semantics; golden data in
tests/golden/data compares the trajectories with torch itself)."""

import numpy as np
import pytest

import fastopt
from fastopt.specs import SPECS


def _run(name, lr_by_step, steps=6, backend="cpu", **hyper):
    rng = np.random.default_rng(7)
    p = rng.standard_normal(33)
    grads = [rng.standard_normal(33) for _ in range(steps)]
    opt = fastopt.OPTIMIZERS[name]([p], lr=lr_by_step[0], backend=backend, **hyper)
    for t, g in enumerate(grads):
        opt.param_groups[0]["lr"] = lr_by_step[t]
        opt.step([g])
    return p, opt


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_rprop_reads_lr_only_at_its_first_step(backend):
    """torch fills state['step_size'] with the lr of the first step and never reads lr again."""
    constant, _ = _run("rprop", [0.01] * 6, backend=backend)
    changed, opt = _run("rprop", [0.01] + [0.5] * 5, backend=backend)
    np.testing.assert_array_equal(changed, constant)
    first_differs, _ = _run("rprop", [0.5] * 6, backend=backend)
    assert not np.array_equal(first_differs, constant)
    assert opt.state_dict()["state"][0]["step_size"].max() <= 50.0   # clamped to step_sizes' max


@pytest.mark.parametrize("name,hyper,bad", [
    ("rprop", "etas", (0.5, 0.9)),       # etaplus must exceed 1
    ("rprop", "etas", (1.2, 0.5)),
    ("rprop", "etas", (0.0, 1.2)),       # etaminus must exceed 0
    ("rprop", "etas", (0.5, 1.2, 2.0)),
    ("rprop", "step_sizes", (1.0, 0.1)),  # min above max
    ("rprop", "step_sizes", (-1e-6, 50.0)),
    ("rprop", "step_sizes", (1e-6, float("nan"))),
    ("adamax", "eps", 0.0),
    ("radam", "betas", (0.9, 1.0)),
])
def test_out_of_range_pairs_are_refused_naming_the_argument(name, hyper, bad):
    p = np.zeros(3)
    with pytest.raises(ValueError, match=hyper):
        fastopt.OPTIMIZERS[name]([p], **{hyper: bad})


def test_radam_rectifies_from_step_six_whatever_beta2():
    """rho_t > 5 first at step 6 for beta2 near 1 (rho_t < t always), never when rho_inf = 2 / (1 - beta2) - 1 <= 5:
    the kernels get the branch as a 0/1 scalar per step."""
    spec = SPECS["radam"]
    hyper = dict(spec.defaults)
    rectified = spec.scalar_names.index("rectified")
    for beta2 in (0.9, 0.999, 0.99999):
        h = dict(hyper, betas=(0.9, beta2))
        assert [spec.scalars(h, t)[rectified] for t in range(1, 9)] == [0.0] * 5 + [1.0] * 3
    h = dict(hyper, betas=(0.9, 0.6))   # rho_inf = 4
    assert all(spec.scalars(h, t)[rectified] == 0.0 for t in range(1, 50))


@pytest.mark.parametrize("name", ["adamax", "radam", "rprop"])
def test_state_names_and_defaults_are_torchs(name):
    torch = pytest.importorskip("torch")
    p = np.random.default_rng(0).standard_normal(5)
    opt = fastopt.OPTIMIZERS[name]([p.copy()])
    opt.step([np.ones(5)])
    tp = torch.nn.Parameter(torch.tensor(p))
    tp.grad = torch.ones(5, dtype=torch.float64)
    topt = getattr(torch.optim, SPECS[name].class_name)([tp])
    topt.step()
    assert sorted(opt.state_dict()["state"][0]) == sorted(topt.state_dict()["state"][0])
    assert sorted(opt.defaults) == sorted(k for k in topt.defaults
                                          if k not in ("foreach", "fused", "capturable", "differentiable"))
    for key, value in opt.defaults.items():
        assert np.all(np.asarray(topt.defaults[key]) == np.asarray(value)), key
