/* test_kv_cache.c — the per-(sequence, layer, KV head) paged cache:
 * reservation, transactional rollback, budget exhaustion, fork, clear. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kv_cache.h"
#include "testutil.h"

enum { NSEQ = 2, NL = 3, NH = 2, D = 8 };

static void fill_slot(lethe_kv_cache *kv, int seq, int slot, float base) {
    for (int l = 0; l < NL; l++)
        for (int h = 0; h < NH; h++) {
            lethe_kv_stream *s = lethe_kv_stream_at(kv, seq, l, h);
            float *k = lethe_kv_k(kv, s, slot), *v = lethe_kv_v(kv, s, slot);
            for (int d = 0; d < D; d++) {
                k[d] = base + l * 100 + h * 10 + d;
                v[d] = -k[d];
            }
        }
}

static void reserve_seq(lethe_kv_cache *kv, int seq, int n, lethe_status expect) {
    int32_t ids[64], pos[64];
    for (int i = 0; i < n; i++) {
        ids[i] = seq;
        pos[i] = kv->seq_pos[seq] + i;
    }
    assert_int_equal(lethe_kv_reserve(kv, n, ids, pos), expect);
}

static void test_reserve_and_layout(void **state) {
    (void)state;
    lethe_kv_cache kv;
    size_t page = 2 * LETHE_KV_PAGE * D * sizeof(float);
    assert_int_equal(lethe_kv_init(&kv, NSEQ, NL, NH, D, LETHE_F32, 64 * page, 64, NULL, NULL), LETHE_OK);
    assert_int_equal(kv.n_pages, 64);
    lethe_kv_begin(&kv);
    reserve_seq(&kv, 0, 40, LETHE_OK);              /* 40 slots: 2 pages per stream */
    for (int i = 0; i < 40; i++) assert_int_equal(kv.res_slot[i], i);
    for (int i = 0; i < 40; i++) fill_slot(&kv, 0, i, (float)i * 1000);
    lethe_kv_commit(&kv);
    assert_int_equal(kv.seq_pos[0], 40);
    assert_int_equal(kv.n_free, 64 - 2 * NL * NH);
    for (int l = 0; l < NL; l++)
        for (int h = 0; h < NH; h++) {
            lethe_kv_stream *s = lethe_kv_stream_at(&kv, 0, l, h);
            assert_int_equal(s->len, 40);
            for (int i = 0; i < 40; i++) {
                assert_int_equal(*lethe_kv_pos(&kv, s, i), i);
                assert_true(((float *)lethe_kv_k(&kv, s, i))[3] == i * 1000.0f + l * 100 + h * 10 + 3);
                assert_true(((float *)lethe_kv_v(&kv, s, i))[3] == -(i * 1000.0f + l * 100 + h * 10 + 3));
            }
        }
    assert_int_equal(lethe_kv_bytes_resident(&kv), (size_t)2 * NL * NH * page);
    lethe_kv_free(&kv);
}

static void test_rollback_restores_everything(void **state) {
    (void)state;
    lethe_kv_cache kv;
    size_t page = 2 * LETHE_KV_PAGE * D * sizeof(float);
    assert_int_equal(lethe_kv_init(&kv, NSEQ, NL, NH, D, LETHE_F32, 64 * page, 64, NULL, NULL), LETHE_OK);
    lethe_kv_begin(&kv);
    reserve_seq(&kv, 0, 30, LETHE_OK);
    lethe_kv_commit(&kv);
    int free_before = kv.n_free;
    /* a decode call of two micro-batches, the second of another sequence */
    lethe_kv_begin(&kv);
    reserve_seq(&kv, 0, 10, LETHE_OK);              /* crosses into a new page */
    reserve_seq(&kv, 1, 5, LETHE_OK);
    assert_int_equal(kv.seq_pos[0], 40);
    assert_int_equal(kv.seq_pos[1], 5);
    lethe_kv_rollback(&kv);
    assert_int_equal(kv.seq_pos[0], 30);
    assert_int_equal(kv.seq_pos[1], 0);
    assert_int_equal(kv.n_free, free_before);
    assert_int_equal(lethe_kv_stream_at(&kv, 0, NL - 1, NH - 1)->len, 30);
    assert_int_equal(lethe_kv_stream_at(&kv, 1, 0, 0)->len, 0);
    lethe_kv_free(&kv);
}

