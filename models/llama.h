/* llama.h — graph builder for the llama family (llama, qwen2, qwen3 are flags
 * on one builder: QKV bias, per-head q/k norm, rope style, tied output). */
#ifndef LETHE_MODELS_LLAMA_H
#define LETHE_MODELS_LLAMA_H

#include "graph.h"
#include "kv_cache.h"
#include "model.h"

/* Nodes the builder needs for a model (upper bound), to size the graph. */
int lethe_llama_graph_size(const lethe_model *m);

/* Build the forward pass of one micro-batch.
 *   tokens  [T] i32 token ids (caller-owned, read during compute)
 *   out_idx [R] i32 indices (into the batch) of the tokens that need logits
 * Returns the logits node [R, V] (marked as output), or NULL with g->status. */
lethe_node *lethe_llama_build(lethe_graph *g, const lethe_model *m, lethe_kv_cache *kv,
                              const lethe_ubatch *ub, int32_t *tokens, int32_t *out_idx,
                              int32_t n_out);

#endif
