"""How the cpu backend uses threads, measured: the serial/parallel crossover and the OpenMP wait policy.

    python -m benchmarks.cpu_threads grain     # serial vs parallel kernel, per size: where parallel starts to pay
    python -m benchmarks.cpu_threads policy [SETTING...]  # threading layers, wait policies, in a training loop

`grain` times one optimizer's step with each kernel, side by side, over sizes that straddle the threshold
(fastopt.backends.cpu.PARALLEL_MIN_BYTES). `policy` runs the training loop of fastopt.bench.training in a fresh
process per setting (OpenMP reads its variables once, at load), with fastopt's update forced parallel, and reports
the update and the gradient time next to the textbook NumPy update in the same process. Results are printed as
Markdown; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

SIZES = (16 << 10, 64 << 10, 128 << 10, 256 << 10, 384 << 10, 512 << 10, 768 << 10, 1 << 20, 4 << 20)


def _median_time(call, repeats=15, min_time=0.004):
    call()
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            call()
        if time.perf_counter() - t0 >= min_time:
            break
        loops *= 2
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            call()
        samples.append((time.perf_counter() - t0) / loops)
    return float(np.median(samples))


def _plans(opt):
    """The cpu plans an optimizer built, found by walking its attributes (no private names relied on)."""
    found, stack, seen = [], list(vars(opt).values()), set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if type(item).__name__ == "_NumbaPlan":
            found.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif hasattr(item, "__dict__") and type(item).__module__.startswith("fastopt"):
            stack.extend(vars(item).values())
    return found


def grain(sizes=SIZES, cases=(("adam", "float32"), ("adam", "float64"), ("sgd", "float64"))):
    import fastopt

    lines = ["| optimizer | dtype | elements | bytes moved | serial us | parallel us | parallel / serial |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, dtype in cases:
        hyper = {"lr": 1e-3, "momentum": 0.9} if name == "sgd" else {"lr": 1e-3}
        for n in sizes:
            params = [np.ones(n, dtype)]
            grads = [np.full(n, 1e-3, dtype)]
            opt = fastopt.OPTIMIZERS[name](params, backend="cpu", **hyper)
            opt.step(grads)
            (plan,) = _plans(opt)
            driver = plan.driver   # the plan's Driver: its serial and parallel variants
            times = {}
            for variant in ("serial", "parallel"):
                plan.kernel = getattr(driver, variant)
                times[variant] = _median_time(lambda: opt.step(grads))  # noqa: B023
            lines.append(f"| {name} | {dtype} | {n:,} | {plan.bytes_per_step / 1e6:.2f} MB | "
                         f"{1e6 * times['serial']:.1f} | {1e6 * times['parallel']:.1f} | "
                         f"{times['parallel'] / times['serial']:.2f} |")
    return "\n".join(lines)


POLICIES = {
    "omp, OpenMP default wait (spin)": {"NUMBA_THREADING_LAYER": "omp"},
    "omp, OMP_WAIT_POLICY=PASSIVE": {"NUMBA_THREADING_LAYER": "omp", "OMP_WAIT_POLICY": "PASSIVE"},
    "omp, OMP_WAIT_POLICY=ACTIVE": {"NUMBA_THREADING_LAYER": "omp", "OMP_WAIT_POLICY": "ACTIVE"},
    "workqueue": {"NUMBA_THREADING_LAYER": "workqueue"},
    "tbb": {"NUMBA_THREADING_LAYER": "tbb"},  # needs TBB (pip install tbb; LD_LIBRARY_PATH to its lib/)
    "NUMBA_NUM_THREADS=1": {"NUMBA_NUM_THREADS": "1"},
}


def _policy_child(model, optimizer, rounds):
    from fastopt.backends import cpu
    from fastopt.bench import training

    cpu.PARALLEL_MIN_BYTES = 0  # force the parallel kernel: this study is about what its threads do afterwards
    import numba

    results = training.run_loop(model, optimizer, ("numpy", "fastopt"), rounds=rounds)
    print(json.dumps({"layer": numba.threading_layer(), "threads": numba.get_num_threads(),
                      "results": [r.__dict__ for r in results]}))


def policy(settings=tuple(POLICIES), models=("mlp37k", "mlp1m"), optimizers=("adam",), rounds=20):
    lines = ["| setting | layer | model | numpy update ms | fastopt update ms | gradient ms (numpy loop) | "
             "gradient ms (fastopt loop) | gradient ratio |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for label in settings:
        env_vars = POLICIES[label]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                                 "NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS")}
        env.update(env_vars)
        if label.startswith("omp, OpenMP default"):
            env["GOMP_SPINCOUNT"] = "300000"  # libgomp's default; set so that fastopt leaves the policy alone
        for model in models:
            for optimizer in optimizers:
                out = subprocess.run([sys.executable, "-m", "benchmarks.cpu_threads", "_child", model, optimizer,
                                      str(rounds)], env=env, capture_output=True, text=True)
                if out.returncode:
                    lines.append(f"| {label} | failed: {out.stderr.strip().splitlines()[-1][:80]} | | | | | | |")
                    continue
                data = json.loads(out.stdout.strip().splitlines()[-1])
                by_impl = {r["impl"]: r for r in data["results"]}
                n, f = by_impl["numpy"], by_impl["fastopt"]
                lines.append(f"| {label} | {data['layer']} x{data['threads']} | {model} {optimizer} | "
                             f"{n['update_ms']:.3f} | {f['update_ms']:.3f} | {n['gradient_ms']:.3f} | "
                             f"{f['gradient_ms']:.3f} | {f['gradient_ms'] / n['gradient_ms']:.2f} |")
                print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        _policy_child(argv[1], argv[2], int(argv[3]))
    elif argv[:1] == ["grain"]:
        print(grain())
    elif argv[:1] == ["policy"]:
        print(policy([label for label in POLICIES if not argv[1:] or any(a in label for a in argv[1:])]))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
