/* test_cuda_host.c — the CUDA kernels' weight decoding and KV-cache
 * arithmetic, checked without a GPU. backends/cuda/hostcheck/k_hostcheck.cu
 * compiles the kernels' own block-reading code (cuda_quant.cuh), GEMV lane
 * code (cuda_gemv.cuh) and attention steps (cuda_attn.cuh: slot addressing,
 * visibility, online softmax, split-K combine) for the host; here they must
 * agree with the CPU backend: dequantized rows exactly, GEMV results within
 * rounding (every weight read once, by the right lane, against the right
 * activation), KV_STORE's cache bit for bit (rows and DMS expiries, from the
 * module's own tables, cuda_kv_meta.h), and ATTENTION on both kernel paths
 * (flash-decoding with 1..many spans, tiled prefill) within f32 rounding, on
 * caches with ragged per-head lengths, holes, a compaction and expiries;
 * the score policies' device steps: TOVA/H2O weights (normalized after the
 * combine or in the tiled kernel) folded into the CPU's scores and
 * evictions, QUEST's bounds, pages (a tie included) and KV reads. The
 * module's launch plan (cuda_plan.c, built here with fake device
 * addresses): replay stability of decode steps (CUDA graphs), the staged
 * tables, attention driven by a plan's staging bytes with surplus spans,
 * and score-policy decode steps run launch by launch from a frozen
 * ("captured") launch list against the CPU over many evicting steps.
 * Builds without CUDA skip with a message; on a GPU, test_backend_ops runs
 * the kernels themselves.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "../backends/cuda/cuda_weights.h"   /* plain C: tested with or without CUDA */
#include "../backends/cuda/cuda_kv_move.h"   /* plain C too */
#include "backend.h"                         /* lethe_row_move */
#include "common.h"
#include "dtype.h"
#include "testutil.h"

#ifdef LETHE_HAVE_CUDA
#include "backend.h"
#include "cpu_kernels.h"
#include "cuda_kv_meta.h"
#include "cuda_topk.h"
#include "cuda_plan.h"
#include "executor.h"
#include "graph.h"
#include "kv_cache.h"
#include <math.h>
#endif

#ifdef LETHE_HAVE_CUDA
int lethe_cu_host_dequant_row(int wtype, const void *row, int64_t K, float *out);
int lethe_cu_host_gemv(int wtype, const void *w, size_t row_bytes, const float *x, float *y, int64_t N, int64_t K,
                       int64_t T);

static const lethe_dtype k_types[] = {LETHE_F32, LETHE_F16, LETHE_BF16, LETHE_Q4_0,
                                      LETHE_Q4_1, LETHE_Q5_0, LETHE_Q5_1, LETHE_Q8_0};

/* N rows of K random values in dtype t */
static uint8_t *make_rows(lethe_dtype t, int64_t N, int64_t K, uint64_t seed) {
    const size_t rs = lethe_row_size(t, K);
    uint8_t *w = malloc(rs * (size_t)N);
    float *x = malloc((size_t)K * sizeof(float));
    assert_non_null(w);
    assert_non_null(x);
    for (int64_t r = 0; r < N; r++) {
        tu_rand_fill(x, (size_t)K, seed + (uint64_t)r);
        lethe_dtype_get(t)->from_f32(x, w + (size_t)r * rs, K);
    }
    free(x);
    return w;
}

static void test_dequant_rows(void **state) {
    (void)state;
    const int64_t N = 5, K = 256;
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_types); i++) {
        const lethe_dtype t = k_types[i];
        uint8_t *w = make_rows(t, N, K, 40 + i);
        float want[256], got[256];
        for (int64_t r = 0; r < N; r++) {
            const uint8_t *row = w + (size_t)r * lethe_row_size(t, K);
            lethe_dtype_get(t)->to_f32(row, want, K);
            assert_int_equal(lethe_cu_host_dequant_row((int)t, row, K, got), 0);
            for (int64_t k = 0; k < K; k++)
                if (got[k] != want[k])
                    fail_msg("%s row %lld elem %lld: cuda %g, cpu %g", lethe_dtype_name(t), (long long)r, (long long)k,
                             got[k], want[k]);
        }
        free(w);
    }
}

static void test_gemv_lanes(void **state) {
    (void)state;
    const int64_t N = 9, K = 576;   /* 18 blocks: lanes wrap around unevenly */
    const int64_t Ts[] = {1, 3, 8};
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_types); i++) {
        const lethe_dtype t = k_types[i];
        uint8_t *w = make_rows(t, N, K, 90 + i);
        for (size_t ti = 0; ti < LETHE_ARRAY_SIZE(Ts); ti++) {
            const int64_t T = Ts[ti];
            float *x = malloc((size_t)(T * K) * sizeof(float)), *y = malloc((size_t)(T * N) * sizeof(float));
            float *wf = malloc((size_t)K * sizeof(float));
            double *ref = malloc((size_t)(T * N) * sizeof(double));
            tu_rand_fill(x, (size_t)(T * K), 7 + ti);
            for (int64_t r = 0; r < N; r++) {
                lethe_dtype_get(t)->to_f32(w + (size_t)r * lethe_row_size(t, K), wf, K);
                for (int64_t tt = 0; tt < T; tt++) {
                    double s = 0;
                    for (int64_t k = 0; k < K; k++) s += (double)wf[k] * x[tt * K + k];
                    ref[tt * N + r] = s;
                }
            }
            assert_int_equal(lethe_cu_host_gemv((int)t, w, lethe_row_size(t, K), x, y, N, K, T), 0);
            double num = 0, den = 0;
            for (int64_t j = 0; j < T * N; j++) {
                num += (y[j] - ref[j]) * (y[j] - ref[j]);
                den += ref[j] * ref[j];
            }
            if (!(num / den < 1e-10))
                fail_msg("%s T=%lld: NMSE %.3g against the float64 product", lethe_dtype_name(t), (long long)T,
                         num / den);
            free(x);
            free(y);
            free(wf);
            free(ref);
        }
        free(w);
    }
}

int lethe_cu_host_q8_quant(const float *x, int64_t K, uint8_t *out);
int lethe_cu_host_gemv_new(int wtype, const void *w, size_t row_bytes, const float *x, float *y, int64_t N, int64_t K,
                           int64_t T, int variant);

/* The device's activation quantizer (k_quant_q8) gives the CPU backend's q8
 * blocks bit for bit: d and s (f16 values in f32), and every code, with the
 * device's per-part permutation undone. Random rows plus the edges: an all-
 * zero block, exact .5 ties of x * 127 / amax (nearest even), a block whose
 * s overflows f16, tiny values. */
static void test_q8_quant(void **state) {
    (void)state;
    const int64_t K = 32 * 64;
    float *x = malloc((size_t)K * sizeof(float));
    assert_non_null(x);
    tu_rand_fill(x, (size_t)K, 1234);
    for (int j = 0; j < 32; j++) x[32 + j] = 0.0f;                       /* block 1: zeros */
    for (int j = 0; j < 32; j++) x[64 + j] = (float)(j - 16) + 0.5f;     /* block 2: ties (amax 16.5) */
    x[64 + 31] = 127.0f;                                                   /* id = 1: x * id = x exactly */
    for (int j = 0; j < 32; j++) x[96 + j] = 4000.0f + (float)j;         /* block 3: s = d * sum overflows f16 */
    for (int j = 0; j < 32; j++) x[128 + j] = 1e-30f * (float)(j + 1);   /* block 4: tiny (d rounds to f16 0) */
    lethe_cpu_q8a *cpu = malloc((size_t)(K / 32) * sizeof *cpu);
    uint8_t *dev = malloc((size_t)(K / 32) * 64);
    assert_non_null(cpu);
    assert_non_null(dev);
    lethe_cpu_quantize_q8a(x, cpu, K);
    assert_int_equal(lethe_cu_host_q8_quant(x, K, dev), 0);
    /* device block: 4 parts of 16 bytes {d, s, codes 4p..4p+3, codes 16+4p..16+4p+3} */
    for (int64_t b = 0; b < K / 32; b++) {
        const uint8_t *db = dev + 64 * b;
        for (int p = 0; p < 4; p++) {
            float ds[2];
            memcpy(ds, db + 16 * p, sizeof ds);
            if (memcmp(&ds[0], &cpu[b].d, 4) || memcmp(&ds[1], &cpu[b].s, 4))
                fail_msg("block %lld part %d: device d %g s %g, cpu d %g s %g", (long long)b, p, ds[0], ds[1], cpu[b].d,
                         cpu[b].s);
        }
        for (int e = 0; e < 32; e++) {
            const int at = 16 * ((e & 15) / 4) + 8 + (e >= 16 ? 4 : 0) + e % 4;
            if ((int8_t)db[at] != cpu[b].qs[e])
                fail_msg("block %lld elem %d: device %d, cpu %d", (long long)b, e, (int8_t)db[at], cpu[b].qs[e]);
        }
    }
    free(x);
    free(cpu);
    free(dev);
}

/* The new decode GEMV (k_gemv_q8 / k_gemv_f, their staging and lane
 * mapping run warp by warp) against the CPU backend's own dot kernels, for
 * every type, T = 1..8, odd row counts (a last warp of 1..7 rows), K that
 * ends in a partial chunk (q4_*: 32 blocks, q8_0: 16), rows that do not
 * start on 16 bytes (K = 576 in q4_0: 324-byte rows) and, for the quantized
 * types, a matrix whose first byte is not 16-byte aligned (the staging's
 * byte-wise edge copies). Quantized types: the CPU's bits, every (row,
 * token) (the same q8 activations, integer dots and float order); float
 * types: NMSE < 1e-9 (the CPU's float order depends on its build). The
 * quantized types run both lane layouts (4 lanes per row; "wide": 2). */
static void test_gemv_new(void **state) {
    (void)state;
    static const struct { int64_t N, K; } shapes[] = {{1, 32}, {7, 576}, {13, 1280}, {37, 1056}, {9, 4096}};
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_types); i++) {
        const lethe_dtype t = k_types[i];
        const lethe_cpu_type_kernels *kk = lethe_cpu_kernels_for(t);
        assert_non_null(kk);
        const bool quant = kk->act == LETHE_CPU_ACT_Q8A;
        for (size_t si = 0; si < LETHE_ARRAY_SIZE(shapes); si++) {
            const int64_t N = shapes[si].N, K = shapes[si].K;
            const size_t rb = lethe_row_size(t, K);
            uint8_t *w = make_rows(t, N, K, 300 + 17 * i + si);
            /* the same rows 2 bytes into a buffer (quantized types only) */
            uint8_t *wbuf = malloc(rb * (size_t)N + 16), *wmis = wbuf + 2;
            assert_non_null(wbuf);
            memcpy(wmis, w, rb * (size_t)N);
            for (int64_t T = 1; T <= 8; T++) {
                float *x = malloc((size_t)(T * K) * sizeof(float)), *y = malloc((size_t)(T * N) * sizeof(float));
                float *want = malloc((size_t)(T * N) * sizeof(float));
                uint8_t *act = malloc((size_t)T * lethe_cpu_act_row_size(kk->act, K));
                assert_true(x && y && want && act);
                tu_rand_fill(x, (size_t)(T * K), 500 + (uint64_t)T + 31 * si);
                const size_t as = lethe_cpu_act_row_size(kk->act, K);
                for (int64_t tt = 0; tt < T; tt++) {
                    const void *xa = x + tt * K;
                    if (quant) {
                        lethe_cpu_quantize_q8a(x + tt * K, (lethe_cpu_q8a *)(act + (size_t)tt * as), K);
                        xa = act + (size_t)tt * as;
                    }
                    for (int64_t n0 = 0; n0 < N; n0 += 4) {   /* as cpu_matmul.c: 4 rows per call */
                        float out[4];
                        const int nr = (int)(N - n0 < 4 ? N - n0 : 4);
                        kk->dot(K, w + (size_t)n0 * rb, rb, nr, xa, out);
                        memcpy(want + tt * N + n0, out, (size_t)nr * sizeof(float));
                    }
                }
                for (int pass = 0; pass < (quant ? 4 : 1); pass++) {
                    const int mis = pass & 1, variant = pass >> 1 ? LETHE_CU_GEMV_WIDE : LETHE_CU_GEMV_NEW;
                    for (int64_t j = 0; j < T * N; j++) y[j] = NAN;   /* poison: every output written */
                    assert_int_equal(lethe_cu_host_gemv_new((int)t, mis ? wmis : w, rb, x, y, N, K, T, variant), 0);
                    if (quant) {
                        for (int64_t j = 0; j < T * N; j++)
                            if (memcmp(&y[j], &want[j], sizeof(float)))
                                fail_msg("%s N=%lld K=%lld T=%lld%s%s: token %lld row %lld: cuda %.9g, cpu %.9g",
                                         lethe_dtype_name(t), (long long)N, (long long)K, (long long)T,
                                         mis ? " (misaligned matrix)" : "", variant ? " (wide)" : "",
                                         (long long)(j / N), (long long)(j % N), y[j], want[j]);
                    } else {
                        double num = 0, den = 0;
                        for (int64_t j = 0; j < T * N; j++) {
                            if (isnan(y[j])) fail_msg("%s: output %lld not written", lethe_dtype_name(t), (long long)j);
                            num += ((double)y[j] - want[j]) * ((double)y[j] - want[j]);
                            den += (double)want[j] * want[j];
                        }
                        if (!(num / den < 1e-9))
                            fail_msg("%s N=%lld K=%lld T=%lld: NMSE %.3g against the CPU", lethe_dtype_name(t),
                                     (long long)N, (long long)K, (long long)T, num / den);
                    }
                }
                free(x);
                free(y);
                free(want);
                free(act);
            }
            free(w);
            free(wbuf);
        }
    }
}

int lethe_cu_host_kv_store(const lethe_cu_kv_view *kv, const float *k, const float *v, const float *dec,
                           const lethe_cu_kv_row *rows, int64_t n_rows);
int lethe_cu_host_attention(const lethe_cu_kv_view *kv, const float *q, float *out, const lethe_cu_attn_work *work,
                            int n_blocks, int decode, const int32_t *plists, const int32_t *qpos, int Hkv, int G,
                            float scale, int chunk, int n_split, int cap, float *wts, int wstride);
int lethe_cu_host_quest(const lethe_cu_kv_view *kv, const float *q, lethe_cu_attn_work *work, int n_items,
                        int32_t *plists, int sel_base, int k, const int32_t *qpos, int Hkv, int G,
                        const int32_t *entries, int n_entries);
int lethe_cu_host_quest_refresh(const lethe_cu_kv_view *kv, const lethe_cu_attn_work *work, const int32_t *plists,
                                const int32_t *ref, int n_items);

/* KV cases: a cache of 2 sequences x 2 layers x Hkv heads with `hist`
 * tokens of history in sequence 0 (9 in sequence 1), random rows, every 5th
 * token DMS-flagged (expired or still visible), head h of layer 1 of
 * sequence 0 dropping 2h + 1 slots (holes, or a compaction past 4); then a
 * micro-batch of T tokens reserved: alternating sequences (decode shape) or
 * runs (the first 3/5 of the tokens sequence 0, the rest sequence 1). */
#define KV_LAYER 1
#define KV_W 3
typedef struct kv_case {
    const char *name;
    int T, Hkv, D, G, hist;
    bool f16, runs, dms;
    int rule;       /* LETHE_KV_RULE_TOVA / H2O / QUEST (0: DMS) */
    int budget;     /* the policy's budget */
    bool tie;       /* QUEST: pages 1 and 3 of sequence 0 share their (dominant) keys */
} kv_case;

