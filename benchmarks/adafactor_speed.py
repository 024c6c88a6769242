"""Adafactor, fused (fastopt, cpu backend: kernels/cpu/adafactor.py) against the stream roofline of its access
pattern and torch.optim.Adafactor (foreach=True), on this machine in one run.

    python benchmarks/adafactor_speed.py [--rows M] [--cols N] [--repeats R] [--dtype float32]

Bytes counted from the phases, for a factored (matrix) param of M x N elements, per element and array 4 bytes in
float32: pass 1 reads p and g (||p||^2, the row and column sums of g^2); pass 2 reads g (||U||^2, U computed from g and
the small row/column state, not stored); pass 3 reads p and g and writes p: 6 arrays, 24 bytes/element. The row and
column state and the scratch (M + 32 N float64 at most) are left out. The roofline is the same three passes as plain
streams (a read-only pass over p and g, one over g, then fastopt.bench.roofline's read-modify-write stream without
state), timed interleaved with the rest; min over R repeats.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _read_kernels():
    import numba
    from numba import prange

    @numba.njit(parallel=True, cache=True, fastmath=True)   # fastmath: a vectorised sum, reading at full speed
    def read2(a, b):
        total = 0.0
        for i in prange(a.size):
            total += a[i] + b[i]
        return total

    @numba.njit(parallel=True, cache=True, fastmath=True)
    def read1(a):
        total = 0.0
        for i in prange(a.size):
            total += a[i]
        return total
    return read1, read2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args(argv)
    import torch

    import fastopt
    from fastopt.bench.roofline import cpu_stream_step

    m, n, dtype = args.rows, args.cols, np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((m, n)).astype(dtype)
    g = (rng.standard_normal((m, n)) * 0.1).astype(dtype)
    ours = fastopt.Adafactor([p0.copy()], backend="cpu")
    tp = torch.tensor(p0.copy(), requires_grad=True)
    tp.grad = torch.tensor(g)
    theirs = torch.optim.Adafactor([tp], foreach=True)
    single = torch.optim.Adafactor([torch.tensor(p0.copy(), requires_grad=True)], foreach=False)
    single.param_groups[0]["params"][0].grad = torch.tensor(g)
    read1, read2 = _read_kernels()
    flat_p, flat_g = p0.reshape(-1).copy(), g.reshape(-1)
    stream = cpu_stream_step(0, m * n, dtype)

    runs = {"fastopt Adafactor (cpu)": lambda: ours.step([g]),
            "torch Adafactor(foreach=True)": theirs.step,
            "torch Adafactor(foreach=False)": single.step,
            "stream: read p, g": lambda: read2(flat_p, flat_g),
            "stream: read g": lambda: read1(flat_g),
            "stream: read p, g, write p": stream}
    best = dict.fromkeys(runs, float("inf"))
    for f in runs.values():
        f()
    for _ in range(args.repeats):
        for name, f in runs.items():
            t = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t)
    roof = best["stream: read p, g"] + best["stream: read g"] + best["stream: read p, g, write p"]
    size = m * n
    nbytes = 6 * dtype.itemsize * size
    print(f"{m} x {n} = {size:,} {dtype.name} elements, {torch.get_num_threads()} torch threads, "
          f"{fastopt.backends.cpu.numba.get_num_threads()} Numba threads; min of {args.repeats} interleaved runs")
    print(f"| implementation | ms | GB/s ({6 * dtype.itemsize} B/element) | three-pass roofline / time |")
    print("| --- | ---: | ---: | ---: |")
    for name, t in best.items():
        print(f"| {name} | {t * 1e3:.2f} | {nbytes / t / 1e9:.1f} | {roof / t:.2f} |")
    print(f"| three-pass roofline (sum of the streams) | {roof * 1e3:.2f} | {nbytes / roof / 1e9:.1f} | 1.00 |")
    ratio = best["torch Adafactor(foreach=True)"] / best["fastopt Adafactor (cpu)"]
    print(f"fastopt against torch Adafactor(foreach=True): {ratio:.2f}x; fastopt at "
          f"{roof / best['fastopt Adafactor (cpu)']:.0%} of its roofline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
