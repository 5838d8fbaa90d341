/* test_vulkan_e2e.c — the default model (SmolLM2-135M, q4_1) end to end on
 * the Vulkan backend against the CPU backend: a greedy continuation of 16
 * tokens must be identical, and the logits close.
 *
 * How close, and why: the shaders do the CPU's arithmetic (q8 activations
 * rounded as the CPU rounds them, the same integer block dot products), so a
 * single matmul agrees to ~1e-14 (test_backend_ops), but sums run in another
 * order. A last-bit difference then flips an 8-bit activation rounding or an
 * f16 KV-cache rounding somewhere in 30 layers, and the runs drift apart by
 * the size of that quantization noise: the mechanism test_llama_cpp_parity
 * documents between lethe and llama.cpp (limit 2e-2 there). Measured here:
 * NMSE ~1e-5 for a one-token prompt, 1e-3..1e-2 at later positions. So a
 * one-token prompt must be within 1e-4 (no attention over a rounded cache
 * yet), every step within LIMIT and their mean within LIMIT_MEAN (below);
 * the worst is printed.
 *
 * In CI the device is Mesa's lavapipe (VK_LOADER_DRIVERS_SELECT in
 * tests/CMakeLists.txt); the KV cache lives in the device's shared memory
 * and KV_STORE and ATTENTION run on Vulkan too. The
 * test checks, through the log, that the Vulkan context really ran on Vulkan
 * (a device that fails to start falls back to the CPU with a warning).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lethe.h"
#include "testutil.h"

#define N_GEN 16
#define LIMIT_FIRST 1e-4   /* logits of a one-token prompt */
/* Later steps: q8 activation rounding flips make the per-step NMSE noisy
 * (1e-4 .. 1e-2 with every op but attention on Vulkan, single spikes near
 * 3e-2 with the KV cache on the device, whose ops alone agree with the CPU
 * to 1e-14 in test_backend_ops): every step within LIMIT, their mean within
 * LIMIT_MEAN, and every greedy token identical. */
#define LIMIT 5e-2
#define LIMIT_MEAN 1e-2
/* Logit gap under which the two backends may order the top two tokens
 * differently: the drift moves single logits by up to ~0.5 (measured at
 * 30-logit scale), and SmolLM2 meets a 0.03 tie within 16 tokens here. */
#define NEAR_TIE 0.1f

static int g_vk_lines, g_fallback_lines, g_fallback_warnings;

static void on_log(lethe_log_level level, const char *msg, void *user) {
    (void)user;
    if (strstr(msg, "vulkan: nodes [")) g_vk_lines++;           /* a compute on the device (debug log) */
    if (strstr(msg, "executor: vulkan runs")) g_fallback_lines++;   /* some ops of a graph on the CPU */
    if (level >= LETHE_LOG_WARN) {
        g_fallback_warnings++;
        fprintf(stderr, "log: %s\n", msg);
    }
}

