/* k_hostcheck.cu — the CUDA kernels' block decoding and GEMV lane code run
 * on the host, for tests/test_cuda_host.c: CI has no GPU, but it can still
 * check that the device code reads every GGUF block type exactly as the CPU
 * backend does and that the GEMV's lane/part mapping covers each weight once.
 * Built into a small static library (not the module); no kernel is launched.
 * Legend: K elements of a row (K % 32 == 0), N rows, T tokens.
 */
#include "cuda_gemv.cuh"

#include <stddef.h>

template <int WT>
static void dequant_row(const uint8_t *row, int64_t K, float *out) {
    for (int64_t blk = 0; blk < K / 32; blk++)
        for (int p = 0; p < 4; p++) {
            float v[8];
            dq_part<WT>(row + blk * cu_block_bytes(WT), p, v);
            for (int j = 0; j < 8; j++) out[blk * 32 + part_idx<WT>(p, j)] = v[j];
        }
}

extern "C" int lethe_cu_host_dequant_row(int wtype, const void *row, int64_t K, float *out) {
    if (K % 32 != 0) return -1;
    const uint8_t *r = (const uint8_t *)row;
#define L(WT) dequant_row<WT>(r, K, out)
    switch (wtype) {
    case CU_F32: L(CU_F32); break;
    case CU_F16: L(CU_F16); break;
    case CU_BF16: L(CU_BF16); break;
    case CU_Q4_0: L(CU_Q4_0); break;
    case CU_Q4_1: L(CU_Q4_1); break;
    case CU_Q5_0: L(CU_Q5_0); break;
    case CU_Q5_1: L(CU_Q5_1); break;
    case CU_Q8_0: L(CU_Q8_0); break;
    default: return -1;
    }
#undef L
    return 0;
}

/* y [T, N] as the GEMV kernel computes it: 32 lanes per row, their partial sums added. */
template <int WT, int T>
static void gemv(const uint8_t *w, size_t row_bytes, const float *x, float *y, int64_t N, int64_t K) {
    for (int64_t row = 0; row < N; row++) {
        double sum[T] = {0};
        for (int lane = 0; lane < 32; lane++) {
            float acc[T];
            gemv_lane<WT, T>(w + (size_t)row * row_bytes, x, K, lane, acc);
            for (int t = 0; t < T; t++) sum[t] += acc[t];
        }
        for (int t = 0; t < T; t++) y[(size_t)t * N + row] = (float)sum[t];
    }
}

template <int WT>
static int gemv_t(const uint8_t *w, size_t rb, const float *x, float *y, int64_t N, int64_t K, int64_t T) {
    switch (T) {
    case 1: gemv<WT, 1>(w, rb, x, y, N, K); return 0;
    case 3: gemv<WT, 3>(w, rb, x, y, N, K); return 0;
    case 8: gemv<WT, 8>(w, rb, x, y, N, K); return 0;
    default: return -1;
    }
}

extern "C" int lethe_cu_host_gemv(int wtype, const void *w, size_t row_bytes, const float *x, float *y, int64_t N,
                                  int64_t K, int64_t T) {
    if (K % 32 != 0) return -1;
    const uint8_t *wb = (const uint8_t *)w;
    switch (wtype) {
    case CU_F32: return gemv_t<CU_F32>(wb, row_bytes, x, y, N, K, T);
    case CU_F16: return gemv_t<CU_F16>(wb, row_bytes, x, y, N, K, T);
    case CU_BF16: return gemv_t<CU_BF16>(wb, row_bytes, x, y, N, K, T);
    case CU_Q4_0: return gemv_t<CU_Q4_0>(wb, row_bytes, x, y, N, K, T);
    case CU_Q4_1: return gemv_t<CU_Q4_1>(wb, row_bytes, x, y, N, K, T);
    case CU_Q5_0: return gemv_t<CU_Q5_0>(wb, row_bytes, x, y, N, K, T);
    case CU_Q5_1: return gemv_t<CU_Q5_1>(wb, row_bytes, x, y, N, K, T);
    case CU_Q8_0: return gemv_t<CU_Q8_0>(wb, row_bytes, x, y, N, K, T);
    default: return -1;
    }
}
