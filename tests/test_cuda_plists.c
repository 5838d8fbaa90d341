/* test_cuda_plists.c — the KV cache's page lists kept on the device and
 * uploaded only where they changed (backends/cuda/cuda_plist.h), checked
 * without a GPU: the device arena is emulated (an int32 array that an
 * "apply" writes as the module's upload does: a whole copy, or one scatter
 * lane per pending pair, cu_plist_lane), and the lists the kernels would
 * read from it must equal the cache's after every operation.
 *
 * What is proven:
 *  - the change signal (lethe_kv_stream.plist_gen) is truthful on every
 *    path that changes a list: append over a page boundary, DMS evictions
 *    with holes and compaction, a score policy's compaction (TOVA), fork
 *    (into an empty and into a used sequence), rollback, sequence clear,
 *    state load (through the engine), and random traffic mixing them: a
 *    list that changed always has a moved generation; untouched streams
 *    keep theirs;
 *  - the upload is minimal: exactly the entries the device did not hold
 *    (one pair per stream that crossed a page boundary, none for
 *    compaction, rollback or clear, a whole list for a relocated or forked
 *    stream), or the whole arena once when it grows;
 *  - a stale mirror cannot go unnoticed: a list changed behind the signal's
 *    back fails the check mode (LETHE_CUDA_PLIST_CHECK) with the stream
 *    named, and the same change unchecked leaves the emulated device wrong;
 *  - with the CUDA toolchain: the module's launch plan over the mirror (the
 *    attention reads the arena, no list staged, the launch list stable
 *    across 100 decode steps but for arena growth), and the attention
 *    kernels' host steps driven by the plan's staged bytes and the
 *    emulated arena equal the CPU backend through decode, fork, rollback,
 *    compaction, clear and state load; and the dry run of the Llama-3-8B shape at 8
 *    sequences x 32768 (staged page-list bytes per step before and after,
 *    none and DMS).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "cuda_plist.h"
#include "engine.h"
#include "kv_cache.h"
#include "model.h"
#include "synth.h"
#include "testutil.h"

/* ------------------------------------------------------------------------
 * The emulated device arena and the module's upload (cuda_plist_dev.c). */

typedef struct emu_dev {
    int32_t *arena;
    size_t cap;
    uint64_t addr;
    int allocs;
} emu_dev;

static int emu_alloc(void *user, cu_plist_mirror *m, size_t entries, uint64_t *dev) {
    emu_dev *e = user;
    int32_t *a = malloc(entries * sizeof(int32_t));
    assert_non_null(a);
    memset(a, 0xA5, entries * sizeof(int32_t));   /* a new allocation holds garbage */
    if (m->dev) {   /* the old arena copied over (the module: device to device) */
        assert_true(m->dev == e->addr && (size_t)m->dev_cap <= e->cap && (size_t)m->dev_cap <= entries);
        memcpy(a, e->arena, (size_t)m->dev_cap * sizeof(int32_t));
    }
    free(e->arena);
    e->arena = a;
    e->cap = entries;
    e->addr = 0x500000000000ull + (uint64_t)(++e->allocs) * 0x10000000ull;
    *dev = e->addr;
    return LETHE_OK;
}

/* What lethe_cu_plist_apply does, on the emulated arena. */
static void emu_apply(emu_dev *e, cu_plist_mirror *m) {
    if (cu_plist_pending_bytes(m)) assert_true(m->dev == e->addr);
    if (m->full) {
        assert_true((size_t)m->top <= e->cap);
        if (m->top) memcpy(e->arena, m->host, (size_t)m->top * sizeof(int32_t));
    } else {
        for (size_t r = 0; r < m->n_moves; r++) {   /* the move launch: runs in any order, lanes in any order */
            const int32_t *run = m->moves + 3 * r;
            assert_true(run[1] + run[2] <= (int32_t)e->cap && run[0] + run[2] <= (int32_t)e->cap);
            for (int32_t i = run[2] - 1; i >= 0; i--) cu_plist_move_lane(e->arena, m->moves, (int64_t)r, i);
        }
        for (size_t i = 0; i < m->n_pairs; i++) {
            assert_true(m->pairs[2 * i] >= 0 && (size_t)m->pairs[2 * i] < e->cap);
            cu_plist_lane(e->arena, m->pairs, (int64_t)i);
        }
    }
    cu_plist_applied(m);
}

/* Every stream's list as a kernel reads it (arena + the work entry's
 * plist) equal to the cache's, and no two streams' lists overlap. Returns
 * the first stream that differs (-1: none) when `soft`, else fails. */
static long emu_verify(const emu_dev *e, const cu_plist_mirror *m, const lethe_kv_cache *kv, const char *what,
                       bool soft) {
    const size_t S = (size_t)kv->n_seq * kv->n_layer * kv->n_head_kv;
    uint8_t *owner = calloc(e->cap ? e->cap : 1, 1);
    assert_non_null(owner);
    for (size_t i = 0; i < S; i++) {
        const lethe_kv_stream *s = &kv->streams[i];
        const int32_t off = cu_plist_at(m, i);
        for (int32_t j = 0; j < s->n_pages; j++) {
            assert_true((size_t)(off + j) < e->cap);
            if (e->arena[off + j] != s->pages[j]) {
                free(owner);
                if (soft) return (long)i;
                fail_msg("%s: stream %zu page %d: the device reads %d, the cache has %d", what, i, j,
                         e->arena[off + j], s->pages[j]);
            }
            if (owner[off + j]) fail_msg("%s: arena entry %d is in two lists", what, off + j);
            owner[off + j] = 1;
        }
    }
    free(owner);
    return -1;
}

/* The cache's lists and generations before an operation. */
typedef struct snap {
    size_t S;
    int32_t **pages, *n, *off, *n_dev;
    uint64_t *gen;
} snap;

static void snap_take(snap *sn, const lethe_kv_cache *kv, const cu_plist_mirror *m) {
    sn->S = (size_t)kv->n_seq * kv->n_layer * kv->n_head_kv;
    sn->pages = calloc(sn->S, sizeof *sn->pages);
    sn->n = calloc(sn->S, sizeof *sn->n);
    sn->off = calloc(sn->S, sizeof *sn->off);
    sn->n_dev = calloc(sn->S, sizeof *sn->n_dev);
    sn->gen = calloc(sn->S, sizeof *sn->gen);
    for (size_t i = 0; i < sn->S; i++) {
        const lethe_kv_stream *s = &kv->streams[i];
        sn->n[i] = s->n_pages;
        sn->gen[i] = s->plist_gen;
        sn->pages[i] = malloc(((size_t)s->n_pages + 1) * sizeof(int32_t));
        if (s->n_pages) memcpy(sn->pages[i], s->pages, (size_t)s->n_pages * sizeof(int32_t));
        sn->off[i] = m && m->off ? m->off[i] : -1;
        sn->n_dev[i] = m && m->n_dev ? m->n_dev[i] : 0;
    }
}

static void snap_free(snap *sn) {
    for (size_t i = 0; i < sn->S; i++) free(sn->pages[i]);
    free(sn->pages);
    free(sn->n);
    free(sn->off);
    free(sn->n_dev);
    free(sn->gen);
    memset(sn, 0, sizeof *sn);
}

static bool list_changed(const snap *sn, const lethe_kv_cache *kv, size_t i) {
    const lethe_kv_stream *s = &kv->streams[i];
    if (s->n_pages != sn->n[i]) return true;
    return s->n_pages && memcmp(s->pages, sn->pages[i], (size_t)s->n_pages * sizeof(int32_t)) != 0;
}

typedef struct sync_out {
    int gen_moved, list_changed;
    uint64_t pairs, want_pairs, bytes;
    bool full;
} sync_out;

/* Sync the mirror after an operation (snapshot `sn` taken before it),
 * check it (check mode on), apply it to the emulated arena and verify what
 * the kernels would read. The signal must be truthful (every changed list
 * has a moved generation) and the upload exactly the entries the device
 * did not hold: a stream moved to a new extent sends its whole list,
 * another only the entries that differ from (or lie beyond) what the
 * device held, read from the emulated arena itself. */
