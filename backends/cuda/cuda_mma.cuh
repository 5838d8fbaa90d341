/* cuda_mma.cuh — the warp-level tensor-core step of the prefill attention
 * kernel (k_attn_tc.cu): mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32,
 * its fragment layouts, and the per-lane arithmetic of one FlashAttention-2
 * tile, in a header so that the host runs the very same lane code
 * (hostcheck/k_hostcheck_mma.cu, tests/test_cuda_mma.c).
 *
 * mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating
 * point type"): D[16][8] = A[16][16] B[16][8] + C[16][8], A and B f16, C and
 * D f32, one warp. Lane l holds, with g = l >> 2 (groupID) and t = l % 4
 * (threadID_in_group):
 *   A: 4 .f16x2 registers = elements a0..a7 (low half first):
 *      row g for a0, a1, a4, a5, g + 8 for a2, a3, a6, a7;
 *      col 2t + (i & 1), + 8 for i >= 4.
 *   B: 2 .f16x2 registers = b0..b3: row (k) 2t + (i & 1), + 8 for i >= 2;
 *      col (n) g.
 *   C, D: 4 f32 registers c0..c3: row g, + 8 for i >= 2; col 2t + (i & 1).
 * cu_mma_{a,b,c}_rc below say the same per register and half; the test
 * checks them against the ISA's formulas (written out separately in
 * lethe_mma_m16n8k16_ref) and against a plain matrix product.
 *
 * Why the host has a whole-warp reference and no per-lane one: the
 * instruction is warp-collective (every lane's D depends on other lanes'
 * A and B). On the device cu_mma_m16n8k16 is the inline PTX; on the host
 * a caller that runs the 32 lanes (the host check, a CPU emulator of the
 * device) gathers their registers and calls lethe_mma_m16n8k16_ref. A host
 * build of a kernel defines LETHE_CU_EMU_MMA(c, a, b) to reach its warp.
 *
 * Attention tile legend: KT = 64 keys per tile, 4 warps x 16 query rows =
 * 64 rows per CTA (rows = the G query heads of a KV head x 64 / G tokens),
 * D head dim (64 or 128). Shared memory, 32-bit words of two f16:
 *   skw [KT][LDK]  K rows, word w = dims 2w, 2w + 1; LDK = (D + 8) / 2
 *   svw [D][LDV]   V transposed, word w = keys 2w, 2w + 1; LDV = (KT + 8) / 2
 * (the 4-word pad puts the 8 groups of a fragment load in different banks:
 * lane (g, t) reads word g * LDx + t + const, LDx = 4 mod 32).
 * A lane's S tile s[KT / 8][4] is the C layout of 8 mma n-tiles: s[nt][c]
 * = score of row (c < 2 ? g : g + 8), key nt * 8 + 2t + (c & 1).
 */
#ifndef LETHE_CUDA_MMA_CUH
#define LETHE_CUDA_MMA_CUH

#include "cuda_attn.cuh"   /* cu_kv_visible, cu_sm_alpha / cu_sm_weight, CU_HD */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------ fragment index math */

/* Register r (0..3), half h (0 low, 1 high) of lane `lane`'s A fragment. */
CU_HD void cu_mma_a_rc(int lane, int r, int h, int *row, int *col) {
    *row = (lane >> 2) + 8 * (r & 1);
    *col = 2 * (lane & 3) + h + 8 * (r >> 1);
}
/* Register r (0..1), half h of the B fragment: row = k, col = n. */
CU_HD void cu_mma_b_rc(int lane, int r, int h, int *row, int *col) {
    *row = 2 * (lane & 3) + h + 8 * r;
    *col = lane >> 2;
}
/* Register i (0..3) of the C / D fragment. */
CU_HD void cu_mma_c_rc(int lane, int i, int *row, int *col) {
    *row = (lane >> 2) + 8 * (i >> 1);
    *col = 2 * (lane & 3) + (i & 1);
}

/* Two f16 in one register: lo in bits 0..15 (the element of lower index). */
CU_HD uint16_t cu_f2h_bits(float x) { return __half_as_ushort(__float2half_rn(x)); }
CU_HD float cu_h_bits2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
CU_HD uint32_t cu_h2_pack(float lo, float hi) {
    return (uint32_t)cu_f2h_bits(lo) | ((uint32_t)cu_f2h_bits(hi) << 16);
}
CU_HD float cu_h2_lo(uint32_t u) { return cu_h_bits2f((uint16_t)(u & 0xffffu)); }
CU_HD float cu_h2_hi(uint32_t u) { return cu_h_bits2f((uint16_t)(u >> 16)); }
/* x rounded to f16 and back: the value the tensor core sees. */
CU_HD float cu_f16_round(float x) { return cu_h_bits2f(cu_f2h_bits(x)); }

