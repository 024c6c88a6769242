"""The cpu backend's threads: how many, and what they do when a step is over.

Numba runs the parallel kernels on its threading layer: OpenMP (`omp`, here GNU libgomp), TBB, or its own
`workqueue`, whichever it finds first. fastopt starts that layer itself, once, when the cpu backend is first
loaded, so that it can set how OpenMP's idle threads wait:

* unless you set one of OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME or KMP_LIBRARY yourself, the layer starts
  with OMP_WAIT_POLICY=PASSIVE: after a parallel step its threads sleep at once instead of spinning for a while
  and competing with BLAS's threads and the rest of the training loop (measured in a NumPy MLP training loop with
  OpenBLAS matmuls: see docs/benchmarks.md). The variable is set only while the layer starts, then removed again,
  so OpenMP libraries loaded later (torch's, scikit-learn's) keep their own defaults;
* what you set is never overridden. OpenMP reads these variables once, when it is loaded: if Numba's layer was
  started before fastopt was imported (a parallel Numba function of your own ran first), it keeps the policy it
  started with; likewise when torch (or another library using GNU OpenMP) was imported first and Numba's layer
  shares its libgomp, whose threads then spin after each step (measured: an Adafactor step whose threads finish
  unevenly went from 36 to 58 ms with torch imported first). Set OMP_WAIT_POLICY=PASSIVE in the environment before
  importing either to get the quiet policy in that case too;
* under the `workqueue` layer (no OpenMP or TBB), two parallel regions launched from two threads at once abort the
  process, so fastopt serializes its parallel kernel calls with `KERNEL_LOCK` there.

Small steps never use the threads: see `fastopt.backends.cpu.PARALLEL_MIN_BYTES`.
"""

from __future__ import annotations

import operator
import os
import threading

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "KMP_LIBRARY")
DEFAULT_WAIT_POLICY = "PASSIVE"

KERNEL_LOCK: threading.Lock | None = None
"""Held around every parallel kernel call when Numba's layer is `workqueue` (not thread-safe); None otherwise."""

_start_lock = threading.Lock()
_started = False


def start() -> str:
    """Start Numba's threading layer (once per process) and return its name ('omp', 'tbb' or 'workqueue')."""
    global KERNEL_LOCK, _started
    import numba

    with _start_lock:
        if not _started:
            chosen_by_user = any(name in os.environ for name in WAIT_VARIABLES)
            if not chosen_by_user:
                os.environ["OMP_WAIT_POLICY"] = DEFAULT_WAIT_POLICY
            try:
                numba.get_num_threads()  # launches the layer: loads libgomp, which reads the variables now
            finally:
                if not chosen_by_user:
                    del os.environ["OMP_WAIT_POLICY"]
            if numba.threading_layer() == "workqueue":
                KERNEL_LOCK = threading.Lock()
            _started = True
    return numba.threading_layer()


def get_num_threads() -> int:
    """The number of threads the cpu backend's parallel kernels use when called from this thread."""
    import numba

    start()
    return numba.get_num_threads()


def set_num_threads(n: int) -> None:
    """Use `n` threads (1 to NUMBA_NUM_THREADS) for the cpu backend's parallel kernels called from this thread.

    This is Numba's own setting (`numba.set_num_threads`), so it is per calling thread and also applies to your own
    parallel Numba functions. To cap the threads for the whole process, set NUMBA_NUM_THREADS before the first
    import. Steps too small to share between threads run serially whatever this says.
    """
    import numba

    try:
        if isinstance(n, bool):
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}") from None
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"set_num_threads: n must be between 1 and NUMBA_NUM_THREADS={limit}, got {n}")
    start()
    numba.set_num_threads(n)
