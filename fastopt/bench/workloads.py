"""What the benchmark measures: tensor-list shapes, optimizer configurations, and the bytes each one must move.

A workload is a list of parameter shapes (one big tensor, a model's parameter list, or many small tensors). An
optimizer case is one of fastopt's public optimizers with fixed hyperparameters; its access pattern (how many arrays
it reads and writes per parameter) comes from its declaration in `fastopt.specs`, never from a hand-kept table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources

M = 1 << 20

SINGLE_SIZES = {"1M": 1 * M, "4M": 4 * M, "16M": 16 * M, "64M": 64 * M}
MODELS = ("resnet50", "gpt2_small")


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str                       # "single", "model" or "many"
    shapes: tuple[tuple[int, ...], ...]

    @property
    def params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)


def load_model_shapes(model: str) -> tuple[tuple[int, ...], ...]:
    """The parameter shapes of `model` ("resnet50" or "gpt2_small"), in model order, from the packaged JSON."""
    text = resources.files("fastopt.bench").joinpath("shapes", f"{model}.json").read_text()
    data = json.loads(text)
    shapes = tuple(tuple(int(d) for d in entry["shape"]) for entry in data["shapes"])
    if len(shapes) != data["tensors"] or sum(math.prod(s) for s in shapes) != data["parameters"]:
        raise ValueError(f"{model}.json is inconsistent: its counts do not match its shapes")
    return shapes


def parse_size(text: str) -> int:
    """'1M' -> 1048576, '4k' -> 4096, '1000' -> 1000."""
    text = text.strip()
    units = {"k": 1 << 10, "K": 1 << 10, "m": M, "M": M, "g": 1 << 30, "G": 1 << 30}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def size_label(n: int) -> str:
    for unit, div in (("G", 1 << 30), ("M", M), ("k", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def single(n: int) -> Workload:
    return Workload(size_label(n), "single", ((n,),))


def model(name: str) -> Workload:
    return Workload(name, "model", load_model_shapes(name))


def many(count: int, size: int) -> Workload:
    return Workload(f"{count}x{size_label(size)}", "many", ((size,),) * count)


def workload_by_name(name: str) -> Workload:
    """'resnet50', 'gpt2_small', '2000x4k' (many), or a size such as '16M' (single)."""
    if name in MODELS:
        return model(name)
    if "x" in name:
        count, size = name.split("x", 1)
        return many(int(count), parse_size(size))
    return single(parse_size(name))


# ---- optimizer cases ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OptimizerCase:
    """One benchmarked configuration: a fastopt class, its spec, hyperparameters, and the torch.optim equivalent."""
    name: str                       # the name used on the command line and in the results
    spec: str                       # key into fastopt.specs.SPECS
    cls: str                        # the fastopt (and torch.optim) class name
    hyper: dict = field(default_factory=dict)
    torch_fused: bool = True        # whether torch.optim offers fused=True for it

    def full_hyper(self) -> dict:
        from fastopt.specs import SPECS
        return {**SPECS[self.spec].defaults, **self.hyper}

    def active_slots(self) -> tuple[str, ...]:
        from fastopt.specs import SPECS
        return tuple(s.name for s in SPECS[self.spec].active_slots(self.full_hyper()))


def _cases() -> dict[str, OptimizerCase]:
    """Every bench case of every optimizer's record (fastopt.records), in registration order."""
    from fastopt.records import RECORDS
    return {c.name: OptimizerCase(c.name, r.optimizer, c.cls, dict(c.hyper), c.torch_fused)
            for r in RECORDS.values() for c in r.bench}


CASES: dict[str, OptimizerCase] = _cases()


def bytes_per_param(case: OptimizerCase | str, itemsize: int, state_itemsize: int | None = None) -> int:
    """Bytes one step must move per parameter, counted from the optimizer's declaration.

    Reads: param, grad and every active state slot. Writes: param and every active state slot (in place). The
    gradient is read only. So a step with n active slots moves (2 + n) + (1 + n) = 3 + 2n arrays' worth of elements:
    fp32 SGD 12 B, SGD with momentum 20 B, Adam 28 B, Adam with amsgrad 36 B. An optimizer with per-tensor
    reductions first reads what they need: LAMB p, g and both moments (44 B in all), LARS p and g (28 B).
    `state_itemsize` is the size of a state element when it differs from the parameter's (e.g. fp32 state for fp16
    parameters).
    """
    if isinstance(case, str):
        case = CASES[case]
    n = len(case.active_slots())
    s = itemsize if state_itemsize is None else state_itemsize
    return 3 * itemsize + 2 * n * s + _reduction_bytes(case, itemsize, s)


def _reduction_bytes(case: OptimizerCase, itemsize: int, state_itemsize: int) -> int:
    """Bytes per parameter of the reductions' pass that comes before the update (kernel contract v2: LAMB's and
    LARS's norms): each array it reads, once. The update (`update`) reads the param, the grad and every active slot."""
    from fastopt.specs import SPECS
    spec = SPECS[case.spec]
    if not spec.reductions:
        return 0
    read: set[str] = set()
    for r in spec.reductions:
        read |= _update_reads(spec, case.full_hyper()) if r.of == "update" else {r.of}
    return sum(itemsize if name in ("param", "grad") else state_itemsize for name in read)


def _update_reads(spec, hyper: dict) -> set[str]:
    """The arrays a family's `update_value` reads: param, grad, and each active slot whose value changes its result
    (probed with a NaN in that slot alone; LARS's update ignores its momentum buffer, LAMB's reads both moments)."""
    import numpy as np

    from fastopt import reference
    hyper = spec.normalize(hyper)
    scalars, flags = spec.scalars(hyper, 1), spec.flags(hyper)
    update = reference.update_function(spec.kernel)
    reads = {"param", "grad"}
    for slot in spec.active_slots(hyper):
        slots = [None if not s.active(hyper) else np.full(1, np.nan if s is slot else 0.5) for s in spec.slots]
        with np.errstate(all="ignore"):
            if np.isnan(update(np.full(1, 0.5), np.full(1, 0.25), *slots, *scalars, *flags)).any():
                reads.add(slot.name)
    return reads


def access_pattern(case: OptimizerCase | str) -> tuple[int, int]:
    """(arrays read, arrays written) per parameter."""
    if isinstance(case, str):
        case = CASES[case]
    n = len(case.active_slots())
    return 2 + n, 1 + n


# ---- default selections ------------------------------------------------------------------------------------------

def default_workloads(device: str, quick: bool) -> list[Workload]:
    if device == "gpu":
        if quick:
            return [single(SINGLE_SIZES["1M"]), single(SINGLE_SIZES["16M"]), model("resnet50")]
        return [single(n) for n in SINGLE_SIZES.values()] + [model("resnet50"), model("gpt2_small")]
    if quick:
        return [single(SINGLE_SIZES["1M"]), single(SINGLE_SIZES["4M"])]
    return ([single(SINGLE_SIZES[k]) for k in ("1M", "4M", "16M")]
            + [model("resnet50"), many(2000, 4096)])
