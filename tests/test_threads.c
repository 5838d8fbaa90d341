/* test_threads.c — one model shared read-only by several contexts, each
 * driven by its own thread: every thread's logits must equal, bit for bit,
 * those of the same work run alone. Threads tokenize, render the chat
 * template, prefill, decode greedily and read KV stats concurrently, and
 * two of them share a prompt (same code paths at the same time).
 *
 * tools/test-tsan.sh runs this test in a ThreadSanitizer build (LETHE_TSAN);
 * there LETHE_TEST_CTX_THREADS=1 keeps OpenMP (not TSan-instrumented) out
 * of the picture, see that script. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lethe.h"
#include "testutil.h"

#define N_WORKERS 4
#define N_GEN 4   /* small: the TSan build runs this ~15x slower */

static lethe_model *g_model;
static int32_t g_nv;
static int g_ctx_threads = 2;

static const char *k_questions[N_WORKERS] = {
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "What is the capital of France?",   /* twice: two contexts on the same prompt */
    "def fibonacci(n):",
};

typedef struct job {
    const char *question;
    float *logits;          /* [N_GEN + 1][n_vocab]: after the prompt, then after each token */
    lethe_token gen[N_GEN];
    lethe_status status;
    char error[256];
} job;

static int setup(void **state) {
    (void)state;
    const char *t = getenv("LETHE_TEST_CTX_THREADS");
    if (t && atoi(t) > 0) g_ctx_threads = atoi(t);
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

/* The work of one thread; reports instead of asserting (cmocka's asserts
 * belong to the main thread). */
static void *run_job(void *arg) {
    job *j = arg;
    j->status = LETHE_OK;
    lethe_context_params p = lethe_context_default_params();
    p.n_ctx = 256;
    p.n_threads = g_ctx_threads;
    lethe_context *c = lethe_context_new(g_model, p, &j->status);
    lethe_token toks[256];
    char text[1024];
    const lethe_chat_message msg = {"user", j->question};
    int32_t n_text = c ? lethe_chat_apply(g_model, &msg, 1, true, text, sizeof text) : -1;
    int32_t n = n_text > 0 && n_text < (int32_t)sizeof text
                    ? lethe_tokenize(g_model, text, (size_t)n_text, toks, 256, true, true) : -1;
    if (!c || n <= 0 || n > 256) {
        if (j->status == LETHE_OK) j->status = LETHE_ERR_INTERNAL;
        goto out;
    }
    if ((j->status = lethe_decode(c, lethe_batch_one(toks, n))) != LETHE_OK) goto out;
    for (int i = 0; i <= N_GEN; i++) {
        const float *lg = lethe_get_logits(c, -1);
        if (!lg) { j->status = LETHE_ERR_INTERNAL; goto out; }
        memcpy(j->logits + (size_t)i * g_nv, lg, (size_t)g_nv * sizeof(float));
        if (i == N_GEN) break;
        lethe_token t = 0;
        for (int v = 1; v < g_nv; v++) if (lg[v] > lg[t]) t = v;
        j->gen[i] = t;
        char piece[64];
        (void)lethe_token_to_piece(g_model, t, piece, sizeof piece, false);
        (void)lethe_get_kv_stats(c);
        if ((j->status = lethe_decode(c, lethe_batch_one(&t, 1))) != LETHE_OK) goto out;
    }
out:
    if (j->status != LETHE_OK) snprintf(j->error, sizeof j->error, "%s", lethe_last_error());
    lethe_context_free(c);
    return NULL;
}

static void test_contexts_in_parallel_match_running_alone(void **state) {
    (void)state;
    size_t bytes = (size_t)(N_GEN + 1) * g_nv * sizeof(float);
    job alone[N_WORKERS], par[N_WORKERS];
    for (int i = 0; i < N_WORKERS; i++) {
        alone[i] = (job){.question = k_questions[i], .logits = malloc(bytes)};
        par[i] = (job){.question = k_questions[i], .logits = malloc(bytes)};
        run_job(&alone[i]);   /* one at a time, on this thread */
        if (alone[i].status != LETHE_OK) fail_msg("alone %d: %s: %s", i, lethe_strerror(alone[i].status), alone[i].error);
    }
    /* the same work, all at once */
    pthread_t th[N_WORKERS];
    for (int i = 0; i < N_WORKERS; i++) assert_int_equal(pthread_create(&th[i], NULL, run_job, &par[i]), 0);
    for (int i = 0; i < N_WORKERS; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
    for (int i = 0; i < N_WORKERS; i++) {
        if (par[i].status != LETHE_OK) fail_msg("thread %d: %s: %s", i, lethe_strerror(par[i].status), par[i].error);
        assert_memory_equal(par[i].gen, alone[i].gen, sizeof alone[i].gen);
        assert_memory_equal(par[i].logits, alone[i].logits, bytes);
    }
    /* the two threads on one prompt agree with each other too */
    assert_memory_equal(par[0].logits, par[2].logits, bytes);
    for (int i = 0; i < N_WORKERS; i++) { free(alone[i].logits); free(par[i].logits); }
}

/* Errors are per thread: a failure on one thread does not change the
 * message another thread reads. */
static void *fail_on_thread(void *arg) {
    (void)arg;
    lethe_status st;
    lethe_context_params p = lethe_context_default_params();
    p.n_ctx = -5;
    lethe_context *c = lethe_context_new(g_model, p, &st);
    return (void *)(intptr_t)(c == NULL && st == LETHE_ERR_INVALID_ARG && strstr(lethe_last_error(), "n_ctx -5"));
}

static void test_last_error_is_per_thread(void **state) {
    (void)state;
    assert_int_equal(lethe_decode(NULL, lethe_batch_one(NULL, 0)), LETHE_ERR_INVALID_ARG);
    char mine[256];
    snprintf(mine, sizeof mine, "%s", lethe_last_error());
    pthread_t th;
    void *ok = NULL;
    assert_int_equal(pthread_create(&th, NULL, fail_on_thread, NULL), 0);
    assert_int_equal(pthread_join(th, &ok), 0);
    assert_true(ok != NULL);
    assert_string_equal(lethe_last_error(), mine);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_contexts_in_parallel_match_running_alone),
        cmocka_unit_test(test_last_error_is_per_thread),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
