/* cuda_gemv.cuh — the per-lane arithmetic of the decode GEMV (k_gemv.cu), in
 * a header so that hostcheck/k_hostcheck.cu runs the very same code on the
 * host (tests/test_cuda_host_gemv.c checks it against the CPU backend).
 *
 * Legend: N weight rows, K reduced dim (K % 32 == 0), nb = K / 32 blocks,
 * T tokens (<= 8), WT weight row type (cuda_quant.cuh), p part of a block
 * (0..3), C blocks per staged chunk, RS bytes per staged row.
 *
 * Three paths:
 *  - gemv_lane: the first kernel (LETHE_CUDA_GEMV=old): blocks dequantized
 *    to float, 32 lanes per row, float activations.
 *  - q8 path (q4_0, q4_1, q5_0, q5_1, q8_0): the activations are quantized
 *    on the device to the CPU backend's q8 blocks (cu_q8_quant_block = the
 *    CPU's lethe_cpu_quantize_q8a, bit for bit), and each (row, token) is
 *    the CPU's integer dot (cpu_quant.c) in the CPU's own float order, so
 *    the GPU gives the CPU's bits: per block, 8 integer sums of 4 products
 *    (dp4a), each accumulated in its own chain acc_j = fma(sum_j, d_w d_x,
 *    acc_j) block after block; the offset terms m_w s_x summed apart; the 8
 *    chains added in hsum8's order, then the offset sum. A chain is
 *    sequential over all of K, so K is never split across lanes: lane
 *    (r, p) of a warp owns chains p and p + 4 of row r (8 rows per warp).
 *  - float path (f32, f16, bf16): 16-byte weight loads, lanes split K, 4 rows
 *    per warp share each activation load; a butterfly ends each row. The
 *    CPU's float order depends on its build (AVX2 or scalar), so this path
 *    agrees with it to rounding (NMSE), not bit for bit.
 */
#ifndef LETHE_CUDA_GEMV_CUH
#define LETHE_CUDA_GEMV_CUH

#include "cuda_quant.cuh"

#include <math.h>

/* One lane's share of a row: lane = 4 * bi + p takes part p of blocks
 * bi, bi + 8, ... and leaves T partial sums in acc. */
template <int WT, int T>
CU_HD void gemv_lane(const uint8_t *wr, const float *x, int64_t K, int lane, float acc[T]) {
    const int bi = lane >> 2, p = lane & 3;
    const int64_t nblk = K / 32;
    /* which x elements this lane's 8 values multiply: two runs of 4 */
    const bool split = part_idx<WT>(p, 4) != part_idx<WT>(p, 3) + 1;
    const int o0 = part_idx<WT>(p, 0), o1 = split ? part_idx<WT>(p, 4) : o0 + 4;
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
    for (int64_t blk = bi; blk < nblk; blk += 8) {
        float v[8];
        dq_part<WT>(wr + blk * cu_block_bytes(WT), p, v);
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float *xb = x + (size_t)t * K + blk * 32;
            const float4 a = *(const float4 *)(xb + o0), b = *(const float4 *)(xb + o1);
            acc[t] += v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w + v[4] * b.x + v[5] * b.y + v[6] * b.z +
                      v[7] * b.w;
        }
    }
}

/* sum of 4 signed byte products plus c (the host emulates the instruction) */
CU_HD int cu_dp4a(int a, int b, int c) {
#ifdef __CUDA_ARCH__
    return __dp4a(a, b, c);
#else
    for (int k = 0; k < 4; k++) c += (int)(int8_t)(uint8_t)((uint32_t)a >> (8 * k)) *
                                     (int)(int8_t)(uint8_t)((uint32_t)b >> (8 * k));
    return c;
#endif
}

/* (float)dp4a(a, b, 0), exactly, without an int-to-float conversion (a
 * quarter-rate instruction): the sum s (|s| <= 4 * 127 * 128 < 2^22) is
 * added to the bits of 1.5 * 2^23, whose float value is then 1.5 * 2^23 + s
 * exactly, and the subtraction is exact too. */
