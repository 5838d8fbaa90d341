/* model.c — loading a GGUF model: hyper-parameters by architecture, weight
 * tensors checked against them (names, shapes, dtypes), tokenizer. */
#include "model.h"
#include "common.h"
#include "backend.h"
#include "hf_model.h"

#include <string.h>

lethe_model_params lethe_model_default_params(void) {
    lethe_model_params p = {0};
    p.backend = "cpu";
    p.use_mmap = true;
    return p;
}

static lethe_status get_i32(const lethe_gguf *g, const char *arch, const char *key, int32_t *out,
                            bool required, int32_t lo, int32_t hi) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    int64_t v;
    if (!lethe_gguf_get_int(g, full, &v)) {
        if (required) return lethe_fail(LETHE_ERR_CORRUPT, "model: missing metadata key '%s'", full);
        return LETHE_OK;
    }
    if (v < lo || v > hi)
        return lethe_fail(LETHE_ERR_CORRUPT, "model: %s = %lld is out of range [%d, %d]", full,
                          (long long)v, lo, hi);
    *out = (int32_t)v;
    return LETHE_OK;
}

static lethe_status get_f32(const lethe_gguf *g, const char *arch, const char *key, float *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    double v;
    if (lethe_gguf_get_float(g, full, &v)) {
        if (!(v == v) || v < -1e30 || v > 1e30)
            return lethe_fail(LETHE_ERR_CORRUPT, "model: %s is not a finite number", full);
        *out = (float)v;
    }
    return LETHE_OK;
}

#define TRY(x) do { lethe_status _s = (x); if (_s != LETHE_OK) return _s; } while (0)

static lethe_status load_hparams(const lethe_gguf *g, lethe_hparams *hp) {
    memset(hp, 0, sizeof *hp);
    if (!lethe_gguf_get_str(g, "general.architecture", hp->arch_name, sizeof hp->arch_name))
        return lethe_fail(LETHE_ERR_CORRUPT, "model: missing general.architecture");
    const char *a = hp->arch_name;
    if (!strcmp(a, "llama")) {
        hp->arch = LETHE_ARCH_LLAMA;
    } else if (!strcmp(a, "qwen2")) {
        hp->arch = LETHE_ARCH_QWEN2;
        hp->qkv_bias = true;
    } else if (!strcmp(a, "qwen3")) {
        hp->arch = LETHE_ARCH_QWEN3;
        hp->qk_norm = true;
    } else {
        return lethe_fail(LETHE_ERR_UNSUPPORTED,
                          "model: architecture '%s' is not supported (llama, qwen2, qwen3 are)", a);
    }
    const int32_t big = 1 << 20;
    TRY(get_i32(g, a, "block_count", &hp->n_layer, true, 1, 4096));
    TRY(get_i32(g, a, "embedding_length", &hp->n_embd, true, 1, big));
    TRY(get_i32(g, a, "feed_forward_length", &hp->n_ff, true, 1, 16 * big));
    TRY(get_i32(g, a, "attention.head_count", &hp->n_head, true, 1, 4096));
    hp->n_head_kv = hp->n_head;
    TRY(get_i32(g, a, "attention.head_count_kv", &hp->n_head_kv, false, 1, 4096));
    hp->n_ctx_train = 4096;
    TRY(get_i32(g, a, "context_length", &hp->n_ctx_train, false, 1, 1 << 24));
    if (hp->n_head % hp->n_head_kv != 0)
        return lethe_fail(LETHE_ERR_CORRUPT, "model: %d query heads is not a multiple of %d KV heads",
                          hp->n_head, hp->n_head_kv);
    hp->head_dim = hp->n_embd / hp->n_head;
    TRY(get_i32(g, a, "attention.key_length", &hp->head_dim, false, 1, 4096));
    int32_t vlen = hp->head_dim;
    TRY(get_i32(g, a, "attention.value_length", &vlen, false, 1, 4096));
    if (vlen != hp->head_dim)
        return lethe_fail(LETHE_ERR_UNSUPPORTED, "model: key length %d != value length %d", hp->head_dim, vlen);
    if (hp->head_dim < 2 || hp->head_dim % 2)
        return lethe_fail(LETHE_ERR_CORRUPT, "model: head dimension %d must be even and >= 2", hp->head_dim);
    hp->norm_eps = 1e-5f;
    TRY(get_f32(g, a, "attention.layer_norm_rms_epsilon", &hp->norm_eps));
    if (!(hp->norm_eps > 0 && hp->norm_eps < 1))
        return lethe_fail(LETHE_ERR_CORRUPT, "model: rms epsilon %g out of range", hp->norm_eps);

    lethe_rope_params *r = &hp->rope;
    r->mode = hp->arch == LETHE_ARCH_LLAMA ? LETHE_ROPE_NORM : LETHE_ROPE_NEOX;
    r->n_rot = hp->head_dim;
    TRY(get_i32(g, a, "rope.dimension_count", &r->n_rot, false, 2, 4096));
    if (r->n_rot != hp->head_dim)
        return lethe_fail(LETHE_ERR_UNSUPPORTED, "model: partial rotary embedding (%d of %d dims)",
                          r->n_rot, hp->head_dim);
    r->freq_base = 10000.0f;
    TRY(get_f32(g, a, "rope.freq_base", &r->freq_base));
    if (!(r->freq_base > 1))
        return lethe_fail(LETHE_ERR_CORRUPT, "model: rope.freq_base %g out of range", r->freq_base);
    r->freq_scale = 1.0f;
    char key[128], type[32] = "";
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    lethe_gguf_get_str(g, key, type, sizeof type);
    if (type[0] && strcmp(type, "none")) {
        float factor = 1.0f;
        TRY(get_f32(g, a, "rope.scaling.factor", &factor));
        if (!strcmp(type, "linear") && factor > 0) {
            r->freq_scale = 1.0f / factor;
        } else if (strcmp(type, "llama3")) {   /* llama3 comes as rope_freqs.weight */
            return lethe_fail(LETHE_ERR_UNSUPPORTED, "model: rope scaling '%s' is not supported", type);
        }
    }
    return LETHE_OK;
}

