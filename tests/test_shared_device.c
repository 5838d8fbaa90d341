/* test_shared_device.c — one GPU device per process, shared by the contexts
 * that use it, with each weight uploaded once (backends/vulkan/vk_device.c,
 * backends/cuda/cuda_backend.c; docs/DESIGN-CHANGES.md).
 *
 * On Vulkan (lavapipe in CI), on tiny synthetic models:
 *   - two contexts on one model: the device uploads each weight once (its
 *     upload counter, and the memory report of both contexts), both give
 *     the CPU backend's logits, and the same bits as each other;
 *   - two threads decoding at once in two contexts give the bits of the
 *     same work run one after the other (tools/test-tsan.sh runs this file
 *     too);
 *   - the weight cache is keyed by host address and outlives contexts: new
 *     bytes at an address it holds are served stale until the address is
 *     forgotten (shown at the backend level, where the "new model at the
 *     same address" is certain: the same buffer rewritten), and
 *     lethe_model_free forgets its model's weights, so a model freed and
 *     another loaded (on the same mapping when the kernel gives it back)
 *     gets its own weights and the CPU's logits.
 * CUDA runs the same cases where a GPU is (tools/gpu-check.sh); here the
 * CUDA half skips with a message. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "common.h"
#include "engine.h"
#include "executor.h"
#include "graph.h"
#include "lethe.h"
#include "model.h"
#include "synth.h"
#include "testutil.h"

#define N_GEN 3        /* greedy tokens after the prompt (lavapipe is slow) */
/* logits NMSE against the CPU: test_vulkan_e2e's bar on Vulkan,
 * test_cuda_e2e's on CUDA (its GEMV takes f32 activations where the CPU
 * rounds them to q8) */
static double g_limit = 1e-4;

static char g_path_a[64], g_path_b[64];   /* same shapes, different weights */
static const char *g_backend = "vulkan";

static const lethe_token k_p1[] = {5, 17, 42, 99, 200, 7};
static const lethe_token k_p2[] = {300, 12, 64, 64, 1};

