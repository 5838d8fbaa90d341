/* hf_convert.c — HF directory → GGUF (see hf_convert.h).
 *
 * The model is loaded with the ordinary HF loader (so every check applies),
 * then each weight is converted row by row: source dtype → f32 → target
 * dtype, with llama's Q/K rows permuted on the way. Converted tensors are
 * held in memory until the single write. */
#include "hf_convert.h"
#include "common.h"
#include "gguf_write.h"
#include "hf_model.h"
#include "hf_tokenizer.h"
#include "model.h"

#include <math.h>
#include <string.h>

typedef struct conv {
    lethe_gguf_writer *w;
    void **bufs;
    size_t n_bufs, cap_bufs;
    const char *arch;
    char key[160];
} conv;

static void *conv_alloc(conv *c, size_t bytes) {
    if (c->n_bufs == c->cap_bufs) {
        size_t cap = c->cap_bufs ? c->cap_bufs * 2 : 64;
        void **v = realloc(c->bufs, cap * sizeof *v);
        if (!v) return NULL;
        c->bufs = v;
        c->cap_bufs = cap;
    }
    void *p = malloc(bytes ? bytes : 1);
    if (p) c->bufs[c->n_bufs++] = p;
    return p;
}

static const char *k(conv *c, const char *suffix) {
    snprintf(c->key, sizeof c->key, "%s.%s", c->arch, suffix);
    return c->key;
}

/* Source row r of t as f32. */
static void row_f32(const lethe_tensor *t, int64_t r, float *out) {
    const lethe_dtype_traits *tr = lethe_dtype_get(t->type);
    tr->to_f32((const uint8_t *)t->data + (size_t)r * t->nb[1], out, t->ne[0]);
}

/* Add a tensor converted to `type`; n_head > 0 permutes rows within each head
 * for llama's NORM RoPE: new row 2i (+1) of a head = old row i (+ D/2), i.e.
 * the rotate-half pairs (i, i + D/2) become adjacent pairs. */
static lethe_status add(conv *c, const char *name, const lethe_tensor *t, lethe_dtype type, int n_head) {
    const int64_t ne0 = t->ne[0], rows = t->ne[1];
    bool vec = rows == 1 && (strstr(name, "norm") || strstr(name, "bias"));
    if (vec) type = LETHE_F32;
    const lethe_dtype_traits *dst = lethe_dtype_get(type);
    if (!dst || !dst->from_f32)
        return lethe_fail(LETHE_ERR_UNSUPPORTED, "convert: cannot write tensors of type %s", lethe_dtype_name(type));
    if (ne0 % dst->blck_size) {   /* llama.cpp does the same fallback */
        type = LETHE_F16;
        dst = lethe_dtype_get(type);
    }
    size_t row_bytes = lethe_row_size(type, ne0);
    uint8_t *out = conv_alloc(c, row_bytes * (size_t)rows);
    float *tmp = malloc((size_t)ne0 * sizeof *tmp);
    if (!out || !tmp) {
        free(tmp);
        return lethe_fail(LETHE_ERR_OOM, "convert: out of memory for '%s'", name);
    }
    int64_t D = n_head > 0 ? rows / n_head : 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t src = r;
        if (n_head > 0) {
            int64_t h = r / D, j = r % D;
            src = h * D + (j % 2 ? D / 2 + j / 2 : j / 2);
        }
        row_f32(t, src, tmp);
        dst->from_f32(tmp, out + (size_t)r * row_bytes, ne0);
    }
    free(tmp);
    int64_t ne[2] = {ne0, rows};
    return lethe_gguf_writer_add_tensor(c->w, name, type, vec ? 1 : 2, ne, out, false);
}

/* Llama 3 rope scaling as per-frequency divisors (what llama.cpp's converter
 * stores as rope_freqs.weight and lethe's GGUF loader reads back). */
