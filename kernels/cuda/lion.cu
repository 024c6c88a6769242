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
