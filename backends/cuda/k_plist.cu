/* k_plist.cu — the page-list mirror's pending upload applied to its
 * device arena (cuda_plist.h): first the runs of relocated lists (one CTA
 * per run), then the pairs (one lane each, grid-stride). Runs read extents
 * no run writes, pairs name distinct entries (cu_plist_sync), so lanes
 * never race; the launch boundary orders the pairs after the runs.
 * Legend: n pairs {arena index, page id}, n_runs runs {from, to, count}. */
#include "cuda_kernels.h"
#include "cuda_launch.cuh"
#include "cuda_plist.h"

__global__ void k_plist_scatter(int32_t *arena, const int32_t *pairs, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        cu_plist_lane(arena, pairs, i);
}

__global__ void k_plist_move(int32_t *arena, const int32_t *runs, int64_t n_runs) {
    for (int64_t r = blockIdx.x; r < n_runs; r += gridDim.x)
        for (int32_t i = (int32_t)threadIdx.x; i < runs[3 * r + 2]; i += (int32_t)blockDim.x)
            cu_plist_move_lane(arena, runs, r, i);
}

extern "C" cudaError_t lethe_cu_plist_move(int32_t *arena, const int32_t *runs, int64_t n_runs, cudaStream_t stream) {
    if (n_runs <= 0) return cudaSuccess;
    const unsigned blocks = (unsigned)(n_runs < 65535 ? n_runs : 65535);
    LETHE_CU_LAUNCH(blocks, 256, 0, stream, k_plist_move)(arena, runs, n_runs);
    return cudaGetLastError();
}

extern "C" cudaError_t lethe_cu_plist_scatter(int32_t *arena, const int32_t *pairs, int64_t n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    const int64_t want = (n + 255) / 256;
    const unsigned blocks = (unsigned)(want < 65535 ? want : 65535);
    LETHE_CU_LAUNCH(blocks, 256, 0, stream, k_plist_scatter)(arena, pairs, n);
    return cudaGetLastError();
}