CU_HD float cu_dp4a_f(int a, int b) {
    return cu_fadd(cu_bits_f32((uint32_t)cu_dp4a(a, b, 0x4B400000)), -12582912.0f);
}

/* ------------------------------------------- q8 activations (32-blocks)
 * One block of 32 activations is 4 parts of 16 bytes, part p = {d, s, 8
 * codes}: d and s are f32 holding f16 values (d = amax/127 rounded to f16,
 * s = d * sum(q) rounded to f16), exactly the CPU's lethe_cpu_q8a; the
 * codes are elements 4p..4p+3 then 16+4p..16+4p+3. Each part repeats d and
 * s so that a lane gets everything it needs for a block in one 16-byte load
 * (64 B per block instead of 40: +60% of a few KiB per token). */
#define CU_Q8_BLOCK_BYTES 64

CU_HD int cu_q8_slot(int e) {   /* element e (0..31) of a block -> its code's byte in the block */
    const int hi = e >= 16, i = e & 15;
    return 16 * (i >> 2) + 8 + 4 * hi + (i & 3);
}

/* 32 floats -> one q8 block (the CPU's rounding: nearest even). */
CU_HD void cu_q8_quant_block(const float *x, uint8_t *out) {
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
#pragma unroll
    for (int j = 0; j < 32; j++) {
        const float v = cu_fmul(x[j], id);
#ifdef __CUDA_ARCH__
        const int q = __float2int_rn(v);
#else
        const int q = (int)nearbyintf(v);
#endif
        out[cu_q8_slot(j)] = (uint8_t)(int8_t)q;
        sum += q;
    }
    const float ds[2] = {__half2float(__float2half_rn(d)), __half2float(__float2half_rn(cu_fmul(d, (float)sum)))};
#pragma unroll
    for (int p = 0; p < 4; p++) memcpy(out + 16 * p, ds, sizeof ds);
}

/* A weight block's scale d and offset m as the CPU folds them (q4_0: -8 d,
 * q5_0: -16 d; q8_0: none), and the codes of its part p as two words of 4
 * bytes (lo: elements 4p..4p+3, hi: 16+4p..16+4p+3; unsigned codes of q4/q5,
 * signed of q8_0). */
CU_HD uint32_t cu_bit4_to_bytes(uint32_t b) {   /* bits 0..3 of b -> bit 4 of bytes 0..3 */
    return ((b * 0x00204081u) & 0x01010101u) << 4;
}
/* f16 at a 2-byte aligned address (every field of a block is: blocks have
 * even sizes and rows start on even addresses) */
CU_HD float cu_h2f_a2(const uint8_t *p) { return __half2float(__ushort_as_half(*(const unsigned short *)p)); }

template <int WT>
CU_HD void q8w_scale(const uint8_t *b, float &d, float &m) {
    d = cu_h2f_a2(b);
    m = WT == CU_Q4_0 ? cu_fmul(d, -8.0f) : WT == CU_Q5_0 ? cu_fmul(d, -16.0f)
      : WT == CU_Q4_1 || WT == CU_Q5_1 ? cu_h2f_a2(b + 2) : 0.0f;
}
template <int WT>
CU_HD void q8w_codes(const uint8_t *b, int p, int &lo, int &hi) {
    if (WT == CU_Q8_0) {
        lo = (int)cu_ld32_2(b + 2 + 4 * p);
        hi = (int)cu_ld32_2(b + 18 + 4 * p);
        return;
    }
    uint32_t q, qh = 0;
    if (WT == CU_Q4_0) {
        q = cu_ld32_2(b + 2 + 4 * p);
    } else if (WT == CU_Q4_1) {
        q = *(const uint32_t *)(b + 4 + 4 * p);
    } else if (WT == CU_Q5_0) {
        qh = cu_ld32_2(b + 2);
        q = cu_ld32_2(b + 6 + 4 * p);
    } else {   /* CU_Q5_1 */
        qh = *(const uint32_t *)(b + 4);
        q = *(const uint32_t *)(b + 8 + 4 * p);
    }
    uint32_t l = q & 0x0F0F0F0Fu, h = (q >> 4) & 0x0F0F0F0Fu;
    if (WT == CU_Q5_0 || WT == CU_Q5_1) {
        l |= cu_bit4_to_bytes((qh >> (4 * p)) & 0xFu);
        h |= cu_bit4_to_bytes((qh >> (16 + 4 * p)) & 0xFu);
    }
    lo = (int)l;
    hi = (int)h;
}

