/* k_hostcheck.cu — the CUDA kernels' block decoding and GEMV lane code run
 * on the host, for tests/test_cuda_host_*.c: CI has no GPU, but it can still
 * check that the device code reads every GGUF block type exactly as the CPU
 * backend does and that the GEMV's lane/part mapping covers each weight once.
 * Built into a small static library (not the module); no kernel is launched.
 * Legend: K elements of a row (K % 32 == 0), N rows, T tokens.
 */
#include "cuda_gemv.cuh"

#include <stddef.h>

template <int WT>
static void dequant_row(const uint8_t *row, int64_t K, float *out) {
    for (int64_t blk = 0; blk < K / 32; blk++)
        for (int p = 0; p < 4; p++) {
            float v[8];
            dq_part<WT>(row + blk * cu_block_bytes(WT), p, v);
            for (int j = 0; j < 8; j++) out[blk * 32 + part_idx<WT>(p, j)] = v[j];
        }
}

extern "C" int lethe_cu_host_dequant_row(int wtype, const void *row, int64_t K, float *out) {
    if (K % 32 != 0) return -1;
    const uint8_t *r = (const uint8_t *)row;
#define L(WT) dequant_row<WT>(r, K, out)
    switch (wtype) {
    case CU_F32: L(CU_F32); break;
    case CU_F16: L(CU_F16); break;
    case CU_BF16: L(CU_BF16); break;
    case CU_Q4_0: L(CU_Q4_0); break;
    case CU_Q4_1: L(CU_Q4_1); break;
    case CU_Q5_0: L(CU_Q5_0); break;
    case CU_Q5_1: L(CU_Q5_1); break;
    case CU_Q8_0: L(CU_Q8_0); break;
    default: return -1;
    }
#undef L
    return 0;
}

/* y [T, N] as the GEMV kernel computes it: 32 lanes per row, their partial sums added. */
template <int WT, int T>
static void gemv(const uint8_t *w, size_t row_bytes, const float *x, float *y, int64_t N, int64_t K) {
    for (int64_t row = 0; row < N; row++) {
        double sum[T] = {0};
        for (int lane = 0; lane < 32; lane++) {
            float acc[T];
            gemv_lane<WT, T>(w + (size_t)row * row_bytes, x, K, lane, acc);
            for (int t = 0; t < T; t++) sum[t] += acc[t];
        }
        for (int t = 0; t < T; t++) y[(size_t)t * N + row] = (float)sum[t];
    }
}

template <int WT>
static int gemv_t(const uint8_t *w, size_t rb, const float *x, float *y, int64_t N, int64_t K, int64_t T) {
    switch (T) {
    case 1: gemv<WT, 1>(w, rb, x, y, N, K); return 0;
    case 3: gemv<WT, 3>(w, rb, x, y, N, K); return 0;
    case 8: gemv<WT, 8>(w, rb, x, y, N, K); return 0;
    default: return -1;
    }
}

extern "C" int lethe_cu_host_gemv(int wtype, const void *w, size_t row_bytes, const float *x, float *y, int64_t N,
                                  int64_t K, int64_t T) {
    if (K % 32 != 0) return -1;
    const uint8_t *wb = (const uint8_t *)w;
    switch (wtype) {
    case CU_F32: return gemv_t<CU_F32>(wb, row_bytes, x, y, N, K, T);
    case CU_F16: return gemv_t<CU_F16>(wb, row_bytes, x, y, N, K, T);
    case CU_BF16: return gemv_t<CU_BF16>(wb, row_bytes, x, y, N, K, T);
    case CU_Q4_0: return gemv_t<CU_Q4_0>(wb, row_bytes, x, y, N, K, T);
    case CU_Q4_1: return gemv_t<CU_Q4_1>(wb, row_bytes, x, y, N, K, T);
    case CU_Q5_0: return gemv_t<CU_Q5_0>(wb, row_bytes, x, y, N, K, T);
    case CU_Q5_1: return gemv_t<CU_Q5_1>(wb, row_bytes, x, y, N, K, T);
    case CU_Q8_0: return gemv_t<CU_Q8_0>(wb, row_bytes, x, y, N, K, T);
    default: return -1;
    }
}

