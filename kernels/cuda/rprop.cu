// fastopt: Rprop (torch.optim.Rprop), the kernel family "rprop"; the arithmetic of fastopt.optimizers.rprop.reference,
// operation for operation. Slots: prev, step_size. Scalars: grad_sign, etaminus, etaplus, step_size_min,
// step_size_max.
#include "common.cuh"

template <typename C>
struct fo_rprop_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 3u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        C d = g * grad_sign;
        // the sign of grad * prev as rounded in C: an underflow to 0 counts as 0 (CuPy's -ftz flushes float32
        // subnormal products to 0 as well, where the host build and torch keep their sign)
        const C agreement = d * s[0];
        const C factor = agreement > C(0)    ? etaplus
                         : agreement < C(0)  ? etaminus
                         : agreement == C(0) ? C(1)
                                             : agreement;  // NaN stays NaN
        C size = s[1] * factor;
        size = size < step_size_min ? step_size_min : size;  // torch.clamp: NaN stays NaN
        size = step_size_max < size ? step_size_max : size;
        s[1] = size;
        if (factor == etaminus) d = C(0);  // torch: grad[sign.eq(etaminus)] = 0
        const C sign = C(d > C(0)) - C(d < C(0));  // torch.sign: 0 for NaN, and +0 for -0.0
        p = p - sign * size;
        s[0] = d;
    }
};

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as the spec's Python
// `scalars` computes them on the host (tests/test_capturable.py).
struct fo_rprop_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        (void)step; (void)lr;
        out[0] = maximize != 0.0 ? -1.0 : 1.0;
        out[1] = etas_0;
        out[2] = etas_1;
        out[3] = step_sizes_0;
        out[4] = step_sizes_1;
    }
};
