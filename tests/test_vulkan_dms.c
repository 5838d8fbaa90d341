/* test_vulkan_dms.c — DMS eviction end to end with the KV cache on Vulkan
 * (lavapipe in CI), against the CPU backend, and a state round trip on it.
 * Built a second time as test_cuda_dms (LETHE_DMS_CUDA): the same checks on
 * the CUDA backend, whose cache lives in managed memory (skipped without an
 * NVIDIA GPU; tools/gpu-check.sh runs it on one).
 *
 * A tiny synthetic DMS model (core/synth.c: llama, 2 layers, 4 query / 2 KV
 * heads, the neuron variant with mixed decisions) decodes the same tokens
 * in calls of mixed sizes (prefill and decode shapes) on both backends. The
 * Vulkan context holds its pool in the device's shared memory, so KV_STORE
 * (with the DMS flags), ATTENTION, DMS_DECISION and the borrowed-channel
 * RoPE run on the device while the host evicts and reuses slots. Checked:
 * every position's logits within the one-token limit of test_vulkan_e2e
 * (f32 weights: no q8 drift to excuse more), identical per-head live
 * lengths, and evictions really happened. Then the Vulkan context saves its
 * state (lethe_state_save), decodes on, and a fresh Vulkan context that
 * loads the state decodes the same tokens to the same logits, bit for bit.
 *
 * ctest runs it a second time as test_vulkan_dms_split with
 * LETHE_VK_MAX_RANGE lowered to 4 KiB: the cache's shared buffer is then
 * spread over 9 bindings (backends/vulkan/vk_ops.c kv_plan) and the logits
 * of a 5-token call (6.4 KiB) computed in token chunks (matmul_tokens); the
 * checks are the same, plus: the backend said so (>= 3 bindings), and every
 * graph still ran whole on the device. That covers the score policies too:
 * TOVA / H2O weights and QUEST's bounds and page selection
 * (quest_*_split) on the split cache, still the CPU's bits.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lethe.h"
#ifdef LETHE_DMS_CUDA
#include "backend.h"
#include "common.h"
#endif
#include "synth.h"
#include "testutil.h"

#define N_TOK 60        /* > window + a page: evictions, hole reuse, a second page */
#define N_MORE 8        /* decoded after the state is saved */
#define LIMIT 1e-4
#define N_LAYER 2
#define N_HEAD_KV 2

#ifdef LETHE_DMS_CUDA
#define DEV "cuda"
#else
#define DEV "vulkan"
#endif

static int g_vk_runs, g_fallbacks, g_kv_bindings;

static void on_log(lethe_log_level level, const char *msg, void *user) {
    (void)level;
    (void)user;
    if (strstr(msg, DEV ": nodes [")) g_vk_runs++;               /* a compute on the device (debug log) */
    if (strstr(msg, "executor: " DEV " runs")) g_fallbacks++;    /* some ops of a graph left to the CPU */
    const char *b = strstr(msg, "KV cache of ");                 /* vk_ops.c kv_plan: "... over N bindings" */
    if (b && (b = strstr(b, " over ")) != NULL) g_kv_bindings = atoi(b + 6);
    if (strstr(msg, "KV_STORE and ATTENTION run on the CPU")) g_kv_bindings = -1;
}

/* test_vulkan_dms_split (LETHE_VK_MAX_RANGE set): the context's cache must
 * have been spread over several bindings, and said so. */
static void check_kv_split(void) {
    if (!getenv("LETHE_VK_MAX_RANGE")) return;
    print_message("  LETHE_VK_MAX_RANGE=%s: the KV cache over %d bindings\n", getenv("LETHE_VK_MAX_RANGE"),
                  g_kv_bindings);
    assert_true(g_kv_bindings >= 3);
}

static char *make_model(lethe_dtype wtype, int dms_variant) {
    lethe_synth_params p = lethe_synth_default_params();
    p.arch = "llama";
    p.n_layer = N_LAYER;
#ifdef LETHE_DMS_CUDA
    p.n_embd = 128;   /* head dim 32: the CUDA attention kernels take 32/64/128/256 (16 left KV ops on the CPU) */
#else
    p.n_embd = 64;
#endif
    p.n_head = 4;
    p.n_head_kv = N_HEAD_KV;
    p.n_ff = 96;
    p.seed = 4242;
    p.wtype = wtype;
    p.embd_type = wtype;        /* the tied output matrix too */
    p.dms_variant = dms_variant; /* 1: neuron, the decision from the borrowed q channel */
    p.dms_window = 4;
    p.dms_alpha_offset = 5.0f;  /* mixed decisions (test_dms.c) */
    char *path = tu_write_temp("", 0);
    if (lethe_synth_write(path, p) != LETHE_OK) fail_msg("synth: %s", lethe_last_error());
    return path;
}

