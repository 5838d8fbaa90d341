/* cuda_attn.cuh — the arithmetic of the attention kernels (k_attention.cu)
 * that does not depend on threads: slot addressing in the paged pool, the
 * visibility rule, the online-softmax step and the combine of split-K
 * partials. In a header so that k_hostcheck.cu runs the very same code on
 * the host against the CPU reference (tests/test_cuda_host.c).
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

#endif
