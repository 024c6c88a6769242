"""Timing: warm-up, then the median of repeated runs; CUDA events on GPUs, with host time per step beside them."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass


@dataclass
class Timing:
    seconds: float                  # median time per step
    min_seconds: float
    max_seconds: float
    repeats: int
    steps_per_repeat: int
    first_step_seconds: float       # the very first step of the first instance (allocation, kernel compile/load)
    host_seconds: float | None = None   # GPU: host time to issue one step (median), without waiting for the device

    def as_dict(self) -> dict:
        return {"time_s": self.seconds, "time_min_s": self.min_seconds, "time_max_s": self.max_seconds,
                "repeats": self.repeats, "steps_per_repeat": self.steps_per_repeat,
                "first_step_s": self.first_step_seconds,
                "host_us": None if self.host_seconds is None else self.host_seconds * 1e6}


class _CpuClock:
    def sync(self):
        pass

    def run(self, steps, count):
        n = len(steps)
        t0 = time.perf_counter()
        for i in range(count):
            steps[i % n]()
        return time.perf_counter() - t0, None


class _CudaClock:
    def __init__(self):
        import cupy
        self.cupy = cupy
        self.start = cupy.cuda.Event()
        self.end = cupy.cuda.Event()

    def sync(self):
        self.cupy.cuda.get_current_stream().synchronize()
        self.cupy.cuda.Device().synchronize()

    def run(self, steps, count):
        n = len(steps)
        self.sync()
        self.start.record()
        t0 = time.perf_counter()
        for i in range(count):
            steps[i % n]()
        host = time.perf_counter() - t0
        self.end.record()
        self.end.synchronize()
        return self.cupy.cuda.get_elapsed_time(self.start, self.end) / 1e3, host


def measure(steps, device: str = "cpu", repeats: int = 7, min_time: float = 0.02, max_steps: int = 10_000) -> Timing:
    """Time one optimizer step. `steps` holds one callable per rotated instance (each does one step on its own
    arrays, so consecutive steps do not find their data in cache); steps are issued round-robin.

    Warm-up: every instance steps once (the first of these is reported as first-step time), then one more round.
    Then `repeats` runs of `steps_per_repeat` steps each, chosen so one run lasts about `min_time`; the result is the
    median time per step over the runs.
    """
    clock = _CudaClock() if device == "gpu" else _CpuClock()
    clock.sync()
    t0 = time.perf_counter()
    steps[0]()
    clock.sync()
    first = time.perf_counter() - t0
    for step in steps[1:]:
        step()
    clock.sync()
    # Calibrate: one full round of the instances.
    n = len(steps)
    elapsed, _ = clock.run(steps, n)
    per_step = max(elapsed / n, 1e-7)
    count = max(n, min(max_steps, math.ceil(min_time / per_step)))
    count = max(1, count // n) * n if count >= n else count
    times, hosts = [], []
    for _ in range(repeats):
        elapsed, host = clock.run(steps, count)
        times.append(elapsed / count)
        if host is not None:
            hosts.append(host / count)
    return Timing(seconds=statistics.median(times), min_seconds=min(times), max_seconds=max(times),
                  repeats=repeats, steps_per_repeat=count, first_step_seconds=first,
                  host_seconds=statistics.median(hosts) if hosts else None)
