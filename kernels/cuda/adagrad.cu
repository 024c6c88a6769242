// fastopt: Adagrad (torch.optim.Adagrad), the kernel family "adagrad"; the arithmetic of fastopt.reference.adagrad,
// operation for operation. Slots: sum. Scalars: clr (lr / (1 + (step - 1) * lr_decay)), grad_sign, weight_decay, eps.
#include "common.cuh"

template <typename C>
struct fo_adagrad_op {
    static constexpr int NSLOTS = 1;
    static constexpr unsigned ACTIVE = 1u;
    C clr, grad_sign, weight_decay, eps;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        const C d = fo_direction(p, g, grad_sign, weight_decay);
        s[0] = s[0] + d * d;
        p = p - (clr * d) / (fo_sqrt(s[0]) + eps);  // torch's addcdiv order
    }
};

#define FO_ADAGRAD_SCALARS C clr, C grad_sign, C weight_decay, C eps

template <typename P, typename C>
__global__ void __launch_bounds__(FO_BLOCK, FO_MIN_BLOCKS)
fo_adagrad_flat(P* param, const P* grad, C* sum, long long n, FO_ADAGRAD_SCALARS) {
    const fo_adagrad_op<C> op = {clr, grad_sign, weight_decay, eps};
    C* const s[1] = {sum};
    fo_flat<P, C>(op, param, grad, s, n);
}

template <typename P, typename C>
__global__ void __launch_bounds__(FO_BLOCK, FO_MIN_BLOCKS)
fo_adagrad_table(FO_TABLE_PARAMS, FO_ADAGRAD_SCALARS) {
    const fo_adagrad_op<C> op = {clr, grad_sign, weight_decay, eps};
    fo_table<P, C>(op, FO_TABLE_ARGS);
}