static sync_out sync_after(cu_plist_mirror *m, emu_dev *e, const lethe_kv_cache *kv, const snap *sn, const char *what) {
    sync_out o = {0};
    /* the oracle: from the emulated device, before the sync */
    for (size_t i = 0; i < sn->S; i++) {
        const lethe_kv_stream *s = &kv->streams[i];
        const bool moved = s->plist_gen != sn->gen[i], changed = list_changed(sn, kv, i);
        o.gen_moved += moved;
        o.list_changed += changed;
        if (changed && !moved)
            fail_msg("%s: stream %zu's list changed (%d -> %d pages) but its generation did not move", what, i, sn->n[i],
                     s->n_pages);
        if (!moved) continue;   /* a relocated list takes along what the device held of it */
        for (int32_t j = 0; j < s->n_pages; j++)
            o.want_pairs += j >= sn->n_dev[i] || e->arena[sn->off[i] + j] != s->pages[j];
    }
    char err[400];
    m->check = true;
    const bool first = !m->off || m->kv_uid != kv->uid;   /* a new mirror: every list is new to it */
    const int rc = cu_plist_sync(m, kv, emu_alloc, e, err, sizeof err);
    if (rc != LETHE_OK) fail_msg("%s: sync: %s", what, err);
    o.full = m->full;
    o.pairs = m->last.pairs;
    o.bytes = m->last.bytes;
    if (!first) assert_int_equal(m->last.changed, (uint64_t)o.gen_moved);   /* only the streams whose generation moved */
    if (!first && !o.full && o.pairs != o.want_pairs)
        fail_msg("%s: %llu pairs uploaded, the device lacked %llu entries", what, (unsigned long long)o.pairs,
                 (unsigned long long)o.want_pairs);
    if (!o.full) assert_int_equal(o.bytes, o.pairs * 8 + m->n_moves * 12);
    else assert_int_equal(o.bytes, (uint64_t)m->top * 4);
    emu_apply(e, m);
    emu_verify(e, m, kv, what, false);
    return o;
}

/* ------------------------------------------------------------------------
 * Cache traffic, as the engine and the KV_STORE kernel produce it. */

#define PL_W 3   /* DMS window */

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* One micro-batch through the cache: reserve, the DMS flags KV_STORE would
 * set (the token's positive decision gives its predecessor in the stream
 * expire = pos + w, with probability flag_pct %), settle; commit unless
 * `open` (the caller commits or rolls back). */
static lethe_status kv_batch(lethe_kv_cache *kv, int T, const int32_t *seq, int flag_pct, uint64_t seed, bool open) {
    int32_t pos[256];
    assert_true(T <= 256 && T <= kv->max_batch);
    int32_t next[64];
    assert_true(kv->n_seq <= 64);
    for (int q = 0; q < kv->n_seq; q++) next[q] = kv->seq_pos[q];
    for (int t = 0; t < T; t++) pos[t] = next[seq[t]]++;
    lethe_kv_begin(kv);
    const lethe_status st = lethe_kv_reserve(kv, T, seq, pos);
    if (st != LETHE_OK) return st;
    const int Hkv = kv->n_head_kv;
    for (int t = 0; t < T && flag_pct > 0; t++)
        for (int l = 0; l < kv->n_layer; l++)
            for (int h = 0; h < Hkv; h++) {
                const size_t si = (size_t)l * Hkv + h;
                const lethe_kv_stream *s = lethe_kv_stream_at(kv, seq[t], l, h);
                const int32_t pt = kv->prev_t[t];
                const int32_t prev = pt >= 0 ? kv->res_slot[si * kv->max_batch + pt] : s->prev;
                if (prev < 0 || (int)(mix(seed * 1000003u + (uint64_t)t * 131 + si) % 100) >= flag_pct) continue;
                *lethe_kv_expire(kv, s, prev) = pos[t] + kv->policy.window;
            }
    lethe_kv_settle(kv, T, seq);
    if (!open) lethe_kv_commit(kv);
    return LETHE_OK;
}

/* n tokens of one sequence, in micro-batches of at most max_batch. */
static void kv_prefill(lethe_kv_cache *kv, int seq, int n, int flag_pct, uint64_t seed) {
    int32_t ids[256];
    for (int i = 0; i < 256; i++) ids[i] = seq;
    for (int i0 = 0; i0 < n; i0 += kv->max_batch) {
        const int T = n - i0 < kv->max_batch ? n - i0 : kv->max_batch;
        assert_int_equal(kv_batch(kv, T, ids, flag_pct, seed + (uint64_t)i0, false), LETHE_OK);
    }
}

/* One decode step of every sequence. */
static void kv_decode(lethe_kv_cache *kv, int flag_pct, uint64_t seed) {
    int32_t seq[64];
    for (int q = 0; q < kv->n_seq; q++) seq[q] = q;
    assert_int_equal(kv_batch(kv, kv->n_seq, seq, flag_pct, seed, false), LETHE_OK);
}

/* Drop `n` live slots of a stream (more than LETHE_KV_MAX_HOLES: a compaction). */
static void kv_drop_some(lethe_kv_cache *kv, lethe_kv_stream *s, int n, uint64_t seed) {
    int32_t drop[64];
    int k = 0;
    for (int32_t j = (int32_t)(seed % 7); j < s->len && k < n && k < 64; j += 3)
        if (*lethe_kv_pos(kv, s, j) != LETHE_KV_HOLE && *lethe_kv_expire(kv, s, j) == LETHE_KV_NEVER) drop[k++] = j;
    lethe_kv_stream_drop(kv, s, drop, k);
}

static void cache_init(lethe_kv_cache *kv, int n_seq, int n_layer, int Hkv, lethe_kv_rule rule, int pages,
                       int max_batch) {
    lethe_kv_policy pol = {.rule = rule, .window = PL_W, .budget = 48, .recent = 4};
    const size_t page = 2 * (size_t)LETHE_KV_PAGE * lethe_row_size(LETHE_F32, 4);
    assert_int_equal(lethe_kv_init(kv, n_seq, n_layer, Hkv, 4, LETHE_F32, page * (size_t)pages, max_batch, &pol, NULL),
                     LETHE_OK);
}

/* Every path that changes a list, one by one, each followed by a sync: the
 * signal moved where a list changed, and the upload is what the device lacked. */
