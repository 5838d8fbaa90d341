/* test_state.c — saving and restoring sequences: after a load, decoding goes
 * on bit for bit as if the context had never stopped (with DMS evictions,
 * holes and pending flags in the saved cache, one sequence or all), and a
 * state from another model, under other KV settings, truncated or corrupted,
 * or too big for the pool is refused with the cache left as it was. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "model.h"
#include "synth.h"
#include "testutil.h"

static char *g_path, *g_other;
static lethe_model *g_model, *g_model2;

static char *synth(uint64_t seed) {
    lethe_synth_params p = lethe_synth_default_params();
    p.dms_variant = 1;
    p.dms_window = 4;
    p.seed = seed;
    const char *be = getenv("LETHE_TEST_STATE_BACKEND");
    if (be && *be) p.n_embd = 128;   /* head dim 32: the CUDA attention kernels take 32/64/128/256, not 16 */
    char *path = tu_write_temp("", 0);
    if (lethe_synth_write(path, p) != LETHE_OK) fail_msg("synth: %s", lethe_last_error());
    return path;
}

static int setup(void **state) {
    (void)state;
    g_path = synth(5);
    g_other = synth(6);
    lethe_status st;
    /* LETHE_TEST_STATE_BACKEND=cuda (ctest test_cuda_state_emu, on the CPU
     * emulator of the device): the same saves and loads with the cache on
     * that backend, whose page-list mirror must follow every load */
    lethe_model_params mp = lethe_model_default_params();
    const char *be = getenv("LETHE_TEST_STATE_BACKEND");
    if (be && *be) mp.backend = be;
    g_model = lethe_model_load(g_path, mp, &st);
    g_model2 = lethe_model_load(g_other, mp, &st);
    if (!g_model || !g_model2) fail_msg("load: %s", lethe_last_error());
    return 0;
}

static int teardown(void **state) {
    (void)state;
    lethe_model_free(g_model);
    lethe_model_free(g_model2);
    unlink(g_path);
    unlink(g_other);
    free(g_path);
    free(g_other);
    return 0;
}

static lethe_context *ctx_of(lethe_model *m, int n_seq, lethe_kv_policy_kind pol, size_t kv_bytes) {
    lethe_context_params p = lethe_context_default_params();
    p.n_ctx = 128;
    p.n_seq_max = n_seq;
    p.n_threads = 2;
    p.kv_policy = pol;
    p.kv_budget_bytes = kv_bytes;
    lethe_status st;
    lethe_context *c = lethe_context_new(m, p, &st);
    if (!c) fail_msg("context: %s", lethe_last_error());
    return c;
}

static int32_t tok_at(int i) { return (int32_t)((i * 37 + 11) % 300); }

static void feed(lethe_context *c, int seq, int from, int to) {
    for (int i = from; i < to; i++) {
        int32_t t = tok_at(i + 100 * seq), s = seq;
        lethe_batch b = lethe_batch_one(&t, 1);
        b.seq_id = &s;
        assert_int_equal(lethe_decode(c, b), LETHE_OK);
    }
}

/* logits of steps [from, to) of sequence seq, [to - from][V] */
static float *continue_seq(lethe_context *c, int seq, int from, int to) {
    const int V = lethe_n_vocab(g_model);
    float *out = malloc(sizeof(float) * (size_t)(to - from) * V);
    for (int i = from; i < to; i++) {
        feed(c, seq, i, i + 1);
        memcpy(out + (size_t)(i - from) * V, lethe_get_logits(c, -1), sizeof(float) * V);
    }
    return out;
}

