// fastopt: Adafactor (fastopt/optimizers/adafactor.py) as CUDA kernels, in the phases of the cpu kernels
// (kernels/cpu/adafactor.py) and with the reference's fixed-order float64 sums, so that the host build matches the
// NumPy reference bit for bit (tests/test_adafactor_cuda_host.py). The cuda backend launches them from
// fastopt/backends/cuda_adafactor.py (its tables are the ones described below).
//
// P = C = float or double (no half types yet). Every kernel is grid-stride, uses no shared memory, barrier, warp
// operation or atomic, and no two threads write the same value, so fo_host_launch's one-thread-after-another
// emulation is exact. Per step, for one plan (tensors of one dtype):
//   1. fo_adafactor_lanes   (segments of ||p||^2 and of each factored row's g^2)  -> lanes, 8 per segment
//      fo_adafactor_segsum  (per output: its segments' lane trees in order)        -> pp per tensor, rowsum per row
//      fo_adafactor_colsums (per block of rows and column: g^2 down the block)      -> colpart
//   2. fo_adafactor_moments (row_var, col_var lerps), fo_adafactor_rmean (per slice: clamped mean of row_var)
//   3. fo_adafactor_lanes / _segsum again with the U^2 terms                       -> urow per row, uu per vector
//      fo_adafactor_factors (per tensor: ||U||^2 of a factored tensor from its rows, then -alpha / denominator)
//   4. fo_adafactor_apply   (per chunk of elements: p = p * decay + factor * U; a vector's variance written)
// A segment is at most REDUCE_CHUNK (32768) consecutive elements of one tensor, never crossing a row of a factored
// tensor; its 8 lanes are the sums of terms i, i + 8, ... in element order (fastopt.reference.reduce_chunk), one
// thread per lane. Tables (int64, built on the host once per plan):
//   tensors[t * 8 + k]: size, B (slices), m, n, row_base, cp_base, slice_base, nblocks   (B = 0: a vector)
//   ptrs[role * T + t]: role 0 param, 1 grad, 2 row_var, 3 col_var, 4 variance (0 where the tensor has none)
//   segs[s * 4 + k]: tensor, first element, length, term (0: p^2, 1: g^2, 2: U^2 of a factored row, 3: U^2 of a vector)
//   out_begin[o .. o + 1]: the segments summed into output o, in order
//   cblocks[b * 5 + k]: tensor, slice, first row, end row, offset of its column partials in colpart
//   chunks[c * 3 + k]: tensor, first element, length (the update's work items)

#include "common.cuh"

#define FO_ADA_LANES 8

struct fo_ada_scalars {     // one step's scalars, in C (cast once on the host side of a launch)
    double weight;          // 1 - beta2_t = t ** beta2_decay
    double grad_sign;       // -1 when maximize
    double eps1, eps1_sq;   // eps1 (the dtype's eps when not given) and eps1 * eps1, rounded to C when used
    double decay;           // 1 - lr * weight_decay
    int use_decay;          // weight_decay != 0
    double unscale_by, clip_coef;   // the gradient transform: 1 and 1 when unused (exact)
    double rho, eps2, d;    // for the factors, in double
};

template <typename C>
__device__ __forceinline__ C fo_ada_clamp_min(C x, C low) { return x < low ? low : x; }   // NaN kept

template <typename C>
__device__ __forceinline__ C fo_ada_grad(C g, const fo_ada_scalars& s) {
    return ((g / (C)s.unscale_by) * (C)s.clip_coef) * (C)s.grad_sign;
}

// U of element (row, j) of a factored tensor: rsqrt(max((row_var * col_var) / mean, eps1^2)) * g
template <typename C>
__device__ __forceinline__ C fo_ada_u(C g, C rv, C cv, C rm, const fo_ada_scalars& s) {
    const C v = fo_ada_clamp_min<C>((rv * cv) / rm, (C)s.eps1_sq);
    return (C(1) / fo_sqrt(v)) * fo_ada_grad<C>(g, s);
}

