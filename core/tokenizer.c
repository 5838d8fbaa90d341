/* tokenizer.c — vocabulary loading, special tokens, byte-level BPE, pieces.
 *
 * Behaviour follows llama.cpp (which in turn follows Hugging Face tokenizers)
 * so that the same GGUF gives the same ids in both: llama.cpp's test vectors
 * (models/ggml-vocab-*.gguf + .inp/.out) are the reference in the tests.
 *
 * Encoding:   text → fragments (special tokens matched first, leftmost-longest)
 *             → pieces (pre-tokenizer regexes, tokenizer_pre.c)
 *             → bytes mapped to GPT-2's printable alphabet → BPE merges by rank.
 * Decoding:   each token's bytes are precomputed at load ("pieces").
 * SentencePiece ("llama") vocabularies live in tokenizer_spm.c.
 */
#include "tokenizer.h"

#include "common.h"
#include "tokenizer_impl.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- hash maps ------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) { /* splitmix64 finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

lethe_token lethe_tok_lookup(const lethe_tokenizer *t, const char *s, size_t n) {
    size_t mask = t->vmap_cap - 1;
    for (size_t i = hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        int32_t id = t->vmap[i];
        if (id < 0) return -1;
        if (t->text_len[id] == n && memcmp(t->text + t->text_off[id], s, n) == 0) return id;
    }
}

/* Insert id under its own text; a later duplicate text replaces the earlier
 * id (llama.cpp: token_to_id[word] = i). */
static void vmap_insert(lethe_tokenizer *t, int32_t id) {
    const char *s = t->text + t->text_off[id];
    size_t n = t->text_len[id];
    size_t mask = t->vmap_cap - 1;
    for (size_t i = hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        int32_t cur = t->vmap[i];
        if (cur < 0) {
            t->vmap[i] = id;
            return;
        }
        if (t->text_len[cur] == n && memcmp(t->text + t->text_off[cur], s, n) == 0) {
            t->vmap[i] = id;
            return;
        }
    }
}

static inline uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

/* rank of merging (a, b) and the merged id, or rank -1 */
static inline int32_t merge_find(const lethe_tokenizer *t, int32_t a, int32_t b, int32_t *result) {
    uint64_t key = pair_key(a, b);
    size_t mask = t->mmap_cap - 1;
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        const lethe_merge_slot *s = &t->mmap[i];
        if (s->key == UINT64_MAX) return -1;
        if (s->key == key) {
            *result = s->result;
            return s->rank;
        }
    }
}

/* First occurrence wins (llama.cpp: bpe_ranks.emplace). */
static void merge_insert(lethe_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t result) {
    uint64_t key = pair_key(a, b);
    size_t mask = t->mmap_cap - 1;
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        lethe_merge_slot *s = &t->mmap[i];
        if (s->key == key) return;
        if (s->key == UINT64_MAX) {
            s->key = key;
            s->rank = rank;
            s->result = result;
            return;
        }
    }
}

/* ---- GPT-2 byte <-> unicode ------------------------------------------------ */

/* GPT-2 maps every byte to a printable code point: printable Latin-1 bytes
 * map to themselves, the others (0x00-0x20, 0x7F-0xA0, 0xAD) to 256, 257, ...
 * in byte order. Pure arithmetic, so no shared table to initialise. */
static uint32_t gpt2_byte_to_cp(int b) {
    if (b <= 0x20) return 256u + (uint32_t)b;
    if (b >= 0x7F && b <= 0xA0) return 256u + 33u + (uint32_t)(b - 0x7F);
    if (b == 0xAD) return 256u + 33u + 34u;
    return (uint32_t)b;
}

/* Inverse of gpt2_byte_to_cp, -1 for code points outside the alphabet. */
static int gpt2_cp_to_byte(uint32_t cp) {
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xFF && cp != 0xAD)) return (int)cp;
    if (cp >= 256 && cp < 256 + 33) return (int)(cp - 256);
    if (cp >= 256 + 33 && cp < 256 + 33 + 34) return (int)(cp - 256 - 33 + 0x7F);
    if (cp == 256 + 33 + 34) return 0xAD;
    return -1;
}

static int utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decode one UTF-8 sequence at s[0..n); *len = bytes used (1 for an invalid
 * byte, returned as 0xFFFFFFFF). */
static uint32_t utf8_decode(const unsigned char *s, size_t n, size_t *len) {
    unsigned c = s[0];
    size_t need = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (need == 0 || need > n) {
        *len = 1;
        return 0xFFFFFFFFu;
    }
    uint32_t cp = need == 1 ? c : need == 2 ? (c & 0x1F) : need == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *len = 1;
            return 0xFFFFFFFFu;
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    *len = need;
    return cp;
}

