/* test_cuda_host_attn.c — the CUDA KV_STORE and ATTENTION kernels' steps
 * (cuda_kv_meta.h's tables, cuda_attn.cuh: slot addressing, visibility,
 * online softmax, split-K combine), compiled for the host by
 * backends/cuda/hostcheck/k_hostcheck.cu, against the CPU backend without a
 * GPU: KV_STORE's cache bit for bit (rows and DMS expiries, from the
 * module's own tables), and ATTENTION on both kernel paths (flash-decoding
 * with 1..many spans, tiled prefill) within f32 rounding, on caches with
 * ragged per-head lengths, holes, a compaction and expiries, a stream no
 * query may see, and from a launch plan's own staging bytes; the split
 * plan's spans. Builds without CUDA skip with a message.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "testutil.h"

#ifdef LETHE_HAVE_CUDA
#include "cuda_host_util.h"
#include "executor.h"

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

/* Every slot of stream (seq 1, KV_LAYER, KV head 0) invisible to every
 * query (expire 0), the token's own new slot included: its queries see
 * nothing, the softmax denominator is 0 on every path. */
static void kv_blind(kv_built *b) {
    const lethe_kv_stream *s = lethe_kv_stream_at(&b->kv, 1, KV_LAYER, 0);
    for (int32_t j = 0; j < s->len; j++) *lethe_kv_expire(&b->kv, s, j) = 0;
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
    const double e = tu_nmse(yr, y, n_out);
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
        assert_int_equal(lethe_cu_host_kv_store(&view, emu.k, emu.v, c->dms ? emu.dec : NULL, rows, (int64_t)n_rows), 0);
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
                const double e = tu_nmse(yr, y, n_out);
                print_message("  %-28s %s, %3d span(s) of %4d, grid %3d: NMSE %.3g\n", c->name,
                              plan.decode ? "decode" : "tiled ", n_split, chunk, cap, e);
                if (!(e < 1e-10)) {
                    for (size_t r = 0; r < n_out / (size_t)c->D; r++) {
                        const double er = tu_nmse(yr + r * (size_t)c->D, y + r * (size_t)c->D, (size_t)c->D);
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
#else
static void test_kv_store_tables(void **state) {
    (void)state;
    print_message("this build has no CUDA backend: skipped\n");
    skip();
}
static void test_attention_paths(void **state) { test_kv_store_tables(state); }
static void test_attention_blind(void **state) { test_kv_store_tables(state); }
static void test_split_plan(void **state) { test_kv_store_tables(state); }
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_store_tables),
        cmocka_unit_test(test_attention_paths),
        cmocka_unit_test(test_attention_blind),
        cmocka_unit_test(test_split_plan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
