/* cpu_attention.c — KV_STORE and ATTENTION over the per-head KV cache.
 *
 * Legend: T tokens, Hq query heads, Hkv KV heads, G = Hq / Hkv queries per
 * KV head, D head dim, L live slots of a head stream (its own length), P
 * slots per page (LETHE_KV_PAGE).
 *
 * Threads split (token, KV head) pairs. For one pair the G query heads of
 * the group walk the stream's pages once: each key row is read once for G
 * dot products, each value row once for G weighted sums. Softmax is two-pass
 * in f32 (scores kept in the thread's scratch, [G][L]).
 */
#include "cpu_kernels.h"
#include "kv_cache.h"

#include <math.h>
#include <string.h>

/* KV_STORE: k, v [T, Hkv, D] f32 -> slot res_slot[t] of stream
 * (seq_id[t], layer, h), in the cache dtype, with the token's position. */
void lethe_cpu_kv_store(const lethe_cpu_exec *ex, lethe_node *n) {
    lethe_kv_cache *kv = n->kv;
    const lethe_tensor *k = &n->src[0]->t, *v = &n->src[1]->t;
    const int layer = n->iparams[0];
    const int64_t D = kv->head_dim, Hkv = kv->n_head_kv, T = n->ub->n_tokens;
    int64_t b, e;
    lethe_cpu_split(T * Hkv, ex->ith, ex->nth, 1, &b, &e);
    for (int64_t r = b; r < e; r++) {
        const int64_t t = r / Hkv, h = r % Hkv;
        const int32_t seq = n->ub->seq_id[t], slot = kv->res_slot[t];
        if (seq < 0 || seq >= kv->n_seq || slot < 0) {
            __atomic_store_n(ex->error, (int)LETHE_ERR_INVALID_ARG, __ATOMIC_RELAXED);
            continue;
        }
        const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, (int)h);
        if (slot / LETHE_KV_PAGE >= s->n_pages) { /* reserve did not give this slot: a bug upstream */
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
        *lethe_kv_pos(kv, s, slot) = n->ub->pos[t];
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
    /* scores [G][L] + accumulators [G][D] + one converted V row [D] */
    *per_thread = ((size_t)G * (size_t)max_stream_len(n) + (size_t)G * D + (size_t)D) * sizeof(float);
    *shared = 0;
}

static void axpy(int64_t n, float a, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
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
    float *scores = (float *)ex->ws;          /* [G][Lmax] */
    float *acc = scores + (size_t)G * Lmax;   /* [G][D] */
    float *vbuf = acc + (size_t)G * D;        /* [D] */
    uint64_t reads = 0;

    int64_t b, e;
    lethe_cpu_split(T * Hkv, ex->ith, ex->nth, 1, &b, &e);
    for (int64_t r = b; r < e; r++) {
        const int64_t t = r / Hkv, hk = r % Hkv;
        const int32_t seq = n->ub->seq_id[t], pq = n->ub->pos[t];
        float *out = (float *)n->t.data + (size_t)(t * Hq + hk * G) * (size_t)D; /* [T, Hq*D] */
        if (seq < 0 || seq >= kv->n_seq) {
            __atomic_store_n(ex->error, (int)LETHE_ERR_INVALID_ARG, __ATOMIC_RELAXED);
            memset(out, 0, (size_t)(G * D) * sizeof(float));
            continue;
        }
        const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, (int)hk);
        const int32_t L = s->len;
        reads += (uint64_t)L;
        const float *qg[64];
        float mx[64];
        LETHE_ASSERT(G <= 64);
        for (int64_t g = 0; g < G; g++) {
            qg[g] = (const float *)q->data + (size_t)(t * Hq + hk * G + g) * (size_t)D;
            mx[g] = -INFINITY;
        }

        /* pass 1: scores, page by page (slots of a page are contiguous) */
        for (int32_t i0 = 0; i0 < L; i0 += LETHE_KV_PAGE) {
            const int32_t np = LETHE_MIN(LETHE_KV_PAGE, L - i0);
            const uint8_t *kp = lethe_kv_k(kv, s, i0);
            const int32_t *pp = lethe_kv_pos(kv, s, i0);
            for (int32_t j = 0; j < np; j++) {
                const bool vis = pp[j] <= pq;
                const void *kr = kp + (size_t)j * kv->slot_bytes;
                for (int64_t g = 0; g < G; g++) {
                    float sc = -INFINITY;
                    if (vis)
                        sc = scale * (f16 ? lethe_cpu_dot_f16_f32(D, kr, qg[g]) : lethe_cpu_dot_f32(D, kr, qg[g]));
                    scores[g * Lmax + i0 + j] = sc;
                    mx[g] = fmaxf(mx[g], sc);
                }
            }
        }

        /* pass 2: softmax weights and the weighted V sum */
        float sum[64];
        for (int64_t g = 0; g < G; g++) sum[g] = 0.0f;
        memset(acc, 0, (size_t)(G * D) * sizeof(float));
        for (int32_t i0 = 0; i0 < L; i0 += LETHE_KV_PAGE) {
            const int32_t np = LETHE_MIN(LETHE_KV_PAGE, L - i0);
            const uint8_t *vp = lethe_kv_v(kv, s, i0);
            const int32_t *pp = lethe_kv_pos(kv, s, i0);
            for (int32_t j = 0; j < np; j++) {
                if (pp[j] > pq) continue; /* a later token of this micro-batch */
                const void *vr = vp + (size_t)j * kv->slot_bytes;
                const float *vf = vr;
                if (f16) {
                    lethe_cpu_f16_to_f32_row(vr, vbuf, D);
                    vf = vbuf;
                }
                for (int64_t g = 0; g < G; g++) {
                    const float sc = scores[g * Lmax + i0 + j];
                    if (sc == -INFINITY) continue;
                    const float w = expf(sc - mx[g]);
                    sum[g] += w;
                    axpy(D, w, vf, acc + g * D);
                }
            }
        }
        for (int64_t g = 0; g < G; g++) {
            const float inv = sum[g] > 0.0f ? 1.0f / sum[g] : 0.0f; /* no visible key: zeros */
            for (int64_t d = 0; d < D; d++) out[g * D + d] = acc[g * D + d] * inv;
        }
    }
    if (reads) __atomic_fetch_add(&kv->reads, reads, __ATOMIC_RELAXED);
}