/* Token text in GPT-2's alphabet → raw bytes. Code points outside the
 * alphabet are copied through as UTF-8. Returns the byte count (<= n). */
static size_t gpt2_decode(const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t len;
        uint32_t cp = utf8_decode((const unsigned char *)s + i, n - i, &len);
        int b = gpt2_cp_to_byte(cp);
        if (b >= 0) {
            out[o++] = (char)b;
        } else {
            memcpy(out + o, s + i, len);
            o += len;
        }
        i += len;
    }
    return o;
}

/* "<0xAB>" → 0xAB, else -1 */
int lethe_tok_parse_byte(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* ---- growable token list --------------------------------------------------- */

lethe_status lethe_tokvec_push(lethe_tokvec *v, lethe_token id) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        lethe_token *p = realloc(v->v, cap * sizeof *p);
        if (!p) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = id;
    return LETHE_OK;
}

/* ---- loading ---------------------------------------------------------------- */

static const lethe_gguf_kv *find_array(const lethe_gguf *g, const char *key, lethe_gguf_type elem,
                                       lethe_status *st) {
    const lethe_gguf_kv *kv = lethe_gguf_find(g, key);
    if (!kv) return NULL;
    if (kv->type != LETHE_GGUF_ARRAY || kv->arr_type != elem || (elem == LETHE_GGUF_STRING ? !kv->arr_str : !kv->arr)) {
        *st = lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer: %s has the wrong type", key);
        return NULL;
    }
    return kv;
}

static int32_t arr_i32(const lethe_gguf_kv *kv, uint64_t i) {
    int32_t v;
    memcpy(&v, (const char *)kv->arr + i * 4, 4); /* GGUF is little-endian, like every host we build for */
    return v;
}

static lethe_token special_id(const lethe_gguf *g, const char *key, int32_t n_vocab, lethe_token dflt) {
    int64_t v;
    if (!lethe_gguf_get_int(g, key, &v)) return dflt;
    if (v < 0 || v >= n_vocab) {
        LETHE_LOGW("tokenizer: %s = %lld is outside the vocabulary (%d tokens): ignored", key, (long long)v, n_vocab);
        return dflt;
    }
    return (lethe_token)v;
}

static bool text_is(const lethe_tokenizer *t, int32_t id, const char *s) {
    size_t n = strlen(s);
    return t->text_len[id] == n && memcmp(t->text + t->text_off[id], s, n) == 0;
}

static bool text_in(const lethe_tokenizer *t, int32_t id, const char *const *list) {
    for (; *list; list++)
        if (text_is(t, id, *list)) return true;
    return false;
}

/* End-of-turn / end-of-generation tokens found by text, as llama.cpp does
 * (GGUF files rarely record them by id). */
static const char *const k_eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
    "_<EOT>", "[EOT]", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "<end_of_utterance>", NULL};
static const char *const k_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "[e~[", NULL};

static void find_eog(lethe_tokenizer *t) {
    int32_t n = t->n_vocab;
    if (t->eot < 0) {
        for (int32_t i = 0; i < n && t->eot < 0; i++) {
            if (text_in(t, i, k_eot_texts)) {
                t->eot = i;
                t->attr[i] |= LETHE_ATTR_CONTROL; /* a mis-typed end token must not be matched as text */
            }
        }
    }
    if (t->eom < 0) {
        for (int32_t i = 0; i < n && t->eom < 0; i++)
            if (text_is(t, i, "<|eom_id|>")) t->eom = i;
    }
    for (int32_t i = 0; i < n; i++) {
        if (text_in(t, i, k_eog_texts)) {
            t->eog[i] = 1;
            t->attr[i] |= LETHE_ATTR_CONTROL;
        }
    }
    if (t->fim_pad >= 0) t->eog[t->fim_pad] = 1;
    if (t->fim_rep >= 0) t->eog[t->fim_rep] = 1;
    if (t->fim_sep >= 0) t->eog[t->fim_sep] = 1;
    if (t->eos >= 0) t->eog[t->eos] = 1;
    if (t->eot >= 0) t->eog[t->eot] = 1;
    if (t->eom >= 0) t->eog[t->eom] = 1;

    /* gpt-oss / solar-open: with <|return|> + <|call|> (or <|calls|> + <|flush|>)
     * present, <|end|> ends a message, not the generation. */
    int32_t end_id = -1;
    bool has_return = false, has_call = false, has_flush = false, has_normal_s = false;
    int32_t s_id = -1;
    for (int32_t i = 0; i < n; i++) {
        if (!t->eog[i]) continue;
        if (text_is(t, i, "<|return|>")) has_return = true;
        else if (text_is(t, i, "<|call|>") || text_is(t, i, "<|calls|>")) has_call = true;
        else if (text_is(t, i, "<|flush|>")) has_flush = true;
        else if (text_is(t, i, "<|end|>")) end_id = i;
        else if (text_is(t, i, "<|tool_response>") || text_is(t, i, "<|plamo:eos|>")) has_normal_s = true;
        else if (text_is(t, i, "</s>")) s_id = i;
    }
    if (end_id >= 0 && ((has_return && has_call) || (has_call && has_flush))) {
        t->eog[end_id] = 0;
        t->attr[end_id] = LETHE_ATTR_USER_DEFINED;
    }
    if (has_normal_s && s_id >= 0) {
        t->eog[s_id] = 0;
        t->attr[s_id] = LETHE_ATTR_NORMAL;
    }
}

