"""CPU speed of the fused Numba Adam step (issue 2), as pytest-benchmark suites.

    pytest benchmarks/test_cpu_speed.py --benchmark-only [--benchmark-json out.json]

- 16M float32 parameters: fastopt's `cpu` backend (Numba) against the NumPy reference (backend "numpy"),
  torch.optim.Adam with fused=True and with foreach=True on the same CPU, and the roofline stream: a Numba kernel
  that reads 4 arrays and writes 3 back in place (Adam's access pattern, 28 B/param) with trivial arithmetic.
- Many tensors: 1000 tensors of 1k elements against one tensor of 1M (the target is at most 2x the time).
- The first step in a new process once Numba's cache is warm (a subprocess: import, build, first step).

The workloads, optimizer case, byte counts, stream kernel and rotation rule come from `fastopt.bench`, the engine
behind `fastopt-bench`. Nothing here asserts a speed; the summary at the end prints the ratios of this run.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastopt.bench import CASES, bytes_per_param
from fastopt.bench.engine import rotation_count
from fastopt.bench.impls import FastoptImpl, TorchImpl
from fastopt.bench.roofline import cpu_stream_step
from fastopt.bench.workloads import many, single, size_label

N = int(os.environ.get("FASTOPT_BENCH_PARAMS", str(16 << 20)))   # 16M unless overridden (smoke runs)
ADAM = CASES["adam"]
BPP = bytes_per_param(ADAM, 4)                     # 28
ROUNDS = int(os.environ.get("FASTOPT_BENCH_ROUNDS", "10"))
_medians: dict = {}


def _skip_unless(impl):
    reason = impl.unavailable_reason()
    if reason:
        pytest.skip(reason)


def _cycle(steps):
    it = itertools.cycle(steps)
    return lambda: next(it)()


def _run(benchmark, name, steps, params, summary, bytes_per_step):
    fn = _cycle(steps)
    benchmark.pedantic(fn, rounds=max(ROUNDS, len(steps)), iterations=1, warmup_rounds=len(steps))
    median = benchmark.stats.stats.median
    _medians[name] = median
    benchmark.extra_info.update({"params": params, "bytes_per_step": bytes_per_step, "instances": len(steps),
                                 "gbps": bytes_per_step / median / 1e9})
    _summarize(summary)


def _summarize(summary):
    m = _medians
    if "stream" in m:
        summary["roofline stream, 16M fp32, 4 reads + 3 writes"] = f"{N * BPP / m['stream'] / 1e9:.1f} GB/s"
    if "fastopt-cpu" in m:
        cpu = m["fastopt-cpu"]
        summary["fastopt cpu Adam 16M fp32"] = f"{cpu * 1e3:.2f} ms/step, {N * BPP / cpu / 1e9:.1f} GB/s"
        if "stream" in m:
            summary["  % of roofline"] = f"{100 * m['stream'] / cpu:.0f}%"
        for other in ("numpy", "torch-fused", "torch-foreach"):
            if other in m:
                summary[f"  vs {other}"] = f"{m[other] / cpu:.2f}x faster ({m[other] * 1e3:.2f} ms/step)"
    if "many-1000x1k" in m and "one-1M" in m:
        summary["1000 x 1k tensors / one 1M tensor"] = f"{m['many-1000x1k'] / m['one-1M']:.2f}x the time (target <= 2)"


def _instances(impl, workload, case=ADAM, count=None):
    if count is None:
        count = rotation_count(workload.params * 4 * (2 + len(case.active_slots())), "cpu")
    return [impl.build(case, workload.shapes, "float32", seed=i).step for i in range(count)]


# ---- 16M float32 Adam ---------------------------------------------------------------------------------------------

@pytest.mark.benchmark(group=f"adam-{size_label(N)}-fp32")
@pytest.mark.parametrize("name", ["fastopt-cpu", "numpy", "torch-fused", "torch-foreach"])
def test_adam_16m(benchmark, summary, name):
    impl = {"fastopt-cpu": lambda: FastoptImpl("cpu"), "numpy": lambda: FastoptImpl("numpy"),
            "torch-fused": lambda: TorchImpl("fused", "cpu"),
            "torch-foreach": lambda: TorchImpl("foreach", "cpu")}[name]()
    _skip_unless(impl)
    steps = _instances(impl, single(N))
    _run(benchmark, name, steps, N, summary, N * BPP)


@pytest.mark.benchmark(group=f"adam-{size_label(N)}-fp32")
def test_roofline_stream_16m(benchmark, summary):
    count = rotation_count(N * 4 * 4, "cpu")
    steps = [cpu_stream_step(2, N, np.float32) for _ in range(count)]   # p, g, m, v read; p, m, v written
    _run(benchmark, "stream", steps, N, summary, N * BPP)


# ---- many tensors -------------------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="many-tensors")
@pytest.mark.parametrize("shape", ["1000x1k", "1M"])
def test_many_tensors(benchmark, summary, shape):
    impl = FastoptImpl("cpu")
    _skip_unless(impl)
    workload = many(1000, 1024) if shape == "1000x1k" else single(1 << 20)
    # The same rotation for both shapes (the same bytes in play), bounded by what 1000-tensor instances cost to build.
    count = rotation_count(16 << 20, "cpu", tensors=1000)
    steps = _instances(impl, workload, count=count)
    _run(benchmark, "many-1000x1k" if shape == "1000x1k" else "one-1M", steps, workload.params, summary,
         workload.params * BPP)


# ---- first step in a new process, Numba cache warm ------------------------------------------------------------------

FIRST_STEP = textwrap.dedent("""
    import json, time
    t0 = time.perf_counter()
    import numpy as np
    import fastopt
    t1 = time.perf_counter()
    params = [np.ones(1 << 20, np.float32)]
    grads = [np.full(1 << 20, 1e-3, np.float32)]
    opt = fastopt.Adam(params, lr=1e-3, backend="cpu")
    t2 = time.perf_counter()
    opt.step(grads)
    t3 = time.perf_counter()
    opt.step(grads)
    t4 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "build_s": t2 - t1, "first_step_s": t3 - t2, "second_step_s": t4 - t3}))
""")


def _new_process():
    out = subprocess.run([sys.executable, "-c", FIRST_STEP], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark(group="first-step")
def test_first_step_warm_cache(benchmark, summary):
    _skip_unless(FastoptImpl("cpu"))
    _new_process()                                  # fills Numba's cache if it was cold
    figures = []
    benchmark.pedantic(lambda: figures.append(_new_process()), rounds=3, iterations=1)
    first = float(np.median([f["first_step_s"] for f in figures]))
    imp = float(np.median([f["import_s"] for f in figures]))
    second = float(np.median([f["second_step_s"] for f in figures]))
    benchmark.extra_info.update({"first_step_s": first, "import_s": imp, "second_step_s": second})
    summary["first Adam step in a new process (1M fp32, cache warm)"] = (
        f"{first * 1e3:.1f} ms (import fastopt {imp * 1e3:.0f} ms; second step {second * 1e3:.2f} ms)")
