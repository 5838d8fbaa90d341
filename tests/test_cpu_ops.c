/* test_cpu_ops.c — every CPU backend op against a plain reference.
 *
 * Each case builds a small graph with the core/graph.h constructors, gives
 * every computed node host memory, runs it through the CPU backend (2
 * threads) and compares with simple loops in double precision that use the
 * dtype.c reference dequantization. Error = NMSE; limits 1e-7 element-wise,
 * 5e-4 matmul / attention; any NaN fails (tu_nmse returns +inf).
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

#include "backend.h"
#include "common.h"
#include "cpu_kernels.h"
#include "dtype.h"
#include "graph.h"
#include "kv_cache.h"
#include "testutil.h"

#define EPS_ELEM 1e-7
#define EPS_MM 5e-4

static lethe_backend *g_be;

/* ------------------------------------------------------------ helpers */

typedef struct {
    void *p[64];
    int n;
} allocs;

static void *keep(allocs *a, void *p) {
    assert_non_null(p);
    assert_true(a->n < 64);
    a->p[a->n++] = p;
    return p;
}

static void free_all(allocs *a) {
    for (int i = 0; i < a->n; i++) free(a->p[i]);
    a->n = 0;
}

/* Host memory for every computed node (the executor's job in the engine). */
static void give_memory(lethe_graph *g, allocs *a) {
    assert_int_equal(g->status, LETHE_OK);
    for (int i = 0; i < g->n_nodes; i++) {
        lethe_node *n = &g->nodes[i];
        if (n->op != LETHE_OP_NONE && !n->t.data) n->t.data = keep(a, calloc(1, lethe_tensor_nbytes(&n->t) + 64));
    }
}

static lethe_status run(lethe_graph *g) { return g_be->iface->compute(g_be, g, 0, g->n_nodes, NULL, NULL); }

static float *randf(allocs *a, size_t n, uint64_t seed) {
    float *x = keep(a, malloc(n * sizeof(float)));
    tu_rand_fill(x, n, seed);
    return x;
}

static void check_nmse(const char *what, const float *ref, const float *got, size_t n, double lim) {
    double e = tu_nmse(ref, got, n);
    if (!(e <= lim)) fail_msg("%s: NMSE %.3g > %.3g", what, e, lim);
}

/* Weights [N, K] of type t from random floats: quantized with from_f32, or,
 * for types without it, random bytes with sane scales. */
static void *make_weights(allocs *a, lethe_dtype t, int64_t N, int64_t K, uint64_t seed) {
    const lethe_dtype_traits *tr = lethe_dtype_get(t);
    size_t rs = lethe_row_size(t, K);
    uint8_t *w = keep(a, malloc(rs * (size_t)N + 64));
    if (tr->from_f32) {
        float *x = malloc((size_t)K * sizeof(float));
        for (int64_t r = 0; r < N; r++) {
            tu_rand_fill(x, (size_t)K, seed + (uint64_t)r);
            tr->from_f32(x, w + (size_t)r * rs, K);
        }
        free(x);
        return w;
    }
    uint64_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < rs * (size_t)N; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        w[i] = (uint8_t)(s >> 56);
    }
    for (int64_t b = 0; b < N * (K / LETHE_QK_K); b++) {
        if (t == LETHE_Q4_K) {
            lethe_block_q4_k *q = (lethe_block_q4_k *)w + b;
            q->d = lethe_f32_to_f16(0.002f);
            q->dmin = lethe_f32_to_f16(0.004f);
        } else if (t == LETHE_Q5_K) {
            lethe_block_q5_k *q = (lethe_block_q5_k *)w + b;
            q->d = lethe_f32_to_f16(0.001f);
            q->dmin = lethe_f32_to_f16(0.003f);
        } else if (t == LETHE_Q6_K) {
            lethe_block_q6_k *q = (lethe_block_q6_k *)w + b;
            q->d = lethe_f32_to_f16(0.0005f);
        }
    }
    return w;
}

/* ------------------------------------------------------------- dtype */

