/* llama.h — graph builder for the llama family (llama, qwen2, qwen3 are flags
 * on one builder: QKV bias, per-head q/k norm, rope style, tied output). */
#ifndef LETHE_MODELS_LLAMA_H
#define LETHE_MODELS_LLAMA_H

#include "graph.h"
#include "kv_cache.h"
#include "model.h"

/* Nodes the builder needs for a model (upper bound), to size the graph. */
int lethe_llama_graph_size(const lethe_model *m);

/* Where DMS eviction decisions come from in this context (engine.c). */
typedef struct lethe_dms_run {
    bool on;                  /* compute decisions and flag tokens            */
    lethe_dms_mode mode;      /* FROM_Q, FROM_ADAPTER or FORCED               */
    float scale, offset;      /* logit = scale * x - offset                   */
    float rate;               /* FORCED: fraction flagged                     */
    bool per_layer;
} lethe_dms_run;

/* Build the forward pass of one micro-batch.
 *   tokens  [T] i32 token ids (caller-owned, read during compute)
 *   out_idx [R] i32 indices (into the batch) of the tokens that need logits
 *   dms     decisions to compute, or NULL. A neuron-variant DMS model borrows
 *           its q channel whatever the policy: it was trained that way.
 * Returns the logits node [R, V] (marked as output), or NULL with g->status. */
lethe_node *lethe_llama_build(lethe_graph *g, const lethe_model *m, lethe_kv_cache *kv,
                              const lethe_ubatch *ub, int32_t *tokens, int32_t *out_idx,
                              int32_t n_out, const lethe_dms_run *dms);

#endif
