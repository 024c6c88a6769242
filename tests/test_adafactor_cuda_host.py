"""kernels/cuda/adafactor.cu through the host build (g++ with kernels/cuda/host_shim.h, every thread of a launch run in
turn): the phases of a step against the NumPy reference, bit for bit, float32 and float64, with and without the
gradient transform, over shapes that reach every branch (vectors, a 0-d scalar, an empty tensor, 1x1 and size-1
edges, 3-D tensors, a row longer than a reduction chunk, many column blocks). And the source compiles with nvcc for
sm_80 and sm_90 when nvcc is here.

fastopt/backends/cuda_adafactor.py launches them on the cuda backend; its `build_tables` gives exactly `_Tables`'
tables (tests/test_adafactor_cuda_plan.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fastopt import cuda_build, reference
from fastopt.optimizers.adafactor import block_rows, eps1_of
from fastopt.specs import SPECS

SPEC = SPECS["adafactor"]
CUDA = Path(__file__).resolve().parent.parent / "kernels" / "cuda"
CHUNK = 1 << 15
D, V, LL, U = ctypes.c_double, ctypes.c_void_p, ctypes.c_longlong, ctypes.c_uint


class Scalars(ctypes.Structure):   # fo_ada_scalars
    _fields_ = [("weight", D), ("grad_sign", D), ("eps1", D), ("eps1_sq", D), ("decay", D), ("use_decay", ctypes.c_int),
                ("unscale_by", D), ("clip_coef", D), ("rho", D), ("eps2", D), ("d", D)]


def _source() -> str:
    text = (CUDA / "adafactor.cu").read_text()
    common = (CUDA / "common.cuh").read_text()
    return (CUDA / "host_shim.h").read_text() + "\n" + re.sub(r'#include "common.cuh"', lambda m: common, text, count=1)


_LIB: list = []


def _library():
    if _LIB:
        return _LIB[0]
    cxx = cuda_build.find_cxx()
    if cxx is None:
        pytest.skip("no C++ compiler (g++) for the host build")
    text = _source()
    key = hashlib.sha256((text + " ".join(cuda_build.HOST_OPTIONS)).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"fastopt-host-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / f"adafactor-{key}.so"
    if not lib.exists():
        src = folder / f"adafactor-{key}.cpp"
        src.write_text(text)
        tmp = folder / f"adafactor-{key}.{os.getpid()}.so"
        proc = subprocess.run([cxx, *cuda_build.HOST_OPTIONS, "-o", str(tmp), str(src)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        os.replace(tmp, lib)
    _LIB.append(ctypes.CDLL(str(lib)))
    return _LIB[0]


def _a(x) -> int:
    return x.ctypes.data if x.size else 0


class _Tables:
    """What a cuda plan would build once: the int64 tables of adafactor.cu and the scratch."""

    def __init__(self, params, slots):
        T = len(params)
        self.T = T
        self.tensors = np.zeros((T, 8), np.int64)
        self.ptrs = np.zeros((5, T), np.uint64)
        pass1, rows1, pass2_rows, pass2_vec, cblocks, ftensors = [], [], [], [], [], []
        row_total = cp_total = slice_total = 0
        for t, p in enumerate(params):
            self.ptrs[0, t] = _a(p)
            pass1.append([(t, a, min(CHUNK, p.size - a), 0) for a in range(0, p.size, CHUNK)])
            if p.ndim >= 2 and p.size:
                B, m, n = int(np.prod(p.shape[:-2], dtype=np.int64)), p.shape[-2], p.shape[-1]
                per = block_rows(m, n)
                nblocks = -(-m // per)
                self.tensors[t] = (p.size, B, m, n, row_total, cp_total, slice_total, nblocks)
                self.ptrs[2, t], self.ptrs[3, t] = _a(slots["row_var"][t]), _a(slots["col_var"][t])
                for r in range(B * m):
                    segs = [(r * n + c0, min(CHUNK, n - c0)) for c0 in range(0, n, CHUNK)]
                    rows1.append([(t, a, length, 1) for a, length in segs])
                    pass2_rows.append([(t, a, length, 2) for a, length in segs])
                for s in range(B):
                    for k, r0 in enumerate(range(0, m, per)):
                        cblocks.append((t, s, r0, min(r0 + per, m), cp_total + (s * nblocks + k) * n))
                ftensors.append(t)
                row_total += B * m
                cp_total += B * nblocks * n
                slice_total += B
                pass2_vec.append([])
            else:
                self.tensors[t] = (p.size, 0, 0, 0, 0, 0, 0, 0)
                if p.size:
                    self.ptrs[4, t] = _a(slots["variance"][t])
                pass2_vec.append([(t, a, min(CHUNK, p.size - a), 3) for a in range(0, p.size, CHUNK)])
        self.rows = row_total
        self.pass1 = self._segments(pass1 + rows1)            # outputs: pp per tensor, then rowsum per row
        self.pass2 = self._segments(pass2_rows + pass2_vec)   # outputs: urow per row, then uu per vector
        self.cblocks = np.array(cblocks, np.int64).reshape(-1, 5)
        self.ftensors = np.array(ftensors, np.int64)
        self.chunks = np.array([(t, a, min(1000, p.size - a)) for t, p in enumerate(params)
                                for a in range(0, p.size, 1000)], np.int64).reshape(-1, 3)
        self.colpart = np.zeros(max(cp_total, 1))
        self.rmean = np.zeros(max(slice_total, 1), params[0].dtype)
        self.factors = np.zeros(T, params[0].dtype)

    @staticmethod
    def _segments(groups):
        segs = np.array([s for g in groups for s in g], np.int64).reshape(-1, 4)
        begin = np.cumsum([0] + [len(g) for g in groups]).astype(np.int64)
        return segs, begin, np.zeros(max(len(segs), 1) * 8), np.zeros(len(groups))


def _step(lib, tab, dtype, grads, scalars, grad_scale=None, grad_factor=None, grid=3, block=32):
    """One Adafactor step through the host build's launches, in the order a cuda plan would make them."""
    tag = "f32" if dtype == np.float32 else "f64"
    fn = {k: getattr(lib, f"fo_host_adafactor_{k}_{tag}") for k in
          ("lanes", "colsums", "moments", "rmean", "factors", "apply")}
    _lr, grad_sign, weight_decay, decay, weight, rho, eps1, eps2, d = scalars
    e1 = eps1_of(eps1, dtype)
    s = Scalars(weight, grad_sign, e1, e1 * e1, decay, int(weight_decay != 0),
                1.0 if grad_scale is None else grad_scale, 1.0 if grad_factor is None else grad_factor, rho, eps2, d)
    for t, g in enumerate(grads):
        tab.ptrs[1, t] = _a(g)
    T, ptrs, tensors, ref = tab.T, _a(tab.ptrs), _a(tab.tensors), ctypes.byref(s)
    launches = []

    def run(f, *args):
        launches.append(f(*args, grid, block))

    segs, begin, lanes, out1 = tab.pass1
    run(fn["lanes"], _a(segs), len(segs), tensors, ptrs, T, _a(tab.rmean), ref, _a(lanes))
    run(lib.fo_host_adafactor_segsum, _a(begin), len(out1), _a(lanes), _a(out1))
    run(fn["colsums"], _a(tab.cblocks), len(tab.cblocks), tensors, ptrs, T, ref, _a(tab.colpart))
    rowsum = out1[T:]
    run(fn["moments"], _a(tab.ftensors), len(tab.ftensors), tensors, ptrs, T, _a(rowsum), _a(tab.colpart), ref)
    run(fn["rmean"], _a(tab.ftensors), len(tab.ftensors), tensors, ptrs, T, ref, _a(tab.rmean))
    segs2, begin2, lanes2, out2 = tab.pass2
    run(fn["lanes"], _a(segs2), len(segs2), tensors, ptrs, T, _a(tab.rmean), ref, _a(lanes2))
    run(lib.fo_host_adafactor_segsum, _a(begin2), len(out2), _a(lanes2), _a(out2))
    urow, uu_vec = out2[:tab.rows], out2[tab.rows:]
    run(fn["factors"], tensors, T, _a(out1), _a(urow) if urow.size else _a(out2), _a(uu_vec), ref, _a(tab.factors))
    run(fn["apply"], _a(tab.chunks), len(tab.chunks), tensors, ptrs, T, _a(tab.rmean), _a(tab.factors), ref)
    assert launches == [0] * len(launches)


