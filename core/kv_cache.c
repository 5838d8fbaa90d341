/* kv_cache.c — per-(sequence, layer, KV head) paged storage, slot reuse,
 * eviction and compaction. See kv_cache.h for the model. */
#include "kv_cache.h"
#include "backend.h"
#include "common.h"

#include <math.h>
#include <string.h>

static size_t streams_per_seq(const lethe_kv_cache *kv) {
    return (size_t)kv->n_layer * kv->n_head_kv;
}
static lethe_kv_stream *seq_streams(const lethe_kv_cache *kv, int seq) {
    return &kv->streams[(size_t)seq * streams_per_seq(kv)];
}

lethe_status lethe_kv_init(lethe_kv_cache *kv, int n_seq, int n_layer, int n_head_kv,
                           int head_dim, lethe_dtype type, size_t budget_bytes,
                           int max_batch, const lethe_kv_policy *policy, lethe_backend *mem) {
    memset(kv, 0, sizeof *kv);
    if (n_seq <= 0 || n_layer <= 0 || n_head_kv <= 0 || head_dim <= 0 || max_batch <= 0)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "kv cache: bad dimensions");
    if (type != LETHE_F16 && type != LETHE_F32)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "kv cache: type must be f16 or f32");
    if (policy) kv->policy = *policy;
    const lethe_kv_policy *p = &kv->policy;
    if (p->window < 0 || p->budget < 0 || p->sinks < 0 || p->recent < 0)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "kv cache: negative policy parameter");
    kv->n_seq = n_seq;
    kv->n_layer = n_layer;
    kv->n_head_kv = n_head_kv;
    kv->head_dim = head_dim;
    kv->type = type;
    kv->slot_bytes = lethe_row_size(type, head_dim);
    kv->page_bytes = 2 * (size_t)LETHE_KV_PAGE * kv->slot_bytes;
    size_t n_pages = (budget_bytes + kv->page_bytes - 1) / kv->page_bytes;
    if (n_pages == 0 || n_pages > INT32_MAX / LETHE_KV_PAGE)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "kv cache: budget of %zu bytes gives %zu pages",
                          budget_bytes, n_pages);
    kv->n_pages = (int32_t)n_pages;
    size_t n_streams = (size_t)n_seq * n_layer * n_head_kv;
    size_t n_slots = n_pages * LETHE_KV_PAGE;
    if (mem && mem->iface->buffer_alloc_shared) {
        /* one shared buffer: pool, then pos, then expire (64-byte aligned);
         * QUEST's page bounds after them, which the device refreshes */
        kv->pos_offs = (n_pages * kv->page_bytes + 63) & ~(size_t)63;
        kv->expire_offs = (kv->pos_offs + n_slots * sizeof(int32_t) + 63) & ~(size_t)63;
        size_t end = kv->expire_offs + n_slots * sizeof(int32_t);
        if (p->rule == LETHE_KV_RULE_QUEST) {
            kv->kmin_offs = (end + 63) & ~(size_t)63;
            kv->kmax_offs = kv->kmin_offs + n_pages * (size_t)head_dim * sizeof(float);
            end = kv->kmax_offs + n_pages * (size_t)head_dim * sizeof(float);
        }
        lethe_status st = mem->iface->buffer_alloc_shared(mem, end, &kv->shared);
        if (st != LETHE_OK) {
            kv->shared = NULL;   /* a device without shared memory: the pool stays on the host */
            kv->kmin_offs = kv->kmax_offs = 0;
            lethe_clear_error();
        } else {
            kv->pool = kv->shared->host_ptr;
            kv->pos = (int32_t *)((uint8_t *)kv->shared->host_ptr + kv->pos_offs);
            kv->expire = (int32_t *)((uint8_t *)kv->shared->host_ptr + kv->expire_offs);
            if (kv->kmin_offs) {
                kv->kmin = (float *)((uint8_t *)kv->shared->host_ptr + kv->kmin_offs);
                kv->kmax = (float *)((uint8_t *)kv->shared->host_ptr + kv->kmax_offs);
            }
        }
    }
    if (!kv->shared) {
        kv->pool = aligned_alloc(64, n_pages * kv->page_bytes);
        kv->pos = malloc(n_slots * sizeof(int32_t));
        kv->expire = malloc(n_slots * sizeof(int32_t));
    }
    kv->free_list = malloc(n_pages * sizeof(int32_t));
    kv->streams = calloc(n_streams, sizeof *kv->streams);
    kv->seq_pos = calloc((size_t)n_seq, sizeof(int32_t));
    kv->saved_seq_pos = calloc((size_t)n_seq, sizeof(int32_t));
    kv->res_slot = malloc(streams_per_seq(kv) * (size_t)max_batch * sizeof(int32_t));
    kv->prev_t = malloc((size_t)max_batch * sizeof(int32_t));
    bool ok = kv->pool && kv->pos && kv->expire && kv->free_list && kv->streams && kv->seq_pos &&
              kv->saved_seq_pos && kv->res_slot && kv->prev_t;
    if (ok && (p->rule == LETHE_KV_RULE_TOVA || p->rule == LETHE_KV_RULE_H2O))
        ok = (kv->score = calloc(n_slots, sizeof(float))) != NULL;
    if (ok && p->rule == LETHE_KV_RULE_QUEST && !kv->kmin)
        ok = (kv->kmin = malloc(n_pages * (size_t)head_dim * sizeof(float))) &&
             (kv->kmax = malloc(n_pages * (size_t)head_dim * sizeof(float)));
    kv->max_batch = max_batch;
    if (!ok) {
        lethe_kv_free(kv);
        return lethe_fail(LETHE_ERR_OOM, "kv cache: cannot allocate %zu bytes", n_pages * kv->page_bytes);
    }
    for (size_t i = 0; i < n_streams; i++) kv->streams[i].last = kv->streams[i].prev = -1;
    kv->touched_lo = INT32_MAX;
    kv->touched_hi = -1;
    kv->move_gen = 1;   /* streams start at 0: none has rows queued */
    static uint64_t g_uid;   /* caches of every thread of the process */
    kv->uid = __atomic_add_fetch(&g_uid, 1, __ATOMIC_RELAXED);
    /* Pop order: lowest page id first, so a fresh cache fills memory in order. */
    for (int32_t i = 0; i < kv->n_pages; i++) kv->free_list[i] = kv->n_pages - 1 - i;
    kv->n_free = kv->n_pages;
    return LETHE_OK;
}

