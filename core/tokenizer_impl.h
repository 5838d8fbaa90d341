/* tokenizer_impl.h — internal: the tokenizer's data, shared by tokenizer.c
 * (loading, special tokens, BPE, pieces) and tokenizer_spm.c (SentencePiece). */
#ifndef LETHE_TOKENIZER_IMPL_H
#define LETHE_TOKENIZER_IMPL_H

#include "tokenizer.h"
#include "tokenizer_pre.h"

#include <stdint.h>

/* Token attributes (bit set), from tokenizer.ggml.token_type. */
enum {
    LETHE_ATTR_NORMAL = 1,        /* type 1 */
    LETHE_ATTR_UNKNOWN = 2,       /* type 2 */
    LETHE_ATTR_CONTROL = 4,       /* type 3: <|im_start|>, <s>, ... */
    LETHE_ATTR_USER_DEFINED = 8,  /* type 4: added tokens, always matched in text */
    LETHE_ATTR_UNUSED = 16,       /* type 5 */
    LETHE_ATTR_BYTE = 32,         /* type 6: <0xAB> */
    LETHE_ATTR_LSTRIP = 64,       /* when matched, whitespace before it is dropped */
    LETHE_ATTR_RSTRIP = 128,      /* when matched, whitespace after it is dropped */
};

typedef enum lethe_normalizer { LETHE_NORM_NONE = 0, LETHE_NORM_NFC, LETHE_NORM_NFKC } lethe_normalizer;

typedef enum lethe_vocab_type { LETHE_VOCAB_BPE = 0, LETHE_VOCAB_SPM } lethe_vocab_type;

typedef struct lethe_merge_slot {
    uint64_t key;          /* (left id << 32) | right id; UINT64_MAX = empty */
    int32_t rank, result;  /* merge priority (lower first) and the merged token */
} lethe_merge_slot;

struct lethe_tokenizer {
    lethe_vocab_type type;
    int32_t n_vocab;

    /* token texts as stored in the file: [n_vocab] offsets/lengths into text */
    char *text;
    size_t text_size;
    size_t *text_off, *text_len;
    uint8_t *attr;         /* [n_vocab] LETHE_ATTR_* */
    uint8_t *eog;          /* [n_vocab] 1 = ends generation */
    float *scores;         /* [n_vocab] SentencePiece scores, NULL for BPE */

    /* detokenized bytes: [n_vocab] offsets/lengths into piece */
    char *piece;
    size_t *piece_off, *piece_len;

    /* text → id: open addressing, [vmap_cap] ids, -1 = empty */
    int32_t *vmap;
    size_t vmap_cap;
    /* (left, right) → (rank, result): [mmap_cap] */
    lethe_merge_slot *mmap;
    size_t mmap_cap;
    int32_t byte_id[256];  /* BPE: token of each byte's GPT-2 character (-1: none) */

    /* special tokens: ids bucketed by first byte, longest first within a bucket */
    lethe_token *specials;
    size_t n_special;
    size_t special_start[257];

    lethe_pretok *pre;
    lethe_pretok_flags pre_flags;
    bool add_space_prefix; /* SentencePiece: a space before text that follows BOS/special/start */

    lethe_token bos, eos, eot, eom, unk, pad, fim_pad, fim_rep, fim_sep;
    bool add_bos, add_eos;
    lethe_normalizer normalize;   /* applied to the whole text before anything else */
};

typedef struct lethe_tokvec {
    lethe_token *v;
    size_t n, cap;
} lethe_tokvec;

lethe_status lethe_tokvec_push(lethe_tokvec *v, lethe_token id);
char *lethe_tok_normalize(lethe_normalizer nf, const char *text, size_t len, size_t *out_len);
lethe_token lethe_tok_lookup(const lethe_tokenizer *t, const char *s, size_t n);
int lethe_tok_parse_byte(const char *s, size_t n);

/* Text split into raw fragments and special tokens. */
typedef struct lethe_frag {
    lethe_token special;   /* >= 0: a special token; -1: raw text [off, off+len) */
    size_t off, len;
} lethe_frag;

typedef struct lethe_frags {
    lethe_frag *v;
    size_t n, cap;
} lethe_frags;

lethe_status lethe_tok_partition(const lethe_tokenizer *t, const char *text, size_t len, bool parse_special,
                                 lethe_frags *out);

/* SentencePiece (tokenizer_spm.c) */
lethe_status lethe_spm_load(lethe_tokenizer *t, const lethe_gguf *g);
lethe_status lethe_spm_encode(const lethe_tokenizer *t, const char *text, size_t len, const lethe_frags *frags,
                              lethe_tokvec *out);
size_t lethe_spm_unescape(const char *s, size_t n, char *out);
void lethe_spm_set_strip(lethe_tokenizer *t, const lethe_gguf *g);

#endif
