/* graph.c — op names and node constructors. Constructors check shapes and
 * record the node; they never compute. A failed check makes the graph's
 * status sticky and returns NULL; constructors given a NULL source return
 * NULL too, so a builder checks g->status once at the end. */
#include "graph.h"
#include "common.h"

#include <math.h>
#include <string.h>

static const char *const k_op_names[] = {
    [LETHE_OP_NONE] = "none",
    [LETHE_OP_GET_ROWS] = "get_rows",
    [LETHE_OP_RMS_NORM] = "rms_norm",
    [LETHE_OP_MATMUL] = "matmul",
    [LETHE_OP_ADD] = "add",
    [LETHE_OP_MUL] = "mul",
    [LETHE_OP_ROPE] = "rope",
    [LETHE_OP_SWIGLU] = "swiglu",
    [LETHE_OP_KV_STORE] = "kv_store",
    [LETHE_OP_ATTENTION] = "attention",
    [LETHE_OP_DMS_DECISION] = "dms_decision",
    [LETHE_OP_TOP_K] = "top_k",
};
_Static_assert(LETHE_ARRAY_SIZE(k_op_names) == LETHE_OP_COUNT, "every op needs a name");

const char *lethe_op_name(lethe_op op) {
    return (unsigned)op < LETHE_OP_COUNT ? k_op_names[op] : "?";
}

lethe_graph *lethe_graph_new(int cap) {
    lethe_graph *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->nodes = calloc((size_t)cap, sizeof *g->nodes);
    if (!g->nodes) { free(g); return NULL; }
    g->cap = cap;
    return g;
}

void lethe_graph_free(lethe_graph *g) {
    if (!g) return;
    free(g->nodes);
    free(g);
}

void lethe_graph_reset(lethe_graph *g) {
    g->n_nodes = 0;
    g->status = LETHE_OK;
}

static lethe_node *graph_err(lethe_graph *g, lethe_status s, const char *what) {
    if (g->status == LETHE_OK) g->status = lethe_fail(s, "graph: %s", what);
    return NULL;
}

/* A new node producing a contiguous tensor of `type` and shape ne[0..n_dims). */
static lethe_node *new_node(lethe_graph *g, lethe_op op, lethe_dtype type, int n_dims,
                            const int64_t *ne) {
    if (g->status != LETHE_OK) return NULL;
    if (g->n_nodes >= g->cap) return graph_err(g, LETHE_ERR_INTERNAL, "node capacity exceeded");
    lethe_node *n = &g->nodes[g->n_nodes++];
    memset(n, 0, sizeof *n);
    n->op = op;
    lethe_tensor_init(&n->t, type, n_dims, ne);
    snprintf(n->t.name, sizeof n->t.name, "%s#%d", lethe_op_name(op), g->n_nodes - 1);
    n->last_use = -1;
    return n;
}

lethe_node *lethe_leaf(lethe_graph *g, const lethe_tensor *t) {
    if (g->status != LETHE_OK) return NULL;
    if (g->n_nodes >= g->cap) return graph_err(g, LETHE_ERR_INTERNAL, "node capacity exceeded");
    lethe_node *n = &g->nodes[g->n_nodes++];
    memset(n, 0, sizeof *n);
    n->op = LETHE_OP_NONE;
    n->t = *t;
    n->last_use = -1;
    return n;
}

lethe_node *lethe_input(lethe_graph *g, lethe_dtype type, int n_dims, const int64_t *ne,
                        void *data, const char *name) {
    lethe_node *n = new_node(g, LETHE_OP_NONE, type, n_dims, ne);
    if (!n) return NULL;
    n->t.data = data;
    n->is_input = true;
    snprintf(n->t.name, sizeof n->t.name, "%s", name);
    return n;
}

#define NEED(x) do { if (!(x)) return NULL; } while (0)
#define CHECK(g, cond, msg) do { if (!(cond)) return graph_err(g, LETHE_ERR_SHAPE, msg); } while (0)

lethe_node *lethe_get_rows(lethe_graph *g, lethe_node *w, lethe_node *ids) {
    NEED(w && ids);
    CHECK(g, ids->t.type == LETHE_I32 && ids->t.ne[1] == 1, "get_rows: ids must be an i32 vector");
    CHECK(g, w->t.ne[2] == 1 && w->t.ne[3] == 1, "get_rows: w must be 2-D");
    int64_t ne[2] = {w->t.ne[0], ids->t.ne[0]};
    lethe_node *n = new_node(g, LETHE_OP_GET_ROWS, LETHE_F32, 2, ne);
    NEED(n);
    n->src[0] = w;
    n->src[1] = ids;
    return n;
}

lethe_node *lethe_rms_norm(lethe_graph *g, lethe_node *x, lethe_node *w, float eps) {
    NEED(x);
    CHECK(g, x->t.type == LETHE_F32, "rms_norm: x must be f32");
    CHECK(g, !w || (w->t.type == LETHE_F32 && w->t.ne[0] == x->t.ne[0] &&
                    lethe_tensor_nrows(&w->t) == 1), "rms_norm: weight must be f32 [E]");
    lethe_node *n = new_node(g, LETHE_OP_RMS_NORM, LETHE_F32, 4, x->t.ne);
    NEED(n);
    n->src[0] = x;
    n->src[1] = w;
    n->fparams[0] = eps;
    return n;
}