static void test_kv_paths(void **state) {
    (void)state;
    lethe_kv_cache kv;
    cache_init(&kv, 4, 2, 2, LETHE_KV_RULE_DMS, 4000, 64);
    cu_plist_mirror m = {0};
    emu_dev e = {0};
    snap sn;
    sync_out o;
    /* first use: nothing yet, then prefills: the first upload is whole */
    snap_take(&sn, &kv, &m);
    o = sync_after(&m, &e, &kv, &sn, "empty cache");
    snap_free(&sn);
    assert_int_equal(o.bytes, 0);
    snap_take(&sn, &kv, &m);
    const int len0[4] = {300, 170, 64, 33};
    for (int q = 0; q < 4; q++) kv_prefill(&kv, q, len0[q], 0, 10 + q);
    o = sync_after(&m, &e, &kv, &sn, "prefill");
    snap_free(&sn);
    assert_true(o.full);   /* the first arena */
    print_message("  prefill of 4 sequences: whole arena, %llu bytes\n", (unsigned long long)o.bytes);

    /* append over a page boundary: decode until every stream has crossed once */
    int crossed_steps = 0;
    for (int step = 0; step < 40; step++) {
        snap_take(&sn, &kv, &m);
        kv_decode(&kv, 0, 100 + step);
        o = sync_after(&m, &e, &kv, &sn, "decode");
        int crossed = 0;
        for (size_t i = 0; i < sn.S; i++) crossed += kv.streams[i].n_pages > sn.n[i];
        assert_int_equal(o.gen_moved, crossed);   /* exactly the streams that took a page */
        if (!o.full) assert_int_equal(o.pairs, (uint64_t)crossed);   /* one page id each (a relocation moves the rest) */
        crossed_steps += crossed > 0;
        snap_free(&sn);
    }
    assert_true(crossed_steps >= 4);

    /* DMS evictions: flagged tokens expire at commit (holes, reused), and a
     * bulk eviction compacts and gives tail pages back: nothing to upload */
    for (int step = 0; step < 30; step++) {
        snap_take(&sn, &kv, &m);
        kv_decode(&kv, 80, 200 + step);
        sync_after(&m, &e, &kv, &sn, "DMS decode");
        snap_free(&sn);
    }
    assert_true(kv.evicted > 0);
    snap_take(&sn, &kv, &m);
    lethe_kv_stream *s = lethe_kv_stream_at(&kv, 0, 1, 1);
    const int32_t pages_before = s->n_pages;
    kv_drop_some(&kv, s, 60, 3);
    assert_true(s->n_pages < pages_before);   /* compacted, tail pages back to the pool */
    o = sync_after(&m, &e, &kv, &sn, "compaction");
    assert_int_equal(o.gen_moved, 1);
    assert_int_equal(o.pairs, 0);
    snap_free(&sn);

    /* rollback: a reservation over page boundaries, undone */
    snap_take(&sn, &kv, &m);
    int32_t ids[64];
    for (int i = 0; i < 64; i++) ids[i] = 3;
    assert_int_equal(kv_batch(&kv, 64, ids, 0, 7, true), LETHE_OK);
    lethe_kv_rollback(&kv);
    o = sync_after(&m, &e, &kv, &sn, "rollback");
    assert_int_equal(o.list_changed, 0);
    assert_int_equal(o.pairs, 0);
    snap_free(&sn);
    /* a reservation the device saw, then rolled back and taken again: the
     * same pages come back from the pool, the device still holds them */
    snap_take(&sn, &kv, &m);
    assert_int_equal(kv_batch(&kv, 64, ids, 0, 7, true), LETHE_OK);
    o = sync_after(&m, &e, &kv, &sn, "reservation");
    snap_free(&sn);
    assert_true(o.gen_moved > 0);
    snap_take(&sn, &kv, &m);
    lethe_kv_rollback(&kv);
    o = sync_after(&m, &e, &kv, &sn, "rollback after a sync");
    assert_int_equal(o.pairs, 0);
    snap_free(&sn);
    snap_take(&sn, &kv, &m);
    assert_int_equal(kv_batch(&kv, 64, ids, 0, 7, false), LETHE_OK);
    o = sync_after(&m, &e, &kv, &sn, "the same reservation again");   /* pages in another order: the oracle */
    assert_true(o.gen_moved > 0);
    snap_free(&sn);

    /* fork into an empty sequence and into a used one */
    lethe_kv_seq_clear(&kv, 2);
    snap_take(&sn, &kv, &m);
    assert_int_equal(lethe_kv_seq_copy(&kv, 0, 2), LETHE_OK);
    o = sync_after(&m, &e, &kv, &sn, "fork into an empty sequence");
    int32_t fork_pages = 0;
    for (int l = 0; l < 2; l++)
        for (int h = 0; h < 2; h++) fork_pages += lethe_kv_stream_at(&kv, 2, l, h)->n_pages;
    assert_int_equal(o.gen_moved, 4);   /* sequence 2's streams only */
    assert_true(o.pairs <= (uint64_t)fork_pages);
    print_message("  fork: %d pages, %llu bytes\n", fork_pages, (unsigned long long)o.bytes);
    snap_free(&sn);
    snap_take(&sn, &kv, &m);
    assert_int_equal(lethe_kv_seq_copy(&kv, 1, 3), LETHE_OK);
    sync_after(&m, &e, &kv, &sn, "fork into a used sequence");
    snap_free(&sn);

    /* sequence clear: lists emptied, nothing to upload */
    snap_take(&sn, &kv, &m);
    lethe_kv_seq_clear(&kv, 1);
    o = sync_after(&m, &e, &kv, &sn, "sequence clear");
    assert_int_equal(o.gen_moved, 4);
    assert_int_equal(o.pairs, 0);
    snap_free(&sn);
    snap_take(&sn, &kv, &m);
    kv_prefill(&kv, 1, 90, 50, 77);
    sync_after(&m, &e, &kv, &sn, "prefill after clear");
    snap_free(&sn);

    /* a score policy: TOVA compacts to its budget at commit */
    lethe_kv_cache tv;
    cache_init(&tv, 2, 1, 2, LETHE_KV_RULE_TOVA, 400, 64);
    cu_plist_mirror mt = {0};
    emu_dev et = {0};
    for (int step = 0; step < 12; step++) {
        snap_take(&sn, &tv, &mt);
        for (size_t i = 0; i < (size_t)tv.n_pages * LETHE_KV_PAGE; i++)
            tv.score[i] = (float)(mix(i * 7 + (uint64_t)step) % 1000);
        kv_prefill(&tv, step % 2, 40, 0, 300 + step);
        o = sync_after(&mt, &et, &tv, &sn, "TOVA");
        snap_free(&sn);
    }
    assert_true(tv.evicted > 0);
    print_message("  mirror stats: %llu syncs, %llu streams changed, %llu pairs, %llu whole uploads, %llu bytes\n",
                  (unsigned long long)m.stats.syncs, (unsigned long long)m.stats.changed,
                  (unsigned long long)m.stats.pairs, (unsigned long long)m.stats.fulls,
                  (unsigned long long)m.stats.bytes);
    cu_plist_free(&mt);
    free(et.arena);
    lethe_kv_free(&tv);
    cu_plist_free(&m);
    free(e.arena);
    lethe_kv_free(&kv);
}

/* Random traffic mixing every path, a sync after each operation. */
static void test_kv_random(void **state) {
    (void)state;
    lethe_kv_cache kv;
    cache_init(&kv, 5, 2, 3, LETHE_KV_RULE_DMS, 1500, 48);
    cu_plist_mirror m = {0};
    emu_dev e = {0};
    int count[7] = {0};
    for (int it = 0; it < 600; it++) {
        snap sn;
        snap_take(&sn, &kv, &m);
        const uint64_t r = mix((uint64_t)it + 991);
        const int op = (int)(r % 16), q = (int)((r >> 8) % 5), q2 = (int)((r >> 16) % 5);
        const char *what;
        if (op < 6) {
            what = "decode";
            kv_decode(&kv, 70, r);
        } else if (op < 8) {
            what = "prefill";
            int32_t ids[48];
            for (int i = 0; i < 48; i++) ids[i] = q;
            if (kv_batch(&kv, 1 + (int)((r >> 24) % 48), ids, 60, r, false) != LETHE_OK) lethe_clear_error();
        } else if (op < 10) {
            what = "rollback";
            int32_t ids[48];
            for (int i = 0; i < 48; i++) ids[i] = (int32_t)((q + i) % 5);
            if (kv_batch(&kv, 1 + (int)((r >> 24) % 48), ids, 60, r, true) != LETHE_OK) lethe_clear_error();
            lethe_kv_rollback(&kv);
        } else if (op < 12) {
            what = "drop";
            lethe_kv_stream *s = lethe_kv_stream_at(&kv, q, (int)((r >> 30) % 2), (int)((r >> 34) % 3));
            kv_drop_some(&kv, s, 1 + (int)((r >> 40) % 12), r);
        } else if (op < 14) {
            what = "fork";
            if (lethe_kv_seq_copy(&kv, q, q2) != LETHE_OK) lethe_clear_error();
        } else {
            what = "clear";
            lethe_kv_seq_clear(&kv, q);
        }
        count[op < 6 ? 0 : op < 8 ? 1 : op < 10 ? 2 : op < 12 ? 3 : op < 14 ? 4 : 5]++;
        sync_after(&m, &e, &kv, &sn, what);
        snap_free(&sn);
        if (kv.n_free < 200) {   /* keep room: clear the longest sequence */
            int best = 0;
            for (int k = 1; k < 5; k++)
                if (kv.seq_pos[k] > kv.seq_pos[best]) best = k;
            lethe_kv_seq_clear(&kv, best);
        }
    }
    print_message("  600 operations (%d decode, %d prefill, %d rollback, %d drop, %d fork, %d clear): %llu whole "
                  "uploads, %llu pairs\n",
                  count[0], count[1], count[2], count[3], count[4], count[5], (unsigned long long)m.stats.fulls,
                  (unsigned long long)m.stats.pairs);
    cu_plist_free(&m);
    free(e.arena);
    lethe_kv_free(&kv);
}

/* A list changed behind the signal's back: check mode names the stream;
 * unchecked, the device would read a wrong list. */
