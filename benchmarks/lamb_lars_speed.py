"""LAMB and LARS, fused (fastopt, cpu backend: the per-tensor norms in one pass, then the update), against their
two-pass stream roofline and a torch composition, on this machine in one run.

    python benchmarks/lamb_lars_speed.py [--elements N] [--tensors T] [--repeats R]

Bytes counted from the phases (float32, 4 bytes an element and array):
- LAMB: pass 1 reads p, g, exp_avg, exp_avg_sq (the update is computed, not stored); pass 2 reads them and writes p,
  exp_avg, exp_avg_sq: 11 arrays, 44 bytes/element.
- LARS: pass 1 reads p, g; pass 2 reads p, g, momentum_buffer and writes p, momentum_buffer: 7 arrays, 28 B/element.
The roofline is the time of the same passes as plain streams (a read-only pass over the pass-1 arrays, then
fastopt.bench.roofline's read-modify-write stream with the slot count), timed interleaved with the rest.
The torch composition is what a torch user writes without a fused LAMB/LARS: torch._foreach_* ops over the tensors
and torch._foreach_norm for the norms (float32, torch's default threads).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _read_kernel(arrays: int):
    import numba
    from numba import prange

    if arrays == 4:
        @numba.njit(parallel=True, cache=True, fastmath=True)   # fastmath: a vectorised sum, reading at full speed
        def read4(a, b, c, d):
            total = 0.0
            for i in prange(a.size):
                total += a[i] + b[i] + c[i] + d[i]
            return total
        return read4

    @numba.njit(parallel=True, cache=True, fastmath=True)
    def read2(a, b):
        total = 0.0
        for i in prange(a.size):
            total += a[i] + b[i]
        return total
    return read2


def _torch_lamb(torch, params, grads, m, v, lr=1e-3, b1=0.9, b2=0.999, eps=1e-6, wd=0.01):
    state = {"t": 0}

    def step():
        state["t"] += 1
        t = state["t"]
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, 1 - b2)
        denom = torch._foreach_div(v, 1 - b2 ** t)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        u = torch._foreach_div(m, 1 - b1 ** t)
        torch._foreach_div_(u, denom)
        torch._foreach_add_(u, params, alpha=wd)
        p_norm, u_norm = torch._foreach_norm(params), torch._foreach_norm(u)
        ratio = [torch.where((a > 0) & (b > 0), a / b, torch.ones_like(a)) for a, b in zip(p_norm, u_norm)]
        torch._foreach_mul_(u, ratio)
        torch._foreach_add_(params, u, alpha=-lr)
    return step


def _torch_lars(torch, params, grads, buf, lr=1.0, wd=1e-4, coef=1e-3, momentum=0.9):
    def step():
        u = torch._foreach_add(grads, params, alpha=wd)
        p_norm, u_norm = torch._foreach_norm(params), torch._foreach_norm(u)
        ratio = [torch.where((a > 0) & (b > 0), coef * a / b, torch.ones_like(a)) * -lr
                 for a, b in zip(p_norm, u_norm)]
        torch._foreach_mul_(u, ratio)
        torch._foreach_mul_(buf, momentum)
        torch._foreach_add_(buf, u)
        torch._foreach_add_(params, buf)
    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=1 << 24)
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    import torch

    import fastopt
    from fastopt.bench.roofline import cpu_stream_step

    n, dtype = args.elements, np.float32
    sizes = [n // args.tensors] * (args.tensors - 1) + [n - (n // args.tensors) * (args.tensors - 1)]
    rng = np.random.default_rng(0)

    def arrays():
        return [rng.standard_normal(s).astype(dtype) for s in sizes]

    grads = arrays()
    lamb = fastopt.LAMB(arrays(), lr=1e-3, weight_decay=0.01, backend="cpu")
    lars = fastopt.LARS(arrays(), lr=1.0, weight_decay=1e-4, backend="cpu")
    tg = [torch.from_numpy(g) for g in grads]
    t_lamb = _torch_lamb(torch, [torch.from_numpy(a) for a in arrays()], tg,
                         [torch.zeros(s) for s in sizes], [torch.zeros(s) for s in sizes])
    t_lars = _torch_lars(torch, [torch.from_numpy(a) for a in arrays()], tg, [torch.zeros(s) for s in sizes])
    flat = [rng.standard_normal(n).astype(dtype) for _ in range(4)]
    read4, read2 = _read_kernel(4), _read_kernel(2)
    runs = {
        "fastopt LAMB": lambda: lamb.step(grads),
        "torch LAMB (foreach composition)": t_lamb,
        "stream: read 4 arrays": lambda: read4(*flat),
        "stream: Adam's pattern (7 arrays)": cpu_stream_step(2, n, dtype),
        "fastopt LARS": lambda: lars.step(grads),
        "torch LARS (foreach composition)": t_lars,
        "stream: read 2 arrays": lambda: read2(flat[0], flat[1]),
        "stream: momentum pattern (5 arrays)": cpu_stream_step(1, n, dtype),
    }
    best = dict.fromkeys(runs, float("inf"))
    for f in runs.values():
        f()
    for _ in range(args.repeats):
        for name, f in runs.items():
            t = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t)
    roof = {"LAMB": best["stream: read 4 arrays"] + best["stream: Adam's pattern (7 arrays)"],
            "LARS": best["stream: read 2 arrays"] + best["stream: momentum pattern (5 arrays)"]}
    nbytes = {"LAMB": 44 * n, "LARS": 28 * n}
    print(f"{n:,} float32 elements in {args.tensors} tensors, {torch.get_num_threads()} torch threads; "
          f"min of {args.repeats} interleaved runs")
    print("| optimizer | fastopt ms | two-pass roofline ms | roofline / fastopt | GB/s | torch composition ms | "
          "torch / fastopt |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in ("LAMB", "LARS"):
        ours, theirs = best[f"fastopt {name}"], best[f"torch {name} (foreach composition)"]
        print(f"| {name} | {ours * 1e3:.2f} | {roof[name] * 1e3:.2f} | {roof[name] / ours:.2f} | "
              f"{nbytes[name] / ours / 1e9:.1f} | {theirs * 1e3:.2f} | {theirs / ours:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
