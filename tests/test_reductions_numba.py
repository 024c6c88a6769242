"""The Numba reductions generated for a family's per-tensor reductions (fastopt.codegen._numba_reduce_source), every
op, against fastopt.reference.reduce_chunk bit for bit: chunk by chunk, over param, grad, a slot and the update, with
tails (sizes not a multiple of 8 or of the block), zeros, infinities and NaN. The family is LARS's kernel file with
other reductions declared, so no optimizer needs to declare them for them to be checked."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from fastopt import codegen, reference
from fastopt.kernels.cpu._common import chunk_table
from fastopt.optimizers import lars
from fastopt.specs import Reduction

OPS = ("sumsq", "sum", "maxabs", "nonfinite", "nonzero", "count")


def _reducer(reductions, tmp_path, clip):
    base = codegen.family("lars")
    fam = codegen.Family(base.name, base.slot_names, base.scalar_names, base.flag_names, base.tensor_scalar_names,
                         reductions)
    path = tmp_path / f"reducer_{abs(hash((reductions, clip)))}.py"
    path.write_text(codegen.numba_driver_source(fam, (True,), False, clip))
    spec = importlib.util.spec_from_file_location(f"fastopt._test_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.reduce


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("of", ["param", "grad", "momentum_buffer", "update"])
def test_every_op_matches_the_reference_chunk_by_chunk(of, dtype, tmp_path):
    reductions = tuple(Reduction(op, of) for op in OPS)
    clip = of == "grad"   # the gradient as the update sees it: times clip_coef
    reduce = _reducer(reductions, tmp_path, clip)
    rng = np.random.default_rng(5)
    sizes = [1, 7, 8, 255, 257, (1 << 15) + 13, 0, 3000]
    arrays = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(3)]   # p, g, momentum_buffer
    arrays[0][3][[5, 100]] = 0.0
    arrays[1][4][17] = np.inf
    arrays[2][5][40000 % sizes[5]] = np.nan
    arrays[0][7][::3] = 0.0
    arrays[1][1][-1] = -np.inf
    chunks = chunk_table(sizes)
    table = np.array([[a.ctypes.data for a in row] for row in arrays], dtype=np.int64)
    scalars = (0.5, -1.0, 0.01, 0.9, 1e-3, 0.0, 1.0)   # lars's: lr, grad_sign (maximize), weight_decay, ...
    cast = np.dtype(dtype).type
    coef = cast(0.75) if clip else cast(1.0)
    scratch = np.empty((len(chunks), len(reductions), codegen.REDUCE_BLOCK))
    out = np.full((len(chunks), len(reductions)), -7.0)
    with np.errstate(all="ignore"):
        reduce.serial(chunks, table, *map(cast, scalars), False, cast(1.0), coef, scratch, out)
        for c, (t, a, b) in enumerate(chunks.tolist()):
            p, g, m = (row[t][a:b] for row in arrays)
            g = g * coef if clip else g
            x = {"param": p, "grad": g, "momentum_buffer": m,
                 "update": lars.update_value(p, g, m, *map(cast, scalars), False)}[of]
            for r, op in enumerate(OPS):
                want = float(x.size) if op == "count" else reference.reduce_chunk(x, op)
                assert out[c, r] == want or (np.isnan(out[c, r]) and np.isnan(want)), (c, op, out[c, r], want)
    again = np.empty_like(out)
    with np.errstate(all="ignore"):
        reduce.parallel(chunks, table, *map(cast, scalars), False, cast(1.0), coef, scratch, again)
    np.testing.assert_array_equal(again, out)
