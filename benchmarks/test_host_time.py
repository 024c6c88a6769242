"""Host time per step (issue 11.3, 11.4): the Python work around the kernels, measured with pytest-benchmark.

    pytest benchmarks/test_host_time.py --benchmark-only

Targets (issue 11.4), checked by eye against this run's table and the ratios printed at the end, never asserted
(timings on a shared machine are not test results):
- grads reused step after step (refilled in place): at most 10 us + 0.1 us per tensor of host work;
- fresh grad arrays every step: at most 0.5 us per tensor more;
- the functional API (`fastopt.functional.adam`, same arrays every call) as fast as the class;
- no slower than torch.optim.Adam(fused=True) on NumPy-viewed CPU tensors.

"api" rows run the real Optimizer.step / functional.update with a backend plan that does nothing: the API layer's
own host time. "cpu" rows run the real Numba kernels on tensors of 16 elements (host time plus a tiny kernel).
"""

import numpy as np
import pytest

import fastopt
from fastopt import dispatch, functional

SIZES = (10, 200)
ELEMENTS = 16


class _NullPlan:
    def run(self, grads, scalars):
        pass


@pytest.fixture
def null_plans(monkeypatch):
    backend = dispatch.get_backend("cpu")
    monkeypatch.setattr(type(backend), "prepare", lambda self, spec, params, slots, flags: _NullPlan())
    functional.clear_cache()
    yield
    functional.clear_cache()


def _problem(n, elements=ELEMENTS):
    params = [np.zeros(elements, np.float32) for _ in range(n)]
    grads = [np.full(elements, 1e-3, np.float32) for _ in range(n)]
    return params, grads


def _record(summary, key, benchmark):
    summary[key] = benchmark.stats.stats.median * 1e6


def _class_reused(benchmark, summary, n, label):
    params, grads = _problem(n)
    opt = fastopt.Adam(params, lr=1e-3, backend="cpu")
    opt.step(grads)
    benchmark(opt.step, grads)
    _record(summary, f"{label} class reused n={n} (us)", benchmark)


def _class_fresh(benchmark, summary, n, label):
    params, grads = _problem(n)
    opt = fastopt.Adam(params, lr=1e-3, backend="cpu")
    sets = [[g.copy() for g in grads] for _ in range(2)]
    turn = [0]

    def step():
        turn[0] ^= 1
        opt.step(sets[turn[0]])

    step()
    benchmark(step)
    _record(summary, f"{label} class fresh n={n} (us)", benchmark)


def _functional(benchmark, summary, n, label):
    params, grads = _problem(n)
    state = functional.init_state("adam", params, backend="cpu")
    functional.adam(params, grads, state, step=1, lr=1e-3, backend="cpu")
    benchmark(lambda: functional.adam(params, grads, state, step=2, lr=1e-3, backend="cpu"))
    _record(summary, f"{label} functional reused n={n} (us)", benchmark)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.usefixtures("null_plans")
def test_api_class_reused_grads(benchmark, summary, n):
    _class_reused(benchmark, summary, n, "api")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.usefixtures("null_plans")
def test_api_class_fresh_grads(benchmark, summary, n):
    _class_fresh(benchmark, summary, n, "api")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.usefixtures("null_plans")
def test_api_functional(benchmark, summary, n):
    _functional(benchmark, summary, n, "api")


@pytest.mark.parametrize("n", SIZES)
def test_cpu_class_reused_grads(benchmark, summary, n):
    _class_reused(benchmark, summary, n, "cpu")


@pytest.mark.parametrize("n", SIZES)
def test_cpu_class_fresh_grads(benchmark, summary, n):
    _class_fresh(benchmark, summary, n, "cpu")


@pytest.mark.parametrize("n", SIZES)
def test_cpu_functional(benchmark, summary, n):
    _functional(benchmark, summary, n, "cpu")


@pytest.mark.parametrize("n", SIZES)
def test_torch_fused_adam(benchmark, summary, n):
    torch = pytest.importorskip("torch")
    params, grads = _problem(n)
    tensors = [torch.from_numpy(p).requires_grad_() for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g)
    opt = torch.optim.Adam(tensors, lr=1e-3, fused=True)
    opt.step()
    benchmark(opt.step)
    _record(summary, f"torch fused class n={n} (us)", benchmark)


def test_functional_vs_class_1k_tensors(benchmark, summary):
    """Issue 11.3's case: 200 tensors of 1k elements, functional vs class, both measured here (ratio printed)."""
    import time

    params, grads = _problem(200, 1000)
    by_class = [p.copy() for p in params]
    opt = fastopt.Adam(by_class, lr=1e-3, backend="cpu")
    state = functional.init_state("adam", params, backend="cpu")

    def functional_step():
        functional.adam(params, grads, state, step=2, lr=1e-3, backend="cpu")

    opt.step(grads)
    functional_step()
    class_times, functional_times = [], []
    for _ in range(200):  # interleaved, so both see the same machine load
        t = time.perf_counter()
        opt.step(grads)
        class_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        functional_step()
        functional_times.append(time.perf_counter() - t)
    benchmark(functional_step)
    summary["200x1k class (us, median)"] = float(np.median(class_times)) * 1e6
    summary["200x1k functional (us, median)"] = float(np.median(functional_times)) * 1e6
    summary["200x1k functional / class"] = float(np.median(functional_times) / np.median(class_times))
