/* dtype.c — the type traits table and the reference (de)quantizers.
 *
 * These are the plain, obviously-correct oracles: every backend kernel is
 * tested against to_f32 here. They favour clarity over speed; the fast paths
 * live in the backends. Block layouts are GGUF's (dtype.h).
 */
#include "dtype.h"

#include <math.h>
#include <string.h>

/* ---- f16 / bf16 scalar conversions (bit exact, no hardware assumptions) ---- */

float lethe_f16_to_f32(lethe_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FFu) << 13);
        }
    } else if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

lethe_f16 lethe_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) /* inf / nan (keep nan quiet) */
        return (lethe_f16)(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0));
    if (ax >= 0x477FF000u) return (lethe_f16)(sign | 0x7C00u); /* rounds to inf */
    if (ax < 0x38800000u) { /* result is subnormal or zero */
        if (ax < 0x33000000u) return (lethe_f16)sign; /* < half the smallest subnormal */
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14 + (113 - e) ... gives the f16 subnormal mantissa */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (lethe_f16)(sign | r);
    }
    uint32_t r = ((ax >> 13) - ((127 - 15) << 10));
    uint32_t rem = ax & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++; /* may carry into the exponent: correct */
    return (lethe_f16)(sign | r);
}

float lethe_bf16_to_f32(lethe_bf16 h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

lethe_bf16 lethe_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (lethe_bf16)((x >> 16) | 0x40u); /* quiet nan */
    x += 0x7FFFu + ((x >> 16) & 1u);
    return (lethe_bf16)(x >> 16);
}

/* ---- dequantization (reference) ---- */

