/* test_cuda_host_plan_policy.c — score-policy decode steps (TOVA, H2O,
 * QUEST) run from the CUDA module's launch plan (cuda_plan.c, fake device
 * addresses) launch by launch on the host (the kernels' host steps,
 * backends/cuda/hostcheck/k_hostcheck.cu), from a frozen ("captured")
 * launch list, against the CPU backend over many evicting steps. Builds
 * without CUDA skip with a message.
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
            const double e = tu_nmse(yr, y, n_out);
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
static void test_plan_policies(void **state) {
    (void)state;
    print_message("this build has no CUDA backend: skipped\n");
    skip();
}
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_policies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
