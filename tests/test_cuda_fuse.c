/* test_cuda_fuse.c — the CUDA backend's fused decode passes, checked
 * without a GPU (cuda_fuse.cuh, cuda_plan.c "fused passes").
 *
 * Numbers: hostcheck/k_hostcheck_fuse.cu runs the kernels' own per-thread
 * code on the host in the device's order (RMS_NORM's block reduction lane by
 * lane). The fused launches (ADD + RMS_NORM + q8 blocks, RMS_NORM + q8,
 * SWIGLU + q8) must give the unfused launches' bits for the same inputs
 * (k_binary, k_rms_norm, k_swiglu, then k_quant_q8), every combination of
 * outputs, outputs poisoned first; and against the CPU backend run by the
 * executor: the sum and the normalized row bit for bit, the q8 blocks equal
 * to the CPU's own q8 activations, the decode GEMV on them (k_gemv_q8's host
 * emulation) equal to the CPU's matmul bit for bit; SWIGLU (CUDA's expf,
 * the CPU's own exp) within rounding.
 *
 * Plans: the engine's own decode graph (models/llama.c on a synthetic model)
 * planned with fake device addresses, fusion on and off: where the fused
 * launches are, how many launches and bytes go, fusion off = one launch per
 * node as before, the same launch list for two decode steps (CUDA-graph
 * replay), the executor's real memory plan, and the rules that keep a fused
 * ADD correct when the memory plan reuses its sources' bytes.
 * Builds without CUDA skip with a message.
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

#include "common.h"
#include "testutil.h"

#ifdef LETHE_HAVE_CUDA
#include "backend.h"
#include "cpu_kernels.h"
#include "cuda_plan.h"
#include "dtype.h"
#include "executor.h"
#include "graph.h"
#include "kv_cache.h"
#include "llama.h"
#include "model.h"
#include "synth.h"

int lethe_cu_host_rms_norm(const float *x, const float *w, float *y, int64_t T, int64_t E, float eps);
int lethe_cu_host_norm_fused(const float *a, const float *b, float *sum, const float *w, float *y, uint8_t *xq,
                             int64_t T, int64_t E, float eps);
int lethe_cu_host_swiglu(const float *g, const float *u, float *y, int64_t n);
int lethe_cu_host_swiglu_q8(const float *g, const float *u, float *y, uint8_t *xq, int64_t n);
int lethe_cu_host_q8_quant(const float *x, int64_t K, uint8_t *out);
int lethe_cu_host_gemv_new(int wtype, const void *w, size_t row_bytes, const float *x, float *y, int64_t N, int64_t K,
                           int64_t T, int variant);

#define Q8B 64   /* bytes of one device q8 block (cuda_gemv.cuh CU_Q8_BLOCK_BYTES) */

static void fill_rows(float *x, int64_t T, int64_t E, uint64_t seed) {
    tu_rand_fill(x, (size_t)(T * E), seed);
    if (T > 1) {   /* the edges: a row of zeros (scale 1/sqrt(eps)), a row of large values */
        for (int64_t i = 0; i < E; i++) x[E + i] = 0.0f;
        if (T > 2)
            for (int64_t i = 0; i < E; i++) x[2 * E + i] *= 3000.0f;
    }
}

static void same_bits(const void *a, const void *b, size_t n, const char *what) {
    if (memcmp(a, b, n)) {
        const uint8_t *x = a, *y = b;
        size_t i = 0;
        while (x[i] == y[i]) i++;
        fail_msg("%s: bytes differ from byte %zu on", what, i);
    }
}

/* ------------------------------------------------------------------------
 * Fused vs unfused, the kernels' host code: ADD + RMS_NORM (+ q8). */
static void test_norm_fused_bits(void **state) {
    (void)state;
    static const struct { int64_t T, E; } shapes[] = {{1, 64}, {3, 576}, {1, 4096}, {8, 4096}, {2, 11904}, {3, 8192}};
    for (size_t si = 0; si < LETHE_ARRAY_SIZE(shapes); si++) {
        const int64_t T = shapes[si].T, E = shapes[si].E, n = T * E, nq = n / 32 * Q8B;
        float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
        float *w = malloc((size_t)E * sizeof(float)), *s_ref = malloc((size_t)n * sizeof(float));
        float *h_ref = malloc((size_t)n * sizeof(float)), *s = malloc((size_t)n * sizeof(float));
        float *h = malloc((size_t)n * sizeof(float));
        uint8_t *q_ref = malloc((size_t)nq), *q = malloc((size_t)nq);
        assert_true(a && b && w && s_ref && h_ref && s && h && q_ref && q);
        fill_rows(a, T, E, 10 + si);
        fill_rows(b, T, E, 20 + si);
        tu_rand_fill(w, (size_t)E, 30 + si);
        for (int wi = 0; wi < 2; wi++) {
            const float *wn = wi ? NULL : w;
            const float eps = 1e-5f;
            /* unfused: k_binary (add), k_rms_norm, k_quant_q8 */
            for (int64_t i = 0; i < n; i++) s_ref[i] = a[i] + b[i];
            assert_int_equal(lethe_cu_host_rms_norm(s_ref, wn, h_ref, T, E, eps), 0);
            assert_int_equal(lethe_cu_host_q8_quant(h_ref, n, q_ref), 0);
            /* every combination the plan launches: add or not, y or not, q8 or not */
            for (int add = 0; add < 2; add++)
                for (int mode = 0; mode < 3; mode++) {   /* 0: y + xq, 1: xq only, 2: y only */
                    const bool wy = mode != 1, wq = mode != 2;
                    for (int64_t i = 0; i < n; i++) s[i] = h[i] = NAN;
                    memset(q, 0xA5, (size_t)nq);
                    assert_int_equal(lethe_cu_host_norm_fused(add ? a : s_ref, add ? b : NULL, add ? s : NULL, wn,
                                                              wy ? h : NULL, wq ? q : NULL, T, E, eps),
                                     0);
                    char what[160];
                    snprintf(what, sizeof what, "T=%lld E=%lld w=%d add=%d y=%d q8=%d", (long long)T, (long long)E,
                             !wi, add, wy, wq);
                    if (add) same_bits(s, s_ref, (size_t)n * sizeof(float), what);
                    else
                        for (int64_t i = 0; i < n; i++) assert_true(isnan(s[i]));   /* no sum asked: untouched */
                    if (wy) same_bits(h, h_ref, (size_t)n * sizeof(float), what);
                    else
                        for (int64_t i = 0; i < n; i++) assert_true(isnan(h[i]));
                    if (wq) same_bits(q, q_ref, (size_t)nq, what);
                    else
                        for (int64_t i = 0; i < nq; i++) assert_int_equal(q[i], 0xA5);
                }
        }
        free(a); free(b); free(w); free(s_ref); free(h_ref); free(s); free(h); free(q_ref); free(q);
    }
    /* bad shapes are refused, not computed */
    float x[64] = {0}, y[64];
    uint8_t xq[128];
    assert_int_not_equal(lethe_cu_host_norm_fused(x, NULL, NULL, NULL, NULL, xq, 1, 48, 1e-5f), 0);   /* E % 32 */
    assert_int_not_equal(lethe_cu_host_norm_fused(x, NULL, NULL, NULL, NULL, NULL, 1, 64, 1e-5f), 0); /* nothing */
    assert_int_not_equal(lethe_cu_host_norm_fused(x, NULL, NULL, NULL, y, NULL, 1, 11936, 1e-5f), 0); /* > max E */
}

