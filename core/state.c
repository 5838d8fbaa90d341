/* state.c — save and restore sequences: the per-head KV rows, positions,
 * DMS flags (expiries), pending evictions and holes, plus the caller's token
 * ids and an optional caller blob, so a conversation resumes exactly.
 *
 * Format (little-endian, the host order of every target lethe builds for):
 *   "LETHEST1"  u32 version (1)  u64 model fingerprint  u32 kv dtype
 *   u32 rule, window, budget, sinks, recent       the context's KV policy
 *   u32 n_layer, n_head_kv, head_dim              for readable refusals
 *   u32 n_seq   u32 n_tokens  i32 tokens[]   u32 user_size  u8 user[]
 *   per sequence:  i32 seq_pos
 *     per (layer, head) stream: i32 len, n_holes, holes[4], last, pend_n, pend[pend_n]
 *       per slot [0, len): i32 pos, i32 expire (, f32 score for TOVA/H2O)
 *       K rows [len], V rows [len] (kv dtype)   (, QUEST: per page kmin[D], kmax[D])
 *   u64 FNV-1a of everything before it
 * Slots keep their indices, so pages, holes and the FIFO mean the same after
 * a load. Loading checks everything — format, checksum, model, KV settings,
 * room in the pool — before it touches the cache.
 */
#include "common.h"
#include "engine.h"
#include "kv_cache.h"
#include "model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATE_MAGIC "LETHEST1"
#define STATE_VERSION 1u

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001B3ull;
    return h;
}
#define FNV0 0xCBF29CE484222325ull

/* Everything that makes two models compute differently that is cheap to
 * hash: the hyper-parameters and the first bytes of the embedding and head. */
static uint64_t model_fingerprint(const lethe_model *m) {
    const lethe_hparams *hp = &m->hp;
    uint64_t h = fnv(FNV0, hp->arch_name, strlen(hp->arch_name));
    const int32_t v[] = {hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_ff, hp->n_vocab,
                         (int32_t)hp->dms.variant, hp->dms.window, hp->dms.per_layer, (int32_t)hp->rope.mode};
    h = fnv(h, v, sizeof v);
    const float f[] = {hp->norm_eps, hp->rope.freq_base, hp->dms.alpha_scale, hp->dms.alpha_offset};
    h = fnv(h, f, sizeof f);
    const lethe_tensor *ts[] = {&m->tok_embd, &m->output, &m->layers[0].wq};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        if (ts[i]->data) h = fnv(h, ts[i]->data, LETHE_MIN(lethe_tensor_nbytes(ts[i]), (size_t)256));
    return h;
}

/* ---- writer -------------------------------------------------------------- */

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} wbuf;

static void put(wbuf *w, const void *src, size_t n) {
    if (w->oom) return;
    if (w->n + n > w->cap) {
        size_t cap = LETHE_MAX(w->cap * 2, w->n + n + 4096);
        uint8_t *p = realloc(w->p, cap);
        if (!p) { w->oom = true; return; }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->n, src, n);
    w->n += n;
}
static void put_u32(wbuf *w, uint32_t v) { put(w, &v, 4); }
static void put_i32(wbuf *w, int32_t v) { put(w, &v, 4); }

static void put_header(wbuf *w, const lethe_kv_cache *kv, const lethe_model *m) {
    put(w, STATE_MAGIC, 8);
    put_u32(w, STATE_VERSION);
    const uint64_t fp = model_fingerprint(m);
    put(w, &fp, 8);
    put_u32(w, (uint32_t)kv->type);
    const lethe_kv_policy *p = &kv->policy;
    put_u32(w, (uint32_t)p->rule);
    put_u32(w, (uint32_t)p->window);
    put_u32(w, (uint32_t)p->budget);
    put_u32(w, (uint32_t)p->sinks);
    put_u32(w, (uint32_t)p->recent);
    put_u32(w, (uint32_t)kv->n_layer);
    put_u32(w, (uint32_t)kv->n_head_kv);
    put_u32(w, (uint32_t)kv->head_dim);
}

