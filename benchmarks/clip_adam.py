"""Clipped Adam, fused (fastopt: Adam(max_grad_norm=...), the norm pass then the update with the coefficient folded
in) against torch (clip_grad_norm_ with foreach, then Adam(fused=True)), and against its two-pass stream roofline:
a read-only pass over the grads plus the stream with Adam's access pattern (fastopt.bench.roofline: read p, g, m, v,
write p, m, v), timed on this machine.

    python benchmarks/clip_adam.py [--elements N] [--repeats R]

Prints one table row per implementation: min time over R interleaved repeats, and the ratios. Bytes counted from the
phases: pass 1 reads the grads (4 bytes/element in float32), pass 2 moves Adam's 7 arrays (28 bytes/element).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _read_kernel():
    import numba
    from numba import prange

    @numba.njit(parallel=True, cache=True, fastmath=True)   # fastmath: a vectorised sum, reading at full speed
    def read(g):
        total = 0.0
        for i in prange(g.size):
            total += g[i]
        return total
    return read


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=1 << 24)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    import torch

    import fastopt.optim
    from fastopt.bench.roofline import cpu_stream_step

    n, dtype = args.elements, np.float32
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(n).astype(dtype)]
    fused = fastopt.optim.Adam([rng.standard_normal(n).astype(dtype)], lr=1e-3, backend="cpu", max_grad_norm=1.0)
    plain = fastopt.optim.Adam([rng.standard_normal(n).astype(dtype)], lr=1e-3, backend="cpu")
    tp = [torch.tensor(rng.standard_normal(n).astype(dtype), requires_grad=True)]
    tp[0].grad = torch.tensor(grads[0])
    topt = torch.optim.Adam(tp, lr=1e-3, fused=True)
    stream = cpu_stream_step(2, n, dtype)
    read = _read_kernel()
    g = grads[0]

    def torch_step():
        torch.nn.utils.clip_grad_norm_(tp, 1.0, foreach=True)
        topt.step()

    runs = {"fastopt Adam(max_grad_norm=1)": lambda: fused.step(grads), "fastopt Adam (no clipping)":
            lambda: plain.step(grads), "torch clip_grad_norm_ + Adam(fused)": torch_step,
            "stream: Adam's pattern": stream, "stream: read grads": lambda: read(g)}
    best = dict.fromkeys(runs, float("inf"))
    for f in runs.values():
        f()
    for _ in range(args.repeats):
        for name, f in runs.items():
            t = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t)
    roof = best["stream: Adam's pattern"] + best["stream: read grads"]
    print(f"{n:,} float32 elements, {torch.get_num_threads()} torch threads; min of {args.repeats} interleaved runs")
    print("| implementation | ms | GB/s (32 B/element) | two-pass roofline / time |")
    print("| --- | ---: | ---: | ---: |")
    for name, t in best.items():
        print(f"| {name} | {t * 1e3:.2f} | {32 * n / t / 1e9:.1f} | {roof / t:.2f} |")
    speedup = best["torch clip_grad_norm_ + Adam(fused)"] / best["fastopt Adam(max_grad_norm=1)"]
    print(f"clipped fastopt against torch clip_grad_norm_ + fused Adam: {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
