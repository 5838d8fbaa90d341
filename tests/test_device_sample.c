/* test_device_sample.c — on-device sampling support end to end: a decode
 * that returns each token's top-k candidates (TOP_K on the device that ran
 * the head, lethe_get_top_k) instead of, or besides, its logits must
 * generate the very tokens the logits path generates.
 *
 * For each backend (the CPU; Vulkan on lavapipe when the build has it), each
 * model (tiny synthetic llamas with vocabularies of 512 and 49152 tokens —
 * one and two TOP_K passes; SmolLM2-135M, the suite's default model) and each sampler chain the
 * candidates can serve (greedy; seeded top-k with temperature, top-p,
 * min-p), three runs from the same prompt and seeds:
 *   logits   lethe_sampler_sample(lethe_get_logits()) — today's host path;
 *   top-k    a top_k_only context (n_top_k = what the chain needs) and
 *            lethe_sample(): only the candidates come back;
 *   both     logits and candidates, lethe_sample(); every step's candidates
 *            are checked bit for bit against a full sort of the logits row.
 * The token streams must be identical (SmolLM2 on lavapipe, seconds a step:
 * logits against top-k only, 5 tokens). Several sequences decode together
 * (one batch, a token of each asking for output) on the tiny models, with one
 * chain for all or greedy next to top-k 40 (the context returns the larger
 * need, each sampler takes what it needs). On
 * Vulkan every op of the top-k runs, TOP_K included, must run on the device
 * (no fallback line in the debug log); the same on CUDA where there is a GPU
 * (tools/gpu-check.sh; skipped here). A chain the candidates cannot serve
 * (a repetition penalty) falls back to the logits, or fails cleanly on a
 * top_k_only context.
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
#include "synth.h"
#include "testutil.h"

#define MAX_GEN 24
#define MAX_PAR 3

typedef struct chain {
    const char *name;
    float temp;
    int32_t top_k;
    float top_p, min_p;
} chain;

static const chain k_chains[] = {
    {"greedy", 0.0f, 40, 0.95f, 0.05f},
    {"top-k 40 (the CLI default)", 0.8f, 40, 0.95f, 0.05f},
    {"top-k 64, min-p, top-p off", 1.3f, 64, 1.0f, 0.05f},
    {"top-k 5 hot", 2.0f, 5, 1.0f, 0.0f},
};

enum { RUN_LOGITS = 0, RUN_TOP_K, RUN_BOTH };
static const char *const k_run_names[] = {"logits", "top-k", "both"};

static int g_fallback_lines;

static void on_log(lethe_log_level level, const char *msg, void *user) {
    (void)user;
    if (strstr(msg, "executor: ") && strstr(msg, " runs ")) g_fallback_lines++;   /* some ops of a graph on the CPU */
    if (level >= LETHE_LOG_WARN) fprintf(stderr, "log: %s\n", msg);
}

static lethe_sampler_params chain_params(const chain *c, uint64_t seed) {
    lethe_sampler_params p = lethe_sampler_default_params();
    p.temperature = c->temp;
    p.top_k = c->top_k;
    p.top_p = c->top_p;
    p.min_p = c->min_p;
    p.repeat_penalty = 1.0f;
    p.seed = seed;
    return p;
}

/* Generate n tokens for each of n_par sequences forked from one prompt, in
 * context c (cleared, its outputs set for the run: one context serves every
 * run, as lethe_set_outputs allows; a Vulkan context costs seconds of
 * pipeline builds on lavapipe). */
