/* k_elementwise.cu — GET_ROWS, RMS_NORM, ADD/MUL, SWIGLU, DMS_DECISION, and
 * the fused decode passes (ADD + RMS_NORM + q8 blocks, SWIGLU + q8 blocks;
 * cuda_fuse.cuh has their arithmetic and why).
 *
 * Legend: T rows (tokens), E / N / n row widths or element counts, R gathered
 * rows, Nw rows of the weight, Hkv KV heads, G query heads per KV head,
 * D head dim, xq q8 activation blocks [rows][E / 32][64 B] (cuda_gemv.cuh).
 * All activations f32, contiguous [rows, width].
 * These ops are memory-bound and tiny next to the matmuls: plain grid-stride
 * code, one block per row where a row reduction is needed.
 */
#include "cuda_kernels.h"
#include "cuda_launch.cuh"
#include "cuda_fuse.cuh"   /* cuda_quant.cuh, cuda_gemv.cuh's q8 blocks */

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

/* The block's sum of squares (each thread's partial ss) -> the row's scale,
 * in THE order of every RMS_NORM launch (cuda_fuse.cuh): warp butterflies,
 * then warp 0 over the CU_NORM_THREADS / 32 warp sums. Double partial sums:
 * E up to ~8k squares stay within the element-wise 1e-7 bound against the
 * CPU (which sums in double too). Ends with a barrier: shared memory the
 * threads wrote before it is visible to all after it. */
__device__ __forceinline__ float block_rms_scale(double ss, int64_t E, float eps) {
    __shared__ double part[CU_NORM_RED_BYTES / sizeof(double)];   /* one per warp, at most 32 */
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
    return cu_rms_scale(part[0], E, eps);
}

/* grid (T), block CU_NORM_THREADS. */
__global__ void __launch_bounds__(CU_NORM_THREADS)
k_rms_norm(const float *__restrict__ x, const float *__restrict__ w, float *__restrict__ y, int64_t E, float eps) {
    const float *xr = x + blockIdx.x * E;
    float *yr = y + blockIdx.x * E;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < E; i += blockDim.x) ss = cu_sq_add(ss, xr[i]);
    const float scale = block_rms_scale(ss, E, eps);
    for (int64_t i = threadIdx.x; i < E; i += blockDim.x) yr[i] = cu_rms_apply(xr[i], scale, w, i);
}

extern "C" cudaError_t lethe_cu_rms_norm(const float *x, const float *w, float *y, int64_t T, int64_t E, float eps,
                                         cudaStream_t stream) {
    if (T <= 0) return cudaSuccess;
    LETHE_CU_LAUNCH((unsigned)T, CU_NORM_THREADS, 0, stream, k_rms_norm)(x, w, y, E, eps);
    return cudaGetLastError();
}

/* Fused decode passes (cuda_fuse.cuh). grid (T), block CU_NORM_THREADS,
 * dynamic shared memory cu_norm_pad(E) floats: the row x' (= a + b, or a).
 * Phase 1, thread t: elements t, t + 256, ... (k_rms_norm's order): x'
 * (written to sum when the ADD is fused), its padded shared copy, the sum
 * of squares. Phase 2: the normalized row as k_rms_norm writes it (y,
 * element-strided) or, with xq, per q8 block k (thread k, k + 256, ...):
 * its 32 values (to y as well when y), then k_quant_q8's block. */
/* a, b and y carry no __restrict__: y may share a source's bytes (cuda_plan.c fold_add: the very
 * same rows, or one row), which is safe only because all reads precede the barrier. */
