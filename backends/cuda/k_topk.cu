/* k_topk.cu — TOP_K: per row of x [T, V] f32 the k best (id, value bits)
 * pairs, best first, in the host sampler's order. The selection logic is
 * cuda_topk.h's (read its header: keys, segments, the per-lane rescan);
 * this file is the thread mapping: one block of CU_TOPK_WG threads per
 * segment, a warp butterfly (__shfl_xor_sync on key and id) then the 8
 * warps' winners folded by every thread from shared memory; the shared
 * slots alternate by round parity, so each of the k rounds has one barrier.
 * Legend: T rows, V row width, k pairs kept, S segments per row. */
#include "cuda_kernels.h"
#include "cuda_launch.cuh"
#include "cuda_topk.h"

#define N_WARPS (CU_TOPK_WG / 32)

__global__ void __launch_bounds__(CU_TOPK_WG) k_top_k(const uint32_t *in, uint32_t *out, uint32_t V, uint32_t k,
                                                      uint32_t chunk, uint32_t S, int pass) {
    __shared__ uint32_t sh_k[2][N_WARPS], sh_i[2][N_WARPS];
    const uint32_t lane = threadIdx.x;
    size_t ob;
    const cu_topk_seg g = cu_topk_segment(in, V, k, chunk, S, pass, blockIdx.x, blockIdx.y, &ob);
    uint32_t bk, bi, bb;
    cu_topk_lane_best(&g, lane, CU_TOPK_WG, false, 0u, 0u, &bk, &bi, &bb);
    for (uint32_t j = 0; j < k; j++) {
        uint32_t mk = bk, mi = bi;
        for (int o = 16; o > 0; o >>= 1) {   /* the order is total: every lane ends with the warp's best */
            const uint32_t ok = __shfl_xor_sync(0xFFFFFFFFu, mk, o), oi = __shfl_xor_sync(0xFFFFFFFFu, mi, o);
            if (cu_topk_better(ok, oi, mk, mi)) {
                mk = ok;
                mi = oi;
            }
        }
        const uint32_t par = j & 1u;
        if ((lane & 31u) == 0u) {
            sh_k[par][lane >> 5] = mk;
            sh_i[par][lane >> 5] = mi;
        }
        __syncthreads();
        uint32_t wk = sh_k[par][0], wi = sh_i[par][0];
        for (int w = 1; w < N_WARPS; w++)
            if (cu_topk_better(sh_k[par][w], sh_i[par][w], wk, wi)) {
                wk = sh_k[par][w];
                wi = sh_i[par][w];
            }
        if (wi == CU_TOPK_EMPTY_ID) {   /* the segment is exhausted: empty slots */
            if (lane == 0u) {
                out[ob + 2u * j] = CU_TOPK_EMPTY_ID;
                out[ob + 2u * j + 1u] = CU_TOPK_EMPTY_BITS;
            }
        } else if (bi == wi) {          /* ids are unique: one owner */
            out[ob + 2u * j] = bi;
            out[ob + 2u * j + 1u] = bb;
            cu_topk_lane_best(&g, lane, CU_TOPK_WG, true, wk, wi, &bk, &bi, &bb);
        }
    }
}

extern "C" cudaError_t lethe_cu_top_k(const float *x, int32_t *out, int64_t T, int64_t V, int k, void *scratch,
                                      cudaStream_t stream) {
    uint32_t S, chunk;
    cu_topk_plan((uint32_t)V, (uint32_t)k, &S, &chunk);
    const uint32_t *xi = (const uint32_t *)x;
    uint32_t *o = (uint32_t *)out;
    if (S == 1) {
        LETHE_CU_LAUNCH(dim3(1, (unsigned)T), CU_TOPK_WG, 0, stream, k_top_k)(xi, o, (uint32_t)V, (uint32_t)k, chunk, S, 0);
        return cudaGetLastError();
    }
    uint32_t *mid = (uint32_t *)scratch;
    LETHE_CU_LAUNCH(dim3(S, (unsigned)T), CU_TOPK_WG, 0, stream, k_top_k)(xi, mid, (uint32_t)V, (uint32_t)k, chunk, S, 0);
    LETHE_CU_LAUNCH(dim3(1, (unsigned)T), CU_TOPK_WG, 0, stream, k_top_k)(mid, o, (uint32_t)V, (uint32_t)k, chunk, S, 1);
    return cudaGetLastError();
}
