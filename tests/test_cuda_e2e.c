/* test_cuda_e2e.c — whole models on the CUDA backend against the CPU:
 * greedy continuations must be the same tokens and the logits close, for
 * SmolLM2-135M (the default test model, q4_1) and for tiny synthetic models
 * (llama and qwen3 shapes, f16 / q8_0 / q4_0 weights, DMS neuron and adapter
 * variants, whose decisions and borrowed channel run on the GPU).
 * Without an NVIDIA GPU (CI) every test is skipped with a message saying so;
 * tools/gpu-check.sh runs it on one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "common.h"
#include "lethe.h"
#include "synth.h"
#include "testutil.h"

#define N_PROMPT 24
#define N_GEN 16
#define N_MATCH 8   /* greedy tokens that must agree */

static bool g_have_cuda;
/* LETHE_TEST_E2E_BACKEND=vulkan runs the same comparisons on Vulkan (a check
 * of this test itself where there is no GPU: lavapipe). */
static const char *g_backend = "cuda";
static bool g_saw_cuda_log;

static void log_sink(lethe_log_level level, const char *msg, void *user) {
    (void)user;
    if (strstr(msg, "cuda: device")) g_saw_cuda_log = true;
    if (level >= LETHE_LOG_WARN) fprintf(stderr, "%s\n", msg);
}

/* Greedy continuation of a fixed prompt: out[s] = the argmax of step s;
 * every step's logits into *logits ([N_GEN][n_vocab], malloc'ed). With
 * `force` the step feeds force[s] instead of its own argmax (teacher
 * forcing: both backends then see the same history at every step). */
static void run(const char *path, const char *backend, lethe_kv_policy_kind pol, const lethe_token *force,
                lethe_token *out, float **logits, int32_t *n_vocab) {
    lethe_model_params mp = lethe_model_default_params();
    mp.backend = backend;
    lethe_status st;
    lethe_model *m = lethe_model_load(path, mp, &st);
    if (!m) fail_msg("load %s on %s: %s", path, backend, lethe_last_error());
    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = 256;
    cp.n_batch = 64;
    cp.kv_policy = pol;
    lethe_context *ctx = lethe_context_new(m, cp, &st);
    if (!ctx) fail_msg("context on %s: %s", backend, lethe_last_error());
    const lethe_model_info mi = lethe_model_get_info(m);
    *n_vocab = mi.n_vocab;
    lethe_token prompt[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) prompt[i] = (lethe_token)((i * 7919 + 11) % (mi.n_vocab - 8) + 3);
    int32_t n_prompt = N_PROMPT;
    if (mi.n_vocab > 10000) {   /* a real model: a real prompt (random ids give near-ties) */
        static const char text[] = "The capital of France is Paris. The capital of Italy is";
        n_prompt = lethe_tokenize(m, text, sizeof text - 1, prompt, N_PROMPT, true, false);
        assert_true(n_prompt > 0 && n_prompt <= N_PROMPT);
    }
    assert_int_equal(lethe_decode(ctx, lethe_batch_one(prompt, n_prompt)), LETHE_OK);
    for (int s = 0; s < N_GEN; s++) {
        const float *lg = lethe_get_logits(ctx, -1);
        assert_non_null(lg);
        if (s == 0) *logits = malloc((size_t)N_GEN * (size_t)mi.n_vocab * sizeof(float));
        memcpy(*logits + (size_t)s * (size_t)mi.n_vocab, lg, (size_t)mi.n_vocab * sizeof(float));
        lethe_token best = 0;
        for (int32_t v = 1; v < mi.n_vocab; v++)
            if (lg[v] > lg[best]) best = v;
        out[s] = best;
        const lethe_token next = force ? force[s] : best;
        assert_int_equal(lethe_decode(ctx, lethe_batch_one(&next, 1)), LETHE_OK);
    }
    lethe_context_free(ctx);
    lethe_model_free(m);
}

/* A step's choices differ at a near-tie: each backend ranks the other's
 * token within TIE_LOGITS of its own (the CPU's q8-rounded activations move
 * logits by ~0.05 on SmolLM2; a kernel bug moves them by far more). */
#define TIE_LOGITS 0.1f