typedef struct kv_built {
    lethe_kv_cache kv;
    lethe_graph *g;
    lethe_node *store, *attn;
    lethe_ubatch ub;
    int32_t seq[64], pos[64];
    float *k, *v, *q, *dec;
} kv_built;

static void kv_fill(const lethe_kv_cache *kv, void *dst, uint64_t seed) {
    float x[256];
    tu_rand_fill(x, (size_t)kv->head_dim, seed);
    if (kv->type == LETHE_F16) {
        for (int d = 0; d < kv->head_dim; d++) ((lethe_f16 *)dst)[d] = lethe_f32_to_f16(x[d]);
    } else {
        memcpy(dst, x, (size_t)kv->head_dim * sizeof(float));
    }
}

/* QUEST: every page's key bounds from its rows (what the cache holds had
 * the rows come through KV_STORE and attention). */
static void quest_bounds_all(lethe_kv_cache *kv) {
    const int D = kv->head_dim;
    for (int sq = 0; sq < kv->n_seq; sq++)
        for (int l = 0; l < kv->n_layer; l++)
            for (int h = 0; h < kv->n_head_kv; h++) {
                const lethe_kv_stream *s = lethe_kv_stream_at(kv, sq, l, h);
                for (int32_t p = 0; p < s->n_pages; p++) {
                    float *mn = kv->kmin + (size_t)s->pages[p] * D, *mx = kv->kmax + (size_t)s->pages[p] * D;
                    for (int d = 0; d < D; d++) {
                        mn[d] = INFINITY;
                        mx[d] = -INFINITY;
                    }
                    for (int32_t j = p * LETHE_KV_PAGE; j < LETHE_MIN(s->len, (p + 1) * LETHE_KV_PAGE); j++)
                        for (int d = 0; d < D; d++) {
                            const void *k = lethe_kv_k(kv, s, j);
                            const float x = kv->type == LETHE_F16 ? lethe_f16_to_f32(((const lethe_f16 *)k)[d])
                                                                  : ((const float *)k)[d];
                            mn[d] = x < mn[d] ? x : mn[d];
                            mx[d] = x > mx[d] ? x : mx[d];
                        }
                }
            }
}

static void kv_build(const kv_case *c, kv_built *b, uint64_t seed) {
    memset(b, 0, sizeof *b);
    lethe_kv_policy pol = {.rule = c->rule ? (lethe_kv_rule)c->rule : LETHE_KV_RULE_DMS, .window = KV_W,
                           .budget = c->budget, .recent = 4};
    const lethe_dtype type = c->f16 ? LETHE_F16 : LETHE_F32;
    const size_t page = 2 * (size_t)LETHE_KV_PAGE * lethe_row_size(type, c->D);
    const size_t pages = (size_t)4 * c->Hkv * ((size_t)(c->hist + c->T) / LETHE_KV_PAGE + 4) + 16;
    assert_int_equal(lethe_kv_init(&b->kv, 2, 2, c->Hkv, c->D, type, page * pages, 64, &pol, NULL), LETHE_OK);
    lethe_kv_cache *kv = &b->kv;
    const int hist[2] = {c->hist, 9};
    for (int sq = 0; sq < 2; sq++) {
        int32_t *ids = malloc((size_t)hist[sq] * sizeof(int32_t)), *ps = malloc((size_t)hist[sq] * sizeof(int32_t));
        for (int i = 0; i < hist[sq]; i++) {
            ids[i] = sq;
            ps[i] = i;
        }
        for (int i0 = 0; i0 < hist[sq]; i0 += 64) {   /* micro-batches of at most max_batch */
            const int nt = LETHE_MIN(64, hist[sq] - i0);
            lethe_kv_begin(kv);
            assert_int_equal(lethe_kv_reserve(kv, nt, ids + i0, ps + i0), LETHE_OK);
            lethe_kv_commit(kv);
        }
        free(ids);
        free(ps);
    }
    uint64_t r = seed;
    for (int sq = 0; sq < 2; sq++)
        for (int l = 0; l < 2; l++)
            for (int h = 0; h < c->Hkv; h++) {
                lethe_kv_stream *s = lethe_kv_stream_at(kv, sq, l, h);
                for (int32_t j = 0; j < s->len; j++) {
                    kv_fill(kv, lethe_kv_k(kv, s, j), ++r * 31);
                    kv_fill(kv, lethe_kv_v(kv, s, j), ++r * 31);
                    if ((j + h) % 5 == 2) *lethe_kv_expire(kv, s, j) = *lethe_kv_pos(kv, s, j) + KV_W + 1;
                }
                if (l == KV_LAYER && sq == 0) {
                    int32_t drop[16];
                    const int nd = LETHE_MIN(2 * h + 1, 16);
                    for (int i = 0; i < nd; i++) drop[i] = 3 + 2 * i;
                    lethe_kv_stream_drop(kv, s, drop, nd);
                }
            }
    if (c->tie)   /* pages 1 and 3 of sequence 0: the same keys, large (the top bound), other values */
        for (int l = 0; l < 2; l++)
            for (int h = 0; h < c->Hkv; h++) {
                lethe_kv_stream *s = lethe_kv_stream_at(kv, 0, l, h);
                assert_true(s->len >= 4 * LETHE_KV_PAGE);
                for (int32_t j = LETHE_KV_PAGE; j < 2 * LETHE_KV_PAGE; j++) {
                    for (int d = 0; d < c->D; d++) {
                        if (type == LETHE_F16) {
                            lethe_f16 *x = lethe_kv_k(kv, s, j);
                            x[d] = lethe_f32_to_f16(4.0f * lethe_f16_to_f32(x[d]));
                        } else {
                            ((float *)lethe_kv_k(kv, s, j))[d] *= 4.0f;
                        }
                    }
                    memcpy(lethe_kv_k(kv, s, j + 2 * LETHE_KV_PAGE), lethe_kv_k(kv, s, j), kv->slot_bytes);
                }
            }
    if (kv->kmin) quest_bounds_all(kv);
    int32_t next[2] = {hist[0], hist[1]};
    for (int t = 0; t < c->T; t++) {
        b->seq[t] = c->runs ? (t < c->T * 3 / 5 ? 0 : 1) : t % 2;
        b->pos[t] = next[b->seq[t]]++;
    }
    b->ub = (lethe_ubatch){c->T, b->seq, b->pos};
    lethe_kv_begin(kv);
    assert_int_equal(lethe_kv_reserve(kv, c->T, b->seq, b->pos), LETHE_OK);
    const int64_t T = c->T, Hkv = c->Hkv, D = c->D, Hq = Hkv * c->G;
    b->k = malloc((size_t)(T * Hkv * D) * sizeof(float));
    b->v = malloc((size_t)(T * Hkv * D) * sizeof(float));
    b->q = malloc((size_t)(T * Hq * D) * sizeof(float));
    b->dec = malloc((size_t)(T * Hkv) * sizeof(float));
    tu_rand_fill(b->k, (size_t)(T * Hkv * D), seed + 1);
    tu_rand_fill(b->v, (size_t)(T * Hkv * D), seed + 2);
    tu_rand_fill(b->q, (size_t)(T * Hq * D), seed + 3);
    tu_rand_fill(b->dec, (size_t)(T * Hkv), seed + 4);   /* both sides of 0 */
    b->g = lethe_graph_new(16);
    int64_t nk[3] = {D, Hkv, T}, nq[3] = {D, Hq, T}, nd[2] = {Hkv, T};
    lethe_node *kn = lethe_input(b->g, LETHE_F32, 3, nk, b->k, "k");
    lethe_node *vn = lethe_input(b->g, LETHE_F32, 3, nk, b->v, "v");
    lethe_node *dn = NULL;
    if (c->dms)   /* adapter-style logits 1 * x - 0 = x: the decisions are b->dec exactly */
        dn = lethe_dms_decision(b->g, lethe_input(b->g, LETHE_F32, 2, nd, b->dec, "alpha"), LETHE_DMS_FROM_ADAPTER,
                                c->Hkv, c->G, false, 1.0f, 0.0f, 0.0f, KV_LAYER, &b->ub);
    b->store = lethe_kv_store(b->g, kv, KV_LAYER, kn, vn, dn, &b->ub);
    lethe_node *qn = lethe_input(b->g, LETHE_F32, 3, nq, b->q, "q");
    b->attn = lethe_attention(b->g, kv, KV_LAYER, qn, b->store, 1.0f / sqrtf((float)D), &b->ub);
    lethe_set_output(b->attn);
    assert_int_equal(b->g->status, LETHE_OK);
}

static void kv_built_free(kv_built *b) {
    lethe_graph_free(b->g);
    lethe_kv_free(&b->kv);
    free(b->k);
    free(b->v);
    free(b->q);
    free(b->dec);
}

static const kv_case k_kv_cases[] = {
    {"decode f16 G=4 D=128 long", 2, 2, 128, 4, 1500, true, false, true, 0, 0, false},
    {"decode f32 G=8 D=64", 3, 2, 64, 8, 700, false, false, true, 0, 0, false},
    {"decode f16 G=1 D=256", 2, 3, 256, 1, 300, true, false, false, 0, 0, false},
    {"decode f32 G=2 D=32", 4, 2, 32, 2, 130, false, false, true, 0, 0, false},
    {"prefill f16 G=3 D=64 runs", 40, 3, 64, 3, 300, true, true, true, 0, 0, false},
    {"prefill f32 G=1 D=256 runs", 20, 2, 256, 1, 100, false, true, false, 0, 0, false},
    {"prefill f16 G=2 D=32 runs", 33, 2, 32, 2, 37, true, true, true, 0, 0, false},
    {"prefill f16 G=8 D=128 runs", 12, 1, 128, 8, 64, true, true, true, 0, 0, false},
    {"short f32 G=4 D=64", 5, 3, 64, 4, 37, false, false, true, 0, 0, false},
    {"decode f16 G=5 D=128", 4, 2, 128, 5, 600, true, false, true, 0, 0, false},
    {"prefill f32 G=6 D=64 runs", 20, 2, 64, 6, 90, false, true, true, 0, 0, false},
    {"prefill f16 G=4 D=128 long", 24, 2, 128, 4, 1100, true, true, true, 0, 0, false},
};

/* KV_STORE through the module's tables and the kernel's steps: the cache
 * equals the CPU's bit for bit (rows and every expire). */
static void test_kv_store_tables(void **state) {
    (void)state;
    lethe_backend *cpu = lethe_backend_cpu_new(1);
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_kv_cases); i++) {
        const kv_case *c = &k_kv_cases[i];
        kv_built ref, emu;
        kv_build(c, &ref, 500 + i);
        kv_build(c, &emu, 500 + i);
        int before = 0;   /* finite expires before the store */
        for (int sq = 0; sq < 2; sq++)
            for (int h = 0; h < c->Hkv; h++) {
                const lethe_kv_stream *s = lethe_kv_stream_at(&ref.kv, sq, KV_LAYER, h);
                for (int32_t j = 0; j < s->len; j++) before += *lethe_kv_expire(&ref.kv, s, j) != LETHE_KV_NEVER;
            }
        lethe_executor *ex = lethe_executor_new(&cpu, 1);
        assert_int_equal(lethe_executor_run(ex, ref.g, NULL, NULL), LETHE_OK);
        lethe_executor_free(ex);
        const size_t n_rows = (size_t)c->T * c->Hkv;
        lethe_cu_kv_row *rows = malloc(n_rows * sizeof *rows);
        char err[160];
        assert_int_equal(cu_kv_store_rows(emu.store, rows, err, sizeof err), LETHE_OK);
        const lethe_cu_kv_view view = {emu.kv.pool, emu.kv.pos, emu.kv.expire, emu.kv.page_bytes, emu.kv.slot_bytes,
                                       c->f16, c->D, NULL, NULL};
        assert_int_equal(lethe_cu_host_kv_store(&view, emu.k, emu.v, c->dms ? emu.dec : NULL, rows, (int64_t)n_rows), 0);
        free(rows);
        int flagged = 0;
        for (int sq = 0; sq < 2; sq++)
            for (int h = 0; h < c->Hkv; h++) {
                const lethe_kv_stream *sr = lethe_kv_stream_at(&ref.kv, sq, KV_LAYER, h);
                const lethe_kv_stream *se = lethe_kv_stream_at(&emu.kv, sq, KV_LAYER, h);
                assert_int_equal(sr->len, se->len);
                for (int32_t j = 0; j < sr->len; j++) {
                    if (memcmp(lethe_kv_k(&ref.kv, sr, j), lethe_kv_k(&emu.kv, se, j), ref.kv.slot_bytes) ||
                        memcmp(lethe_kv_v(&ref.kv, sr, j), lethe_kv_v(&emu.kv, se, j), ref.kv.slot_bytes))
                        fail_msg("%s: row of (seq %d, head %d) slot %d differs from the CPU's", c->name, sq, h, j);
                    const int32_t er = *lethe_kv_expire(&ref.kv, sr, j), ee = *lethe_kv_expire(&emu.kv, se, j);
                    if (er != ee) fail_msg("%s: expire of (seq %d, head %d) slot %d: CPU %d, tables %d", c->name, sq, h, j, er, ee);
                    flagged += er != LETHE_KV_NEVER;
                }
            }
        if (c->dms) assert_true(flagged > before);   /* the decisions set flags */
        else assert_int_equal(flagged, before);
        kv_built_free(&ref);
        kv_built_free(&emu);
    }
    cpu->iface->free(cpu);
}

static double nmse(const float *ref, const float *got, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i])) return INFINITY;
        num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

/* Every slot of stream (seq 1, KV_LAYER, KV head 0) invisible to every
 * query (expire 0), the token's own new slot included: its queries see
 * nothing, the softmax denominator is 0 on every path. */
static void kv_blind(kv_built *b) {
    const lethe_kv_stream *s = lethe_kv_stream_at(&b->kv, 1, KV_LAYER, 0);
    for (int32_t j = 0; j < s->len; j++) *lethe_kv_expire(&b->kv, s, j) = 0;
}

/* ------------------------------------------------------------------------
 * The launch plan (cuda_plan.h) with a fake device: every node's "device
 * address" is derived from its index in the graph, scratch and the error
 * flag are fixed addresses, so two plans of the same graph shape compare
 * byte for byte exactly as the module's would. */
typedef struct fake_dev {
    const lethe_graph *g;
    size_t scratch_bytes;
    int prepared;
} fake_dev;

static int fake_resolve(void *user, const lethe_node *n, uint64_t *dev) {
    const fake_dev *f = user;
    *dev = 0x100000000000ull + (uint64_t)(n - f->g->nodes) * 0x100000ull;
    return LETHE_OK;
}
static int fake_scratch(void *user, size_t bytes, uint64_t *dev) {
    ((fake_dev *)user)->scratch_bytes = bytes;
    *dev = 0x200000000000ull;
    return LETHE_OK;
}
static int fake_kv_prepare(void *user, const lethe_kv_cache *kv) {
    (void)kv;
    ((fake_dev *)user)->prepared++;
    return LETHE_OK;
}
static const int k_fake_backend = 0;   /* no node's buffer belongs to it: inputs are staged */

static void plan_of_gemv(lethe_graph *g, bool bucketed, cu_plan *p, fake_dev *f, int variant,
                         size_t (*act)(int, int64_t, int64_t, int)) {
    memset(f, 0, sizeof *f);
    f->g = g;
    const cu_plan_env env = {f, &k_fake_backend, 132, 0x300000000000ull, fake_resolve, fake_scratch, fake_kv_prepare,
                             variant, act};
    char err[200];
    const int rc = cu_plan_build(p, &env, g, 0, g->n_nodes, bucketed, err, sizeof err);
    if (rc != LETHE_OK) fail_msg("cu_plan_build: %d %s", rc, err);
}

