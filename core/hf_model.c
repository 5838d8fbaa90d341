/* hf_model.c — a Hugging Face model directory as a lethe_model.
 *
 * Weight names (HF → lethe_layer field):
 *   model.embed_tokens.weight [V, E]           tok_embd
 *   model.norm.weight [E]                      output_norm
 *   lm_head.weight [V, E]                      output (absent or tied: tok_embd)
 *   model.layers.N.input_layernorm.weight      attn_norm
 *   model.layers.N.self_attn.{q,k,v,o}_proj.weight (+ q/k/v bias: qwen2)
 *   model.layers.N.self_attn.{q,k}_norm.weight (qwen3)
 *   model.layers.N.post_attention_layernorm.weight  ffn_norm
 *   model.layers.N.mlp.{gate,up,down}_proj.weight
 *   model.layers.N.self_attn.dms_proj_alpha{,_norm}.weight (DMS adapter)
 * An HF Linear weight is [out, in] row-major, i.e. ne = {in, out}: exactly
 * lethe's layout, so matrices are used in place. HF Q/K rows are not
 * permuted the way llama.cpp's GGUF conversion permutes llama's, so every
 * HF architecture uses NEOX (rotate-half) RoPE, as transformers does.
 * Vectors (norms, biases) are copied to f32, which the graph requires.
 */
#include "hf_model.h"
#include "common.h"
#include "hf_tokenizer.h"

#include <jansson.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

#define TRY(x) do { lethe_status _s = (x); if (_s != LETHE_OK) return _s; } while (0)

bool lethe_hf_is_dir(const char *path) {
    struct stat sb;
    return path && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* ---- config.json -------------------------------------------------------------- */

static lethe_status cfg_int(json_t *root, const char *key, int32_t *out, bool required, int64_t lo, int64_t hi) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required) return lethe_fail(LETHE_ERR_CORRUPT, "config.json: missing key '%s'", key);
        return LETHE_OK;
    }
    if (!json_is_integer(v))
        return lethe_fail(LETHE_ERR_CORRUPT, "config.json: '%s' must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return lethe_fail(LETHE_ERR_CORRUPT, "config.json: %s = %lld is out of range [%lld, %lld]", key, (long long)x,
                          (long long)lo, (long long)hi);
    *out = (int32_t)x;
    return LETHE_OK;
}

static lethe_status cfg_num(json_t *obj, const char *where, const char *key, float *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return LETHE_OK;
    if (!json_is_number(v))
        return lethe_fail(LETHE_ERR_CORRUPT, "%s: '%s' must be a number", where, key);
    double x = json_number_value(v);
    if (!isfinite(x) || fabs(x) > 1e30)
        return lethe_fail(LETHE_ERR_CORRUPT, "%s: '%s' is not a finite number", where, key);
    *out = (float)x;
    return LETHE_OK;
}

static lethe_status cfg_bool(json_t *root, const char *key, bool *out) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return LETHE_OK;
    if (!json_is_boolean(v)) return lethe_fail(LETHE_ERR_CORRUPT, "config.json: '%s' must be true or false", key);
    *out = json_is_true(v);
    return LETHE_OK;
}