static lethe_context *open_ctx_policy(const char *path, const char *backend, lethe_kv_policy_kind policy,
                                      int32_t budget, lethe_model **m) {
    lethe_model_params mp = lethe_model_default_params();
    mp.backend = backend;
    lethe_status st;
    *m = lethe_model_load(path, mp, &st);
    if (!*m) fail_msg("load (%s): %s: %s", backend, lethe_strerror(st), lethe_last_error());
    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = 128;
    cp.n_batch = 8;
    cp.n_threads = 2;
    cp.kv_type = LETHE_KV_F16;
    cp.kv_policy = policy;
    cp.kv_budget_tokens = budget;
    lethe_context *c = lethe_context_new(*m, cp, &st);
    if (!c) fail_msg("context (%s): %s: %s", backend, lethe_strerror(st), lethe_last_error());
    return c;
}

static lethe_context *open_ctx(const char *path, const char *backend, lethe_model **m) {
    return open_ctx_policy(path, backend, LETHE_KV_POLICY_DMS, 0, m);
}

/* Decode tok[from, to) in calls of 5, 1, 3, 1 ... tokens; logits of every position [to - from][V]. */
static float *feed(lethe_context *c, const int32_t *tok, int from, int to, int V) {
    static const int sizes[4] = {5, 1, 3, 1};
    float *out = malloc(sizeof(float) * (size_t)(to - from) * V);
    assert_non_null(out);
    int8_t want[8];
    memset(want, 1, sizeof want);
    for (int i = from, k = 0; i < to; k++) {
        int n = sizes[k % 4];
        if (n > to - i) n = to - i;
        lethe_batch b = lethe_batch_one(tok + i, n);
        b.logits = want;
        lethe_status st = lethe_decode(c, b);
        if (st != LETHE_OK) fail_msg("decode: %s: %s", lethe_strerror(st), lethe_last_error());
        for (int j = 0; j < n; j++) memcpy(out + (size_t)(i - from + j) * V, lethe_get_logits(c, j), sizeof(float) * V);
        i += n;
    }
    return out;
}

/* wtype F32: the f32 GEMV (logits within LIMIT); Q8_0 on Vulkan: every op
 * gives the CPU's bits (test_vulkan_e2e), so the logits must be identical. */