static void test_budget_exhaustion_leaves_cache_untouched(void **state) {
    (void)state;
    lethe_kv_cache kv;
    size_t page = 2 * LETHE_KV_PAGE * D * sizeof(float);
    /* NL*NH pages: exactly one page for each stream of sequence 0 */
    assert_int_equal(lethe_kv_init(&kv, NSEQ, NL, NH, D, LETHE_F32, NL * NH * page, 64, NULL, NULL), LETHE_OK);
    lethe_kv_begin(&kv);
    reserve_seq(&kv, 0, 32, LETHE_OK);
    lethe_kv_commit(&kv);
    assert_int_equal(kv.n_free, 0);
    lethe_kv_begin(&kv);
    reserve_seq(&kv, 0, 1, LETHE_ERR_CONTEXT_FULL);
    reserve_seq(&kv, 1, 1, LETHE_ERR_CONTEXT_FULL);
    assert_int_equal(kv.seq_pos[0], 32);
    assert_int_equal(kv.seq_pos[1], 0);
    assert_int_equal(kv.n_free, 0);
    /* clearing gives the pages back */
    lethe_kv_seq_clear(&kv, 0);
    assert_int_equal(kv.n_free, NL * NH);
    lethe_kv_free(&kv);
}

static void test_fork_copies(void **state) {
    (void)state;
    lethe_kv_cache kv;
    size_t page = 2 * LETHE_KV_PAGE * D * sizeof(float);
    assert_int_equal(lethe_kv_init(&kv, NSEQ, NL, NH, D, LETHE_F32, 64 * page, 64, NULL, NULL), LETHE_OK);
    lethe_kv_begin(&kv);
    reserve_seq(&kv, 0, 33, LETHE_OK);
    for (int i = 0; i < 33; i++) fill_slot(&kv, 0, i, (float)i);
    lethe_kv_commit(&kv);
    assert_int_equal(lethe_kv_seq_copy(&kv, 0, 1), LETHE_OK);
    assert_int_equal(kv.seq_pos[1], 33);
    for (int l = 0; l < NL; l++)
        for (int h = 0; h < NH; h++) {
            lethe_kv_stream *a = lethe_kv_stream_at(&kv, 0, l, h), *b = lethe_kv_stream_at(&kv, 1, l, h);
            assert_int_equal(b->len, 33);
            for (int i = 0; i < 33; i++) {
                assert_memory_equal(lethe_kv_k(&kv, a, i), lethe_kv_k(&kv, b, i), D * sizeof(float));
                assert_memory_equal(lethe_kv_v(&kv, a, i), lethe_kv_v(&kv, b, i), D * sizeof(float));
                assert_int_equal(*lethe_kv_pos(&kv, b, i), i);
                assert_ptr_not_equal(lethe_kv_k(&kv, a, i), lethe_kv_k(&kv, b, i));
            }
        }
    /* the branches diverge independently */
    lethe_kv_begin(&kv);
    reserve_seq(&kv, 1, 1, LETHE_OK);
    lethe_kv_commit(&kv);
    assert_int_equal(kv.seq_pos[0], 33);
    assert_int_equal(kv.seq_pos[1], 34);
    lethe_kv_free(&kv);
}

/* ---- a shared pool: the pages the host touched go back to its backend -- */

static struct {
    int calls;
    size_t lo, hi;   /* union of the ranges handed back */
} g_done;