template <int WT>
CU_HD constexpr bool q8_has_m() { return WT != CU_Q8_0; }

template <typename V>
CU_HD V cu_ldg(const V *p) {
#ifdef __CUDA_ARCH__
    return __ldg(p);
#else
    return *p;
#endif
}

/* A lane's step on one weight block for T tokens, over PPL consecutive
 * parts p0.. (PPL = 4 / LPR, lanes per row LPR = 4 or 2): xb points at the
 * block's q8 activations of token 0, token t at xb + t * xs bytes.
 * acc[t][2i] is chain p0 + i, acc[t][2i + 1] chain p0 + i + 4; msum[t] the
 * offset sum (every lane of a row keeps the same one). */
template <int WT, int T, int PPL>
CU_HD void q8_lane_block(const uint8_t *wb, int p0, const uint8_t *xb, size_t xs, float (&acc)[T][2 * PPL],
                         float (&msum)[T]) {
    float d, m;
    q8w_scale<WT>(wb, d, m);
    int lo[PPL], hi[PPL];
#pragma unroll
    for (int i = 0; i < PPL; i++) q8w_codes<WT>(wb, p0 + i, lo[i], hi[i]);
#pragma unroll
    for (int t = 0; t < T; t++) {
        const uint8_t *xt = xb + (size_t)t * xs + 16 * p0;
        float dd = 0.0f, sx = 0.0f;
#pragma unroll
        for (int i = 0; i < PPL; i++) {
            const int4 xp = cu_ldg((const int4 *)(xt + 16 * i));   /* d, s, codes lo, codes hi */
            if (i == 0) {
                dd = cu_fmul(d, cu_bits_f32((uint32_t)xp.x));
                sx = cu_bits_f32((uint32_t)xp.y);
            }
            acc[t][2 * i] = cu_fma(cu_dp4a_f(lo[i], xp.z), dd, acc[t][2 * i]);
            acc[t][2 * i + 1] = cu_fma(cu_dp4a_f(hi[i], xp.w), dd, acc[t][2 * i + 1]);
        }
        if (q8_has_m<WT>()) msum[t] = cu_fadd(msum[t], cu_fmul(m, sx));
    }
}

/* ---- staging of a warp's weight rows (q8 path)
 * A warp owns ROWS = 32 / LPR consecutive rows (LPR lanes per row: 4, or
 * 2 in the "wide" variant) and walks K in chunks of C blocks.
 * Each chunk of each row is copied into shared memory with 16-byte copies
 * (cp.async on sm_80+, several chunks in flight) from the 16-byte boundary
 * at or below its first byte, so a row that does not start on 16 bytes
 * (row_bytes % 16 != 0, e.g. K = 576 in q4_0) keeps its offset `delta`
 * within the staged row. Words that reach outside the matrix [w, w_end) are
 * copied byte by byte, only their bytes inside it: no read past the
 * allocation. Rows past N repeat row N - 1 (read, computed, not stored). */
template <int WT>
CU_HD constexpr int q8_chunk_blocks() { return WT == CU_Q8_0 ? 16 : 32; }
template <int WT>
CU_HD constexpr int q8_chunk_words() { return q8_chunk_blocks<WT>() * cu_block_bytes(WT) / 16 + 1; }
template <int WT>
CU_HD constexpr int q8_row_stride() { return 16 * q8_chunk_words<WT>() + 16; }   /* + 16: fewer bank conflicts */

