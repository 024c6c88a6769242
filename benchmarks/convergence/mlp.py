"""A plain multilayer perceptron (ReLU hidden layers, softmax cross-entropy) that runs on NumPy and CuPy alike.

Parameters are a flat list ``[W1, b1, W2, b2, ...]`` with ``W_i`` of shape (fan_in, fan_out) and ``b_i`` of shape
(fan_out,). The array module is taken from the arrays themselves, so the same code trains on the host or on a GPU.
Gradients come back as fresh C-contiguous arrays of the parameters' dtype, as fastopt's ``step(grads)`` expects.
"""

from __future__ import annotations

import itertools

import numpy as np

try:  # CuPy is optional: without it everything is NumPy
    import cupy as _cupy
except Exception:  # noqa: BLE001 - any import failure (no CUDA driver, ...) means "no CuPy"
    _cupy = None


def get_xp(array):
    """The array module (numpy or cupy) that owns `array`."""
    return _cupy.get_array_module(array) if _cupy is not None else np


def init_params(sizes, seed=0, dtype=np.float32, xp=np):
    """He-initialised weights (normal, std sqrt(2 / fan_in)) and zero biases for layer sizes like [64, 100, ..., 10].

    Drawn on the host with a fixed seed and then moved to `xp`, so NumPy and CuPy runs start from the same numbers.
    """
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
        params.append(xp.asarray(w.astype(dtype)))
        params.append(xp.zeros(fan_out, dtype=dtype))
    return params


def forward(params, x):
    """Logits for a batch `x` of shape (n, features)."""
    xp = get_xp(x)
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < n_layers - 1:
            h = xp.maximum(h, 0)
    return h


def _log_softmax(logits):
    xp = get_xp(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def loss(params, x, y):
    """Mean softmax cross-entropy of the batch (a 0-d array, still on the device)."""
    logp = _log_softmax(forward(params, x))
    xp = get_xp(logp)
    return -logp[xp.arange(len(y)), y].mean()


def loss_and_grads(params, x, y):
    """Mean softmax cross-entropy over the batch and its gradient with respect to every parameter.

    Returns ``(loss, grads)``: `loss` is a 0-d array on the arrays' device (no host synchronisation), `grads` a list
    of fresh contiguous arrays in the order and dtypes of `params`.
    """
    xp = get_xp(x)
    dtype = params[0].dtype
    n_layers = len(params) // 2
    activations = [x]  # the input of every layer
    h = x
    for i in range(n_layers):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < n_layers - 1:
            h = xp.maximum(h, 0)
            activations.append(h)
    logp = _log_softmax(h)
    n = len(y)
    rows = xp.arange(n)
    value = -logp[rows, y].mean()

    # d(mean CE)/d(logits) = (softmax - onehot) / n
    delta = xp.exp(logp)
    delta[rows, y] -= 1
    delta *= dtype.type(1.0 / n)
    grads = [None] * len(params)
    for i in reversed(range(n_layers)):
        a = activations[i]
        grads[2 * i] = xp.ascontiguousarray((a.T @ delta).astype(dtype, copy=False))
        grads[2 * i + 1] = xp.ascontiguousarray(delta.sum(axis=0).astype(dtype, copy=False))
        if i > 0:
            delta = delta @ params[2 * i].T
            delta *= a > 0  # ReLU: a = max(z, 0), so a > 0 exactly where z > 0
    return value, grads


def accuracy(params, x, y, batch=1024):
    """Fraction of rows of `x` whose arg-max logit is the label (a Python float)."""
    correct = 0
    for start in range(0, len(x), batch):
        pred = forward(params, x[start:start + batch]).argmax(axis=1)
        correct += int((pred == y[start:start + batch]).sum())
    return correct / len(x)


def mean_loss(params, x, y, batch=1024):
    """Mean cross-entropy over the whole of `x` (a Python float), computed in batches."""
    total = 0.0
    for start in range(0, len(x), batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        total += float(loss(params, xb, yb)) * len(xb)
    return total / len(x)