/* Special tokens matched in raw text, bucketed by first byte, longest first. */
static lethe_status build_specials(lethe_tokenizer *t) {
    size_t count[257] = {0};
    int32_t n = t->n_vocab;
    for (int32_t i = 0; i < n; i++) {
        if ((t->attr[i] & (LETHE_ATTR_CONTROL | LETHE_ATTR_USER_DEFINED | LETHE_ATTR_UNKNOWN)) && t->text_len[i] > 0) {
            count[(unsigned char)t->text[t->text_off[i]]]++;
            t->n_special++;
        }
    }
    t->specials = malloc((t->n_special ? t->n_special : 1) * sizeof *t->specials);
    if (!t->specials) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
    size_t pos = 0;
    for (int b = 0; b < 256; b++) {
        t->special_start[b] = pos;
        pos += count[b];
    }
    t->special_start[256] = pos;
    size_t fill[256];
    for (int b = 0; b < 256; b++) fill[b] = t->special_start[b];
    for (int32_t i = 0; i < n; i++) {
        if ((t->attr[i] & (LETHE_ATTR_CONTROL | LETHE_ATTR_USER_DEFINED | LETHE_ATTR_UNKNOWN)) && t->text_len[i] > 0) {
            unsigned char b = (unsigned char)t->text[t->text_off[i]];
            t->specials[fill[b]++] = i;
        }
    }
    /* insertion sort by length, descending, within each bucket (buckets are small) */
    for (int b = 0; b < 256; b++) {
        lethe_token *v = t->specials + t->special_start[b];
        size_t m = t->special_start[b + 1] - t->special_start[b];
        for (size_t i = 1; i < m; i++) {
            lethe_token x = v[i];
            size_t j = i;
            while (j > 0 && t->text_len[v[j - 1]] < t->text_len[x]) {
                v[j] = v[j - 1];
                j--;
            }
            v[j] = x;
        }
    }
    return LETHE_OK;
}

/* Bytes of each token when detokenized (llama.cpp's token_to_piece). */
static lethe_status build_pieces(lethe_tokenizer *t) {
    size_t total = t->text_size; /* a piece is never longer than its text */
    t->piece = malloc(total ? total : 1);
    t->piece_off = malloc((size_t)t->n_vocab * sizeof *t->piece_off);
    t->piece_len = malloc((size_t)t->n_vocab * sizeof *t->piece_len);
    if (!t->piece || !t->piece_off || !t->piece_len) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
    size_t o = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        const char *s = t->text + t->text_off[i];
        size_t n = t->text_len[i];
        uint8_t a = t->attr[i];
        t->piece_off[i] = o;
        size_t len = 0;
        if (a & (LETHE_ATTR_CONTROL | LETHE_ATTR_UNKNOWN | LETHE_ATTR_USER_DEFINED)) {
            memcpy(t->piece + o, s, n);
            len = n;
        } else if (a & LETHE_ATTR_NORMAL) {
            if (t->type == LETHE_VOCAB_SPM) {
                len = lethe_spm_unescape(s, n, t->piece + o);
            } else {
                len = gpt2_decode(s, n, t->piece + o);
            }
        } else if (a & LETHE_ATTR_BYTE) {
            int b = lethe_tok_parse_byte(s, n);
            if (b >= 0) {
                t->piece[o] = (char)b;
                len = 1;
            } else if (t->type == LETHE_VOCAB_BPE) {
                len = gpt2_decode(s, n, t->piece + o);
            }
        }
        /* UNUSED / undefined types render as nothing, like llama.cpp */
        t->piece_len[i] = len;
        o += len;
    }
    return LETHE_OK;
}