static void test_stale_mirror(void **state) {
    (void)state;
    lethe_kv_cache kv;
    cache_init(&kv, 3, 2, 2, LETHE_KV_RULE_DMS, 1000, 64);
    for (int q = 0; q < 3; q++) kv_prefill(&kv, q, 200, 0, q);
    cu_plist_mirror m = {0};
    emu_dev e = {0};
    char err[400];
    assert_int_equal(cu_plist_sync(&m, &kv, emu_alloc, &e, err, sizeof err), LETHE_OK);
    emu_apply(&e, &m);
    /* 1: two page ids swapped by hand (no generation) */
    lethe_kv_stream *s = lethe_kv_stream_at(&kv, 1, 1, 0);
    int32_t t = s->pages[2];
    s->pages[2] = s->pages[5];
    s->pages[5] = t;
    m.check = false;
    assert_int_equal(cu_plist_sync(&m, &kv, emu_alloc, &e, err, sizeof err), LETHE_OK);
    emu_apply(&e, &m);
    const long bad = emu_verify(&e, &m, &kv, "stale", true);
    assert_int_equal(bad, (long)(((size_t)1 * 2 + 1) * 2 + 0));   /* unchecked: the device reads the old list */
    m.check = true;
    assert_int_equal(cu_plist_sync(&m, &kv, emu_alloc, &e, err, sizeof err), LETHE_ERR_INTERNAL);
    print_message("  check mode: %s\n", err);
    assert_non_null(strstr(err, "(seq 1, layer 1, head 0)"));
    assert_non_null(strstr(err, "stale"));
    s->pages[5] = s->pages[2];
    s->pages[2] = t;
    assert_int_equal(cu_plist_sync(&m, &kv, emu_alloc, &e, err, sizeof err), LETHE_OK);
    /* 2: a real fork whose generations are put back (a path that forgot its bump) */
    uint64_t gens[4];
    for (int l = 0; l < 2; l++)
        for (int h = 0; h < 2; h++) gens[l * 2 + h] = lethe_kv_stream_at(&kv, 2, l, h)->plist_gen;
    assert_int_equal(lethe_kv_seq_copy(&kv, 0, 2), LETHE_OK);
    for (int l = 0; l < 2; l++)
        for (int h = 0; h < 2; h++) lethe_kv_stream_at(&kv, 2, l, h)->plist_gen = gens[l * 2 + h];
    assert_int_equal(cu_plist_sync(&m, &kv, emu_alloc, &e, err, sizeof err), LETHE_ERR_INTERNAL);
    assert_non_null(strstr(err, "seq 2"));
    /* 3: another cache at the same address starts over (uid) */
    cu_plist_free(&m);
    free(e.arena);
    memset(&e, 0, sizeof e);
    lethe_kv_free(&kv);
    cache_init(&kv, 3, 2, 2, LETHE_KV_RULE_DMS, 1000, 64);
    kv_prefill(&kv, 0, 100, 0, 1);
    m.check = true;
    assert_int_equal(cu_plist_sync(&m, &kv, emu_alloc, &e, err, sizeof err), LETHE_OK);
    emu_apply(&e, &m);
    const uint64_t uid = kv.uid;
    lethe_kv_free(&kv);
    cache_init(&kv, 3, 2, 2, LETHE_KV_RULE_DMS, 1000, 64);
    assert_true(kv.uid != uid);
    kv_prefill(&kv, 1, 70, 0, 2);
    assert_int_equal(cu_plist_sync(&m, &kv, emu_alloc, &e, err, sizeof err), LETHE_OK);
    emu_apply(&e, &m);
    emu_verify(&e, &m, &kv, "a new cache", false);
    cu_plist_free(&m);
    free(e.arena);
    lethe_kv_free(&kv);
}

/* Through the engine: decoding with DMS evictions, a state saved and
 * loaded (into its own and into another sequence), fork and clear. */
static void test_engine_paths(void **state) {
    (void)state;
    lethe_synth_params sp = lethe_synth_default_params();
    sp.dms_variant = 1;
    sp.dms_window = 4;
    sp.seed = 5;
    char *path = tu_write_temp("", 0);
    if (lethe_synth_write(path, sp) != LETHE_OK) fail_msg("synth: %s", lethe_last_error());
    lethe_status st;
    lethe_model *model = lethe_model_load(path, lethe_model_default_params(), &st);
    assert_non_null(model);
    lethe_context_params p = lethe_context_default_params();
    p.n_ctx = 256;
    p.n_seq_max = 3;
    p.n_threads = 2;
    lethe_context *ctx = lethe_context_new(model, p, &st);
    assert_non_null(ctx);
    const lethe_kv_cache *kv = lethe_context_kv(ctx);
    cu_plist_mirror m = {0};
    emu_dev e = {0};
    snap sn;
    sync_out o;
    int32_t hist[80];
    for (int i = 0; i < 80; i++) {
        int32_t tok = (int32_t)((i * 37 + 11) % 300), s0 = 0;
        hist[i] = tok;
        lethe_batch b = lethe_batch_one(&tok, 1);
        b.seq_id = &s0;
        snap_take(&sn, kv, &m);
        assert_int_equal(lethe_decode(ctx, b), LETHE_OK);
        sync_after(&m, &e, kv, &sn, "engine decode");
        snap_free(&sn);
    }
    assert_true(lethe_get_kv_stats(ctx).evicted > 0);
    void *buf;
    size_t n;
    assert_int_equal(lethe_state_save(ctx, 0, hist, 80, NULL, 0, &buf, &n), LETHE_OK);
    snap_take(&sn, kv, &m);
    assert_int_equal(lethe_seq_fork(ctx, 0, 1), LETHE_OK);
    o = sync_after(&m, &e, kv, &sn, "engine fork");
    snap_free(&sn);
    assert_true(o.gen_moved > 0);
    for (int i = 0; i < 20; i++) {   /* sequence 0 moves on, its lists change */
        int32_t tok = (int32_t)(i * 7 % 300), s0 = 0;
        lethe_batch b = lethe_batch_one(&tok, 1);
        b.seq_id = &s0;
        snap_take(&sn, kv, &m);
        assert_int_equal(lethe_decode(ctx, b), LETHE_OK);
        sync_after(&m, &e, kv, &sn, "engine decode after fork");
        snap_free(&sn);
    }
    snap_take(&sn, kv, &m);
    assert_int_equal(lethe_state_load(ctx, 0, buf, n, NULL, 0, NULL, NULL, NULL), LETHE_OK);
    o = sync_after(&m, &e, kv, &sn, "state load into its sequence");
    print_message("  state load into sequence 0: %d lists changed, %llu bytes\n", o.list_changed,
                  (unsigned long long)o.bytes);
    snap_free(&sn);
    snap_take(&sn, kv, &m);
    assert_int_equal(lethe_state_load(ctx, 2, buf, n, NULL, 0, NULL, NULL, NULL), LETHE_OK);
    o = sync_after(&m, &e, kv, &sn, "state load into another sequence");
    assert_true(o.list_changed > 0);
    print_message("  state load into sequence 2: %d lists changed, %llu bytes\n", o.list_changed,
                  (unsigned long long)o.bytes);
    snap_free(&sn);
    snap_take(&sn, kv, &m);
    assert_int_equal(lethe_seq_clear(ctx, 1), LETHE_OK);
    o = sync_after(&m, &e, kv, &sn, "engine clear");
    assert_int_equal(o.pairs, 0);
    snap_free(&sn);
    /* the whole context's state loaded back */
    void *all;
    size_t na;
    assert_int_equal(lethe_state_save(ctx, -1, NULL, 0, NULL, 0, &all, &na), LETHE_OK);
    for (int i = 0; i < 10; i++) {
        int32_t tok = (int32_t)(i * 3 % 300), s2 = 2;
        lethe_batch b = lethe_batch_one(&tok, 1);
        b.seq_id = &s2;
        assert_int_equal(lethe_decode(ctx, b), LETHE_OK);
    }
    snap_take(&sn, kv, &m);
    assert_int_equal(lethe_state_load(ctx, -1, all, na, NULL, 0, NULL, NULL, NULL), LETHE_OK);
    sync_after(&m, &e, kv, &sn, "state load of every sequence");
    snap_free(&sn);
    free(all);
    free(buf);
    cu_plist_free(&m);
    free(e.arena);
    lethe_context_free(ctx);
    lethe_model_free(model);
    unlink(path);
    free(path);
}

#ifdef LETHE_HAVE_CUDA
/* ------------------------------------------------------------------------
 * The launch plan over the mirror, and the kernels' host steps. */
#include "backend.h"
#include "cuda_plan.h"
#include "executor.h"
#include "graph.h"

int lethe_cu_host_kv_store(const lethe_cu_kv_view *kv, const float *k, const float *v, const float *dec,
                           const lethe_cu_kv_row *rows, int64_t n_rows);
int lethe_cu_host_attention(const lethe_cu_kv_view *kv, const float *q, float *out, const lethe_cu_attn_work *work,
                            int n_blocks, int decode, const int32_t *plists, const int32_t *qpos, int Hkv, int G,
                            float scale, int chunk, int n_split, int cap, float *wts, int wstride);

