"""How close a fused kernel must come to the NumPy reference, per dtype, in one place.

The kernels and the reference perform the same operations in the same order, so differences come only from
contraction of a*b+c into one fused multiply-add (Numba's `contract` fastmath flag, CUDA's default -fmad), from
x/y computed as x*(1/y) ('arcp'), and from -ftz (CuPy flushes float32 denormals to zero). Each is at most one
rounding per operation: a few ulp per step, compounded over the 10-20 steps a test takes. Adam-like optimizers divide
by sqrt(v) + eps, which halves a relative error in v rather than amplifying it, so `rtol` is a small multiple of the
dtype's epsilon.

`atol` is relative to the array's scale, max(1, max|x|): a state such as a momentum buffer that sums terms of
size ~10 and cancels to ~0.01 carries the rounding error of the terms, not of the result (seen: RMSprop's momentum
buffer in float32, error 2.6e-6 on a value of 1e-4 in an array whose largest element is 13.5).
"""

import numpy as np

TOLERANCES = {
    # float64: eps 2.2e-16.
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-14),
    # float32: eps 1.2e-7.
    np.dtype(np.float32): dict(rtol=2e-5, atol=1e-6),
}


def assert_close(actual, desired, dtype, err_msg=""):
    """assert_allclose with this module's tolerances, atol scaled by the array's magnitude; NaNs must match."""
    tol = TOLERANCES[np.dtype(dtype)]
    desired = np.asarray(desired)
    finite = desired[np.isfinite(desired)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(desired), err_msg=f"{err_msg}: NaN positions differ")
    np.testing.assert_allclose(actual, desired, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=err_msg)
