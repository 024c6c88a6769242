"""The cuda backend's plan for Adafactor (shaped state): the kernels of kernels/cuda/adafactor.cu, launched in the
order tests/test_adafactor_cuda_host.py checks bit for bit against the NumPy reference through the host build.

`fastopt.backends.cuda.CudaBackend.prepare` hands Adafactor here. At prepare time the plan builds, once,
the int64 tables adafactor.cu reads (tensors, the pointer table, the reduction segments of both passes with their
outputs, the column blocks, the factored tensors, the update's chunks), uploads them, and allocates the float64
scratch (lanes, per-tensor and per-row sums, column partials) and the per-slice means and per-tensor factors in the
param dtype. A step is nine launches on one stream (fewer when a group has no factored tensor or no vector) with no
allocation, copy or synchronization, except one small copy of the grads' pointers when their addresses change:

    lanes(pass 1) -> segsum -> colsums -> moments -> rmean -> lanes(pass 2) -> segsum -> factors -> apply

The stream, as for every cuda plan: torch's current stream when the params are torch tensors, else CuPy's; before
the grads' pointers are rewritten on one stream while the last step went to another, the writing stream waits for it.
`reduce_grads` (clipping's norm, AMP's non-finite count) is the generic multi-tensor reduction of
kernels/cuda/reduce.cu. float32 and float64 params; the half types have no Adafactor kernels (TypeError).

Speed (not yet measured on a GPU): a factored float32 element costs 28 bytes a step (p and g read by pass 1, g by the
column sums, g by pass 2, then p and g read and p written by the update), 4 more than the cpu kernels, which add the
column sums in pass 1's loop. The sums keep fastopt.reference's order (8 lanes per 32768 elements, one thread each),
so a reduction thread sums up to 4096 terms in order: ||p||^2 of a 16M-element group runs on 4096 threads, few for
a large GPU (a factored row shorter than 32768 is its own segment: more threads).
"""

from __future__ import annotations

import hashlib
import operator
import re

import numpy as np

from fastopt import cuda_build
from fastopt.backends import cuda
from fastopt.optimizers.adafactor import block_rows, eps1_of
from fastopt.reference import REDUCE_CHUNK

FAMILY = "adafactor"
LANES = 8                       # FO_ADA_LANES: lanes per reduction segment
KERNELS = ("lanes", "colsums", "moments", "rmean", "factors", "apply")   # templates on C; plus segsum
CTYPES = {"float32": "float", "float64": "double"}

# fo_ada_scalars, laid out as the C struct (align=True: the int's padding included), passed by value
SCALARS = np.dtype([("weight", "f8"), ("grad_sign", "f8"), ("eps1", "f8"), ("eps1_sq", "f8"), ("decay", "f8"),
                    ("use_decay", "i4"), ("unscale_by", "f8"), ("clip_coef", "f8"), ("rho", "f8"), ("eps2", "f8"),
                    ("d", "f8")], align=True)

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"common\.cuh"[ \t]*$', re.MULTILINE)


def source() -> str:
    """adafactor.cu with common.cuh spliced in and a content hash on top (CuPy's cache key ignores includes)."""
    d = cuda_build.kernel_dir()
    text = (d / f"{FAMILY}.cu").read_text()
    body = _INCLUDE.sub(lambda m: (d / "common.cuh").read_text(), text, count=1) + _layout_asserts()
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return f"// fastopt kernel family {FAMILY}, source sha256 {digest}\n{body}"


def _layout_asserts() -> str:
    """A static_assert that fo_ada_scalars has SCALARS' size and alignment (NVRTC has no offsetof; the fields' offsets
    are checked by the host build, which reads SCALARS' bytes as the struct: tests/test_adafactor_cuda_plan.py)."""
    return (f"\nstatic_assert(sizeof(fo_ada_scalars) == {SCALARS.itemsize} && alignof(fo_ada_scalars) == "
            f"{SCALARS.alignment}, \"fo_ada_scalars differs from fastopt.backends.cuda_adafactor.SCALARS\");\n")


def kernel_name(kind: str, dtype: str) -> str:
    """The CuPy name expression of one kernel (segsum is no template)."""
    return "fo_adafactor_segsum" if kind == "segsum" else f"fo_adafactor_{kind}<{CTYPES[dtype]}>"


