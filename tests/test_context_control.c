/* test_context_control.c — what an application relies on to control a
 * context in a long-running program: the abort callback (a stopped prefill
 * or decode leaves the cache as it was, so the context then decodes exactly
 * like a fresh one), the memory report, and the memory cap
 * (lethe_context_params.mem_limit_bytes). The CPU backend is batch
 * invariant, so results are compared bit for bit. */
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
static lethe_token g_prompt[128];
static int g_n_prompt;

static const char *k_text = "In the beginning the Universe was created. This has made a lot of people very "
                            "angry and been widely regarded as a bad move. Many were increasingly of the "
                            "opinion that they'd all made a big mistake in coming down from the trees.";

static int setup(void **state) {
    (void)state;
    lethe_status st;
    g_model = lethe_model_load(tu_model_path(), lethe_model_default_params(), &st);
    if (!g_model) fail_msg("load: %s: %s", lethe_strerror(st), lethe_last_error());
    g_nv = lethe_n_vocab(g_model);
    g_n_prompt = lethe_tokenize(g_model, k_text, strlen(k_text), g_prompt, 128, true, true);
    assert_true(g_n_prompt > 32 && g_n_prompt <= 128);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    lethe_model_free(g_model);
    return 0;
}

static lethe_context *new_ctx(int n_batch, size_t mem_limit, lethe_status *st_out) {
    lethe_context_params p = lethe_context_default_params();
    p.n_ctx = 256;
    p.n_batch = n_batch;
    p.n_threads = 2;
    p.mem_limit_bytes = mem_limit;
    lethe_status st;
    lethe_context *c = lethe_context_new(g_model, p, &st);
    if (st_out) *st_out = st;
    else if (!c) fail_msg("context: %s: %s", lethe_strerror(st), lethe_last_error());
    return c;
}

static void decode_ok(lethe_context *c, const lethe_token *t, int n) {
    lethe_status st = lethe_decode(c, lethe_batch_one(t, n));
    if (st != LETHE_OK) fail_msg("decode: %s: %s", lethe_strerror(st), lethe_last_error());
}

/* Greedy continuation of `steps` tokens from the context's current logits:
 * every step's logits must equal ref's (the fresh context's) bit for bit. */
static void continue_in_lockstep(lethe_context *ref, lethe_context *c, int steps) {
    for (int i = 0; i < steps; i++) {
        const float *a = lethe_get_logits(ref, -1), *b = lethe_get_logits(c, -1);
        assert_non_null(a);
        assert_non_null(b);
        assert_memory_equal(a, b, (size_t)g_nv * sizeof(float));
        lethe_token t = 0;
        for (int v = 1; v < g_nv; v++) if (a[v] > a[t]) t = v;
        decode_ok(ref, &t, 1);
        decode_ok(c, &t, 1);
    }
    assert_int_equal(lethe_seq_len(ref, 0), lethe_seq_len(c, 0));
}

typedef struct abort_at { int calls, at; } abort_at;

static bool abort_cb(void *user) {
    abort_at *a = user;
    return ++a->calls >= a->at;   /* at <= 0 never: counts only */
}
static bool count_cb(void *user) {
    ((abort_at *)user)->calls++;
    return false;
}

/* Abort a prefill at several points, including inside a later micro-batch
 * of the call (earlier micro-batches of it already ran): every time the
 * context is left empty and then decodes like a fresh one. */