/* ------------------------------------------------------------------------
 * The attention kernels' arithmetic on the host (k_attention.cu), step for
 * step in the kernels' order: the same tables (cuda_kv_meta.h), the same
 * slot addressing, visibility test, online-softmax step and split combine
 * (cuda_attn.cuh). Only the order of the additions inside one dot product
 * differs (lanes + butterfly on the device). Legend as in k_attention.cu. */
#include "cuda_attn.cuh"
#include "cuda_kernels.h"

#include <math.h>
#include <stdlib.h>

static float kv_elem(const uint8_t *row, int d, bool f16) {
    if (f16) {
        uint16_t h;
        memcpy(&h, row + 2 * d, 2);
        return __half2float(__ushort_as_half(h));
    }
    float f;
    memcpy(&f, row + 4 * d, 4);
    return f;
}

extern "C" int lethe_cu_host_kv_store(const lethe_cu_kv_view *kv, const float *k, const float *v, const float *dec,
                                      const lethe_cu_kv_row *rows, int64_t n_rows) {
    const int D = kv->D;
    for (int64_t r = 0; r < n_rows; r++) {
        uint8_t *kd = kv->pool + rows[r].k_off, *vd = kd + (size_t)CU_KV_P * kv->slot_bytes;
        for (int d = 0; d < D; d++) {
            if (kv->f16) {
                const uint16_t a = __half_as_ushort(__float2half_rn(k[r * D + d]));
                const uint16_t b = __half_as_ushort(__float2half_rn(v[r * D + d]));
                memcpy(kd + 2 * d, &a, 2);
                memcpy(vd + 2 * d, &b, 2);
            } else {
                memcpy(kd + 4 * d, &k[r * D + d], 4);
                memcpy(vd + 4 * d, &v[r * D + d], 4);
            }
        }
        if (dec && rows[r].exp_idx >= 0 && dec[r] > 0.0f) kv->expire[rows[r].exp_idx] = rows[r].new_exp;
    }
    return 0;
}

/* One (block, KV head, span) of the decode kernel -> partial [G][D + 2]
 * (m, l, acc) laid out as in `part`. */
static void host_decode_span(const lethe_cu_kv_view *kv, const float *q, const lethe_cu_attn_work &w,
                             const int32_t *plists, int32_t pq, int t, int hk, int Hkv, int G, float scale,
                             int j_begin, int j_end, float *part, float *wts, int wstride) {
    const int D = kv->D, Hq = Hkv * G;
    const int32_t *pl = plists + w.plist;
    float *s = (float *)malloc(sizeof(float) * (size_t)G * CU_KV_P);
    for (int g = 0; g < G; g++) {
        part[g * (D + 2)] = -INFINITY;
        part[g * (D + 2) + 1] = 0.0f;
        for (int d = 0; d < D; d++) part[g * (D + 2) + 2 + d] = 0.0f;
    }
    for (int j0 = j_begin; j0 < j_end; j0 += CU_KV_P) {
        const int n = j_end - j0 < CU_KV_P ? j_end - j0 : CU_KV_P;
        for (int jj = 0; jj < CU_KV_P; jj++) {
            const int64_t mi = jj < n ? cu_kv_meta_idx(pl, j0 + jj) : 0;
            const bool vis = jj < n && cu_kv_visible(kv->pos[mi], kv->expire[mi], pq);
            for (int g = 0; g < G; g++) {
                float dot = 0.0f;
                if (vis) {
                    const uint8_t *kr = kv->pool + cu_kv_k_off(pl, j0 + jj, kv->page_bytes, kv->slot_bytes);
                    const float *qg = q + ((size_t)t * Hq + (size_t)hk * G + g) * D;
                    for (int d = 0; d < D; d++) dot = fmaf(qg[d], kv_elem(kr, d, kv->f16), dot);
                }
                s[g * CU_KV_P + jj] = vis ? scale * dot : -INFINITY;
                if (wts && jj < n)   /* the kernel's raw score */
                    wts[((size_t)t * Hq + (size_t)hk * G + g) * wstride + j0 + jj] = s[g * CU_KV_P + jj];
            }
        }
        for (int g = 0; g < G; g++) {
            float *pg = part + g * (D + 2);
            float mx = -INFINITY;
            for (int jj = 0; jj < CU_KV_P; jj++) mx = fmaxf(mx, s[g * CU_KV_P + jj]);
            const float m_old = pg[0], m_new = fmaxf(m_old, mx);
            float sum = 0.0f;
            for (int jj = 0; jj < CU_KV_P; jj++) {
                s[g * CU_KV_P + jj] = cu_sm_weight(s[g * CU_KV_P + jj], m_new);
                sum += s[g * CU_KV_P + jj];
            }
            const float a = cu_sm_alpha(m_old, m_new);
            pg[0] = m_new;
            pg[1] = pg[1] * a + sum;
            for (int d = 0; d < D; d++) pg[2 + d] *= a;
            for (int jj = 0; jj < n; jj++) {
                const float p = s[g * CU_KV_P + jj];
                if (p == 0.0f) continue;
                const uint8_t *vr = kv->pool + cu_kv_k_off(pl, j0 + jj, kv->page_bytes, kv->slot_bytes) +
                                    (size_t)CU_KV_P * kv->slot_bytes;
                for (int d = 0; d < D; d++) pg[2 + d] = fmaf(p, kv_elem(vr, d, kv->f16), pg[2 + d]);
            }
        }
    }
    free(s);
}

