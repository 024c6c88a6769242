// fastopt: Adadelta (torch.optim.Adadelta), the kernel family "adadelta"; the arithmetic of
// fastopt.reference.adadelta, operation for operation. Slots: square_avg, acc_delta. Scalars: lr, grad_sign,
// weight_decay, rho, one_minus_rho, eps.
#include "common.cuh"

template <typename C>
struct fo_adadelta_op {
    static constexpr int NSLOTS = 2;
    static constexpr unsigned ACTIVE = 3u;
    C lr, grad_sign, weight_decay, rho, one_minus_rho, eps;

    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const {
        const C d = fo_direction(p, g, grad_sign, weight_decay);
        s[0] = rho * s[0] + (one_minus_rho * d) * d;  // torch's addcmul order: d * d alone overflows sooner
        const C delta = fo_sqrt(s[1] + eps) / fo_sqrt(s[0] + eps) * d;
        s[1] = rho * s[1] + (one_minus_rho * delta) * delta;
        p = p - lr * delta;
    }
};

#define FO_ADADELTA_SCALARS C lr, C grad_sign, C weight_decay, C rho, C one_minus_rho, C eps

template <typename P, typename C>
__global__ void __launch_bounds__(FO_BLOCK, FO_MIN_BLOCKS)
fo_adadelta_flat(P* param, const P* grad, C* square_avg, C* acc_delta, long long n, FO_ADADELTA_SCALARS) {
    const fo_adadelta_op<C> op = {lr, grad_sign, weight_decay, rho, one_minus_rho, eps};
    C* const s[2] = {square_avg, acc_delta};
    fo_flat<P, C>(op, param, grad, s, n);
}

template <typename P, typename C>
__global__ void __launch_bounds__(FO_BLOCK, FO_MIN_BLOCKS)
fo_adadelta_table(FO_TABLE_PARAMS, FO_ADADELTA_SCALARS) {
    const fo_adadelta_op<C> op = {lr, grad_sign, weight_decay, rho, one_minus_rho, eps};
    fo_table<P, C>(op, FO_TABLE_ARGS);
}
