/* tokenizer_pre.h — internal: the pre-tokenizers of byte-level BPE vocabularies.
 *
 * A pre-tokenizer is a sequence of regular expressions (the ones in the
 * model's Hugging Face tokenizer.json). Each expression splits every piece
 * produced by the previous one: its matches become pieces, and so do the
 * unmatched gaps between them ("isolated" split behaviour). The final pieces
 * are what BPE merges within. Matching is done by PCRE2 with UTF + UCP.
 */
#ifndef LETHE_TOKENIZER_PRE_H
#define LETHE_TOKENIZER_PRE_H

#include "lethe.h"
#include <stdbool.h>
#include <stddef.h>

typedef struct lethe_pretok lethe_pretok;

/* Per-vocabulary behaviour that llama.cpp ties to the pre-tokenizer name. */
typedef struct lethe_pretok_flags {
    bool ignore_merges;   /* a piece that is a whole vocabulary token is emitted as is (Llama 3) */
    bool add_bos_default; /* add BOS unless tokenizer.ggml.add_bos_token says otherwise */
    bool no_bos;          /* the vocabulary's BOS id is not used (ChatGLM) */
} lethe_pretok_flags;

/* A byte range [off, off+len) of the text being split. */
typedef struct lethe_span {
    size_t off, len;
} lethe_span;

/* Growable list of spans, reused across calls to avoid per-piece allocations. */
typedef struct lethe_spans {
    lethe_span *v;
    size_t n, cap;
} lethe_spans;

/* `name` is tokenizer.ggml.pre (NULL or "" → "default"). NULL + status
 * (LETHE_ERR_UNSUPPORTED for an unknown name) on failure. */
lethe_pretok *lethe_pretok_new(const char *name, lethe_pretok_flags *flags, lethe_status *status);
/* From expressions as written in a tokenizer.json (each an "Isolated" split). */
lethe_pretok *lethe_pretok_new_exprs(const char *const *exprs, int n, lethe_status *status);
/* GPT-2's ByteLevel expression (tokenizer.json ByteLevel with use_regex). */
extern const char *const lethe_pretok_gpt2_regex;
/* The tokenizer.ggml.pre name whose expressions are exactly `exprs`, or NULL. */
const char *lethe_pretok_known_name(const char *const *exprs, int n);
void lethe_pretok_free(lethe_pretok *p);
const char *lethe_pretok_name(const lethe_pretok *p);

/* Split text[0..len) (one fragment without special tokens); appends the pieces
 * to `out` (offsets relative to `text`), in order, covering all of it.
 * Returns LETHE_OK or a status with a message. */
lethe_status lethe_pretok_split(const lethe_pretok *p, const char *text, size_t len, lethe_spans *out);

lethe_status lethe_spans_push(lethe_spans *s, size_t off, size_t len);
void lethe_spans_free(lethe_spans *s);

#endif