/* The decode path (k_attn_decode + k_attn_combine) and the tiled path
 * (k_attn_prefill), with the kernels' work tables and split plan. cap: the
 * decode grid's span count (>= n_split, cuda_plan.h's bucket): spans past
 * n_split are CTAs that exit at once (their partials stay poisoned: NaN),
 * partials are laid out with stride cap, and the combine reads n_split. */
extern "C" int lethe_cu_host_attention_tc(const lethe_cu_kv_view *kv, const float *q, float *out,
                                          const lethe_cu_attn_work *work, int n_blocks, const int32_t *plists,
                                          const int32_t *qpos, int Hkv, int G, float scale);

extern "C" int lethe_cu_host_attention(const lethe_cu_kv_view *kv, const float *q, float *out,
                                       const lethe_cu_attn_work *work, int n_blocks, int decode,
                                       const int32_t *plists, const int32_t *qpos, int Hkv, int G, float scale,
                                       int chunk, int n_split, int cap, float *wts, int wstride) {
    const int D = kv->D, Hq = Hkv * G;
    if (decode == LETHE_CU_ATTN_TC)   /* the tensor-core kernel (k_hostcheck_mma.cu), as lethe_cu_attention */
        return wts ? -1 : lethe_cu_host_attention_tc(kv, q, out, work, n_blocks, plists, qpos, Hkv, G, scale);
    if (!lethe_cu_attn_shape_ok(D, G) || chunk % CU_KV_P != 0 || n_split < 1 || cap < n_split) return -1;
    if (wts)   /* the caller's fill: NaN bytes where no kernel writes */
        memset(wts, 0xFF, sizeof(float) * (size_t)(decode ? n_blocks : work[(size_t)(n_blocks - 1) * Hkv].t0 +
                                                                          work[(size_t)(n_blocks - 1) * Hkv].nt) *
                              (size_t)Hq * (size_t)wstride);
    if (decode) {
        const int stride = G * (D + 2);
        float *part = (float *)malloc(sizeof(float) * (size_t)cap * stride);
        for (int item = 0; item < n_blocks * Hkv; item++) {
            const int b = item / Hkv, hk = item % Hkv;
            const lethe_cu_attn_work &w = work[item];
            if (w.nt != 1) {
                free(part);
                return -2;
            }
            const int t = w.t0;
            for (size_t i = 0; i < (size_t)cap * stride; i++) part[i] = NAN;
            for (int sp = 0; sp < cap; sp++) {
                if (sp >= n_split) continue;   /* the kernel's early exit */
                const int jb = sp * chunk, je = w.L < jb + chunk ? w.L : jb + chunk;
                host_decode_span(kv, q, w, plists, qpos[t], t, hk, Hkv, G, scale, jb, je, part + sp * stride, wts,
                                 wstride);
            }
            (void)b;
            for (int g = 0; g < G; g++) {
                const float *p0 = part + g * (D + 2);
                float *o = out + ((size_t)t * Hq + (size_t)hk * G + g) * D;
                float *wr = wts ? wts + ((size_t)t * Hq + (size_t)hk * G + g) * wstride : NULL;
                if (n_split == 1) {   /* the kernel writes acc * (1 / l); the combine, if launched, returns */
                    for (int d = 0; d < D; d++) o[d] = p0[1] > 0.0f ? p0[2 + d] * (1.0f / p0[1]) : 0.0f;
                    for (int j = 0; wr && j < w.L; j++) wr[j] = cu_score_weight(wr[j], p0[0], p0[1]);
                    continue;
                }
                const float M = cu_comb_max(n_split, p0, stride);
                const float den = cu_comb_den(n_split, p0, p0 + 1, stride, M);
                for (int j = 0; wr && j < w.L; j++) wr[j] = cu_score_weight(wr[j], M, den);   /* the combine kernel */
                const float inv = den > 0.0f ? 1.0f / den : 0.0f;
                for (int d = 0; d < D; d++) {
                    float a = 0.0f;
                    for (int i = 0; i < n_split; i++) {
                        const float f = cu_comb_factor(p0[(size_t)i * stride], M);
                        if (f != 0.0f) a += f * p0[(size_t)i * stride + 2 + d];
                    }
                    o[d] = a * inv;
                }
            }
        }
        free(part);
        return 0;
    }
    const int KT = D <= 128 ? 32 : 16;
    float *acc = (float *)malloc(sizeof(float) * (size_t)D);
    for (int blk = 0; blk < n_blocks; blk++)
        for (int hk = 0; hk < Hkv; hk++) {
            const lethe_cu_attn_work &w = work[(size_t)blk * Hkv + hk];
            const int32_t *pl = plists + w.plist;
            if (w.nt > 32 / G) {
                free(acc);
                return -3;
            }
            for (int ti = 0; ti < w.nt; ti++)
                for (int g = 0; g < G; g++) {
                    const int t = w.t0 + ti;
                    const int32_t pq = qpos[t];
                    const float *qg = q + ((size_t)t * Hq + (size_t)hk * G + g) * D;
                    float m = -INFINITY, l = 0.0f;
                    float *wr = wts ? wts + ((size_t)t * Hq + (size_t)hk * G + g) * wstride : NULL;
                    for (int d = 0; d < D; d++) acc[d] = 0.0f;
                    for (int j0 = 0; j0 < w.L; j0 += KT) {
                        const int n = w.L - j0 < KT ? w.L - j0 : KT;
                        float s[32];
                        float mx = m;
                        /* the kernel skips a tile no row of the block sees (its weights stay NaN) */
                        bool any = false;
                        for (int tj = 0; tj < w.nt && !any; tj++)
                            for (int jj = 0; jj < n && !any; jj++) {
                                const int64_t mi = cu_kv_meta_idx(pl, j0 + jj);
                                any = cu_kv_visible(kv->pos[mi], kv->expire[mi], qpos[w.t0 + tj]);
                            }
                        if (!any) continue;
                        for (int jj = 0; jj < KT; jj++) {
                            s[jj] = -INFINITY;
                            if (jj >= n) continue;
                            const int64_t mi = cu_kv_meta_idx(pl, j0 + jj);
                            if (!cu_kv_visible(kv->pos[mi], kv->expire[mi], pq)) {
                                if (wr) wr[j0 + jj] = -INFINITY;
                                continue;
                            }
                            const uint8_t *kr = kv->pool + cu_kv_k_off(pl, j0 + jj, kv->page_bytes, kv->slot_bytes);
                            float dot = 0.0f;
                            for (int d = 0; d < D; d++) dot = fmaf(qg[d], kv_elem(kr, d, kv->f16), dot);
                            s[jj] = scale * dot;
                            if (wr) wr[j0 + jj] = s[jj];
                            mx = fmaxf(mx, s[jj]);
                        }
                        if (mx == -INFINITY) continue;
                        const float alpha = cu_sm_alpha(m, mx);
                        l *= alpha;
                        for (int d = 0; d < D; d++) acc[d] *= alpha;
                        for (int jj = 0; jj < KT; jj++) {
                            const float p = cu_sm_weight(s[jj], mx);
                            l += p;
                            if (p == 0.0f) continue;
                            const uint8_t *vr = kv->pool + cu_kv_k_off(pl, j0 + jj, kv->page_bytes, kv->slot_bytes) +
                                                (size_t)CU_KV_P * kv->slot_bytes;
                            for (int d = 0; d < D; d++) acc[d] = fmaf(p, kv_elem(vr, d, kv->f16), acc[d]);
                        }
                        m = mx;
                    }
                    for (int j = 0; wr && j < w.L; j++) wr[j] = cu_score_weight(wr[j], m, l);
                    float *o = out + ((size_t)t * Hq + (size_t)hk * G + g) * D;
                    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
                    for (int d = 0; d < D; d++) o[d] = acc[d] * inv;
                }
        }
    free(acc);
    return 0;
}


