/* kv_cache.h — the KV cache: storage per (sequence, layer, KV head).
 *
 * Every (seq, layer, kv head) — a "head stream" — has its own length and its
 * own list of pages from one pool. A page holds LETHE_KV_PAGE slots of that
 * head: keys [P, D], values [P, D] (kv dtype) and, per slot, the absolute
 * position of its token and the position from which it is no longer visible
 * ("expire"). Keys are stored after RoPE; positions are kept, never
 * renumbered.
 *
 * Visibility, the one rule every attention kernel applies: slot j is visible
 * to a query at position p iff  pos[j] <= p < expire[j].  A token no policy
 * has flagged has expire = LETHE_KV_NEVER; a DMS-flagged token j has
 * expire = j + w + 1 (DESIGN.md §3.1); a free slot ("hole") has
 * pos = LETHE_KV_HOLE and is never visible.
 *
 * Attention reads slots [0, len) of a stream: the live tokens plus at most
 * LETHE_KV_MAX_HOLES holes. Holes come from evictions and are handed to the
 * next inserted token of that stream (DMS in decode: the token leaving the
 * window gives its slot to the next one, no copy). When more slots are freed
 * at once (prefill, score policies), the stream is compacted: keep-flags ->
 * prefix sum -> ascending scatter, so an in-place move never overtakes its
 * source, and the tail pages go back to the pool.
 *
 * A decode call is a transaction:
 *   lethe_kv_begin()                          save every stream's state
 *   per micro-batch:
 *     lethe_kv_reserve()                      a slot per token per stream (holes first)
 *     graph runs: KV_STORE writes rows and DMS flags, ATTENTION reads
 *     lethe_kv_settle()                       queue the tokens flagged by this micro-batch
 *   lethe_kv_commit()                         evict what is no longer visible, compact
 * or lethe_kv_rollback()                      back to the state at begin.
 * Nothing is freed or moved before commit, so a rollback never undoes a copy:
 * within a call, expired tokens are only masked.
 */
#ifndef LETHE_KV_CACHE_H
#define LETHE_KV_CACHE_H

#include "dtype.h"
#include "lethe.h"
#include <stddef.h>
#include <stdint.h>

#define LETHE_KV_PAGE 32             /* slots per page                        */
#define LETHE_KV_MAX_HOLES 4         /* more free slots than this: compact    */
#define LETHE_KV_NEVER INT32_MAX     /* expire of a token that stays          */
#define LETHE_KV_HOLE INT32_MAX      /* pos of a free slot                    */

/* What decides evictions. The cache applies the rule; the graph supplies DMS
 * decisions (KV_STORE) and, for score policies, attention weights. */
typedef enum lethe_kv_rule {
    LETHE_KV_RULE_NONE = 0,   /* keep everything                                   */
    LETHE_KV_RULE_DMS,        /* flagged token j expires at j + w + 1              */
    LETHE_KV_RULE_WINDOW,     /* StreamingLLM: `sinks` first tokens + last `recent` */
    LETHE_KV_RULE_TOVA,       /* over budget: drop the lowest current attention    */
    LETHE_KV_RULE_H2O,        /* recent window + heavy hitters (accumulated attn)  */
    LETHE_KV_RULE_QUEST,      /* keep all; attention reads the top pages only      */
} lethe_kv_rule;

typedef struct lethe_kv_policy {
    lethe_kv_rule rule;
    int32_t window;           /* DMS w                                              */
    int32_t budget;           /* live tokens per head (WINDOW, TOVA, H2O, QUEST)    */
    int32_t sinks;            /* WINDOW: first tokens kept forever                  */
    int32_t recent;           /* H2O: most recent tokens always kept                */
} lethe_kv_policy;

typedef struct lethe_kv_stream {
    int32_t len;           /* slots in use, holes included: attention reads [0, len) */
    int32_t n_pages;       /* pages in use                                       */
    int32_t cap_pages;     /* capacity of `pages`                                */
    int32_t *pages;        /* [cap_pages] page ids into the pool                 */
    int32_t n_holes;
    int32_t holes[LETHE_KV_MAX_HOLES];  /* free slots below len, reused first    */
    int32_t last;          /* slot of the sequence's newest token, -1 if none    */
    int32_t prev;          /* `last` before the current micro-batch: its DMS flag
                              comes from the micro-batch's first token           */
    /* tokens with a finite expire, not yet evicted, in expiry order (FIFO) */
    int32_t *pend;         /* [pend_cap] slots; live entries [pend_head, pend_head + pend_n) */
    int32_t pend_head, pend_n, pend_cap;
    /* state saved by lethe_kv_begin for rollback */
    int32_t saved_len, saved_n_pages, saved_n_holes, saved_last, saved_pend_n, saved_last_expire;
    int32_t saved_holes[LETHE_KV_MAX_HOLES];
    uint32_t move_gen;     /* kv->move_gen when its rows were last queued to move */
    /* The change signal of the page list: kv->plist_clock when pages[0,
     * n_pages) last changed (a page taken or given back: reserve over a page
     * boundary, a compaction's or rollback's or drop's tail pages, fork,
     * sequence clear, state load). Content changes only through
     * stream_push_page / stream_shrink (kv_cache.c), which bump it, so
     * "same generation" means "same list": a device backend keeps a mirror
     * of the lists and uploads only the streams whose generation moved
     * (backends/cuda/cuda_plist.h). 0: never had a page. */
    uint64_t plist_gen;
} lethe_kv_stream;