/* SWIGLU + q8: the fused blocks and y are k_swiglu's then k_quant_q8's bits. */
static void test_swiglu_fused_bits(void **state) {
    (void)state;
    static const int64_t ns[] = {32, 256 * 3, 14336, 14336 * 4};
    for (size_t k = 0; k < LETHE_ARRAY_SIZE(ns); k++) {
        const int64_t n = ns[k], nq = n / 32 * Q8B;
        float *g = malloc((size_t)n * sizeof(float)), *u = malloc((size_t)n * sizeof(float));
        float *y_ref = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
        uint8_t *q_ref = malloc((size_t)nq), *q = malloc((size_t)nq);
        assert_true(g && u && y_ref && y && q_ref && q);
        tu_rand_fill(g, (size_t)n, 40 + k);
        tu_rand_fill(u, (size_t)n, 50 + k);
        for (int64_t i = 0; i < n; i += 37) g[i] *= 60.0f;   /* exp(-g) overflows / underflows */
        for (int64_t i = 5; i < n; i += 101) g[i] = 0.0f;
        assert_int_equal(lethe_cu_host_swiglu(g, u, y_ref, n), 0);
        assert_int_equal(lethe_cu_host_q8_quant(y_ref, n, q_ref), 0);
        for (int wy = 0; wy < 2; wy++) {
            for (int64_t i = 0; i < n; i++) y[i] = NAN;
            memset(q, 0xA5, (size_t)nq);
            assert_int_equal(lethe_cu_host_swiglu_q8(g, u, wy ? y : NULL, q, n), 0);
            same_bits(q, q_ref, (size_t)nq, "swiglu q8 blocks");
            if (wy) same_bits(y, y_ref, (size_t)n * sizeof(float), "swiglu y");
            else
                for (int64_t i = 0; i < n; i++) assert_true(isnan(y[i]));
        }
        free(g); free(u); free(y_ref); free(y); free(q_ref); free(q);
    }
}

/* ------------------------------------------------------------------------
 * Against the CPU backend: x' = a + b, h = rms_norm(x'), then decode
 * matmuls on q8_0 / q4_0 / q5_1 weights, and s = swiglu(g, u) -> a q4_1
 * matmul, run by the executor on the CPU. */
static lethe_node *leaf_q(lethe_graph *g, lethe_dtype t, void *data, int64_t K, int64_t N, const char *name) {
    lethe_tensor x;
    const int64_t ne[2] = {K, N};
    lethe_tensor_init(&x, t, 2, ne);
    x.data = data;
    snprintf(x.name, sizeof x.name, "%s", name);
    return lethe_leaf(g, &x);
}

static uint8_t *rand_weights(lethe_dtype t, int64_t N, int64_t K, uint64_t seed) {
    const size_t rs = lethe_row_size(t, K);
    uint8_t *w = malloc(rs * (size_t)N);
    float *row = malloc((size_t)K * sizeof(float));
    assert_true(w && row);
    for (int64_t r = 0; r < N; r++) {
        tu_rand_fill(row, (size_t)K, seed + (uint64_t)r);
        lethe_dtype_get(t)->from_f32(row, w + (size_t)r * rs, K);
    }
    free(row);
    return w;
}

