/* cuda_quant.cuh — GGUF weight blocks read on the device (dequantized in
 * registers), shared by k_elementwise.cu (GET_ROWS), k_gemv.cu and
 * k_convert.cu. Layouts are core/dtype.h's (byte-exact GGUF blocks).
 *
 * Every row type is seen as a sequence of 32-element "blocks" (the GGUF
 * block, or 32 consecutive elements of f32/f16/bf16), each read in 4
 * "parts" of 8 elements by 4 cooperating threads:
 *   quantized blocks: part p holds elements {4p..4p+3} and {16+4p..16+4p+3}
 *     (qs bytes 4p..4p+3, low nibbles then high nibbles; q8_0: 8p..8p+7
 *     instead, see part_idx);
 *   float rows: part p holds elements 8p..8p+7.
 * dq_part() writes the 8 values and part_idx() says which elements they are.
 */
#ifndef LETHE_CUDA_QUANT_CUH
#define LETHE_CUDA_QUANT_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* lethe_dtype ids (core/dtype.h; the kernels do not include C headers) */
enum { CU_F32 = 0, CU_F16 = 1, CU_Q4_0 = 2, CU_Q4_1 = 3, CU_Q5_0 = 6, CU_Q5_1 = 7, CU_Q8_0 = 8, CU_BF16 = 30 };

/* Host and device: the same code also runs on the host in k_hostcheck.cu,
 * which the CPU-only test suite checks against the CPU's dequantization. */
#define CU_HD __host__ __device__ __forceinline__

/* ------------------------------------------------ exact float operations
 * Spelled out so that nvcc never contracts a product and a sum into an fma
 * the CPU does not do (and the host build, compiled with
 * -ffp-contract=off, does the same). Shared by the GEMV's float chains and
 * QUEST's page bound (cuda_gemv.cuh, cuda_attn.cuh). */
CU_HD float cu_fmul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
CU_HD float cu_fadd(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
CU_HD float cu_fma(float a, float b, float c) {
#ifdef __CUDA_ARCH__
    return __fmaf_rn(a, b, c);
#else
    return fmaf(a, b, c);
#endif
}

CU_HD float cu_bits_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}
CU_HD float cu_h2f(const uint8_t *p) {
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}
CU_HD uint32_t cu_ld32_2(const uint8_t *p) {   /* 4 bytes at a 2-byte-aligned address */
    const uint16_t *h = (const uint16_t *)p;
    return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}

/* Bytes of one 32-element block of a row type. */
__host__ __device__ constexpr int cu_block_bytes(int t) {
    return t == CU_F32 ? 128 : t == CU_F16 || t == CU_BF16 ? 64 : t == CU_Q4_0 ? 18 : t == CU_Q4_1 ? 20
         : t == CU_Q5_0 ? 22 : t == CU_Q5_1 ? 24 : t == CU_Q8_0 ? 34 : 0;
}

/* Index within the block of value j (0..7) of part p. */
template <int T>
CU_HD int part_idx(int p, int j) {
    if (T == CU_F32 || T == CU_F16 || T == CU_BF16 || T == CU_Q8_0) return 8 * p + j;
    return j < 4 ? 4 * p + j : 16 + 4 * p + (j - 4);
}

/* The 8 values of part p of block b (b points at the block's first byte). */
template <int T>
CU_HD void dq_part(const uint8_t *b, int p, float v[8]) {
    if (T == CU_F32) {
        const float4 a = ((const float4 *)b)[2 * p], c = ((const float4 *)b)[2 * p + 1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = c.x; v[5] = c.y; v[6] = c.z; v[7] = c.w;
    } else if (T == CU_F16) {
        const uint4 a = ((const uint4 *)b)[p];
        const uint32_t u[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[2 * j] = __half2float(__ushort_as_half((unsigned short)(u[j] & 0xFFFFu)));
            v[2 * j + 1] = __half2float(__ushort_as_half((unsigned short)(u[j] >> 16)));
        }
    } else if (T == CU_BF16) {
        const uint4 a = ((const uint4 *)b)[p];
        const uint32_t u[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[2 * j] = cu_bits_f32(u[j] << 16);
            v[2 * j + 1] = cu_bits_f32(u[j] & 0xFFFF0000u);
        }
    } else if (T == CU_Q4_0) {   /* d, qs[16]: (q - 8) * d */
        const float d = cu_h2f(b);
        const uint32_t q = cu_ld32_2(b + 2 + 4 * p);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[j] = (float)((int)((q >> (8 * j)) & 0xF) - 8) * d;
            v[j + 4] = (float)((int)((q >> (8 * j + 4)) & 0xF) - 8) * d;
        }
    } else if (T == CU_Q4_1) {   /* d, m, qs[16]: q * d + m */
        const float d = cu_h2f(b), m = cu_h2f(b + 2);
        const uint32_t q = *(const uint32_t *)(b + 4 + 4 * p);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[j] = (float)((q >> (8 * j)) & 0xF) * d + m;
            v[j + 4] = (float)((q >> (8 * j + 4)) & 0xF) * d + m;
        }
    } else if (T == CU_Q5_0 || T == CU_Q5_1) {   /* d, [m], qh[4], qs[16]: 5-bit q, bit 4 from qh */
        const bool one = T == CU_Q5_1;
        const float d = cu_h2f(b), m = one ? cu_h2f(b + 2) : 0.0f;
        const uint8_t *qhp = b + (one ? 4 : 2), *qs = b + (one ? 8 : 6);
        const uint32_t qh = one ? *(const uint32_t *)qhp : cu_ld32_2(qhp);
        const uint32_t q = one ? *(const uint32_t *)(qs + 4 * p) : cu_ld32_2(qs + 4 * p);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int lo = (int)(((q >> (8 * j)) & 0xF) | (((qh >> (4 * p + j)) & 1u) << 4));
            const int hi = (int)(((q >> (8 * j + 4)) & 0xF) | (((qh >> (16 + 4 * p + j)) & 1u) << 4));
            v[j] = one ? (float)lo * d + m : (float)(lo - 16) * d;
            v[j + 4] = one ? (float)hi * d + m : (float)(hi - 16) * d;
        }
    } else if (T == CU_Q8_0) {   /* d, qs[32] int8: q * d */
        const float d = cu_h2f(b);
        const uint32_t q0 = cu_ld32_2(b + 2 + 8 * p), q1 = cu_ld32_2(b + 6 + 8 * p);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[j] = (float)(int8_t)(q0 >> (8 * j)) * d;
            v[j + 4] = (float)(int8_t)(q1 >> (8 * j)) * d;
        }
    }
}

/* Call f.template operator()<T>() with the row type as a template argument;
 * returns false for a type the kernels do not read. */
#define CU_WTYPE_DISPATCH(wtype, F)                                  \
    switch (wtype) {                                                 \
    case CU_F32: F(CU_F32); break;                                   \
    case CU_F16: F(CU_F16); break;                                   \
    case CU_BF16: F(CU_BF16); break;                                 \
    case CU_Q4_0: F(CU_Q4_0); break;                                 \
    case CU_Q4_1: F(CU_Q4_1); break;                                 \
    case CU_Q5_0: F(CU_Q5_0); break;                                 \
    case CU_Q5_1: F(CU_Q5_1); break;                                 \
    case CU_Q8_0: F(CU_Q8_0); break;                                 \
    default: return cudaErrorInvalidValue;                           \
    }

#endif
