/* tokenizer_spm.c — SentencePiece BPE vocabularies (tokenizer.ggml.model = "llama").
 *
 * Spaces are written as U+2581 ("▁"), a space is put in front of text that
 * starts the input or follows a special token (add_space_prefix), and
 * adjacent symbols are merged greedily by the score of the merged token
 * (higher first, leftmost on ties). Characters with no token fall back to
 * byte tokens <0xAB>. This is llama.cpp's SPM path, which the test vectors
 * (llama-spm, phi-3) pin.
 */
#include "common.h"
#include "tokenizer_impl.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define SPM_SPACE "\xe2\x96\x81"

size_t lethe_spm_unescape(const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && memcmp(s + i, SPM_SPACE, 3) == 0) {
            out[o++] = ' ';
            i += 3;
        } else {
            out[o++] = s[i++];
        }
    }
    return o;
}

lethe_status lethe_spm_load(lethe_tokenizer *t, const lethe_gguf *g) {
    const lethe_gguf_kv *kv = lethe_gguf_find(g, "tokenizer.ggml.scores");
    t->scores = calloc((size_t)t->n_vocab, sizeof *t->scores);
    if (!t->scores) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
    if (kv) {
        if (kv->type != LETHE_GGUF_ARRAY || kv->arr_type != LETHE_GGUF_F32 || !kv->arr || kv->n < (uint64_t)t->n_vocab)
            return lethe_fail(LETHE_ERR_TOKENIZER, "tokenizer: tokenizer.ggml.scores must be %d f32 values", t->n_vocab);
        memcpy(t->scores, kv->arr, (size_t)t->n_vocab * sizeof(float));
    }
    t->add_space_prefix = true;
    bool b;
    if (lethe_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b)) t->add_space_prefix = b;
    for (int c = 0; c < 256; c++) {
        char hex[7];
        snprintf(hex, sizeof hex, "<0x%02X>", c);
        lethe_token id = lethe_tok_lookup(t, hex, 6);
        if (id < 0) {
            char one = (char)c;
            id = lethe_tok_lookup(t, &one, 1);
        }
        t->byte_id[c] = id;
    }
    return LETHE_OK;
}

/* Phi-3's special tokens swallow the whitespace after them (its
 * tokenizer.json marks them rstrip); the GGUF does not record this, so
 * llama.cpp keys it on the model name, and so do we. */
void lethe_spm_set_strip(lethe_tokenizer *t, const lethe_gguf *g) {
    char name[256] = {0};
    if (!lethe_gguf_get_str(g, "general.name", name, sizeof name)) return;
    for (char *p = name; *p; p++) *p = (char)tolower((unsigned char)*p);
    if (!strstr(name, "phi-3") && !strstr(name, "phi3")) return;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (t->attr[i] & (LETHE_ATTR_CONTROL | LETHE_ATTR_USER_DEFINED | LETHE_ATTR_UNKNOWN)) t->attr[i] |= LETHE_ATTR_RSTRIP;
    }
    lethe_token id = lethe_tok_lookup(t, "</s>", 4);
    if (id >= 0) t->attr[id] |= LETHE_ATTR_RSTRIP;
    static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
    for (size_t k = 0; k < 3; k++) {
        id = lethe_tok_lookup(t, keep[k], strlen(keep[k]));
        if (id >= 0) t->attr[id] &= (uint8_t)~LETHE_ATTR_RSTRIP;
    }
}

typedef struct spm_sym {
    size_t start, n;       /* bytes of the escaped text; n = 0 once merged away */
    int32_t prev, next;
} spm_sym;

typedef struct spm_cand {
    float score;
    int32_t left, right;
    size_t size;           /* bytes of the merged text when queued */
} spm_cand;

static inline bool spm_before(const spm_cand *a, const spm_cand *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct spm_state {
    const lethe_tokenizer *t;
    const char *s;
    spm_sym *sym;
    spm_cand *heap;
    size_t heap_n, heap_cap;
} spm_state;

static lethe_status spm_push(spm_state *st, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return LETHE_OK;
    size_t size = st->sym[l].n + st->sym[r].n;
    lethe_token id = lethe_tok_lookup(st->t, st->s + st->sym[l].start, size);
    if (id < 0) return LETHE_OK;
    if (st->heap_n == st->heap_cap) {
        size_t cap = st->heap_cap ? st->heap_cap * 2 : 64;
        spm_cand *h = realloc(st->heap, cap * sizeof *h);
        if (!h) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
        st->heap = h;
        st->heap_cap = cap;
    }
    spm_cand c = {st->t->scores[id], l, r, size};
    size_t i = st->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!spm_before(&c, &st->heap[p])) break;
        st->heap[i] = st->heap[p];
        i = p;
    }
    st->heap[i] = c;
    return LETHE_OK;
}

