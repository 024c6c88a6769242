"""How close a fused kernel must come to the NumPy reference, per dtype, in one place.

The kernels perform the reference's operations in the same order. The `cpu` kernels are compiled without fastmath
and the CUDA kernels with --fmad=false, so neither contracts a*b+c: the cpu backend and the host build of the CUDA
kernels match the reference bit for bit (EXACT_BACKENDS; measured: 0 differing elements over 30 random
configurations per optimizer and dtype, 20 steps). On a GPU the one remaining difference is CuPy's -ftz, which
flushes float32 denormals to zero; 16 eps covers that and any contraction a compiler might still do (with Numba's
fastmath on, the worst case measured here was 2.4 eps), while a wrong formula shows up as thousands of eps.

`atol` is relative to the array's scale, max(1, max|x|) (the arrays in the tests are of order 1): a state such as a
momentum buffer that sums terms of size ~10 and cancels to ~0.01 carries the rounding error of the terms, not of
the result (seen: RMSprop's momentum buffer in float32, error 2.6e-6 on a value of 1e-4 in an array whose largest
element is 13.5, with fastmath on).
"""

import numpy as np

EXACT_BACKENDS = {"cpu"}
ULPS = 16
TOLERANCES = {
    np.dtype(np.float64): dict(rtol=ULPS * np.finfo(np.float64).eps, atol=ULPS * np.finfo(np.float64).eps),
    np.dtype(np.float32): dict(rtol=ULPS * np.finfo(np.float32).eps, atol=ULPS * np.finfo(np.float32).eps),
}


def assert_close(actual, desired, dtype, err_msg="", backend=None):
    """assert_allclose with this module's tolerances, atol scaled by the array's magnitude; NaNs must match.
    Bit for bit for EXACT_BACKENDS."""
    if backend in EXACT_BACKENDS:
        np.testing.assert_array_equal(actual, desired, err_msg=f"{err_msg}: {backend} must match bit for bit")
        return
    tol = TOLERANCES[np.dtype(dtype)]
    desired = np.asarray(desired)
    finite = desired[np.isfinite(desired)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(desired), err_msg=f"{err_msg}: NaN positions differ")
    np.testing.assert_allclose(actual, desired, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=err_msg)


# ---- the NumPy reference against torch.optim (tests/test_golden.py) --------------------------------------------------
# An element passes when |reference - torch| <= rtol * |torch| + atol * scale + subnormal, with inf and NaN where
# torch has them and nowhere else. The reference performs torch's operations in torch's order on the same float64
# host scalars cast to the array's dtype, so all that differs is rounding inside an operation: torch's CPU kernels
# evaluate `add(alpha=)`, `addcmul` and `lerp` as one fused multiply-add (vector loop and scalar tail alike, measured
# on torch 2.13, AVX512), where NumPy rounds product and sum separately. That is about one rounding per operation;
# none of these updates amplifies it (Adam-like denominators sqrt(v)/c + eps halve a relative error in v), and over a
# dozen steps the differences mostly cancel. Observed maxima of |diff| / (eps * (|torch| + scale)) over every
# parameter and state of every golden file (torch 2.13, AVX512), scale as below: O(1) files 1.84 in float64 (an SGD
# momentum buffer) and 1.73 in float32 (an Adagrad sum of squares); extreme files 0.98 in float64 and 1.44 in
# float32 (a centred RMSprop parameter). 4 eps leaves 2x headroom for a CPU whose vector width splits FMA and scalar
# lanes differently; anything beyond it is a semantic difference, not rounding -- find it, do not widen these.
# `scale` serves elements near zero, whose values are differences of terms of the array's magnitude (a momentum
# average that cancels, a parameter crossing zero): 1 for the O(1) files (N(0, 1) parameters, gradients of scale <= 3,
# states between ~1e-3 and ~20: arrays of order 1 by construction), and the array's largest finite |value| for the
# extreme files, whose arrays each have one magnitude far from 1 (gradients within a factor 4 of 1e-36 ... 1e200).
# `subnormal`: below the smallest normal number a rounding is absolute, half a subnormal step, so a fused and an
# unfused evaluation may differ by a step there whatever the relative size.
GOLDEN_ULPS = 4
GOLDEN_TOLERANCES = {
    np.dtype(t): dict(rtol=GOLDEN_ULPS * np.finfo(t).eps, atol=GOLDEN_ULPS * np.finfo(t).eps,
                      subnormal=GOLDEN_ULPS * float(np.finfo(t).smallest_subnormal))
    for t in (np.float64, np.float32)   # float64 rtol 8.9e-16, float32 4.8e-7
}


def golden_tolerance(dtype, optimizer=None) -> dict:
    """GOLDEN_TOLERANCES for `dtype`, or the optimizer's own in its record (fastopt.records: Record.golden_tolerance,
    which must say why), for an oracle that rounds differently from torch.optim."""
    if optimizer is not None:
        from fastopt.records import RECORDS
        override = RECORDS[optimizer].golden_tolerance
        if override is not None and np.dtype(dtype).name in override.ulps:
            if not override.reason.strip():
                raise ValueError(f"{optimizer}: a golden tolerance override needs its reason")
            ulps, eps = override.ulps[np.dtype(dtype).name], np.finfo(dtype)
            return dict(rtol=ulps * eps.eps, atol=ulps * eps.eps, subnormal=ulps * float(eps.smallest_subnormal))
    return GOLDEN_TOLERANCES[np.dtype(dtype)]


def golden_mismatch(actual, expected, dtype, extreme, optimizer=None):
    """None when `actual` (the reference) passes against torch's `expected` under GOLDEN_TOLERANCES (or the
    optimizer's override), else a message naming the worst element. Non-finite values must sit exactly where torch
    has them, with torch's sign of inf."""
    tol = golden_tolerance(dtype, optimizer)
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return f"shape {a.shape} != torch's {e.shape}"
    finite = np.isfinite(e)
    if not extreme and not finite.all():
        return "torch's values are not finite in a file of O(1) values"
    placed = (np.isnan(a) == np.isnan(e)) & (np.isinf(a) == np.isinf(e)) & (~np.isinf(e) | (a == e))
    if not placed.all():
        i = np.unravel_index(np.argmin(placed), a.shape)
        return f"reference {a[i]!r} vs torch {e[i]!r} at {i}: inf/NaN positions differ"
    scale = (float(np.abs(e[finite]).max()) if finite.any() else 0.0) if extreme else 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.where(finite, np.abs(a - e), 0.0)
        bound = tol["rtol"] * np.abs(np.where(finite, e, 0.0)) + tol["atol"] * scale + tol["subnormal"]
    if not np.all(err <= bound):   # also fails on NaN
        i = np.unravel_index(np.nanargmax(np.where(np.isnan(err), np.inf, err - bound)), err.shape)
        return (f"reference {a[i]!r} vs torch {e[i]!r} at {i}: |diff| {err[i]:.3g} > {bound[i]:.3g} (rtol "
                f"{tol['rtol']:.3g}, atol {tol['atol']:.3g} x scale {scale:.3g}, subnormal {tol['subnormal']:.3g})")
    return None
