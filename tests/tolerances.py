"""How close a fused kernel must come to the NumPy reference, per dtype, in one place.

The kernels and the reference perform the same operations in the same order, so differences come only from
contraction of a*b+c into one fused multiply-add (Numba's `contract` fastmath flag, CUDA's default -fmad), from
x/y computed as x*(1/y) ('arcp'), and from -ftz (CuPy flushes float32 denormals to zero). Each is at most one
rounding per operation: a few ulp per step, compounded over the 10-20 steps a test takes. Adam-like optimizers divide
by sqrt(v) + eps, which halves a relative error in v rather than amplifying it, so `rtol` is a small multiple of the
dtype's epsilon.

`atol` is relative to the array's scale, max(1, max|x|) (the arrays in the tests are of order 1): a state such as a momentum buffer that sums terms of
size ~10 and cancels to ~0.01 carries the rounding error of the terms, not of the result (seen: RMSprop's momentum
buffer in float32, error 2.6e-6 on a value of 1e-4 in an array whose largest element is 13.5).
"""

import numpy as np

# Measured here (cpu backend vs reference, 30 random configurations per optimizer and dtype, 20 steps, tensors of
# 4097 and 33 elements): the worst |fused - reference| / (|reference| + scale) was 2.4 eps (AdamW, float32) and
# 2.3 eps (float64). 16 eps leaves room for the CUDA build (FMA contraction, -ftz) without hiding a wrong formula:
# a missing term or a swapped order of operations shows up as thousands of eps.
ULPS = 16
TOLERANCES = {
    np.dtype(np.float64): dict(rtol=ULPS * np.finfo(np.float64).eps, atol=ULPS * np.finfo(np.float64).eps),
    np.dtype(np.float32): dict(rtol=ULPS * np.finfo(np.float32).eps, atol=ULPS * np.finfo(np.float32).eps),
}


def assert_close(actual, desired, dtype, err_msg=""):
    """assert_allclose with this module's tolerances, atol scaled by the array's magnitude; NaNs must match."""
    tol = TOLERANCES[np.dtype(dtype)]
    desired = np.asarray(desired)
    finite = desired[np.isfinite(desired)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(desired), err_msg=f"{err_msg}: NaN positions differ")
    np.testing.assert_allclose(actual, desired, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=err_msg)
