"""Smoke test of fastopt-bench: the engine on tiny sizes (cpu/numpy backends), the byte counts, and `compare`."""

import copy
import json
import math

import pytest

from fastopt.bench import CASES, bytes_per_param, load_model_shapes
from fastopt.bench.cli import main
from fastopt.bench.compare import compare

# ---- bytes per parameter, counted from the specs, against hand counts ----------------------------------------------

@pytest.mark.parametrize("case, itemsize, expected", [
    ("adam", 4, 28),            # read p g m v, write p m v
    ("adamw", 4, 28),
    ("adam_amsgrad", 4, 36),    # + max_exp_avg_sq read and written
    ("momentum", 4, 20),        # read p g buf, write p buf
    ("nesterov", 4, 20),
    ("sgd", 4, 12),             # read p g, write p
    ("adagrad", 4, 20),         # sum
    ("rmsprop", 4, 20),         # square_avg (no momentum, not centred)
    ("adadelta", 4, 28),        # square_avg, acc_delta
    ("adam", 2, 14),            # fp16/bf16 parameters and state
    ("adam", 8, 56),
    ("lamb", 4, 44),            # the norms' pass reads p g m v (the update, not stored), then Adam's pattern
    ("lars", 4, 28),            # the norms' pass reads p g (LARS's update ignores its buffer), then momentum's
])
def test_bytes_per_param_match_hand_counts(case, itemsize, expected):
    assert bytes_per_param(case, itemsize) == expected


def test_bytes_per_param_with_wider_state():
    # fp16 parameters and gradients (2 B) with fp32 state (4 B): 3*2 + 2*2*4
    assert bytes_per_param("adam", 2, state_itemsize=4) == 22


def test_model_shapes_are_packaged():
    resnet = load_model_shapes("resnet50")
    gpt2 = load_model_shapes("gpt2_small")
    assert len(resnet) == 161 and sum(__import__("math").prod(s) for s in resnet) == 25_557_032
    assert len(gpt2) == 148 and sum(__import__("math").prod(s) for s in gpt2) == 124_439_808


# ---- one tiny end-to-end run through the command line ------------------------------------------------------------

@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    path = out / "r.json"
    md = out / "r.md"
    argv = ["--backends", "cpu,numpy", "--optimizers", "sgd,adam", "--sizes", "4k,16k", "--workloads", "8x1k",
            "--repeats", "2", "--min-time", "0.001", "--rotate-mb", "1", "--baselines", "torch-fused",
            "--json", str(path), "--markdown", str(md), "--no-progress", "--no-table"]
    assert main(argv) == 0
    data = json.loads(path.read_text())
    data["_markdown"] = md.read_text()
    return data


def test_json_has_machine_and_versions(results):
    machine = results["machine"]
    assert machine["cpu_count"] >= 1 and machine["cpu"]
    assert machine["versions"]["numpy"] and machine["versions"]["numba"]


def test_every_record_has_the_figures(results):
    recs = [r for r in results["records"] if "error" not in r]
    impls = {r["impl"] for r in recs}
    assert {"cpu", "numpy"} <= impls
    assert {r["workload"] for r in recs} == {"4k", "16k", "8x1k"}
    for r in recs:
        assert r["time_s"] > 0 and r["gbps"] > 0
        assert r["bytes_per_param"] == {"sgd": 12, "adam": 28}[r["optimizer"]]
        assert r["bytes_per_step"] == r["bytes_per_param"] * r["params"]
        assert r["gbps"] == pytest.approx(r["bytes_per_step"] / r["time_s"] / 1e9)
        assert r["roofline_gbps"] > 0 and r["first_step_s"] > 0
        # --rotate-mb 1 keeps these tiny runs in cache: a % of a cache-resident stream would mislead, so none
        assert r["cache_resident"] and "roofline_pct" not in r and "last-level cache" in r["roofline_note"]


def test_baselines_are_side_by_side(results):
    recs = [r for r in results["records"] if r["impl"] == "cpu" and "error" not in r]
    assert recs and all("numpy" in r["vs"] for r in recs)
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    fused = [r for r in results["records"] if r["impl"] == "torch-fused"]
    assert fused and all("error" not in r for r in fused)
    assert all("torch-fused" in r["vs"] for r in recs)