#define PL_LAYER 1
#define PL_SEQ 4
#define PL_HKV 2
#define PL_D 64
#define PL_G 4

/* A fake device for the plan (addresses from node indices, as
 * test_cuda_host.c's), with the page-list mirror over the emulated arena. */
typedef struct fake {
    const lethe_graph *g;
    bool mirror;
    cu_plist_mirror m;
    emu_dev e;
    int asked;
} fake;

static int fake_resolve(void *user, const lethe_node *n, uint64_t *dev) {
    const fake *f = user;
    *dev = 0x100000000000ull + (uint64_t)(n - f->g->nodes) * 0x100000ull;
    return LETHE_OK;
}
static int fake_scratch(void *user, size_t bytes, uint64_t *dev) {
    (void)user;
    (void)bytes;
    *dev = 0x200000000000ull;
    return LETHE_OK;
}
static int fake_kv_prepare(void *user, const lethe_kv_cache *kv) {
    (void)user;
    (void)kv;
    return LETHE_OK;
}
static int fake_plist(void *user, const lethe_kv_cache *kv, cu_plist_mirror **out) {
    fake *f = user;
    *out = NULL;
    if (!f->mirror) return LETHE_OK;
    f->asked++;
    f->m.check = true;
    char err[400];
    const int rc = cu_plist_sync(&f->m, kv, emu_alloc, &f->e, err, sizeof err);
    if (rc != LETHE_OK) fail_msg("sync: %s", err);
    *out = &f->m;
    return LETHE_OK;
}

static void plan_build(fake *f, lethe_graph *g, bool bucketed, bool mirror, cu_plan *p) {
    f->g = g;
    f->mirror = mirror;
    const cu_plan_env env = {f, f, 132, 0x300000000000ull, fake_resolve, fake_scratch, fake_kv_prepare,
                             LETHE_CU_GEMV_NEW, NULL, 0, 0};
    const cu_plist_env pl = {f, fake_plist};
    char err[200];
    const int rc = cu_plan_build_pl(p, &env, &pl, g, 0, g->n_nodes, bucketed, err, sizeof err);
    if (rc != LETHE_OK) fail_msg("cu_plan_build: %d %s", rc, err);
}

static const cu_region *region_at(const cu_plan *p, uint64_t off) {
    for (int r = 0; r < p->n_regions; r++)
        if (p->regions[r].off == off && !p->regions[r].result) return &p->regions[r];
    fail_msg("no staging region at offset %llu", (unsigned long long)off);
    return NULL;
}
static const cu_launch *launch_of(const cu_plan *p, int kind) {
    for (int k = 0; k < p->n_launches; k++)
        if (p->launches[k].kind == kind) return &p->launches[k];
    fail_msg("no launch of kind %d", kind);
    return NULL;
}
static const void *staged(const cu_plan *p, const cu_launch *l, int s, int kind) {
    if (!((l->staged >> s) & 1u)) fail_msg("launch %d argument %d is not staged", l->kind, s);
    const cu_region *r = region_at(p, l->p[s]);
    assert_int_equal(r->kind, kind);
    return p->stage + r->off;
}

/* One cache with its decode graph: KV_STORE (DMS decisions from `dec`,
 * adapter-style: the decisions are dec exactly) then ATTENTION, one token
 * of each sequence. Two of them, driven alike: the CPU backend runs one,
 * the plan and the kernels' host steps the other. */
typedef struct twin {
    lethe_kv_cache kv;
    lethe_graph *g;
    lethe_node *store, *attn;
    lethe_ubatch ub;
    int32_t seq[PL_SEQ], pos[PL_SEQ];
    float k[PL_SEQ * PL_HKV * PL_D], v[PL_SEQ * PL_HKV * PL_D], q[PL_SEQ * PL_HKV * PL_G * PL_D], dec[PL_SEQ * PL_HKV];
} twin;

static void row_fill(const lethe_kv_cache *kv, void *dst, uint64_t seed) {
    float x[PL_D];
    tu_rand_fill(x, PL_D, seed);
    for (int d = 0; d < PL_D; d++) ((lethe_f16 *)dst)[d] = lethe_f32_to_f16(x[d]);
    (void)kv;
}

/* Rows of every slot of sequence q from a seed of (seq, layer, head, slot). */
static void seq_rows(lethe_kv_cache *kv, int q, uint64_t seed) {
    for (int l = 0; l < kv->n_layer; l++)
        for (int h = 0; h < kv->n_head_kv; h++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(kv, q, l, h);
            for (int32_t j = 0; j < s->len; j++) {
                const uint64_t r = seed * 7919 + (((uint64_t)q * 2 + l) * 2 + h) * 100003 + (uint64_t)j;
                row_fill(kv, lethe_kv_k(kv, s, j), r * 2);
                row_fill(kv, lethe_kv_v(kv, s, j), r * 2 + 1);
            }
        }
}

static void twin_init(twin *t) {
    memset(t, 0, sizeof *t);
    lethe_kv_policy pol = {.rule = LETHE_KV_RULE_DMS, .window = PL_W};
    const size_t page = 2 * (size_t)LETHE_KV_PAGE * lethe_row_size(LETHE_F16, PL_D);
    assert_int_equal(lethe_kv_init(&t->kv, PL_SEQ, 2, PL_HKV, PL_D, LETHE_F16, page * 1400, 64, &pol, NULL), LETHE_OK);
    const int hist[PL_SEQ] = {1500, 700, 1100, 90};
    for (int q = 0; q < PL_SEQ; q++) {
        kv_prefill(&t->kv, q, hist[q], 40, 50 + q);
        seq_rows(&t->kv, q, 1);
    }
    for (int q = 0; q < PL_SEQ; q++) t->seq[q] = q;
    t->ub = (lethe_ubatch){PL_SEQ, t->seq, t->pos};
    lethe_graph *g = t->g = lethe_graph_new(16);
    const int64_t nk[3] = {PL_D, PL_HKV, PL_SEQ}, nq[3] = {PL_D, PL_HKV * PL_G, PL_SEQ}, nd[2] = {PL_HKV, PL_SEQ};
    lethe_node *kn = lethe_input(g, LETHE_F32, 3, nk, t->k, "k");
    lethe_node *vn = lethe_input(g, LETHE_F32, 3, nk, t->v, "v");
    lethe_node *dn = lethe_dms_decision(g, lethe_input(g, LETHE_F32, 2, nd, t->dec, "alpha"), LETHE_DMS_FROM_ADAPTER,
                                        PL_HKV, PL_G, false, 1.0f, 0.0f, 0.0f, PL_LAYER, &t->ub);
    t->store = lethe_kv_store(g, &t->kv, PL_LAYER, kn, vn, dn, &t->ub);
    lethe_node *qn = lethe_input(g, LETHE_F32, 3, nq, t->q, "q");
    t->attn = lethe_attention(g, &t->kv, PL_LAYER, qn, t->store, 1.0f / sqrtf((float)PL_D), &t->ub);
    lethe_set_output(t->attn);
    assert_int_equal(g->status, LETHE_OK);
}

static void twin_free(twin *t) {
    lethe_graph_free(t->g);
    lethe_kv_free(&t->kv);
}

/* The step's token of every sequence reserved, its inputs drawn. */
static void twin_begin(twin *t, int step) {
    for (int q = 0; q < PL_SEQ; q++) t->pos[q] = t->kv.seq_pos[q];
    lethe_kv_begin(&t->kv);
    assert_int_equal(lethe_kv_reserve(&t->kv, PL_SEQ, t->seq, t->pos), LETHE_OK);
    tu_rand_fill(t->k, LETHE_ARRAY_SIZE(t->k), 1000 + (uint64_t)step);
    tu_rand_fill(t->v, LETHE_ARRAY_SIZE(t->v), 2000 + (uint64_t)step);
    tu_rand_fill(t->q, LETHE_ARRAY_SIZE(t->q), 3000 + (uint64_t)step);
    tu_rand_fill(t->dec, LETHE_ARRAY_SIZE(t->dec), 4000 + (uint64_t)step);   /* both signs: flags */
}

static void twin_end(twin *t) {
    lethe_kv_settle(&t->kv, PL_SEQ, t->seq);
    lethe_kv_commit(&t->kv);
}

