// fastopt: SGD (torch.optim.SGD), the kernel family "sgd"; the arithmetic of fastopt.reference.sgd, operation for
// operation. Slots: momentum_buffer. Scalars: lr, grad_sign, weight_decay, momentum, buffer_decay, grad_scale.
// Flags: USE_MOMENTUM, NESTEROV. The first step needs no branch: the host passes buffer_decay 0 and grad_scale 1.
#include "common.cuh"

template <typename C, bool USE_MOMENTUM, bool NESTEROV>
struct fo_sgd_op {
    static constexpr int NSLOTS = 1;
    static constexpr unsigned ACTIVE = USE_MOMENTUM ? 1u : 0u;
    C lr, grad_sign, weight_decay, momentum, buffer_decay, grad_scale;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        C d = fo_direction(p, g, grad_sign, weight_decay);
        if (USE_MOMENTUM) {
            s[0] = buffer_decay * s[0] + grad_scale * d;
            d = NESTEROV ? d + momentum * s[0] : s[0];
        }
        p = p - lr * d;
    }
};

#define FO_SGD_SCALARS C lr, C grad_sign, C weight_decay, C momentum, C buffer_decay, C grad_scale

template <typename P, typename C, bool USE_MOMENTUM, bool NESTEROV>
__global__ void __launch_bounds__(FO_BLOCK, FO_MIN_BLOCKS)
fo_sgd_flat(P* param, const P* grad, C* momentum_buffer, long long n, FO_SGD_SCALARS) {
    const fo_sgd_op<C, USE_MOMENTUM, NESTEROV> op = {lr, grad_sign, weight_decay, momentum, buffer_decay, grad_scale};
    C* const s[1] = {momentum_buffer};
    fo_flat<P, C>(op, param, grad, s, n);
}

template <typename P, typename C, bool USE_MOMENTUM, bool NESTEROV>
__global__ void __launch_bounds__(FO_BLOCK, FO_MIN_BLOCKS)
fo_sgd_table(FO_TABLE_PARAMS, FO_SGD_SCALARS) {
    const fo_sgd_op<C, USE_MOMENTUM, NESTEROV> op = {lr, grad_sign, weight_decay, momentum, buffer_decay, grad_scale};
    fo_table<P, C>(op, FO_TABLE_ARGS);
}
