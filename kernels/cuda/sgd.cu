// fastopt: SGD (torch.optim.SGD), the kernel family "sgd"; the arithmetic of fastopt.reference.sgd, operation for
// operation. Slots: momentum_buffer. Scalars: lr, grad_sign, weight_decay, momentum, buffer_decay, grad_scale.
// Flags: USE_MOMENTUM, NESTEROV. The first step needs no branch: the host passes buffer_decay 0 and grad_scale 1.
#include "common.cuh"

template <typename C, bool USE_MOMENTUM, bool NESTEROV>
struct fo_sgd_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = USE_MOMENTUM ? 1u : 0u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        C d = fo_direction(p, g, grad_sign, weight_decay);
        if (USE_MOMENTUM) {
            s[0] = buffer_decay * s[0] + grad_scale * d;
            d = NESTEROV ? d + momentum * s[0] : s[0];
        }
        p = p - lr * d;
    }
};

// The capturable step: the kernel scalars of step `step` (1 when the momentum buffer is new) from the
// hyperparameters, in float64, as fastopt.specs._sgd_scalars computes them on the host.
struct fo_sgd_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        const bool first = step == 1;
        out[0] = lr;
        out[1] = maximize != 0.0 ? -1.0 : 1.0;
        out[2] = weight_decay;
        out[3] = momentum;
        out[4] = first ? 0.0 : momentum;
        out[5] = first ? 1.0 : 1.0 - dampening;
    }
};