lethe_node *lethe_matmul(lethe_graph *g, lethe_node *w, lethe_node *x) {
    NEED(w && x);
    CHECK(g, x->t.type == LETHE_F32, "matmul: x must be f32");
    CHECK(g, w->t.ne[0] == x->t.ne[0], "matmul: inner dimensions differ");
    CHECK(g, w->t.ne[2] == 1 && w->t.ne[3] == 1, "matmul: w must be 2-D");
    int64_t ne[2] = {w->t.ne[1], lethe_tensor_nrows(&x->t)};
    lethe_node *n = new_node(g, LETHE_OP_MATMUL, LETHE_F32, 2, ne);
    NEED(n);
    n->src[0] = w;
    n->src[1] = x;
    return n;
}

static lethe_node *binary(lethe_graph *g, lethe_op op, lethe_node *a, lethe_node *b) {
    NEED(a && b);
    CHECK(g, a->t.type == LETHE_F32 && b->t.type == LETHE_F32, "add/mul: operands must be f32");
    CHECK(g, a->t.ne[0] == b->t.ne[0], "add/mul: row lengths differ");
    int64_t rb = lethe_tensor_nrows(&b->t);
    CHECK(g, rb == 1 || rb == lethe_tensor_nrows(&a->t), "add/mul: b must have 1 row or as many as a");
    lethe_node *n = new_node(g, op, LETHE_F32, 4, a->t.ne);
    NEED(n);
    n->src[0] = a;
    n->src[1] = b;
    return n;
}

lethe_node *lethe_add(lethe_graph *g, lethe_node *a, lethe_node *b) { return binary(g, LETHE_OP_ADD, a, b); }
lethe_node *lethe_mul(lethe_graph *g, lethe_node *a, lethe_node *b) { return binary(g, LETHE_OP_MUL, a, b); }

lethe_node *lethe_rope(lethe_graph *g, lethe_node *x, const lethe_rope_params *p,
                       const lethe_ubatch *ub) {
    NEED(x);
    CHECK(g, x->t.type == LETHE_F32, "rope: x must be f32");
    CHECK(g, p->n_rot > 0 && p->n_rot <= x->t.ne[0] && p->n_rot % 2 == 0, "rope: bad n_rot");
    CHECK(g, x->t.ne[2] == ub->n_tokens, "rope: x must be [T, H, D]");
    lethe_node *n = new_node(g, LETHE_OP_ROPE, LETHE_F32, 4, x->t.ne);
    NEED(n);
    n->src[0] = x;
    n->rope = *p;
    n->ub = ub;
    return n;
}

lethe_node *lethe_rope_borrow(lethe_graph *g, lethe_node *x, const lethe_rope_params *p,
                              const lethe_ubatch *ub, int group) {
    NEED(x);
    CHECK(g, group > 0 && x->t.ne[1] % group == 0, "rope: borrow group must divide the head count");
    lethe_node *n = lethe_rope(g, x, p, ub);
    NEED(n);
    n->iparams[0] = group;
    return n;
}

lethe_node *lethe_dms_decision(lethe_graph *g, lethe_node *x, lethe_dms_mode mode, int n_head_kv,
                               int group, bool per_layer, float scale, float offset, float rate,
                               int layer, const lethe_ubatch *ub) {
    CHECK(g, n_head_kv > 0 && group > 0, "dms_decision: bad head counts");
    switch (mode) {
    case LETHE_DMS_FROM_Q:
        NEED(x);
        CHECK(g, x->t.type == LETHE_F32 && x->t.ne[2] == ub->n_tokens && x->t.ne[1] == (int64_t)n_head_kv * group,
              "dms_decision: q must be [T, Hkv*G, D]");
        break;
    case LETHE_DMS_FROM_ADAPTER:
        NEED(x);
        CHECK(g, x->t.type == LETHE_F32 && x->t.ne[1] == ub->n_tokens &&
                 (x->t.ne[0] == n_head_kv || x->t.ne[0] == 1),
              "dms_decision: adapter projections must be [T, Hkv] or [T, 1]");
        break;
    case LETHE_DMS_FORCED:
        CHECK(g, rate >= 0.0f && rate <= 1.0f, "dms_decision: forced rate must be in [0, 1]");
        break;
    default:
        CHECK(g, false, "dms_decision: unknown mode");
    }
    CHECK(g, isfinite(scale) && isfinite(offset), "dms_decision: scale and offset must be finite");
    int64_t ne[2] = {n_head_kv, ub->n_tokens};
    lethe_node *n = new_node(g, LETHE_OP_DMS_DECISION, LETHE_F32, 2, ne);
    NEED(n);
    n->src[0] = x;
    n->ub = ub;
    n->iparams[0] = (int32_t)mode;
    n->iparams[1] = n_head_kv;
    n->iparams[2] = group;
    n->iparams[3] = per_layer;
    n->iparams[4] = layer;
    n->fparams[0] = scale;
    n->fparams[1] = offset;
    n->fparams[2] = rate;
    return n;
}

