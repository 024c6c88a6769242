"""Adan, ADOPT and AdEMAMix on the cpu backend against their stream roofline, pytorch-optimizer and optax, in turns.

    python -m benchmarks.adan_adopt_ademamix_speed
    python -m benchmarks.adan_adopt_ademamix_speed --optimizers adopt --size 4M --turns 21

One float32 tensor (16M elements by default). In every turn each implementation takes one step, so all of them see
the same load on a shared machine; the medians' ratios are the figures:
- `stream`: the optimizer's access pattern with trivial arithmetic (reads p, g and its n slots, writes p and the
  slots in place; fastopt.bench.roofline's kernels, and one with 4 slots for Adan, which they stop short of);
- `pytorch-optimizer` (kozistr's collection, the usual PyTorch implementations of the three): foreach and per-tensor
  loop, torch with 2 threads; its defaults follow the papers, not optax, but move the same bytes;
- `optax-jit`: the oracle itself, jitted by XLA on CPU.
Columns whose package is missing are left out. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

CASES = {   # name: (fastopt class, pytorch_optimizer class, optax builder)
    "adan": ("Adan", "Adan", lambda optax: optax.adan(1e-3)),
    "adopt": ("ADOPT", "ADOPT", lambda optax: optax.contrib.adopt(1e-3)),
    "ademamix": ("AdEMAMix", "AdEMAMix", lambda optax: optax.contrib.ademamix(1e-3)),
}

_stream4 = None


def _stream4_step(n):
    """The stream with 4 slots (fastopt.bench.roofline stops at 3), written the same way."""
    global _stream4
    if _stream4 is None:
        from numba import njit, prange

        @njit(parallel=True, cache=True)
        def stream4(p, g, s1, s2, s3, s4, c):
            for i in prange(p.size):
                gi = g[i]
                a, b, d, e = s1[i] * c + gi, s2[i] * c + gi, s3[i] * c + gi, s4[i] * c + gi
                s1[i], s2[i], s3[i], s4[i] = a, b, d, e
                p[i] = p[i] - c * (a + b + d + e)
        _stream4 = stream4
    arrays = [np.full(n, 0.5, np.float32), np.full(n, 0.25, np.float32)] + [np.zeros(n, np.float32) for _ in range(4)]
    c = np.float32(0.5)
    return lambda: _stream4(*arrays, c)


def _stream(n_slots, n):
    from fastopt.bench.roofline import MAX_SLOTS, cpu_stream_step
    return cpu_stream_step(n_slots, n, np.float32) if n_slots <= MAX_SLOTS else _stream4_step(n)


def _fastopt(name, n, grad):
    import fastopt
    p = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    opt = fastopt.OPTIMIZERS[name]([p], backend="cpu", lr=1e-3)
    return lambda: opt.step([grad])


def _pytorch_optimizer(cls, n, grad, foreach):
    import pytorch_optimizer
    import torch
    torch.set_num_threads(2)
    p = torch.nn.Parameter(torch.from_numpy(np.random.default_rng(1).standard_normal(n).astype(np.float32)))
    p.grad = torch.from_numpy(grad.copy())
    opt = getattr(pytorch_optimizer, cls)([p], lr=1e-3, foreach=foreach)
    return opt.step


def _optax(build, n, grad):
    import jax
    import optax
    tx = build(optax)
    params = jax.numpy.asarray(np.random.default_rng(1).standard_normal(n).astype(np.float32))
    g = jax.numpy.asarray(grad)
    box = [params, tx.init(params)]

    @jax.jit
    def update(p, state):
        u, state = tx.update(g, state, p)
        return optax.apply_updates(p, u), state

    def step():
        box[0], box[1] = update(box[0], box[1])
        box[0].block_until_ready()
    return step


def _optional(make, *args):
    """An implementation from an optional package, or None where the package is missing."""
    try:
        return make(*args)
    except ImportError:
        return None


def _measure(name, n, grad, turns, case, bytes_per_param):
    """Median seconds per step of every implementation, taking turns; returns (class name, medians, bytes/step)."""
    cls, po_cls, build = CASES[name]
    impls = {"fastopt": _fastopt(name, n, grad), "stream": _stream(len(case.active_slots()), n),
             "po-foreach": _optional(_pytorch_optimizer, po_cls, n, grad, True),
             "po-loop": _optional(_pytorch_optimizer, po_cls, n, grad, False),
             "optax": _optional(_optax, build, n, grad)}
    impls = {k: v for k, v in impls.items() if v is not None}
    for step in impls.values():   # compile and warm up
        step()
        step()
    times = {k: [] for k in impls}
    for _ in range(turns):
        for k, step in impls.items():
            t0 = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t0)
    return cls, {k: statistics.median(v) for k, v in times.items()}, bytes_per_param(case, 4) * n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizers", default=",".join(CASES), help=f"from {','.join(CASES)}")
    ap.add_argument("--size", default="16M", help="elements in the one float32 tensor (default 16M)")
    ap.add_argument("--turns", type=int, default=9, help="timed turns (median kept)")
    args = ap.parse_args(argv)

    from fastopt.bench.workloads import CASES as BENCH_CASES
    from fastopt.bench.workloads import bytes_per_param, parse_size

    n = parse_size(args.size)
    grad = (1e-2 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    print(f"cpu, one float32 tensor of {n:,} elements, median of {args.turns} turns; ratios are the others' time over "
          f"fastopt's (> 1: fastopt faster)\n")
    print("| optimizer | B/param | fastopt ms | GB/s | % of its stream | x pytorch-optimizer foreach | x its loop "
          "| x optax jit |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.optimizers.split(","):
        cls, med, nbytes = _measure(name, n, grad, args.turns, BENCH_CASES[name], bytes_per_param)
        ratios = [f"{med[k] / med['fastopt']:.2f}" if k in med else "-" for k in ("po-foreach", "po-loop", "optax")]
        print(f"| {cls} | {nbytes // n} | {1e3 * med['fastopt']:.1f} | {nbytes / med['fastopt'] / 1e9:.1f} | "
              f"{100 * med['stream'] / med['fastopt']:.0f} | {' | '.join(ratios)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
