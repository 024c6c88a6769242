"""python -m fastopt info | check-kernels | check-nvrtc | smoke | first-step

- info          versions, backends, threads, GPU and kernel cache
- check-kernels every CUDA kernel instantiation through nvcc/ptxas: registers and spills (no GPU needed)
- check-nvrtc   every kernel family through NVRTC with the options CuPy passes (no GPU needed)
- smoke         every kernel family, dtype and path (flat, table) once on the cuda backend: the run that
                compute-sanitizer and Nsight Compute wrap in benchmarks/gpu_check.sh
- first-step    seconds to import and take the first Adam step on the GPU in this (new) process, as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

_T0 = time.perf_counter()


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except Exception as error:  # noqa: BLE001 - report any import failure as the reason
        return f"not available ({type(error).__name__}: {error})"
    return getattr(module, "__version__", "?")


def info() -> int:
    import fastopt

    lines = [f"fastopt {fastopt.__version__}", f"python {platform.python_version()} ({sys.executable})",
             f"platform {platform.platform()}", f"cpu cores {os.cpu_count()}"]
    for name in ("numpy", "numba", "cupy", "torch"):
        lines.append(f"{name} {_version(name)}")
    if fastopt.available_backends()["cpu"] is None:
        import numba

        layer = fastopt.threads.start()  # as the cpu backend starts it (idle threads sleep), not numba's default
        lines.append(f"numba threads {fastopt.get_num_threads()} (NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}, "
                     f"layer {layer}), cache dir {numba.config.CACHE_DIR or 'next to kernels'}")
    lines.append(f"FASTOPT_BACKEND={os.environ.get('FASTOPT_BACKEND', '')!r}")
    lines.append("backends:")
    for name, reason in fastopt.available_backends().items():
        lines.append(f"  {name:6} {'available' if reason is None else 'unavailable: ' + reason}")
    if fastopt.available_backends()["cuda"] is None:
        from fastopt.backends import cuda

        describe = getattr(cuda, "describe", None)  # GPU name, compute capability, kernel cache
        lines.extend("  " + line for line in (describe() if describe else []))
    print("\n".join(lines))
    return 0


def check_kernels(archs) -> int:
    from fastopt import cuda_build

    status = cuda_build.check_kernels(archs=tuple(archs))
    if status != 2:   # nvcc found: Adafactor's kernels too (their own module, fastopt.backends.cuda_adafactor)
        from fastopt.backends import cuda_adafactor
        status = max(status, cuda_adafactor.check_kernels(tuple(archs)))
    return status


def check_nvrtc(archs) -> int:
    from fastopt import cuda_build

    status = cuda_build.check_nvrtc(archs=tuple(archs))
    if status != 2:   # NVRTC loads: Adafactor's kernels too (their own module, fastopt.backends.cuda_adafactor)
        from fastopt.backends import cuda_adafactor
        status = max(status, cuda_adafactor.check_nvrtc(tuple(archs)))
    return status


def _split(arrays_np, flat, upload):
    """Device copies of `arrays_np`: separate arrays, or views of one buffer (the flat path)."""
    if not flat:
        return [upload(a) for a in arrays_np]
    import numpy as np

    buf = upload(np.concatenate(arrays_np))
    out, start = [], 0
    for a in arrays_np:
        out.append(buf[start:start + a.size])
        start += a.size
    return out


def smoke(families, dtypes, sizes, steps, pool=True) -> int:
    """Every spec (defaults, and every flag on) x dtype x {flat, table} for `steps` steps; every param element must
    change and stay finite. Returns 0, or 1 naming the failures."""
    import numpy as np

    from fastopt import cuda_build
    from fastopt.backends.cuda import BACKEND
    from fastopt.specs import SPECS

    reason = BACKEND.unavailable_reason()
    if reason:
        print(f"smoke: the cuda backend is not available: {reason}")
        return 2
    import cupy as cp

    if not pool:   # every array its own cudaMalloc: compute-sanitizer then sees the exact bounds of each one
        cp.cuda.set_allocator(None)
    failures, runs = [], 0
    rng = np.random.default_rng(0)
    for spec in SPECS.values():
        if (families and spec.kernel not in families) or spec.kernel not in cuda_build.FAMILIES:
            continue   # a family without CUDA kernels (kernel contract v2 reductions: the cuda backend refuses it)
        hypers = [dict(spec.defaults)]
        every = {k: (True if isinstance(v, bool) else v) for k, v in spec.defaults.items()}
        for name, value in (("momentum", 0.9), ("weight_decay", 0.05)):
            if name in every:
                every[name] = value
        try:
            spec.validate(every)
            hypers.append(every)
        except ValueError:
            pass
        for hyper in hypers:
            for dtype in dtypes:
                storage = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
                state = np.float64 if dtype == "float64" else np.float32
                for flat in (True, False):
                    # |p| in [0.01, 0.1) and grads of fixed sign: every step moves every element by more than half a
                    # bfloat16 spacing, so an element a kernel skipped stays equal and is caught.
                    signs = [np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32) for n in sizes]
                    p32 = [(rng.uniform(0.01, 0.1, n) * s).astype(np.float32) for n, s in zip(sizes, signs)]
                    if dtype == "bfloat16":
                        p_np = [(a.view(np.uint32) >> 16).astype(np.uint16) for a in p32]
                    else:
                        p_np = [a.astype(storage) for a in p32]
                    params = _split(p_np, flat, cp.asarray)
                    slots = {s.name: (_split([np.full(n, s.init(hyper), state) for n in sizes], flat, cp.asarray)
                                      if s.active(hyper) else None) for s in spec.slots}
                    plan = BACKEND.prepare(spec, params, slots, spec.flags(hyper))
                    for step in range(1, steps + 1):
                        g_np = [(g.view(np.uint32) >> 16).astype(np.uint16) if dtype == "bfloat16" else
                                g.astype(storage) for g in signs]
                        plan.run(_split(g_np, flat, cp.asarray), spec.scalars(hyper, step))
                    cp.cuda.get_current_stream().synchronize()
                    runs += 1
                    for t, (before, after) in enumerate(zip(p_np, params)):
                        got = after.get()
                        if dtype == "bfloat16":
                            got_f = (got.astype(np.uint32) << 16).view(np.float32)
                        else:
                            got_f = got.astype(np.float64)
                        if not (np.all(np.isfinite(got_f)) and np.all(got != before)):
                            failures.append(f"{spec.name} {hyper} {dtype} {'flat' if flat else 'table'} tensor {t}")
    if not families or "adafactor" in families:   # shaped state: its own plan (fastopt.backends.cuda_adafactor)
        from fastopt.backends import cuda_adafactor
        more, failed = cuda_adafactor.smoke(dtypes, sizes, steps, rng)
        runs, failures = runs + more, failures + failed
    for f in failures:
        print(f"smoke: FAIL {f}")
    print(f"smoke: {runs} runs ({steps} steps each, sizes {list(sizes)}), {len(failures)} failed")
    return 1 if failures else 0


def first_step(tensors: int, size: int) -> int:
    """Import, build and take one Adam step on `tensors` float32 tensors of `size` elements, timed in this process."""
    t_start = time.perf_counter()
    import cupy as cp

    import fastopt

    t_import = time.perf_counter()
    params = [cp.zeros(size, cp.float32) for _ in range(tensors)]
    grads = [cp.ones(size, cp.float32) for _ in range(tensors)]
    opt = fastopt.Adam(params, lr=1e-3)
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    opt.step(grads)
    cp.cuda.Device().synchronize()
    t1 = time.perf_counter()
    opt.step(grads)
    cp.cuda.Device().synchronize()
    t2 = time.perf_counter()
    print(json.dumps({"tensors": tensors, "size": size, "module_start_to_main_s": round(t_start - _T0, 4),
                      "import_s": round(t_import - t_start, 4), "first_step_s": round(t1 - t0, 4),
                      "second_step_s": round(t2 - t1, 6), "cupy": cp.__version__,
                      "cupy_cache_dir": os.environ.get("CUPY_CACHE_DIR", "~/.cupy/kernel_cache")}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastopt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, backends, threads, GPU and kernel cache")
    check = commands.add_parser("check-kernels", help="compile every CUDA kernel instantiation with nvcc; "
                                                      "report registers and spills")
    check.add_argument("--arch", action="append", default=None, help="e.g. sm_90 (default: sm_80 and sm_90)")
    nvrtc = commands.add_parser("check-nvrtc", help="compile every CUDA kernel family through NVRTC with CuPy's "
                                                     "options (no GPU needed)")
    nvrtc.add_argument("--arch", action="append", default=None, help="e.g. sm_90 (default: sm_80 and sm_90)")
    run = commands.add_parser("smoke", help="run every kernel family, dtype and path once on the cuda backend")
    run.add_argument("--family", action="append", default=None, help="e.g. adam (default: all)")
    run.add_argument("--dtype", action="append", default=None,
                     help="float16, bfloat16, float32, float64 (default: all)")
    run.add_argument("--sizes", default="1,3,4097,70001", help="comma-separated tensor sizes")
    run.add_argument("--steps", type=int, default=2)
    run.add_argument("--no-pool", action="store_true", help="no CuPy memory pool (for compute-sanitizer)")
    first = commands.add_parser("first-step", help="time the first Adam step in this process (JSON)")
    first.add_argument("--tensors", type=int, default=148)
    first.add_argument("--size", type=int, default=1 << 16)
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    if args.command == "check-nvrtc":
        return check_nvrtc(args.arch or ("sm_80", "sm_90"))
    if args.command == "smoke":
        return smoke(args.family, args.dtype or ["float16", "bfloat16", "float32", "float64"],
                     [int(n) for n in args.sizes.split(",")], args.steps, pool=not args.no_pool)
    if args.command == "first-step":
        return first_step(args.tensors, args.size)
    return check_kernels(args.arch or ("sm_80", "sm_90"))


if __name__ == "__main__":
    sys.exit(main())
