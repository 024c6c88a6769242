"""Smoke test of fastopt-bench: the engine on tiny sizes (cpu/numpy backends), the byte counts, and `compare`."""

import copy
import json

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
        assert r["roofline_gbps"] > 0 and r["roofline_pct"] > 0
        assert r["roofline_pct"] == pytest.approx(100 * r["gbps"] / r["roofline_gbps"])
        assert r["first_step_s"] > 0


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
