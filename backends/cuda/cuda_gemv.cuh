/* cuda_gemv.cuh — the per-lane body of the decode GEMV (k_gemv.cu), in a
 * header so that k_hostcheck.cu runs the very same code on the host.
 * Legend: K reduced dim (K % 32 == 0), T tokens, WT weight row type. */
#ifndef LETHE_CUDA_GEMV_CUH
#define LETHE_CUDA_GEMV_CUH

#include "cuda_quant.cuh"

/* One lane's share of a row: lane = 4 * bi + p takes part p of blocks
 * bi, bi + 8, ... and leaves T partial sums in acc. */
template <int WT, int T>
CU_HD void gemv_lane(const uint8_t *wr, const float *x, int64_t K, int lane, float acc[T]) {
    const int bi = lane >> 2, p = lane & 3;
    const int64_t nblk = K / 32;
    /* which x elements this lane's 8 values multiply: two runs of 4 */
    const bool split = part_idx<WT>(p, 4) != part_idx<WT>(p, 3) + 1;
    const int o0 = part_idx<WT>(p, 0), o1 = split ? part_idx<WT>(p, 4) : o0 + 4;
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
    for (int64_t blk = bi; blk < nblk; blk += 8) {
        float v[8];
        dq_part<WT>(wr + blk * cu_block_bytes(WT), p, v);
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float *xb = x + (size_t)t * K + blk * 32;
            const float4 a = *(const float4 *)(xb + o0), b = *(const float4 *)(xb + o1);
            acc[t] += v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w + v[4] * b.x + v[5] * b.y + v[6] * b.z +
                      v[7] * b.w;
        }
    }
}

#endif