static void plan_of(lethe_graph *g, bool bucketed, cu_plan *p, fake_dev *f) {
    memset(f, 0, sizeof *f);
    f->g = g;
    /* the step graphs' weights are f32: no GEMV activation scratch (gemv_act_bytes NULL) */
    const cu_plan_env env = {f, &k_fake_backend, 132, 0x300000000000ull, fake_resolve, fake_scratch, fake_kv_prepare,
                             LETHE_CU_GEMV_NEW, NULL};
    char err[200];
    const int rc = cu_plan_build(p, &env, g, 0, g->n_nodes, bucketed, err, sizeof err);
    if (rc != LETHE_OK) fail_msg("cu_plan_build: %d %s", rc, err);
}

/* The staging region at offset `off` of a launch argument. */
static const cu_region *region_at(const cu_plan *p, uint64_t off) {
    for (int r = 0; r < p->n_regions; r++)
        if (p->regions[r].off == off) return &p->regions[r];
    fail_msg("no staging region at offset %llu", (unsigned long long)off);
    return NULL;
}

static const cu_launch *launch_of(const cu_plan *p, int kind, int nth) {
    for (int k = 0; k < p->n_launches; k++)
        if (p->launches[k].kind == kind && nth-- == 0) return &p->launches[k];
    return NULL;
}

/* Staged argument s of launch l: its bytes in the plan's staging buffer. */
static const void *staged(const cu_plan *p, const cu_launch *l, int s, int kind) {
    if (!((l->staged >> s) & 1u)) fail_msg("launch %d argument %d is not staged", l->kind, s);
    const cu_region *r = region_at(p, l->p[s]);
    assert_int_equal(r->kind, kind);
    return p->stage + r->off;
}

/* ATTENTION from a plan's own staging bytes (work, page lists, positions,
 * split) with the grid's span count from its launch: the host steps of the
 * kernels must give the CPU's answer. */
static void attention_from_plan(const cu_plan *p, const lethe_cu_kv_view *view, const float *q, const float *yr,
                                size_t n_out, const char *name) {
    const cu_launch *l = launch_of(p, CU_K_ATTENTION, 0);
    assert_non_null(l);
    const lethe_cu_attn_work *work = staged(p, l, 2, CU_R_WORK);
    const int32_t *pl = staged(p, l, 3, CU_R_PLISTS);
    const int32_t *qpos = staged(p, l, 4, CU_R_POS);
    const int32_t *split = staged(p, l, 5, CU_R_SPLIT);
    assert_true(split[1] >= 1 && split[1] <= l->i[4]);
    if (l->i[1]) assert_int_equal(l->grid[1], l->i[4]);
    float *y = malloc(n_out * sizeof(float));
    for (size_t j = 0; j < n_out; j++) y[j] = NAN;
    assert_int_equal(lethe_cu_host_attention(view, q, y, work, (int)l->i[0], (int)l->i[1], pl, qpos, (int)l->i[2],
                                             (int)l->i[3], l->f[0], split[0], split[1], (int)l->i[4], NULL, 0), 0);
    const double e = nmse(yr, y, n_out);
    print_message("  %-28s from the %s plan's staging, grid %d spans (%d used): NMSE %.3g\n", name,
                  p->bucketed ? "bucketed" : "plain", (int)l->i[4], split[1], e);
    if (!(e < 1e-10)) fail_msg("%s: attention from the plan's staging: NMSE %.3g", name, e);
    free(y);
}

/* One case of ATTENTION on both kernel paths and several split plans
 * against the CPU backend, after the same KV_STORE. blind: kv_blind first,
 * and the outputs of that stream's queries must be exactly 0 (the CPU's
 * answer), never NaN. */
static void attention_case(lethe_backend *cpu, const kv_case *c, uint64_t seed, bool blind) {
        kv_built ref, emu;
        kv_build(c, &ref, seed);
        kv_build(c, &emu, seed);
        if (blind) {
            kv_blind(&ref);
            kv_blind(&emu);
        }
        const size_t n_out = (size_t)c->T * c->Hkv * c->G * c->D;
        lethe_executor *ex = lethe_executor_new(&cpu, 1);
        assert_int_equal(lethe_executor_run(ex, ref.g, NULL, NULL), LETHE_OK);
        float *yr = malloc(n_out * sizeof(float));   /* the output lives in the executor's memory */
        memcpy(yr, ref.attn->t.data, n_out * sizeof(float));
        lethe_executor_free(ex);
        /* the store first (checked above), then attention from the tables */
        const size_t n_rows = (size_t)c->T * c->Hkv;
        lethe_cu_kv_row *rows = malloc(n_rows * sizeof *rows);
        char err[160];
        assert_int_equal(cu_kv_store_rows(emu.store, rows, err, sizeof err), LETHE_OK);
        const lethe_cu_kv_view view = {emu.kv.pool, emu.kv.pos, emu.kv.expire, emu.kv.page_bytes, emu.kv.slot_bytes,
                                       c->f16, c->D, NULL, NULL};
        lethe_cu_host_kv_store(&view, emu.k, emu.v, c->dms ? emu.dec : NULL, rows, (int64_t)n_rows);
        free(rows);
        float *y = malloc(n_out * sizeof(float));
        for (int path = 0; path < 2; path++) {   /* 0: the module's choice, 1: decode forced */
            cu_attn_plan plan;
            assert_int_equal(cu_attn_plan_build(emu.attn, c->G, path == 1, &plan, err, sizeof err), LETHE_OK);
            if (path == 0) assert_int_equal(plan.decode, !c->runs);
            if (path == 1 && !plan.decode) fail_msg("%s: decode not forced", c->name);
            uint64_t reads_cpu = ref.kv.reads;
            assert_true(plan.reads == reads_cpu);   /* KV reads counted as the CPU counts them */
            const int64_t targets[] = {1, 64, 100000};   /* one span, some, the most */
            for (size_t ti = 0; ti < (plan.decode ? LETHE_ARRAY_SIZE(targets) : 1); ti++) {
                int32_t chunk = 32, n_split = 1;
                if (plan.decode) cu_attn_split_plan((int64_t)plan.n_blocks * c->Hkv, plan.Lmax, targets[ti], &chunk, &n_split);
                /* the grid's span count: exact, the graph path's bucket, the largest */
                const int caps[3] = {n_split, cu_pow2_ceil(n_split + 1), LETHE_CU_ATTN_MAX_SPLIT};
                for (int ci = 0; ci < (plan.decode ? 3 : 1); ci++) {
                const int cap = caps[ci] > LETHE_CU_ATTN_MAX_SPLIT ? LETHE_CU_ATTN_MAX_SPLIT : caps[ci];
                for (size_t j = 0; j < n_out; j++) y[j] = NAN;   /* poison: every output written */
                assert_int_equal(lethe_cu_host_attention(&view, emu.q, y, plan.work, plan.n_blocks, plan.decode,
                                                         plan.plists, emu.pos, c->Hkv, c->G,
                                                         1.0f / sqrtf((float)c->D), chunk, n_split, cap, NULL, 0), 0);
                const double e = nmse(yr, y, n_out);
                print_message("  %-28s %s, %3d span(s) of %4d, grid %3d: NMSE %.3g\n", c->name,
                              plan.decode ? "decode" : "tiled ", n_split, chunk, cap, e);
                if (!(e < 1e-10)) {
                    for (size_t r = 0; r < n_out / (size_t)c->D; r++) {
                        const double er = nmse(yr + r * (size_t)c->D, y + r * (size_t)c->D, (size_t)c->D);
                        if (er > 1e-10) print_message("    row %zu (t %zu, q head %zu): NMSE %.3g, cpu %g got %g\n", r,
                                                      r / ((size_t)c->Hkv * c->G), r % ((size_t)c->Hkv * c->G), er,
                                                      yr[r * c->D], y[r * c->D]);
                    }
                    fail_msg("%s: NMSE %.3g against the CPU", c->name, e);
                }
                int blind_rows = 0;
                for (int t = 0; blind && t < c->T; t++) {
                    if (emu.seq[t] != 1) continue;
                    for (int g = 0; g < c->G; g++) {   /* KV head 0: query heads 0 .. G-1 */
                        const size_t o = ((size_t)t * c->Hkv * c->G + (size_t)g) * c->D;
                        for (int d = 0; d < c->D; d++)
                            if (yr[o + d] != 0.0f || y[o + d] != 0.0f)
                                fail_msg("%s: a query that sees nothing (t %d, head %d): CPU %g, kernel steps %g", c->name,
                                         t, g, yr[o + d], y[o + d]);
                        blind_rows++;
                    }
                }
                if (blind) assert_true(blind_rows > 0);
                }
            }
            cu_attn_plan_free(&plan);
        }
        for (int bucketed = 0; bucketed < 2; bucketed++) {   /* the plain and the graph path's plans */
            cu_plan p;
            fake_dev f;
            plan_of(emu.g, bucketed, &p, &f);
            attention_from_plan(&p, &view, emu.q, yr, n_out, c->name);
            cu_plan_free(&p);
        }
        free(y);
        free(yr);
        kv_built_free(&ref);
        kv_built_free(&emu);
}

static void test_attention_paths(void **state) {
    (void)state;
    lethe_backend *cpu = lethe_backend_cpu_new(1);
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_kv_cases); i++) attention_case(cpu, &k_kv_cases[i], 900 + i, false);
    cpu->iface->free(cpu);
}

/* A stream none of whose slots a query may see (all expired): zeros on the
 * CPU, and the kernels' steps must give the same zeros (den = 0: no NaN
 * from 0 / 0 or from (-inf) - (-inf)), with one span, several, and tiled. */
static void test_attention_blind(void **state) {
    (void)state;
    lethe_backend *cpu = lethe_backend_cpu_new(1);
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_kv_cases); i++) {
        kv_case c = k_kv_cases[i];
        c.dms = false;   /* a DMS flag from the store would give the stream a visible slot again */
        attention_case(cpu, &c, 1300 + i, true);
    }
    cpu->iface->free(cpu);
}

/* The split plan: spans of whole pages, at least 4, at most 128 of them, covering the longest stream. */
static void test_split_plan(void **state) {
    (void)state;
    const int32_t Ls[] = {0, 1, 31, 32, 127, 128, 129, 4096, 32768, 100000, 1 << 20};
    const int64_t items[] = {1, 8, 64, 1024};
    for (size_t a = 0; a < LETHE_ARRAY_SIZE(Ls); a++)
        for (size_t b = 0; b < LETHE_ARRAY_SIZE(items); b++) {
            int32_t chunk, n;
            cu_attn_split_plan(items[b], Ls[a], 528, &chunk, &n);
            assert_true(chunk % 32 == 0 && chunk >= 128);
            assert_true(n >= 1 && n <= LETHE_CU_ATTN_MAX_SPLIT);
            assert_true((int64_t)chunk * n >= Ls[a]);
            assert_true(Ls[a] == 0 || (int64_t)chunk * (n - 1) < Ls[a]);   /* no empty span for the longest */
        }
}

/* Store through the module's tables, as the device does before attention. */
static void emu_store(kv_built *emu, const kv_case *c, lethe_cu_kv_view *view) {
    const size_t n_rows = (size_t)c->T * c->Hkv;
    lethe_cu_kv_row *rows = malloc(n_rows * sizeof *rows);
    char err[160];
    assert_int_equal(cu_kv_store_rows(emu->store, rows, err, sizeof err), LETHE_OK);
    *view = (lethe_cu_kv_view){emu->kv.pool, emu->kv.pos, emu->kv.expire, emu->kv.page_bytes, emu->kv.slot_bytes,
                               c->f16, c->D, emu->kv.kmin, emu->kv.kmax};
    assert_int_equal(lethe_cu_host_kv_store(view, emu->k, emu->v, c->dms ? emu->dec : NULL, rows, (int64_t)n_rows), 0);
    free(rows);
}

/* TOVA / H2O: the kernels' softmax weights (raw scores as computed, then
 * normalized after the split-K combine or at the end of a tiled row) folded
 * by the module's cu_score_fold must give the CPU kernel's kv->score within
 * f32 rounding, on every path and split plan; each query's weights sum to 1;
 * and the commit after it must evict exactly the CPU's tokens. */
static const kv_case k_score_cases[] = {
    {"tova decode f16 G=4 D=128 long", 2, 2, 128, 4, 700, true, false, true, LETHE_KV_RULE_TOVA, 200, false},
    {"h2o decode f32 G=2 D=64", 4, 2, 64, 2, 300, false, false, false, LETHE_KV_RULE_H2O, 100, false},
    {"tova prefill f16 G=3 D=64 runs", 20, 3, 64, 3, 150, true, true, true, LETHE_KV_RULE_TOVA, 60, false},
    {"h2o prefill f32 G=1 D=32 runs", 12, 2, 32, 1, 90, false, true, false, LETHE_KV_RULE_H2O, 40, false},
};