static lethe_status load_bpe_merges(lethe_tokenizer *t, const lethe_gguf *g) {
    lethe_status st = LETHE_OK;
    const lethe_gguf_kv *kv = find_array(g, "tokenizer.ggml.merges", LETHE_GGUF_STRING, &st);
    if (st != LETHE_OK) return st;
    if (!kv) return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer: BPE vocabulary without tokenizer.ggml.merges");
    if (kv->n > INT32_MAX) return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer: too many merges (%llu)", (unsigned long long)kv->n);
    t->mmap_cap = pow2_at_least((size_t)kv->n * 2 + 1);
    t->mmap = malloc(t->mmap_cap * sizeof *t->mmap);
    if (!t->mmap) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory for %llu merges", (unsigned long long)kv->n);
    for (size_t i = 0; i < t->mmap_cap; i++) t->mmap[i].key = UINT64_MAX;
    char *buf = NULL;
    size_t buf_cap = 0;
    size_t skipped = 0;
    for (uint64_t r = 0; r < kv->n; r++) {
        const char *s = kv->arr_str[r].ptr;
        size_t n = (size_t)kv->arr_str[r].len;
        /* "left right": split at the first space after the first byte */
        const char *sp = n > 1 ? memchr(s + 1, ' ', n - 1) : NULL;
        if (!sp) {
            skipped++;
            continue;
        }
        size_t nl = (size_t)(sp - s), nr = n - nl - 1;
        int32_t a = lethe_tok_lookup(t, s, nl);
        int32_t b = lethe_tok_lookup(t, sp + 1, nr);
        if (nl + nr > buf_cap) {
            buf_cap = (nl + nr) * 2 + 64;
            char *nb = realloc(buf, buf_cap);
            if (!nb) {
                free(buf);
                return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
            }
            buf = nb;
        }
        memcpy(buf, s, nl);
        memcpy(buf + nl, sp + 1, nr);
        int32_t c = lethe_tok_lookup(t, buf, nl + nr);
        /* Ids only: a merge whose parts or result are not tokens can never
         * yield a token, so it is dropped (valid vocabularies have none). */
        if (a < 0 || b < 0 || c < 0) {
            skipped++;
            continue;
        }
        merge_insert(t, a, b, (int32_t)r, c);
    }
    free(buf);
    if (skipped) LETHE_LOGD("tokenizer: %zu merges reference unknown tokens and were skipped", skipped);
    /* initial symbols: one per byte, as its GPT-2 character */
    for (int b = 0; b < 256; b++) {
        char u[4];
        int k = utf8_encode(gpt2_byte_to_cp(b), u);
        t->byte_id[b] = lethe_tok_lookup(t, u, (size_t)k);
    }
    return LETHE_OK;
}