static lethe_status parse_rope(json_t *root, lethe_hparams *hp) {
    lethe_rope_params *r = &hp->rope;
    r->mode = LETHE_ROPE_NEOX;
    r->n_rot = hp->head_dim;
    r->freq_base = 10000.0f;
    r->freq_scale = 1.0f;
    TRY(cfg_num(root, "config.json", "rope_theta", &r->freq_base));
    /* transformers 5 moves rope_theta and the scaling into rope_parameters */
    json_t *sc = json_object_get(root, "rope_scaling");
    json_t *rp = json_object_get(root, "rope_parameters");
    if (json_is_object(rp)) {
        TRY(cfg_num(rp, "config.json rope_parameters", "rope_theta", &r->freq_base));
        if (!json_is_object(sc)) sc = rp;
    }
    if (!(r->freq_base > 1))
        return lethe_fail(LETHE_ERR_CORRUPT, "config.json: rope_theta %g out of range", r->freq_base);
    float prf = 1.0f;
    TRY(cfg_num(root, "config.json", "partial_rotary_factor", &prf));
    if (prf != 1.0f)
        return lethe_fail(LETHE_ERR_UNSUPPORTED, "config.json: partial rotary embedding (factor %g)", prf);
    if (sc && !json_is_null(sc)) {
        if (!json_is_object(sc)) return lethe_fail(LETHE_ERR_CORRUPT, "config.json: rope_scaling must be an object");
        json_t *t = json_object_get(sc, "rope_type");
        if (!t) t = json_object_get(sc, "type");
        const char *type = json_is_string(t) ? json_string_value(t) : "default";
        const char *w = "config.json rope_scaling";
        if (!strcmp(type, "default")) {
            /* nothing */
        } else if (!strcmp(type, "linear")) {
            float f = 0;
            TRY(cfg_num(sc, w, "factor", &f));
            if (!(f >= 1)) return lethe_fail(LETHE_ERR_CORRUPT, "config.json: linear rope factor %g out of range", f);
            r->freq_scale = 1.0f / f;
        } else if (!strcmp(type, "llama3")) {
            float f = 0, lo = 1, hi = 4, orig = 8192;
            TRY(cfg_num(sc, w, "factor", &f));
            TRY(cfg_num(sc, w, "low_freq_factor", &lo));
            TRY(cfg_num(sc, w, "high_freq_factor", &hi));
            TRY(cfg_num(sc, w, "original_max_position_embeddings", &orig));
            if (!(f >= 1) || !(lo > 0) || !(hi > lo) || !(orig >= 1 && orig <= (1 << 24)))
                return lethe_fail(LETHE_ERR_CORRUPT, "config.json: llama3 rope_scaling values out of range");
            r->llama3_factor = f;
            r->llama3_low_freq_factor = lo;
            r->llama3_high_freq_factor = hi;
            r->llama3_orig_ctx = (int32_t)orig;
        } else {
            return lethe_fail(LETHE_ERR_UNSUPPORTED, "config.json: rope scaling '%.32s' is not supported", type);
        }
    }
    return LETHE_OK;
}

static lethe_status parse_dms(json_t *root, lethe_hparams *hp) {
    lethe_dms_hparams *d = &hp->dms;
    json_t *w = json_object_get(root, "dms_window_size");
    if (!w || json_is_null(w)) return LETHE_OK;   /* not a DMS model (the loader may still find adapter tensors) */
    d->window = 512;
    d->alpha_scale = 100.0f;
    d->alpha_offset = 5.0f;
    TRY(cfg_int(root, "dms_window_size", &d->window, true, 0, 1 << 24));
    TRY(cfg_num(root, "config.json", "dms_alpha_scale", &d->alpha_scale));
    TRY(cfg_num(root, "config.json", "dms_initial_alpha_offset", &d->alpha_offset));
    bool separate = false;
    TRY(cfg_bool(root, "dms_separate_alpha", &separate));
    d->variant = separate ? LETHE_DMS_ADAPTER : LETHE_DMS_NEURON;
    json_t *per = json_object_get(root, "dms_alpha_per");
    if (per && !json_is_null(per)) {
        if (!json_is_string(per))
            return lethe_fail(LETHE_ERR_CORRUPT, "config.json: dms_alpha_per must be \"head\" or \"layer\"");
        const char *s = json_string_value(per);
        if (!strcmp(s, "layer")) d->per_layer = true;
        else if (strcmp(s, "head"))
            return lethe_fail(LETHE_ERR_CORRUPT, "config.json: dms_alpha_per '%.32s' is not \"head\" or \"layer\"", s);
    }
    return LETHE_OK;
}

