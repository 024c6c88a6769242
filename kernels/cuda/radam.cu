// fastopt: RAdam (torch.optim.RAdam), the kernel family "radam"; the arithmetic of fastopt.optimizers.radam.reference,
// operation for operation. Slots: exp_avg, exp_avg_sq. Scalars: grad_sign, weight_decay, decay_factor
// (1 - lr * weight_decay), one_minus_beta1, beta2, one_minus_beta2, bias_correction1, lr, eps, bias_correction2_sqrt,
// rect (the variance rectification term) and rectified (1 when rho_t > 5, else 0; the same for every element of a
// step). Flags: DECOUPLED (decoupled_weight_decay: the parameter shrinks by decay_factor, the gradient is left alone).
#include "common.cuh"

template <typename C, bool DECOUPLED>
struct fo_radam_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 3u;

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
        C update = (s[0] / bias_correction1) * lr;
        if (rectified != C(0)) {
            // torch: bias_correction2 ** 0.5 / (sqrt(v) + eps) is reciprocal(sqrt(v) + eps) * bias_correction2 ** 0.5
            const C adaptive = (C(1) / (fo_sqrt(s[1]) + eps)) * bias_correction2_sqrt;
            update = (update * adaptive) * rect;
        }
        p = p - update;
    }
};
