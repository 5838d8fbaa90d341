/* cuda_host_util.c — the test_cuda_host_* tests' shared set-up (cuda_host_util.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_host_util.h"
#include "common.h"
#include "testutil.h"

void kv_build(const kv_case *c, kv_built *b, uint64_t seed) {
    memset(b, 0, sizeof *b);
    const tu_kv_spec spec = {.T = c->T, .Hkv = c->Hkv, .D = c->D, .hist = c->hist, .f16 = c->f16, .runs = c->runs,
                             .tie = c->tie, .rule = c->rule, .budget = c->budget,
                             .pages = (size_t)4 * c->Hkv * ((size_t)(c->hist + c->T) / LETHE_KV_PAGE + 4) + 16};
    tu_kv_setup(&b->kv, &spec, NULL, seed, b->seq, b->pos);
    b->ub = (lethe_ubatch){c->T, b->seq, b->pos};
    lethe_kv_cache *kv = &b->kv;
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

void kv_built_free(kv_built *b) {
    lethe_graph_free(b->g);
    lethe_kv_free(&b->kv);
    free(b->k);
    free(b->v);
    free(b->q);
    free(b->dec);
}

/* The launch plan with a fake device (cuda_host_util.h): node addresses from
 * the node's index, scratch and the error flag at fixed addresses. */
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

void plan_of_gemv(lethe_graph *g, bool bucketed, cu_plan *p, fake_dev *f, int variant,
                  size_t (*act)(int, int64_t, int64_t, int)) {
    memset(f, 0, sizeof *f);
    f->g = g;
    const cu_plan_env env = {f, &k_fake_backend, 132, 0x300000000000ull, fake_resolve, fake_scratch, fake_kv_prepare,
                             variant, act, 0, 0};
    char err[200];
    const int rc = cu_plan_build(p, &env, g, 0, g->n_nodes, bucketed, err, sizeof err);
    if (rc != LETHE_OK) fail_msg("cu_plan_build: %d %s", rc, err);
}

void plan_of(lethe_graph *g, bool bucketed, cu_plan *p, fake_dev *f) {
    memset(f, 0, sizeof *f);
    f->g = g;
    /* the step graphs' weights are f32: no GEMV activation scratch (gemv_act_bytes NULL) */
    const cu_plan_env env = {f, &k_fake_backend, 132, 0x300000000000ull, fake_resolve, fake_scratch, fake_kv_prepare,
                             LETHE_CU_GEMV_NEW, NULL, 0, 0};
    char err[200];
    const int rc = cu_plan_build(p, &env, g, 0, g->n_nodes, bucketed, err, sizeof err);
    if (rc != LETHE_OK) fail_msg("cu_plan_build: %d %s", rc, err);
}

/* The staging region at offset `off` of a launch argument. */
const cu_region *region_at(const cu_plan *p, uint64_t off) {
    for (int r = 0; r < p->n_regions; r++)
        if (p->regions[r].off == off) return &p->regions[r];
    fail_msg("no staging region at offset %llu", (unsigned long long)off);
    return NULL;
}

const cu_launch *launch_of(const cu_plan *p, int kind, int nth) {
    for (int k = 0; k < p->n_launches; k++)
        if (p->launches[k].kind == kind && nth-- == 0) return &p->launches[k];
    return NULL;
}

/* Staged argument s of launch l: its bytes in the plan's staging buffer. */
const void *staged(const cu_plan *p, const cu_launch *l, int s, int kind) {
    if (!l) fail_msg("no such launch in the plan");
    if (!((l->staged >> s) & 1u)) fail_msg("launch %d argument %d is not staged", l->kind, s);
    const cu_region *r = region_at(p, l->p[s]);
    assert_int_equal(r->kind, kind);
    return p->stage + r->off;
}

/* Decode steps: evictions (DMS flags), holes, growth, then a decode token
 * (the commit first: the step before's policy evictions). */
void kv_advance(kv_built *b, int step) {
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

void check_plain_vs_bucketed(const cu_plan *p0, const cu_plan *p1) {
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

