"""A real training loop: a NumPy MLP trained with BLAS matmuls, and the optimizer update timed inside it.

Every step computes the gradient (forward and backward through OpenBLAS matmuls) and then updates the params. Each
implementation of the update trains its own copy of the same model on the same batches; they take turns, a few steps
each, round after round, so a busy machine disturbs them alike. Per step we record the update time and the gradient
time: a parallel update that leaves threads spinning shows up as a slower gradient computation after it.

torch runs in a process of its own, next to its own NumPy reference: its OpenMP threads spin after each fused
step (libgomp's default) and would slow the gradient of whatever runs after it in the same process. fastopt and the
NumPy update share a process (`run_groups`), and every ratio is taken against the NumPy update of the same process.

Implementations of the update:
  numpy        what a textbook writes (`v = momentum * v - lr * g; p += v`, Adam in four NumPy lines)
  fastopt      fastopt.Momentum / fastopt.Adam on the `cpu` backend, default threads
  torch-fused  torch.optim.SGD / Adam(fused=True) on torch tensors viewing the same NumPy arrays (zero-copy)
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

MODELS = {
    "mlp37k": (64, 100, 100, 100, 100, 10),  # the classic 4x100 MLP on 8x8 digits: 37,810 parameters
    "mlp1m": (64, 1000, 1000, 10),           # 1,076,010 parameters
}
OPTIMIZERS = ("momentum", "adam")
IMPLS = ("numpy", "fastopt", "torch-fused")
LR = {"momentum": 0.01, "adam": 0.001}


class MLP:
    """ReLU layers, softmax cross-entropy; params[2k], params[2k+1] are layer k's weight and bias."""

    def __init__(self, sizes, dtype=np.float64, seed=0):
        rng = np.random.default_rng(seed)
        self.params = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            self.params.append((rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)).astype(dtype))
            self.params.append(np.zeros(fan_out, dtype))
        self.grads = [np.zeros_like(p) for p in self.params]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.params)

    def gradient(self, x, labels):
        """Fill self.grads (the same arrays every step, as a framework keeps .grad) and return the loss."""
        activations = [x]
        layers = len(self.params) // 2
        for k in range(layers):
            h = activations[-1] @ self.params[2 * k] + self.params[2 * k + 1]
            activations.append(np.maximum(h, 0) if k < layers - 1 else h)
        logits = activations[-1]
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        rows = np.arange(len(labels))
        loss = -np.log(probs[rows, labels] + 1e-12).mean()
        delta = probs
        delta[rows, labels] -= 1
        delta /= len(labels)
        for k in reversed(range(layers)):
            np.matmul(activations[k].T, delta, out=self.grads[2 * k])
            np.sum(delta, axis=0, out=self.grads[2 * k + 1])
            if k:
                delta = delta @ self.params[2 * k].T
                delta *= activations[k] > 0
        return float(loss)


class NumpyMomentum:
    """The textbook's Momentum: v = momentum * v - lr * g; p += v."""

    def __init__(self, params, lr, momentum=0.9):
        self.params, self.lr, self.momentum = params, lr, momentum
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads):
        for p, g, v in zip(self.params, grads, self.v):
            v *= self.momentum
            v -= self.lr * g
            p += v


class NumpyAdam:
    """The textbook's Adam: bias corrections folded into the learning rate."""

    def __init__(self, params, lr, beta1=0.9, beta2=0.999):
        self.params, self.lr, self.beta1, self.beta2, self.t = params, lr, beta1, beta2, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads):
        self.t += 1
        lr_t = self.lr * math.sqrt(1.0 - self.beta2 ** self.t) / (1.0 - self.beta1 ** self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m += (1 - self.beta1) * (g - m)
            v += (1 - self.beta2) * (g ** 2 - v)
            p -= lr_t * m / (np.sqrt(v) + 1e-7)


class TorchFused:
    """torch.optim's fused CPU update on tensors that view the NumPy params and grads (no copies)."""

    def __init__(self, optimizer, params, grads, lr):
        import torch

        tensors = [torch.from_numpy(p) for p in params]
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g)
        if optimizer == "momentum":
            self.opt = torch.optim.SGD(tensors, lr=lr, momentum=0.9, fused=True)
        else:
            self.opt = torch.optim.Adam(tensors, lr=lr, fused=True)

    def step(self, grads):
        self.opt.step()  # .grad already views `grads`, which the model refills in place


