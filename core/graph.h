/* graph.h — the op graph.
 *
 * A graph is a list of nodes in execution order; every node is the tensor it
 * produces plus the op and sources that produce it. Constructors only build
 * nodes and check shapes; they never compute. Backends execute nodes
 * (backend.h); the executor (executor.h) places them and plans memory.
 *
 * Shapes below are written outermost-first in [brackets] as a reader thinks
 * of them, i.e. [T, D] is ne = {D, T}: T rows of D contiguous elements.
 * Legend: T tokens in the micro-batch, E embedding width (n_embd),
 * F FFN width, V vocabulary, Hq query heads, Hkv KV heads, D head dim,
 * R rows selected.
 */
#ifndef LETHE_GRAPH_H
#define LETHE_GRAPH_H

#include "tensor.h"
#include "lethe.h"

typedef enum lethe_op {
    LETHE_OP_NONE = 0,     /* a leaf: weight or input, data set by the caller  */
    LETHE_OP_GET_ROWS,     /* row gather (+ dequantize)                        */
    LETHE_OP_RMS_NORM,     /* RMS normalisation times a weight                 */
    LETHE_OP_MATMUL,       /* weights of any dtype x f32 activations           */
    LETHE_OP_ADD,          /* element-wise sum, b broadcast over rows          */
    LETHE_OP_MUL,          /* element-wise product, b broadcast over rows      */
    LETHE_OP_ROPE,         /* rotary position embedding                        */
    LETHE_OP_SWIGLU,       /* silu(gate) * up                                  */
    LETHE_OP_KV_STORE,     /* write K and V rows into the per-head KV cache    */
    LETHE_OP_ATTENTION,    /* attention of queries over the per-head KV cache  */
    LETHE_OP_DMS_DECISION, /* DMS eviction logits per token and KV head        */
    LETHE_OP_TOP_K,        /* per row the k largest (id, value) pairs, sorted  */
    LETHE_OP_COUNT
} lethe_op;

/* Name of an op ("matmul"); the table is checked against LETHE_OP_COUNT. */
const char *lethe_op_name(lethe_op op);

#define LETHE_MAX_SRC 4

/* RoPE flavours: NORM rotates adjacent pairs (x[2i], x[2i+1]) — GGUF llama,
 * whose Q/K weights were permuted at conversion; NEOX rotates (x[i], x[i+D/2])
 * — Hugging Face layout, GGUF qwen2/qwen3. */
typedef enum lethe_rope_mode { LETHE_ROPE_NORM = 0, LETHE_ROPE_NEOX = 1 } lethe_rope_mode;

typedef struct lethe_rope_params {
    lethe_rope_mode mode;
    int32_t n_rot;            /* rotated dims (== D for supported models)        */
    float freq_base;          /* theta, e.g. 10000 or 500000                     */
    float freq_scale;         /* 1 / linear scaling factor (1.0: none)           */
    /* Llama 3 "rope_type: llama3" frequency scaling (factor 0: off). */
    float llama3_factor, llama3_low_freq_factor, llama3_high_freq_factor;
    int32_t llama3_orig_ctx;
    /* Per-frequency divisors [n_rot/2] (GGUF `rope_freqs.weight`, which is how
     * llama.cpp's converter stores Llama 3 scaling): theta_i /= freq_factors[i].
     * NULL: none. */
    const float *freq_factors;
} lethe_rope_params;

/* Per-token metadata of the micro-batch being computed; owned by the engine,
 * valid while the graph runs. */
typedef struct lethe_ubatch {
    int32_t n_tokens;
    const int32_t *seq_id;    /* [T] */
    const int32_t *pos;       /* [T] absolute positions */
} lethe_ubatch;

struct lethe_kv_cache;