static void test_fused_vs_cpu(void **state) {
    (void)state;
    const int64_t E = 2048, F = 1536, N = 48;
    const int64_t Ts[] = {1, 4};
    const lethe_dtype wt[3] = {LETHE_Q8_0, LETHE_Q4_0, LETHE_Q5_1};
    lethe_backend *cpu = lethe_backend_cpu_new(1);
    assert_non_null(cpu);
    uint8_t *W[3], *Wd = rand_weights(LETHE_Q4_1, N, F, 900);
    for (int k = 0; k < 3; k++) W[k] = rand_weights(wt[k], N, E, 700 + 100 * (uint64_t)k);
    float *nw = malloc((size_t)E * sizeof(float));
    tu_rand_fill(nw, (size_t)E, 77);
    for (size_t ti = 0; ti < LETHE_ARRAY_SIZE(Ts); ti++) {
        const int64_t T = Ts[ti];
        float *a = malloc((size_t)(T * E) * sizeof(float)), *b = malloc((size_t)(T * E) * sizeof(float));
        float *gt = malloc((size_t)(T * F) * sizeof(float)), *up = malloc((size_t)(T * F) * sizeof(float));
        fill_rows(a, T, E, 81 + ti);
        fill_rows(b, T, E, 82 + ti);
        tu_rand_fill(gt, (size_t)(T * F), 83 + ti);
        tu_rand_fill(up, (size_t)(T * F), 84 + ti);
        lethe_graph *g = lethe_graph_new(32);
        const int64_t ne[2] = {E, T}, nf[2] = {F, T}, nn[1] = {E};
        /* the ADD's sources are computed nodes in the engine's graph; here inputs times 1 do */
        lethe_tensor one;
        lethe_tensor_init(&one, LETHE_F32, 1, nn);
        float *ones = malloc((size_t)E * sizeof(float));
        for (int64_t i = 0; i < E; i++) ones[i] = 1.0f;
        one.data = ones;
        snprintf(one.name, sizeof one.name, "ones");
        lethe_node *on = lethe_leaf(g, &one);
        lethe_node *an = lethe_mul(g, lethe_input(g, LETHE_F32, 2, ne, a, "a"), on);
        lethe_node *bn = lethe_mul(g, lethe_input(g, LETHE_F32, 2, ne, b, "b"), on);
        lethe_node *sum = lethe_add(g, an, bn);
        lethe_tensor wtn;
        lethe_tensor_init(&wtn, LETHE_F32, 1, nn);
        wtn.data = nw;
        snprintf(wtn.name, sizeof wtn.name, "norm");
        lethe_node *h = lethe_rms_norm(g, sum, lethe_leaf(g, &wtn), 1e-5f);
        lethe_node *y[3];
        for (int k = 0; k < 3; k++) y[k] = lethe_matmul(g, leaf_q(g, wt[k], W[k], E, N, "w"), h);
        lethe_node *s = lethe_swiglu(g, lethe_input(g, LETHE_F32, 2, nf, gt, "gate"), lethe_input(g, LETHE_F32, 2, nf, up, "up"));
        lethe_node *yd = lethe_matmul(g, leaf_q(g, LETHE_Q4_1, Wd, F, N, "wd"), s);
        lethe_set_output(sum);
        lethe_set_output(h);
        lethe_set_output(s);
        for (int k = 0; k < 3; k++) lethe_set_output(y[k]);
        lethe_set_output(yd);
        assert_int_equal(g->status, LETHE_OK);
        lethe_executor *ex = lethe_executor_new(&cpu, 1);
        assert_int_equal(lethe_executor_run(ex, g, NULL, NULL), LETHE_OK);
        /* the fused launch on the same inputs */
        float *fs = malloc((size_t)(T * E) * sizeof(float)), *fh = malloc((size_t)(T * E) * sizeof(float));
        uint8_t *fq = malloc((size_t)(T * E / 32 * Q8B));
        assert_int_equal(lethe_cu_host_norm_fused(a, b, fs, nw, fh, fq, T, E, 1e-5f), 0);
        same_bits(fs, sum->t.data, (size_t)(T * E) * sizeof(float), "fused sum vs the CPU's ADD");
        same_bits(fh, h->t.data, (size_t)(T * E) * sizeof(float), "fused norm vs the CPU's RMS_NORM");
        /* the blocks are the CPU's own q8 activations (device layout: 4 parts {d, s, 8 codes}) */
        lethe_cpu_q8a *cq = malloc((size_t)(E / 32) * sizeof *cq);
        for (int64_t t = 0; t < T; t++) {
            lethe_cpu_quantize_q8a((const float *)h->t.data + t * E, cq, E);
            for (int64_t k = 0; k < E / 32; k++) {
                const uint8_t *db = fq + (size_t)(t * (E / 32) + k) * Q8B;
                for (int p = 0; p < 4; p++) {
                    assert_memory_equal(db + 16 * p, &cq[k].d, 4);
                    assert_memory_equal(db + 16 * p + 4, &cq[k].s, 4);
                }
                for (int e = 0; e < 32; e++)
                    assert_int_equal((int8_t)db[16 * ((e & 15) / 4) + 8 + (e >= 16 ? 4 : 0) + e % 4], cq[k].qs[e]);
            }
        }
        /* the decode GEMV on those activations: the CPU's matmul, bit for bit */
        float *gy = malloc((size_t)(T * N) * sizeof(float));
        for (int k = 0; k < 3; k++) {
            assert_int_equal(lethe_cu_host_gemv_new((int)wt[k], W[k], lethe_row_size(wt[k], E), fh, gy, N, E, T, 0), 0);
            same_bits(gy, y[k]->t.data, (size_t)(T * N) * sizeof(float), "GEMV on the fused row vs the CPU's matmul");
        }
        /* SWIGLU: CUDA's expf against the CPU's own exp: rounding apart */
        float *sy = malloc((size_t)(T * F) * sizeof(float));
        uint8_t *sq = malloc((size_t)(T * F / 32 * Q8B));
        assert_int_equal(lethe_cu_host_swiglu_q8(gt, up, sy, sq, T * F), 0);
        const double e = tu_nmse(s->t.data, sy, (size_t)(T * F));
        if (!(e < 1e-12)) fail_msg("swiglu T=%lld: NMSE %.3g against the CPU", (long long)T, e);
        assert_int_equal(lethe_cu_host_gemv_new(LETHE_Q4_1, Wd, lethe_row_size(LETHE_Q4_1, F), sy, gy, N, F, T, 0), 0);
        const double ed = tu_nmse(yd->t.data, gy, (size_t)(T * N));
        if (!(ed < 1e-6)) fail_msg("down GEMV T=%lld: NMSE %.3g against the CPU", (long long)T, ed);
        print_message("  T=%lld: sum, norm, q8 blocks and 3 GEMVs: the CPU's bits; swiglu NMSE %.2g, down %.2g\n",
                      (long long)T, e, ed);
        free(sy); free(sq); free(gy); free(cq); free(fs); free(fh); free(fq); free(ones);
        lethe_executor_free(ex);
        lethe_graph_free(g);
        free(a); free(b); free(gt); free(up);
    }
    for (int k = 0; k < 3; k++) free(W[k]);
    free(Wd);
    free(nw);
    cpu->iface->free(cpu);
}

