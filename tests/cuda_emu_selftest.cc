/* cuda_emu_selftest.cc — kernels with the bugs the CUDA emulator must catch
 * (tests/test_cuda_emu.c): each would hang, race or read too early on a GPU.
 * Built like the real kernels (backends/cuda/emu/emu_device.h). */
#include "emu_device.h"
#include "cuda_launch.cuh"
#include "cuda_mma.cuh"

/* thread 5 leaves before a barrier the others wait at */
__global__ void k_exit_before_barrier(int *out) {
    __shared__ int s[64];
    if (threadIdx.x == 5) return;
    s[threadIdx.x] = 1;
    __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

/* even and odd threads wait at two different barriers */
__global__ void k_divergent(int *out) {
    if (threadIdx.x & 1) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

/* a neighbour's shared value read with no barrier in between */
__global__ void k_race(int *out) {
    __shared__ int s[64];
    s[threadIdx.x] = (int)threadIdx.x + 1;
    out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

/* the same with its barrier: order-independent */
__global__ void k_norace(int *out) {
    __shared__ int s[64];
    s[threadIdx.x] = (int)threadIdx.x + 1;
    __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

/* a cp.async copy read before and after the wait that retires it */
__global__ void k_cp_async(const uint8_t *src, uint8_t *before, uint8_t *after) {
    __shared__ __align__(16) uint8_t s[32 * 16];
    const int l = threadIdx.x;
    memset(s + 16 * l, 0xAB, 16);
    lethe_emu::cp_async16(s + 16 * l, src + 16 * l);
    lethe_emu::cp_async_commit();
    memcpy(before + 16 * l, s + 16 * l, 16);
    lethe_emu::cp_async_wait(0);
    memcpy(after + 16 * l, s + 16 * l, 16);
}

/* lane 3 leaves; the others shuffle over the full mask */
__global__ void k_shfl_exited(int *out) {
    if (threadIdx.x == 3) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

/* warp reductions every way: xor, down, idx, ballot, syncthreads_count */
__global__ void k_collectives(int *out) {
    const int l = threadIdx.x & 31;
    int x = l + 1, d = l + 1;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    for (int o = 16; o > 0; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, o);
    const int b = __shfl_sync(0xffffffffu, l * 10, 7);
    const unsigned bal = __ballot_sync(0xffffffffu, l % 3 == 0);
    const int cnt = __syncthreads_count(threadIdx.x % 5 == 0);
    out[4 * threadIdx.x] = x;
    out[4 * threadIdx.x + 1] = l == 0 ? d : -1;
    out[4 * threadIdx.x + 2] = b;
    out[4 * threadIdx.x + 3] = (int)bal + cnt;
}

/* block 0 (mode 0) writes its shared array, block 1 reads it without
 * writing: shared memory is the block's own, so it must see poison (0xFF
 * bytes), not block 0's values */
__global__ void k_uninit(int *out) {
    __shared__ int s[64];
    if (blockIdx.x == 0) s[threadIdx.x] = 7;
    __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = s[threadIdx.x];
}

/* 50 KiB of static shared memory: more than a launch allows */
__global__ void k_big_shared(int *out) {
    __shared__ uint8_t s[50 * 1024];
    s[threadIdx.x] = 1;
    s[sizeof s - 1 - threadIdx.x] = 2;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x + 1] + s[sizeof s - 2 - threadIdx.x];
}

/* mma.sync m16n8k16 per warp: warp w's A = a + 256 w ([16][16] row-major),
 * B = b + 128 w ([16][8], k rows), C = D = c + 128 w ([16][8]); lanes load
 * and store their fragments by cuda_mma.cuh's layout functions. `leave`:
 * that lane returns before the mma (the warp is then incomplete). */
__global__ void k_mma(const float *a, const float *b, float *c, int leave) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if ((int)threadIdx.x == leave) return;
    uint32_t fa[4], fb[2];
    float fc[4];
    for (int r = 0; r < 4; r++) {
        float h[2];
        for (int x = 0; x < 2; x++) {
            int row, col;
            cu_mma_a_rc(lane, r, x, &row, &col);
            h[x] = a[256 * w + 16 * row + col];
        }
        fa[r] = cu_h2_pack(h[0], h[1]);
    }
    for (int r = 0; r < 2; r++) {
        float h[2];
        for (int x = 0; x < 2; x++) {
            int row, col;
            cu_mma_b_rc(lane, r, x, &row, &col);
            h[x] = b[128 * w + 8 * row + col];
        }
        fb[r] = cu_h2_pack(h[0], h[1]);
    }
    for (int i = 0; i < 4; i++) {
        int row, col;
        cu_mma_c_rc(lane, i, &row, &col);
        fc[i] = c[128 * w + 8 * row + col];
    }
    cu_mma_m16n8k16(fc, fa, fb);
    for (int i = 0; i < 4; i++) {
        int row, col;
        cu_mma_c_rc(lane, i, &row, &col);
        c[128 * w + 8 * row + col] = fc[i];
    }
}

/* dynamic shared memory (LETHE_CU_DYN_SHARED): block 0 writes it, block 1
 * only reads: it must see poison, as with __shared__ */
__global__ void k_dyn_uninit(int *out) {
    LETHE_CU_DYN_SHARED(int, s);
    if (blockIdx.x == 0) s[threadIdx.x] = 9;
    __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = s[threadIdx.x];
}

extern "C" int lethe_emu_selftest_mma(int threads, int leave, const float *a, const float *b, float *c) {
    LETHE_CU_LAUNCH(1, threads, 0, 0, k_mma)(a, b, c, leave);
    return (int)cudaGetLastError();
}

extern "C" int lethe_emu_selftest(int which, void *a, void *b, void *c) {
    switch (which) {
    case 0: LETHE_CU_LAUNCH(1, 64, 0, 0, k_exit_before_barrier)((int *)a); break;
    case 1: LETHE_CU_LAUNCH(1, 64, 0, 0, k_divergent)((int *)a); break;
    case 2: LETHE_CU_LAUNCH(1, 64, 0, 0, k_race)((int *)a); break;
    case 3: LETHE_CU_LAUNCH(1, 64, 0, 0, k_norace)((int *)a); break;
    case 4: LETHE_CU_LAUNCH(1, 32, 0, 0, k_cp_async)((const uint8_t *)a, (uint8_t *)b, (uint8_t *)c); break;
    case 5: LETHE_CU_LAUNCH(1, 32, 0, 0, k_shfl_exited)((int *)a); break;
    case 6: LETHE_CU_LAUNCH(1, 64, 0, 0, k_collectives)((int *)a); break;
    case 7: LETHE_CU_LAUNCH(1, 2048, 0, 0, k_norace)((int *)a); break;   /* over 1024 threads */
    case 10: LETHE_CU_LAUNCH(1, 64, 0, 0, k_big_shared)((int *)a); break;
    case 9: LETHE_CU_LAUNCH(2, 64, 0, 0, k_uninit)((int *)a); break;
    case 11: LETHE_CU_LAUNCH(2, 64, 64 * sizeof(int), 0, k_dyn_uninit)((int *)a); break;
    case 8: LETHE_CU_LAUNCH(dim3(1, 70000), 64, 0, 0, k_norace)((int *)a); break;   /* grid y over 65535 */
    }
    return (int)cudaGetLastError();
}