static void test_abort_mid_prefill(void **state) {
    (void)state;
    lethe_context *fresh = new_ctx(16, 0, NULL);
    decode_ok(fresh, g_prompt, g_n_prompt);

    /* how many times the callback runs for the whole prompt (several micro-batches) */
    lethe_context *c = new_ctx(16, 0, NULL);
    abort_at count = {0, 0};
    lethe_set_abort_callback(c, count_cb, &count);
    decode_ok(c, g_prompt, g_n_prompt);
    assert_memory_equal(lethe_get_logits(c, -1), lethe_get_logits(fresh, -1), (size_t)g_nv * sizeof(float));
    assert_true(count.calls > 100);
    lethe_context_free(c);

    const double where[] = {0.01, 0.5, 0.9};   /* first micro-batch, middle, last one */
    for (size_t k = 0; k < sizeof where / sizeof where[0]; k++) {
        c = new_ctx(16, 0, NULL);
        abort_at a = {0, (int)(count.calls * where[k]) + 1};
        lethe_set_abort_callback(c, abort_cb, &a);
        assert_int_equal(lethe_decode(c, lethe_batch_one(g_prompt, g_n_prompt)), LETHE_ERR_ABORTED);
        assert_int_equal(a.calls, a.at);               /* it stopped when asked, not later */
        assert_int_equal(lethe_seq_len(c, 0), 0);      /* nothing of the call stayed */
        lethe_kv_stats ks = lethe_get_kv_stats(c);
        assert_int_equal(ks.tokens_seen, 0);
        assert_int_equal(ks.bytes_resident, 0);
        assert_null(lethe_get_logits(c, -1));
        lethe_set_abort_callback(c, NULL, NULL);
        decode_ok(c, g_prompt, g_n_prompt);
        lethe_context *ref = new_ctx(16, 0, NULL);
        decode_ok(ref, g_prompt, g_n_prompt);
        continue_in_lockstep(ref, c, 6);
        lethe_context_free(ref);
        lethe_context_free(c);
    }
    lethe_context_free(fresh);
}

/* Abort a one-token decode after a prompt: the prompt stays, the token does
 * not, and the context continues like one that was never stopped. */
static void test_abort_mid_decode_keeps_the_prompt(void **state) {
    (void)state;
    lethe_context *ref = new_ctx(64, 0, NULL), *c = new_ctx(64, 0, NULL);
    decode_ok(ref, g_prompt, g_n_prompt);
    decode_ok(c, g_prompt, g_n_prompt);
    lethe_kv_stats before = lethe_get_kv_stats(c);
    abort_at a = {0, 40};
    lethe_set_abort_callback(c, abort_cb, &a);
    lethe_token t = 1234;
    assert_int_equal(lethe_decode(c, lethe_batch_one(&t, 1)), LETHE_ERR_ABORTED);
    assert_int_equal(lethe_seq_len(c, 0), g_n_prompt);
    lethe_kv_stats after = lethe_get_kv_stats(c);
    assert_int_equal(after.tokens_seen, before.tokens_seen);
    assert_int_equal(after.bytes_resident, before.bytes_resident);
    for (int l = 0; l < 30; l += 7)
        assert_int_equal(lethe_kv_head_len(c, 0, l, 1), g_n_prompt);
    lethe_set_abort_callback(c, NULL, NULL);
    decode_ok(ref, &t, 1);
    decode_ok(c, &t, 1);
    continue_in_lockstep(ref, c, 6);
    lethe_context_free(ref);
    lethe_context_free(c);
}

static void test_memory_report(void **state) {
    (void)state;
    lethe_context *c = new_ctx(64, 0, NULL);
    lethe_memory_info m0 = lethe_get_memory_info(c);
    lethe_model_info info = lethe_model_get_info(g_model);
    assert_true(m0.model_bytes >= info.weight_bytes);
    assert_int_equal(m0.model_bytes, lethe_model_memory_bytes(g_model));
    /* the KV pool: all of n_ctx for every layer and KV head, f16 K and V */
    assert_int_equal(m0.kv_bytes, lethe_get_kv_stats(c).bytes_capacity);
    assert_true(m0.kv_bytes >= (size_t)256 * info.n_layer * info.n_head_kv * info.head_dim * 2 * 2);
    assert_int_equal(m0.compute_bytes, 0);   /* nothing run yet */
    assert_int_equal(m0.mem_limit_bytes, 0);
    decode_ok(c, g_prompt, g_n_prompt);
    lethe_memory_info m1 = lethe_get_memory_info(c);
    assert_int_equal(m1.kv_bytes, m0.kv_bytes);
    /* at least the [T, n_vocab] f32 logits of the output matmul */
    assert_true(m1.compute_bytes >= (size_t)g_nv * sizeof(float));
    assert_true(m1.other_bytes >= (size_t)g_nv * sizeof(float));   /* one row of logits kept */
    assert_int_equal(m1.context_bytes, m1.kv_bytes + m1.compute_bytes + m1.other_bytes);
    /* one more token: same pool; compute may grow (attention scratch holds a
     * score per cached token), never shrinks */
    lethe_token t = 42;
    decode_ok(c, &t, 1);
    lethe_memory_info m2 = lethe_get_memory_info(c);
    assert_int_equal(m2.kv_bytes, m1.kv_bytes);
    assert_true(m2.compute_bytes >= m1.compute_bytes);
    assert_int_equal(lethe_get_memory_info(NULL).context_bytes, 0);
    lethe_context_free(c);
}