/* DMS keys (`<arch>.dms.*`, DESIGN.md §3.1.6). A DMS model is one with a
 * window size, a variant, or adapter tensors; bad values are refused here,
 * not discovered at the first decode. */
static lethe_status load_dms_hparams(const lethe_gguf *g, lethe_hparams *hp) {
    lethe_dms_hparams *d = &hp->dms;
    const char *a = hp->arch_name;
    char key[128], str[32] = "";
    d->window = -1;
    d->alpha_scale = 100.0f;
    d->alpha_offset = 5.0f;
    TRY(get_i32(g, a, "dms.window_size", &d->window, false, 0, 1 << 24));
    TRY(get_f32(g, a, "dms.alpha_scale", &d->alpha_scale));
    TRY(get_f32(g, a, "dms.alpha_offset", &d->alpha_offset));
    snprintf(key, sizeof key, "%s.dms.variant", a);
    const bool has_variant = lethe_gguf_get_str(g, key, str, sizeof str);
    const bool has_adapter = lethe_gguf_find_tensor(g, "blk.0.dms_alpha.weight") != NULL;
    if (d->window < 0 && !has_variant && !has_adapter) {
        memset(d, 0, sizeof *d);   /* not a DMS model */
        return LETHE_OK;
    }
    if (d->window < 0) d->window = 512;
    if (!has_variant) {
        d->variant = has_adapter ? LETHE_DMS_ADAPTER : LETHE_DMS_NEURON;
    } else if (!strcmp(str, "neuron")) {
        d->variant = LETHE_DMS_NEURON;
    } else if (!strcmp(str, "adapter")) {
        d->variant = LETHE_DMS_ADAPTER;
    } else {
        return lethe_fail(LETHE_ERR_CORRUPT, "model: %s = '%s' (expected \"neuron\" or \"adapter\")", key, str);
    }
    snprintf(key, sizeof key, "%s.dms.alpha_per", a);
    str[0] = 0;
    if (lethe_gguf_get_str(g, key, str, sizeof str)) {
        if (!strcmp(str, "layer")) d->per_layer = true;
        else if (strcmp(str, "head"))
            return lethe_fail(LETHE_ERR_CORRUPT, "model: %s = '%s' (expected \"head\" or \"layer\")", key, str);
    }
    if (d->variant == LETHE_DMS_NEURON && hp->head_dim < 2)
        return lethe_fail(LETHE_ERR_CORRUPT, "model: the DMS neuron variant needs a head dimension >= 2");
    return LETHE_OK;
}

