// fastopt: LAMB following optax.lamb, the kernel family "lamb"; the arithmetic of fastopt.optimizers.lamb (reference,
// update_value, trust_ratio), operation for operation. Slots: exp_avg, exp_avg_sq. Scalars: lr, grad_sign,
// weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction1, bias_correction2,
// use_trust_ratio. Per-tensor scalar: trust_ratio, from the reductions ||p||^2 and ||u||^2 (u = update_value,
// computed without writing) by fo_lamb_tensor. No flags.
#include "common.cuh"

template <typename C>
struct fo_lamb_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS, NTS, the scalars and trust_ratio as members
    static constexpr unsigned ACTIVE = 3u;

    // The moments after this step (optax.scale_by_adam, not lerp: optax's order).
    __device__ __forceinline__ void moments(C g, C& m, C& v) const {
        const C d = g * grad_sign;
        m = one_minus_beta1 * d + beta1 * m;
        v = one_minus_beta2 * (d * d) + beta2 * v;
    }

    // The update before the trust ratio: bias-corrected Adam direction (XLA multiplies by the bias corrections'
    // reciprocals, rounded in C) plus the decoupled decay.
    __device__ __forceinline__ C update(C p, C m, C v) const {
        C u = (m * (C(1) / bias_correction1)) / (fo_sqrt(v * (C(1) / bias_correction2)) + eps);
        if (weight_decay != C(0)) u = u + weight_decay * p;
        return u;
    }

    // What the "update" reduction reads (fastopt.optimizers.lamb.update_value): the state is left as it is.
    __device__ __forceinline__ C update_value(C p, C g, const C (&s)[NSLOTS]) const {
        C m = s[0], v = s[1];
        moments(g, m, v);
        return update(p, m, v);
    }

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        moments(g, s[0], s[1]);
        const C u = update(p, s[0], s[1]);
        p = p + (-lr) * (u * trust_ratio);
    }
};

// The per-tensor scalars from the tensor's reductions (fastopt.optimizers.lamb._tensor_scalars), in float64.
template <typename C>
struct fo_lamb_tensor {
    FO_TENSOR_MEMBERS   // generated: NRED, NTS and the scalars as double members
    __device__ __forceinline__ void operator()(const double (&r)[NRED], C (&ts)[NTS]) const {
        ts[0] = use_trust_ratio != 0.0 ? fo_trust_ratio<C>(r[0], r[1], 1.0, 0.0) : C(1);
    }
};

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as
// fastopt.optimizers.lamb._scalars computes them on the host (tests/test_capturable.py).
struct fo_lamb_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        out[0] = lr;
        out[1] = maximize != 0.0 ? -1.0 : 1.0;
        out[2] = exclude_from_weight_decay != 0.0 ? 0.0 : weight_decay;
        out[3] = betas_0;
        out[4] = 1.0 - betas_0;
        out[5] = betas_1;
        out[6] = 1.0 - betas_1;
        out[7] = eps;
        out[8] = 1.0 - pow(betas_0, (double)step);
        out[9] = 1.0 - pow(betas_1, (double)step);
        out[10] = exclude_from_trust_ratio != 0.0 ? 0.0 : 1.0;
    }
};
