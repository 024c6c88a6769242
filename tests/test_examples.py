"""The examples under docs/examples run, small, as a user would run them (a fresh interpreter), and do what they say."""

import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).parent.parent / "docs" / "examples"


def _run(script, *args, command=None, timeout=300):
    command = command or [sys.executable]
    done = subprocess.run([*command, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=EXAMPLES.parent.parent)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _number(pattern, text):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in output:\n{text}"
    return float(match.group(1))


def test_numpy_mlp_trains():
    pytest.importorskip("sklearn")
    out = _run("numpy_cupy_mlp.py", "--steps", "150")
    assert "backend cpu" in out or "backend numpy" in out
    assert _number(r"final loss ([\d.]+)", out) < _number(r"first loss ([\d.]+)", out) / 3
    assert _number(r"test accuracy ([\d.]+)", out) > 0.85


def test_cupy_mlp_trains_with_the_same_file():
    pytest.importorskip("sklearn")
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA device")
    except Exception as error:  # noqa: BLE001 - any driver error means no device here
        pytest.skip(f"no CUDA device: {error}")
    out = _run("numpy_cupy_mlp.py", "--steps", "150", "--xp", "cupy")
    assert "backend cuda" in out
    assert _number(r"test accuracy ([\d.]+)", out) > 0.85


def test_torch_cnn_matches_torch_optim():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = _run("torch_cnn.py", "--steps", "60", "--compare")
    assert _number(r"test accuracy ([\d.]+)", out) > 0.7
    assert _number(r"largest weight difference ([\d.e+-]+)", out) < 1e-4  # same start, same batches: same weights


def test_warmup_schedule():
    out = _run("warmup_schedule.py", "--steps", "120", "--warmup", "20")
    lrs = [float(v) for v in re.findall(r"lr ([\d.]+)", out)]
    assert lrs[0] == pytest.approx(0.001) and lrs[2] == pytest.approx(0.1)  # warmed up from 1% to the full lr
    assert lrs[-1] < lrs[3] < lrs[2]  # then decayed
    assert _number(r"largest weight error ([\d.]+)", out) < 0.01


def test_sharded_example_under_mpiexec():
    """docs/examples/sharded_mpi.py (written with the distributed optimizer) runs on two ranks where MPI is here."""
    if not (EXAMPLES / "sharded_mpi.py").exists():
        pytest.skip("docs/examples/sharded_mpi.py is not there yet")
    if importlib.util.find_spec("mpi4py") is None or shutil.which("mpiexec") is None:
        pytest.skip("mpi4py or mpiexec is not installed")
    _run("sharded_mpi.py", command=["mpiexec", "-n", "2", sys.executable])
