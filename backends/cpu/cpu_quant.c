/* cpu_quant.c — activation quantizers and the dot products of quantized (and
 * f32/f16/bf16) weight rows with activation rows.
 *
 * Pairings (as ggml): q4_0, q4_1, q5_0, q5_1, q8_0 weights x q8a activations
 * (32-blocks, f32 d and s = d * sum(q)); k-quants x q8_k (256-blocks with
 * 16-element partial sums); f32/f16/bf16 weights x f32 activations.
 *
 * Every weight block's dot splits as
 *   sum_j (d_w u_j + m_w) (d_x q_j) = d_w d_x sum_j u_j q_j + m_w s_x,
 * with u_j >= 0 the stored unsigned code: an unsigned x signed byte product,
 * which is exactly what maddubs / VNNI dpbusd compute. Signed offsets
 * (q4_0's -8, q5_0's -16) become m_w = -8 d_w, -16 d_w.
 *
 * Each SIMD path has a scalar twin below it; both compute the same sums.
 * With AVX-512 VNNI the 32-block types use register tiles (one kernel for
 * decode and prefill, see "AVX-512 VNNI tiles") whose per-lane arithmetic
 * is exactly the AVX2 kernel's, so results match the AVX2 build bit for bit.
 * Legend: k elements per row, nb = k / 32 blocks, nr rows handled together
 * (the activation block is loaded once for all nr rows).
 */
#include "cpu_kernels.h"

#include <math.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#  define LETHE_CPU_AVX2 1
#  include <immintrin.h>
#endif

static inline float f16f(lethe_f16 h) {
#if LETHE_CPU_AVX2
    return _cvtsh_ss(h);
#else
    return lethe_f16_to_f32(h);
#endif
}

/* ---------------------------------------------------------------- quantizers */

void lethe_cpu_quantize_q8a(const float *x, lethe_cpu_q8a *y, int64_t k) {
    for (int64_t i = 0; i < k / 32; i++, x += 32) {
#if LETHE_CPU_AVX2
        __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
        __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
        const __m256 sign = _mm256_set1_ps(-0.0f);
        __m256 m = _mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1));
        m = _mm256_max_ps(m, _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)); /* round to nearest even */
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_hadd_epi32(s4, s4);
        s4 = _mm_hadd_epi32(s4, s4);
        /* pack 32 x i32 -> 32 x i8, then undo the lane interleave of the packs */
        __m256i p01 = _mm256_packs_epi32(i0, i1), p23 = _mm256_packs_epi32(i2, i3);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[i].qs, p);
        y[i].d = lethe_f16_round(d);
        y[i].s = lethe_f16_round(d * (float)_mm_cvtsi128_si32(s4));
#else
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int q = (int)nearbyintf(x[j] * id);
            y[i].qs[j] = (int8_t)q;
            sum += q;
        }
        y[i].d = lethe_f16_round(d);
        y[i].s = lethe_f16_round(d * (float)sum);
#endif
    }
}

void lethe_cpu_quantize_q8k(const float *x, lethe_block_q8_k *y, int64_t k) {
    for (int64_t i = 0; i < k / LETHE_QK_K; i++, x += LETHE_QK_K) {
        float amax = 0.0f;
        for (int j = 0; j < LETHE_QK_K; j++) amax = fmaxf(amax, fabsf(x[j]));
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float id = 127.0f / amax;
        for (int j = 0; j < LETHE_QK_K; j++) y[i].qs[j] = (int8_t)nearbyintf(x[j] * id);
        for (int j = 0; j < LETHE_QK_K / 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)s;
        }
        y[i].d = amax / 127.0f;
    }
}

size_t lethe_cpu_act_row_size(lethe_cpu_act a, int64_t k) {
    switch (a) {
    case LETHE_CPU_ACT_Q8A: return (size_t)(k / 32) * sizeof(lethe_cpu_q8a);
    case LETHE_CPU_ACT_Q8K: return (size_t)(k / LETHE_QK_K) * sizeof(lethe_block_q8_k);
    default: return (size_t)k * sizeof(float);
    }
}

/* ------------------------------------------------------------ SIMD helpers */

#if LETHE_CPU_AVX2
/* 32 nibbles of a 16-byte block as bytes: lanes 0..15 low nibbles, 16..31 high. */
static inline __m256i nibbles(const uint8_t *qs) {
    __m128i t = _mm_loadu_si128((const __m128i *)qs);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* Bit j of the 32-bit qh as 0x10 in byte lane j (q5 high bits). */
static inline __m256i qh_bytes(const uint8_t *qh) {
    uint32_t x;
    memcpy(&x, qh, 4);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x),
                                    _mm256_setr_epi64x(0x0000000000000000LL, 0x0101010101010101LL,
                                                       0x0202020202020202LL, 0x0303030303030303LL));
    v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7FBFDFEFF7FBFDFELL));
    v = _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* 8 x i32 partial sums of u8 x s8 products (4 adjacent bytes each). */
static inline __m256i dot_us(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    /* |u| <= 255 only for q8_0's abs trick, where |s| <= 127 keeps pairs < 2^15 */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m128 load_f16x2(const lethe_f16 *p) { /* [p0, p1, 0, 0] */
    uint32_t u;
    memcpy(&u, p, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)u));
}
#endif

