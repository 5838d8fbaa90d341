/* test_cuda_host_plan.c — the CUDA module's launch plan (cuda_plan.c,
 * built here with fake device addresses, cuda_host_util.h), without a GPU:
 * replay stability of decode steps (CUDA graphs: the same launch list while
 * the buckets hold, only the staging bytes move), the staged tables against
 * the module's helpers, the plain and bucketed plans, prefill's plan
 * (cuBLAS, tiled attention, not capturable), the decode GEMV's variant and
 * activation scratch, TOP_K's launch, and the one scratch the plan shares
 * between attention, GEMV and TOP_K. Builds without CUDA skip with a
 * message.
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
#include "cuda_host_util.h"
#include "cuda_topk.h"
#include "dtype.h"
#include "rope_freq.h"

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
#else
static void test_plan_replay(void **state) {
    (void)state;
    print_message("this build has no CUDA backend: skipped\n");
    skip();
}
static void test_plan_prefill(void **state) { test_plan_replay(state); }
static void test_plan_gemv(void **state) { test_plan_replay(state); }
static void test_plan_scratch_shared(void **state) { test_plan_replay(state); }
static void test_plan_top_k(void **state) { test_plan_replay(state); }
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_replay),
        cmocka_unit_test(test_plan_prefill),
        cmocka_unit_test(test_plan_gemv),
        cmocka_unit_test(test_plan_scratch_shared),
        cmocka_unit_test(test_plan_top_k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
