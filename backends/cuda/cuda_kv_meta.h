/* cuda_kv_meta.h — the per-run tables the CUDA KV kernels read, built on the
 * host from the cache's bookkeeping (core/kv_cache.h), exactly as the CPU
 * kernels (backends/cpu/cpu_attention.c) find slots and previous tokens.
 * Header-only (static functions of plain C) so that the CUDA module
 * (cuda_ops.c) and tests/test_cuda_host_attn.c build the very same tables; the
 * module cannot call liblethe's hidden functions, so nothing here does.
 *
 * Legend: T tokens of the micro-batch, Hkv KV heads, G = Hq / Hkv, P slots per
 * page, L slots of a stream, BQ = rows / G tokens per prefill block (rows =
 * 32 for the tiled f32 kernel, 64 for the tensor-core kernel).
 * Errors: a LETHE_ERR_* status and a message in `err`.
 */
#ifndef LETHE_CUDA_KV_META_H
#define LETHE_CUDA_KV_META_H

#include "cuda_kernels.h"
#include "graph.h"
#include "kv_cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* KV_STORE rows [T * Hkv] (r = t * Hkv + h), as lethe_cpu_kv_store resolves them. */
static inline int cu_kv_store_rows(const lethe_node *n, lethe_cu_kv_row *rows, char *err, size_t errlen) {
    const lethe_kv_cache *kv = n->kv;
    const int layer = n->iparams[0];
    const int32_t T = n->ub->n_tokens, Hkv = kv->n_head_kv, w = kv->policy.window;
    for (int32_t t = 0; t < T; t++) {
        const int32_t seq = n->ub->seq_id[t];
        for (int32_t h = 0; h < Hkv; h++) {
            const size_t si = (size_t)layer * Hkv + h;
            const int32_t slot = kv->res_slot[si * kv->max_batch + t];
            if (seq < 0 || seq >= kv->n_seq || slot < 0) {
                snprintf(err, errlen, "KV_STORE token %d: sequence %d has no reserved slot", t, seq);
                return LETHE_ERR_INVALID_ARG;
            }
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, h);
            if (slot >= s->len) {   /* reserve did not give this slot: a bug upstream */
                snprintf(err, errlen, "KV_STORE slot %d beyond the stream's %d", slot, s->len);
                return LETHE_ERR_INTERNAL;
            }
            const int32_t pt = kv->prev_t[t];
            const int32_t prev = pt >= 0 ? kv->res_slot[si * kv->max_batch + pt] : s->prev;
            const int32_t p = n->ub->pos[t];
            lethe_cu_kv_row *r = &rows[(size_t)t * Hkv + h];
            r->k_off = (int64_t)((const uint8_t *)lethe_kv_k(kv, s, slot) - kv->pool);
            r->exp_idx = prev >= 0 ? (int32_t)lethe_kv_meta(s, prev) : -1;
            r->new_exp = p > LETHE_KV_NEVER - w ? LETHE_KV_NEVER : p + w;
        }
    }
    return LETHE_OK;
}

/* ATTENTION plan: blocks of tokens (one token each when no two consecutive
 * tokens share a sequence: the decode kernel; else runs of one sequence cut
 * at BQ tokens: the tiled kernel), their work entries and the page lists of
 * the streams they read, each stream's list once. */
typedef struct cu_attn_plan {
    int32_t n_blocks;
    bool decode;
    int32_t Lmax;                 /* longest stream read */
    uint64_t reads;               /* sum over (token, KV head) of L, as the CPU counts */
    lethe_cu_attn_work *work;     /* [n_blocks][Hkv] */
    int32_t *plists;              /* [n_plist] */
    size_t n_plist;
} cu_attn_plan;

static inline void cu_attn_plan_free(cu_attn_plan *p) {
    free(p->work);
    free(p->plists);
    memset(p, 0, sizeof *p);
}