#define LETHE_INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------- 32-block x q8a kernels */

/* Generic form of every 32-block type: unsigned codes u (0..31), per-block
 * (d, m) with the offset folded into m. The SIMD body differs only in how u
 * and (d, m) are read, so each type gives two small inline readers. */

#if LETHE_CPU_AVX2
#define DEF_DOT32_AVX2(NAME, BT, READ_U, READ_DM)                                               \
    LETHE_INLINE void NAME##_rows(int nb, const uint8_t *w, size_t ws, const lethe_cpu_q8a *x,  \
                                  float *out, const int NR) {                                   \
        __m256 acc[4];                                                                          \
        __m128 macc[4];                                                                         \
        for (int r = 0; r < NR; r++) {                                                          \
            acc[r] = _mm256_setzero_ps();                                                       \
            macc[r] = _mm_setzero_ps();                                                         \
        }                                                                                       \
        for (int i = 0; i < nb; i++) {                                                          \
            const __m256i y = _mm256_loadu_si256((const __m256i *)x[i].qs);                     \
            const __m128 ds = _mm_castpd_ps(_mm_load_sd((const double *)&x[i].d)); /* d, s */   \
            for (int r = 0; r < NR; r++) {                                                      \
                const BT *b = (const BT *)(w + (size_t)r * ws) + i;                             \
                __m128 dm = READ_DM(b);                     /* [d_w, m_w, 0, 0] */              \
                __m128 prod = _mm_mul_ps(dm, ds);           /* [d_w d_x, m_w s_x] */            \
                __m256 p = _mm256_cvtepi32_ps(dot_us(READ_U(b), y));                            \
                acc[r] = _mm256_fmadd_ps(p, _mm256_broadcastss_ps(prod), acc[r]);               \
                macc[r] = _mm_add_ps(macc[r], prod);                                            \
            }                                                                                   \
        }                                                                                       \
        for (int r = 0; r < NR; r++)                                                            \
            out[r] = hsum8(acc[r]) + _mm_cvtss_f32(_mm_shuffle_ps(macc[r], macc[r], 1));        \
    }

static inline __m256i u_q4_0(const lethe_block_q4_0 *b) { return nibbles(b->qs); }
static inline __m128 dm_q4_0(const lethe_block_q4_0 *b) {
    __m128 d = _mm_set1_ps(_cvtsh_ss(b->d));
    return _mm_mul_ps(d, _mm_setr_ps(1.0f, -8.0f, 0.0f, 0.0f));
}
static inline __m256i u_q4_1(const lethe_block_q4_1 *b) { return nibbles(b->qs); }
static inline __m128 dm_q4_1(const lethe_block_q4_1 *b) { return load_f16x2(&b->d); }
static inline __m256i u_q5_0(const lethe_block_q5_0 *b) {
    return _mm256_or_si256(nibbles(b->qs), qh_bytes(b->qh));
}
static inline __m128 dm_q5_0(const lethe_block_q5_0 *b) {
    __m128 d = _mm_set1_ps(_cvtsh_ss(b->d));
    return _mm_mul_ps(d, _mm_setr_ps(1.0f, -16.0f, 0.0f, 0.0f));
}
static inline __m256i u_q5_1(const lethe_block_q5_1 *b) {
    return _mm256_or_si256(nibbles(b->qs), qh_bytes(b->qh));
}
static inline __m128 dm_q5_1(const lethe_block_q5_1 *b) { return load_f16x2(&b->d); }

DEF_DOT32_AVX2(q4_0, lethe_block_q4_0, u_q4_0, dm_q4_0)
DEF_DOT32_AVX2(q4_1, lethe_block_q4_1, u_q4_1, dm_q4_1)
DEF_DOT32_AVX2(q5_0, lethe_block_q5_0, u_q5_0, dm_q5_0)
DEF_DOT32_AVX2(q5_1, lethe_block_q5_1, u_q5_1, dm_q5_1)

/* q8_0 is signed x signed: |w| x (x with w's sign) keeps the u8 x s8 form. */
LETHE_INLINE void q8_0_rows(int nb, const uint8_t *w, size_t ws, const lethe_cpu_q8a *x,
                            float *out, const int NR) {
    __m256 acc[4];
    for (int r = 0; r < NR; r++) acc[r] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m256i y = _mm256_loadu_si256((const __m256i *)x[i].qs);
        const float dx = x[i].d;
        for (int r = 0; r < NR; r++) {
            const lethe_block_q8_0 *b = (const lethe_block_q8_0 *)(w + (size_t)r * ws) + i;
            __m256i q = _mm256_loadu_si256((const __m256i *)b->qs);
            __m256i p = dot_us(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(_cvtsh_ss(b->d) * dx), acc[r]);
        }
    }
    for (int r = 0; r < NR; r++) out[r] = hsum8(acc[r]);
}
#endif /* LETHE_CPU_AVX2 */