/* ----------------------------------------------- the warp's mma itself */

#ifdef __CUDA_ARCH__
/* c += A B for this lane's fragments (the warp executes it together). */
__device__ __forceinline__ void cu_mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#else
/* Host builds of the kernel: the emulator's warp step (it gathers the 32
 * lanes and calls lethe_mma_m16n8k16_ref). Without one, never reached: the
 * host check drives lethe_mma_m16n8k16_ref itself. */
static inline void cu_mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef LETHE_CU_EMU_MMA
    LETHE_CU_EMU_MMA(c, a, b);
#else
    (void)c;
    (void)a;
    (void)b;
    abort();
#endif
}
#endif

/* The whole warp's mma on the host: c[lane] += A B, every lane's fragment
 * registers in and out. Written from the ISA's formulas directly (not from
 * cu_mma_*_rc), so the test that scatters with those and gathers from this
 * checks one against the other. f16 x f16 products are exact in double; the
 * 16 products and c are summed in double and rounded once to f32. The
 * hardware's accumulation order and internal rounding are not documented:
 * real results may differ from this in the last bits of f32. */
static inline void lethe_mma_m16n8k16_ref(const uint32_t a[32][4], const uint32_t b[32][2], float c[32][4]) {
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; lane++) {
        const int groupID = lane >> 2, tig = lane % 4;
        for (int i = 0; i < 8; i++) {   /* a_i: register i / 2, half i % 2 */
            const int row = (i < 2 || (i >= 4 && i < 6)) ? groupID : groupID + 8;
            const int col = i < 4 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;
            const uint32_t r = a[lane][i / 2];
            A[row][col] = i % 2 ? cu_h2_hi(r) : cu_h2_lo(r);
        }
        for (int i = 0; i < 4; i++) {
            const int row = i < 2 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;
            const uint32_t r = b[lane][i / 2];
            B[row][groupID] = i % 2 ? cu_h2_hi(r) : cu_h2_lo(r);
        }
    }
    float D[16][8];
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++) {
            double s = 0.0;
            for (int k = 0; k < 16; k++) s += (double)A[m][k] * (double)B[k][n];
            D[m][n] = (float)s;   /* the products' sum, then + c below (c may be large, e.g. a running sum) */
        }
    for (int lane = 0; lane < 32; lane++) {
        const int groupID = lane >> 2, tig = lane % 4;
        for (int i = 0; i < 4; i++) {
            const int row = i < 2 ? groupID : groupID + 8;
            const int col = tig * 2 + (i & 1);
            c[lane][i] = (float)((double)D[row][col] + (double)c[lane][i]);
        }
    }
}

/* -------------------------------------- FlashAttention-2 tile, per lane */

#define CU_FA_KT 64        /* keys per tile (2 pages)          */
#define CU_FA_WARPS 4
#define CU_FA_ROWS 64      /* query rows per CTA: 16 per warp  */
#define CU_FA_THREADS 128

template <int D> struct cu_fa {
    static constexpr int LDK = (D + 8) / 2;         /* words per K row in shared memory */
    static constexpr int LDV = (CU_FA_KT + 8) / 2;  /* words per V^T row                */
    static constexpr int KW = CU_FA_KT * LDK;       /* words of skw                     */
    static constexpr int VW = D * LDV;              /* words of svw                     */
    static constexpr int NK = D / 16;               /* k-steps of Q K^T                 */
    static constexpr int NO = D / 8;                /* n-tiles of the output            */
};

/* 16 bytes of a row (16-byte aligned: rows are D * 2 bytes, D % 8 == 0, the
 * pool 256-byte aligned) as 4 words. */
CU_HD void cu_fa_ld16(const uint8_t *p, uint32_t w[4]) {
#ifdef __CUDA_ARCH__
    const uint4 u = *(const uint4 *)p;
    w[0] = u.x;
    w[1] = u.y;
    w[2] = u.z;
    w[3] = u.w;
#else
    memcpy(w, p, 16);
#endif
}

/* Thread tid (0..127) of the CTA stages its share of tile rows [0, n) of K
 * (straight) and V (transposed) into shared memory; rows n..KT-1 (past the
 * stream) are zeros, so P = 0 there meets finite V. `kv0(jj)` = byte offset
 * of the K row of tile row jj in the pool (its V row is P slots later). */