/* QUEST on the host, in the kernels' order: k_quest_bounds over the entries
 * [n][2], then k_quest_select for every (token, KV head) work entry (each
 * page's bound by cu_quest_bound, the own page, cu_quest_pick), rewriting
 * the entries to page lists at plists[sel_base + item * k ...]. */
extern "C" int lethe_cu_host_quest(const lethe_cu_kv_view *kv, const float *q, lethe_cu_attn_work *work, int n_items,
                                   int32_t *plists, int sel_base, int k, const int32_t *qpos, int Hkv, int G,
                                   const int32_t *entries, int n_entries) {
    const int D = kv->D;
    if (!kv->kmin || !kv->kmax || k < 1) return -1;
    for (int e = 0; e < n_entries; e++) {
        const int32_t page = entries[2 * e], rows = entries[2 * e + 1];
        for (int d = 0; d < D; d++) {
            float mn = INFINITY, mx = -INFINITY;
            for (int r = 0; r < rows; r++) {
                const float x = kv_elem(kv->pool + (size_t)page * kv->page_bytes + (size_t)r * kv->slot_bytes, d, kv->f16);
                mn = x < mn ? x : mn;
                mx = x > mx ? x : mx;
            }
            kv->kmin[(size_t)page * D + d] = mn;
            kv->kmax[(size_t)page * D + d] = mx;
        }
    }
    float *bound = (float *)malloc(sizeof(float) * CU_QUEST_MAX_PAGES);
    int32_t *sel = (int32_t *)malloc(sizeof(int32_t) * CU_QUEST_MAX_PAGES);
    for (int item = 0; item < n_items; item++) {
        lethe_cu_attn_work &w = work[item];
        const int n_pages = (w.L + CU_KV_P - 1) / CU_KV_P, hk = item % Hkv;
        if (n_pages <= k) continue;
        if (n_pages > CU_QUEST_MAX_PAGES) {
            free(bound);
            free(sel);
            return -2;
        }
        const int32_t *pl = plists + w.plist;
        const float *qg = q + ((size_t)w.t0 * Hkv * G + (size_t)hk * G) * D;
        int own = -1;
        for (int p = 0; p < n_pages; p++) {
            bound[p] = cu_quest_bound(qg, G, D, kv->kmin + (size_t)pl[p] * D, kv->kmax + (size_t)pl[p] * D);
            const int rows = w.L - p * CU_KV_P < CU_KV_P ? w.L - p * CU_KV_P : CU_KV_P;
            for (int j = 0; j < rows; j++)
                if (kv->pos[(size_t)pl[p] * CU_KV_P + j] == qpos[w.t0]) own = p > own ? p : own;
        }
        const int n = cu_quest_pick(bound, n_pages, own, k, sel);
        int L = 0;
        for (int i = 0; i < n; i++) {
            plists[sel_base + (size_t)item * k + i] = pl[sel[i]];
            L += w.L - sel[i] * CU_KV_P < CU_KV_P ? w.L - sel[i] * CU_KV_P : CU_KV_P;
        }
        w.L = L;
        w.plist = sel_base + item * k;
    }
    free(bound);
    free(sel);
    return 0;
}