static void test_f16_bf16(void **state) {
    (void)state;
    assert_int_equal(lethe_f32_to_f16(1.0f), 0x3C00);
    assert_int_equal(lethe_f32_to_f16(-2.0f), 0xC000);
    assert_int_equal(lethe_f32_to_f16(65504.0f), 0x7BFF);
    assert_int_equal(lethe_f32_to_f16(1e6f), 0x7C00);
    assert_true(lethe_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    assert_true(lethe_f16_to_f32(lethe_f32_to_f16(0.1f)) == 0.0999755859375f);
    assert_int_equal(lethe_f32_to_bf16(1.0f), 0x3F80);
    assert_true(lethe_bf16_to_f32(lethe_f32_to_bf16(3.140625f)) == 3.140625f);
    /* round to nearest even at the tie: 1 + 2^-8 is halfway in bf16 */
    assert_int_equal(lethe_f32_to_bf16(1.00390625f), 0x3F80);
    assert_true(isnan(lethe_f16_to_f32(lethe_f32_to_f16(NAN))));
}

static void test_dtype_table(void **state) {
    (void)state;
    assert_int_equal(lethe_row_size(LETHE_Q4_1, 64), 40);
    assert_int_equal(lethe_row_size(LETHE_Q4_1, 65), 0);
    assert_int_equal(lethe_row_size(LETHE_Q6_K, 512), 420);
    assert_string_equal(lethe_dtype_name(LETHE_Q8_0), "q8_0");
    assert_string_equal(lethe_dtype_name(99), "?");
    assert_null(lethe_dtype_get(4));
    assert_true(lethe_dtype_supported(LETHE_Q4_1));
    assert_false(lethe_dtype_supported(LETHE_Q2_K));
    assert_false(lethe_dtype_supported(LETHE_I32));
}

/* Quantize -> dequantize stays close to the input, per type's resolution. */
static void test_quant_roundtrip(void **state) {
    (void)state;
    struct { lethe_dtype t; double lim; } cases[] = {
        {LETHE_F16, 1e-7}, {LETHE_BF16, 1e-5}, {LETHE_Q8_0, 1e-4}, {LETHE_Q8_1, 1e-4},
        {LETHE_Q4_0, 1e-2}, {LETHE_Q4_1, 1e-2}, {LETHE_Q5_0, 3e-3}, {LETHE_Q5_1, 3e-3}, {LETHE_Q8_K, 1e-4},
    };
    const int64_t n = 512;
    float x[512], y[512];
    uint8_t buf[4096];
    tu_rand_fill(x, n, 7);
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(cases); i++) {
        const lethe_dtype_traits *tr = lethe_dtype_get(cases[i].t);
        assert_non_null(tr->from_f32);
        tr->from_f32(x, buf, n);
        tr->to_f32(buf, y, n);
        check_nmse(tr->name, x, y, (size_t)n, cases[i].lim);
    }
    /* exact codes: q4_1 of a ramp 0..15 is lossless */
    float r[32], o[32];
    for (int j = 0; j < 32; j++) r[j] = (float)(j % 16);
    lethe_dtype_get(LETHE_Q4_1)->from_f32(r, buf, 32);
    lethe_dtype_get(LETHE_Q4_1)->to_f32(buf, o, 32);
    for (int j = 0; j < 32; j++) assert_true(o[j] == r[j]);
}

/* ------------------------------------------------------------- matmul */

static void ref_matmul(lethe_dtype t, const void *w, const float *x, float *y, int64_t N, int64_t K, int64_t T) {
    float *wf = malloc((size_t)K * sizeof(float));
    size_t rs = lethe_row_size(t, K);
    for (int64_t n = 0; n < N; n++) {
        lethe_dtype_get(t)->to_f32((const uint8_t *)w + (size_t)n * rs, wf, K);
        for (int64_t tt = 0; tt < T; tt++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) s += (double)wf[k] * x[tt * K + k];
            y[tt * N + n] = (float)s;
        }
    }
    free(wf);
}

static void matmul_case(lethe_dtype t, int64_t N, int64_t K, int64_t T) {
    allocs a = {0};
    lethe_graph *g = lethe_graph_new(8);
    void *w = make_weights(&a, t, N, K, 100 + (uint64_t)t);
    float *x = randf(&a, (size_t)(T * K), 5 + (uint64_t)T);
    lethe_node *wn = lethe_input(g, t, 2, (int64_t[]){K, N}, w, "w");
    lethe_node *xn = lethe_input(g, LETHE_F32, 2, (int64_t[]){K, T}, x, "x");
    lethe_node *y = lethe_matmul(g, wn, xn);
    give_memory(g, &a);
    assert_true(g_be->iface->supports_op(g_be, y));
    assert_int_equal(run(g), LETHE_OK);
    float *ref = keep(&a, malloc((size_t)(T * N) * sizeof(float)));
    ref_matmul(t, w, x, ref, N, K, T);
    char what[64];
    snprintf(what, sizeof what, "matmul %s N=%lld K=%lld T=%lld", lethe_dtype_name(t), (long long)N,
             (long long)K, (long long)T);
    check_nmse(what, ref, y->t.data, (size_t)(T * N), EPS_MM);
    lethe_graph_free(g);
    free_all(&a);
}

