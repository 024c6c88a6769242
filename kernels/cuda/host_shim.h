// fastopt: compile a kernel family's CUDA C for the host with g++, to run its arithmetic on a CPU (tests, no GPU).
//
// fastopt.cuda_build.build_host_library puts this text first, then the family source (common.cuh spliced in), then
// generated extern "C" entry points that emulate a launch with fo_host_launch: every (block, thread) pair of the grid
// runs the kernel body to completion, one after the other. That is exact for the update kernels, which use no shared
// memory, barriers, warp operations or atomics, and whose threads never touch the same element; it cannot model any
// of those, nor races. The reduction kernels' one use of shared memory and barriers (fo_block_reduce in
// common.cuh) has a host branch that computes the same values in the same order serially. Build with -ffp-contract=off so that a*b + c stays two roundings, as the reference computes
// it (the device build uses --fmad=false for the same reason); the host does not flush denormals (CuPy's -ftz does).

#ifndef FASTOPT_HOST_SHIM_H
#define FASTOPT_HOST_SHIM_H

#define FASTOPT_HOST 1

#include <cmath>
#include <math.h>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

using std::sqrt;

// A vector access at an address not aligned to its size would fault on the device (and may on the host): here the
// range is abandoned before the access, and the entry points return -2.
static int fo_host_misaligned = 0;
#define FO_ASSERT_ALIGNED(ptr, bytes) \
    do { if (((unsigned long long)(ptr)) % (unsigned long long)(bytes)) { fo_host_misaligned = 1; return; } } while (0)

struct fo_host_dim3 { unsigned int x, y, z; };
static fo_host_dim3 threadIdx, blockIdx, blockDim, gridDim;

static inline unsigned int __float_as_uint(float x) { unsigned int u; std::memcpy(&u, &x, 4); return u; }
static inline float __uint_as_float(unsigned int u) { float x; std::memcpy(&x, &u, 4); return x; }
static inline double __longlong_as_double(long long u) { double x; std::memcpy(&x, &u, 8); return x; }

// IEEE binary16 through the compiler's _Float16 (GCC >= 12 and Clang on x86-64 and AArch64): the conversions round
// to nearest even, as cvt.rn.f16.f32 does on the device.
static inline float fo_host_half_to_float(unsigned short h) { _Float16 x; std::memcpy(&x, &h, 2); return (float)x; }
static inline unsigned short fo_host_float_to_half(float f) {
    _Float16 x = (_Float16)f;
    unsigned short h;
    std::memcpy(&h, &x, 2);
    return h;
}

// Run `body()` once per thread of a one-dimensional grid, setting the built-in indices as the device would.
template <typename Body>
static inline void fo_host_launch(unsigned int grid, unsigned int block, Body body) {
    gridDim.x = grid; gridDim.y = gridDim.z = 1;
    blockDim.x = block; blockDim.y = blockDim.z = 1;
    threadIdx.y = threadIdx.z = blockIdx.y = blockIdx.z = 0;
    fo_host_misaligned = 0;
    for (unsigned int b = 0; b < grid; ++b) {
        blockIdx.x = b;
        for (unsigned int t = 0; t < block; ++t) {
            threadIdx.x = t;
            body();
        }
    }
}

#endif  // FASTOPT_HOST_SHIM_H
