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