static void test_matmul_all_dtypes(void **state) {
    (void)state;
    const lethe_dtype blk32[] = {LETHE_F32, LETHE_F16, LETHE_BF16, LETHE_Q4_0, LETHE_Q4_1,
                                 LETHE_Q5_0, LETHE_Q5_1, LETHE_Q8_0};
    const lethe_dtype kq[] = {LETHE_Q4_K, LETHE_Q5_K, LETHE_Q6_K};
    const int64_t Ts[] = {1, 3, 37};
    for (size_t ti = 0; ti < LETHE_ARRAY_SIZE(Ts); ti++) {
        for (size_t i = 0; i < LETHE_ARRAY_SIZE(blk32); i++) matmul_case(blk32[i], 37, 224, Ts[ti]);
        for (size_t i = 0; i < LETHE_ARRAY_SIZE(kq); i++) matmul_case(kq[i], 37, 512, Ts[ti]);
    }
    /* the default model's shapes (q4_1 decode, q8_0 output head rows) */
    matmul_case(LETHE_Q4_1, 64, 576, 1);
    matmul_case(LETHE_Q4_1, 48, 1536, 2);
    matmul_case(LETHE_Q4_K, 40, 768, 9); /* shared-activation decode path */
    matmul_case(LETHE_Q5_1, 40, 96, 12);
    matmul_case(LETHE_Q8_0, 100, 576, 1);
}

/* The SIMD 32-block dots (1 and 4 rows at a time) equal their scalar twins. */
static void test_dot_simd_vs_scalar(void **state) {
    (void)state;
    const lethe_dtype types[] = {LETHE_Q4_0, LETHE_Q4_1, LETHE_Q5_0, LETHE_Q5_1, LETHE_Q8_0};
    const int64_t K = 320;
    allocs a = {0};
    float *x = randf(&a, (size_t)K, 81);
    lethe_cpu_q8a *xq = keep(&a, malloc((size_t)(K / 32) * sizeof *xq));
    lethe_cpu_quantize_q8a(x, xq, K);
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(types); i++) {
        const lethe_dtype t = types[i];
        const size_t rs = lethe_row_size(t, K);
        uint8_t *w = make_weights(&a, t, 4, K, 90 + i);
        float out4[4], out1;
        lethe_cpu_kernels_for(t)->dot(K, w, rs, 4, xq, out4);
        for (int r = 0; r < 4; r++) {
            const float ref = lethe_cpu_dot32_scalar_ref(t, K, w + r * rs, xq);
            lethe_cpu_kernels_for(t)->dot(K, w + r * rs, rs, 1, xq, &out1);
            /* the scalar twin does the SIMD lanes' arithmetic: the same bits
             * (the Vulkan shaders follow it too) */
            if (out4[r] != ref || out1 != ref)
                fail_msg("%s row %d: SIMD %.9g / %.9g, scalar twin %.9g", lethe_dtype_name(t), r, out4[r], out1, ref);
        }
    }
    free_all(&a);
}

/* Batch invariance of quantized weights: a token's matmul result has the
 * same bits in a batch of 37 as alone (chunked prefill == token-by-token
 * relies on it). Float weights take sgemm for large T and are exempt. */
static void test_matmul_batch_invariant(void **state) {
    (void)state;
    const lethe_dtype types[] = {LETHE_Q4_0, LETHE_Q4_1, LETHE_Q5_0, LETHE_Q5_1, LETHE_Q8_0, LETHE_Q4_K, LETHE_Q6_K};
    /* T = 70: a 64-token chunk, a 4-token tile and a 2-token tile; T = 37:
     * 4-token tiles and a 1-token tail. Rows 44 (N = 45) are a 1-row tail. */
    const int64_t N = 45, Ts[] = {37, 70}, picks[] = {0, 20, 36, 66, 68, 69};
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(types); i++) {
        for (size_t ti = 0; ti < LETHE_ARRAY_SIZE(Ts); ti++) {
            allocs a = {0};
            const lethe_dtype t = types[i];
            const int64_t T = Ts[ti];
            const int64_t K = lethe_dtype_get(t)->blck_size == LETHE_QK_K ? 256 : 96;
            void *w = make_weights(&a, t, N, K, 300);
            float *x = randf(&a, (size_t)(T * K), 301);
            lethe_graph *g = lethe_graph_new(16);
            lethe_node *wn = lethe_input(g, t, 2, (int64_t[]){K, N}, w, "w");
            lethe_node *all = lethe_matmul(g, wn, lethe_input(g, LETHE_F32, 2, (int64_t[]){K, T}, x, "x"));
            lethe_node *one[LETHE_ARRAY_SIZE(picks)] = {0};
            for (size_t p = 0; p < LETHE_ARRAY_SIZE(picks); p++)
                if (picks[p] < T)
                    one[p] = lethe_matmul(g, wn, lethe_input(g, LETHE_F32, 2, (int64_t[]){K, 1}, x + picks[p] * K, "x1"));
            give_memory(g, &a);
            assert_int_equal(run(g), LETHE_OK);
            for (size_t p = 0; p < LETHE_ARRAY_SIZE(picks); p++)
                if (one[p])
                    assert_memory_equal((float *)all->t.data + picks[p] * N, one[p]->t.data, (size_t)N * sizeof(float));
            lethe_graph_free(g);
            free_all(&a);
        }
    }
}

