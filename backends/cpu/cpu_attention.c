/* cpu_attention.c — KV_STORE and ATTENTION over the per-head KV cache.
 *
 * Legend: T tokens, Hq query heads, Hkv KV heads, G = Hq / Hkv queries per
 * KV head, D head dim, L live slots of a head stream (its own length), P
 * slots per page (LETHE_KV_PAGE).
 *
 * Threads take (token, KV head) pairs round-robin. For one pair the G query heads of
 * the group walk the stream's pages once: each key row is read once for G
 * dot products, each value row once for G weighted sums. Softmax is two-pass
 * in f32 (scores kept in the thread's scratch, [G][L]).
 */
#include "cpu_kernels.h"
#include "kv_cache.h"

#include <math.h>
#include <string.h>

/* KV_STORE: k, v [T, Hkv, D] f32 -> the slot reserved for token t in stream
 * (seq_id[t], layer, h), in the cache dtype. With a DMS decision, a positive
 * logit flags the sequence's previous token: it expires at pos[t] + w. Every
 * previous token is flagged by exactly one (t, h), so threads never race. */
void lethe_cpu_kv_store(const lethe_cpu_exec *ex, lethe_node *n) {
    lethe_kv_cache *kv = n->kv;
    const lethe_tensor *k = &n->src[0]->t, *v = &n->src[1]->t;
    const float *dec = n->src[2] ? (const float *)n->src[2]->t.data : NULL;   /* [T, Hkv] */
    const int layer = n->iparams[0];
    const int64_t D = kv->head_dim, Hkv = kv->n_head_kv, T = n->ub->n_tokens;
    const int32_t w = kv->policy.window;
    int64_t b, e;
    lethe_cpu_split(T * Hkv, ex->ith, ex->nth, 1, &b, &e);
    for (int64_t r = b; r < e; r++) {
        const int64_t t = r / Hkv, h = r % Hkv;
        const int32_t seq = n->ub->seq_id[t];
        const size_t si = (size_t)layer * Hkv + h;
        const int32_t slot = kv->res_slot[si * kv->max_batch + t];
        if (seq < 0 || seq >= kv->n_seq || slot < 0) {
            __atomic_store_n(ex->error, (int)LETHE_ERR_INVALID_ARG, __ATOMIC_RELAXED);
            continue;
        }
        const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, (int)h);
        if (slot >= s->len) { /* reserve did not give this slot: a bug upstream */
            __atomic_store_n(ex->error, (int)LETHE_ERR_INTERNAL, __ATOMIC_RELAXED);
            continue;
        }
        const float *kr = (const float *)k->data + (size_t)r * (size_t)D; /* [T, Hkv, D], r = t Hkv + h */
        const float *vr = (const float *)v->data + (size_t)r * (size_t)D;
        void *kd = lethe_kv_k(kv, s, slot), *vd = lethe_kv_v(kv, s, slot);
        if (kv->type == LETHE_F16) {
            lethe_cpu_f32_to_f16_row(kr, kd, D);
            lethe_cpu_f32_to_f16_row(vr, vd, D);
        } else {
            memcpy(kd, kr, (size_t)D * sizeof(float));
            memcpy(vd, vr, (size_t)D * sizeof(float));
        }
        if (dec && dec[r] > 0.0f) {
            const int32_t pt = kv->prev_t[t];
            const int32_t prev = pt >= 0 ? kv->res_slot[si * kv->max_batch + pt] : s->prev;
            const int32_t p = n->ub->pos[t];
            if (prev >= 0) *lethe_kv_expire(kv, s, prev) = p > LETHE_KV_NEVER - w ? LETHE_KV_NEVER : p + w;
        }
    }
}

static int32_t max_stream_len(const lethe_node *n) {
    const lethe_kv_cache *kv = n->kv;
    int32_t m = 0;
    for (int32_t t = 0; t < n->ub->n_tokens; t++) {
        const int32_t seq = n->ub->seq_id[t];
        if (seq < 0 || seq >= kv->n_seq) continue;
        for (int h = 0; h < kv->n_head_kv; h++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, n->iparams[0], h);
            m = LETHE_MAX(m, s->len);
        }
    }
    return m;
}