lethe_tokenizer *lethe_tokenizer_from_gguf(const lethe_gguf *g, lethe_status *status) {
    lethe_status st_dummy;
    if (!status) status = &st_dummy;
    lethe_status st = LETHE_OK;
    if (!g) {
        *status = lethe_fail(LETHE_ERR_INVALID_ARG, "tokenizer: no GGUF");
        return NULL;
    }
    char model[64] = {0};
    if (!lethe_gguf_get_str(g, "tokenizer.ggml.model", model, sizeof model)) {
        *status = lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer: the file has no tokenizer.ggml.model");
        return NULL;
    }
    lethe_vocab_type type;
    if (strcmp(model, "gpt2") == 0) {
        type = LETHE_VOCAB_BPE;
    } else if (strcmp(model, "llama") == 0) {
        type = LETHE_VOCAB_SPM;
    } else {
        *status = lethe_fail(LETHE_ERR_UNSUPPORTED,
                             "tokenizer: tokenizer.ggml.model '%s' is not supported (only 'gpt2' byte-level BPE "
                             "and 'llama' SentencePiece)", model);
        return NULL;
    }

    const lethe_gguf_kv *tokens = find_array(g, "tokenizer.ggml.tokens", LETHE_GGUF_STRING, &st);
    if (st != LETHE_OK) goto fail_early;
    if (!tokens || tokens->n == 0) {
        st = lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer: no tokenizer.ggml.tokens");
        goto fail_early;
    }
    if (tokens->n > INT32_MAX / 2) {
        st = lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer: %llu tokens is too many", (unsigned long long)tokens->n);
        goto fail_early;
    }
    const lethe_gguf_kv *types = find_array(g, "tokenizer.ggml.token_type", LETHE_GGUF_I32, &st);
    if (st != LETHE_OK) goto fail_early;
    if (types && types->n < tokens->n) {
        st = lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer: token_type has %llu entries for %llu tokens",
                        (unsigned long long)types->n, (unsigned long long)tokens->n);
        goto fail_early;
    }

    lethe_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        st = lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
        goto fail_early;
    }
    t->type = type;
    int32_t n = (int32_t)tokens->n;
    t->n_vocab = n;

    /* token texts, NUL-terminated copies */
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        if (tokens->arr_str[i].len > ((size_t)1 << 30) || total > ((size_t)1 << 34)) {
            st = lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer: token %d is implausibly long", i);
            goto fail;
        }
        total += (size_t)tokens->arr_str[i].len + 1;
    }
    t->text_size = total;
    t->text = malloc(total);
    t->text_off = malloc((size_t)n * sizeof *t->text_off);
    t->text_len = malloc((size_t)n * sizeof *t->text_len);
    t->attr = calloc((size_t)n, 1);
    t->eog = calloc((size_t)n, 1);
    t->vmap_cap = pow2_at_least((size_t)n * 2 + 1);
    t->vmap = malloc(t->vmap_cap * sizeof *t->vmap);
    if (!t->text || !t->text_off || !t->text_len || !t->attr || !t->eog || !t->vmap) {
        st = lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory for %d tokens", n);
        goto fail;
    }
    memset(t->vmap, 0xFF, t->vmap_cap * sizeof *t->vmap);
    size_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t len = (size_t)tokens->arr_str[i].len;
        memcpy(t->text + off, tokens->arr_str[i].ptr, len);
        t->text[off + len] = 0;
        t->text_off[i] = off;
        t->text_len[i] = len;
        off += len + 1;
        int32_t ty = types ? arr_i32(types, (uint64_t)i) : 1;
        t->attr[i] = ty == 1 ? LETHE_ATTR_NORMAL : ty == 2 ? LETHE_ATTR_UNKNOWN : ty == 3 ? LETHE_ATTR_CONTROL
                   : ty == 4 ? LETHE_ATTR_USER_DEFINED : ty == 5 ? LETHE_ATTR_UNUSED : ty == 6 ? LETHE_ATTR_BYTE : 0;
        if (len > 0) vmap_insert(t, i); /* an empty token can never be produced from text */
    }

    char pre[64] = {0};
    lethe_gguf_get_str(g, "tokenizer.ggml.pre", pre, sizeof pre);
    if (type == LETHE_VOCAB_BPE) {
        if (!pre[0]) LETHE_LOGW("tokenizer: no tokenizer.ggml.pre: using the generic pre-tokenizer (quality may suffer)");
        const lethe_gguf_kv *exprs = find_array(g, "tokenizer.lethe.pre_exprs", LETHE_GGUF_STRING, &st);
        if (st != LETHE_OK) goto fail;
        if (exprs) {   /* a tokenizer.json's own expressions (hf_tokenizer.c) */
            const char *pats[8];
            char *copies[8] = {0};
            if (exprs->n > 8) {
                st = lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer: %llu pre-tokenizer expressions (at most 8)",
                                (unsigned long long)exprs->n);
                goto fail;
            }
            for (uint64_t i = 0; i < exprs->n; i++) {
                copies[i] = strndup(exprs->arr_str[i].ptr, (size_t)exprs->arr_str[i].len);
                pats[i] = copies[i] ? copies[i] : "";
            }
            t->pre = lethe_pretok_new_exprs(pats, (int)exprs->n, &st);
            for (uint64_t i = 0; i < exprs->n; i++) free(copies[i]);
            memset(&t->pre_flags, 0, sizeof t->pre_flags);
            bool im;
            if (lethe_gguf_get_bool(g, "tokenizer.lethe.ignore_merges", &im)) t->pre_flags.ignore_merges = im;
        } else {
            t->pre = lethe_pretok_new(pre, &t->pre_flags, &st);
        }
        if (!t->pre) goto fail;
        if ((st = load_bpe_merges(t, g)) != LETHE_OK) goto fail;
        t->add_bos = t->pre_flags.add_bos_default;
    } else {
        if ((st = lethe_spm_load(t, g)) != LETHE_OK) goto fail;
        t->add_bos = true;
    }

    t->bos = special_id(g, "tokenizer.ggml.bos_token_id", n, type == LETHE_VOCAB_SPM && n > 1 ? 1 : -1);
    t->eos = special_id(g, "tokenizer.ggml.eos_token_id", n, type == LETHE_VOCAB_SPM && n > 2 ? 2 : -1);
    t->unk = special_id(g, "tokenizer.ggml.unknown_token_id", n, type == LETHE_VOCAB_SPM ? 0 : -1);
    t->eot = special_id(g, "tokenizer.ggml.eot_token_id", n, -1);
    t->eom = special_id(g, "tokenizer.ggml.eom_token_id", n, -1);
    t->pad = special_id(g, "tokenizer.ggml.padding_token_id", n, -1);
    t->fim_pad = special_id(g, "tokenizer.ggml.fim_pad_token_id", n, -1);
    t->fim_rep = special_id(g, "tokenizer.ggml.fim_rep_token_id", n, -1);
    t->fim_sep = special_id(g, "tokenizer.ggml.fim_sep_token_id", n, -1);
    if (t->pre_flags.no_bos) t->bos = -1;
    bool b;
    if (lethe_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b)) t->add_bos = b;
    t->add_eos = false;
    if (lethe_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b)) t->add_eos = b;

    find_eog(t);
    /* extra end-of-generation ids (generation_config.json eos_token_id lists) */
    const lethe_gguf_kv *eog_ids = find_array(g, "tokenizer.lethe.eog_ids", LETHE_GGUF_I32, &st);
    if (st != LETHE_OK) goto fail;
    for (uint64_t i = 0; eog_ids && i < eog_ids->n; i++) {
        int32_t id = arr_i32(eog_ids, i);
        if (id >= 0 && id < n) t->eog[id] = 1;
    }
    char norm[16] = {0};
    if (lethe_gguf_get_str(g, "tokenizer.lethe.normalizer", norm, sizeof norm)) {
        if (!strcmp(norm, "nfc")) t->normalize = LETHE_NORM_NFC;
        else if (!strcmp(norm, "nfkc")) t->normalize = LETHE_NORM_NFKC;
        else if (strcmp(norm, "none")) {
            st = lethe_fail(LETHE_ERR_UNSUPPORTED, "tokenizer: normalizer '%s' is not supported", norm);
            goto fail;
        }
    }
    if (type == LETHE_VOCAB_SPM) lethe_spm_set_strip(t, g);
    if ((st = build_specials(t)) != LETHE_OK) goto fail;
    if ((st = build_pieces(t)) != LETHE_OK) goto fail;
    *status = LETHE_OK;
    return t;

