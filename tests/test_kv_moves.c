/* test_kv_moves.c — the KV cache's row moves through a backend's
 * buffer_move_rows (core/backend.h): a cache whose shared buffer's backend
 * moves rows "on the device" must end bit for bit where the host path ends,
 * over random traffic with budget evictions (TOVA, H2O), DMS expiries,
 * forks, admission failures and rollbacks in between.
 *
 * Two caches get the same calls: `host`, on a fake backend with shared
 * memory and no hook (kv_cache.c copies rows with plain pointers), and
 * `dev`, on one whose buffer_move_rows checks the hook's contract on every
 * batch (destinations pairwise disjoint; no move reads a row an earlier move
 * wrote) and then applies the moves one after another in the given order:
 * a batch in any other order (or a row moved twice, or queued and lost)
 * leaves different bytes. After every call the two whole shared buffers
 * (pool, pos, expire), the scores and the bookkeeping must be equal.
 * test_moves_device runs the same traffic through a real backend's hook. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "common.h"
#include "kv_cache.h"
#include "testutil.h"

enum { NSEQ = 3, NL = 2, NH = 2, D = 4, MAXB = 24 };

static lethe_status seq_apply(lethe_buffer *buf, const lethe_row_move *m, size_t n, size_t row_bytes);

static struct {
    int calls, fail_next;     /* fail_next: refuse that many calls (host fallback) */
    size_t moves, max_batch;
    bool seen_page_rows, seen_slot_rows;
    /* what moves the rows once the contract is checked: seq_apply, or a
     * real backend's buffer_move_rows (the CUDA kernels) */
    lethe_status (*apply)(lethe_buffer *buf, const lethe_row_move *m, size_t n, size_t row_bytes);
} g_mv;

static lethe_status fake_alloc_shared(lethe_backend *be, size_t size, lethe_buffer **out) {
    lethe_buffer *b = calloc(1, sizeof *b);
    assert_non_null(b);
    b->backend = be;
    b->size = size;
    b->impl = b->host_ptr = aligned_alloc(64, (size + 63) / 64 * 64);
    assert_non_null(b->impl);
    memset(b->impl, 0xA5, size);   /* both caches start from the same bytes */
    *out = b;
    return LETHE_OK;
}
static void fake_free(lethe_buffer *b) {
    free(b->impl);
    free(b);
}

static bool overlap(size_t a, size_t b, size_t n) { return a < b + n && b < a + n; }

static lethe_status fake_move_rows(lethe_buffer *buf, const lethe_row_move *m, size_t n, size_t row_bytes) {
    assert_true(n > 0 && row_bytes > 0);
    if (g_mv.fail_next > 0) {   /* refused before anything moved */
        g_mv.fail_next--;
        return lethe_fail(LETHE_ERR_BACKEND, "fake: move refused");
    }
    for (size_t i = 0; i < n; i++) {
        assert_true(m[i].src + row_bytes <= buf->size && m[i].dst + row_bytes <= buf->size);
        for (size_t j = 0; j < i; j++) {
            if (overlap(m[j].dst, m[i].dst, row_bytes)) fail_msg("moves %zu and %zu write one row", j, i);
            if (overlap(m[j].dst, m[i].src, row_bytes))
                fail_msg("move %zu reads the row move %zu wrote: a parallel gather would read it stale", i, j);
        }
    }
    lethe_status st = g_mv.apply(buf, m, n, row_bytes);
    if (st != LETHE_OK) fail_msg("buffer_move_rows: %s", lethe_last_error());
    g_mv.calls++;
    g_mv.moves += n;
    if (n > g_mv.max_batch) g_mv.max_batch = n;
    return LETHE_OK;
}

/* The moves one after another, in the given order: any other order of a
 * compaction's batch ends with different bytes. */
static lethe_status seq_apply(lethe_buffer *buf, const lethe_row_move *m, size_t n, size_t row_bytes) {
    for (size_t i = 0; i < n; i++)
        memmove((uint8_t *)buf->host_ptr + m[i].dst, (uint8_t *)buf->host_ptr + m[i].src, row_bytes);
    return LETHE_OK;
}