static lethe_status parse_root(json_t *root, lethe_hparams *hp) {
    memset(hp, 0, sizeof *hp);
    if (!json_is_object(root)) return lethe_fail(LETHE_ERR_CORRUPT, "config.json: not a JSON object");
    json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt)) return lethe_fail(LETHE_ERR_CORRUPT, "config.json: missing key 'model_type'");
    const char *a = json_string_value(mt);
    if (!strcmp(a, "llama") || !strcmp(a, "mistral")) {
        hp->arch = LETHE_ARCH_LLAMA;
        snprintf(hp->arch_name, sizeof hp->arch_name, "llama");
    } else if (!strcmp(a, "qwen2")) {
        hp->arch = LETHE_ARCH_QWEN2;
        hp->qkv_bias = true;
        snprintf(hp->arch_name, sizeof hp->arch_name, "qwen2");
    } else if (!strcmp(a, "qwen3")) {
        hp->arch = LETHE_ARCH_QWEN3;
        hp->qk_norm = true;
        snprintf(hp->arch_name, sizeof hp->arch_name, "qwen3");
    } else {
        return lethe_fail(LETHE_ERR_UNSUPPORTED,
                          "config.json: model_type '%.32s' is not supported (llama, mistral, qwen2, qwen3 are)", a);
    }
    const int64_t big = 1 << 20;
    TRY(cfg_int(root, "num_hidden_layers", &hp->n_layer, true, 1, 4096));
    TRY(cfg_int(root, "hidden_size", &hp->n_embd, true, 1, big));
    TRY(cfg_int(root, "intermediate_size", &hp->n_ff, true, 1, 16 * big));
    TRY(cfg_int(root, "num_attention_heads", &hp->n_head, true, 1, 4096));
    TRY(cfg_int(root, "vocab_size", &hp->n_vocab, true, 1, 1 << 24));
    hp->n_head_kv = hp->n_head;
    TRY(cfg_int(root, "num_key_value_heads", &hp->n_head_kv, false, 1, 4096));
    if (hp->n_head % hp->n_head_kv != 0)
        return lethe_fail(LETHE_ERR_CORRUPT, "config.json: %d attention heads is not a multiple of %d KV heads",
                          hp->n_head, hp->n_head_kv);
    hp->head_dim = hp->n_embd / hp->n_head;
    TRY(cfg_int(root, "head_dim", &hp->head_dim, false, 1, 4096));
    if (hp->head_dim < 2 || hp->head_dim % 2)
        return lethe_fail(LETHE_ERR_CORRUPT, "config.json: head dimension %d must be even and >= 2", hp->head_dim);
    hp->n_ctx_train = 4096;
    TRY(cfg_int(root, "max_position_embeddings", &hp->n_ctx_train, false, 1, 1 << 24));
    hp->norm_eps = 1e-6f;
    TRY(cfg_num(root, "config.json", "rms_norm_eps", &hp->norm_eps));
    if (!(hp->norm_eps > 0 && hp->norm_eps < 1))
        return lethe_fail(LETHE_ERR_CORRUPT, "config.json: rms_norm_eps %g out of range", hp->norm_eps);
    json_t *act = json_object_get(root, "hidden_act");
    if (act && !(json_is_string(act) && !strcmp(json_string_value(act), "silu")))
        return lethe_fail(LETHE_ERR_UNSUPPORTED, "config.json: hidden_act must be \"silu\"");
    bool b = false;
    TRY(cfg_bool(root, "attention_bias", &b));
    if (b && hp->arch != LETHE_ARCH_QWEN2)   /* llama's attention_bias also biases o_proj */
        return lethe_fail(LETHE_ERR_UNSUPPORTED, "config.json: attention_bias is not supported for %s", a);
    b = false;
    TRY(cfg_bool(root, "mlp_bias", &b));
    if (b) return lethe_fail(LETHE_ERR_UNSUPPORTED, "config.json: mlp_bias is not supported");
    b = false;
    TRY(cfg_bool(root, "use_sliding_window", &b));
    if (b) return lethe_fail(LETHE_ERR_UNSUPPORTED, "config.json: use_sliding_window is not supported");
    b = false;
    TRY(cfg_bool(root, "tie_word_embeddings", &b));
    hp->tied_output = b;
    TRY(parse_rope(root, hp));
    TRY(parse_dms(root, hp));
    return LETHE_OK;
}

lethe_status lethe_hf_parse_config(const char *text, size_t len, lethe_hparams *hp) {
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return lethe_fail(LETHE_ERR_CORRUPT, "config.json: invalid JSON: %s (line %d, column %d)", err.text, err.line,
                          err.column);
    lethe_status s = parse_root(root, hp);
    json_decref(root);
    return s;
}

/* ---- weights -------------------------------------------------------------------- */

static void *hf_own(lethe_hf *hf, size_t bytes) {
    if (hf->n_owned == hf->cap_owned) {
        size_t cap = hf->cap_owned ? hf->cap_owned * 2 : 64;
        void **v = realloc(hf->owned, cap * sizeof *v);
        if (!v) return NULL;
        hf->owned = v;
        hf->cap_owned = cap;
    }
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (p) hf->owned[hf->n_owned++] = p;
    return p;
}