/* The same operation on both caches (the pool hands out the same pages). */
typedef void (*twin_op)(lethe_kv_cache *kv, int step);
static void op_fork(lethe_kv_cache *kv, int step) {
    (void)step;
    assert_int_equal(lethe_kv_seq_copy(kv, 0, 2), LETHE_OK);
}
static void op_rollback(lethe_kv_cache *kv, int step) {
    int32_t ids[64];
    for (int i = 0; i < 64; i++) ids[i] = 3;
    assert_int_equal(kv_batch(kv, 60, ids, 0, (uint64_t)step, true), LETHE_OK);
    lethe_kv_rollback(kv);
}
static void op_compact(lethe_kv_cache *kv, int step) {
    kv_drop_some(kv, lethe_kv_stream_at(kv, 1, PL_LAYER, 0), 40, (uint64_t)step);
    kv_drop_some(kv, lethe_kv_stream_at(kv, 1, PL_LAYER, 1), 2, (uint64_t)step);
}
static void op_clear(lethe_kv_cache *kv, int step) {
    lethe_kv_seq_clear(kv, 3);
    kv_prefill(kv, 3, 2100, 40, (uint64_t)step);   /* outgrows its extents: the arena grows */
    seq_rows(kv, 3, (uint64_t)step);
}

static double nmse(const float *ref, const float *got, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i])) return INFINITY;
        num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

/* 100 decode steps of 4 sequences at depths of 90 to 1500 tokens (3 to 47
 * pages a stream) with DMS evictions, and a fork, a rollback, a compaction
 * and a clear on the way: the plan stages no list, uploads what the device
 * lacks, keeps its launch list while the arena stays, and the kernels'
 * host steps (KV_STORE from the staged rows, attention from the staged
 * work entries and the emulated arena) give the CPU backend's output. */
static void test_plan_mirror(void **state) {
    (void)state;
    twin ref, emu;
    twin_init(&ref);
    twin_init(&emu);
    lethe_backend *cpu = lethe_backend_cpu_new(1);
    fake f = {0};
    const size_t n_out = LETHE_ARRAY_SIZE(ref.q);
    float y[LETHE_ARRAY_SIZE(ref.q)];
    uint64_t prev_key = 0, prev_dev = 0, bytes_old = 0, bytes_new = 0, pl_bytes_old = 0, pl_bytes_new = 0;
    int32_t prev_span = 0, prev_plcap = 0;
    int keys = 0, growths = 0, crossing_steps = 0;
    uint64_t moves = 0;
    double worst = 0;
    char err0[400];
    assert_int_equal(cu_plist_sync(&f.m, &emu.kv, emu_alloc, &f.e, err0, sizeof err0), LETHE_OK);
    emu_apply(&f.e, &f.m);   /* the prefill's lists on the device */
    snap sn;
    snap_take(&sn, &emu.kv, &f.m);
    for (int step = 0; step < 100; step++) {
        const twin_op op = step == 30 ? op_fork : step == 50 ? op_rollback : step == 70 ? op_compact
                         : step == 85 ? op_clear : NULL;
        if (op) {
            op(&ref.kv, step);
            op(&emu.kv, step);
        }
        twin_begin(&ref, step);
        twin_begin(&emu, step);
        /* the CPU backend */
        lethe_executor *ex = lethe_executor_new(&cpu, 1);
        assert_int_equal(lethe_executor_run(ex, ref.g, NULL, NULL), LETHE_OK);
        float yr[LETHE_ARRAY_SIZE(ref.q)];
        memcpy(yr, ref.attn->t.data, sizeof yr);
        lethe_executor_free(ex);
        /* the plan without a mirror (what was staged before), then with it */
        cu_plan p0, p;
        plan_build(&f, emu.g, true, false, &p0);
        assert_int_equal(f.asked, step);   /* no mirror: no sync */
        sync_out o = {0};
        for (size_t i = 0; i < sn.S; i++) {   /* the oracle, from the emulated device (as sync_after) */
            const lethe_kv_stream *s = &emu.kv.streams[i];
            const bool moved = s->plist_gen != sn.gen[i], changed = list_changed(&sn, &emu.kv, i);
            if (changed && !moved) fail_msg("step %d: stream %zu changed without its generation", step, i);
            o.gen_moved += moved;
            if (!moved) continue;
            for (int32_t j = 0; j < s->n_pages; j++)
                o.want_pairs += j >= sn.n_dev[i] || f.e.arena[sn.off[i] + j] != s->pages[j];
        }
        plan_build(&f, emu.g, true, true, &p);
        assert_int_equal(f.asked, step + 1);   /* once per plan and cache */
        assert_int_equal(p.n_mirrors, 1);
        assert_int_equal(f.m.last.changed, (uint64_t)o.gen_moved);
        if (!f.m.full) assert_int_equal(f.m.last.pairs, o.want_pairs);
        assert_int_equal(p.plist_bytes, cu_plist_pending_bytes(&f.m));
        assert_int_equal(p.plist_staged, 0);
        for (int r = 0; r < p.n_regions; r++) assert_int_not_equal(p.regions[r].kind, CU_R_PLISTS);
        const cu_launch *la = launch_of(&p, CU_K_ATTENTION);
        assert_false((la->staged >> 3) & 1u);
        assert_true(la->p[3] == f.m.dev);   /* the arena: a launch argument */
        assert_true(p0.plist_staged > 0);
        assert_true(p0.stage_size >= p.stage_size + p0.plist_staged - 64);   /* the lists left the staging */
        bytes_old += p0.stage_size;
        bytes_new += p.stage_size + p.plist_bytes;
        pl_bytes_old += p0.plist_staged;
        pl_bytes_new += p.plist_bytes;
        crossing_steps += f.m.last.pairs > 0;
        moves += f.m.n_moves;
        /* the work entries: the tables with the mirror's extents */
        cu_attn_plan t;
        char err[160];
        assert_int_equal(cu_attn_plan_build_at(emu.attn, PL_G, false, LETHE_CU_ATTN_ROWS, f.m.off, &t, err, sizeof err), LETHE_OK);
        assert_int_equal(t.n_plist, 0);
        const lethe_cu_attn_work *work = staged(&p, la, 2, CU_R_WORK);
        assert_memory_equal(work, t.work, (size_t)t.n_blocks * PL_HKV * sizeof *t.work);
        cu_attn_plan_free(&t);
        /* replay: the launch list changes only with the arena or a bucket */
        if (step && p.key != prev_key) {
            const bool why = f.m.dev != prev_dev || p.span_cap != prev_span || p.plist_cap != prev_plcap;
            if (!why) fail_msg("step %d: a new launch list with the same arena and buckets", step);
            keys++;
        }
        growths += step && f.m.dev != prev_dev;
        prev_key = p.key;
        prev_dev = f.m.dev;
        prev_span = p.span_cap;
        prev_plcap = p.plist_cap;
        /* the module's upload, then the kernels' host steps */
        emu_apply(&f.e, &f.m);
        emu_verify(&f.e, &f.m, &emu.kv, "plan step", false);
        const lethe_cu_kv_view view = {emu.kv.pool, emu.kv.pos, emu.kv.expire, emu.kv.page_bytes, emu.kv.slot_bytes,
                                       1, PL_D, NULL, NULL};
        const cu_launch *ls = launch_of(&p, CU_K_KV_STORE);
        assert_int_equal(lethe_cu_host_kv_store(&view, staged(&p, ls, 0, CU_R_INPUT), staged(&p, ls, 1, CU_R_INPUT),
                                                emu.dec, staged(&p, ls, 3, CU_R_KV_ROWS), ls->i[0]),
                         0);
        const int32_t *split = staged(&p, la, 5, CU_R_SPLIT);
        for (size_t j = 0; j < n_out; j++) y[j] = NAN;
        assert_int_equal(lethe_cu_host_attention(&view, staged(&p, la, 0, CU_R_INPUT), y, work, (int)la->i[0],
                                                 (int)la->i[1], f.e.arena, staged(&p, la, 4, CU_R_POS), (int)la->i[2],
                                                 (int)la->i[3], la->f[0], split[0], split[1], (int)la->i[4], NULL, 0),
                         0);
        const double err_n = nmse(yr, y, n_out);
        worst = err_n > worst ? err_n : worst;
        if (!(err_n < 1e-10)) fail_msg("step %d: attention from the mirror: NMSE %.3g against the CPU", step, err_n);
        cu_plan_free(&p0);
        cu_plan_free(&p);
        twin_end(&ref);
        twin_end(&emu);
        for (size_t i = 0; i < sn.S; i++) {   /* both caches evolved alike */
            const lethe_kv_stream *a = &ref.kv.streams[i], *b = &emu.kv.streams[i];
            assert_int_equal(a->len, b->len);
            assert_int_equal(a->n_pages, b->n_pages);
            if (a->n_pages) assert_memory_equal(a->pages, b->pages, (size_t)a->n_pages * sizeof(int32_t));
        }
        snap_free(&sn);
        snap_take(&sn, &emu.kv, &f.m);
    }
    snap_free(&sn);
    print_message("  100 decode steps, 4 sequences (fork, rollback, compaction, clear on the way): attention NMSE <= "
                  "%.2g; %d steps uploaded page ids, %llu lists moved on the device; %d new launch lists (%d "
                  "arena growths)\n",
                  worst, crossing_steps, (unsigned long long)moves, keys, growths);
    print_message("  staged bytes per step: %.0f before, %.0f after (page lists %.0f -> %.1f)\n",
                  (double)bytes_old / 100, (double)bytes_new / 100, (double)pl_bytes_old / 100,
                  (double)pl_bytes_new / 100);
    assert_true(emu.kv.evicted > 0);
    assert_true(crossing_steps >= 5 && crossing_steps < 100);
    assert_true(growths >= 1);         /* the arena grew (copied over on the device) ... */
    assert_true(keys <= growths + 3);  /* ... and only that (or a span bucket) made a new launch list */
    assert_true(pl_bytes_new * 4 < pl_bytes_old);
    cu_plist_free(&f.m);
    free(f.e.arena);
    cpu->iface->free(cpu);
    twin_free(&ref);
    twin_free(&emu);
}