/* ------------------------------------ AVX-512 VNNI tiles (GEMV and GEMM)
 *
 * One kernel serves both decode (1 token) and prefill (a tile of 4 weight
 * rows x 2 or 4 tokens). Each (row, token) pair keeps the same 8 f32 lanes
 * as the AVX2 kernel above: lane j accumulates, block by block,
 *   acc_j = fma(float(sum of 4 u8 x s8 products), d_w * d_x, acc_j),
 * and the m_w * s_x terms go to a separate sequential sum; the result is
 * hsum8(acc) + msum. A 512-bit register holds two such 8-lane groups: two
 * rows of one token (decode) or one row of two tokens (prefill). Which pairs
 * share a register changes nothing in any lane, so a token's result is the
 * same bits whatever T is (batch invariance) and the same as the AVX2 path.
 * The weight block is unpacked once per tile, not once per token. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__) && \
    LETHE_CPU_AVX2
#  define LETHE_CPU_AVX512 1

/* hsum8 (same addition order) of the low / high 8 lanes. */
static inline float hsum8_lo(__m512 v) { return hsum8(_mm512_castps512_ps256(v)); }
static inline float hsum8_hi(__m512 v) {
    return hsum8(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

#ifndef LETHE_CPU_PF_GROUPS
#  define LETHE_CPU_PF_GROUPS 4
#endif

/* [a, b] -> 512 bits. */
static inline __m512i cat256(__m256i a, __m256i b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

/* [d0 m0 d1 m1 d2 m2 d3 m3] from four [d, m, 0, 0]. */
static inline __m512 dm4(__m128 a, __m128 b, __m128 c, __m128 d) {
    const __m256 v = _mm256_set_m128(_mm_castpd_ps(_mm_unpacklo_pd(_mm_castps_pd(c), _mm_castps_pd(d))),
                                     _mm_castpd_ps(_mm_unpacklo_pd(_mm_castps_pd(a), _mm_castps_pd(b))));
    return _mm512_castps256_ps512(v);
}
static inline __m512i idx2(int a, int b) { /* [a x8, b x8] */
    return _mm512_inserti64x4(_mm512_set1_epi32(a), _mm256_set1_epi32(b), 1);
}

/* Row r of the tile at w + r ws, blocks of BT; rows >= nr repeat the last
 * row (computed, not stored). HAS_M: the type has a minimum (q8_0 does
 * not). SIGNED (q8_0): codes go through u = q ^ 0x80 with the exact integer
 * correction - 128 sum(y) per lane. */
#define DEF_TILE512(NAME, BT, READ_U, READ_DM, HAS_M, SIGNED)                                    \
    /* decode: 4 rows x 1 token, rows paired in a register */                                   \
    LETHE_INLINE void NAME##_gemv512(int nb, const uint8_t *w, size_t ws, const lethe_cpu_q8a *x, \
                                     float *out, int nr) {                                       \
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();                           \
        __m128 msum = _mm_setzero_ps();                                                          \
        const BT *b0 = (const BT *)w, *b1 = (const BT *)(w + (size_t)(nr > 1) * ws);            \
        const BT *b2 = (const BT *)(w + (size_t)(nr > 2 ? 2 : nr - 1) * ws);                    \
        const BT *b3 = (const BT *)(w + (size_t)(nr > 3 ? 3 : nr - 1) * ws);                    \
        const __m512i i01 = idx2(0, 2), i23 = idx2(4, 6);                                        \
        const __m256i im = _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7);                            \
        /* a row group a few groups ahead, as many bytes per block step as  \
         * this group consumes (decode streams the weights from DRAM:       \
         * hardware prefetch alone leaves about half the bandwidth idle) */ \
        const char *pf = (const char *)w + (size_t)LETHE_CPU_PF_GROUPS * 4 * ws;                \
        for (int i = 0; i < nb; i++) {                                                           \
            for (int o = 0; o < 4 * (int)sizeof(BT); o += 64)                                    \
                _mm_prefetch(pf + (size_t)i * 4 * sizeof(BT) + o, _MM_HINT_T0);                  \
            const __m512i Y = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)x[i].qs)); \
            const __m128 ds = _mm_castpd_ps(_mm_load_sd((const double *)&x[i].d));              \
            const __m512 dm = dm4(READ_DM(&b0[i]), READ_DM(&b1[i]), READ_DM(&b2[i]), READ_DM(&b3[i])); \
            const __m512 dx = _mm512_broadcastss_ps(ds);                                         \
            __m512i U0 = cat256(READ_U(&b0[i]), READ_U(&b1[i]));                                 \
            __m512i U1 = cat256(READ_U(&b2[i]), READ_U(&b3[i]));                                 \
            __m512i p0, p1;                                                                      \
            if (SIGNED) {                                                                        \
                const __m512i f = _mm512_set1_epi8((char)0x80);                                  \
                const __m512i corr = _mm512_dpbusd_epi32(_mm512_setzero_si512(), f, Y);          \
                p0 = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(U0, f), Y), corr); \
                p1 = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(U1, f), Y), corr); \
            } else {                                                                             \
                p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), U0, Y);                         \
                p1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), U1, Y);                         \
            }                                                                                    \
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_mul_ps(_mm512_permutexvar_ps(i01, dm), dx), acc0); \
            acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_mul_ps(_mm512_permutexvar_ps(i23, dm), dx), acc1); \
            if (HAS_M) {                                                                         \
                const __m128 m = _mm256_castps256_ps128(                                         \
                    _mm256_permutevar8x32_ps(_mm512_castps512_ps256(dm), im));                   \
                msum = _mm_add_ps(msum, _mm_mul_ps(m, _mm_permute_ps(ds, 0x55)));                \
            }                                                                                    \
        }                                                                                        \
        float v[4] = {hsum8_lo(acc0), hsum8_hi(acc0), hsum8_lo(acc1), hsum8_hi(acc1)}, ms[4];   \
        _mm_storeu_ps(ms, msum);                                                                 \
        for (int r = 0; r < nr; r++) out[r] = HAS_M ? v[r] + ms[r] : v[r];                       \
    }                                                                                            \
    /* prefill: 4 rows x NT (2 or 4) tokens, token pairs in a register */                       \
    LETHE_INLINE void NAME##_gemm512(int nb, const uint8_t *w, size_t ws, const uint8_t *xb,     \
                                     size_t xs, const int NT, float *out, size_t ldo, int nr) {   \
        const int NPT = NT / 2;                                                                  \
        __m512 acc[4][2], msum = _mm512_setzero_ps();                                            \
        for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();                 \
        const BT *bw[4];                                                                         \
        for (int r = 0; r < 4; r++) bw[r] = (const BT *)(w + (size_t)(r < nr ? r : nr - 1) * ws); \
        const lethe_cpu_q8a *xr[4];                                                              \
        for (int t = 0; t < 4; t++) xr[t] = (const lethe_cpu_q8a *)(xb + (size_t)(t < NT ? t : NT - 1) * xs); \
        int vM[16], vS[16];                                                                      \
        for (int h = 0; h < 16; h++) { vM[h] = 2 * (h / 4) + 1; vS[h] = 2 * (h % 4) + 1; }         \
        const __m512i iM = _mm512_loadu_si512(vM), iS = _mm512_loadu_si512(vS);                  \
        const __m512i iX[2] = {idx2(0, 2), idx2(4, 6)};                                          \
        for (int i = 0; i < nb; i++) {                                                           \
            __m512i Y[2], corr[2];                                                               \
            __m512 X[2];                                                                         \
            const __m128 ds01 = _mm_castpd_ps(_mm_loadh_pd(_mm_load_sd((const double *)&xr[0][i].d), (const double *)&xr[1][i].d)); \
            const __m128 ds23 = _mm_castpd_ps(_mm_loadh_pd(_mm_load_sd((const double *)&xr[2][i].d), (const double *)&xr[3][i].d)); \
            const __m512 ds = _mm512_castps256_ps512(_mm256_set_m128(ds23, ds01));               \
            for (int pt = 0; pt < NPT; pt++) {                                                   \
                Y[pt] = cat256(_mm256_loadu_si256((const __m256i *)xr[2 * pt][i].qs),            \
                               _mm256_loadu_si256((const __m256i *)xr[2 * pt + 1][i].qs));       \
                X[pt] = _mm512_permutexvar_ps(iX[pt], ds);                                        \
                if (SIGNED) corr[pt] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), Y[pt]); \
            }                                                                                    \
            const __m512 dm = dm4(READ_DM(&bw[0][i]), READ_DM(&bw[1][i]), READ_DM(&bw[2][i]), READ_DM(&bw[3][i])); \
            if (HAS_M)                                                                           \
                msum = _mm512_add_ps(msum, _mm512_mul_ps(_mm512_permutexvar_ps(iM, dm),          \
                                                         _mm512_permutexvar_ps(iS, ds)));        \
            for (int r = 0; r < 4; r++) {                                                        \
                __m512i U = _mm512_broadcast_i64x4(READ_U(&bw[r][i]));                           \
                if (SIGNED) U = _mm512_xor_si512(U, _mm512_set1_epi8((char)0x80));               \
                const __m512 D = _mm512_permutexvar_ps(_mm512_set1_epi32(2 * r), dm);            \
                for (int pt = 0; pt < NPT; pt++) {                                               \
                    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), U, Y[pt]);           \
                    if (SIGNED) p = _mm512_sub_epi32(p, corr[pt]);                               \
                    acc[r][pt] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(D, X[pt]), acc[r][pt]); \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        float ms[16];                                                                            \
        _mm512_storeu_ps(ms, msum);                                                              \
        for (int r = 0; r < nr; r++)                                                             \
            for (int t = 0; t < NT; t++) {                                                       \
                float v = (t & 1) ? hsum8_hi(acc[r][t >> 1]) : hsum8_lo(acc[r][t >> 1]);          \
                if (HAS_M) v = v + ms[r * 4 + t];                                                \
                out[(size_t)t * ldo + r] = v;                                                    \
            }                                                                                    \
    }                                                                                            \
    static void tile_##NAME(int64_t k, const void *w, size_t ws, int nr, const void *x,          \
                            size_t xs, int nt, float *out, size_t ldo) {                         \
        const int nb = (int)(k / 32);                                                            \
        if (nt == 4)                                                                             \
            NAME##_gemm512(nb, w, ws, x, xs, 4, out, ldo, nr);                                   \
        else if (nt == 2)                                                                        \
            NAME##_gemm512(nb, w, ws, x, xs, 2, out, ldo, nr);                                   \
        else                                                                                     \
            for (int t = 0; t < nt; t++)                                                         \
                NAME##_gemv512(nb, w, ws, (const lethe_cpu_q8a *)((const uint8_t *)x + (size_t)t * xs), \
                               out + (size_t)t * ldo, nr);                                       \
    }                                                                                            \
    static void dot512_##NAME(int64_t k, const void *w, size_t ws, int nr, const void *x,        \
                              float *out) {                                                      \
        NAME##_gemv512((int)(k / 32), w, ws, x, out, nr);                                        \
    }

