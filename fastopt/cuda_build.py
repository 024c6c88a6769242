"""The CUDA kernels as sources and instantiations, checked and built without a GPU (and without CuPy).

- `source(family)`: the text CuPy compiles for a kernel family: `kernels/cuda/<family>.cu` with `common.cuh` and
  the generated `FO_OP_MEMBERS` spliced in place of its `#include` line, the generated entry points after it
  (fastopt.codegen), and a content hash on top, so CuPy's cache key (which ignores included files) sees
  every byte that goes into the kernel.
- `instantiations()`: every kernel the library can launch: family x parameter dtype x flag values x {flat, table},
  each with its CuPy name expression (`fo_adam_flat<fo_half, float, true, false>`).
- `check_kernels()`: compiles every instantiation with nvcc for sm_80 and sm_90 (`-cubin -Xptxas -v`, one nvcc call
  per family and architecture), prints one line per instantiation with its registers and spill bytes, and returns
  the exit code for `python -m fastopt check-kernels`: non-zero on a compile error or any spill.
- `build_host_library(family)`: the same source compiled for the host with g++ through `kernels/cuda/host_shim.h`,
  with extern "C" entry points that emulate a launch, so the tests can run each kernel's arithmetic on a CPU.
- `build_chunk_table`, `pack_pointer_table`, `choose_chunk_elems`: the multi-tensor table, shared by the CUDA
  backend and the host tests so that both exercise the same layout.

Kernel signatures (the convention the generators below rely on; see kernels/cuda/common.cuh):
    fo_<family>_flat<P, C, FLAGS...>(P* param, const P* grad, C* slot..., long long n, C scalar...)
    fo_<family>_table<P, C, FLAGS...>(const long long* chunks, long long nchunks, long long chunk_elems,
        const unsigned long long* ptrs, const unsigned long long* grad_ptrs, const long long* sizes,
        long long ntensors, C scalar...)
  with per-tensor reductions (kernel contract v2; no flat entry):
    fo_<family>_table<...>(<table>, C scalar..., const C* tensor_scalars)
    fo_<family>_reduce<...>(<table>, C scalar..., double* partials)
    fo_<family>_combine<...>(const long long* tensor_chunks, long long ntensors, const double* partials,
        double declared_scalar..., double* reduced, C* tensor_scalars)
  capturable families (`is_capturable`), besides flat and table:
    fo_<family>_advance<...>(const double* hyper, long long* step, C* scalars)
    fo_<family>_flatdev<...>(P* param, const P* grad, C* slot..., long long n, const C* scalars)
    fo_<family>_tabledev<...>(<table>, const C* scalars)
  the reductions module (`REDUCE`, kernels/cuda/reduce.cu):
    fo_reduce_partials<P, C>(chunks, nchunks, chunk_elems, ptrs, sizes, int op, double power, C unscale_by,
        double* partials);  fo_reduce_combine<P, C>(tensor_chunks, ntensors, int op, partials, double* values)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastopt import codegen
from fastopt.codegen import Family
from fastopt.specs import SPECS

# ---- what there is to compile ---------------------------------------------------------------------------------------

BLOCK = 256          # threads per block; the kernels declare __launch_bounds__(FO_BLOCK) with this value
KINDS = ("flat", "table")

# Options for every device compilation (CuPy's NVRTC and the nvcc check). --fmad=false keeps a*b + c two roundings,
# as the reference computes it (these kernels are memory bound: contraction buys nothing). CuPy adds -ftz=true and
# the architecture itself; the nvcc check adds them explicitly.
DEVICE_OPTIONS = ("--std=c++17", "--fmad=false", f"-DFO_BLOCK={BLOCK}")

# parameter dtype name -> (C type of the parameter storage, C type of state and compute)
PARAM_TYPES = {
    "float16": ("fo_half", "float"),
    "bfloat16": ("fo_bf16", "float"),
    "float32": ("float", "float"),
    "float64": ("double", "double"),
}
# short tags for the host entry points
_HOST_TAGS = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64"}


FAMILIES: dict[str, Family] = codegen.cuda_families()
# The module of reductions that belong to no family (kernels/cuda/reduce.cu): gradient norms for clipping, AMP's
# non-finite count, fastopt.clip_grad_norm_.
REDUCE = "reduce"
REDUCE_KINDS = ("partials", "combine")


def modules() -> list[str]:
    """Everything compiled: every family, then the reductions module."""
    return [*FAMILIES, REDUCE]


def kinds(module: str) -> tuple[str, ...]:
    """The entry points of a module (fastopt.codegen.cuda_kinds for a family)."""
    return REDUCE_KINDS if module == REDUCE else codegen.cuda_kinds(FAMILIES[module], is_capturable(module))


_capturable: dict[str, bool] = {}


def is_capturable(family: str) -> bool:
    """True when the family's CUDA source declares `struct fo_<family>_scalars` (the kernel scalars from the device
    hyper buffer and step count, for the capturable step) and its specs agree on their hyperparameters; never for
    families with host state (kept on the host per param: NAdam, ASGD, schedule-free)."""
    if family not in _capturable:
        fam = FAMILIES.get(family)
        host_state = any(spec.host_state for spec in SPECS.values() if spec.kernel == family)
        ok = fam is not None and not host_state and codegen.hyper_layout(family) is not None
        if ok:
            text = (kernel_dir() / f"{family}.cu").read_text()
            ok = re.search(rf"^\s*struct\s+fo_{family}_scalars\b", text, re.MULTILINE) is not None
        _capturable[family] = ok
    return _capturable[family]


def _flag_names(module: str) -> tuple[str, ...]:
    return () if module == REDUCE else FAMILIES[module].flag_names


def kernel_dir() -> Path:
    """kernels/cuda of this checkout, or the installed fastopt.kernels.cuda package."""
    here = Path(__file__).resolve().parent.parent / "kernels" / "cuda"
    if (here / "common.cuh").is_file():
        return here
    from importlib import resources
    return Path(str(resources.files("fastopt.kernels.cuda")))


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"common\.cuh"[ \t]*$', re.MULTILINE)
_source_cache: dict[str, str] = {}


def source(family: str) -> str:
    """The self-contained CUDA C source of a family (or of the reductions module), exactly what CuPy compiles."""
    if family not in _source_cache:
        if family not in FAMILIES and family != REDUCE:
            raise KeyError(f"unknown kernel family {family!r}; expected one of {sorted(FAMILIES)} or {REDUCE!r}")
        d = kernel_dir()
        common = (d / "common.cuh").read_text()
        text = (d / f"{family}.cu").read_text()
        if not _INCLUDE.search(text):
            raise RuntimeError(f"{family}.cu must #include \"common.cuh\" (spliced in by fastopt.cuda_build)")
        fam = FAMILIES.get(family)
        prelude = codegen.cuda_prelude(fam) if fam else ""
        body = _INCLUDE.sub(lambda m: common + "\n" + prelude, text, count=1)
        body += codegen.cuda_entries(fam, is_capturable(family)) if fam else ""
        digest = hashlib.sha256(body.encode()).hexdigest()[:16]
        _source_cache[family] = f"// fastopt kernel family {family}, source sha256 {digest}\n{body}"
    return _source_cache[family]


def _cbool(b: bool) -> str:
    return "true" if b else "false"


def kernel_name(family: str, kind: str, dtype: str, flags: tuple) -> str:
    """The CuPy name expression of one instantiation, e.g. 'fo_adam_table<float, float, true, false>'."""
    if kind not in kinds(family):
        raise ValueError(f"kind must be one of {kinds(family)}, got {kind!r}")
    if len(flags) != len(_flag_names(family)):
        raise ValueError(f"{family}: expected flags {_flag_names(family)}, got {flags!r}")
    p, c = PARAM_TYPES[dtype]
    args = [p, c] + [_cbool(bool(f)) for f in flags]
    return f"fo_{family}_{kind}<{', '.join(args)}>"


@dataclass(frozen=True)
class Instantiation:
    family: str
    dtype: str
    flags: tuple[bool, ...]
    kind: str

    @property
    def name(self) -> str:
        return kernel_name(self.family, self.kind, self.dtype, self.flags)

    def signature(self) -> str:
        """The C parameter list (for an explicit instantiation)."""
        p, c = PARAM_TYPES[self.dtype]
        table = ["const long long*", "long long", "long long", "const unsigned long long*",
                 "const unsigned long long*", "const long long*", "long long"]
        if self.family == REDUCE:
            if self.kind == "partials":
                params = ["const long long*", "long long", "long long", "const unsigned long long*",
                          "const long long*", "int", "double", c, "double*"]
            else:
                params = ["const long long*", "long long", "int", "const double*", "double*"]
            return ", ".join(params)
        fam = FAMILIES[self.family]
        scalars = [c] * len(fam.kernel_scalars)
        if self.kind == "flat":
            params = [f"{p}*", f"const {p}*"] + [f"{c}*"] * len(fam.slot_names) + ["long long"] + scalars
        elif self.kind == "table":
            params = table + scalars + ([f"const {c}*"] if fam.reductions else [])
        elif self.kind == "reduce":
            params = table + scalars + ["double*"]
        elif self.kind == "advance":
            params = ["const double*", "long long*", f"{c}*", "double*"]
        elif self.kind == "flatdev":
            params = [f"{p}*", f"const {p}*"] + [f"{c}*"] * len(fam.slot_names) + ["long long", f"const {c}*"]
        elif self.kind == "tabledev":
            params = table + [f"const {c}*"] + ([f"const {c}*"] if fam.reductions else [])
        elif self.kind == "reducedev":
            params = table + [f"const {c}*", "double*"]
        elif self.kind == "combinedev":
            params = ["const long long*", "long long", "const double*", "const double*", "double*", f"{c}*"]
        else:   # combine
            params = ["const long long*", "long long", "const double*"] + ["double"] * len(fam.scalar_names) + \
                ["double*", f"{c}*"]
        return ", ".join(params)

    def explicit(self) -> str:
        return f"template __global__ void {self.name}({self.signature()});"


def _flag_combinations(module: str) -> list[tuple[bool, ...]]:
    return [()] if module == REDUCE else FAMILIES[module].flag_combinations()


def instantiations(family: str | None = None) -> list[Instantiation]:
    mods = [family] if family else modules()
    return [Instantiation(f, dtype, flags, kind)
            for f in mods for dtype in PARAM_TYPES for flags in _flag_combinations(f) for kind in kinds(f)]


def name_expressions(family: str) -> list[str]:
    return [i.name for i in instantiations(family)]


# ---- the multi-tensor table (shared by the CUDA backend and the host tests) ----------------------------------------

def build_chunk_table(sizes, chunk_elems: int) -> np.ndarray:
    """int64 chunk codes (tensor << 32) | index-in-tensor; zero-size tensors get none."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if chunk_elems <= 0:
        raise ValueError("chunk_elems must be positive")
    counts = -(-sizes // chunk_elems)
    total = int(counts.sum())
    if len(sizes) >= 2 ** 31 or (len(counts) and int(counts.max()) >= 2 ** 32):
        raise ValueError("too many tensors or chunks for the chunk table")
    tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    index = np.arange(total, dtype=np.int64) - first
    return (tensor << 32) | index


def pack_pointer_table(param_ptrs, slot_ptrs) -> np.ndarray:
    """uint64 [role][tensor]: role 0 the params, role 1 + k slot k (`slot_ptrs[k]` a list, or None: zeros)."""
    n = len(param_ptrs)
    table = np.zeros((1 + len(slot_ptrs), n), dtype=np.uint64)
    table[0] = np.asarray(param_ptrs, dtype=np.uint64) if n else 0
    for k, ptrs in enumerate(slot_ptrs):
        if ptrs is not None and n:
            table[1 + k] = np.asarray(ptrs, dtype=np.uint64)
    return table.reshape(-1)


def vector_width(dtype: str) -> int:
    return 16 // (8 if PARAM_TYPES[dtype][1] == "double" else 4)


def choose_chunk_elems(total: int, target_blocks: int) -> int:
    """Elements per chunk: 65536 for big groups; smaller for small ones so at least ~target_blocks blocks run."""
    unit = BLOCK * 4   # one pass of a block over float4 vectors
    want = -(-max(total, 1) // max(target_blocks, 1))
    return int(min(65536, max(unit, -(-want // unit) * unit)))


# ---- nvcc: compile every instantiation, report registers and spills ------------------------------------------------

@dataclass
class KernelReport:
    arch: str
    inst: Instantiation
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int


def find_nvcc() -> str | None:
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def _demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("c++filt") or shutil.which("cu++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def _norm(name: str) -> str:
    return name.replace(" ", "")


def _parse_ptxas(text: str) -> dict[str, dict]:
    """mangled entry name -> {registers, spill_stores, spill_loads, stack} from `ptxas -v` output."""
    info: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line) or re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1)
            info.setdefault(current, dict(registers=-1, spill_stores=0, spill_loads=0, stack=0))
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            info[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            info[current]["registers"] = int(m.group(1))
    return info


def compile_family(family: str, arch: str, nvcc: str | None = None) -> tuple[list[KernelReport], str | None]:
    """One nvcc call: every instantiation of `family` for `arch`. Returns (reports, error text or None)."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        return [], "nvcc not found (set NVCC or put it on PATH)"
    insts = instantiations(family)
    text = source(family) + "\n// explicit instantiations (fastopt.cuda_build)\n" + \
        "\n".join(i.explicit() for i in insts) + "\n"
    with tempfile.TemporaryDirectory(prefix="fastopt-nvcc-") as tmp:
        src = Path(tmp) / f"{family}.cu"
        src.write_text(text)
        cmd = [nvcc, "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-ftz=true", *DEVICE_OPTIONS,
               "-o", str(Path(tmp) / f"{family}.cubin"), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return [], f"nvcc failed for {family} {arch} (exit {proc.returncode}):\n{log}"
    info = _parse_ptxas(log)
    demangled = _demangle(list(info))
    by_name = {}
    for mangled, d in info.items():
        m = re.match(r"\s*(?:void\s+)?([^(]+)", demangled[mangled])
        by_name[_norm(m.group(1) if m else demangled[mangled])] = d
    reports, missing = [], []
    for inst in insts:
        d = by_name.get(_norm(inst.name))
        if d is None:
            missing.append(inst.name)
            continue
        reports.append(KernelReport(arch, inst, d["registers"], d["spill_stores"], d["spill_loads"], d["stack"]))
    if missing:
        return reports, f"ptxas reported no entry for {len(missing)} instantiation(s) of {family} {arch}: {missing[:3]}"
    return reports, None


def compile_all(archs=("sm_80", "sm_90"), families=None, nvcc: str | None = None):
    """Every family for every architecture, in parallel: (reports, errors)."""
    jobs = [(f, a) for f in (families or modules()) for a in archs]
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        results = list(pool.map(lambda job: compile_family(job[0], job[1], nvcc), jobs))
    reports = [r for rs, _ in results for r in rs]
    errors = [e for _, e in results if e]
    return reports, errors


def check_kernels(archs=("sm_80", "sm_90"), max_registers: int | None = None, out=None) -> int:
    """Compile every instantiation for every arch; print one line each; 0 if all compiled without spills."""
    out = out or sys.stdout
    nvcc = find_nvcc()
    if nvcc is None:
        print("check-kernels: nvcc not found (set NVCC or put it on PATH)", file=out)
        return 2
    reports, errors = compile_all(archs, nvcc=nvcc)
    status = 0
    for r in sorted(reports, key=lambda r: (r.inst.family, r.arch, r.inst.kind, r.inst.dtype, r.inst.flags)):
        flags = " ".join(f"{n}={int(v)}" for n, v in zip(_flag_names(r.inst.family), r.inst.flags)) or "-"
        bad = r.spill_stores or r.spill_loads or (max_registers is not None and r.registers > max_registers)
        print(f"{r.arch:6} {r.inst.family:9} {r.inst.kind:8} {r.inst.dtype:8} {flags:28} regs={r.registers:3d} "
              f"spill={r.spill_stores}/{r.spill_loads} stack={r.stack}{'  <-- FAIL' if bad else ''}", file=out)
        if bad:
            status = 1
    for e in errors:
        print(e, file=out)
        status = 1
    print(f"check-kernels: {len(reports)} instantiations on {', '.join(archs)}: "
          f"{'ok' if status == 0 else 'FAILED'}", file=out)
    return status


# ---- NVRTC: what CuPy compiles, compiled here without a GPU --------------------------------------------------------

def cupy_nvrtc_options(arch: str) -> tuple[str, ...]:
    """The options CuPy (13 and 14, cupy/cuda/compiler.py) hands NVRTC for a RawModule built with DEVICE_OPTIONS on a
    device of architecture `arch` ("sm_90"): ours, then -ftz=true, the architecture (sm_XX: NVRTC emits the cubin
    itself) and --device-as-default-execution-space."""
    return (*DEVICE_OPTIONS, "-ftz=true", f"-arch={arch}", "--device-as-default-execution-space")


def nvrtc_version() -> tuple[int, int] | None:
    """NVRTC's version as CuPy's bindings load it, or None where CuPy or the NVRTC library is missing."""
    try:
        from cupy.cuda import nvrtc
        return tuple(nvrtc.getVersion())
    except Exception:  # noqa: BLE001 - no CuPy, or no libnvrtc: nothing to compile with
        return None


def nvrtc_compile(family: str, arch: str, ptx: bool = False):
    """Compile a family as the cuda backend's RawModule does, through CuPy's NVRTC bindings (no device needed).
    Returns (cubin or PTX bytes, {name expression: lowered name}); raises RuntimeError with NVRTC's log."""
    from cupy.cuda import nvrtc

    names = name_expressions(family)
    options = cupy_nvrtc_options(arch)
    if ptx:
        options = tuple(o.replace("-arch=sm_", "-arch=compute_") for o in options)
    prog = nvrtc.createProgram(source(family), f"{family}.cu", [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, list(options))
        except Exception as error:  # NVRTCError: report it with the compiler's log
            raise RuntimeError(f"NVRTC rejected {family} for {arch}: {error}\n{nvrtc.getProgramLog(prog)}") from error
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in names}
        code = nvrtc.getPTX(prog) if ptx else nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return code, lowered


def _ptxas_version(ptxas: str) -> tuple[int, int] | None:
    out = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_nvrtc(archs=("sm_80", "sm_90"), out=None) -> int:
    """Every family through NVRTC with CuPy's options, for every arch: the cubin CuPy would load, every name
    expression lowered. Where a ptxas no older than NVRTC exists, the PTX also goes through `ptxas -v` (registers and
    spills of what NVRTC generates). 0 when all compiled without spills; 2 when NVRTC cannot be loaded."""
    out = out or sys.stdout
    version = nvrtc_version()
    if version is None:
        print("check-nvrtc: CuPy's NVRTC bindings cannot load NVRTC (install the nvidia-cuda-nvrtc wheel matching "
              "CuPy's CUDA major version)", file=out)
        return 2
    nvcc = find_nvcc()
    ptxas = str(Path(nvcc).parent / "ptxas") if nvcc else shutil.which("ptxas")
    ptxas_version = _ptxas_version(ptxas) if ptxas and Path(ptxas).is_file() else None
    use_ptxas = ptxas_version is not None and ptxas_version >= version
    print(f"check-nvrtc: NVRTC {version[0]}.{version[1]}; options {' '.join(cupy_nvrtc_options('<arch>'))}; "
          + (f"PTX through ptxas {ptxas_version[0]}.{ptxas_version[1]}" if use_ptxas else
             "no ptxas at least as new as NVRTC: cubins only"), file=out)

    def one(job):
        family, arch = job
        try:
            cubin, lowered = nvrtc_compile(family, arch)
        except RuntimeError as error:
            return 1, str(error)
        bad = [n for n, low in lowered.items() if not low.startswith("_Z")]
        line = f"{family:9} {arch}: {len(lowered)} kernels, cubin {len(cubin)} bytes"
        failed = bool(bad)
        if bad:
            line += f"  <-- FAIL: names not lowered {bad[:2]}"
        if use_ptxas:
            ptx, _ = nvrtc_compile(family, arch, ptx=True)
            with tempfile.TemporaryDirectory(prefix="fastopt-nvrtc-") as tmp:
                src = Path(tmp) / f"{family}.ptx"
                src.write_bytes(ptx)
                proc = subprocess.run([ptxas, f"-arch={arch}", "-v", "-o", str(Path(tmp) / "out.cubin"), str(src)],
                                      capture_output=True, text=True)
            info = _parse_ptxas(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                line += f"  <-- FAIL: ptxas exit {proc.returncode}: {(proc.stderr or proc.stdout)[:300]}"
                failed = True
            else:
                # Entries are the kernels; a device function ptxas kept apart (double pow's slow path) reports
                # properties (its spills count) but no registers.
                regs = [d["registers"] for d in info.values() if d["registers"] >= 0]
                spills = sum(d["spill_stores"] + d["spill_loads"] for d in info.values())
                line += f"; ptxas: {len(regs)} entries, registers {min(regs, default=0)}-{max(regs, default=0)}, " \
                        f"spill bytes {spills}"
                if spills or len(regs) != len(lowered):
                    line += "  <-- FAIL"
                    failed = True
        return int(failed), line

    jobs = [(f, a) for f in modules() for a in archs]
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        results = list(pool.map(one, jobs))
    for _, line in results:
        print(line, file=out)
    status = max((s for s, _ in results), default=0)
    print(f"check-nvrtc: {'ok' if status == 0 else 'FAILED'}", file=out)
    return status


# ---- the host build -------------------------------------------------------------------------------------------------

_TABLE_HEAD = ("const long long* chunks, long long nchunks, long long chunk_elems, const unsigned long long* ptrs, "
               "const unsigned long long* grad_ptrs, const long long* sizes, long long ntensors")
_TABLE_ARGS = "chunks, nchunks, chunk_elems, ptrs, grad_ptrs, sizes, ntensors"


def _switch(head: str, cases: list[tuple[int, str]]) -> list[str]:
    lines = [head + " {", "    switch (flags) {"]
    for mask, call in cases:
        lines.append(f"    case {mask}u: fo_host_launch(grid, block, [&] {{ {call}; }}); "
                     "return fo_host_misaligned ? -2 : 0;")
    return lines + ["    default: return -1;", "    }", "}"]


def _host_entries(family: str) -> str:
    """extern "C" entry points of the host build, one per kind and dtype (a switch over the flag values):
      flat     (flags, n, arrays: param grad slots..., scalars, grid, block)
      table    (flags, chunks..ntensors, scalars[, ts: the per-tensor scalars, with reductions], grid, block)
      reduce   (flags, chunks..ntensors, scalars, partials, grid, block)
      combine  (flags, tensor_chunks, ntensors, partials, scalars (the declaration's, double), reduced, ts, grid, block)
      reduce module: partials (chunks, nchunks, chunk_elems, ptrs, sizes, op, power, unscale_by, partials, grid,
                     block) and combine (tensor_chunks, ntensors, op, partials, values, grid, block)."""
    lines = ["", "// host entry points (generated by fastopt.cuda_build)"]
    if family == REDUCE:
        for dtype, tag in _HOST_TAGS.items():
            p, c = PARAM_TYPES[dtype]
            lines += [
                f'extern "C" int fo_host_reduce_partials_{tag}(const long long* chunks, long long nchunks, '
                "long long chunk_elems, const unsigned long long* ptrs, const long long* sizes, int op, double power, "
                "double unscale_by, double* partials, unsigned grid, unsigned block) {",
                f"    fo_host_launch(grid, block, [&] {{ fo_reduce_partials<{p}, {c}>(chunks, nchunks, chunk_elems, "
                f"ptrs, sizes, op, power, ({c})unscale_by, partials); }});",
                "    return fo_host_misaligned ? -2 : 0;", "}",
                f'extern "C" int fo_host_reduce_combine_{tag}(const long long* tensor_chunks, long long ntensors, '
                "int op, const double* partials, double* values, unsigned grid, unsigned block) {",
                f"    fo_host_launch(grid, block, [&] {{ fo_reduce_combine<{p}, {c}>(tensor_chunks, ntensors, op, "
                "partials, values); });",
                "    return fo_host_misaligned ? -2 : 0;", "}"]
        return "\n".join(lines) + "\n"
    fam = FAMILIES[family]
    ns, nsc, ndecl = len(fam.slot_names), len(fam.kernel_scalars), len(fam.scalar_names)
    for dtype, tag in _HOST_TAGS.items():
        p, c = PARAM_TYPES[dtype]
        scal = ", ".join(f"({c})scalars[{i}]" for i in range(nsc))
        doubles = ", ".join(f"scalars[{i}]" for i in range(ndecl))
        flat_args = ", ".join([f"({p}*)arrays[0]", f"(const {p}*)arrays[1]"] +
                              [f"({c}*)arrays[{2 + k}]" for k in range(ns)] + ["n", scal])
        for kind in kinds(family):
            if kind == "flat":
                head = (f'extern "C" int fo_host_{family}_flat_{tag}(unsigned flags, long long n, void* const* arrays, '
                        f"const double* scalars, unsigned grid, unsigned block)")
                args = flat_args
            elif kind == "table":
                extra = ", const void* ts" if fam.reductions else ""
                head = (f'extern "C" int fo_host_{family}_table_{tag}(unsigned flags, {_TABLE_HEAD}, '
                        f"const double* scalars{extra}, unsigned grid, unsigned block)")
                args = f"{_TABLE_ARGS}, {scal}" + (f", (const {c}*)ts" if fam.reductions else "")
            elif kind == "reduce":
                head = (f'extern "C" int fo_host_{family}_reduce_{tag}(unsigned flags, {_TABLE_HEAD}, '
                        "const double* scalars, double* partials, unsigned grid, unsigned block)")
                args = f"{_TABLE_ARGS}, {scal}, partials"
            elif kind == "advance":
                head = (f'extern "C" int fo_host_{family}_advance_{tag}(unsigned flags, const double* hyper, '
                        "long long* step, void* scalars, double* scalars64, unsigned grid, unsigned block)")
                args = f"hyper, step, ({c}*)scalars, scalars64"
            elif kind == "reducedev":
                head = (f'extern "C" int fo_host_{family}_reducedev_{tag}(unsigned flags, {_TABLE_HEAD}, '
                        "const void* scalars, double* partials, unsigned grid, unsigned block)")
                args = f"{_TABLE_ARGS}, (const {c}*)scalars, partials"
            elif kind == "combinedev":
                head = (f'extern "C" int fo_host_{family}_combinedev_{tag}(unsigned flags, '
                        "const long long* tensor_chunks, long long ntensors, const double* partials, "
                        "const double* scalars64, double* reduced, void* ts, unsigned grid, unsigned block)")
                args = f"tensor_chunks, ntensors, partials, scalars64, reduced, ({c}*)ts"
            elif kind == "flatdev":
                head = (f'extern "C" int fo_host_{family}_flatdev_{tag}(unsigned flags, long long n, '
                        "void* const* arrays, const void* scalars, unsigned grid, unsigned block)")
                args = ", ".join([f"({p}*)arrays[0]", f"(const {p}*)arrays[1]"] +
                                 [f"({c}*)arrays[{2 + k}]" for k in range(ns)] + ["n", f"(const {c}*)scalars"])
            elif kind == "tabledev":
                extra = ", const void* ts" if fam.reductions else ""
                head = (f'extern "C" int fo_host_{family}_tabledev_{tag}(unsigned flags, {_TABLE_HEAD}, '
                        f"const void* scalars{extra}, unsigned grid, unsigned block)")
                args = f"{_TABLE_ARGS}, (const {c}*)scalars" + (f", (const {c}*)ts" if fam.reductions else "")
            else:
                head = (f'extern "C" int fo_host_{family}_combine_{tag}(unsigned flags, '
                        "const long long* tensor_chunks, long long ntensors, const double* partials, "
                        "const double* scalars, double* reduced, void* ts, unsigned grid, unsigned block)")
                args = f"tensor_chunks, ntensors, partials, {doubles}, reduced, ({c}*)ts"
            cases = [(sum(1 << i for i, f in enumerate(flags) if f),
                      f"{kernel_name(family, kind, dtype, flags)}({args})") for flags in fam.flag_combinations()]
            lines += _switch(head, cases)
    if is_capturable(family):   # the scalars' device function alone, in float64, for the tests
        lines += [f'extern "C" void fo_host_{family}_scalars(const double* hyper, long long step, double* out) {{',
                  f"    fo_{family}_scalars sc;" + "".join(f" sc.{h} = hyper[{k}];"
                                                       for k, h in enumerate(codegen.hyper_names(family))),
                  f"    double values[{max(ndecl, 1)}];", "    sc(step, values);",
                  f"    for (int k = 0; k < {ndecl}; ++k) out[k] = values[k];", "}"]
    return "\n".join(lines) + "\n"


def host_source(family: str) -> str:
    shim = (kernel_dir() / "host_shim.h").read_text()
    return f"{shim}\n#define FO_BLOCK {BLOCK}\n{source(family)}\n{_host_entries(family)}"


def find_cxx() -> str | None:
    for cand in (os.environ.get("CXX"), shutil.which("g++"), shutil.which("c++")):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


HOST_OPTIONS = ("-O2", "-ffp-contract=off", "-std=c++17", "-fPIC", "-shared", "-fno-strict-aliasing")
_host_libs: dict[str, ctypes.CDLL] = {}


def build_host_library(family: str) -> ctypes.CDLL:
    """g++ build of the family's kernels with host_shim.h, cached in a temp dir keyed by the source hash."""
    if family in _host_libs:
        return _host_libs[family]
    cxx = find_cxx()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    text = host_source(family)
    key = hashlib.sha256((text + " ".join(HOST_OPTIONS) + cxx).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"fastopt-host-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    cache.mkdir(parents=True, exist_ok=True)
    lib_path = cache / f"{family}-{key}.so"
    if not lib_path.exists():
        src = cache / f"{family}-{key}.cpp"
        src.write_text(text)
        tmp = cache / f"{family}-{key}.{os.getpid()}.so"
        proc = subprocess.run([cxx, *HOST_OPTIONS, "-o", str(tmp), str(src)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"host build of {family} failed:\n{proc.stdout}{proc.stderr}")
        os.replace(tmp, lib_path)
    lib = ctypes.CDLL(str(lib_path))
    _declare(lib, family)
    _host_libs[family] = lib
    return lib


def _declare(lib, module: str) -> None:
    """argtypes of every host entry point (callers may pass plain ints and addresses)."""
    V, LL, U, D = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_uint, ctypes.POINTER(ctypes.c_double)
    table = [V, LL, LL, V, V, V, LL]
    for tag in _HOST_TAGS.values():
        if module == REDUCE:
            sigs = {"partials": [V, LL, LL, V, V, ctypes.c_int, ctypes.c_double, ctypes.c_double, V, U, U],
                    "combine": [V, LL, ctypes.c_int, V, V, U, U]}
            names = {k: f"fo_host_reduce_{k}_{tag}" for k in sigs}
        else:
            with_ts = bool(FAMILIES[module].reductions)
            sigs = {"flat": [U, LL, ctypes.POINTER(V), D, U, U],
                    "table": [U, *table, D, *([V] if with_ts else []), U, U],
                    "reduce": [U, *table, D, V, U, U],
                    "combine": [U, V, LL, V, D, V, V, U, U],
                    "advance": [U, V, V, V, V, U, U],
                    "flatdev": [U, LL, ctypes.POINTER(V), V, U, U],
                    "tabledev": [U, *table, V, *([V] if with_ts else []), U, U],
                    "reducedev": [U, *table, V, V, U, U],
                    "combinedev": [U, V, LL, V, V, V, V, U, U]}
            names = {k: f"fo_host_{module}_{k}_{tag}" for k in kinds(module)}
        for kind, name in names.items():
            fn = getattr(lib, name)
            fn.argtypes = sigs[kind]
            fn.restype = ctypes.c_int
    if module != REDUCE and is_capturable(module):
        fn = getattr(lib, f"fo_host_{module}_scalars")
        fn.argtypes = [V, LL, V]
        fn.restype = None


def _dtype_key(array) -> str:
    if array.dtype == np.uint16:      # bfloat16 travels as its bits
        return "bfloat16"
    return array.dtype.name


def _check(rc: int) -> None:
    if rc == -2:
        raise RuntimeError("host kernel made a vector access at a misaligned address (a fault on the device)")
    if rc != 0:
        raise RuntimeError(f"host kernel returned {rc} (unknown flags)")


_P = ctypes.c_void_p


def _fn(lib, name: str, restype=ctypes.c_int):
    fn = getattr(lib, name)
    fn.restype = restype
    return fn


def tensor_chunk_offsets(chunks: np.ndarray, ntensors: int) -> np.ndarray:
    """int64 [ntensors + 1]: tensor t's chunks are rows [out[t], out[t + 1]) of the chunk table (tensor-major)."""
    counts = np.bincount((np.asarray(chunks, dtype=np.int64) >> 32).astype(np.int64), minlength=ntensors)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _addr(a) -> int:
    return a.ctypes.data


class HostKernels:
    """Call a family's host build with NumPy arrays, following the kernel calling convention."""

    def __init__(self, family: str):
        self.family = family
        self.fam = FAMILIES[family]
        self.lib = build_host_library(family)

    def _mask(self, flags) -> int:
        if len(flags) != len(self.fam.flag_names):
            raise ValueError(f"{self.family}: expected flags {self.fam.flag_names}, got {flags!r}")
        return sum(1 << i for i, f in enumerate(flags) if f)

    def _scalars(self, scalars):
        """The declaration's scalars (the gradient transform then 1, 1: none), or all of `kernel_scalars`."""
        if len(scalars) == len(self.fam.scalar_names):
            scalars = (*scalars, 1.0, 1.0)
        if len(scalars) != len(self.fam.kernel_scalars):
            raise ValueError(f"{self.family}: expected scalars {self.fam.kernel_scalars}")
        return (ctypes.c_double * len(scalars))(*[float(s) for s in scalars])

    def flat(self, param, grad, slots, scalars, flags, grid=3, block=32):
        """slots: one array or None per slot of the family; every array 1-D contiguous, param dtype for p/g."""
        tag = _HOST_TAGS[_dtype_key(param)]
        ptrs = [param.ctypes.data, grad.ctypes.data] + [0 if s is None else s.ctypes.data for s in slots]
        arr = (ctypes.c_void_p * len(ptrs))(*ptrs)
        fn = _fn(self.lib, f"fo_host_{self.family}_flat_{tag}")
        rc = fn(ctypes.c_uint(self._mask(flags)), ctypes.c_longlong(param.size), arr, self._scalars(scalars),
                ctypes.c_uint(grid), ctypes.c_uint(block))
        _check(rc)

    def _tables(self, params, grads, slots, chunk_elems):
        sizes = np.array([p.size for p in params], dtype=np.int64)
        chunks = build_chunk_table(sizes, chunk_elems)
        ptrs = pack_pointer_table([p.ctypes.data for p in params],
                                  [None if s is None else [a.ctypes.data for a in s] for s in slots])
        gptrs = np.array([g.ctypes.data for g in grads], dtype=np.uint64)
        head = (_P(_addr(chunks)), ctypes.c_longlong(len(chunks)), ctypes.c_longlong(chunk_elems), _P(_addr(ptrs)),
                _P(_addr(gptrs)), _P(_addr(sizes)), ctypes.c_longlong(len(params)))
        return (sizes, chunks, ptrs, gptrs), head

    def reduce(self, params, grads, slots, scalars, flags, chunk_elems=1024, grid=5, block=32):
        """Kernel contract v2, launches 1 and 2 of the family's reductions, then its per-tensor scalars: returns
        (reduced float64 [ntensors, NRED], tensor scalars [ntensors, NTS] in the compute type)."""
        tag = _HOST_TAGS[_dtype_key(params[0])]
        keep, head = self._tables(params, grads, slots, chunk_elems)
        chunks = keep[1]
        nred, nts = len(self.fam.reductions), len(self.fam.tensor_scalar_names)
        partials = np.full((max(len(chunks), 1), nred), np.nan)
        mask = ctypes.c_uint(self._mask(flags))
        rc = _fn(self.lib, f"fo_host_{self.family}_reduce_{tag}")(
            mask, *head, self._scalars(scalars), _P(_addr(partials)), ctypes.c_uint(grid), ctypes.c_uint(block))
        _check(rc)
        offsets = tensor_chunk_offsets(chunks, len(params))
        reduced = np.full((len(params), nred), np.nan)
        ctype = np.float64 if PARAM_TYPES[_dtype_key(params[0])][1] == "double" else np.float32
        ts = np.full((len(params), nts), np.nan, dtype=ctype)
        decl = (ctypes.c_double * len(self.fam.scalar_names))(*[float(s) for s in
                                                                 scalars[:len(self.fam.scalar_names)]])
        rc = _fn(self.lib, f"fo_host_{self.family}_combine_{tag}")(
            mask, _P(_addr(offsets)), ctypes.c_longlong(len(params)), _P(_addr(partials)), decl, _P(_addr(reduced)),
            _P(_addr(ts)), ctypes.c_uint(grid), ctypes.c_uint(block))
        _check(rc)
        return reduced, ts

    def table(self, params, grads, slots, scalars, flags, chunk_elems=1024, grid=5, block=32, tensor_scalars=None):
        """params, grads: lists; slots: per slot a list of arrays or None. A family with reductions takes
        `tensor_scalars` ([ntensors, NTS] in the compute type), or computes them first with `reduce`."""
        tag = _HOST_TAGS[_dtype_key(params[0])]
        if self.fam.reductions and tensor_scalars is None:
            tensor_scalars = self.reduce(params, grads, slots, scalars, flags, chunk_elems, grid, block)[1]
        _keep, head = self._tables(params, grads, slots, chunk_elems)   # _keep: alive until the call
        extra = ()
        if self.fam.reductions:
            ctype = np.float64 if PARAM_TYPES[_dtype_key(params[0])][1] == "double" else np.float32
            tensor_scalars = np.ascontiguousarray(tensor_scalars, dtype=ctype)
            extra = (_P(_addr(tensor_scalars)),)
        fn = _fn(self.lib, f"fo_host_{self.family}_table_{tag}")
        rc = fn(ctypes.c_uint(self._mask(flags)), *head, self._scalars(scalars), *extra, ctypes.c_uint(grid),
                ctypes.c_uint(block))
        _check(rc)


class HostReduce:
    """The reductions module's host build (kernels/cuda/reduce.cu): per array, the reduction `op` of
    x / unscale_by, in the order the device computes it."""

    def __init__(self):
        self.lib = build_host_library(REDUCE)

    def __call__(self, arrays, op: str, power: float = 2.0, unscale_by: float = 1.0, chunk_elems=1024, grid=5,
                 block=32) -> np.ndarray:
        tag = _HOST_TAGS[_dtype_key(arrays[0])]
        code = codegen.cuda_reduction_code(op)
        sizes = np.array([a.size for a in arrays], dtype=np.int64)
        chunks = build_chunk_table(sizes, chunk_elems)
        ptrs = np.array([a.ctypes.data for a in arrays], dtype=np.uint64)
        partials = np.full(max(len(chunks), 1), np.nan)
        rc = _fn(self.lib, f"fo_host_reduce_partials_{tag}")(
            _P(_addr(chunks)), ctypes.c_longlong(len(chunks)), ctypes.c_longlong(chunk_elems), _P(_addr(ptrs)),
            _P(_addr(sizes)), ctypes.c_int(code), ctypes.c_double(power), ctypes.c_double(unscale_by),
            _P(_addr(partials)), ctypes.c_uint(grid), ctypes.c_uint(block))
        _check(rc)
        offsets = tensor_chunk_offsets(chunks, len(arrays))
        values = np.full(len(arrays), np.nan)
        rc = _fn(self.lib, f"fo_host_reduce_combine_{tag}")(
            _P(_addr(offsets)), ctypes.c_longlong(len(arrays)), ctypes.c_int(code), _P(_addr(partials)),
            _P(_addr(values)), ctypes.c_uint(grid), ctypes.c_uint(block))
        _check(rc)
        return values
