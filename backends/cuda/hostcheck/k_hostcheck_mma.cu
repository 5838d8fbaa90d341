/* k_hostcheck_mma.cu — the tensor-core prefill attention (k_attn_tc.cu) run
 * on the host, for tests/test_cuda_mma.c: the kernel's loop with its 4 warps
 * x 32 lanes stepped one after another through cuda_mma.cuh's lane code, the
 * warp-collective steps (mma, the quad's shuffles) done across the lanes
 * here: lethe_mma_m16n8k16_ref for every mma, the butterfly's partner
 * values for every __shfl_xor_sync, in the kernel's order. Barriers are the
 * points between those phases (every lane finishes one before the next).
 * Legend as in k_attn_tc.cu.
 */
#include "cuda_kernels.h"
#include "cuda_mma.cuh"

#include <stdio.h>
#include <stdlib.h>

/* --- the fragment layouts and the warp reference, for the layout test */

extern "C" void lethe_cu_host_mma_ref(const uint32_t a[32][4], const uint32_t b[32][2], float c[32][4]) {
    lethe_mma_m16n8k16_ref(a, b, c);
}

/* which: 0 A (r 0..3), 1 B (r 0..1), 2 C/D (r 0..3, h ignored) */
extern "C" void lethe_cu_host_mma_rc(int which, int lane, int r, int h, int *row, int *col) {
    if (which == 0) cu_mma_a_rc(lane, r, h, row, col);
    else if (which == 1) cu_mma_b_rc(lane, r, h, row, col);
    else cu_mma_c_rc(lane, r, row, col);
}

extern "C" uint32_t lethe_cu_host_h2_pack(float lo, float hi) { return cu_h2_pack(lo, hi); }

/* --- the kernel's fragment loads against the index functions
 * Every register half each lane's loaders (cu_fa_q_frag, cu_fa_k_frag,
 * cu_fa_stage + cu_fa_v_frag, cu_fa_p_frag) produce must be the matrix
 * element cu_mma_{a,b,c}_rc name for it: Q (A), K^T (B), V (B, through the
 * transposing stage from a paged pool), P (the C layout of S -> A). Values
 * are small integers, exact in f16, a function of the element's place. */

static float code(int r, int c) { return (float)((r * 37 + c * 11) % 1999 - 999); }