template <typename C>
__device__ __forceinline__ C fo_ada_ptr_value(unsigned long long base, long long i) { return ((const C*)base)[i]; }

// Term i (element index within its tensor) of segment kind `term`, in float64.
template <typename C>
__device__ __forceinline__ double fo_ada_term(int term, const long long* tensors, const unsigned long long* ptrs,
                                              long long T, long long t, long long i, const C* rmean,
                                              const fo_ada_scalars& s) {
    if (term == 0) {
        const double v = (double)fo_ada_ptr_value<C>(ptrs[t], i);
        return v * v;
    }
    const C g = fo_ada_ptr_value<C>(ptrs[T + t], i);
    if (term == 1) {
        const double v = (double)((g / (C)s.unscale_by) * (C)s.clip_coef);
        return v * v;
    }
    if (term == 2) {
        const long long m = tensors[t * 8 + 2], n = tensors[t * 8 + 3], slice_base = tensors[t * 8 + 6];
        const long long row = i / n, j = i - row * n, slice = row / m;
        const C rv = fo_ada_ptr_value<C>(ptrs[2 * T + t], row);
        const C cv = fo_ada_ptr_value<C>(ptrs[3 * T + t], slice * n + j);
        const double u = (double)fo_ada_u<C>(g, rv, cv, rmean[slice_base + slice], s);
        return u * u;
    }
    const C d = fo_ada_grad<C>(g, s);
    const C v = fo_lerp<C>(fo_ada_ptr_value<C>(ptrs[4 * T + t], i), d * d, (C)s.weight);
    const double u = (double)((C(1) / fo_sqrt(fo_ada_clamp_min<C>(v, (C)s.eps1_sq))) * d);
    return u * u;
}

// One thread per (segment, lane): lanes[seg * 8 + lane] = sum of the segment's terms lane, lane + 8, ... in order.
template <typename C>
__global__ void fo_adafactor_lanes(const long long* segs, long long nsegs, const long long* tensors,
                                   const unsigned long long* ptrs, long long T, const C* rmean, fo_ada_scalars s,
                                   double* lanes) {
    const long long total = nsegs * FO_ADA_LANES;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (long long)gridDim.x * blockDim.x) {
        const long long seg = k / FO_ADA_LANES, lane = k - seg * FO_ADA_LANES;
        const long long t = segs[seg * 4], a = segs[seg * 4 + 1], len = segs[seg * 4 + 2];
        const int term = (int)segs[seg * 4 + 3];
        double acc = 0.0;
        for (long long i = lane; i < len; i += FO_ADA_LANES)
            acc += fo_ada_term<C>(term, tensors, ptrs, T, t, a + i, rmean, s);
        lanes[k] = acc;
    }
}

// One thread per output: out[o] = 0.0 + tree(segment 0) + tree(segment 1) + ... (reduce_tensor's order).
__global__ void fo_adafactor_segsum(const long long* out_begin, long long nout, const double* lanes, double* out) {
    for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < nout;
         o += (long long)gridDim.x * blockDim.x) {
        double total = 0.0;
        for (long long seg = out_begin[o]; seg < out_begin[o + 1]; ++seg) {
            const double* l = lanes + seg * FO_ADA_LANES;
            total += ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
        }
        out[o] = total;
    }
}

// A block of threads per block of rows, a thread per column: g^2 down the rows in order, from the block's first.
template <typename C>
__global__ void fo_adafactor_colsums(const long long* cblocks, long long nblocks, const long long* tensors,
                                     const unsigned long long* ptrs, long long T, fo_ada_scalars s, double* colpart) {
    for (long long b = blockIdx.x; b < nblocks; b += gridDim.x) {
        const long long t = cblocks[b * 5], slice = cblocks[b * 5 + 1], r0 = cblocks[b * 5 + 2];
        const long long r1 = cblocks[b * 5 + 3], off = cblocks[b * 5 + 4];
        const long long m = tensors[t * 8 + 2], n = tensors[t * 8 + 3];
        const C* g = (const C*)ptrs[T + t] + slice * m * n;
        for (long long j = threadIdx.x; j < n; j += blockDim.x) {
            double acc = 0.0;
            for (long long r = r0; r < r1; ++r) {
                const double v = (double)((g[r * n + j] / (C)s.unscale_by) * (C)s.clip_coef);
                acc += v * v;
            }
            colpart[off + j] = acc;
        }
    }
}