/* k_quest_bounds on the host: each work item's stale pages from its
 * ref {first, count} (cuda_kv_meta.h cu_quest_refresh_items), rows by
 * cu_quest_rows of the entry's L, min / max with the kernel's compares.
 * Run before the selection rewrites the entries. */
extern "C" int lethe_cu_host_quest_refresh(const lethe_cu_kv_view *kv, const lethe_cu_attn_work *work,
                                           const int32_t *plists, const int32_t *ref, int n_items) {
    const int D = kv->D;
    if (!kv->kmin || !kv->kmax) return -1;
    for (int item = 0; item < n_items; item++) {
        const int32_t first = ref[2 * item], count = ref[2 * item + 1];
        if (first < 0) continue;
        const lethe_cu_attn_work &w = work[item];
        for (int32_t pg = first; pg < count; pg++) {
            const int32_t page = plists[w.plist + pg], rows = cu_quest_rows(w.L, pg);
            for (int d = 0; d < D; d++) {
                float mn = INFINITY, mx = -INFINITY;
                for (int r = 0; r < rows; r++) {
                    const float x =
                        kv_elem(kv->pool + (size_t)page * kv->page_bytes + (size_t)r * kv->slot_bytes, d, kv->f16);
                    mn = x < mn ? x : mn;
                    mx = x > mx ? x : mx;
                }
                kv->kmin[(size_t)page * D + d] = mn;
                kv->kmax[(size_t)page * D + d] = mx;
            }
        }
    }
    return 0;
}