/* ------------------------------------------------------------------------
 * Plans. Fake device: every node its own address (or the executor's real
 * offsets), scratch and error flag fixed, so plans compare byte for byte. */
typedef struct fake_dev {
    const lethe_graph *g;
    bool host_addr;            /* resolve = the node's host address (the executor's memory plan) */
    int n_over;                /* overrides: node -> address */
    int over_node[8];
    uint64_t over_addr[8];
} fake_dev;

#define SCRATCH 0x200000000000ull

static int fake_resolve(void *user, const lethe_node *n, uint64_t *dev) {
    const fake_dev *f = user;
    const int i = (int)(n - f->g->nodes);
    for (int k = 0; k < f->n_over; k++)
        if (f->over_node[k] == i) {
            *dev = f->over_addr[k];
            return LETHE_OK;
        }
    *dev = f->host_addr && n->t.data ? (uint64_t)(uintptr_t)n->t.data : 0x100000000000ull + (uint64_t)i * 0x100000ull;
    return LETHE_OK;
}
static int fake_scratch(void *user, size_t bytes, uint64_t *dev) {
    (void)user;
    (void)bytes;
    *dev = SCRATCH;
    return LETHE_OK;
}
static int fake_kv_prepare(void *user, const lethe_kv_cache *kv) {
    (void)user;
    (void)kv;
    return LETHE_OK;
}
/* k_gemv.cu's rule (not linked here): q8-family weights quantize activations, the old kernel not */
static size_t fake_act_bytes(int wtype, int64_t K, int64_t T, int variant) {
    const bool q8 = wtype == LETHE_Q4_0 || wtype == LETHE_Q4_1 || wtype == LETHE_Q5_0 || wtype == LETHE_Q5_1 ||
                    wtype == LETHE_Q8_0;
    return variant == LETHE_CU_GEMV_OLD || !q8 || K % 32 ? 0 : (size_t)T * (size_t)(K / 32) * 64;
}

static void plan_with(lethe_graph *g, fake_dev *f, const void *backend, bool bucketed, int fuse, int variant,
                      cu_plan *p) {
    f->g = g;
    const cu_plan_env env = {f, backend, 132, 0x300000000000ull, fake_resolve, fake_scratch, fake_kv_prepare,
                             variant, fake_act_bytes, 0, fuse};
    char err[200];
    const int rc = cu_plan_build(p, &env, g, 0, g->n_nodes, bucketed, err, sizeof err);
    if (rc != LETHE_OK) fail_msg("cu_plan_build: %d %s", rc, err);
}

static int count_kind(const cu_plan *p, int kind) {
    int c = 0;
    for (int k = 0; k < p->n_launches; k++) c += p->launches[k].kind == kind;
    return c;
}
static int count_op(const lethe_graph *g, lethe_op op) {
    int c = 0;
    for (int i = 0; i < g->n_nodes; i++) c += g->nodes[i].op == op;
    return c;
}
/* Kernels a plan launches: one per launch, plus k_quant_q8 before every
 * GEMV that quantizes its own activations (the attention combine and TOP_K's
 * second pass are the same with fusion on or off). */
static int kernels(const cu_plan *p) {
    int c = p->n_launches;
    for (int k = 0; k < p->n_launches; k++) {
        const cu_launch *l = &p->launches[k];
        c += l->kind == CU_K_GEMV && l->p[3] && !l->i[6];
    }
    return c;
}

/* The engine's decode step: a synthetic llama model, a host KV cache with
 * history, T tokens of T sequences, the graph models/llama.c builds. */
typedef struct decode_case {
    lethe_model *m;
    lethe_kv_cache kv;
    lethe_graph *g;
    lethe_ubatch ub;
    int32_t tok[8], seq[8], pos[8], out[8];
    lethe_dms_run dms;
    char *path;
} decode_case;

static void decode_build(decode_case *d) {
    lethe_graph_reset(d->g);
    lethe_node *logits = lethe_llama_build(d->g, d->m, &d->kv, &d->ub, d->tok, d->out, d->ub.n_tokens,
                                           d->dms.on ? &d->dms : NULL);
    assert_non_null(logits);
    assert_int_equal(d->g->status, LETHE_OK);
}

static void decode_open_arch(decode_case *d, const char *arch, lethe_dtype wtype, int T, bool dms_forced) {
    memset(d, 0, sizeof *d);
    lethe_synth_params sp = lethe_synth_default_params();
    sp.arch = arch;
    sp.n_layer = 3;
    sp.n_embd = 128;
    sp.n_head = 4;
    sp.n_head_kv = 2;
    sp.n_ff = 256;
    sp.n_vocab = 512;
    sp.wtype = sp.embd_type = wtype;
    sp.seed = 11;
    d->path = tu_write_temp("", 0);
    assert_int_equal(lethe_synth_write(d->path, sp), LETHE_OK);
    lethe_status st;
    d->m = lethe_model_load(d->path, lethe_model_default_params(), &st);
    assert_non_null(d->m);
    const lethe_hparams *hp = &d->m->hp;
    lethe_kv_policy pol = {.rule = LETHE_KV_RULE_DMS, .window = 8};
    assert_int_equal(lethe_kv_init(&d->kv, T, hp->n_layer, hp->n_head_kv, hp->head_dim, LETHE_F16, (size_t)4 << 20, 8,
                                   &pol, NULL),
                     LETHE_OK);
    for (int t = 0; t < T; t++) {   /* 40 tokens of history per sequence */
        int32_t ids[40], ps[40];
        for (int i = 0; i < 40; i++) ids[i] = t, ps[i] = i;
        lethe_kv_begin(&d->kv);
        assert_int_equal(lethe_kv_reserve(&d->kv, 8, ids, ps), LETHE_OK);
        lethe_kv_commit(&d->kv);
        for (int i0 = 8; i0 < 40; i0 += 8) {
            lethe_kv_begin(&d->kv);
            assert_int_equal(lethe_kv_reserve(&d->kv, 8, ids + i0, ps + i0), LETHE_OK);
            lethe_kv_commit(&d->kv);
        }
        d->seq[t] = t;
        d->pos[t] = 40;
        d->tok[t] = 3 + t;
        d->out[t] = t;
    }
    d->ub = (lethe_ubatch){T, d->seq, d->pos};
    lethe_kv_begin(&d->kv);
    assert_int_equal(lethe_kv_reserve(&d->kv, T, d->seq, d->pos), LETHE_OK);
    if (dms_forced) d->dms = (lethe_dms_run){.on = true, .mode = LETHE_DMS_FORCED, .rate = 0.5f};
    d->g = lethe_graph_new(lethe_llama_graph_size(d->m));
    decode_build(d);
}

