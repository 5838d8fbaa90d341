/* hf_tokenizer.c — tokenizer.json → GGUF tokenizer keys → lethe tokenizer
 * (see hf_tokenizer.h for what is supported and why it goes through GGUF). */
#include "hf_tokenizer.h"
#include "common.h"
#include "gguf.h"
#include "tokenizer_pre.h"

#include <jansson.h>
#include <string.h>

#define TRY(x) do { lethe_status _s = (x); if (_s != LETHE_OK) return _s; } while (0)
#define MAX_PRE 8
#define SPM_SPACE "\xe2\x96\x81"

/* GGUF token types (llama.cpp's llama_token_type). */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6 };

typedef struct tok_build {
    int32_t n;              /* vocabulary size (max id + 1) */
    char **text;            /* [n] borrowed from the JSON (NULL: a hole) */
    int32_t *type;          /* [n] */
    float *score;           /* [n] SentencePiece-style only */
    bool spm;               /* SentencePiece-style (▁, byte fallback) rather than byte-level */
    const char *pre[MAX_PRE];
    char *pre_owned[MAX_PRE];
    int n_pre;
    const char *normalizer; /* "nfc" / "nfkc" / NULL */
    bool add_space_prefix;
    bool ignore_merges;
} tok_build;

static void build_free(tok_build *b) {
    free(b->text);
    free(b->type);
    free(b->score);
    for (int i = 0; i < b->n_pre; i++) free(b->pre_owned[i]);
}

static const char *type_of(json_t *o) {
    json_t *t = json_object_get(o, "type");
    return json_is_string(t) ? json_string_value(t) : "";
}

static lethe_status add_pre(tok_build *b, const char *expr, char *owned) {
    if (b->n_pre >= MAX_PRE) {
        free(owned);
        return lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer.json: more than %d pre-tokenizer steps", MAX_PRE);
    }
    b->pre_owned[b->n_pre] = owned;
    b->pre[b->n_pre++] = expr;
    return LETHE_OK;
}

/* A literal string as a PCRE2 pattern. */
static char *quote_literal(const char *s) {
    size_t n = strlen(s);
    char *o = malloc(n * 2 + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (strchr("\\^$.|?*+()[]{}", s[i])) o[k++] = '\\';
        o[k++] = s[i];
    }
    o[k] = 0;
    return o;
}

static lethe_status parse_pre(tok_build *b, json_t *p, int depth) {
    if (!p || json_is_null(p)) return LETHE_OK;
    if (!json_is_object(p) || depth > 4) return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: invalid pre_tokenizer");
    const char *t = type_of(p);
    if (!strcmp(t, "Sequence")) {
        json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list)) return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: Sequence without pretokenizers");
        for (size_t i = 0; i < json_array_size(list); i++) TRY(parse_pre(b, json_array_get(list, i), depth + 1));
        return LETHE_OK;
    }
    if (!strcmp(t, "ByteLevel")) {
        if (json_is_true(json_object_get(p, "add_prefix_space")))
            return lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer.json: ByteLevel add_prefix_space is not supported");
        json_t *ur = json_object_get(p, "use_regex");
        if (!ur || json_is_true(ur)) return add_pre(b, lethe_pretok_gpt2_regex, NULL);
        return LETHE_OK;
    }
    if (!strcmp(t, "Split")) {
        json_t *pat = json_object_get(p, "pattern");
        json_t *beh = json_object_get(p, "behavior");
        if (!json_is_string(beh) || strcmp(json_string_value(beh), "Isolated") || json_is_true(json_object_get(p, "invert")))
            return lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer.json: Split behaviour '%.32s' is not supported (Isolated is)",
                              json_is_string(beh) ? json_string_value(beh) : "?");
        json_t *re = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
        if (json_is_string(re)) return add_pre(b, json_string_value(re), NULL);
        if (json_is_string(lit)) {
            char *q = quote_literal(json_string_value(lit));
            if (!q) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
            return add_pre(b, q, q);
        }
        return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: Split without a Regex or String pattern");
    }
    if (!strcmp(t, "Digits"))
        return add_pre(b, json_is_true(json_object_get(p, "individual_digits")) ? "\\p{N}" : "\\p{N}+", NULL);
    if (!strcmp(t, "Metaspace")) {
        json_t *rep = json_object_get(p, "replacement");
        if (json_is_string(rep) && strcmp(json_string_value(rep), SPM_SPACE))
            return lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer.json: Metaspace replacement other than U+2581");
        if (json_is_true(json_object_get(p, "split")))
            return lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer.json: Metaspace with split=true is not supported");
        json_t *ps = json_object_get(p, "prepend_scheme");
        b->add_space_prefix = !json_is_string(ps) || strcmp(json_string_value(ps), "never");
        if (json_is_false(json_object_get(p, "add_prefix_space"))) b->add_space_prefix = false;
        b->spm = true;
        return LETHE_OK;
    }
    return lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer.json: pre-tokenizer '%.32s' is not supported", t);
}

