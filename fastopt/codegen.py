"""The per-family boilerplate, generated from the declarations in fastopt.specs.

A kernel family is written once per language as the operation on ONE element; everything around it is generated here:

- Numba (`numba_driver(family)`): the loop over a span and the `prange` driver over the chunk table, which unpack the
  address table (row 0 params, 1 grads, 2... the slots), load each element, call the family's
  `kernels/cpu/<family>.py: element(p, g, *slots, *scalars, *flags) -> (p, *slots)` and store what it returns (an
  inactive slot is neither loaded nor stored: one generated file per set of active slots). Numba caches only
  functions defined in real source files, so the driver source is written to a file under `cache_dir()` named by a
  hash of that source and of the kernel files it calls (`_common.py` and the family's file): an edit to either gives
  a new file, hence fresh machine code (Numba's cache does not follow calls into other files), and an unchanged
  declaration reuses the file and Numba's on-disk cache beside it.
- CUDA (`cuda_prelude`, `cuda_entries`): before the family source, `FO_OP_MEMBERS` (the slot count, the scalars and
  per-tensor scalars as members of the element functor `fo_<family>_op<C, FLAGS...>`, and `fo_set_tensor`) and
  `FO_TENSOR_MEMBERS` (the per-tensor scalars' functor `fo_<family>_tensor<C>`: the scalars in float64); after it,
  the `__global__` entry points (`cuda_kinds`): `fo_<family>_flat` and `fo_<family>_table`, or for a family with
  reductions `fo_<family>_table` (reading the per-tensor scalars), `fo_<family>_reduce` (the declared reductions'
  values, `update_value` for "update") and `fo_<family>_combine`; parameter lists from the declaration's slots and
  scalars, template parameters from its flags. fastopt.cuda_build derives instantiations, name expressions and the
  host build's entry points from the same `Family`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastopt.specs import RESERVED_SCALARS, SPECS

# The gradient transform every update applies before the element sees the gradient: g / unscale_by (AMP's unscale,
# as torch's fused optimizers divide), then * clip_coef (gradient clipping's coefficient). Numba bakes in whether
# each applies (a generated file per choice); CUDA always applies both, with 1 and 1 when unused (exact: x / 1 and
# x * 1 are x for every x, NaN and infinities included).
GRAD_SCALARS = RESERVED_SCALARS


@dataclass(frozen=True)
class Family:
    """A kernel family as the kernels see it: the common shape of every spec whose `kernel` names it."""
    name: str
    slot_names: tuple[str, ...]
    scalar_names: tuple[str, ...]
    flag_names: tuple[str, ...]
    tensor_scalar_names: tuple[str, ...] = ()   # per-tensor scalars (kernel contract v2), after scalar_names
    reductions: tuple = ()                      # fastopt.specs.Reduction, in order

    @property
    def kernel_scalars(self) -> tuple[str, ...]:
        """The scalars every kernel entry point takes: the declaration's, then GRAD_SCALARS."""
        return self.scalar_names + GRAD_SCALARS

    def flag_combinations(self) -> list[tuple[bool, ...]]:
        """Every value of the flags (a superset of what the specs reach, e.g. sgd nesterov without momentum)."""
        return list(itertools.product((False, True), repeat=len(self.flag_names)))


def families(with_reductions: bool = True) -> dict[str, Family]:
    """The kernel families of the registered specs (every one has Numba and CUDA kernels; `with_reductions=False`
    leaves out those with per-tensor reductions, kept for callers that asked for that view)."""
    out: dict[str, Family] = {}
    for spec in SPECS.values():
        if spec.reductions and not with_reductions:
            continue
        fam = Family(spec.kernel, tuple(s.name for s in spec.slots), spec.scalar_names, spec.flag_names,
                     spec.tensor_scalar_names, spec.reductions)
        if fam.name in out and out[fam.name] != fam:
            raise RuntimeError(f"specs sharing kernel family {fam.name!r} disagree on slots, scalars or flags")
        out.setdefault(fam.name, fam)
    return out


def family(name: str) -> Family:
    fams = families(with_reductions=True)
    if name not in fams:
        raise KeyError(f"unknown kernel family {name!r}; expected one of {sorted(fams)}")
    return fams[name]


