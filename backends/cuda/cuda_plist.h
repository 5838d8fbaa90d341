/* cuda_plist.h — the KV cache's page lists kept on the device, uploaded
 * only where they changed.
 *
 * The attention kernels find a stream's slots through its page list
 * (lethe_cu_attn_work.plist: the index of the stream's first page id).
 * Staging every list of every ATTENTION node each step costs O(all pages):
 * 8 sequences at depth 32768 on the Llama-3-8B shape are 2048 streams of
 * 1024 pages, ~8 MiB a step, for lists that change only when a stream
 * gains or loses a page. So the backend keeps a mirror: one device arena
 * of int32 page ids per cache, each (sequence, layer, KV head) stream its
 * own extent in it (a power-of-two capacity, moved to a larger one when
 * the list outgrows it), and a host copy of exactly what the arena holds.
 *
 * Change signal: lethe_kv_stream.plist_gen (kv_cache.h), moved by every
 * change of a stream's list, and kv->plist_clock, moved by any. A sync
 * (cu_plist_sync, once per launch plan and cache) skips the cache when
 * the clock has not moved, else visits the streams whose generation moved
 * and compares their lists with the host copy: only entries that differ,
 * or lie beyond what the device holds, become pending {arena index, page
 * id} pairs (8 bytes each). A page taken over a boundary is 1 pair; the
 * tail pages a compaction, rollback or drop gives back are 0 (the prefix
 * stays); a forked or loaded sequence is its lists' length. A list that
 * outgrows its extent moves to a larger one on the device: a {from, to,
 * count} run (12 bytes) copies what the device holds, pairs add the rest.
 * When the arena itself must grow, the module allocates a larger one and
 * copies the old one into it on the device (nothing crosses the bus). The
 * whole host copy goes up ("full", 4 bytes per entry) only when the
 * device's copy is unknown: first use of a device arena, a failed upload,
 * an upload never applied. The module copies the pending bytes with one
 * host-to-device copy, then a move launch and a scatter launch
 * (k_plist.cu), before the plan's own staging copy and launches (or the
 * replayed graph): the arena's address stays fixed between growths, so
 * captured graphs keep reading it; a growth changes the attention
 * launches' pointer, hence the plan's key (a new capture, like any buffer
 * move).
 *
 * LETHE_CUDA_PLIST_CHECK=1 (m->check): after every sync, every stream's
 * list is compared with the mirror; a difference (a list changed without
 * its generation moving) fails the compute with a message naming the
 * stream. The module also reads the arena back after the compute's sync
 * and compares it with the host copy.
 *
 * Plain C, no CUDA call: the module (cuda_ops.c) and the host tests
 * (tests/test_cuda_plists.c) run the same bookkeeping. The scatter lane is
 * cu_plist_lane, compiled by nvcc for the kernel and by the tests.
 *
 * Legend: S streams of the cache (n_seq x n_layer x Hkv, kv->streams
 * order), E arena entries (int32 page ids).
 */
#ifndef LETHE_CUDA_PLIST_H
#define LETHE_CUDA_PLIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define CU_PLIST_FN static __host__ __device__ __forceinline__
#else
#define CU_PLIST_FN static inline
#endif

/* Lane i of the scatter launch: pair i of the pending pairs [n][2]. */
CU_PLIST_FN void cu_plist_lane(int32_t *arena, const int32_t *pairs, int64_t i) {
    arena[pairs[2 * i]] = pairs[2 * i + 1];
}

/* Lane i of run r of the move launch (before the scatter): runs [n][3]
 * {from, to, count}, a relocated list's entries copied inside the arena.
 * Sources are extents their streams left in this sync and destinations
 * fresh extents, never the same entries (cu_plist_sync), so lanes never
 * race. */
CU_PLIST_FN void cu_plist_move_lane(int32_t *arena, const int32_t *runs, int64_t r, int32_t i) {
    arena[runs[3 * r + 1] + i] = arena[runs[3 * r] + i];
}

#ifndef __CUDACC__
#include "kv_cache.h"

#define CU_PLIST_MIN_CLASS 4    /* extents of at least 2^4 = 16 page ids      */
#define CU_PLIST_CLASSES 31     /* class c: 2^c entries, c < 31                */
#define CU_PLIST_MIN_ARENA 512  /* the first device arena: at least this many   */

typedef struct cu_plist_stats {
    uint64_t syncs;       /* cu_plist_sync calls                                    */
    uint64_t changed;     /* streams whose generation had moved                     */
    uint64_t pairs;       /* page ids uploaded as pairs                             */
    uint64_t moves;       /* relocated lists moved on the device (runs)             */
    uint64_t fulls;       /* whole-arena uploads (first use, growth, invalidation)  */
    uint64_t bytes;       /* stats: bytes applied; last: bytes pending after the sync
                             (pairs 8 each, runs 12, a full upload 4 per arena entry) */
    uint64_t growths;     /* device arenas allocated (the old one copied over)      */
} cu_plist_stats;