fail:
    lethe_tokenizer_free(t);
fail_early:
    *status = st;
    return NULL;
}

void lethe_tokenizer_free(lethe_tokenizer *t) {
    if (!t) return;
    lethe_pretok_free(t->pre);
    free(t->text);
    free(t->text_off);
    free(t->text_len);
    free(t->attr);
    free(t->eog);
    free(t->vmap);
    free(t->mmap);
    free(t->specials);
    free(t->piece);
    free(t->piece_off);
    free(t->piece_len);
    free(t->scores);
    free(t);
}

/* ---- BPE encoding ------------------------------------------------------------ */

typedef struct bpe_sym {
    int32_t id;          /* token id of this symbol, -1 if its byte has no token */
    int32_t prev, next;  /* neighbours in the word, -1 at the ends */
} bpe_sym;

typedef struct bpe_cand {
    int32_t rank, left, right;  /* merge (left, right) of rank; ties → leftmost */
    int32_t lid, rid, result;   /* ids when queued: a stale candidate no longer matches */
} bpe_cand;

static inline bool cand_less(const bpe_cand *a, const bpe_cand *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

typedef struct bpe_scratch {
    bpe_sym *sym;
    size_t sym_cap;
    bpe_cand *heap;
    size_t heap_n, heap_cap;
    char *enc;
    size_t enc_cap;
} bpe_scratch;

static lethe_status heap_push(bpe_scratch *s, bpe_cand c) {
    if (s->heap_n == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
        bpe_cand *h = realloc(s->heap, cap * sizeof *h);
        if (!h) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
        s->heap = h;
        s->heap_cap = cap;
    }
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = c;
    return LETHE_OK;
}

static bpe_cand heap_pop(bpe_scratch *s) {
    bpe_cand top = s->heap[0];
    bpe_cand last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const bpe_cand *best = &last;
        if (l < n && cand_less(&s->heap[l], best)) m = l, best = &s->heap[l];
        if (r < n && cand_less(&s->heap[r], best)) m = r;
        if (m == i) break;
        s->heap[i] = s->heap[m];
        i = m;
    }
    if (n > 0) s->heap[i] = last;
    return top;
}

static lethe_status try_pair(const lethe_tokenizer *t, bpe_scratch *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return LETHE_OK;
    int32_t a = s->sym[l].id, b = s->sym[r].id;
    if (a < 0 || b < 0) return LETHE_OK;
    int32_t result;
    int32_t rank = merge_find(t, a, b, &result);
    if (rank < 0) return LETHE_OK;
    bpe_cand c = {rank, l, r, a, b, result};
    return heap_push(s, c);
}