static inline __m256i u_q8_0(const lethe_block_q8_0 *b) { return _mm256_loadu_si256((const __m256i *)b->qs); }
static inline __m128 dm_q8_0(const lethe_block_q8_0 *b) { return _mm_set_ss(_cvtsh_ss(b->d)); }

DEF_TILE512(q4_0, lethe_block_q4_0, u_q4_0, dm_q4_0, 1, 0)
DEF_TILE512(q4_1, lethe_block_q4_1, u_q4_1, dm_q4_1, 1, 0)
DEF_TILE512(q5_0, lethe_block_q5_0, u_q5_0, dm_q5_0, 1, 0)
DEF_TILE512(q5_1, lethe_block_q5_1, u_q5_1, dm_q5_1, 1, 0)
DEF_TILE512(q8_0, lethe_block_q8_0, u_q8_0, dm_q8_0, 0, 1)
#endif /* AVX-512 VNNI */

/* Scalar twins: unsigned codes of block i into u[32], and (d, m). */
static void sc_q4_0(const void *p, uint8_t *u, float *d, float *m) {
    const lethe_block_q4_0 *b = p;
    for (int j = 0; j < 16; j++) { u[j] = b->qs[j] & 0x0F; u[j + 16] = b->qs[j] >> 4; }
    *d = f16f(b->d);
    *m = -8.0f * *d;
}
static void sc_q4_1(const void *p, uint8_t *u, float *d, float *m) {
    const lethe_block_q4_1 *b = p;
    for (int j = 0; j < 16; j++) { u[j] = b->qs[j] & 0x0F; u[j + 16] = b->qs[j] >> 4; }
    *d = f16f(b->d);
    *m = f16f(b->m);
}
static void sc_q5(const uint8_t *qs, const uint8_t *qhp, uint8_t *u) {
    uint32_t qh;
    memcpy(&qh, qhp, 4);
    for (int j = 0; j < 16; j++) {
        u[j] = (uint8_t)((qs[j] & 0x0F) | (((qh >> j) & 1u) << 4));
        u[j + 16] = (uint8_t)((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
    }
}
static void sc_q5_0(const void *p, uint8_t *u, float *d, float *m) {
    const lethe_block_q5_0 *b = p;
    sc_q5(b->qs, b->qh, u);
    *d = f16f(b->d);
    *m = -16.0f * *d;
}
static void sc_q5_1(const void *p, uint8_t *u, float *d, float *m) {
    const lethe_block_q5_1 *b = p;
    sc_q5(b->qs, b->qh, u);
    *d = f16f(b->d);
    *m = f16f(b->m);
}

typedef void (*sc_read_fn)(const void *b, uint8_t *u, float *d, float *m);

/* The SIMD kernels' arithmetic lane by lane (so every build gives the same
 * bits, and the Vulkan shaders, which follow it, agree with each): lane j of
 * 8 sums elements 4j..4j+3 of a block as an integer and accumulates it with
 * a fused multiply-add by d_w d_x, block after block; the offsets m_w s_x
 * are summed apart; the lanes are added in hsum8's order. */
static float hsum8_scalar(const float a[8]) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

static float dot32_scalar(int nb, const uint8_t *w, size_t bsize, sc_read_fn rd,
                          const lethe_cpu_q8a *x) {
    float acc[8] = {0}, msum = 0.0f;
    uint8_t u[32];
    for (int i = 0; i < nb; i++) {
        float d, m;
        rd(w + (size_t)i * bsize, u, &d, &m);
        const float dd = d * x[i].d, ms = m * x[i].s;
        for (int j = 0; j < 8; j++) {
            int s = 0;
            for (int k = 4 * j; k < 4 * j + 4; k++) s += u[k] * x[i].qs[k];
            acc[j] = fmaf((float)s, dd, acc[j]);
        }
        msum = msum + ms;
    }
    return hsum8_scalar(acc) + msum;
}

static float dot_q8_0_scalar(int nb, const lethe_block_q8_0 *w, const lethe_cpu_q8a *x) {
    float acc[8] = {0};
    for (int i = 0; i < nb; i++) {
        const float dd = f16f(w[i].d) * x[i].d;
        for (int j = 0; j < 8; j++) {
            int s = 0;
            for (int k = 4 * j; k < 4 * j + 4; k++) s += w[i].qs[k] * x[i].qs[k];
            acc[j] = fmaf((float)s, dd, acc[j]);
        }
    }
    return hsum8_scalar(acc);
}

#if LETHE_CPU_AVX2
#define DEF_DOT32(NAME, BT)                                                                     \
    __attribute__((unused)) static void dot_##NAME(int64_t k, const void *w, size_t ws, int nr, const void *x,          \
                           float *out) {                                                        \
        const int nb = (int)(k / 32);                                                           \
        if (nr == 4) {                                                                          \
            NAME##_rows(nb, w, ws, x, out, 4);                                                  \
            return;                                                                             \
        }                                                                                       \
        for (int r = 0; r < nr; r++)                                                            \
            NAME##_rows(nb, (const uint8_t *)w + (size_t)r * ws, ws, x, out + r, 1);            \
    }
#else
#define DEF_DOT32(NAME, BT)                                                                     \
    __attribute__((unused)) static void dot_##NAME(int64_t k, const void *w, size_t ws, int nr, const void *x,          \
                           float *out) {                                                        \
        for (int r = 0; r < nr; r++)                                                            \
            out[r] = dot32_scalar((int)(k / 32), (const uint8_t *)w + (size_t)r * ws,           \
                                  sizeof(BT), sc_##NAME, x);                                    \
    }
#endif
DEF_DOT32(q4_0, lethe_block_q4_0)
DEF_DOT32(q4_1, lethe_block_q4_1)
DEF_DOT32(q5_0, lethe_block_q5_0)
DEF_DOT32(q5_1, lethe_block_q5_1)

__attribute__((unused)) static void dot_q8_0(int64_t k, const void *w, size_t ws, int nr, const void *x, float *out) {
#if LETHE_CPU_AVX2
    if (nr == 4) {
        q8_0_rows((int)(k / 32), w, ws, x, out, 4);
        return;
    }
    for (int r = 0; r < nr; r++) q8_0_rows((int)(k / 32), (const uint8_t *)w + (size_t)r * ws, ws, x, out + r, 1);
#else
    for (int r = 0; r < nr; r++)
        out[r] = dot_q8_0_scalar((int)(k / 32), (const void *)((const uint8_t *)w + (size_t)r * ws), x);
#endif
}

float lethe_cpu_dot32_scalar_ref(lethe_dtype t, int64_t k, const void *w, const lethe_cpu_q8a *x) {
    int nb = (int)(k / 32);
    switch (t) {
    case LETHE_Q4_0: return dot32_scalar(nb, w, sizeof(lethe_block_q4_0), sc_q4_0, x);
    case LETHE_Q4_1: return dot32_scalar(nb, w, sizeof(lethe_block_q4_1), sc_q4_1, x);
    case LETHE_Q5_0: return dot32_scalar(nb, w, sizeof(lethe_block_q5_0), sc_q5_0, x);
    case LETHE_Q5_1: return dot32_scalar(nb, w, sizeof(lethe_block_q5_1), sc_q5_1, x);
    case LETHE_Q8_0: return dot_q8_0_scalar(nb, w, x);
    default: return NAN;
    }
}

/* ------------------------------------------------------ k-quants x q8_k */

static void kq_scale_min(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* q4_k / q5_k: sum over 8 sub-blocks of 32 of sc_j (u . x) minus dmin m_j
 * (sum of x over the sub-block, from bsums). */
static float dot_q4_k_row(int nb, const lethe_block_q4_k *w, const lethe_block_q8_k *x) {
    float acc = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint8_t *q = w[i].qs;
        const int8_t *y = x[i].qs;
        int sumi = 0, summ = 0;
#if LETHE_CPU_AVX2
        __m256i vs = _mm256_setzero_si256();
#endif
        for (int g = 0; g < 4; g++, q += 32, y += 64) {
            int s0, m0, s1, m1;
            kq_scale_min(2 * g, w[i].scales, &s0, &m0);
            kq_scale_min(2 * g + 1, w[i].scales, &s1, &m1);
#if LETHE_CPU_AVX2
            __m256i qq = _mm256_loadu_si256((const __m256i *)q);
            __m256i lo = _mm256_and_si256(qq, _mm256_set1_epi8(0x0F));
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qq, 4), _mm256_set1_epi8(0x0F));
            __m256i p0 = dot_us(lo, _mm256_loadu_si256((const __m256i *)y));
            __m256i p1 = dot_us(hi, _mm256_loadu_si256((const __m256i *)(y + 32)));
            vs = _mm256_add_epi32(vs, _mm256_mullo_epi32(p0, _mm256_set1_epi32(s0)));
            vs = _mm256_add_epi32(vs, _mm256_mullo_epi32(p1, _mm256_set1_epi32(s1)));
#else
            int a0 = 0, a1 = 0;
            for (int l = 0; l < 32; l++) {
                a0 += (q[l] & 0x0F) * y[l];
                a1 += (q[l] >> 4) * y[l + 32];
            }
            sumi += s0 * a0 + s1 * a1;
#endif
            const int16_t *bs = &x[i].bsums[4 * g];
            summ += m0 * (bs[0] + bs[1]) + m1 * (bs[2] + bs[3]);
        }
#if LETHE_CPU_AVX2
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(vs), _mm256_extracti128_si256(vs, 1));
        s4 = _mm_hadd_epi32(s4, s4);
        s4 = _mm_hadd_epi32(s4, s4);
        sumi = _mm_cvtsi128_si32(s4);
