"""The backend follows the arrays; backend= and FASTOPT_BACKEND override it; unavailable backends say why."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastopt
from fastopt import dispatch
from fastopt.backends import cpu


def test_available_backends_names_every_backend_and_a_reason_for_each_missing_one():
    available = fastopt.available_backends()
    assert set(available) == {"numpy", "cpu", "cuda"}
    assert available["numpy"] is None
    for reason in available.values():
        assert reason is None or (isinstance(reason, str) and reason)


def test_numpy_arrays_go_to_the_fused_cpu_backend():
    assert fastopt.Adam([np.zeros(3)]).backend.name == "cpu"


def test_backend_argument_beats_the_environment(monkeypatch):
    monkeypatch.setenv("FASTOPT_BACKEND", "numpy")
    assert fastopt.Adam([np.zeros(3)]).backend.name == "numpy"
    assert fastopt.Adam([np.zeros(3)], backend="cpu").backend.name == "cpu"


def test_an_unknown_environment_backend_is_named(monkeypatch):
    monkeypatch.setenv("FASTOPT_BACKEND", "tpu")
    with pytest.raises(ValueError, match="tpu"):
        fastopt.Adam([np.zeros(3)])


def test_without_numba_numpy_arrays_fall_back_to_the_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(cpu, "_import_error", "numba could not be imported: (simulated)")
    monkeypatch.setattr(dispatch, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match="simulated"):
        assert fastopt.Adam([np.zeros(3)]).backend.name == "numpy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fastopt.SGD([np.zeros(3)]).backend.name == "numpy"  # only one warning per process
    with pytest.raises(RuntimeError, match="simulated"):
        fastopt.Adam([np.zeros(3)], backend="cpu")


def test_cuda_backend_on_numpy_arrays_is_refused():
    with pytest.raises(TypeError, match="cuda"):
        fastopt.Adam([np.zeros(3)], backend="cuda")


def test_info_command_reports_versions_and_backends():
    out = subprocess.run([sys.executable, "-m", "fastopt", "info"], capture_output=True, text=True, check=True).stdout
    for word in ("fastopt", "numpy", "numba", "backends:", "cpu", "cuda"):
        assert word in out