static void test_score_weights(void **state) {
    (void)state;
    lethe_backend *cpu = lethe_backend_cpu_new(1);
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_score_cases); i++) {
        const kv_case *c = &k_score_cases[i];
        for (int path = 0; path < 2; path++) {   /* 0: the module's choice, 1: decode forced */
            const int64_t targets[] = {1, 100000};   /* one span (normalized in the CTA), many (in the combine) */
            for (size_t ti = 0; ti < LETHE_ARRAY_SIZE(targets); ti++) {
                kv_built ref, emu;
                kv_build(c, &ref, 2100 + i);
                kv_build(c, &emu, 2100 + i);
                lethe_executor *ex = lethe_executor_new(&cpu, 1);
                assert_int_equal(lethe_executor_run(ex, ref.g, NULL, NULL), LETHE_OK);
                lethe_executor_free(ex);
                lethe_cu_kv_view view;
                emu_store(&emu, c, &view);
                cu_attn_plan plan;
                char err[160];
                assert_int_equal(cu_attn_plan_build(emu.attn, c->G, path == 1, &plan, err, sizeof err), LETHE_OK);
                if (!plan.decode && ti > 0) {
                    cu_attn_plan_free(&plan);
                    kv_built_free(&ref);
                    kv_built_free(&emu);
                    continue;
                }
                int32_t chunk = 32, n_split = 1;
                if (plan.decode) cu_attn_split_plan((int64_t)plan.n_blocks * c->Hkv, plan.Lmax, targets[ti], &chunk, &n_split);
                /* decode: the graph path's bucketed grid, surplus spans included (they must write no weight) */
                const int cap = plan.decode ? LETHE_MIN(cu_pow2_ceil(n_split + 1), LETHE_CU_ATTN_MAX_SPLIT) : n_split;
                const int32_t stride = cu_score_stride(emu.attn);
                const size_t Hq = (size_t)c->Hkv * c->G, n_out = (size_t)c->T * Hq * c->D;
                float *y = malloc(n_out * sizeof(float));
                float *w = malloc((size_t)c->T * Hq * (size_t)stride * sizeof(float));
                assert_int_equal(lethe_cu_host_attention(&view, emu.q, y, plan.work, plan.n_blocks, plan.decode,
                                                         plan.plists, emu.pos, c->Hkv, c->G, 1.0f / sqrtf((float)c->D),
                                                         chunk, n_split, cap, w, stride), 0);
                /* every query that sees a key: weights in [0, 1] summing to 1 */
                for (int t = 0; t < c->T; t++)
                    for (size_t h = 0; h < Hq; h++) {
                        const lethe_kv_stream *s = lethe_kv_stream_at(&emu.kv, emu.seq[t], KV_LAYER, (int)(h / c->G));
                        double sum = 0;
                        int n_vis = 0;
                        for (int32_t j = 0; j < s->len; j++) {
                            const float p = w[((size_t)t * Hq + h) * stride + j];
                            if (!(p == -1.0f || (p >= 0.0f && p <= 1.0f)))
                                fail_msg("%s: weight of (t %d, head %zu) slot %d is %g", c->name, t, h, j, p);
                            if (p >= 0.0f) {
                                sum += p;
                                n_vis++;
                            }
                        }
                        if (n_vis && fabs(sum - 1.0) > 1e-5)
                            fail_msg("%s: weights of (t %d, head %zu) sum to %.9g", c->name, t, h, sum);
                    }
                cu_score_fold(emu.attn, w, stride);
                double worst = 0;
                int n_set = 0;
                for (int sq = 0; sq < 2; sq++)
                    for (int h = 0; h < c->Hkv; h++) {
                        const lethe_kv_stream *sr = lethe_kv_stream_at(&ref.kv, sq, KV_LAYER, h);
                        const lethe_kv_stream *se = lethe_kv_stream_at(&emu.kv, sq, KV_LAYER, h);
                        for (int32_t j = 0; j < sr->len; j++) {
                            const float a = ref.kv.score[lethe_kv_meta(sr, j)], b = emu.kv.score[lethe_kv_meta(se, j)];
                            const double e = fabs((double)a - b) / (fabs((double)a) + 1e-30);
                            if (a == 0.0f ? b != 0.0f : e > 1e-5)
                                fail_msg("%s: score of (seq %d, head %d) slot %d: CPU %.9g, kernels %.9g", c->name, sq, h,
                                         j, a, b);
                            if (a != 0.0f && e > worst) worst = e;
                            n_set += a != 0.0f;
                        }
                    }
                assert_true(n_set > 0);
                /* the commit evicts over budget by these scores: the same tokens */
                lethe_kv_commit(&ref.kv);
                lethe_kv_commit(&emu.kv);
                assert_true(ref.kv.evicted > 0);
                assert_int_equal(ref.kv.evicted, emu.kv.evicted);
                for (int sq = 0; sq < 2; sq++)
                    for (int l = 0; l < 2; l++)
                        for (int h = 0; h < c->Hkv; h++) {
                            const lethe_kv_stream *sr = lethe_kv_stream_at(&ref.kv, sq, l, h);
                            const lethe_kv_stream *se = lethe_kv_stream_at(&emu.kv, sq, l, h);
                            assert_int_equal(sr->len, se->len);
                            for (int32_t j = 0; j < sr->len; j++)
                                if (*lethe_kv_pos(&ref.kv, sr, j) != *lethe_kv_pos(&emu.kv, se, j))
                                    fail_msg("%s: after the commit, (seq %d, layer %d, head %d) slot %d holds position "
                                             "%d on the CPU, %d", c->name, sq, l, h, j, *lethe_kv_pos(&ref.kv, sr, j),
                                             *lethe_kv_pos(&emu.kv, se, j));
                        }
                print_message("  %-32s %s, %3d span(s): %d scores, worst rel. error %.3g, %llu evicted on both\n",
                              c->name, plan.decode ? "decode" : "tiled ", n_split, n_set, worst,
                              (unsigned long long)ref.kv.evicted);
                free(y);
                free(w);
                cu_attn_plan_free(&plan);
                kv_built_free(&ref);
                kv_built_free(&emu);
            }
        }
    }
    cpu->iface->free(cpu);
}

/* The CPU's QUEST selection written out plainly (cpu_attention.c
 * quest_select), the oracle for the pages: own page first, then the
 * highest bound by an ascending scan with a strict >, then ascending. */
static int oracle_pages(const lethe_kv_cache *kv, const lethe_kv_stream *s, int32_t pq, const float *q, int G,
                        int32_t *sel) {
    const int D = kv->head_dim, n_pages = (s->len + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE;
    int k = LETHE_MAX(kv->policy.budget / LETHE_KV_PAGE, 1);
    if (n_pages <= k) {
        for (int p = 0; p < n_pages; p++) sel[p] = p;
        return n_pages;
    }
    float *b = malloc((size_t)n_pages * sizeof(float));
    int own = -1, n = 0;
    for (int p = 0; p < n_pages; p++) {
        const float *mn = kv->kmin + (size_t)s->pages[p] * D, *mx = kv->kmax + (size_t)s->pages[p] * D;
        b[p] = -INFINITY;
        for (int g = 0; g < G; g++) {
            float x = 0.0f;
            for (int d = 0; d < D; d++) {
                const float a = q[g * D + d] * mn[d], cc = q[g * D + d] * mx[d];
                x += a > cc ? a : cc;
            }
            b[p] = x > b[p] ? x : b[p];
        }
        for (int32_t j = p * LETHE_KV_PAGE; j < LETHE_MIN(s->len, (p + 1) * LETHE_KV_PAGE); j++)
            if (*lethe_kv_pos(kv, s, j) == pq) own = p;
    }
    if (own >= 0) {
        sel[n++] = own;
        b[own] = -INFINITY;
        k--;
    }
    for (; k > 0; k--) {
        int best = -1;
        for (int p = 0; p < n_pages; p++)
            if (b[p] != -INFINITY && (best < 0 || b[p] > b[best])) best = p;
        if (best < 0) break;
        sel[n++] = best;
        b[best] = -INFINITY;
    }
    free(b);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && sel[j - 1] > sel[j]; j--) {
            const int32_t x = sel[j];
            sel[j] = sel[j - 1];
            sel[j - 1] = x;
        }
    return n;
}

/* QUEST through the module's tables and the kernels' steps: the bounds of
 * the pages KV_STORE wrote (cu_quest_refresh_entries + k_quest_bounds), the
 * pages each (token, KV head) reads (k_quest_select: cu_quest_bound,
 * cu_quest_pick) equal to the oracle's, the KV reads equal to the CPU
 * kernel's, the bounds bit for bit, and the decode kernel over the chosen
 * pages within f32 rounding of the CPU backend (a wrong page changes the
 * output: the tie pages have the same keys and other values). */
static const kv_case k_quest_cases[] = {
    {"quest decode f16 G=3 tie", 5, 3, 64, 3, 200, true, false, false, LETHE_KV_RULE_QUEST, 64, true},
    {"quest decode f32 G=2 D=32", 4, 2, 32, 2, 200, false, false, false, LETHE_KV_RULE_QUEST, 96, false},
    {"quest runs f16 G=2 tie", 12, 2, 64, 2, 150, true, true, false, LETHE_KV_RULE_QUEST, 64, true},
    {"quest decode f32 G=8 D=128", 3, 1, 128, 8, 300, false, false, false, LETHE_KV_RULE_QUEST, 128, false},
    {"quest decode f16 G=4 long", 2, 2, 128, 4, 600, true, false, false, LETHE_KV_RULE_QUEST, 256, true},
};

static void test_quest_pages(void **state) {
    (void)state;
    lethe_backend *cpu = lethe_backend_cpu_new(1);
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_quest_cases); i++) {
        const kv_case *c = &k_quest_cases[i];
        kv_built ref, emu;
        kv_build(c, &ref, 3100 + i);
        kv_build(c, &emu, 3100 + i);
        lethe_executor *ex = lethe_executor_new(&cpu, 1);
        assert_int_equal(lethe_executor_run(ex, ref.g, NULL, NULL), LETHE_OK);
        const size_t Hq = (size_t)c->Hkv * c->G, n_out = (size_t)c->T * Hq * c->D;
        float *yr = malloc(n_out * sizeof(float)), *y = malloc(n_out * sizeof(float));
        memcpy(yr, ref.attn->t.data, n_out * sizeof(float));
        lethe_executor_free(ex);
        lethe_cu_kv_view view;
        emu_store(&emu, c, &view);
        cu_attn_plan plan;
        char err[160];
        assert_int_equal(cu_attn_plan_build(emu.attn, c->G, true, &plan, err, sizeof err), LETHE_OK);
        const int32_t k = cu_quest_k(&emu.kv), n_items = plan.n_blocks * c->Hkv;
        const int32_t n_ent = cu_quest_refresh_entries(emu.attn, NULL);
        int32_t *ent = malloc(((size_t)n_ent * 2 + 1) * sizeof(int32_t));
        assert_int_equal(cu_quest_refresh_entries(emu.attn, ent), n_ent);
        {   /* the per-item table the plan stages (cu_quest_refresh_items) lists the same pages, in order */
            int32_t *items = malloc((size_t)n_items * 2 * sizeof(int32_t)), m = 0;
            cu_quest_refresh_items(emu.attn, items);
            for (int32_t it = 0; it < n_items; it++)
                for (int32_t pg = items[2 * it]; items[2 * it] >= 0 && pg < items[2 * it + 1]; pg++, m++) {
                    assert_true(m < n_ent);
                    const lethe_cu_attn_work *w = &plan.work[it];
                    assert_int_equal(plan.plists[w->plist + pg], ent[2 * m]);
                    assert_int_equal(LETHE_MAX(0, LETHE_MIN(LETHE_KV_PAGE, w->L - pg * LETHE_KV_PAGE)), ent[2 * m + 1]);
                }
            assert_int_equal(m, n_ent);
            free(items);
        }
        int32_t *pl = malloc((plan.n_plist + (size_t)n_items * k) * sizeof(int32_t));
        memcpy(pl, plan.plists, plan.n_plist * sizeof(int32_t));
        assert_int_equal(lethe_cu_host_quest(&view, emu.q, plan.work, n_items, pl, (int)plan.n_plist, k, emu.pos,
                                             c->Hkv, c->G, ent, n_ent), 0);
        /* the bounds */
        for (int sq = 0; sq < 2; sq++)
            for (int h = 0; h < c->Hkv; h++) {
                const lethe_kv_stream *sr = lethe_kv_stream_at(&ref.kv, sq, KV_LAYER, h);
                const lethe_kv_stream *se = lethe_kv_stream_at(&emu.kv, sq, KV_LAYER, h);
                for (int32_t p = 0; p < sr->n_pages; p++)
                    if (memcmp(ref.kv.kmin + (size_t)sr->pages[p] * c->D, emu.kv.kmin + (size_t)se->pages[p] * c->D,
                               (size_t)c->D * sizeof(float)) ||
                        memcmp(ref.kv.kmax + (size_t)sr->pages[p] * c->D, emu.kv.kmax + (size_t)se->pages[p] * c->D,
                               (size_t)c->D * sizeof(float)))
                        fail_msg("%s: bounds of (seq %d, head %d) page %d differ from the CPU's", c->name, sq, h, p);
            }
        /* the pages, item by item, against the oracle; the reads against the CPU's */
        uint64_t reads = 0;
        int n_selecting = 0;
        int32_t want[4096];   /* CU_QUEST_MAX_PAGES */
        for (int32_t it = 0; it < n_items; it++) {
            const lethe_cu_attn_work *w = &plan.work[it];
            const int hk = it % c->Hkv, t = w->t0;
            const lethe_kv_stream *s = lethe_kv_stream_at(&emu.kv, emu.seq[t], KV_LAYER, hk);
            const int n = oracle_pages(&emu.kv, s, emu.pos[t], emu.q + ((size_t)t * Hq + (size_t)hk * c->G) * c->D,
                                       c->G, want);
            const int n_pages = (s->len + LETHE_KV_PAGE - 1) / LETHE_KV_PAGE;
            reads += (uint64_t)w->L;
            if (n_pages <= k) {
                assert_int_equal(w->L, s->len);
                continue;
            }
            n_selecting++;
            int32_t L = 0;
            for (int j = 0; j < n; j++) {
                if (pl[w->plist + j] != s->pages[want[j]])
                    fail_msg("%s: (t %d, KV head %d) reads pool page %d as its page %d; the CPU's is %d (stream page %d)",
                             c->name, t, hk, pl[w->plist + j], j, s->pages[want[j]], want[j]);
                L += LETHE_MIN(LETHE_KV_PAGE, s->len - want[j] * LETHE_KV_PAGE);
            }
            assert_int_equal(w->L, L);
        }
        assert_true(n_selecting > 0);
        if (reads != ref.kv.reads)
            fail_msg("%s: KV reads %llu, the CPU's %llu", c->name, (unsigned long long)reads,
                     (unsigned long long)ref.kv.reads);
        /* the decode kernel over the chosen pages (splits of the QUEST-capped length) */
        const int64_t targets[] = {1, 100000};
        for (size_t ti = 0; ti < LETHE_ARRAY_SIZE(targets); ti++) {
            int32_t chunk, n_split;
            cu_attn_split_plan(n_items, LETHE_MIN(plan.Lmax, k * LETHE_KV_PAGE), targets[ti], &chunk, &n_split);
            for (size_t j = 0; j < n_out; j++) y[j] = NAN;
            assert_int_equal(lethe_cu_host_attention(&view, emu.q, y, plan.work, plan.n_blocks, 1, pl, emu.pos, c->Hkv,
                                                     c->G, 1.0f / sqrtf((float)c->D), chunk, n_split, n_split, NULL, 0), 0);
            const double e = nmse(yr, y, n_out);
            print_message("  %-28s %d of %d items select, reads %llu, %3d span(s): NMSE %.3g\n", c->name, n_selecting,
                          n_items, (unsigned long long)reads, n_split, e);
            if (!(e < 1e-10)) fail_msg("%s: NMSE %.3g against the CPU", c->name, e);
        }
        free(ent);
        free(pl);
        free(y);
        free(yr);
        cu_attn_plan_free(&plan);
        kv_built_free(&ref);
        kv_built_free(&emu);
    }
    cpu->iface->free(cpu);
}

/* k_top_k's rounds (k_topk.cu) with the lanes of a block run one after
 * another: each lane's best through cuda_topk.h, the warp winners as the
 * butterfly leaves them, the warps folded in order, the owner's write and
 * rescan. What it cannot check: the shuffles and the barrier themselves. */
static void host_top_k_pass(const uint32_t *in, uint32_t *out, uint32_t V, uint32_t k, uint32_t chunk, uint32_t S,
                            int pass, uint32_t n_seg, uint32_t T) {
    enum { WG = CU_TOPK_WG };
    uint32_t bk[WG], bi[WG], bb[WG];
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t sg = 0; sg < n_seg; sg++) {
            size_t ob;
            const cu_topk_seg g = cu_topk_segment(in, V, k, chunk, S, pass, sg, t, &ob);
            for (uint32_t l = 0; l < WG; l++) cu_topk_lane_best(&g, l, WG, false, 0, 0, &bk[l], &bi[l], &bb[l]);
            for (uint32_t j = 0; j < k; j++) {
                uint32_t wk = 0, wi = CU_TOPK_EMPTY_ID;
                for (uint32_t w = 0; w < WG / 32; w++) {
                    uint32_t mk = bk[32 * w], mi = bi[32 * w];
                    for (uint32_t l = 1; l < 32; l++)
                        if (cu_topk_better(bk[32 * w + l], bi[32 * w + l], mk, mi)) mk = bk[32 * w + l], mi = bi[32 * w + l];
                    if (w == 0 || cu_topk_better(mk, mi, wk, wi)) wk = mk, wi = mi;
                }
                if (wi == CU_TOPK_EMPTY_ID) {
                    out[ob + 2 * j] = CU_TOPK_EMPTY_ID;
                    out[ob + 2 * j + 1] = CU_TOPK_EMPTY_BITS;
                    continue;
                }
                int owners = 0;
                for (uint32_t l = 0; l < WG; l++)
                    if (bi[l] == wi) {
                        owners++;
                        out[ob + 2 * j] = bi[l];
                        out[ob + 2 * j + 1] = bb[l];
                        cu_topk_lane_best(&g, l, WG, true, wk, wi, &bk[l], &bi[l], &bb[l]);
                    }
                assert_int_equal(owners, 1);
            }
        }
}