typedef struct lethe_node {
    lethe_tensor t;                      /* the result (or the leaf)              */
    lethe_op op;
    struct lethe_node *src[LETHE_MAX_SRC];
    int32_t iparams[8];
    float fparams[8];
    lethe_rope_params rope;              /* LETHE_OP_ROPE                         */
    struct lethe_kv_cache *kv;           /* KV_STORE, ATTENTION                   */
    const lethe_ubatch *ub;              /* ROPE, KV_STORE, ATTENTION             */
    int backend;                         /* placement, set by the executor        */
    int last_use;                        /* index of the last node reading this   */
    bool is_output;                      /* result must survive the graph         */
    bool is_input;                       /* leaf from lethe_input: data changes per run (not a weight) */
} lethe_node;

typedef struct lethe_graph {
    lethe_node *nodes;        /* [cap] in execution order (leaves included)    */
    int n_nodes, cap;
    lethe_status status;      /* first constructor error (shape mismatch), sticky */
} lethe_graph;

lethe_graph *lethe_graph_new(int cap);
void lethe_graph_free(lethe_graph *g);
void lethe_graph_reset(lethe_graph *g);   /* drop nodes, keep storage */

/* A leaf wrapping existing data (weights: data points into the model file).
 * The tensor is copied into the node. */
lethe_node *lethe_leaf(lethe_graph *g, const lethe_tensor *t);
/* A leaf whose contents the caller fills before compute (token ids ...). */
lethe_node *lethe_input(lethe_graph *g, lethe_dtype type, int n_dims, const int64_t *ne,
                        void *data, const char *name);

/* GET_ROWS: w [N, E] (any dtype), ids [R] i32 -> [R, E] f32.
 * Used for the token embedding and to pick the rows that need logits. */
lethe_node *lethe_get_rows(lethe_graph *g, lethe_node *w, lethe_node *ids);

/* RMS_NORM: x [T, E] f32, w [E] f32 (or NULL) -> [T, E] f32,
 * y = x / sqrt(mean(x^2) + eps) * w.  fparams[0] = eps. */
lethe_node *lethe_rms_norm(lethe_graph *g, lethe_node *x, lethe_node *w, float eps);

/* MATMUL: w [N, K] (any supported dtype), x [T, K] f32 -> [T, N] f32,
 * y[t, n] = sum_k w[n, k] * x[t, k]. */
lethe_node *lethe_matmul(lethe_graph *g, lethe_node *w, lethe_node *x);

/* ADD / MUL: a [T, N] f32, b [T, N] or [N] f32 (broadcast over rows) -> [T, N]. */
lethe_node *lethe_add(lethe_graph *g, lethe_node *a, lethe_node *b);
lethe_node *lethe_mul(lethe_graph *g, lethe_node *a, lethe_node *b);

/* ROPE: x [T, H, D] f32 -> [T, H, D] f32, token t rotated by ub->pos[t].
 * iparams[0] = G > 0 (lethe_rope_borrow): the DMS borrowed channel — in the
 * first query head of every group of G (h % G == 0) channel D-1 is set to 0
 * before the rotation and again after it (DESIGN.md §3.1.2). */
lethe_node *lethe_rope(lethe_graph *g, lethe_node *x, const lethe_rope_params *p,
                       const lethe_ubatch *ub);
lethe_node *lethe_rope_borrow(lethe_graph *g, lethe_node *x, const lethe_rope_params *p,
                              const lethe_ubatch *ub, int group);

/* SWIGLU: gate [T, F], up [T, F] f32 -> [T, F]: silu(gate) * up. */
lethe_node *lethe_swiglu(lethe_graph *g, lethe_node *gate, lethe_node *up);

/* KV_STORE: k [T, Hkv, D], v [T, Hkv, D] f32 -> writes token t's rows into
 * the cache slots the engine reserved for it in `layer` (kv_cache.h). The
 * result is a 1-element dummy that ATTENTION takes as a source, so ordering
 * is explicit. iparams[0] = layer.
 * decision [T, Hkv] f32 (DMS_DECISION) or NULL: when decision[t, h] > 0 and
 * token t is not its sequence's first, the previous token of that sequence
 * is flagged in stream (seq, layer, h): it expires at pos[t] + w
 * (w = kv->policy.window), i.e. stays visible to queries up to w past it. */