static void compare(const char *what, const char *path, lethe_kv_policy_kind pol) {
    lethe_token a[N_GEN], b[N_GEN];
    float *la = NULL, *lb = NULL;
    int32_t nv = 0;
    run(path, "cpu", pol, NULL, a, &la, &nv);
    g_saw_cuda_log = false;
    run(path, g_backend, pol, a, b, &lb, &nv);   /* teacher-forced by the CPU's tokens */
    if (!strcmp(g_backend, "cuda") && !g_saw_cuda_log) fail_msg("%s: the CUDA backend did not start", what);
    const double e = tu_nmse(la, lb, (size_t)nv);   /* the first step */
    int same = 0, ties = 0, bad = -1;
    float gap_a = 0.0f, gap_b = 0.0f;
    for (int s = 0; s < N_GEN; s++) {
        if (a[s] == b[s]) {
            same++;
            continue;
        }
        const float *ra = la + (size_t)s * (size_t)nv, *rb = lb + (size_t)s * (size_t)nv;
        const float ga = ra[a[s]] - ra[b[s]], gb = rb[b[s]] - rb[a[s]];
        if (ga < TIE_LOGITS && gb < TIE_LOGITS) ties++;
        else if (bad < 0) {
            bad = s;
            gap_a = ga;
            gap_b = gb;
        }
    }
    print_message("  %-34s logits NMSE %.3g, greedy tokens equal: %d of %d (near-ties %d)\n", what, e, same, N_GEN, ties);
    free(la);
    free(lb);
    /* The CPU rounds activations to q8 for quantized weights, the GPU keeps
     * them f32: logits differ by that rounding (seen 1e-4 on lavapipe), and
     * a greedy choice may differ at a near-tie (SmolLM2: 0.02 logits apart
     * at one step of this prompt; the device's f16 prefill attention moves
     * it to the other side). Both runs see the CPU's tokens, so every step
     * is compared. */
    if (!(e < 2e-3)) fail_msg("%s: logits NMSE %.3g >= 2e-3", what, e);
    if (bad >= 0)
        fail_msg("%s: step %d: the CPU chose %d, %s %d: %.3g / %.3g logits apart (a near-tie is < %.2g)", what, bad,
                 a[bad], g_backend, b[bad], gap_a, gap_b, TIE_LOGITS);
    if (same < N_MATCH) fail_msg("%s: greedy choices agree at %d of %d steps (want >= %d)", what, same, N_GEN, N_MATCH);
}

static char *synth(const char *arch, lethe_dtype t, int dms_variant) {
    lethe_synth_params p = lethe_synth_default_params();
    p.arch = arch;
    p.n_layer = 3;
    p.n_embd = 128;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.n_ff = 256;
    p.n_vocab = 512;
    p.wtype = p.embd_type = t;
    p.seed = 5;
    p.dms_variant = dms_variant;
    p.dms_window = 8;
    char *path = tu_write_temp("", 0);
    lethe_status st = lethe_synth_write(path, p);
    if (st != LETHE_OK) fail_msg("synth: %s", lethe_last_error());
    return path;
}

static void test_smollm2(void **state) {
    (void)state;
    if (!g_have_cuda) skip();
    const char *model = getenv("LETHE_TEST_MODEL");
    if (!model || access(model, R_OK) != 0) {   /* the GPU machine has no network and no model cache */
        print_message("  SmolLM2 (%s) is not on this machine: skipped (test_synthetic covers its shape)\n",
                      model ? model : "LETHE_TEST_MODEL unset");
        skip();
    }
    compare("SmolLM2-135M q4_1", model, LETHE_KV_POLICY_NONE);
}

static void test_synthetic(void **state) {
    (void)state;
    if (!g_have_cuda) skip();
    static const struct { const char *arch; lethe_dtype t; int dms; lethe_kv_policy_kind pol; const char *what; } k[] = {
        {"llama", LETHE_F16, 0, LETHE_KV_POLICY_NONE, "llama f16"},
        {"llama", LETHE_Q8_0, 0, LETHE_KV_POLICY_NONE, "llama q8_0"},
        {"qwen3", LETHE_Q4_0, 0, LETHE_KV_POLICY_NONE, "qwen3 q4_0"},
        {"qwen3", LETHE_F16, 1, LETHE_KV_POLICY_DMS, "qwen3 f16 DMS neuron (w 8)"},
        {"llama", LETHE_Q8_0, 2, LETHE_KV_POLICY_DMS, "llama q8_0 DMS adapter (w 8)"},
        {"llama", LETHE_Q4_1, 0, LETHE_KV_POLICY_NONE, "llama q4_1 (SmolLM2's type)"},
    };
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k); i++) {
        char *path = synth(k[i].arch, k[i].t, k[i].dms);
        compare(k[i].what, path, k[i].pol);
        unlink(path);
        free(path);
    }
}

static int setup(void **state) {
    (void)state;
    lethe_set_log(log_sink, NULL);
    lethe_set_log_level(LETHE_LOG_INFO);
    const char *env = getenv("LETHE_TEST_E2E_BACKEND");
    if (env && *env) g_backend = env;
    lethe_backend *be = lethe_backend_gpu_new(g_backend, 0);
    g_have_cuda = be != NULL;
    if (be) be->iface->free(be);
    else print_message("%s: skipped, no such device here (%s)\n", g_backend, lethe_last_error());
    lethe_clear_error();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smollm2),
        cmocka_unit_test(test_synthetic),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
