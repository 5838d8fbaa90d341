/* test_engine.c — engine invariants on the default model: micro-batching,
 * token-by-token vs batched, several sequences per batch, fork, and the
 * transactional guarantee (a failed decode leaves the cache as it was).
 * The CPU backend is batch-invariant (a token's arithmetic does not depend
 * on the other tokens of its batch), so these compare bits, not tolerances. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "lethe.h"
#include "testutil.h"

static lethe_model *g_model;
static int32_t g_nv;

static int setup(void **state) {
    (void)state;
    lethe_status st;
    g_model = lethe_model_load(tu_model_path(), lethe_model_default_params(), &st);
    if (!g_model) fail_msg("load: %s: %s", lethe_strerror(st), lethe_last_error());
    g_nv = lethe_n_vocab(g_model);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    lethe_model_free(g_model);
    return 0;
}

static lethe_context *new_ctx(int n_ctx, int n_batch, int n_seq) {
    lethe_context_params p = lethe_context_default_params();
    p.n_ctx = n_ctx;
    p.n_batch = n_batch;
    p.n_seq_max = n_seq;
    p.n_threads = 2;
    lethe_status st;
    lethe_context *c = lethe_context_new(g_model, p, &st);
    if (!c) fail_msg("context: %s: %s", lethe_strerror(st), lethe_last_error());
    return c;
}

static int tokenize(const char *text, lethe_token *out, int max) {
    int n = lethe_tokenize(g_model, text, strlen(text), out, max, true, true);
    assert_true(n > 0 && n <= max);
    return n;
}

static const char *k_text = "The quick brown fox jumps over the lazy dog. It was the best of times, "
                            "it was the worst of times, it was the age of wisdom";

/* logits of the last token after feeding `toks` in decode calls of `step` tokens */
static float *logits_after(lethe_context *c, const lethe_token *toks, int n, int step) {
    for (int i = 0; i < n; i += step) {
        int m = n - i < step ? n - i : step;
        lethe_status st = lethe_decode(c, lethe_batch_one(toks + i, m));
        if (st != LETHE_OK) fail_msg("decode: %s: %s", lethe_strerror(st), lethe_last_error());
    }
    float *out = malloc((size_t)g_nv * sizeof(float));
    memcpy(out, lethe_get_logits(c, -1), (size_t)g_nv * sizeof(float));
    return out;
}

static void test_chunking_and_token_by_token_agree(void **state) {
    (void)state;
    lethe_token toks[64];
    int n = tokenize(k_text, toks, 64);
    lethe_context *a = new_ctx(128, 512, 1), *b = new_ctx(128, 7, 1), *c = new_ctx(128, 512, 1);
    float *la = logits_after(a, toks, n, n);   /* one call, one micro-batch      */
    float *lb = logits_after(b, toks, n, n);   /* one call, micro-batches of 7   */
    float *lc = logits_after(c, toks, n, 1);   /* one token per call            */
    /* batch invariance: a token's arithmetic does not depend on its batch */
    assert_memory_equal(la, lb, (size_t)g_nv * sizeof(float));
    assert_memory_equal(la, lc, (size_t)g_nv * sizeof(float));
    assert_int_equal(lethe_seq_len(a, 0), n);
    assert_int_equal(lethe_seq_len(c, 0), n);
    free(la); free(lb); free(lc);
    lethe_context_free(a); lethe_context_free(b); lethe_context_free(c);
}

static void test_all_logits_match_last(void **state) {
    (void)state;
    lethe_token toks[64];
    int n = tokenize(k_text, toks, 64);
    lethe_context *a = new_ctx(128, 512, 1);
    int8_t want[64];
    memset(want, 1, sizeof want);
    lethe_batch b = lethe_batch_one(toks, n);
    b.logits = want;
    assert_int_equal(lethe_decode(a, b), LETHE_OK);
    float *all_last = malloc((size_t)g_nv * sizeof(float));
    memcpy(all_last, lethe_get_logits(a, n - 1), (size_t)g_nv * sizeof(float));
    assert_memory_equal(all_last, lethe_get_logits(a, -1), (size_t)g_nv * sizeof(float));
    lethe_seq_clear(a, 0);
    float *only_last = logits_after(a, toks, n, n);
    assert_memory_equal(only_last, all_last, (size_t)g_nv * sizeof(float));
    free(all_last); free(only_last);
    lethe_context_free(a);
}

