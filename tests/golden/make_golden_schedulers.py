"""Golden learning-rate sequences made by torch.optim.lr_scheduler (torch 2.13), checked by tests/test_lr_scheduler.py.

    python tests/golden/make_golden_schedulers.py     # rewrites tests/golden/schedulers/schedulers.json

Each case builds a scheduler from a module (torch.optim.lr_scheduler or fastopt.lr_scheduler) over an optimizer
with two param groups (lr 0.1 and 0.05), steps it STEPS times and records every group's lr (and momentum or beta1
where the scheduler cycles it) after construction and after each step. JSON keeps float64 values exactly (repr).
"""

import json
import pathlib

STEPS = 300
OUT = pathlib.Path(__file__).parent / "schedulers" / "schedulers.json"


def decay(epoch):
    return 0.97 ** epoch


def warmup(epoch):
    return min(1.0, (epoch + 1) / 10)


def plateau_metric(epoch):
    """Falls, then stalls with a little wobble: ReduceLROnPlateau cuts the lr several times."""
    return max(0.2, 1 - epoch * 0.02) + 0.001 * (epoch % 7)


# name -> (optimizer kind, function (module, optimizer) -> scheduler)
CASES = {
    "LambdaLR": ("sgd", lambda m, o: m.LambdaLR(o, decay)),
    "LambdaLR-per-group": ("sgd", lambda m, o: m.LambdaLR(o, [decay, warmup])),
    "StepLR": ("sgd", lambda m, o: m.StepLR(o, step_size=30, gamma=0.5)),
    "MultiStepLR": ("sgd", lambda m, o: m.MultiStepLR(o, milestones=[50, 120, 120, 200], gamma=0.3)),
    "ExponentialLR": ("sgd", lambda m, o: m.ExponentialLR(o, gamma=0.99)),
    "CosineAnnealingLR": ("sgd", lambda m, o: m.CosineAnnealingLR(o, T_max=70, eta_min=0.001)),
    "CosineAnnealingWarmRestarts": ("sgd", lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=20, T_mult=2,
                                                                                        eta_min=1e-4)),
    "LinearLR": ("sgd", lambda m, o: m.LinearLR(o, start_factor=0.1, total_iters=40)),
    "OneCycleLR": ("sgd", lambda m, o: m.OneCycleLR(o, max_lr=[1.0, 0.5], total_steps=STEPS + 1)),
    "OneCycleLR-three-phase-linear-adam": ("adam", lambda m, o: m.OneCycleLR(
        o, max_lr=0.01, epochs=7, steps_per_epoch=43, anneal_strategy="linear", three_phase=True, pct_start=0.25)),
    "SequentialLR-warmup-cosine": ("sgd", lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.01, total_iters=25), m.CosineAnnealingLR(o, T_max=275)], milestones=[25])),
    "SequentialLR-three": ("sgd", lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.5, end_factor=0.9, total_iters=10), m.ExponentialLR(o, gamma=0.98),
            m.StepLR(o, step_size=40, gamma=0.5)], milestones=[10, 100])),
    "ReduceLROnPlateau": ("sgd", lambda m, o: m.ReduceLROnPlateau(o, factor=0.5, patience=5, cooldown=3,
                                                                  threshold=0.01, min_lr=[0.0, 0.004])),
    "ReduceLROnPlateau-max-abs": ("sgd", lambda m, o: m.ReduceLROnPlateau(o, mode="max", threshold_mode="abs",
                                                                          factor=0.3, patience=2)),
}


def record(scheduler, optimizer, steps=STEPS, between=None):
    """lrs (and momentum/beta1) per group after construction and after each step."""
    key = next((k for k in ("betas", "momentum") if k in optimizer.param_groups[0]), None)

    def snapshot():
        lrs = [float(g["lr"]) for g in optimizer.param_groups]
        moms = [float(g[key][0] if key == "betas" else g[key]) for g in optimizer.param_groups] if key else []
        return lrs, moms

    lrs, moms = [], []
    for epoch in range(steps + 1):
        lr, mom = snapshot()
        lrs.append(lr)
        moms.append(mom)
        if epoch == steps:
            break
        if between is not None:
            between()
        if type(scheduler).__name__ == "ReduceLROnPlateau":
            scheduler.step(plateau_metric(epoch) if scheduler.mode == "min" else -plateau_metric(epoch))
        else:
            scheduler.step()
    return {"lr": lrs, "momentum": moms}


def torch_run(name):
    import torch

    kind, make = CASES[name]
    params = [torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)]
    groups = [{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 0.05}]
    optimizer = torch.optim.SGD(groups, momentum=0.9) if kind == "sgd" else torch.optim.Adam(groups)
    scheduler = make(torch.optim.lr_scheduler, optimizer)
    return record(scheduler, optimizer, between=optimizer.step)  # no grads: a no-op that keeps torch from warning


def main():
    golden = {name: torch_run(name) for name in CASES}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(golden) + "\n")
    print(f"wrote {OUT} ({len(golden)} cases, {STEPS} steps each)")


if __name__ == "__main__":
    main()
