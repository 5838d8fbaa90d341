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
 * caches with ragged per-head lengths, holes, a compaction and expiries.
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

#include "common.h"
#include "dtype.h"
#include "testutil.h"

#ifdef LETHE_HAVE_CUDA
#include "backend.h"
#include "cuda_kv_meta.h"
#include "cuda_topk.h"
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

int lethe_cu_host_kv_store(const lethe_cu_kv_view *kv, const float *k, const float *v, const float *dec,
                           const lethe_cu_kv_row *rows, int64_t n_rows);
int lethe_cu_host_attention(const lethe_cu_kv_view *kv, const float *q, float *out, const lethe_cu_attn_work *work,
                            int n_blocks, int decode, const int32_t *plists, const int32_t *qpos, int Hkv, int G,
                            float scale, int chunk, int n_split);

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

static void kv_build(const kv_case *c, kv_built *b, uint64_t seed) {
    memset(b, 0, sizeof *b);
    lethe_kv_policy pol = {.rule = LETHE_KV_RULE_DMS, .window = KV_W};
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
    {"decode f16 G=4 D=128 long", 2, 2, 128, 4, 1500, true, false, true},
    {"decode f32 G=8 D=64", 3, 2, 64, 8, 700, false, false, true},
    {"decode f16 G=1 D=256", 2, 3, 256, 1, 300, true, false, false},
    {"decode f32 G=2 D=32", 4, 2, 32, 2, 130, false, false, true},
    {"prefill f16 G=3 D=64 runs", 40, 3, 64, 3, 300, true, true, true},
    {"prefill f32 G=1 D=256 runs", 20, 2, 256, 1, 100, false, true, false},
    {"prefill f16 G=2 D=32 runs", 33, 2, 32, 2, 37, true, true, true},
    {"prefill f16 G=8 D=128 runs", 12, 1, 128, 8, 64, true, true, true},
    {"short f32 G=4 D=64", 5, 3, 64, 4, 37, false, false, true},
    {"decode f16 G=5 D=128", 4, 2, 128, 5, 600, true, false, true},
    {"prefill f32 G=6 D=64 runs", 20, 2, 64, 6, 90, false, true, true},
    {"prefill f16 G=4 D=128 long", 24, 2, 128, 4, 1100, true, true, true},
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
                                       c->f16, c->D};
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
                                       c->f16, c->D};
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
                for (size_t j = 0; j < n_out; j++) y[j] = NAN;   /* poison: every output written */
                assert_int_equal(lethe_cu_host_attention(&view, emu.q, y, plan.work, plan.n_blocks, plan.decode,
                                                         plan.plists, emu.pos, c->Hkv, c->G,
                                                         1.0f / sqrtf((float)c->D), chunk, n_split), 0);
                const double e = nmse(yr, y, n_out);
                print_message("  %-28s %s, %3d span(s) of %4d: NMSE %.3g\n", c->name,
                              plan.decode ? "decode" : "tiled ", n_split, chunk, e);
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
            cu_attn_plan_free(&plan);
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
#else
static void test_dequant_rows(void **state) {
    (void)state;
    print_message("this build has no CUDA backend: skipped\n");
    skip();
}
static void test_gemv_lanes(void **state) { test_dequant_rows(state); }
static void test_kv_store_tables(void **state) { test_dequant_rows(state); }
static void test_attention_paths(void **state) { test_dequant_rows(state); }
static void test_attention_blind(void **state) { test_dequant_rows(state); }
static void test_split_plan(void **state) { test_dequant_rows(state); }
static void test_top_k(void **state) { test_dequant_rows(state); }
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequant_rows),
        cmocka_unit_test(test_gemv_lanes),
        cmocka_unit_test(test_kv_store_tables),
        cmocka_unit_test(test_attention_paths),
        cmocka_unit_test(test_attention_blind),
        cmocka_unit_test(test_split_plan),
        cmocka_unit_test(test_top_k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