// row_var and col_var of every factored tensor: a thread per row, then per column (the blocks' partials in order).
template <typename C>
__global__ void fo_adafactor_moments(const long long* ftensors, long long nf, const long long* tensors,
                                     const unsigned long long* ptrs, long long T, const double* rowsum,
                                     const double* colpart, fo_ada_scalars s) {
    const long long stride = (long long)gridDim.x * blockDim.x, first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long f = 0; f < nf; ++f) {
        const long long t = ftensors[f];
        const long long B = tensors[t * 8 + 1], m = tensors[t * 8 + 2], n = tensors[t * 8 + 3];
        const long long row_base = tensors[t * 8 + 4], cp_base = tensors[t * 8 + 5], nblocks = tensors[t * 8 + 7];
        C* rows = (C*)ptrs[2 * T + t];
        C* cols = (C*)ptrs[3 * T + t];
        for (long long r = first; r < B * m; r += stride)
            rows[r] = fo_lerp<C>(rows[r], (C)(rowsum[row_base + r] / (double)n), (C)s.weight);
        for (long long c = first; c < B * n; c += stride) {
            const long long slice = c / n, j = c - slice * n;
            double total = 0.0;
            for (long long k = 0; k < nblocks; ++k) total += colpart[cp_base + (slice * nblocks + k) * n + j];
            cols[c] = fo_lerp<C>(cols[c], (C)(total / (double)m), (C)s.weight);
        }
    }
}

// A thread per slice: max(mean of its row_var, eps1) in C, the sum in reduce_tensor's order.
template <typename C>
__global__ void fo_adafactor_rmean(const long long* ftensors, long long nf, const long long* tensors,
                                   const unsigned long long* ptrs, long long T, fo_ada_scalars s, C* rmean) {
    const long long stride = (long long)gridDim.x * blockDim.x, first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long f = 0; f < nf; ++f) {
        const long long t = ftensors[f];
        const long long B = tensors[t * 8 + 1], m = tensors[t * 8 + 2], slice_base = tensors[t * 8 + 6];
        const C* rows = (const C*)ptrs[2 * T + t];
        for (long long slice = first; slice < B; slice += stride) {
            double total = 0.0;
            for (long long c0 = 0; c0 < m; c0 += 32768) {
                const long long len = m - c0 < 32768 ? m - c0 : 32768;
                double l[FO_ADA_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (long long i = 0; i < len; ++i) l[i % FO_ADA_LANES] += (double)rows[slice * m + c0 + i];
                total += ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
            }
            rmean[slice_base + slice] = fo_ada_clamp_min<C>((C)(total / (double)m), (C)s.eps1);
        }
    }
}

// A thread per tensor: ||U||^2 (a factored tensor's rows in order; a vector's from segsum), ||p||^2, then the step's
// factor -alpha / max(1, ||U|| / (sqrt(size) d)), alpha = max(eps2, ||p|| / sqrt(size)) rho, rounded once to C.
template <typename C>
__global__ void fo_adafactor_factors(const long long* tensors, long long T, const double* pp, const double* urow,
                                     const double* uu_vec, fo_ada_scalars s, C* factors) {
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < T; t += (long long)gridDim.x * blockDim.x) {
        const long long size = tensors[t * 8], B = tensors[t * 8 + 1], m = tensors[t * 8 + 2];
        if (size == 0) { factors[t] = C(0); continue; }
        double uu;
        if (B > 0) {
            uu = 0.0;
            const long long row_base = tensors[t * 8 + 4];
            for (long long r = 0; r < B * m; ++r) uu += urow[row_base + r];
        } else {
            uu = uu_vec[t];
        }
        const double root = sqrt((double)size);
        const double rms = sqrt(pp[t]) / root;
        const double alpha = (rms > s.eps2 ? rms : s.eps2) * s.rho;          // Python's max(eps2, rms)
        const double ratio = sqrt(uu) / (root * s.d);
        const double denom = ratio > 1.0 ? ratio : 1.0;                       // Python's max(1.0, ratio)
        factors[t] = (C)(-alpha / denom);
    }
}