/* Block count and kernel choice only (no allocation): also for sizing.
 * rows: query rows per prefill block (LETHE_CU_ATTN_ROWS for the tiled f32
 * kernel, LETHE_CU_ATTN_TC_ROWS for the tensor-core one): BQ = rows / G. */
static inline int32_t cu_attn_blocks_rows(const lethe_node *n, int G, bool force_decode, int rows, bool *decode) {
    const int32_t T = n->ub->n_tokens, BQ = rows / G;
    bool dec = true;
    for (int32_t t = 1; t < T; t++)
        if (n->ub->seq_id[t] == n->ub->seq_id[t - 1]) dec = false;
    dec = dec || force_decode;
    if (decode) *decode = dec;
    if (dec) return T;
    int32_t nb = 0, run = 0;
    for (int32_t t = 0; t < T; t++) {
        if (t == 0 || n->ub->seq_id[t] != n->ub->seq_id[t - 1] || run == BQ) {
            nb++;
            run = 0;
        }
        run++;
    }
    return nb;
}
static inline int32_t cu_attn_blocks(const lethe_node *n, int G, bool force_decode, bool *decode) {
    return cu_attn_blocks_rows(n, G, force_decode, LETHE_CU_ATTN_ROWS, decode);
}

static inline int32_t cu_attn_lmax(const lethe_node *n) {
    const lethe_kv_cache *kv = n->kv;
    int32_t m = 0;
    for (int32_t t = 0; t < n->ub->n_tokens; t++) {
        const int32_t seq = n->ub->seq_id[t];
        if (seq < 0 || seq >= kv->n_seq) continue;
        for (int h = 0; h < kv->n_head_kv; h++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, n->iparams[0], h);
            m = s->len > m ? s->len : m;
        }
    }
    return m;
}

/* force_decode: one token per block whatever the batch (tests run both paths).
 * rows: query rows per prefill block (cu_attn_blocks_rows).
 * stream_off: NULL, the lists are copied into p->plists (staged by the
 * plan); else a device-resident mirror holds every stream's list
 * (cuda_plist.h) and stream_off[si] is where stream si's starts (-1: no
 * extent, the stream has no page): the work entries point there and
 * p->plists stays empty. */
static inline int cu_attn_plan_build_at(const lethe_node *n, int G, bool force_decode, int rows,
                                        const int32_t *stream_off, cu_attn_plan *p, char *err, size_t errlen) {
    const lethe_kv_cache *kv = n->kv;
    const int layer = n->iparams[0];
    const int32_t T = n->ub->n_tokens, Hkv = kv->n_head_kv, BQ = rows / G;
    memset(p, 0, sizeof *p);
    for (int32_t t = 0; t < T; t++)
        if (n->ub->seq_id[t] < 0 || n->ub->seq_id[t] >= kv->n_seq) {
            snprintf(err, errlen, "ATTENTION token %d: sequence %d out of range", t, n->ub->seq_id[t]);
            return LETHE_ERR_INVALID_ARG;
        }
    p->n_blocks = cu_attn_blocks_rows(n, G, force_decode, rows, &p->decode);
    int32_t *start = malloc((size_t)kv->n_seq * (size_t)Hkv * sizeof(int32_t));   /* [n_seq][Hkv] list start */
    p->work = malloc((size_t)p->n_blocks * (size_t)Hkv * sizeof *p->work);
    size_t cap = 0;
    for (int q = 0; q < kv->n_seq && !stream_off; q++)
        for (int h = 0; h < Hkv; h++) cap += (size_t)lethe_kv_stream_at(kv, q, layer, h)->n_pages;
    p->plists = malloc((cap ? cap : 1) * sizeof(int32_t));
    if (!start || !p->work || !p->plists) {
        free(start);
        cu_attn_plan_free(p);
        snprintf(err, errlen, "ATTENTION tables: out of memory");
        return LETHE_ERR_OOM;
    }
    for (size_t i = 0; i < (size_t)kv->n_seq * (size_t)Hkv; i++) start[i] = -1;
    int32_t b = -1, run = 0;
    for (int32_t t = 0; t < T; t++) {
        const int32_t seq = n->ub->seq_id[t];
        const bool fresh = p->decode || t == 0 || seq != n->ub->seq_id[t - 1] || run == BQ;
        if (fresh) {
            b++;
            run = 0;
        }
        run++;
        for (int32_t h = 0; h < Hkv; h++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, h);
            int32_t *sp = &start[(size_t)seq * Hkv + h];
            if (*sp < 0 && stream_off) {
                const int32_t o = stream_off[((size_t)seq * kv->n_layer + layer) * Hkv + h];
                *sp = o >= 0 ? o : 0;
            } else if (*sp < 0) {
                *sp = (int32_t)p->n_plist;
                memcpy(p->plists + p->n_plist, s->pages, (size_t)s->n_pages * sizeof(int32_t));
                p->n_plist += (size_t)s->n_pages;
            }
            lethe_cu_attn_work *w = &p->work[(size_t)b * Hkv + h];
            if (fresh) *w = (lethe_cu_attn_work){s->len, *sp, t, 0};
            w->nt++;
            p->reads += (uint64_t)s->len;
            p->Lmax = s->len > p->Lmax ? s->len : p->Lmax;
        }
    }
    free(start);
    return LETHE_OK;
}

