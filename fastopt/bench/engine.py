"""The benchmark engine: every workload x dtype x optimizer x contender, side by side with the measured roofline.

`run(Config(...))` returns a plain dict (what `--json` writes): the machine, library versions, the configuration, one
record per measurement and one per roofline stream. Every figure a report shows is in it. A measurement that fails
(an unsupported dtype, a baseline torch lacks) becomes a record with an `error` and the run goes on.
"""

from __future__ import annotations

import datetime as _dt
import gc
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import impls as _impls
from . import roofline as _roofline
from .timing import measure
from .workloads import (
    CASES,
    SINGLE_SIZES,
    Workload,
    access_pattern,
    bytes_per_param,
    default_workloads,
    single,
    workload_by_name,
)

FASTOPT_BACKENDS = ("cpu", "numpy", "cuda")
BASELINES = ("torch-foreach", "torch-fused", "cupy-chain")
SCHEMA = "fastopt-bench/1"


@dataclass
class Config:
    backends: list[str] | None = None       # fastopt backends; None: every one available here
    baselines: list[str] | None = None      # None: every baseline that applies to a device in the run
    optimizers: list[str] | None = None     # names from workloads.CASES; None: all
    sizes: list[int] | None = None          # single-tensor sizes; None: the defaults for the device
    workloads: list[str] | None = None      # list-shaped workloads (model names, "2000x4k"); None: the defaults
    dtypes: list[str] | None = None         # None: float32 on CPU; float32, float16, bfloat16 on GPU
    quick: bool = False
    repeats: int | None = None
    min_time: float | None = None           # seconds one timed run should last
    rotate_bytes: int | None = None         # rotate instances until their arrays span this many bytes
    max_instances: int = 64
    progress: bool = True
    argv: list[str] = field(default_factory=list)


# ---- the machine --------------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_bytes(level: int) -> int | None:
    """The size of one data/unified cache of this level (Linux sysfs), or None."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return None
    for entry in entries:
        path = os.path.join(base, entry)
        try:
            with open(os.path.join(path, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(path, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(path, "size")) as f:
                text = f.read().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            return int(text.rstrip("KMG")) * mult
        except (OSError, ValueError):
            continue
    return None


def _version(module: str):
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "unknown")
    except Exception:
        return None


def _git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=False, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def gpu_info() -> dict | None:
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"]
        return {"name": name.decode() if isinstance(name, bytes) else name,
                "compute_capability": dev.compute_capability,
                "memory_bytes": int(props["totalGlobalMem"]),
                "l2_cache_bytes": int(props.get("l2CacheSize", 0)),
                "sm_count": int(props["multiProcessorCount"]),
                "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                "cuda_driver": cupy.cuda.runtime.driverGetVersion()}
    except Exception:
        return None


def cpu_busy(seconds: float = 0.3) -> float | None:
    """The fraction of all CPUs' time spent busy over the next `seconds` (Linux /proc/stat), or None. Unlike the
    load average, it says what the machine is doing now."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return None if total <= 0 else 1.0 - (idle1 - idle0) / total


def machine_info() -> dict:
    try:
        from fastopt import threads  # starts Numba's layer as fastopt's cpu backend does (idle threads sleep)
        threading_layer = threads.start()
        numba_threads = threads.get_num_threads()
    except Exception:
        numba_threads = threading_layer = None
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "numba_threads": numba_threads,
        "numba_threading_layer": threading_layer,
        "l2_cache_bytes": _cache_bytes(2),
        "l3_cache_bytes": _cache_bytes(3),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cpu_busy_start": cpu_busy(),
        "gpu": gpu_info(),
        "versions": {m: _version(m) for m in ("numpy", "numba", "torch", "cupy", "fastopt")},
        "git_commit": _git_commit(),
    }
    return info


# ---- planning -----------------------------------------------------------------------------------------------------

@dataclass
class Section:
    device: str                  # "cpu" or "gpu"
    contenders: list             # impl objects
    workloads: list[Workload]
    dtypes: list[str]


def _fastopt_impls() -> dict:
    """backend name -> (impl, None if usable else the reason)."""
    out = {}
    for b in FASTOPT_BACKENDS:
        impl = _impls.FastoptImpl(b)
        out[b] = (impl, impl.unavailable_reason())
    return out