/* One pre-tokenized piece (raw bytes) → token ids appended to out. */
static lethe_status bpe_word(const lethe_tokenizer *t, bpe_scratch *s, const unsigned char *w, size_t n,
                             lethe_tokvec *out) {
    lethe_status st;
    if (n == 0) return LETHE_OK;
    if (t->pre_flags.ignore_merges) {
        /* the whole piece may itself be a token (Llama 3 has merge-less long tokens) */
        if (n * 2 > s->enc_cap) {
            size_t cap = n * 2 + 64;
            char *e = realloc(s->enc, cap);
            if (!e) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
            s->enc = e;
            s->enc_cap = cap;
        }
        size_t o = 0;
        for (size_t i = 0; i < n; i++) o += (size_t)utf8_encode(gpt2_byte_to_cp(w[i]), s->enc + o);
        lethe_token id = lethe_tok_lookup(t, s->enc, o);
        if (id >= 0) return lethe_tokvec_push(out, id);
    }
    if (n > INT32_MAX) return lethe_fail(LETHE_ERR_INVALID_ARG, "tokenizer: piece of %zu bytes is too long", n);
    if (n > s->sym_cap) {
        size_t cap = n + 64;
        bpe_sym *p = realloc(s->sym, cap * sizeof *p);
        if (!p) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
        s->sym = p;
        s->sym_cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        s->sym[i].id = t->byte_id[w[i]];
        s->sym[i].prev = (int32_t)i - 1;
        s->sym[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    s->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if ((st = try_pair(t, s, (int32_t)i, (int32_t)i + 1)) != LETHE_OK) return st;
    while (s->heap_n > 0) {
        bpe_cand c = heap_pop(s);
        bpe_sym *L = &s->sym[c.left], *R = &s->sym[c.right];
        /* stale: one side was merged away or changed since this was queued */
        if (L->next != c.right || L->id != c.lid || R->id != c.rid) continue;
        L->id = c.result;
        L->next = R->next;
        if (R->next >= 0) s->sym[R->next].prev = c.left;
        R->id = -2; /* dead */
        R->prev = R->next = -1;
        if ((st = try_pair(t, s, L->prev, c.left)) != LETHE_OK) return st;
        if ((st = try_pair(t, s, c.left, L->next)) != LETHE_OK) return st;
    }
    for (int32_t i = 0; i >= 0; i = s->sym[i].next) {
        /* a byte whose GPT-2 character is not in the vocabulary has no token:
         * dropped, as llama.cpp does */
        if (s->sym[i].id >= 0 && (st = lethe_tokvec_push(out, s->sym[i].id)) != LETHE_OK) return st;
    }
    return LETHE_OK;
}

/* Longest special token that starts at text[pos], or -1. User-defined tokens
 * are always matched; control/unknown ones only with parse_special
 * (Hugging Face: added tokens are split off before normalisation). */
static lethe_token match_special(const lethe_tokenizer *t, const char *text, size_t len, size_t pos,
                                 bool parse_special) {
    unsigned char b = (unsigned char)text[pos];
    for (size_t k = t->special_start[b]; k < t->special_start[b + 1]; k++) {
        lethe_token id = t->specials[k];
        size_t n = t->text_len[id];
        if (n > len - pos) continue;
        if (!parse_special && (t->attr[id] & (LETHE_ATTR_CONTROL | LETHE_ATTR_UNKNOWN))) continue;
        if (memcmp(text + pos, t->text + t->text_off[id], n) == 0) return id;
    }
    return -1;
}

static lethe_status frags_push(lethe_frags *f, lethe_token special, size_t off, size_t len) {
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        lethe_frag *v = realloc(f->v, cap * sizeof *v);
        if (!v) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
        f->v = v;
        f->cap = cap;
    }
    f->v[f->n].special = special;
    f->v[f->n].off = off;
    f->v[f->n].len = len;
    f->n++;
    return LETHE_OK;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

/* Leftmost-longest scan for special tokens (Hugging Face's added-token
 * matcher); raw text between them becomes fragments. */
lethe_status lethe_tok_partition(const lethe_tokenizer *t, const char *text, size_t len, bool parse_special,
                                 lethe_frags *out) {
    lethe_status st = LETHE_OK;
    size_t raw = 0;
    for (size_t i = 0; i < len && st == LETHE_OK;) {
        unsigned char b = (unsigned char)text[i];
        lethe_token sp = t->special_start[b] < t->special_start[b + 1] ? match_special(t, text, len, i, parse_special) : -1;
        if (sp < 0) {
            i++;
            continue;
        }
        size_t end = i;
        if (t->attr[sp] & LETHE_ATTR_LSTRIP)
            while (end > raw && is_space(text[end - 1])) end--;
        if (end > raw) st = frags_push(out, -1, raw, end - raw);
        if (st == LETHE_OK) st = frags_push(out, sp, i, t->text_len[sp]);
        i += t->text_len[sp];
        if (t->attr[sp] & LETHE_ATTR_RSTRIP)
            while (i < len && is_space(text[i])) i++;
        raw = i;
    }
    if (st == LETHE_OK && raw < len) st = frags_push(out, -1, raw, len - raw);
    return st;
}

static lethe_status bpe_encode(const lethe_tokenizer *t, const char *text, const lethe_frags *frags,
                               lethe_tokvec *out) {
    bpe_scratch s = {0};
    lethe_spans spans = {0};
    lethe_status st = LETHE_OK;
    for (size_t k = 0; k < frags->n && st == LETHE_OK; k++) {
        const lethe_frag *f = &frags->v[k];
        if (f->special >= 0) {
            st = lethe_tokvec_push(out, f->special);
        } else {
            spans.n = 0;
            st = lethe_pretok_split(t->pre, text + f->off, f->len, &spans);
            for (size_t j = 0; j < spans.n && st == LETHE_OK; j++)
                st = bpe_word(t, &s, (const unsigned char *)text + f->off + spans.v[j].off, spans.v[j].len, out);
        }
    }
    free(s.sym);
    free(s.heap);
    free(s.enc);
    lethe_spans_free(&spans);
    return st;
}

/* ---- public ------------------------------------------------------------------ */

/* Unicode normalization (tokenizer.json normalizer NFC / NFKC) with utf8proc.
 * Returns a malloc'ed copy and its length, or NULL if the text is not valid
 * UTF-8 or is pure ASCII (which every normal form leaves as it is). */
char *lethe_tok_normalize(lethe_normalizer nf, const char *text, size_t len, size_t *out_len) {
    bool ascii = true;
    for (size_t i = 0; i < len && ascii; i++) ascii = (unsigned char)text[i] < 0x80;
    if (ascii || len > (size_t)PTRDIFF_MAX / 4) return NULL;
    utf8proc_uint8_t *out = NULL;
    int opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE | (nf == LETHE_NORM_NFKC ? UTF8PROC_COMPAT : 0);
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, &out, opts);
    if (n < 0) return NULL;
    *out_len = (size_t)n;
    return (char *)out;
}

int32_t lethe_tokenizer_encode(const lethe_tokenizer *t, const char *text, size_t len, lethe_token *out,
                               int32_t max_out, bool add_special, bool parse_special) {
    if (!t || (!text && len > 0) || max_out < 0 || (!out && max_out > 0))
        return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG, "tokenize: invalid arguments");
    lethe_tokvec v = {0};
    lethe_status st = LETHE_OK;
    if (add_special && t->add_bos && t->bos >= 0) st = lethe_tokvec_push(&v, t->bos);
    char *normed = NULL;
    if (t->normalize != LETHE_NORM_NONE && len > 0) {
        normed = lethe_tok_normalize(t->normalize, text, len, &len);
        if (normed) text = normed;   /* NULL: not valid UTF-8, tokenized as it is */
    }
    if (st == LETHE_OK && len > 0) {
        lethe_frags frags = {0};
        st = lethe_tok_partition(t, text, len, parse_special, &frags);
        if (st == LETHE_OK)
            st = t->type == LETHE_VOCAB_SPM ? lethe_spm_encode(t, text, len, &frags, &v) : bpe_encode(t, text, &frags, &v);
        free(frags.v);
    }
    free(normed);
    if (st == LETHE_OK && add_special && t->add_eos && t->eos >= 0) st = lethe_tokvec_push(&v, t->eos);
    if (st == LETHE_OK && v.n > INT32_MAX) st = lethe_fail(LETHE_ERR_INVALID_ARG, "tokenize: more than 2^31 tokens");
    if (st != LETHE_OK) {
        free(v.v);
        return -(int32_t)st;
    }
    size_t ncopy = v.n < (size_t)max_out ? v.n : (size_t)max_out;
    if (ncopy) memcpy(out, v.v, ncopy * sizeof *out);
    free(v.v);
    return (int32_t)v.n;
}