/* Does a prefill ATTENTION node (not decode) run the tensor-core kernel?
 * prefill_tc: the backend allows it (cu_plan_env). The kernel needs an f16
 * cache, D 64 or 128, and no raw scores out (TOVA / H2O write every key's
 * weight; QUEST always takes the decode plan). */
static inline bool cu_attn_use_tc(const lethe_node *n, int G, bool decode, int prefill_tc) {
    const lethe_kv_cache *kv = n->kv;
    return prefill_tc && !decode && !kv->score && !kv->kmin &&
           lethe_cu_attn_tc_ok(kv->head_dim, G, kv->type == LETHE_F16);
}

static inline int cu_attn_plan_build(const lethe_node *n, int G, bool force_decode, cu_attn_plan *p, char *err,
                                     size_t errlen) {
    return cu_attn_plan_build_at(n, G, force_decode, LETHE_CU_ATTN_ROWS, NULL, p, err, errlen);
}

/* ---- score policies */

/* Longest stream an ATTENTION node's weights need room for ([T][Hq][stride]). */
static inline int32_t cu_score_stride(const lethe_node *n) { return cu_attn_lmax(n) > 0 ? cu_attn_lmax(n) : 1; }

/* TOVA / H2O after the device is done: the weights w [T][Hq][stride] one
 * ATTENTION node wrote (-1: none), folded into kv->score exactly as the CPU
 * kernel does (cpu_attention.c): per (token, KV head) in token order, each
 * slot's weights summed over the G queries of the group in order, divided
 * by G, set (TOVA: the last query's) or added (H2O). */
static inline void cu_score_fold(const lethe_node *n, const float *w, int32_t stride) {
    lethe_kv_cache *kv = n->kv;
    const int layer = n->iparams[0];
    const int64_t D = kv->head_dim, Hkv = kv->n_head_kv, T = n->ub->n_tokens;
    const lethe_tensor *q = &n->src[0]->t;
    const int64_t Hq = q->ne[0] * q->ne[1] * q->ne[2] * q->ne[3] / (D * T), G = Hq / Hkv;
    const bool set = kv->policy.rule != LETHE_KV_RULE_H2O;
    for (int64_t t = 0; t < T; t++) {
        const int32_t seq = n->ub->seq_id[t];
        if (seq < 0 || seq >= kv->n_seq) continue;
        for (int64_t hk = 0; hk < Hkv; hk++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, (int)hk);
            for (int32_t i = 0; i < s->len && i < stride; i++) {
                float wsum = 0.0f;
                for (int64_t g = 0; g < G; g++) {
                    const float p = w[((size_t)t * Hq + (size_t)(hk * G + g)) * (size_t)stride + (size_t)i];
                    if (p >= 0.0f) wsum += p;
                }
                float *dst = &kv->score[lethe_kv_meta(s, i)];
                *dst = set ? wsum / (float)G : *dst + wsum / (float)G;
            }
        }
    }
}