/* Bind a tensor by name and check its shape [ne1, ne0] (ne1 = 0: 1-D). */
static lethe_status bind(const lethe_gguf *g, lethe_tensor *t, const char *name, int64_t ne0,
                         int64_t ne1, bool required, bool *found) {
    const lethe_gguf_tensor *gt = lethe_gguf_find_tensor(g, name);
    if (found) *found = gt != NULL;
    if (!gt) {
        if (required) return lethe_fail(LETHE_ERR_MISSING_TENSOR, "model: tensor '%s' is missing", name);
        return LETHE_OK;
    }
    if (!lethe_dtype_supported(gt->type))
        return lethe_fail(LETHE_ERR_UNSUPPORTED_DTYPE, "model: tensor '%s' has type %s, which lethe cannot compute with",
                          name, lethe_dtype_name(gt->type));
    int64_t want1 = ne1 ? ne1 : 1;
    if (gt->ne[0] != ne0 || gt->ne[1] != want1 || gt->ne[2] != 1 || gt->ne[3] != 1)
        return lethe_fail(LETHE_ERR_SHAPE,
                          "model: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]",
                          name, (long long)gt->ne[0], (long long)gt->ne[1], (long long)gt->ne[2],
                          (long long)gt->ne[3], (long long)ne0, (long long)want1);
    if (!ne1 && gt->type != LETHE_F32)   /* norms, biases: f32 vectors */
        return lethe_fail(LETHE_ERR_UNSUPPORTED_DTYPE, "model: tensor '%s' must be f32, not %s",
                          name, lethe_dtype_name(gt->type));
    int64_t ne[2] = {gt->ne[0], gt->ne[1]};
    lethe_tensor_init(t, gt->type, 2, ne);
    t->data = (void *)gt->data;
    snprintf(t->name, sizeof t->name, "%s", name);
    return LETHE_OK;
}

static lethe_status load_weights(lethe_model *m) {
    const lethe_gguf *g = m->gguf;
    lethe_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, D = hp->head_dim, Hq = hp->n_head, Hkv = hp->n_head_kv, F = hp->n_ff;
    const lethe_gguf_tensor *emb = lethe_gguf_find_tensor(g, "token_embd.weight");
    if (!emb) return lethe_fail(LETHE_ERR_MISSING_TENSOR, "model: tensor 'token_embd.weight' is missing");
    if (emb->ne[1] < 1 || emb->ne[1] > (1 << 24))
        return lethe_fail(LETHE_ERR_SHAPE, "model: vocabulary size %lld out of range", (long long)emb->ne[1]);
    hp->n_vocab = (int32_t)emb->ne[1];
    TRY(bind(g, &m->tok_embd, "token_embd.weight", E, hp->n_vocab, true, NULL));
    TRY(bind(g, &m->output_norm, "output_norm.weight", E, 0, true, NULL));
    bool has_out;
    TRY(bind(g, &m->output, "output.weight", E, hp->n_vocab, false, &has_out));
    hp->tied_output = !has_out;
    if (!has_out) m->output = m->tok_embd;

    const lethe_gguf_tensor *rf = lethe_gguf_find_tensor(g, "rope_freqs.weight");
    if (rf) {
        if (rf->type != LETHE_F32 || rf->ne[0] != hp->rope.n_rot / 2 || rf->ne[1] != 1)
            return lethe_fail(LETHE_ERR_SHAPE, "model: rope_freqs.weight must be f32 [%d]", hp->rope.n_rot / 2);
        hp->rope.freq_factors = rf->data;
    }

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) return lethe_fail(LETHE_ERR_OOM, "model: layers");
    char name[96];