static void put_seq(wbuf *w, const lethe_kv_cache *kv, int seq) {
    put_i32(w, kv->seq_pos[seq]);
    for (int l = 0; l < kv->n_layer; l++)
        for (int h = 0; h < kv->n_head_kv; h++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, l, h);
            put_i32(w, s->len);
            put_i32(w, s->n_holes);
            put(w, s->holes, sizeof s->holes);
            put_i32(w, s->last);
            put_i32(w, s->pend_n);
            if (s->pend_n) put(w, s->pend + s->pend_head, (size_t)s->pend_n * 4);
            for (int32_t i = 0; i < s->len; i++) {
                put_i32(w, *lethe_kv_pos(kv, s, i));
                put_i32(w, *lethe_kv_expire(kv, s, i));
                if (kv->score) put(w, &kv->score[lethe_kv_meta(s, i)], 4);
            }
            for (int32_t i = 0; i < s->len; i++) put(w, lethe_kv_k(kv, s, i), kv->slot_bytes);
            for (int32_t i = 0; i < s->len; i++) put(w, lethe_kv_v(kv, s, i), kv->slot_bytes);
            if (kv->kmin)
                for (int32_t p = 0; p < (s->len + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE; p++) {
                    put(w, kv->kmin + (size_t)s->pages[p] * kv->head_dim, (size_t)kv->head_dim * 4);
                    put(w, kv->kmax + (size_t)s->pages[p] * kv->head_dim, (size_t)kv->head_dim * 4);
                }
        }
}

lethe_status lethe_state_save(const lethe_context *ctx, int32_t seq, const lethe_token *tokens, int32_t n_tokens,
                              const void *user, size_t user_size, void **out, size_t *out_size) {
    const lethe_kv_cache *kv = lethe_context_kv(ctx);
    if (!kv || !out || !out_size || n_tokens < 0 || (n_tokens && !tokens) || (user_size && !user) ||
        user_size > UINT32_MAX || seq < -1 || seq >= kv->n_seq)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "state_save: invalid arguments (sequence %d)", seq);
    *out = NULL;
    *out_size = 0;
    wbuf w = {0};
    put_header(&w, kv, lethe_context_model(ctx));
    int n_seq = 0;
    if (seq >= 0) n_seq = 1;
    else
        for (int q = 0; q < kv->n_seq; q++) n_seq = kv->seq_pos[q] > 0 ? q + 1 : n_seq;   /* through the last in use */
    put_u32(&w, (uint32_t)n_seq);
    put_u32(&w, (uint32_t)n_tokens);
    if (n_tokens) put(&w, tokens, (size_t)n_tokens * 4);
    put_u32(&w, (uint32_t)user_size);
    if (user_size) put(&w, user, user_size);
    for (int q = 0; q < n_seq; q++) put_seq(&w, kv, seq >= 0 ? seq : q);
    const uint64_t sum = fnv(FNV0, w.p, w.n);
    put(&w, &sum, 8);
    if (w.oom) {
        free(w.p);
        return lethe_fail(LETHE_ERR_OOM, "state_save: %zu bytes", w.n);
    }
    *out = w.p;
    *out_size = w.n;
    return LETHE_OK;
}

/* ---- reader -------------------------------------------------------------- */

typedef struct rbuf {
    const uint8_t *p;
    size_t n, at;
    bool bad;
} rbuf;

static const void *take(rbuf *r, size_t n) {
    if (r->bad || n > r->n - r->at) {
        r->bad = true;
        return NULL;
    }
    const void *p = r->p + r->at;
    r->at += n;
    return p;
}
static int32_t get_i32(rbuf *r) {
    const void *p = take(r, 4);
    int32_t v = 0;
    if (p) memcpy(&v, p, 4);
    return v;
}

/* Walk one saved sequence. Dry run: check it and grow the list capacity of
 * sequence dst's streams (that changes no content; only an allocation can
 * fail, as -2). Apply: take the pages and copy into dst, whose streams the
 * caller cleared. Returns the pages the sequence needs, or -1 when the data
 * is inconsistent. */