static void test_memory_cap(void **state) {
    (void)state;
    /* what an uncapped context needs for the prompt in one micro-batch */
    lethe_context *free_ctx = new_ctx(64, 0, NULL);
    lethe_memory_info m0 = lethe_get_memory_info(free_ctx);
    decode_ok(free_ctx, g_prompt, g_n_prompt);
    lethe_memory_info need = lethe_get_memory_info(free_ctx);

    /* a cap below the KV pool: refused at creation */
    lethe_status st;
    assert_null(new_ctx(64, m0.kv_bytes / 2, &st));
    assert_int_equal(st, LETHE_ERR_OOM);
    assert_non_null(strstr(lethe_last_error(), "mem_limit_bytes"));

    /* what it needs token by token: far smaller buffers */
    lethe_context *one = new_ctx(64, 0, NULL);
    for (int i = 0; i < g_n_prompt; i++) decode_ok(one, &g_prompt[i], 1);
    lethe_memory_info need1 = lethe_get_memory_info(one);
    lethe_context_free(one);
    assert_true(need1.context_bytes < need.context_bytes);

    /* capped at that: the whole prompt in one call is refused before
     * anything is allocated, the cache untouched; token by token it fits */
    lethe_context *c = new_ctx(64, need1.context_bytes, &st);
    assert_non_null(c);
    assert_int_equal(lethe_decode(c, lethe_batch_one(g_prompt, g_n_prompt)), LETHE_ERR_OOM);
    assert_non_null(strstr(lethe_last_error(), "memory cap"));
    assert_int_equal(lethe_seq_len(c, 0), 0);
    assert_true(lethe_get_memory_info(c).context_bytes <= need1.context_bytes);
    lethe_context_free(c);
    /* (a fresh one: the refused call kept its batch-size staging, grow-only) */
    c = new_ctx(64, need1.context_bytes, &st);
    for (int i = 0; i < g_n_prompt; i++) decode_ok(c, &g_prompt[i], 1);
    lethe_memory_info mc = lethe_get_memory_info(c);
    assert_true(mc.context_bytes <= mc.mem_limit_bytes);
    assert_memory_equal(lethe_get_logits(c, -1), lethe_get_logits(free_ctx, -1), (size_t)g_nv * sizeof(float));
    lethe_context_free(c);

    /* exactly what the uncapped context used: the same decode fits */
    c = new_ctx(64, need.context_bytes, &st);
    assert_non_null(c);
    decode_ok(c, g_prompt, g_n_prompt);
    assert_true(lethe_get_memory_info(c).context_bytes <= need.context_bytes);
    assert_memory_equal(lethe_get_logits(c, -1), lethe_get_logits(free_ctx, -1), (size_t)g_nv * sizeof(float));
    /* asking for every token's logits needs more logits rows than the cap allows */
    int8_t all[128];
    memset(all, 1, sizeof all);
    lethe_batch b = lethe_batch_one(g_prompt, g_n_prompt);
    b.logits = all;
    lethe_seq_clear(c, 0);
    assert_int_equal(lethe_decode(c, b), LETHE_ERR_OOM);
    assert_int_equal(lethe_seq_len(c, 0), 0);
    lethe_context_free(c);
    lethe_context_free(free_ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_abort_mid_prefill),
        cmocka_unit_test(test_abort_mid_decode_keeps_the_prompt),
        cmocka_unit_test(test_memory_report),
        cmocka_unit_test(test_memory_cap),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