static lethe_context *open_ctx(const char *backend, lethe_model **m) {
    lethe_model_params mp = lethe_model_default_params();
    mp.backend = backend;
    lethe_status st;
    *m = lethe_model_load(tu_model_path(), mp, &st);
    if (!*m) fail_msg("load (%s): %s: %s", backend, lethe_strerror(st), lethe_last_error());
    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 2;
    lethe_context *c = lethe_context_new(*m, cp, &st);
    if (!c) fail_msg("context (%s): %s: %s", backend, lethe_strerror(st), lethe_last_error());
    return c;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static void test_greedy_and_logits(void **state) {
    (void)state;
    if (!strstr(lethe_version(), "vulkan")) skip();   /* a build without Vulkan */
    lethe_set_log(on_log, NULL);
    lethe_set_log_level(LETHE_LOG_DEBUG);
    lethe_model *mc, *mv;
    lethe_context *cc = open_ctx("cpu", &mc), *cv = open_ctx("vulkan", &mv);
    tu_pin_vulkan_driver();
    const int nv = lethe_n_vocab(mc);
    lethe_token prompt[16];
    const char *text = "The capital of France is";
    int np = lethe_tokenize(mc, text, strlen(text), prompt, 16, false, false);
    assert_true(np > 0);
    lethe_token tc[N_GEN], tv[N_GEN];
    /* a one-token prompt first: no drift source but summation order */
    assert_int_equal(lethe_decode(cc, lethe_batch_one(prompt, 1)), LETHE_OK);
    assert_int_equal(lethe_decode(cv, lethe_batch_one(prompt, 1)), LETHE_OK);
    double e0 = tu_nmse(lethe_get_logits(cc, -1), lethe_get_logits(cv, -1), (size_t)nv);
    print_message("  first token: logits NMSE %.3g (limit %.0e)\n", e0, LIMIT_FIRST);
    assert_true(e0 <= LIMIT_FIRST);
    assert_int_equal(lethe_seq_clear(cc, 0), LETHE_OK);
    assert_int_equal(lethe_seq_clear(cv, 0), LETHE_OK);
    double worst = 0.0, errs[N_GEN + 1];
    lethe_token next_c = 0, next_v = 0;
    int n_ties = 0;
    for (int step = 0; step <= N_GEN; step++) {
        lethe_batch bc = step == 0 ? lethe_batch_one(prompt, np) : lethe_batch_one(&next_c, 1);
        lethe_batch bv = step == 0 ? lethe_batch_one(prompt, np) : lethe_batch_one(&next_v, 1);
        assert_int_equal(lethe_decode(cc, bc), LETHE_OK);
        lethe_status st = lethe_decode(cv, bv);
        if (st != LETHE_OK) fail_msg("vulkan decode: %s: %s", lethe_strerror(st), lethe_last_error());
        const float *lc = lethe_get_logits(cc, -1), *lv = lethe_get_logits(cv, -1);
        assert_non_null(lc);
        assert_non_null(lv);
        double e = tu_nmse(lc, lv, (size_t)nv);
        errs[step] = e;
        if (e > worst) worst = e;
        if (!(e <= LIMIT)) fail_msg("step %d: logits NMSE %.3g > %.0e", step, e, LIMIT);
        if (step == N_GEN) break;
        next_c = tc[step] = argmax(lc, nv);
        tv[step] = argmax(lv, nv);
        /* both continue with the CPU's token, so one near-tie does not end
         * the comparison; Vulkan must pick the CPU's token unless the CPU's
         * own margin to Vulkan's pick is within the drift (NEAR_TIE) */
        next_v = tc[step];
        if (tc[step] != tv[step]) {
            const float margin = lc[tc[step]] - lc[tv[step]];
            print_message("  step %d: near tie, CPU %d, Vulkan %d (CPU margin %.3f)\n", step, tc[step], tv[step], margin);
            if (!(margin < NEAR_TIE))
                fail_msg("step %d: greedy token %d on the CPU, %d on Vulkan (margin %.3f)", step, tc[step], tv[step],
                         margin);
            n_ties++;
        }
    }
    int below = 0;
    double mean = 0.0;
    for (int i = 0; i <= N_GEN; i++) {
        below += errs[i] <= 1e-4;
        mean += errs[i] / (N_GEN + 1);
    }
    print_message("  logits NMSE mean %.3g (limit %.0e)\n", mean, LIMIT_MEAN);
    assert_true(mean <= LIMIT_MEAN);
    assert_true(n_ties <= 2);
    print_message("  %d of %d greedy tokens identical; logits NMSE worst %.3g, %d of %d steps <= 1e-4\n",
                  N_GEN - n_ties, N_GEN, worst,
                  below, N_GEN + 1);
    assert_true(g_vk_lines >= N_GEN);   /* every decode computed on Vulkan ... */
    assert_int_equal(g_fallback_lines, 0);   /* ... every op of it, the KV cache's included */
    assert_int_equal(g_fallback_warnings, 0);
    lethe_set_log(NULL, NULL);
    lethe_context_free(cv);
    lethe_context_free(cc);
    lethe_model_free(mv);
    lethe_model_free(mc);
}

/* A Vulkan device that is not there: the context still opens, a warning
 * says why, and everything runs on the CPU with the CPU's results. */
static void test_no_device_falls_back(void **state) {
    (void)state;
    g_vk_lines = g_fallback_warnings = 0;
    lethe_set_log(on_log, NULL);
    lethe_set_log_level(LETHE_LOG_INFO);
    setenv("LETHE_VK_DEVICE", "99", 1);
    lethe_model *mc, *mv;
    lethe_context *cc = open_ctx("cpu", &mc), *cv = open_ctx("vulkan", &mv);
    unsetenv("LETHE_VK_DEVICE");
    lethe_token t[2] = {504, 3575};
    assert_int_equal(lethe_decode(cc, lethe_batch_one(t, 2)), LETHE_OK);
    assert_int_equal(lethe_decode(cv, lethe_batch_one(t, 2)), LETHE_OK);
    assert_true(tu_nmse(lethe_get_logits(cc, -1), lethe_get_logits(cv, -1), (size_t)lethe_n_vocab(mc)) == 0.0);
    assert_int_equal(g_vk_lines, 0);
    if (strstr(lethe_version(), "vulkan")) assert_int_equal(g_fallback_warnings, 1);
    lethe_set_log(NULL, NULL);
    lethe_context_free(cv);
    lethe_context_free(cc);
    lethe_model_free(mv);
    lethe_model_free(mc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_and_logits),
        cmocka_unit_test(test_no_device_falls_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
