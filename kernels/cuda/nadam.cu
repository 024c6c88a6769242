// fastopt: NAdam (torch.optim.NAdam), the kernel family "nadam"; the arithmetic of fastopt.optimizers.nadam.reference,
// operation for operation. Slots: exp_avg, exp_avg_sq. Scalars: grad_sign, weight_decay, decay_factor
// (1 - lr * weight_decay), one_minus_beta1, beta2, one_minus_beta2, bias_correction2, eps, grad_step and exp_avg_step
// (the two addcdiv values, from the param's mu_product, host state). Flags: DECOUPLED (decoupled_weight_decay).
#include "common.cuh"

template <typename C, bool DECOUPLED>
struct fo_nadam_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 3u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        const C d = fo_decayed_direction<DECOUPLED>(p, g, grad_sign, weight_decay, decay_factor);
        s[0] = fo_lerp(s[0], d, one_minus_beta1);
        s[1] = beta2 * s[1] + (one_minus_beta2 * d) * d;  // torch's addcmul order: d * d alone overflows sooner
        const C denom = fo_sqrt(s[1] / bias_correction2) + eps;
        p = p + (grad_step * d) / denom;  // torch's two addcdivs, in its order
        p = p + (exp_avg_step * s[0]) / denom;
    }
};
