/* k_gemv.cu — decode matmul: y [T, N] = x [T, K] . w [N, K]^T for T <= 8.
 *
 * Legend: N weight rows (outputs), K reduced dim (K % 32 == 0), nb = K / 32
 * blocks, T tokens in the micro-batch (1 for one sequence, up to 8 parallel
 * sequences), WT the weight row type (cuda_quant.cuh), C blocks per staged
 * chunk, S chunks in flight per warp.
 *
 * Decode is bound by the weight bytes: each weight is read once for all T
 * tokens (batched GEMV). The per-lane arithmetic is in cuda_gemv.cuh (the
 * host tests run it); this file holds the thread mapping.
 *
 * q4_0 / q4_1 / q5_0 / q5_1 / q8_0 (k_gemv_q8): k_quant_q8 first rounds the
 * activations to q8 blocks, as the CPU backend does (one thread per block,
 * into scratch [T][nb][64 B]); then a warp owns 8 rows, 4 lanes per row,
 * lane p keeping 2 of the row's 8 float chains (p and p + 4) for every
 * token, which reproduces the CPU's float order and so its bits. A chain
 * is sequential over K, so the memory parallelism comes from staging, not
 * from splitting K: the warp copies chunks of C blocks of its 8 rows into
 * shared memory with 16-byte cp.async, S - 1 = 2 chunks ahead of the one
 * it computes, and lanes read their 4 + 4 codes from there; the activations
 * of a block are one broadcast load per part (every lane of that part in
 * the warp reads the same bytes).
 *
 * lethe_cu_gemv_xq: the activations' q8 blocks were already written by a
 * fused norm / swiglu launch (cuda_fuse.cuh, the plan decides): k_gemv_q8
 * alone, no k_quant_q8.
 *
 * f32 / f16 / bf16 (k_gemv_f): a warp owns 4 rows, lanes split K, 16-byte
 * weight loads, each activation load serves the 4 rows; butterfly sums.
 *
 * k_gemv_old: the first kernel (LETHE_CUDA_GEMV=old picks it, for the
 * comparison in tools/gpu-check.sh's gemv stage): a warp per row, blocks
 * dequantized to float against f32 activations.
 */
#include "cuda_kernels.h"
#include "cuda_launch.cuh"
#include "cuda_gemv.cuh"

#define GEMV_WARPS 4   /* old and float kernels */
#define Q8_STAGES 3

/* ------------------------------------------------------------ old kernel */

template <int WT, int T>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
k_gemv_old(const uint8_t *__restrict__ w, size_t row_bytes, const float *__restrict__ x, float *__restrict__ y,
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

/* ------------------------------------------------------- q8 activations */

/* x [T, K] f32 -> xq [T][nb] q8 blocks; one thread per block */
__global__ void k_quant_q8(const float *__restrict__ x, uint8_t *__restrict__ xq, int64_t n_blocks) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_blocks) return;
    float v[32];
    const float4 *src = (const float4 *)(x + i * 32);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const float4 a = __ldg(src + j);
        v[4 * j] = a.x; v[4 * j + 1] = a.y; v[4 * j + 2] = a.z; v[4 * j + 3] = a.w;
    }
    uint8_t out[CU_Q8_BLOCK_BYTES];
    cu_q8_quant_block(v, out);
    uint4 *dst = (uint4 *)(xq + i * CU_Q8_BLOCK_BYTES);
#pragma unroll
    for (int j = 0; j < CU_Q8_BLOCK_BYTES / 16; j++) {
        uint4 u;
        memcpy(&u, out + 16 * j, 16);
        dst[j] = u;
    }
}

/* ------------------------------------------------------------- q8 kernel */

__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(LETHE_CUDA_EMU)
    lethe_emu::cp_async_commit();   /* the CPU emulator's cp.async (emu/emu_device.h) */
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");   /* no shared load moves above it */
#elif defined(LETHE_CUDA_EMU)
    lethe_emu::cp_async_wait(N);
#endif
}

/* LPR lanes per row (4: 8 rows per warp, 2 warps per CTA; 2, "wide": 16
 * rows per warp, 1 warp per CTA, each lane 2 parts of every block). */
template <int LPR>
__host__ __device__ constexpr int q8_warps() { return LPR == 4 ? 2 : 1; }

