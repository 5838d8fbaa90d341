/* llama.c — the llama-family forward pass as one readable loop.
 *
 * Shapes (outermost first): T tokens, E embedding, Hq/Hkv heads, D head dim,
 * F FFN width, V vocabulary, R rows that need logits. */
#include "llama.h"
#include "common.h"

#include <math.h>

int lethe_llama_graph_size(const lethe_model *m) {
    /* per layer: ~26 nodes incl. leaves, ~5 more for DMS; plus embedding and head */
    return 48 * m->hp.n_layer + 32;
}

lethe_node *lethe_llama_build(lethe_graph *g, const lethe_model *m, lethe_kv_cache *kv,
                              const lethe_ubatch *ub, int32_t *tokens, int32_t *out_idx,
                              int32_t n_out, const lethe_dms_run *dms) {
    const lethe_hparams *hp = &m->hp;
    const int64_t T = ub->n_tokens, E = hp->n_embd, D = hp->head_dim;
    const int64_t Hq = hp->n_head, Hkv = hp->n_head_kv;
    const float eps = hp->norm_eps;
    const float scale = 1.0f / sqrtf((float)D);

    int64_t ne_t[1] = {T}, ne_r[1] = {n_out};
    lethe_node *ids = lethe_input(g, LETHE_I32, 1, ne_t, tokens, "tokens");
    lethe_node *x = lethe_get_rows(g, lethe_leaf(g, &m->tok_embd), ids);        /* [T, E] */

    const int64_t q_shape[3] = {D, Hq, T}, kv_shape[3] = {D, Hkv, T};
    for (int l = 0; l < hp->n_layer; l++) {
        const lethe_layer *L = &m->layers[l];
        /* attention block */
        lethe_node *dec = NULL;                                                  /* [T, Hkv] DMS logits */
        if (dms && dms->on && dms->mode == LETHE_DMS_FROM_ADAPTER) {
            /* the adapter reads the residual stream before input_layernorm */
            lethe_node *a = lethe_rms_norm(g, x, lethe_leaf(g, &L->dms_alpha_norm), eps);
            a = lethe_matmul(g, lethe_leaf(g, &L->dms_alpha), a);                /* [T, Hkv or 1] */
            dec = lethe_dms_decision(g, a, LETHE_DMS_FROM_ADAPTER, (int)Hkv, (int)(Hq / Hkv),
                                     dms->per_layer, dms->scale, dms->offset, 0.0f, l, ub);
        } else if (dms && dms->on && dms->mode == LETHE_DMS_FORCED) {
            dec = lethe_dms_decision(g, NULL, LETHE_DMS_FORCED, (int)Hkv, (int)(Hq / Hkv), false, 0.0f, 0.0f,
                                     dms->rate, l, ub);
        }
        lethe_node *h = lethe_rms_norm(g, x, lethe_leaf(g, &L->attn_norm), eps);   /* [T, E] */
        lethe_node *q = lethe_matmul(g, lethe_leaf(g, &L->wq), h);                /* [T, Hq*D] */
        lethe_node *k = lethe_matmul(g, lethe_leaf(g, &L->wk), h);                /* [T, Hkv*D] */
        lethe_node *v = lethe_matmul(g, lethe_leaf(g, &L->wv), h);                /* [T, Hkv*D] */
        if (hp->qkv_bias) {
            q = lethe_add(g, q, lethe_leaf(g, &L->bq));
            k = lethe_add(g, k, lethe_leaf(g, &L->bk));
            v = lethe_add(g, v, lethe_leaf(g, &L->bv));
        }
        q = lethe_reshape(g, q, 3, q_shape);                                     /* [T, Hq, D] */
        k = lethe_reshape(g, k, 3, kv_shape);                                    /* [T, Hkv, D] */
        v = lethe_reshape(g, v, 3, kv_shape);
        if (hp->qk_norm) {   /* qwen3: RMSNorm over each head's D channels */
            q = lethe_rms_norm(g, q, lethe_leaf(g, &L->q_norm), eps);
            k = lethe_rms_norm(g, k, lethe_leaf(g, &L->k_norm), eps);
        }
        if (hp->dms.variant == LETHE_DMS_NEURON) {
            /* the decision is the first query head's last channel of each group, after q_norm, before RoPE */
            if (dms && dms->on && dms->mode == LETHE_DMS_FROM_Q)
                dec = lethe_dms_decision(g, q, LETHE_DMS_FROM_Q, (int)Hkv, (int)(Hq / Hkv), dms->per_layer,
                                         dms->scale, dms->offset, 0.0f, l, ub);
            q = lethe_rope_borrow(g, q, &hp->rope, ub, (int)(Hq / Hkv));
        } else {
            q = lethe_rope(g, q, &hp->rope, ub);
        }
        k = lethe_rope(g, k, &hp->rope, ub);
        lethe_node *st = lethe_kv_store(g, kv, l, k, v, dec, ub);
        lethe_node *a = lethe_attention(g, kv, l, q, st, scale, ub);              /* [T, Hq*D] */
        lethe_node *o = lethe_matmul(g, lethe_leaf(g, &L->wo), a);                /* [T, E] */
        x = lethe_add(g, x, o);

        /* feed-forward block */
        h = lethe_rms_norm(g, x, lethe_leaf(g, &L->ffn_norm), eps);
        lethe_node *gate = lethe_matmul(g, lethe_leaf(g, &L->w_gate), h);         /* [T, F] */
        lethe_node *up = lethe_matmul(g, lethe_leaf(g, &L->w_up), h);             /* [T, F] */
        lethe_node *s = lethe_swiglu(g, gate, up);
        lethe_node *d = lethe_matmul(g, lethe_leaf(g, &L->w_down), s);            /* [T, E] */
        x = lethe_add(g, x, d);
    }
    /* Only the rows that need logits go through the head: the [E x V]
     * matmul is the largest one in small models. */
    lethe_node *sel = lethe_get_rows(g, x, lethe_input(g, LETHE_I32, 1, ne_r, out_idx, "out_idx")); /* [R, E] */
    sel = lethe_rms_norm(g, sel, lethe_leaf(g, &m->output_norm), eps);
    lethe_node *logits = lethe_matmul(g, lethe_leaf(g, &m->output), sel);         /* [R, V] */
    lethe_set_output(logits);
    (void)E;
    return logits;
}
