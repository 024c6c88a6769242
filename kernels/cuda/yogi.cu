// fastopt: Yogi (optax.yogi), the kernel family "yogi"; the arithmetic of fastopt.optimizers.yogi.reference,
// operation for operation. Slots: exp_avg, exp_avg_sq. Scalars: lr, grad_sign, weight_decay, beta1,
// one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction1, bias_correction2 (1 - beta ** step). No flags. The
// bias corrections are applied as products with their reciprocals rounded in C, as XLA compiles optax's divisions.
#include "common.cuh"

// jnp.sign: +-1 for nonzero x; +-0 and NaN unchanged.
template <typename C>
__device__ __forceinline__ C fo_yogi_sign(C x) { return x > C(0) ? C(1) : (x < C(0) ? C(-1) : x); }

template <typename C>
struct fo_yogi_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 3u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        const C d = g * grad_sign;
        s[0] = one_minus_beta1 * d + beta1 * s[0];
        const C d2 = d * d;
        s[1] = s[1] - (one_minus_beta2 * fo_yogi_sign(s[1] - d2)) * d2;
        C u = (s[0] * (C(1) / bias_correction1)) / (fo_sqrt(s[1] * (C(1) / bias_correction2)) + eps);
        if (weight_decay != C(0)) u = u + weight_decay * p;
        p = p + (-lr) * u;
    }
};

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as the spec's Python
// `scalars` computes them on the host (tests/test_capturable.py).
struct fo_yogi_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        (void)initial_accumulator_value;
        out[0] = lr;
        out[1] = maximize != 0.0 ? -1.0 : 1.0;
        out[2] = weight_decay;
        out[3] = betas_0;
        out[4] = 1.0 - betas_0;
        out[5] = betas_1;
        out[6] = 1.0 - betas_1;
        out[7] = eps;
        out[8] = 1.0 - pow(betas_0, (double)step);
        out[9] = 1.0 - pow(betas_1, (double)step);
    }
};
