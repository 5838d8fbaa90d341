/* k_gemv.cu — decode matmul: y [T, N] = x [T, K] . w [N, K]^T for T <= 8.
 *
 * Legend: N weight rows (outputs), K reduced dim (K % 32 == 0), T tokens in
 * the micro-batch (1 for one sequence, up to 8 parallel sequences), WT the
 * weight row type (cuda_quant.cuh).
 *
 * Decode is bound by the weight bytes: each weight is read once for all T
 * tokens (batched GEMV), dequantized in registers, never staged. A warp owns
 * one output row; its 32 lanes are 8 blocks x 4 parts, so one warp step
 * covers 256 consecutive weights and each lane reads its x values as two
 * 16-byte loads per token (x stays in L1/L2: every warp of the grid reads it).
 * Lanes keep T partial sums; a butterfly reduction ends the row.
 *
 * Tuning left for a GPU session (tools/gpu-check.sh measures it): wider
 * weight loads per lane (a lane owning whole blocks, 16-byte loads), several
 * rows per warp for small K, and q8_1 activations with dp4a as llama.cpp's
 * mmvq does.
 */
#include "cuda_kernels.h"
#include "cuda_gemv.cuh"

#define GEMV_WARPS 4

template <int WT, int T>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
k_gemv(const uint8_t *__restrict__ w, size_t row_bytes, const float *__restrict__ x, float *__restrict__ y,
       int64_t N, int64_t K) {
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    float acc[T];
    gemv_lane<WT, T>(w + (size_t)row * row_bytes, x, K, lane, acc);
#pragma unroll
    for (int t = 0; t < T; t++) {
        float s = acc[t];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) y[(size_t)t * N + row] = s;
    }
}

template <int WT>
static cudaError_t gemv_t(const void *w, size_t row_bytes, const float *x, float *y, int64_t N, int64_t K, int64_t T,
                          cudaStream_t stream) {
    const unsigned grid = (unsigned)((N + GEMV_WARPS - 1) / GEMV_WARPS);
    const uint8_t *wb = (const uint8_t *)w;
    switch (T) {
#define C(TT) case TT: k_gemv<WT, TT><<<grid, GEMV_WARPS * 32, 0, stream>>>(wb, row_bytes, x, y, N, K); break;
    C(1) C(2) C(3) C(4) C(5) C(6) C(7) C(8)
#undef C
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

extern "C" cudaError_t lethe_cu_gemv(int wtype, const void *w, size_t row_bytes, const float *x, float *y, int64_t N,
                                     int64_t K, int64_t T, cudaStream_t stream) {
    if (N <= 0 || T <= 0) return cudaSuccess;
    if (K % 32 != 0 || T > LETHE_CU_GEMV_MAX_T) return cudaErrorInvalidValue;
#define L(WT) return gemv_t<WT>(w, row_bytes, x, y, N, K, T, stream)
    CU_WTYPE_DISPATCH(wtype, L)
#undef L
}
