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

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as
// fastopt.optimizers.ademamix._scalars and warmups compute them on the host, operation for operation
// (tests/test_capturable.py). The warm-ups are evaluated at optax's count t = step - 1; the warm-up lengths are whole
// numbers held as doubles (exact), so t / T here is Python's true division of two ints.
struct fo_ademamix_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        const double t = (double)(step - 1);
        const double alpha_t = t < alpha_warmup ? alpha * t / alpha_warmup : alpha;
        double beta3_t;
        if (t >= beta3_warmup || betas_0 >= betas_2) {
            beta3_t = betas_2;
        } else if (betas_0 == 0.0) {   // the formula's limit as beta1 -> 0
            beta3_t = t == 0.0 ? 0.0 : pow(betas_2, beta3_warmup / t);
        } else {
            const double a = t / beta3_warmup;
            const double x = exp(log(betas_0) * log(betas_2) / ((1.0 - a) * log(betas_2) + a * log(betas_0)));
            beta3_t = betas_2 < x ? betas_2 : x;   // Python's min(x, b3): x unless b3 is smaller
        }
        const double s = (double)step;
        out[0] = maximize != 0.0 ? -1.0 : 1.0;
        out[1] = lr;
        out[2] = weight_decay;
        out[3] = betas_0;
        out[4] = 1.0 - betas_0;
        out[5] = betas_1;
        out[6] = 1.0 - betas_1;
        out[7] = beta3_t;
        out[8] = 1.0 - beta3_t;
        out[9] = alpha_t;
        out[10] = eps;
        out[11] = eps_root;
        out[12] = 1.0 - pow(betas_0, s);
        out[13] = 1.0 - pow(betas_1, s);
    }
};