static void test_resume_exactly(void **state) {
    (void)state;
    const int V = lethe_n_vocab(g_model);
    lethe_context *a = ctx_of(g_model, 1, LETHE_KV_POLICY_AUTO, 0);
    feed(a, 0, 0, 30);
    assert_true(lethe_get_kv_stats(a).evicted > 0);   /* the saved cache has evicted slots */
    int32_t hist[30];
    for (int i = 0; i < 30; i++) hist[i] = tok_at(i);
    void *buf;
    size_t n;
    assert_int_equal(lethe_state_save(a, 0, hist, 30, "hello", 5, &buf, &n), LETHE_OK);
    float *want = continue_seq(a, 0, 30, 45);

    lethe_context *b = ctx_of(g_model, 1, LETHE_KV_POLICY_AUTO, 0);
    feed(b, 0, 0, 3);   /* whatever it held goes */
    int32_t got_tok[64], n_tok = 0;
    void *user = NULL;
    size_t user_size = 0;
    assert_int_equal(lethe_state_load(b, 0, buf, n, got_tok, 64, &n_tok, &user, &user_size), LETHE_OK);
    assert_int_equal(n_tok, 30);
    assert_memory_equal(got_tok, hist, sizeof hist);
    assert_int_equal(user_size, 5);
    assert_memory_equal(user, "hello", 5);
    lethe_free(user);
    assert_int_equal(lethe_seq_len(b, 0), 30);
    assert_null(lethe_get_logits(b, -1));   /* logits are not part of a state */
    float *got = continue_seq(b, 0, 30, 45);
    assert_memory_equal(got, want, sizeof(float) * 15 * (size_t)V);
    for (int l = 0; l < g_model->hp.n_layer; l++)
        for (int h = 0; h < g_model->hp.n_head_kv; h++)
            assert_int_equal(lethe_kv_head_len(a, 0, l, h), lethe_kv_head_len(b, 0, l, h));
    free(got);
    free(want);
    lethe_free(buf);
    lethe_context_free(a);
    lethe_context_free(b);
}

static void test_all_sequences_and_files(void **state) {
    (void)state;
    const int V = lethe_n_vocab(g_model);
    lethe_context *a = ctx_of(g_model, 3, LETHE_KV_POLICY_AUTO, 0);
    feed(a, 0, 0, 20);
    feed(a, 1, 0, 33);   /* seq 2 stays empty */
    char *path = tu_write_temp("", 0);
    assert_int_equal(lethe_state_save_file(a, -1, path, NULL, 0, NULL, 0), LETHE_OK);
    float *w0 = continue_seq(a, 0, 20, 26), *w1 = continue_seq(a, 1, 33, 39);
    lethe_context *b = ctx_of(g_model, 3, LETHE_KV_POLICY_AUTO, 0);
    feed(b, 2, 0, 5);   /* cleared by a whole-context load */
    assert_int_equal(lethe_state_load_file(b, -1, path, NULL, 0, NULL, NULL, NULL), LETHE_OK);
    assert_int_equal(lethe_seq_len(b, 0), 20);
    assert_int_equal(lethe_seq_len(b, 1), 33);
    assert_int_equal(lethe_seq_len(b, 2), 0);
    float *g0 = continue_seq(b, 0, 20, 26), *g1 = continue_seq(b, 1, 33, 39);
    assert_memory_equal(g0, w0, sizeof(float) * 6 * (size_t)V);
    assert_memory_equal(g1, w1, sizeof(float) * 6 * (size_t)V);
    /* one sequence of a state into another slot */
    void *buf;
    size_t n;
    assert_int_equal(lethe_state_save(b, 1, NULL, 0, NULL, 0, &buf, &n), LETHE_OK);
    assert_int_equal(lethe_state_load(b, 2, buf, n, NULL, 0, NULL, NULL, NULL), LETHE_OK);
    assert_int_equal(lethe_seq_len(b, 2), 39);
    lethe_free(buf);
    free(w0); free(w1); free(g0); free(g1);
    unlink(path);
    free(path);
    lethe_context_free(a);
    lethe_context_free(b);
}