/* The register tiles (rows x tokens) give each (row, token) the bits of the
 * one-token dot: every nr 1..4 and nt 1..4. */
static void test_tile_equals_dot(void **state) {
    (void)state;
    const lethe_dtype types[] = {LETHE_Q4_0, LETHE_Q4_1, LETHE_Q5_0, LETHE_Q5_1, LETHE_Q8_0};
    const int64_t K = 320;
    allocs a = {0};
    float *x = randf(&a, (size_t)(4 * K), 83);
    const size_t as = lethe_cpu_act_row_size(LETHE_CPU_ACT_Q8A, K);
    uint8_t *xq = keep(&a, malloc(4 * as));
    for (int t = 0; t < 4; t++) lethe_cpu_quantize_q8a(x + t * K, (lethe_cpu_q8a *)(xq + t * as), K);
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(types); i++) {
        const lethe_cpu_type_kernels *kk = lethe_cpu_kernels_for(types[i]);
        if (!kk->tile) continue; /* no tile kernel on this CPU: matmul loops over dot */
        const size_t rs = lethe_row_size(types[i], K);
        uint8_t *w = make_weights(&a, types[i], 4, K, 95 + i);
        for (int nr = 1; nr <= 4; nr++)
            for (int nt = 1; nt <= 4; nt++) {
                float tile[4 * 4], ref[4];
                kk->tile(K, w, rs, nr, xq, as, nt, tile, 4);
                for (int t = 0; t < nt; t++) {
                    kk->dot(K, w, rs, nr, xq + t * as, ref);
                    assert_memory_equal(tile + t * 4, ref, (size_t)nr * sizeof(float));
                }
            }
    }
    free_all(&a);
}

static void test_matmul_unsupported(void **state) {
    (void)state;
    allocs a = {0};
    lethe_graph *g = lethe_graph_new(8);
    uint8_t *w = keep(&a, calloc(1, lethe_row_size(LETHE_Q2_K, 256) * 4));
    float *x = randf(&a, 256, 1);
    lethe_node *wn = lethe_input(g, LETHE_Q2_K, 2, (int64_t[]){256, 4}, w, "w");
    lethe_node *xn = lethe_input(g, LETHE_F32, 2, (int64_t[]){256, 1}, x, "x");
    lethe_node *y = lethe_matmul(g, wn, xn);
    give_memory(g, &a);
    assert_false(g_be->iface->supports_op(g_be, y));
    assert_int_equal(run(g), LETHE_ERR_UNSUPPORTED);
    lethe_graph_free(g);
    free_all(&a);
}

/* ---------------------------------------------------- element-wise ops */

static void test_get_rows(void **state) {
    (void)state;
    const lethe_dtype types[] = {LETHE_F32, LETHE_F16, LETHE_BF16, LETHE_Q8_0, LETHE_Q4_1, LETHE_Q4_0, LETHE_Q6_K};
    const int64_t N = 11, R = 7;
    int32_t ids[7] = {3, 0, 10, 3, 5, 9, 1};
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(types); i++) {
        allocs a = {0};
        lethe_dtype t = types[i];
        const int64_t E = t == LETHE_Q6_K ? 256 : 96;
        void *w = make_weights(&a, t, N, E, 40);
        lethe_graph *g = lethe_graph_new(8);
        lethe_node *wn = lethe_input(g, t, 2, (int64_t[]){E, N}, w, "w");
        lethe_node *in = lethe_input(g, LETHE_I32, 1, (int64_t[]){R}, ids, "ids");
        lethe_node *y = lethe_get_rows(g, wn, in);
        give_memory(g, &a);
        assert_int_equal(run(g), LETHE_OK);
        float *ref = keep(&a, malloc((size_t)(R * E) * sizeof(float)));
        for (int64_t r = 0; r < R; r++)
            lethe_dtype_get(t)->to_f32((const uint8_t *)w + (size_t)ids[r] * lethe_row_size(t, E), ref + r * E, E);
        check_nmse(lethe_dtype_name(t), ref, y->t.data, (size_t)(R * E), EPS_ELEM);
        lethe_graph_free(g);
        free_all(&a);
    }
    /* an id out of range is bad input: a status, never a crash */
    allocs a = {0};
    float *w = randf(&a, 4 * 8, 3);
    int32_t bad[2] = {1, 4};
    lethe_graph *g = lethe_graph_new(8);
    lethe_node *wn = lethe_input(g, LETHE_F32, 2, (int64_t[]){8, 4}, w, "w");
    lethe_node *in = lethe_input(g, LETHE_I32, 1, (int64_t[]){2}, bad, "ids");
    lethe_get_rows(g, wn, in);
    give_memory(g, &a);
    assert_int_equal(run(g), LETHE_ERR_INVALID_ARG);
    lethe_graph_free(g);
    free_all(&a);
}