#endif
        acc += x[i].d * (f16f(w[i].d) * (float)sumi - f16f(w[i].dmin) * (float)summ);
    }
    return acc;
}

static float dot_q5_k_row(int nb, const lethe_block_q5_k *w, const lethe_block_q8_k *x) {
    float acc = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint8_t *q = w[i].qs;
        const int8_t *y = x[i].qs;
        int sumi = 0, summ = 0;
        for (int g = 0; g < 4; g++, q += 32, y += 64) {
            int s0, m0, s1, m1;
            kq_scale_min(2 * g, w[i].scales, &s0, &m0);
            kq_scale_min(2 * g + 1, w[i].scales, &s1, &m1);
            int a0 = 0, a1 = 0;
            for (int l = 0; l < 32; l++) {
                int u0 = (q[l] & 0x0F) | (((w[i].qh[l] >> (2 * g)) & 1) << 4);
                int u1 = (q[l] >> 4) | (((w[i].qh[l] >> (2 * g + 1)) & 1) << 4);
                a0 += u0 * y[l];
                a1 += u1 * y[l + 32];
            }
            sumi += s0 * a0 + s1 * a1;
            const int16_t *bs = &x[i].bsums[4 * g];
            summ += m0 * (bs[0] + bs[1]) + m1 * (bs[2] + bs[3]);
        }
        acc += x[i].d * (f16f(w[i].d) * (float)sumi - f16f(w[i].dmin) * (float)summ);
    }
    return acc;
}