/* Bind an HF tensor: ne0 innermost, ne1 rows (0: a vector, copied to f32). */
static lethe_status bind(lethe_hf *hf, lethe_tensor *t, const char *name, int64_t ne0, int64_t ne1, bool required,
                         bool *found) {
    const lethe_st_tensor *s = lethe_safetensors_find(hf->st, name);
    if (found) *found = s != NULL;
    if (!s) {
        if (required) return lethe_fail(LETHE_ERR_MISSING_TENSOR, "model: tensor '%s' is missing", name);
        return LETHE_OK;
    }
    if (s->type != LETHE_F32 && s->type != LETHE_F16 && s->type != LETHE_BF16)
        return lethe_fail(LETHE_ERR_UNSUPPORTED_DTYPE, "model: tensor '%s' has dtype %s (f32, f16, bf16 are supported)",
                          name, s->st_dtype);
    int want_dims = ne1 ? 2 : 1;
    if (s->n_dims != want_dims || s->ne[0] != ne0 || (ne1 && s->ne[1] != ne1))
        return lethe_fail(LETHE_ERR_SHAPE, "model: tensor '%s' has shape [%lld, %lld] (%d dims), expected [%lld, %lld]",
                          name, (long long)s->ne[1], (long long)s->ne[0], s->n_dims, (long long)(ne1 ? ne1 : 1),
                          (long long)ne0);
    int64_t ne[2] = {ne0, ne1 ? ne1 : 1};
    const lethe_dtype_traits *tr = lethe_dtype_get(s->type);
    if (!ne1 && s->type != LETHE_F32) {
        float *f = hf_own(hf, (size_t)ne0 * sizeof(float));
        if (!f) return lethe_fail(LETHE_ERR_OOM, "model: out of memory");
        tr->to_f32(s->data, f, ne0);
        lethe_tensor_init(t, LETHE_F32, 2, ne);
        t->data = f;
    } else {
        lethe_tensor_init(t, (lethe_dtype)s->type, 2, ne);
        t->data = (void *)s->data;
        if ((uintptr_t)s->data % tr->type_size) {   /* safetensors does not promise alignment */
            void *p = hf_own(hf, s->size);
            if (!p) return lethe_fail(LETHE_ERR_OOM, "model: out of memory");
            memcpy(p, s->data, s->size);
            t->data = p;
        }
    }
    snprintf(t->name, sizeof t->name, "%s", name);
    return LETHE_OK;
}

static lethe_status load_weights(lethe_model *m) {
    lethe_hf *hf = m->hf;
    lethe_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, D = hp->head_dim, Hq = hp->n_head, Hkv = hp->n_head_kv, F = hp->n_ff,
                  V = hp->n_vocab;
    TRY(bind(hf, &m->tok_embd, "model.embed_tokens.weight", E, V, true, NULL));
    TRY(bind(hf, &m->output_norm, "model.norm.weight", E, 0, true, NULL));
    bool has_out = false;
    if (!hp->tied_output) TRY(bind(hf, &m->output, "lm_head.weight", E, V, false, &has_out));
    hp->tied_output = !has_out;
    if (!has_out) m->output = m->tok_embd;

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) return lethe_fail(LETHE_ERR_OOM, "model: layers");
    char name[128];
    const char *P = "model.layers";