void lethe_cpu_attention_ws(const lethe_node *n, int nth, size_t *per_thread, size_t *shared) {
    const lethe_kv_cache *kv = n->kv;
    const int64_t D = kv->head_dim, T = LETHE_MAX(n->ub->n_tokens, 1);
    const int64_t G = lethe_tensor_nelements(&n->src[0]->t) / (D * T) / kv->n_head_kv;
    /* scores [G][L] + accumulators [G][D] + one converted V row [D]
     * + QUEST: page bounds [pages] and the selected page list [pages] */
    const size_t pages = ((size_t)max_stream_len(n) + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE;
    *per_thread = ((size_t)G * (size_t)max_stream_len(n) + (size_t)G * D + (size_t)D + pages) * sizeof(float) +
                  pages * sizeof(int32_t);
    *shared = 0;
}

static void axpy(int64_t n, float a, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

#if defined(__AVX512F__)
#  include <immintrin.h>
#endif

/* One key row (converted to f32) against the G queries of its group:
 * sc[g] = scale * (k . q_g). The same float operations for a (query, key)
 * pair whatever the batch holds, so attention stays batch invariant. */
static inline void key_scores(int64_t D, const float *k, const float *const *qg, int64_t G, float scale,
                              float *sc) {
#if defined(__AVX512F__)
    if (D % 16 == 0) {
        for (int64_t g = 0; g < G; g++) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t d = 0; d < D; d += 16)
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(k + d), _mm512_loadu_ps(qg[g] + d), acc);
            sc[g] = scale * _mm512_reduce_add_ps(acc);
        }
        return;
    }
#else
    if (D % 16 == 0) {   /* the AVX-512 arithmetic lane by lane: every build (and Vulkan) gives its bits */
        for (int64_t g = 0; g < G; g++) {
            float a[16] = {0};
            for (int64_t d = 0; d < D; d += 16)
                for (int l = 0; l < 16; l++) a[l] = fmaf(k[d + l], qg[g][d + l], a[l]);
            float t[8], u[4];   /* _mm512_reduce_add_ps's order (GCC) */
            for (int l = 0; l < 8; l++) t[l] = a[l] + a[l + 8];
            for (int l = 0; l < 4; l++) u[l] = t[l] + t[l + 4];
            sc[g] = scale * ((u[0] + u[2]) + (u[1] + u[3]));
        }
        return;
    }
#endif
    for (int64_t g = 0; g < G; g++) sc[g] = scale * lethe_cpu_dot_f32(D, k, qg[g]);
}

#if defined(__AVX512F__) && defined(__AVX512VL__) && defined(__F16C__)
#  define LETHE_ATTN_FAST 1
#  define LETHE_INLINE static inline __attribute__((always_inline))

/* e^x for x <= 0, lane by lane (so a weight never depends on its lane;
 * lethe_cpu_expf is its one-lane twin, used by the other paths):
 * x = n ln2 + r, |r| <= ln2/2, degree-6 Taylor (relative error ~1e-7),
 * scaled by 2^n. Lanes below -104 underflow to (near) zero. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline void load_row64(const lethe_f16 *p, __m512 v[4]) {
    for (int c = 0; c < 4; c++) v[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 16 * c)));
}

/* One (token, KV head) pair, f16 cache, D = 64, G queries (constant):
 * queries and accumulators live in registers; every (query, key) score and
 * weight is computed by the same operations whatever else the batch holds. */