/* q6_k: codes u in 0..63 with offset -32: sum_j sc_j (u . x - 32 sum x). */
static float dot_q6_k_row(int nb, const lethe_block_q6_k *w, const lethe_block_q8_k *x) {
    float acc = 0.0f;
    for (int i = 0; i < nb; i++) {
        int8_t u[LETHE_QK_K]; /* signed values u - 32, in element order */
        const uint8_t *ql = w[i].ql, *qh = w[i].qh;
        for (int h = 0; h < 2; h++, ql += 64, qh += 32) {
            int8_t *o = u + 128 * h;
            for (int l = 0; l < 32; l++) {
                o[l] = (int8_t)(((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32);
                o[l + 32] = (int8_t)(((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            int a = 0;
            for (int l = 0; l < 16; l++) a += u[16 * j + l] * x[i].qs[16 * j + l];
            sumi += w[i].scales[j] * a;
        }
        acc += x[i].d * f16f(w[i].d) * (float)sumi;
    }
    return acc;
}

static void dot_q4_k(int64_t k, const void *w, size_t ws, int nr, const void *x, float *out) {
    for (int r = 0; r < nr; r++)
        out[r] = dot_q4_k_row((int)(k / LETHE_QK_K), (const void *)((const uint8_t *)w + (size_t)r * ws), x);
}
static void dot_q5_k(int64_t k, const void *w, size_t ws, int nr, const void *x, float *out) {
    for (int r = 0; r < nr; r++)
        out[r] = dot_q5_k_row((int)(k / LETHE_QK_K), (const void *)((const uint8_t *)w + (size_t)r * ws), x);
}
static void dot_q6_k(int64_t k, const void *w, size_t ws, int nr, const void *x, float *out) {
    for (int r = 0; r < nr; r++)
        out[r] = dot_q6_k_row((int)(k / LETHE_QK_K), (const void *)((const uint8_t *)w + (size_t)r * ws), x);
}

/* ------------------------------------------------- f32 / f16 / bf16 rows */

float lethe_cpu_dot_f32(int64_t n, const float *a, const float *b) {
    int64_t i = 0;
    float s = 0.0f;
#if LETHE_CPU_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    s = hsum8(_mm256_add_ps(a0, a1));
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

float lethe_cpu_dot_f16_f32(int64_t n, const lethe_f16 *a, const float *b) {
    int64_t i = 0;
    float s = 0.0f;
#if LETHE_CPU_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i)));
        __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 8)));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(b + i), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(b + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), _mm256_loadu_ps(b + i), a0);
    s = hsum8(_mm256_add_ps(a0, a1));
#endif
    for (; i < n; i++) s += f16f(a[i]) * b[i];
    return s;
}

static float dot_bf16_f32(int64_t n, const lethe_bf16 *a, const float *b) {
    int64_t i = 0;
    float s = 0.0f;
#if LETHE_CPU_AVX2
    __m256 a0 = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(a + i))), 16);
        a0 = _mm256_fmadd_ps(_mm256_castsi256_ps(w), _mm256_loadu_ps(b + i), a0);
    }
    s = hsum8(a0);
