"""Which backend updates a set of arrays, and why.

Order of precedence: the `backend=` argument, then the FASTOPT_BACKEND environment variable, then the array type
(NumPy -> `cpu`, or `numpy` with one warning when Numba cannot be used; CUDA arrays -> `cuda`).
"""

from __future__ import annotations

import importlib
import os
import warnings

BACKEND_NAMES = ("numpy", "cpu", "cuda")
_modules: dict = {}
_warned_fallback = False


def get_backend(name: str):
    """The backend object called `name` (imported on first use)."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES} or None, got {name!r}")
    if name not in _modules:
        _modules[name] = importlib.import_module(f"fastopt.backends.{name}").BACKEND
    return _modules[name]


def available_backends() -> dict[str, str | None]:
    """Each backend name -> None when it works here, else one line saying why not."""
    return {name: get_backend(name).unavailable_reason() for name in BACKEND_NAMES}


def _family_of(array) -> str:
    """'numpy' for NumPy arrays, 'cuda' for CUDA arrays; TypeError for anything else."""
    if get_backend("numpy").owns(array):
        return "numpy"
    if get_backend("cuda").owns(array):
        return "cuda"
    raise TypeError(f"expected a NumPy array or a CUDA array (CuPy, or anything with __cuda_array_interface__ "
                    f"or a CUDA __dlpack__), got {type(array).__name__}")


def choose_backend(arrays, requested: str | None = None):
    """The backend for `arrays` (all of one family): requested name, else FASTOPT_BACKEND, else by array type."""
    global _warned_fallback
    if not arrays:
        raise ValueError("params is empty: an optimizer needs at least one array")
    families = {_family_of(a) for a in arrays}
    if len(families) > 1:
        raise TypeError("params mix NumPy and CUDA arrays; one optimizer (or param group) takes arrays of one kind")
    family = families.pop()
    source = "backend="
    if requested is None:
        requested = os.environ.get("FASTOPT_BACKEND") or None
        source = "FASTOPT_BACKEND="
    if requested is not None:
        backend = get_backend(requested)
        if not backend.owns(arrays[0]):
            raise TypeError(f"{source}{requested!r} cannot update {type(arrays[0]).__name__} arrays")
        reason = backend.unavailable_reason()
        if reason:
            raise RuntimeError(f"{source}{requested!r} is not available here: {reason}")
        return backend
    if family == "cuda":
        backend = get_backend("cuda")
        reason = backend.unavailable_reason()
        if reason:
            raise RuntimeError(f"these are CUDA arrays but the cuda backend is not available: {reason}")
        return backend
    cpu = get_backend("cpu")
    reason = cpu.unavailable_reason()
    if reason is None:
        return cpu
    if not _warned_fallback:
        warnings.warn(f"fastopt: the fused cpu backend is unavailable ({reason}); using the NumPy reference, "
                      "which is correct but several times slower", RuntimeWarning, stacklevel=3)
        _warned_fallback = True
    return get_backend("numpy")
