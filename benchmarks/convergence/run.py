"""Run the convergence study: every optimizer x every fastopt backend on one MLP, plus the 2-D toy.

    python -m benchmarks.convergence                 # CPU: the `numpy` reference and the fused `cpu` backend
    python -m benchmarks.convergence --device cuda   # GPU: CuPy arrays, the fused `cuda` backend

Every (optimizer, backend) run starts from the same He-initialised weights and sees the same sequence of
mini-batches, so the curves differ only through the optimizer (and, across backends, through rounding).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import data as data_mod
from . import mlp, toy
from .optimizers import COLORS, MLP, make

COMMITTED_OUT = Path(__file__).resolve().parents[1] / "results" / "convergence"  # pass it with --out to update


def default_out(device: str) -> Path:
    """A new folder per run, in the current directory: a default run never overwrites anything (the committed
    results are written with an explicit --out)."""
    return Path.cwd() / f"convergence-{device}-{time.strftime('%Y%m%d-%H%M%S')}"
HOST_BACKENDS = ("numpy", "cpu")


def to_numpy(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def batch_schedule(n_train, iters, batch, seed):
    """The (iters, batch) indices of every mini-batch: drawn once, shared by every optimizer and backend."""
    rng = np.random.default_rng(seed + 1)
    return np.stack([rng.choice(n_train, size=batch, replace=False) for _ in range(iters)])


def _sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


def train(entry, params0, x_train, y_train, schedule, backend=None, warmup=True):
    """Train a copy of `params0` with the optimizer `entry` over the batches of `schedule`.

    Returns (params, losses, wall_s, step_times): losses is a NumPy array of the mini-batch loss of every
    iteration, wall_s the time of the whole loop (forward, backward and update), step_times the seconds spent in
    each `opt.step` call (on a GPU: host overhead plus device time, the device synchronised on both sides).
    With `warmup`, one throwaway step on other copies first compiles whatever the backend compiles (Numba, NVRTC),
    so neither time includes compilation.
    """
    xp = mlp.get_xp(params0[0])
    iters = len(schedule)
    if warmup:
        scratch = [p.copy() for p in params0]
        _, g = mlp.loss_and_grads(scratch, x_train[schedule[0]], y_train[schedule[0]])
        make(entry, scratch, backend=backend).step(g)
        _sync(xp)
    params = [p.copy() for p in params0]
    opt = make(entry, params, backend=backend)
    losses = xp.empty(iters, dtype=np.float64)
    step_times = np.empty(iters)
    _sync(xp)
    t0 = time.perf_counter()
    for i in range(iters):
        idx = schedule[i]
        value, grads = mlp.loss_and_grads(params, x_train[idx], y_train[idx])
        losses[i] = value
        _sync(xp)  # a no-op for NumPy; on a GPU the queue must be empty on both sides of the step's own time
        ts = time.perf_counter()
        opt.step(grads)
        _sync(xp)
        step_times[i] = time.perf_counter() - ts
    _sync(xp)
    wall_s = time.perf_counter() - t0
    if hasattr(opt, "eval"):  # schedule-free: loss and accuracy at the averaged point, as its authors evaluate
        opt.eval()
    return params, to_numpy(losses), wall_s, step_times


def _max_gap(reference, losses):
    """The largest relative difference between two loss curves ('' without a reference; 0.0: bit-identical)."""
    if reference is None or reference is losses:
        return ""
    diff, scale = np.abs(losses - reference), np.abs(reference)
    # a mini-batch loss of exactly 0 (Lion, AdEMAMix): equal values differ by 0, not by 0/0
    gap = np.divide(diff, scale, out=np.where(diff == 0, 0.0, np.inf), where=scale != 0)
    return float(np.max(gap))


def smooth(values, window=25):
    """Centred moving average; returns (x, y) with x the iteration at the centre of each window."""
    values = np.asarray(values, dtype=np.float64)
    window = max(1, min(window, len(values)))
    y = np.convolve(values, np.ones(window) / window, mode="valid")
    x = np.arange(len(y)) + (window - 1) / 2
    return x, y


def plot_losses(curves, filename, title, window=25):
    """curves: {backend: {optimizer: losses}}; one panel per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(curves)
    fig, axes = plt.subplots(1, len(backends), figsize=(6.4 * len(backends), 4.4), squeeze=False, sharey=True)
    for ax, backend in zip(axes[0], backends):
        for name, losses in curves[backend].items():
            x, y = smooth(losses, window)
            ax.plot(x, y, color=COLORS.get(name), lw=1.4, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_title(f"backend = {backend!r}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"training loss (mini-batch, moving average of {window})")
    axes[0][-1].legend(fontsize=8, ncol=2)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


FIELDS = ["optimizer", "backend", "final_train_loss", "last100_batch_loss", "test_accuracy", "wall_s", "step_total_s",
          "step_median_us", "step_median_vs_numpy", "max_gap_to_numpy"]


def write_tables(rows, out, header_lines):
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in FIELDS})
    lines = list(header_lines) + [
        "",
        ("| optimizer | backend | final train loss | test accuracy | wall time (s) | time in step (s)"
        " | step, median (µs) | step time / `numpy` | loss curve vs `numpy` |"),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = "" if r["step_median_vs_numpy"] == "" else f"{r['step_median_vs_numpy']:.2f}"
        gap = r["max_gap_to_numpy"]
        gap = "" if gap == "" else "identical" if gap == 0 else f"{gap:.1e}"
        lines.append(f"| {r['optimizer']} | `{r['backend']}` | {r['final_train_loss']:.2e} | {r['test_accuracy']:.3f}"
                     f" | {r['wall_s']:.2f} | {r['step_total_s']:.3f} | {r['step_median_us']:.0f} | {ratio}"
                     f" | {gap} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _gpu_name(xp):
    if xp is np:
        return ""
    try:
        return ", GPU " + xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)["name"].decode()
    except Exception:  # noqa: BLE001 - the name is decoration only
        return ", GPU"


def _loadavg():
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (OSError, AttributeError):
        return "n/a"


def _blas_limits(threads):
    """Limit BLAS to `threads` threads (through threadpoolctl, which scikit-learn brings); 0: leave it alone."""
    if threads <= 0:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("threadpoolctl is missing: BLAS keeps its default thread count")
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.convergence", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu: NumPy arrays; cuda: CuPy arrays (default cpu)")
    p.add_argument("--backends", default=None,
                   help="comma-separated fastopt backends (default: every available one for the device)")
    p.add_argument("--optimizers", default=",".join(MLP), help="comma-separated subset of: " + ", ".join(MLP))
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", type=int, default=100, help="units per hidden layer")
    p.add_argument("--layers", type=int, default=4, help="hidden layers")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=0, help="weights and mini-batch order")
    p.add_argument("--data", default=None, help="an .npz with x_train, y_train, x_test, y_test (e.g. MNIST); "
                                                "default: scikit-learn's 8x8 digits")
    p.add_argument("--smooth", type=int, default=25, help="moving-average window for the loss plot")
    p.add_argument("--out", default=None, help="output folder (default: a new ./convergence-DEVICE-DATE-TIME; the "
                                               "committed results: --out benchmarks/results/convergence)")
    p.add_argument("--repeats", type=int, default=3,
                   help="train each (optimizer, backend) this many times and report the fastest (default 3)")
    p.add_argument("--no-toy", action="store_true", help="skip the 2-D toy figure")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="threads for the MLP's matrix products (default 1: its matrices are ~128x100, and idle "
                        "BLAS threads spinning beside Numba's own threads slow both); 0 leaves BLAS alone")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import fastopt

    available = fastopt.available_backends()
    if args.device == "cuda":
        import cupy as xp
        wanted = ["cuda"]
    else:
        xp = np
        wanted = list(HOST_BACKENDS)
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        for b in backends:
            if available.get(b, "unknown backend") is not None:
                sys.exit(f"backend {b!r} is not available here: {available.get(b, 'unknown backend')}")
    else:
        backends = [b for b in wanted if available.get(b) is None]
        for b in wanted:
            if available.get(b) is not None:
                print(f"skipping backend {b!r}: {available[b]}")
    if not backends:
        sys.exit("no fastopt backend available for this device")
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in MLP]
    if unknown:
        sys.exit(f"unknown optimizers {unknown}; choose from {list(MLP)}")

    dtype = np.dtype(args.dtype)
    try:
        ds = data_mod.load(args.data, dtype=dtype)
    except data_mod.MissingExtra as error:
        sys.exit(str(error))
    out = Path(args.out) if args.out else default_out(args.device)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [ds.n_features] + [args.hidden] * args.layers + [ds.n_classes]
    x_train, y_train = xp.asarray(ds.x_train), xp.asarray(ds.y_train)
    x_test, y_test = xp.asarray(ds.x_test), xp.asarray(ds.y_test)
    params0 = mlp.init_params(sizes, seed=args.seed, dtype=dtype, xp=xp)
    schedule = batch_schedule(len(ds.x_train), args.iters, args.batch, args.seed)
    schedule_dev = xp.asarray(schedule)
    print(f"data: {ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test, {ds.n_features} features, "
          f"{ds.n_classes} classes; MLP {sizes}, {dtype}, {args.iters} iterations of {args.batch}; "
          f"backends {backends}")

    curves = {b: {} for b in backends}
    rows = []
    limits = _blas_limits(args.blas_threads)
    load_before = _loadavg()
    t_all = time.perf_counter()
    for name in names:
        numpy_median = None
        for backend in backends:  # side by side, so the ratios compare like with like
            walls, medians, totals = [], [], []
            for _ in range(args.repeats):  # the same run again: identical numbers, another chance at a quiet CPU
                params, losses, wall_s, step_times = train(MLP[name], params0, x_train, y_train, schedule_dev,
                                                           backend)
                walls.append(wall_s)
                medians.append(float(np.median(step_times)))
                totals.append(float(step_times.sum()))
            curves[backend][name] = losses
            wall_s, median = min(walls), min(medians)
            row = {"optimizer": name, "backend": backend,
                       "final_train_loss": mlp.mean_loss(params, x_train, y_train),
                       "last100_batch_loss": float(losses[-100:].mean()),
                       "test_accuracy": mlp.accuracy(params, x_test, y_test),
                       "wall_s": wall_s, "step_total_s": min(totals), "step_median_us": 1e6 * median,
                       "max_gap_to_numpy": _max_gap(curves.get("numpy", {}).get(name), losses)}
            if backend == "numpy":
                numpy_median = median
            row["step_median_vs_numpy"] = median / numpy_median if numpy_median else ""
            rows.append(row)
            print(f"{name:>9} {backend:>6}: train loss {row['final_train_loss']:.2e}  "
                  f"test acc {row['test_accuracy']:.3f}  wall {wall_s:6.2f} s  "
                  f"step {row['step_total_s']:6.3f} s (median {row['step_median_us']:.0f} us)", flush=True)
    total_s = time.perf_counter() - t_all
    if limits is not None:
        limits.restore_original_limits()

    np.savez_compressed(out / "losses.npz", **{f"{b}/{n}": c for b, per in curves.items() for n, c in per.items()})
    header = [
        (f"Data: {ds.name}, {len(ds.x_train)} train / {len(ds.x_test)} test images. "
        f"MLP {'-'.join(map(str, sizes))} (ReLU, He init), {dtype}, {args.iters} iterations of mini-batches of "
        f"{args.batch}, seed {args.seed}."),
        "",
        (f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"NumPy {np.__version__}{_gpu_name(xp)}, BLAS threads {args.blas_threads or 'default'}. Device: {args.device}. "
        f"Load average before/after: {load_before} / {_loadavg()}. Total {total_s:.1f} s."),
        "",
        ("Final train loss: mean cross-entropy over the whole training set after the last step. Wall time: the whole "
        "training loop (forward, backward, update); time in step: `opt.step` alone (after a warm-up step, so no "
        "compilation); both are the fastest of the repeats. Ratios are measured in the same run. Loss curve vs "
        "`numpy`: the largest relative difference between this backend's mini-batch losses and the `numpy` "
        "reference's (identical: bit for bit; rounding differences, where there are any, grow during training)."),
    ]
    write_tables(rows, out, header)
    plot_losses(curves, out / "loss_curves.png",
                f"{ds.name}: MLP {'-'.join(map(str, sizes))}, batch {args.batch}, through fastopt",
                window=args.smooth)
    if not args.no_toy:
        toy_backend = "cpu" if "cpu" in backends else backends[-1]
        paths = toy.all_paths(backend=toy_backend, xp=xp)
        toy.plot(paths, out / "toy_paths.png", backend=toy_backend)
        (out / "toy_paths.json").write_text(json.dumps(
            {"backend": toy_backend, "steps": toy.STEPS, "start": toy.START,
             "final": {n: {"x": float(p[-1, 0]), "y": float(p[-1, 1]), "f": float(toy.f(*p[-1]))}
                       for n, p in paths.items()}}, indent=1) + "\n")
    print(f"wrote {out} ({total_s:.1f} s of training)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