#endif
    for (; i < n; i++) s += lethe_bf16_to_f32(a[i]) * b[i];
    return s;
}

static void dot_f32(int64_t k, const void *w, size_t ws, int nr, const void *x, float *out) {
    for (int r = 0; r < nr; r++) out[r] = lethe_cpu_dot_f32(k, (const float *)((const uint8_t *)w + r * ws), x);
}
static void dot_f16(int64_t k, const void *w, size_t ws, int nr, const void *x, float *out) {
    for (int r = 0; r < nr; r++)
        out[r] = lethe_cpu_dot_f16_f32(k, (const lethe_f16 *)((const uint8_t *)w + r * ws), x);
}
static void dot_bf16(int64_t k, const void *w, size_t ws, int nr, const void *x, float *out) {
    for (int r = 0; r < nr; r++)
        out[r] = dot_bf16_f32(k, (const lethe_bf16 *)((const uint8_t *)w + r * ws), x);
}

void lethe_cpu_f16_to_f32_row(const lethe_f16 *src, float *dst, int64_t n) {
    int64_t i = 0;
#if LETHE_CPU_AVX2
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < n; i++) dst[i] = f16f(src[i]);
}

void lethe_cpu_f32_to_f16_row(const float *src, lethe_f16 *dst, int64_t n) {
    int64_t i = 0;
#if LETHE_CPU_AVX2
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) dst[i] = lethe_f32_to_f16(src[i]);
}