lethe_node *lethe_swiglu(lethe_graph *g, lethe_node *gate, lethe_node *up) {
    NEED(gate && up);
    CHECK(g, gate->t.type == LETHE_F32 && up->t.type == LETHE_F32, "swiglu: f32 only");
    CHECK(g, lethe_tensor_nelements(&gate->t) == lethe_tensor_nelements(&up->t) &&
             gate->t.ne[0] == up->t.ne[0], "swiglu: shapes differ");
    lethe_node *n = new_node(g, LETHE_OP_SWIGLU, LETHE_F32, 4, gate->t.ne);
    NEED(n);
    n->src[0] = gate;
    n->src[1] = up;
    return n;
}

lethe_node *lethe_kv_store(lethe_graph *g, struct lethe_kv_cache *kv, int layer,
                           lethe_node *k, lethe_node *v, lethe_node *decision,
                           const lethe_ubatch *ub) {
    NEED(k && v);
    CHECK(g, !decision || (decision->op == LETHE_OP_DMS_DECISION && decision->t.ne[0] == k->t.ne[1] &&
                           decision->t.ne[1] == ub->n_tokens),
          "kv_store: decision must be a [T, Hkv] dms_decision node");
    CHECK(g, k->t.type == LETHE_F32 && v->t.type == LETHE_F32, "kv_store: f32 only");
    CHECK(g, k->t.ne[2] == ub->n_tokens && v->t.ne[2] == ub->n_tokens &&
             k->t.ne[0] == v->t.ne[0] && k->t.ne[1] == v->t.ne[1], "kv_store: k, v must be [T, Hkv, D]");
    int64_t ne[1] = {1};
    lethe_node *n = new_node(g, LETHE_OP_KV_STORE, LETHE_F32, 1, ne);
    NEED(n);
    n->src[0] = k;
    n->src[1] = v;
    n->src[2] = decision;
    n->kv = kv;
    n->ub = ub;
    n->iparams[0] = layer;
    return n;
}

lethe_node *lethe_attention(lethe_graph *g, struct lethe_kv_cache *kv, int layer,
                            lethe_node *q, lethe_node *kv_store, float scale,
                            const lethe_ubatch *ub) {
    NEED(q && kv_store);
    CHECK(g, q->t.type == LETHE_F32 && q->t.ne[2] == ub->n_tokens, "attention: q must be [T, Hq, D]");
    CHECK(g, kv_store->op == LETHE_OP_KV_STORE, "attention: src[1] must be the kv_store node");
    CHECK(g, kv_store->src[0]->t.ne[0] == q->t.ne[0], "attention: head dims differ");
    CHECK(g, q->t.ne[1] % kv_store->src[0]->t.ne[1] == 0, "attention: Hq must be a multiple of Hkv");
    int64_t ne[2] = {q->t.ne[0] * q->t.ne[1], q->t.ne[2]};
    lethe_node *n = new_node(g, LETHE_OP_ATTENTION, LETHE_F32, 2, ne);
    NEED(n);
    n->src[0] = q;
    n->src[1] = kv_store;
    n->kv = kv;
    n->ub = ub;
    n->iparams[0] = layer;
    n->fparams[0] = scale;
    return n;
}

lethe_node *lethe_top_k(lethe_graph *g, lethe_node *x, int k) {
    NEED(x);
    CHECK(g, x->t.type == LETHE_F32 && lethe_tensor_is_contiguous(&x->t), "top_k: x must be contiguous f32 [T, V]");
    const int64_t V = x->t.ne[0], T = lethe_tensor_nrows(&x->t);
    CHECK(g, k >= 1 && k <= LETHE_TOP_K_MAX && k <= V && V <= INT32_MAX, "top_k: k must be in [1, min(V, 256)]");
    int64_t ne[3] = {2, k, T};
    lethe_node *n = new_node(g, LETHE_OP_TOP_K, LETHE_I32, 3, ne);
    NEED(n);
    n->src[0] = x;
    n->iparams[0] = k;
    return n;
}

lethe_node *lethe_reshape(lethe_graph *g, lethe_node *n, int n_dims, const int64_t *ne) {
    NEED(n);
    int64_t count = 1;
    for (int i = 0; i < n_dims; i++) count *= ne[i];
    CHECK(g, count == lethe_tensor_nelements(&n->t), "reshape: element count differs");
    CHECK(g, lethe_tensor_is_contiguous(&n->t) && !lethe_dtype_get(n->t.type)->quantized,
          "reshape: source must be contiguous and not quantized");
    void *data = n->t.data;
    struct lethe_buffer *buf = n->t.buf;
    size_t offs = n->t.offs;
    char name[sizeof n->t.name];
    memcpy(name, n->t.name, sizeof name);
    lethe_tensor_init(&n->t, n->t.type, n_dims, ne);
    n->t.data = data;
    n->t.buf = buf;
    n->t.offs = offs;
    memcpy(n->t.name, name, sizeof name);
    return n;
}

void lethe_set_output(lethe_node *n) {
    if (n) n->is_output = true;
}