static void test_two_sequences_in_one_batch(void **state) {
    (void)state;
    lethe_token ta[64], tb[64];
    int na = tokenize("Paris is the capital of", ta, 64);
    int nb = tokenize("def fibonacci(n):\n    return", tb, 64);
    lethe_context *one = new_ctx(128, 512, 1);
    float *ra = logits_after(one, ta, na, na);
    lethe_seq_clear(one, 0);
    float *rb = logits_after(one, tb, nb, nb);

    lethe_context *two = new_ctx(128, 512, 2);
    lethe_token toks[128];
    int32_t seq[128];
    int8_t want[128] = {0};
    int n = 0;
    /* interleave the two prompts token by token */
    for (int i = 0; i < na || i < nb; i++) {
        if (i < na) { toks[n] = ta[i]; seq[n] = 0; want[n] = i == na - 1; n++; }
        if (i < nb) { toks[n] = tb[i]; seq[n] = 1; want[n] = i == nb - 1; n++; }
    }
    lethe_batch b = {.n_tokens = n, .tokens = toks, .seq_id = seq, .logits = want};
    assert_int_equal(lethe_decode(two, b), LETHE_OK);
    int ia = -1, ib = -1;
    for (int i = 0; i < n; i++)
        if (want[i]) { if (seq[i] == 0) ia = i; else ib = i; }
    assert_memory_equal(ra, lethe_get_logits(two, ia), (size_t)g_nv * sizeof(float));
    assert_memory_equal(rb, lethe_get_logits(two, ib), (size_t)g_nv * sizeof(float));
    assert_int_equal(lethe_seq_len(two, 0), na);
    assert_int_equal(lethe_seq_len(two, 1), nb);
    free(ra); free(rb);
    lethe_context_free(one); lethe_context_free(two);
}

static void test_fork(void **state) {
    (void)state;
    lethe_token toks[64];
    int n = tokenize(k_text, toks, 64);
    lethe_context *c = new_ctx(128, 512, 2);
    float *l0 = logits_after(c, toks, n - 1, n - 1);
    free(l0);
    assert_int_equal(lethe_seq_fork(c, 0, 1), LETHE_OK);
    assert_int_equal(lethe_seq_len(c, 1), n - 1);
    lethe_token last = toks[n - 1];
    int32_t s1 = 1;
    lethe_batch b1 = {.n_tokens = 1, .tokens = &last, .seq_id = &s1};
    assert_int_equal(lethe_decode(c, b1), LETHE_OK);
    float *from_fork = malloc((size_t)g_nv * sizeof(float));
    memcpy(from_fork, lethe_get_logits(c, -1), (size_t)g_nv * sizeof(float));
    assert_int_equal(lethe_decode(c, lethe_batch_one(&last, 1)), LETHE_OK);
    assert_memory_equal(from_fork, lethe_get_logits(c, -1), (size_t)g_nv * sizeof(float));
    free(from_fork);
    lethe_context_free(c);
}

static int g_abort_countdown;
static bool abort_after(void *user) {
    (void)user;
    return --g_abort_countdown < 0;
}