static void decode_open(decode_case *d, lethe_dtype wtype, int T, bool dms_forced) {
    decode_open_arch(d, "llama", wtype, T, dms_forced);
}

static void decode_next(decode_case *d) {
    lethe_kv_commit(&d->kv);
    for (int t = 0; t < d->ub.n_tokens; t++) d->pos[t]++, d->tok[t] = (d->tok[t] + 7) % 512;
    lethe_kv_begin(&d->kv);
    assert_int_equal(lethe_kv_reserve(&d->kv, d->ub.n_tokens, d->seq, d->pos), LETHE_OK);
    decode_build(d);
}

static void decode_close(decode_case *d) {
    lethe_graph_free(d->g);
    lethe_kv_free(&d->kv);
    lethe_model_free(d->m);
    remove(d->path);
    free(d->path);
}

/* Fusion off: the plan of before, one launch per computed node (ATTENTION
 * over a DMS cache: one), in node order, no fused kind, no GEMV on ready
 * blocks, no fused area. */
static void check_unfused(const cu_plan *p, const lethe_graph *g) {
    int k = 1;   /* launch 0 clears the error flag */
    assert_int_equal(p->launches[0].kind, CU_K_CLEAR_ERR);
    for (int i = 0; i < g->n_nodes; i++) {
        const lethe_node *n = &g->nodes[i];
        if (n->op == LETHE_OP_NONE) continue;
        assert_true(k < p->n_launches);
        const cu_launch *l = &p->launches[k++];
        assert_int_equal(l->node, i);
        static const int kind_of[LETHE_OP_COUNT] = {
            [LETHE_OP_GET_ROWS] = CU_K_GET_ROWS, [LETHE_OP_RMS_NORM] = CU_K_RMS_NORM, [LETHE_OP_MATMUL] = CU_K_GEMV,
            [LETHE_OP_ADD] = CU_K_BINARY, [LETHE_OP_MUL] = CU_K_BINARY, [LETHE_OP_ROPE] = CU_K_ROPE,
            [LETHE_OP_SWIGLU] = CU_K_SWIGLU, [LETHE_OP_KV_STORE] = CU_K_KV_STORE,
            [LETHE_OP_ATTENTION] = CU_K_ATTENTION, [LETHE_OP_DMS_DECISION] = CU_K_DMS, [LETHE_OP_TOP_K] = CU_K_TOP_K};
        assert_int_equal(l->kind, kind_of[n->op]);
        if (l->kind == CU_K_GEMV) assert_int_equal(l->i[6], 0);
    }
    assert_int_equal(k, p->n_launches);
    assert_int_equal(p->fuse_bytes, 0);
    assert_int_equal(p->n_fused, 0);
}

/* Fusion on, q8-family weights: per layer the attention ADD and the FFN ADD
 * go into the next norm (all but the last layer's FFN ADD, read by the
 * output rows' GET_ROWS), every norm writes its GEMVs' q8 blocks and no f32
 * row, SWIGLU writes the down projection's blocks, and every GEMV reading a
 * norm or SWIGLU (q, k, v, gate, up, down, output) takes them; wo (reading
 * the attention) quantizes its own. */
static void check_fused_q8(const cu_plan *p, const lethe_graph *g, int L, int T) {
    assert_int_equal(count_kind(p, CU_K_NORM_FUSED), 2 * L + 1);
    assert_int_equal(count_kind(p, CU_K_RMS_NORM), 0);
    assert_int_equal(count_kind(p, CU_K_SWIGLU_Q8), L);
    assert_int_equal(count_kind(p, CU_K_SWIGLU), 0);
    assert_int_equal(count_kind(p, CU_K_BINARY), count_op(g, LETHE_OP_ADD) - (2 * L - 1));
    int ready = 0, adds = 0;
    uint64_t area = SCRATCH + p->fuse_off;
    assert_true(p->fuse_bytes >= (size_t)T * 256 / 32 * 64);   /* the largest producer: SWIGLU, F = 256 */
    int last_producer = -1;
    for (int k = 0; k < p->n_launches; k++) {
        const cu_launch *l = &p->launches[k];
        const lethe_node *n = l->node >= 0 ? &g->nodes[l->node] : NULL;
        if (l->kind == CU_K_NORM_FUSED) {
            assert_int_equal(n->op, LETHE_OP_RMS_NORM);
            assert_int_equal(l->p[4], 0);   /* no reader of the f32 row */
            assert_int_equal(l->p[5], area);
            if (l->i[2] >= 0) {             /* the folded ADD: its sources, its result */
                const lethe_node *a = &g->nodes[l->i[2]];
                assert_int_equal(a->op, LETHE_OP_ADD);
                assert_ptr_equal(n->src[0], a);
                assert_int_not_equal(l->p[1], 0);
                assert_int_not_equal(l->p[2], 0);
                adds++;
            } else {
                assert_int_equal(n->src[0]->op, LETHE_OP_GET_ROWS);   /* layer 0's and the output norm */
                assert_int_equal(l->p[1], 0);
                assert_int_equal(l->p[2], 0);
            }
            last_producer = l->node;
        } else if (l->kind == CU_K_SWIGLU_Q8) {
            assert_int_equal(l->p[2], 0);
            assert_int_equal(l->p[3], area);
            last_producer = l->node;
        } else if (l->kind == CU_K_GEMV) {
            const lethe_op src = n->src[1]->op;
            if (src == LETHE_OP_RMS_NORM || src == LETHE_OP_SWIGLU) {
                assert_int_equal(l->i[6], 1);
                assert_int_equal(l->p[3], area);
                assert_int_equal((int)(n->src[1] - g->nodes), last_producer);   /* the blocks it reads are its x's */
                ready++;
            } else {
                assert_int_equal(src, LETHE_OP_ATTENTION);
                assert_int_equal(l->i[6], 0);
                assert_int_equal(l->p[3], SCRATCH);
            }
        }
    }
    assert_int_equal(adds, 2 * L - 1);
    assert_int_equal(ready, 6 * L + 1);
}