static void test_rms_norm(void **state) {
    (void)state;
    const int64_t E = 77, T = 37;
    for (int with_w = 0; with_w < 2; with_w++) {
        allocs a = {0};
        float *x = randf(&a, (size_t)(E * T), 11), *w = randf(&a, (size_t)E, 12);
        lethe_graph *g = lethe_graph_new(8);
        lethe_node *xn = lethe_input(g, LETHE_F32, 2, (int64_t[]){E, T}, x, "x");
        lethe_node *wn = with_w ? lethe_input(g, LETHE_F32, 1, (int64_t[]){E}, w, "w") : NULL;
        lethe_node *y = lethe_rms_norm(g, xn, wn, 1e-5f);
        give_memory(g, &a);
        assert_int_equal(run(g), LETHE_OK);
        float *ref = keep(&a, malloc((size_t)(E * T) * sizeof(float)));
        for (int64_t t = 0; t < T; t++) {
            double ss = 0;
            for (int64_t i = 0; i < E; i++) ss += (double)x[t * E + i] * x[t * E + i];
            double sc = 1.0 / sqrt(ss / E + 1e-5);
            for (int64_t i = 0; i < E; i++) ref[t * E + i] = (float)(x[t * E + i] * sc * (with_w ? w[i] : 1.0));
        }
        check_nmse("rms_norm", ref, y->t.data, (size_t)(E * T), EPS_ELEM);
        lethe_graph_free(g);
        free_all(&a);
    }
}

static void test_add_mul_swiglu(void **state) {
    (void)state;
    const int64_t N = 45, T = 37;
    for (int bcast = 0; bcast < 2; bcast++) {
        allocs a = {0};
        float *x = randf(&a, (size_t)(N * T), 21), *b = randf(&a, (size_t)(N * T), 22);
        lethe_graph *g = lethe_graph_new(8);
        lethe_node *xn = lethe_input(g, LETHE_F32, 2, (int64_t[]){N, T}, x, "a");
        lethe_node *bn = lethe_input(g, LETHE_F32, 2, (int64_t[]){N, bcast ? 1 : T}, b, "b");
        lethe_node *s = lethe_add(g, xn, bn), *p = lethe_mul(g, xn, bn), *sw = lethe_swiglu(g, xn, s);
        give_memory(g, &a);
        assert_int_equal(run(g), LETHE_OK);
        float *rs = keep(&a, malloc((size_t)(N * T) * 4)), *rp = keep(&a, malloc((size_t)(N * T) * 4));
        float *rw = keep(&a, malloc((size_t)(N * T) * 4));
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < N; i++) {
                double av = x[t * N + i], bv = b[(bcast ? 0 : t) * N + i];
                rs[t * N + i] = (float)(av + bv);
                rp[t * N + i] = (float)(av * bv);
                rw[t * N + i] = (float)(av / (1.0 + exp(-av)) * (float)(av + bv));
            }
        check_nmse("add", rs, s->t.data, (size_t)(N * T), EPS_ELEM);
        check_nmse("mul", rp, p->t.data, (size_t)(N * T), EPS_ELEM);
        check_nmse("swiglu", rw, sw->t.data, (size_t)(N * T), EPS_ELEM);
        lethe_graph_free(g);
        free_all(&a);
    }
}

/* ------------------------------------------------------------------ rope */

/* HF's rotary inverse frequencies, written independently of the backend. */
static double ref_inv_freq(const lethe_rope_params *p, int i) {
    double inv = 1.0 / pow(p->freq_base, (2.0 * i) / p->n_rot);
    if (p->llama3_factor > 0) {
        double lo_wl = p->llama3_orig_ctx / p->llama3_low_freq_factor;
        double hi_wl = p->llama3_orig_ctx / p->llama3_high_freq_factor;
        double wl = 2 * M_PI / inv;
        double scaled = wl > lo_wl ? inv / p->llama3_factor : inv;
        double smooth = (p->llama3_orig_ctx / wl - p->llama3_low_freq_factor) /
                        (p->llama3_high_freq_factor - p->llama3_low_freq_factor);
        double smoothed = (1 - smooth) * scaled / p->llama3_factor + smooth * scaled;
        bool medium = !(wl < hi_wl) && !(wl > lo_wl);
        inv = medium ? smoothed : scaled;
    }
    if (p->freq_factors) inv /= p->freq_factors[i];
    return inv * p->freq_scale;
}

