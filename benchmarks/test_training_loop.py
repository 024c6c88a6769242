"""The optimizer update inside a real training loop (issue 11.5), as a pytest-benchmark suite.

    pytest benchmarks/test_training_loop.py --benchmark-only [--benchmark-json out.json]

A NumPy MLP trained with OpenBLAS matmuls, float64, batches of 128: the classic 64-100x4-10 (37,810 parameters) and
a 64-1000-1000-10 (1,076,010). Each update (the textbook's NumPy lines, fastopt's `cpu` backend with default
threads, torch's fused update on NumPy-viewed tensors) trains its own copy of the model, taking turns a few steps at
a time with the NumPy update in a fresh process (torch in a process of its own, beside its own NumPy reference; see
fastopt.bench.training). Per step: the update time and the gradient time, the latter to show whether the update's
threads disturb the matmuls around it. `fastopt-bench loop` runs the same loop.

Targets: fastopt's update at most 1.0x the NumPy update at 37k parameters and at least 3x faster at 1M; the gradient
time within 5% of the NumPy loop's. Nothing here asserts a speed; the summary prints this run's ratios.
"""

from __future__ import annotations

import os

import pytest

from fastopt.bench import training

ROUNDS = int(os.environ.get("FASTOPT_BENCH_ROUNDS", "30"))


@pytest.mark.parametrize("optimizer", training.OPTIMIZERS)
@pytest.mark.parametrize("model", tuple(training.MODELS))
def test_training_loop(benchmark, summary, model, optimizer):
    if training.available_impls() != training.IMPLS:
        summary["note"] = "torch is not installed: no torch-fused column"
    results = benchmark.pedantic(training.run_groups, args=(model, optimizer, training.available_impls(), ROUNDS),
                                 rounds=1, iterations=1)
    numpys = {r.process: r for r in results if r.impl == "numpy"}
    benchmark.extra_info["results"] = training.as_dicts(results)
    for r in results:
        numpy = numpys[r.process]
        if r.impl == "numpy":
            continue
        summary[f"{model} {optimizer} {r.impl}"] = (
            f"update {r.update_ms:.3f} ms = {r.update_ms / numpy.update_ms:.2f}x numpy's {numpy.update_ms:.3f} ms; "
            f"gradient {r.gradient_ms:.3f} ms = {r.gradient_ms / numpy.gradient_ms:.2f}x the numpy loop's")
