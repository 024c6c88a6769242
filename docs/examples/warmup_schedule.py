"""A learning-rate warm-up then cosine decay for a NumPy loop, with fastopt.lr_scheduler (torch's names).

    python docs/examples/warmup_schedule.py

Fits a noisy linear regression with fastopt.SGD (momentum): LinearLR warms the lr up over the first steps (large
steps on a fresh momentum buffer are what a warm-up avoids), then CosineAnnealingLR takes it down; SequentialLR
switches from one to the other at the milestone.
"""

import argparse

import numpy as np

import fastopt
from fastopt.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16))
    true_w = rng.normal(size=16)
    y = x @ true_w + 0.01 * rng.normal(size=256)
    w = np.zeros(16)

    opt = fastopt.SGD([w], lr=0.1, momentum=0.9)
    warmup = LinearLR(opt, start_factor=0.01, total_iters=args.warmup)
    decay = CosineAnnealingLR(opt, T_max=args.steps - args.warmup, eta_min=1e-3)
    schedule = SequentialLR(opt, [warmup, decay], milestones=[args.warmup])
    for step in range(args.steps):
        residual = x @ w - y
        loss = float((residual ** 2).mean())
        opt.step([2 * x.T @ residual / len(y)])
        if step in (0, args.warmup // 2, args.warmup, args.steps // 2, args.steps - 1):
            print(f"step {step:4d}  lr {opt.param_groups[0]['lr']:.5f}  loss {loss:.6f}")
        schedule.step()
    error = float(np.abs(w - true_w).max())
    print(f"final loss {loss:.6f}, largest weight error {error:.4f}")
    return error


if __name__ == "__main__":
    main()