def _declare(lib):
    for tag in ("f32", "f64"):
        sigs = {"lanes": [V, LL, V, V, LL, V, V, V, U, U], "colsums": [V, LL, V, V, LL, V, V, U, U],
                "moments": [V, LL, V, V, LL, V, V, V, U, U], "rmean": [V, LL, V, V, LL, V, V, U, U],
                "factors": [V, LL, V, V, V, V, V, U, U], "apply": [V, LL, V, V, LL, V, V, V, U, U]}
        for k, argtypes in sigs.items():
            f = getattr(lib, f"fo_host_adafactor_{k}_{tag}")
            f.argtypes, f.restype = argtypes, ctypes.c_int
    lib.fo_host_adafactor_segsum.argtypes = [V, LL, V, V, U, U]
    lib.fo_host_adafactor_segsum.restype = ctypes.c_int


SHAPES = [(7,), (), (0,), (1, 1), (1,), (2, 5, 6), (3, 1, 4, 9), (200, 37), (2, CHUNK + 5), (CHUNK + 9,)]
CONFIGS = [({}, None, None), ({"lr": 0.05, "weight_decay": 0.1, "maximize": True}, 512.0, 0.37),
           ({"lr": 0.3, "beta2_decay": -0.5, "eps": (1e-3, 0.1), "d": 1.5}, None, None)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_host_build_matches_the_reference_bit_for_bit(config, dtype):
    lib = _library()
    _declare(lib)
    overrides, grad_scale, grad_factor = CONFIGS[config]
    hyper = SPEC.normalize({**SPEC.defaults, **overrides})
    rng = np.random.default_rng(config)
    params0 = [np.array(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
    want = [p.copy() for p in params0]
    got = [p.copy() for p in params0]
    want_slots = [reference.new_slots(SPEC, p, hyper) for p in want]
    got_slots = [reference.new_slots(SPEC, p, hyper) for p in got]
    per_slot = {s.name: [row[k] for row in got_slots] for k, s in enumerate(SPEC.slots)}
    tab = _Tables(got, per_slot)
    for step in range(1, 4):
        grads = [np.array(rng.standard_normal(s) * 3.0, dtype=dtype) for s in SHAPES]
        if grad_scale is not None:
            grads = [np.array(g * dtype(grad_scale), dtype=dtype) for g in grads]
        scalars = SPEC.scalars(hyper, step)
        with np.errstate(all="ignore"):
            reference.run(SPEC, want, grads, [[row[k] for row in want_slots] for k in range(3)], scalars, (),
                          grad_scale, grad_factor)
        _step(lib, tab, dtype, grads, scalars, grad_scale, grad_factor)
        for i, (a, b) in enumerate(zip(got, want)):
            np.testing.assert_array_equal(a, b, err_msg=f"step {step}: param {i} {SHAPES[i]}")
        for i, (a_row, b_row) in enumerate(zip(got_slots, want_slots)):
            for a, b, slot in zip(a_row, b_row, SPEC.slots):
                if b is None:
                    assert a is None
                else:
                    np.testing.assert_array_equal(a, b, err_msg=f"step {step}: {slot.name} of {i}")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_compiles_for_the_device_without_spills(arch, tmp_path):
    nvcc = cuda_build.find_nvcc() or shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc")
    text = re.sub(r'#include "common.cuh"', lambda m: (CUDA / "common.cuh").read_text(),
                  (CUDA / "adafactor.cu").read_text(), count=1)
    src = tmp_path / "adafactor.cu"
    src.write_text(text)
    proc = subprocess.run([nvcc, f"-arch={arch}", "--fmad=false", "-c", "-Xptxas", "-v", "-o",
                           str(tmp_path / "adafactor.o"), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    spills = [line for line in proc.stderr.splitlines() if "spill" in line and not re.search(r"\b0 bytes spill", line)]
    assert not spills, spills
