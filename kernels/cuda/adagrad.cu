// fastopt: Adagrad (torch.optim.Adagrad), the kernel family "adagrad"; the arithmetic of fastopt.reference.adagrad,
// operation for operation. Slots: sum. Scalars: clr (lr / (1 + (step - 1) * lr_decay)), grad_sign, weight_decay, eps.
#include "common.cuh"

template <typename C>
struct fo_adagrad_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 1u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        const C d = fo_direction(p, g, grad_sign, weight_decay);
        s[0] = s[0] + d * d;
        p = p - (clr * d) / (fo_sqrt(s[0]) + eps);  // torch's addcdiv order
    }
};

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as the spec's Python
// `scalars` computes them on the host (tests/test_capturable.py).
struct fo_adagrad_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        (void)initial_accumulator_value;
        out[0] = lr / (1.0 + (double)(step - 1) * lr_decay);
        out[1] = maximize != 0.0 ? -1.0 : 1.0;
        out[2] = weight_decay;
        out[3] = eps;
    }
};
