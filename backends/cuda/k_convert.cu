/* k_convert.cu — prefill operands for cuBLAS: weight rows dequantized to
 * f16 (bf16 for bf16 weights, whose range f16 lacks) and activations
 * rounded to the same type, so cuBLAS runs a tensor-core GEMM with f32
 * accumulation.
 *
 * Legend: rows [r0, r1) of w [N, K] wtype (K % 32 == 0) -> out [r1 - r0, K];
 * x [n] f32 -> out [n]. Grid-stride over 8-value parts (cuda_quant.cuh).
 */
#include "cuda_kernels.h"
#include "cuda_launch.cuh"
#include "cuda_quant.cuh"

template <typename H>
__device__ __forceinline__ H to_h(float v);
template <>
__device__ __forceinline__ __half to_h<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 to_h<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <int WT, typename H>
__global__ void k_dequant_rows(const uint8_t *__restrict__ w, size_t row_bytes, int64_t r0, int64_t rows, int64_t K,
                               H *__restrict__ out) {
    const int64_t parts_per_row = K / 32 * 4, n = rows * parts_per_row;
    for (int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; q < n; q += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = q / parts_per_row, qq = q % parts_per_row, blk = qq >> 2;
        const int p = (int)(qq & 3);
        float v[8];
        dq_part<WT>(w + (size_t)(r0 + r) * row_bytes + blk * cu_block_bytes(WT), p, v);
        H *o = out + r * K + blk * 32;
#pragma unroll
        for (int j = 0; j < 8; j++) o[part_idx<WT>(p, j)] = to_h<H>(v[j]);
    }
}

static unsigned grid_for(int64_t n) {
    int64_t g = (n + 255) / 256;
    return (unsigned)(g < 65535 * 16 ? (g > 0 ? g : 1) : 65535 * 16);
}

extern "C" cudaError_t lethe_cu_dequant_rows(int wtype, const void *w, size_t row_bytes, int64_t r0, int64_t r1,
                                             int64_t K, void *out, int bf16, cudaStream_t stream) {
    const int64_t rows = r1 - r0;
    if (rows <= 0) return cudaSuccess;
    if (K % 32 != 0) return cudaErrorInvalidValue;
    const unsigned grid = grid_for(rows * (K / 8));
    const uint8_t *wb = (const uint8_t *)w;
#define L(WT)                                                                                                 \
    if (bf16) LETHE_CU_LAUNCH(grid, 256, 0, stream, k_dequant_rows<WT, __nv_bfloat16>)(wb, row_bytes, r0, rows, K,          \
                                                                          (__nv_bfloat16 *)out);              \
    else LETHE_CU_LAUNCH(grid, 256, 0, stream, k_dequant_rows<WT, __half>)(wb, row_bytes, r0, rows, K, (__half *)out)
    CU_WTYPE_DISPATCH(wtype, L)
#undef L
    return cudaGetLastError();
}

template <typename H>
__global__ void k_f32_to_h(const float *__restrict__ x, H *__restrict__ out, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = to_h<H>(x[i]);
}

extern "C" cudaError_t lethe_cu_f32_to_half(const float *x, void *out, int64_t n, int bf16, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    if (bf16) LETHE_CU_LAUNCH(grid_for(n), 256, 0, stream, k_f32_to_h<__nv_bfloat16>)(x, (__nv_bfloat16 *)out, n);
    else LETHE_CU_LAUNCH(grid_for(n), 256, 0, stream, k_f32_to_h<__half>)(x, (__half *)out, n);
    return cudaGetLastError();
}
