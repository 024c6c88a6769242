"""fastopt.torch against torch.optim on a real model: a small CNN on scikit-learn's digits, same start, same batches.

Tolerances (stated once, here): both run the same formulas, but torch orders a few operations differently
(addcdiv, lerp, foreach kernels), so single steps differ by an ulp or so; training a CNN then feeds those
differences back through the gradients. Measured over 30 steps, all cases: worst |difference| 1.8e-6 (float32,
RMSprop centered with momentum) and 5.2e-15 (float64) on weights of order 0.1-3; the bounds below leave ~10-20x room,
while a wrong formula (a missing bias correction, weight decay in the wrong place, a first-step rule) moves the
weights by 1e-3 or more within a few steps.
"""

import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from tests.registry import BUSY  # noqa: E402

ATOL = {torch.float32: 2e-5, torch.float64: 1e-13}
STEPS = 30

# Every fastopt.torch class that torch.optim also has, with the torch class and arguments it is compared with.
CASES = []
for _name, _cls in ft.OPTIMIZERS.items():
    _spec = _cls.spec
    if not hasattr(torch.optim, _spec.class_name):
        continue
    _base = {**_cls.default_overrides}
    CASES.append(pytest.param(_name, _base, id=f"{_name}-defaults"))
    if _name in BUSY:
        CASES.append(pytest.param(_name, {**_base, **BUSY[_name]}, id=f"{_name}-busy"))
# With dampening, torch's first SGD step (the buffer is the grad itself) differs from a later one (1 - dampening).
CASES.append(pytest.param("sgd", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01), id="sgd-dampening"))


def _digits(dtype):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:512] / 16.0, dtype=dtype).reshape(-1, 1, 8, 8)
    return x, torch.tensor(y[:512])


def _model(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 10)).to(dtype)


def _train(model, opt, x, y, steps, start=0, scheduler=None):
    # with maximize=True the optimizer climbs: give it the negated loss, so it trains the same model
    sign = -1.0 if opt.param_groups[0].get("maximize") else 1.0
    losses = []
    for i in range(start, start + steps):
        batch = slice((i * 64) % 512, (i * 64) % 512 + 64)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        (sign * loss).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def _skip_unless_state_maps(name):
    """A torch optimizer that keeps per-param state fastopt's does not (e.g. NAdam's mu_product) cannot exchange
    checkpoints with it: fastopt.torch refuses such state dicts by name instead."""
    spec = ft.OPTIMIZERS[name].spec
    extra = (set(ft.torch_format(spec.class_name)["state_keys"]) - {"step"} - {s.name for s in spec.slots}
             - {h.name for h in spec.host_state})  # host scalars travel as torch's 0-d tensors
    if extra:
        pytest.skip(f"torch.optim.{spec.class_name} keeps {sorted(extra)}, which fastopt's {spec.class_name} "
                    "does not hold: checkpoints cannot move")


def _torch_twin(name, hyper):
    cls = ft.OPTIMIZERS[name]
    return getattr(torch.optim, cls.spec.class_name), {**cls.spec.defaults, **hyper}


def _assert_params_close(m1, m2, dtype, what=""):
    for (n, a), b in zip(m1.named_parameters(), m2.parameters()):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=0, atol=ATOL[dtype],
                                   err_msg=f"{what} {n}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("name", "hyper"), CASES)
def test_trajectory_matches_torch(name, hyper, dtype):
    x, y = _digits(dtype)
    ref, ours = _model(dtype), _model(dtype)
    torch_cls, torch_hyper = _torch_twin(name, hyper)
    losses_ref = _train(ref, torch_cls(ref.parameters(), **torch_hyper), x, y, STEPS)
    losses = _train(ours, ft.OPTIMIZERS[name](ours.parameters(), **hyper), x, y, STEPS)
    np.testing.assert_allclose(losses, losses_ref, rtol=0, atol=ATOL[dtype] * 10)
    _assert_params_close(ref, ours, dtype, name)
    moved = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), _model(dtype).parameters()))
    assert moved > 10 * ATOL[torch.float32]  # the comparison is not vacuous: the weights did move