# ---- Numba -----------------------------------------------------------------------------------------------------------

def _cpu_dir() -> Path:
    import fastopt.kernels.cpu as package  # the checkout's kernels/cpu or the installed package
    return Path(package.__file__).resolve().parent


def numba_driver_source(fam: Family, active: tuple[bool, ...], unscale: bool = False, clip: bool = False) -> str:
    """The Python source of a family's span loop and driver for one set of active slots (see the module docstring).

    The set is fixed in the source rather than passed at run time: a run-time test around a slot's load and store
    kept LLVM from vectorising the loop (measured: 15x slower float32 Adam without AMSGrad), so each set gets its
    own file, generated when a plan first needs it."""
    slots = list(fam.slot_names)
    scalars = list(fam.scalar_names)
    flags = list(fam.flag_names)
    used = [s for s, on in zip(slots, active) if on]
    first = scalars[0]   # any scalar: it carries the compute dtype to `span`
    tensor = list(fam.tensor_scalar_names)
    span_args = ", ".join(["p", "g", *used, *scalars, *tensor, *flags, *GRAD_SCALARS])
    call = ", ".join(["p[i]", "gv", *(f"{s}[i]" if on else "zero" for s, on in zip(slots, active)),
                      *scalars, *tensor, *flags])
    grad = "g[i]" + (" / unscale_by" if unscale else "")
    grad = f"({grad}) * clip_coef" if clip else grad
    targets = ", ".join(["new_p", *(f"{s}_i" if on else "_" for s, on in zip(slots, active))])
    if not slots:
        targets += ","
    stores = "".join(f"        {s}[i] = {s}_i\n" for s in used)
    rows = ", ".join(f"span(table[{r}, t], a, b, {first})"
                     for r, on in enumerate([True, True, *active]) if on)
    # Per-tensor scalars: row t of the array `ts` (ntensors, k), read by the chunk's tensor index.
    driver_args = ", ".join(["chunks", "table", *scalars, *flags, *GRAD_SCALARS, *(["ts"] if tensor else [])])
    pass_on = ", ".join([*scalars, *(f"ts[t, {k}]" for k in range(len(tensor))), *flags, *GRAD_SCALARS])
    inactive = ", ".join(s for s, on in zip(slots, active) if not on) or "none"
    extra = _numba_reduce_source(fam, active, grad) if fam.reductions else ""
    imports = "import numpy as np\n" if fam.reductions else ""
    element_imports = "element, update_value" if any(r.of == "update" for r in fam.reductions) else "element"
    reduce_imports = "from fastopt.kernels.cpu._reduce import _max_nan, _term\n" if fam.reductions else ""
    return f'''"""Generated by fastopt.codegen from the declaration of kernel family {fam.name!r} (inactive slots:
{inactive}; gradient {grad}): do not edit."""

{imports}from numba import njit, prange

from fastopt.kernels.cpu._common import SPAN_OPTIONS, driver, span
{reduce_imports}from fastopt.kernels.cpu.{fam.name} import {element_imports}


@njit(**SPAN_OPTIONS)
def _span({span_args}):
    zero = p.dtype.type(0)   # what an inactive slot reads; what the element returns for it is dropped
    for i in range(p.size):
        gv = {grad}
        {targets} = element({call})
{stores}        p[i] = new_p


@driver
def update({driver_args}):
    for c in prange(chunks.shape[0]):
        t, a, b = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        _span({rows}, {pass_on})
''' + extra


# Elements a family's reduction computes into its scratch before summing them into the lanes (see below).
REDUCE_BLOCK = 256