// A block per chunk of elements, its threads striding over them: p = p * decay (when weight_decay != 0) + factor * U.
template <typename C>
__global__ void fo_adafactor_apply(const long long* chunks, long long nchunks, const long long* tensors,
                                   const unsigned long long* ptrs, long long T, const C* rmean, const C* factors,
                                   fo_ada_scalars s) {
    for (long long c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const long long t = chunks[c * 3], a = chunks[c * 3 + 1], len = chunks[c * 3 + 2];
        const long long B = tensors[t * 8 + 1], m = tensors[t * 8 + 2], n = tensors[t * 8 + 3];
        const long long slice_base = tensors[t * 8 + 6];
        C* p = (C*)ptrs[t];
        const C* g = (const C*)ptrs[T + t];
        const C factor = factors[t];
        for (long long k = a + threadIdx.x; k < a + len; k += blockDim.x) {
            C u;
            if (B > 0) {
                const long long row = k / n, j = k - row * n, slice = row / m;
                u = fo_ada_u<C>(g[k], ((const C*)ptrs[2 * T + t])[row], ((const C*)ptrs[3 * T + t])[slice * n + j],
                                rmean[slice_base + slice], s);
            } else {
                C* var = (C*)ptrs[4 * T + t];
                const C d = fo_ada_grad<C>(g[k], s);
                const C v = fo_lerp<C>(var[k], d * d, (C)s.weight);
                var[k] = v;
                u = (C(1) / fo_sqrt(fo_ada_clamp_min<C>(v, (C)s.eps1_sq))) * d;
            }
            const C x = s.use_decay ? p[k] * (C)s.decay : p[k];
            p[k] = x + factor * u;
        }
    }
}

template __global__ void fo_adafactor_lanes<float>(const long long*, long long, const long long*,
                                                   const unsigned long long*, long long, const float*, fo_ada_scalars,
                                                   double*);
template __global__ void fo_adafactor_lanes<double>(const long long*, long long, const long long*,
                                                    const unsigned long long*, long long, const double*,
                                                    fo_ada_scalars, double*);
template __global__ void fo_adafactor_colsums<float>(const long long*, long long, const long long*,
                                                     const unsigned long long*, long long, fo_ada_scalars, double*);
template __global__ void fo_adafactor_colsums<double>(const long long*, long long, const long long*,
                                                      const unsigned long long*, long long, fo_ada_scalars, double*);
template __global__ void fo_adafactor_moments<float>(const long long*, long long, const long long*,
                                                     const unsigned long long*, long long, const double*,
                                                     const double*, fo_ada_scalars);
template __global__ void fo_adafactor_moments<double>(const long long*, long long, const long long*,
                                                      const unsigned long long*, long long, const double*,
                                                      const double*, fo_ada_scalars);
template __global__ void fo_adafactor_rmean<float>(const long long*, long long, const long long*,
                                                   const unsigned long long*, long long, fo_ada_scalars, float*);
template __global__ void fo_adafactor_rmean<double>(const long long*, long long, const long long*,
                                                    const unsigned long long*, long long, fo_ada_scalars, double*);
template __global__ void fo_adafactor_factors<float>(const long long*, long long, const double*, const double*,
                                                     const double*, fo_ada_scalars, float*);
template __global__ void fo_adafactor_factors<double>(const long long*, long long, const double*, const double*,
                                                      const double*, fo_ada_scalars, double*);
