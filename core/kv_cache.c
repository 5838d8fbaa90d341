/* kv_cache.c — per-(sequence, layer, KV head) paged storage. See kv_cache.h. */
#include "kv_cache.h"
#include "common.h"

#include <string.h>

lethe_status lethe_kv_init(lethe_kv_cache *kv, int n_seq, int n_layer, int n_head_kv,
                           int head_dim, lethe_dtype type, size_t budget_bytes,
                           int max_batch) {
    memset(kv, 0, sizeof *kv);
    if (n_seq <= 0 || n_layer <= 0 || n_head_kv <= 0 || head_dim <= 0 || max_batch <= 0)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "kv cache: bad dimensions");
    if (type != LETHE_F16 && type != LETHE_F32)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "kv cache: type must be f16 or f32");
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
    kv->pool = aligned_alloc(64, n_pages * kv->page_bytes);
    kv->pos = malloc(n_pages * LETHE_KV_PAGE * sizeof(int32_t));
    kv->free_list = malloc(n_pages * sizeof(int32_t));
    kv->streams = calloc(n_streams, sizeof *kv->streams);
    kv->seq_pos = calloc((size_t)n_seq, sizeof(int32_t));
    kv->saved_seq_pos = calloc((size_t)n_seq, sizeof(int32_t));
    kv->res_slot = malloc((size_t)max_batch * sizeof(int32_t));
    kv->max_batch = max_batch;
    if (!kv->pool || !kv->pos || !kv->free_list || !kv->streams || !kv->seq_pos || !kv->saved_seq_pos || !kv->res_slot) {
        lethe_kv_free(kv);
        return lethe_fail(LETHE_ERR_OOM, "kv cache: cannot allocate %zu bytes", n_pages * kv->page_bytes);
    }
    /* Pop order: lowest page id first, so a fresh cache fills memory in order. */
    for (int32_t i = 0; i < kv->n_pages; i++) kv->free_list[i] = kv->n_pages - 1 - i;
    kv->n_free = kv->n_pages;
    return LETHE_OK;
}

void lethe_kv_free(lethe_kv_cache *kv) {
    if (kv->streams) {
        size_t n_streams = (size_t)kv->n_seq * kv->n_layer * kv->n_head_kv;
        for (size_t i = 0; i < n_streams; i++) free(kv->streams[i].pages);
    }
    free(kv->pool);
    free(kv->pos);
    free(kv->free_list);
    free(kv->streams);
    free(kv->seq_pos);
    free(kv->saved_seq_pos);
    free(kv->res_slot);
    memset(kv, 0, sizeof *kv);
}

size_t lethe_kv_bytes_resident(const lethe_kv_cache *kv) {
    return (size_t)(kv->n_pages - kv->n_free) * kv->page_bytes;
}

static size_t streams_per_seq(const lethe_kv_cache *kv) {
    return (size_t)kv->n_layer * kv->n_head_kv;
}

/* Return a stream's pages beyond `keep_pages` to the pool. */
static void stream_shrink(lethe_kv_cache *kv, lethe_kv_stream *s, int32_t keep_pages) {
    while (s->n_pages > keep_pages) kv->free_list[kv->n_free++] = s->pages[--s->n_pages];
}