static void generate(lethe_context *c, lethe_model *m, const chain *const *chs, int run, int n_par, int n,
                     lethe_token out[MAX_PAR][MAX_GEN], int *n_checked) {
    const int nv = lethe_n_vocab(m);
    lethe_sampler *s[MAX_PAR];
    for (int q = 0; q < n_par; q++) {
        s[q] = lethe_sampler_new(chain_params(chs[q], 1234 + q), nv);
        assert_non_null(s[q]);
    }
    int32_t need = 0;   /* the most any sequence's chain needs */
    for (int q = 0; q < n_par; q++) {
        const int32_t nq = lethe_sampler_top_k_needed(s[q]);
        assert_true(nq > 0);
        need = nq > need ? nq : need;
    }
    assert_int_equal(lethe_seq_clear(c, -1), LETHE_OK);
    assert_int_equal(lethe_set_outputs(c, run == RUN_LOGITS ? 0 : need, run == RUN_TOP_K), LETHE_OK);
    const lethe_token prompt[5] = {300, 301, 17, 260, 42};
    assert_int_equal(lethe_decode(c, lethe_batch_one(prompt, 5)), LETHE_OK);
    lethe_token last[MAX_PAR];
    int32_t *want = malloc((size_t)need * 2 * sizeof(int32_t));
    assert_non_null(want);
    for (int step = 0; step < n; step++) {
        for (int q = 0; q < n_par; q++) {
            const int32_t i = step == 0 ? -1 : q;   /* the prompt's last token serves every sequence */
            lethe_token t;
            if (run == RUN_LOGITS) {
                const float *lg = lethe_get_logits(c, i);
                assert_non_null(lg);
                const lethe_candidate *none;
                assert_true(lethe_get_top_k(c, i, &none) < 0);   /* n_top_k 0: no candidates */
                t = lethe_sampler_sample(s[q], lg);
            } else {
                if (run == RUN_BOTH) {   /* the device's candidates = a full sort of the row */
                    const lethe_candidate *cd;
                    assert_int_equal(lethe_get_top_k(c, i, &cd), need);
                    const float *lg = lethe_get_logits(c, i);
                    assert_non_null(lg);
                    tu_topk_oracle(lg, nv, need, want);
                    if (memcmp(cd, want, (size_t)need * sizeof *cd) != 0)
                        fail_msg("%s, step %d seq %d: candidates differ from the logits row's sort", chs[q]->name, step, q);
                    (*n_checked)++;
                } else {
                    assert_null(lethe_get_logits(c, i));   /* top_k_only: no rows came back */
                }
                t = lethe_sample(s[q], c, i);
            }
            assert_true(t >= 0 && t < nv);
            out[q][step] = last[q] = t;
        }
        if (step == 0)
            for (int q = 1; q < n_par; q++) assert_int_equal(lethe_seq_fork(c, 0, q), LETHE_OK);
        int32_t seq[MAX_PAR];
        int8_t want_out[MAX_PAR];
        for (int q = 0; q < n_par; q++) seq[q] = q, want_out[q] = 1;
        lethe_batch b = {.n_tokens = n_par, .tokens = last, .seq_id = seq, .logits = want_out};
        assert_int_equal(lethe_decode(c, b), LETHE_OK);
    }
    free(want);
    for (int q = 0; q < n_par; q++) lethe_sampler_free(s[q]);
}

/* Each of the first n_chains chains on n_par sequences; mixed: one round,
 * sequence q sampling with chain q (greedy next to top-k in one batch). */
static void compare_runs(const char *what, lethe_model *m, int n_chains, int n_par, int n, bool mixed, int n_runs) {
    int checked = 0;
    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 2;
    cp.n_seq_max = MAX_PAR;
    lethe_status st;
    lethe_context *c = lethe_context_new(m, cp, &st);
    if (!c) fail_msg("context: %s: %s", lethe_strerror(st), lethe_last_error());
    tu_pin_vulkan_driver();   /* the context opened the device: keep lavapipe named for LeakSanitizer */
    for (int k = 0; k < (mixed ? 1 : n_chains); k++) {
        const chain *chs[MAX_PAR];
        for (int q = 0; q < n_par; q++) chs[q] = &k_chains[mixed ? q : k];
        const char *name = mixed ? "greedy + top-k 40, a sequence each" : k_chains[k].name;
        lethe_token r[3][MAX_PAR][MAX_GEN];
        for (int run = 0; run < n_runs; run++) generate(c, m, chs, run, n_par, n, r[run], &checked);
        for (int run = 1; run < n_runs; run++)
            for (int q = 0; q < n_par; q++)
                for (int i = 0; i < n; i++)
                    if (r[run][q][i] != r[RUN_LOGITS][q][i])
                        fail_msg("%s, %s, seq %d: token %d is %d with logits, %d with %s", what, name, q, i,
                                 r[RUN_LOGITS][q][i], r[run][q][i], k_run_names[run]);
        print_message("  %-34s %-28s %d x %d tokens identical (logits / top-k%s)\n", what, name, n_par, n,
                      n_runs > RUN_BOTH ? " / both" : "");
    }
    assert_true(n_runs <= RUN_BOTH || checked > 0);
    lethe_context_free(c);
}