@pytest.mark.parametrize(("name", "hyper"), CASES)
def test_checkpoints_move_both_ways(name, hyper):
    """torch.optim.X -> fastopt.torch.X and back, mid-training: the trajectory continues as if uninterrupted."""
    _skip_unless_state_maps(name)
    dtype = torch.float32
    x, y = _digits(dtype)
    torch_cls, torch_hyper = _torch_twin(name, hyper)
    whole = _model(dtype)
    _train(whole, torch_cls(whole.parameters(), **torch_hyper), x, y, 24)

    model = _model(dtype)
    first = torch_cls(model.parameters(), **torch_hyper)
    _train(model, first, x, y, 8)
    second = ft.OPTIMIZERS[name](model.parameters(), **hyper)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    _train(model, second, x, y, 8, start=8)
    saved = second.state_dict()
    assert saved["param_groups"][0].keys() == first.state_dict()["param_groups"][0].keys()
    for key, entry in first.state_dict()["state"].items():
        assert saved["state"][key].keys() == entry.keys()
        for k, v in entry.items():
            assert type(saved["state"][key][k]) is type(v)
            assert getattr(saved["state"][key][k], "dtype", None) == getattr(v, "dtype", None)
    third = torch_cls(model.parameters(), **torch_hyper)
    third.load_state_dict(copy.deepcopy(saved))
    _train(model, third, x, y, 8, start=16)
    _assert_params_close(whole, model, dtype, name)


@pytest.mark.parametrize(("name", "hyper"), CASES)
def test_numpy_checkpoint_conversion_both_ways(name, hyper):
    """torch -> fastopt.X (NumPy) -> torch and fastopt.X -> torch -> fastopt.X continue the trajectory."""
    _skip_unless_state_maps(name)
    dtype = torch.float64
    x, y = _digits(dtype)
    torch_cls, torch_hyper = _torch_twin(name, hyper)
    whole = _model(dtype)
    _train(whole, torch_cls(whole.parameters(), **torch_hyper), x, y, 18)

    model = _model(dtype)
    opt = torch_cls(model.parameters(), **torch_hyper)
    _train(model, opt, x, y, 6)
    numpy_params = [p.detach().numpy().copy() for p in model.parameters()]
    fast = fastopt.OPTIMIZERS[name](numpy_params, backend="numpy", **hyper)
    fast.load_state_dict(ft.from_torch_state_dict(opt.state_dict(), fast))
    for i in range(6, 12):  # the same training, stepped by the NumPy class on NumPy copies of the params
        batch = slice((i * 64) % 512, (i * 64) % 512 + 64)
        with torch.no_grad():
            for p, a in zip(model.parameters(), numpy_params):
                p.copy_(torch.from_numpy(a))
        model.zero_grad()
        sign = -1.0 if hyper.get("maximize") else 1.0
        (sign * torch.nn.functional.cross_entropy(model(x[batch]), y[batch])).backward()
        fast.step([p.grad.numpy().copy() for p in model.parameters()])
    with torch.no_grad():
        for p, a in zip(model.parameters(), numpy_params):
            p.copy_(torch.from_numpy(a))
    back = torch_cls(model.parameters(), **torch_hyper)
    back.load_state_dict(ft.to_torch_state_dict(fast.state_dict(), back))
    _train(model, back, x, y, 6, start=12)
    _assert_params_close(whole, model, dtype, name)

    # and fastopt -> torch -> fastopt: the state survives the round trip exactly
    again = fastopt.OPTIMIZERS[name](numpy_params, backend="numpy", **hyper)
    again.load_state_dict(ft.from_torch_state_dict(ft.to_torch_state_dict(fast.state_dict(), back), again))
    before, after = fast.state_dict(), again.state_dict()
    assert before["state"].keys() == after["state"].keys()
    for key, entry in before["state"].items():
        assert after["state"][key].keys() == entry.keys(), key
        for k, v in entry.items():
            np.testing.assert_array_equal(after["state"][key][k], v)


# ---- torch's contract ---------------------------------------------------------------------------------------------

def _pair(cls_name="Adam", **hyper):
    x, y = _digits(torch.float32)
    ref, ours = _model(torch.float32), _model(torch.float32)
    return x, y, ref, ours, getattr(torch.optim, cls_name), getattr(ft, cls_name)