#define B(field, suffix, ne0, ne1, req, found)                       \
    do {                                                             \
        snprintf(name, sizeof name, "%s.%d.%s", P, l, suffix);       \
        TRY(bind(hf, &L->field, name, ne0, ne1, req, found));        \
    } while (0)
    lethe_dms_hparams *d = &hp->dms;
    for (int l = 0; l < hp->n_layer; l++) {
        lethe_layer *L = &m->layers[l];
        B(attn_norm, "input_layernorm.weight", E, 0, true, NULL);
        B(wq, "self_attn.q_proj.weight", E, Hq * D, true, NULL);
        B(wk, "self_attn.k_proj.weight", E, Hkv * D, true, NULL);
        B(wv, "self_attn.v_proj.weight", E, Hkv * D, true, NULL);
        B(wo, "self_attn.o_proj.weight", Hq * D, E, true, NULL);
        if (hp->qkv_bias) {
            B(bq, "self_attn.q_proj.bias", Hq * D, 0, true, NULL);
            B(bk, "self_attn.k_proj.bias", Hkv * D, 0, true, NULL);
            B(bv, "self_attn.v_proj.bias", Hkv * D, 0, true, NULL);
        }
        if (hp->qk_norm) {
            B(q_norm, "self_attn.q_norm.weight", D, 0, true, NULL);
            B(k_norm, "self_attn.k_norm.weight", D, 0, true, NULL);
        }
        B(ffn_norm, "post_attention_layernorm.weight", E, 0, true, NULL);
        B(w_gate, "mlp.gate_proj.weight", E, F, true, NULL);
        B(w_up, "mlp.up_proj.weight", E, F, true, NULL);
        B(w_down, "mlp.down_proj.weight", F, E, true, NULL);

        /* DMS adapter: [Hkv, E] per head, [1, E] with alpha_per "layer" */
        snprintf(name, sizeof name, "%s.%d.self_attn.dms_proj_alpha.weight", P, l);
        bool has_alpha = lethe_safetensors_find(hf->st, name) != NULL;
        if (has_alpha && d->variant == LETHE_DMS_NONE) {
            /* adapter tensors without config keys: a DMS model with the defaults */
            d->variant = LETHE_DMS_ADAPTER;
            d->window = 512;
            d->alpha_scale = 100.0f;
            d->alpha_offset = 5.0f;
        }
        if (d->variant == LETHE_DMS_ADAPTER) {
            B(dms_alpha, "self_attn.dms_proj_alpha.weight", E, d->per_layer ? 1 : Hkv, true, NULL);
            B(dms_alpha_norm, "self_attn.dms_proj_alpha_norm.weight", E, 0, true, NULL);
        } else if (has_alpha) {
            return lethe_fail(LETHE_ERR_CORRUPT,
                              "model: '%s' is present but config.json declares the neuron DMS variant "
                              "(dms_separate_alpha is false)", name);
        }
    }
#undef B
    return LETHE_OK;
}

/* ---- files -------------------------------------------------------------------- */

/* Read a whole small file (config, tokenizer). *text NULL if it does not exist. */
lethe_status lethe_hf_read_text(const char *dir, const char *file, char **text, size_t *len, bool required) {
    *text = NULL;
    *len = 0;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "model: path too long");
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (required) return lethe_fail(LETHE_ERR_IO, "model: '%s' has no %s", dir, file);
        return LETHE_OK;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            if (cap >= ((size_t)1 << 30)) { free(buf); fclose(f);
                return lethe_fail(LETHE_ERR_CORRUPT, "model: %s is larger than 1 GiB", file); }
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    bool err = ferror(f);
    fclose(f);
    if (!buf) return lethe_fail(LETHE_ERR_OOM, "model: out of memory reading %s", file);
    if (err) { free(buf); return lethe_fail(LETHE_ERR_IO, "model: cannot read %s", file); }
    buf[n] = 0;
    *text = buf;
    *len = n;
    return LETHE_OK;
}

static lethe_status parse_generation(lethe_hf *hf, const char *text, size_t len) {
    json_error_t err;
    json_t *root = json_loadb(text, len, 0, &err);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return lethe_fail(LETHE_ERR_CORRUPT, "generation_config.json: invalid JSON: %s", root ? "not an object" : err.text);
    }
    lethe_hf_generation *g = &hf->gen;
    lethe_status s = LETHE_OK;
    json_t *v;
    if ((v = json_object_get(root, "temperature")) && json_is_number(v)) {
        g->has_temperature = true;
        s = cfg_num(root, "generation_config.json", "temperature", &g->temperature);
    }
    if (s == LETHE_OK && (v = json_object_get(root, "top_p")) && json_is_number(v)) {
        g->has_top_p = true;
        s = cfg_num(root, "generation_config.json", "top_p", &g->top_p);
    }
    if ((v = json_object_get(root, "top_k")) && json_is_integer(v) && json_integer_value(v) >= 0 &&
        json_integer_value(v) < (1 << 24)) {
        g->has_top_k = true;
        g->top_k = (int32_t)json_integer_value(v);
    }
    if ((v = json_object_get(root, "do_sample")) && json_is_boolean(v)) g->do_sample = json_is_true(v);
    json_decref(root);
    return s;
}

void lethe_hf_free(lethe_hf *hf) {
    if (!hf) return;
    for (size_t i = 0; i < hf->n_owned; i++) free(hf->owned[i]);
    free(hf->owned);
    free(hf->config_text);
    lethe_safetensors_close(hf->st);
    free(hf);
}

