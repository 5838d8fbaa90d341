/* k_rope.cu — ROPE with the DMS borrowed channel.
 *
 * Legend: T tokens, H heads, D head dim, n_rot rotated dims (half = n_rot/2
 * pairs). x, y [T, H, D] f32; pos [T] absolute positions; invf [half]
 * inverse frequencies in double, computed on the host exactly as the CPU
 * backend does (Llama 3 scaling, freq_factors and freq_scale included).
 * The angle pos * invf[i] and its cos/sin are taken in double, as on the
 * CPU: positions reach 1e5+, where an f32 angle loses the phase.
 *
 * grid (T * H), block = max(half, 32) threads, capped at 256: thread i
 * rotates pair i; dims >= n_rot are copied. Borrowed channel (borrow_g > 0):
 * in heads h % borrow_g == 0, channel D-1 reads as 0 and is written as 0.
 */
#include "cuda_kernels.h"
#include "cuda_launch.cuh"

__global__ void k_rope(const float *__restrict__ x, float *__restrict__ y, int64_t H, int64_t D, int n_rot, int neox,
                       const int32_t *__restrict__ pos, const double *__restrict__ invf, int borrow_g) {
    const int64_t r = blockIdx.x, t = r / H, h = r % H;
    const float *src = x + r * D;
    float *dst = y + r * D;
    const bool borrow = borrow_g > 0 && h % borrow_g == 0;
    const int half = n_rot / 2;
    const double p = (double)pos[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double s, c;
        sincos(p * invf[i], &s, &c);
        const float cs = (float)c, sn = (float)s;
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        const float x0 = borrow && i0 == D - 1 ? 0.0f : src[i0];
        const float x1 = borrow && i1 == D - 1 ? 0.0f : src[i1];
        /* products rounded before the sum, as the CPU's ISO C does */
        dst[i0] = __fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn));
        dst[i1] = __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, cs));
    }
    for (int64_t i = 2 * half + threadIdx.x; i < D; i += blockDim.x) dst[i] = src[i];
    __syncthreads();
    if (borrow && threadIdx.x == 0) dst[D - 1] = 0.0f;
}

extern "C" cudaError_t lethe_cu_rope(const float *x, float *y, int64_t T, int64_t H, int64_t D, int n_rot, int neox,
                                     const int32_t *pos, const double *invf, int borrow_g, cudaStream_t stream) {
    if (T * H <= 0) return cudaSuccess;
    int threads = n_rot / 2;
    threads = threads < 32 ? 32 : threads > 256 ? 256 : (threads + 31) / 32 * 32;
    LETHE_CU_LAUNCH((unsigned)(T * H), threads, 0, stream, k_rope)(x, y, H, D, n_rot, neox, pos, invf, borrow_g);
    return cudaGetLastError();
}