lethe_status lethe_kv_reserve(lethe_kv_cache *kv, int32_t n_tokens, const int32_t *seq_id,
                              const int32_t *pos) {
    if (n_tokens > kv->max_batch)
        return lethe_fail(LETHE_ERR_INTERNAL, "kv cache: micro-batch of %d > %d", n_tokens, kv->max_batch);
    /* Count the new tokens of each sequence to size the page demand first,
     * so a batch that does not fit leaves the cache untouched. */
    int32_t add[kv->n_seq];
    memset(add, 0, sizeof add);
    for (int32_t t = 0; t < n_tokens; t++) {
        if (seq_id[t] < 0 || seq_id[t] >= kv->n_seq)
            return lethe_fail(LETHE_ERR_INVALID_ARG, "kv cache: sequence id %d out of range [0, %d)",
                              seq_id[t], kv->n_seq);
        add[seq_id[t]]++;
    }
    int64_t need = 0;
    for (int s = 0; s < kv->n_seq; s++) {
        if (!add[s]) continue;
        /* plain cache: every stream of a sequence has the same length */
        const lethe_kv_stream *st = lethe_kv_stream_at(kv, s, 0, 0);
        int32_t pages_after = (st->len + add[s] + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE;
        need += (int64_t)(pages_after - st->n_pages) * (int64_t)streams_per_seq(kv);
    }
    if (need > kv->n_free)
        return lethe_fail(LETHE_ERR_CONTEXT_FULL,
                          "kv cache: the batch needs %lld more pages, %d free (budget %zu bytes)",
                          (long long)need, kv->n_free, (size_t)kv->n_pages * kv->page_bytes);

    for (int s = 0; s < kv->n_seq; s++) {
        if (!add[s]) continue;
        for (size_t i = 0; i < streams_per_seq(kv); i++) {
            lethe_kv_stream *st = &kv->streams[(size_t)s * streams_per_seq(kv) + i];
            int32_t pages_after = (st->len + add[s] + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE;
            if (pages_after > st->cap_pages) {
                int32_t cap = LETHE_MAX(pages_after, 2 * st->cap_pages);
                int32_t *p = realloc(st->pages, (size_t)cap * sizeof(int32_t));
                if (!p) /* the engine rolls the whole call back */
                    return lethe_fail(LETHE_ERR_OOM, "kv cache: page list");
                st->pages = p;
                st->cap_pages = cap;
            }
            while (st->n_pages < pages_after) st->pages[st->n_pages++] = kv->free_list[--kv->n_free];
        }
    }
    /* Slots in batch order; positions written now (K/V rows by KV_STORE). */
    int32_t next[kv->n_seq];
    for (int s = 0; s < kv->n_seq; s++) next[s] = lethe_kv_stream_at(kv, s, 0, 0)->len;
    for (int32_t t = 0; t < n_tokens; t++) {
        int s = seq_id[t];
        int32_t slot = next[s]++;
        kv->res_slot[t] = slot;
        for (size_t i = 0; i < streams_per_seq(kv); i++) {
            lethe_kv_stream *st = &kv->streams[(size_t)s * streams_per_seq(kv) + i];
            *lethe_kv_pos(kv, st, slot) = pos[t];
        }
    }
    for (int s = 0; s < kv->n_seq; s++) {
        if (!add[s]) continue;
        for (size_t i = 0; i < streams_per_seq(kv); i++)
            kv->streams[(size_t)s * streams_per_seq(kv) + i].len += add[s];
        kv->seq_pos[s] += add[s];
    }
    kv->n_reserved_tokens = n_tokens;
    size_t res = lethe_kv_bytes_resident(kv);
    if (res > kv->bytes_peak) kv->bytes_peak = res;
    return LETHE_OK;
}

void lethe_kv_begin(lethe_kv_cache *kv) {
    size_t n = (size_t)kv->n_seq * streams_per_seq(kv);
    for (size_t i = 0; i < n; i++) {
        kv->streams[i].saved_len = kv->streams[i].len;
        kv->streams[i].saved_n_pages = kv->streams[i].n_pages;
    }
    memcpy(kv->saved_seq_pos, kv->seq_pos, (size_t)kv->n_seq * sizeof(int32_t));
    kv->n_reserved_tokens = 0;
}

void lethe_kv_commit(lethe_kv_cache *kv) { lethe_kv_begin(kv); }

void lethe_kv_rollback(lethe_kv_cache *kv) {
    size_t n = (size_t)kv->n_seq * streams_per_seq(kv);
    for (size_t i = 0; i < n; i++) {
        lethe_kv_stream *st = &kv->streams[i];
        st->len = st->saved_len;
        stream_shrink(kv, st, st->saved_n_pages);
    }
    memcpy(kv->seq_pos, kv->saved_seq_pos, (size_t)kv->n_seq * sizeof(int32_t));
    kv->n_reserved_tokens = 0;
}

void lethe_kv_seq_clear(lethe_kv_cache *kv, int seq) {
    for (size_t i = 0; i < streams_per_seq(kv); i++) {
        lethe_kv_stream *st = &kv->streams[(size_t)seq * streams_per_seq(kv) + i];
        stream_shrink(kv, st, 0);
        st->len = st->saved_len = st->saved_n_pages = 0;
    }
    kv->seq_pos[seq] = kv->saved_seq_pos[seq] = 0;
}

lethe_status lethe_kv_seq_copy(lethe_kv_cache *kv, int src, int dst) {
    if (src == dst) return LETHE_OK;
    lethe_kv_seq_clear(kv, dst);
    int64_t need = 0;
    for (size_t i = 0; i < streams_per_seq(kv); i++)
        need += kv->streams[(size_t)src * streams_per_seq(kv) + i].n_pages;
    if (need > kv->n_free)
        return lethe_fail(LETHE_ERR_CONTEXT_FULL, "kv cache: fork needs %lld pages, %d free",
                          (long long)need, kv->n_free);
    for (size_t i = 0; i < streams_per_seq(kv); i++) {
        const lethe_kv_stream *a = &kv->streams[(size_t)src * streams_per_seq(kv) + i];
        lethe_kv_stream *b = &kv->streams[(size_t)dst * streams_per_seq(kv) + i];
        if (a->n_pages > b->cap_pages) {
            int32_t *p = realloc(b->pages, (size_t)a->n_pages * sizeof(int32_t));
            if (!p) {
                lethe_kv_seq_clear(kv, dst);
                return lethe_fail(LETHE_ERR_OOM, "kv cache: page list");
            }
            b->pages = p;
            b->cap_pages = a->n_pages;
        }
        /* Pages are copied, not shared: a later policy may evict per head
         * differently in each branch. */
        for (int32_t p = 0; p < a->n_pages; p++) {
            int32_t id = kv->free_list[--kv->n_free];
            memcpy(kv->pool + (size_t)id * kv->page_bytes,
                   kv->pool + (size_t)a->pages[p] * kv->page_bytes, kv->page_bytes);
            memcpy(kv->pos + (size_t)id * LETHE_KV_PAGE, kv->pos + (size_t)a->pages[p] * LETHE_KV_PAGE,
                   LETHE_KV_PAGE * sizeof(int32_t));
            b->pages[b->n_pages++] = id;
        }
        b->len = b->saved_len = a->len;
        b->saved_n_pages = b->n_pages;
    }
    kv->seq_pos[dst] = kv->saved_seq_pos[dst] = kv->seq_pos[src];
    size_t res = lethe_kv_bytes_resident(kv);
    if (res > kv->bytes_peak) kv->bytes_peak = res;
    return LETHE_OK;
}