static lethe_model *load(const char *path, const char *backend) {
    lethe_model_params mp = lethe_model_default_params();
    mp.backend = backend;
    lethe_status st;
    lethe_model *m = lethe_model_load(path, mp, &st);
    if (!m) fail_msg("load %s (%s): %s: %s", path, backend, lethe_strerror(st), lethe_last_error());
    return m;
}

static char *g_tiny, *g_tiny_v49k;

static void run_backend(const char *backend) {
    lethe_set_log(on_log, NULL);
    lethe_set_log_level(LETHE_LOG_DEBUG);
    g_fallback_lines = 0;
    char what[64];
    lethe_model *m = load(g_tiny, backend);
    snprintf(what, sizeof what, "tiny llama (V 512) on %s", backend);
    compare_runs(what, m, (int)(sizeof k_chains / sizeof k_chains[0]), 1, MAX_GEN, false, 3);
    snprintf(what, sizeof what, "tiny llama, 3 sequences, %s", backend);
    compare_runs(what, m, 2, MAX_PAR, 12, false, 3);
    lethe_model_free(m);
    /* SmolLM2's vocabulary on a tiny body: TOP_K's two passes (segments) */
    m = load(g_tiny_v49k, backend);
    snprintf(what, sizeof what, "tiny llama (V 49152) on %s", backend);
    compare_runs(what, m, 2, 1, 8, false, 3);
    snprintf(what, sizeof what, "tiny llama (V 49152), %s", backend);
    compare_runs(what, m, 2, 2, 8, true, 3);
    lethe_model_free(m);
    /* tools/test.sh fetches SmolLM2 (test_engine fails without it); a GPU
     * machine has no model cache: say so and go on with the tiny models */
    const char *smol = getenv("LETHE_TEST_MODEL");
    if (!smol || access(smol, R_OK) != 0) {
        print_message("  SmolLM2 (%s) is not on this machine: skipped on %s\n", smol ? smol : "LETHE_TEST_MODEL unset",
                      backend);
    } else {
        m = load(tu_model_path(), backend);
        snprintf(what, sizeof what, "SmolLM2-135M (V 49152) on %s", backend);
        /* lavapipe: seconds a SmolLM2 step on a busy machine (and batches of
         * several rows take its slower tiled matmul): short streams there,
         * logits against top-k only (the candidates' bits are checked on the
         * tiny models) */
        const bool lvp = strcmp(backend, "vulkan") == 0;
        compare_runs(what, m, 2, 1, lvp ? 5 : 8, false, lvp ? 2 : 3);
        lethe_model_free(m);
    }
    if (strcmp(backend, "cpu") != 0) assert_int_equal(g_fallback_lines, 0);   /* TOP_K ran on the device */
    lethe_set_log(NULL, NULL);
}

static void test_cpu(void **state) {
    (void)state;
    run_backend("cpu");
}

static void test_vulkan(void **state) {
    (void)state;
    if (!strstr(lethe_version(), "vulkan")) skip();   /* a build without Vulkan */
    run_backend("vulkan");
}

/* tools/gpu-check.sh runs this on an NVIDIA GPU; CI has none */
static void test_cuda(void **state) {
    (void)state;
    char name[128];
    if (lethe_device_name("cuda", 0, name, sizeof name) != LETHE_OK) {
        print_message("  CUDA: skipped, no CUDA device here (%s)\n", lethe_last_error());
        skip();
    }
    run_backend("cuda");
}