lethe_node *lethe_kv_store(lethe_graph *g, struct lethe_kv_cache *kv, int layer,
                           lethe_node *k, lethe_node *v, lethe_node *decision,
                           const lethe_ubatch *ub);

/* ATTENTION: q [T, Hq, D] f32 (after RoPE) -> [T, Hq*D] f32.
 * For token t of sequence s = ub->seq_id[t] at position p = ub->pos[t], query
 * head h reads KV head h / (Hq/Hkv) of (s, layer) and attends to the slots j
 * visible to it (pos[j] <= p < expire[j], kv_cache.h), softmax(scale * q.k) v.
 * Score policies (kv->score) also get each slot's attention weight from the
 * last query of its sequence, averaged over the group (TOVA: replaced, H2O:
 * accumulated); QUEST reads only the pages with the highest score bound.
 * iparams[0] = layer; fparams[0] = scale (1/sqrt(D)). src[1] = the KV_STORE. */
lethe_node *lethe_attention(lethe_graph *g, struct lethe_kv_cache *kv, int layer,
                            lethe_node *q, lethe_node *kv_store, float scale,
                            const lethe_ubatch *ub);

/* DMS_DECISION -> [T, Hkv] f32 eviction logits, logit > 0 = evict
 * (DESIGN.md §3.1.1), logit = scale * x - offset:
 *   NEURON:  x = q [T, Hq, D] (after q_norm, before RoPE), x_th = q[t, h*G, D-1];
 *   ADAPTER: x = [T, Hkv] (or [T, 1]) projections dms_proj_alpha . RMSNorm(x_res);
 *   FORCED:  x = NULL; a position hash flags a `rate` fraction of tokens
 *            (benchmarking eviction on a model that was never retrofitted).
 * per_layer: every head takes head 0's decision. iparams: [0] mode, [1] Hkv,
 * [2] G, [3] per_layer, [4] layer; fparams: [0] scale, [1] offset, [2] rate. */
typedef enum lethe_dms_mode { LETHE_DMS_FROM_Q = 0, LETHE_DMS_FROM_ADAPTER, LETHE_DMS_FORCED } lethe_dms_mode;
lethe_node *lethe_dms_decision(lethe_graph *g, lethe_node *x, lethe_dms_mode mode, int n_head_kv,
                               int group, bool per_layer, float scale, float offset, float rate,
                               int layer, const lethe_ubatch *ub);

/* TOP_K: x [T, V] f32 -> [T, k, 2] i32: per row the k best (id, value)
 * pairs, best first, the value's f32 bits stored in the i32 slot (so the
 * pair is lethe.h's lethe_candidate). The order is the host sampler's
 * (core/sampler.c cand_before): higher value first, equal values (-0 == +0)
 * to the lower id, and NaN after every number (-inf included), NaNs among
 * themselves by id: a NaN logit never wins over a number. Selection only
 * compares, so every backend returns the same bits. 1 <= k <= min(V,
 * LETHE_TOP_K_MAX); k = 1 is argmax. iparams[0] = k. */
lethe_node *lethe_top_k(lethe_graph *g, lethe_node *x, int k);

/* Reinterpret a node's contiguous result with a new shape of the same number
 * of elements, in place (no new node, no copy): e.g. the [T, Hq*D] output of
 * the Q projection becomes [T, Hq, D] for ROPE. Returns NULL on mismatch. */
lethe_node *lethe_reshape(lethe_graph *g, lethe_node *n, int n_dims, const int64_t *ne);

/* Mark a node whose result the caller reads after compute. */
void lethe_set_output(lethe_node *n);

#endif