/* TOP_K as the CUDA launcher runs it (one or two passes, cu_topk_plan). */
static void host_top_k(const float *x, int32_t *out, uint32_t T, uint32_t V, uint32_t k) {
    uint32_t S, chunk;
    cu_topk_plan(V, k, &S, &chunk);
    if (S == 1) {
        host_top_k_pass((const uint32_t *)x, (uint32_t *)out, V, k, chunk, S, 0, 1, T);
        return;
    }
    uint32_t *mid = malloc(cu_topk_scratch_bytes(T, V, k));
    assert_non_null(mid);
    host_top_k_pass((const uint32_t *)x, mid, V, k, chunk, S, 0, S, T);
    host_top_k_pass(mid, (uint32_t *)out, V, k, chunk, S, 1, 1, T);
    free(mid);
}

/* The kernel's selection against the CPU backend's TOP_K, bit for bit:
 * the vocabularies of SmolLM2 and Qwen, k 1 / 40 / 64 / 256, ties, -inf,
 * NaN (after every number), rows shorter than a segment; and the plan. */
static void test_top_k(void **state) {
    (void)state;
    const struct { uint32_t T, V, k; int pat; } cs[] = {
        {1, 49152, 1, 0}, {3, 49152, 40, 0}, {2, 151936, 64, 0}, {1, 151936, 256, 0}, {2, 49152, 40, 1},
        {2, 151936, 64, 2}, {2, 49152, 64, 3}, {1, 151936, 1, 3}, {2, 10000, 64, 4}, {1, 5000, 40, 5},
        {4, 7, 5, 2}, {2, 64, 64, 1}, {3, 4097, 17, 2}, {1, 151936, 40, 1},
    };
    lethe_backend *cpu = lethe_backend_cpu_new(2);
    assert_non_null(cpu);
    for (size_t c = 0; c < LETHE_ARRAY_SIZE(cs); c++) {
        const uint32_t T = cs[c].T, V = cs[c].V, k = cs[c].k;
        float *x = malloc((size_t)T * V * sizeof(float));
        int32_t *got = malloc((size_t)T * k * 2 * sizeof(int32_t));
        assert_non_null(x);
        assert_non_null(got);
        tu_topk_fill(x, (size_t)T * V, cs[c].pat, 40 + c);
        lethe_graph *g = lethe_graph_new(4);
        int64_t ne[2] = {V, T};
        lethe_node *n = lethe_top_k(g, lethe_input(g, LETHE_F32, 2, ne, x, "x"), (int)k);
        assert_non_null(n);
        lethe_set_output(n);
        lethe_executor *ex = lethe_executor_new(&cpu, 1);
        assert_int_equal(lethe_executor_run(ex, g, NULL, NULL), LETHE_OK);
        host_top_k(x, got, T, V, k);
        if (memcmp(got, n->t.data, (size_t)T * k * 2 * sizeof(int32_t)) != 0)
            fail_msg("top_k T=%u V=%u k=%u pattern %d: the kernel's selection differs from the CPU", T, V, k,
                     cs[c].pat);
        lethe_executor_free(ex);
        lethe_graph_free(g);
        free(x);
        free(got);
    }
    cpu->iface->free(cpu);
    print_message("  top_k: %zu cases bit-identical to the CPU backend\n", LETHE_ARRAY_SIZE(cs));
    /* the plan: segments cover the row, none empty, pass 1 reads <= max(4096, k) pairs per row */
    const uint32_t Vs[] = {1, 7, 4096, 4097, 49152, 151936, 262144};
    const uint32_t ks[] = {1, 2, 40, 64, 255, 256};
    for (size_t a = 0; a < LETHE_ARRAY_SIZE(Vs); a++)
        for (size_t b = 0; b < LETHE_ARRAY_SIZE(ks); b++) {
            if (ks[b] > Vs[a]) continue;
            uint32_t S, chunk;
            cu_topk_plan(Vs[a], ks[b], &S, &chunk);
            assert_true(S >= 1 && (uint64_t)chunk * S >= Vs[a] && (uint64_t)chunk * (S - 1) < Vs[a]);
            assert_true(S == 1 || (uint64_t)S * ks[b] <= 4096);
        }
}

/* ------------------------------------------------------------------------
 * Replay stability of the decode plan (CUDA graphs, cuda_graph.c): a graph
 * of every op kind a decode step launches (GET_ROWS, RMS_NORM, GEMV, ROPE,
 * DMS_DECISION, KV_STORE, ATTENTION) over a DMS cache whose streams grow,
 * get holes and evict from step to step. */
#define SG_E 64
#define SG_V 16
typedef struct step_graph {
    lethe_graph *g;
    int32_t ids[64];
    float *emb, *wn, *wq, *k, *v;
    lethe_rope_params rp;
    lethe_node *store, *attn;
} step_graph;

static lethe_node *weight(lethe_graph *g, float *data, int64_t ne0, int64_t ne1, const char *name) {
    lethe_tensor t;
    const int64_t ne[2] = {ne0, ne1};
    lethe_tensor_init(&t, LETHE_F32, ne1 > 1 ? 2 : 1, ne);
    t.data = data;
    snprintf(t.name, sizeof t.name, "%s", name);
    return lethe_leaf(g, &t);
}

static void step_graph_build(step_graph *sg, lethe_kv_cache *kv, const lethe_ubatch *ub, uint64_t seed) {
    memset(sg, 0, sizeof *sg);
    const int64_t T = ub->n_tokens, Hkv = kv->n_head_kv, D = kv->head_dim, G = 4, Hq = Hkv * G;
    sg->emb = malloc(SG_V * SG_E * sizeof(float));
    sg->wn = malloc(SG_E * sizeof(float));
    sg->wq = malloc((size_t)(Hq * D * SG_E) * sizeof(float));
    sg->k = malloc((size_t)(T * Hkv * D) * sizeof(float));
    sg->v = malloc((size_t)(T * Hkv * D) * sizeof(float));
    tu_rand_fill(sg->emb, SG_V * SG_E, seed);
    tu_rand_fill(sg->wn, SG_E, seed + 1);
    tu_rand_fill(sg->wq, (size_t)(Hq * D * SG_E), seed + 2);
    tu_rand_fill(sg->k, (size_t)(T * Hkv * D), seed + 3);
    tu_rand_fill(sg->v, (size_t)(T * Hkv * D), seed + 4);
    for (int t = 0; t < T; t++) sg->ids[t] = (int32_t)((seed + (uint64_t)t) % SG_V);
    sg->rp = (lethe_rope_params){.mode = LETHE_ROPE_NEOX, .n_rot = (int32_t)D, .freq_base = 10000.0f,
                                 .freq_scale = 1.0f};
    lethe_graph *g = sg->g = lethe_graph_new(32);
    const int64_t ni[1] = {T}, nk[3] = {D, Hkv, T}, nq[3] = {D, Hq, T};
    lethe_node *x = lethe_get_rows(g, weight(g, sg->emb, SG_E, SG_V, "emb"), lethe_input(g, LETHE_I32, 1, ni, sg->ids, "ids"));
    x = lethe_rms_norm(g, x, weight(g, sg->wn, SG_E, 1, "norm"), 1e-6f);
    lethe_node *q = lethe_reshape(g, lethe_matmul(g, weight(g, sg->wq, SG_E, Hq * D, "wq"), x), 3, nq);
    q = lethe_rope(g, q, &sg->rp, ub);
    lethe_node *k = lethe_rope(g, lethe_input(g, LETHE_F32, 3, nk, sg->k, "k"), &sg->rp, ub);
    lethe_node *v = lethe_input(g, LETHE_F32, 3, nk, sg->v, "v");
    lethe_node *dec = lethe_dms_decision(g, NULL, LETHE_DMS_FORCED, (int)Hkv, (int)G, false, 1.0f, 0.0f, 0.5f,
                                         KV_LAYER, ub);
    sg->store = lethe_kv_store(g, kv, KV_LAYER, k, v, dec, ub);
    sg->attn = lethe_attention(g, kv, KV_LAYER, q, sg->store, 1.0f / sqrtf((float)D), ub);
    lethe_set_output(sg->attn);
    assert_int_equal(g->status, LETHE_OK);
}

static void step_graph_free(step_graph *sg) {
    lethe_graph_free(sg->g);
    free(sg->emb);
    free(sg->wn);
    free(sg->wq);
    free(sg->k);
    free(sg->v);
}

/* The staged bytes of plan p decode to the values the kernels must get:
 * the same tables the module's helpers build from the cache now. */
static void check_staging(const cu_plan *p, const step_graph *sg, const lethe_ubatch *ub) {
    const lethe_kv_cache *kv = sg->store->kv;
    const size_t T = (size_t)ub->n_tokens;
    for (int r = 0; r < 2; r++) {   /* both ROPEs: positions and the CPU backend's frequencies */
        const cu_launch *l = launch_of(p, CU_K_ROPE, r);
        assert_non_null(l);
        assert_memory_equal(staged(p, l, 2, CU_R_POS), ub->pos, T * sizeof(int32_t));
        const double *invf = staged(p, l, 3, CU_R_INVF);
        for (int i = 0; i < sg->rp.n_rot / 2; i++)
            if (invf[i] != lethe_rope_inv_freq(&sg->rp, i)) fail_msg("rope frequency %d differs from the CPU's", i);
    }
    assert_memory_equal(staged(p, launch_of(p, CU_K_GET_ROWS, 0), 1, CU_R_INPUT), sg->ids, T * sizeof(int32_t));
    assert_memory_equal(staged(p, launch_of(p, CU_K_DMS, 0), 2, CU_R_POS), ub->pos, T * sizeof(int32_t));
    const cu_launch *ls = launch_of(p, CU_K_KV_STORE, 0);
    assert_memory_equal(staged(p, ls, 1, CU_R_INPUT), sg->v, T * (size_t)kv->n_head_kv * (size_t)kv->head_dim * sizeof(float));
    lethe_cu_kv_row rows[64];
    char err[160];
    assert_int_equal(cu_kv_store_rows(sg->store, rows, err, sizeof err), LETHE_OK);
    assert_memory_equal(staged(p, ls, 3, CU_R_KV_ROWS), rows, T * (size_t)kv->n_head_kv * sizeof *rows);
    const cu_launch *la = launch_of(p, CU_K_ATTENTION, 0);
    cu_attn_plan t;
    assert_int_equal(cu_attn_plan_build(sg->attn, 4, false, &t, err, sizeof err), LETHE_OK);
    assert_true(t.decode);
    assert_int_equal(la->i[0], t.n_blocks);
    assert_memory_equal(staged(p, la, 2, CU_R_WORK), t.work, (size_t)t.n_blocks * kv->n_head_kv * sizeof *t.work);
    const cu_region *rp = region_at(p, la->p[3]);
    assert_true(rp->size >= t.n_plist * sizeof(int32_t));
    assert_memory_equal(p->stage + rp->off, t.plists, t.n_plist * sizeof(int32_t));
    for (size_t i = t.n_plist * sizeof(int32_t); i < rp->size; i++)
        if (p->stage[rp->off + i]) fail_msg("page-list padding byte %zu is not 0", i);
    assert_memory_equal(staged(p, la, 4, CU_R_POS), ub->pos, T * sizeof(int32_t));
    int32_t chunk, n_split;
    cu_plan_attn_splits(sg->attn, 132, t.n_blocks, true, &chunk, &n_split);
    const int32_t *split = staged(p, la, 5, CU_R_SPLIT);
    assert_int_equal(split[0], chunk);
    assert_int_equal(split[1], n_split);
    assert_true(n_split <= la->i[4]);
    if (p->bucketed) assert_int_equal(la->i[4], cu_pow2_ceil(n_split));   /* one attention node: its own bucket */
    else assert_int_equal(la->i[4], n_split);
    cu_attn_plan_free(&t);
}

/* The plain plan and the bucketed one: the same launches in the same order
 * with the same values, except the attention grid's span count, its page-list
 * capacity (and so the offsets after it) and the partials pointer; score
 * policies: the weights' row stride (and so their byte counts), QUEST's
 * refresh capacity and its selection's offset from the page lists. */
static bool bucket_dependent(const cu_launch *a, int i) {
    switch (a->kind) {
    case CU_K_ATTENTION: return i == 4 || i == 9;
    case CU_K_QUEST_BOUNDS: return i == 5;   /* CTAs per item: 1 in a graph */
    case CU_K_QUEST_SELECT: return i == 1;
    case CU_K_FILL:
    case CU_K_COPY_BACK: return i == 0;
    default: return false;
    }
}

static void check_plain_vs_bucketed(const cu_plan *p0, const cu_plan *p1) {
    assert_int_equal(p0->n_launches, p1->n_launches);
    assert_false(p0->bucketed);
    assert_true(p1->bucketed && p1->capturable);
    assert_int_equal(p0->n_post, p1->n_post);
    for (int k = 0; k < p0->n_launches; k++) {
        const cu_launch *a = &p0->launches[k], *b = &p1->launches[k];
        assert_int_equal(a->kind, b->kind);
        assert_int_equal(a->staged, b->staged);
        assert_int_equal(a->result, b->result);
        for (int s = 0; s < CU_LP; s++) {
            if ((a->staged >> s) & 1u) {
                const cu_region *ra = region_at(p0, a->p[s]), *rb = region_at(p1, b->p[s]);
                assert_int_equal(ra->kind, rb->kind);
                assert_int_equal(ra->result, rb->result);
                assert_int_equal(ra->result, (a->result >> s) & 1u);
                assert_true(rb->size >= ra->size);
                if (ra->result) {   /* device-only: after every staged byte */
                    assert_true(ra->off >= p0->stage_size && ra->off + ra->size <= p0->up_size);
                    assert_true(rb->off >= p1->stage_size && rb->off + rb->size <= p1->up_size);
                } else if (memcmp(p0->stage + ra->off, p1->stage + rb->off, ra->size)) {
                    fail_msg("launch %d (kind %d) argument %d: staged bytes differ between the plans", k, a->kind, s);
                }
            } else if (!(a->kind == CU_K_ATTENTION && s == 6) && a->p[s] != b->p[s]) {
                fail_msg("launch %d (kind %d) argument %d differs", k, a->kind, s);
            }
        }
        for (int i = 0; i < CU_LI; i++)
            if (!bucket_dependent(a, i) && a->i[i] != b->i[i])
                fail_msg("launch %d (kind %d) integer %d differs", k, a->kind, i);
    }
}

/* Decode steps: evictions (DMS flags), holes, growth, then a decode token
 * (the commit first: the step before's policy evictions). */
static void kv_advance(kv_built *b, int step) {
    lethe_kv_cache *kv = &b->kv;
    lethe_kv_commit(kv);
    for (int h = 0; h < kv->n_head_kv; h++) {
        lethe_kv_stream *s = lethe_kv_stream_at(kv, 0, KV_LAYER, h);
        if (s->len > 8 && (step + h) % 3 == 0) {   /* a DMS flag that will expire */
            const int32_t j = s->len - 2;
            if (*lethe_kv_pos(kv, s, j) != INT32_MAX) *lethe_kv_expire(kv, s, j) = *lethe_kv_pos(kv, s, j) + KV_W + 1;
        }
        if (s->len > 40 && (step + h) % 5 == 0) {   /* a hole */
            const int32_t drop = 7 + (step * 13 + h) % (s->len - 20);
            if (*lethe_kv_pos(kv, s, drop) != INT32_MAX) lethe_kv_stream_drop(kv, s, &drop, 1);
        }
    }
    for (int t = 0; t < b->ub.n_tokens; t++) b->pos[t] += 1;   /* alternating sequences: one token each */
    lethe_kv_begin(kv);
    assert_int_equal(lethe_kv_reserve(kv, b->ub.n_tokens, b->seq, b->pos), LETHE_OK);
}

