// fastopt: Adan (optax.adan), the kernel family "adan"; the arithmetic of fastopt.optimizers.adan.reference,
// operation for operation. Slots: exp_avg, exp_avg_sq, exp_avg_diff, pre_grad. Scalars: grad_sign, lr, weight_decay,
// beta1..3 and 1 - beta1..3, eps, eps_root, bias_correction1..3, first_step (1 on a parameter's first step, when
// optax takes no gradient difference).
#include "common.cuh"

template <typename C>
struct fo_adan_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 15u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        g = g * grad_sign;
        const C diff = first_step != C(0) ? C(0) : g - s[3];
        s[0] = one_minus_beta1 * g + beta1 * s[0];
        s[2] = one_minus_beta2 * diff + beta2 * s[2];
        const C sq = g + one_minus_beta2 * diff;
        s[1] = one_minus_beta3 * (sq * sq) + beta3 * s[1];
        s[3] = g;
        // optax divides by the bias corrections; XLA multiplies by their reciprocals (fastopt.optimizers._optax)
        const C m_hat = s[0] * (C(1) / bias_correction1);
        const C v_hat = s[2] * (C(1) / bias_correction2);
        const C n_hat = s[1] * (C(1) / bias_correction3);
        C u = (m_hat + one_minus_beta2 * v_hat) / (fo_sqrt(n_hat + eps_root) + eps);
        if (weight_decay != C(0)) u = u + weight_decay * p;
        p = p - lr * u;
    }
};