static const lethe_backend_iface k_host_iface = {.buffer_free = fake_free, .buffer_alloc_shared = fake_alloc_shared};
static const lethe_backend_iface k_dev_iface = {
    .buffer_free = fake_free, .buffer_alloc_shared = fake_alloc_shared, .buffer_move_rows = fake_move_rows};

static uint64_t rng_next(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void assert_same(const lethe_kv_cache *a, const lethe_kv_cache *b) {
    assert_int_equal(a->shared->size, b->shared->size);
    if (memcmp(a->shared->host_ptr, b->shared->host_ptr, a->shared->size)) {
        size_t i = 0;
        while (((const uint8_t *)a->shared->host_ptr)[i] == ((const uint8_t *)b->shared->host_ptr)[i]) i++;
        fail_msg("shared buffers differ first at byte %zu (page %zu)", i, i / a->page_bytes);
    }
    const size_t n_slots = (size_t)a->n_pages * LETHE_KV_PAGE;
    if (a->score) assert_memory_equal(a->score, b->score, n_slots * sizeof(float));
    assert_int_equal(a->n_free, b->n_free);
    assert_memory_equal(a->free_list, b->free_list, (size_t)a->n_free * sizeof(int32_t));
    assert_memory_equal(a->seq_pos, b->seq_pos, (size_t)a->n_seq * sizeof(int32_t));
    for (size_t i = 0; i < (size_t)a->n_seq * a->n_layer * a->n_head_kv; i++) {
        const lethe_kv_stream *x = &a->streams[i], *y = &b->streams[i];
        assert_int_equal(x->len, y->len);
        assert_int_equal(x->n_pages, y->n_pages);
        assert_memory_equal(x->pages, y->pages, (size_t)x->n_pages * sizeof(int32_t));
        assert_int_equal(x->n_holes, y->n_holes);
        assert_memory_equal(x->holes, y->holes, sizeof x->holes);
        assert_int_equal(x->last, y->last);
        assert_int_equal(x->pend_n, y->pend_n);
        if (x->pend_n)
            assert_memory_equal(x->pend + x->pend_head, y->pend + y->pend_head, (size_t)x->pend_n * sizeof(int32_t));
    }
    assert_int_equal(b->n_moves, 0);   /* nothing left queued between calls */
}

/* The same random traffic on both caches: forks, clears, decode calls of
 * 1-2 micro-batches (rows, scores as the attention fold leaves them, DMS
 * flags), then commit or rollback. */
/* `dev`: the backend of the cache whose rows move through the hook (the
 * fake one, or a real one wrapped by k_dev_iface's checks). */
static void run(const lethe_kv_policy *pol, uint64_t seed, int pool_pages, int iters, lethe_backend *dev) {
    lethe_backend host_be = {&k_host_iface, NULL};
    lethe_kv_cache c[2];
    const size_t page = 2 * LETHE_KV_PAGE * D * sizeof(float);
    assert_int_equal(lethe_kv_init(&c[0], NSEQ, NL, NH, D, LETHE_F32, (size_t)pool_pages * page, MAXB, pol, &host_be),
                     LETHE_OK);
    assert_int_equal(lethe_kv_init(&c[1], NSEQ, NL, NH, D, LETHE_F32, (size_t)pool_pages * page, MAXB, pol, dev),
                     LETHE_OK);
    assert_non_null(c[0].shared);
    assert_non_null(c[1].shared);
    memcpy(c[1].shared->host_ptr, c[0].shared->host_ptr, c[0].shared->size);   /* the same first bytes */
    lethe_status (*apply)(lethe_buffer *, const lethe_row_move *, size_t, size_t) = g_mv.apply;
    memset(&g_mv, 0, sizeof g_mv);
    g_mv.apply = apply;
    uint64_t r = seed;
    float counter = 1.0f;
    int n_rollback = 0, n_fork = 0, n_fallback = 0;
    const int S = NL * NH;
    for (int it = 0; it < iters; it++) {
        const int op = (int)(rng_next(&r) % 12);
        if (op == 0) {   /* fork */
            const int a = (int)(rng_next(&r) % NSEQ), b = (int)(rng_next(&r) % NSEQ);
            const size_t before = g_mv.moves;
            lethe_status s0 = lethe_kv_seq_copy(&c[0], a, b), s1 = lethe_kv_seq_copy(&c[1], a, b);
            assert_int_equal(s0, s1);
            if (s0 == LETHE_OK && a != b && c[0].seq_pos[a]) {
                n_fork++;
                assert_true(g_mv.moves > before);   /* the pages went through the hook */
                g_mv.seen_page_rows = true;
            }
            lethe_clear_error();
        } else if (op == 1) {   /* clear */
            const int a = (int)(rng_next(&r) % NSEQ);
            lethe_kv_seq_clear(&c[0], a);
            lethe_kv_seq_clear(&c[1], a);
        } else {
            lethe_kv_begin(&c[0]);
            lethe_kv_begin(&c[1]);
            bool ok = true;
            const int n_ub = 1 + (int)(rng_next(&r) % 2);
            for (int u = 0; u < n_ub && ok; u++) {
                int32_t seq[MAXB], pos[MAXB], next[NSEQ];
                const int T = 1 + (int)(rng_next(&r) % (op < 8 ? 2 : MAXB));   /* decode or prefill */
                memcpy(next, c[0].seq_pos, sizeof next);
                for (int t = 0; t < T; t++) {
                    seq[t] = (int)(rng_next(&r) % NSEQ);
                    pos[t] = next[seq[t]]++;
                }
                lethe_status s0 = lethe_kv_reserve(&c[0], T, seq, pos), s1 = lethe_kv_reserve(&c[1], T, seq, pos);
                assert_int_equal(s0, s1);
                if (s0 != LETHE_OK) {
                    assert_int_equal(s0, LETHE_ERR_CONTEXT_FULL);
                    lethe_clear_error();
                    ok = false;
                    break;
                }
                /* KV_STORE's side: rows, the previous token's DMS flag */
                for (int t = 0; t < T; t++)
                    for (int si = 0; si < S; si++) {
                        const bool flag = pol->window > 0 && pos[t] > 0 && rng_next(&r) % 2;
                        for (int k = 0; k < 2; k++) {
                            lethe_kv_stream *s = &c[k].streams[(size_t)seq[t] * S + si];
                            const int32_t slot = c[k].res_slot[si * c[k].max_batch + t];
                            float *kr = lethe_kv_k(&c[k], s, slot), *vr = lethe_kv_v(&c[k], s, slot);
                            for (int d = 0; d < D; d++) {
                                kr[d] = counter + 0.25f * d;
                                vr[d] = -counter - 0.25f * d;
                            }
                            if (flag) {
                                const int32_t pt = c[k].prev_t[t];
                                const int32_t prev = pt >= 0 ? c[k].res_slot[si * c[k].max_batch + pt] : s->prev;
                                if (prev >= 0) *lethe_kv_expire(&c[k], s, prev) = pos[t] + pol->window;
                            }
                        }
                        counter += 1.0f;
                    }
                /* the attention fold's scores (TOVA: this step's weight, H2O: accumulated) */
                if (c[0].score)
                    for (int q = 0; q < NSEQ; q++)
                        for (int si = 0; si < S; si++) {
                            const lethe_kv_stream *s = &c[0].streams[(size_t)q * S + si];
                            for (int32_t i = 0; i < s->len; i++) {
                                const float w = (float)(rng_next(&r) % 1000) / 1000.0f;
                                const size_t m = lethe_kv_meta(s, i);
                                for (int k = 0; k < 2; k++)
                                    c[k].score[m] = pol->rule == LETHE_KV_RULE_H2O ? c[k].score[m] + w : w;
                            }
                        }
                lethe_kv_settle(&c[0], T, seq);
                lethe_kv_settle(&c[1], T, seq);
            }
            if (!ok || rng_next(&r) % 5 == 0) {
                lethe_kv_rollback(&c[0]);
                lethe_kv_rollback(&c[1]);
                n_rollback++;
            } else {
                const size_t before = g_mv.moves;
                if (rng_next(&r) % 8 == 0) g_mv.fail_next = 1;   /* the device refuses: host fallback */
                const int fail_before = g_mv.fail_next;
                lethe_kv_commit(&c[0]);
                lethe_kv_commit(&c[1]);
                if (fail_before && !g_mv.fail_next) n_fallback++;
                g_mv.fail_next = 0;
                if (g_mv.moves > before) g_mv.seen_slot_rows = true;
            }
        }
        assert_same(&c[0], &c[1]);
    }
    /* the run really exercised what it claims */
    assert_true(n_rollback > 0);
    assert_true(n_fork > 0 && g_mv.seen_page_rows);
    assert_true(g_mv.seen_slot_rows);      /* compactions went through the hook */
    assert_true(g_mv.max_batch > 2);       /* batched: more than one slot's K and V at once */
    assert_true(n_fallback > 0);
    assert_true(c[1].evicted > 0);
    lethe_kv_free(&c[0]);
    lethe_kv_free(&c[1]);
}

static const lethe_kv_policy k_tova = {.rule = LETHE_KV_RULE_TOVA, .budget = 20};
/* with DMS expiries too: a stream may compact twice in one commit
 * (expiries, then the budget), its first moves still queued */
static const lethe_kv_policy k_h2o = {.rule = LETHE_KV_RULE_H2O, .budget = 24, .recent = 6, .window = 2};
static const lethe_kv_policy k_dms = {.rule = LETHE_KV_RULE_DMS, .window = 3};

static void test_moves_tova(void **state) {
    (void)state;
    lethe_backend be = {&k_dev_iface, NULL};
    g_mv.apply = seq_apply;
    for (uint64_t s = 1; s <= 3; s++) run(&k_tova, 0x9E3779B97F4A7C15ull * s, 200, 250, &be);
}

static void test_moves_h2o(void **state) {
    (void)state;
    lethe_backend be = {&k_dev_iface, NULL};
    g_mv.apply = seq_apply;
    for (uint64_t s = 1; s <= 3; s++) run(&k_h2o, 0xD1B54A32D192ED03ull * s, 200, 250, &be);
}

static void test_moves_dms(void **state) {
    (void)state;
    lethe_backend be = {&k_dev_iface, NULL};
    g_mv.apply = seq_apply;
    for (uint64_t s = 1; s <= 3; s++) run(&k_dms, 0x2545F4914F6CDD1Dull * s, 120, 250, &be);   /* tight: admission failures */
}

/* LETHE_TEST_KV_MOVES_BACKEND=cuda|vulkan (ctest test_cuda_kv_moves,
 * test_vulkan_kv_moves): the same runs with the rows moved by that backend's
 * own buffer_move_rows (the CUDA kernels in its managed buffer; Vulkan's
 * copies through scratch), the contract still checked on every batch.
 * Skips with a message where there is no such device. */
static void test_moves_device(void **state) {
    (void)state;
    const char *name = getenv("LETHE_TEST_KV_MOVES_BACKEND");
    if (!name || !*name) {
        print_message("  LETHE_TEST_KV_MOVES_BACKEND unset: no device run\n");
        skip();
    }
    lethe_backend *real = lethe_backend_gpu_new(name, 0);
    if (!real) {
        print_message("  %s: skipped, no device here (%s)\n", name, lethe_last_error());
        lethe_clear_error();
        skip();
    }
    tu_pin_vulkan_driver();   /* LeakSanitizer names lavapipe's own leaks (tests/lsan.supp) */
    if (!real->iface->buffer_alloc_shared || !real->iface->buffer_move_rows) {
        real->iface->free(real);
        fail_msg("%s offers no shared KV buffer or no buffer_move_rows", name);
    }
    /* its own iface, but every move batch through the contract check first */
    lethe_backend_iface wrapped = *real->iface;
    wrapped.buffer_move_rows = k_dev_iface.buffer_move_rows;
    lethe_backend be = {&wrapped, real->ctx};
    g_mv.apply = real->iface->buffer_move_rows;
    const lethe_kv_policy *pols[] = {&k_tova, &k_h2o, &k_dms};
    for (int i = 0; i < 3; i++) run(pols[i], 0xA24BAED4963EE407ull * (uint64_t)(i + 1), i == 2 ? 120 : 200, 250, &be);
    real->iface->free(real);
}

int main(void) {
    lethe_set_log_level(LETHE_LOG_ERROR);   /* the host fallback's warnings are expected here */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moves_tova),
        cmocka_unit_test(test_moves_h2o),
        cmocka_unit_test(test_moves_dms),
        cmocka_unit_test(test_moves_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