static lethe_status parse_normalizer(tok_build *b, json_t *p, int depth) {
    if (!p || json_is_null(p)) return LETHE_OK;
    if (!json_is_object(p) || depth > 4) return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: invalid normalizer");
    const char *t = type_of(p);
    if (!strcmp(t, "Sequence")) {
        json_t *list = json_object_get(p, "normalizers");
        if (!json_is_array(list)) return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: Sequence without normalizers");
        for (size_t i = 0; i < json_array_size(list); i++) TRY(parse_normalizer(b, json_array_get(list, i), depth + 1));
        return LETHE_OK;
    }
    if (!strcmp(t, "NFC")) { b->normalizer = "nfc"; return LETHE_OK; }
    if (!strcmp(t, "NFKC")) { b->normalizer = "nfkc"; return LETHE_OK; }
    if (!strcmp(t, "Prepend")) {   /* Llama 2: Prepend("▁") + Replace(" ", "▁") */
        json_t *s = json_object_get(p, "prepend");
        if (!json_is_string(s) || strcmp(json_string_value(s), SPM_SPACE))
            return lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer.json: Prepend normalizer other than U+2581");
        b->add_space_prefix = true;
        b->spm = true;
        return LETHE_OK;
    }
    if (!strcmp(t, "Replace")) {
        json_t *pat = json_object_get(json_object_get(p, "pattern"), "String");
        json_t *content = json_object_get(p, "content");
        if (json_is_string(pat) && json_is_string(content) && !strcmp(json_string_value(pat), " ") &&
            !strcmp(json_string_value(content), SPM_SPACE)) {
            b->spm = true;
            return LETHE_OK;
        }
        return lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer.json: Replace normalizer other than ' ' -> U+2581");
    }
    return lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer.json: normalizer '%.32s' is not supported", t);
}

