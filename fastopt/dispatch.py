"""Which backend updates a set of arrays, and why.

Order of precedence: the `backend=` argument, then the FASTOPT_BACKEND environment variable, then the array type
(NumPy -> `cpu`, or `numpy` with one warning when Numba cannot be used; CUDA arrays -> `cuda`).
"""

from __future__ import annotations

import importlib
import os
import sys
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


def environment_backend() -> str | None:
    """FASTOPT_BACKEND, or None when unset or empty."""
    return os.environ.get("FASTOPT_BACKEND") or None


def hint(array) -> str:
    """What to pass instead of `array`, for the mistakes a first-time user makes ('' when there is nothing to say)."""
    module = type(array).__module__ or ""
    if module.split(".")[0] == "torch" and getattr(getattr(array, "device", None), "type", None) == "cpu":
        return ("; a torch CPU tensor is not a NumPy array: pass p.detach().numpy() (a zero-copy NumPy view, "
                "e.g. [p.detach().numpy() for p in model.parameters()]), or use the torch drop-ins fastopt.torch.*")
    return ""


def _family_of(array, name="array") -> str:
    """'numpy' for NumPy arrays, 'cuda' for CUDA arrays; TypeError for anything else."""
    if get_backend("numpy").owns(array):
        return "numpy"
    if get_backend("cuda").owns(array):
        return "cuda"
    raise TypeError(f"{name}: expected a NumPy array or a CUDA array (CuPy, or anything with __cuda_array_interface__ "
                    f"or a CUDA __dlpack__), got {type(array).__name__}{hint(array)}")


def _user_stacklevel() -> int:
    """The stacklevel of the first frame outside fastopt, so that a warning points at the user's line."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1  # level 1: the caller of this function (the one that warns)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def choose_backend(arrays, requested: str | None = None):
    """The backend for `arrays` (all of one family): requested name, else FASTOPT_BACKEND, else by array type."""
    global _warned_fallback
    if not arrays:
        raise ValueError("params is empty: an optimizer needs at least one array")
    families = {_family_of(a, f"params[{i}]") for i, a in enumerate(arrays)}
    if len(families) > 1:
        raise TypeError("params mix NumPy and CUDA arrays; one optimizer (or param group) takes arrays of one kind")
    family = families.pop()
    source = "backend="
    if requested is None:
        requested = environment_backend()
        source = "the environment variable FASTOPT_BACKEND="
        if requested is not None and requested not in BACKEND_NAMES:
            raise ValueError(f"{source}{requested!r}: expected one of {BACKEND_NAMES} (or unset it)")
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
                      "which is correct but several times slower", RuntimeWarning, stacklevel=_user_stacklevel())
        _warned_fallback = True
    return get_backend("numpy")
