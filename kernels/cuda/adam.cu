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
        const C d = fo_decayed_direction<DECOUPLED>(p, g, grad_sign, weight_decay, decay_factor);
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

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as
// fastopt.specs._adam_scalars computes them on the host (pow is CUDA's on the device: within 2 ulp of the C library's,
// see tests/test_capturable.py).
struct fo_adam_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        const double t = (double)step;
        const double bias_correction1 = 1.0 - pow(betas_0, t);
        const double bias_correction2 = 1.0 - pow(betas_1, t);
        out[0] = lr;
        out[1] = maximize != 0.0 ? -1.0 : 1.0;
        out[2] = weight_decay;
        out[3] = betas_0;
        out[4] = 1.0 - betas_0;
        out[5] = betas_1;
        out[6] = 1.0 - betas_1;
        out[7] = eps;
        out[8] = lr / bias_correction1;
        out[9] = pow(bias_correction2, 0.5);   // ** 0.5 as torch and the host compute it, not sqrt
        out[10] = 1.0 - lr * weight_decay;
    }
};