/* Every refusal leaves the target context as it was. */
static void test_refusals(void **state) {
    (void)state;
    lethe_context *a = ctx_of(g_model, 1, LETHE_KV_POLICY_AUTO, 0);
    feed(a, 0, 0, 40);
    int32_t hist[40];
    for (int i = 0; i < 40; i++) hist[i] = tok_at(i);
    void *buf;
    size_t n;
    assert_int_equal(lethe_state_save(a, 0, hist, 40, NULL, 0, &buf, &n), LETHE_OK);

    lethe_context *t = ctx_of(g_model, 1, LETHE_KV_POLICY_AUTO, 0);
    feed(t, 0, 0, 7);
    const int32_t len0 = lethe_kv_head_len(t, 0, 1, 1);
    const lethe_kv_stats st0 = lethe_get_kv_stats(t);
#define UNCHANGED(c)                                                                   \
    do {                                                                               \
        assert_int_equal(lethe_seq_len(c, 0), 7);                                      \
        assert_int_equal(lethe_kv_head_len(c, 0, 1, 1), len0);                        \
        assert_int_equal(lethe_get_kv_stats(c).bytes_resident, st0.bytes_resident);   \
    } while (0)
    uint8_t *bad = malloc(n);
    memcpy(bad, buf, n);
    assert_int_equal(lethe_state_load(t, 0, bad, n - 9, NULL, 0, NULL, NULL, NULL), LETHE_ERR_CORRUPT);   /* truncated */
    UNCHANGED(t);
    bad[n / 2] ^= 0x40;
    assert_int_equal(lethe_state_load(t, 0, bad, n, NULL, 0, NULL, NULL, NULL), LETHE_ERR_CORRUPT);   /* a flipped bit */
    UNCHANGED(t);
    memcpy(bad, buf, n);
    bad[0] = 'X';
    assert_int_equal(lethe_state_load(t, 0, bad, n, NULL, 0, NULL, NULL, NULL), LETHE_ERR_BAD_MAGIC);
    assert_int_equal(lethe_state_load(t, 0, bad, 5, NULL, 0, NULL, NULL, NULL), LETHE_ERR_BAD_MAGIC);
    UNCHANGED(t);
    int32_t small[8], nt = -1;
    assert_int_equal(lethe_state_load(t, 0, buf, n, small, 8, &nt, NULL, NULL), LETHE_ERR_INVALID_ARG);   /* 40 tokens */
    UNCHANGED(t);
    free(bad);

    lethe_context *other = ctx_of(g_model2, 1, LETHE_KV_POLICY_AUTO, 0);   /* same shape, other weights */
    assert_int_equal(lethe_state_load(other, 0, buf, n, NULL, 0, NULL, NULL, NULL), LETHE_ERR_INVALID_ARG);
    assert_non_null(strstr(lethe_last_error(), "another model"));
    lethe_context *none = ctx_of(g_model, 1, LETHE_KV_POLICY_NONE, 0);   /* other KV rules */
    assert_int_equal(lethe_state_load(none, 0, buf, n, NULL, 0, NULL, NULL, NULL), LETHE_ERR_INVALID_ARG);
    assert_non_null(strstr(lethe_last_error(), "KV policy"));
    /* a pool of one page per head cannot take 40 tokens' worth of pages */
    const size_t page = lethe_context_kv(t)->page_bytes;
    lethe_context *tiny = ctx_of(g_model, 1, LETHE_KV_POLICY_AUTO, page * 4 /* 2 layers x 2 heads */);
    assert_int_equal(lethe_state_load(tiny, 0, buf, n, NULL, 0, NULL, NULL, NULL), LETHE_OK);   /* DMS kept it small */
    lethe_context *plain_a = ctx_of(g_model, 1, LETHE_KV_POLICY_NONE, 0);
    feed(plain_a, 0, 0, 40);
    void *pbuf;
    size_t pn;
    assert_int_equal(lethe_state_save(plain_a, 0, NULL, 0, NULL, 0, &pbuf, &pn), LETHE_OK);
    lethe_context *plain_tiny = ctx_of(g_model, 1, LETHE_KV_POLICY_NONE, page * 4);
    feed(plain_tiny, 0, 0, 3);
    assert_int_equal(lethe_state_load(plain_tiny, 0, pbuf, pn, NULL, 0, NULL, NULL, NULL), LETHE_ERR_CONTEXT_FULL);
    assert_int_equal(lethe_seq_len(plain_tiny, 0), 3);
    assert_int_equal(lethe_state_load_file(t, 0, "/nonexistent/state", NULL, 0, NULL, NULL, NULL), LETHE_ERR_IO);
    UNCHANGED(t);
#undef UNCHANGED
    lethe_free(pbuf);
    lethe_free(buf);
    lethe_context_free(a);
    lethe_context_free(t);
    lethe_context_free(other);
    lethe_context_free(none);
    lethe_context_free(tiny);
    lethe_context_free(plain_a);
    lethe_context_free(plain_tiny);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_exactly),
        cmocka_unit_test(test_all_sequences_and_files),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