static lethe_status add_llama3_freqs(conv *c, const lethe_rope_params *r) {
    int n = r->n_rot / 2;
    float *f = conv_alloc(c, (size_t)n * sizeof *f);
    if (!f) return lethe_fail(LETHE_ERR_OOM, "convert: out of memory");
    const double lo_wl = r->llama3_orig_ctx / r->llama3_low_freq_factor;
    const double hi_wl = r->llama3_orig_ctx / r->llama3_high_freq_factor;
    for (int i = 0; i < n; i++) {
        double freq = 1.0 / pow(r->freq_base, (2.0 * i) / r->n_rot);
        double wl = 2 * M_PI / freq;
        if (wl < hi_wl) {
            f[i] = 1.0f;
        } else if (wl > lo_wl) {
            f[i] = r->llama3_factor;
        } else {
            double smooth = (r->llama3_orig_ctx / wl - r->llama3_low_freq_factor) /
                            (r->llama3_high_freq_factor - r->llama3_low_freq_factor);
            f[i] = (float)(1.0 / ((1 - smooth) / r->llama3_factor + smooth));
        }
    }
    int64_t ne[1] = {n};
    return lethe_gguf_writer_add_tensor(c->w, "rope_freqs.weight", LETHE_F32, 1, ne, f, false);
}

#define TRY(x) do { if ((s = (x)) != LETHE_OK) goto done; } while (0)

static lethe_status add_tokenizer(conv *c, const char *dir, int32_t n_vocab) {
    char *tj = NULL, *tc = NULL, *gc = NULL, *jinja = NULL;
    size_t tj_len = 0, tc_len = 0, gc_len = 0, jl = 0;
    lethe_status s;
    TRY(lethe_hf_read_text(dir, "tokenizer.json", &tj, &tj_len, true));
    TRY(lethe_hf_read_text(dir, "tokenizer_config.json", &tc, &tc_len, false));
    TRY(lethe_hf_read_text(dir, "generation_config.json", &gc, &gc_len, false));
    TRY(lethe_hf_read_text(dir, "chat_template.jinja", &jinja, &jl, false));
    lethe_hf_tokenizer_files f = {tj, tj_len, tc, tc_len, gc, gc_len, jinja, n_vocab};
    s = lethe_hf_tokenizer_to_gguf(&f, c->w);
done:
    free(tj);
    free(tc);
    free(gc);
    free(jinja);
    return s;
}