template __global__ void fo_adafactor_apply<float>(const long long*, long long, const long long*,
                                                   const unsigned long long*, long long, const float*, const float*,
                                                   fo_ada_scalars);
template __global__ void fo_adafactor_apply<double>(const long long*, long long, const long long*,
                                                    const unsigned long long*, long long, const double*,
                                                    const double*, fo_ada_scalars);

#ifdef FASTOPT_HOST
// Host entry points (tests/test_adafactor_cuda_host.py): one launch each, emulated by fo_host_launch.
#define FO_ADA_HOST(tag, C)                                                                                           \
extern "C" int fo_host_adafactor_lanes_##tag(const long long* segs, long long nsegs, const long long* tensors,       \
        const unsigned long long* ptrs, long long T, const C* rmean, const fo_ada_scalars* s, double* lanes,        \
        unsigned grid, unsigned block) {                                                                            \
    fo_host_launch(grid, block, [&] { fo_adafactor_lanes<C>(segs, nsegs, tensors, ptrs, T, rmean, *s, lanes); });   \
    return 0;                                                                                                       \
}                                                                                                                   \
extern "C" int fo_host_adafactor_colsums_##tag(const long long* cblocks, long long nblocks, const long long* tensors, \
        const unsigned long long* ptrs, long long T, const fo_ada_scalars* s, double* colpart, unsigned grid,       \
        unsigned block) {                                                                                           \
    fo_host_launch(grid, block, [&] { fo_adafactor_colsums<C>(cblocks, nblocks, tensors, ptrs, T, *s, colpart); }); \
    return 0;                                                                                                       \
}                                                                                                                   \
extern "C" int fo_host_adafactor_moments_##tag(const long long* ftensors, long long nf, const long long* tensors,     \
        const unsigned long long* ptrs, long long T, const double* rowsum, const double* colpart,                   \
        const fo_ada_scalars* s, unsigned grid, unsigned block) {                                                   \
    fo_host_launch(grid, block, [&] {                                                                               \
        fo_adafactor_moments<C>(ftensors, nf, tensors, ptrs, T, rowsum, colpart, *s); });                           \
    return 0;                                                                                                       \
}                                                                                                                   \
extern "C" int fo_host_adafactor_rmean_##tag(const long long* ftensors, long long nf, const long long* tensors,       \
        const unsigned long long* ptrs, long long T, const fo_ada_scalars* s, C* rmean, unsigned grid,              \
        unsigned block) {                                                                                           \
    fo_host_launch(grid, block, [&] { fo_adafactor_rmean<C>(ftensors, nf, tensors, ptrs, T, *s, rmean); });         \
    return 0;                                                                                                       \
}                                                                                                                   \
extern "C" int fo_host_adafactor_factors_##tag(const long long* tensors, long long T, const double* pp,              \
        const double* urow, const double* uu_vec, const fo_ada_scalars* s, C* factors, unsigned grid,               \
        unsigned block) {                                                                                           \
    fo_host_launch(grid, block, [&] { fo_adafactor_factors<C>(tensors, T, pp, urow, uu_vec, *s, factors); });       \
    return 0;                                                                                                       \
}                                                                                                                   \
extern "C" int fo_host_adafactor_apply_##tag(const long long* chunks, long long nchunks, const long long* tensors,    \
        const unsigned long long* ptrs, long long T, const C* rmean, const C* factors, const fo_ada_scalars* s,      \
        unsigned grid, unsigned block) {                                                                            \
    fo_host_launch(grid, block, [&] {                                                                               \
        fo_adafactor_apply<C>(chunks, nchunks, tensors, ptrs, T, rmean, factors, *s); });                           \
    return 0;                                                                                                       \
}
FO_ADA_HOST(f32, float)
FO_ADA_HOST(f64, double)

extern "C" int fo_host_adafactor_segsum(const long long* out_begin, long long nout, const double* lanes, double* out,
                                        unsigned grid, unsigned block) {
    fo_host_launch(grid, block, [&] { fo_adafactor_segsum(out_begin, nout, lanes, out); });
    return 0;
}
#endif
