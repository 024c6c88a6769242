"""fastopt's Lion against lion-pytorch's Lion on CPU, one float32 tensor (16M elements by default).

    python -m benchmarks.lion_pytorch_speed                 # 16M, 15 timed steps each
    python -m benchmarks.lion_pytorch_speed --size 4M --steps 9

Implementations: fastopt.Lion on NumPy arrays (the cpu backend), fastopt.torch.Lion on torch tensors (where
fastopt.torch offers it), lion_pytorch.Lion (its plain PyTorch update: mul_, clone, mul_, add, sgn_, add_, mul_,
add_ over the tensor, so several passes over memory). Each steps its own copy of the same params with the same
gradient; they take turns step by step (A B C A B C ...), so a change in machine load hits all of them alike; the
ratio of medians is the figure to read. Lion moves 20 bytes per float32 parameter (reads p, g, exp_avg; writes p,
exp_avg); GB/s below counts those bytes. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="16M", help="elements in the one tensor (default 16M)")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per implementation (median kept)")
    args = ap.parse_args(argv)
    n = _size(args.size)

    import torch
    from lion_pytorch import Lion as LionPytorch

    import fastopt

    hyper = dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-2)
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(n, dtype=np.float32)
    g = (1e-2 * rng.standard_normal(n, dtype=np.float32))

    steps = {}
    p_np = p0.copy()
    opt_np = fastopt.Lion([p_np], **hyper, backend="cpu")
    steps["fastopt.Lion (NumPy, cpu backend)"] = lambda: opt_np.step([g])
    try:
        import fastopt.torch as ft
        cls = getattr(ft, "Lion", None)
    except ImportError:
        cls = None
    if cls is not None:
        p_ft = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        p_ft.grad = torch.from_numpy(g.copy())
        opt_ft = cls([p_ft], **hyper)
        steps["fastopt.torch.Lion"] = opt_ft.step
    p_lp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    p_lp.grad = torch.from_numpy(g.copy())
    opt_lp = LionPytorch([p_lp], **hyper)
    steps["lion_pytorch.Lion"] = opt_lp.step

    times = {name: [] for name in steps}
    for step in steps.values():   # warm-up: compile, allocate state
        step()
        step()
    for _ in range(args.steps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["lion_pytorch.Lion"])
    print(f"Lion step, one float32 tensor of {n:,} elements, median of {args.steps} interleaved steps "
          f"(torch {torch.__version__}, {torch.get_num_threads()} torch threads)\n")
    print("| implementation | ms/step | GB/s (20 B/param) | speed-up over lion_pytorch |")
    print("| --- | ---: | ---: | ---: |")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {t * 1e3:.1f} | {20 * n / t / 1e9:.1f} | {base / t:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