static void dms_run(lethe_dtype wtype) {
#ifdef LETHE_DMS_CUDA
    lethe_backend *probe = lethe_backend_gpu_new("cuda", 0);
    if (!probe) {
        print_message("cuda: skipped, no such device here (%s)\n", lethe_last_error());
        lethe_clear_error();
        skip();
    }
    probe->iface->free(probe);
#else
    if (!strstr(lethe_version(), "vulkan")) skip();   /* a build without Vulkan */
#endif
    char *path = make_model(wtype, 1);
    lethe_model *mc, *mv;
    g_kv_bindings = 0;
    lethe_set_log(on_log, NULL);
    lethe_context *cc = open_ctx(path, "cpu", &mc), *cv = open_ctx(path, DEV, &mv);
    lethe_set_log(NULL, NULL);
#ifndef LETHE_DMS_CUDA
    tu_pin_vulkan_driver();
#endif
    const int V = lethe_n_vocab(mc);
    int32_t tok[N_TOK + N_MORE];
    for (int i = 0; i < N_TOK + N_MORE; i++) tok[i] = (int32_t)((i * 37 + 11) % V);

    float *lc = feed(cc, tok, 0, N_TOK, V);
    lethe_set_log(on_log, NULL);
    lethe_set_log_level(LETHE_LOG_DEBUG);
    float *lv = feed(cv, tok, 0, N_TOK, V);
    lethe_set_log_level(LETHE_LOG_INFO);
    lethe_set_log(NULL, NULL);
    assert_true(g_vk_runs > 0);       /* the graphs ran on the device ... */
    assert_int_equal(g_fallbacks, 0); /* ... all of them: KV_STORE, ATTENTION, DMS_DECISION included */
    check_kv_split();
    double worst = 0.0;
    int n_exact = 0;
    for (int i = 0; i < N_TOK; i++) {
        double e = tu_nmse(lc + (size_t)i * V, lv + (size_t)i * V, (size_t)V);
        if (e > worst) worst = e;
        n_exact += memcmp(lc + (size_t)i * V, lv + (size_t)i * V, sizeof(float) * (size_t)V) == 0;
        if (!(e <= LIMIT)) fail_msg("position %d: logits NMSE %.3g > %.0e", i, e, LIMIT);
    }
    print_message("  %s weights: %d of %d positions bit-identical to the CPU\n", wtype == LETHE_Q8_0 ? "q8_0" : "f32",
                  n_exact, N_TOK);
#ifndef LETHE_DMS_CUDA
    if (wtype == LETHE_Q8_0) assert_int_equal(n_exact, N_TOK);
#endif
    int live_total = 0;
    for (int l = 0; l < N_LAYER; l++)
        for (int h = 0; h < N_HEAD_KV; h++) {
            const int32_t a = lethe_kv_head_len(cc, 0, l, h), b = lethe_kv_head_len(cv, 0, l, h);
            if (a != b) fail_msg("layer %d head %d: %d live tokens on the CPU, %d on " DEV, l, h, a, b);
            live_total += a;
        }
    lethe_kv_stats kc = lethe_get_kv_stats(cc), kvs = lethe_get_kv_stats(cv);
    print_message("  %d positions, logits NMSE worst %.3g; live %d of %d (layer, head) tokens, evicted %llu\n", N_TOK,
                  worst, live_total, N_TOK * N_LAYER * N_HEAD_KV, (unsigned long long)kvs.evicted);
    assert_true(kvs.evicted > 0);                      /* evictions happened ... */
    assert_int_equal(kc.evicted, kvs.evicted);         /* ... the same on both */
    assert_true(live_total < N_TOK * N_LAYER * N_HEAD_KV);

    /* state round trip on Vulkan: save, decode on; load into a fresh context, decode the same */
    void *blob = NULL;
    size_t blob_size = 0;
    assert_int_equal(lethe_state_save(cv, 0, tok, N_TOK, NULL, 0, &blob, &blob_size), LETHE_OK);
    float *after = feed(cv, tok, N_TOK, N_TOK + N_MORE, V);
    lethe_model *m2;
    lethe_context *c2 = open_ctx(path, DEV, &m2);
    int32_t back[N_TOK];
    int32_t n_back = 0;
    assert_int_equal(lethe_state_load(c2, 0, blob, blob_size, back, N_TOK, &n_back, NULL, NULL), LETHE_OK);
    assert_int_equal(n_back, N_TOK);
    assert_memory_equal(back, tok, sizeof back);
    for (int l = 0; l < N_LAYER; l++)
        for (int h = 0; h < N_HEAD_KV; h++) assert_int_equal(lethe_kv_head_len(c2, 0, l, h), lethe_kv_head_len(cc, 0, l, h));
    float *again = feed(c2, tok, N_TOK, N_TOK + N_MORE, V);
    for (int i = 0; i < N_MORE; i++)
        if (memcmp(after + (size_t)i * V, again + (size_t)i * V, sizeof(float) * (size_t)V) != 0)
            fail_msg("after the state load, position %d: logits differ from the uninterrupted run (NMSE %.3g)",
                     N_TOK + i, tu_nmse(after + (size_t)i * V, again + (size_t)i * V, (size_t)V));
    print_message("  state of %zu bytes: %d positions decoded identically after the load\n", blob_size, N_MORE);

    lethe_free(blob);
    free(lc);
    free(lv);
    free(after);
    free(again);
    lethe_context_free(c2);
    lethe_model_free(m2);
    lethe_context_free(cv);
    lethe_model_free(mv);
    lethe_context_free(cc);
    lethe_model_free(mc);
    unlink(path);
    free(path);
}

static void test_dms_on_vulkan(void **state) {
    (void)state;
    dms_run(LETHE_F32);
    dms_run(LETHE_Q8_0);
}

/* The device of the score-policy checks: Vulkan (its shaders are the CPU's
 * arithmetic: q8_0 weights, bit-identical logits required) or, in
 * test_cuda_dms, CUDA (f32 weights: no q8 activations on one side only;
 * logits within LIMIT). */
