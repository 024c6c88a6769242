// fastopt: LARS following optax.lars, the kernel family "lars"; the arithmetic of fastopt.optimizers.lars (reference,
// update_value, trust_ratio), operation for operation. Slots: momentum_buffer. Scalars: lr, grad_sign, weight_decay,
// momentum, trust_coefficient, trust_eps, use_trust_ratio. Per-tensor scalar: trust_ratio, from the reductions
// ||p||^2 and ||u||^2 (u = update_value) by fo_lars_tensor. Flags: NESTEROV.
#include "common.cuh"

template <typename C, bool NESTEROV>
struct fo_lars_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS, NTS, the scalars and trust_ratio as members
    static constexpr unsigned ACTIVE = 1u;

    // The update before the trust ratio (optax: add_decayed_weights, skipped when 0).
    __device__ __forceinline__ C update_value(C p, C g, const C (&)[NSLOTS]) const {
        C u = g * grad_sign;
        if (weight_decay != C(0)) u = u + weight_decay * p;
        return u;
    }

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        const C u = (-lr) * (update_value(p, g, s) * trust_ratio);
        s[0] = u + momentum * s[0];
        p = p + (NESTEROV ? u + momentum * s[0] : s[0]);
    }
};

// The per-tensor scalars from the tensor's reductions (fastopt.optimizers.lars._tensor_scalars), in float64.
template <typename C>
struct fo_lars_tensor {
    FO_TENSOR_MEMBERS   // generated: NRED, NTS and the scalars as double members
    __device__ __forceinline__ void operator()(const double (&r)[NRED], C (&ts)[NTS]) const {
        ts[0] = use_trust_ratio != 0.0 ? fo_trust_ratio<C>(r[0], r[1], trust_coefficient, trust_eps) : C(1);
    }
};

// The capturable step: the kernel scalars from the hyperparameters (none depends on the step), in float64, as
// fastopt.optimizers.lars._scalars computes them on the host (tests/test_capturable.py).
struct fo_lars_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        (void)step; (void)nesterov;
        out[0] = lr;
        out[1] = maximize != 0.0 ? -1.0 : 1.0;
        out[2] = exclude_from_weight_decay != 0.0 ? 0.0 : weight_decay;
        out[3] = momentum;
        out[4] = trust_coefficient;
        out[5] = trust_eps;
        out[6] = exclude_from_trust_ratio != 0.0 ? 0.0 : 1.0;
    }
};