/* A state load (core/state.c) through the engine, then attention over
 * the loaded lists: two contexts given the same history and the same
 * loads (so the same pages), one token per sequence reserved, KV_STORE +
 * ATTENTION of layer 1 on the CPU backend over one, the plan's staged bytes
 * and the emulated arena (synced after the loads) over the other. */
typedef struct sl_graph {
    lethe_graph *g;
    lethe_node *attn;
    lethe_ubatch ub;
    int32_t seq[2], pos[2];
    float k[2 * 2 * 32], v[2 * 2 * 32], q[2 * 4 * 32], dec[2 * 2];
} sl_graph;

static void sl_build(sl_graph *x, lethe_kv_cache *kv) {
    memset(x, 0, sizeof *x);
    const int D = kv->head_dim, Hkv = kv->n_head_kv, G = 2;
    assert_int_equal(D, 32);
    assert_int_equal(Hkv, 2);
    for (int q = 0; q < 2; q++) {
        x->seq[q] = q;
        x->pos[q] = kv->seq_pos[q];
    }
    x->ub = (lethe_ubatch){2, x->seq, x->pos};
    lethe_kv_begin(kv);
    assert_int_equal(lethe_kv_reserve(kv, 2, x->seq, x->pos), LETHE_OK);
    tu_rand_fill(x->k, LETHE_ARRAY_SIZE(x->k), 71);
    tu_rand_fill(x->v, LETHE_ARRAY_SIZE(x->v), 72);
    tu_rand_fill(x->q, LETHE_ARRAY_SIZE(x->q), 73);
    tu_rand_fill(x->dec, LETHE_ARRAY_SIZE(x->dec), 74);
    lethe_graph *g = x->g = lethe_graph_new(16);
    const int64_t nk[3] = {D, Hkv, 2}, nq[3] = {D, Hkv * G, 2}, nd[2] = {Hkv, 2};
    lethe_node *dn = lethe_dms_decision(g, lethe_input(g, LETHE_F32, 2, nd, x->dec, "alpha"), LETHE_DMS_FROM_ADAPTER,
                                        Hkv, G, false, 1.0f, 0.0f, 0.0f, 1, &x->ub);
    lethe_node *st = lethe_kv_store(g, kv, 1, lethe_input(g, LETHE_F32, 3, nk, x->k, "k"),
                                    lethe_input(g, LETHE_F32, 3, nk, x->v, "v"), dn, &x->ub);
    x->attn = lethe_attention(g, kv, 1, lethe_input(g, LETHE_F32, 3, nq, x->q, "q"), st, 1.0f / sqrtf((float)D),
                              &x->ub);
    lethe_set_output(x->attn);
    assert_int_equal(g->status, LETHE_OK);
}

static void test_state_load_attention(void **state) {
    (void)state;
    lethe_synth_params sp = lethe_synth_default_params();
    sp.n_embd = 128;   /* head dim 32: a shape the attention kernels take */
    sp.dms_variant = 1;
    sp.dms_window = 4;
    sp.seed = 9;
    char *path = tu_write_temp("", 0);
    if (lethe_synth_write(path, sp) != LETHE_OK) fail_msg("synth: %s", lethe_last_error());
    lethe_status st;
    lethe_model *model = lethe_model_load(path, lethe_model_default_params(), &st);
    assert_non_null(model);
    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = 256;
    cp.n_seq_max = 2;
    cp.n_threads = 1;
    lethe_context *ctx[3];
    for (int i = 0; i < 3; i++) assert_non_null(ctx[i] = lethe_context_new(model, cp, &st));
    /* the saved sequence: 90 tokens with DMS evictions in context 0 */
    for (int i = 0; i < 90; i++) {
        int32_t tok = (int32_t)((i * 37 + 11) % 300), s0 = 0;
        lethe_batch b = lethe_batch_one(&tok, 1);
        b.seq_id = &s0;
        assert_int_equal(lethe_decode(ctx[0], b), LETHE_OK);
    }
    void *buf;
    size_t n;
    assert_int_equal(lethe_state_save(ctx[0], 0, NULL, 0, NULL, 0, &buf, &n), LETHE_OK);
    /* contexts 1 (CPU) and 2 (the plan): the same other history, then the same loads */
    cu_plist_mirror m = {0};
    emu_dev e = {0};
    for (int c = 1; c < 3; c++)
        for (int i = 0; i < 40; i++) {
            int32_t tok = (int32_t)((i * 11 + 3) % 300), sq = i % 2;
            lethe_batch b = lethe_batch_one(&tok, 1);
            b.seq_id = &sq;
            assert_int_equal(lethe_decode(ctx[c], b), LETHE_OK);
        }
    lethe_kv_cache *kv1 = lethe_context_kv_mut(ctx[1]), *kv2 = lethe_context_kv_mut(ctx[2]);
    snap sn;
    snap_take(&sn, kv2, &m);
    sync_after(&m, &e, kv2, &sn, "before the loads");
    snap_free(&sn);
    for (int q = 1; q >= 0; q--) {
        assert_int_equal(lethe_state_load(ctx[1], q, buf, n, NULL, 0, NULL, NULL, NULL), LETHE_OK);
        snap_take(&sn, kv2, &m);
        assert_int_equal(lethe_state_load(ctx[2], q, buf, n, NULL, 0, NULL, NULL, NULL), LETHE_OK);
        const sync_out o = sync_after(&m, &e, kv2, &sn, "state load");
        print_message("  state load into sequence %d: %d lists changed, %llu bytes uploaded\n", q, o.list_changed,
                      (unsigned long long)o.bytes);
        snap_free(&sn);
    }
    for (size_t i = 0; i < (size_t)kv1->n_seq * kv1->n_layer * kv1->n_head_kv; i++) {
        assert_int_equal(kv1->streams[i].n_pages, kv2->streams[i].n_pages);
        if (kv1->streams[i].n_pages)
            assert_memory_equal(kv1->streams[i].pages, kv2->streams[i].pages, (size_t)kv1->streams[i].n_pages * 4);
    }
    sl_graph r, x;
    sl_build(&r, kv1);
    sl_build(&x, kv2);
    lethe_backend *cpu = lethe_backend_cpu_new(1);
    lethe_executor *ex = lethe_executor_new(&cpu, 1);
    assert_int_equal(lethe_executor_run(ex, r.g, NULL, NULL), LETHE_OK);
    float yr[LETHE_ARRAY_SIZE(r.q)], y[LETHE_ARRAY_SIZE(r.q)];
    memcpy(yr, r.attn->t.data, sizeof yr);
    lethe_executor_free(ex);
    fake f = {0};
    f.m = m;   /* the mirror synced above, its emulated arena */
    f.e = e;
    cu_plan p;
    plan_build(&f, x.g, true, true, &p);
    assert_int_equal(p.plist_staged, 0);
    emu_apply(&f.e, &f.m);
    emu_verify(&f.e, &f.m, kv2, "after the loads", false);
    const lethe_cu_kv_view view = {kv2->pool, kv2->pos, kv2->expire, kv2->page_bytes, kv2->slot_bytes,
                                   kv2->type == LETHE_F16, kv2->head_dim, NULL, NULL};
    const cu_launch *ls = launch_of(&p, CU_K_KV_STORE), *la = launch_of(&p, CU_K_ATTENTION);
    assert_true(la->p[3] == f.m.dev);
    assert_int_equal(lethe_cu_host_kv_store(&view, staged(&p, ls, 0, CU_R_INPUT), staged(&p, ls, 1, CU_R_INPUT), x.dec,
                                            staged(&p, ls, 3, CU_R_KV_ROWS), ls->i[0]),
                     0);
    const int32_t *split = staged(&p, la, 5, CU_R_SPLIT);
    for (size_t j = 0; j < LETHE_ARRAY_SIZE(y); j++) y[j] = NAN;
    assert_int_equal(lethe_cu_host_attention(&view, staged(&p, la, 0, CU_R_INPUT), y, staged(&p, la, 2, CU_R_WORK),
                                             (int)la->i[0], (int)la->i[1], f.e.arena, staged(&p, la, 4, CU_R_POS),
                                             (int)la->i[2], (int)la->i[3], la->f[0], split[0], split[1], (int)la->i[4],
                                             NULL, 0),
                     0);
    const double err_n = nmse(yr, y, LETHE_ARRAY_SIZE(y));
    print_message("  attention over the loaded lists from the mirror: NMSE %.3g against the CPU\n", err_n);
    if (!(err_n < 1e-10)) fail_msg("attention after a state load: NMSE %.3g", err_n);
    cu_plan_free(&p);
    lethe_kv_rollback(kv1);
    lethe_kv_rollback(kv2);
    lethe_graph_free(r.g);
    lethe_graph_free(x.g);
    cpu->iface->free(cpu);
    cu_plist_free(&f.m);
    free(f.e.arena);
    free(buf);
    for (int i = 0; i < 3; i++) lethe_context_free(ctx[i]);
    lethe_model_free(model);
    unlink(path);
    free(path);
}