static void test_failed_decode_leaves_cache_as_it_was(void **state) {
    (void)state;
    lethe_token toks[64];
    int n = tokenize(k_text, toks, 64);
    int half = n / 2;
    lethe_context *ref = new_ctx(128, 512, 1), *c = new_ctx(128, 8, 1);
    float *expect = logits_after(ref, toks, n, n);

    assert_int_equal(lethe_decode(c, lethe_batch_one(toks, half)), LETHE_OK);
    /* abort in the middle of the second micro-batch of the next call */
    g_abort_countdown = 700;
    lethe_set_abort_callback(c, abort_after, NULL);
    assert_int_equal(lethe_decode(c, lethe_batch_one(toks + half, n - half)), LETHE_ERR_ABORTED);
    lethe_set_abort_callback(c, NULL, NULL);
    assert_int_equal(lethe_seq_len(c, 0), half);
    for (int l = 0; l < 30; l++) assert_int_equal(lethe_kv_head_len(c, 0, l, 2), half);

    /* a bad token in the middle of a batch: rejected before anything runs */
    lethe_token bad[3] = {toks[half], 1 << 30, toks[half + 1]};
    assert_int_equal(lethe_decode(c, lethe_batch_one(bad, 3)), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_seq_len(c, 0), half);

    /* and the context goes on as if nothing had happened */
    float *got = logits_after(c, toks + half, n - half, n - half);
    assert_memory_equal(expect, got, (size_t)g_nv * sizeof(float));
    free(expect); free(got);
    lethe_context_free(ref); lethe_context_free(c);
}

static void test_context_overflow(void **state) {
    (void)state;
    lethe_token toks[64];
    int n = tokenize(k_text, toks, 64);
    lethe_context *c = new_ctx(16, 512, 1);
    assert_true(n > 16);
    assert_int_equal(lethe_decode(c, lethe_batch_one(toks, n)), LETHE_ERR_CONTEXT_FULL);
    assert_non_null(strstr(lethe_last_error(), "context"));
    assert_int_equal(lethe_seq_len(c, 0), 0);
    assert_int_equal(lethe_decode(c, lethe_batch_one(toks, 16)), LETHE_OK);
    assert_int_equal(lethe_decode(c, lethe_batch_one(toks, 1)), LETHE_ERR_CONTEXT_FULL);
    assert_int_equal(lethe_seq_len(c, 0), 16);
    /* a KV budget smaller than the context also refuses cleanly */
    lethe_context_params p = lethe_context_default_params();
    p.n_ctx = 256;
    p.kv_budget_bytes = 1;   /* rounds up to a single page: far too small */
    lethe_status st;
    lethe_context *tiny = lethe_context_new(g_model, p, &st);
    assert_non_null(tiny);
    assert_int_equal(lethe_decode(tiny, lethe_batch_one(toks, 4)), LETHE_ERR_CONTEXT_FULL);
    assert_int_equal(lethe_seq_len(tiny, 0), 0);
    lethe_context_free(tiny);
    lethe_context_free(c);
}

static void test_bad_arguments(void **state) {
    (void)state;
    lethe_context *c = new_ctx(64, 512, 1);
    lethe_token t = 1;
    int32_t pos = 5, seq = 3;
    lethe_batch b = {.n_tokens = 1, .tokens = &t, .pos = &pos};
    assert_int_equal(lethe_decode(c, b), LETHE_ERR_INVALID_ARG);          /* gap in positions */
    lethe_batch b2 = {.n_tokens = 1, .tokens = &t, .seq_id = &seq};
    assert_int_equal(lethe_decode(c, b2), LETHE_ERR_INVALID_ARG);         /* no such sequence */
    assert_int_equal(lethe_decode(c, lethe_batch_one(&t, 0)), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_decode(NULL, lethe_batch_one(&t, 1)), LETHE_ERR_INVALID_ARG);
    assert_null(lethe_get_logits(c, 0));                                  /* nothing decoded yet */
    lethe_context_params p = lethe_context_default_params();
    p.n_seq_max = 0;
    lethe_status st;
    assert_null(lethe_context_new(g_model, p, &st));
    assert_int_equal(st, LETHE_ERR_INVALID_ARG);
    lethe_context_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunking_and_token_by_token_agree),
        cmocka_unit_test(test_all_logits_match_last),
        cmocka_unit_test(test_two_sequences_in_one_batch),
        cmocka_unit_test(test_fork),
        cmocka_unit_test(test_failed_decode_leaves_cache_as_it_was),
        cmocka_unit_test(test_context_overflow),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