void lethe_kv_free(lethe_kv_cache *kv) {
    if (kv->streams) {
        size_t n_streams = (size_t)kv->n_seq * streams_per_seq(kv);
        for (size_t i = 0; i < n_streams; i++) {
            free(kv->streams[i].pages);
            free(kv->streams[i].pend);
        }
    }
    if (kv->shared) {
        kv->shared->backend->iface->buffer_free(kv->shared);
    } else {
        free(kv->pool);
        free(kv->pos);
        free(kv->expire);
    }
    if (!kv->kmin_offs) {   /* else in the shared buffer */
        free(kv->kmin);
        free(kv->kmax);
    }
    free(kv->score);
    free(kv->free_list);
    free(kv->streams);
    free(kv->seq_pos);
    free(kv->saved_seq_pos);
    free(kv->res_slot);
    free(kv->prev_t);
    free(kv->map);
    free(kv->moves);
    memset(kv, 0, sizeof *kv);
}

size_t lethe_kv_bytes_resident(const lethe_kv_cache *kv) {
    return (size_t)(kv->n_pages - kv->n_free) * kv->page_bytes;
}

static void note_peak(lethe_kv_cache *kv) {
    size_t res = lethe_kv_bytes_resident(kv);
    if (res > kv->bytes_peak) kv->bytes_peak = res;
}

/* The only two ways a stream's page list changes; both move its generation
 * (lethe_kv_stream.plist_gen), which device mirrors of the lists trust. */
static void plist_changed(lethe_kv_cache *kv, lethe_kv_stream *s) { s->plist_gen = ++kv->plist_clock; }