/* The Llama-3-8B shape (8 KV heads, G = 4) at 8 sequences x 32768 tokens:
 * the page-list bytes a decode step stages, before (every list of every
 * ATTENTION node, plain and bucketed as the plan lays them out) and after
 * (the mirror's upload), for `none` and for DMS at ~8x compression (7 in 8
 * tokens flagged, window 512). Page lists do not depend on the head dim or
 * on the layer, so the cache here has 2 layers of head dim 1 (the pool
 * stays small) and the per-step numbers are scaled to 32 layers. */
static void dry_run(int rule, int flag_pct, uint64_t res[6]) {
    const int n_seq = 8, n_layer = 2, Hkv = 8, depth = 32768, steps = 100;
    lethe_kv_cache kv;
    lethe_kv_policy pol = {.rule = (lethe_kv_rule)rule, .window = 512};
    const size_t page = 2 * (size_t)LETHE_KV_PAGE * lethe_row_size(LETHE_F32, 1);
    const size_t pages = (size_t)n_seq * n_layer * Hkv * ((depth + steps) / LETHE_KV_PAGE + 8);
    assert_int_equal(lethe_kv_init(&kv, n_seq, n_layer, Hkv, 1, LETHE_F32, page * pages, 256, &pol, NULL), LETHE_OK);
    for (int q = 0; q < n_seq; q++) kv_prefill(&kv, q, depth, flag_pct, 7 + (uint64_t)q);
    cu_plist_mirror m = {0};
    emu_dev e = {0};
    char err[400];
    assert_int_equal(cu_plist_sync(&m, &kv, emu_alloc, &e, err, sizeof err), LETHE_OK);
    emu_apply(&e, &m);
    int32_t seq[8], pos[8];
    const lethe_ubatch ub = {n_seq, seq, pos};
    uint64_t plain = 0, bucketed = 0, after = 0, after_max = 0, live = 0;
    for (int step = 0; step < steps; step++) {
        for (int q = 0; q < n_seq; q++) {
            seq[q] = q;
            pos[q] = kv.seq_pos[q];
        }
        kv_decode(&kv, flag_pct, 50000 + (uint64_t)step);   /* reserve, flags, commit */
        for (int q = 0; q < n_seq; q++) pos[q] = kv.seq_pos[q] - 1;
        int32_t max_pl = 64;
        for (int l = 0; l < n_layer; l++) {   /* what each ATTENTION node staged */
            lethe_node n;
            memset(&n, 0, sizeof n);
            n.kv = &kv;
            n.ub = &ub;
            n.iparams[0] = l;
            cu_attn_plan t;
            assert_int_equal(cu_attn_plan_build(&n, 4, false, &t, err, sizeof err), LETHE_OK);
            plain += t.n_plist * 4;
            max_pl = (int32_t)t.n_plist > max_pl ? (int32_t)t.n_plist : max_pl;
            cu_attn_plan_free(&t);
        }
        bucketed += (uint64_t)n_layer * (uint64_t)cu_pow2_ceil(max_pl) * 4;
        m.check = step % 10 == 0 || cu_plist_check_env();
        assert_int_equal(cu_plist_sync(&m, &kv, emu_alloc, &e, err, sizeof err), LETHE_OK);
        assert_false(m.full);   /* growing lists and arenas move on the device */
        after += m.last.bytes;
        after_max = m.last.bytes > after_max ? m.last.bytes : after_max;
        emu_apply(&e, &m);
    }
    emu_verify(&e, &m, &kv, "dry run", false);
    for (int q = 0; q < n_seq; q++)
        for (int l = 0; l < n_layer; l++)
            for (int h = 0; h < Hkv; h++) live += (uint64_t)lethe_kv_live(lethe_kv_stream_at(&kv, q, l, h));
    const uint64_t scale = 32 / n_layer;
    res[0] = plain * scale / steps;
    res[1] = bucketed * scale / steps;
    res[2] = after * scale / steps;
    res[3] = after_max * scale;
    res[4] = (uint64_t)n_seq * n_layer * Hkv * (uint64_t)kv.seq_pos[0] / live;   /* compression, x */
    res[5] = (uint64_t)m.top * 4 * scale;   /* the arena (device bytes) */
    cu_plist_free(&m);
    free(e.arena);
    lethe_kv_free(&kv);
}

static void test_dry_run_8b(void **state) {
    (void)state;
    uint64_t none[6], dms[6];
    dry_run(LETHE_KV_RULE_NONE, 0, none);
    dry_run(LETHE_KV_RULE_DMS, 88, dms);
    print_message("  Llama-3-8B shape, 8 sequences x 32768, 100 decode steps, page-list bytes per step (32 layers):\n");
    print_message("    none:        before %llu (plain) / %llu (bucketed), after %llu on average, %llu at most; "
                  "arena %llu\n",
                  (unsigned long long)none[0], (unsigned long long)none[1], (unsigned long long)none[2],
                  (unsigned long long)none[3], (unsigned long long)none[5]);
    print_message("    DMS (~%llux): before %llu (plain) / %llu (bucketed), after %llu on average, %llu at most; "
                  "arena %llu\n",
                  (unsigned long long)dms[4], (unsigned long long)dms[0], (unsigned long long)dms[1],
                  (unsigned long long)dms[2], (unsigned long long)dms[3], (unsigned long long)dms[5]);
    /* none: 8 x 8 x 1025 pages per layer staged; the mirror: one id per stream that took a page */
    assert_true(none[0] >= 32ull * 8 * 8 * 1024 * 4);
    /* at most every stream crossing at once: a pair (8 bytes) each, and a run
     * (12 bytes) each when the lists outgrow their extents (1024 -> 2048) */
    assert_true(none[3] <= 32ull * 8 * 8 * 20);
    assert_true(none[2] * 100 < none[0]);
    assert_true(dms[4] >= 6);
    assert_true(dms[2] * 100 < dms[0]);
}
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_paths),
        cmocka_unit_test(test_kv_random),
        cmocka_unit_test(test_stale_mirror),
        cmocka_unit_test(test_engine_paths),
#ifdef LETHE_HAVE_CUDA
        cmocka_unit_test(test_plan_mirror),
        cmocka_unit_test(test_state_load_attention),
        cmocka_unit_test(test_dry_run_8b),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