def test_param_groups_add_param_group_and_none_grads():
    x, y, ref, ours, T, F = _pair()
    groups = lambda m: [{"params": list(m[0].parameters()), "lr": 0.02},  # noqa: E731
                        {"params": [m[3].weight], "weight_decay": 0.1}]
    o1, o2 = T(groups(ref), lr=0.01), F(groups(ours), lr=0.01)
    _train(ref, o1, x, y, 5)
    _train(ours, o2, x, y, 5)
    # the last bias has had no optimizer, so a grad but no step: both leave it alone and keep no state for it
    assert ours[3].bias not in o2.state
    o1.add_param_group({"params": [ref[3].bias], "lr": 0.05})
    o2.add_param_group({"params": [ours[3].bias], "lr": 0.05})
    _train(ref, o1, x, y, 5, start=5)
    _train(ours, o2, x, y, 5, start=5)
    _assert_params_close(ref, ours, torch.float32)
    # grads set to None: skipped, their state untouched
    exp_avg = o2.state[ours[0].weight]["exp_avg"].clone()
    weight = ours[0].weight.detach().clone()
    o2.zero_grad()
    ours[3].weight.grad = torch.ones_like(ours[3].weight)
    o2.step()
    assert torch.equal(o2.state[ours[0].weight]["exp_avg"], exp_avg)
    assert torch.equal(ours[0].weight, weight)
    assert o2.state[ours[0].weight]["step"].item() == 10


def test_closure_and_zero_grad_without_none():
    x, y, _, ours, _, F = _pair()
    opt = F(ours.parameters(), lr=0.01)

    def closure():
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(ours(x[:64]), y[:64])
        loss.backward()
        return loss

    first = opt.step(closure)
    assert isinstance(first, torch.Tensor)
    for _ in range(5):
        last = opt.step(closure)
    assert last.item() < first.item()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in ours.parameters())


def test_no_state_for_params_never_given_a_grad():
    p, q = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = ft.Adam([p, q], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    assert p in opt.state and q not in opt.state
    assert list(opt.state_dict()["state"]) == [0]


def test_plan_is_cached_and_rebuilt_when_params_or_state_change():
    p = torch.zeros(4, requires_grad=True)
    opt = ft.Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    plan = opt._plans[0]
    p.grad = torch.ones(4)  # a fresh grad tensor, as zero_grad(set_to_none=True) gives: no rebuild
    opt.step()
    assert opt._plans[0] is plan
    # p.data replaced: the next step must update the new tensor (and only it)
    old = p.data
    old_values = old.clone()
    p.data = torch.zeros(4)
    p.grad = torch.ones(4)
    opt.step()
    assert opt._plans[0] is not plan
    assert torch.equal(old, old_values)
    assert (p.data < 0).all()
    # state replaced by load_state_dict: followed too
    reference = torch.optim.Adam([torch.zeros(4, requires_grad=True)], lr=0.1)
    saved = opt.state_dict()
    reference.load_state_dict(copy.deepcopy(saved))
    opt.load_state_dict(copy.deepcopy(saved))
    twin = reference.param_groups[0]["params"][0]
    with torch.no_grad():
        twin.copy_(p)
    for t in (p, twin):
        t.grad = torch.full((4,), 0.5)
    opt.step()
    reference.step()
    torch.testing.assert_close(p.detach(), twin.detach(), rtol=0, atol=1e-7)


def test_torch_lr_schedulers_drive_it():
    x, y, ref, ours, T, F = _pair("SGD")
    o1, o2 = T(ref.parameters(), lr=0.1, momentum=0.9), F(ours.parameters(), lr=0.1, momentum=0.9)
    s1 = torch.optim.lr_scheduler.OneCycleLR(o1, max_lr=0.2, total_steps=20)
    s2 = torch.optim.lr_scheduler.OneCycleLR(o2, max_lr=0.2, total_steps=20)
    _train(ref, o1, x, y, 20, scheduler=s1)
    _train(ours, o2, x, y, 20, scheduler=s2)
    assert s1.get_last_lr() == s2.get_last_lr()
    assert o2.param_groups[0]["momentum"] == o1.param_groups[0]["momentum"]  # cycled by the scheduler
    _assert_params_close(ref, ours, torch.float32)
    o3 = F(_model(torch.float32).parameters(), lr=torch.tensor(0.01))  # tensor lr, as torch allows
    s3 = torch.optim.lr_scheduler.ExponentialLR(o3, gamma=0.5)
    o3.step()  # no grads yet: nothing to update, but the scheduler sees a step
    s3.step()
    assert float(o3.param_groups[0]["lr"]) == pytest.approx(0.005)


def test_grad_scaler_unscale_and_step():
    x, y, ref, ours, T, F = _pair()
    results = []
    for model, opt in ((ref, T(ref.parameters(), lr=0.01)), (ours, F(ours.parameters(), lr=0.01))):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        for i in range(6):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[i * 64:(i + 1) * 64]), y[i * 64:(i + 1) * 64])
            scaler.scale(loss).backward()
            if i == 3:  # an overflowing step: the scaler must skip it and halve the scale
                model[0].weight.grad[0, 0, 0, 0] = float("inf")
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
        results.append(scaler.get_scale())
    assert results[0] == results[1] == 2.0 ** 9
    _assert_params_close(ref, ours, torch.float32)


