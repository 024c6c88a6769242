// fastopt: Lion (optax.lion), the kernel family "lion"; the arithmetic of fastopt.optimizers.lion.reference,
// operation for operation. Slot: exp_avg. Scalars: lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2,
// one_minus_beta2. No flags.
#include "common.cuh"

// jnp.sign: +-1 for nonzero x; +-0 and NaN unchanged.
template <typename C>
__device__ __forceinline__ C fo_lion_sign(C x) { return x > C(0) ? C(1) : (x < C(0) ? C(-1) : x); }

template <typename C>
struct fo_lion_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 1u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        const C d = g * grad_sign;
        C u = fo_lion_sign(one_minus_beta1 * d + beta1 * s[0]);
        if (weight_decay != C(0)) u = u + weight_decay * p;
        s[0] = one_minus_beta2 * d + beta2 * s[0];
        p = p + (-lr) * u;
    }
};

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as the spec's Python
// `scalars` computes them on the host (tests/test_capturable.py).
struct fo_lion_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        (void)step;
        out[0] = lr;
        out[1] = maximize != 0.0 ? -1.0 : 1.0;
        out[2] = weight_decay;
        out[3] = betas_0;
        out[4] = 1.0 - betas_0;
        out[5] = betas_1;
        out[6] = 1.0 - betas_1;
    }
};
