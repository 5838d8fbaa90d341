/* test_kv_cache.c — the per-(sequence, layer, KV head) paged cache:
 * reservation, transactional rollback, budget exhaustion, fork, clear. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

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
    assert_int_equal(lethe_kv_init(&kv, NSEQ, NL, NH, D, LETHE_F32, 64 * page, 64, NULL), LETHE_OK);
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
    assert_int_equal(lethe_kv_init(&kv, NSEQ, NL, NH, D, LETHE_F32, 64 * page, 64, NULL), LETHE_OK);
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
    assert_int_equal(lethe_kv_init(&kv, NSEQ, NL, NH, D, LETHE_F32, NL * NH * page, 64, NULL), LETHE_OK);
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
    assert_int_equal(lethe_kv_init(&kv, NSEQ, NL, NH, D, LETHE_F32, 64 * page, 64, NULL), LETHE_OK);
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

static void test_bad_init(void **state) {
    (void)state;
    lethe_kv_cache kv;
    assert_int_equal(lethe_kv_init(&kv, 0, NL, NH, D, LETHE_F32, 1 << 20, 8, NULL), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_kv_init(&kv, 1, NL, NH, D, LETHE_Q4_0, 1 << 20, 8, NULL), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_kv_init(&kv, 1, NL, NH, D, LETHE_F32, 0, 8, NULL), LETHE_ERR_INVALID_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_and_layout),
        cmocka_unit_test(test_rollback_restores_everything),
        cmocka_unit_test(test_budget_exhaustion_leaves_cache_untouched),
        cmocka_unit_test(test_fork_copies),
        cmocka_unit_test(test_bad_init),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
