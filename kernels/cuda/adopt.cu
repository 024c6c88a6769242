// fastopt: ADOPT (optax.contrib.adopt), the kernel family "adopt"; the arithmetic of
// fastopt.optimizers.adopt.reference, operation for operation. Slots: exp_avg, exp_avg_sq. Scalars: grad_sign, lr,
// weight_decay, beta1, 1 - beta1, beta2, 1 - beta2 (on a parameter's first step beta1 = 1 and beta2 = 0: optax only
// fills exp_avg_sq then), eps, clip_value ((step - 1) ** 0.25). Flags: NESTEROV, USE_CLIPPING.
#include "common.cuh"

template <typename C, bool NESTEROV, bool USE_CLIPPING>
struct fo_adopt_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 3u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        g = g * grad_sign;
        C d = g / fo_nan_max(fo_sqrt(s[1]), eps);   // the second moment of the earlier steps only
        if (USE_CLIPPING) {   // jnp.clip: a NaN stays NaN
            const C lo = -clip_value;
            d = d < lo ? lo : d;
            d = d > clip_value ? clip_value : d;
        }
        s[1] = one_minus_beta2 * (g * g) + beta2 * s[1];
        s[0] = one_minus_beta1 * d + beta1 * s[0];
        C u = NESTEROV ? one_minus_beta1 * d + beta1 * s[0] : s[0];
        if (weight_decay != C(0)) u = u + weight_decay * p;
        p = p - lr * u;
    }
};

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as
// fastopt.optimizers.adopt._scalars computes them on the host (tests/test_capturable.py).
struct fo_adopt_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        const bool first = step == 1;   // optax: b1 -> 1 and b2 -> 0 on the first step (count == 0)
        const double b1 = first ? 1.0 : betas_0;
        const double b2 = first ? 0.0 : betas_1;
        out[0] = maximize != 0.0 ? -1.0 : 1.0;
        out[1] = lr;
        out[2] = weight_decay;
        out[3] = b1;
        out[4] = 1.0 - b1;
        out[5] = b2;
        out[6] = 1.0 - b2;
        out[7] = eps;
        out[8] = pow((double)(step - 1), 0.25);   // optax's clip value count ** 0.25, count = step - 1
    }
};