def test_compiled_model_around_it():
    x, y, ref, ours, T, F = _pair()
    compiled_ref = torch.compile(ref, backend="aot_eager")
    compiled = torch.compile(ours, backend="aot_eager")
    _train(compiled_ref, T(ref.parameters(), lr=0.01), x, y, 5)
    _train(compiled, F(ours.parameters(), lr=0.01), x, y, 5)
    _assert_params_close(ref, ours, torch.float32)


def test_channels_last_and_odd_grad_layout():
    ref = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last).requires_grad_()
    ours = ref.detach().clone().to(memory_format=torch.channels_last).requires_grad_()
    o1, o2 = torch.optim.Adam([ref], lr=0.1), ft.Adam([ours], lr=0.1)
    for i in range(3):
        g = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(i))
        ref.grad = g.clone()
        ours.grad = g.clone() if i != 1 else g.clone().contiguous()  # a grad in another layout than the param
        o1.step()
        o2.step()
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=0, atol=1e-6)


def test_copies_own_their_state():
    p = torch.ones(3, requires_grad=True)
    opt = ft.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3)
    opt.step()
    for copy_of in (copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))):
        twin = copy_of(opt)
        q = twin.param_groups[0]["params"][0]
        assert q is not p
        before = p.detach().clone()
        q.grad = torch.ones(3)
        twin.step()
        assert torch.equal(p.detach(), before)  # the original is untouched
        assert twin.state[q]["momentum_buffer"][0].item() == pytest.approx(1.9)


# ---- refusals: a clear error naming the argument, nothing changed ---------------------------------------------------

def test_bad_arguments_are_refused():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match="unknown argument 'lrr'"):
        ft.Adam([p], lrr=0.1)
    with pytest.raises(ValueError, match="lr"):
        ft.Adam([p], lr=-1.0)
    with pytest.raises(ValueError, match="capturable"):
        ft.Adam([p], capturable=True)
    with pytest.raises(ValueError, match="decoupled_weight_decay"):
        ft.Adam([p], decoupled_weight_decay=True)
    with pytest.raises(TypeError, match=r"params'\]\[0\].*float16"):
        ft.SGD([torch.zeros(2, dtype=torch.float16, requires_grad=True)])
    with pytest.raises(ValueError, match="backend"):
        ft.SGD([p], backend="tpu")
    opt = ft.Adam([p], lr=0.1, foreach=False, fused=True)  # accepted (fastopt is always fused), kept for torch
    assert opt.param_groups[0]["fused"] is True
    with pytest.raises(ValueError, match=r"param_groups\[1\].*lr"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": -2.0})
    assert len(opt.param_groups) == 1
    opt.param_groups[0]["lr"] = float("nan")
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match=r"param_groups\[0\].*lr"):
        opt.step()
    assert not opt.state and torch.equal(p.detach(), torch.zeros(2))