/* A special-token field of tokenizer_config.json: "text" or {"content": "text"}. */
static const char *special_text(json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int32_t find_id(const tok_build *b, const char *s) {
    if (!s) return -1;
    for (int32_t i = 0; i < b->n; i++)
        if (b->text[i] && !strcmp(b->text[i], s)) return i;
    return -1;
}

static bool is_byte_token(const char *s) {
    return strlen(s) == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>';
}

static lethe_status add_ids(lethe_gguf_writer *w, const char *key, int32_t id) {
    if (id < 0) return LETHE_OK;
    return lethe_gguf_writer_add_u32(w, key, (uint32_t)id);
}

/* The chat template: tokenizer_config.json "chat_template" (a string, or a
 * list of {name, template} whose "default" is taken), else chat_template.jinja. */
static const char *chat_template(json_t *cfg, const char *jinja) {
    json_t *ct = json_object_get(cfg, "chat_template");
    if (json_is_string(ct)) return json_string_value(ct);
    if (json_is_array(ct)) {
        for (size_t i = 0; i < json_array_size(ct); i++) {
            json_t *e = json_array_get(ct, i);
            json_t *name = json_object_get(e, "name"), *tmpl = json_object_get(e, "template");
            if (json_is_string(name) && !strcmp(json_string_value(name), "default") && json_is_string(tmpl))
                return json_string_value(tmpl);
        }
    }
    return jinja;
}

static lethe_status convert(json_t *root, json_t *cfg, json_t *gen, const char *jinja, int32_t pad_to, tok_build *b,
                            lethe_gguf_writer *w) {
    if (!json_is_object(root)) return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: not a JSON object");
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: no model");
    json_t *mt = json_object_get(model, "type");
    const char *mtype = json_is_string(mt) ? json_string_value(mt) : "BPE";   /* old files omit it */
    if (strcmp(mtype, "BPE"))
        return lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer.json: model type '%.32s' is not supported (BPE is)", mtype);
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: BPE model needs a vocab object and a merges array");
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added)) return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: added_tokens is not a list");

    /* vocabulary size: the largest id + 1 */
    int64_t max_id = -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= (1 << 24))
            return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: token '%.32s' has an invalid id", key);
        if (json_integer_value(val) > max_id) max_id = json_integer_value(val);
    }
    for (size_t i = 0; added && i < json_array_size(added); i++) {
        json_t *id = json_object_get(json_array_get(added, i), "id");
        json_t *content = json_object_get(json_array_get(added, i), "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= (1 << 24) ||
            !json_is_string(content))
            return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: added token %zu needs an id and a content", i);
        if (json_integer_value(id) > max_id) max_id = json_integer_value(id);
    }
    if (max_id < 0) return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: empty vocabulary");
    b->n = (int32_t)max_id + 1;
    if (pad_to > b->n) b->n = pad_to;
    b->text = calloc((size_t)b->n, sizeof *b->text);
    b->type = calloc((size_t)b->n, sizeof *b->type);
    if (!b->text || !b->type) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");

    TRY(parse_normalizer(b, json_object_get(root, "normalizer"), 0));
    TRY(parse_pre(b, json_object_get(root, "pre_tokenizer"), 0));
    json_t *bf = json_object_get(model, "byte_fallback");
    if (json_is_true(bf)) b->spm = true;
    if (b->spm && b->n_pre)
        return lethe_fail(LETHE_ERR_UNSUPPORTED,
                          "tokenizer.json: a SentencePiece-style vocabulary with a regex pre-tokenizer is not supported");
    if (!b->spm && !b->n_pre) {
        const char *dt = type_of(json_object_get(root, "decoder"));
        if (strcmp(dt, "ByteLevel"))
            return lethe_fail(LETHE_ERR_UNSUPPORTED,
                              "tokenizer.json: BPE that is neither byte-level nor SentencePiece-style is not supported");
    }
    b->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    json_t *unk = json_object_get(model, "unk_token");
    const char *unk_text = json_is_string(unk) ? json_string_value(unk) : NULL;

    json_object_foreach(vocab, key, val) {
        int32_t id = (int32_t)json_integer_value(val);
        if (b->text[id])
            return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: id %d is given to two tokens", id);
        b->text[id] = (char *)key;
        b->type[id] = b->spm && is_byte_token(key) ? TT_BYTE : unk_text && !strcmp(key, unk_text) ? TT_UNKNOWN : TT_NORMAL;
    }
    for (size_t i = 0; added && i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        int32_t id = (int32_t)json_integer_value(json_object_get(a, "id"));
        const char *content = json_string_value(json_object_get(a, "content"));
        if (b->text[id] && strcmp(b->text[id], content))
            return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: added token %d '%.32s' clashes with '%.32s'", id,
                              content, b->text[id]);
        b->text[id] = (char *)content;
        if (b->type[id] != TT_UNKNOWN && b->type[id] != TT_BYTE)
            b->type[id] = json_is_true(json_object_get(a, "special")) ? TT_CONTROL : TT_USER_DEFINED;
    }
    /* holes get placeholder names, as llama.cpp's converter does */
    char **hole_names = NULL;
    size_t n_holes = 0;
    for (int32_t i = 0; i < b->n; i++) n_holes += !b->text[i];
    if (n_holes) {
        hole_names = calloc(n_holes, sizeof *hole_names);
        if (!hole_names) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
    }
    lethe_status s = LETHE_OK;
    size_t h = 0;
    for (int32_t i = 0; i < b->n && s == LETHE_OK; i++) {
        if (b->text[i]) continue;
        char tmp[32];
        snprintf(tmp, sizeof tmp, "[PAD%d]", i);
        hole_names[h] = strdup(tmp);
        if (!hole_names[h]) s = lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
        b->text[i] = hole_names[h++];
        b->type[i] = TT_UNUSED;
    }

    /* merges: "a b" strings, or [a, b] pairs in newer files */
    size_t n_merges = json_array_size(merges);
    char **merge_str = s == LETHE_OK ? calloc(n_merges ? n_merges : 1, sizeof *merge_str) : NULL;
    if (s == LETHE_OK && !merge_str) s = lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
    for (size_t i = 0; i < n_merges && s == LETHE_OK; i++) {
        json_t *m = json_array_get(merges, i);
        if (json_is_string(m)) {
            merge_str[i] = strdup(json_string_value(m));
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            const char *l = json_string_value(json_array_get(m, 0)), *r = json_string_value(json_array_get(m, 1));
            size_t nl = strlen(l), nr = strlen(r);
            merge_str[i] = malloc(nl + nr + 2);
            if (merge_str[i]) {
                memcpy(merge_str[i], l, nl);
                merge_str[i][nl] = ' ';
                memcpy(merge_str[i] + nl + 1, r, nr + 1);
            }
        } else {
            s = lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer.json: merge %zu is neither \"a b\" nor [a, b]", i);
            break;
        }
        if (!merge_str[i]) s = lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
    }

    if (s == LETHE_OK && b->spm) {
        /* SentencePiece merges by the score of the merged token; a token made
         * by merge rank r scores -r, so the order is the merges' order. */
        b->score = malloc((size_t)b->n * sizeof *b->score);
        if (!b->score) s = lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
        for (int32_t i = 0; s == LETHE_OK && i < b->n; i++) b->score[i] = -1e9f - (float)i;
        for (size_t r = 0; s == LETHE_OK && r < n_merges; r++) {
            char *m = merge_str[r], *sp = strchr(m + (m[0] ? 1 : 0), ' ');
            if (!sp) continue;
            size_t len = strlen(m);
            char *joined = malloc(len);
            if (!joined) break;
            memcpy(joined, m, (size_t)(sp - m));
            memcpy(joined + (sp - m), sp + 1, len - (size_t)(sp - m));
            json_t *idv = json_object_get(vocab, joined);
            if (json_is_integer(idv)) {
                int32_t id = (int32_t)json_integer_value(idv);
                if (b->score[id] < -(float)r) b->score[id] = -(float)r;
            }
            free(joined);
        }
    }

    if (s == LETHE_OK) s = lethe_gguf_writer_add_str(w, "tokenizer.ggml.model", b->spm ? "llama" : "gpt2");
    if (s == LETHE_OK && !b->spm) {
        const char *name = lethe_pretok_known_name(b->pre, b->n_pre);
        s = lethe_gguf_writer_add_str(w, "tokenizer.ggml.pre", name ? name : "default");
        /* lethe runs the file's own expressions whether or not llama.cpp knows the name */
        if (s == LETHE_OK) s = lethe_gguf_writer_add_arr_str(w, "tokenizer.lethe.pre_exprs", b->pre, (uint64_t)b->n_pre);
        if (s == LETHE_OK) s = lethe_gguf_writer_add_bool(w, "tokenizer.lethe.ignore_merges", b->ignore_merges);
    }
    if (s == LETHE_OK)
        s = lethe_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)b->text, (uint64_t)b->n);
    if (s == LETHE_OK) s = lethe_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", LETHE_GGUF_I32, b->type, (uint64_t)b->n);
    if (s == LETHE_OK && b->spm)
        s = lethe_gguf_writer_add_arr(w, "tokenizer.ggml.scores", LETHE_GGUF_F32, b->score, (uint64_t)b->n);
    if (s == LETHE_OK && !b->spm)
        s = lethe_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merge_str, n_merges);
    if (s == LETHE_OK && b->spm) s = lethe_gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", b->add_space_prefix);
    if (s == LETHE_OK && b->normalizer) s = lethe_gguf_writer_add_str(w, "tokenizer.lethe.normalizer", b->normalizer);
    for (size_t i = 0; merge_str && i < n_merges; i++) free(merge_str[i]);
    free(merge_str);

    /* special tokens: tokenizer_config.json, else the post-processor template */
    int32_t bos = find_id(b, special_text(cfg, "bos_token"));
    int32_t eos = find_id(b, special_text(cfg, "eos_token"));
    int32_t pad = find_id(b, special_text(cfg, "pad_token"));
    int32_t unk_id = find_id(b, special_text(cfg, "unk_token"));
    if (unk_id < 0) unk_id = find_id(b, unk_text);
    bool add_bos = false, add_eos = false;
    json_t *pp = json_object_get(root, "post_processor");
    if (!strcmp(type_of(pp), "Sequence")) {
        json_t *list = json_object_get(pp, "processors");
        for (size_t i = 0; i < json_array_size(list); i++)
            if (!strcmp(type_of(json_array_get(list, i)), "TemplateProcessing")) pp = json_array_get(list, i);
    }
    if (!strcmp(type_of(pp), "TemplateProcessing")) {
        json_t *single = json_object_get(pp, "single");
        size_t ns = json_array_size(single);
        json_t *first = json_object_get(json_array_get(single, 0), "SpecialToken");
        json_t *last = ns ? json_object_get(json_array_get(single, ns - 1), "SpecialToken") : NULL;
        if (first) {
            int32_t id = find_id(b, json_string_value(json_object_get(first, "id")));
            if (id >= 0) { add_bos = true; if (bos < 0) bos = id; }
        }
        if (last && ns > 1) {
            int32_t id = find_id(b, json_string_value(json_object_get(last, "id")));
            if (id >= 0) { add_eos = true; if (eos < 0) eos = id; }
        }
    }
    json_t *v;
    if ((v = json_object_get(cfg, "add_bos_token")) && json_is_boolean(v)) add_bos = json_is_true(v);
    if ((v = json_object_get(cfg, "add_eos_token")) && json_is_boolean(v)) add_eos = json_is_true(v);
    /* generation_config.json's eos_token_id (an id or a list) ends generation too */
    int32_t eog_ids[16];
    int n_eog = 0;
    json_t *ge = json_object_get(gen, "eos_token_id");
    if (json_is_integer(ge)) ge = json_pack("[O]", ge); else json_incref(ge);
    for (size_t i = 0; json_is_array(ge) && i < json_array_size(ge) && n_eog < 16; i++) {
        json_t *e = json_array_get(ge, i);
        if (json_is_integer(e) && json_integer_value(e) >= 0 && json_integer_value(e) < b->n)
            eog_ids[n_eog++] = (int32_t)json_integer_value(e);
    }
    json_decref(ge);
    if (eos < 0 && n_eog) eos = eog_ids[0];
    if (s == LETHE_OK) s = add_ids(w, "tokenizer.ggml.bos_token_id", bos);
    if (s == LETHE_OK) s = add_ids(w, "tokenizer.ggml.eos_token_id", eos);
    if (s == LETHE_OK) s = add_ids(w, "tokenizer.ggml.padding_token_id", pad);
    if (s == LETHE_OK) s = add_ids(w, "tokenizer.ggml.unknown_token_id", unk_id);
    if (s == LETHE_OK) s = lethe_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", add_bos);
    if (s == LETHE_OK) s = lethe_gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", add_eos);
    if (s == LETHE_OK && n_eog) s = lethe_gguf_writer_add_arr(w, "tokenizer.lethe.eog_ids", LETHE_GGUF_I32, eog_ids, (uint64_t)n_eog);
    const char *tmpl = chat_template(cfg, jinja);
    if (s == LETHE_OK && tmpl) s = lethe_gguf_writer_add_str(w, "tokenizer.chat_template", tmpl);

    for (size_t i = 0; i < n_holes; i++) free(hole_names[i]);
    free(hole_names);
    return s;
}

