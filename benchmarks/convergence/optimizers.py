"""Which optimizers the study runs, with which hyperparameters.

Each entry names a fastopt class and its keyword arguments (torch.optim's names). The MLP settings are the classic
teaching values; the toy settings are per-optimizer learning rates that make each path on f(x, y) = x^2/20 + y^2
visible in 30 steps (the toy is badly conditioned, so one learning rate for all would show nothing useful).
AdaDelta's first steps are about lr * sqrt(eps) / sqrt(1 - rho) ~ 3e-3 * lr long whatever the gradient, so with
torch's lr=1.0 it barely leaves (-7, 2) in 30 steps; lr=100 makes its path comparable to the others.
"""

from __future__ import annotations

# name shown in plots/tables -> (fastopt class name, keyword arguments)
MLP = {
    "SGD": ("SGD", {"lr": 0.01}),
    "Momentum": ("Momentum", {"lr": 0.01, "momentum": 0.9}),
    "Nesterov": ("Nesterov", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    "AdaGrad": ("Adagrad", {"lr": 0.01}),
    "RMSprop": ("RMSprop", {"lr": 0.01, "alpha": 0.99}),
    "AdaDelta": ("Adadelta", {"lr": 1.0, "rho": 0.9, "eps": 1e-6}),
    "Adam": ("Adam", {"lr": 0.001, "betas": (0.9, 0.999)}),
    "AdamW": ("AdamW", {"lr": 0.001, "betas": (0.9, 0.999), "weight_decay": 0.01}),
}

TOY = {
    "SGD": ("SGD", {"lr": 0.95}),
    "Momentum": ("Momentum", {"lr": 0.1, "momentum": 0.9}),
    "Nesterov": ("Nesterov", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    "AdaGrad": ("Adagrad", {"lr": 1.5}),
    "RMSprop": ("RMSprop", {"lr": 0.3, "alpha": 0.99}),
    "AdaDelta": ("Adadelta", {"lr": 100.0, "rho": 0.9, "eps": 1e-6}),
    "Adam": ("Adam", {"lr": 0.3, "betas": (0.9, 0.999)}),
    "AdamW": ("AdamW", {"lr": 0.3, "betas": (0.9, 0.999), "weight_decay": 0.01}),
}

COLORS = {
    "SGD": "tab:blue", "Momentum": "tab:orange", "Nesterov": "tab:brown", "AdaGrad": "tab:green",
    "RMSprop": "tab:purple", "AdaDelta": "tab:gray", "Adam": "tab:red", "AdamW": "tab:pink",
}


def make(entry, params, backend=None):
    """Instantiate a fastopt optimizer from a table entry over `params`."""
    import fastopt

    cls_name, kwargs = entry
    return getattr(fastopt, cls_name)(params, **kwargs, backend=backend)