lethe_status lethe_hf_load(lethe_model *m, const char *dir) {
    lethe_hf *hf = calloc(1, sizeof *hf);
    if (!hf) return lethe_fail(LETHE_ERR_OOM, "model: out of memory");
    m->hf = hf;
    size_t len;
    TRY(lethe_hf_read_text(dir, "config.json", &hf->config_text, &len, true));
    TRY(lethe_hf_parse_config(hf->config_text, len, &m->hp));
    lethe_status s;
    hf->st = lethe_safetensors_open_dir(dir, &s);
    if (!hf->st) return s;
    TRY(load_weights(m));

    char *tj = NULL, *tc = NULL, *gc = NULL, *jinja = NULL;
    size_t tj_len, tc_len, gc_len, jinja_len;
    s = lethe_hf_read_text(dir, "tokenizer.json", &tj, &tj_len, true);
    if (s == LETHE_OK) s = lethe_hf_read_text(dir, "tokenizer_config.json", &tc, &tc_len, false);
    if (s == LETHE_OK) s = lethe_hf_read_text(dir, "generation_config.json", &gc, &gc_len, false);
    if (s == LETHE_OK) s = lethe_hf_read_text(dir, "chat_template.jinja", &jinja, &jinja_len, false);
    lethe_hf_tokenizer_files files = {tj, tj_len, tc, tc_len, gc, gc_len, jinja, 0};
    char *tmpl = NULL;
    if (s == LETHE_OK) m->tok = lethe_tokenizer_from_hf(&files, &tmpl, &s);
    if (s == LETHE_OK && gc) s = parse_generation(hf, gc, gc_len);
    free(tj);
    free(tc);
    free(gc);
    free(jinja);
    if (s != LETHE_OK) {
        free(tmpl);
        return s;
    }
    if (lethe_tokenizer_n_vocab(m->tok) > m->hp.n_vocab) {
        free(tmpl);
        return lethe_fail(LETHE_ERR_CORRUPT, "model: tokenizer has %d tokens but the embedding only %d rows",
                          lethe_tokenizer_n_vocab(m->tok), m->hp.n_vocab);
    }
    m->chat_style = lethe_chat_detect(tmpl);
    m->chat_system = tmpl ? lethe_chat_default_system(tmpl) : NULL;
    free(tmpl);

    lethe_model_info *in = &m->info;
    /* the directory's name, as GGUF's general.name would be */
    char tmp[sizeof in->name];
    snprintf(tmp, sizeof tmp, "%s", dir);
    size_t tl = strlen(tmp);
    while (tl > 1 && tmp[tl - 1] == '/') tmp[--tl] = 0;
    const char *base = strrchr(tmp, '/');
    snprintf(in->name, sizeof in->name, "%s", base ? base + 1 : tmp);
    for (size_t i = 0; i < hf->st->n_tensors; i++) {
        const lethe_st_tensor *t = &hf->st->tensors[i];
        in->n_params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        in->weight_bytes += t->size;
    }
    return LETHE_OK;
}

int lethe_hf_meta_str(const lethe_hf *hf, const char *key, char *buf, size_t buf_size) {
    if (!hf || !key || !buf || !buf_size) return -1;
    const lethe_hf_generation *g = &hf->gen;
    if (!strcmp(key, "generation.temperature") && g->has_temperature)
        return snprintf(buf, buf_size, "%g", g->temperature);
    if (!strcmp(key, "generation.top_p") && g->has_top_p) return snprintf(buf, buf_size, "%g", g->top_p);
    if (!strcmp(key, "generation.top_k") && g->has_top_k) return snprintf(buf, buf_size, "%d", g->top_k);
    json_t *root = json_loads(hf->config_text ? hf->config_text : "", 0, NULL);
    if (!root) return -1;
    json_t *v = json_object_get(root, key);
    int n = -1;
    if (json_is_string(v)) n = snprintf(buf, buf_size, "%s", json_string_value(v));
    else if (json_is_integer(v)) n = snprintf(buf, buf_size, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v)) n = snprintf(buf, buf_size, "%g", json_real_value(v));
    else if (json_is_boolean(v)) n = snprintf(buf, buf_size, "%s", json_is_true(v) ? "true" : "false");
    json_decref(root);
    return n;
}