static void write_model(char *path, uint64_t seed) {
    snprintf(path, 64, "/tmp/lethe_shared_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    lethe_synth_params p = lethe_synth_default_params();
    p.wtype = LETHE_Q8_0;   /* a quantized GEMV, as real models have */
    p.seed = seed;
    if (lethe_synth_write(path, p) != LETHE_OK) fail_msg("synth: %s", lethe_last_error());
}

static bool have_device(void) {
    lethe_backend *be = lethe_backend_gpu_new(g_backend, 0);
    if (!be) {
        print_message("  %s: skipped, no device here (%s)\n", g_backend, lethe_last_error());
        lethe_clear_error();
        return false;
    }
    tu_pin_vulkan_driver();   /* LeakSanitizer names lavapipe's own leaks (tests/lsan.supp) */
    be->iface->free(be);
    return true;
}

static lethe_model *load(const char *path, const char *backend) {
    lethe_model_params mp = lethe_model_default_params();
    mp.backend = backend;
    lethe_status st;
    lethe_model *m = lethe_model_load(path, mp, &st);
    if (!m) fail_msg("load %s: %s: %s", path, lethe_strerror(st), lethe_last_error());
    return m;
}

static lethe_context *ctx_new(lethe_model *m, bool want_gpu) {
    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = 32;
    cp.n_threads = 1;
    lethe_status st;
    lethe_context *c = lethe_context_new(m, cp, &st);
    if (!c) fail_msg("context: %s: %s", lethe_strerror(st), lethe_last_error());
    if (want_gpu && !lethe_context_gpu(c)) fail_msg("the context did not start on %s", g_backend);
    return c;
}

/* The prompt, then N_GEN greedy tokens; out: [N_GEN + 1][nv] logits. */
static lethe_status run(lethe_context *c, const lethe_token *prompt, int np, float *out, int nv) {
    lethe_token t = 0;
    for (int step = 0; step <= N_GEN; step++) {
        lethe_status st = lethe_decode(c, step == 0 ? lethe_batch_one((lethe_token *)prompt, np) : lethe_batch_one(&t, 1));
        if (st != LETHE_OK) return st;
        const float *l = lethe_get_logits(c, -1);
        if (!l) return LETHE_ERR_INTERNAL;
        memcpy(out + (size_t)step * nv, l, (size_t)nv * sizeof(float));
        t = 0;
        for (int i = 1; i < nv; i++)
            if (l[i] > l[t]) t = i;
    }
    return LETHE_OK;
}

static void run_ok(lethe_context *c, const lethe_token *prompt, int np, float *out, int nv) {
    lethe_status st = run(c, prompt, np, out, nv);
    if (st != LETHE_OK) fail_msg("decode: %s: %s", lethe_strerror(st), lethe_last_error());
}

static void expect_cpu(const float *ref, const float *got, int nv, const char *what) {
    int exact = 0;
    for (int s = 0; s <= N_GEN; s++) {
        const double e = tu_nmse(ref + (size_t)s * nv, got + (size_t)s * nv, (size_t)nv);
        if (!(e <= g_limit)) fail_msg("%s, step %d: logits NMSE %.3g against the CPU > %.0e", what, s, e, g_limit);
        exact += !memcmp(ref + (size_t)s * nv, got + (size_t)s * nv, (size_t)nv * sizeof(float));
    }
    print_message("  %s: the CPU's logits (bit-identical at %d of %d steps)\n", what, exact, N_GEN + 1);
}

typedef struct weight_sum {
    size_t n, bytes;
} weight_sum;

static void add_weight(const lethe_tensor *t, void *user) {
    weight_sum *w = user;
    w->n++;
    w->bytes += lethe_tensor_nbytes(t);
}

static weight_sum model_weights(const lethe_model *m) {
    weight_sum w = {0, 0};
    lethe_model_for_each_weight(m, add_weight, &w);
    return w;
}

static lethe_device_share share_of(lethe_backend *be) {
    lethe_device_share sh;
    assert_non_null(be->iface->device_share);
    be->iface->device_share(be, NULL, 0, &sh);
    return sh;
}

/* Two contexts on one model: one upload of each weight, both the CPU's logits. */
static void test_two_contexts_one_upload(void **state) {
    (void)state;
    if (!have_device()) skip();
    lethe_model *mc = load(g_path_a, "cpu"), *mv = load(g_path_a, g_backend);
    const int nv = lethe_n_vocab(mc);
    const weight_sum ws = model_weights(mv);
    float *ref = malloc(4 * (size_t)(N_GEN + 1) * nv * sizeof(float));
    float *l1 = ref + (size_t)(N_GEN + 1) * nv, *l2 = l1 + (size_t)(N_GEN + 1) * nv, *l3 = l2 + (size_t)(N_GEN + 1) * nv;
    lethe_context *cc = ctx_new(mc, false), *c1 = ctx_new(mv, true), *c2 = ctx_new(mv, true);
    lethe_backend *b1 = lethe_context_gpu(c1), *b2 = lethe_context_gpu(c2);
    assert_ptr_not_equal(b1, b2);   /* a backend per context ... */
    run_ok(cc, k_p1, 6, ref, nv);
    run_ok(c1, k_p1, 6, l1, nv);
    const lethe_device_share s1 = share_of(b1);
    run_ok(c2, k_p1, 6, l2, nv);
    const lethe_device_share s2 = share_of(b2);
    print_message("  %zu weights, %zu bytes: %llu uploads after context 1, %llu after context 2; %d backends on the device\n",
                  ws.n, ws.bytes, (unsigned long long)s1.uploads, (unsigned long long)s2.uploads, s2.users);
    assert_int_equal(s2.users, 2);   /* ... on one device */
    assert_int_equal(s1.uploads, ws.n);   /* every weight once ... */
    assert_int_equal(s2.uploads, ws.n);   /* ... and not again for the second context */
    assert_int_equal(s2.n_weights, ws.n);
    assert_int_equal(s2.weight_bytes, ws.bytes);
    const lethe_memory_info m1 = lethe_get_memory_info(c1), m2 = lethe_get_memory_info(c2);
    assert_int_equal(m1.device_weight_bytes, ws.bytes);   /* one copy, reported to both */
    assert_int_equal(m2.device_weight_bytes, ws.bytes);
    assert_int_equal(m1.device_contexts, 2);
    assert_int_equal(m2.device_contexts, 2);
    assert_int_equal(lethe_get_memory_info(cc).device_weight_bytes, 0);
    assert_int_equal(lethe_get_memory_info(cc).device_contexts, 0);
    expect_cpu(ref, l1, nv, "context 1");
    expect_cpu(ref, l2, nv, "context 2");
    assert_memory_equal(l1, l2, (size_t)(N_GEN + 1) * nv * sizeof(float));
    /* the second context again, other work: still the CPU's */
    run_ok(cc, k_p2, 5, ref, nv);
    run_ok(c2, k_p2, 5, l3, nv);
    expect_cpu(ref, l3, nv, "context 2, second prompt");
    assert_int_equal(share_of(b2).uploads, ws.n);
    lethe_context_free(c2);
    assert_int_equal(lethe_get_memory_info(c1).device_contexts, 1);
    lethe_context_free(c1);
    lethe_context_free(cc);
    lethe_model_free(mv);
    lethe_model_free(mc);
    free(ref);
}

typedef struct job {
    lethe_context *c;
    const lethe_token *prompt;
    int np, nv;
    float *out;
    pthread_barrier_t *go;
    lethe_status st;
} job;

static void *worker(void *arg) {
    job *j = arg;
    pthread_barrier_wait(j->go);
    j->st = run(j->c, j->prompt, j->np, j->out, j->nv);
    return NULL;
}

/* Two threads decoding at once on one device = the same work in sequence. */
static void test_two_threads(void **state) {
    (void)state;
    if (!have_device()) skip();
    lethe_model *mv = load(g_path_a, g_backend);
    const int nv = lethe_n_vocab(mv);
    const size_t n = (size_t)(N_GEN + 1) * nv;
    float *buf = malloc(4 * n * sizeof(float));
    float *s1 = buf, *s2 = buf + n, *t1 = buf + 2 * n, *t2 = buf + 3 * n;
    lethe_context *c1 = ctx_new(mv, true), *c2 = ctx_new(mv, true);
    run_ok(c1, k_p1, 6, s1, nv);   /* in sequence */
    run_ok(c2, k_p2, 5, s2, nv);
    lethe_context_free(c1);
    lethe_context_free(c2);
    c1 = ctx_new(mv, true);
    c2 = ctx_new(mv, true);
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, 2);
    job j1 = {c1, k_p1, 6, nv, t1, &go, LETHE_OK}, j2 = {c2, k_p2, 5, nv, t2, &go, LETHE_OK};
    pthread_t th1, th2;
    assert_int_equal(pthread_create(&th1, NULL, worker, &j1), 0);
    assert_int_equal(pthread_create(&th2, NULL, worker, &j2), 0);
    pthread_join(th1, NULL);
    pthread_join(th2, NULL);
    pthread_barrier_destroy(&go);
    if (j1.st != LETHE_OK || j2.st != LETHE_OK)
        fail_msg("concurrent decode: %s / %s", lethe_strerror(j1.st), lethe_strerror(j2.st));
    assert_memory_equal(s1, t1, n * sizeof(float));
    assert_memory_equal(s2, t2, n * sizeof(float));
    print_message("  two threads at once: the sequential runs' logits, bit for bit (%d steps each)\n", N_GEN + 1);
    lethe_context_free(c1);
    lethe_context_free(c2);
    lethe_model_free(mv);
    free(buf);
}