CU_HD void cu_copy16(uint8_t *s, const uint8_t *g) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"((unsigned)__cvta_generic_to_shared(s)),
                 "l"(g) : "memory");
#elif defined(__CUDA_ARCH__)
    *(uint4 *)s = *(const uint4 *)g;
#elif defined(LETHE_CUDA_EMU)
    lethe_emu::cp_async16(s, g);   /* lands at the wait that retires its group (emu/emu_device.h) */
#else
    memcpy(s, g, 16);
#endif
}

CU_HD int64_t cu_min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Lane `lane`'s copies of chunk c0 (first block) of rows row0.. into buf
 * [ROWS][q8_row_stride]. */
template <int WT, int ROWS>
CU_HD void q8_stage(uint8_t *buf, const uint8_t *w, size_t rb, int64_t N, int64_t row0, int64_t c0, int lane) {
    constexpr int NW = q8_chunk_words<WT>(), RS = q8_row_stride<WT>();
    const uintptr_t lo = (uintptr_t)w, hi = (uintptr_t)w + (uintptr_t)N * rb;
    for (int i = lane; i < ROWS * NW; i += 32) {
        const int r = i / NW, k = i - r * NW;
        const int64_t row = cu_min64(row0 + r, N - 1);
        const uintptr_t g = (((uintptr_t)w + (uintptr_t)row * rb + (uintptr_t)c0 * cu_block_bytes(WT)) & ~(uintptr_t)15) +
                            16u * (uintptr_t)k;
        uint8_t *s = buf + r * RS + 16 * k;
        if (g >= lo && g + 16 <= hi) {
            cu_copy16(s, (const uint8_t *)g);
        } else {
            for (int b = 0; b < 16; b++)
                if (g + b >= lo && g + b < hi) s[b] = *(const uint8_t *)(g + b);
        }
    }
}

/* First byte of chunk c0 of row `row` within its staged copy. */
template <int WT>
CU_HD int q8_stage_delta(const uint8_t *w, size_t rb, int64_t row, int64_t c0) {
    return (int)(((uintptr_t)w + (uintptr_t)row * rb + (uintptr_t)c0 * cu_block_bytes(WT)) & 15u);
}

/* ------------------------------------------------------ float path
 * A warp owns F_ROWS rows; lane l reads elements 8l + 256i .. + 7 of each
 * (one 16-byte load for f16/bf16, two for f32) and the same 8 activations
 * of each token once for the F_ROWS rows. */
#define F_ROWS 4
template <int WT, int T>
CU_HD void f_lane(const uint8_t *const wr[F_ROWS], const float *x, int64_t K, int lane, float (&acc)[F_ROWS][T]) {
#pragma unroll
    for (int i = 0; i < F_ROWS; i++)
#pragma unroll
        for (int t = 0; t < T; t++) acc[i][t] = 0.0f;
#pragma unroll 2
    for (int64_t k = 8 * lane; k < K; k += 256) {
        float v[F_ROWS][8];
#pragma unroll
        for (int i = 0; i < F_ROWS; i++) dq_part<WT>(wr[i] + (k >> 5) * cu_block_bytes(WT), lane & 3, v[i]);
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float4 a = cu_ldg((const float4 *)(x + (size_t)t * K + k));
            const float4 b = cu_ldg((const float4 *)(x + (size_t)t * K + k + 4));
#pragma unroll
            for (int i = 0; i < F_ROWS; i++) {
                float s = acc[i][t];
                s = cu_fma(v[i][0], a.x, s); s = cu_fma(v[i][1], a.y, s);
                s = cu_fma(v[i][2], a.z, s); s = cu_fma(v[i][3], a.w, s);
                s = cu_fma(v[i][4], b.x, s); s = cu_fma(v[i][5], b.y, s);
                s = cu_fma(v[i][6], b.z, s); s = cu_fma(v[i][7], b.w, s);
                acc[i][t] = s;
            }
        }
    }
}

#endif