/* ------------------------------------------------ the decode GEMV's new paths */

/* x [K] -> nb q8 blocks [nb][CU_Q8_BLOCK_BYTES], as k_quant_q8 does. */
extern "C" int lethe_cu_host_q8_quant(const float *x, int64_t K, uint8_t *out) {
    if (K % 32 != 0) return -1;
    for (int64_t b = 0; b < K / 32; b++) cu_q8_quant_block(x + 32 * b, out + b * CU_Q8_BLOCK_BYTES);
    return 0;
}

/* k_gemv_q8 (LPR lanes per row), one warp after the other: each chunk's
 * copies (all 32 lanes, into the ring of stages, S - 1 chunks ahead), then
 * each lane's blocks of the chunk, then the combine's shuffles, lane by lane. */
#define HOST_Q8_STAGES 3
template <int WT, int T, int LPR>
static void gemv_q8(const uint8_t *w, size_t rb, const float *x, float *y, int64_t N, int64_t K) {
    constexpr int C = q8_chunk_blocks<WT>(), RS = q8_row_stride<WT>(), BB = cu_block_bytes(WT);
    constexpr int ROWS = 32 / LPR, PPL = 4 / LPR;
    const int64_t nb = K / 32, nc = (nb + C - 1) / C;
    const size_t xs = (size_t)nb * CU_Q8_BLOCK_BYTES;
    uint8_t *xq = new uint8_t[(size_t)T * xs];
    for (int t = 0; t < T; t++) lethe_cu_host_q8_quant(x + (size_t)t * K, K, xq + (size_t)t * xs);
    static uint8_t stage[HOST_Q8_STAGES][ROWS * RS];
    for (int64_t row0 = 0; row0 < N; row0 += ROWS) {
        memset(stage, 0xA5, sizeof stage);   /* poison: a byte never copied shows */
        float acc[32][T][2 * PPL], msum[32][T];
        for (int l = 0; l < 32; l++)
            for (int t = 0; t < T; t++) {
                for (int i = 0; i < 2 * PPL; i++) acc[l][t][i] = 0.0f;
                msum[l][t] = 0.0f;
            }
        for (int s = 0; s < HOST_Q8_STAGES - 1; s++)
            if (s < nc)
                for (int l = 0; l < 32; l++) q8_stage<WT, ROWS>(stage[s], w, rb, N, row0, (int64_t)s * C, l);
        for (int64_t c = 0; c < nc; c++) {
            const int64_t cn = c + HOST_Q8_STAGES - 1;
            if (cn < nc)
                for (int l = 0; l < 32; l++) q8_stage<WT, ROWS>(stage[cn % HOST_Q8_STAGES], w, rb, N, row0, cn * C, l);
            const int64_t c0 = c * C;
            const int n = (int)(c0 + C <= nb ? C : nb - c0);
            for (int l = 0; l < 32; l++) {
                const int r = l / LPR, h = l % LPR;
                const int64_t row = cu_min64(row0 + r, N - 1);
                const uint8_t *wb = stage[c % HOST_Q8_STAGES] + r * RS + q8_stage_delta<WT>(w, rb, row, c0);
                for (int j = 0; j < n; j++)
                    q8_lane_block<WT, T, PPL>(wb + j * BB, h * PPL, xq + (size_t)(c0 + j) * CU_Q8_BLOCK_BYTES, xs,
                                              acc[l], msum[l]);
            }
        }
        for (int r = 0; r < ROWS && row0 + r < N; r++)
            for (int t = 0; t < T; t++) {
                const int l0 = LPR * r;   /* lane h = 0 of the row stores */
                float v;
                if (LPR == 4) {
                    float tp[4], u[4];
                    for (int p = 0; p < 4; p++) tp[p] = cu_fadd(acc[l0 + p][t][0], acc[l0 + p][t][1]);
                    for (int p = 0; p < 4; p++) u[p] = cu_fadd(tp[p], tp[p ^ 2]);
                    v = cu_fadd(u[0], u[1]);
                } else {
                    float ta[2], tb[2];
                    for (int h = 0; h < 2; h++) {
                        ta[h] = cu_fadd(acc[l0 + h][t][0], acc[l0 + h][t][1]);
                        tb[h] = cu_fadd(acc[l0 + h][t][PPL > 1 ? 2 : 0], acc[l0 + h][t][PPL > 1 ? 3 : 1]);
                    }
                    v = cu_fadd(cu_fadd(ta[0], ta[1]), cu_fadd(tb[0], tb[1]));
                }
                if (q8_has_m<WT>()) v = cu_fadd(v, msum[l0][t]);
                y[(size_t)t * N + row0 + r] = v;
            }
    }
    delete[] xq;
}

