// fastopt: Adam and AdamW (torch.optim.Adam / AdamW), the kernel family "adam"; the arithmetic of
// fastopt.reference.adam, operation for operation. Slots: exp_avg, exp_avg_sq, max_exp_avg_sq. Scalars: lr,
// grad_sign, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size (lr / bias_correction1),
// bias_correction2_sqrt, decay_factor (1 - lr * weight_decay). Flags: AMSGRAD (max_exp_avg_sq active), DECOUPLED
// (AdamW: the parameter shrinks by decay_factor, the gradient is left alone).
#include "common.cuh"

template <typename C, bool AMSGRAD, bool DECOUPLED>
struct fo_adam_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = AMSGRAD ? 7u : 3u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        C d;
        if (DECOUPLED) {
            if (weight_decay != C(0)) p = p * decay_factor;
            d = g * grad_sign;
        } else {
            d = fo_direction(p, g, grad_sign, weight_decay);
        }
        s[0] = fo_lerp(s[0], d, one_minus_beta1);
        s[1] = beta2 * s[1] + (one_minus_beta2 * d) * d;  // torch's addcmul order: d * d alone overflows sooner
        C second = s[1];
        if (AMSGRAD) {
            s[2] = fo_nan_max(s[2], s[1]);
            second = s[2];
        }
        const C denom = fo_sqrt(second) / bias_correction2_sqrt + eps;
        p = p - (step_size * s[0]) / denom;  // torch's addcdiv order
    }
};
