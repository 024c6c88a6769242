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
