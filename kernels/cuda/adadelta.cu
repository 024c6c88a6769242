// fastopt: Adadelta (torch.optim.Adadelta), the kernel family "adadelta"; the arithmetic of
// fastopt.reference.adadelta, operation for operation. Slots: square_avg, acc_delta. Scalars: lr, grad_sign,
// weight_decay, rho, one_minus_rho, eps.
#include "common.cuh"

template <typename C>
struct fo_adadelta_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 3u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        const C d = fo_direction(p, g, grad_sign, weight_decay);
        s[0] = rho * s[0] + (one_minus_rho * d) * d;  // torch's addcmul order: d * d alone overflows sooner
        const C delta = fo_sqrt(s[1] + eps) / fo_sqrt(s[0] + eps) * d;
        s[1] = rho * s[1] + (one_minus_rho * delta) * delta;
        p = p - lr * delta;
    }
};

// The capturable step: the kernel scalars of step `step` from the hyperparameters, in float64, as the spec's Python
// `scalars` computes them on the host (tests/test_capturable.py).
struct fo_adadelta_scalars {
    FO_HYPER_MEMBERS   // generated (fastopt.codegen): NSC and the hyperparameters as double members
    __device__ __forceinline__ void operator()(long long step, double (&out)[NSC]) const {
        (void)step;
        out[0] = lr;
        out[1] = maximize != 0.0 ? -1.0 : 1.0;
        out[2] = weight_decay;
        out[3] = rho;
        out[4] = 1.0 - rho;
        out[5] = eps;
    }
};
