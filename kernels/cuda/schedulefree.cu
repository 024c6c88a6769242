// fastopt: Schedule-Free SGD and AdamW (the schedulefree package), the kernel family "schedulefree"; the arithmetic
// of fastopt.optimizers.schedulefree.reference, operation for operation. Slots: z, exp_avg_sq. Scalars: lr (this
// step's, after warm-up), ckp1 (the average's weight), y_step (lr * (beta1 * (1 - ckp1) - 1)), beta2,
// one_minus_beta2, bias_correction2, eps, weight_decay, first (1 on a param's first step: z starts as the param).
// Flags: ADAPTIVE (AdamW's second moment), SWITCH (train()/eval(): p = lerp(p, z, ckp1), z arriving as the grad, no
// slot touched).
#include "common.cuh"

template <typename C, bool ADAPTIVE, bool SWITCH>
struct fo_schedulefree_op {
    FO_OP_MEMBERS   // generated (fastopt.codegen): NSLOTS and the declaration's scalars as members
    static constexpr unsigned ACTIVE = SWITCH ? 0u : (ADAPTIVE ? 3u : 1u);

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        if (SWITCH) {
            p = fo_lerp(p, g, ckp1);
            return;
        }
        const C z = first != C(0) ? p : s[0];  // the first step's z is the param itself (the package clones it)
        C d = g;
        if (ADAPTIVE) {
            s[1] = s[1] * beta2 + (one_minus_beta2 * g) * g;  // mul_, then addcmul_'s order
            d = g / (fo_sqrt(s[1] / bias_correction2) + eps);
        }
        if (weight_decay != C(0)) d = d + weight_decay * p;
        const C y = fo_lerp(p, z, ckp1);
        s[0] = z - lr * d;
        p = y + y_step * d;
    }
};
