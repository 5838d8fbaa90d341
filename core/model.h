/* model.h — a loaded model: hyper-parameters, weights (in place in the
 * mapped GGUF file), tokenizer and chat template. Read-only after load, so
 * many contexts may share one. */
#ifndef LETHE_MODEL_H
#define LETHE_MODEL_H

#include "gguf.h"
#include "graph.h"
#include "tensor.h"
#include "tokenizer.h"

typedef enum lethe_arch { LETHE_ARCH_LLAMA = 0, LETHE_ARCH_QWEN2, LETHE_ARCH_QWEN3 } lethe_arch;

/* DMS (DESIGN.md §3.1): how a retrofitted model flags tokens for eviction. */
typedef enum lethe_dms_variant {
    LETHE_DMS_NONE = 0,      /* not a DMS model                                    */
    LETHE_DMS_NEURON,        /* borrowed channel: q[h*G][D-1] before RoPE          */
    LETHE_DMS_ADAPTER        /* dms_proj_alpha . RMSNorm_alpha(layer input)        */
} lethe_dms_variant;

typedef struct lethe_dms_hparams {
    lethe_dms_variant variant;
    int32_t window;           /* w: a flagged token stays visible for w more queries (512) */
    float alpha_scale;        /* logit = alpha_scale * x - alpha_offset (100, 5)    */
    float alpha_offset;
    bool per_layer;           /* alpha_per "layer": every head uses head 0's decision */
} lethe_dms_hparams;

typedef struct lethe_hparams {
    lethe_arch arch;
    char arch_name[32];
    int32_t n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx_train;
    float norm_eps;
    lethe_rope_params rope;   /* freq_factors points into the file when present */
    bool qkv_bias;            /* qwen2 */
    bool qk_norm;             /* qwen3: per-head RMSNorm of q and k before RoPE */
    bool tied_output;         /* no output.weight: reuse token_embd */
    lethe_dms_hparams dms;    /* variant NONE for ordinary models */
} lethe_hparams;

typedef struct lethe_layer {
    lethe_tensor attn_norm;                  /* [E] f32                    */
    lethe_tensor wq, wk, wv, wo;             /* [Hq*D, E] [Hkv*D, E] x2, [E, Hq*D] */
    lethe_tensor bq, bk, bv;                 /* qwen2 biases                */
    lethe_tensor q_norm, k_norm;             /* qwen3 [D]                   */
    lethe_tensor ffn_norm;                   /* [E] f32                    */
    lethe_tensor w_gate, w_up, w_down;       /* [F, E] [F, E] [E, F]        */
    /* DMS adapter variant: decision logits per KV head from the layer input */
    lethe_tensor dms_alpha;                  /* [Hkv, E] (or [1, E] per layer) */
    lethe_tensor dms_alpha_norm;             /* [E] f32                     */
} lethe_layer;

struct lethe_hf;

struct lethe_model {
    lethe_gguf *gguf;                        /* NULL for a Hugging Face directory */
    struct lethe_hf *hf;                     /* NULL for a GGUF file (hf_model.h)  */
    lethe_hparams hp;
    lethe_tensor tok_embd;                   /* [V, E]                      */
    lethe_tensor output_norm;                /* [E]                         */
    lethe_tensor output;                     /* [V, E] (= tok_embd if tied) */
    lethe_layer *layers;                     /* [n_layer]                   */
    lethe_tokenizer *tok;
    lethe_chat_style chat_style;
    char *chat_system;                       /* template's default system message */
    lethe_model_info info;
    lethe_model_params params;
    float *dms_adapter_mem;                  /* --dms-adapter tensors (f32 copies) or NULL */
};

/* Call fn on each weight tensor of the model that has host data, tied ones
 * once (the graph's leaves: what device backends upload and cache). */
typedef void (*lethe_weight_fn)(const lethe_tensor *t, void *user);
void lethe_model_for_each_weight(const lethe_model *m, lethe_weight_fn fn, void *user);

/* Apply a DMS adapter file to a model that is not DMS (dms_adapter.c);
 * nothing changes unless every tensor is present and of the right shape. */
lethe_status lethe_dms_adapter_apply(lethe_model *m, const char *path);

#endif
