"""fastopt: fused optimizer-update kernels for NumPy (Numba) and CuPy (CUDA) training loops.

    opt = fastopt.Adam(params, lr=1e-3)
    opt.step(grads)          # every param updated in place, one fused pass over memory
"""

import importlib.util as _util
import sys as _sys
from pathlib import Path as _Path


def _kernels_from_checkout() -> None:
    """Installed, `kernels/` is the package `fastopt.kernels`. From a plain checkout on sys.path it is not: register
    the checkout's `kernels/` under that name, so the cpu kernels load without installing."""
    if "fastopt.kernels" in _sys.modules or _util.find_spec("fastopt.kernels") is not None:
        return
    source = _Path(__file__).resolve().parent.parent / "kernels"
    if not (source / "__init__.py").is_file():
        return  # an install without kernels: the cpu backend reports itself unavailable, saying why
    spec = _util.spec_from_file_location("fastopt.kernels", source / "__init__.py",
                                         submodule_search_locations=[str(source)])
    module = _util.module_from_spec(spec)
    _sys.modules["fastopt.kernels"] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module


_kernels_from_checkout()

from fastopt import amp, clip, functional, lr_scheduler, threads  # noqa: E402 - after the kernels are findable
from fastopt.amp import GradScaler  # noqa: E402
from fastopt.clip import clip_grad_norm_  # noqa: E402
from fastopt.dispatch import available_backends  # noqa: E402
from fastopt.flat import flatten  # noqa: E402
from fastopt.groups import exclude_bias_and_norm  # noqa: E402
from fastopt.optim import OPTIMIZERS, Optimizer  # noqa: E402
from fastopt.specs import SPECS  # noqa: E402
from fastopt.threads import get_num_threads, set_num_threads  # noqa: E402

__version__ = "0.1.0"

# Every optimizer class (generated from its declaration in fastopt/optimizers/): fastopt.Adam, fastopt.Lion, ...
globals().update({cls.__name__: cls for cls in OPTIMIZERS.values()})

__all__ = ["OPTIMIZERS", "SPECS", "GradScaler", "Optimizer", "__version__", "amp", "available_backends", "clip",
           "clip_grad_norm_", "exclude_bias_and_norm", "flatten", "functional", "get_num_threads", "lr_scheduler",
           "set_num_threads", "threads",
           *sorted(cls.__name__ for cls in OPTIMIZERS.values())]