int32_t lethe_tokenizer_piece(const lethe_tokenizer *t, lethe_token id, char *buf, int32_t buf_size,
                              bool render_special) {
    if (!t || buf_size < 0 || (!buf && buf_size > 0))
        return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG, "token_to_piece: invalid arguments");
    if (id < 0 || id >= t->n_vocab)
        return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG, "token_to_piece: token %d is outside the vocabulary (%d)",
                                    id, t->n_vocab);
    if (!render_special && (t->attr[id] & (LETHE_ATTR_CONTROL | LETHE_ATTR_UNKNOWN))) return 0;
    size_t n = t->piece_len[id];
    if (n <= (size_t)buf_size) memcpy(buf, t->piece + t->piece_off[id], n);
    return (int32_t)n;
}

int32_t lethe_tokenizer_n_vocab(const lethe_tokenizer *t) { return t ? t->n_vocab : 0; }
lethe_token lethe_tokenizer_bos(const lethe_tokenizer *t) { return t ? t->bos : -1; }
lethe_token lethe_tokenizer_eos(const lethe_tokenizer *t) { return t ? t->eos : -1; }

bool lethe_tokenizer_is_eog(const lethe_tokenizer *t, lethe_token id) {
    return t && id >= 0 && id < t->n_vocab && t->eog[id];
}

lethe_token lethe_tokenizer_find(const lethe_tokenizer *t, const char *text) {
    if (!t || !text || !*text) return -1;
    return lethe_tok_lookup(t, text, strlen(text));
}
