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


class _Rotation:
    """Round-robin over the instances, continuing where the previous run stopped (a run need not be whole rounds:
    every step still lands on the instance touched longest ago)."""

    def __init__(self, steps):
        self.steps = steps
        self.next = 0

    def run(self, count):
        steps, n, i = self.steps, len(self.steps), self.next
        for _ in range(count):
            steps[i]()
            i = i + 1 if i + 1 < n else 0
        self.next = i


class _CpuClock:
    def sync(self):
        pass

    def run(self, rotation, count):
        t0 = time.perf_counter()
        rotation.run(count)
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

    def run(self, rotation, count):
        self.sync()
        self.start.record()
        t0 = time.perf_counter()
        rotation.run(count)
        host = time.perf_counter() - t0
        self.end.record()
        self.end.synchronize()
        return self.cupy.cuda.get_elapsed_time(self.start, self.end) / 1e3, host


def measure(steps, device: str = "cpu", repeats: int = 7, min_time: float = 0.02, max_steps: int = 10_000) -> Timing:
    """Time one optimizer step. `steps` holds one callable per rotated instance (each does one step on its own
    arrays, so consecutive steps do not find their data in cache); steps are issued round-robin.

    Warm-up: every instance steps once (the first of these is reported as first-step time), then a few more steps
    calibrate `steps_per_repeat`, chosen so one run lasts about `min_time`. Then `repeats` runs; the result is the
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
    # Calibrate on one step per instance (at most 8 steps).
    rotation = _Rotation(steps)
    probe = min(len(steps), 8)
    elapsed, _ = clock.run(rotation, probe)
    per_step = max(elapsed / probe, 1e-7)
    count = max(1, min(max_steps, math.ceil(min_time / per_step)))
    times, hosts = [], []
    for _ in range(repeats):
        elapsed, host = clock.run(rotation, count)
        times.append(elapsed / count)
        if host is not None:
            hosts.append(host / count)
    return Timing(seconds=statistics.median(times), min_seconds=min(times), max_seconds=max(times),
                  repeats=repeats, steps_per_repeat=count, first_step_seconds=first,
                  host_seconds=statistics.median(hosts) if hosts else None)