/* The API's edges: bad n_top_k, a chain the candidates cannot serve. */
static void test_api_edges(void **state) {
    (void)state;
    lethe_model *m = load(g_tiny, "cpu");
    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = 32;
    cp.n_threads = 2;
    lethe_status st;
    cp.n_top_k = LETHE_TOP_K_MAX + 1;
    assert_null(lethe_context_new(m, cp, &st));
    assert_int_equal(st, LETHE_ERR_INVALID_ARG);
    cp.n_top_k = 0;
    cp.top_k_only = true;   /* nothing would come back */
    assert_null(lethe_context_new(m, cp, &st));
    cp.n_top_k = 8;
    lethe_context *c = lethe_context_new(m, cp, &st);
    assert_non_null(c);
    const lethe_token p[3] = {300, 301, 17};
    assert_int_equal(lethe_decode(c, lethe_batch_one(p, 3)), LETHE_OK);
    const lethe_candidate *cd;
    assert_int_equal(lethe_get_top_k(c, -1, &cd), 8);
    assert_true(lethe_get_top_k(c, 0, &cd) < 0);   /* token 0 asked for no output */
    assert_null(lethe_get_logits(c, -1));          /* top_k_only */
    /* a repetition penalty needs the logits: refused on a top_k_only context ... */
    lethe_sampler_params sp = lethe_sampler_default_params();
    sp.repeat_penalty = 1.2f;
    sp.seed = 3;
    lethe_sampler *s = lethe_sampler_new(sp, lethe_n_vocab(m));
    assert_int_equal(lethe_sampler_top_k_needed(s), 0);
    assert_int_equal(lethe_sample(s, c, -1), -1);
    /* ... and served by the logits once they are asked for again */
    assert_int_equal(lethe_set_outputs(c, 8, false), LETHE_OK);
    assert_true(lethe_get_top_k(c, -1, &cd) < 0);   /* set_outputs drops the last outputs */
    assert_int_equal(lethe_decode(c, lethe_batch_one(&p[2], 1)), LETHE_OK);
    const lethe_token a = lethe_sample(s, c, -1);
    lethe_sampler_reset(s);
    assert_int_equal(lethe_sampler_sample(s, lethe_get_logits(c, -1)), a);
    assert_int_equal(lethe_set_outputs(c, LETHE_TOP_K_MAX + 1, false), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_set_outputs(c, 0, true), LETHE_ERR_INVALID_ARG);
    lethe_sampler_free(s);
    lethe_context_free(c);
    lethe_model_free(m);
}

static int setup(void **state) {
    (void)state;
    lethe_synth_params p = lethe_synth_default_params();
    p.n_layer = 2;
    p.n_embd = 128;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.n_ff = 256;
    p.n_vocab = 512;
    p.wtype = p.embd_type = LETHE_Q8_0;
    p.seed = 11;
    g_tiny = tu_write_temp("", 0);
    if (lethe_synth_write(g_tiny, p) != LETHE_OK) return -1;
    p.n_embd = 64;
    p.n_head = 2;
    p.n_head_kv = 1;
    p.n_ff = 128;
    p.n_vocab = 49152;
    g_tiny_v49k = tu_write_temp("", 0);
    return lethe_synth_write(g_tiny_v49k, p) == LETHE_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    unlink(g_tiny);
    unlink(g_tiny_v49k);
    free(g_tiny);
    free(g_tiny_v49k);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_api_edges),
        cmocka_unit_test(test_cpu),
        cmocka_unit_test(test_vulkan),
        cmocka_unit_test(test_cuda),
    };
    /* LETHE_TEST_FILTER=test_cuda: the CUDA run alone (ctest test_device_sample_cuda_emu) */
    const char *filter = getenv("LETHE_TEST_FILTER");
    if (filter && *filter) cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, setup, teardown);
}
