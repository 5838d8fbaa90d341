/* test_cuda_host_policy.c — the score policies' device steps, compiled for
 * the host (backends/cuda/hostcheck/k_hostcheck.cu), against the CPU
 * backend without a GPU: TOVA / H2O softmax weights (normalized after the
 * split-K combine or in the tiled kernel) folded into the CPU's kv->score,
 * the attention output unchanged by writing them, and the same evictions
 * after the commit; QUEST's page bounds, the pages each (token, KV head)
 * reads (a tie included), its KV reads and the decode kernel over the
 * chosen pages. Builds without CUDA skip with a message.
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
                const size_t Hq = (size_t)c->Hkv * c->G, n_out = (size_t)c->T * Hq * c->D;
                float *yr = malloc(n_out * sizeof(float)), *y = malloc(n_out * sizeof(float));
                lethe_executor *ex = lethe_executor_new(&cpu, 1);
                assert_int_equal(lethe_executor_run(ex, ref.g, NULL, NULL), LETHE_OK);
                memcpy(yr, ref.attn->t.data, n_out * sizeof(float));   /* the output lives in the executor's memory */
                lethe_executor_free(ex);
                lethe_cu_kv_view view;
                emu_store(&emu, c, &view);
                cu_attn_plan plan;
                char err[160];
                assert_int_equal(cu_attn_plan_build(emu.attn, c->G, path == 1, &plan, err, sizeof err), LETHE_OK);
                if (!plan.decode && ti > 0) {
                    free(yr);
                    free(y);
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
                float *w = malloc((size_t)c->T * Hq * (size_t)stride * sizeof(float));
                for (size_t j = 0; j < n_out; j++) y[j] = NAN;   /* poison: every output written */
                assert_int_equal(lethe_cu_host_attention(&view, emu.q, y, plan.work, plan.n_blocks, plan.decode,
                                                         plan.plists, emu.pos, c->Hkv, c->G, 1.0f / sqrtf((float)c->D),
                                                         chunk, n_split, cap, w, stride), 0);
                /* writing the weights leaves the output the CPU's */
                const double e = tu_nmse(yr, y, n_out);
                if (!(e < 1e-10)) fail_msg("%s: attention output NMSE %.3g against the CPU with the weights on", c->name, e);
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
                free(yr);
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
            const double e = tu_nmse(yr, y, n_out);
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
#else
static void test_score_weights(void **state) {
    (void)state;
    print_message("this build has no CUDA backend: skipped\n");
    skip();
}
static void test_quest_pages(void **state) { test_score_weights(state); }
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_score_weights),
        cmocka_unit_test(test_quest_pages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