static void f32_to_f32(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

static void f16_to_f32(const void *src, float *dst, int64_t n) {
    const lethe_f16 *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = lethe_f16_to_f32(s[i]);
}

static void bf16_to_f32(const void *src, float *dst, int64_t n) {
    const lethe_bf16 *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = lethe_bf16_to_f32(s[i]);
}

/* q4_0: element j (< 16) is the low nibble of qs[j], element j + 16 the high one. */
static void q4_0_to_f32(const void *src, float *dst, int64_t n) {
    const lethe_block_q4_0 *b = src;
    for (int64_t i = 0; i < n / LETHE_QK4_0; i++, dst += LETHE_QK4_0) {
        float d = lethe_f16_to_f32(b[i].d);
        for (int j = 0; j < 16; j++) {
            dst[j] = ((b[i].qs[j] & 0x0F) - 8) * d;
            dst[j + 16] = ((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void q4_1_to_f32(const void *src, float *dst, int64_t n) {
    const lethe_block_q4_1 *b = src;
    for (int64_t i = 0; i < n / LETHE_QK4_1; i++, dst += LETHE_QK4_1) {
        float d = lethe_f16_to_f32(b[i].d), m = lethe_f16_to_f32(b[i].m);
        for (int j = 0; j < 16; j++) {
            dst[j] = (b[i].qs[j] & 0x0F) * d + m;
            dst[j + 16] = (b[i].qs[j] >> 4) * d + m;
        }
    }
}

/* q5: the 5th bit of element j is bit j of the 32-bit qh. */
static void q5_0_to_f32(const void *src, float *dst, int64_t n) {
    const lethe_block_q5_0 *b = src;
    for (int64_t i = 0; i < n / LETHE_QK5_0; i++, dst += LETHE_QK5_0) {
        float d = lethe_f16_to_f32(b[i].d);
        uint32_t qh;
        memcpy(&qh, b[i].qh, 4);
        for (int j = 0; j < 16; j++) {
            int lo = (b[i].qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
            int hi = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            dst[j] = (lo - 16) * d;
            dst[j + 16] = (hi - 16) * d;
        }
    }
}

static void q5_1_to_f32(const void *src, float *dst, int64_t n) {
    const lethe_block_q5_1 *b = src;
    for (int64_t i = 0; i < n / LETHE_QK5_1; i++, dst += LETHE_QK5_1) {
        float d = lethe_f16_to_f32(b[i].d), m = lethe_f16_to_f32(b[i].m);
        uint32_t qh;
        memcpy(&qh, b[i].qh, 4);
        for (int j = 0; j < 16; j++) {
            int lo = (b[i].qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
            int hi = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            dst[j] = lo * d + m;
            dst[j + 16] = hi * d + m;
        }
    }
}

static void q8_0_to_f32(const void *src, float *dst, int64_t n) {
    const lethe_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / LETHE_QK8_0; i++, dst += LETHE_QK8_0) {
        float d = lethe_f16_to_f32(b[i].d);
        for (int j = 0; j < 32; j++) dst[j] = b[i].qs[j] * d;
    }
}

static void q8_1_to_f32(const void *src, float *dst, int64_t n) {
    const lethe_block_q8_1 *b = src;
    for (int64_t i = 0; i < n / LETHE_QK8_1; i++, dst += LETHE_QK8_1) {
        float d = lethe_f16_to_f32(b[i].d);
        for (int j = 0; j < 32; j++) dst[j] = b[i].qs[j] * d;
    }
}

/* k-quant 6-bit scale/min j (0..7) packed in 12 bytes: the first four of each
 * sit in the low 6 bits of bytes 0..7, the last four are split between the
 * nibbles of bytes 8..11 and the top 2 bits of bytes 0..7. */
static void lethe_kq_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* q4_k: 8 sub-blocks of 32; each 64-element group uses 32 bytes of qs, low
 * nibbles for its first sub-block, high nibbles for its second. */
static void q4_k_to_f32(const void *src, float *dst, int64_t n) {
    const lethe_block_q4_k *b = src;
    for (int64_t i = 0; i < n / LETHE_QK_K; i++) {
        float d = lethe_f16_to_f32(b[i].d), dmin = lethe_f16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int g = 0; g < 4; g++, q += 32) {
            uint8_t s0, m0, s1, m1;
            lethe_kq_scale_min(2 * g, b[i].scales, &s0, &m0);
            lethe_kq_scale_min(2 * g + 1, b[i].scales, &s1, &m1);
            for (int l = 0; l < 32; l++) *dst++ = d * s0 * (q[l] & 0x0F) - dmin * m0;
            for (int l = 0; l < 32; l++) *dst++ = d * s1 * (q[l] >> 4) - dmin * m1;
        }
    }
}

/* q5_k: as q4_k plus a 5th bit: bit (2g) of qh[l] for the first sub-block of
 * group g, bit (2g+1) for the second. */
static void q5_k_to_f32(const void *src, float *dst, int64_t n) {
    const lethe_block_q5_k *b = src;
    for (int64_t i = 0; i < n / LETHE_QK_K; i++) {
        float d = lethe_f16_to_f32(b[i].d), dmin = lethe_f16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int g = 0; g < 4; g++, q += 32) {
            uint8_t s0, m0, s1, m1;
            lethe_kq_scale_min(2 * g, b[i].scales, &s0, &m0);
            lethe_kq_scale_min(2 * g + 1, b[i].scales, &s1, &m1);
            for (int l = 0; l < 32; l++)
                *dst++ = d * s0 * ((q[l] & 0x0F) + (((b[i].qh[l] >> (2 * g)) & 1) << 4)) - dmin * m0;
            for (int l = 0; l < 32; l++)
                *dst++ = d * s1 * ((q[l] >> 4) + (((b[i].qh[l] >> (2 * g + 1)) & 1) << 4)) - dmin * m1;
        }
    }
}

/* q6_k: two halves of 128; in each, element l + 32 k (k = 0..3) takes its low
 * nibble from ql (k even: low, k odd: high nibble of ql[l + 32 (k & 1)])
 * and its high 2 bits from qh[l] >> 2k; scale index l / 16 + 2k. */
static void q6_k_to_f32(const void *src, float *dst, int64_t n) {
    const lethe_block_q6_k *b = src;
    for (int64_t i = 0; i < n / LETHE_QK_K; i++) {
        float d = lethe_f16_to_f32(b[i].d);
        const uint8_t *ql = b[i].ql, *qh = b[i].qh;
        const int8_t *sc = b[i].scales;
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, dst += 128) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                dst[l] = d * sc[is + 0] * q1;
                dst[l + 32] = d * sc[is + 2] * q2;
                dst[l + 64] = d * sc[is + 4] * q3;
                dst[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

static void q8_k_to_f32(const void *src, float *dst, int64_t n) {
    const lethe_block_q8_k *b = src;
    for (int64_t i = 0; i < n / LETHE_QK_K; i++, dst += LETHE_QK_K)
        for (int j = 0; j < LETHE_QK_K; j++) dst[j] = b[i].d * b[i].qs[j];
}

/* ---- quantization (reference) ---- */

static void f32_from_f32(const float *src, void *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

static void f16_from_f32(const float *src, void *dst, int64_t n) {
    lethe_f16 *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = lethe_f32_to_f16(src[i]);
}

static void bf16_from_f32(const float *src, void *dst, int64_t n) {
    lethe_bf16 *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = lethe_f32_to_bf16(src[i]);
}

static float absmax32(const float *x, int n) {
    float a = 0.0f;
    for (int j = 0; j < n; j++) a = fmaxf(a, fabsf(x[j]));
    return a;
}

static void q8_0_from_f32(const float *src, void *dst, int64_t n) {
    lethe_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / 32; i++, src += 32) {
        float d = absmax32(src, 32) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = lethe_f32_to_f16(d);
        for (int j = 0; j < 32; j++) b[i].qs[j] = (int8_t)lrintf(src[j] * id);
    }
}

static void q8_1_from_f32(const float *src, void *dst, int64_t n) {
    lethe_block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / 32; i++, src += 32) {
        float d = absmax32(src, 32) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            b[i].qs[j] = (int8_t)lrintf(src[j] * id);
            sum += b[i].qs[j];
        }
        b[i].d = lethe_f32_to_f16(d);
        b[i].s = lethe_f32_to_f16(d * (float)sum);
    }
}

/* q4_0: d maps the value of largest magnitude to -8, so the full 16 levels are used. */
static void q4_0_from_f32(const float *src, void *dst, int64_t n) {
    lethe_block_q4_0 *b = dst;
    for (int64_t i = 0; i < n / 32; i++, src += 32) {
        float amax = 0.0f, vmax = 0.0f;
        for (int j = 0; j < 32; j++)
            if (fabsf(src[j]) > amax) { amax = fabsf(src[j]); vmax = src[j]; }
        float d = vmax / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = lethe_f32_to_f16(d);
        for (int j = 0; j < 16; j++) {
            int lo = (int)(src[j] * id + 8.5f), hi = (int)(src[j + 16] * id + 8.5f);
            lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
            hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
            b[i].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

static void minmax32(const float *x, float *mn, float *mx) {
    *mn = INFINITY;
    *mx = -INFINITY;
    for (int j = 0; j < 32; j++) {
        *mn = fminf(*mn, x[j]);
        *mx = fmaxf(*mx, x[j]);
    }
}

static void q4_1_from_f32(const float *src, void *dst, int64_t n) {
    lethe_block_q4_1 *b = dst;
    for (int64_t i = 0; i < n / 32; i++, src += 32) {
        float mn, mx;
        minmax32(src, &mn, &mx);
        float d = (mx - mn) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = lethe_f32_to_f16(d);
        b[i].m = lethe_f32_to_f16(mn);
        for (int j = 0; j < 16; j++) {
            int lo = (int)((src[j] - mn) * id + 0.5f), hi = (int)((src[j + 16] - mn) * id + 0.5f);
            lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
            hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
            b[i].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

static void q5_0_from_f32(const float *src, void *dst, int64_t n) {
    lethe_block_q5_0 *b = dst;
    for (int64_t i = 0; i < n / 32; i++, src += 32) {
        float amax = 0.0f, vmax = 0.0f;
        for (int j = 0; j < 32; j++)
            if (fabsf(src[j]) > amax) { amax = fabsf(src[j]); vmax = src[j]; }
        float d = vmax / -16.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = lethe_f32_to_f16(d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            int lo = (int)(src[j] * id + 16.5f), hi = (int)(src[j + 16] * id + 16.5f);
            lo = lo < 0 ? 0 : lo > 31 ? 31 : lo;
            hi = hi < 0 ? 0 : hi > 31 ? 31 : hi;
            b[i].qs[j] = (uint8_t)((lo & 0x0F) | ((hi & 0x0F) << 4));
            qh |= (uint32_t)(lo >> 4) << j;
            qh |= (uint32_t)(hi >> 4) << (j + 16);
        }
        memcpy(b[i].qh, &qh, 4);
    }
}

static void q5_1_from_f32(const float *src, void *dst, int64_t n) {
    lethe_block_q5_1 *b = dst;
    for (int64_t i = 0; i < n / 32; i++, src += 32) {
        float mn, mx;
        minmax32(src, &mn, &mx);
        float d = (mx - mn) / 31.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = lethe_f32_to_f16(d);
        b[i].m = lethe_f32_to_f16(mn);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            int lo = (int)((src[j] - mn) * id + 0.5f), hi = (int)((src[j + 16] - mn) * id + 0.5f);
            lo = lo < 0 ? 0 : lo > 31 ? 31 : lo;
            hi = hi < 0 ? 0 : hi > 31 ? 31 : hi;
            b[i].qs[j] = (uint8_t)((lo & 0x0F) | ((hi & 0x0F) << 4));
            qh |= (uint32_t)(lo >> 4) << j;
            qh |= (uint32_t)(hi >> 4) << (j + 16);
        }
        memcpy(b[i].qh, &qh, 4);
    }
}

/* q8_k: d maps the value of largest magnitude to -127 (as ggml does). */
static void q8_k_from_f32(const float *src, void *dst, int64_t n) {
    lethe_block_q8_k *b = dst;
    for (int64_t i = 0; i < n / LETHE_QK_K; i++, src += LETHE_QK_K) {
        float amax = 0.0f, vmax = 0.0f;
        for (int j = 0; j < LETHE_QK_K; j++)
            if (fabsf(src[j]) > amax) { amax = fabsf(src[j]); vmax = src[j]; }
        if (amax == 0.0f) {
            memset(&b[i], 0, sizeof b[i]);
            continue;
        }
        float iscale = -127.0f / vmax;
        for (int j = 0; j < LETHE_QK_K; j++) {
            long v = lrintf(iscale * src[j]);
            b[i].qs[j] = (int8_t)(v > 127 ? 127 : v < -128 ? -128 : v);
        }
        for (int j = 0; j < LETHE_QK_K / 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += b[i].qs[16 * j + l];
            b[i].bsums[j] = (int16_t)s;
        }
        b[i].d = 1.0f / iscale;
    }
}

/* ---- the table ---- */

#define BLK(nm, bs, ts, q, to, from) { nm, bs, ts, q, to, from }

static const lethe_dtype_traits k_traits[LETHE_DTYPE_MAX] = {
    [LETHE_F32]  = BLK("f32", 1, 4, false, f32_to_f32, f32_from_f32),
    [LETHE_F16]  = BLK("f16", 1, 2, false, f16_to_f32, f16_from_f32),
    [LETHE_Q4_0] = BLK("q4_0", LETHE_QK4_0, sizeof(lethe_block_q4_0), true, q4_0_to_f32, q4_0_from_f32),
    [LETHE_Q4_1] = BLK("q4_1", LETHE_QK4_1, sizeof(lethe_block_q4_1), true, q4_1_to_f32, q4_1_from_f32),
    [LETHE_Q5_0] = BLK("q5_0", LETHE_QK5_0, sizeof(lethe_block_q5_0), true, q5_0_to_f32, q5_0_from_f32),
    [LETHE_Q5_1] = BLK("q5_1", LETHE_QK5_1, sizeof(lethe_block_q5_1), true, q5_1_to_f32, q5_1_from_f32),
    [LETHE_Q8_0] = BLK("q8_0", LETHE_QK8_0, sizeof(lethe_block_q8_0), true, q8_0_to_f32, q8_0_from_f32),
    [LETHE_Q8_1] = BLK("q8_1", LETHE_QK8_1, sizeof(lethe_block_q8_1), true, q8_1_to_f32, q8_1_from_f32),
    [LETHE_Q2_K] = BLK("q2_k", LETHE_QK_K, 84, true, NULL, NULL),
    [LETHE_Q3_K] = BLK("q3_k", LETHE_QK_K, 110, true, NULL, NULL),
    [LETHE_Q4_K] = BLK("q4_k", LETHE_QK_K, sizeof(lethe_block_q4_k), true, q4_k_to_f32, NULL),
    [LETHE_Q5_K] = BLK("q5_k", LETHE_QK_K, sizeof(lethe_block_q5_k), true, q5_k_to_f32, NULL),
    [LETHE_Q6_K] = BLK("q6_k", LETHE_QK_K, sizeof(lethe_block_q6_k), true, q6_k_to_f32, NULL),
    [LETHE_Q8_K] = BLK("q8_k", LETHE_QK_K, sizeof(lethe_block_q8_k), true, q8_k_to_f32, q8_k_from_f32),
    [LETHE_I8]   = BLK("i8", 1, 1, false, NULL, NULL),
    [LETHE_I16]  = BLK("i16", 1, 2, false, NULL, NULL),
    [LETHE_I32]  = BLK("i32", 1, 4, false, NULL, NULL),
    [LETHE_I64]  = BLK("i64", 1, 8, false, NULL, NULL),
    [LETHE_F64]  = BLK("f64", 1, 8, false, NULL, NULL),
    [LETHE_BF16] = BLK("bf16", 1, 2, false, bf16_to_f32, bf16_from_f32),
};

_Static_assert(sizeof(lethe_block_q4_0) == 18, "q4_0 block layout");
_Static_assert(sizeof(lethe_block_q4_1) == 20, "q4_1 block layout");
_Static_assert(sizeof(lethe_block_q5_0) == 22, "q5_0 block layout");
_Static_assert(sizeof(lethe_block_q5_1) == 24, "q5_1 block layout");
_Static_assert(sizeof(lethe_block_q8_0) == 34, "q8_0 block layout");
_Static_assert(sizeof(lethe_block_q8_1) == 36, "q8_1 block layout");
_Static_assert(sizeof(lethe_block_q4_k) == 144, "q4_k block layout");
_Static_assert(sizeof(lethe_block_q5_k) == 176, "q5_k block layout");
_Static_assert(sizeof(lethe_block_q6_k) == 210, "q6_k block layout");
_Static_assert(sizeof(lethe_block_q8_k) == 292, "q8_k block layout");

const lethe_dtype_traits *lethe_dtype_get(int t) {
    if (t < 0 || t >= LETHE_DTYPE_MAX || !k_traits[t].name) return NULL;
    return &k_traits[t];
}

const char *lethe_dtype_name(int t) {
    const lethe_dtype_traits *tr = lethe_dtype_get(t);
    return tr ? tr->name : "?";
}

size_t lethe_row_size(lethe_dtype t, int64_t n) {
    const lethe_dtype_traits *tr = lethe_dtype_get(t);
    if (!tr || n < 0 || n % tr->blck_size) return 0;
    return (size_t)(n / tr->blck_size) * tr->type_size;
}

bool lethe_dtype_supported(int t) {
    switch (t) {
    case LETHE_F32: case LETHE_F16: case LETHE_BF16:
    case LETHE_Q4_0: case LETHE_Q4_1: case LETHE_Q5_0: case LETHE_Q5_1: case LETHE_Q8_0:
    case LETHE_Q4_K: case LETHE_Q5_K: case LETHE_Q6_K:
        return true;
    default:
        return false;
    }
}