static void rope_case_ff(lethe_rope_mode mode, int n_rot, float freq_scale, float l3, const float *ff) {
    const int64_t D = 64, H = 3, T = 5;
    int32_t pos[5] = {0, 1, 17, 250, 8191};
    int32_t seq[5] = {0};
    lethe_ubatch ub = {.n_tokens = (int32_t)T, .seq_id = seq, .pos = pos};
    lethe_rope_params p = {.mode = mode, .n_rot = n_rot, .freq_base = 500000.0f, .freq_scale = freq_scale,
                           .llama3_factor = l3, .llama3_low_freq_factor = 1.0f, .llama3_high_freq_factor = 4.0f,
                           .llama3_orig_ctx = 8192, .freq_factors = ff};
    allocs a = {0};
    float *x = randf(&a, (size_t)(D * H * T), 31);
    lethe_graph *g = lethe_graph_new(8);
    lethe_node *xn = lethe_input(g, LETHE_F32, 3, (int64_t[]){D, H, T}, x, "x");
    lethe_node *y = lethe_rope(g, xn, &p, &ub);
    give_memory(g, &a);
    assert_int_equal(run(g), LETHE_OK);
    float *ref = keep(&a, malloc((size_t)(D * H * T) * 4));
    memcpy(ref, x, (size_t)(D * H * T) * 4);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            const float *s = x + (t * H + h) * D;
            float *o = ref + (t * H + h) * D;
            for (int i = 0; i < n_rot / 2; i++) {
                double th = pos[t] * ref_inv_freq(&p, i);
                int i0 = mode == LETHE_ROPE_NEOX ? i : 2 * i, i1 = mode == LETHE_ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
                o[i0] = (float)(s[i0] * cos(th) - s[i1] * sin(th));
                o[i1] = (float)(s[i0] * sin(th) + s[i1] * cos(th));
            }
        }
    check_nmse("rope", ref, y->t.data, (size_t)(D * H * T), EPS_ELEM);
    lethe_graph_free(g);
    free_all(&a);
}

static void rope_case(lethe_rope_mode mode, int n_rot, float freq_scale, float l3) {
    rope_case_ff(mode, n_rot, freq_scale, l3, NULL);
}

static void test_rope(void **state) {
    (void)state;
    /* GGUF rope_freqs.weight: per-pair divisors (Llama 3 scaling as converted) */
    float ff[32];
    for (int i = 0; i < 32; i++) ff[i] = 1.0f + (float)i * 0.25f;
    rope_case_ff(LETHE_ROPE_NORM, 64, 1.0f, 0.0f, ff);
    rope_case(LETHE_ROPE_NORM, 64, 1.0f, 0.0f);
    rope_case(LETHE_ROPE_NEOX, 64, 1.0f, 0.0f);
    rope_case(LETHE_ROPE_NEOX, 32, 0.5f, 0.0f); /* partial rotation, linear scaling */
    rope_case(LETHE_ROPE_NORM, 64, 1.0f, 8.0f); /* llama 3 scaling */
    rope_case(LETHE_ROPE_NEOX, 64, 1.0f, 8.0f);
}

/* ------------------------------------------------------- kv + attention */

static float kv_elem(const lethe_kv_cache *kv, const void *row, int d) {
    return kv->type == LETHE_F16 ? lethe_f16_to_f32(((const lethe_f16 *)row)[d]) : ((const float *)row)[d];
}