def test_foreign_or_damaged_state_is_refused_before_anything_changes():
    p = torch.ones(3, requires_grad=True)
    adam = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    adam.step()
    sgd = ft.SGD([p], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"exp_avg.*another optimizer"):
        sgd.load_state_dict(adam.state_dict())
    ours = ft.Adam([p], lr=0.5)
    for damage, message in ((lambda s: s["state"][0].update(step=torch.tensor(float("nan"))), r"\['step'\]"),
                            (lambda s: s["state"][0].update(step=10 ** 400), r"\['step'\]"),
                            (lambda s: s["state"][0].pop("exp_avg_sq"), "exp_avg_sq.*missing"),
                            (lambda s: s["state"][0].update(exp_avg=torch.zeros(4)), "shape"),
                            (lambda s: s["param_groups"][0].update(betas=(1.5, 0.9)), "betas")):
        saved = copy.deepcopy(adam.state_dict())
        damage(saved)
        with pytest.raises(ValueError, match=message):
            ours.load_state_dict(saved)
        assert ours.param_groups[0]["lr"] == 0.5 and not ours.state


def test_sparse_grads_are_refused_like_torch():
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = ft.Adam(emb.parameters())
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_import_fastopt_does_not_import_torch():
    code = "import sys, fastopt; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_torch_scheduler_and_step_hooks():
    """torch's schedulers and hooks drive fastopt.torch exactly as they drive torch.optim (same lr, momentum)."""
    S = torch.optim.lr_scheduler
    makers = [lambda o: S.LambdaLR(o, lambda e: 0.9 ** e), lambda o: S.MultiplicativeLR(o, lambda e: 0.95),
              lambda o: S.StepLR(o, 3), lambda o: S.MultiStepLR(o, [2, 5]), lambda o: S.ConstantLR(o),
              lambda o: S.LinearLR(o), lambda o: S.ExponentialLR(o, 0.9), lambda o: S.PolynomialLR(o, 8),
              lambda o: S.CosineAnnealingLR(o, 4), lambda o: S.CosineAnnealingWarmRestarts(o, 3),
              lambda o: S.CyclicLR(o, 0.01, 0.1, step_size_up=3), lambda o: S.OneCycleLR(o, 0.1, total_steps=12),
              lambda o: S.ChainedScheduler([S.ExponentialLR(o, 0.9), S.StepLR(o, 2)]),
              lambda o: S.SequentialLR(o, [S.LinearLR(o), S.ExponentialLR(o, 0.9)], [4]),
              lambda o: S.ReduceLROnPlateau(o, patience=1)]
    for make in makers:
        runs = []
        for cls in (torch.optim.SGD, ft.SGD):
            p = torch.ones(3, requires_grad=True)
            opt = cls([p], lr=0.1, momentum=0.9)
            calls = []
            opt.register_step_pre_hook(lambda o, a, k, calls=calls: calls.append("pre"))
            opt.register_step_post_hook(lambda o, a, k, calls=calls: calls.append("post"))
            sched = make(opt)
            trace = []
            for i in range(10):
                p.grad = torch.full((3,), 0.1 * (i % 3))
                opt.step()
                sched.step(1.0) if isinstance(sched, S.ReduceLROnPlateau) else sched.step()
                trace.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"], p.detach().clone()))
            assert calls == ["pre", "post"] * 10
            runs.append(trace)
        for (lr1, m1, p1), (lr2, m2, p2) in zip(*runs):
            assert lr1 == lr2 and m1 == m2
            torch.testing.assert_close(p2, p1, rtol=0, atol=1e-6)


def test_params_skipped_on_some_steps_and_checkpoints_through_torch_save():
    """Params whose grads come and go get their own step counts, as in torch; torch.save/torch.load carries them."""
    import io

    ref = [torch.full((4,), float(i + 1), requires_grad=True) for i in range(3)]
    ours = [t.detach().clone().requires_grad_() for t in ref]
    o1, o2 = torch.optim.Adam(ref, lr=0.1), ft.Adam(ours, lr=0.1)
    pattern = [(0, 1, 2), (0,), (0, 2), (), (1, 2), (0, 1, 2)]
    for i, present in enumerate(pattern):
        for params, opt in ((ref, o1), (ours, o2)):
            opt.zero_grad()
            for k in present:
                params[k].grad = torch.full((4,), 0.5 + i + k)
            opt.step()
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=1e-6)
        assert o2.state[b]["step"].item() == o1.state[a]["step"].item()
    buffer = io.BytesIO()
    torch.save(o2.state_dict(), buffer)
    buffer.seek(0)
    o3 = torch.optim.Adam(ours, lr=0.1)
    o3.load_state_dict(torch.load(buffer))
    for params, opt in ((ref, o1), (ours, o3)):
        for k, p in enumerate(params):
            p.grad = torch.full((4,), 1.0 + k)
        opt.step()
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=1e-6)
        assert o3.state[b]["step"].item() == o1.state[a]["step"].item()