static json_t *load_opt(const char *text, size_t len, const char *what, size_t flags, lethe_status *s) {
    if (!text) return json_object();
    json_error_t err;
    json_t *j = json_loadb(text, len, flags, &err);
    if (!j) {
        *s = lethe_fail(LETHE_ERR_TOKENIZER, "%s: invalid JSON: %s (line %d, column %d)", what, err.text, err.line,
                        err.column);
    } else if (!json_is_object(j)) {
        json_decref(j);
        j = NULL;
        *s = lethe_fail(LETHE_ERR_TOKENIZER, "%s: not a JSON object", what);
    }
    return j;
}

lethe_status lethe_hf_tokenizer_to_gguf(const lethe_hf_tokenizer_files *f, lethe_gguf_writer *w) {
    if (!f || !f->tokenizer_json || !w) return lethe_fail(LETHE_ERR_INVALID_ARG, "tokenizer: no tokenizer.json");
    lethe_status s = LETHE_OK;
    json_t *root = load_opt(f->tokenizer_json, f->tokenizer_json_len, "tokenizer.json", 0, &s);
    /* only strings and booleans are read from tokenizer_config.json, and
     * transformers writes model_max_length = 1e30 as an integer jansson
     * cannot hold: its numbers are read as reals */
    json_t *cfg = s == LETHE_OK ? load_opt(f->config_json, f->config_json_len, "tokenizer_config.json",
                                           JSON_DECODE_INT_AS_REAL, &s)
                                : NULL;
    json_t *gen = s == LETHE_OK ? load_opt(f->generation_json, f->generation_json_len, "generation_config.json", 0, &s)
                                : NULL;
    if (s == LETHE_OK) {
        tok_build b = {0};
        s = convert(root, cfg, gen, f->chat_template, f->pad_to, &b, w);
        build_free(&b);
    }
    json_decref(root);
    json_decref(cfg);
    json_decref(gen);
    return s;
}