/* QUEST: the pages whose key bounds this micro-batch's KV_STORE made stale,
 * as the CPU kernel refreshes them at a stream's first token of the batch
 * (cpu_attention.c quest_refresh: pages from the first reserved slot's on,
 * rows up to len): out [n][2] = {pool page id, rows}, n returned. With out
 * NULL: only the count. */
static inline int32_t cu_quest_refresh_entries(const lethe_node *n, int32_t *out) {
    const lethe_kv_cache *kv = n->kv;
    const int layer = n->iparams[0];
    const int32_t T = n->ub->n_tokens, Hkv = kv->n_head_kv;
    int32_t m = 0;
    for (int32_t t = 0; t < T; t++) {
        const int32_t seq = n->ub->seq_id[t];
        if (seq < 0 || seq >= kv->n_seq || kv->prev_t[t] >= 0) continue;
        for (int32_t h = 0; h < Hkv; h++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, h);
            const int32_t first = kv->res_slot[((size_t)layer * Hkv + h) * kv->max_batch + t];
            for (int32_t pg = first / LETHE_KV_PAGE; pg < s->n_pages; pg++, m++) {
                if (!out) continue;
                int32_t rows = s->len - pg * LETHE_KV_PAGE;
                rows = rows < 0 ? 0 : rows > LETHE_KV_PAGE ? LETHE_KV_PAGE : rows;
                out[2 * m] = s->pages[pg];
                out[2 * m + 1] = rows;
            }
        }
    }
    return m;
}

/* The same refresh per decode work item (token t, KV head h: item
 * t * Hkv + h, the decode plan's order), as the bounds kernel takes it:
 * out [T * Hkv][2] = {first stale page (an index into the item's stream
 * page list; -1: none), the stream's page count}; the item's entries are
 * its pages from `first` to the count, rows up to the work entry's L (the
 * stream's len), in the order cu_quest_refresh_entries lists them. A table
 * of fixed size: a replayed graph's grid does not depend on how many pages
 * are stale. Returns the most pages one item refreshes. */
static inline int32_t cu_quest_refresh_items(const lethe_node *n, int32_t *out) {
    const lethe_kv_cache *kv = n->kv;
    const int layer = n->iparams[0];
    const int32_t T = n->ub->n_tokens, Hkv = kv->n_head_kv;
    int32_t most = 0;
    for (int32_t t = 0; t < T; t++) {
        const int32_t seq = n->ub->seq_id[t];
        const bool none = seq < 0 || seq >= kv->n_seq || kv->prev_t[t] >= 0;
        for (int32_t h = 0; h < Hkv; h++) {
            int32_t *o = out + 2 * ((size_t)t * Hkv + h);
            o[0] = -1;
            o[1] = 0;
            if (none) continue;
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, layer, h);
            const int32_t first = kv->res_slot[((size_t)layer * Hkv + h) * kv->max_batch + t] / LETHE_KV_PAGE;
            o[0] = first;
            o[1] = s->n_pages;
            if (s->n_pages - first > most) most = s->n_pages - first;
        }
    }
    return most;
}

/* QUEST's pages per query group: max(budget / P, 1). */
static inline int32_t cu_quest_k(const lethe_kv_cache *kv) {
    return kv->policy.budget / LETHE_KV_PAGE > 1 ? kv->policy.budget / LETHE_KV_PAGE : 1;
}

#endif