static void test_plan_decode(void **state) {
    (void)state;
    const int L = 3;
    for (int T = 1; T <= 2; T++)
        for (int dms = 0; dms < 2; dms++) {
            decode_case d;
            decode_open(&d, LETHE_Q4_0, T, dms);
            fake_dev f = {0};
            cu_plan off, on, on_plain;
            plan_with(d.g, &f, &f, true, 0, LETHE_CU_GEMV_NEW, &off);
            plan_with(d.g, &f, &f, true, 1, LETHE_CU_GEMV_NEW, &on);
            plan_with(d.g, &f, &f, false, 1, LETHE_CU_GEMV_NEW, &on_plain);
            check_unfused(&off, d.g);
            check_fused_q8(&on, d.g, L, T);
            check_fused_q8(&on_plain, d.g, L, T);
            assert_true(on.capturable);
            assert_true(on.key != off.key);
            if (dms) {   /* layers 1..: DMS_DECISION between the ADD and the norm; the fused launch goes first */
                int n_dms = 0;
                for (int k = 1; k < on.n_launches; k++) {
                    if (on.launches[k].kind != CU_K_DMS || n_dms++ == 0) continue;   /* layer 0: after GET_ROWS */
                    const cu_launch *prev = &on.launches[k - 1];
                    if (prev->kind != CU_K_NORM_FUSED || prev->i[2] < 0)
                        fail_msg("launch %d: DMS not right after its layer's fused ADD + norm", k);
                    assert_true(prev->i[2] < on.launches[k].node && prev->node > on.launches[k].node);
                }
                assert_int_equal(n_dms, L);
            }
            const int saved = kernels(&off) - kernels(&on);
            print_message("  T=%d%s: %d launches -> %d (kernels %d -> %d: %d ADDs folded, %d q8 quantizations "
                          "saved)\n",
                          T, dms ? " DMS forced" : "", off.n_launches, on.n_launches, kernels(&off), kernels(&on),
                          2 * L - 1, 6 * L + 1);
            assert_int_equal(saved, (2 * L - 1) + (6 * L + 1));
            /* CUDA graphs: the next decode step replays the same launch list */
            decode_next(&d);
            cu_plan on2;
            plan_with(d.g, &f, &f, true, 1, LETHE_CU_GEMV_NEW, &on2);
            assert_int_equal(on2.n_launches, on.n_launches);
            assert_true(on2.key == on.key);
            assert_memory_equal(on2.launches, on.launches, (size_t)on.n_launches * sizeof *on.launches);
            /* the old GEMV kernel takes no q8 blocks: only the ADDs fold, norms write f32 */
            cu_plan old;
            plan_with(d.g, &f, &f, true, 1, LETHE_CU_GEMV_OLD, &old);
            assert_int_equal(count_kind(&old, CU_K_NORM_FUSED), 2 * L - 1);
            assert_int_equal(count_kind(&old, CU_K_SWIGLU), L);
            assert_int_equal(old.fuse_bytes, 0);
            for (int k = 0; k < old.n_launches; k++)
                if (old.launches[k].kind == CU_K_NORM_FUSED) {
                    assert_int_not_equal(old.launches[k].p[4], 0);
                    assert_int_equal(old.launches[k].p[5], 0);
                }
            cu_plan_free(&off);
            cu_plan_free(&on);
            cu_plan_free(&on_plain);
            cu_plan_free(&on2);
            cu_plan_free(&old);
            decode_close(&d);
        }
}

/* qwen2 (q, k, v biases: broadcast ADDs, never folded) and qwen3 (per-head
 * q / k norms read by ROPE, not by GEMVs: plain launches): the residual
 * ADDs and the layer norms fuse as for llama, nothing else. */
static void test_plan_archs(void **state) {
    (void)state;
    const int L = 3;
    const char *archs[2] = {"qwen2", "qwen3"};
    for (int a = 0; a < 2; a++) {
        decode_case d;
        decode_open_arch(&d, archs[a], LETHE_Q8_0, 2, false);
        assert_int_equal(count_op(d.g, LETHE_OP_ADD), a == 0 ? 2 * L + 3 * L : 2 * L);
        assert_int_equal(count_op(d.g, LETHE_OP_RMS_NORM), a == 1 ? 4 * L + 1 : 2 * L + 1);
        fake_dev f = {0};
        cu_plan off, on;
        plan_with(d.g, &f, &f, true, 0, LETHE_CU_GEMV_NEW, &off);
        plan_with(d.g, &f, &f, true, 1, LETHE_CU_GEMV_NEW, &on);
        check_unfused(&off, d.g);
        assert_int_equal(count_kind(&on, CU_K_NORM_FUSED), 2 * L + 1);
        assert_int_equal(count_kind(&on, CU_K_RMS_NORM), a == 1 ? 2 * L : 0);
        assert_int_equal(count_kind(&on, CU_K_BINARY), count_op(d.g, LETHE_OP_ADD) - (2 * L - 1));
        assert_int_equal(count_kind(&on, CU_K_SWIGLU_Q8), L);
        int ready = 0;
        for (int k = 0; k < on.n_launches; k++) ready += on.launches[k].kind == CU_K_GEMV && on.launches[k].i[6];
        assert_int_equal(ready, 6 * L + 1);
        for (int k = 0; k < on.n_launches; k++)   /* a folded ADD is never a bias */
            if (on.launches[k].kind == CU_K_NORM_FUSED && on.launches[k].i[2] >= 0)
                assert_int_not_equal(d.g->nodes[on.launches[k].i[2]].src[1]->op, LETHE_OP_NONE);
        assert_int_equal(kernels(&off) - kernels(&on), 8 * L);
        cu_plan_free(&off);
        cu_plan_free(&on);
        decode_close(&d);
    }
}