/* Append a page from the pool (the caller checked n_free and the capacity). */
static void stream_push_page(lethe_kv_cache *kv, lethe_kv_stream *s) {
    s->pages[s->n_pages++] = kv->free_list[--kv->n_free];
    plist_changed(kv, s);
}

/* Return a stream's pages beyond `keep_pages` to the pool. */
static void stream_shrink(lethe_kv_cache *kv, lethe_kv_stream *s, int32_t keep_pages) {
    if (s->n_pages <= keep_pages) return;
    while (s->n_pages > keep_pages) kv->free_list[kv->n_free++] = s->pages[--s->n_pages];
    plist_changed(kv, s);
}

static bool grow_i32(int32_t **a, int32_t *cap, int32_t need) {
    if (need <= *cap) return true;
    int32_t c = LETHE_MAX(need, *cap < INT32_MAX / 2 ? 2 * *cap : INT32_MAX);
    int32_t *p = realloc(*a, (size_t)c * sizeof(int32_t));
    if (!p) return false;
    *a = p;
    *cap = c;
    return true;
}

/* Room for `extra` more FIFO entries: slide the live range to the front
 * first, then grow. */
static bool pend_reserve(lethe_kv_stream *s, int32_t extra) {
    if (s->pend_head + s->pend_n + extra <= s->pend_cap) return true;
    if (s->pend_head) {
        memmove(s->pend, s->pend + s->pend_head, (size_t)s->pend_n * sizeof(int32_t));
        s->pend_head = 0;
    }
    return grow_i32(&s->pend, &s->pend_cap, s->pend_n + extra);
}

/* Expiry a token gets when inserted: only WINDOW knows it up front. */
static int32_t insert_expire(const lethe_kv_policy *p, int32_t pos) {
    if (p->rule == LETHE_KV_RULE_WINDOW && pos >= p->sinks) {
        int32_t recent = LETHE_MAX(p->budget - p->sinks, 1);
        return pos > LETHE_KV_NEVER - recent ? LETHE_KV_NEVER : pos + recent;
    }
    return LETHE_KV_NEVER;
}