def _numba_reduce_source(fam: Family, active: tuple[bool, ...], grad: str) -> str:
    """The per-tensor reductions of a family (kernel contract v2): `reduce(chunks, table, *scalars, *flags,
    *GRAD_SCALARS, scratch, out)` writes out[c, r], reduction r's partial over chunk c in
    fastopt.reference.reduce_chunk's order (element i of the chunk to lane i % 8, float64, lanes combined
    ((0+1)+(2+3))+((4+5)+(6+7))).

    Two loops per block of REDUCE_BLOCK elements, so that both vectorise: the terms (the update computed without
    writing, squared in float64...) into scratch[c] (reductions, REDUCE_BLOCK), then the sums of the block's terms
    into eight lanes kept in local variables, lane j taking term j, j + 8, ... (blocks start at multiples of 8, so
    that is lane i % 8 of the chunk). One unrolled loop doing both was 1.6x slower, an array of lanes indexed by
    i % 8 2.2x (LAMB's reduction pass, 16M float32)."""
    from fastopt.reference import REDUCTIONS

    slots = list(fam.slot_names)
    scalars, flags = list(fam.scalar_names), list(fam.flag_names)
    used = [s for s, on in zip(slots, active) if on]
    first = scalars[0]
    nred = len(fam.reductions)
    # Within a block: views of the block (x_ for array x), indexed from 0 (indexing the whole span at start + i kept
    # LLVM from vectorising: 7x slower).
    arrays = ["p", "g", *used]
    values = {"param": "p_[i]", "grad": "gv", "update": "u",
              **{s: (f"{s}_[i]" if on else "zero") for s, on in zip(slots, active)}}
    call = ", ".join(["p_[i]", "gv", *(f"{s}_[i]" if on else "zero" for s, on in zip(slots, active)), *scalars, *flags])
    update = f"            u = update_value({call})\n" if any(r.of == "update" for r in fam.reductions) else ""
    views = "".join(f"        {x}_ = {x}[start:start + {REDUCE_BLOCK}]\n" for x in arrays)
    rows_ = "".join(f"        t{k}_ = buf[{k}]\n" for k in range(nred))
    terms = "".join(f"            t{k}_[i] = 1.0\n" if r.op == "count" else   # the element count, exact in float64
                    f"            t{k}_[i] = _term(np.float64({values[r.of]}), {REDUCTIONS[r.op]}, 2.0)\n"
                    for k, r in enumerate(fam.reductions))
    zeros = "".join(f"    a{k}_0 = a{k}_1 = a{k}_2 = a{k}_3 = a{k}_4 = a{k}_5 = a{k}_6 = a{k}_7 = 0.0\n"
                    for k in range(nred))

    def add(k: int, lane: str, term: str) -> str:   # a lane takes a term: summed, or for maxabs the larger, NaN wins
        a = f"a{k}_{lane}"
        return f"{a} = _max_nan({a}, {term})" if fam.reductions[k].op == "maxabs" else f"{a} += {term}"

    def both(k: int, x: str, y: str) -> str:
        return f"_max_nan({x}, {y})" if fam.reductions[k].op == "maxabs" else f"({x} + {y})"

    sums = "".join(f"            {add(k, str(j), f't{k}_[j + {j}]')}\n" for k in range(nred) for j in range(8))
    tail = "".join(f"            {'if' if j == 0 else 'elif'} j == {j}:\n"
                   + "".join(f"                {add(k, str(j), f't{k}_[m + j]')}\n" for k in range(nred))
                   for j in range(8))
    def tree(k: int) -> str:   # the lanes combined ((0+1)+(2+3))+((4+5)+(6+7))
        lane = [f"a{k}_{j}" for j in range(8)]
        return both(k, both(k, both(k, lane[0], lane[1]), both(k, lane[2], lane[3])),
                    both(k, both(k, lane[4], lane[5]), both(k, lane[6], lane[7])))

    combine = "".join(f"    out[{k}] = {tree(k)}\n" for k in range(nred))
    args = ", ".join(["p", "g", *used, *scalars, *flags, *GRAD_SCALARS, "buf", "out"])
    rows = ", ".join(f"span(table[{r}, t], a, b, {first})" for r, on in enumerate([True, True, *active]) if on)
    pass_on = ", ".join([*scalars, *flags, *GRAD_SCALARS])
    driver_args = ", ".join(["chunks", "table", *scalars, *flags, *GRAD_SCALARS, "scratch", "out"])
    return f'''

@njit(**SPAN_OPTIONS)
def _reduce_span({args}):
    zero = p.dtype.type(0)
{zeros}    for start in range(0, p.size, {REDUCE_BLOCK}):
{views}{rows_}        for i in range(p_.size):
            gv = {grad.replace("g[i]", "g_[i]")}
{update}{terms}        m = p_.size - p_.size % 8
        for j in range(0, m, 8):
{sums}        for j in range(p_.size - m):   # the chunk's last elements, fewer than 8: lanes 0...
{tail}{combine}

@driver
def reduce({driver_args}):
    for c in prange(chunks.shape[0]):
        t, a, b = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        _reduce_span({rows}, {pass_on}, scratch[c], out[c])
'''