lethe_status lethe_hf_convert(const char *dir, const char *out_path, lethe_dtype type) {
    if (!dir || !out_path) return lethe_fail(LETHE_ERR_INVALID_ARG, "convert: no input or output path");
    if (!lethe_hf_is_dir(dir)) return lethe_fail(LETHE_ERR_INVALID_ARG, "convert: '%s' is not a model directory", dir);
    if (type != LETHE_F32 && type != LETHE_F16 && type != LETHE_BF16 && type != LETHE_Q8_0 && type != LETHE_Q4_0)
        return lethe_fail(LETHE_ERR_UNSUPPORTED, "convert: output type %s (f32, f16, bf16, q8_0, q4_0 are supported)",
                          lethe_dtype_name(type));
    lethe_status s = LETHE_OK;
    lethe_model *m = lethe_model_load(dir, lethe_model_default_params(), &s);
    if (!m) return s;
    conv c = {0};
    c.w = lethe_gguf_writer_new();
    if (!c.w) {
        lethe_model_free(m);
        return LETHE_ERR_OOM;
    }
    const lethe_hparams *hp = &m->hp;
    c.arch = hp->arch_name;
    lethe_gguf_writer *w = c.w;
    TRY(lethe_gguf_writer_add_str(w, "general.architecture", hp->arch_name));
    TRY(lethe_gguf_writer_add_str(w, "general.name", m->info.name));
    TRY(lethe_gguf_writer_add_u32(w, k(&c, "block_count"), (uint32_t)hp->n_layer));
    TRY(lethe_gguf_writer_add_u32(w, k(&c, "context_length"), (uint32_t)hp->n_ctx_train));
    TRY(lethe_gguf_writer_add_u32(w, k(&c, "embedding_length"), (uint32_t)hp->n_embd));
    TRY(lethe_gguf_writer_add_u32(w, k(&c, "feed_forward_length"), (uint32_t)hp->n_ff));
    TRY(lethe_gguf_writer_add_u32(w, k(&c, "attention.head_count"), (uint32_t)hp->n_head));
    TRY(lethe_gguf_writer_add_u32(w, k(&c, "attention.head_count_kv"), (uint32_t)hp->n_head_kv));
    TRY(lethe_gguf_writer_add_u32(w, k(&c, "attention.key_length"), (uint32_t)hp->head_dim));
    TRY(lethe_gguf_writer_add_u32(w, k(&c, "attention.value_length"), (uint32_t)hp->head_dim));
    TRY(lethe_gguf_writer_add_f32(w, k(&c, "attention.layer_norm_rms_epsilon"), hp->norm_eps));
    TRY(lethe_gguf_writer_add_u32(w, k(&c, "rope.dimension_count"), (uint32_t)hp->rope.n_rot));
    TRY(lethe_gguf_writer_add_f32(w, k(&c, "rope.freq_base"), hp->rope.freq_base));
    TRY(lethe_gguf_writer_add_u32(w, k(&c, "vocab_size"), (uint32_t)hp->n_vocab));
    if (hp->rope.freq_scale != 1.0f) {
        TRY(lethe_gguf_writer_add_str(w, k(&c, "rope.scaling.type"), "linear"));
        TRY(lethe_gguf_writer_add_f32(w, k(&c, "rope.scaling.factor"), 1.0f / hp->rope.freq_scale));
    }
    const lethe_dms_hparams *d = &hp->dms;
    if (d->variant != LETHE_DMS_NONE) {
        TRY(lethe_gguf_writer_add_u32(w, k(&c, "dms.window_size"), (uint32_t)d->window));
        TRY(lethe_gguf_writer_add_f32(w, k(&c, "dms.alpha_scale"), d->alpha_scale));
        TRY(lethe_gguf_writer_add_f32(w, k(&c, "dms.alpha_offset"), d->alpha_offset));
        TRY(lethe_gguf_writer_add_str(w, k(&c, "dms.variant"), d->variant == LETHE_DMS_ADAPTER ? "adapter" : "neuron"));
        TRY(lethe_gguf_writer_add_str(w, k(&c, "dms.alpha_per"), d->per_layer ? "layer" : "head"));
    }
    TRY(add_tokenizer(&c, dir, hp->n_vocab));

    /* llama (NORM rope in GGUF): permute Q and K rows per head */
    const int pq = hp->arch == LETHE_ARCH_LLAMA ? hp->n_head : 0, pk = hp->arch == LETHE_ARCH_LLAMA ? hp->n_head_kv : 0;
    TRY(add(&c, "token_embd.weight", &m->tok_embd, type, 0));
    TRY(add(&c, "output_norm.weight", &m->output_norm, type, 0));
    if (!hp->tied_output) TRY(add(&c, "output.weight", &m->output, type, 0));
    if (hp->rope.llama3_factor > 0) TRY(add_llama3_freqs(&c, &hp->rope));
    char name[96];
#define T(suffix, field, perm)                                                 \
    do {                                                                       \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);                   \
        TRY(add(&c, name, &L->field, type, perm));                             \
    } while (0)
    for (int l = 0; l < hp->n_layer; l++) {
        const lethe_layer *L = &m->layers[l];
        T("attn_norm.weight", attn_norm, 0);
        T("attn_q.weight", wq, pq);
        T("attn_k.weight", wk, pk);
        T("attn_v.weight", wv, 0);
        T("attn_output.weight", wo, 0);
        if (hp->qkv_bias) {
            T("attn_q.bias", bq, 0);
            T("attn_k.bias", bk, 0);
            T("attn_v.bias", bv, 0);
        }
        if (hp->qk_norm) {
            T("attn_q_norm.weight", q_norm, 0);
            T("attn_k_norm.weight", k_norm, 0);
        }
        T("ffn_norm.weight", ffn_norm, 0);
        T("ffn_gate.weight", w_gate, 0);
        T("ffn_up.weight", w_up, 0);
        T("ffn_down.weight", w_down, 0);
        if (d->variant == LETHE_DMS_ADAPTER) {
            /* a tiny matrix the decision depends on sharply: kept in f32 */
            snprintf(name, sizeof name, "blk.%d.dms_alpha.weight", l);
            TRY(add(&c, name, &L->dms_alpha, LETHE_F32, 0));
            T("dms_alpha_norm.weight", dms_alpha_norm, 0);
        }
    }
#undef T
    s = lethe_gguf_writer_write_file(w, out_path);
done:
    lethe_gguf_writer_free(c.w);
    for (size_t i = 0; i < c.n_bufs; i++) free(c.bufs[i]);
    free(c.bufs);
    lethe_model_free(m);
    return s;
}