/* f16 weights (the float GEMV reads f32 rows): only the ADDs fold; the
 * norms write their rows. The executor's real memory plan (run on the CPU,
 * node addresses = its arena offsets): the folds it allows, each one
 * checked against the arena by the rules of fold_add. */
static void test_plan_real_memory(void **state) {
    (void)state;
    const int L = 3;
    const lethe_dtype types[2] = {LETHE_F16, LETHE_Q8_0};
    for (int ty = 0; ty < 2; ty++)
        for (int T = 1; T <= 2; T++)
            for (int dms = 0; dms < 2; dms++) {
                decode_case d;
                decode_open(&d, types[ty], T, dms);
                lethe_backend *cpu = lethe_backend_cpu_new(1);
                lethe_executor *ex = lethe_executor_new(&cpu, 1);
                assert_int_equal(lethe_executor_run(ex, d.g, NULL, NULL), LETHE_OK);   /* nodes get arena addresses */
                fake_dev f = {0};
                f.host_addr = true;
                cu_plan on;
                plan_with(d.g, &f, cpu, true, 1, LETHE_CU_GEMV_NEW, &on);
                const int folded = count_op(d.g, LETHE_OP_ADD) - count_kind(&on, CU_K_BINARY);
                print_message("  %s T=%d%s: %d of %d ADDs folded under the executor's memory plan\n",
                              lethe_dtype_name(types[ty]), T, dms ? " DMS" : "", folded, 2 * L - 1);
                for (int k = 0; k < on.n_launches; k++) {
                    const cu_launch *l = &on.launches[k];
                    if (l->kind != CU_K_NORM_FUSED) continue;
                    if (ty == 0) assert_int_not_equal(l->p[4], 0);   /* f16: the rows are written */
                    if (l->i[2] < 0 || !l->p[4] || T == 1) continue;
                    /* y and the ADD's sources: apart, or the very same bytes */
                    const uint64_t y0 = l->p[4], y1 = y0 + (uint64_t)(T * d.m->hp.n_embd * 4);
                    for (int s = 0; s < 2; s++) {
                        const uint64_t a0 = l->p[s], a1 = a0 + (y1 - y0);
                        assert_true(a1 <= y0 || y1 <= a0 || a0 == y0);
                    }
                }
                if (ty == 1) assert_int_equal(folded, 2 * L - 1);   /* q8: no row written, nothing to collide */
                else assert_true(folded >= (T == 1 ? 2 * L - 1 : 0));
                cu_plan_free(&on);
                lethe_executor_free(ex);
                cpu->iface->free(cpu);
                decode_close(&d);
            }
}

/* The fold's memory rules, on a hand-made graph and chosen addresses:
 * s0 = in0 * 1, s1 = in1 * 1, x = s0 + s1, a DMS decision, h = norm(x),
 * y = h . W (f32 weights: the row is written). */
