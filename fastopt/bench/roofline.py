"""The limit each optimizer is measured against: a stream with the optimizer's own access pattern, on the same device.

An optimizer step with n active state slots reads param, grad and the n slots and writes param and the n slots back
in place. The stream kernels here do exactly that with trivial arithmetic (one multiply-add per array), so the only
thing they measure is how fast this machine moves that mix of reads and in-place writes. A datasheet number or a
copy/triad benchmark would not do: on CPUs a triad pays for write-allocate (a store to a line that is not read first
costs a read as well), which an in-place update does not, and the ratio of reads to writes changes what a memory
system sustains. On GPUs a device-to-device copy is reported beside it as the usual reference point.

The CPU stream is a Numba `prange` kernel per slot count (0..3); the GPU stream is a CuPy ElementwiseKernel.
"""

from __future__ import annotations

import numpy as np

MAX_SLOTS = 3

_cpu_kernels = None


def _njit(**options):
    import numba
    try:
        return numba.njit(parallel=True, cache=True, **options)
    except Exception:  # no writable cache directory: compile every run instead
        return numba.njit(parallel=True, **options)


def cpu_stream_kernels():
    """Numba kernels stream{n}(p, g, *slots, c): read p, g and n slots, write p and the slots in place."""
    global _cpu_kernels
    if _cpu_kernels is not None:
        return _cpu_kernels
    from numba import prange

    # One Python function per slot count: Numba's cache keys on the function, so each gets its own entry. `c` comes
    # in the arrays' dtype so the loop stays in float32 (a Python float would promote it to float64).
    @_njit()
    def stream0(p, g, c):
        for i in prange(p.size):
            p[i] = p[i] - c * g[i]

    @_njit()
    def stream1(p, g, s1, c):
        for i in prange(p.size):
            gi = g[i]
            a = s1[i] * c + gi
            s1[i] = a
            p[i] = p[i] - c * a

    @_njit()
    def stream2(p, g, s1, s2, c):
        for i in prange(p.size):
            gi = g[i]
            a = s1[i] * c + gi
            b = s2[i] * c + gi
            s1[i] = a
            s2[i] = b
            p[i] = p[i] - c * (a + b)

    @_njit()
    def stream3(p, g, s1, s2, s3, c):
        for i in prange(p.size):
            gi = g[i]
            a = s1[i] * c + gi
            b = s2[i] * c + gi
            d = s3[i] * c + gi
            s1[i] = a
            s2[i] = b
            s3[i] = d
            p[i] = p[i] - c * (a + b + d)

    _cpu_kernels = (stream0, stream1, stream2, stream3)
    return _cpu_kernels


def cpu_stream_step(n_slots: int, n: int, dtype, rng=None):
    """A callable doing one stream pass over fresh arrays of `n` elements with `n_slots` state slots."""
    if not 0 <= n_slots <= MAX_SLOTS:
        raise ValueError(f"n_slots must be in 0..{MAX_SLOTS}, got {n_slots}")
    dtype = np.dtype(dtype)
    kernel = cpu_stream_kernels()[n_slots]
    arrays = [np.full(n, 0.5, dtype=dtype), np.full(n, 0.25, dtype=dtype)]
    arrays += [np.zeros(n, dtype=dtype) for _ in range(n_slots)]
    c = dtype.type(0.5)

    def step():
        kernel(*arrays, c)
    return step


_gpu_kernels: dict = {}


def gpu_stream_kernel(n_slots: int):
    """A CuPy ElementwiseKernel: in-place update of p and n slots from g; computes in float, any float types."""
    if n_slots in _gpu_kernels:
        return _gpu_kernels[n_slots]
    import cupy
    slots = [f"s{i}" for i in range(1, n_slots + 1)]
    out_params = ", ".join(["P p"] + [f"S {s}" for s in slots])
    body = ["float gf = (float)g;", "float acc = 0.0f;"]
    for s in slots:
        body += [f"float v_{s} = (float){s} * 0.5f + gf;", f"{s} = (S)v_{s};", f"acc += v_{s};"]
    body.append("p = (P)((float)p - 0.5f * (acc + gf));")
    kernel = cupy.ElementwiseKernel("P g", out_params, "\n".join(body), f"fastopt_bench_stream{n_slots}")
    _gpu_kernels[n_slots] = kernel
    return kernel


def gpu_stream_step(n_slots: int, n: int, dtype, state_dtype=None):
    import cupy
    dtype = np.dtype(dtype)
    state_dtype = dtype if state_dtype is None else np.dtype(state_dtype)
    kernel = gpu_stream_kernel(n_slots)
    p = cupy.full(n, 0.5, dtype=dtype)
    g = cupy.full(n, 0.25, dtype=dtype)
    slots = [cupy.zeros(n, dtype=state_dtype) for _ in range(n_slots)]

    def step():
        kernel(g, p, *slots)
    return step


def gpu_copy_step(nbytes: int):
    """One device-to-device copy of `nbytes` (moves 2 * nbytes: a read and a write)."""
    import cupy
    src = cupy.zeros(nbytes, dtype=np.uint8)
    dst = cupy.empty_like(src)

    def step():
        dst.data.copy_from_device_async(src.data, nbytes)
    return step
