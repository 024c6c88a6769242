"""Optimizers whose step runs in phases (kernel contract v2: reductions, then the update), fused in fastopt, against
their stream roofline and against what a torch user runs instead, on one device in one run.

    python benchmarks/phases_speed.py [--device cpu|cuda] [--elements N] [--tensors T] [--repeats R]
                                      [--cases clip_adam,lamb,lars] [--markdown FILE]

Cases (float32; bytes counted from the phases, 4 bytes an element and array):
- clip_adam: Adam(max_grad_norm=1.0). Phase 1 reads g (the norm); phase 2 reads p, g, exp_avg, exp_avg_sq and writes
  p, exp_avg, exp_avg_sq: 8 arrays, 32 B/element. torch: clip_grad_norm_(foreach=True) then Adam(fused=True).
- lamb: LAMB(weight_decay=0.01). Phase 1 reads p, g, exp_avg, exp_avg_sq (the update is computed, not stored);
  phase 2 as Adam's: 11 arrays, 44 B/element. torch: a torch._foreach_* composition with torch._foreach_norm.
- lars: LARS(weight_decay=1e-4). Phase 1 reads p, g; phase 2 reads p, g, momentum_buffer and writes p and the
  buffer: 7 arrays, 28 B/element. torch: a torch._foreach_* composition.
The roofline is the time of the same phases as plain streams, measured here: a read-only pass over the phase-1
arrays, then fastopt.bench.roofline's read-modify-write stream with the case's slot count.

Timing: on cuda, CuPy's event timer (cupyx.profiler.benchmark, GPU times); on cpu, perf_counter. Every
implementation of a case runs once per round, rounds interleaved, and the minimum is kept: the ratios come from one
run under the same conditions.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

CASES = ("clip_adam", "lamb", "lars")
# arrays read in phase 1, slots of phase 2, bytes per element
PHASES = {"clip_adam": (1, 2, 32), "lamb": (4, 2, 44), "lars": (2, 1, 28)}


# ---- devices: arrays, read streams, timers ----

class Cpu:
    name = "cpu"

    def __init__(self):
        import torch
        self.torch = torch
        self.rng = np.random.default_rng(0)

    def arrays(self, sizes, count):
        return [[self.rng.standard_normal(n).astype(np.float32) for n in sizes] for _ in range(count)]

    def tensors(self, arrays):
        return [self.torch.from_numpy(a.copy()) for a in arrays]

    def zeros_like_tensors(self, tensors):
        return [self.torch.zeros_like(t) for t in tensors]

    def read_stream(self, count, n):
        import numba
        from numba import prange
        flat = [self.rng.standard_normal(n).astype(np.float32) for _ in range(count)]

        @numba.njit(parallel=True, fastmath=True)   # fastmath: a vectorised sum, reading at full speed
        def read(arrays):
            total = 0.0
            for a in arrays:
                for i in prange(a.size):
                    total += a[i]
            return total
        typed = numba.typed.List(flat)
        return lambda: read(typed)

    def stream(self, slots, n):
        from fastopt.bench.roofline import cpu_stream_step
        return cpu_stream_step(slots, n, np.float32)

    def best_of(self, fn, repeats):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best


class Cuda(Cpu):
    name = "cuda"

    def __init__(self):
        import cupy
        import torch
        self.cp, self.torch = cupy, torch
        self.rng = cupy.random.default_rng(0)

    def arrays(self, sizes, count):
        return [[self.rng.standard_normal(n, dtype=np.float32) for n in sizes] for _ in range(count)]

    def tensors(self, arrays):
        return [self.torch.as_tensor(a, device="cuda").clone() for a in arrays]

    def read_stream(self, count, n):
        cp = self.cp
        flat = [self.rng.standard_normal(n, dtype=np.float32) for _ in range(count)]
        names = [f"x{i}" for i in range(count)]
        kernel = cp.ReductionKernel(", ".join(f"T {x}" for x in names), "float64 out", " + ".join(names),
                                    "a + b", "out = a", "0", f"fastopt_bench_read{count}")
        return lambda: kernel(*flat)

    def stream(self, slots, n):
        from fastopt.bench.roofline import gpu_stream_step
        return gpu_stream_step(slots, n, np.float32)

    def best_of(self, fn, repeats):
        from cupyx.profiler import benchmark
        self.torch.cuda.synchronize()
        result = benchmark(fn, n_repeat=repeats, n_warmup=1)
        return float(np.min(result.gpu_times))   # one device: its only row


# ---- the cases ----

def _torch_clip_adam(torch, params, grads):
    for p, g in zip(params, grads):
        p.grad = g
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)

    def step():
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
    return step


def _torch_lamb(torch, params, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-6, wd=0.01):
    m, v, state = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params], {"t": 0}

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


def _torch_lars(torch, params, grads, lr=1.0, wd=1e-4, coef=1e-3, momentum=0.9):
    buf = [torch.zeros_like(p) for p in params]

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


def build(case, device, sizes):
    """{implementation: step function} for one case: fastopt, torch, and the two streams of the roofline."""
    import fastopt
    n = sum(sizes)
    params, grads = device.arrays(sizes, 2)
    tp, tg = device.tensors(params), device.tensors(grads)
    reads, slots, _ = PHASES[case]
    if case == "clip_adam":
        ours = fastopt.Adam(params, lr=1e-3, max_grad_norm=1.0, backend=device.name)
        theirs = _torch_clip_adam(device.torch, tp, tg)
        torch_name = "torch clip_grad_norm_(foreach) + Adam(fused)"
    elif case == "lamb":
        ours = fastopt.LAMB(params, lr=1e-3, weight_decay=0.01, backend=device.name)
        theirs = _torch_lamb(device.torch, tp, tg)
        torch_name = "torch foreach composition"
    else:
        ours = fastopt.LARS(params, lr=1.0, weight_decay=1e-4, backend=device.name)
        theirs = _torch_lars(device.torch, tp, tg)
        torch_name = "torch foreach composition"
    return {"fastopt": lambda: ours.step(grads), torch_name: theirs,
            f"read stream ({reads} arrays)": device.read_stream(reads, n),
            f"update stream ({3 + 2 * slots} arrays)": device.stream(slots, n)}


def measure(case, device, sizes, rounds, per_round):
    runs = build(case, device, sizes)
    for fn in runs.values():   # compile, allocate, warm the caches
        fn()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, fn in runs.items():
            best[name] = min(best[name], device.best_of(fn, per_round))
    return best


def report(case, best, n) -> list[str]:
    names = list(best)
    ours, theirs, read, update = (best[k] for k in names)
    roof = read + update
    nbytes = PHASES[case][2] * n
    return [f"| {case} | {ours * 1e3:.3f} | {nbytes / ours / 1e9:.0f} | {roof / ours:.2f} | {names[1]} | "
            f"{theirs * 1e3:.3f} | {theirs / ours:.2f} |"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--elements", type=int, default=None, help="per case (default: 16M on cpu, 64M on cuda)")
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7, help="rounds; cuda times 5 launches a round")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"--cases: unknown {unknown}; expected some of {list(CASES)}")
    device = Cuda() if args.device == "cuda" else Cpu()
    n = args.elements or (1 << (26 if args.device == "cuda" else 24))
    sizes = [n // args.tensors] * (args.tensors - 1) + [n - (n // args.tensors) * (args.tensors - 1)]
    per_round = 5 if args.device == "cuda" else 1
    lines = [f"{n:,} float32 elements in {args.tensors} tensors on {args.device}; min over {args.repeats} "
             "interleaved rounds", "",
             "| case | fastopt ms | GB/s | roofline / fastopt | torch | torch ms | torch / fastopt |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for case in cases:
        lines += report(case, measure(case, device, sizes, args.repeats, per_round), n)
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
