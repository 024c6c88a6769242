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
