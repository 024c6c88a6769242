"""Each optimizer's cpu step against its own stream roofline, measured in turns, for a machine shared with other work.

    python -m benchmarks.interleaved_roofline --optimizers lion,signum,adabelief,yogi
    python -m benchmarks.interleaved_roofline --optimizers adam --size 4M --steps 21

fastopt-bench measures a stream and then the kernels; when other processes load the machine, the two see different
loads and "% of roofline" can read far above 100. Here each optimizer's step (cpu backend, one float32 tensor) and
the stream with its access pattern (fastopt.bench.roofline.cpu_stream_step: the same reads and in-place writes,
trivial arithmetic, Numba parallel) take turns step by step, so both see the same load, and the ratio of medians is
the figure. Bytes per step come from the optimizer's active state (fastopt.bench.workloads.bytes_per_param).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizers", required=True, help="bench case names (fastopt-bench --help lists them)")
    ap.add_argument("--size", default="16M", help="elements in the one float32 tensor (default 16M)")
    ap.add_argument("--steps", type=int, default=15, help="timed turns (median kept)")
    args = ap.parse_args(argv)

    import fastopt
    from fastopt.bench.roofline import cpu_stream_step
    from fastopt.bench.workloads import CASES, bytes_per_param, parse_size

    n = parse_size(args.size)
    rng = np.random.default_rng(0)
    grad = (1e-2 * rng.standard_normal(n)).astype(np.float32)
    print(f"cpu backend, one float32 tensor of {n:,} elements, median of {args.steps} turns (optimizer step, then "
          f"its stream)\n")
    print("| optimizer | B/param | step ms | stream ms | step GB/s | % of its stream |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.optimizers.split(","):
        case = CASES[name]
        n_slots = len(case.active_slots())
        params = [rng.standard_normal(n).astype(np.float32)]
        opt = fastopt.OPTIMIZERS[case.spec](params, **case.hyper, backend="cpu")
        stream = cpu_stream_step(n_slots, n, np.float32)
        opt.step([grad])   # warm-up: compile, allocate state
        stream()
        steps, streams = [], []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            opt.step([grad])
            t1 = time.perf_counter()
            stream()
            t2 = time.perf_counter()
            steps.append(t1 - t0)
            streams.append(t2 - t1)
        step, ref = statistics.median(steps), statistics.median(streams)
        moved = bytes_per_param(case, 4) * n
        print(f"| {name} | {bytes_per_param(case, 4)} | {step * 1e3:.1f} | {ref * 1e3:.1f} | {moved / step / 1e9:.1f} "
              f"| {100 * ref / step:.0f}% |")
        del opt, params, stream
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