def name_expressions() -> list[str]:
    return [kernel_name(k, d) for d in CTYPES for k in KERNELS] + [kernel_name("segsum", "float32")]


def _module():
    mod = cuda._modules.get(FAMILY)
    if mod is None:
        mod = cuda._cp().RawModule(code=source(), options=cuda_build.DEVICE_OPTIONS,
                                   name_expressions=name_expressions())
        cuda._modules[FAMILY] = mod
    return mod


# ---- the tables (host side, once per plan) --------------------------------------------------------------------------

def _segments(blocks):
    """Segments (tensor, first element, length, term) of every output in order, and out_begin (one more entry).
    `blocks`: arrays (outputs, segments each, 4), in output order."""
    counts = np.concatenate([np.full(b.shape[0], b.shape[1], np.int64) for b in blocks])
    segs = np.concatenate([b.reshape(-1, 4) for b in blocks])
    return segs, np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)])


def _runs(t, first, size, term, chunk=REDUCE_CHUNK):
    """The segments of `size` consecutive elements from `first`, at most `chunk` each."""
    starts = np.arange(0, size, chunk, dtype=np.int64)
    out = np.empty((len(starts), 4), np.int64)
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = t, first + starts, np.minimum(chunk, size - starts), term
    return out


def _row_groups(t, rows, n, term):
    """Each row of a factored tensor (rows x n) as one output: (rows, pieces of a row, 4)."""
    segs = np.repeat(_runs(t, 0, n, term)[None], rows, axis=0)
    segs[:, :, 1] += (np.arange(rows, dtype=np.int64) * n)[:, None]
    return segs