LETHE_INLINE void attend_f16_d64(const int G, const lethe_kv_cache *kv, const lethe_kv_stream *s, int32_t L,
                                 int32_t pq, const float *const *qg, float scale, float *scores, int32_t Lmax,
                                 float *out) {
    __m512 q[4][4], acc[4][4];
    float mx[4], sum[4];
    for (int g = 0; g < G; g++) {
        for (int c = 0; c < 4; c++) {
            q[g][c] = _mm512_loadu_ps(qg[g] + 16 * c);
            acc[g][c] = _mm512_setzero_ps();
        }
        mx[g] = -INFINITY;
        sum[g] = 0.0f;
    }
    /* pass 1: scores */
    for (int32_t i0 = 0; i0 < L; i0 += LETHE_KV_PAGE) {
        const int32_t np = LETHE_MIN(LETHE_KV_PAGE, L - i0);
        const uint8_t *kp = lethe_kv_k(kv, s, i0);
        const int32_t *pp = lethe_kv_pos(kv, s, i0), *ep = lethe_kv_expire(kv, s, i0);
        for (int32_t j = 0; j < np; j++) {
            if (pp[j] > pq || pq >= ep[j]) { /* a later token of this micro-batch, evicted, or a hole */
                for (int g = 0; g < G; g++) scores[g * Lmax + i0 + j] = -INFINITY;
                continue;
            }
            __m512 k[4];
            load_row64((const lethe_f16 *)(kp + (size_t)j * kv->slot_bytes), k);
            for (int g = 0; g < G; g++) {
                __m512 a = _mm512_mul_ps(k[0], q[g][0]);
                a = _mm512_fmadd_ps(k[1], q[g][1], a);
                a = _mm512_fmadd_ps(k[2], q[g][2], a);
                a = _mm512_fmadd_ps(k[3], q[g][3], a);
                const float sc = scale * _mm512_reduce_add_ps(a);
                scores[g * Lmax + i0 + j] = sc;
                mx[g] = sc > mx[g] ? sc : mx[g];
            }
        }
    }
    /* softmax numerators in place, 16 keys at a time (lane-wise exp) */
    for (int g = 0; g < G; g++) {
        const __m512 m = _mm512_set1_ps(mx[g]);
        float *row = scores + (size_t)g * Lmax;
        for (int32_t j = 0; j < L; j += 16) {
            const __mmask16 k = L - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (L - j)) - 1);
            const __m512 v = _mm512_maskz_loadu_ps(k, row + j);
            _mm512_mask_storeu_ps(row + j, k, exp512(_mm512_sub_ps(v, m)));
        }
    }
    /* pass 2: weighted V sum over the visible keys, in slot order */
    for (int32_t i0 = 0; i0 < L; i0 += LETHE_KV_PAGE) {
        const int32_t np = LETHE_MIN(LETHE_KV_PAGE, L - i0);
        const uint8_t *vp = lethe_kv_v(kv, s, i0);
        const int32_t *pp = lethe_kv_pos(kv, s, i0), *ep = lethe_kv_expire(kv, s, i0);
        for (int32_t j = 0; j < np; j++) {
            if (pp[j] > pq || pq >= ep[j]) continue;
            __m512 v[4];
            load_row64((const lethe_f16 *)(vp + (size_t)j * kv->slot_bytes), v);
            for (int g = 0; g < G; g++) {
                const float w = scores[g * Lmax + i0 + j];
                sum[g] += w;
                const __m512 wv = _mm512_set1_ps(w);
                for (int c = 0; c < 4; c++) acc[g][c] = _mm512_fmadd_ps(wv, v[c], acc[g][c]);
            }
        }
    }
    for (int g = 0; g < G; g++) {
        const __m512 inv = _mm512_set1_ps(sum[g] > 0.0f ? 1.0f / sum[g] : 0.0f); /* no visible key: zeros */
        for (int c = 0; c < 4; c++) _mm512_storeu_ps(out + g * 64 + 16 * c, _mm512_mul_ps(acc[g][c], inv));
    }
}
#endif

/* QUEST (kv->kmin/kmax): refresh the key bounds of the pages this
 * micro-batch wrote in stream s (slots from `first` on; QUEST never evicts,
 * so new tokens only append). */
