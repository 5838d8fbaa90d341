/* kv_cache.h — the KV cache: storage per (sequence, layer, KV head).
 *
 * Every (seq, layer, kv head) — a "head stream" — has its own length and its
 * own list of pages from one pool. A page holds LETHE_KV_PAGE consecutive
 * slots of that head: keys [P, D], values [P, D] (kv dtype) and the absolute
 * position of each slot. Keys are stored after RoPE; positions are kept, never
 * renumbered, so a policy that drops slots (DMS, later) changes lengths, not
 * the layout. Attention reads only slots [0, len) of each stream.
 *
 * Slot i of a stream lives in page pages[i / P] at offset i % P.
 *
 * Inserting is transactional: a decode call starts with lethe_kv_begin();
 * before each micro-batch runs, lethe_kv_reserve() gives every token of the
 * batch a slot in every stream of its sequence (growing page lists from the
 * pool), recording the slot indices the KV_STORE node uses.
 * lethe_kv_commit() makes everything since begin permanent;
 * lethe_kv_rollback() returns the cache to its state at begin, so a failed
 * decode loses nothing.
 */
#ifndef LETHE_KV_CACHE_H
#define LETHE_KV_CACHE_H

#include "dtype.h"
#include "lethe.h"
#include <stddef.h>
#include <stdint.h>

#define LETHE_KV_PAGE 32   /* slots per page */

typedef struct lethe_kv_stream {
    int32_t len;           /* live slots                                     */
    int32_t n_pages;       /* pages in use                                   */
    int32_t cap_pages;     /* capacity of `pages`                            */
    int32_t *pages;        /* [cap_pages] page ids into the pool             */
    /* state saved by lethe_kv_begin for rollback */
    int32_t saved_len, saved_n_pages;
} lethe_kv_stream;

typedef struct lethe_kv_cache {
    int32_t n_seq, n_layer, n_head_kv, head_dim;
    lethe_dtype type;          /* LETHE_F16 or LETHE_F32                         */
    size_t slot_bytes;         /* bytes of one K row (= one V row)               */
    size_t page_bytes;         /* K block + V block of one page                  */
    int32_t n_pages;           /* pages in the pool                              */
    uint8_t *pool;             /* [n_pages][2][P][D] kv dtype: K block then V    */
    int32_t *pos;              /* [n_pages][P] absolute position of each slot    */
    int32_t *free_list;        /* [n_pages] stack of free page ids               */
    int32_t n_free;
    lethe_kv_stream *streams;  /* [n_seq][n_layer][n_head_kv]                    */
    int32_t *seq_pos;          /* [n_seq] tokens seen by each sequence           */
    int32_t *saved_seq_pos;    /* [n_seq] at lethe_kv_begin                       */
    /* slots reserved for the current micro-batch: for token t, stream
     * (seq_id[t], layer, h) gets slot res_slot[t] (the same in every
     * stream of that sequence for the plain cache). */
    int32_t *res_slot;         /* [max_batch] */
    int32_t max_batch;
    int32_t n_reserved_tokens;
    size_t bytes_peak;
    uint64_t reads;            /* sum of live lengths read by attention          */
} lethe_kv_cache;

/* Allocate a cache; pages = ceil(budget_bytes / page_bytes). */
lethe_status lethe_kv_init(lethe_kv_cache *kv, int n_seq, int n_layer, int n_head_kv,
                           int head_dim, lethe_dtype type, size_t budget_bytes,
                           int max_batch);
void lethe_kv_free(lethe_kv_cache *kv);

static inline lethe_kv_stream *lethe_kv_stream_at(const lethe_kv_cache *kv, int seq,
                                                  int layer, int head) {
    return &kv->streams[((size_t)seq * kv->n_layer + layer) * kv->n_head_kv + head];
}
/* Address of the key / value row of slot i of a stream, and its position. */
static inline void *lethe_kv_k(const lethe_kv_cache *kv, const lethe_kv_stream *s, int32_t i) {
    return kv->pool + (size_t)s->pages[i / LETHE_KV_PAGE] * kv->page_bytes
         + (size_t)(i % LETHE_KV_PAGE) * kv->slot_bytes;
}
static inline void *lethe_kv_v(const lethe_kv_cache *kv, const lethe_kv_stream *s, int32_t i) {
    return kv->pool + (size_t)s->pages[i / LETHE_KV_PAGE] * kv->page_bytes
         + (size_t)LETHE_KV_PAGE * kv->slot_bytes + (size_t)(i % LETHE_KV_PAGE) * kv->slot_bytes;
}
static inline int32_t *lethe_kv_pos(const lethe_kv_cache *kv, const lethe_kv_stream *s, int32_t i) {
    return &kv->pos[(size_t)s->pages[i / LETHE_KV_PAGE] * LETHE_KV_PAGE + i % LETHE_KV_PAGE];
}

/* Give each token of the micro-batch a slot in every stream of its sequence.
 * Fails with LETHE_ERR_CONTEXT_FULL (cache untouched) when the pool is out of pages. */
void lethe_kv_begin(lethe_kv_cache *kv);
lethe_status lethe_kv_reserve(lethe_kv_cache *kv, int32_t n_tokens, const int32_t *seq_id,
                              const int32_t *pos);
void lethe_kv_commit(lethe_kv_cache *kv);
void lethe_kv_rollback(lethe_kv_cache *kv);

void lethe_kv_seq_clear(lethe_kv_cache *kv, int seq);
lethe_status lethe_kv_seq_copy(lethe_kv_cache *kv, int src, int dst);
size_t lethe_kv_bytes_resident(const lethe_kv_cache *kv);

#endif
