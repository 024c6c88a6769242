"""The contenders: fastopt's backends and the baselines, each able to build one optimizer instance on a workload.

    impl.unavailable_reason()                   -> None, or one line saying why it cannot run here
    impl.build(case, shapes, dtype, seed)       -> Instance(step, state_itemsize)

An instance owns its own parameters, gradients and state; `step()` does one optimizer step reusing the same gradient
arrays (fastopt's fast path, and what a training loop does with its gradient buffers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .workloads import OptimizerCase

_BASE_LEN = 1 << 16


@dataclass
class Instance:
    step: Callable[[], None]
    state_itemsize: int | None = None   # None: the same as the parameter's
    keep: object = None                 # whatever must stay alive while `step` runs


def _numpy_dtype(dtype: str):
    return None if dtype == "bfloat16" else np.dtype(dtype)


_bases: dict = {}


def _filled(n: int, scale: float, seed: int, dtype) -> np.ndarray:
    """A cheap pseudo-random array of its own: a normal sequence, repeated from an offset that depends on `seed`
    (values only need to be ordinary numbers, different from one tensor to the next)."""
    key = (scale, np.dtype(dtype).str)
    base = _bases.get(key)
    if base is None:
        base = _bases[key] = (np.random.default_rng(0).standard_normal(2 * _BASE_LEN) * scale).astype(dtype)
    start = (seed * 7919) % _BASE_LEN
    if n <= _BASE_LEN:
        return base[start:start + n].copy()
    return np.resize(base[start:start + _BASE_LEN], n)


def _host_lists(shapes, dtype, seed):
    params = [_filled(math.prod(s), 1.0, seed + i, dtype).reshape(s) for i, s in enumerate(shapes)]
    grads = [_filled(math.prod(s), 1e-2, seed + 7919 + i, dtype).reshape(s) for i, s in enumerate(shapes)]
    return params, grads


_device_bases: dict = {}


def _device_filled(n: int, scale: float, seed: int, dtype, lib: str):
    """`_filled` made on the GPU from a device copy of the base sequence (no host round trip for big arrays)."""
    key = (lib, scale, str(dtype))
    base = _device_bases.get(key)
    if base is None:
        host = (np.random.default_rng(0).standard_normal(2 * _BASE_LEN) * scale).astype(np.float32)
        if lib == "cupy":
            import cupy
            base = cupy.asarray(host).astype(dtype)
        else:
            import torch
            base = torch.from_numpy(host).to(device="cuda", dtype=getattr(torch, dtype))
        _device_bases[key] = base
    start = (seed * 7919) % _BASE_LEN
    chunk = base[start:start + min(n, _BASE_LEN)]
    reps = -(-n // chunk.shape[0])
    if lib == "cupy":
        import cupy
        return cupy.tile(chunk, reps)[:n].copy()
    return chunk.repeat(reps)[:n].clone()


def _cupy_lists(shapes, dtype, seed):
    params, grads = [], []
    for i, s in enumerate(shapes):
        n = math.prod(s)
        params.append(_device_filled(n, 1.0, seed + i, dtype, "cupy").reshape(s))
        grads.append(_device_filled(n, 1e-2, seed + 7919 + i, dtype, "cupy").reshape(s))
    return params, grads


def _torch_lists(shapes, dtype: str, seed: int, device: str):
    import torch
    tdtype = getattr(torch, dtype)
    params, grads = [], []
    for i, s in enumerate(shapes):
        n = math.prod(s)
        if device == "cpu":
            p = torch.from_numpy(_filled(n, 1.0, seed + i, np.float32)).reshape(s)
            g = torch.from_numpy(_filled(n, 1e-2, seed + 7919 + i, np.float32)).reshape(s)
            if tdtype != torch.float32:
                p, g = p.to(dtype=tdtype), g.to(dtype=tdtype)
        else:
            p = _device_filled(n, 1.0, seed + i, dtype, "torch").reshape(s)
            g = _device_filled(n, 1e-2, seed + 7919 + i, dtype, "torch").reshape(s)
        params.append(p)
        grads.append(g)
    return params, grads


# ---- the NumPy reference, driven directly (also the CuPy chain: the same code on CuPy arrays) ----------------------

class ChainOptimizer:
    """One optimizer step as a chain of array operations: `fastopt.reference` applied tensor by tensor.

    On NumPy arrays this is the naive NumPy update; on CuPy arrays (NumPy's ufuncs dispatch to CuPy) it is the same
    update written as CuPy array operations, each a kernel launch with its own temporaries.
    """

    def __init__(self, params, case: OptimizerCase, xp=np):
        from fastopt import reference
        from fastopt.specs import SPECS
        self.spec = SPECS[case.spec]
        self.hyper = case.full_hyper()
        self.run = reference.run
        self.params = params
        self.slots = [[xp.full_like(p, s.init(self.hyper)) for p in params] if s.active(self.hyper) else None
                      for s in self.spec.slots]
        self.flags = self.spec.flags(self.hyper)
        self.count = 0

    def step(self, grads):
        self.count += 1
        self.run(self.spec, self.params, grads, self.slots, self.spec.scalars(self.hyper, self.count), self.flags)


# ---- fastopt's own backends ----------------------------------------------------------------------------------------

def _fastopt_class(case: OptimizerCase):
    import fastopt
    cls = getattr(fastopt, case.cls, None)
    if cls is None:
        cls = getattr(fastopt, "OPTIMIZERS", {}).get(case.spec)
    if cls is None:
        raise ImportError(f"fastopt has no public class {case.cls}")
    return cls


def _state_itemsize(opt, param_itemsize: int) -> int | None:
    """The itemsize of the optimizer's state arrays if it differs from the parameter's, from its state_dict."""
    try:
        state = opt.state_dict()["state"]
        for entry in state.values():
            for value in entry.values():
                if hasattr(value, "dtype") and getattr(value, "ndim", 0) > 0:
                    size = np.dtype(value.dtype).itemsize
                    return None if size == param_itemsize else size
    except Exception:
        pass
    return None


class FastoptImpl:
    kind = "fastopt"

    def __init__(self, backend: str):
        self.backend = backend
        self.name = backend
        self.device = "gpu" if backend == "cuda" else "cpu"
        self.note = None

    def unavailable_reason(self):
        try:
            import fastopt
            fastopt.OPTIMIZERS  # noqa: B018  (the public classes exist)
        except Exception as exc:  # the package itself does not import
            if self.backend == "numpy":
                self.note = f"fastopt did not import ({exc}); fastopt.reference driven directly"
                return None
            return f"fastopt does not import: {exc}"
        try:
            reasons = fastopt.available_backends()
        except Exception:  # one backend failing to import must not hide the others
            try:
                from fastopt.dispatch import get_backend
                return get_backend(self.backend).unavailable_reason()
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
        if self.backend not in reasons:
            return f"fastopt has no backend {self.backend!r}"
        return reasons[self.backend]

    def build(self, case, shapes, dtype, seed=0):
        if self.note is not None:  # numpy fallback: the reference itself
            params, grads = _host_lists(shapes, np.dtype(dtype), seed)
            opt = ChainOptimizer(params, case, np)
            return Instance(lambda: opt.step(grads), keep=(params, grads, opt))
        cls = _fastopt_class(case)
        if self.device == "gpu":
            if dtype == "bfloat16":  # CuPy has no bfloat16: hand fastopt torch CUDA tensors (zero-copy)
                params, grads = _torch_lists(shapes, dtype, seed, "cuda")
            else:
                params, grads = _cupy_lists(shapes, np.dtype(dtype), seed)
        else:
            params, grads = _host_lists(shapes, np.dtype(dtype), seed)
        opt = cls(params, **case.hyper, backend=self.backend)
        return Instance(lambda: opt.step(grads), keep=(params, grads, opt))

    def probe_state_itemsize(self, instance, dtype):
        if dtype in ("float32", "float64"):
            return None
        opt = instance.keep[2]
        return _state_itemsize(opt, 2)


# ---- baselines -----------------------------------------------------------------------------------------------------

class CupyChainImpl:
    kind = "baseline"
    name = "cupy-chain"
    device = "gpu"

    def unavailable_reason(self):
        try:
            import cupy
            cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:
            return f"CuPy with a CUDA device is needed: {exc}"
        return None

    def build(self, case, shapes, dtype, seed=0):
        if dtype == "bfloat16":
            raise TypeError("CuPy has no bfloat16 arrays")
        import cupy
        params, grads = _cupy_lists(shapes, np.dtype(dtype), seed)
        opt = ChainOptimizer(params, case, cupy)
        return Instance(lambda: opt.step(grads), keep=(params, grads, opt))


class TorchImpl:
    kind = "baseline"

    def __init__(self, mode: str, device: str):
        self.mode = mode                    # "foreach" or "fused"
        self.device = device                # "cpu" or "gpu"
        self.name = f"torch-{mode}"

    def unavailable_reason(self):
        try:
            import torch
        except Exception as exc:
            return f"torch is not installed ({exc})"
        if self.device == "gpu" and not torch.cuda.is_available():
            return "torch has no CUDA device"
        return None

    def build(self, case, shapes, dtype, seed=0):
        import torch
        if not case.torch_fused and self.mode == "fused":
            raise TypeError(f"torch.optim.{case.cls} has no fused implementation")
        tparams, tgrads = _torch_lists(shapes, dtype, seed, "cuda" if self.device == "gpu" else "cpu")
        params = [torch.nn.Parameter(p) for p in tparams]
        for p, g in zip(params, tgrads):
            p.grad = g
        opt = getattr(torch.optim, case.cls)(params, **case.hyper, **{self.mode: True})
        return Instance(opt.step, keep=(params, tgrads, opt))


def torch_version():
    try:
        import torch
        return torch.__version__
    except Exception:
        return None
