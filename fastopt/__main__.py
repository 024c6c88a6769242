"""python -m fastopt info | check-kernels"""

from __future__ import annotations

import argparse
import os
import platform
import sys


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

        lines.append(f"numba threads {numba.get_num_threads()} (NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}, "
                     f"layer {numba.config.THREADING_LAYER}), cache dir {numba.config.CACHE_DIR or 'next to kernels'}")
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

    return cuda_build.check_kernels(archs=tuple(archs))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastopt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, backends, threads, GPU and kernel cache")
    check = commands.add_parser("check-kernels", help="compile every CUDA kernel instantiation with nvcc; "
                                                      "report registers and spills")
    check.add_argument("--arch", action="append", default=None, help="e.g. sm_90 (default: sm_80 and sm_90)")
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    return check_kernels(args.arch or ("sm_80", "sm_90"))


if __name__ == "__main__":
    sys.exit(main())
