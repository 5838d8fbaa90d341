/* test_kv_policy.c — the training-free baselines (DESIGN.md §3.2) against the
 * float64 reference of each rule (ref_model.c): window (StreamingLLM sinks +
 * recent), TOVA, H2O and QUEST, decoded token by token on tiny random
 * models with an f32 cache: logits within 1e-5 relative, and exactly the
 * reference's set of cached tokens per (layer, head) after every step.
 * Also: the policies' parameter errors, and memory really returned. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "model.h"
#include "ref_model.h"
#include "synth.h"
#include "testutil.h"

static char *g_path;
static lethe_model *g_model;

static int setup(void **state) {
    (void)state;
    lethe_synth_params p = lethe_synth_default_params();
    p.arch = "qwen3";
    p.n_layer = 2;
    p.n_embd = 64;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.n_ff = 96;
    p.seed = 77;
    g_path = tu_write_temp("", 0);
    if (lethe_synth_write(g_path, p) != LETHE_OK) fail_msg("synth: %s", lethe_last_error());
    lethe_status st;
    g_model = lethe_model_load(g_path, lethe_model_default_params(), &st);
    if (!g_model) fail_msg("load: %s", lethe_last_error());
    return 0;
}

static int teardown(void **state) {
    (void)state;
    lethe_model_free(g_model);
    unlink(g_path);
    free(g_path);
    return 0;
}

static lethe_context *ctx_for(lethe_kv_policy_kind kind, int budget, lethe_status *st) {
    lethe_context_params p = lethe_context_default_params();
    p.n_ctx = 256;
    p.n_threads = 2;
    p.kv_type = LETHE_KV_F32;
    p.kv_policy = kind;
    p.kv_budget_tokens = budget;
    return lethe_context_new(g_model, p, st);
}

/* Decode N tokens one by one under the policy; compare logits and, after
 * every step, the cached positions of every (layer, head) with the
 * reference's. */
static void run_policy(lethe_kv_policy_kind kind, ref_rule rule, int budget, int N) {
    const lethe_model *m = g_model;
    const int V = m->hp.n_vocab, L = m->hp.n_layer, Hkv = m->hp.n_head_kv;
    int32_t tok[256];
    for (int i = 0; i < N; i++) tok[i] = (int32_t)((i * 131 + 7) % 300);
    ref_policy pol = {.rule = rule, .budget = budget, .sinks = 4, .recent = budget / 2};
    double *ref = malloc(sizeof(double) * (size_t)N * V);
    ref_forward(m, tok, N, &pol, ref, NULL, NULL);

    lethe_status st;
    lethe_context *c = ctx_for(kind, budget, &st);
    if (!c) fail_msg("context: %s", lethe_last_error());
    float *got = malloc(sizeof(float) * (size_t)N * V);
    uint8_t *alive = malloc((size_t)L * Hkv * N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(lethe_decode(c, lethe_batch_one(&tok[i], 1)), LETHE_OK);
        memcpy(got + (size_t)i * V, lethe_get_logits(c, -1), sizeof(float) * V);
        if (i % 7 != 6 && i != N - 1) continue;   /* the cache set every few steps: the reference is O(N^2) */
        ref_forward(m, tok, i + 1, &pol, NULL, NULL, alive);
        const lethe_kv_cache *kv = lethe_context_kv(c);
        for (int l = 0; l < L; l++)
            for (int h = 0; h < Hkv; h++) {
                const lethe_kv_stream *s = lethe_kv_stream_at(kv, 0, l, h);
                uint8_t have[256] = {0};
                for (int j = 0; j < s->len; j++) {
                    int32_t pos = *lethe_kv_pos(kv, s, j);
                    if (pos != LETHE_KV_HOLE && *lethe_kv_expire(kv, s, j) > i + 1) have[pos] = 1;
                }
                for (int j = 0; j <= i; j++)
                    if (have[j] != alive[((size_t)l * Hkv + h) * (i + 1) + j])
                        fail_msg("%s budget %d: after token %d, layer %d head %d: token %d is %s, reference %s",
                                 lethe_kv_policy_name(kind), budget, i, l, h, j, have[j] ? "cached" : "gone",
                                 alive[((size_t)l * Hkv + h) * (i + 1) + j] ? "cached" : "gone");
            }
    }
    const double err = ref_worst_rel(got, ref, N, V);
    if (!(err <= 1e-5)) fail_msg("%s budget %d: logits off by %.3g relative", lethe_kv_policy_name(kind), budget, err);
    lethe_kv_stats ks = lethe_get_kv_stats(c);
    assert_int_equal(ks.policy, kind);
    if (kind != LETHE_KV_POLICY_QUEST) {
        assert_true(ks.evicted > 0);
        assert_true(ks.mean_live_slots <= budget);
    } else {
        assert_int_equal(ks.evicted, 0);   /* QUEST saves reads, not memory */
        assert_true(ks.reads < (uint64_t)L * Hkv * N * (N + 1) / 2);
    }
    /* every page comes back when the sequence goes */
    assert_int_equal(lethe_seq_clear(c, -1), LETHE_OK);
    assert_int_equal(lethe_get_kv_stats(c).bytes_resident, 0);
    lethe_context_free(c);
    free(alive);
    free(got);
    free(ref);
}

