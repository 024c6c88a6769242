"""The generated boilerplate (fastopt.codegen), the registries (fastopt.specs.register, fastopt.records) and the one
reference driver (fastopt.reference.run)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import fastopt
from fastopt import codegen, cuda_build, reference, specs
from fastopt.records import RECORDS, Record, register_record


def test_register_refuses_a_second_spec_of_the_same_name_and_non_specs():
    before = dict(specs.SPECS)
    with pytest.raises(ValueError, match="already registered"):
        specs.register(specs.ADAM)
    with pytest.raises(TypeError, match="OptimizerSpec"):
        specs.register("adam")
    with pytest.raises(ValueError, match="already registered"):
        register_record(RECORDS["adam"])
    with pytest.raises(TypeError, match="Record"):
        register_record({"optimizer": "x"})
    assert specs.SPECS == before


def test_register_refuses_names_the_generated_code_uses():
    spec = specs.OptimizerSpec(name="clash", class_name="Clash", kernel="clash", hypers=(), slots=(),
                               scalar_names=("lr", "unscale_by"), scalars=specs._adam_scalars)
    with pytest.raises(ValueError, match="unscale_by"):
        specs.register(spec)
    twice = specs.OptimizerSpec(name="twice", class_name="Twice", kernel="twice", hypers=(),
                                slots=(specs.Slot("lr"),), scalar_names=("lr",), scalars=specs._adam_scalars)
    with pytest.raises(ValueError, match="must all differ"):
        specs.register(twice)
    assert "clash" not in specs.SPECS and "twice" not in specs.SPECS


def test_every_record_is_consistent_with_its_spec():
    assert set(RECORDS) == set(specs.SPECS)
    for name, record in RECORDS.items():
        spec = specs.SPECS[name]
        assert isinstance(record, Record)
        for overrides in (record.busy, *record.golden.values(), *record.extreme.values(), record.cuda_grid):
            hyper = {**spec.defaults, **{k: 1e-8 if v == "tiny" else v for k, v in overrides.items()}}
            spec.validate(hyper)
        for case in record.bench:
            spec.validate({**spec.defaults, **case.hyper})
        for entry in record.convergence:
            assert isinstance(getattr(fastopt.optim, entry.cls), type)


def test_driver_file_is_reused_and_follows_the_kernel_source(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTOPT_CACHE_DIR", str(tmp_path / "cache"))
    first = codegen.numba_driver_file("adam", (True, True, False))
    assert first.parent == tmp_path / "cache" / "numba-drivers"
    stamp = first.stat().st_mtime_ns
    assert codegen.numba_driver_file("adam", (True, True, False)) == first   # same text: same file, untouched
    assert first.stat().st_mtime_ns == stamp
    assert codegen.numba_driver_file("adam", (True, True, True)) != first    # another set of active slots
    text = first.read_text()
    assert "max_exp_avg_sq[i]" not in text and "exp_avg_sq[i] = exp_avg_sq_i" in text
    # An edit to the family's element file gives a new file: Numba's cache does not follow calls across files.
    copy = tmp_path / "cpu"
    shutil.copytree(codegen._cpu_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "adam.py").write_text((copy / "adam.py").read_text() + "\n# edited\n")
    monkeypatch.setattr(codegen, "_cpu_dir", lambda: copy)
    assert codegen.numba_driver_file("adam", (True, True, False)) != first
    with pytest.raises(ValueError, match="slot activity"):
        codegen.numba_driver_file("adam", (True,))


@pytest.mark.parametrize("family", sorted(cuda_build.FAMILIES))
def test_cuda_source_declares_what_the_declaration_says(family):
    fam = cuda_build.FAMILIES[family]
    text = cuda_build.source(family)
    members = f"#define FO_OP_MEMBERS static constexpr int NSLOTS = {max(len(fam.slot_names), 1)}; " \
              f"C {', '.join(fam.scalar_names)};"
    assert members in text
    assert fam.kernel_scalars == (*fam.scalar_names, "unscale_by", "clip_coef")   # the gradient transform last
    scalars = ", ".join(f"C {s}" for s in fam.kernel_scalars)
    if fam.reductions:
        # kernel contract v2: the reductions' pass, their combine into per-tensor scalars, and a table update reading
        # them by the chunk's tensor; no flat entry (a flat pass does not know its tensors)
        assert f"fo_{family}_flat(" not in text
        assert f"fo_{family}_reduce(FO_TABLE_PARAMS, {scalars}, double* __restrict__ fo_partials)" in text
        assert f"fo_{family}_combine(" in text
        assert f"fo_{family}_table(FO_TABLE_PARAMS, {scalars}, const C* __restrict__ fo_ts)" in text
        return
    flat_params = ", ".join(["P* param", "const P* grad", *(f"C* {s}" for s in fam.slot_names), "long long n",
                             *(f"C {s}" for s in fam.kernel_scalars)])
    assert f"fo_{family}_flat({flat_params})" in text
    assert f"fo_{family}_table(FO_TABLE_PARAMS, {scalars})" in text


def test_reference_driver_runs_a_family_over_tensors_and_refuses_unknown_ones():
    spec = specs.SPECS["adam"]
    hyper = spec.normalize({**spec.defaults, "amsgrad": False})
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n) for n in (3, 5)]
    grads = [rng.standard_normal(n) for n in (3, 5)]
    slots = [[np.zeros(3), np.zeros(5)], [np.zeros(3), np.zeros(5)], None]
    want = [p.copy() for p in params]
    for i in range(2):
        reference.adam(want[i], grads[i], np.zeros_like(want[i]), np.zeros_like(want[i]), None,
                       *spec.scalars(hyper, 1), *spec.flags(hyper))
    reference.run(spec, params, grads, slots, spec.scalars(hyper, 1), spec.flags(hyper))
    for got, expected in zip(params, want):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(KeyError, match="no reference function"):
        reference.function("no_such_family")
