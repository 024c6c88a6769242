// fastopt: what every kernel family shares: storage types, conversions, vector loads and the two traversals.
//
// Never compiled on its own and never #included at run time: fastopt.cuda_build splices this text into each family's
// source in place of its `#include "common.cuh"` line, so the string CuPy compiles (and hashes for its cache) holds
// everything. Compiled for the host through host_shim.h (FASTOPT_HOST defined) to check the arithmetic on a CPU.
//
// Conventions (fastopt/specs.py): kernel(param, grad, *slots, *scalars) with the boolean flags as template arguments.
//   P  parameter (and gradient) storage: float, double, fo_half (IEEE binary16 bits), fo_bf16 (bfloat16 bits)
//   C  state and compute type: float for fo_half/fo_bf16/float, double for double
// An element operation is a functor `op(C& p, C g, C (&s)[NSLOTS])` with `ACTIVE`, the bit mask of slots it reads and
// writes: the traversals load and store only those, so an inactive slot may be a null pointer. Its `NSLOTS` and
// scalar members come from `FO_OP_MEMBERS`, and the __global__ entry points around it (fo_<family>_flat/_table), both
// generated from the declaration by fastopt.codegen.
//
// Traversals, both grid-stride with 64-bit sizes and offsets:
//   flat   one contiguous range [0, n) of every array; all threads of the grid stride over it.
//   table  a device-side table of tensors: ptrs[role * ntensors + t] (role 0 = param, 1 + k = slot k), grad_ptrs[t],
//          sizes[t], and chunks[c] = (t << 32) | (index of the chunk within tensor t); chunk c covers elements
//          [index * chunk_elems, min((index + 1) * chunk_elems, sizes[t])). Block b handles chunks b, b + gridDim.x, ...
// Inside a range, 16-byte vector loads are used when every active pointer sits at the same element offset modulo the
// vector width (V = 16 / sizeof(C) elements): a scalar head brings them to 16-byte alignment (8 bytes for 2-byte P),
// the vector body follows, then a scalar tail. Otherwise the whole range is scalar.

#ifndef FASTOPT_COMMON_CUH
#define FASTOPT_COMMON_CUH

#ifndef FO_BLOCK
#define FO_BLOCK 256          // threads per block: the launches use exactly this many
#endif
#ifndef FO_ASSERT_ALIGNED
#define FO_ASSERT_ALIGNED(ptr, bytes) ((void)0)   // the host shim checks the vector body's alignment
#endif
#ifndef FO_MIN_BLOCKS
#define FO_MIN_BLOCKS 1       // no register cap: asking for 3-4 blocks per SM made the table kernels spill
#endif

struct fo_half { unsigned short bits; };
struct fo_bf16 { unsigned short bits; };

// ---- bit casts and conversions -------------------------------------------------------------------------------------

__device__ __forceinline__ unsigned int fo_f32_bits(float x) { return __float_as_uint(x); }
__device__ __forceinline__ float fo_bits_f32(unsigned int b) { return __uint_as_float(b); }

