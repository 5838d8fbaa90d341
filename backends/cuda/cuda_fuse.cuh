/* cuda_fuse.cuh — the per-thread arithmetic of RMS_NORM, SWIGLU and the
 * fused decode kernels (k_elementwise.cu), in a header so that
 * hostcheck/k_hostcheck_fuse.cu runs the very same code on the host
 * (tests/test_cuda_fuse.c).
 *
 * Legend: T rows (tokens), E row width of a norm, F FFN width, n elements,
 * nb = E / 32 (or n / 32) q8 blocks of 32 activations (cuda_gemv.cuh).
 *
 * Why fuse: a decode step's elementwise ops each read and write the [T, E]
 * hidden state, and the decode GEMV on quantized weights first rounds its
 * f32 activations to q8 blocks (k_quant_q8), re-reading what the op before
 * it just wrote, once per matmul. The fused kernels do
 *   ADD + RMS_NORM (+ q8):  x' = a + b written, y = norm(x') and/or its q8 blocks;
 *   RMS_NORM + q8:          the q8 blocks of norm(x) (y only if another node reads it);
 *   SWIGLU + q8:            the q8 blocks of silu(g) * u (idem),
 * and the GEMVs that read y take the blocks as they are.
 *
 * Bits: every value a fused kernel writes is the unfused launches' value
 * for the same inputs. RMS_NORM's reduction order is fixed by the block of
 * CU_NORM_THREADS threads: thread t sums the squares of elements t, t + 256,
 * ... in order (double), then a warp butterfly (xor 16, 8, 4, 2, 1), then
 * warp 0's butterfly over the 8 warp sums (lanes 8..31 add 0.0). k_rms_norm
 * and k_norm_fused share that code (block_rms_scale in k_elementwise.cu) and
 * the element functions below; the q8 blocks come from cu_q8_quant_block,
 * k_quant_q8's own code, on the same floats.
 */
#ifndef LETHE_CUDA_FUSE_CUH
#define LETHE_CUDA_FUSE_CUH

#include "cuda_gemv.cuh"   /* cu_q8_quant_block, CU_Q8_BLOCK_BYTES, cu_fmul / cu_fadd */

/* Threads of k_rms_norm's and k_norm_fused's block: part of the reduction order. */
#define CU_NORM_THREADS 256
/* k_norm_fused keeps its row in shared memory, padded (cu_norm_pad):
 * (E + E / 32) floats <= 48 KiB, the static limit (no opt-in attribute). */
#define CU_NORM_MAX_E 11904

/* A row element's place in the padded shared copy: one float of padding
 * per 32, so that both phases are free of bank conflicts (phase 1: thread t
 * writes element t + 256 k; phase 2: thread k reads block k's 32 elements,
 * 33 k + j, bank (k + j) % 32). */
CU_HD int64_t cu_norm_pad(int64_t e) { return e + (e >> 5); }

/* ss + x^2 in double. (double)x * x is exact (24-bit significands, 48-bit
 * product), so a contraction into an fma gives the same bits. */
CU_HD double cu_sq_add(double ss, float x) { return ss + (double)x * (double)x; }

/* 1 / sqrt(mean(x^2) + eps), in double, rounded to float once (the CPU's rule). */
CU_HD float cu_rms_scale(double ss, int64_t E, float eps) {
    return (float)(1.0 / sqrt(ss / (double)E + (double)eps));
}

/* Element i of the normalized row: (x * scale) * w[i], or x * scale. */
CU_HD float cu_rms_apply(float x, float scale, const float *w, int64_t i) {
    return w ? cu_fmul(cu_fmul(x, scale), w[i]) : cu_fmul(x, scale);
}

/* silu(g) * u = g / (1 + exp(-g)) * u, each operation rounded on its own
 * (no contraction can differ between the plain and the fused kernel). The
 * host build uses the host's expf: the host tests compare the two kernels'
 * data flow, not CUDA's expf. */
CU_HD float cu_silu_mul(float g, float u) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
#else
    return g / (1.0f + expf(-g)) * u;
#endif
}

/* Phase 2 of k_norm_fused for q8 block k of a row: its 32 normalized values
 * from the padded shared row, into v (then y and cu_q8_quant_block). */
CU_HD void cu_norm_block(const float *row_pad, int64_t k, float scale, const float *w, float v[32]) {
    for (int j = 0; j < 32; j++) {
        const int64_t e = 32 * k + j;
        v[j] = cu_rms_apply(row_pad[cu_norm_pad(e)], scale, w, e);
    }
}

/* k_swiglu_q8 for block k: silu(g) * u of elements 32 k .. 32 k + 31. */
CU_HD void cu_swiglu_block(const float *g, const float *u, int64_t k, float v[32]) {
    for (int j = 0; j < 32; j++) v[j] = cu_silu_mul(g[32 * k + j], u[32 * k + j]);
}

#endif