template <int WT, int T, int LPR>
__global__ void __launch_bounds__(q8_warps<LPR>() * 32)
k_gemv_q8(const uint8_t *__restrict__ w, size_t rb, const uint8_t *__restrict__ xq, float *__restrict__ y,
          int64_t N, int64_t K) {
    constexpr int C = q8_chunk_blocks<WT>(), RS = q8_row_stride<WT>(), BB = cu_block_bytes(WT);
    constexpr int ROWS = 32 / LPR, PPL = 4 / LPR, WARPS = q8_warps<LPR>();
    __shared__ __align__(16) uint8_t stage[WARPS][Q8_STAGES][ROWS * RS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane / LPR, h = lane % LPR;
    const int64_t row0 = ((int64_t)blockIdx.x * WARPS + warp) * ROWS;
    if (row0 >= N) return;   /* the whole warp: no CTA barrier below */
    const int64_t row = cu_min64(row0 + r, N - 1);
    const int64_t nb = K / 32;
    const int nc = (int)((nb + C - 1) / C);
    const size_t xs = (size_t)nb * CU_Q8_BLOCK_BYTES;
    float acc[T][2 * PPL], msum[T];
#pragma unroll
    for (int t = 0; t < T; t++) {
#pragma unroll
        for (int i = 0; i < 2 * PPL; i++) acc[t][i] = 0.0f;
        msum[t] = 0.0f;
    }

#pragma unroll
    for (int s = 0; s < Q8_STAGES - 1; s++) {
        if (s < nc) q8_stage<WT, ROWS>(stage[warp][s], w, rb, N, row0, (int64_t)s * C, lane);
        cp_async_commit();
    }
    for (int c = 0; c < nc; c++) {
        const int cn = c + Q8_STAGES - 1;
        if (cn < nc) q8_stage<WT, ROWS>(stage[warp][cn % Q8_STAGES], w, rb, N, row0, (int64_t)cn * C, lane);
        cp_async_commit();
        cp_async_wait<Q8_STAGES - 1>();   /* this lane's copies of chunk c have landed */
        __syncwarp();                      /* ... and every lane's */
        const int64_t c0 = (int64_t)c * C;
        const uint8_t *wb = stage[warp][c % Q8_STAGES] + r * RS + q8_stage_delta<WT>(w, rb, row, c0);
        const uint8_t *xb = xq + (size_t)c0 * CU_Q8_BLOCK_BYTES;
        if (c0 + C <= nb) {
#pragma unroll 8
            for (int j = 0; j < C; j++)
                q8_lane_block<WT, T, PPL>(wb + j * BB, h * PPL, xb + j * CU_Q8_BLOCK_BYTES, xs, acc, msum);
        } else {
            const int n = (int)(nb - c0);
            for (int j = 0; j < n; j++)
                q8_lane_block<WT, T, PPL>(wb + j * BB, h * PPL, xb + j * CU_Q8_BLOCK_BYTES, xs, acc, msum);
        }
        __syncwarp();   /* every lane is done with this buffer before it is refilled */
    }
    /* the CPU's hsum8 order, ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)), then + msum:
     * t_p = a_p + a_{p+4} where part p lives; LPR 4: lane p holds t_p, so u = t_p + t_{p^2},
     * then u + u_{p^1}; LPR 2: lane h holds t_{2h}, t_{2h+1}, so (t_0 + t_2) + (t_1 + t_3) is
     * one exchange with the other lane */
#pragma unroll
    for (int t = 0; t < T; t++) {
        float v;
        if (LPR == 4) {
            const float tp = cu_fadd(acc[t][0], acc[t][1]);
            const float u = cu_fadd(tp, __shfl_xor_sync(0xffffffffu, tp, 2));
            v = cu_fadd(u, __shfl_xor_sync(0xffffffffu, u, 1));
        } else {
            const float ta = cu_fadd(acc[t][0], acc[t][1]), tb = cu_fadd(acc[t][PPL > 1 ? 2 : 0], acc[t][PPL > 1 ? 3 : 1]);
            const float oa = __shfl_xor_sync(0xffffffffu, ta, 1), ob = __shfl_xor_sync(0xffffffffu, tb, 1);
            v = cu_fadd(cu_fadd(ta, oa), cu_fadd(tb, ob));
        }
        if (q8_has_m<WT>()) v = cu_fadd(v, msum[t]);
        if (h == 0 && row0 + r < N) y[(size_t)t * N + row0 + r] = v;
    }
}

/* ---------------------------------------------------------- float kernel */

template <int WT, int T>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
k_gemv_f(const uint8_t *__restrict__ w, size_t rb, const float *__restrict__ x, float *__restrict__ y, int64_t N,
         int64_t K) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t row0 = ((int64_t)blockIdx.x * GEMV_WARPS + warp) * F_ROWS;
    if (row0 >= N) return;
    const uint8_t *wr[F_ROWS];
#pragma unroll
    for (int i = 0; i < F_ROWS; i++) wr[i] = w + (size_t)cu_min64(row0 + i, N - 1) * rb;
    float acc[F_ROWS][T];
    f_lane<WT, T>(wr, x, K, lane, acc);
#pragma unroll
    for (int i = 0; i < F_ROWS; i++)
#pragma unroll
        for (int t = 0; t < T; t++) {
            float s = acc[i][t];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0 && row0 + i < N) y[(size_t)t * N + row0 + i] = s;
        }
}

/* --------------------------------------------------------------- launch */

static constexpr bool is_q8_type(int wtype) {
    return wtype == CU_Q4_0 || wtype == CU_Q4_1 || wtype == CU_Q5_0 || wtype == CU_Q5_1 || wtype == CU_Q8_0;
}