template <int D> static int frag_check(char *msg, size_t len) {
    typedef cu_fa<D> F;
    /* Q rows 0..15 of a warp */
    for (int lane = 0; lane < 32; lane++) {
        float q0[D], q1[D];
        for (int d = 0; d < D; d++) {
            q0[d] = code(lane >> 2, d);
            q1[d] = code((lane >> 2) + 8, d);
        }
        uint32_t qa[D / 16][4];
        cu_fa_q_frag<D>(lane, q0, q1, qa);
        for (int kk = 0; kk < D / 16; kk++)
            for (int r = 0; r < 4; r++)
                for (int h = 0; h < 2; h++) {
                    int row, col;
                    cu_mma_a_rc(lane, r, h, &row, &col);
                    const float got = h ? cu_h2_hi(qa[kk][r]) : cu_h2_lo(qa[kk][r]);
                    if (got != code(row, 16 * kk + col)) {
                        snprintf(msg, len, "D %d Q lane %d kk %d reg %d.%d: %g, want Q[%d][%d]", D, lane, kk, r, h,
                                 got, row, 16 * kk + col);
                        return -1;
                    }
                }
    }
    /* a paged pool: 2 pages of K then V rows (f16), page list {1, 0} */
    const size_t slot = 2 * (size_t)D, page = 2 * (size_t)CU_KV_P * slot;
    uint8_t *pool = (uint8_t *)calloc(2, page);
    uint32_t *skw = (uint32_t *)malloc(sizeof(uint32_t) * F::KW), *svw = (uint32_t *)malloc(sizeof(uint32_t) * F::VW);
    const int32_t pl[2] = {1, 0};
    int rc = 0;
    for (int j = 0; j < CU_FA_KT; j++)
        for (int d = 0; d < D; d++) {
            const uint16_t kb = cu_f2h_bits(code(j, d)), vb = cu_f2h_bits(code(d, j) + 0.5f);
            uint8_t *kr = pool + cu_kv_k_off(pl, j, page, slot);
            memcpy(kr + 2 * d, &kb, 2);
            memcpy(kr + (size_t)CU_KV_P * slot + 2 * d, &vb, 2);
        }
    for (int tid = 0; tid < CU_FA_THREADS; tid++) cu_fa_stage<D>(tid, pool, pl, 0, CU_FA_KT, page, slot, skw, svw);
    for (int lane = 0; lane < 32 && !rc; lane++) {
        for (int nt = 0; nt < CU_FA_KT / 8 && !rc; nt++)   /* K^T: B[k = dim][n = key] */
            for (int kk = 0; kk < D / 16 && !rc; kk++) {
                uint32_t b[2];
                cu_fa_k_frag<D>(lane, skw, nt, kk, b);
                for (int r = 0; r < 2; r++)
                    for (int h = 0; h < 2; h++) {
                        int row, col;
                        cu_mma_b_rc(lane, r, h, &row, &col);
                        const float got = h ? cu_h2_hi(b[r]) : cu_h2_lo(b[r]);
                        if (got != code(8 * nt + col, 16 * kk + row) && !rc) {
                            snprintf(msg, len, "D %d K lane %d nt %d kk %d reg %d.%d: %g, want K[%d][%d]", D, lane, nt,
                                     kk, r, h, got, 8 * nt + col, 16 * kk + row);
                            rc = -2;
                        }
                    }
            }
        for (int dn = 0; dn < D / 8 && !rc; dn++)   /* V: B[k = key][n = dim] */
            for (int kk = 0; kk < CU_FA_KT / 16 && !rc; kk++) {
                uint32_t b[2];
                cu_fa_v_frag<D>(lane, svw, dn, kk, b);
                for (int r = 0; r < 2; r++)
                    for (int h = 0; h < 2; h++) {
                        int row, col;
                        cu_mma_b_rc(lane, r, h, &row, &col);
                        const float got = h ? cu_h2_hi(b[r]) : cu_h2_lo(b[r]);
                        if (got != code(8 * dn + col, 16 * kk + row) + 0.5f && !rc) {
                            snprintf(msg, len, "D %d V lane %d dn %d kk %d reg %d.%d: %g, want V[%d][%d]", D, lane, dn,
                                     kk, r, h, got, 16 * kk + row, 8 * dn + col);
                            rc = -3;
                        }
                    }
            }
        /* P: s in the C layout of 8 n-tiles -> A fragments of 4 k-steps */
        float s[CU_FA_KT / 8][4];
        for (int nt = 0; nt < CU_FA_KT / 8; nt++)
            for (int i = 0; i < 4; i++) {
                int row, col;
                cu_mma_c_rc(lane, i, &row, &col);
                s[nt][i] = code(row, 8 * nt + col);
            }
        for (int kk = 0; kk < CU_FA_KT / 16 && !rc; kk++) {
            uint32_t a[4];
            cu_fa_p_frag(s, kk, a);
            for (int r = 0; r < 4; r++)
                for (int h = 0; h < 2; h++) {
                    int row, col;
                    cu_mma_a_rc(lane, r, h, &row, &col);
                    const float got = h ? cu_h2_hi(a[r]) : cu_h2_lo(a[r]);
                    if (got != code(row, 16 * kk + col) && !rc) {
                        snprintf(msg, len, "P lane %d kk %d reg %d.%d: %g, want P[%d][%d]", lane, kk, r, h, got, row,
                                 16 * kk + col);
                        rc = -4;
                    }
                }
        }
    }
    free(pool);
    free(skw);
    free(svw);
    return rc;
}

extern "C" int lethe_cu_host_fa_frag_check(char *msg, size_t len) {
    const int rc = frag_check<64>(msg, len);
    return rc ? rc : frag_check<128>(msg, len);
}

/* --- the kernel, one CTA after another */