def plan(config: Config) -> tuple[list[Section], dict]:
    """The sections to run (one per device) and what was skipped, with the reason."""
    skipped = {}
    found = _fastopt_impls()
    reasons = {b: reason for b, (_, reason) in found.items()}
    if config.backends is None:
        backends = [b for b in FASTOPT_BACKENDS if reasons[b] is None]
        for b in FASTOPT_BACKENDS:
            if reasons[b] is not None:
                skipped[b] = reasons[b]
    else:
        backends = []
        for b in config.backends:
            if b not in FASTOPT_BACKENDS:
                raise ValueError(f"unknown backend {b!r}; expected some of {', '.join(FASTOPT_BACKENDS)}")
            if reasons[b] is None:
                backends.append(b)
            else:
                skipped[b] = reasons[b]
    baselines = list(BASELINES) if config.baselines is None else list(config.baselines)
    for b in baselines:
        if b not in BASELINES:
            raise ValueError(f"unknown baseline {b!r}; expected some of {', '.join(BASELINES)}")

    sections = []
    for device in ("cpu", "gpu"):
        mine = [b for b in backends if (b == "cuda") == (device == "gpu")]
        if not mine:
            continue
        contenders = [found[b][0] for b in mine]
        candidates = [_impls.TorchImpl("foreach", device), _impls.TorchImpl("fused", device)]
        if device == "gpu":
            candidates.insert(0, _impls.CupyChainImpl())
        for impl in candidates:
            if impl.name not in baselines:
                continue
            reason = impl.unavailable_reason()
            if reason is None:
                contenders.append(impl)
            else:
                skipped[f"{impl.name} ({device})"] = reason
        workloads = default_workloads(device, config.quick)
        if config.sizes is not None:
            workloads = [w for w in workloads if w.kind != "single"] + [single(n) for n in config.sizes]
        if config.workloads is not None:
            workloads = [w for w in workloads if w.kind == "single"] + [
                workload_by_name(name) for name in config.workloads if name and name != "none"]
        workloads.sort(key=lambda w: (w.kind != "single", w.params))
        if config.dtypes is not None:
            dtypes = list(config.dtypes)
        else:
            dtypes = ["float32"] if device == "cpu" else ["float32", "float16", "bfloat16"]
        sections.append(Section(device, contenders, workloads, dtypes))
    return sections, skipped


def _cases(config: Config):
    if config.optimizers is None:
        return list(CASES.values())
    unknown = [o for o in config.optimizers if o not in CASES]
    if unknown:
        raise ValueError(f"unknown optimizer(s) {', '.join(unknown)}; expected some of {', '.join(CASES)}")
    return [CASES[o] for o in config.optimizers]


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _rotate_bytes(config: Config, device: str) -> int:
    if config.rotate_bytes is not None:
        return config.rotate_bytes
    if device == "gpu":
        info = gpu_info() or {}
        return max(4 * info.get("l2_cache_bytes", 0), 256 << 20)
    llc = _cache_bytes(3) or _cache_bytes(2) or (32 << 20)
    cap = (128 << 20) if config.quick else (1 << 30)
    return int(min(max(2 * llc, 64 << 20), cap))


def last_level_cache_bytes(device: str) -> int:
    """The cache a measurement must overflow: L3 (else L2) on CPU, L2 on GPU; 32 MiB / 60 MiB when unknown."""
    if device == "gpu":
        return (gpu_info() or {}).get("l2_cache_bytes") or (60 << 20)
    return _cache_bytes(3) or _cache_bytes(2) or (32 << 20)


def beyond_cache(footprint_bytes: int, device: str, llc_bytes: int | None = None) -> bool:
    """Whether arrays spanning `footprint_bytes` (all rotated instances together) stream from memory: at least twice
    the last-level cache. Below that a measurement partly runs from cache, and a % of a stream measured the same way
    says nothing about the memory limit (a 4M Adam in a 32 MB L3 once read "62% of the stream" for a step at ~100%
    of DRAM bandwidth), so no roofline % is given for it."""
    llc = last_level_cache_bytes(device) if llc_bytes is None else llc_bytes
    return footprint_bytes >= 2 * llc


