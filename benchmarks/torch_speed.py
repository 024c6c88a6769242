"""fastopt.torch.X against torch.optim.X (single-tensor, foreach, fused) on CPU, on real models' parameter shapes.

    python -m benchmarks.torch_speed                       # ResNet-50 and GPT-2 small, every optimizer torch has
    python -m benchmarks.torch_speed --models resnet50 --optimizers Adam --steps 3

Every implementation steps the same parameter tensors (float32, shapes from fastopt/bench/shapes/*.json) with the
same fixed gradients; each has its own state. The implementations take turns step by step (A B C D A B C D ...), so a
change in machine load hits all of them alike, and the ratio of medians is the figure to read. Writes
benchmarks/results/torch_cpu_<date>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import time

import torch

import fastopt.torch as ft

SHAPES = pathlib.Path(__file__).parent.parent / "fastopt" / "bench" / "shapes"
RESULTS = pathlib.Path(__file__).parent / "results"
OPTIMIZERS = {  # torch's class name -> arguments (momentum for SGD: the common case, and 20 bytes per param)
    "SGD": dict(lr=0.01, momentum=0.9), "Adam": dict(lr=1e-3), "AdamW": dict(lr=1e-3), "Adagrad": dict(lr=0.01),
    "RMSprop": dict(lr=0.01), "Adadelta": dict(lr=1.0),
}


def _tensors(model: str):
    spec = json.loads((SHAPES / f"{model}.json").read_text())
    generator = torch.Generator().manual_seed(0)
    params = []
    for entry in spec["shapes"]:
        p = torch.randn(entry["shape"], generator=generator).mul_(0.02).requires_grad_()
        p.grad = torch.randn(entry["shape"], generator=generator).mul_(1e-3)
        params.append(p)
    return spec, params


def _implementations(name: str, params, hyper: dict) -> dict:
    cls = getattr(torch.optim, name)
    made = {"fastopt.torch": getattr(ft, name)(params, **hyper)}
    for label, extra in (("torch single-tensor", dict(foreach=False)), ("torch foreach", dict(foreach=True)),
                         ("torch fused", dict(fused=True))):
        try:
            made[label] = cls(params, **hyper, **extra)
        except (RuntimeError, TypeError, ValueError) as error:  # noqa: PERF203 - e.g. no fused RMSprop: n/a
            made[label] = f"n/a: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
    return made


def measure(model: str, names, steps: int, warmup: int) -> list[dict]:
    spec, params = _tensors(model)
    rows = []
    for name in names:
        impls = _implementations(name, params, OPTIMIZERS[name])
        runnable = {k: v for k, v in impls.items() if not isinstance(v, str)}
        times = {k: [] for k in runnable}
        for i in range(warmup + steps):
            for label, opt in runnable.items():
                start = time.perf_counter()
                opt.step()
                elapsed = time.perf_counter() - start
                if i >= warmup:
                    times[label].append(elapsed)
        base = statistics.median(times["fastopt.torch"])
        for label, opt in impls.items():
            row = {"model": model, "tensors": spec["tensors"], "parameters": spec["parameters"], "optimizer": name,
                   "implementation": label}
            if isinstance(opt, str):
                row["note"] = opt
            else:
                median = statistics.median(times[label])
                row.update(ms_per_step=median * 1e3, ratio_to_fastopt=median / base, samples=len(times[label]))
            rows.append(row)
            print(_line(row), flush=True)
        del impls, runnable
    return rows


def _line(row) -> str:
    if "note" in row:
        return f"{row['model']:<11} {row['optimizer']:<9} {row['implementation']:<20} {row['note']}"
    return (f"{row['model']:<11} {row['optimizer']:<9} {row['implementation']:<20} {row['ms_per_step']:9.2f} ms"
            f"   x{row['ratio_to_fastopt']:.2f} of fastopt.torch")


def _markdown(rows, meta) -> str:
    lines = [f"# fastopt.torch vs torch.optim on CPU ({meta['date']})", "",
             f"{meta['machine']}; torch {meta['torch']}, {meta['threads']} threads; float32; median of "
             f"{meta['steps']} steps after {meta['warmup']} warm-up steps, implementations interleaved step by step. "
             f"Load average before the run: {meta['load_before']}, after: {meta['load_after']} (a shared machine: "
             "absolute times are disturbed, read the ratios).", "",
             "ratio = the implementation's time per step / fastopt.torch's (above 1: fastopt.torch is faster).", "",
             "| model | optimizer | implementation | ms/step | ratio |", "| --- | --- | --- | ---: | ---: |"]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['model']} | {r['optimizer']} | {r['implementation']} | {r['note']} | |")
        else:
            lines.append(f"| {r['model']} | {r['optimizer']} | {r['implementation']} | {r['ms_per_step']:.1f} | "
                         f"{r['ratio_to_fastopt']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "gpt2_small"])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None, help="file stem under benchmarks/results (default torch_cpu_<date>)")
    args = parser.parse_args(argv)
    meta = {"date": datetime.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "steps": args.steps, "warmup": args.warmup, "load_before": os.getloadavg()[0]}
    rows = []
    for model in args.models:
        rows += measure(model, args.optimizers, args.steps, args.warmup)
    meta["load_after"] = os.getloadavg()[0]
    stem = args.out or f"torch_cpu_{meta['date']}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(_markdown(rows, meta))
    print(f"wrote {RESULTS / stem}.json and .md")


if __name__ == "__main__":
    main()