static lethe_status fake_alloc_shared(lethe_backend *be, size_t size, lethe_buffer **out) {
    lethe_buffer *b = calloc(1, sizeof *b);
    assert_non_null(b);
    b->backend = be;
    b->size = size;
    b->impl = b->host_ptr = aligned_alloc(64, (size + 63) / 64 * 64);
    assert_non_null(b->impl);
    *out = b;
    return LETHE_OK;
}
static void fake_free(lethe_buffer *b) {
    free(b->impl);
    free(b);
}
static lethe_status fake_host_done(lethe_buffer *b, size_t offs, size_t size) {
    assert_true(size > 0 && offs + size <= b->size);
    if (!g_done.calls || offs < g_done.lo) g_done.lo = offs;
    if (!g_done.calls || offs + size > g_done.hi) g_done.hi = offs + size;
    g_done.calls++;
    return LETHE_OK;
}
static const lethe_backend_iface k_fake_iface = {
    .buffer_free = fake_free, .buffer_alloc_shared = fake_alloc_shared, .buffer_host_done = fake_host_done};

/* Every page of the stream inside the ranges handed back. */
static void assert_pages_done(const lethe_kv_cache *kv, const lethe_kv_stream *s) {
    for (int32_t p = 0; p < s->n_pages; p++) {
        assert_true((size_t)s->pages[p] * kv->page_bytes >= g_done.lo);
        assert_true((size_t)(s->pages[p] + 1) * kv->page_bytes <= g_done.hi);
    }
}

static void test_shared_pool_host_done(void **state) {
    (void)state;
    lethe_backend fake = {&k_fake_iface, NULL};
    memset(&g_done, 0, sizeof g_done);
    lethe_kv_cache kv;
    size_t page = 2 * LETHE_KV_PAGE * D * sizeof(float);
    assert_int_equal(lethe_kv_init(&kv, NSEQ, NL, NH, D, LETHE_F32, 64 * page, 64, NULL, &fake), LETHE_OK);
    assert_non_null(kv.shared);
    /* plain decode traffic: the kernels' side, nothing handed back */
    lethe_kv_begin(&kv);
    reserve_seq(&kv, 0, 40, LETHE_OK);
    for (int i = 0; i < 40; i++) fill_slot(&kv, 0, i, (float)i);
    lethe_kv_commit(&kv);
    assert_int_equal(g_done.calls, 0);
    /* a fork copies pages on the host: source and copy handed back, once */
    assert_int_equal(lethe_kv_seq_copy(&kv, 0, 1), LETHE_OK);
    assert_int_equal(g_done.calls, 1);
    for (int l = 0; l < NL; l++)
        for (int h = 0; h < NH; h++) {
            assert_pages_done(&kv, lethe_kv_stream_at(&kv, 0, l, h));
            assert_pages_done(&kv, lethe_kv_stream_at(&kv, 1, l, h));
        }
    lethe_kv_begin(&kv);
    lethe_kv_commit(&kv);   /* nothing touched since */
    assert_int_equal(g_done.calls, 1);
    /* more drops than holes: a compaction moves rows; the commit hands them back */
    memset(&g_done, 0, sizeof g_done);
    lethe_kv_begin(&kv);
    lethe_kv_stream *s = lethe_kv_stream_at(&kv, 1, 2, 1);
    const int32_t drop[6] = {1, 3, 5, 7, 9, 11};
    lethe_kv_stream_drop(&kv, s, drop, 6);
    assert_int_equal(s->len, 34);   /* compacted */
    assert_int_equal(g_done.calls, 0);
    lethe_kv_commit(&kv);
    assert_int_equal(g_done.calls, 1);
    assert_pages_done(&kv, s);
    float *k = lethe_kv_k(&kv, s, 1);   /* old slot 2 moved to 1: its row came along */
    assert_true(k[0] == 2.0f + 2 * 100 + 1 * 10);
    lethe_kv_free(&kv);
}

/* ---- random DMS traffic against a naive tracker ----------------------- */

enum { RS = 3, RL = 2, RH = 2, RD = 4, RMAXPOS = 2048 };

typedef struct {
    int32_t seq_pos[RS];
    uint8_t flag[RS][RL * RH][RMAXPOS];   /* token flagged by its successor */
    float val[RS][RL * RH][RMAXPOS];      /* the row written for the token (unique) */
} naive;

/* The cache must hold exactly the tokens the next query of each sequence
 * sees, with their rows, flags (expiry) and no leaked page. */