def test_rooflines_follow_the_access_pattern(results):
    streams = [r for r in results["rooflines"] if r["kind"] == "stream"]
    patterns = {(r["reads"], r["writes"]) for r in streams}
    assert patterns == {(2, 1), (4, 3)}           # sgd: p g -> p; adam: p g m v -> p m v
    for r in streams:
        assert r["gbps"] > 0 and r["bytes"] == r["params"] * (r["reads"] + r["writes"]) * 4


def test_markdown_has_the_table(results):
    md = results["_markdown"]
    assert "| workload |" in md.replace("| device | workload |", "| workload |")
    assert "% roofline" in md and "adam" in md


# ---- compare ------------------------------------------------------------------------------------------------------

def test_compare_flags_a_regression(results):
    new = copy.deepcopy(results)
    target = next(r for r in new["records"] if r["impl"] == "cpu" and r["optimizer"] == "adam" and "time_s" in r)
    target["time_s"] *= 1.25                       # 25% slower
    other = next(r for r in new["records"] if r["impl"] == "numpy" and "time_s" in r)
    other["time_s"] *= 1.05                        # 5% slower: within the noise threshold
    result = compare(results, new)
    assert result["metric"] == "time"
    flagged = {(r["workload"], r["optimizer"], r["impl"]) for r in result["regressions"]}
    assert flagged == {(target["workload"], "adam", "cpu")}
    assert compare(results, results)["regressions"] == []


def test_compare_command_exit_status(results, tmp_path):
    old = tmp_path / "old.json"
    new = tmp_path / "new.json"
    old.write_text(json.dumps(results))
    slower = copy.deepcopy(results)
    for r in slower["records"]:
        if "time_s" in r:
            r["time_s"] *= 1.5
    new.write_text(json.dumps(slower))
    assert main(["compare", str(old), str(old)]) == 0
    assert main(["compare", str(old), str(new)]) == 1


def test_unknown_optimizer_is_refused():
    assert "adam" in CASES
    assert main(["--optimizers", "adamm", "--no-progress"]) == 2


# ---- no roofline % for cache-resident measurements; GPU streams as fastopt moves bytes ---------------------------

def test_roofline_pct_only_beyond_the_last_level_cache():
    from fastopt.bench.engine import _set_roofline, beyond_cache

    llc = 32 << 20
    assert not beyond_cache(63 << 20, "cpu", llc) and beyond_cache(64 << 20, "cpu", llc)
    stream = {"gbps": 50.0, "footprint_bytes": 1 << 40}
    big = {"device": "cpu", "gbps": 40.0, "footprint_bytes": 1 << 40}
    _set_roofline(big, stream, "cpu")
    assert big["roofline_pct"] == pytest.approx(80.0) and big["cache_resident"] is False
    small = {"device": "cpu", "gbps": 90.0, "footprint_bytes": 1 << 20}
    _set_roofline(small, stream, "cpu")
    assert "roofline_pct" not in small and small["roofline_gbps"] == 50.0 and small["cache_resident"]
    stream_in_cache = {"gbps": 90.0, "footprint_bytes": 1 << 20}
    _set_roofline(big, stream_in_cache, "cpu")  # the stream, too, must have streamed from memory
    assert "roofline_pct" not in big and "stream" in big["roofline_note"]


def test_headline_gives_no_pct_for_a_cache_resident_size():
    from fastopt.bench.report import headline_lines

    record = {"device": "cpu", "impl": "cpu", "kind": "single", "dtype": "float32", "optimizer": "adam",
              "workload": "4M", "params": 4 << 20, "time_s": 1e-3, "gbps": 117.0, "vs": {},
              "roofline_note": "no roofline %: the step arrays fit in twice the last-level cache (256 MiB)"}
    line = headline_lines({"records": [record]})[0]
    assert "% of the measured stream" not in line and "last-level cache" in line


class _FakeGpu:
    """Stands in for the CuPy stream and copy builders: records what they were asked to allocate."""

    def __init__(self):
        self.calls = []

    def stream(self, n_slots, n, dtype, state_dtype=None):
        self.calls.append((n_slots, n, str(dtype), str(state_dtype)))
        return lambda: None

    def copy(self, n_bytes):
        return lambda: None


@pytest.fixture
def fake_gpu(monkeypatch):
    from fastopt.bench import engine, roofline

    fake = _FakeGpu()
    monkeypatch.setattr(roofline, "gpu_stream_step", fake.stream)
    monkeypatch.setattr(roofline, "gpu_copy_step", fake.copy)
    monkeypatch.setattr(engine, "measure", lambda steps, **options: _FixedTiming())
    monkeypatch.setattr(engine, "gpu_info", lambda: {"l2_cache_bytes": 50 << 20})  # H100; H200 has 60 MB
    return fake