def make_update(impl: str, optimizer: str, model: MLP):
    lr = LR[optimizer]
    if impl == "numpy":
        return (NumpyMomentum if optimizer == "momentum" else NumpyAdam)(model.params, lr)
    if impl == "fastopt":
        import fastopt

        opt = (fastopt.Momentum if optimizer == "momentum" else fastopt.Adam)(model.params, lr=lr, backend="cpu")
        return opt
    if impl == "torch-fused":
        return TorchFused(optimizer, model.params, model.grads, lr)
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


@dataclass
class LoopResult:
    model: str
    params: int
    optimizer: str
    impl: str
    update_ms: float     # median per step
    gradient_ms: float   # median per step
    final_loss: float
    process: int = 0     # results of one process share a NumPy reference


def batches(n_inputs, n_classes, batch, count, seed=1):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, n_inputs))
    out = []
    for _ in range(count):
        labels = rng.integers(0, n_classes, batch)
        out.append(((centers[labels] + rng.standard_normal((batch, n_inputs))), labels))
    return out


def run_loop(model_name="mlp37k", optimizer="adam", impls=IMPLS, rounds=20, steps_per_round=10, warmup=5,
             batch=128, dtype=np.float64) -> list[LoopResult]:
    """Train one copy of the model per implementation, taking turns; return per-step medians."""
    sizes = MODELS[model_name]
    data = [(x.astype(dtype), y) for x, y in batches(sizes[0], sizes[-1], batch, 32)]
    models, updates = {}, {}
    for impl in impls:
        models[impl] = MLP(sizes, dtype)
        updates[impl] = make_update(impl, optimizer, models[impl])
    times = {impl: ([], []) for impl in impls}
    losses = {}
    position = 0
    for round_ in range(rounds + 1):
        for impl in impls:
            model, update = models[impl], updates[impl]
            grad_times, update_times = times[impl]
            for i in range(warmup if round_ == 0 else steps_per_round):
                x, y = data[(position + i) % len(data)]
                t0 = time.perf_counter()
                losses[impl] = model.gradient(x, y)
                t1 = time.perf_counter()
                update.step(model.grads)
                t2 = time.perf_counter()
                if round_:
                    grad_times.append(t1 - t0)
                    update_times.append(t2 - t1)
        position += warmup if round_ == 0 else steps_per_round
    return [LoopResult(model_name, models[impl].size, optimizer, impl, 1e3 * float(np.median(times[impl][1])),
                       1e3 * float(np.median(times[impl][0])), losses[impl]) for impl in impls]


def run_in_subprocess(model_name, optimizer, impls, rounds, process=0) -> list[LoopResult]:
    """run_loop in a fresh Python process (its own threads, nothing loaded but what these impls need)."""
    code = ("import json, sys; from dataclasses import asdict; from fastopt.bench import training; "
            "print(json.dumps([asdict(r) for r in training.run_loop(*json.loads(sys.argv[1]))]))")
    args = json.dumps([model_name, optimizer, list(impls), rounds])
    out = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=True)
    return [LoopResult(**dict(r, process=process)) for r in json.loads(out.stdout.strip().splitlines()[-1])]


def run_groups(model_name, optimizer, impls, rounds) -> list[LoopResult]:
    """numpy and fastopt in one fresh process, taking turns; torch-fused (if asked) with its own numpy in another."""
    out = []
    first = [i for i in impls if i != "torch-fused"]
    if "numpy" not in first:
        first.insert(0, "numpy")
    out += run_in_subprocess(model_name, optimizer, first, rounds, process=0)
    if "torch-fused" in impls:
        out += run_in_subprocess(model_name, optimizer, ["numpy", "torch-fused"], rounds, process=1)
    return out


def available_impls() -> tuple[str, ...]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return ("numpy", "fastopt")
    return IMPLS


def as_dicts(results: list[LoopResult]) -> list[dict]:
    return [asdict(r) for r in results]


def format_table(results: list[LoopResult]) -> str:
    """Markdown: per model and optimizer, each implementation's update and gradient ms, and ratios to numpy."""
    lines = ["| model | params | optimizer | process | update | update ms | gradient ms | update vs numpy | "
             "gradient vs numpy |", "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    base = {(r.model, r.optimizer, r.process): r for r in results if r.impl == "numpy"}
    for r in results:
        b = base.get((r.model, r.optimizer, r.process))
        ratio_u = f"{r.update_ms / b.update_ms:.2f}x" if b else "n/a"
        ratio_g = f"{r.gradient_ms / b.gradient_ms:.2f}x" if b else "n/a"
        lines.append(f"| {r.model} | {r.params:,} | {r.optimizer} | {r.process} | {r.impl} | {r.update_ms:.3f} | "
                     f"{r.gradient_ms:.3f} | {ratio_u} | {ratio_g} |")
    return "\n".join(lines)