def _state_itemsize(dtype: str) -> int:
    """fastopt keeps float32 state for float16/bfloat16 params (fp32 arithmetic), the param's dtype otherwise."""
    return 4 if dtype in ("float16", "bfloat16") else _itemsize(dtype)


MAX_ROTATED_TENSORS = 16_000


def rotation_count(working_bytes: int, device: str = "cpu", quick: bool = False, max_instances: int = 64,
                   tensors: int = 1, rotate_bytes: int | None = None) -> int:
    """How many independent instances to rotate through so that their arrays span more than the caches (at most
    `max_instances`, and at most MAX_ROTATED_TENSORS tensors in all: building thousands of small-tensor optimizers
    would cost more than the measurement)."""
    rotate = rotate_bytes if rotate_bytes is not None else _rotate_bytes(Config(quick=quick), device)
    count = math.ceil(rotate / max(working_bytes, 1))
    return max(1, min(max_instances, count, MAX_ROTATED_TENSORS // max(tensors, 1)))


def _timing_options(config: Config, device: str) -> dict:
    repeats = config.repeats or (5 if config.quick else (7 if device == "gpu" else 11))
    min_time = config.min_time or (0.01 if config.quick or device == "gpu" else 0.05)
    return {"repeats": repeats, "min_time": min_time, "device": device}


def _free_device_memory(device: str):
    gc.collect()
    if device != "gpu":
        return
    try:
        import cupy
        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:
        pass
    try:
        import torch
        torch.cuda.empty_cache()
    except Exception:
        pass


# ---- running ------------------------------------------------------------------------------------------------------

class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, description: str):
        pass


class _RichProgress:
    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self.progress = Progress(TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), transient=False)
        self.total = total

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("starting", total=self.total)
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def advance(self, description: str):
        self.progress.update(self.task, advance=1, description=description)


def _progress(config: Config, total: int):
    if not config.progress:
        return _NoProgress()
    try:
        return _RichProgress(total)
    except ImportError:
        return _NoProgress()


def _measure_stream(device, n, n_slots, dtype, rotate, options, max_instances):
    """The stream with the optimizer's access pattern: params and grads in `dtype`, state as fastopt keeps it (fp32
    for fp16/bf16 params), rotated over instances that together span `rotate` bytes."""
    stream_dtype = "float16" if dtype == "bfloat16" else dtype     # same bytes; CuPy has no bfloat16
    itemsize, state_itemsize = _itemsize(dtype), _state_itemsize(dtype)
    working = n * (2 * itemsize + n_slots * state_itemsize)
    count = max(1, min(max_instances, math.ceil(rotate / max(working, 1))))
    if device == "gpu":
        steps = [_roofline.gpu_stream_step(n_slots, n, stream_dtype, state_dtype="float32" if state_itemsize == 4
                                           else stream_dtype) for _ in range(count)]
    else:
        steps = [_roofline.cpu_stream_step(n_slots, n, stream_dtype) for _ in range(count)]
    t = measure(steps, **options)
    moved = n * (3 * itemsize + 2 * n_slots * state_itemsize)
    return {"kind": "stream", "reads": 2 + n_slots, "writes": 1 + n_slots, "bytes": moved,
            "state_itemsize": state_itemsize, "instances": count, "footprint_bytes": count * working,
            "gbps": moved / t.seconds / 1e9, **t.as_dict()}


def _measure_copy(n_bytes, rotate, options, max_instances):
    count = max(1, min(max_instances, math.ceil(rotate / max(2 * n_bytes, 1))))
    steps = [_roofline.gpu_copy_step(n_bytes) for _ in range(count)]
    t = measure(steps, **options)
    return {"kind": "d2d_copy", "bytes": 2 * n_bytes, "instances": count, "footprint_bytes": count * 2 * n_bytes,
            "gbps": 2 * n_bytes / t.seconds / 1e9, **t.as_dict()}


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300]