static bool score_device(lethe_dtype *wtype) {
#ifdef LETHE_DMS_CUDA
    lethe_backend *probe = lethe_backend_gpu_new("cuda", 0);
    if (!probe) {
        print_message("cuda: skipped, no such device here (%s)\n", lethe_last_error());
        lethe_clear_error();
        return false;
    }
    probe->iface->free(probe);
    *wtype = LETHE_F32;
    return true;
#else
    *wtype = LETHE_Q8_0;
    return strstr(lethe_version(), "vulkan") != NULL;   /* a build without Vulkan */
#endif
}

#ifdef LETHE_DMS_CUDA
#define BIT_EXACT 0
#else
#define BIT_EXACT 1
#endif

/* TOVA and H2O with ATTENTION on the device: the kernel hands back each
 * slot's softmax weight and the host folds them into the policy's scores
 * as the CPU kernel does, so the same tokens are evicted. On Vulkan with
 * q8_0 weights every op gives the CPU's bits (test_vulkan_e2e), so the
 * logits must be bit-identical (and the NMSE bar is checked too);
 * on CUDA within LIMIT; the per-head live lengths and eviction counts
 * identical on both. */
static void test_score_policies_on_vulkan(void **state) {
    (void)state;
    lethe_dtype wtype;
    if (!score_device(&wtype)) skip();
    char *path = make_model(wtype, 0);
    const lethe_kv_policy_kind pols[2] = {LETHE_KV_POLICY_TOVA, LETHE_KV_POLICY_H2O};
    for (int k = 0; k < 2; k++) {
        lethe_model *mc, *mv;
        lethe_context *cc = open_ctx_policy(path, "cpu", pols[k], 24, &mc);
        g_kv_bindings = 0;
        lethe_set_log(on_log, NULL);
        lethe_context *cv = open_ctx_policy(path, DEV, pols[k], 24, &mv);
        lethe_set_log(NULL, NULL);
#ifndef LETHE_DMS_CUDA
        tu_pin_vulkan_driver();
#endif
        const int V = lethe_n_vocab(mc);
        int32_t tok[N_TOK];
        for (int i = 0; i < N_TOK; i++) tok[i] = (int32_t)((i * 53 + 7) % V);
        float *lc = feed(cc, tok, 0, N_TOK, V);
        g_vk_runs = g_fallbacks = 0;
        lethe_set_log(on_log, NULL);
        lethe_set_log_level(LETHE_LOG_DEBUG);
        float *lv = feed(cv, tok, 0, N_TOK, V);
        lethe_set_log_level(LETHE_LOG_INFO);
        lethe_set_log(NULL, NULL);
        assert_true(g_vk_runs > 0);
        assert_int_equal(g_fallbacks, 0);   /* ATTENTION with scores on the device too */
        check_kv_split();
        double worst = 0.0;
        int n_exact = 0;
        for (int i = 0; i < N_TOK; i++) {
            const double e = tu_nmse(lc + (size_t)i * V, lv + (size_t)i * V, (size_t)V);
            if (e > worst) worst = e;
            n_exact += memcmp(lc + (size_t)i * V, lv + (size_t)i * V, sizeof(float) * (size_t)V) == 0;
            if (!(e <= LIMIT)) fail_msg("%s, position %d: logits NMSE %.3g > %.0e", lethe_kv_policy_name(pols[k]), i, e, LIMIT);
        }
        for (int l = 0; l < N_LAYER; l++)
            for (int h = 0; h < N_HEAD_KV; h++) {
                const int32_t a = lethe_kv_head_len(cc, 0, l, h), b = lethe_kv_head_len(cv, 0, l, h);
                if (a != b) fail_msg("%s, layer %d head %d: %d live tokens on the CPU, %d on Vulkan",
                                     lethe_kv_policy_name(pols[k]), l, h, a, b);
            }
        lethe_kv_stats kc = lethe_get_kv_stats(cc), kvs = lethe_get_kv_stats(cv);
        print_message("  %s: %d positions, logits NMSE worst %.3g (%d bit-identical), evicted %llu on both\n",
                      lethe_kv_policy_name(pols[k]), N_TOK, worst, n_exact, (unsigned long long)kvs.evicted);
        assert_true(kvs.evicted > 0);
        assert_int_equal(kc.evicted, kvs.evicted);
        if (BIT_EXACT) assert_int_equal(n_exact, N_TOK);
        free(lc);
        free(lv);
        lethe_context_free(cv);
        lethe_model_free(mv);
        lethe_context_free(cc);
        lethe_model_free(mc);
    }
    unlink(path);
    free(path);
}

