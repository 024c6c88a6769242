"""The 2-D toy: each optimizer's path on f(x, y) = x^2/20 + y^2 from (-7, 2), through fastopt's kernels.

The parameter is one array [x, y] (float64), updated in place by the optimizer; the gradient (x/10, 2y) is written
into a fresh array every step.
"""

from __future__ import annotations

import numpy as np

from .mlp import get_xp
from .optimizers import TOY, make

START = (-7.0, 2.0)
STEPS = 30


def f(x, y):
    return x * x / 20.0 + y * y


def grad_f(p):
    """A fresh gradient array (NumPy or CuPy, like `p`): (x / 10, 2 y)."""
    return p * get_xp(p).asarray([0.1, 2.0], dtype=p.dtype)


def path(entry, steps=STEPS, start=START, backend=None, xp=np):
    """The (steps + 1, 2) NumPy array of points visited, the start first (the optimizer works on `xp` arrays)."""
    p = xp.asarray(start, dtype=np.float64)
    opt = make(entry, [p], backend=backend)
    points = [p.copy()]
    for _ in range(steps):
        opt.step([grad_f(p)])
        points.append(p.copy())
    return np.array([[float(v) for v in q] for q in points])


def all_paths(backend=None, steps=STEPS, table=TOY, xp=np):
    return {name: path(entry, steps=steps, backend=backend, xp=xp) for name, entry in table.items()}


def plot(paths, filename, table=TOY, backend=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .optimizers import COLORS

    xs = np.linspace(-10, 10, 401)
    ys = np.linspace(-5, 5, 201)
    X, Y = np.meshgrid(xs, ys)
    Z = f(X, Y)
    levels = np.geomspace(0.05, 30, 12)
    n = len(paths)
    cols = 4
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, pts) in zip(axes.flat, paths.items()):
        ax.contour(X, Y, Z, levels=levels, colors="0.75", linewidths=0.7)
        ax.plot(pts[:, 0], pts[:, 1], "o-", color=COLORS.get(name, "k"), ms=2.5, lw=1.2)
        ax.plot(0, 0, "+", color="k", ms=8)
        final = f(*pts[-1])
        lr = table[name][1].get("lr") if name in table else None
        label = f"{name} (lr {lr:g})" if lr is not None else name
        ax.set_title(f"{label}:  f(end) = {final:.3g}", fontsize=10)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-5, 5)
        ax.set_xlabel("x", fontsize=8)
        ax.set_ylabel("y", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    via = f", fastopt backend {backend!r}" if backend else ""
    fig.suptitle(f"f(x, y) = x\u00b2/20 + y\u00b2: {len(next(iter(paths.values()))) - 1} steps from {START}{via}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)