struct lethe_row_move;

struct lethe_backend;
struct lethe_buffer;

typedef struct lethe_kv_cache {
    int32_t n_seq, n_layer, n_head_kv, head_dim;
    lethe_dtype type;          /* LETHE_F16 or LETHE_F32                         */
    lethe_kv_policy policy;
    size_t slot_bytes;         /* bytes of one K row (= one V row)               */
    size_t page_bytes;         /* K block + V block of one page                  */
    int32_t n_pages;           /* pages in the pool                              */
    uint8_t *pool;             /* [n_pages][2][P][D] kv dtype: K block then V    */
    int32_t *pos;              /* [n_pages][P] absolute position of each slot    */
    int32_t *expire;           /* [n_pages][P] first position it is invisible to */
    float *score;              /* [n_pages][P] attention mass (TOVA, H2O) or NULL */
    float *kmin, *kmax;        /* [n_pages][D] key bounds per page (QUEST) or NULL;
                                  in the shared buffer (kmin_offs, kmax_offs) when
                                  there is one, so device kernels refresh and read
                                  them in place */
    int32_t *free_list;        /* [n_pages] stack of free page ids               */
    int32_t n_free;
    lethe_kv_stream *streams;  /* [n_seq][n_layer][n_head_kv]                    */
    int32_t *seq_pos;          /* [n_seq] tokens seen by each sequence           */
    int32_t *saved_seq_pos;    /* [n_seq] at lethe_kv_begin                       */
    /* The current micro-batch: token t of stream si = layer * Hkv + h of its
     * sequence got slot res_slot[si * max_batch + t]; prev_t[t] is the index
     * of the previous token of the same sequence in the micro-batch, or -1
     * (then the stream's `prev` slot precedes it). */
    int32_t *res_slot;         /* [n_layer * Hkv][max_batch] */
    int32_t *prev_t;           /* [max_batch] */
    int32_t max_batch;
    int32_t n_reserved_tokens;
    int32_t *map;              /* [map_cap] compaction scratch (old slot -> new) */
    int32_t map_cap;
    size_t bytes_peak;
    uint64_t reads;            /* sum of live lengths read by attention          */
    uint64_t evicted;          /* tokens evicted (all streams)                   */
    /* When a device backend offered shared memory (lethe_kv_init's `mem`):
     * the buffer holding pool, pos and expire back to back (pool at offset
     * 0, pos at pos_offs, expire at expire_offs; QUEST: kmin at kmin_offs,
     * kmax at kmax_offs after them), else NULL (malloc'ed). */
    struct lethe_buffer *shared;
    size_t pos_offs, expire_offs;
    size_t kmin_offs, kmax_offs;   /* QUEST with a shared buffer, else 0 */
    /* Pages of the pool whose rows the host copied, moved or wrote since the
     * last lethe_kv_host_done ([lo, hi]; lo > hi: none): with a shared
     * pool, the backend's buffer_host_done places them back on the device. */
    int32_t touched_lo, touched_hi;
    /* Row moves queued for the shared buffer's backend when it moves rows on
     * the device (backend.h buffer_move_rows): a compaction's K/V rows or a
     * fork's pages, all of row size move_row_bytes, in the order the host
     * path would copy them; applied by lethe_kv_flush_moves. */
    struct lethe_row_move *moves;  /* [moves_cap] */
    size_t n_moves, moves_cap, move_row_bytes;
    uint32_t move_gen;         /* bumped by every flush                           */
    uint64_t plist_clock;      /* page-list changes of every stream so far (plist_gen) */
    uint64_t uid;              /* unique in the process (lethe_kv_init): tells a mirror
                                  of the page lists which cache it holds, even when a
                                  freed cache's memory is reused by a new one */
    bool batch_moves;          /* inside commit: compactions leave their moves queued */
} lethe_kv_cache;

/* Allocate a cache; pages = ceil(budget_bytes / page_bytes). `mem`: a
 * backend whose buffer_alloc_shared holds the pool and per-slot metadata so
 * its kernels can read them in place, or NULL (host memory). */
lethe_status lethe_kv_init(lethe_kv_cache *kv, int n_seq, int n_layer, int n_head_kv,
                           int head_dim, lethe_dtype type, size_t budget_bytes,
                           int max_batch, const lethe_kv_policy *policy, struct lethe_backend *mem);
void lethe_kv_free(lethe_kv_cache *kv);

