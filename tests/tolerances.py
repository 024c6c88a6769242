"""How close a fused kernel must come to the NumPy reference, per dtype, in one place.

The kernels and the reference perform the same operations in the same order, so differences come only from
contraction of a*b+c into one fused multiply-add (Numba's `contract` fastmath flag, CUDA's default -fmad), from
x/y vs x*(1/y), and from -ftz (CuPy flushes float32 denormals to zero). Each of those is at most one rounding per
operation: a few ulp per step, compounded over the 10-20 steps a test takes. Adam-like optimizers divide by
sqrt(v) + eps, which amplifies a relative error in v by at most 1/2 and does not amplify it beyond that, so the
relative tolerance is a small multiple of the dtype's epsilon. The absolute tolerance covers elements that cross
zero (relative error is meaningless there) and flushed denormals.
"""

import numpy as np

TOLERANCES = {
    # float64: eps 2.2e-16; a few ulp per op, ~10 ops a step, 20 steps -> well under 1e-12 relative.
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-14),
    # float32: eps 1.2e-7; the same budget in float32 ulps.
    np.dtype(np.float32): dict(rtol=2e-5, atol=1e-6),
}