static void test_window(void **state) {
    (void)state;
    run_policy(LETHE_KV_POLICY_WINDOW, REF_WINDOW, 12, 40);
}

static void test_window_prefill_is_exact(void **state) {
    (void)state;
    /* WINDOW's expiry is known at insertion: one prefill equals the reference too */
    const int N = 60, V = g_model->hp.n_vocab;
    int32_t tok[60];
    for (int i = 0; i < N; i++) tok[i] = (int32_t)((i * 17 + 3) % 300);
    ref_policy pol = {.rule = REF_WINDOW, .budget = 10, .sinks = 4};
    double *ref = malloc(sizeof(double) * (size_t)N * V);
    ref_forward(g_model, tok, N, &pol, ref, NULL, NULL);
    lethe_status st;
    lethe_context *c = ctx_for(LETHE_KV_POLICY_WINDOW, 10, &st);
    int8_t want[60];
    memset(want, 1, sizeof want);
    lethe_batch b = lethe_batch_one(tok, N);
    b.logits = want;
    assert_int_equal(lethe_decode(c, b), LETHE_OK);
    float *got = malloc(sizeof(float) * (size_t)N * V);
    for (int i = 0; i < N; i++) memcpy(got + (size_t)i * V, lethe_get_logits(c, i), sizeof(float) * V);
    assert_true(ref_worst_rel(got, ref, N, V) <= 1e-5);
    /* after the call: 4 sinks + the 5 newest (the next token makes 10) */
    for (int l = 0; l < g_model->hp.n_layer; l++) assert_int_equal(lethe_kv_head_len(c, 0, l, 1), 9);
    free(got);
    free(ref);
    lethe_context_free(c);
}

static void test_tova(void **state) {
    (void)state;
    run_policy(LETHE_KV_POLICY_TOVA, REF_TOVA, 8, 40);
    run_policy(LETHE_KV_POLICY_TOVA, REF_TOVA, 3, 25);
}

static void test_h2o(void **state) {
    (void)state;
    run_policy(LETHE_KV_POLICY_H2O, REF_H2O, 10, 40);
}

static void test_quest(void **state) {
    (void)state;
    run_policy(LETHE_KV_POLICY_QUEST, REF_QUEST, 64, 130);
}

static void test_bad_parameters(void **state) {
    (void)state;
    lethe_status st = LETHE_OK;
    assert_null(ctx_for(LETHE_KV_POLICY_TOVA, 0, &st));          /* a budget is required */
    assert_int_equal(st, LETHE_ERR_INVALID_ARG);
    assert_non_null(strstr(lethe_last_error(), "kv_budget_tokens"));
    assert_null(ctx_for(LETHE_KV_POLICY_WINDOW, 4, &st));        /* 4 sinks leave no window */
    assert_null(ctx_for(LETHE_KV_POLICY_QUEST, 16, &st));        /* less than a page */
    assert_null(ctx_for((lethe_kv_policy_kind)99, 16, &st));
    assert_null(ctx_for(LETHE_KV_POLICY_DMS, 0, &st));           /* not a DMS model */
    assert_non_null(strstr(lethe_last_error(), "DMS"));
    lethe_context_params p = lethe_context_default_params();
    p.n_ctx = 64;
    p.dms_force_rate = 1.5f;
    assert_null(lethe_context_new(g_model, p, &st));
    p.dms_force_rate = 0.5f;                                      /* forced needs a window here */
    assert_null(lethe_context_new(g_model, p, &st));
    p.dms_window = 64;                                            /* not smaller than the context */
    assert_null(lethe_context_new(g_model, p, &st));
    assert_non_null(strstr(lethe_last_error(), "window"));
    p.dms_window = 8;
    lethe_context *c = lethe_context_new(g_model, p, &st);
    assert_non_null(c);
    assert_int_equal(lethe_get_kv_stats(c).policy, LETHE_KV_POLICY_DMS);
    lethe_context_free(c);
    lethe_kv_policy_kind k;
    assert_int_equal(lethe_kv_policy_parse("h2o", &k), LETHE_OK);
    assert_int_equal(k, LETHE_KV_POLICY_H2O);
    assert_int_equal(lethe_kv_policy_parse("lru", &k), LETHE_ERR_INVALID_ARG);
    assert_string_equal(lethe_kv_policy_name(LETHE_KV_POLICY_QUEST), "quest");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_window_prefill_is_exact),
        cmocka_unit_test(test_tova),
        cmocka_unit_test(test_h2o),
        cmocka_unit_test(test_quest),
        cmocka_unit_test(test_bad_parameters),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
