/* bench_util.cuh — what tools/cuda's microbenchmarks (gemv_bench.cu,
 * attn_bench.cu) share: the CUDA error check, random values in [-1, 1)
 * from a hash of the element's index (no host copies: the inputs are
 * GiB-sized), and the device set-up. Define BENCH_NAME (the program's
 * name in messages) before including it. */
#ifndef LETHE_BENCH_UTIL_CUH
#define LETHE_BENCH_UTIL_CUH

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef BENCH_NAME
#error "define BENCH_NAME before including bench_util.cuh"
#endif

/* a failed CUDA call ends the program with status 2 */
#define CK(call)                                                                                          \
    do {                                                                                                  \
        cudaError_t e_ = (call);                                                                          \
        if (e_ != cudaSuccess) {                                                                          \
            fprintf(stderr, BENCH_NAME ": %s: %s (line %d)\n", #call, cudaGetErrorString(e_), __LINE__); \
            exit(2);                                                                                      \
        }                                                                                                 \
    } while (0)

__device__ uint32_t hash32(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return (uint32_t)x;
}
__device__ float unit(uint64_t i) { return (float)(hash32(i) >> 8) * (2.0f / 16777216.0f) - 1.0f; }   /* [-1, 1) */

/* x [n] f32: element i = unit of (seed, i); one thread an element */
__global__ void k_fill_f(float *x, int64_t n, uint64_t seed) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = unit(seed * 0x9E3779B97F4A7C15ull + (uint64_t)i);
}

/* Device 0, a stream and two timing events. 2 (said on stderr) when there
 * is no CUDA device, else 0. */
static int bench_open(cudaDeviceProp *prop, cudaStream_t *st, cudaEvent_t *e0, cudaEvent_t *e1) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        fprintf(stderr, BENCH_NAME ": no CUDA device\n");
        return 2;
    }
    CK(cudaGetDeviceProperties(prop, 0));
    CK(cudaStreamCreate(st));
    CK(cudaEventCreate(e0));
    CK(cudaEventCreate(e1));
    return 0;
}

#endif