static void quest_refresh(const lethe_kv_cache *kv, const lethe_kv_stream *s, int32_t first, float *vbuf) {
    const int64_t D = kv->head_dim;
    for (int32_t p = first / LETHE_KV_PAGE; p < s->n_pages; p++) {
        float *mn = kv->kmin + (size_t)s->pages[p] * D, *mx = kv->kmax + (size_t)s->pages[p] * D;
        for (int64_t d = 0; d < D; d++) { mn[d] = INFINITY; mx[d] = -INFINITY; }
        for (int32_t j = p * LETHE_KV_PAGE; j < LETHE_MIN(s->len, (p + 1) * LETHE_KV_PAGE); j++) {
            const void *kr = lethe_kv_k(kv, s, j);
            const float *kf = kr;
            if (kv->type == LETHE_F16) {
                lethe_cpu_f16_to_f32_row(kr, vbuf, D);
                kf = vbuf;
            }
            for (int64_t d = 0; d < D; d++) {
                mn[d] = kf[d] < mn[d] ? kf[d] : mn[d];
                mx[d] = kf[d] > mx[d] ? kf[d] : mx[d];
            }
        }
    }
}

/* QUEST page selection for one query group: the page of the query's own
 * token plus the pages with the highest bound on q.k (max over the group of
 * sum_d max(q_d kmin_d, q_d kmax_d)) up to budget / P pages, in ascending
 * order. Returns the number of pages in `sel`. */