#define B(field, suffix, ne0, ne1, req)                                       \
    do {                                                                      \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);                  \
        TRY(bind(g, &L->field, name, ne0, ne1, req, NULL));                   \
    } while (0)
    for (int l = 0; l < hp->n_layer; l++) {
        lethe_layer *L = &m->layers[l];
        B(attn_norm, "attn_norm.weight", E, 0, true);
        B(wq, "attn_q.weight", E, Hq * D, true);
        B(wk, "attn_k.weight", E, Hkv * D, true);
        B(wv, "attn_v.weight", E, Hkv * D, true);
        B(wo, "attn_output.weight", Hq * D, E, true);
        if (hp->qkv_bias) {
            B(bq, "attn_q.bias", Hq * D, 0, true);
            B(bk, "attn_k.bias", Hkv * D, 0, true);
            B(bv, "attn_v.bias", Hkv * D, 0, true);
        }
        if (hp->qk_norm) {
            B(q_norm, "attn_q_norm.weight", D, 0, true);
            B(k_norm, "attn_k_norm.weight", D, 0, true);
        }
        B(ffn_norm, "ffn_norm.weight", E, 0, true);
        B(w_gate, "ffn_gate.weight", E, F, true);
        B(w_up, "ffn_up.weight", E, F, true);
        B(w_down, "ffn_down.weight", F, E, true);
        if (hp->dms.variant == LETHE_DMS_ADAPTER) {
            /* one decision row per KV head, or one per layer (alpha_per "layer") */
            snprintf(name, sizeof name, "blk.%d.dms_alpha.weight", l);
            const lethe_gguf_tensor *t = lethe_gguf_find_tensor(g, name);
            int64_t rows = t && t->ne[1] == 1 ? 1 : Hkv;
            B(dms_alpha, "dms_alpha.weight", E, rows, true);
            if (rows == 1 && Hkv > 1 && !hp->dms.per_layer)
                return lethe_fail(LETHE_ERR_SHAPE, "model: %s has one row but the model decides per head "
                                  "(%s.dms.alpha_per is not \"layer\")", name, hp->arch_name);
            B(dms_alpha_norm, "dms_alpha_norm.weight", E, 0, true);
        }
    }
#undef B
    return LETHE_OK;
}

/* Touch every page of the weights so the first decode does not stall on
 * page faults, reporting progress as it goes. */
static lethe_status prefault(lethe_model *m) {
    const lethe_gguf *g = m->gguf;
    size_t total = g->size - g->data_offset, done = 0;
    volatile uint8_t sink = 0;
    const size_t step = 1 << 20;
    for (size_t off = g->data_offset; off < g->size; off += step) {
        size_t end = LETHE_MIN(off + step, g->size);
        for (size_t p = off; p < end; p += 4096) sink ^= g->base[p];
        done += end - off;
        if (m->params.progress && !m->params.progress((float)done / (float)(total ? total : 1),
                                                      m->params.progress_user))
            return lethe_fail(LETHE_ERR_ABORTED, "model: loading cancelled");
    }
    (void)sink;
    return LETHE_OK;
}

void lethe_model_for_each_weight(const lethe_model *m, lethe_weight_fn fn, void *user) {
    const lethe_tensor *top[3] = {&m->tok_embd, &m->output_norm, &m->output};
    for (int i = 0; i < 3; i++)
        if (top[i]->data && (i < 2 || top[i]->data != m->tok_embd.data)) fn(top[i], user);   /* tied: once */
    for (int l = 0; m->layers && l < m->hp.n_layer; l++) {
        const lethe_layer *L = &m->layers[l];
        const lethe_tensor *ts[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->bq, &L->bk, &L->bv,
                                    &L->q_norm, &L->k_norm, &L->ffn_norm, &L->w_gate, &L->w_up, &L->w_down,
                                    &L->dms_alpha, &L->dms_alpha_norm};
        for (size_t i = 0; i < LETHE_ARRAY_SIZE(ts); i++)
            if (ts[i]->data) fn(ts[i], user);
    }
}

static void forget_weight(const lethe_tensor *t, void *user) {
    (void)user;
    lethe_backends_forget(t->data, lethe_tensor_nbytes(t));
}

void lethe_model_free(lethe_model *m) {
    if (!m) return;
    /* GPU devices outlive contexts and cache weights by host address: drop
     * this model's before its memory can be handed to another model */
    lethe_model_for_each_weight(m, forget_weight, NULL);
    if (m->gguf) lethe_backends_forget(m->gguf->base, m->gguf->size);   /* anything else in the file */
    lethe_tokenizer_free(m->tok);
    free(m->chat_system);
    free(m->layers);
    free(m->dms_adapter_mem);
    lethe_gguf_close(m->gguf);
    lethe_hf_free(m->hf);
    free(m);
}