static void next_step(kv_built *b, step_graph *sg, int step) {
    const lethe_kv_cache *kv = &b->kv;
    kv_advance(b, step);
    for (int t = 0; t < b->ub.n_tokens; t++) sg->ids[t] = (sg->ids[t] + 5) % SG_V;
    tu_rand_fill(sg->k, (size_t)b->ub.n_tokens * kv->n_head_kv * kv->head_dim, 4000 + (uint64_t)step);
    tu_rand_fill(sg->v, (size_t)b->ub.n_tokens * kv->n_head_kv * kv->head_dim, 5000 + (uint64_t)step);
}

static void test_plan_replay(void **state) {
    (void)state;
    const kv_case c = {"replay", 2, 2, 64, 4, 400, true, false, true, 0, 0, false};
    kv_built b;
    kv_build(&c, &b, 77);   /* 2 decode tokens (sequences 0 and 1) reserved */
    step_graph sg;
    step_graph_build(&sg, &b.kv, &b.ub, 78);
    cu_plan p0, p1, prev;
    fake_dev f;
    assert_true(cu_plan_decode_shaped(sg.g, 0, sg.g->n_nodes));
    plan_of(sg.g, false, &p0, &f);
    plan_of(sg.g, true, &p1, &f);
    assert_true(f.prepared >= 2);   /* KV_STORE and ATTENTION asked for the cache's placement */
    check_staging(&p0, &sg, &b.ub);
    check_staging(&p1, &sg, &b.ub);
    check_plain_vs_bucketed(&p0, &p1);
    cu_plan_free(&p0);
    prev = p1;
    int same = 0, crossed = 0;
    for (int step = 1; step <= 160; step++) {
        next_step(&b, &sg, step);
        cu_plan p;
        plan_of(sg.g, true, &p, &f);
        check_staging(&p, &sg, &b.ub);
        assert_int_equal(p.n_launches, prev.n_launches);
        const bool buckets = p.span_cap == prev.span_cap && p.plist_cap == prev.plist_cap;
        if (buckets) {   /* replay: the identical launch list, only the staging bytes move */
            if (p.key != prev.key || p.stage_size != prev.stage_size ||
                memcmp(p.launches, prev.launches, (size_t)p.n_launches * sizeof *p.launches))
                fail_msg("step %d: same buckets (spans %d, pages %d) but a different launch list", step, p.span_cap,
                         p.plist_cap);
            if (!memcmp(p.stage, prev.stage, p.stage_size)) fail_msg("step %d: the staging bytes did not change", step);
            same++;
        } else {         /* a bucket crossed: a new key, and only the attention launch changed */
            if (p.key == prev.key) fail_msg("step %d: buckets changed, the key did not", step);
            for (int k = 0; k < p.n_launches; k++) {
                const cu_launch *a = &p.launches[k], *o = &prev.launches[k];
                if (a->kind != CU_K_ATTENTION && p.plist_cap == prev.plist_cap && memcmp(a, o, sizeof *a))
                    fail_msg("step %d: launch %d (kind %d) changed with the span bucket", step, k, a->kind);
                if (a->kind == CU_K_ATTENTION) assert_int_equal(a->grid[1], (uint32_t)p.span_cap);
            }
            print_message("  step %d: span bucket %d -> %d, page bucket %d -> %d: new key\n", step, prev.span_cap,
                          p.span_cap, prev.plist_cap, p.plist_cap);
            crossed++;
        }
        cu_plan_free(&prev);
        prev = p;
    }
    print_message("  %d steps replayed the same launch list, %d crossed a bucket\n", same, crossed);
    assert_true(same >= 100);
    assert_true(crossed >= 1);   /* 400 -> 560 slots: 4 -> 5 spans of 128, bucket 4 -> 8 */
    /* T changes: one token of sequence 0 only */
    lethe_kv_commit(&b.kv);
    int32_t seq1[1] = {0}, pos1[1] = {b.pos[0] + 1};
    const lethe_ubatch ub1 = {1, seq1, pos1};
    lethe_kv_begin(&b.kv);
    assert_int_equal(lethe_kv_reserve(&b.kv, 1, seq1, pos1), LETHE_OK);
    step_graph sg1;
    step_graph_build(&sg1, &b.kv, &ub1, 79);
    cu_plan p;
    plan_of(sg1.g, true, &p, &f);
    check_staging(&p, &sg1, &ub1);
    assert_true(p.key != prev.key);
    assert_int_equal(launch_of(&p, CU_K_GEMV, 0)->i[4], 1);
    assert_int_equal(launch_of(&prev, CU_K_GEMV, 0)->i[4], 2);
    cu_plan_free(&p);
    cu_plan_free(&prev);
    step_graph_free(&sg1);
    step_graph_free(&sg);
    kv_built_free(&b);
}

/* Prefill (runs of one sequence, T > 8): the matmuls go to cuBLAS, so the
 * plan is not decode-shaped, not capturable, and its attention is the tiled
 * kernel with a grid of (blocks, Hkv). */
static void test_plan_prefill(void **state) {
    (void)state;
    const kv_case c = {"prefill", 12, 2, 64, 4, 100, true, true, true, 0, 0, false};
    kv_built b;
    kv_build(&c, &b, 91);
    step_graph sg;
    step_graph_build(&sg, &b.kv, &b.ub, 92);
    assert_false(cu_plan_decode_shaped(sg.g, 0, sg.g->n_nodes));
    cu_plan p;
    fake_dev f;
    plan_of(sg.g, false, &p, &f);
    assert_false(p.capturable);
    const cu_launch *m = launch_of(&p, CU_K_MATMUL, 0);
    assert_non_null(m);
    assert_null(launch_of(&p, CU_K_GEMV, 0));
    assert_int_equal(m->i[4], 12);
    assert_int_equal(m->i[0], LETHE_F32);   /* f32 weights: cublasSgemm, no f16 operands in scratch */
    assert_int_equal(m->p[3], 0);
    assert_int_equal(f.scratch_bytes, 0);
    const cu_launch *a = launch_of(&p, CU_K_ATTENTION, 0);
    assert_int_equal(a->i[1], 0);   /* tiled */
    assert_int_equal(a->i[4], 1);
    assert_int_equal(a->grid[0], (uint32_t)a->i[0]);
    assert_int_equal(a->grid[1], 2);
    assert_int_equal(a->p[6], 0);   /* no partials */
    cu_plan_free(&p);
    step_graph_free(&sg);
    kv_built_free(&b);
}


/* The decode GEMV in the plan (cuda-gemv): quantized weights get the q8
 * activations' scratch (the plan's one scratch, sized for it) and the
 * variant as launch arguments; the old kernel none. k_gemv.cu's
 * lethe_cu_gemv_act_bytes is not linked here: a stand-in of its rule. */
static size_t fake_act_bytes(int wtype, int64_t K, int64_t T, int variant) {
    if (variant == LETHE_CU_GEMV_OLD || wtype == LETHE_F32 || K % 32) return 0;
    return (size_t)T * (size_t)(K / 32) * 64;
}

static void test_plan_gemv(void **state) {
    (void)state;
    const int64_t K = 96, N = 40, T = 3;
    uint8_t *wq = calloc((size_t)N * (size_t)(K / 32), sizeof(lethe_block_q8_0));
    float *x = calloc((size_t)(K * T), sizeof(float));
    lethe_graph *g = lethe_graph_new(8);
    lethe_tensor t;
    const int64_t nw[2] = {K, N}, nx[2] = {K, T};
    lethe_tensor_init(&t, LETHE_Q8_0, 2, nw);
    t.data = wq;
    snprintf(t.name, sizeof t.name, "wq8");
    lethe_node *y = lethe_matmul(g, lethe_leaf(g, &t), lethe_input(g, LETHE_F32, 2, nx, x, "x"));
    lethe_set_output(y);
    assert_int_equal(g->status, LETHE_OK);
    assert_true(cu_plan_decode_shaped(g, 0, g->n_nodes));
    const int variants[3] = {LETHE_CU_GEMV_NEW, LETHE_CU_GEMV_WIDE, LETHE_CU_GEMV_OLD};
    uint64_t keys[3];
    for (int v = 0; v < 3; v++) {
        cu_plan p;
        fake_dev f;
        plan_of_gemv(g, true, &p, &f, variants[v], fake_act_bytes);
        const cu_launch *l = launch_of(&p, CU_K_GEMV, 0);
        assert_non_null(l);
        assert_true(p.capturable);
        assert_int_equal(l->i[4], T);
        assert_int_equal(l->i[5], variants[v]);
        const size_t act = fake_act_bytes(LETHE_Q8_0, K, T, variants[v]);
        if (act) {
            assert_int_equal(l->p[3], 0x200000000000ull);   /* fake_scratch's address */
            assert_true(f.scratch_bytes >= act && p.scratch_bytes >= act);
        } else {
            assert_int_equal(l->p[3], 0);
            assert_int_equal(f.scratch_bytes, 0);
        }
        keys[v] = p.key;
        cu_plan_free(&p);
    }
    assert_true(keys[0] != keys[1] && keys[0] != keys[2] && keys[1] != keys[2]);   /* the variant is in the key */
    lethe_graph_free(g);
    free(wq);
    free(x);
}

/* TOP_K in the launch plan: one capturable launch with the rows, vocabulary
 * and k of the node, the plan's scratch where the row takes two passes
 * (cu_topk_plan) and none where one segment holds it. */
static void test_plan_top_k(void **state) {
    (void)state;
    const struct { int64_t V, T; int k; } cs[] = {{151936, 2, 40}, {1000, 3, 5}};
    for (size_t c = 0; c < LETHE_ARRAY_SIZE(cs); c++) {
        float *x = calloc((size_t)(cs[c].V * cs[c].T), sizeof(float));
        lethe_graph *g = lethe_graph_new(4);
        const int64_t ne[2] = {cs[c].V, cs[c].T};
        lethe_node *y = lethe_top_k(g, lethe_input(g, LETHE_F32, 2, ne, x, "logits"), cs[c].k);
        assert_non_null(y);
        lethe_set_output(y);
        cu_plan p;
        fake_dev f;
        plan_of(g, true, &p, &f);
        assert_true(p.capturable);
        const cu_launch *l = launch_of(&p, CU_K_TOP_K, 0);
        assert_non_null(l);
        assert_int_equal(l->i[0], cs[c].T);
        assert_int_equal(l->i[1], cs[c].V);
        assert_int_equal(l->i[2], cs[c].k);
        const size_t need = cu_topk_scratch_bytes(cs[c].T, (uint32_t)cs[c].V, (uint32_t)cs[c].k);
        if (need) {
            assert_int_equal(l->p[2], 0x200000000000ull);   /* fake_scratch's address */
            assert_true(p.scratch_bytes >= need);
        } else {
            assert_int_equal(l->p[2], 0);
        }
        cu_plan_free(&p);
        lethe_graph_free(g);
        free(x);
    }
}
/* The plan's one scratch shared by the merged features (attention's
 * split-K partials, the decode GEMV's q8 activations, TOP_K's segment
 * pairs): a decode step with all three, plain and bucketed. Each launch
 * that uses scratch must get the plan's scratch, and the one allocation
 * (asked once) must hold the largest of their needs, each recomputed here
 * from the launch's own arguments, i.e. from what the kernel will touch. */
static void test_plan_scratch_shared(void **state) {
    (void)state;
    const kv_case c = {"scratch", 2, 2, 64, 4, 400, true, false, true, 0, 0, false};
    kv_built b;
    kv_build(&c, &b, 91);
    step_graph sg;
    step_graph_build(&sg, &b.kv, &b.ub, 92);
    lethe_graph *g = sg.g;
    const int64_t T = b.ub.n_tokens, Kd = lethe_tensor_nelements(&sg.attn->t) / T, N = 60000;   /* TOP_K's pairs the largest need */
    uint8_t *wo = calloc((size_t)N * (size_t)(Kd / 32), sizeof(lethe_block_q8_0));
    lethe_tensor t;
    const int64_t nw[2] = {Kd, N}, nf[2] = {Kd, T};
    lethe_tensor_init(&t, LETHE_Q8_0, 2, nw);
    t.data = wo;
    snprintf(t.name, sizeof t.name, "output");
    lethe_node *logits = lethe_matmul(g, lethe_leaf(g, &t), lethe_reshape(g, sg.attn, 2, nf));
    lethe_node *top = lethe_top_k(g, logits, 256);
    lethe_set_output(top);
    assert_int_equal(g->status, LETHE_OK);
    for (int bucketed = 0; bucketed < 2; bucketed++) {
        cu_plan p;
        fake_dev f;
        plan_of_gemv(g, bucketed, &p, &f, LETHE_CU_GEMV_NEW, fake_act_bytes);
        size_t need[3] = {0, 0, 0};   /* attention partials, GEMV activations, TOP_K pairs */
        for (int k = 0; k < p.n_launches; k++) {
            const cu_launch *l = &p.launches[k];
            size_t nb = 0;
            int slot = -1, which = -1;
            if (l->kind == CU_K_ATTENTION && l->i[1] && l->i[4] > 1) {   /* [items][cap][G][D + 2] f32 */
                nb = (size_t)l->grid[0] * (size_t)l->i[4] * (size_t)l->i[3] * (size_t)(l->i[8] + 2) * sizeof(float);
                slot = 6, which = 0;
            } else if (l->kind == CU_K_GEMV) {
                nb = fake_act_bytes((int)l->i[0], l->i[3], l->i[4], (int)l->i[5]);
                slot = 3, which = 1;
            } else if (l->kind == CU_K_TOP_K) {
                nb = cu_topk_scratch_bytes(l->i[0], (uint32_t)l->i[1], (uint32_t)l->i[2]);
                slot = 2, which = 2;
            }
            if (slot < 0 || !nb) continue;
            if (l->p[slot] != 0x200000000000ull) fail_msg("launch %d (kind %d) does not get the plan's scratch", k, l->kind);
            need[which] = nb > need[which] ? nb : need[which];
            if (nb > p.scratch_bytes)
                fail_msg("%s plan: launch %d (kind %d) needs %zu scratch bytes, the plan has %zu", bucketed ? "bucketed" :
                         "plain", k, l->kind, nb, p.scratch_bytes);
        }
        print_message("  %s: scratch %zu bytes (partials %zu, q8 activations %zu, top-k pairs %zu)\n",
                      bucketed ? "bucketed" : "plain", p.scratch_bytes, need[0], need[1], need[2]);
        assert_true(need[0] && need[1] && need[2]);   /* all three users present */
        assert_int_equal(f.scratch_bytes, p.scratch_bytes);
        assert_true(p.capturable);
        cu_plan_free(&p);
    }
    step_graph_free(&sg);
    kv_built_free(&b);
    free(wo);
}

/* ------------------------------------------------------------------------
 * Score policies in the launch plan, replayed. A decode step over a TOVA /
 * H2O / QUEST cache (kv_build's graph: KV_STORE + ATTENTION) for
 * POLICY_STEPS steps with holes, expiries, growth and the policy's own
 * evictions. Each step's bucketed plan runs on the host launch by launch
 * (the kernels' host steps, hostcheck/k_hostcheck.cu) from its staging
 * bytes in an emulated upload buffer whose device-only areas are poisoned,
 * with the launch list frozen at its key's first step (what a captured
 * graph replays: the frozen launches on the new staging bytes). The
 * COPY_BACK launches fill an emulated pinned buffer and cu_plan_finish does
 * the host's part after the "sync". Every step must give the CPU backend's
 * attention output, kv->score (TOVA / H2O), page bounds and KV reads
 * (QUEST), and after the commit the CPU's streams (the same evictions). */
