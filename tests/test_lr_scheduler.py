"""fastopt.lr_scheduler against torch's schedulers: golden sequences made by torch (tests/golden/schedulers), bit for
bit. Both evaluate the same float64 expressions in the same order (the chainable forms included), so any difference
at all is a difference in the formula or in its order; that is why the comparison is exact rather than within a
tolerance."""

import copy
import json
import pathlib
import pickle
import warnings

import numpy as np
import pytest

import fastopt
from fastopt import lr_scheduler
from tests.golden.make_golden_schedulers import CASES, STEPS, record

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "schedulers" / "schedulers.json").read_text())


def _optimizer(kind):
    params = {"a": np.zeros(3, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
    groups = [{"params": [params["a"]], "lr": 0.1}, {"params": [params["b"]], "lr": 0.05}]
    return fastopt.SGD(groups, momentum=0.9) if kind == "sgd" else fastopt.Adam(groups)


def _run(name, steps=STEPS):
    kind, make = CASES[name]
    optimizer = _optimizer(kind)
    return record(make(lr_scheduler, optimizer), optimizer, steps)


def test_golden_covers_every_case():
    assert set(GOLDEN) == set(CASES)
    assert {type(make(lr_scheduler, _optimizer(kind))).__name__ for kind, make in CASES.values()} == {
        "LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts",
        "LinearLR", "OneCycleLR", "SequentialLR", "ReduceLROnPlateau"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_bit_for_bit(name):
    ours = _run(name)
    assert len(ours["lr"]) == STEPS + 1
    for epoch, (got, want) in enumerate(zip(ours["lr"], GOLDEN[name]["lr"])):
        assert got == want, f"{name}: lr after {epoch} steps: {got} != torch's {want}"
    assert ours["momentum"] == GOLDEN[name]["momentum"]
    assert len(set(map(tuple, ours["lr"]))) > 1  # the schedule does change the lr


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_resumes(name):
    """Saved at step 120 and loaded into a fresh scheduler over a fresh optimizer: the rest is the same sequence."""
    kind, make = CASES[name]
    optimizer = _optimizer(kind)
    scheduler = make(lr_scheduler, optimizer)
    record(scheduler, optimizer, 120)
    saved_opt = copy.deepcopy(optimizer.state_dict())
    saved = pickle.loads(pickle.dumps(scheduler.state_dict())) if "Lambda" not in name else scheduler.state_dict()
    resumed_opt = _optimizer(kind)
    resumed = make(lr_scheduler, resumed_opt)
    resumed_opt.load_state_dict(saved_opt)
    resumed.load_state_dict(saved)
    rest = record(resumed, resumed_opt, STEPS - 120)
    # the resumed run repeats the current lr, then goes on: ReduceLROnPlateau's metric restarts at epoch 0
    if "Plateau" not in name:
        assert rest["lr"] == GOLDEN[name]["lr"][120:]
    assert resumed.get_last_lr() == [g["lr"] for g in resumed_opt.param_groups]


def test_works_on_any_object_with_param_groups():
    class Bare:
        param_groups = [{"lr": 1.0}]  # noqa: RUF012

    opt = Bare()
    sched = lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(4):
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.25 and opt.param_groups[0]["initial_lr"] == 1.0


def test_drives_fastopt_torch_and_torch_optimizers():
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft

    for cls in (ft.SGD, torch.optim.SGD):
        p = torch.zeros(2, requires_grad=True)
        opt = cls([p], lr=1.0)
        sched = lr_scheduler.ExponentialLR(opt, gamma=0.5)
        sched.step()
        assert opt.param_groups[0]["lr"] == 0.5
    p = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([p], lr=torch.tensor(1.0))  # a tensor lr is filled in place, as torch does
    lr = opt.param_groups[0]["lr"]
    lr_scheduler.ExponentialLR(opt, gamma=0.5).step()
    assert opt.param_groups[0]["lr"] is lr and lr.item() == 0.5


def test_closed_form_on_step_with_epoch():
    torch = pytest.importorskip("torch")
    for name, kwargs in (("StepLR", dict(step_size=3, gamma=0.5)), ("ExponentialLR", dict(gamma=0.9)),
                         ("MultiStepLR", dict(milestones=[2, 5])), ("CosineAnnealingLR", dict(T_max=10)),
                         ("LinearLR", dict(total_iters=4)), ("CosineAnnealingWarmRestarts", dict(T_0=3, T_mult=2))):
        a = _optimizer("sgd")
        b = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        b.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": 0.05})
        ours, theirs = getattr(lr_scheduler, name)(a, **kwargs), getattr(torch.optim.lr_scheduler, name)(b, **kwargs)
        for epoch in (7, 2, 9, 4.5 if name == "CosineAnnealingWarmRestarts" else 4):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch deprecates step(epoch); it still defines what it does
                theirs.step(epoch)
            ours.step(epoch)
            assert ours.get_last_lr() == theirs.get_last_lr(), (name, epoch)


@pytest.mark.parametrize(("make", "message"), [
    (lambda o: lr_scheduler.StepLR(o, step_size=0), "step_size"),
    (lambda o: lr_scheduler.StepLR(o, step_size=2.5), "step_size"),
    (lambda o: lr_scheduler.ExponentialLR(o, gamma="0.9"), "gamma"),
    (lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=0), "T_max"),
    (lambda o: lr_scheduler.LinearLR(o, start_factor=0), "start_factor"),
    (lambda o: lr_scheduler.MultiStepLR(o, milestones=[3, -1]), r"milestones\[1\]"),
    (lambda o: lr_scheduler.OneCycleLR(o, max_lr=1.0), "total_steps"),
    (lambda o: lr_scheduler.OneCycleLR(o, max_lr=[1.0], total_steps=10), "max_lr"),
    (lambda o: lr_scheduler.LambdaLR(o, [lambda e: 1.0]), "lr_lambda"),
    (lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=1.0), "factor"),
    (lambda o: lr_scheduler.ReduceLROnPlateau(o, mode="up"), "mode"),
    (lambda o: lr_scheduler.StepLR(object(), step_size=1), "param_groups"),
])
def test_bad_arguments_are_refused_and_change_nothing(make, message):
    opt = _optimizer("sgd")
    before = copy.deepcopy(opt.param_groups)
    with pytest.raises((TypeError, ValueError), match=message):
        make(opt)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == \
           [{k: v for k, v in g.items() if k != "params"} for g in before]


def test_one_cycle_refuses_to_step_past_its_end():
    opt = _optimizer("sgd")
    sched = lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=3)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="total_steps"):
        sched.step()