lethe_status lethe_kv_reserve(lethe_kv_cache *kv, int32_t n_tokens, const int32_t *seq_id,
                              const int32_t *pos) {
    if (n_tokens > kv->max_batch)
        return lethe_fail(LETHE_ERR_INTERNAL, "kv cache: micro-batch of %d > %d", n_tokens, kv->max_batch);
    const size_t S = streams_per_seq(kv);
    int32_t add[kv->n_seq];
    memset(add, 0, sizeof add);
    for (int32_t t = 0; t < n_tokens; t++) {
        if (seq_id[t] < 0 || seq_id[t] >= kv->n_seq)
            return lethe_fail(LETHE_ERR_INVALID_ARG, "kv cache: sequence id %d out of range [0, %d)",
                              seq_id[t], kv->n_seq);
        add[seq_id[t]]++;
    }
    /* Size the page demand first (holes are filled before the stream grows),
     * so a batch that does not fit leaves the cache untouched. */
    int64_t need = 0;
    int32_t max_len = 0;
    for (int q = 0; q < kv->n_seq; q++) {
        if (!add[q]) continue;
        const lethe_kv_stream *ss = seq_streams(kv, q);
        for (size_t i = 0; i < S; i++) {
            int32_t len_after = ss[i].len + LETHE_MAX(add[q] - ss[i].n_holes, 0);
            int32_t pages_after = (len_after + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE;
            need += LETHE_MAX(pages_after - ss[i].n_pages, 0);
            max_len = LETHE_MAX(max_len, len_after);
        }
    }
    if (need > kv->n_free)
        return lethe_fail(LETHE_ERR_CONTEXT_FULL,
                          "kv cache: the batch needs %lld more pages, %d free (budget %zu bytes)",
                          (long long)need, kv->n_free, (size_t)kv->n_pages * kv->page_bytes);
    /* From here pages are taken stream by stream; if a page-list allocation
     * fails midway, the engine's rollback of the call returns them. */
    if (!grow_i32(&kv->map, &kv->map_cap, max_len))
        return lethe_fail(LETHE_ERR_OOM, "kv cache: compaction scratch");
    for (int q = 0; q < kv->n_seq; q++) {
        if (!add[q]) continue;
        lethe_kv_stream *ss = seq_streams(kv, q);
        for (size_t i = 0; i < S; i++) {
            lethe_kv_stream *st = &ss[i];
            int32_t len_after = st->len + LETHE_MAX(add[q] - st->n_holes, 0);
            int32_t pages_after = (len_after + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE;
            if (!grow_i32(&st->pages, &st->cap_pages, pages_after) || !pend_reserve(st, add[q] + 1))
                return lethe_fail(LETHE_ERR_OOM, "kv cache: page list");
            while (st->n_pages < pages_after) stream_push_page(kv, st);
            st->prev = st->last;
        }
    }
    /* Slots in batch order; positions and insert-time expiry written now
     * (K/V rows and DMS flags by KV_STORE). */
    int32_t last_t[kv->n_seq];
    for (int q = 0; q < kv->n_seq; q++) last_t[q] = -1;
    for (int32_t t = 0; t < n_tokens; t++) {
        const int q = seq_id[t];
        kv->prev_t[t] = last_t[q];
        last_t[q] = t;
        const int32_t ex = insert_expire(&kv->policy, pos[t]);
        lethe_kv_stream *ss = seq_streams(kv, q);
        for (size_t i = 0; i < S; i++) {
            lethe_kv_stream *st = &ss[i];
            int32_t slot = st->n_holes ? st->holes[--st->n_holes] : st->len++;
            kv->res_slot[i * kv->max_batch + t] = slot;
            const size_t m = lethe_kv_meta(st, slot);
            kv->pos[m] = pos[t];
            kv->expire[m] = ex;
            if (kv->score) kv->score[m] = 0.0f;
            st->last = slot;
        }
    }
    for (int q = 0; q < kv->n_seq; q++) kv->seq_pos[q] += add[q];
    kv->n_reserved_tokens = n_tokens;
    note_peak(kv);
    return LETHE_OK;
}

void lethe_kv_settle(lethe_kv_cache *kv, int32_t n_tokens, const int32_t *seq_id) {
    const size_t S = streams_per_seq(kv);
    /* A token's expiry is final once its successor ran (DMS: the successor's
     * decision flags it). Queue it then, exactly once: the stream's `prev`
     * by the micro-batch's first token of the sequence, every other token by
     * the next one in the micro-batch. Expiries are nondecreasing in queue
     * order for DMS (j + w + 1) and WINDOW (j + recent). */
    for (int32_t t = 0; t < n_tokens; t++) {
        lethe_kv_stream *ss = seq_streams(kv, seq_id[t]);
        const int32_t pt = kv->prev_t[t];
        for (size_t i = 0; i < S; i++) {
            lethe_kv_stream *st = &ss[i];
            int32_t slot = pt >= 0 ? kv->res_slot[i * kv->max_batch + pt] : st->prev;
            if (slot < 0 || *lethe_kv_expire(kv, st, slot) == LETHE_KV_NEVER) continue;
            LETHE_ASSERT(st->pend_head + st->pend_n < st->pend_cap);   /* reserved */
            st->pend[st->pend_head + st->pend_n++] = slot;
        }
    }
}

void lethe_kv_begin(lethe_kv_cache *kv) {
    size_t n = (size_t)kv->n_seq * streams_per_seq(kv);
    for (size_t i = 0; i < n; i++) {
        lethe_kv_stream *st = &kv->streams[i];
        st->saved_len = st->len;
        st->saved_n_pages = st->n_pages;
        st->saved_n_holes = st->n_holes;
        memcpy(st->saved_holes, st->holes, sizeof st->holes);
        st->saved_last = st->last;
        st->saved_pend_n = st->pend_n;
        /* KV_STORE may flag the newest token: remember its expiry */
        st->saved_last_expire = st->last >= 0 ? *lethe_kv_expire(kv, st, st->last) : LETHE_KV_NEVER;
    }
    memcpy(kv->saved_seq_pos, kv->seq_pos, (size_t)kv->n_seq * sizeof(int32_t));
    kv->n_reserved_tokens = 0;
}

void lethe_kv_rollback(lethe_kv_cache *kv) {
    size_t n = (size_t)kv->n_seq * streams_per_seq(kv);
    for (size_t i = 0; i < n; i++) {
        lethe_kv_stream *st = &kv->streams[i];
        if (st->len == st->saved_len && st->n_holes == st->saved_n_holes && st->last == st->saved_last)
            continue;   /* untouched by the call */
        /* holes taken during the call are holes again */
        for (int32_t h = 0; h < st->saved_n_holes; h++)
            *lethe_kv_pos(kv, st, st->saved_holes[h]) = LETHE_KV_HOLE;
        st->len = st->saved_len;
        st->n_holes = st->saved_n_holes;
        memcpy(st->holes, st->saved_holes, sizeof st->holes);
        st->last = st->prev = st->saved_last;
        if (st->last >= 0) *lethe_kv_expire(kv, st, st->last) = st->saved_last_expire;
        st->pend_n = st->saved_pend_n;
        stream_shrink(kv, st, st->saved_n_pages);
    }
    memcpy(kv->seq_pos, kv->saved_seq_pos, (size_t)kv->n_seq * sizeof(int32_t));
    kv->n_reserved_tokens = 0;
}

/* ---- row moves: on the device when the shared buffer's backend offers it */

static bool moves_on_device(const lethe_kv_cache *kv) {
    return kv->shared && kv->shared->backend->iface->buffer_move_rows;
}

/* Pool bytes [src, + row_bytes) -> [dst, + row_bytes) on the host. */
static void host_move(lethe_kv_cache *kv, size_t src, size_t dst, size_t row_bytes) {
    lethe_kv_touch(kv, (int32_t)(src / kv->page_bytes));
    lethe_kv_touch(kv, (int32_t)(dst / kv->page_bytes));
    memcpy(kv->pool + dst, kv->pool + src, row_bytes);
}

void lethe_kv_flush_moves(lethe_kv_cache *kv) {
    if (!kv->n_moves) return;
    lethe_status st = kv->shared->backend->iface->buffer_move_rows(kv->shared, kv->moves, kv->n_moves,
                                                                   kv->move_row_bytes);
    if (st != LETHE_OK) {   /* nothing was moved: the host does it, in the same order */
        lethe_log(LETHE_LOG_WARN, "kv cache: %zu row moves on the device failed (%s): moved on the host",
                  kv->n_moves, lethe_last_error());
        lethe_clear_error();
        for (size_t i = 0; i < kv->n_moves; i++) host_move(kv, kv->moves[i].src, kv->moves[i].dst, kv->move_row_bytes);
    }
    kv->n_moves = 0;
    kv->move_gen++;
}

/* Queue a row move for the device (moves_on_device), or do it on the host
 * when the queue cannot grow; either way after every earlier move. */
static void queue_move(lethe_kv_cache *kv, size_t src, size_t dst, size_t row_bytes) {
    if (kv->n_moves && row_bytes != kv->move_row_bytes) lethe_kv_flush_moves(kv);
    if (kv->n_moves == kv->moves_cap) {
        size_t cap = kv->moves_cap ? 2 * kv->moves_cap : 256;
        lethe_row_move *m = realloc(kv->moves, cap * sizeof *m);
        if (!m) {
            lethe_kv_flush_moves(kv);
            host_move(kv, src, dst, row_bytes);
            return;
        }
        kv->moves = m;
        kv->moves_cap = cap;
    }
    kv->moves[kv->n_moves++] = (lethe_row_move){src, dst};
    kv->move_row_bytes = row_bytes;
}

/* Move slot `from` to slot `to` (to < from) within a stream. A compaction
 * calls it for ascending `from` with strictly ascending `to`, so a move
 * never reads a row an earlier one wrote (an earlier move from' < from
 * wrote to' < from') and no two write one row: buffer_move_rows' contract,
 * for the device path. */
static void move_slot(lethe_kv_cache *kv, lethe_kv_stream *s, int32_t from, int32_t to) {
    const size_t kf = (size_t)((uint8_t *)lethe_kv_k(kv, s, from) - kv->pool);
    const size_t kt = (size_t)((uint8_t *)lethe_kv_k(kv, s, to) - kv->pool);
    const size_t vf = (size_t)((uint8_t *)lethe_kv_v(kv, s, from) - kv->pool);
    const size_t vt = (size_t)((uint8_t *)lethe_kv_v(kv, s, to) - kv->pool);
    if (moves_on_device(kv)) {   /* rows on the device; metadata below, on the host */
        queue_move(kv, kf, kt, kv->slot_bytes);
        queue_move(kv, vf, vt, kv->slot_bytes);
        s->move_gen = kv->move_gen;
    } else {
        host_move(kv, kf, kt, kv->slot_bytes);
        host_move(kv, vf, vt, kv->slot_bytes);
    }
    const size_t a = lethe_kv_meta(s, to), b = lethe_kv_meta(s, from);
    kv->pos[a] = kv->pos[b];
    kv->expire[a] = kv->expire[b];
    if (kv->score) kv->score[a] = kv->score[b];
}

/* Compaction: keep-flags -> prefix sum -> ascending scatter. Slots already
 * marked as holes (pos == LETHE_KV_HOLE) go; the rest keep their order. */
void lethe_kv_stream_compact(lethe_kv_cache *kv, lethe_kv_stream *s) {
    int32_t *map = kv->map;   /* [len] old slot -> new slot, -1 if dropped */
    LETHE_ASSERT(kv->map_cap >= s->len);
    /* this stream's rows still queued (compacted twice in one commit): they
     * must land before its slots are renumbered again */
    if (kv->n_moves && s->move_gen == kv->move_gen) lethe_kv_flush_moves(kv);
    int32_t n = 0;
    for (int32_t i = 0; i < s->len; i++) map[i] = *lethe_kv_pos(kv, s, i) == LETHE_KV_HOLE ? -1 : n++;
    for (int32_t i = 0; i < s->len; i++)
        if (map[i] >= 0 && map[i] != i) move_slot(kv, s, i, map[i]);   /* map[i] < i: never overtakes */
    if (s->last >= 0) s->last = map[s->last];
    s->prev = s->last;
    for (int32_t k = 0; k < s->pend_n; k++) {
        int32_t *e = &s->pend[s->pend_head + k];
        LETHE_ASSERT(map[*e] >= 0);   /* queued tokens are live until they expire */
        *e = map[*e];
    }
    if (kv->kmin) {   /* QUEST bounds of the rewritten pages are stale: redo them */
        lethe_kv_flush_moves(kv);   /* from the moved rows */
        for (int32_t p = 0; p < (n + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE; p++) {
            float *mn = kv->kmin + (size_t)s->pages[p] * kv->head_dim;
            float *mx = kv->kmax + (size_t)s->pages[p] * kv->head_dim;
            for (int32_t d = 0; d < kv->head_dim; d++) { mn[d] = INFINITY; mx[d] = -INFINITY; }
            for (int32_t j = p * LETHE_KV_PAGE; j < LETHE_MIN(n, (p + 1) * LETHE_KV_PAGE); j++) {
                const void *k = lethe_kv_k(kv, s, j);
                for (int32_t d = 0; d < kv->head_dim; d++) {
                    float x = kv->type == LETHE_F16 ? lethe_f16_to_f32(((const lethe_f16 *)k)[d])
                                                    : ((const float *)k)[d];
                    mn[d] = x < mn[d] ? x : mn[d];
                    mx[d] = x > mx[d] ? x : mx[d];
                }
            }
        }
    }
    s->len = n;
    s->n_holes = 0;
    stream_shrink(kv, s, (n + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE);
    if (!kv->batch_moves) lethe_kv_flush_moves(kv);   /* commit flushes once for all streams */
}

void lethe_kv_stream_drop(lethe_kv_cache *kv, lethe_kv_stream *s, const int32_t *slots, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        LETHE_ASSERT(slots[i] >= 0 && slots[i] < s->len);
        *lethe_kv_pos(kv, s, slots[i]) = LETHE_KV_HOLE;
        *lethe_kv_expire(kv, s, slots[i]) = LETHE_KV_NEVER;
    }
    kv->evicted += (uint64_t)n;
    if (s->n_holes + n > LETHE_KV_MAX_HOLES) {
        lethe_kv_stream_compact(kv, s);
        return;
    }
    for (int32_t i = 0; i < n; i++) {
        s->holes[s->n_holes++] = slots[i];
        if (slots[i] == s->last) s->last = s->prev = -1;   /* a score policy dropped the newest */
    }
    /* holes at the end simply shorten the stream */
    while (s->len > 0 && s->n_holes > 0 && *lethe_kv_pos(kv, s, s->len - 1) == LETHE_KV_HOLE) {
        int32_t h = 0;
        while (s->holes[h] != s->len - 1) h++;
        s->holes[h] = s->holes[--s->n_holes];
        s->len--;
    }
    stream_shrink(kv, s, (s->len + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE);
}

/* Evict the queued tokens of a stream that the next query (position `next`)
 * no longer sees. */
static void stream_expire(lethe_kv_cache *kv, lethe_kv_stream *s, int32_t next) {
    int32_t n = 0;
    while (n < s->pend_n && *lethe_kv_expire(kv, s, s->pend[s->pend_head + n]) <= next) n++;
    if (!n) return;
    const int32_t *gone = s->pend + s->pend_head;
    s->pend_head += n;
    s->pend_n -= n;
    lethe_kv_stream_drop(kv, s, gone, n);   /* reads `gone` before anything reuses it */
    if (s->pend_n == 0) s->pend_head = 0;
}

void lethe_kv_commit(lethe_kv_cache *kv) {
    const size_t S = streams_per_seq(kv);
    kv->batch_moves = true;   /* one batch of device row moves for every compaction */
    for (int q = 0; q < kv->n_seq; q++) {
        if (kv->seq_pos[q] == kv->saved_seq_pos[q]) continue;
        lethe_kv_stream *ss = seq_streams(kv, q);
        for (size_t i = 0; i < S; i++) {
            stream_expire(kv, &ss[i], kv->seq_pos[q]);
            if (kv->score) lethe_kv_policy_evict(kv, &ss[i], kv->seq_pos[q]);
        }
    }
    kv->batch_moves = false;
    lethe_kv_flush_moves(kv);
    lethe_kv_host_done(kv);   /* compactions that moved rows on the host */
    lethe_kv_begin(kv);
}

void lethe_kv_host_done(lethe_kv_cache *kv) {
    if (kv->touched_lo > kv->touched_hi) return;
    if (kv->shared && kv->shared->backend->iface->buffer_host_done)
        (void)kv->shared->backend->iface->buffer_host_done(
            kv->shared, (size_t)kv->touched_lo * kv->page_bytes,
            (size_t)(kv->touched_hi - kv->touched_lo + 1) * kv->page_bytes);
    kv->touched_lo = INT32_MAX;
    kv->touched_hi = -1;
}

lethe_status lethe_kv_stream_capacity(lethe_kv_cache *kv, lethe_kv_stream *s, int32_t pages, int32_t pend) {
    if (!grow_i32(&s->pages, &s->cap_pages, pages) || !grow_i32(&s->pend, &s->pend_cap, pend) ||
        !grow_i32(&kv->map, &kv->map_cap, pages * LETHE_KV_PAGE))   /* compaction scratch for that length */
        return lethe_fail(LETHE_ERR_OOM, "kv cache: page list");
    return LETHE_OK;
}

void lethe_kv_stream_take(lethe_kv_cache *kv, lethe_kv_stream *s, int32_t pages) {
    LETHE_ASSERT(s->cap_pages >= pages && kv->n_free >= pages - s->n_pages);
    while (s->n_pages < pages) stream_push_page(kv, s);
    note_peak(kv);
}

void lethe_kv_seq_clear(lethe_kv_cache *kv, int seq) {
    lethe_kv_stream *ss = seq_streams(kv, seq);
    for (size_t i = 0; i < streams_per_seq(kv); i++) {
        lethe_kv_stream *st = &ss[i];
        stream_shrink(kv, st, 0);
        st->len = st->saved_len = st->saved_n_pages = 0;
        st->n_holes = st->saved_n_holes = 0;
        st->last = st->prev = st->saved_last = -1;
        st->pend_head = st->pend_n = st->saved_pend_n = 0;
    }
    kv->seq_pos[seq] = kv->saved_seq_pos[seq] = 0;
}

lethe_status lethe_kv_seq_copy(lethe_kv_cache *kv, int src, int dst) {
    if (src == dst) return LETHE_OK;
    lethe_kv_flush_moves(kv);   /* none queued outside commit; the fork reads rows */
    lethe_kv_seq_clear(kv, dst);
    const size_t S = streams_per_seq(kv);
    lethe_kv_stream *as = seq_streams(kv, src), *bs = seq_streams(kv, dst);
    int64_t need = 0;
    for (size_t i = 0; i < S; i++) need += as[i].n_pages;
    if (need > kv->n_free)
        return lethe_fail(LETHE_ERR_CONTEXT_FULL, "kv cache: fork needs %lld pages, %d free",
                          (long long)need, kv->n_free);
    for (size_t i = 0; i < S; i++) {
        lethe_kv_stream *b = &bs[i];
        b->pend_head = 0;
        if (!grow_i32(&b->pages, &b->cap_pages, as[i].n_pages) ||
            !grow_i32(&b->pend, &b->pend_cap, as[i].pend_n)) {
            lethe_kv_seq_clear(kv, dst);
            return lethe_fail(LETHE_ERR_OOM, "kv cache: page list");
        }
    }
    for (size_t i = 0; i < S; i++) {
        const lethe_kv_stream *a = &as[i];
        lethe_kv_stream *b = &bs[i];
        /* Pages are copied, not shared: each branch evicts per head on its own. */
        for (int32_t p = 0; p < a->n_pages; p++) {
            stream_push_page(kv, b);
            const int32_t id = b->pages[p], from = a->pages[p];
            /* whole pages (K and V blocks) into free ones: no move reads another's destination */
            if (moves_on_device(kv))
                queue_move(kv, (size_t)from * kv->page_bytes, (size_t)id * kv->page_bytes, kv->page_bytes);
            else
                host_move(kv, (size_t)from * kv->page_bytes, (size_t)id * kv->page_bytes, kv->page_bytes);
            const size_t P = LETHE_KV_PAGE;
            memcpy(kv->pos + id * P, kv->pos + from * P, P * sizeof(int32_t));
            memcpy(kv->expire + id * P, kv->expire + from * P, P * sizeof(int32_t));
            if (kv->score) memcpy(kv->score + id * P, kv->score + from * P, P * sizeof(float));
            if (kv->kmin) {
                const size_t D = (size_t)kv->head_dim;
                memcpy(kv->kmin + id * D, kv->kmin + from * D, D * sizeof(float));
                memcpy(kv->kmax + id * D, kv->kmax + from * D, D * sizeof(float));
            }
        }
        b->len = a->len;
        b->n_holes = a->n_holes;
        memcpy(b->holes, a->holes, sizeof b->holes);
        b->last = b->prev = a->last;
        if (a->pend_n) memcpy(b->pend, a->pend + a->pend_head, (size_t)a->pend_n * sizeof(int32_t));
        b->pend_n = a->pend_n;
        /* the copy is committed state */
        b->saved_len = b->len;
        b->saved_n_pages = b->n_pages;
        b->saved_n_holes = b->n_holes;
        memcpy(b->saved_holes, b->holes, sizeof b->holes);
        b->saved_last = b->last;
        b->saved_pend_n = b->pend_n;
        b->saved_last_expire = b->last >= 0 ? *lethe_kv_expire(kv, b, b->last) : LETHE_KV_NEVER;
    }
    kv->seq_pos[dst] = kv->saved_seq_pos[dst] = kv->seq_pos[src];
    note_peak(kv);
    lethe_kv_flush_moves(kv);
    lethe_kv_host_done(kv);   /* the pages, if they were copied on the host */
    return LETHE_OK;
}
