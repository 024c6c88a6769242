"""The `fastopt-bench` command.

    fastopt-bench --quick                                   # under a minute on a 2-core laptop
    fastopt-bench --json out.json --markdown out.md --plots DIR
    fastopt-bench --backends cuda                           # the GPU suite (1M..64M, GPT-2, ResNet-50, fp32/16/bf16)
    fastopt-bench --backends cpu,numpy --optimizers adam,sgd --sizes 1M,16M
    fastopt-bench compare old.json new.json                 # ratios; exit status 1 when something regressed
    fastopt-bench loop [--quick]                            # the update inside a NumPy MLP training loop
"""

from __future__ import annotations

import argparse
import sys


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _sizes(text: str) -> list[int]:
    from .workloads import parse_size
    return [parse_size(part) for part in _csv(text)]


def run_parser() -> argparse.ArgumentParser:
    from .workloads import CASES
    p = argparse.ArgumentParser(
        prog="fastopt-bench",
        description="Benchmark fastopt's fused optimizer steps against the NumPy reference, torch.optim and the "
                    "memory roofline measured on this machine. `fastopt-bench compare A.json B.json` compares runs.")
    p.add_argument("--quick", action="store_true", help="a short run (under a minute on a 2-core laptop)")
    p.add_argument("--backends", type=_csv, default=None,
                   help="fastopt backends to run, from cpu,numpy,cuda (default: every one available here)")
    p.add_argument("--optimizers", type=_csv, default=None,
                   help=f"optimizers, from {','.join(CASES)} (default: all)")
    p.add_argument("--sizes", type=_sizes, default=None,
                   help="single-tensor sizes, e.g. 1M,4M,16M (default: 1M..16M on CPU, 1M..64M on GPU)")
    p.add_argument("--workloads", type=_csv, default=None,
                   help="list-shaped workloads: resnet50, gpt2_small, COUNTxSIZE (e.g. 2000x4k), or none")
    p.add_argument("--dtypes", type=_csv, default=None,
                   help="float32 (CPU default), float16, bfloat16 (GPU default: all three)")
    p.add_argument("--baselines", type=_csv, default=None,
                   help="baselines, from torch-foreach,torch-fused,cupy-chain, or none (default: all that apply)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (the median is kept)")
    p.add_argument("--min-time", type=float, default=None, help="seconds one timed run should last")
    p.add_argument("--rotate-mb", type=float, default=None,
                   help="rotate optimizer instances until their arrays span this many MiB (default: 2x the "
                        "last-level cache on CPU, capped; 4x L2 on GPU)")
    p.add_argument("--json", metavar="PATH", help="write every figure, the machine and library versions here")
    p.add_argument("--markdown", metavar="PATH", help="write the table as Markdown here")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots into this directory")
    p.add_argument("--plot-prefix", default="", help="prefix for the plot file names")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-table", action="store_true", help="do not print the table")
    return p


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastopt-bench compare",
                                description="Compare two fastopt-bench JSON files; exit 1 if anything regressed.")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--threshold", type=float, default=0.10, help="regression threshold (default 0.10 = 10%%)")
    p.add_argument("--metric", choices=("time", "roofline"), default=None,
                   help="time per step (default on the same machine) or %% of roofline (default across machines)")
    return p


def loop_parser() -> argparse.ArgumentParser:
    from .training import IMPLS, MODELS, OPTIMIZERS
    p = argparse.ArgumentParser(
        prog="fastopt-bench loop",
        description="The optimizer update inside a NumPy MLP training loop (BLAS matmuls, float64, batches of 128): "
                    "per step, the update time and the gradient time of each implementation, taking turns with the "
                    "textbook NumPy update in a fresh process (torch in a process of its own).")
    p.add_argument("--quick", action="store_true", help="fewer rounds (about 15 s)")
    p.add_argument("--models", type=_csv, default=list(MODELS), help=f"from {','.join(MODELS)} (default: both)")
    p.add_argument("--optimizers", type=_csv, default=list(OPTIMIZERS), help=f"from {','.join(OPTIMIZERS)}")
    p.add_argument("--impls", type=_csv, default=None,
                   help=f"from {','.join(IMPLS)} (default: all available; numpy is always run as the reference)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of 10 steps per implementation")
    p.add_argument("--json", metavar="PATH", help="write the figures here")
    p.add_argument("--markdown", metavar="PATH", help="write the table here")
    return p


def loop_main(argv: list[str]) -> int:
    import json

    from . import training
    args = loop_parser().parse_args(argv)
    for what, given, known in (("model", args.models, training.MODELS), ("optimizer", args.optimizers,
                                                                       training.OPTIMIZERS)):
        unknown = [x for x in given if x not in known]
        if unknown:
            print(f"fastopt-bench loop: unknown {what} {', '.join(unknown)}; expected some of {', '.join(known)}",
                  file=sys.stderr)
            return 2
    impls = training.available_impls() if args.impls is None else ["numpy", *(i for i in args.impls if i != "numpy")]
    unknown = [i for i in impls if i not in training.IMPLS]
    if unknown:
        print(f"fastopt-bench loop: unknown impl {', '.join(unknown)}; expected some of {', '.join(training.IMPLS)}",
              file=sys.stderr)
        return 2
    rounds = args.rounds or (8 if args.quick else 30)
    results = []
    for model in args.models:
        for optimizer in args.optimizers:
            results += training.run_groups(model, optimizer, impls, rounds)
    table = training.format_table(results)
    print(table)
    if args.json:
        from .engine import machine_info
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "rounds": rounds, "results": training.as_dicts(results)}, f,
                      indent=1)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
        print(f"wrote {args.markdown}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "loop":
        return loop_main(argv[1:])
    if argv and argv[0] == "compare":
        from .compare import compare, load, print_comparison
        args = compare_parser().parse_args(argv[1:])
        result = compare(load(args.old), load(args.new), threshold=args.threshold, metric=args.metric)
        print_comparison(result)
        return 1 if result["regressions"] else 0
    if argv and argv[0] == "run":
        argv = argv[1:]
    args = run_parser().parse_args(argv)

    from . import report
    from .engine import Config, run
    baselines = args.baselines
    if baselines is not None and baselines == ["none"]:
        baselines = []
    config = Config(backends=args.backends, baselines=baselines, optimizers=args.optimizers, sizes=args.sizes,
                    workloads=args.workloads, dtypes=args.dtypes, quick=args.quick, repeats=args.repeats,
                    min_time=args.min_time,
                    rotate_bytes=None if args.rotate_mb is None else int(args.rotate_mb * (1 << 20)),
                    progress=not args.no_progress, argv=argv)
    try:
        results = run(config)
    except ValueError as exc:
        print(f"fastopt-bench: {exc}", file=sys.stderr)
        return 2
    if not results["records"]:
        print("fastopt-bench: nothing to run (no requested backend is available here)", file=sys.stderr)
    if not args.no_table:
        report.print_table(results)
    if args.json:
        report.write_json(results, args.json)
        print(f"wrote {args.json}")
    if args.markdown:
        report.write_markdown(results, args.markdown)
        print(f"wrote {args.markdown}")
    if args.plots:
        try:
            for path in report.write_plots(results, args.plots, prefix=args.plot_prefix):
                print(f"wrote {path}")
        except ImportError as exc:
            print(f"fastopt-bench: no plots ({exc}); pip install 'fastopt[bench]'", file=sys.stderr)
    return 0 if results["records"] else 1


if __name__ == "__main__":
    sys.exit(main())
