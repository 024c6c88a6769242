// fastopt: Signum (optax.signum), the kernel family "signum"; the arithmetic of
// fastopt.optimizers.signum.reference, operation for operation. Slot: momentum_buffer. Scalars: lr, grad_sign,
// weight_decay, beta, one_minus_beta. No flags.
#include "common.cuh"

// jnp.sign: +-1 for nonzero x; +-0 and NaN unchanged.
template <typename C>
__device__ __forceinline__ C fo_signum_sign(C x) { return x > C(0) ? C(1) : (x < C(0) ? C(-1) : x); }

template <typename C>
struct fo_signum_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 1u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        const C d = g * grad_sign;
        s[0] = one_minus_beta * d + beta * s[0];
        C u = fo_signum_sign(s[0]);
        if (weight_decay != C(0)) u = u + weight_decay * p;
        p = p + (-lr) * u;
    }
};

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as the spec's Python
// `scalars` computes them on the host (tests/test_capturable.py).
struct fo_signum_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        (void)step;
        out[0] = lr;
        out[1] = maximize != 0.0 ? -1.0 : 1.0;
        out[2] = weight_decay;
        out[3] = momentum;
        out[4] = 1.0 - momentum;
    }
};