lethe_model *lethe_model_load(const char *path, lethe_model_params params, lethe_status *status) {
    lethe_status st = LETHE_OK;
    lethe_model *m = NULL;
    lethe_clear_error();
    if (!path) {
        st = lethe_fail(LETHE_ERR_INVALID_ARG, "model: path is NULL");
        goto fail;
    }
    /* device backends start with the context, which falls back to the CPU */
    if (params.backend && strcmp(params.backend, "cpu") && strcmp(params.backend, "auto") &&
        strcmp(params.backend, "vulkan") && strcmp(params.backend, "cuda")) {
        st = lethe_fail(LETHE_ERR_BACKEND, "backend '%s' is not available in this build (cpu is)",
                        params.backend);
        goto fail;
    }
    m = calloc(1, sizeof *m);
    if (!m) { st = lethe_fail(LETHE_ERR_OOM, "model"); goto fail; }
    m->params = params;
    if (lethe_hf_is_dir(path)) {   /* a Hugging Face model directory (hf_model.c) */
        if ((st = lethe_hf_load(m, path)) != LETHE_OK) goto fail;
        goto loaded;
    }
    m->gguf = lethe_gguf_open(path, params.use_mmap, &st);
    if (!m->gguf) goto fail;
    if ((st = load_hparams(m->gguf, &m->hp)) != LETHE_OK) goto fail;
    if ((st = load_dms_hparams(m->gguf, &m->hp)) != LETHE_OK) goto fail;
    if ((st = load_weights(m)) != LETHE_OK) goto fail;
    m->tok = lethe_tokenizer_from_gguf(m->gguf, &st);
    if (!m->tok) goto fail;
    if (lethe_tokenizer_n_vocab(m->tok) > m->hp.n_vocab) {
        st = lethe_fail(LETHE_ERR_CORRUPT, "model: tokenizer has %d tokens but the embedding only %d rows",
                        lethe_tokenizer_n_vocab(m->tok), m->hp.n_vocab);
        goto fail;
    }
    const lethe_gguf_kv *tmpl = lethe_gguf_find(m->gguf, "tokenizer.chat_template");
    char *tmpl_text = NULL;
    if (tmpl && tmpl->type == LETHE_GGUF_STRING) {
        tmpl_text = strndup(tmpl->v.s.ptr, (size_t)tmpl->v.s.len);
        if (!tmpl_text) { st = lethe_fail(LETHE_ERR_OOM, "model"); goto fail; }
    }
    m->chat_style = lethe_chat_detect(tmpl_text);
    m->chat_system = tmpl_text ? lethe_chat_default_system(tmpl_text) : NULL;
    free(tmpl_text);
    if ((st = prefault(m)) != LETHE_OK) goto fail;
    lethe_gguf_get_str(m->gguf, "general.name", m->info.name, sizeof m->info.name);
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        const lethe_gguf_tensor *t = &m->gguf->tensors[i];
        m->info.n_params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        m->info.weight_bytes += t->size;
    }
loaded:
    if (params.dms_adapter && (st = lethe_dms_adapter_apply(m, params.dms_adapter)) != LETHE_OK) goto fail;
    lethe_model_info *in = &m->info;
    const lethe_hparams *hp = &m->hp;
    snprintf(in->arch, sizeof in->arch, "%s", hp->arch_name);
    in->n_layer = hp->n_layer;
    in->n_embd = hp->n_embd;
    in->n_head = hp->n_head;
    in->n_head_kv = hp->n_head_kv;
    in->head_dim = hp->head_dim;
    in->n_ff = hp->n_ff;
    in->n_vocab = hp->n_vocab;
    in->n_ctx_train = hp->n_ctx_train;
    in->dms_variant = (int32_t)hp->dms.variant;
    in->dms_window = hp->dms.variant ? hp->dms.window : 0;
    if (status) *status = LETHE_OK;
    return m;
fail:
    lethe_model_free(m);
    if (status) *status = st;
    return NULL;
}

lethe_model_info lethe_model_get_info(const lethe_model *m) {
    lethe_model_info z = {0};
    return m ? m->info : z;
}

int lethe_model_meta_str(const lethe_model *m, const char *key, char *buf, size_t buf_size) {
    if (!m || !key) return -1;
    if (m->hf) return lethe_hf_meta_str(m->hf, key, buf, buf_size);
    const lethe_gguf_kv *kv = lethe_gguf_find(m->gguf, key);
    if (!kv) return -1;
    return lethe_gguf_kv_to_string(kv, buf, buf_size);
}