template <int D>
CU_HD void cu_fa_stage(int tid, const uint8_t *pool, const int32_t *pl, int j0, int n, size_t page_bytes,
                       size_t slot_bytes, uint32_t *skw, uint32_t *svw) {
    typedef cu_fa<D> F;
    /* K: chunk c = (row jj, 8 dims e8): consecutive threads, consecutive 16 bytes of a row */
    for (int c = tid; c < CU_FA_KT * (D / 8); c += CU_FA_THREADS) {
        const int jj = c / (D / 8), e8 = c % (D / 8);
        uint32_t w[4] = {0u, 0u, 0u, 0u};
        if (jj < n) cu_fa_ld16(pool + cu_kv_k_off(pl, j0 + jj, page_bytes, slot_bytes) + 16 * e8, w);
        uint32_t *dst = skw + jj * F::LDK + 4 * e8;
#ifdef __CUDA_ARCH__
        *(uint4 *)dst = make_uint4(w[0], w[1], w[2], w[3]);   /* LDK * 4 bytes is a multiple of 16 */
#else
        memcpy(dst, w, 16);
#endif
    }
    /* V^T: item c = (key pair kp, 8 dims e8), kp fastest: a warp's 32 stores
     * of one dim are 32 consecutive words (no bank conflict) */
    for (int c = tid; c < (CU_FA_KT / 2) * (D / 8); c += CU_FA_THREADS) {
        const int kp = c % (CU_FA_KT / 2), e8 = c / (CU_FA_KT / 2);
        uint32_t v0[4] = {0u, 0u, 0u, 0u}, v1[4] = {0u, 0u, 0u, 0u};
        const size_t voff = (size_t)CU_KV_P * slot_bytes;
        if (2 * kp < n) cu_fa_ld16(pool + cu_kv_k_off(pl, j0 + 2 * kp, page_bytes, slot_bytes) + voff + 16 * e8, v0);
        if (2 * kp + 1 < n)
            cu_fa_ld16(pool + cu_kv_k_off(pl, j0 + 2 * kp + 1, page_bytes, slot_bytes) + voff + 16 * e8, v1);
#pragma unroll
        for (int e = 0; e < 8; e++) {   /* dim 8 e8 + e: half e % 2 of word e / 2 */
            const uint32_t lo = (v0[e / 2] >> (16 * (e % 2))) & 0xffffu, hi = (v1[e / 2] >> (16 * (e % 2))) & 0xffffu;
            svw[(8 * e8 + e) * F::LDV + kp] = lo | (hi << 16);
        }
    }
}

/* Query rows r0 = 16 w + g and r1 = r0 + 8 of the warp as A fragments, one
 * per 16 dims (q0 / q1: the rows' f32 values, NULL: a padding row, zeros).
 * Rounded to f16 (RNE); the scale is applied to the f32 scores later, as
 * the f32 kernel does. */
template <int D>
CU_HD void cu_fa_q_frag(int lane, const float *q0, const float *q1, uint32_t qa[D / 16][4]) {
    const int t = lane & 3;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        const int d = 16 * kk + 2 * t;
        qa[kk][0] = q0 ? cu_h2_pack(q0[d], q0[d + 1]) : 0u;
        qa[kk][1] = q1 ? cu_h2_pack(q1[d], q1[d + 1]) : 0u;
        qa[kk][2] = q0 ? cu_h2_pack(q0[d + 8], q0[d + 9]) : 0u;
        qa[kk][3] = q1 ? cu_h2_pack(q1[d + 8], q1[d + 9]) : 0u;
    }
}

/* B fragment of K^T for keys nt * 8 .. + 7 (n) and dims kk * 16 .. + 15 (k):
 * b0, b1 = K[key nt * 8 + g][dims 16 kk + 2t, + 1], b2, b3 = 8 dims later. */
template <int D>
CU_HD void cu_fa_k_frag(int lane, const uint32_t *skw, int nt, int kk, uint32_t b[2]) {
    const uint32_t *r = skw + (nt * 8 + (lane >> 2)) * cu_fa<D>::LDK + 8 * kk + (lane & 3);
    b[0] = r[0];
    b[1] = r[4];
}

/* B fragment of V for keys kk * 16 .. + 15 (k) and dims dn * 8 .. + 7 (n):
 * b0, b1 = V[keys 16 kk + 2t, + 1][dim 8 dn + g], b2, b3 = 8 keys later. */
template <int D>
CU_HD void cu_fa_v_frag(int lane, const uint32_t *svw, int dn, int kk, uint32_t b[2]) {
    const uint32_t *r = svw + (dn * 8 + (lane >> 2)) * cu_fa<D>::LDV + 8 * kk + (lane & 3);
    b[0] = r[0];
    b[1] = r[4];
}