def test_numpy_state_dict_loaded_directly_is_refused_with_a_pointer_to_the_conversion():
    arrays = [np.ones(3, dtype=np.float32)]
    numpy_opt = fastopt.Adam(arrays, lr=0.1)
    numpy_opt.step([np.ones(3, dtype=np.float32)])
    p = torch.ones(3, requires_grad=True)
    opt = ft.Adam([p], lr=0.1)
    with pytest.raises(TypeError, match="to_torch_state_dict"):
        opt.load_state_dict(numpy_opt.state_dict())
    assert not opt.state
    opt.load_state_dict(ft.to_torch_state_dict(numpy_opt.state_dict(), opt))
    assert opt.state[p]["step"].item() == 1 and opt.state[p]["exp_avg"].dtype == torch.float32


def test_conversions_refuse_what_does_not_fit():
    p = torch.ones(3, requires_grad=True)
    adamw = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    adamw.step()
    arrays = [np.ones(3)]
    with pytest.raises(ValueError, match="decoupled_weight_decay"):  # AdamW's state is not Adam's
        ft.from_torch_state_dict(adamw.state_dict(), fastopt.Adam(arrays))
    with pytest.raises(ValueError, match="exp_avg"):
        ft.from_torch_state_dict(adamw.state_dict(), fastopt.SGD(arrays, momentum=0.9))
    numpy_opt = fastopt.AdamW(arrays)
    numpy_opt.step([np.ones(3)])
    saved = numpy_opt.state_dict()
    saved["state"][0]["step"] = float("inf")
    with pytest.raises(ValueError, match=r"\['step'\]"):
        ft.to_torch_state_dict(saved, adamw)
    with pytest.raises(TypeError, match="optimizer"):
        ft.from_torch_state_dict(adamw.state_dict(), adamw)


def test_positional_arguments_and_signature_follow_torch():
    import inspect

    p = torch.zeros(2, requires_grad=True)
    for name, cls in ft.OPTIMIZERS.items():
        twin = getattr(torch.optim, cls.spec.class_name, None)
        if twin is None:
            continue
        theirs = [q.name for q in inspect.signature(twin).parameters.values() if q.kind == q.POSITIONAL_OR_KEYWORD]
        ours = [q.name for q in inspect.signature(cls).parameters.values() if q.kind == q.POSITIONAL_OR_KEYWORD]
        assert ours == theirs, name
    opt = ft.SGD([p], 0.5, 0.9)
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["momentum"] == 0.9
    assert ft.Momentum([p], 0.1).param_groups[0]["momentum"] == 0.9
    with pytest.raises(TypeError, match="two values for argument 'lr'"):
        ft.SGD([p], 0.5, lr=0.1)
    with pytest.raises(TypeError, match="positional"):
        ft.Adam([p], 0.1, (0.9, 0.99), 1e-8, 0.0, False, "extra")


def test_step_dtype_follows_the_default_dtype_like_torch():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        p, q = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
        ours, theirs = ft.Adam([p]), torch.optim.Adam([q])
        p.grad, q.grad = torch.ones(2), torch.ones(2)
        ours.step()
        theirs.step()
        assert ours.state[p]["step"].dtype == theirs.state[q]["step"].dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)


def test_numpy_reference_backend_gives_the_same_trajectory():
    x, y, ref, ours, T, F = _pair("RMSprop")
    _train(ref, T(ref.parameters(), lr=0.01, momentum=0.9, centered=True), x, y, 10)
    opt = F(ours.parameters(), lr=0.01, momentum=0.9, centered=True, backend="numpy")
    _train(ours, opt, x, y, 10)
    assert all(run.backend.name == "numpy" for run in opt._plans[0].runs)
    _assert_params_close(ref, ours, torch.float32)
