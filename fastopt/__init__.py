"""fastopt: fused optimizer-update kernels for NumPy (Numba) and CuPy (CUDA) training loops.

    opt = fastopt.Adam(params, lr=1e-3)
    opt.step(grads)          # every param updated in place, one fused pass over memory
"""

from fastopt import functional
from fastopt.dispatch import available_backends
from fastopt.flat import flatten
from fastopt.optim import OPTIMIZERS, SGD, Adadelta, Adagrad, Adam, AdamW, Momentum, Nesterov, Optimizer, RMSprop
from fastopt.specs import SPECS

__version__ = "0.1.0"

__all__ = ["OPTIMIZERS", "SGD", "SPECS", "Adadelta", "Adagrad", "Adam", "AdamW", "Momentum", "Nesterov", "Optimizer",
           "RMSprop", "__version__", "available_backends", "flatten", "functional"]