class _CapturableStandIn:
    """What a scheduler sees of a capturable optimizer (cuda, CUDA graphs): param_groups and write_hyperparameters,
    which copies the lrs to the device buffers a captured step reads."""

    def __init__(self, capturable):
        self.capturable = capturable
        self.param_groups = [{"lr": 0.1}, {"lr": 0.2}]
        self.written = []

    def write_hyperparameters(self):
        self.written.append([g["lr"] for g in self.param_groups])


@pytest.mark.parametrize("make", [
    lambda opt: lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3),
])
def test_a_capturable_optimizer_gets_every_new_lr_written_to_the_device(make):
    opt = _CapturableStandIn(capturable=True)
    scheduler = make(opt)
    before = len(opt.written)
    scheduler.step()
    assert len(opt.written) == before + 1 and opt.written[-1] == [g["lr"] for g in opt.param_groups]
    plain = _CapturableStandIn(capturable=False)
    make(plain).step()
    assert plain.written == []


def test_reduce_on_plateau_writes_a_reduced_lr_to_a_capturable_optimizer():
    opt = _CapturableStandIn(capturable=True)
    scheduler = lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    scheduler.step(1.0)
    scheduler.step(2.0)   # worse: reduced
    assert opt.written and opt.written[-1] == [0.1 * 0.1, 0.2 * 0.1]
