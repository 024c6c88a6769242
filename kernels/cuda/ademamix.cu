// fastopt: AdEMAMix (optax.contrib.ademamix), the kernel family "ademamix"; the arithmetic of
// fastopt.optimizers.ademamix.reference, operation for operation. Slots: exp_avg_fast, exp_avg_slow, exp_avg_sq.
// Scalars: grad_sign, lr, weight_decay, beta1..3 and 1 - beta1..3, alpha, eps, eps_root, bias_correction1..2 (beta3
// and alpha are the step's values, their warm-ups applied on the host).
#include "common.cuh"

template <typename C>
struct fo_ademamix_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 7u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        g = g * grad_sign;
        s[0] = one_minus_beta1 * g + beta1 * s[0];
        s[1] = one_minus_beta3 * g + beta3 * s[1];
        s[2] = one_minus_beta2 * (g * g) + beta2 * s[2];
        // optax divides by the bias corrections; XLA multiplies by their reciprocals (fastopt.optimizers._optax)
        const C m_hat = s[0] * (C(1) / bias_correction1);
        const C nu_hat = s[2] * (C(1) / bias_correction2);
        C u = (m_hat + alpha * s[1]) / (fo_sqrt(nu_hat + eps_root) + eps);
        if (weight_decay != C(0)) u = u + weight_decay * p;
        p = p - lr * u;
    }
};