__global__ void __launch_bounds__(CU_NORM_THREADS)
k_norm_fused(const float *a, const float *b, float *sum, const float *__restrict__ w, float *y,
             uint8_t *__restrict__ xq, int64_t E, float eps) {
    LETHE_CU_DYN_SHARED(float, row);   /* [cu_norm_pad(E)] */
    const size_t r0 = (size_t)blockIdx.x * (size_t)E;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < E; i += blockDim.x) {
        const float v = b ? cu_fadd(a[r0 + i], b[r0 + i]) : a[r0 + i];
        if (sum) sum[r0 + i] = v;
        row[cu_norm_pad(i)] = v;
        ss = cu_sq_add(ss, v);
    }
    const float scale = block_rms_scale(ss, E, eps);   /* its barriers publish row[] */
    if (!xq) {
        for (int64_t i = threadIdx.x; i < E; i += blockDim.x) y[r0 + i] = cu_rms_apply(row[cu_norm_pad(i)], scale, w, i);
        return;
    }
    const int64_t nb = E / 32;
    for (int64_t k = threadIdx.x; k < nb; k += blockDim.x) {
        float v[32];
        cu_norm_block(row, k, scale, w, v);
        if (y) {
            float4 *dst = (float4 *)(y + r0 + 32 * k);
#pragma unroll
            for (int j = 0; j < 8; j++) dst[j] = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
        }
        uint8_t out[CU_Q8_BLOCK_BYTES];
        cu_q8_quant_block(v, out);
        uint4 *dq = (uint4 *)(xq + ((size_t)blockIdx.x * (size_t)nb + (size_t)k) * CU_Q8_BLOCK_BYTES);
#pragma unroll
        for (int j = 0; j < CU_Q8_BLOCK_BYTES / 16; j++) {
            uint4 u;
            memcpy(&u, out + 16 * j, 16);
            dq[j] = u;
        }
    }
}

extern "C" cudaError_t lethe_cu_norm_fused(const float *a, const float *b, float *sum, const float *w, float *y,
                                           void *xq, int64_t T, int64_t E, float eps, cudaStream_t stream) {
    if (T <= 0) return cudaSuccess;
    if (E <= 0 || E > CU_NORM_MAX_E || (xq && E % 32 != 0) || (!xq && !y)) return cudaErrorInvalidValue;
    const size_t smem = (size_t)cu_norm_pad(E) * sizeof(float);   /* + CU_NORM_RED_BYTES static: cu_norm_smem_bytes */
    LETHE_CU_LAUNCH((unsigned)T, CU_NORM_THREADS, smem, stream, k_norm_fused)(a, b, sum, w, y, (uint8_t *)xq, E, eps);
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
        y[i] = cu_silu_mul(g[i], u[i]);
}

extern "C" cudaError_t lethe_cu_swiglu(const float *gate, const float *up, float *y, int64_t n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    LETHE_CU_LAUNCH(grid_for(n, 256), 256, 0, stream, k_swiglu)(gate, up, y, n);
    return cudaGetLastError();
}

/* SWIGLU then the q8 blocks of its result (cuda_fuse.cuh): one thread per
 * block of 32 (k_quant_q8's mapping), y [n] written only when non-NULL. */
__global__ void k_swiglu_q8(const float *__restrict__ g, const float *__restrict__ u, float *__restrict__ y,
                            uint8_t *__restrict__ xq, int64_t n_blocks) {
    const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n_blocks) return;
    float gv[32], uv[32], v[32];
    const float4 *gs = (const float4 *)(g + 32 * k), *us = (const float4 *)(u + 32 * k);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const float4 x = __ldg(gs + j), z = __ldg(us + j);
        gv[4 * j] = x.x; gv[4 * j + 1] = x.y; gv[4 * j + 2] = x.z; gv[4 * j + 3] = x.w;
        uv[4 * j] = z.x; uv[4 * j + 1] = z.y; uv[4 * j + 2] = z.z; uv[4 * j + 3] = z.w;
    }
    cu_swiglu_block(gv, uv, 0, v);
    if (y) {
        float4 *dst = (float4 *)(y + 32 * k);
#pragma unroll
        for (int j = 0; j < 8; j++) dst[j] = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
    }
    uint8_t out[CU_Q8_BLOCK_BYTES];
    cu_q8_quant_block(v, out);
    uint4 *dq = (uint4 *)(xq + (size_t)k * CU_Q8_BLOCK_BYTES);
#pragma unroll
    for (int j = 0; j < CU_Q8_BLOCK_BYTES / 16; j++) {
        uint4 q;
        memcpy(&q, out + 16 * j, 16);
        dq[j] = q;
    }
}

extern "C" cudaError_t lethe_cu_swiglu_q8(const float *gate, const float *up, float *y, void *xq, int64_t n,
                                          cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    if (n % 32 != 0 || !xq) return cudaErrorInvalidValue;
    const int64_t nb = n / 32;
    LETHE_CU_LAUNCH((unsigned)((nb + 127) / 128), 128, 0, stream, k_swiglu_q8)(gate, up, y, (uint8_t *)xq, nb);
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