typedef struct emu_up {
    uint8_t *dev, *host;   /* the upload buffer, the pinned staging buffer [cap] */
    size_t size, cap;      /* size: the plan's up_size */
} emu_up;

static void *emu_arg(const cu_launch *l, int s, const emu_up *u) {
    if (!((l->staged >> s) & 1u)) return (void *)(uintptr_t)l->p[s];
    if (l->p[s] >= u->size)
        fail_msg("launch %d argument %d: offset %llu past the upload buffer (%zu)", l->kind, s,
                 (unsigned long long)l->p[s], u->size);
    return u->dev + l->p[s];
}

/* The launches L [n] on the emulated device; y: ATTENTION's output. */
static void emu_run(const cu_launch *L, int n, emu_up *u, float *y) {
    for (int k = 0; k < n; k++) {
        const cu_launch *l = &L[k];
        const int64_t *i = l->i;
#define A(s) emu_arg(l, (s), u)
        switch (l->kind) {
        case CU_K_CLEAR_ERR:
            break;
        case CU_K_KV_STORE: {
            const lethe_cu_kv_view v = {A(4), NULL, A(5), 0, (size_t)i[2], (int)i[3], (int)i[1], NULL, NULL};
            assert_int_equal(lethe_cu_host_kv_store(&v, A(0), A(1), A(2), A(3), i[0]), 0);
            break;
        }
        case CU_K_QUEST_BOUNDS: {   /* per work item: its stale pages from the staged {first, count} */
            const lethe_cu_kv_view v = {A(0), NULL, NULL, (size_t)i[1], (size_t)i[2], (int)i[3], (int)i[4], A(1), A(2)};
            assert_int_equal(l->grid[0], (uint32_t)i[0]);
            assert_int_equal(l->grid[1], (uint32_t)i[5]);
            assert_int_equal(lethe_cu_host_quest_refresh(&v, A(4), A(5), A(3), (int)i[0]), 0);
            break;
        }
        case CU_K_QUEST_SELECT: {   /* rewrites the staged work entries to lists in the device-only area */
            const lethe_cu_kv_view v = {NULL, A(4), NULL, 0, 0, 0, (int)i[5], A(5), A(6)};
            assert_ptr_equal((int32_t *)A(2) + i[1], A(7));
            assert_int_equal(l->grid[0], (uint32_t)i[0]);
            assert_int_equal(lethe_cu_host_quest(&v, A(0), A(1), (int)i[0], A(2), (int)i[1], (int)i[2], A(3), (int)i[3],
                                                 (int)i[4], NULL, 0), 0);
            break;
        }
        case CU_K_FILL:
            memset(A(0), (int)i[1], (size_t)i[0]);
            break;
        case CU_K_ATTENTION: {
            const lethe_cu_kv_view v = {A(7), A(8), A(9), (size_t)i[5], (size_t)i[6], (int)i[7], (int)i[8], NULL, NULL};
            const int32_t *split = A(5);
            assert_true(split[1] >= 1 && split[1] <= i[4]);
            assert_int_equal(lethe_cu_host_attention(&v, A(0), y, A(2), (int)i[0], (int)i[1], A(3), A(4), (int)i[2],
                                                     (int)i[3], l->f[0], split[0], split[1], (int)i[4], A(10),
                                                     (int)i[9]), 0);
            break;
        }
        case CU_K_COPY_BACK:   /* device -> the same offset of the pinned buffer */
            assert_true((l->staged & 1u) && l->p[0] + (uint64_t)i[0] <= u->size);
            memcpy(u->host + l->p[0], u->dev + l->p[0], (size_t)i[0]);
            break;
        default:
            fail_msg("launch kind %d in a policy step", l->kind);
        }
#undef A
    }
}

/* The policy launches around each ATTENTION launch, and where their
 * arguments point. */
static void check_policy_launches(const cu_plan *p, const lethe_kv_cache *kv, const lethe_node *attn) {
    const bool quest = kv->kmin != NULL, score = kv->score != NULL;
    int a = -1;
    for (int k = 0; k < p->n_launches; k++)
        if (p->launches[k].kind == CU_K_ATTENTION) a = k;
    assert_true(a >= 2 && a + 1 < p->n_launches);
    const cu_launch *la = &p->launches[a];
    assert_true(p->result_off >= p->stage_size && p->up_size > p->result_off);
    assert_int_equal(p->n_post, 1);
    const cu_post *post = &p->post[0];
    assert_ptr_equal(post->n, attn);
    const cu_launch *back = &p->launches[a + 1];
    assert_int_equal(back->kind, CU_K_COPY_BACK);
    if (score) {
        const cu_launch *fill = &p->launches[a - 1];
        assert_int_equal(fill->kind, CU_K_FILL);
        assert_true((la->result >> 10) & 1u);
        const cu_region *r = region_at(p, la->p[10]);
        assert_int_equal(r->kind, CU_R_WEIGHTS);
        assert_true(r->result && r->off >= p->result_off && r->off + r->size <= p->up_size);
        const size_t bytes = (size_t)la->i[0] * (size_t)kv->n_head_kv * (size_t)la->i[3] * (size_t)la->i[9] * 4;
        assert_true(la->i[9] >= cu_score_stride(attn));
        assert_int_equal(fill->p[0], la->p[10]);
        assert_int_equal(back->p[0], la->p[10]);
        assert_int_equal(fill->i[0], (int64_t)bytes);
        assert_int_equal(back->i[0], (int64_t)bytes);
        assert_true(r->size >= bytes);
        assert_int_equal(post->kind, CU_POST_FOLD);
        assert_int_equal(post->off, la->p[10]);
        assert_int_equal(post->stride, la->i[9]);
        assert_ptr_equal(p->side[a].kv, kv);   /* reads from the tables */
    }
    if (quest) {
        const cu_launch *b = &p->launches[a - 2], *s = &p->launches[a - 1];
        assert_int_equal(b->kind, CU_K_QUEST_BOUNDS);
        assert_int_equal(s->kind, CU_K_QUEST_SELECT);
        assert_int_equal(la->p[10], 0);
        assert_false(region_at(p, b->p[3])->result);
        assert_int_equal(region_at(p, b->p[3])->kind, CU_R_QUEST_REF);
        assert_int_equal(b->p[4], la->p[2]);   /* the entries and lists before the selection rewrites them */
        assert_int_equal(b->p[5], la->p[3]);
        assert_int_equal(b->i[0], s->i[0]);
        if (p->bucketed) assert_int_equal(b->i[5], 1);
        assert_int_equal(s->p[1], la->p[2]);   /* the attention reads the entries the selection rewrote */
        assert_int_equal(s->p[2], la->p[3]);
        assert_int_equal(s->p[3], la->p[4]);
        const cu_region *r = region_at(p, s->p[7]);
        assert_int_equal(r->kind, CU_R_QUEST_SEL);
        assert_true(r->result && r->size >= (size_t)s->i[0] * (size_t)s->i[2] * sizeof(int32_t));
        assert_int_equal(s->i[2], cu_quest_k(kv));
        assert_int_equal(back->p[0], la->p[2]);
        assert_int_equal(back->i[0], (int64_t)((size_t)s->i[0] * sizeof(lethe_cu_attn_work)));
        assert_int_equal(post->kind, CU_POST_QUEST_READS);
        assert_int_equal(post->off, la->p[2]);
        assert_null(p->side[a].kv);            /* reads after the sync, from the rewritten entries */
    }
}

static void same_streams(const lethe_kv_cache *a, const lethe_kv_cache *b, const char *name, int step) {
    assert_int_equal(a->evicted, b->evicted);
    for (int sq = 0; sq < a->n_seq; sq++)
        for (int l = 0; l < a->n_layer; l++)
            for (int h = 0; h < a->n_head_kv; h++) {
                const lethe_kv_stream *sa = lethe_kv_stream_at(a, sq, l, h), *sb = lethe_kv_stream_at(b, sq, l, h);
                if (sa->len != sb->len)
                    fail_msg("%s step %d: (seq %d, layer %d, head %d) has %d slots, the CPU's %d", name, step, sq, l, h,
                             sb->len, sa->len);
                for (int32_t j = 0; j < sa->len; j++)
                    if (*lethe_kv_pos(a, sa, j) != *lethe_kv_pos(b, sb, j))
                        fail_msg("%s step %d: (seq %d, layer %d, head %d) slot %d holds position %d, the CPU's %d", name,
                                 step, sq, l, h, j, *lethe_kv_pos(b, sb, j), *lethe_kv_pos(a, sa, j));
            }
}

static const kv_case k_policy_replay_cases[] = {
    {"replay tova f16 G=4", 2, 2, 64, 4, 400, true, false, false, LETHE_KV_RULE_TOVA, 256, false},
    {"replay h2o f32 G=2", 2, 2, 32, 2, 300, false, false, false, LETHE_KV_RULE_H2O, 200, false},
    {"replay quest f16 G=4 tie", 2, 2, 64, 4, 400, true, false, false, LETHE_KV_RULE_QUEST, 128, true},
};
#define POLICY_STEPS 120

static void test_plan_policies(void **state) {
    (void)state;
    lethe_backend *cpu = lethe_backend_cpu_new(1);
    for (size_t ci = 0; ci < LETHE_ARRAY_SIZE(k_policy_replay_cases); ci++) {
        const kv_case *c = &k_policy_replay_cases[ci];
        kv_built ref, emu;
        kv_build(c, &ref, 6100 + ci);
        kv_build(c, &emu, 6100 + ci);
        const size_t Hq = (size_t)c->Hkv * c->G, n_out = (size_t)c->T * Hq * c->D;
        float *yr = malloc(n_out * sizeof(float)), *y = malloc(n_out * sizeof(float));
        emu_up u = {0};
        cu_launch *frozen = NULL;
        int n_frozen = 0, replays = 0, captures = 0;
        uint64_t key = 0;
        double worst_y = 0, worst_score = 0;
        for (int step = 0; step < POLICY_STEPS; step++) {
            if (step) {
                kv_advance(&ref, step);
                kv_advance(&emu, step);
                same_streams(&ref.kv, &emu.kv, c->name, step);   /* the commit evicted the same tokens */
                kv_built *both[2] = {&ref, &emu};
                for (int w = 0; w < 2; w++) {
                    tu_rand_fill(both[w]->k, (size_t)c->T * c->Hkv * c->D, 8000 + (uint64_t)step);
                    tu_rand_fill(both[w]->v, (size_t)c->T * c->Hkv * c->D, 9000 + (uint64_t)step);
                    tu_rand_fill(both[w]->q, (size_t)c->T * Hq * c->D, 10000 + (uint64_t)step);
                }
            }
            lethe_executor *ex = lethe_executor_new(&cpu, 1);
            assert_int_equal(lethe_executor_run(ex, ref.g, NULL, NULL), LETHE_OK);
            memcpy(yr, ref.attn->t.data, n_out * sizeof(float));
            lethe_executor_free(ex);
            cu_plan p;
            fake_dev f;
            assert_true(cu_plan_decode_shaped(emu.g, 0, emu.g->n_nodes));
            plan_of(emu.g, true, &p, &f);
            assert_true(p.capturable);
            check_policy_launches(&p, &emu.kv, emu.attn);
            if (step == 0) {
                cu_plan p0;
                plan_of(emu.g, false, &p0, &f);
                check_policy_launches(&p0, &emu.kv, emu.attn);
                check_plain_vs_bucketed(&p0, &p);
                cu_plan_free(&p0);
            }
            if (frozen && p.key == key) {   /* a replay: the frozen list is the same, byte for byte */
                if (p.n_launches != n_frozen || memcmp(p.launches, frozen, (size_t)n_frozen * sizeof *frozen))
                    fail_msg("%s step %d: same key, a different launch list", c->name, step);
                replays++;
            } else {                         /* a capture */
                free(frozen);
                frozen = malloc((size_t)p.n_launches * sizeof *frozen);
                memcpy(frozen, p.launches, (size_t)p.n_launches * sizeof *frozen);
                n_frozen = p.n_launches;
                key = p.key;
                captures++;
            }
            if (p.up_size > u.cap) {
                u.dev = realloc(u.dev, p.up_size);
                u.host = realloc(u.host, p.up_size);
                u.cap = p.up_size;
            }
            u.size = p.up_size;
            memcpy(u.dev, p.stage, p.stage_size);   /* the graph's first node: the staging copy */
            memset(u.dev + p.stage_size, 0xA5, p.up_size - p.stage_size);   /* device-only areas: garbage */
            memcpy(u.host, p.stage, p.stage_size);
            memset(u.host + p.stage_size, 0x5A, p.up_size - p.stage_size);
            for (size_t j = 0; j < n_out; j++) y[j] = NAN;
            emu_run(frozen, n_frozen, &u, y);
            cu_plan_finish(&p, u.host);   /* after the sync */
            const double e = nmse(yr, y, n_out);
            if (!(e < 1e-10)) fail_msg("%s step %d: attention NMSE %.3g against the CPU", c->name, step, e);
            worst_y = e > worst_y ? e : worst_y;
            if (ref.kv.reads != emu.kv.reads)
                fail_msg("%s step %d: KV reads %llu, the CPU's %llu", c->name, step, (unsigned long long)emu.kv.reads,
                         (unsigned long long)ref.kv.reads);
            for (int sq = 0; sq < 2; sq++)
                for (int h = 0; h < c->Hkv; h++) {
                    const lethe_kv_stream *sr = lethe_kv_stream_at(&ref.kv, sq, KV_LAYER, h);
                    const lethe_kv_stream *se = lethe_kv_stream_at(&emu.kv, sq, KV_LAYER, h);
                    for (int32_t j = 0; ref.kv.score && j < sr->len; j++) {
                        const float a = ref.kv.score[lethe_kv_meta(sr, j)], b = emu.kv.score[lethe_kv_meta(se, j)];
                        const double er = fabs((double)a - b) / (fabs((double)a) + 1e-30);
                        if (a == 0.0f ? b != 0.0f : er > 1e-5)
                            fail_msg("%s step %d: score of (seq %d, head %d) slot %d: CPU %.9g, plan %.9g", c->name,
                                     step, sq, h, j, a, b);
                        if (a != 0.0f && er > worst_score) worst_score = er;
                    }
                    for (int32_t pg = 0; ref.kv.kmin && pg < sr->n_pages; pg++)
                        if (memcmp(ref.kv.kmin + (size_t)sr->pages[pg] * c->D, emu.kv.kmin + (size_t)se->pages[pg] * c->D,
                                   (size_t)c->D * sizeof(float)) ||
                            memcmp(ref.kv.kmax + (size_t)sr->pages[pg] * c->D, emu.kv.kmax + (size_t)se->pages[pg] * c->D,
                                   (size_t)c->D * sizeof(float)))
                            fail_msg("%s step %d: bounds of (seq %d, head %d) page %d differ from the CPU's", c->name,
                                     step, sq, h, pg);
                }
            cu_plan_free(&p);
        }
        lethe_kv_commit(&ref.kv);
        lethe_kv_commit(&emu.kv);
        same_streams(&ref.kv, &emu.kv, c->name, POLICY_STEPS);
        print_message("  %-26s %d steps: %d captured, %d replayed; attention NMSE <= %.3g, scores rel. <= %.3g, "
                      "%llu KV reads, %llu evicted on both\n", c->name, POLICY_STEPS, captures, replays, worst_y,
                      worst_score, (unsigned long long)ref.kv.reads, (unsigned long long)ref.kv.evicted);
        assert_true(replays >= POLICY_STEPS * 3 / 4);
        if (c->rule != LETHE_KV_RULE_QUEST) assert_true(ref.kv.evicted > 0);
        free(frozen);
        free(u.dev);
        free(u.host);
        free(y);
        free(yr);
        kv_built_free(&ref);
        kv_built_free(&emu);
    }
    cpu->iface->free(cpu);
}
#else
static void test_dequant_rows(void **state) {
    (void)state;
    print_message("this build has no CUDA backend: skipped\n");
    skip();
}
static void test_gemv_lanes(void **state) { test_dequant_rows(state); }
static void test_q8_quant(void **state) { test_dequant_rows(state); }
static void test_gemv_new(void **state) { test_dequant_rows(state); }
static void test_kv_store_tables(void **state) { test_dequant_rows(state); }
static void test_attention_paths(void **state) { test_dequant_rows(state); }
static void test_attention_blind(void **state) { test_dequant_rows(state); }
static void test_split_plan(void **state) { test_dequant_rows(state); }
static void test_score_weights(void **state) { test_dequant_rows(state); }
static void test_quest_pages(void **state) { test_dequant_rows(state); }
static void test_top_k(void **state) { test_dequant_rows(state); }
static void test_plan_replay(void **state) { test_dequant_rows(state); }
static void test_plan_prefill(void **state) { test_dequant_rows(state); }
static void test_plan_policies(void **state) { test_dequant_rows(state); }
static void test_plan_gemv(void **state) { test_dequant_rows(state); }
static void test_plan_top_k(void **state) { test_dequant_rows(state); }
static void test_plan_scratch_shared(void **state) { test_dequant_rows(state); }
#endif

