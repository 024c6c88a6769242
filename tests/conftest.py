"""Which backends the generic tests run on, and how arrays travel to them.

Every backend that works here is tested (`cuda` whenever CuPy sees a device). FASTOPT_TEST_BACKENDS=cpu,cuda
narrows the set (the GPU check uses it).
"""

import os

import numpy as np
import pytest

import fastopt

_available = [name for name, reason in fastopt.available_backends().items() if reason is None]
_selected = os.environ.get("FASTOPT_TEST_BACKENDS")
BACKENDS = [b for b in _available if not _selected or b in _selected.split(",")]
FUSED_BACKENDS = [b for b in BACKENDS if b != "numpy"]  # numpy runs the reference itself


def to_backend(array, backend):
    """A copy of the NumPy `array` in the array type `backend` updates."""
    if backend == "cuda":
        import cupy

        return cupy.asarray(array)
    return np.array(array, copy=True)


def to_numpy(array):
    return array.get() if hasattr(array, "get") and not isinstance(array, np.ndarray) else np.asarray(array)


@pytest.fixture(params=FUSED_BACKENDS or [pytest.param("none", marks=pytest.mark.skip("no fused backend here"))])
def fused_backend(request):
    return request.param