static void test_fold_rules(void **state) {
    (void)state;
    const int64_t E = 64;
    float in0[2 * 64], in1[2 * 64], ones[64], wn[64], wf[64 * 8];
    tu_rand_fill(in0, 128, 1);
    tu_rand_fill(in1, 128, 2);
    tu_rand_fill(wn, 64, 3);
    tu_rand_fill(wf, 512, 4);
    for (int i = 0; i < 64; i++) ones[i] = 1.0f;
    int32_t seq[2] = {0, 1}, pos[2] = {5, 7};
    for (int T = 1; T <= 2; T++) {
        const lethe_ubatch ub = {T, seq, pos};
        for (int c = 0; c < 8; c++) {
            lethe_graph *g = lethe_graph_new(32);
            const int64_t ne[2] = {E, T}, n1[1] = {E};
            lethe_tensor t1;
            lethe_tensor_init(&t1, LETHE_F32, 1, n1);
            t1.data = ones;
            lethe_node *one = lethe_leaf(g, &t1);
            lethe_node *s0 = lethe_mul(g, lethe_input(g, LETHE_F32, 2, ne, in0, "in0"), one);
            lethe_node *s1 = lethe_mul(g, lethe_input(g, LETHE_F32, 2, ne, in1, "in1"), one);
            lethe_node *x = lethe_add(g, s0, s1);
            lethe_node *dec = lethe_dms_decision(g, NULL, LETHE_DMS_FORCED, 2, 2, false, 0, 0, 0.5f, 0, &ub);
            lethe_node *between = c == 5 ? lethe_mul(g, x, one) : NULL;   /* case 5: x read before the norm */
            lethe_tensor tw;
            lethe_tensor_init(&tw, LETHE_F32, 1, n1);
            tw.data = wn;
            lethe_node *h = lethe_rms_norm(g, x, lethe_leaf(g, &tw), 1e-5f);
            lethe_node *y = lethe_matmul(g, leaf_q(g, LETHE_F32, wf, E, 8, "wf"), h);
            lethe_set_output(y);
            lethe_set_output(dec);
            if (between) lethe_set_output(between);
            assert_int_equal(g->status, LETHE_OK);
            const int ix = (int)(x - g->nodes), id = (int)(dec - g->nodes), ih = (int)(h - g->nodes);
            fake_dev f = {0};
            f.g = g;
            uint64_t a0, a1;
            fake_resolve(&f, s0, &a0);
            fake_resolve(&f, s1, &a1);
            /* 1: the decision's result takes s0's freed bytes (late would read them overwritten)
             * 2: h takes the decision's bytes (early would write them before the decision runs)
             * 3: both; 4: h takes s1's bytes shifted by one row; 6: h takes s1's very bytes */
            if (c == 1 || c == 3) f.over_node[f.n_over] = id, f.over_addr[f.n_over++] = a0 + 64;
            if (c == 2) f.over_node[f.n_over] = ih, f.over_addr[f.n_over++] = 0x180000000000ull;
            if (c == 2) f.over_node[f.n_over] = id, f.over_addr[f.n_over++] = 0x180000000000ull + 4;
            if (c == 3) f.over_node[f.n_over] = ih, f.over_addr[f.n_over++] = a0 + 64;
            if (c == 4) f.over_node[f.n_over] = ih, f.over_addr[f.n_over++] = a1 + (uint64_t)E * 4;
            if (c == 6) f.over_node[f.n_over] = ih, f.over_addr[f.n_over++] = a1;
            if (c == 7) f.over_node[f.n_over] = ih, f.over_addr[f.n_over++] = a1 + 8;
            cu_plan p;
            plan_with(g, &f, &f, false, 1, LETHE_CU_GEMV_NEW, &p);
            int at_fused = -1, at_dms = -1;
            for (int k = 0; k < p.n_launches; k++) {
                if (p.launches[k].kind == CU_K_NORM_FUSED) at_fused = k;
                if (p.launches[k].kind == CU_K_DMS) at_dms = k;
            }
            const bool fold = c == 0 || c == 1 || c == 2 || c == 6 || (T == 1 && (c == 4 || c == 7));
            const bool early = c == 0 || c == 1 || c == 6 || (T == 1 && (c == 4 || c == 7));
            if (fold != (at_fused >= 0))
                fail_msg("T=%d case %d: the ADD %s folded", T, c, fold ? "was not" : "was wrongly");
            if (fold) {
                assert_int_equal(p.launches[at_fused].i[2], ix);
                assert_int_equal(p.launches[at_fused].node, ih);
                assert_int_equal(count_kind(&p, CU_K_BINARY), 2);   /* the two MULs */
                if (early != (at_fused < at_dms))
                    fail_msg("T=%d case %d: the fused launch is %s the decision", T, c, early ? "after" : "before");
            } else {
                assert_int_equal(count_kind(&p, CU_K_RMS_NORM), 1);
                assert_int_equal(count_kind(&p, CU_K_BINARY), 3 + (c == 5));
            }
            cu_plan_free(&p);
            lethe_graph_free(g);
        }
    }
}

/* A node range that ends between a norm and its GEMVs (a CPU segment, or
 * LETHE_DUMP_NODES: one node per range) keeps the f32 row and the plain
 * launches: fusion never reaches outside the range. */
static void test_plan_ranges(void **state) {
    (void)state;
    decode_case d;
    decode_open(&d, LETHE_Q4_0, 1, false);
    fake_dev f = {0};
    f.g = d.g;
    const cu_plan_env env = {&f, &f, 132, 0x300000000000ull, fake_resolve, fake_scratch, fake_kv_prepare,
                             LETHE_CU_GEMV_NEW, fake_act_bytes, 0, 1};
    char err[200];
    int n_plain = 0;
    for (int i = 0; i < d.g->n_nodes; i++) {   /* one node at a time */
        if (d.g->nodes[i].op == LETHE_OP_NONE) continue;
        cu_plan p;
        assert_int_equal(cu_plan_build(&p, &env, d.g, i, i + 1, false, err, sizeof err), LETHE_OK);
        assert_int_equal(p.n_fused, 0);
        n_plain += p.n_launches - 1;
        cu_plan_free(&p);
    }
    assert_int_equal(n_plain, d.g->n_nodes - count_op(d.g, LETHE_OP_NONE));
    /* a range cut right after the first attention norm: that norm keeps its row */
    int cut = -1;
    for (int i = 0; i < d.g->n_nodes && cut < 0; i++)
        if (d.g->nodes[i].op == LETHE_OP_RMS_NORM) cut = i + 1;
    cu_plan p;
    assert_int_equal(cu_plan_build(&p, &env, d.g, 0, cut, false, err, sizeof err), LETHE_OK);
    assert_int_equal(count_kind(&p, CU_K_RMS_NORM), 1);
    assert_int_equal(count_kind(&p, CU_K_NORM_FUSED), 0);
    cu_plan_free(&p);
    decode_close(&d);
}

#else
static void skip_msg(void **state) {
    (void)state;
    print_message("  skipped: built without CUDA (the kernels' host code is compiled by nvcc)\n");
    skip();
}
static void test_norm_fused_bits(void **state) { skip_msg(state); }
static void test_swiglu_fused_bits(void **state) { skip_msg(state); }
static void test_fused_vs_cpu(void **state) { skip_msg(state); }
static void test_plan_decode(void **state) { skip_msg(state); }
static void test_plan_real_memory(void **state) { skip_msg(state); }
static void test_fold_rules(void **state) { skip_msg(state); }
static void test_plan_ranges(void **state) { skip_msg(state); }
static void test_plan_archs(void **state) { skip_msg(state); }
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_norm_fused_bits),  cmocka_unit_test(test_swiglu_fused_bits),
        cmocka_unit_test(test_fused_vs_cpu),     cmocka_unit_test(test_plan_decode),
        cmocka_unit_test(test_plan_real_memory), cmocka_unit_test(test_fold_rules),
        cmocka_unit_test(test_plan_ranges),      cmocka_unit_test(test_plan_archs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
