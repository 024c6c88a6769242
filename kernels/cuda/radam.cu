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
        const C d = fo_decayed_direction<DECOUPLED>(p, g, grad_sign, weight_decay, decay_factor);
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

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as
// fastopt.optimizers.radam._scalars computes them on the host, operation for operation (tests/test_capturable.py).
// rho_t and the rectification term are float64 arithmetic on the step count; rect is computed only when rectified,
// as in Python (rho_inf - 4 may be 0 for a beta2 that never rectifies).
struct fo_radam_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        const double t = (double)step;
        const double beta2_t = pow(betas_1, t);
        const double bias_correction1 = 1.0 - pow(betas_0, t);
        const double bias_correction2 = 1.0 - beta2_t;
        const double rho_inf = 2.0 / (1.0 - betas_1) - 1.0;
        const double rho_t = rho_inf - 2.0 * t * beta2_t / bias_correction2;
        const bool rectified = rho_t > 5.0;
        const double rect = rectified ? pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                            ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 0.5)   // ** 0.5, not sqrt
                                      : 1.0;
        out[0] = maximize != 0.0 ? -1.0 : 1.0;
        out[1] = weight_decay;
        out[2] = 1.0 - lr * weight_decay;
        out[3] = 1.0 - betas_0;
        out[4] = betas_1;
        out[5] = 1.0 - betas_1;
        out[6] = bias_correction1;
        out[7] = lr;
        out[8] = eps;
        out[9] = pow(bias_correction2, 0.5);
        out[10] = rect;
        out[11] = rectified ? 1.0 : 0.0;
    }
};
