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