static int64_t walk_seq(rbuf *r, lethe_kv_cache *kv, int dst, bool apply, int32_t *seq_pos) {
    int64_t pages = 0;
    *seq_pos = get_i32(r);
    if (r->bad || *seq_pos < 0) return -1;
    const size_t D = (size_t)kv->head_dim;
    for (int l = 0; l < kv->n_layer; l++)
        for (int h = 0; h < kv->n_head_kv; h++) {
            const int32_t len = get_i32(r), n_holes = get_i32(r);
            const int32_t *holes = take(r, LETHE_KV_MAX_HOLES * 4);
            const int32_t last = get_i32(r), pend_n = get_i32(r);
            if (r->bad || len < 0 || len > *seq_pos || n_holes < 0 || n_holes > LETHE_KV_MAX_HOLES || n_holes > len ||
                last < -1 || last >= len || pend_n < 0 || pend_n > len)
                return -1;
            int32_t hole[LETHE_KV_MAX_HOLES];
            memcpy(hole, holes, sizeof hole);
            for (int32_t i = 0; i < n_holes; i++)
                if (hole[i] < 0 || hole[i] >= len) return -1;
            const int32_t *pend = take(r, (size_t)pend_n * 4);
            const uint8_t *meta = take(r, (size_t)len * (kv->score ? 12 : 8));
            const uint8_t *krows = take(r, (size_t)len * kv->slot_bytes);
            const uint8_t *vrows = take(r, (size_t)len * kv->slot_bytes);
            const int32_t np = (len + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE;
            const uint8_t *bounds = kv->kmin ? take(r, (size_t)np * 2 * D * 4) : NULL;
            if (r->bad) return -1;
            for (int32_t k = 0; k < pend_n; k++) {
                int32_t e;
                memcpy(&e, pend + k, 4);
                if (e < 0 || e >= len) return -1;
            }
            pages += np;
            lethe_kv_stream *s = lethe_kv_stream_at(kv, dst, l, h);
            if (!apply) {
                if (lethe_kv_stream_capacity(kv, s, np, pend_n) != LETHE_OK) return -2;
                continue;
            }
            lethe_kv_stream_take(kv, s, np);
            for (int32_t p = 0; p < np; p++) lethe_kv_touch(kv, s->pages[p]);   /* rows written below */
            LETHE_ASSERT(s->pend_cap >= pend_n);
            s->len = len;
            s->n_holes = n_holes;
            memcpy(s->holes, hole, sizeof hole);
            s->last = s->prev = last;
            s->pend_head = 0;
            s->pend_n = pend_n;
            if (pend_n) memcpy(s->pend, pend, (size_t)pend_n * 4);
            const size_t stride = kv->score ? 12 : 8;
            for (int32_t i = 0; i < len; i++) {
                const size_t m = lethe_kv_meta(s, i);
                memcpy(&kv->pos[m], meta + i * stride, 4);
                memcpy(&kv->expire[m], meta + i * stride + 4, 4);
                if (kv->score) memcpy(&kv->score[m], meta + i * stride + 8, 4);
                memcpy(lethe_kv_k(kv, s, i), krows + (size_t)i * kv->slot_bytes, kv->slot_bytes);
                memcpy(lethe_kv_v(kv, s, i), vrows + (size_t)i * kv->slot_bytes, kv->slot_bytes);
            }
            for (int32_t p = 0; bounds && p < np; p++) {
                memcpy(kv->kmin + (size_t)s->pages[p] * D, bounds + (size_t)p * 2 * D * 4, D * 4);
                memcpy(kv->kmax + (size_t)s->pages[p] * D, bounds + ((size_t)p * 2 + 1) * D * 4, D * 4);
            }
        }
    return pages;
}

lethe_status lethe_state_load(lethe_context *ctx, int32_t seq, const void *data, size_t size, lethe_token *tokens,
                              int32_t tokens_cap, int32_t *n_tokens, void **user, size_t *user_size) {
    lethe_kv_cache *kv = lethe_context_kv_mut(ctx);
    if (!kv || !data || seq < -1 || seq >= kv->n_seq || tokens_cap < 0 || (tokens_cap && !tokens))
        return lethe_fail(LETHE_ERR_INVALID_ARG, "state_load: invalid arguments (sequence %d)", seq);
    if (n_tokens) *n_tokens = 0;
    if (user) *user = NULL;
    if (user_size) *user_size = 0;
    if (size < 8 + 4 + 8 + 8 || memcmp(data, STATE_MAGIC, 8) != 0)
        return lethe_fail(LETHE_ERR_BAD_MAGIC, "state_load: not a lethe state (magic)");
    uint64_t sum;
    memcpy(&sum, (const uint8_t *)data + size - 8, 8);
    rbuf r = {data, size - 8, 8, false};
    const int32_t version = get_i32(&r);
    if (version != (int32_t)STATE_VERSION)
        return lethe_fail(LETHE_ERR_BAD_VERSION, "state_load: format version %d, this build reads %u", version,
                          STATE_VERSION);
    if (fnv(FNV0, data, size - 8) != sum)
        return lethe_fail(LETHE_ERR_CORRUPT, "state_load: checksum mismatch (truncated or corrupted state)");
    uint64_t fp;
    memcpy(&fp, take(&r, 8), 8);
    if (fp != model_fingerprint(lethe_context_model(ctx)))
        return lethe_fail(LETHE_ERR_INVALID_ARG, "state_load: the state was saved with another model");
    const int32_t type = get_i32(&r), rule = get_i32(&r), window = get_i32(&r), budget = get_i32(&r);
    const int32_t sinks = get_i32(&r), recent = get_i32(&r), nl = get_i32(&r), nh = get_i32(&r), hd = get_i32(&r);
    const lethe_kv_policy *p = &kv->policy;
    if (type != (int32_t)kv->type || nl != kv->n_layer || nh != kv->n_head_kv || hd != kv->head_dim)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "state_load: the state's KV cache (%s) differs from this context's (%s)",
                          lethe_dtype_name(type), lethe_dtype_name(kv->type));
    if (rule != (int32_t)p->rule || window != p->window || budget != p->budget || sinks != p->sinks || recent != p->recent)
        return lethe_fail(LETHE_ERR_INVALID_ARG,
                          "state_load: the state was saved under another KV policy (rule %d window %d budget %d; "
                          "this context: rule %d window %d budget %d)",
                          rule, window, budget, (int)p->rule, p->window, p->budget);
    const int32_t n_seq = get_i32(&r), nt = get_i32(&r);
    if (r.bad || n_seq < 0 || nt < 0) return lethe_fail(LETHE_ERR_CORRUPT, "state_load: bad header");
    if ((seq >= 0 && n_seq != 1) || (seq < 0 && n_seq > kv->n_seq))
        return lethe_fail(LETHE_ERR_INVALID_ARG, "state_load: the state holds %d sequences; %s", n_seq,
                          seq >= 0 ? "a sequence load needs exactly 1" : "more than this context's n_seq_max");
    if (n_tokens && nt > tokens_cap)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "state_load: the state holds %d tokens, the buffer %d", nt, tokens_cap);
    const void *tok = take(&r, (size_t)nt * 4);
    const int32_t us = get_i32(&r);
    const void *ud = take(&r, (size_t)(uint32_t)us);
    if (r.bad) return lethe_fail(LETHE_ERR_CORRUPT, "state_load: truncated header");

    /* dry run: consistency and page demand, nothing touched */
    const size_t body = r.at;
    int64_t need = 0;
    int32_t sp;
    for (int q = 0; q < n_seq; q++) {
        const int64_t pg = walk_seq(&r, kv, seq >= 0 ? seq : q, false, &sp);
        if (pg == -2) return lethe_fail(LETHE_ERR_OOM, "state_load: page lists");
        if (pg < 0) return lethe_fail(LETHE_ERR_CORRUPT, "state_load: sequence %d is inconsistent", q);
        need += pg;
    }
    if (r.at != r.n) return lethe_fail(LETHE_ERR_CORRUPT, "state_load: %zu trailing bytes", r.n - r.at);
    int64_t freed = 0;
    for (int q = 0; q < kv->n_seq; q++)
        if (seq < 0 || q == seq)
            for (size_t i = 0; i < (size_t)kv->n_layer * kv->n_head_kv; i++)
                freed += kv->streams[(size_t)q * kv->n_layer * kv->n_head_kv + i].n_pages;
    if (need > kv->n_free + freed)
        return lethe_fail(LETHE_ERR_CONTEXT_FULL, "state_load: needs %lld pages, %lld available",
                          (long long)need, (long long)(kv->n_free + freed));
    void *ucopy = NULL;
    if (user && us > 0 && !(ucopy = malloc((size_t)us))) return lethe_fail(LETHE_ERR_OOM, "state_load: user data");

    /* the dry run made room in every target stream's lists: now clear,
     * then take the pages and copy (nothing can fail from here) */
    for (int q = 0; q < kv->n_seq; q++)
        if (seq < 0 || q == seq) lethe_kv_seq_clear(kv, q);
    r.at = body;
    for (int q = 0; q < n_seq; q++) {
        const int dst = seq >= 0 ? seq : q;
        walk_seq(&r, kv, dst, true, &sp);
        kv->seq_pos[dst] = kv->saved_seq_pos[dst] = sp;
    }
    lethe_kv_host_done(kv);   /* the rows were written on the host */
    lethe_kv_begin(kv);   /* the loaded state is committed */
    if (n_tokens) {
        if (nt) memcpy(tokens, tok, (size_t)nt * 4);
        *n_tokens = nt;
    }
    if (ucopy) {
        memcpy(ucopy, ud, (size_t)us);
        *user = ucopy;
    }
    if (user_size) *user_size = (size_t)(uint32_t)us;
    return LETHE_OK;
}

