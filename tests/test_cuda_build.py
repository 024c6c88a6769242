"""CUDA without a GPU: every kernel instantiation the library can launch compiles with nvcc for sm_80 and sm_90,
ptxas reports no spills and registers within a budget (one nvcc call per family and architecture, in parallel).
Skipped where nvcc is missing. Also: the sources CuPy compiles are self-contained, and (where CuPy's NVRTC bindings
load) NVRTC accepts the same source, options and name expressions that the cuda backend passes to RawModule.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

try:
    import fastopt  # noqa: F401
except ImportError:  # a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastopt import cuda_build
from fastopt.specs import SPECS

ARCHS = ("sm_80", "sm_90")
# Registers per thread, at most: what keeps two blocks of BLOCK threads resident per SM (65536 registers on sm_80 and
# sm_90), which keeps enough 16-byte loads in flight for these memory-bound kernels; beyond it, look at the kernel
# again. Measured (nvcc 13.0): 24-106, the table kernels of 4-slot families in float64 (Adan) and Adam's float64
# AMSGrad table entries the highest.
REGISTER_BUDGET = 65536 // (2 * cuda_build.BLOCK)


def test_every_spec_has_a_family_with_its_sources():
    for spec in SPECS.values():
        if any(getattr(s, "shape", None) is not None for s in spec.slots):
            assert spec.kernel not in cuda_build.FAMILIES   # shaped slots: no CUDA kernels (the backend refuses)
            continue
        fam = cuda_build.FAMILIES[spec.kernel]
        assert fam.slot_names == tuple(s.name for s in spec.slots)
        assert fam.scalar_names == spec.scalar_names and fam.flag_names == spec.flag_names
        assert fam.reductions == spec.reductions and fam.tensor_scalar_names == spec.tensor_scalar_names
        assert (cuda_build.kernel_dir() / f"{spec.kernel}.cu").is_file()


@pytest.mark.parametrize("family", cuda_build.modules())
def test_source_is_self_contained_and_hashed(family):
    text = cuda_build.source(family)
    # CuPy's cache key ignores the contents of included files: the source must include nothing of ours.
    assert not re.search(r"^\s*#\s*include", text, re.MULTILINE), "the compiled source must not #include anything"
    assert re.match(r"// fastopt kernel family \w+, source sha256 [0-9a-f]{16}\n", text)
    for kind in cuda_build.kinds(family):
        assert f"fo_{family}_{kind}" in text


def test_instantiations_cover_every_dtype_flag_and_kind():
    insts = cuda_build.instantiations()
    assert len({i.name for i in insts}) == len(insts)
    for spec in SPECS.values():
        if spec.kernel not in cuda_build.FAMILIES:
            continue
        for dtype in cuda_build.PARAM_TYPES:
            for kind in cuda_build.kinds(spec.kernel):
                name = cuda_build.kernel_name(spec.kernel, kind, dtype, spec.flags(spec.defaults))
                assert name in cuda_build.name_expressions(spec.kernel)


needs_nvcc = pytest.mark.skipif(cuda_build.find_nvcc() is None, reason="nvcc not found")


@pytest.fixture(scope="module")
def compiled():
    reports, errors = cuda_build.compile_all(ARCHS)
    return reports, errors


@needs_nvcc
def test_every_instantiation_compiles_without_spills(compiled):
    reports, errors = compiled
    assert not errors, "\n".join(errors)
    assert len(reports) == len(cuda_build.instantiations()) * len(ARCHS)
    bad = [f"{r.arch} {r.inst.name}: {r.registers} registers, spills {r.spill_stores}/{r.spill_loads}, "
           f"stack {r.stack}" for r in reports
           if r.spill_stores or r.spill_loads or r.registers > REGISTER_BUDGET or r.registers <= 0]
    assert not bad, "\n".join(bad)


@needs_nvcc
def test_check_kernels_prints_one_line_per_instantiation_and_fails_on_a_spill(compiled, monkeypatch):
    reports, errors = compiled
    monkeypatch.setattr(cuda_build, "compile_all", lambda archs, **kw: (reports, errors))
    out = io.StringIO()
    assert cuda_build.check_kernels(ARCHS, out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == len(reports) + 1 and lines[-1].endswith("ok")
    assert all("regs=" in line and "spill=0/0" in line for line in lines[:-1])

    spilled = list(reports)
    spilled[0] = cuda_build.KernelReport(spilled[0].arch, spilled[0].inst, spilled[0].registers, 8, 8, 8)
    monkeypatch.setattr(cuda_build, "compile_all", lambda archs, **kw: (spilled, []))
    out = io.StringIO()
    assert cuda_build.check_kernels(ARCHS, out=out) == 1
    assert "FAIL" in out.getvalue()


@needs_nvcc
def test_a_compile_error_is_reported(monkeypatch):
    monkeypatch.setattr(cuda_build, "source", lambda family: "this is not CUDA C;\n")
    reports, errors = cuda_build.compile_all(("sm_90",), families=["sgd"])
    assert not reports and errors and "nvcc failed" in errors[0]


def test_nvrtc_options_are_cupys():
    # cupy/cuda/compiler.py (13.x, 14.x): RawModule options, then -ftz=true, then -arch=sm_XX (NVRTC emits the cubin
    # when it knows the architecture), then --device-as-default-execution-space.
    opts = cuda_build.cupy_nvrtc_options("sm_90")
    assert opts[:len(cuda_build.DEVICE_OPTIONS)] == cuda_build.DEVICE_OPTIONS
    assert opts[len(cuda_build.DEVICE_OPTIONS):] == ("-ftz=true", "-arch=sm_90", "--device-as-default-execution-space")


def test_check_nvrtc_says_when_nvrtc_cannot_be_loaded(monkeypatch):
    monkeypatch.setattr(cuda_build, "nvrtc_version", lambda: None)
    out = io.StringIO()
    assert cuda_build.check_nvrtc(("sm_90",), out=out) == 2
    assert "nvidia-cuda-nvrtc" in out.getvalue()


@pytest.mark.skipif(cuda_build.nvrtc_version() is None, reason="CuPy's NVRTC bindings cannot load NVRTC here")
@pytest.mark.parametrize("family", cuda_build.modules())
def test_nvrtc_builds_what_the_backend_loads(family):
    cubin, lowered = cuda_build.nvrtc_compile(family, "sm_90")
    assert cubin[:4] == b"\x7fELF"
    assert set(lowered) == set(cuda_build.name_expressions(family))
    assert all(name.startswith("_Z") for name in lowered.values())