static spm_cand spm_pop(spm_state *st) {
    spm_cand top = st->heap[0];
    spm_cand last = st->heap[--st->heap_n];
    size_t i = 0, n = st->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const spm_cand *best = &last;
        if (l < n && spm_before(&st->heap[l], best)) m = l, best = &st->heap[l];
        if (r < n && spm_before(&st->heap[r], best)) m = r;
        if (m == i) break;
        st->heap[i] = st->heap[m];
        i = m;
    }
    if (n > 0) st->heap[i] = last;
    return top;
}

static size_t utf8_len(unsigned char c) {
    static const size_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}

static lethe_status spm_word(const lethe_tokenizer *t, const char *s, size_t n, lethe_tokvec *out) {
    if (n == 0) return LETHE_OK;
    spm_state st = {t, s, NULL, NULL, 0, 0};
    st.sym = malloc(n * sizeof *st.sym);
    if (!st.sym) return lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
    int32_t count = 0;
    for (size_t off = 0; off < n;) {
        size_t len = utf8_len((unsigned char)s[off]);
        if (len > n - off) len = n - off;
        st.sym[count] = (spm_sym){off, len, count - 1, off + len < n ? count + 1 : -1};
        count++;
        off += len;
    }
    lethe_status rc = LETHE_OK;
    for (int32_t i = 1; i < count && rc == LETHE_OK; i++) rc = spm_push(&st, i - 1, i);
    while (rc == LETHE_OK && st.heap_n > 0) {
        spm_cand c = spm_pop(&st);
        spm_sym *L = &st.sym[c.left], *R = &st.sym[c.right];
        if (L->n == 0 || R->n == 0 || L->next != c.right || L->n + R->n != c.size) continue; /* stale */
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0) st.sym[R->next].prev = c.left;
        rc = spm_push(&st, L->prev, c.left);
        if (rc == LETHE_OK) rc = spm_push(&st, c.left, L->next);
    }
    for (int32_t i = 0; i >= 0 && rc == LETHE_OK; i = st.sym[i].next) {
        lethe_token id = lethe_tok_lookup(t, s + st.sym[i].start, st.sym[i].n);
        if (id >= 0) {
            rc = lethe_tokvec_push(out, id);
            continue;
        }
        /* no token for this character: its bytes */
        for (size_t j = 0; j < st.sym[i].n && rc == LETHE_OK; j++) {
            lethe_token b = t->byte_id[(unsigned char)s[st.sym[i].start + j]];
            if (b < 0) b = t->unk;
            if (b >= 0) rc = lethe_tokvec_push(out, b);
        }
    }
    free(st.sym);
    free(st.heap);
    return rc;
}

lethe_status lethe_spm_encode(const lethe_tokenizer *t, const char *text, size_t len, const lethe_frags *frags,
                              lethe_tokvec *out) {
    (void)len;
    lethe_status rc = LETHE_OK;
    bool prev_special = true; /* the start of the input counts as "after a special token" */
    char *buf = NULL;
    size_t cap = 0;
    for (size_t k = 0; k < frags->n && rc == LETHE_OK; k++) {
        const lethe_frag *f = &frags->v[k];
        if (f->special >= 0) {
            rc = lethe_tokvec_push(out, f->special);
            prev_special = true;
            continue;
        }
        size_t need = (f->len + 1) * 3;
        if (need > cap) {
            char *nb = realloc(buf, need);
            if (!nb) {
                rc = lethe_fail(LETHE_ERR_OOM, "tokenizer: out of memory");
                break;
            }
            buf = nb;
            cap = need;
        }
        size_t o = 0;
        if (t->add_space_prefix && prev_special) memcpy(buf, SPM_SPACE, 3), o = 3;
        for (size_t i = 0; i < f->len; i++) {
            char c = text[f->off + i];
            if (c == ' ') {
                memcpy(buf + o, SPM_SPACE, 3);
                o += 3;
            } else {
                buf[o++] = c;
            }
        }
        rc = spm_word(t, buf, o, out);
        prev_special = false;
    }
    free(buf);
    return rc;
}
