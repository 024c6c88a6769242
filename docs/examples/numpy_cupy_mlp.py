"""Train a small MLP on scikit-learn's digits with fastopt.Adam, in NumPy or CuPy: the same code, an `xp` switch.

    python docs/examples/numpy_cupy_mlp.py                 # NumPy arrays: the fused Numba (cpu) kernels
    python docs/examples/numpy_cupy_mlp.py --xp cupy       # CuPy arrays on a GPU: the fused CUDA kernels

The forward and backward passes are written by hand with `xp` (numpy or cupy); fastopt updates all four arrays in
place in one fused step. The learning rate follows a cosine schedule from fastopt.lr_scheduler.
"""

import argparse

import numpy as np
from sklearn.datasets import load_digits

import fastopt
from fastopt.lr_scheduler import CosineAnnealingLR


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xp", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.xp == "cupy":
        import cupy as xp
    else:
        xp = np

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x))
    train, test = order[:1500], order[1500:]
    x_train, y_train = xp.asarray(x[train]), xp.asarray(y[train])
    x_test, y_test = xp.asarray(x[test]), xp.asarray(y[test])

    def init(fan_in, fan_out):
        return xp.asarray(rng.normal(0, fan_in ** -0.5, (fan_in, fan_out)).astype(np.float32))

    params = {"w1": init(64, args.hidden), "b1": xp.zeros(args.hidden, dtype=xp.float32),
              "w2": init(args.hidden, 10), "b2": xp.zeros(10, dtype=xp.float32)}
    opt = fastopt.Adam(params, lr=3e-3, weight_decay=1e-4)
    schedule = CosineAnnealingLR(opt, T_max=args.steps, eta_min=1e-4)

    def forward(xb):
        h = xp.maximum(xb @ params["w1"] + params["b1"], 0)
        logits = h @ params["w2"] + params["b2"]
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = xp.exp(logits)
        return h, probs / probs.sum(axis=1, keepdims=True)

    batch = 64
    for step in range(args.steps):
        index = xp.asarray(rng.integers(0, len(train), batch))
        xb, yb = x_train[index], y_train[index]
        h, probs = forward(xb)
        loss = float(-xp.log(probs[xp.arange(batch), yb] + 1e-12).mean())
        d_logits = probs
        d_logits[xp.arange(batch), yb] -= 1
        d_logits /= batch
        d_h = (d_logits @ params["w2"].T) * (h > 0)
        grads = {"w1": xb.T @ d_h, "b1": d_h.sum(axis=0), "w2": h.T @ d_logits, "b2": d_logits.sum(axis=0)}
        opt.step(grads)
        schedule.step()
        if step == 0:
            print(f"first loss {loss:.4f}")
    _, probs = forward(x_test)
    accuracy = float((probs.argmax(axis=1) == y_test).mean())
    print(f"final loss {loss:.4f}")
    print(f"test accuracy {accuracy:.4f} ({args.xp}, backend {opt.backend.name}, "
          f"final lr {schedule.get_last_lr()[0]:.2e})")
    return accuracy


if __name__ == "__main__":
    main()