static inline lethe_kv_stream *lethe_kv_stream_at(const lethe_kv_cache *kv, int seq,
                                                  int layer, int head) {
    return &kv->streams[((size_t)seq * kv->n_layer + layer) * kv->n_head_kv + head];
}
/* Address of the key / value row of slot i of a stream, and its metadata. */
static inline void *lethe_kv_k(const lethe_kv_cache *kv, const lethe_kv_stream *s, int32_t i) {
    return kv->pool + (size_t)s->pages[i / LETHE_KV_PAGE] * kv->page_bytes
         + (size_t)(i % LETHE_KV_PAGE) * kv->slot_bytes;
}
static inline void *lethe_kv_v(const lethe_kv_cache *kv, const lethe_kv_stream *s, int32_t i) {
    return kv->pool + (size_t)s->pages[i / LETHE_KV_PAGE] * kv->page_bytes
         + (size_t)LETHE_KV_PAGE * kv->slot_bytes + (size_t)(i % LETHE_KV_PAGE) * kv->slot_bytes;
}
static inline size_t lethe_kv_meta(const lethe_kv_stream *s, int32_t i) {
    return (size_t)s->pages[i / LETHE_KV_PAGE] * LETHE_KV_PAGE + (size_t)(i % LETHE_KV_PAGE);
}
static inline int32_t *lethe_kv_pos(const lethe_kv_cache *kv, const lethe_kv_stream *s, int32_t i) {
    return &kv->pos[lethe_kv_meta(s, i)];
}
static inline int32_t *lethe_kv_expire(const lethe_kv_cache *kv, const lethe_kv_stream *s, int32_t i) {
    return &kv->expire[lethe_kv_meta(s, i)];
}
/* Live tokens of a stream (holes excluded). */
static inline int32_t lethe_kv_live(const lethe_kv_stream *s) { return s->len - s->n_holes; }

/* The host read or wrote rows of pool page `page` with plain pointers. */
static inline void lethe_kv_touch(lethe_kv_cache *kv, int32_t page) {
    if (page < kv->touched_lo) kv->touched_lo = page;
    if (page > kv->touched_hi) kv->touched_hi = page;
}
/* Hand the touched pages back to the shared pool's backend (buffer_host_done)
 * and forget them. Called where the host's row work ends: commit, fork,
 * state load. Never fails (a failure only costs speed). */
void lethe_kv_host_done(lethe_kv_cache *kv);
/* Apply the queued row moves (kv->moves) through the shared buffer's
 * backend, or on the host if it fails. Commit and fork call it; a
 * compaction outside commit does at its end. Rows read by the host after a
 * compaction inside commit must wait for it. */
void lethe_kv_flush_moves(lethe_kv_cache *kv);

void lethe_kv_begin(lethe_kv_cache *kv);
/* Give each token of the micro-batch a slot in every stream of its sequence
 * (a hole when the stream has one). Fails with LETHE_ERR_CONTEXT_FULL when
 * the pool is out of pages, leaving the cache as it was before the call. */
lethe_status lethe_kv_reserve(lethe_kv_cache *kv, int32_t n_tokens, const int32_t *seq_id,
                              const int32_t *pos);
/* After the micro-batch's graph ran: queue the tokens whose expiry is now
 * known (each token once, when its successor has been processed). */
void lethe_kv_settle(lethe_kv_cache *kv, int32_t n_tokens, const int32_t *seq_id);
/* Make the call permanent: evict tokens no longer visible to the next query
 * of their sequence (and, for score policies, those over budget); reuse or
 * compact. Never fails. */
void lethe_kv_commit(lethe_kv_cache *kv);
void lethe_kv_rollback(lethe_kv_cache *kv);

void lethe_kv_seq_clear(lethe_kv_cache *kv, int seq);
lethe_status lethe_kv_seq_copy(lethe_kv_cache *kv, int src, int dst);
size_t lethe_kv_bytes_resident(const lethe_kv_cache *kv);

/* State loading, outside a transaction: make room in a stream's lists for
 * `pages` pages and `pend` FIFO entries (may fail, changes no content), then
 * take the pages from the pool (cannot fail; the caller checked n_free). */
lethe_status lethe_kv_stream_capacity(lethe_kv_cache *kv, lethe_kv_stream *s, int32_t pages, int32_t pend);
void lethe_kv_stream_take(lethe_kv_cache *kv, lethe_kv_stream *s, int32_t pages);

/* Score policies (kv_policy.c): evict down to the budget by the rule, at
 * commit, with `next` the position of the sequence's next token. */
void lethe_kv_policy_evict(lethe_kv_cache *kv, lethe_kv_stream *s, int32_t next);

/* Evict the given slots of a stream now (outside a transaction): holes if
 * few, else compaction. Exposed for tests and score policies. */
void lethe_kv_stream_drop(lethe_kv_cache *kv, lethe_kv_stream *s, const int32_t *slots, int32_t n);
/* Compact a stream: every slot whose pos is LETHE_KV_HOLE goes, the others
 * keep their order (keep-flags -> prefix sum -> ascending scatter). */
void lethe_kv_stream_compact(lethe_kv_cache *kv, lethe_kv_stream *s);

#endif