/* k_gemv_f, warp after warp: each lane's partial sums, then the butterfly. */
template <int WT, int T>
static void gemv_f(const uint8_t *w, size_t rb, const float *x, float *y, int64_t N, int64_t K) {
    for (int64_t row0 = 0; row0 < N; row0 += F_ROWS) {
        const uint8_t *wr[F_ROWS];
        for (int i = 0; i < F_ROWS; i++) wr[i] = w + (size_t)cu_min64(row0 + i, N - 1) * rb;
        static float acc[32][F_ROWS][T];
        for (int l = 0; l < 32; l++) f_lane<WT, T>(wr, x, K, l, acc[l]);
        for (int i = 0; i < F_ROWS && row0 + i < N; i++)
            for (int t = 0; t < T; t++) {
                float v[32], nv[32];
                for (int l = 0; l < 32; l++) v[l] = acc[l][i][t];
                for (int o = 16; o > 0; o >>= 1) {
                    for (int l = 0; l < 32; l++) nv[l] = v[l] + v[l ^ o];
                    memcpy(v, nv, sizeof v);
                }
                y[(size_t)t * N + row0 + i] = v[0];
            }
    }
}

template <int WT, int T>
static void gemv_new(const uint8_t *w, size_t rb, const float *x, float *y, int64_t N, int64_t K, bool wide) {
    if (WT == CU_F32 || WT == CU_F16 || WT == CU_BF16)
        gemv_f<WT, T>(w, rb, x, y, N, K);
    else if (wide)
        gemv_q8<WT, T, 2>(w, rb, x, y, N, K);
    else
        gemv_q8<WT, T, 4>(w, rb, x, y, N, K);
}

template <int WT>
static int gemv_new_t(const uint8_t *w, size_t rb, const float *x, float *y, int64_t N, int64_t K, int64_t T,
                      bool wide) {
    switch (T) {
#define C(TT) case TT: gemv_new<WT, TT>(w, rb, x, y, N, K, wide); return 0;
    C(1) C(2) C(3) C(4) C(5) C(6) C(7) C(8)
#undef C
    default: return -1;
    }
}

/* y [T, N] as the new decode GEMV computes it (k_gemv_q8 / k_gemv_f);
 * variant LETHE_CU_GEMV_NEW or _WIDE (cuda_kernels.h). The float path needs
 * 16-byte aligned rows (the launcher takes the old kernel otherwise): -2 if
 * they are not. */
extern "C" int lethe_cu_host_gemv_new(int wtype, const void *w, size_t row_bytes, const float *x, float *y,
                                      int64_t N, int64_t K, int64_t T, int variant) {
    const bool wide = variant == LETHE_CU_GEMV_WIDE;
    if (K % 32 != 0 || N <= 0) return -1;
    const uint8_t *wb = (const uint8_t *)w;
    const bool flt = wtype == CU_F32 || wtype == CU_F16 || wtype == CU_BF16;
    if (flt && (((uintptr_t)w | row_bytes) & 15u)) return -2;
#define L(WT) return gemv_new_t<WT>(wb, row_bytes, x, y, N, K, T, wide)
    switch (wtype) {
    case CU_F32: L(CU_F32);
    case CU_F16: L(CU_F16);
    case CU_BF16: L(CU_BF16);
    case CU_Q4_0: L(CU_Q4_0);
    case CU_Q4_1: L(CU_Q4_1);
    case CU_Q5_0: L(CU_Q5_0);
    case CU_Q5_1: L(CU_Q5_1);
    case CU_Q8_0: L(CU_Q8_0);
    default: return -1;
    }
#undef L
}
