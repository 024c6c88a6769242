// fastopt: Adamax (torch.optim.Adamax), the kernel family "adamax"; the arithmetic of
// fastopt.optimizers.adamax.reference, operation for operation. Slots: exp_avg, exp_inf. Scalars: grad_sign,
// weight_decay, one_minus_beta1, beta2, eps, clr (lr / bias_correction1).
#include "common.cuh"

template <typename C>
struct fo_adamax_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 3u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        const C d = fo_direction(p, g, grad_sign, weight_decay);
        s[0] = fo_lerp(s[0], d, one_minus_beta1);
        const C magnitude = d < C(0) ? -d : d;  // |d| by a comparison, as fo_nan_max: no math header needed
        s[1] = fo_nan_max(s[1] * beta2, magnitude + eps);  // torch.maximum(exp_inf * beta2, |d| + eps)
        p = p - (clr * s[0]) / s[1];  // torch's addcdiv order
    }
};

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as the spec's Python
// `scalars` computes them on the host (tests/test_capturable.py).
struct fo_adamax_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        out[0] = maximize != 0.0 ? -1.0 : 1.0;
        out[1] = weight_decay;
        out[2] = 1.0 - betas_0;
        out[3] = betas_1;
        out[4] = eps;
        out[5] = lr / (1.0 - pow(betas_0, (double)step));
    }
};
