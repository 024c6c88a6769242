"""fastopt: fused optimizer-update kernels for NumPy (Numba) and CuPy (CUDA) training loops.

    opt = fastopt.Adam(params, lr=1e-3)
    opt.step(grads)          # every param updated in place, one fused pass over memory
"""

from fastopt import functional
from fastopt.dispatch import available_backends
from fastopt.flat import flatten
from fastopt.optim import OPTIMIZERS, Optimizer
from fastopt.optim import SGD, Adadelta, Adagrad, Adam, AdamW, Momentum, Nesterov, RMSprop  # noqa: F401
from fastopt.specs import SPECS

__version__ = "0.1.0"

__all__ = ["SGD", "Momentum", "Nesterov", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Optimizer",
           "OPTIMIZERS", "SPECS", "available_backends", "flatten", "functional", "__version__"]