static void check_against(const lethe_kv_cache *kv, const naive *nv, int w) {
    int32_t pages = 0;
    for (int q = 0; q < RS; q++) {
        assert_int_equal(kv->seq_pos[q], nv->seq_pos[q]);
        for (int si = 0; si < RL * RH; si++) {
            const lethe_kv_stream *s = &kv->streams[(size_t)q * RL * RH + si];
            const int32_t next = nv->seq_pos[q];
            uint8_t seen[RMAXPOS] = {0};
            int live = 0;
            for (int i = 0; i < s->len; i++) {
                const int32_t p = *lethe_kv_pos(kv, s, i);
                if (p == LETHE_KV_HOLE) continue;
                assert_true(p >= 0 && p < next && !seen[p]);
                seen[p] = 1;
                live++;
                if (((const float *)lethe_kv_k(kv, s, i))[0] != nv->val[q][si][p])
                    fail_msg("seq %d stream %d slot %d pos %d: key %g", q, si, i, p, (double)((const float *)lethe_kv_k(kv, s, i))[0]);
                assert_true(((const float *)lethe_kv_v(kv, s, i))[RD - 1] == -nv->val[q][si][p]);
                const int32_t e = *lethe_kv_expire(kv, s, i);
                assert_int_equal(e, nv->flag[q][si][p] ? p + w + 1 : LETHE_KV_NEVER);
            }
            for (int j = 0; j < next; j++) {
                const bool gone = nv->flag[q][si][j] && j + w + 1 <= next;
                if (seen[j] == gone) fail_msg("seq %d stream %d token %d: cache %d, naive %d", q, si, j, seen[j], !gone);
            }
            assert_int_equal(lethe_kv_live(s), live);
            assert_true(s->n_holes <= LETHE_KV_MAX_HOLES);
            assert_int_equal(s->n_pages, (s->len + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE);
            pages += s->n_pages;
        }
    }
    assert_int_equal(pages + kv->n_free, kv->n_pages);   /* no page leaked or shared */
}

static uint64_t rng_next(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void random_run(int w, uint64_t seed, int pool_pages) {
    lethe_kv_cache kv;
    const size_t page = 2 * LETHE_KV_PAGE * RD * sizeof(float);
    lethe_kv_policy pol = {.rule = LETHE_KV_RULE_DMS, .window = w};
    assert_int_equal(lethe_kv_init(&kv, RS, RL, RH, RD, LETHE_F32, (size_t)pool_pages * page, 16, &pol, NULL), LETHE_OK);
    static naive nv, saved;
    memset(&nv, 0, sizeof nv);
    uint64_t r = seed;
    int n_full = 0, n_rollback = 0, n_evicted_checks = 0;
    float counter = 1.0f;
    for (int it = 0; it < 300; it++) {
        const int op = (int)(rng_next(&r) % 10);
        if (op == 0) {   /* fork */
            const int a = (int)(rng_next(&r) % RS), b = (int)(rng_next(&r) % RS);
            if (lethe_kv_seq_copy(&kv, a, b) == LETHE_OK && a != b) {
                nv.seq_pos[b] = nv.seq_pos[a];
                memcpy(nv.flag[b], nv.flag[a], sizeof nv.flag[a]);
                memcpy(nv.val[b], nv.val[a], sizeof nv.val[a]);
            } else if (a != b) {   /* refused: dst was cleared first */
                nv.seq_pos[b] = 0;
                memset(nv.flag[b], 0, sizeof nv.flag[b]);
            }
        } else if (op == 1) {   /* clear */
            const int a = (int)(rng_next(&r) % RS);
            lethe_kv_seq_clear(&kv, a);
            nv.seq_pos[a] = 0;
            memset(nv.flag[a], 0, sizeof nv.flag[a]);
        } else {   /* a decode call of 1-3 micro-batches */
            memcpy(&saved, &nv, sizeof nv);
            lethe_kv_begin(&kv);
            bool ok = true;
            const int n_ub = 1 + (int)(rng_next(&r) % 3);
            for (int u = 0; u < n_ub && ok; u++) {
                int32_t seq[16], pos[16];
                const int T = 1 + (int)(rng_next(&r) % (op < 6 ? 3 : 16));
                int32_t next[RS];
                memcpy(next, kv.seq_pos, sizeof next);
                int n = 0;
                for (int t = 0; t < T; t++) {
                    const int q = (int)(rng_next(&r) % RS);
                    if (next[q] >= RMAXPOS - 1) continue;
                    seq[n] = q;
                    pos[n++] = next[q]++;
                }
                if (!n) continue;
                lethe_status st = lethe_kv_reserve(&kv, n, seq, pos);
                if (st != LETHE_OK) {
                    assert_int_equal(st, LETHE_ERR_CONTEXT_FULL);
                    n_full++;
                    ok = false;
                    break;
                }
                /* what KV_STORE does: rows, then the previous token's flag */
                for (int t = 0; t < n; t++)
                    for (int si = 0; si < RL * RH; si++) {
                        lethe_kv_stream *s = &kv.streams[(size_t)seq[t] * RL * RH + si];
                        const int32_t slot = kv.res_slot[si * kv.max_batch + t];
                        float *k = lethe_kv_k(&kv, s, slot), *v = lethe_kv_v(&kv, s, slot);
                        for (int d = 0; d < RD; d++) k[d] = v[d] = 0;
                        k[0] = nv.val[seq[t]][si][pos[t]] = counter;
                        v[RD - 1] = -counter;
                        counter += 1.0f;
                        if (pos[t] > 0 && rng_next(&r) % 2) {
                            const int32_t pt = kv.prev_t[t];
                            const int32_t prev = pt >= 0 ? kv.res_slot[si * kv.max_batch + pt] : s->prev;
                            assert_true(prev >= 0);
                            assert_int_equal(*lethe_kv_pos(&kv, s, prev), pos[t] - 1);
                            *lethe_kv_expire(&kv, s, prev) = pos[t] + w;
                            nv.flag[seq[t]][si][pos[t] - 1] = 1;
                        }
                    }
                lethe_kv_settle(&kv, n, seq);
                for (int q = 0; q < RS; q++) nv.seq_pos[q] = next[q];
            }
            if (!ok || rng_next(&r) % 5 == 0) {
                lethe_kv_rollback(&kv);
                memcpy(&nv, &saved, sizeof nv);
                n_rollback++;
            } else {
                lethe_kv_commit(&kv);
            }
        }
        check_against(&kv, &nv, w);
        n_evicted_checks += kv.evicted > 0;
    }
    assert_true(n_rollback > 0);
    if (pool_pages < 40) assert_true(n_full > 0);   /* the small pool really ran out */
    else assert_true(n_evicted_checks > 0);         /* the roomy one really evicted */
    for (int q = 0; q < RS; q++) lethe_kv_seq_clear(&kv, q);
    assert_int_equal(kv.n_free, kv.n_pages);   /* the budget returns to zero */
    assert_int_equal(lethe_kv_bytes_resident(&kv), 0);
    lethe_kv_free(&kv);
}

static void test_random_dms_against_naive(void **state) {
    (void)state;
    const int windows[] = {0, 1, 3, 8, 40};
    for (int i = 0; i < 5; i++) {
        random_run(windows[i], 0x1234567ull + (uint64_t)i, 400);   /* roomy pool */
        random_run(windows[i], 0x7654321ull + (uint64_t)i, 14);    /* tight pool: admission failures */
    }
}

static void test_bad_init(void **state) {
    (void)state;
    lethe_kv_cache kv;
    assert_int_equal(lethe_kv_init(&kv, 0, NL, NH, D, LETHE_F32, 1 << 20, 8, NULL, NULL), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_kv_init(&kv, 1, NL, NH, D, LETHE_Q4_0, 1 << 20, 8, NULL, NULL), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_kv_init(&kv, 1, NL, NH, D, LETHE_F32, 0, 8, NULL, NULL), LETHE_ERR_INVALID_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_and_layout),
        cmocka_unit_test(test_rollback_restores_everything),
        cmocka_unit_test(test_budget_exhaustion_leaves_cache_untouched),
        cmocka_unit_test(test_fork_copies),
        cmocka_unit_test(test_shared_pool_host_done),
        cmocka_unit_test(test_random_dms_against_naive),
        cmocka_unit_test(test_bad_init),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