class _FixedTiming:
    seconds = 1e-3

    def as_dict(self):
        return {"time_s": self.seconds}


@pytest.mark.parametrize("dtype, itemsize", [("float16", 2), ("bfloat16", 2), ("float32", 4)])
def test_gpu_stream_keeps_fp32_state_like_fastopt(fake_gpu, monkeypatch, dtype, itemsize):
    from fastopt.bench import bytes_per_param, engine

    n = 1 << 20
    out = engine._measure_stream("gpu", n, 2, dtype, 256 << 20, {}, 64)
    assert {c[3] for c in fake_gpu.calls} == {"float32"}  # Adam's m and v in fp32 whatever the params are
    assert out["bytes"] == n * (3 * itemsize + 2 * 2 * 4)
    assert out["bytes"] == n * bytes_per_param("adam", itemsize, state_itemsize=4)


def test_gpu_rotation_pushes_every_default_size_out_of_l2(fake_gpu, monkeypatch):
    from fastopt.bench import engine
    from fastopt.bench.workloads import default_workloads

    for l2 in (50 << 20, 60 << 20):  # H100, H200
        monkeypatch.setattr(engine, "gpu_info", lambda l2=l2: {"l2_cache_bytes": l2})
        for quick in (False, True):
            rotate = engine._rotate_bytes(engine.Config(quick=quick), "gpu")
            for workload in default_workloads("gpu", quick):
                for dtype in ("float32", "float16", "bfloat16"):
                    for n_slots in range(4):
                        out = engine._measure_stream("gpu", workload.params, n_slots, dtype, rotate, {}, 64)
                        assert engine.beyond_cache(out["footprint_bytes"], "gpu"), (workload.name, dtype, n_slots)
                    copy = engine._measure_copy(workload.params * engine._itemsize(dtype), rotate, {}, 64)
                    assert engine.beyond_cache(copy["footprint_bytes"], "gpu"), (workload.name, dtype)


# ---- the training-loop workload (fastopt-bench loop) ---------------------------------------------------------------

def test_training_mlp_gradient_matches_finite_differences():

    from fastopt.bench import training

    model = training.MLP((5, 4, 3), seed=2)
    model.params[1] += 0.1  # non-zero biases so the ReLU masks matter
    (x, y), = training.batches(5, 3, 6, 1)
    model.gradient(x, y)
    analytic = [g.copy() for g in model.grads]
    for p, g in zip(model.params, analytic):
        flat = p.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + 1e-6
            up = model.gradient(x, y)
            flat[i] = old - 1e-6
            down = model.gradient(x, y)
            flat[i] = old
            assert abs((up - down) / 2e-6 - g.reshape(-1)[i]) < 1e-6


def test_textbook_updates_follow_the_same_trajectory_as_fastopt():
    import numpy as np

    import fastopt
    from fastopt.bench import training

    rng = np.random.default_rng(0)
    p0 = [rng.standard_normal(50), rng.standard_normal((3, 4))]
    grads = [[rng.standard_normal(p.shape) for p in p0] for _ in range(5)]
    for textbook, ours in ((training.NumpyMomentum, lambda ps: fastopt.SGD(ps, lr=0.01, momentum=0.9)),
                           (training.NumpyAdam, lambda ps: fastopt.Adam(ps, lr=0.01, eps=1e-7))):
        a, b = [p.copy() for p in p0], [p.copy() for p in p0]
        t, o = textbook(a, 0.01), ours(b)
        for g in grads:
            t.step(g)
            o.step(g)
        for x, y in zip(a, b):
            # same arithmetic up to rounding and where eps sits (Adam's bias correction folded into lr)
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def test_loop_command_runs_every_implementation(tmp_path):
    path = tmp_path / "loop.json"
    assert main(["loop", "--models", "mlp37k", "--rounds", "1", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    impls = {r["impl"] for r in data["results"]}
    assert {"numpy", "fastopt"} <= impls
    for r in data["results"]:
        assert r["params"] == 37_810 and r["update_ms"] > 0 and r["gradient_ms"] > 0
        assert math.isfinite(r["final_loss"])
    # torch's spinning OpenMP threads must not share a process with the fastopt and NumPy loop
    processes = {r["impl"]: r["process"] for r in data["results"] if r["impl"] != "numpy"}
    assert processes["fastopt"] != processes.get("torch-fused")
    assert main(["loop", "--models", "mlp3"]) == 2