__device__ __forceinline__ float fo_half_to_float(unsigned short h) {
#ifdef FASTOPT_HOST
    return fo_host_half_to_float(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ unsigned short fo_float_to_half(float f) {  // round to nearest even
#ifdef FASTOPT_HOST
    return fo_host_float_to_half(f);
#else
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

__device__ __forceinline__ float fo_bf16_to_float(unsigned short b) { return fo_bits_f32(((unsigned int)b) << 16); }

__device__ __forceinline__ unsigned short fo_float_to_bf16(float f) {  // round to nearest even; NaN stays NaN
    unsigned int u = fo_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

template <typename P, typename C> struct fo_io;
template <> struct fo_io<float, float> {
    static __device__ __forceinline__ float load(float x) { return x; }
    static __device__ __forceinline__ float store(float x) { return x; }
};
template <> struct fo_io<double, double> {
    static __device__ __forceinline__ double load(double x) { return x; }
    static __device__ __forceinline__ double store(double x) { return x; }
};
template <> struct fo_io<fo_half, float> {
    static __device__ __forceinline__ float load(fo_half x) { return fo_half_to_float(x.bits); }
    static __device__ __forceinline__ fo_half store(float x) { fo_half h; h.bits = fo_float_to_half(x); return h; }
};
template <> struct fo_io<fo_bf16, float> {
    static __device__ __forceinline__ float load(fo_bf16 x) { return fo_bf16_to_float(x.bits); }
    static __device__ __forceinline__ fo_bf16 store(float x) { fo_bf16 h; h.bits = fo_float_to_bf16(x); return h; }
};

// ---- math the element operations use ------------------------------------------------------------------------------

__device__ __forceinline__ float fo_sqrt(float x) { return sqrtf(x); }     // correctly rounded (-prec-sqrt=true)
__device__ __forceinline__ double fo_sqrt(double x) { return sqrt(x); }

// torch.lerp as its CPU kernel evaluates it, less the fused multiply-add (fastopt.reference._lerp): the weight picks
// the formula, and 1 - weight is rounded in C.
template <typename C>
__device__ __forceinline__ C fo_lerp(C start, C end, C weight) {
    return (weight < C(0.5) && weight > C(-0.5)) ? start + weight * (end - start)
                                                 : end - (end - start) * (C(1) - weight);
}

// torch.maximum / numpy.maximum: NaN in either operand wins.
template <typename C>
__device__ __forceinline__ C fo_nan_max(C a, C b) { return (a > b || a != a) ? a : b; }

// ---- vectors -------------------------------------------------------------------------------------------------------

template <typename T, int N>
struct alignas(sizeof(T) * N) fo_vec { T v[N]; };

template <typename C> struct fo_width { static constexpr int value = 16 / (int)sizeof(C); };

template <int V, typename T>
__device__ __forceinline__ long long fo_misalign(const T* p) {  // element offset of p modulo V
    return (long long)(((unsigned long long)p / sizeof(T)) % (unsigned long long)V);
}

// ---- one range of one tensor ---------------------------------------------------------------------------------------

template <typename P, typename C, typename Op>
__device__ __forceinline__ void fo_element(const Op& op, P* __restrict__ p, const P* __restrict__ g,
                                           C* const (&s)[Op::NSLOTS], long long i) {
    C pc = fo_io<P, C>::load(p[i]);
    const C gc = fo_io<P, C>::load(g[i]);
    C sc[Op::NSLOTS];
#pragma unroll
    for (int k = 0; k < Op::NSLOTS; ++k) sc[k] = (Op::ACTIVE & (1u << k)) ? s[k][i] : C(0);
    op(pc, gc, sc);
    p[i] = fo_io<P, C>::store(pc);
#pragma unroll
    for (int k = 0; k < Op::NSLOTS; ++k) if (Op::ACTIVE & (1u << k)) s[k][i] = sc[k];
}

template <typename P, typename C, typename Op>
__device__ __forceinline__ void fo_range(const Op& op, P* __restrict__ p, const P* __restrict__ g,
                                         C* const (&s)[Op::NSLOTS], long long n, long long first, long long stride) {
    constexpr int V = fo_width<C>::value;
    // Vector path when every active pointer has the same element offset modulo V (all distinct allocations and all
    // views at the same offset of identically laid out buffers qualify).
    const long long mis = fo_misalign<V>(p);
    bool same = fo_misalign<V>(g) == mis;
#pragma unroll
    for (int k = 0; k < Op::NSLOTS; ++k)
        if (Op::ACTIVE & (1u << k)) same = same && fo_misalign<V>(s[k]) == mis;
    long long head = n;   // elements before the vector body (all of them when no vector path)
    if (same) {
        head = (V - mis) % V;
        if (head > n) head = n;
    }
    for (long long i = first; i < head; i += stride) fo_element<P, C>(op, p, g, s, i);
    if (head >= n) return;

    // From here on the same base pointers, moved to the aligned start, serve the vector body and the scalar tail.
    p += head;
    g += head;
    C* t[Op::NSLOTS];
#pragma unroll
    for (int k = 0; k < Op::NSLOTS; ++k) t[k] = (Op::ACTIVE & (1u << k)) ? s[k] + head : 0;
    n -= head;
    const long long nvec = n / V;
    typedef fo_vec<P, V> PV;
    typedef fo_vec<C, V> CV;
    if (nvec > 0) {
        FO_ASSERT_ALIGNED(p, sizeof(PV));
        FO_ASSERT_ALIGNED(g, sizeof(PV));
#pragma unroll
        for (int k = 0; k < Op::NSLOTS; ++k) if (Op::ACTIVE & (1u << k)) FO_ASSERT_ALIGNED(t[k], sizeof(CV));
    }

    for (long long i = first; i < nvec; i += stride) {
        PV pw = reinterpret_cast<PV*>(p)[i];
        const PV gw = reinterpret_cast<const PV*>(g)[i];
        CV sw[Op::NSLOTS];
#pragma unroll
        for (int k = 0; k < Op::NSLOTS; ++k) if (Op::ACTIVE & (1u << k)) sw[k] = reinterpret_cast<CV*>(t[k])[i];
#pragma unroll
        for (int j = 0; j < V; ++j) {
            C pc = fo_io<P, C>::load(pw.v[j]);
            const C gc = fo_io<P, C>::load(gw.v[j]);
            C sc[Op::NSLOTS];
#pragma unroll
            for (int k = 0; k < Op::NSLOTS; ++k) sc[k] = (Op::ACTIVE & (1u << k)) ? sw[k].v[j] : C(0);
            op(pc, gc, sc);
            pw.v[j] = fo_io<P, C>::store(pc);
#pragma unroll
            for (int k = 0; k < Op::NSLOTS; ++k) if (Op::ACTIVE & (1u << k)) sw[k].v[j] = sc[k];
        }
        reinterpret_cast<PV*>(p)[i] = pw;
#pragma unroll
        for (int k = 0; k < Op::NSLOTS; ++k) if (Op::ACTIVE & (1u << k)) reinterpret_cast<CV*>(t[k])[i] = sw[k];
    }

    for (long long i = nvec * V + first; i < n; i += stride) fo_element<P, C>(op, p, g, t, i);
}

// ---- the two traversals --------------------------------------------------------------------------------------------

template <typename P, typename C, typename Op>
__device__ __forceinline__ void fo_flat(const Op& op, P* p, const P* g, C* const (&s)[Op::NSLOTS], long long n) {
    const long long first = (long long)blockIdx.x * (long long)blockDim.x + (long long)threadIdx.x;
    const long long stride = (long long)gridDim.x * (long long)blockDim.x;
    fo_range<P, C>(op, p, g, s, n, first, stride);
}

// The table kernels' leading parameters, in this order, for every family.
#define FO_TABLE_PARAMS                                                                                    \
    const long long* __restrict__ chunks, long long nchunks, long long chunk_elems,                       \
    const unsigned long long* __restrict__ ptrs, const unsigned long long* __restrict__ grad_ptrs,        \
    const long long* __restrict__ sizes, long long ntensors
#define FO_TABLE_ARGS chunks, nchunks, chunk_elems, ptrs, grad_ptrs, sizes, ntensors

// `ts`: the per-tensor scalars (kernel contract v2), Op::NTS of them per tensor, tensor t's at ts + t * NTS; each
// chunk's copy of the operation gets its tensor's (Op::set_tensor). Unused (null) when Op::NTS is 0.
template <typename P, typename C, typename Op>
__device__ __forceinline__ void fo_table(const Op& op, FO_TABLE_PARAMS, const C* __restrict__ ts = 0) {
    for (long long c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const unsigned long long code = (unsigned long long)chunks[c];
        const long long t = (long long)(code >> 32);
        const long long start = (long long)(code & 0xffffffffull) * chunk_elems;
        long long n = sizes[t] - start;
        if (n > chunk_elems) n = chunk_elems;
        P* p = reinterpret_cast<P*>(ptrs[t]) + start;
        const P* g = reinterpret_cast<const P*>(grad_ptrs[t]) + start;
        C* s[Op::NSLOTS];
#pragma unroll
        for (int k = 0; k < Op::NSLOTS; ++k)
            s[k] = (Op::ACTIVE & (1u << k)) ? reinterpret_cast<C*>(ptrs[(k + 1) * ntensors + t]) + start : 0;
        if constexpr (Op::NTS > 0) {
            Op mine = op;
            mine.set_tensor(ts + t * Op::NTS);
            fo_range<P, C>(mine, p, g, s, n, (long long)threadIdx.x, (long long)blockDim.x);
        } else {
            fo_range<P, C>(op, p, g, s, n, (long long)threadIdx.x, (long long)blockDim.x);
        }
    }
}

// The gradient transform around every element operation (fastopt.codegen.GRAD_SCALARS): g / unscale_by (AMP's
// unscale, a division as torch's fused optimizers do), then * clip_coef (gradient clipping). The host passes 1 and
// 1 when unused: x / 1 and x * 1 are exactly x, NaN and infinities included.
template <typename Op, typename C>
struct fo_grad_op {
    static constexpr int NSLOTS = Op::NSLOTS;
    static constexpr int NTS = Op::NTS;
    static constexpr unsigned ACTIVE = Op::ACTIVE;
    Op op;
    C unscale_by, clip_coef;

    __device__ __forceinline__ C grad(C g) const { return (g / unscale_by) * clip_coef; }
    __device__ __forceinline__ void set_tensor(const C* ts) { op.fo_set_tensor(ts); }
    __device__ __forceinline__ void operator()(C& p, C g, C (&s)[NSLOTS]) const { op(p, grad(g), s); }
};

// maximize flips the gradient, then L2 weight decay adds weight_decay * param when weight_decay != 0 (torch's order;
// a uniform run-time branch, exactly as fastopt.reference._direction).
template <typename C>
__device__ __forceinline__ C fo_direction(C p, C g, C grad_sign, C weight_decay) {
    C d = g * grad_sign;
    if (weight_decay != C(0)) d = d + weight_decay * p;
    return d;
}

// The Adam family's weight decay (fastopt.reference._decayed_direction): decoupled (AdamW) shrinks the parameter by
// decay_factor = 1 - lr * weight_decay and leaves the gradient alone; coupled adds it to the gradient (fo_direction).
template <bool DECOUPLED, typename C>
__device__ __forceinline__ C fo_decayed_direction(C& p, C g, C grad_sign, C weight_decay, C decay_factor) {
    if (!DECOUPLED) return fo_direction(p, g, grad_sign, weight_decay);
    if (weight_decay != C(0)) p = p * decay_factor;
    return g * grad_sign;
}

// ---- reductions (kernel contract v2) --------------------------------------------------------------------------------
//
// Deterministic multi-tensor reductions in float64, two launches per phase and nothing allocated per step:
//   1. partials  one block per chunk of the chunk table (grid-stride over chunks): thread j of the block accumulates
//                elements j, j + B, j + 2B, ... of the chunk in element order (B = blockDim.x = FO_BLOCK, a power of
//                two); the B thread values then combine as a fixed tree, v[j] = v[j] (+) v[j + s] for
//                s = B/2, B/4, ..., 1; v[0] is the chunk's partial, written to partials[c * NRED + r].
//   2. combine   one block per tensor (grid-stride over tensors): thread j combines the tensor's chunk partials
//                j, j + B, ... in chunk order, then the same tree; v[0] is the tensor's value.
// The result depends on B and the chunk size, never on the grid size, the scheduling or the run: bitwise the same
// run to run. It differs from fastopt.reference.reduce_tensor's order (8 lanes per chunk of 32768, chunks in order)
// by roundings only, within the bound tests/test_cuda_reduce.py derives. max/min |x| are exact in any order.
// The host build cannot run barriers or shared memory: there, thread 0 of each block does every thread's share in
// turn and then the same tree serially (fo_block_reduce), so the host build computes exactly what the device does.

// Tensor t, first element and length of chunk c of the chunk table (see fo_table).
__device__ __forceinline__ void fo_chunk_span(const long long* __restrict__ chunks, long long c, long long chunk_elems,
                                              const long long* __restrict__ sizes, long long& t, long long& start,
                                              long long& n) {
    const unsigned long long code = (unsigned long long)chunks[c];
    t = (long long)(code >> 32);
    start = (long long)(code & 0xffffffffull) * chunk_elems;
    n = sizes[t] - start;
    if (n > chunk_elems) n = chunk_elems;
}

#define FO_RED_SUMSQ 0      // codes of fastopt.reference.REDUCTIONS
#define FO_RED_SUM 1
#define FO_RED_MAXABS 2
#define FO_RED_NONFINITE 3
#define FO_RED_SUMPOW 4
#define FO_RED_MINABS 5
#define FO_RED_NONZERO 6
#define FO_RED_COUNT 7        // the element count (a spec's "count" reduction): 1 per element, summed

__device__ __forceinline__ double fo_inf() { return __longlong_as_double(0x7ff0000000000000LL); }

__device__ __forceinline__ double fo_red_start(int op) { return op == FO_RED_MINABS ? fo_inf() : 0.0; }

// One value's term (fastopt.reference._terms); `power` only for sumpow (pow is not correctly rounded: CUDA's and the
// C library's may differ in the last place).
__device__ __forceinline__ double fo_red_term(double v, int op, double power) {
    switch (op) {
    case FO_RED_SUMSQ: return v * v;
    case FO_RED_SUM: return v;
    case FO_RED_NONFINITE: return fabs(v) < fo_inf() ? 0.0 : 1.0;   // comparisons only: inf and NaN count
    case FO_RED_NONZERO: return v == 0.0 ? 0.0 : 1.0;
    case FO_RED_COUNT: return 1.0;
    case FO_RED_SUMPOW: return pow(fabs(v), power);
    default: return fabs(v);                                          // maxabs, minabs
    }
}

// Two partials (fastopt.reference.combine): NaN wins for max and min, as torch's norms.
__device__ __forceinline__ double fo_red_combine(int op, double a, double b) {
    if (op == FO_RED_MAXABS) return (a > b || a != a) ? a : b;
    if (op == FO_RED_MINABS) return (a < b || a != a) ? a : b;
    return a + b;
}

// For item = blockIdx.x, blockIdx.x + gridDim.x, ... < nitems: every thread j of the block calls
// share(item, j, B, acc) (acc starts at fo_red_start), the B values combine as the fixed tree above, and one thread
// calls finish(item, values).
template <int NRED, typename Share, typename Finish>
__device__ __forceinline__ void fo_block_reduce(const int (&ops)[NRED], long long nitems, Share share,
                                                Finish finish) {
#ifdef FASTOPT_HOST
    if (threadIdx.x != 0) return;       // fo_host_launch calls every thread; thread 0 plays all of them in turn
    const int nthreads = (int)blockDim.x;
    if (nthreads > 1024 || (nthreads & (nthreads - 1))) { fo_host_misaligned = 1; return; }
    static double v[NRED][1024];
    for (long long item = blockIdx.x; item < nitems; item += gridDim.x) {
        for (int j = 0; j < nthreads; ++j) {
            double acc[NRED];
            for (int r = 0; r < NRED; ++r) acc[r] = fo_red_start(ops[r]);
            share(item, (long long)j, (long long)nthreads, acc);
            for (int r = 0; r < NRED; ++r) v[r][j] = acc[r];
        }
        for (int s = nthreads / 2; s > 0; s >>= 1)
            for (int j = 0; j < s; ++j)
                for (int r = 0; r < NRED; ++r) v[r][j] = fo_red_combine(ops[r], v[r][j], v[r][j + s]);
        double out[NRED];
        for (int r = 0; r < NRED; ++r) out[r] = v[r][0];
        finish(item, out);
    }
#else
    __shared__ double v[NRED][FO_BLOCK];
    const int j = (int)threadIdx.x;
    for (long long item = blockIdx.x; item < nitems; item += gridDim.x) {
        double acc[NRED];
#pragma unroll
        for (int r = 0; r < NRED; ++r) acc[r] = fo_red_start(ops[r]);
        share(item, (long long)j, (long long)FO_BLOCK, acc);
#pragma unroll
        for (int r = 0; r < NRED; ++r) v[r][j] = acc[r];
        __syncthreads();
#pragma unroll
        for (int s = FO_BLOCK / 2; s > 0; s >>= 1) {
            if (j < s) {
#pragma unroll
                for (int r = 0; r < NRED; ++r) v[r][j] = fo_red_combine(ops[r], v[r][j], v[r][j + s]);
            }
            __syncthreads();
        }
        if (j == 0) {
            double out[NRED];
#pragma unroll
            for (int r = 0; r < NRED; ++r) out[r] = v[r][0];
            finish(item, out);
        }
        __syncthreads();                // v is reused by the next item
    }
#endif
}

// Launch 2 for any reduction: tensor t's chunks are [tensor_chunks[t], tensor_chunks[t + 1]) of the partials.
template <int NRED, typename Finish>
__device__ __forceinline__ void fo_combine_tensors(const int (&ops)[NRED], const long long* __restrict__ tensor_chunks,
                                                   long long ntensors, const double* __restrict__ partials,
                                                   Finish finish) {
    fo_block_reduce<NRED>(ops, ntensors, [&](long long t, long long j, long long nthreads, double (&acc)[NRED]) {
        for (long long c = tensor_chunks[t] + j; c < tensor_chunks[t + 1]; c += nthreads) {
#pragma unroll
            for (int r = 0; r < NRED; ++r) acc[r] = fo_red_combine(ops[r], acc[r], partials[c * NRED + r]);
        }
    }, finish);
}

// Launch 1 of a family's reductions: values(p, g, s, v) gives, for one element, the NRED values to reduce (g as the
// update sees it: unscaled and clipped); terms by fo_red_term, partials per chunk as above. Every slot the operation
// reads is loaded (an inactive one reads 0).
template <typename P, typename C, int NRED, typename Op, typename Values>
__device__ __forceinline__ void fo_table_reduce(const Op& op, FO_TABLE_PARAMS, const int (&ops)[NRED],
                                                double* __restrict__ partials, Values values) {
    fo_block_reduce<NRED>(ops, nchunks, [&](long long c, long long j, long long nthreads, double (&acc)[NRED]) {
        long long t, start, n;
        fo_chunk_span(chunks, c, chunk_elems, sizes, t, start, n);
        const P* p = reinterpret_cast<const P*>(ptrs[t]) + start;
        const P* g = reinterpret_cast<const P*>(grad_ptrs[t]) + start;
        const C* s[Op::NSLOTS];
#pragma unroll
        for (int k = 0; k < Op::NSLOTS; ++k)
            s[k] = (Op::ACTIVE & (1u << k)) ? reinterpret_cast<const C*>(ptrs[(k + 1) * ntensors + t]) + start : 0;
        for (long long i = j; i < n; i += nthreads) {
            const C pc = fo_io<P, C>::load(p[i]);
            const C gc = op.grad(fo_io<P, C>::load(g[i]));
            C sc[Op::NSLOTS];
#pragma unroll
            for (int k = 0; k < Op::NSLOTS; ++k) sc[k] = (Op::ACTIVE & (1u << k)) ? s[k][i] : C(0);
            double v[NRED];
            values(pc, gc, sc, v);
#pragma unroll
            for (int r = 0; r < NRED; ++r) acc[r] = fo_red_combine(ops[r], acc[r], fo_red_term(v[r], ops[r], 2.0));
        }
    }, [&](long long c, const double (&out)[NRED]) {
#pragma unroll
        for (int r = 0; r < NRED; ++r) partials[c * NRED + r] = out[r];
    });
}

// optax.scale_by_trust_ratio's factor from two sums of squares (fastopt.optimizers.lamb.trust_ratio): in float64,
// coefficient * ||p|| / (||u|| + eps), 1 when either norm is 0, rounded once to C.
template <typename C>
__device__ __forceinline__ C fo_trust_ratio(double param_sumsq, double update_sumsq, double coefficient, double eps) {
    const double p_norm = sqrt(param_sumsq), u_norm = sqrt(update_sumsq);
    if (p_norm == 0.0 || u_norm == 0.0) return C(1);
    return (C)(coefficient * p_norm / (u_norm + eps));
}

#endif  // FASTOPT_COMMON_CUH