/* Store a batch for (layer); returns the graph with q, attention nodes. */
static void attention_case(lethe_dtype kvt, const int D) {
    enum { NSEQ = 3, NL = 2, HKV = 2, G = 3, HQ = HKV * G, LAYER = 1 };
    assert_true(D <= 128);
    lethe_kv_cache kv;
    assert_int_equal(lethe_kv_init(&kv, NSEQ, NL, HKV, D, kvt, 64u << 20, 64, NULL, NULL), LETHE_OK);
    allocs a = {0};

    /* history: seq 0 has 5 tokens, seq 1 has 40 (two pages), seq 2 none */
    int32_t hseq[45], hpos[45];
    for (int i = 0; i < 45; i++) { hseq[i] = i < 5 ? 0 : 1; hpos[i] = i < 5 ? i : i - 5; }
    lethe_ubatch hub = {.n_tokens = 45, .seq_id = hseq, .pos = hpos};
    assert_int_equal(lethe_kv_reserve(&kv, 45, hseq, hpos), LETHE_OK);
    {
        lethe_graph *g = lethe_graph_new(8);
        float *k = randf(&a, 45 * HKV * D, 51), *v = randf(&a, 45 * HKV * D, 52);
        lethe_node *kn = lethe_input(g, LETHE_F32, 3, (int64_t[]){D, HKV, 45}, k, "k");
        lethe_node *vn = lethe_input(g, LETHE_F32, 3, (int64_t[]){D, HKV, 45}, v, "v");
        lethe_kv_store(g, &kv, LAYER, kn, vn, NULL, &hub);
        give_memory(g, &a);
        assert_int_equal(run(g), LETHE_OK);
        lethe_graph_free(g);
    }
    lethe_kv_commit(&kv);

    /* the batch: prefill of 3 in seq 1 (masked among themselves), a decode
     * token of seq 0, the first 2 tokens of seq 2; interleaved */
    int32_t seq[6] = {1, 0, 1, 2, 1, 2}, pos[6] = {40, 5, 41, 0, 42, 1};
    const int T = 6;
    lethe_ubatch ub = {.n_tokens = T, .seq_id = seq, .pos = pos};
    assert_int_equal(lethe_kv_reserve(&kv, T, seq, pos), LETHE_OK);
    float *q = randf(&a, (size_t)T * HQ * D, 61);
    float *k = randf(&a, (size_t)T * HKV * D, 62), *v = randf(&a, (size_t)T * HKV * D, 63);
    lethe_graph *g = lethe_graph_new(8);
    lethe_node *qn = lethe_input(g, LETHE_F32, 3, (int64_t[]){D, HQ, T}, q, "q");
    lethe_node *kn = lethe_input(g, LETHE_F32, 3, (int64_t[]){D, HKV, T}, k, "k");
    lethe_node *vn = lethe_input(g, LETHE_F32, 3, (int64_t[]){D, HKV, T}, v, "v");
    lethe_node *st = lethe_kv_store(g, &kv, LAYER, kn, vn, NULL, &ub);
    const float scale = 1.0f / sqrtf((float)D);
    lethe_node *at = lethe_attention(g, &kv, LAYER, qn, st, scale, &ub);
    give_memory(g, &a);
    const int i_store = (int)(st - g->nodes), i_att = (int)(at - g->nodes);
    assert_true(g_be->iface->supports_op(g_be, st) && g_be->iface->supports_op(g_be, at));
    assert_int_equal(g_be->iface->compute(g_be, g, 0, i_store + 1, NULL, NULL), LETHE_OK);

    /* KV_STORE wrote each row (in the cache dtype) and its position */
    for (int t = 0; t < T; t++)
        for (int h = 0; h < HKV; h++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(&kv, seq[t], LAYER, h);
            const int slot = kv.res_slot[(LAYER * HKV + h) * kv.max_batch + t];
            assert_int_equal(*lethe_kv_pos(&kv, s, slot), pos[t]);
            for (int d = 0; d < D; d++) {
                float ek = k[(t * HKV + h) * D + d], ev = v[(t * HKV + h) * D + d];
                if (kvt == LETHE_F16) { ek = lethe_f16_to_f32(lethe_f32_to_f16(ek)); ev = lethe_f16_to_f32(lethe_f32_to_f16(ev)); }
                assert_true(kv_elem(&kv, lethe_kv_k(&kv, s, slot), d) == ek);
                assert_true(kv_elem(&kv, lethe_kv_v(&kv, s, slot), d) == ev);
            }
        }

    /* ragged heads: evict old slots of seq 1 head 1 (many: compaction) and
     * seq 0 head 0 (one: a hole the kernel must skip) */
    const int32_t drop1[] = {0, 7, 8, 20, 21, 33}, drop0[] = {2};
    lethe_kv_stream_drop(&kv, lethe_kv_stream_at(&kv, 1, LAYER, 1), drop1, 6);
    lethe_kv_stream_drop(&kv, lethe_kv_stream_at(&kv, 0, LAYER, 0), drop0, 1);
    assert_int_equal(lethe_kv_stream_at(&kv, 1, LAYER, 1)->len, 43 - 6);
    assert_int_equal(lethe_kv_stream_at(&kv, 0, LAYER, 0)->n_holes, 1);
    /* delayed eviction (DMS): slot 3 of seq 1 head 0 is visible to the query
     * at position 40 only; slot 10 to none of this batch */
    *lethe_kv_expire(&kv, lethe_kv_stream_at(&kv, 1, LAYER, 0), 3) = 41;
    *lethe_kv_expire(&kv, lethe_kv_stream_at(&kv, 1, LAYER, 0), 10) = 12;

    const uint64_t reads0 = kv.reads;
    assert_int_equal(g_be->iface->compute(g_be, g, i_att, i_att + 1, NULL, NULL), LETHE_OK);

    /* reference: double precision, straight from the cache contents */
    float *ref = keep(&a, malloc((size_t)T * HQ * D * 4));
    uint64_t reads = 0;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < HQ; h++) {
            const lethe_kv_stream *s = lethe_kv_stream_at(&kv, seq[t], LAYER, h / G);
            if (h % G == 0) reads += (uint64_t)s->len;
            double sc[128], mx = -INFINITY, sum = 0, o[128];
            assert_true(s->len <= 128);
            for (int i = 0; i < s->len; i++) {
                sc[i] = -INFINITY;
                if (*lethe_kv_pos(&kv, s, i) > pos[t] || pos[t] >= *lethe_kv_expire(&kv, s, i)) continue;
                double dot = 0;
                for (int d = 0; d < D; d++) dot += (double)q[(t * HQ + h) * D + d] * kv_elem(&kv, lethe_kv_k(&kv, s, i), d);
                sc[i] = dot * scale;
                mx = fmax(mx, sc[i]);
            }
            memset(o, 0, sizeof o);
            for (int i = 0; i < s->len; i++) {
                if (sc[i] == -INFINITY) continue;
                double p = exp(sc[i] - mx);
                sum += p;
                for (int d = 0; d < D; d++) o[d] += p * kv_elem(&kv, lethe_kv_v(&kv, s, i), d);
            }
            for (int d = 0; d < D; d++) ref[(t * HQ + h) * D + d] = (float)(o[d] / sum);
        }
    check_nmse(kvt == LETHE_F16 ? "attention f16" : "attention f32", ref, at->t.data, (size_t)T * HQ * D, EPS_MM);
    assert_true(kv.reads - reads0 == reads);

    lethe_graph_free(g);
    free_all(&a);
    lethe_kv_free(&kv);
}

