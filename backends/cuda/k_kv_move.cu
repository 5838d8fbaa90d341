/* k_kv_move.cu — KV row moves inside the managed KV buffer (backend.h
 * buffer_move_rows): a chunk of moves as a gather launch into scratch and a
 * scatter launch out of it. The index math and why two phases:
 * cuda_kv_move.h. One lane per word (16, 4 or 1 bytes), grid-stride.
 * Legend: n moves, R row bytes, WPR words per row. */
#include "cuda_kernels.h"
#include "cuda_launch.cuh"
#include "cuda_kv_move.h"

template <typename Wt>
__global__ void k_move_rows(int phase, uint8_t *buf, const size_t *mv, int64_t lanes, int64_t wpr, size_t row_bytes,
                            uint8_t *scratch) {
    const uint8_t *src = phase ? scratch : buf;
    uint8_t *dst = phase ? buf : scratch;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < lanes; g += (int64_t)gridDim.x * blockDim.x) {
        size_t from, to;
        cu_move_lane(phase, mv, g, wpr, (int)sizeof(Wt), row_bytes, &from, &to);
        *(Wt *)(dst + to) = *(const Wt *)(src + from);
    }
}

template <typename Wt>
static void launch(int phase, uint8_t *buf, const size_t *mv, int64_t lanes, int64_t wpr, size_t row_bytes,
                   uint8_t *scratch, cudaStream_t stream) {
    const int64_t want = (lanes + 255) / 256;
    const unsigned blocks = (unsigned)(want < 65535 ? want : 65535);
    LETHE_CU_LAUNCH(blocks, 256, 0, stream, k_move_rows<Wt>)(phase, buf, mv, lanes, wpr, row_bytes, scratch);
}

extern "C" cudaError_t lethe_cu_move_rows(void *buf, const size_t *mv, int64_t n, size_t row_bytes, int wb,
                                          void *scratch, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    const int64_t wpr = (int64_t)(row_bytes / (size_t)wb), lanes = n * wpr;
    for (int phase = 0; phase < 2; phase++) {
        if (wb == 16)
            launch<uint4>(phase, (uint8_t *)buf, mv, lanes, wpr, row_bytes, (uint8_t *)scratch, stream);
        else if (wb == 4)
            launch<uint32_t>(phase, (uint8_t *)buf, mv, lanes, wpr, row_bytes, (uint8_t *)scratch, stream);
        else
            launch<uint8_t>(phase, (uint8_t *)buf, mv, lanes, wpr, row_bytes, (uint8_t *)scratch, stream);
        const cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}