def cache_dir() -> Path:
    """Where generated driver files live: $FASTOPT_CACHE_DIR, else ~/.cache/fastopt, else the temp dir."""
    for base in (os.environ.get("FASTOPT_CACHE_DIR"),
                 os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastopt"),
                 os.path.join(tempfile.gettempdir(), f"fastopt-{os.getuid() if hasattr(os, 'getuid') else 'user'}")):
        if not base:
            continue
        path = Path(base) / "numba-drivers"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise RuntimeError("fastopt: no writable directory for the generated Numba drivers; set FASTOPT_CACHE_DIR")


def numba_driver_file(name: str, active: tuple[bool, ...], unscale: bool = False, clip: bool = False) -> Path:
    """The generated driver file of a family and set of active slots, written once (same content, same name:
    Numba's cache beside it stays valid)."""
    fam = family(name)
    active = tuple(bool(a) for a in active)
    if len(active) != len(fam.slot_names):
        raise ValueError(f"{name}: expected {len(fam.slot_names)} slot activity flags, got {len(active)}")
    text = numba_driver_source(fam, active, unscale, clip)
    kernels = _cpu_dir()
    digest = hashlib.sha256()
    for part in (text, (kernels / "_common.py").read_text(), (kernels / f"{name}.py").read_text()):
        digest.update(part.encode())
    mask = ("".join("1" if a else "0" for a in active) or "x") + ("u" if unscale else "") + ("c" if clip else "")
    path = cache_dir() / f"{name}_{mask}_{digest.hexdigest()[:16]}.py"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)   # atomic: a concurrent process sees the whole file or none
    return path


_drivers: dict = {}


def numba_driver(name: str, active: tuple[bool, ...], unscale: bool = False, clip: bool = False):
    """The family's `Driver` (serial and parallel variants of the generated `update`) for these active slots and
    gradient transform, imported once per process. Called with (chunks, table, *scalars, *flags, unscale_by,
    clip_coef); the last two are read only when `unscale` / `clip` say so."""
    key = (name, tuple(bool(a) for a in active), bool(unscale), bool(clip))
    if key not in _drivers:
        path = numba_driver_file(name, active, unscale, clip)
        module_name = f"fastopt._generated_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        _drivers[key] = module.update
        _reducers[key] = getattr(module, "reduce", None)
    return _drivers[key]


_reducers: dict = {}


def numba_reducer(name: str, active: tuple[bool, ...], unscale: bool = False, clip: bool = False):
    """The family's per-tensor reduction `Driver` (see `_numba_reduce_source`) for these active slots and gradient
    transform; None for a family without reductions."""
    numba_driver(name, active, unscale, clip)
    return _reducers[(name, tuple(bool(a) for a in active), bool(unscale), bool(clip))]


# ---- CUDA -----------------------------------------------------------------------------------------------------------

def _template_flags(fam: Family) -> list[str]:
    return [f.upper() for f in fam.flag_names]


def cuda_families() -> dict[str, Family]:
    """The families with CUDA kernels: every one but those of specs with shaped slots (a slot not shaped like its
    param, e.g. Adafactor's factored statistics), which the CUDA traversals (one index for param, grad and every
    slot) do not cover; the cuda backend refuses them."""
    shaped = {spec.kernel for spec in SPECS.values() if any(getattr(s, "shape", None) is not None for s in spec.slots)}
    return {name: fam for name, fam in families().items() if name not in shaped}


def hyper_layout(name: str) -> tuple[tuple[str, int], ...] | None:
    """The hyperparameters of a family's specs as the capturable step keeps them in device memory, in declaration
    order: (name, count) with count 2 for a pair (betas: betas_0, betas_1), booleans as 0.0/1.0. None when the specs
    of the family declare different hyperparameters (schedule-free's two variants)."""
    layouts = {tuple((h.name, len(h.default) if isinstance(h.default, tuple) else 1) for h in spec.hypers)
               for spec in SPECS.values() if spec.kernel == name}
    return layouts.pop() if len(layouts) == 1 else None