/* y = W x on {be, cpu}, W a host buffer used as a weight. */
static void matvec(lethe_backend *be, lethe_backend *cpu, const float *w, float *x, float *y, int rows, int cols,
                   int expect_backend) {
    lethe_graph *g = lethe_graph_new(8);
    lethe_tensor wt;
    int64_t ne[2] = {cols, rows}, nx[2] = {cols, 1};
    lethe_tensor_init(&wt, LETHE_F32, 2, ne);
    wt.data = (void *)w;
    lethe_node *n = lethe_matmul(g, lethe_leaf(g, &wt), lethe_input(g, LETHE_F32, 2, nx, x, "x"));
    assert_non_null(n);
    lethe_set_output(n);
    lethe_backend *bes[2] = {be ? be : cpu, cpu};
    lethe_executor *ex = lethe_executor_new(bes, be ? 2 : 1);
    lethe_status st = lethe_executor_run(ex, g, NULL, NULL);
    if (st != LETHE_OK) fail_msg("executor: %s (%s)", lethe_strerror(st), lethe_last_error());
    assert_int_equal(n->backend, expect_backend);
    memcpy(y, n->t.data, (size_t)rows * sizeof(float));
    lethe_executor_free(ex);
    lethe_graph_free(g);
}

/* The hazard, where a same address is certain: new bytes where a cached
 * weight was are served stale until forgotten, by every backend on the
 * device; after lethe_backends_forget they are uploaded afresh. */