namespace {

template <int D> struct lane_state {
    uint32_t qa[D / 16][4];
    float o[D / 8][4];
    float m[2], l[2];
    float s[CU_FA_KT / 8][4];
    uint32_t vis;
    float mx[2];
    int32_t pq[2];
    float *orow[2];
};

/* __shfl_xor_sync(v, 1) then (v, 2) with op, as the kernel's butterfly:
 * x[lane] = op(x[lane], x[lane ^ 1]); then op(., .[lane ^ 2]). */
template <typename Op> static void quad_butterfly(float x[32], Op op) {
    float y[32];
    for (int k = 1; k <= 2; k <<= 1) {
        for (int lane = 0; lane < 32; lane++) y[lane] = op(x[lane], x[lane ^ k]);
        for (int lane = 0; lane < 32; lane++) x[lane] = y[lane];
    }
}

template <int D>
static void cta(const lethe_cu_kv_view *kv, const float *q, float *out, const lethe_cu_attn_work &w,
                const int32_t *plists, const int32_t *qpos, int Hkv, int hk, int G, float scale, uint32_t *skw,
                uint32_t *svw, lane_state<D> *st /* [4][32] */) {
    typedef cu_fa<D> F;
    const int Hq = Hkv * G;
    const int32_t *pl = plists + w.plist;
    int32_t s_pos[512], s_exp[512];
    for (int warp = 0; warp < CU_FA_WARPS; warp++)
        for (int lane = 0; lane < 32; lane++) {
            lane_state<D> &x = st[warp * 32 + lane];
            const float *qrow[2];
            for (int i = 0; i < 2; i++) {
                const int r = 16 * warp + (lane >> 2) + 8 * i, ti = r / G, g = r % G;
                const bool valid = ti < w.nt;
                const size_t o = ((size_t)(w.t0 + ti) * Hq + (size_t)hk * G + g) * D;
                qrow[i] = valid ? q + o : nullptr;
                x.orow[i] = valid ? out + o : nullptr;
                x.pq[i] = valid ? qpos[w.t0 + ti] : INT32_MIN;
            }
            cu_fa_q_frag<D>(lane, qrow[0], qrow[1], x.qa);
            for (int dn = 0; dn < F::NO; dn++)
                for (int c = 0; c < 4; c++) x.o[dn][c] = 0.0f;
            x.m[0] = x.m[1] = -INFINITY;
            x.l[0] = x.l[1] = 0.0f;
        }
    for (int seg0 = 0; seg0 < w.L; seg0 += 512) {
        const int seg_n = w.L - seg0 < 512 ? w.L - seg0 : 512;
        for (int i = 0; i < 512; i++) {
            s_pos[i] = INT32_MAX;
            s_exp[i] = 0;
            if (i < seg_n) {
                const int64_t mi = cu_kv_meta_idx(pl, seg0 + i);
                s_pos[i] = kv->pos[mi];
                s_exp[i] = kv->expire[mi];
            }
        }
        for (int j0 = seg0; j0 < seg0 + seg_n; j0 += CU_FA_KT) {
            const int n = seg0 + seg_n - j0 < CU_FA_KT ? seg0 + seg_n - j0 : CU_FA_KT;
            bool any = false;
            for (int k = 0; k < 128; k++) {
                lane_state<D> &x = st[k];
                x.vis = cu_fa_vis(k & 31, s_pos + (j0 - seg0), s_exp + (j0 - seg0), x.pq[0], x.pq[1]);
                any |= x.vis != 0u;
            }
            if (!any) continue;
            for (int k = 0; k < F::KW; k++) skw[k] = 0xdeadbeefu;   /* every word read must be staged */
            for (int k = 0; k < F::VW; k++) svw[k] = 0xdeadbeefu;
            for (int tid = 0; tid < CU_FA_THREADS; tid++)
                cu_fa_stage<D>(tid, kv->pool, pl, j0, n, kv->page_bytes, kv->slot_bytes, skw, svw);
            for (int warp = 0; warp < CU_FA_WARPS; warp++) {
                lane_state<D> *ws = st + 32 * warp;
                uint32_t a[32][4], b[32][2];
                float c[32][4];
                /* S = Q K^T */
                for (int nt = 0; nt < CU_FA_KT / 8; nt++) {
                    for (int lane = 0; lane < 32; lane++)
                        for (int e = 0; e < 4; e++) c[lane][e] = 0.0f;
                    for (int kk = 0; kk < F::NK; kk++) {
                        for (int lane = 0; lane < 32; lane++) {
                            for (int e = 0; e < 4; e++) a[lane][e] = ws[lane].qa[kk][e];
                            cu_fa_k_frag<D>(lane, skw, nt, kk, b[lane]);
                        }
                        lethe_mma_m16n8k16_ref(a, b, c);
                    }
                    for (int lane = 0; lane < 32; lane++)
                        for (int e = 0; e < 4; e++) ws[lane].s[nt][e] = c[lane][e];
                }
                /* mask, the quad's max, the softmax step */
                float mx[2][32];
                for (int lane = 0; lane < 32; lane++) {
                    cu_fa_mask(ws[lane].s, ws[lane].vis, scale, ws[lane].mx);
                    mx[0][lane] = ws[lane].mx[0];
                    mx[1][lane] = ws[lane].mx[1];
                }
                for (int i = 0; i < 2; i++) quad_butterfly(mx[i], [](float u, float v) { return fmaxf(u, v); });
                for (int lane = 0; lane < 32; lane++) {
                    const float m2[2] = {mx[0][lane], mx[1][lane]};
                    cu_fa_softmax<D>(ws[lane].s, m2, ws[lane].m, ws[lane].l, ws[lane].o);
                }
                /* O += P V */
                for (int kk = 0; kk < CU_FA_KT / 16; kk++)
                    for (int dn = 0; dn < F::NO; dn++) {
                        for (int lane = 0; lane < 32; lane++) {
                            cu_fa_p_frag(ws[lane].s, kk, a[lane]);
                            cu_fa_v_frag<D>(lane, svw, dn, kk, b[lane]);
                            for (int e = 0; e < 4; e++) c[lane][e] = ws[lane].o[dn][e];
                        }
                        lethe_mma_m16n8k16_ref(a, b, c);
                        for (int lane = 0; lane < 32; lane++)
                            for (int e = 0; e < 4; e++) ws[lane].o[dn][e] = c[lane][e];
                    }
            }
        }
    }
    for (int warp = 0; warp < CU_FA_WARPS; warp++) {
        lane_state<D> *ws = st + 32 * warp;
        float lq[2][32];
        for (int lane = 0; lane < 32; lane++) {
            lq[0][lane] = ws[lane].l[0];
            lq[1][lane] = ws[lane].l[1];
        }
        for (int i = 0; i < 2; i++) quad_butterfly(lq[i], [](float u, float v) { return u + v; });
        for (int lane = 0; lane < 32; lane++) {
            const float l2[2] = {lq[0][lane], lq[1][lane]};
            cu_fa_store<D>(lane, ws[lane].o, l2, ws[lane].orow[0], ws[lane].orow[1]);
        }
    }
}

template <int D>
static int run(const lethe_cu_kv_view *kv, const float *q, float *out, const lethe_cu_attn_work *work, int n_blocks,
               const int32_t *plists, const int32_t *qpos, int Hkv, int G, float scale) {
    uint32_t *skw = (uint32_t *)malloc(sizeof(uint32_t) * cu_fa<D>::KW);
    uint32_t *svw = (uint32_t *)malloc(sizeof(uint32_t) * cu_fa<D>::VW);
    lane_state<D> *st = (lane_state<D> *)malloc(sizeof(lane_state<D>) * CU_FA_THREADS);
    if (!skw || !svw || !st) {
        free(skw);
        free(svw);
        free(st);
        return -4;
    }
    int rc = 0;
    for (int blk = 0; blk < n_blocks && !rc; blk++)
        for (int hk = 0; hk < Hkv; hk++) {
            const lethe_cu_attn_work &w = work[(size_t)blk * Hkv + hk];
            if (w.nt > LETHE_CU_ATTN_TC_ROWS / G) {
                rc = -3;
                break;
            }
            cta<D>(kv, q, out, w, plists, qpos, Hkv, hk, G, scale, skw, svw, st);
        }
    free(skw);
    free(svw);
    free(st);
    return rc;
}

}   // namespace

/* The tensor-core prefill kernel's steps on the host (grid (n_blocks, Hkv),
 * the plan's work and page lists). 0, or < 0 for a shape it cannot run. */
extern "C" int lethe_cu_host_attention_tc(const lethe_cu_kv_view *kv, const float *q, float *out,
                                          const lethe_cu_attn_work *work, int n_blocks, const int32_t *plists,
                                          const int32_t *qpos, int Hkv, int G, float scale) {
    if (!lethe_cu_attn_tc_ok(kv->D, G, kv->f16) || Hkv <= 0) return -1;
    return kv->D == 64 ? run<64>(kv, q, out, work, n_blocks, plists, qpos, Hkv, G, scale)
                       : run<128>(kv, q, out, work, n_blocks, plists, qpos, Hkv, G, scale);
}
