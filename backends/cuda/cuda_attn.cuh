/* cuda_attn.cuh — the arithmetic of the attention kernels (k_attention.cu)
 * that does not depend on threads: slot addressing in the paged pool, the
 * visibility rule, the online-softmax step and the combine of split-K
 * partials. In a header so that k_hostcheck.cu runs the very same code on
 * the host against the CPU reference (tests/test_cuda_host_attn.c).
 *
 * Legend: P = 32 slots per page, D head dim, n_split spans of a stream, a
 * partial = (m, l, acc[D]): running max of the scores, sum of exp(s - m),
 * sum of exp(s - m) v.
 */
#ifndef LETHE_CUDA_ATTN_CUH
#define LETHE_CUDA_ATTN_CUH

#include "cuda_quant.cuh"   /* CU_HD */

#include <math.h>
#include <stdint.h>

#define CU_KV_P 32

/* Slot j of a stream whose page list is `pages`: byte offset of its K row
 * in the pool (V: P rows after it) and its index into pos / expire. */
CU_HD int64_t cu_kv_k_off(const int32_t *pages, int32_t j, size_t page_bytes, size_t slot_bytes) {
    return (int64_t)pages[j / CU_KV_P] * (int64_t)page_bytes + (int64_t)(j % CU_KV_P) * (int64_t)slot_bytes;
}
CU_HD int64_t cu_kv_meta_idx(const int32_t *pages, int32_t j) {
    return (int64_t)pages[j / CU_KV_P] * CU_KV_P + j % CU_KV_P;
}

/* The one visibility rule (kv_cache.h): a hole has pos = INT32_MAX. */
CU_HD bool cu_kv_visible(int32_t pos, int32_t expire, int32_t p) { return pos <= p && p < expire; }

/* Online softmax: a partial with running max m_old meets scores whose max
 * (with m_old) is m_new. alpha rescales the old (l, acc); w is the weight
 * of one score. -INFINITY marks "nothing visible" on either side, so a
 * stream that has seen nothing stays (m = -inf, l = 0, acc = 0). */
CU_HD float cu_sm_alpha(float m_old, float m_new) { return m_old == -INFINITY ? 0.0f : expf(m_old - m_new); }
CU_HD float cu_sm_weight(float s, float m_new) { return s == -INFINITY ? 0.0f : expf(s - m_new); }

/* Combine n partials (m[i * stride], l[i * stride]): M = max m_i, the
 * denominator sum l_i e^(m_i - M), and the factor of partial i. A query
 * with no visible key anywhere has den = 0: its output is zeros. */
CU_HD float cu_comb_max(int n, const float *m, int stride) {
    float M = -INFINITY;
    for (int i = 0; i < n; i++) M = m[i * stride] > M ? m[i * stride] : M;
    return M;
}
CU_HD float cu_comb_factor(float m_i, float M) { return m_i == -INFINITY ? 0.0f : expf(m_i - M); }
CU_HD float cu_comb_den(int n, const float *m, const float *l, int stride, float M) {
    float den = 0.0f;
    for (int i = 0; i < n; i++) den += l[i * stride] * cu_comb_factor(m[i * stride], M);
    return den;
}

/* ---- score policies (DESIGN.md §3.2), as backends/cpu/cpu_attention.c */

/* TOVA / H2O: the softmax weight of one key from its raw score s (scale *
 * q.k; -inf, or NaN where the kernel never wrote, when the key is not
 * visible) and the query's final maximum M and denominator den (after the
 * split-K combine). -1 marks "no weight" for the host fold
 * (cuda_kv_meta.h cu_score_fold), as the CPU skips those keys. */
CU_HD float cu_score_weight(float s, float M, float den) {
    return !(s > -INFINITY) || !(den > 0.0f) ? -1.0f : cu_sm_weight(s, M) / den;
}

/* QUEST: pages of one stream whose bounds a selecting CTA holds in shared
 * memory (more: the node runs on the CPU). */
#define CU_QUEST_MAX_PAGES 4096

/* Rows in use of page pg of a stream of L slots (0 past the end). */
CU_HD int cu_quest_rows(int L, int pg) {
    const int r = L - pg * CU_KV_P;
    return r < 0 ? 0 : r > CU_KV_P ? CU_KV_P : r;
}

/* The bound of one page on q.k for the G queries q [G][D] of a group:
 * max over g of sum_d max(q_d kmin_d, q_d kmax_d), summed in d order. */
CU_HD float cu_quest_bound(const float *q, int G, int D, const float *kmin, const float *kmax) {
    float best = -INFINITY;
    for (int g = 0; g < G; g++) {
        float b = 0.0f;
        for (int d = 0; d < D; d++) {
            /* rounded products and sum, never an fma: the CPU's bound bit for bit */
            const float a = cu_fmul(q[g * D + d], kmin[d]), c = cu_fmul(q[g * D + d], kmax[d]);
            b = cu_fadd(b, a > c ? a : c);
        }
        best = b > best ? b : best;
    }
    return best;
}

/* Does candidate page b (bound vb) beat page a (va; a < 0: none yet)? The
 * higher bound, the lower page on a tie; -inf never (taken, or a page no
 * query can rank). A total order, so any scan or reduction order gives the
 * CPU's pick (its ascending scan with a strict >). */
CU_HD bool cu_quest_better(float vb, int b, float va, int a) {
    return b >= 0 && vb != -INFINITY && (a < 0 || vb > va || (vb == va && b < a));
}

/* The pages to read (indices into the stream's page list), ascending: all
 * n_pages when n_pages <= k (= max(budget / P, 1)); else page `own` (the
 * query token's, -1 if none) and the highest bounds until k pages, the
 * lower page on a tie. `bound` [n_pages] is consumed (taken pages become
 * -inf). Returns the count written to sel. */
CU_HD int cu_quest_pick(float *bound, int n_pages, int own, int k, int32_t *sel) {
    if (n_pages <= k) {
        for (int p = 0; p < n_pages; p++) sel[p] = p;
        return n_pages;
    }
    int n = 0;
    if (own >= 0) {
        sel[n++] = own;
        bound[own] = -INFINITY;
        k--;
    }
    for (; k > 0; k--) {
        int b = -1;
        for (int p = 0; p < n_pages; p++)
            if (cu_quest_better(bound[p], p, b >= 0 ? bound[b] : 0.0f, b)) b = p;
        if (b < 0) break;
        sel[n++] = b;
        bound[b] = -INFINITY;
    }
    for (int i = 1; i < n; i++)   /* ascending: slot order, as without QUEST */
        for (int j = i; j > 0 && sel[j - 1] > sel[j]; j--) {
            const int32_t x = sel[j];
            sel[j] = sel[j - 1];
            sel[j - 1] = x;
        }
    return n;
}

#endif
