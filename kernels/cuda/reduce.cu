// fastopt: reductions of arrays, not of a kernel family: the gradients' norms for clipping (max_grad_norm=,
// fastopt.clip_grad_norm_) and AMP's count of non-finite gradients, one multi-tensor pass per call. Two launches
// (fo_block_reduce in common.cuh: partials per chunk of the chunk table, then per tensor, both in a fixed order):
//   fo_reduce_partials<P, C>  the reduction `op` (FO_RED_*) of x / unscale_by (rounded in C; 1 when AMP is off:
//                             exact) over each chunk, written to partials[c]
//   fo_reduce_combine<P, C>   each tensor's chunk partials combined into values[t] (P and C unused: one name scheme)
#include "common.cuh"

template <typename P, typename C>
__global__ void __launch_bounds__(FO_BLOCK, FO_MIN_BLOCKS)
fo_reduce_partials(const long long* __restrict__ chunks, long long nchunks, long long chunk_elems,
                   const unsigned long long* __restrict__ ptrs, const long long* __restrict__ sizes, int op,
                   double power, C unscale_by, double* __restrict__ partials) {
    const int ops[1] = {op};
    fo_block_reduce<1>(ops, nchunks, [&](long long c, long long j, long long nthreads, double (&acc)[1]) {
        long long t, start, n;
        fo_chunk_span(chunks, c, chunk_elems, sizes, t, start, n);
        const P* x = reinterpret_cast<const P*>(ptrs[t]) + start;
        for (long long i = j; i < n; i += nthreads)
            acc[0] = fo_red_combine(op, acc[0], fo_red_term((double)(fo_io<P, C>::load(x[i]) / unscale_by), op, power));
    }, [&](long long c, const double (&out)[1]) { partials[c] = out[0]; });
}

template <typename P, typename C>
__global__ void __launch_bounds__(FO_BLOCK, FO_MIN_BLOCKS)
fo_reduce_combine(const long long* __restrict__ tensor_chunks, long long ntensors, int op,
                  const double* __restrict__ partials, double* __restrict__ values) {
    const int ops[1] = {op};
    fo_combine_tensors<1>(ops, tensor_chunks, ntensors, partials,
                          [&](long long t, const double (&out)[1]) { values[t] = out[0]; });
}