static void test_forget_same_address(void **state) {
    (void)state;
    if (!have_device()) skip();
    enum { R = 16, K = 64 };
    lethe_backend *be = lethe_backend_gpu_new(g_backend, 0), *be2 = lethe_backend_gpu_new(g_backend, 0);
    lethe_backend *cpu = lethe_backend_cpu_new(1);
    assert_non_null(be);
    assert_non_null(be2);
    float *w = malloc(R * K * sizeof(float)), x[K], y_old[R], y_new[R], y[R], ref[R];
    tu_rand_fill(w, R * K, 1);
    tu_rand_fill(x, K, 2);
    matvec(be, cpu, w, x, y_old, R, K, 0);
    matvec(NULL, cpu, w, x, ref, R, K, 0);
    assert_true(tu_nmse(ref, y_old, R) <= g_limit);
    tu_rand_fill(w, R * K, 3);   /* "another model" at the same address */
    matvec(NULL, cpu, w, x, ref, R, K, 0);
    matvec(be2, cpu, w, x, y, R, K, 0);   /* the other backend: the device's stale copy */
    assert_memory_equal(y, y_old, sizeof y);
    assert_true(tu_nmse(ref, y, R) > 1e-2);
    assert_int_equal(share_of(be).uploads, 1);
    lethe_backends_forget(w, R * K * sizeof(float));
    assert_int_equal(share_of(be).n_weights, 0);
    matvec(be2, cpu, w, x, y_new, R, K, 0);
    assert_true(tu_nmse(ref, y_new, R) <= g_limit);
    const lethe_device_share sh = share_of(be);
    assert_int_equal(sh.uploads, 2);
    assert_int_equal(sh.n_weights, 1);
    assert_int_equal(sh.users, 2);
    lethe_backends_forget(x, sizeof x);   /* a range it never held: nothing dropped */
    assert_int_equal(share_of(be).n_weights, 1);
    print_message("  rewritten weight: stale until forgotten (NMSE %.3g), then the CPU's (%.3g)\n", tu_nmse(ref, y, R),
                  tu_nmse(ref, y_new, R));
    be2->iface->free(be2);
    be->iface->free(be);
    cpu->iface->free(cpu);
    free(w);
}

/* A model freed while the device lives on (another backend holds it), then a
 * different model of the same size loaded: its own weights, the CPU's logits. */
static void test_model_free_reload(void **state) {
    (void)state;
    if (!have_device()) skip();
    lethe_backend *keep = lethe_backend_gpu_new(g_backend, 0);   /* the device outlives both models */
    assert_non_null(keep);
    lethe_model *ma = load(g_path_a, g_backend);
    const int nv = lethe_n_vocab(ma);
    const size_t n = (size_t)(N_GEN + 1) * nv;
    float *buf = malloc(3 * n * sizeof(float));
    float *la = buf, *lb = buf + n, *ref = buf + 2 * n;
    const weight_sum wa = model_weights(ma);
    const void *addr_a = ma->tok_embd.data;
    lethe_context *c = ctx_new(ma, true);
    run_ok(c, k_p1, 6, la, nv);
    assert_int_equal(share_of(keep).n_weights, wa.n);
    lethe_context_free(c);
    lethe_model_free(ma);
    assert_int_equal(share_of(keep).n_weights, 0);   /* the model's weights left the device with it */
    assert_int_equal(share_of(keep).weight_bytes, 0);

    lethe_model *mb = load(g_path_b, g_backend);
    const bool same = mb->tok_embd.data == addr_a;
    c = ctx_new(mb, true);
    run_ok(c, k_p1, 6, lb, nv);
    const lethe_device_share sh = share_of(keep);
    assert_int_equal(sh.uploads, wa.n + model_weights(mb).n);   /* B uploaded all of its own */
    assert_int_equal(sh.n_weights, model_weights(mb).n);
    lethe_context_free(c);
    lethe_model *mc = load(g_path_b, "cpu");
    c = ctx_new(mc, false);
    run_ok(c, k_p1, 6, ref, nv);
    expect_cpu(ref, lb, nv, "model B after model A was freed");
    assert_true(tu_nmse(la, lb, (size_t)nv) > 1e-2);   /* A's logits would be a stale answer */
    print_message("  model B %s model A's address (%p)\n", same ? "mapped at" : "not mapped at (no forcing it here)",
                  addr_a);
    lethe_context_free(c);
    lethe_model_free(mc);
    lethe_model_free(mb);
    keep->iface->free(keep);
    free(buf);
}

static int setup(void **state) {
    (void)state;
    const char *b = getenv("LETHE_TEST_SHARED_BACKEND");   /* "cuda" on a GPU machine */
    if (b && *b) g_backend = b;
    if (!strcmp(g_backend, "cuda")) g_limit = 2e-3;
    write_model(g_path_a, 1);
    write_model(g_path_b, 2);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    unlink(g_path_a);
    unlink(g_path_b);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_contexts_one_upload),
        cmocka_unit_test(test_two_threads),
        cmocka_unit_test(test_forget_same_address),
        cmocka_unit_test(test_model_free_reload),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