def hyper_names(name: str) -> tuple[str, ...]:
    """The device hyper buffer's entries (`hyper_layout` flattened), e.g. lr, betas_0, betas_1, eps, ..."""
    return tuple(n if k == 1 else f"{n}_{i}" for n, k in hyper_layout(name) or () for i in range(k))


def hyper_values(name: str, hyper: dict) -> tuple[float, ...]:
    """A normalized hyper dict as the device hyper buffer holds it (float64, `hyper_names` order)."""
    out: list[float] = []
    for n, k in hyper_layout(name):
        value = hyper[n]
        out += [float(v) for v in value] if k != 1 else [float(value)]
    return tuple(out)


def cuda_kinds(fam: Family, capturable: bool = False) -> tuple[str, ...]:
    """The __global__ entry points of a family: flat and table; with reductions (kernel contract v2) table (reading
    the per-tensor scalars), reduce (launch 1: partials per chunk) and combine (launch 2: per tensor, then the
    tensor scalars). No flat entry then: the per-tensor scalars need the chunk's tensor. A capturable family (its
    source declares `fo_<family>_scalars`) adds advance (the step count and the scalars, in device memory) and
    flatdev / tabledev (flat and table reading the scalars from device memory), or with reductions reducedev /
    combinedev / tabledev."""
    if fam.reductions:
        return ("table", "reduce", "combine") + (("advance", "reducedev", "combinedev", "tabledev") if capturable
                                                 else ())
    return ("flat", "table") + (("advance", "flatdev", "tabledev") if capturable else ())


# Reduction op -> code in kernels/cuda/common.cuh (FO_RED_*): fastopt.reference.REDUCTIONS, and "count".
CUDA_COUNT = 7


def cuda_reduction_code(op: str) -> int:
    from fastopt.reference import REDUCTIONS
    return CUDA_COUNT if op == "count" else REDUCTIONS[op]


def _reduction_codes(fam: Family) -> str:
    return ", ".join(str(cuda_reduction_code(r.op)) for r in fam.reductions)


def cuda_prelude(fam: Family) -> str:
    """Put before the family source: what its functors declare with FO_OP_MEMBERS (the element operation: slot count,
    scalars and per-tensor scalars as members of type C, and fo_set_tensor, which loads the per-tensor scalars of a
    chunk's tensor) and FO_TENSOR_MEMBERS (the per-tensor scalars' functor `fo_<family>_tensor<C>`: the counts and
    the declaration's scalars as double members, as the spec's Python `tensor_scalars` receives them)."""
    members = f" C {', '.join(fam.scalar_names)};" + \
        (f" C {', '.join(fam.tensor_scalar_names)};" if fam.tensor_scalar_names else "")
    loads = " ".join(f"{s} = fo_ts[{k}];" for k, s in enumerate(fam.tensor_scalar_names))
    setter = f" __device__ __forceinline__ void fo_set_tensor(const C* fo_ts) {{ {loads} }}" if loads else \
        " __device__ __forceinline__ void fo_set_tensor(const C*) {}"
    doubles = "".join(f" double {s};" for s in fam.scalar_names)
    hypers = "".join(f" double {h};" for h in hyper_names(fam.name))
    return (f"// generated by fastopt.codegen for kernel family {fam.name}: the functors' counts and scalars\n"
            f"#define FO_OP_MEMBERS static constexpr int NSLOTS = {max(len(fam.slot_names), 1)};{members} "
            f"static constexpr int NTS = {len(fam.tensor_scalar_names)};{setter}\n"
            f"#define FO_TENSOR_MEMBERS static constexpr int NRED = {max(len(fam.reductions), 1)}; "
            f"static constexpr int NTS = {max(len(fam.tensor_scalar_names), 1)};{doubles}\n"
            f"#define FO_HYPER_MEMBERS static constexpr int NSC = {len(fam.scalar_names)};{hypers}\n")


def _reduction_value(fam: Family, of: str) -> str:
    if of == "param":
        return "p"
    if of == "grad":
        return "g"
    if of == "update":
        return "op.op.update_value(p, g, s)"
    return f"s[{fam.slot_names.index(of)}]"


