// fastopt: RMSprop (torch.optim.RMSprop), the kernel family "rmsprop"; the arithmetic of fastopt.reference.rmsprop,
// operation for operation. Slots: square_avg, momentum_buffer, grad_avg. Scalars: lr, grad_sign, weight_decay, alpha,
// one_minus_alpha, eps, momentum. Flags: CENTERED (grad_avg active), USE_MOMENTUM (momentum_buffer active).
#include "common.cuh"

template <typename C, bool CENTERED, bool USE_MOMENTUM>
struct fo_rmsprop_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 1u | (USE_MOMENTUM ? 2u : 0u) | (CENTERED ? 4u : 0u);

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        const C d = fo_direction(p, g, grad_sign, weight_decay);
        s[0] = alpha * s[0] + (one_minus_alpha * d) * d;  // torch's addcmul order: d * d alone overflows sooner
        C avg;
        if (CENTERED) {
            s[2] = fo_lerp(s[2], d, one_minus_alpha);
            C variance = s[0] - s[2] * s[2];
            // torch fuses s - mean * mean: with s = +inf and mean finite it gets inf, never inf - inf = NaN.
            // Comparisons only (x - x is 0 for finite x, NaN for inf and NaN), as fo_nan_max: no math header needed.
            if (s[0] > C(0) && s[0] - s[0] != C(0) && s[2] - s[2] == C(0)) variance = s[0];
            avg = fo_sqrt(variance) + eps;
        } else {
            avg = fo_sqrt(s[0]) + eps;
        }
        if (USE_MOMENTUM) {
            s[1] = momentum * s[1] + d / avg;
            p = p - lr * s[1];
        } else {
            p = p - (lr * d) / avg;  // torch's addcdiv order
        }
    }
};
