/* k_elementwise.cu — GET_ROWS, RMS_NORM, ADD/MUL, SWIGLU, DMS_DECISION.
 *
 * Legend: T rows (tokens), E / N / n row widths or element counts, R gathered
 * rows, Nw rows of the weight, Hkv KV heads, G query heads per KV head,
 * D head dim. All activations f32, contiguous [rows, width].
 * These ops are memory-bound and tiny next to the matmuls: plain grid-stride
 * code, one block per row where a row reduction is needed.
 */
#include "cuda_kernels.h"
#include "cuda_launch.cuh"
#include "cuda_quant.cuh"

extern "C" int lethe_cu_wtype_ok(int t) { return cu_block_bytes(t) != 0; }

/* ------------------------------------------------------------ GET_ROWS */

/* grid (R), block 128: 4 threads per 32-element block (one part each). */
template <int WT>
__global__ void k_get_rows(const uint8_t *__restrict__ w, size_t row_bytes, int64_t Nw, int64_t E,
                           const int32_t *__restrict__ ids, float *__restrict__ out, int *err) {
    const int64_t r = blockIdx.x;
    const int32_t id = ids[r];
    float *dst = out + r * E;
    if (id < 0 || id >= Nw) {
        for (int64_t i = threadIdx.x; i < E; i += blockDim.x) dst[i] = 0.0f;
        if (threadIdx.x == 0) atomicExch(err, 1);
        return;
    }
    const uint8_t *row = w + (size_t)id * row_bytes;
    const int64_t n_parts = E / 32 * 4;
    for (int64_t q = threadIdx.x; q < n_parts; q += blockDim.x) {
        const int64_t blk = q >> 2;
        const int p = (int)(q & 3);
        float v[8];
        dq_part<WT>(row + blk * cu_block_bytes(WT), p, v);
#pragma unroll
        for (int j = 0; j < 8; j++) dst[blk * 32 + part_idx<WT>(p, j)] = v[j];
    }
}

extern "C" cudaError_t lethe_cu_get_rows(int wtype, const void *w, size_t row_bytes, int64_t Nw, int64_t E,
                                         const int32_t *ids, int64_t R, float *out, int *err, cudaStream_t stream) {
    if (R <= 0) return cudaSuccess;
#define L(WT) LETHE_CU_LAUNCH((unsigned)R, 128, 0, stream, k_get_rows<WT>)((const uint8_t *)w, row_bytes, Nw, E, ids, out, err)
    CU_WTYPE_DISPATCH(wtype, L)
#undef L
    return cudaGetLastError();
}

/* ------------------------------------------------------------ RMS_NORM */

/* grid (T), block 256. Double partial sums: E up to ~8k squares stay within
 * the element-wise 1e-7 bound against the CPU (which sums in double too). */
__global__ void k_rms_norm(const float *__restrict__ x, const float *__restrict__ w, float *__restrict__ y,
                           int64_t E, float eps) {
    __shared__ double part[32];
    const float *xr = x + blockIdx.x * E;
    float *yr = y + blockIdx.x * E;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < E; i += blockDim.x) ss += (double)xr[i] * xr[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        ss = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if (threadIdx.x == 0) part[0] = ss;
    }
    __syncthreads();
    const float scale = (float)(1.0 / sqrt(part[0] / (double)E + (double)eps));
    for (int64_t i = threadIdx.x; i < E; i += blockDim.x) yr[i] = w ? xr[i] * scale * w[i] : xr[i] * scale;
}

extern "C" cudaError_t lethe_cu_rms_norm(const float *x, const float *w, float *y, int64_t T, int64_t E, float eps,
                                         cudaStream_t stream) {
    if (T <= 0) return cudaSuccess;
    LETHE_CU_LAUNCH((unsigned)T, 256, 0, stream, k_rms_norm)(x, w, y, E, eps);
    return cudaGetLastError();
}

/* ------------------------------------------------- ADD / MUL / SWIGLU */

static unsigned grid_for(int64_t n, int threads) {
    int64_t g = (n + threads - 1) / threads;
    return (unsigned)(g < 65535 * 32 ? (g > 0 ? g : 1) : 65535 * 32);
}

__global__ void k_binary(int mul, const float *__restrict__ a, const float *__restrict__ b, float *__restrict__ y,
                         int64_t n, int64_t N, int bcast) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float bv = b[bcast ? i % N : i];
        y[i] = mul ? a[i] * bv : a[i] + bv;
    }
}

extern "C" cudaError_t lethe_cu_binary(int mul, const float *a, const float *b, float *y, int64_t T, int64_t N,
                                       int bcast, cudaStream_t stream) {
    const int64_t n = T * N;
    if (n <= 0) return cudaSuccess;
    LETHE_CU_LAUNCH(grid_for(n, 256), 256, 0, stream, k_binary)(mul, a, b, y, n, N, bcast);
    return cudaGetLastError();
}

__global__ void k_swiglu(const float *__restrict__ g, const float *__restrict__ u, float *__restrict__ y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

extern "C" cudaError_t lethe_cu_swiglu(const float *gate, const float *up, float *y, int64_t n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    LETHE_CU_LAUNCH(grid_for(n, 256), 256, 0, stream, k_swiglu)(gate, up, y, n);
    return cudaGetLastError();
}

/* --------------------------------------------------------- DMS_DECISION */

/* The CPU's position hash (backends/cpu/cpu_dms.c), bit for bit: splitmix64
 * of (pos, layer, head), compared as a double in [0, 1). */
__device__ __forceinline__ uint64_t dms_mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

__global__ void k_dms_decision(int mode, const float *__restrict__ x, int64_t xw, int64_t D, float *__restrict__ out,
                               int64_t T, int Hkv, int G, int per_layer, float scale, float offset, float rate,
                               int layer, const int32_t *__restrict__ pos) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= T * Hkv) return;
    const int64_t t = i / Hkv;
    const int h = (int)(i % Hkv), hs = per_layer ? 0 : h;
    float logit;
    if (mode == 2) {
        const uint64_t hh = dms_mix(((uint64_t)(uint32_t)pos[t] << 24) ^ ((uint64_t)(uint32_t)layer << 12) ^
                                    (uint64_t)(uint32_t)hs);
        const double u = (double)(hh >> 11) * (1.0 / 9007199254740992.0);
        logit = u < (double)rate ? 1.0f : -1.0f;
    } else if (mode == 0) {
        /* no FMA contraction: the CPU rounds the product first (ISO C, fp-contract off),
         * and a logit near 0 must flip the same way */
        logit = __fsub_rn(__fmul_rn(scale, x[((size_t)t * Hkv * G + (size_t)hs * G) * D + D - 1]), offset);
    } else {
        logit = __fsub_rn(__fmul_rn(scale, x[(size_t)t * xw + (xw == 1 ? 0 : hs)]), offset);
    }
    out[i] = logit;
}

extern "C" cudaError_t lethe_cu_dms_decision(int mode, const float *x, int64_t xw, int64_t D, float *out, int64_t T,
                                             int Hkv, int G, int per_layer, float scale, float offset, float rate,
                                             int layer, const int32_t *pos, cudaStream_t stream) {
    const int64_t n = T * Hkv;
    if (n <= 0) return cudaSuccess;
    LETHE_CU_LAUNCH((unsigned)((n + 127) / 128), 128, 0, stream, k_dms_decision)(mode, x, xw, D, out, T, Hkv, G, per_layer, scale,
                                                                    offset, rate, layer, pos);
    return cudaGetLastError();
}