def cuda_entries(fam: Family, capturable: bool = False) -> str:
    """Put after the family source: its entry points (`cuda_kinds`)."""
    flags = _template_flags(fam)
    tparams = ", ".join(["typename P", "typename C", *(f"bool {f}" for f in flags)])
    op = f"fo_grad_op<fo_{fam.name}_op<{', '.join(['C', *flags])}>, C>"
    scalars = ", ".join(f"C {s}" for s in fam.kernel_scalars)
    init = "".join(f" op.op.{s} = {s};" for s in fam.scalar_names) + \
        "".join(f" op.{s} = {s};" for s in GRAD_SCALARS)
    head = f"template <{tparams}>\n__global__ void __launch_bounds__(FO_BLOCK, FO_MIN_BLOCKS)\n"
    out = f"\n// generated by fastopt.codegen for kernel family {fam.name}: the entry points\n"
    if not fam.reductions:
        slot_params = "".join(f"C* {s}, " for s in fam.slot_names)
        n = len(fam.slot_names)
        slot_array = f"C* const s[{max(n, 1)}] = {{{', '.join(fam.slot_names) or '0'}}};"
        if capturable:
            out += _capturable_entries(fam, head, op, slot_params, slot_array)
        return out + f"""{head}fo_{fam.name}_flat(P* param, const P* grad, {slot_params}long long n, {scalars}) {{
    {op} op;{init}
    {slot_array}
    fo_flat<P, C>(op, param, grad, s, n);
}}

{head}fo_{fam.name}_table(FO_TABLE_PARAMS, {scalars}) {{
    {op} op;{init}
    fo_table<P, C>(op, FO_TABLE_ARGS);
}}
"""
    nred = len(fam.reductions)
    if capturable:
        out += _capturable_reduction_entries(fam, head, op)
    values = " ".join(f"v[{k}] = (double)({_reduction_value(fam, r.of)});" for k, r in enumerate(fam.reductions))
    tensor_init = "".join(f" tensor.{s} = {s};" for s in fam.scalar_names)
    doubles = ", ".join(f"double {s}" for s in fam.scalar_names)
    nts = len(fam.tensor_scalar_names)
    return out + f"""{head}fo_{fam.name}_table(FO_TABLE_PARAMS, {scalars}, const C* __restrict__ fo_ts) {{
    {op} op;{init}
    fo_table<P, C>(op, FO_TABLE_ARGS, fo_ts);
}}

{head}fo_{fam.name}_reduce(FO_TABLE_PARAMS, {scalars}, double* __restrict__ fo_partials) {{
    {op} op;{init}
    const int ops[{nred}] = {{{_reduction_codes(fam)}}};
    fo_table_reduce<P, C, {nred}>(op, FO_TABLE_ARGS, ops, fo_partials,
        [&](C p, C g, const C (&s)[decltype(op)::NSLOTS], double (&v)[{nred}]) {{ {values} }});
}}

{head}fo_{fam.name}_combine(const long long* __restrict__ fo_tensor_chunks, long long ntensors,
    const double* __restrict__ fo_partials, {doubles}, double* __restrict__ fo_reduced, C* __restrict__ fo_ts) {{
    fo_{fam.name}_tensor<C> tensor;{tensor_init}
    const int ops[{nred}] = {{{_reduction_codes(fam)}}};
    fo_combine_tensors<{nred}>(ops, fo_tensor_chunks, ntensors, fo_partials,
                               [&](long long t, const double (&r)[{nred}]) {{
        for (int k = 0; k < {nred}; ++k) fo_reduced[t * {nred} + k] = r[k];
        C out[{nts}];
        tensor(r, out);
        for (int k = 0; k < {nts}; ++k) fo_ts[t * {nts} + k] = out[k];
    }});
}}
"""


def _scalar_loads(fam: Family) -> str:
    nsc = len(fam.scalar_names)
    return "".join(f" op.op.{s} = fo_scalars[{k}];" for k, s in enumerate(fam.scalar_names)) + \
        "".join(f" op.{s} = fo_scalars[{nsc + k}];" for k, s in enumerate(GRAD_SCALARS))