extern "C" size_t lethe_cu_gemv_act_bytes(int wtype, int64_t K, int64_t T, int variant) {
    if (variant == LETHE_CU_GEMV_OLD || !is_q8_type(wtype) || K % 32 != 0 || T <= 0) return 0;
    return (size_t)T * (size_t)(K / 32) * CU_Q8_BLOCK_BYTES;
}

/* act_ready: act already holds x's q8 blocks (a fused launch wrote them). */
template <int WT>
static cudaError_t gemv_t(const void *w, size_t row_bytes, const float *x, float *y, int64_t N, int64_t K, int64_t T,
                          int variant, void *act, bool act_ready, cudaStream_t stream) {
    const uint8_t *wb = (const uint8_t *)w;
    if (variant == LETHE_CU_GEMV_OLD) {
        const unsigned grid = (unsigned)((N + GEMV_WARPS - 1) / GEMV_WARPS);
        switch (T) {
#define C(TT) case TT: LETHE_CU_LAUNCH(grid, GEMV_WARPS * 32, 0, stream, k_gemv_old<WT, TT>)(wb, row_bytes, x, y, N, K); break;
        C(1) C(2) C(3) C(4) C(5) C(6) C(7) C(8)
#undef C
        default: return cudaErrorInvalidValue;
        }
        return cudaGetLastError();
    }
    if constexpr (is_q8_type(WT)) {
        if (!act) return cudaErrorInvalidValue;
        const int64_t nblk = T * (K / 32);
        if (!act_ready)
            LETHE_CU_LAUNCH((unsigned)((nblk + 127) / 128), 128, 0, stream, k_quant_q8)(x, (uint8_t *)act, nblk);
        const uint8_t *xq = (const uint8_t *)act;
        const bool wide = variant == LETHE_CU_GEMV_WIDE;
        const int64_t rows_per_cta = wide ? 16 : 2 * 8;   /* q8_warps<LPR>() * 32 / LPR */
        const unsigned grid = (unsigned)((N + rows_per_cta - 1) / rows_per_cta), threads = wide ? 32 : 64;
        switch (T) {
#define C(TT)                                                                                    \
    case TT:                                                                                     \
        if (wide) LETHE_CU_LAUNCH(grid, threads, 0, stream, k_gemv_q8<WT, TT, 2>)(wb, row_bytes, xq, y, N, K); \
        else LETHE_CU_LAUNCH(grid, threads, 0, stream, k_gemv_q8<WT, TT, 4>)(wb, row_bytes, xq, y, N, K);     \
        break;
        C(1) C(2) C(3) C(4) C(5) C(6) C(7) C(8)
#undef C
        default: return cudaErrorInvalidValue;
        }
    } else {
        const int64_t rows_per_cta = (int64_t)GEMV_WARPS * F_ROWS;
        const unsigned grid = (unsigned)((N + rows_per_cta - 1) / rows_per_cta);
        switch (T) {
#define C(TT) case TT: LETHE_CU_LAUNCH(grid, GEMV_WARPS * 32, 0, stream, k_gemv_f<WT, TT>)(wb, row_bytes, x, y, N, K); break;
        C(1) C(2) C(3) C(4) C(5) C(6) C(7) C(8)
#undef C
        default: return cudaErrorInvalidValue;
        }
    }
    return cudaGetLastError();
}

extern "C" cudaError_t lethe_cu_gemv(int wtype, const void *w, size_t row_bytes, const float *x, float *y, int64_t N,
                                     int64_t K, int64_t T, int variant, void *act, cudaStream_t stream) {
    if (N <= 0 || T <= 0) return cudaSuccess;
    if (K % 32 != 0 || T > LETHE_CU_GEMV_MAX_T) return cudaErrorInvalidValue;
    /* the float kernel's 16-byte loads need 16-byte aligned rows (whole
     * weights are: cudaMalloc, row_bytes a multiple of 64) */
    if (!is_q8_type(wtype) && (((uintptr_t)w | row_bytes) & 15u)) variant = LETHE_CU_GEMV_OLD;
#define L(WT) return gemv_t<WT>(w, row_bytes, x, y, N, K, T, variant, act, false, stream)
    CU_WTYPE_DISPATCH(wtype, L)
#undef L
}

extern "C" cudaError_t lethe_cu_gemv_xq(int wtype, const void *w, size_t row_bytes, const void *xq, float *y,
                                        int64_t N, int64_t K, int64_t T, int variant, cudaStream_t stream) {
    if (N <= 0 || T <= 0) return cudaSuccess;
    if (K % 32 != 0 || T > LETHE_CU_GEMV_MAX_T || !xq || !is_q8_type(wtype) || variant == LETHE_CU_GEMV_OLD)
        return cudaErrorInvalidValue;
#define L(WT) return gemv_t<WT>(w, row_bytes, NULL, y, N, K, T, variant, (void *)xq, true, stream)
    CU_WTYPE_DISPATCH(wtype, L)
#undef L
}