/* D = 64 with an f16 cache takes the register-resident SIMD path. */
static void test_attention_f32(void **state) { (void)state; attention_case(LETHE_F32, 40); attention_case(LETHE_F32, 64); }
static void test_attention_f16(void **state) { (void)state; attention_case(LETHE_F16, 40); attention_case(LETHE_F16, 64); }

/* ----------------------------------------------------------------- abort */

static int g_abort_calls;
static bool abort_after_two(void *user) {
    (void)user;
    return ++g_abort_calls >= 2;
}

static void test_abort(void **state) {
    (void)state;
    allocs a = {0};
    const int64_t N = 32, T = 4;
    float *x = randf(&a, (size_t)(N * T), 71);
    lethe_graph *g = lethe_graph_new(16);
    lethe_node *cur = lethe_input(g, LETHE_F32, 2, (int64_t[]){N, T}, x, "x");
    for (int i = 0; i < 6; i++) cur = lethe_add(g, cur, cur);
    give_memory(g, &a);
    g_abort_calls = 0;
    assert_int_equal(g_be->iface->compute(g_be, g, 0, g->n_nodes, abort_after_two, NULL), LETHE_ERR_ABORTED);
    assert_int_equal(g_abort_calls, 2);
    /* the backend is still usable after an abort */
    assert_int_equal(run(g), LETHE_OK);
    assert_true(((float *)cur->t.data)[5] == x[5] * 64.0f);
    lethe_graph_free(g);
    free_all(&a);
}

static void test_buffers(void **state) {
    (void)state;
    lethe_buffer *b = NULL;
    assert_int_equal(g_be->iface->buffer_alloc(g_be, 1000, &b), LETHE_OK);
    assert_non_null(b->host_ptr);
    assert_true(((uintptr_t)b->host_ptr & 63) == 0);
    char src[16] = "hello, buffer!", dst[16] = {0};
    assert_int_equal(g_be->iface->buffer_set(b, 984, src, 16), LETHE_OK);
    assert_int_equal(g_be->iface->buffer_get(b, 984, dst, 16), LETHE_OK);
    assert_memory_equal(src, dst, 16);
    assert_int_equal(g_be->iface->buffer_set(b, 990, src, 16), LETHE_ERR_INVALID_ARG);
    g_be->iface->buffer_free(b);
    lethe_backend_info info;
    g_be->iface->get_info(g_be, &info);
    assert_string_equal(info.name, "cpu");
    assert_true(info.mem_total > 0);
    assert_int_equal(lethe_backend_cpu_n_threads(g_be), 2);
}

static int setup(void **state) {
    (void)state;
    g_be = lethe_backend_cpu_new(2);
    return g_be ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    g_be->iface->free(g_be);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_bf16),
        cmocka_unit_test(test_dtype_table),
        cmocka_unit_test(test_quant_roundtrip),
        cmocka_unit_test(test_matmul_all_dtypes),
        cmocka_unit_test(test_dot_simd_vs_scalar),
        cmocka_unit_test(test_matmul_batch_invariant),
        cmocka_unit_test(test_tile_equals_dot),
        cmocka_unit_test(test_matmul_unsupported),
        cmocka_unit_test(test_get_rows),
        cmocka_unit_test(test_rms_norm),
        cmocka_unit_test(test_add_mul_swiglu),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention_f32),
        cmocka_unit_test(test_attention_f16),
        cmocka_unit_test(test_abort),
        cmocka_unit_test(test_buffers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