static int32_t quest_select(const lethe_kv_cache *kv, const lethe_kv_stream *s, int32_t L, int32_t pq,
                            const float *const *qg, int64_t G, float *bound, int32_t *sel) {
    const int64_t D = kv->head_dim;
    const int32_t n_pages = (L + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE;
    int32_t k = LETHE_MAX(kv->policy.budget / LETHE_KV_PAGE, 1);
    if (n_pages <= k) {
        for (int32_t p = 0; p < n_pages; p++) sel[p] = p;
        return n_pages;
    }
    int32_t own = -1;   /* the page holding the query's token: always read */
    for (int32_t p = 0; p < n_pages; p++) {
        const float *mn = kv->kmin + (size_t)s->pages[p] * D, *mx = kv->kmax + (size_t)s->pages[p] * D;
        float best = -INFINITY;
        for (int64_t g = 0; g < G; g++) {
            float b = 0.0f;
            for (int64_t d = 0; d < D; d++) {
                const float a = qg[g][d] * mn[d], c = qg[g][d] * mx[d];
                b += a > c ? a : c;
            }
            best = b > best ? b : best;
        }
        bound[p] = best;
        const int32_t *pp = lethe_kv_pos(kv, s, p * LETHE_KV_PAGE);
        for (int32_t j = 0; j < LETHE_MIN(LETHE_KV_PAGE, L - p * LETHE_KV_PAGE); j++)
            if (pp[j] == pq) own = p;
    }
    int32_t n = 0;
    if (own >= 0) {
        sel[n++] = own;
        bound[own] = -INFINITY;
        k--;
    }
    for (; k > 0; k--) {   /* k is small (budget / 32): selection by repeated max */
        int32_t b = -1;
        for (int32_t p = 0; p < n_pages; p++)
            if (bound[p] != -INFINITY && (b < 0 || bound[p] > bound[b])) b = p;
        if (b < 0) break;
        sel[n++] = b;
        bound[b] = -INFINITY;
    }
    for (int32_t i = 1; i < n; i++)   /* ascending: slot order as without QUEST */
        for (int32_t j = i; j > 0 && sel[j - 1] > sel[j]; j--) {
            int32_t tmp = sel[j];
            sel[j] = sel[j - 1];
            sel[j - 1] = tmp;
        }
    return n;
}

bool lethe_cpu_attention_fused(const lethe_kv_cache *kv, int64_t G) {
#if LETHE_ATTN_FAST
    return kv->type == LETHE_F16 && kv->head_dim == 64 && G <= 4 && !kv->kmin && !kv->score;
#else
    (void)kv;
    (void)G;
    return false;
#endif
}

void lethe_cpu_attention(const lethe_cpu_exec *ex, lethe_node *n) {
    lethe_kv_cache *kv = n->kv;
    const lethe_tensor *q = &n->src[0]->t;
    const int layer = n->iparams[0];
    const float scale = n->fparams[0];
    const int64_t D = kv->head_dim, Hkv = kv->n_head_kv, T = n->ub->n_tokens;
    const int64_t Hq = lethe_tensor_nelements(q) / (D * T), G = Hq / Hkv;
    const bool f16 = kv->type == LETHE_F16;
    const int32_t Lmax = max_stream_len(n);
    const int32_t max_pages = (Lmax + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE;
    float *scores = (float *)ex->ws;          /* [G][Lmax] */
    float *acc = scores + (size_t)G * Lmax;   /* [G][D] */
    float *vbuf = acc + (size_t)G * D;        /* [D] */
    float *bound = vbuf + D;                  /* [max_pages] QUEST */
    int32_t *sel = (int32_t *)(bound + max_pages);   /* [max_pages] pages to read */
    const bool quest = kv->kmin != NULL;
    const int score_mode = !kv->score ? 0 : kv->policy.rule == LETHE_KV_RULE_H2O ? 2 : 1;   /* 1 set, 2 add */
    /* Policies that keep per-stream state (scores, bounds) give each stream to
     * one thread, which walks its tokens in order: no races, and the result
     * does not depend on the thread count. */
    const bool by_stream = quest || score_mode;
    uint64_t reads = 0;

    /* (token, KV head) pairs dealt round-robin: under a causal mask later
     * tokens see more keys, so contiguous ranges would load one thread 3:1 */
    for (int64_t r = by_stream ? 0 : ex->ith; r < T * Hkv; r += by_stream ? 1 : ex->nth) {
        const int64_t t = r / Hkv, hk = r % Hkv;
        const int32_t seq = n->ub->seq_id[t], pq = n->ub->pos[t];
        if (by_stream && (seq < 0 || (int)(((int64_t)seq * Hkv + hk) % ex->nth) != ex->ith)) continue;
        float *out = (float *)n->t.data + (size_t)(t * Hq + hk * G) * (size_t)D; /* [T, Hq*D] */
        if (seq < 0 || seq >= kv->n_seq) {
            __atomic_store_n(ex->error, (int)LETHE_ERR_INVALID_ARG, __ATOMIC_RELAXED);
            memset(out, 0, (size_t)(G * D) * sizeof(float));
            continue;
        }
        const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, (int)hk);
        const int32_t L = s->len;
        const float *qg[64];
        float mx[64];
        LETHE_ASSERT(G <= 64);
        for (int64_t g = 0; g < G; g++) {
            qg[g] = (const float *)q->data + (size_t)(t * Hq + hk * G + g) * (size_t)D;
            mx[g] = -INFINITY;
        }

#if LETHE_ATTN_FAST
        if (f16 && D == 64 && G <= 4 && !by_stream) {
            reads += (uint64_t)L;
            switch (G) {
            case 1: attend_f16_d64(1, kv, s, L, pq, qg, scale, scores, Lmax, out); break;
            case 2: attend_f16_d64(2, kv, s, L, pq, qg, scale, scores, Lmax, out); break;
            case 3: attend_f16_d64(3, kv, s, L, pq, qg, scale, scores, Lmax, out); break;
            default: attend_f16_d64(4, kv, s, L, pq, qg, scale, scores, Lmax, out); break;
            }
            continue;
        }
#endif
        int32_t n_sel = (L + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE;
        if (quest) {
            const int32_t pt = kv->prev_t[t];
            if (pt < 0) {   /* the stream's first token in this micro-batch: its pages changed */
                const int32_t first = kv->res_slot[((size_t)layer * Hkv + hk) * kv->max_batch + t];
                quest_refresh(kv, s, first, vbuf);
            }
            n_sel = quest_select(kv, s, L, pq, qg, G, bound, sel);
        } else {
            for (int32_t p = 0; p < n_sel; p++) sel[p] = p;
        }
        /* pass 1: scores, page by page (slots of a page are contiguous) */
        for (int32_t pi = 0; pi < n_sel; pi++) {
            const int32_t i0 = sel[pi] * LETHE_KV_PAGE;
            const int32_t np = LETHE_MIN(LETHE_KV_PAGE, L - i0);
            reads += (uint64_t)np;
            const uint8_t *kp = lethe_kv_k(kv, s, i0);
            const int32_t *pp = lethe_kv_pos(kv, s, i0), *ep = lethe_kv_expire(kv, s, i0);
            for (int32_t j = 0; j < np; j++) {
                if (pp[j] > pq || pq >= ep[j]) { /* a later token of this micro-batch, evicted, or a hole */
                    for (int64_t g = 0; g < G; g++) scores[g * Lmax + i0 + j] = -INFINITY;
                    continue;
                }
                const void *kr = kp + (size_t)j * kv->slot_bytes;
                const float *kf = kr;
                if (f16) {
                    lethe_cpu_f16_to_f32_row(kr, vbuf, D);
                    kf = vbuf;
                }
                float sc[64];
                key_scores(D, kf, qg, G, scale, sc);
                for (int64_t g = 0; g < G; g++) {
                    scores[g * Lmax + i0 + j] = sc[g];
                    mx[g] = sc[g] > mx[g] ? sc[g] : mx[g];
                }
            }
        }

        /* pass 2: softmax weights and the weighted V sum */
        float sum[64];
        for (int64_t g = 0; g < G; g++) sum[g] = 0.0f;
        memset(acc, 0, (size_t)(G * D) * sizeof(float));
        for (int32_t pi = 0; pi < n_sel; pi++) {
            const int32_t i0 = sel[pi] * LETHE_KV_PAGE;
            const int32_t np = LETHE_MIN(LETHE_KV_PAGE, L - i0);
            const uint8_t *vp = lethe_kv_v(kv, s, i0);
            const int32_t *pp = lethe_kv_pos(kv, s, i0), *ep = lethe_kv_expire(kv, s, i0);
            for (int32_t j = 0; j < np; j++) {
                if (pp[j] > pq || pq >= ep[j]) continue;
                const void *vr = vp + (size_t)j * kv->slot_bytes;
                const float *vf = vr;
                if (f16) {
                    lethe_cpu_f16_to_f32_row(vr, vbuf, D);
                    vf = vbuf;
                }
                for (int64_t g = 0; g < G; g++) {
                    const float sc = scores[g * Lmax + i0 + j];
                    if (sc == -INFINITY) continue;
                    const float w = lethe_cpu_expf(sc - mx[g]);
                    sum[g] += w;
                    axpy(D, w, vf, acc + g * D);
                }
            }
        }
        for (int64_t g = 0; g < G; g++) {
            const float inv = sum[g] > 0.0f ? 1.0f / sum[g] : 0.0f; /* no visible key: zeros */
            for (int64_t d = 0; d < D; d++) out[g * D + d] = acc[g * D + d] * inv;
        }
        if (score_mode) {
            /* TOVA / H2O: each slot's softmax weight, averaged over the group;
             * TOVA keeps the last query's, H2O sums every query's */
            for (int32_t i = 0; i < L; i++) {
                float wsum = 0.0f;
                for (int64_t g = 0; g < G; g++) {
                    const float sc = scores[g * Lmax + i];
                    if (sc != -INFINITY && sum[g] > 0.0f) wsum += lethe_cpu_expf(sc - mx[g]) / sum[g];
                }
                float *dst = &kv->score[lethe_kv_meta(s, i)];
                *dst = score_mode == 1 ? wsum / (float)G : *dst + wsum / (float)G;
            }
        }
    }
    if (reads) __atomic_fetch_add(&kv->reads, reads, __ATOMIC_RELAXED);
}
