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

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as the spec's Python
// `scalars` computes them on the host (tests/test_capturable.py).
struct fo_rmsprop_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        (void)step; (void)centered;
        out[0] = lr;
        out[1] = maximize != 0.0 ? -1.0 : 1.0;
        out[2] = weight_decay;
        out[3] = alpha;
        out[4] = 1.0 - alpha;
        out[5] = eps;
        out[6] = momentum;
    }
};