def run(config: Config | None = None, log=None) -> dict:
    config = config or Config()
    log = log or (lambda message: print(message, file=sys.stderr))
    started = time.time()
    cases = _cases(config)
    sections, skipped = plan(config)
    results = {
        "schema": SCHEMA,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {k: v for k, v in asdict(config).items() if k != "progress"},
        "skipped": skipped,
        "sections": [],
        "records": [],
        "rooflines": [],
    }
    for name, reason in skipped.items():
        log(f"fastopt-bench: skipping {name}: {reason}")
    busy = results["machine"]["cpu_busy_start"]
    if busy is not None and busy > 0.2:
        log(f"fastopt-bench: warning: the CPUs were {busy:.0%} busy before the run: other processes share these "
            f"{os.cpu_count()} cores, and parallel kernels (Numba, torch) suffer most; figures will be noisy")
    total = sum(len(s.workloads) * len(s.dtypes) * len(cases) * (1 + len(s.contenders)) for s in sections)
    with _progress(config, total) as progress:
        for section in sections:
            options = _timing_options(config, section.device)
            rotate = _rotate_bytes(config, section.device)
            results["sections"].append({
                "device": section.device, "contenders": [c.name for c in section.contenders],
                "workloads": [{"name": w.name, "kind": w.kind, "tensors": w.tensors, "params": w.params}
                              for w in section.workloads],
                "dtypes": section.dtypes, "timing": options, "rotate_bytes": rotate})
            for workload in section.workloads:
                for dtype in section.dtypes:
                    _run_block(section, workload, dtype, cases, options, rotate, config, results, progress)
                _free_device_memory(section.device)
    try:
        import numba
        results["machine"]["numba_threading_layer"] = numba.threading_layer()
    except Exception:
        pass
    results["machine"]["cpu_busy_end"] = cpu_busy()
    results["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    results["elapsed_s"] = time.time() - started
    add_ratios(results)
    return results


def _run_block(section, workload, dtype, cases, options, rotate, config, results, progress):
    device = section.device
    itemsize = _itemsize(dtype)
    streams = {}
    if device == "gpu":
        try:
            copy = _measure_copy(workload.params * itemsize, rotate, options, config.max_instances)
            results["rooflines"].append({"device": device, "workload": workload.name, "params": workload.params,
                                         "dtype": dtype, **copy})
        except Exception as exc:
            results["rooflines"].append({"device": device, "workload": workload.name, "kind": "d2d_copy",
                                         "dtype": dtype, "error": _short_error(exc)})
    state_sizes = {}
    for case in cases:
        reads, writes = access_pattern(case)
        n_slots = reads - 2
        label = f"{device} {workload.name} {dtype} {case.name}"
        if n_slots not in streams:
            try:
                stream = _measure_stream(device, workload.params, n_slots, dtype, rotate, options,
                                         config.max_instances)
                streams[n_slots] = {"device": device, "workload": workload.name, "params": workload.params,
                                    "dtype": dtype, **stream}
                results["rooflines"].append(streams[n_slots])
            except Exception as exc:
                streams[n_slots] = {"error": _short_error(exc)}
                results["rooflines"].append({"device": device, "workload": workload.name, "kind": "stream",
                                             "dtype": dtype, "reads": reads, "writes": writes,
                                             "error": _short_error(exc)})
        progress.advance(f"{label} stream")
        stream = streams[n_slots]
        for impl in section.contenders:
            progress.advance(f"{label} {impl.name}")
            record = {"device": device, "workload": workload.name, "kind": workload.kind,
                      "tensors": workload.tensors, "params": workload.params, "optimizer": case.name,
                      "dtype": dtype, "impl": impl.name, "impl_kind": impl.kind}
            results["records"].append(record)
            try:
                _measure_impl(impl, case, workload, dtype, itemsize, stream, options, rotate, config, record,
                              state_sizes)
            except Exception as exc:
                record["error"] = _short_error(exc)
            gc.collect()
    # Each stream again, after the contenders: a burst of other work on the machine during one of the two
    # measurements lowers that one only, and the limit is the faster of the two.
    for n_slots, stream in streams.items():
        if "gbps" not in stream:
            continue
        try:
            again = _measure_stream(device, workload.params, n_slots, dtype, rotate, options, config.max_instances)
        except Exception:
            continue
        stream["gbps_first"], stream["gbps_second"] = stream["gbps"], again["gbps"]
        if again["gbps"] > stream["gbps"]:
            stream.update({k: v for k, v in again.items()})
            stream["gbps_first"] = stream.get("gbps_first")
    for record in results["records"]:
        if (record["device"], record["workload"], record["dtype"]) != (device, workload.name, dtype):
            continue
        if "gbps" not in record:
            continue
        stream = streams.get(access_pattern(CASES[record["optimizer"]])[0] - 2, {})
        _set_roofline(record, stream, device)


def _measure_impl(impl, case, workload, dtype, itemsize, stream, options, rotate, config, record, state_sizes):
    n_arrays_bytes = workload.params * (2 * itemsize + len(case.active_slots()) * _state_itemsize(dtype))
    count = rotation_count(n_arrays_bytes, max_instances=config.max_instances, tensors=workload.tensors,
                           rotate_bytes=rotate)
    instances = [impl.build(case, workload.shapes, dtype, seed=i) for i in range(count)]
    t = measure([inst.step for inst in instances], **options)
    state_itemsize = None
    if hasattr(impl, "probe_state_itemsize"):  # after measure(), so the state exists
        key = (impl.name, case.name, dtype)
        if key not in state_sizes:
            state_sizes[key] = impl.probe_state_itemsize(instances[0], dtype)
        state_itemsize = state_sizes[key]
    del instances
    bpp = bytes_per_param(case, itemsize, state_itemsize)
    moved = bpp * workload.params
    gbps = moved / t.seconds / 1e9
    record.update({"bytes_per_param": bpp, "bytes_per_step": moved, "instances": count, "gbps": gbps,
                   "footprint_bytes": count * n_arrays_bytes, "params_per_s": workload.params / t.seconds,
                   **t.as_dict()})
    _set_roofline(record, stream, record["device"])
    if getattr(impl, "note", None):
        record["note"] = impl.note


def _set_roofline(record, stream, device) -> None:
    """The stream's GB/s beside the record, and the % of it only when both ran beyond the last-level cache."""
    record.pop("roofline_pct", None)
    if "gbps" not in stream:
        return
    record["roofline_gbps"] = stream["gbps"]
    in_cache = [what for what, footprint in (("step", record.get("footprint_bytes", 0)),
                                             ("stream", stream.get("footprint_bytes", 0)))
                if not beyond_cache(footprint, device)]
    if in_cache:
        record["cache_resident"] = True
        record["roofline_note"] = (f"no roofline %: the {' and the '.join(in_cache)} arrays fit in twice the "
                                   f"last-level cache ({last_level_cache_bytes(device) >> 20} MiB)")
    else:
        record["cache_resident"] = False
        record["roofline_pct"] = 100.0 * record["gbps"] / stream["gbps"]


def add_ratios(results: dict) -> None:
    """For every record: how many times faster it is than each other contender on the same workload and dtype
    (`vs[name] = other time / this time`, so > 1 means this one is faster)."""
    groups: dict = {}
    for r in results["records"]:
        if "time_s" in r:
            groups.setdefault((r["device"], r["workload"], r["dtype"], r["optimizer"]), {})[r["impl"]] = r
    for group in groups.values():
        for name, r in group.items():
            r["vs"] = {other: o["time_s"] / r["time_s"] for other, o in group.items() if other != name}


def headline(results: dict) -> dict:
    """The figures a README quotes: fastopt's fastest backend per device, on Adam fp32 at the largest single
    tensor measured: speed-up over the NumPy reference / CuPy chain / torch, and % of roofline."""
    out = {}
    for device, main in (("cpu", "cpu"), ("gpu", "cuda")):
        rows = [r for r in results["records"] if r["device"] == device and r["impl"] == main and "time_s" in r
                and r["kind"] == "single" and r["dtype"] == "float32"]
        adam = [r for r in rows if r["optimizer"] == "adam"] or rows
        if not adam:
            continue
        r = max(adam, key=lambda r: r["params"])
        out[device] = {"workload": r["workload"], "optimizer": r["optimizer"], "time_ms": r["time_s"] * 1e3,
                       "gbps": r["gbps"], "roofline_pct": r.get("roofline_pct"),
                       "roofline_note": r.get("roofline_note"), "vs": r.get("vs", {})}
    return out


__all__ = ["SINGLE_SIZES", "Config", "add_ratios", "beyond_cache", "headline", "last_level_cache_bytes",
           "machine_info", "plan", "run"]