/* ---- files ---------------------------------------------------------------- */

lethe_status lethe_state_save_file(const lethe_context *ctx, int32_t seq, const char *path, const lethe_token *tokens,
                                   int32_t n_tokens, const void *user, size_t user_size) {
    if (!path) return lethe_fail(LETHE_ERR_INVALID_ARG, "state_save_file: path is NULL");
    void *buf;
    size_t n;
    lethe_status st = lethe_state_save(ctx, seq, tokens, n_tokens, user, user_size, &buf, &n);
    if (st != LETHE_OK) return st;
    /* write beside, then rename: an interrupted save never leaves half a state under the name */
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        free(buf);
        return lethe_fail(LETHE_ERR_INVALID_ARG, "state_save_file: path too long");
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(buf);
        return lethe_fail(LETHE_ERR_IO, "state_save_file: cannot create '%s': %s", tmp, strerror(errno));
    }
    const bool ok = fwrite(buf, 1, n, f) == n;
    const bool closed = fclose(f) == 0;
    free(buf);
    if (!ok || !closed || rename(tmp, path) != 0) {
        const int e = errno;
        remove(tmp);
        return lethe_fail(LETHE_ERR_IO, "state_save_file: cannot write '%s': %s", path, strerror(e));
    }
    return LETHE_OK;
}

lethe_status lethe_state_load_file(lethe_context *ctx, int32_t seq, const char *path, lethe_token *tokens,
                                   int32_t tokens_cap, int32_t *n_tokens, void **user, size_t *user_size) {
    if (!path) return lethe_fail(LETHE_ERR_INVALID_ARG, "state_load_file: path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f) return lethe_fail(LETHE_ERR_IO, "state_load_file: cannot open '%s': %s", path, strerror(errno));
    size_t cap = 1 << 20, n = 0;
    uint8_t *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            uint8_t *nb = cap < ((size_t)1 << 40) ? realloc(buf, cap * 2) : NULL;
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        const size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    const bool err = ferror(f);
    fclose(f);
    if (!buf) return lethe_fail(LETHE_ERR_OOM, "state_load_file: reading '%s'", path);
    if (err) {
        free(buf);
        return lethe_fail(LETHE_ERR_IO, "state_load_file: cannot read '%s'", path);
    }
    lethe_status st = lethe_state_load(ctx, seq, buf, n, tokens, tokens_cap, n_tokens, user, user_size);
    free(buf);
    return st;
}

void lethe_free(void *p) { free(p); }