/* The KV row-move kernels' lanes (backends/cuda/cuda_kv_move.h: plain C, so
 * it runs here with or without CUDA), emulated chunk by chunk, gather then
 * scatter, each phase's lanes in a scrambled order (a GPU runs them in any),
 * on batches built as kv_cache.c builds them: compactions of streams over
 * random page lists (K then V row of each kept slot, ascending) and a fork's
 * whole pages into free ones. The result must equal the moves done one after
 * another in order, for every word size and several chunk sizes. */
enum { MV_P = 16, MV_PAGES = 40 };

static uint64_t mv_rng(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* A scrambled lane order: g = (k * stride + off) mod lanes, stride coprime to lanes. */
static void mv_order(int64_t lanes, uint64_t *seed, int64_t *stride, int64_t *off) {
    int64_t st = (int64_t)(mv_rng(seed) % 97) + 1;
    for (;; st++) {
        int64_t a = st, b = lanes;
        while (b) {
            const int64_t t = a % b;
            a = b;
            b = t;
        }
        if (a == 1) break;
    }
    *stride = st;
    *off = (int64_t)(mv_rng(seed) % (uint64_t)lanes);
}

/* What a one-phase kernel would do: each lane copies its word straight from
 * source to destination, lanes in a scrambled order. */
static void mv_one_phase(uint8_t *buf, const lethe_row_move *mv, size_t n, size_t row_bytes, uint64_t seed) {
    const int64_t lanes = (int64_t)(n * row_bytes);
    int64_t stride, off;
    mv_order(lanes, &seed, &stride, &off);
    for (int64_t k = 0; k < lanes; k++) {
        const int64_t g = (k * stride + off) % lanes, m = g / (int64_t)row_bytes, w = g % (int64_t)row_bytes;
        buf[mv[m].dst + (size_t)w] = buf[mv[m].src + (size_t)w];
    }
}

static void mv_emulate(uint8_t *buf, const lethe_row_move *mv, size_t n, size_t row_bytes, size_t chunk, uint64_t seed) {
    size_t bits = row_bytes;
    for (size_t i = 0; i < n; i++) bits |= mv[i].src | mv[i].dst;
    const int wb = cu_move_word_bytes(bits);
    assert_int_equal(row_bytes % (size_t)wb, 0);
    const int64_t wpr = (int64_t)(row_bytes / (size_t)wb);
    uint8_t *scratch = malloc(chunk * row_bytes);
    assert_non_null(scratch);
    for (size_t b = 0; b < n; b += chunk) {
        const size_t m = n - b < chunk ? n - b : chunk;
        const int64_t lanes = (int64_t)m * wpr;
        for (int phase = 0; phase < 2; phase++) {
            int64_t stride, off;
            mv_order(lanes, &seed, &stride, &off);
            for (int64_t k = 0; k < lanes; k++) {
                const int64_t g = (k * stride + off) % lanes;
                size_t from, to;
                cu_move_lane(phase, (const size_t *)(mv + b), g, wpr, wb, row_bytes, &from, &to);
                if (phase == 0) {
                    assert_true(from + (size_t)wb <= MV_PAGES * 2 * MV_P * row_bytes && to + (size_t)wb <= m * row_bytes);
                    memcpy(scratch + to, buf + from, (size_t)wb);
                } else {
                    assert_true(to + (size_t)wb <= MV_PAGES * 2 * MV_P * row_bytes && from + (size_t)wb <= m * row_bytes);
                    memcpy(buf + to, scratch + from, (size_t)wb);
                }
            }
        }
    }
    free(scratch);
}

static void mv_sequential(uint8_t *buf, const lethe_row_move *mv, size_t n, size_t row_bytes, bool reversed) {
    for (size_t k = 0; k < n; k++) {
        const size_t i = reversed ? n - 1 - k : k;
        memmove(buf + mv[i].dst, buf + mv[i].src, row_bytes);
    }
}

static void test_kv_move_lanes(void **state) {
    (void)state;
    const size_t rows[] = {4 * 16 * 2, 4 * 8, 6, 3 * 4, 16 * 3};   /* words of 16, 4 and 1 bytes */
    uint64_t r = 0xC0FFEEull;
    int n_order_matters = 0, n_one_phase_wrong = 0;
    for (size_t ri = 0; ri < LETHE_ARRAY_SIZE(rows); ri++) {
        const size_t R = rows[ri], page_bytes = 2 * MV_P * R, bytes = MV_PAGES * page_bytes;
        for (int rep = 0; rep < 6; rep++) {
            /* pages: a random permutation; streams take them in turn */
            int32_t perm[MV_PAGES];
            for (int i = 0; i < MV_PAGES; i++) perm[i] = i;
            for (int i = MV_PAGES - 1; i > 0; i--) {
                const int j = (int)(mv_rng(&r) % (uint64_t)(i + 1));
                const int32_t t = perm[i];
                perm[i] = perm[j];
                perm[j] = t;
            }
            lethe_row_move mv[MV_PAGES * 2 * MV_P];
            size_t n = 0;
            const bool fork = rep % 3 == 2;
            if (fork) {   /* pages 0..14 of perm copied into 20..34 */
                for (int p = 0; p < 15; p++)
                    mv[n++] = (lethe_row_move){(size_t)perm[p] * page_bytes, (size_t)perm[20 + p] * page_bytes};
            } else {      /* 4 streams of 1-8 pages, slots kept with probability 1/2..3/4 */
                int used = 0;
                for (int st = 0; st < 4; st++) {
                    const int np = 1 + (int)(mv_rng(&r) % 8), len = np * MV_P - (int)(mv_rng(&r) % MV_P);
                    const int32_t *pages = perm + used;
                    used += np;
                    int kept = 0;
                    for (int i = 0; i < len; i++) {
                        if (mv_rng(&r) % 4 == 0 || (rep % 3 == 1 && mv_rng(&r) % 2)) continue;   /* dropped */
                        const int to = kept++;
                        if (to == i) continue;
                        const size_t kf = (size_t)pages[i / MV_P] * page_bytes + (size_t)(i % MV_P) * R;
                        const size_t kt = (size_t)pages[to / MV_P] * page_bytes + (size_t)(to % MV_P) * R;
                        mv[n++] = (lethe_row_move){kf, kt};
                        mv[n++] = (lethe_row_move){kf + MV_P * R, kt + MV_P * R};   /* the V row */
                    }
                }
            }
            assert_true(n > 0);
            uint8_t *init = malloc(bytes), *ref = malloc(bytes), *got = malloc(bytes);
            assert_true(init && ref && got);
            for (size_t i = 0; i < bytes; i++) init[i] = (uint8_t)mv_rng(&r);
            memcpy(ref, init, bytes);
            mv_sequential(ref, mv, n, R, false);
            const size_t chunks[] = {cu_move_chunk_rows(R), 1, 3, 7, n};
            for (size_t ci = 0; ci < LETHE_ARRAY_SIZE(chunks); ci++) {
                memcpy(got, init, bytes);
                mv_emulate(got, mv, n, R, chunks[ci], r + ci);
                if (memcmp(got, ref, bytes)) fail_msg("rows %zu, batch %d (%s, %zu moves), chunk %zu: differs", R, rep, fork ? "fork" : "compaction", n, chunks[ci]);
            }
            /* the order is what the oracle checks: a compaction done backwards ends elsewhere */
            memcpy(got, init, bytes);
            mv_sequential(got, mv, n, R, true);
            n_order_matters += !fork && memcmp(got, ref, bytes) != 0;
            /* and one parallel phase would too: why the kernels gather first */
            memcpy(got, init, bytes);
            mv_one_phase(got, mv, n, R, r);
            n_one_phase_wrong += !fork && memcmp(got, ref, bytes) != 0;
            free(init);
            free(ref);
            free(got);
        }
    }
    assert_true(n_order_matters > 0);
    assert_true(n_one_phase_wrong > 0);
    assert_int_equal(cu_move_word_bytes(4 * 16 * 2), 16);
    assert_int_equal(cu_move_word_bytes(4 * 8 | 8), 4);
    assert_int_equal(cu_move_word_bytes(6), 1);
    assert_int_equal(cu_move_chunk_rows(CU_MOVE_CHUNK_BYTES * 2), 1);
}

/* The device weight cache (backends/cuda/cuda_weights.h: plain C, so it
 * runs here with or without CUDA), shared by every backend on a device:
 * random uploads (new addresses, larger views of known ones), lookups and
 * forgotten ranges against a plain list. Every copy must be found while
 * live, dropped exactly once when its range is forgotten (retired copies
 * too) or at the end, and the counts must add up. Device pointers are
 * malloc'd here, so a double drop or a leak shows under ASan/LSan. */
typedef struct ref_weight {
    size_t off, size;
    void *dev;
    int state;   /* 0 gone, 1 live, 2 retired */
} ref_weight;

static uint64_t tu_mix(uint64_t z) {   /* splitmix64's finalizer */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int g_drops;
static void drop_dev(void *dev, size_t size, void *user) {
    (void)size;
    (void)user;
    g_drops++;
    free(dev);
}

static void test_weight_cache(void **state) {
    (void)state;
    enum { ARENA = 1 << 20, N_REF = 20000 };
    static uint8_t arena[ARENA];   /* host "weights": addresses inside it */
    ref_weight *ref = calloc(N_REF, sizeof *ref);
    assert_non_null(ref);
    int n_ref = 0, n_dev = 0;
    cu_wcache w = {0};
    uint64_t s = 0x9E3779B97F4A7C15ull;
#define RND() (s += 0x9E3779B97F4A7C15ull, tu_mix(s))
    for (int step = 0; step < 12000; step++) {
        const uint64_t r = RND() % 100;
        if (r < 80 && n_ref < N_REF) {   /* an upload: absent, or a larger view */
            const size_t off = (size_t)(RND() % 4096) * 64, size = 64 + (size_t)(RND() % 8) * 64;
            const cu_weight *e = cu_wcache_find(&w, arena + off);
            if (e && e->size >= size) continue;   /* cached: lethe_cu_weight uploads nothing */
            void *dev = malloc(1);
            assert_int_equal(cu_wcache_put(&w, arena + off, size, dev), 0);
            n_dev++;
            for (int i = 0; i < n_ref; i++)
                if (ref[i].state == 1 && ref[i].off == off) ref[i].state = 2;
            ref[n_ref++] = (ref_weight){off, size, dev, 1};
        } else if (r < 98) {             /* a lookup of a random known entry */
            if (!n_ref) continue;
            const ref_weight *x = &ref[RND() % (uint64_t)n_ref];
            const cu_weight *e = cu_wcache_find(&w, arena + x->off);
            if (x->state == 1) {
                assert_non_null(e);
                assert_ptr_equal(e->dev, x->dev);
                assert_int_equal(e->size, x->size);
            } else {   /* gone or retired: only a newer live copy of that address may be found */
                const ref_weight *y = NULL;
                for (int i = 0; i < n_ref; i++)
                    if (ref[i].state == 1 && ref[i].off == x->off) y = &ref[i];
                if (y) assert_ptr_equal(e ? e->dev : NULL, y->dev);
                else assert_null(e);
            }
        } else {                         /* a model freed: a range forgotten */
            const size_t lo = (size_t)(RND() % ARENA), len = 1 + (size_t)(RND() % 16384);
            const size_t hi = lo + len > ARENA ? ARENA : lo + len;
            int want = 0;
            for (int i = 0; i < n_ref; i++)
                if (ref[i].state && ref[i].off < hi && ref[i].off + ref[i].size > lo) {
                    ref[i].state = 0;
                    want++;
                }
            const int before = g_drops;
            assert_int_equal(cu_wcache_forget(&w, arena + lo, hi - lo, drop_dev, NULL), want);
            assert_int_equal(g_drops - before, want);
        }
    }
#undef RND
    size_t live = 0, live_bytes = 0, all_bytes = 0, retired = 0;
    for (int i = 0; i < n_ref; i++) {
        if (ref[i].state == 1) {
            live++;
            live_bytes += ref[i].size;
            const cu_weight *e = cu_wcache_find(&w, arena + ref[i].off);
            assert_non_null(e);
            assert_ptr_equal(e->dev, ref[i].dev);
        }
        retired += ref[i].state == 2;
        if (ref[i].state) all_bytes += ref[i].size;
        if (!ref[i].state) {   /* forgotten: not found, unless uploaded again since */
            bool again = false;
            for (int j = i + 1; j < n_ref; j++) again |= ref[j].state == 1 && ref[j].off == ref[i].off;
            if (!again) assert_null(cu_wcache_find(&w, arena + ref[i].off));
        }
    }
    size_t n, bytes;
    cu_wcache_count(&w, NULL, 0, &n, &bytes);
    assert_int_equal(n, live);
    assert_int_equal(bytes, live_bytes);
    assert_int_equal(w.n, live);
    assert_int_equal(w.n_retired, retired);
    assert_int_equal(w.bytes, all_bytes);
    assert_int_equal(w.uploads, (uint64_t)n_dev);
    print_message("  %d uploads, %zu live (%zu retired) after %d dropped by forgotten ranges; table of %zu slots\n",
                  n_dev, live, retired, g_drops, w.cap);
    assert_true(w.cap > 1024);   /* it grew: rehashing ran */
    assert_true(g_drops > 0);    /* forgetting ran, deletions shifted runs */
    assert_true(retired > 0);    /* larger views retired copies, kept until forgotten */
    cu_wcache_free(&w, drop_dev, NULL);
    assert_int_equal(g_drops, n_dev);   /* every copy dropped exactly once */
    free(ref);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weight_cache),
        cmocka_unit_test(test_kv_move_lanes),
        cmocka_unit_test(test_dequant_rows),
        cmocka_unit_test(test_gemv_lanes),
        cmocka_unit_test(test_q8_quant),
        cmocka_unit_test(test_gemv_new),
        cmocka_unit_test(test_kv_store_tables),
        cmocka_unit_test(test_attention_paths),
        cmocka_unit_test(test_attention_blind),
        cmocka_unit_test(test_split_plan),
        cmocka_unit_test(test_score_weights),
        cmocka_unit_test(test_quest_pages),
        cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_plan_replay),
        cmocka_unit_test(test_plan_prefill),
        cmocka_unit_test(test_plan_gemv),
        cmocka_unit_test(test_plan_scratch_shared),
        cmocka_unit_test(test_plan_top_k),
        cmocka_unit_test(test_plan_policies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