/* ------------------------------------------------------------- tables */

static const lethe_cpu_type_kernels k_kernels[LETHE_DTYPE_MAX] = {
    [LETHE_F32] = {LETHE_CPU_ACT_F32, dot_f32},
    [LETHE_F16] = {LETHE_CPU_ACT_F32, dot_f16},
    [LETHE_BF16] = {LETHE_CPU_ACT_F32, dot_bf16},
#if LETHE_CPU_AVX512
    [LETHE_Q4_0] = {LETHE_CPU_ACT_Q8A, dot512_q4_0, tile_q4_0},
    [LETHE_Q4_1] = {LETHE_CPU_ACT_Q8A, dot512_q4_1, tile_q4_1},
    [LETHE_Q5_0] = {LETHE_CPU_ACT_Q8A, dot512_q5_0, tile_q5_0},
    [LETHE_Q5_1] = {LETHE_CPU_ACT_Q8A, dot512_q5_1, tile_q5_1},
    [LETHE_Q8_0] = {LETHE_CPU_ACT_Q8A, dot512_q8_0, tile_q8_0},
#else
    [LETHE_Q4_0] = {LETHE_CPU_ACT_Q8A, dot_q4_0, NULL},
    [LETHE_Q4_1] = {LETHE_CPU_ACT_Q8A, dot_q4_1, NULL},
    [LETHE_Q5_0] = {LETHE_CPU_ACT_Q8A, dot_q5_0, NULL},
    [LETHE_Q5_1] = {LETHE_CPU_ACT_Q8A, dot_q5_1, NULL},
    [LETHE_Q8_0] = {LETHE_CPU_ACT_Q8A, dot_q8_0, NULL},
#endif
    [LETHE_Q4_K] = {LETHE_CPU_ACT_Q8K, dot_q4_k},
    [LETHE_Q5_K] = {LETHE_CPU_ACT_Q8K, dot_q5_k},
    [LETHE_Q6_K] = {LETHE_CPU_ACT_Q8K, dot_q6_k},
};

const lethe_cpu_type_kernels *lethe_cpu_kernels_for(lethe_dtype t) {
    if ((int)t < 0 || t >= LETHE_DTYPE_MAX || !k_kernels[t].dot) return NULL;
    return &k_kernels[t];
}

/* Dequantize a row for the prefill GEMM tiles: fast paths for the common
 * types, the reference for the rest. */
void lethe_cpu_dequant_row(lethe_dtype t, const void *src, float *dst, int64_t k) {
#if LETHE_CPU_AVX2
    if (t == LETHE_Q4_1 || t == LETHE_Q4_0) {
        const size_t bs = t == LETHE_Q4_1 ? sizeof(lethe_block_q4_1) : sizeof(lethe_block_q4_0);
        for (int64_t i = 0; i < k / 32; i++) {
            const uint8_t *b = (const uint8_t *)src + i * bs;
            float d, m;
            const uint8_t *qs;
            if (t == LETHE_Q4_1) {
                const lethe_block_q4_1 *q = (const void *)b;
                d = _cvtsh_ss(q->d); m = _cvtsh_ss(q->m); qs = q->qs;
            } else {
                const lethe_block_q4_0 *q = (const void *)b;
                d = _cvtsh_ss(q->d); m = -8.0f * d; qs = q->qs;
            }
            __m256i u = nibbles(qs);
            __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
            for (int j = 0; j < 4; j++) {
                __m128i b8 = j < 2 ? _mm256_castsi256_si128(u) : _mm256_extracti128_si256(u, 1);
                if (j & 1) b8 = _mm_srli_si128(b8, 8);
                __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b8));
                _mm256_storeu_ps(dst + 32 * i + 8 * j, _mm256_fmadd_ps(f, vd, vm));
            }
        }
        return;
    }
    if (t == LETHE_Q8_0) {
        const lethe_block_q8_0 *b = src;
        for (int64_t i = 0; i < k / 32; i++) {
            __m256 vd = _mm256_set1_ps(_cvtsh_ss(b[i].d));
            for (int j = 0; j < 4; j++) {
                __m128i b8 = _mm_loadl_epi64((const __m128i *)(b[i].qs + 8 * j));
                _mm256_storeu_ps(dst + 32 * i + 8 * j, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b8)), vd));
            }
        }
        return;
    }
    if (t == LETHE_F16) {
        lethe_cpu_f16_to_f32_row(src, dst, k);
        return;
    }
#endif
    lethe_dtype_get(t)->to_f32(src, dst, k);
}