/* The lane's visibility bits of a tile: bit nt * 4 + c for s[nt][c] (key
 * nt * 8 + 2t + (c & 1) of the tile, row c < 2 ? r0 : r1 at positions
 * p0 / p1; a padding row has INT32_MIN and sees nothing). pos / exp: the
 * tile's slot metadata (past the stream: holes). */
CU_HD uint32_t cu_fa_vis(int lane, const int32_t *pos, const int32_t *exp, int32_t p0, int32_t p1) {
    uint32_t m = 0u;
    const int t = lane & 3;
#pragma unroll
    for (int nt = 0; nt < CU_FA_KT / 8; nt++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int key = nt * 8 + 2 * t + (c & 1);
            if (cu_kv_visible(pos[key], exp[key], c < 2 ? p0 : p1)) m |= 1u << (nt * 4 + c);
        }
    return m;
}

/* Scores: s = visible ? scale * (q . k) : -inf; mx[i] = the lane's max of
 * row i (0: r0, 1: r1) over the tile, before the quad's butterfly. */
CU_HD void cu_fa_mask(float s[CU_FA_KT / 8][4], uint32_t vis, float scale, float mx[2]) {
    mx[0] = mx[1] = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < CU_FA_KT / 8; nt++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
            s[nt][c] = (vis >> (nt * 4 + c)) & 1u ? scale * s[nt][c] : -INFINITY;
            mx[c >> 1] = fmaxf(mx[c >> 1], s[nt][c]);
        }
}

/* The online-softmax step once mx holds the row maxima of the tile (the
 * quad's butterfly done: the 4 lanes of a row agree): running max m, the
 * lane's partial sum l (its own columns; the quad's 4 are added at the
 * end), the output rows o rescaled; s becomes P, rounded to f16 (the value
 * the PV mma multiplies, so l sums exactly the weights applied). A row that
 * has seen nothing keeps m = -inf, l = 0, o = 0 (cu_sm_alpha/weight). */
template <int D>
CU_HD void cu_fa_softmax(float s[CU_FA_KT / 8][4], const float mx[2], float m[2], float l[2],
                         float o[D / 8][4]) {
    float mn[2], al[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        mn[i] = fmaxf(m[i], mx[i]);
        al[i] = cu_sm_alpha(m[i], mn[i]);
        l[i] *= al[i];
        m[i] = mn[i];
    }
#pragma unroll
    for (int dn = 0; dn < D / 8; dn++)
#pragma unroll
        for (int c = 0; c < 4; c++) o[dn][c] *= al[c >> 1];
#pragma unroll
    for (int nt = 0; nt < CU_FA_KT / 8; nt++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const float p = cu_f16_round(cu_sm_weight(s[nt][c], mn[c >> 1]));
            s[nt][c] = p;
            l[c >> 1] += p;
        }
}

/* P as the A fragment of keys kk * 16 .. + 15: the C layout of n-tiles 2kk
 * and 2kk + 1 is the A layout of one k-step (rows g / g + 8, columns 2t,
 * 2t + 1, and + 8 from the second n-tile). */
CU_HD void cu_fa_p_frag(const float s[CU_FA_KT / 8][4], int kk, uint32_t a[4]) {
    a[0] = cu_h2_pack(s[2 * kk][0], s[2 * kk][1]);
    a[1] = cu_h2_pack(s[2 * kk][2], s[2 * kk][3]);
    a[2] = cu_h2_pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[3] = cu_h2_pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

/* The rows' outputs (lq: the quad's total l of each row): o / l, zeros for
 * a row that saw nothing (l = 0), as the f32 kernel. out0 / out1: the rows'
 * D floats (NULL: a padding row, nothing written). */
template <int D>
CU_HD void cu_fa_store(int lane, const float o[D / 8][4], const float lq[2], float *out0, float *out1) {
    const int t = lane & 3;
    const float i0 = lq[0] > 0.0f ? 1.0f / lq[0] : 0.0f, i1 = lq[1] > 0.0f ? 1.0f / lq[1] : 0.0f;
#pragma unroll
    for (int dn = 0; dn < D / 8; dn++) {
        const int d = dn * 8 + 2 * t;
        if (out0) {
            out0[d] = o[dn][0] * i0;
            out0[d + 1] = o[dn][1] * i0;
        }
        if (out1) {
            out1[d] = o[dn][2] * i1;
            out1[d + 1] = o[dn][3] * i1;
        }
    }
}

#endif
