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
- CUDA (`cuda_prelude`, `cuda_entries`): before the family source, `FO_OP_MEMBERS` (the slot count and the scalars
  as members of the element functor `fo_<family>_op<C, FLAGS...>`); after it, the two `__global__` entry points
  `fo_<family>_flat` and `fo_<family>_table`, whose parameter lists are the declaration's slots and scalars and whose
  template parameters are the declaration's flags. fastopt.cuda_build derives instantiations, name expressions and
  the host build's entry points from the same `Family`.
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


def families(with_reductions: bool = False) -> dict[str, Family]:
    """The kernel families. Those with per-tensor reductions (kernel contract v2) have no CUDA kernels yet (the cuda
    backend refuses them), so fastopt.cuda_build's default view leaves them out; `with_reductions=True` gives all."""
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
    reduce_imports = "from fastopt.kernels.cpu._reduce import _term\n" if fam.reductions else ""
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
    terms = "".join(f"            t{k}_[i] = _term(np.float64({values[r.of]}), {REDUCTIONS[r.op]}, 2.0)\n"
                    for k, r in enumerate(fam.reductions))
    zeros = "".join(f"    a{k}_0 = a{k}_1 = a{k}_2 = a{k}_3 = a{k}_4 = a{k}_5 = a{k}_6 = a{k}_7 = 0.0\n"
                    for k in range(nred))
    sums = "".join(f"            a{k}_{j} += t{k}_[j + {j}]\n" for k in range(nred) for j in range(8))
    tail = "".join(f"            {'if' if j == 0 else 'elif'} j == {j}:\n"
                   + "".join(f"                a{k}_{j} += t{k}_[m + j]\n" for k in range(nred))
                   for j in range(8))
    combine = "".join(f"    out[{k}] = ((a{k}_0 + a{k}_1) + (a{k}_2 + a{k}_3)) + "
                      f"((a{k}_4 + a{k}_5) + (a{k}_6 + a{k}_7))\n" for k in range(nred))
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


def cuda_prelude(fam: Family) -> str:
    """Put before the family source: what its functor declares with FO_OP_MEMBERS."""
    members = f"C {', '.join(fam.scalar_names)};" if fam.scalar_names else ""
    return (f"// generated by fastopt.codegen for kernel family {fam.name}: the functor's slot count and scalars\n"
            f"#define FO_OP_MEMBERS static constexpr int NSLOTS = {max(len(fam.slot_names), 1)}; {members}\n")


def cuda_entries(fam: Family) -> str:
    """Put after the family source: the flat and table entry points."""
    flags = _template_flags(fam)
    tparams = ", ".join(["typename P", "typename C", *(f"bool {f}" for f in flags)])
    op = f"fo_grad_op<fo_{fam.name}_op<{', '.join(['C', *flags])}>, C>"
    scalars = ", ".join(f"C {s}" for s in fam.kernel_scalars)
    init = "".join(f" op.op.{s} = {s};" for s in fam.scalar_names) + \
        "".join(f" op.{s} = {s};" for s in GRAD_SCALARS)
    slot_params = "".join(f"C* {s}, " for s in fam.slot_names)
    n = len(fam.slot_names)
    slot_array = f"C* const s[{max(n, 1)}] = {{{', '.join(fam.slot_names) or '0'}}};"
    return f"""
// generated by fastopt.codegen for kernel family {fam.name}: the entry points
template <{tparams}>
__global__ void __launch_bounds__(FO_BLOCK, FO_MIN_BLOCKS)
fo_{fam.name}_flat(P* param, const P* grad, {slot_params}long long n, {scalars}) {{
    {op} op;{init}
    {slot_array}
    fo_flat<P, C>(op, param, grad, s, n);
}}

template <{tparams}>
__global__ void __launch_bounds__(FO_BLOCK, FO_MIN_BLOCKS)
fo_{fam.name}_table(FO_TABLE_PARAMS, {scalars}) {{
    {op} op;{init}
    fo_table<P, C>(op, FO_TABLE_ARGS);
}}
"""
