// fastopt: ASGD (torch.optim.ASGD), the kernel family "asgd"; the arithmetic of fastopt.optimizers.asgd.reference,
// operation for operation. Slot: ax. Scalars: grad_sign, weight_decay, decay (1 - lambd * eta), neg_eta (-eta) and mu,
// from the param's eta and mu as its previous step left them (host state).
#include "common.cuh"

template <typename C>
struct fo_asgd_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = 1u;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        const C d = fo_direction(p, g, grad_sign, weight_decay);
        p = p * decay;
        p = p + neg_eta * d;
        s[0] = mu != C(1) ? s[0] + (p - s[0]) * mu : p;  // torch copies the param while mu is 1
    }
};