def _capturable_reduction_entries(fam: Family, head: str, op: str) -> str:
    """A capturable family with reductions: reduce, combine and table reading the scalars from device memory (the
    combine launch their float64 values, as the spec's Python `tensor_scalars` receives them)."""
    nred, nts = len(fam.reductions), len(fam.tensor_scalar_names)
    values = " ".join(f"v[{k}] = (double)({_reduction_value(fam, r.of)});" for k, r in enumerate(fam.reductions))
    tensor_init = "".join(f" tensor.{s} = fo_scalars64[{k}];" for k, s in enumerate(fam.scalar_names))
    return f"""{head}fo_{fam.name}_reducedev(FO_TABLE_PARAMS, const C* __restrict__ fo_scalars,
    double* __restrict__ fo_partials) {{
    {op} op;{_scalar_loads(fam)}
    const int ops[{nred}] = {{{_reduction_codes(fam)}}};
    fo_table_reduce<P, C, {nred}>(op, FO_TABLE_ARGS, ops, fo_partials,
        [&](C p, C g, const C (&s)[decltype(op)::NSLOTS], double (&v)[{nred}]) {{ {values} }});
}}

{head}fo_{fam.name}_combinedev(const long long* __restrict__ fo_tensor_chunks, long long ntensors,
    const double* __restrict__ fo_partials, const double* __restrict__ fo_scalars64, double* __restrict__ fo_reduced,
    C* __restrict__ fo_ts) {{
    fo_{fam.name}_tensor<C> tensor;{tensor_init}
    const int ops[{nred}] = {{{_reduction_codes(fam)}}};
    fo_combine_tensors<{nred}>(ops, fo_tensor_chunks, ntensors, fo_partials,
                               [&](long long t, const double (&r)[{nred}]) {{
        for (int k = 0; k < {nred}; ++k) fo_reduced[t * {nred} + k] = r[k];
        C out[{nts}];
        tensor(r, out);
        for (int k = 0; k < {nts}; ++k) fo_ts[t * {nts} + k] = out[k];
    }});
}}

{head}fo_{fam.name}_tabledev(FO_TABLE_PARAMS, const C* __restrict__ fo_scalars, const C* __restrict__ fo_ts) {{
    {op} op;{_scalar_loads(fam)}
    fo_table<P, C>(op, FO_TABLE_ARGS, fo_ts);
}}

""" + _advance_entry(fam, head)


def _advance_entry(fam: Family, head: str) -> str:
    nsc = len(fam.scalar_names)
    hyper_init = "".join(f" sc.{h} = fo_hyper[{k}];" for k, h in enumerate(hyper_names(fam.name)))
    return f"""{head}fo_{fam.name}_advance(const double* __restrict__ fo_hyper, long long* __restrict__ fo_step,
    C* __restrict__ fo_scalars, double* __restrict__ fo_scalars64) {{
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    fo_{fam.name}_scalars sc;{hyper_init}
    const long long t = *fo_step + 1;
    *fo_step = t;
    double out[{max(nsc, 1)}];
    sc(t, out);
    for (int k = 0; k < {nsc}; ++k) fo_scalars[k] = (C)out[k];
    for (int k = 0; k < {nsc}; ++k) fo_scalars64[k] = out[k];   // as the per-tensor scalars' launch takes them
    fo_scalars[{nsc}] = C(1);
    fo_scalars[{nsc + 1}] = C(1);
}}

"""


def _capturable_entries(fam: Family, head: str, op: str, slot_params: str, slot_array: str) -> str:
    """The capturable step's entry points: advance (one thread: step += 1, then the family's
    `fo_<family>_scalars` computes the kernel scalars in float64 from the device hyper buffer, rounded once to C,
    and the gradient transform's 1 and 1; the float64 values too), and flat / table reading every scalar from
    that device array."""
    flatdev = f"fo_{fam.name}_flatdev(P* param, const P* grad, {slot_params}long long n,"
    return _advance_entry(fam, head) + f"""{head}{flatdev}
    const C* __restrict__ fo_scalars) {{
    {op} op;{_scalar_loads(fam)}
    {slot_array}
    fo_flat<P, C>(op, param, grad, s, n);
}}

{head}fo_{fam.name}_tabledev(FO_TABLE_PARAMS, const C* __restrict__ fo_scalars) {{
    {op} op;{_scalar_loads(fam)}
    fo_table<P, C>(op, FO_TABLE_ARGS);
}}

"""