def build_tables(shapes, chunk_elems):
    """What a plan uploads, from the params' shapes alone (numbers as kernels/cuda/adafactor.cu's header says)."""
    T = len(shapes)
    tensors = np.zeros((T, 8), np.int64)
    pp_groups, rows1, rows2, vec2, cblocks, ftensors = [], [], [], [], [], []
    row_total = cp_total = slice_total = 0
    for t, shape in enumerate(shapes):
        size = int(np.prod(shape, dtype=np.int64))
        pp_groups.append(_runs(t, 0, size, 0)[None])
        if len(shape) >= 2 and size:
            B, m, n = int(np.prod(shape[:-2], dtype=np.int64)), int(shape[-2]), int(shape[-1])
            per = block_rows(m, n)
            nblocks = -(-m // per)
            tensors[t] = (size, B, m, n, row_total, cp_total, slice_total, nblocks)
            rows1.append(_row_groups(t, B * m, n, 1))
            rows2.append(_row_groups(t, B * m, n, 2))
            r0 = np.arange(0, m, per, dtype=np.int64)
            s = np.repeat(np.arange(B, dtype=np.int64), nblocks)
            k = np.tile(np.arange(nblocks, dtype=np.int64), B)
            cblocks.append(np.stack([np.full(B * nblocks, t), s, r0[k], np.minimum(r0[k] + per, m),
                                     cp_total + (s * nblocks + k) * n], axis=1))
            ftensors.append(t)
            row_total += B * m
            cp_total += B * nblocks * n
            slice_total += B
            vec2.append(np.zeros((1, 0, 4), np.int64))   # no vector: an empty output
        else:
            tensors[t] = (size, 0, 0, 0, 0, 0, 0, 0)
            vec2.append(_runs(t, 0, size, 3)[None])
    chunks = [_runs(t, 0, int(tensors[t, 0]), 0, chunk_elems)[:, :3] for t in range(T) if tensors[t, 0]]
    return dict(
        tensors=tensors, rows=row_total, colpart=cp_total, slices=slice_total,
        pass1=_segments(pp_groups + rows1),      # outputs: ||p||^2 per tensor, then each factored row's sum of g^2
        pass2=_segments(rows2 + vec2),           # outputs: each factored row's sum of U^2, then ||U||^2 per vector
        cblocks=np.concatenate(cblocks).astype(np.int64) if cblocks else np.zeros((0, 5), np.int64),
        ftensors=np.array(ftensors, np.int64),
        chunks=np.concatenate(chunks).astype(np.int64) if chunks else np.zeros((0, 3), np.int64))


# ---- the plan -------------------------------------------------------------------------------------------------------

class AdafactorPlan:
    """Adafactor's phases on the cuda backend (see the module docstring): tables and scratch at prepare, nine
    launches a step."""

    def __init__(self, spec, params, slots, flags):
        cp = cuda._cp()
        if not params:
            raise ValueError("params: an Adafactor plan needs at least one array")
        dtype = np.dtype(params[0].dtype)
        if dtype.name not in CTYPES:
            raise TypeError(f"params: the cuda backend's Adafactor updates float32 and float64 params, got {dtype} "
                            "(use backend='cpu' or 'numpy', or float32 params)")
        self.spec, self.flags, self.key, self.dtype = spec, tuple(flags), dtype.name, dtype
        self.params = list(params)
        # held: the pointer table records their addresses
        self.slots = {name: None if v is None else list(v) for name, v in slots.items()}
        held = self.params + [a for v in self.slots.values() if v is not None for a in v if a is not None]
        self.device = cuda._one_device(held, "params and state")
        self.on_torch_stream = any(cuda._from_torch(p) for p in self.params)
        self.sizes = [int(p.size) for p in self.params]
        self.total = sum(self.sizes)
        T = self.T = len(self.params)
        rows, cols, var = (self.slots.get(k) or [None] * T for k in ("row_var", "col_var", "variance"))
        ptrs = np.zeros((5, T), np.uint64)
        for t, p in enumerate(self.params):
            if not p.size:
                continue
            ptrs[0, t] = p.data.ptr
            if len(p.shape) >= 2:
                ptrs[2, t], ptrs[3, t] = rows[t].data.ptr, cols[t].data.ptr
            else:
                ptrs[4, t] = var[t].data.ptr
        with cp.cuda.Device(self.device):
            mod = _module()
            k = {kind: mod.get_function(kernel_name(kind, self.key)) for kind in (*KERNELS, "segsum")}
            resident = {kind: cuda.resident_blocks(f, self.device) for kind, f in k.items()}
            tab = build_tables([p.shape for p in self.params],
                               cuda_build.choose_chunk_elems(self.total, resident["apply"]))
            stream = cp.cuda.get_current_stream()

            def upload(host, dtype=np.int64):
                host = np.ascontiguousarray(host, dtype=dtype).ravel()
                out = cp.empty(max(host.size, 1), dtype=dtype)
                if host.size:
                    out[:host.size].set(host, stream=stream)
                return out

            def scratch(n, dtype=np.float64):
                return cp.zeros(max(n, 1), dtype=dtype)

            self.d_tensors = upload(tab["tensors"])
            self.d_ptrs = upload(ptrs, np.uint64)
            self.d_grad_ptrs = self.d_ptrs[T:2 * T]     # row 1 of the table: rewritten when the grads change
            (segs1, begin1), (segs2, begin2) = tab["pass1"], tab["pass2"]
            self.d_segs1, self.d_begin1 = upload(segs1), upload(begin1)
            self.d_segs2, self.d_begin2 = upload(segs2), upload(begin2)
            self.d_cblocks, self.d_ftensors, self.d_chunks = (upload(tab["cblocks"]), upload(tab["ftensors"]),
                                                              upload(tab["chunks"]))
            rows_n = tab["rows"]
            self.d_lanes1, self.d_out1 = scratch(len(segs1) * LANES), scratch(len(begin1) - 1)
            self.d_lanes2, self.d_out2 = scratch(len(segs2) * LANES), scratch(len(begin2) - 1)
            self.d_colpart = scratch(tab["colpart"])
            self.d_rmean = scratch(tab["slices"], dtype)
            self.d_factors = scratch(T, dtype)
            # views into the outputs (made once): rowsum per row after the T norms; urow per row, then uu per tensor
            self.d_rowsum = self.d_out1[T:] if rows_n else self.d_out1
            self.d_urow = self.d_out2[:rows_n] if rows_n else self.d_out2
            self.d_uu = self.d_out2[rows_n:]
            stream.synchronize()   # the host tables above are temporaries
        nf = len(tab["ftensors"])
        fmeta = tab["tensors"][tab["ftensors"]] if nf else np.zeros((0, 8), np.int64)
        most_rows = int(max((fmeta[:, 1] * np.maximum(fmeta[:, 2], fmeta[:, 3])).max(initial=0), 1))
        most_slices = int(max(fmeta[:, 1].max(initial=0), 1))
        B = cuda_build.BLOCK

        def grid(kind, threads):
            return max(1, min(-(-threads // B), resident[kind]))

        i64 = np.int64
        # (kernel, blocks, args): None marks where the step's scalars (the struct) go
        L = []
        if len(segs1):
            L += [(k["lanes"], grid("lanes", len(segs1) * LANES),
                   (self.d_segs1, i64(len(segs1)), self.d_tensors, self.d_ptrs, i64(T), self.d_rmean, None,
                    self.d_lanes1)),
                  (k["segsum"], grid("segsum", len(begin1) - 1),
                   (self.d_begin1, i64(len(begin1) - 1), self.d_lanes1, self.d_out1))]
        if nf:
            L += [(k["colsums"], max(1, min(len(tab["cblocks"]), resident["colsums"])),
                   (self.d_cblocks, i64(len(tab["cblocks"])), self.d_tensors, self.d_ptrs, i64(T), None,
                    self.d_colpart)),
                  (k["moments"], grid("moments", most_rows),
                   (self.d_ftensors, i64(nf), self.d_tensors, self.d_ptrs, i64(T), self.d_rowsum, self.d_colpart,
                    None)),
                  (k["rmean"], grid("rmean", most_slices),
                   (self.d_ftensors, i64(nf), self.d_tensors, self.d_ptrs, i64(T), None, self.d_rmean))]
        if len(segs2):
            L += [(k["lanes"], grid("lanes", len(segs2) * LANES),
                   (self.d_segs2, i64(len(segs2)), self.d_tensors, self.d_ptrs, i64(T), self.d_rmean, None,
                    self.d_lanes2)),
                  (k["segsum"], grid("segsum", len(begin2) - 1),
                   (self.d_begin2, i64(len(begin2) - 1), self.d_lanes2, self.d_out2))]
        L += [(k["factors"], grid("factors", T),
               (self.d_tensors, i64(T), self.d_out1, self.d_urow, self.d_uu, None, self.d_factors))]
        if len(tab["chunks"]):
            L += [(k["apply"], max(1, min(len(tab["chunks"]), resident["apply"])),
                   (self.d_chunks, i64(len(tab["chunks"])), self.d_tensors, self.d_ptrs, i64(T), self.d_rmean,
                    self.d_factors, None))]
        self.launches = L
        self._streams = {}           # torch stream handle -> CuPy stream object (cuda._CudaPlan._stream)
        self._grad_key = None        # the grads' addresses in the table
        self._grad_objects = []      # the grads of the last step, as given (held while the table points at them)
        self._grad_views = []
        self._last_stream = None     # the stream of the last step (it reads the grads' pointers)
        self._grad_reducer = None    # reduce_grads' scratch (cuda._Reducer), built on its first call

    _stream = cuda._CudaPlan._stream

    # -- the grads' pointers --------------------------------------------------------------------------------------

    def _views(self, grads):
        if len(grads) != self.T:
            raise ValueError(f"grads: expected {self.T} arrays (one per param), got {len(grads)}")
        views = [cuda.BACKEND.as_array(g) for g in grads]
        if self.total:
            device = cuda._one_device(views, "grads")
            if device != self.device:
                raise ValueError(f"grads are on CUDA device {device} but params and state are on device "
                                 f"{self.device}")
        return views

    def _set_grads(self, grads, stream) -> None:
        """Rewrite the grads' row of the pointer table when their addresses change (checks first: a failed one
        leaves the plan as it was); the same grad objects as last step need no look at all."""
        if len(grads) == len(self._grad_objects) and all(map(operator.is_, grads, self._grad_objects)):
            return
        views = self._views(grads)
        key = tuple(int(v.data.ptr) if v.size else 0 for v in views)
        if key != self._grad_key:
            cp = cuda._cupy
            with cp.cuda.Device(self.device):
                last = self._last_stream
                if last is not None and last.ptr != stream.ptr:   # the last step may still read the table
                    done = cp.cuda.Event(disable_timing=True)
                    done.record(last)
                    stream.wait_event(done)
                self.d_grad_ptrs.set(np.asarray(key, dtype=np.uint64), stream=stream)
            self._grad_key = key
        self._grad_objects, self._grad_views = list(grads), views

    # -- the contract ---------------------------------------------------------------------------------------------

    def run(self, grads, scalars, grad_scale=None, grad_factor=None) -> None:
        if not self.total:
            return
        _lr, grad_sign, weight_decay, decay, weight, rho, eps1, eps2, d = scalars
        e1 = eps1_of(eps1, self.dtype)
        s = np.array((weight, grad_sign, e1, e1 * e1, decay, int(weight_decay != 0),
                      1.0 if grad_scale is None else grad_scale, 1.0 if grad_factor is None else grad_factor,
                      rho, eps2, d), dtype=SCALARS)[()]
        stream = self._stream()
        self._set_grads(grads, stream)
        self._last_stream = stream
        cp = cuda._cupy
        with cp.cuda.Device(self.device), stream:
            for kernel, blocks, args in self.launches:
                kernel((blocks,), (cuda_build.BLOCK,), tuple(s if a is None else a for a in args))

    def reduce_grads(self, grads, op: str, power: float = 2.0, grad_scale=None) -> list:
        """Per gradient, the reduction `op` of grad / grad_scale (kernels/cuda/reduce.cu, as every cuda plan)."""
        views = self._views(grads)
        if self._grad_reducer is None:
            self._grad_reducer = cuda._Reducer(self.device, self.key, self.sizes)
        return self._grad_reducer.run(tuple(int(v.data.ptr) for v in views), op, power, grad_scale, self._stream())


def smoke(dtypes, sizes, steps, rng) -> tuple[int, list[str]]:
    """`python -m fastopt smoke` for Adafactor (float32, float64 among `dtypes`): vectors of `sizes`, a 0-d scalar,
    matrices and a 3-D tensor whose rows and columns follow from `sizes`, defaults and weight decay with maximize;
    every param element must change and stay finite. Returns (runs, failures)."""
    from fastopt.specs import SPECS

    cp = cuda._cp()
    spec = SPECS[FAMILY]
    shapes = [(n,) for n in sizes] + [(), (max(sizes), 3), (7, max(sizes)), (2, 33, 65)]
    runs, failures = 0, []
    for dtype in [d for d in dtypes if d in CTYPES]:
        for hyper in (spec.normalize(spec.defaults), spec.normalize({**spec.defaults, "weight_decay": 0.05,
                                                                     "maximize": True})):
            # |p| in [0.01, 0.1) and grads of fixed sign: every step moves every element
            signs = [np.asarray(np.where(rng.random(s) < 0.5, -1.0, 1.0), dtype=dtype) for s in shapes]
            start = [np.asarray(rng.uniform(0.01, 0.1, s) * g, dtype=dtype) for s, g in zip(shapes, signs)]
            params = [cp.asarray(p) for p in start]
            slots = {s.name: [None if shape is None else cp.zeros(shape, dtype)
                              for shape in (s.shape_for(p.shape, hyper) for p in start)] for s in spec.slots}
            plan = AdafactorPlan(spec, params, slots, spec.flags(hyper))
            grads = [cp.asarray(g) for g in signs]
            for step in range(1, steps + 1):
                plan.run(grads, spec.scalars(hyper, step))
            cp.cuda.get_current_stream().synchronize()
            runs += 1
            for t, (before, after) in enumerate(zip(start, params)):
                got = cp.asnumpy(after)
                if not (np.all(np.isfinite(got)) and np.all(got != before)):
                    failures.append(f"adafactor {hyper} {dtype} tensor {t} {before.shape}")
    return runs, failures


def nvrtc_compile(arch: str, ptx: bool = False):
    """source() through CuPy's NVRTC bindings with the options CuPy passes (fastopt.cuda_build.cupy_nvrtc_options),
    as the plan's RawModule compiles it; no device needed. Returns (cubin or PTX, {name expression: lowered})."""
    from cupy.cuda import nvrtc

    options = cuda_build.cupy_nvrtc_options(arch)
    if ptx:
        options = tuple(o.replace("-arch=sm_", "-arch=compute_") for o in options)
    prog = nvrtc.createProgram(source(), f"{FAMILY}.cu", [], [])
    try:
        for name in name_expressions():
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, list(options))
        except Exception as error:  # NVRTCError: report it with the compiler's log
            raise RuntimeError(f"NVRTC rejected {FAMILY} for {arch}: {error}\n{nvrtc.getProgramLog(prog)}") from error
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in name_expressions()}
        return (nvrtc.getPTX(prog) if ptx else nvrtc.getCUBIN(prog)), lowered
    finally:
        nvrtc.destroyProgram(prog)


def check_nvrtc(archs, out=None) -> int:
    """`python -m fastopt check-nvrtc` for Adafactor (its kernels are not in fastopt.cuda_build's generated modules):
    per arch, the cubin and every name lowered, and the PTX through ptxas -v without spills where ptxas is at least
    as new as NVRTC. 0 when all passed, 1 otherwise."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    out = out or sys.stdout
    nvcc = cuda_build.find_nvcc()
    ptxas = str(Path(nvcc).parent / "ptxas") if nvcc else None
    version = cuda_build.nvrtc_version()
    ptxas_version = cuda_build._ptxas_version(ptxas) if ptxas and Path(ptxas).is_file() else None
    status = 0
    for arch in archs:
        try:
            cubin, lowered = nvrtc_compile(arch)
        except RuntimeError as error:
            print(error, file=out)
            status = 1
            continue
        bad = [n for n, low in lowered.items() if not low.startswith("_Z")]
        line = f"{FAMILY:9} {arch}: {len(lowered)} kernels, cubin {len(cubin)} bytes"
        if bad:
            line, status = line + f"  <-- FAIL: names not lowered {bad[:2]}", 1
        if version is not None and ptxas_version is not None and ptxas_version >= version:
            code, _ = nvrtc_compile(arch, ptx=True)
            with tempfile.TemporaryDirectory(prefix="fastopt-nvrtc-") as tmp:
                src = Path(tmp) / f"{FAMILY}.ptx"
                src.write_bytes(code)
                proc = subprocess.run([ptxas, f"-arch={arch}", "-v", "-o", str(Path(tmp) / "out.cubin"), str(src)],
                                      capture_output=True, text=True)
            info = cuda_build._parse_ptxas(proc.stdout + proc.stderr)
            regs = [d["registers"] for d in info.values() if d["registers"] >= 0]
            spills = sum(d["spill_stores"] + d["spill_loads"] for d in info.values())
            line += (f"; ptxas: {len(regs)} entries, registers {min(regs, default=0)}-{max(regs, default=0)}, "
                     f"spill bytes {spills}")
            if proc.returncode != 0 or spills or len(regs) != len(lowered):
                line, status = line + "  <-- FAIL", 1
        print(line, file=out)
    print(f"check-nvrtc ({FAMILY}): {'ok' if status == 0 else 'FAILED'}", file=out)
    return status


def check_kernels(archs, out=None) -> int:
    """`python -m fastopt check-kernels` for Adafactor: source() through nvcc (-cubin, -ftz=true and the device options,
    as fastopt.cuda_build.compile_family does for the generated families) per arch, one line per kernel with its
    registers and spills. 0 when every kernel compiled without spills, 1 otherwise, 2 without nvcc."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    out = out or sys.stdout
    nvcc = cuda_build.find_nvcc()
    if nvcc is None:
        print(f"check-kernels ({FAMILY}): nvcc not found", file=out)
        return 2
    status = 0
    for arch in archs:
        with tempfile.TemporaryDirectory(prefix="fastopt-nvcc-") as tmp:
            src = Path(tmp) / f"{FAMILY}.cu"
            src.write_text(source())
            proc = subprocess.run([nvcc, "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-ftz=true",
                                   *cuda_build.DEVICE_OPTIONS, "-o", str(Path(tmp) / "out.cubin"), str(src)],
                                  capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"nvcc failed for {FAMILY} {arch} (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", file=out)
            status = 1
            continue
        info = cuda_build._parse_ptxas(proc.stdout + proc.stderr)
        names = cuda_build._demangle(list(info))
        for mangled, d in sorted(info.items(), key=lambda item: names[item[0]]):
            bad = d["spill_stores"] or d["spill_loads"]
            name = names[mangled].split("(")[0].removeprefix("void ")
            print(f"{arch:6} {FAMILY:9} {name:36} regs={d['registers']:3d} "
                  f"spill={d['spill_stores']}/{d['spill_loads']} stack={d['stack']}{'  <-- FAIL' if bad else ''}",
                  file=out)
            status = max(status, int(bool(bad)))
        if len(info) != len(name_expressions()):
            print(f"{arch} {FAMILY}: ptxas reported {len(info)} kernels, expected {len(name_expressions())}  <-- FAIL",
                  file=out)
            status = 1
    print(f"check-kernels ({FAMILY}): {'ok' if status == 0 else 'FAILED'}", file=out)
    return status