/* QUEST with ATTENTION on the device: the key bounds refreshed and the pages
 * selected there (shaders/quest.comp, k_attention.cu's k_quest_*), attention
 * reading only those. Vulkan: the q8_0 model, so every position's logits
 * must be the CPU's bits; CUDA: within LIMIT. The KV reads (the selected
 * pages' slots) equal; and QUEST must have changed the answer against
 * reading everything (`none` on the CPU), or the selection was never
 * exercised. */
#define N_QUEST 100    /* 4 pages per head stream, budget 2 pages */
static void test_quest_on_device(void **state) {
    (void)state;
    lethe_dtype wtype;
    if (!score_device(&wtype)) skip();
    char *path = make_model(wtype, 0);
    lethe_model *mc, *mv, *mn;
    lethe_context *cc = open_ctx_policy(path, "cpu", LETHE_KV_POLICY_QUEST, 64, &mc);
    lethe_context *cn = open_ctx_policy(path, "cpu", LETHE_KV_POLICY_NONE, 0, &mn);
    lethe_context *cv = open_ctx_policy(path, DEV, LETHE_KV_POLICY_QUEST, 64, &mv);
#ifndef LETHE_DMS_CUDA
    tu_pin_vulkan_driver();
#endif
    const int V = lethe_n_vocab(mc);
    int32_t tok[N_QUEST];
    for (int i = 0; i < N_QUEST; i++) tok[i] = (int32_t)((i * 53 + 7) % V);
    float *lc = feed(cc, tok, 0, N_QUEST, V), *ln = feed(cn, tok, 0, N_QUEST, V);
    g_vk_runs = g_fallbacks = g_kv_bindings = 0;
    lethe_set_log(on_log, NULL);
    lethe_set_log_level(LETHE_LOG_DEBUG);
    float *lv = feed(cv, tok, 0, N_QUEST, V);
    lethe_set_log_level(LETHE_LOG_INFO);
    lethe_set_log(NULL, NULL);
    assert_true(g_vk_runs > 0);
    assert_int_equal(g_fallbacks, 0);   /* every ATTENTION (and KV_STORE) on the device */
    check_kv_split();                   /* test_vulkan_dms_split: QUEST over several bindings */
    int n_exact = 0, n_changed = 0;
    double worst = 0.0;
    for (int i = 0; i < N_QUEST; i++) {
        const size_t o = (size_t)i * V;
        const double e = tu_nmse(lc + o, lv + o, (size_t)V);
        if (e > worst) worst = e;
        n_exact += memcmp(lc + o, lv + o, sizeof(float) * (size_t)V) == 0;
        n_changed += memcmp(lc + o, ln + o, sizeof(float) * (size_t)V) != 0;
        if (!(e <= LIMIT)) fail_msg("quest, position %d: logits NMSE %.3g > %.0e", i, e, LIMIT);
    }
    lethe_kv_stats kc = lethe_get_kv_stats(cc), kvs = lethe_get_kv_stats(cv), kn = lethe_get_kv_stats(cn);
    print_message("  quest: %d positions, logits NMSE worst %.3g (%d bit-identical), %d differ from `none`; KV reads "
                  "%llu on both (none: %llu)\n", N_QUEST, worst, n_exact, n_changed, (unsigned long long)kvs.reads,
                  (unsigned long long)kn.reads);
    if (BIT_EXACT) assert_int_equal(n_exact, N_QUEST);
    assert_true(n_changed > 0);
    assert_int_equal(kc.reads, kvs.reads);
    assert_true(kvs.reads < kn.reads);
    free(lc);
    free(ln);
    free(lv);
    lethe_context_free(cv);
    lethe_model_free(mv);
    lethe_context_free(cn);
    lethe_model_free(mn);
    lethe_context_free(cc);
    lethe_model_free(mc);
    unlink(path);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dms_on_vulkan),
        cmocka_unit_test(test_score_policies_on_vulkan),
        cmocka_unit_test(test_quest_on_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