lethe_tokenizer *lethe_tokenizer_from_hf(const lethe_hf_tokenizer_files *f, char **chat_template_out,
                                         lethe_status *status) {
    lethe_status st_dummy;
    if (!status) status = &st_dummy;
    if (chat_template_out) *chat_template_out = NULL;
    lethe_gguf_writer *w = lethe_gguf_writer_new();
    if (!w) {
        *status = LETHE_ERR_OOM;
        return NULL;
    }
    void *mem = NULL;
    size_t size = 0;
    lethe_status s = lethe_hf_tokenizer_to_gguf(f, w);
    if (s == LETHE_OK) s = lethe_gguf_writer_write_mem(w, &mem, &size);
    lethe_gguf_writer_free(w);
    lethe_tokenizer *tok = NULL;
    if (s == LETHE_OK) {
        lethe_gguf *g = lethe_gguf_parse(mem, size, &s);
        if (g) {
            tok = lethe_tokenizer_from_gguf(g, &s);
            const lethe_gguf_kv *kv = lethe_gguf_find(g, "tokenizer.chat_template");
            if (tok && chat_template_out && kv && kv->type == LETHE_GGUF_STRING) {
                *chat_template_out = strndup(kv->v.s.ptr, (size_t)kv->v.s.len);
                if (!*chat_template_out) {
                    lethe_tokenizer_free(tok);
                    tok = NULL;
                    s = lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
                }
            }
            lethe_gguf_close(g);
        }
    }
    free(mem);
    *status = tok ? LETHE_OK : s;
    return tok;
}