typedef struct cu_plist_mirror {
    uint64_t kv_uid;        /* the cache mirrored (kv->uid); 0: none yet               */
    const void *kv_buf;     /* its shared buffer: the mirror goes when that is freed  */
    size_t n_streams;       /* S                                                      */
    int32_t *off;           /* [S] first entry of the stream's extent, -1: none       */
    int32_t *cap;           /* [S] the extent's capacity (a power of two)             */
    int32_t *n_dev;         /* [S] entries [0, n_dev) of the extent are on the device */
    uint64_t *gen;          /* [S] the stream's plist_gen when last synced            */
    int32_t *host;          /* [host_cap] what the arena holds (where n_dev says)     */
    int32_t top, host_cap;  /* entries handed out (bump), host copy's capacity        */
    int32_t *fl[CU_PLIST_CLASSES];   /* free extents per class (offsets)              */
    int32_t fl_n[CU_PLIST_CLASSES], fl_cap[CU_PLIST_CLASSES];
    uint64_t clock_seen;    /* kv->plist_clock at the last sync                       */
    uint64_t dev;           /* the device arena's address, 0: none                    */
    int32_t dev_cap;        /* its entries                                            */
    /* pending upload, until the module (or a test) applies it */
    bool full;              /* the whole host copy [0, top)                           */
    int32_t *pairs;         /* [n_pairs][2] {arena index, page id} (when !full)       */
    size_t n_pairs, cap_pairs;
    int32_t *moves;         /* [n_moves][3] {from, to, count}, before the pairs       */
    size_t n_moves, cap_moves;
    int32_t *defer;         /* [n_defer][2] {offset, class}: extents left in this sync,
                               free once it ends (a move may still read them)         */
    int32_t n_defer, cap_defer;
    bool check;             /* LETHE_CUDA_PLIST_CHECK: compare every list each sync   */
    cu_plist_stats stats;   /* since the mirror was made                              */
    cu_plist_stats last;    /* the last sync's                                        */
} cu_plist_mirror;

/* Replace the device arena (m->dev, 0: none) by one of `entries` int32
 * whose first m->dev_cap entries are the old arena's (copied on the
 * device; the old one is freed whatever happens): *dev its address. A
 * status; on failure the callback reported nothing, and the mirror uploads
 * everything into the next arena it gets. */
typedef int (*cu_plist_alloc_fn)(void *user, cu_plist_mirror *m, size_t entries, uint64_t *dev);

/* Bring the mirror up to date with kv's lists: extents, the host copy and
 * the pending upload (added to what is pending; pairs already pending turn
 * into a full upload, so no arena entry gets two pairs). A new cache
 * (another uid or stream count) starts over. Errors: LETHE_ERR_OOM (host
 * memory, or `alloc` failed: then the mirror keeps no device arena and the
 * caller stages the lists itself), LETHE_ERR_INTERNAL (check mode: a stale
 * list), with a message in err. */
int cu_plist_sync(cu_plist_mirror *m, const lethe_kv_cache *kv, cu_plist_alloc_fn alloc, void *user, char *err,
                  size_t errlen);
/* Every stream's list equal to the mirror's (the host copy is what the
 * device holds once the pending upload is applied). */
int cu_plist_check(const cu_plist_mirror *m, const lethe_kv_cache *kv, char *err, size_t errlen);
/* Bytes the pending upload moves (0: nothing pending). */
static inline size_t cu_plist_pending_bytes(const cu_plist_mirror *m) {
    return m->full ? (size_t)m->top * sizeof(int32_t)
                   : m->n_moves * 3 * sizeof(int32_t) + m->n_pairs * 2 * sizeof(int32_t);
}
/* The pending upload is on the device: count it, forget it. */
void cu_plist_applied(cu_plist_mirror *m);
/* The device's copy is unknown (an upload failed): the next one is full. */
void cu_plist_invalidate(cu_plist_mirror *m);
/* Free the host side (the device arena is the owner's: m->dev). */
void cu_plist_free(cu_plist_mirror *m);

/* The work entry's plist of stream `si` (kv->streams index): its extent. */
static inline int32_t cu_plist_at(const cu_plist_mirror *m, size_t si) { return m->off[si] >= 0 ? m->off[si] : 0; }

/* LETHE_CUDA_PLIST_CHECK=1 in the environment. */
bool cu_plist_check_env(void);
#endif

#endif
