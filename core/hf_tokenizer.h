/* hf_tokenizer.h — Hugging Face tokenizer.json (+ tokenizer_config.json,
 * generation_config.json) as lethe tokenizer data.
 *
 * The JSON is translated into the GGUF tokenizer keys llama.cpp's converter
 * writes (tokenizer.ggml.*), plus a few lethe keys for what GGUF has no key
 * for (tokenizer.lethe.pre_exprs: the file's own pre-tokenizer expressions;
 * .normalizer: nfc/nfkc; .ignore_merges; .eog_ids). The same translation
 * feeds `lethe convert` and, through an in-memory GGUF, the tokenizer of a
 * model loaded from a directory — so there is one BPE and one SentencePiece
 * implementation (tokenizer.c, tokenizer_spm.c), fed from either format.
 *
 * Supported: model type BPE, either byte-level (ByteLevel pre-tokenizer /
 * decoder; Split regex, Digits; NFC/NFKC normalizers) or SentencePiece-style
 * (byte_fallback, "▁" for spaces via Prepend+Replace or Metaspace). Anything
 * else is LETHE_ERR_UNSUPPORTED with the offending name in the message.
 */
#ifndef LETHE_HF_TOKENIZER_H
#define LETHE_HF_TOKENIZER_H

#include "gguf_write.h"
#include "lethe.h"
#include "tokenizer.h"

typedef struct lethe_hf_tokenizer_files {
    const char *tokenizer_json; size_t tokenizer_json_len;   /* required */
    const char *config_json;    size_t config_json_len;      /* tokenizer_config.json, may be NULL */
    const char *generation_json; size_t generation_json_len; /* generation_config.json, may be NULL */
    const char *chat_template;                               /* chat_template.jinja, may be NULL */
    int32_t pad_to;          /* > 0: pad the vocabulary with [PADi] tokens to this size (the
                                embedding's rows), as llama.cpp expects; 0: as the file has it */
} lethe_hf_tokenizer_files;

/* Add the tokenizer.* keys (and tokenizer.chat_template when there is one). */
lethe_status lethe_hf_tokenizer_to_gguf(const lethe_hf_tokenizer_files *f, lethe_gguf_writer *w);

/* Build a tokenizer; *chat_template (if non-NULL) receives a malloc'ed copy
 * of the chat template or NULL. */
lethe_tokenizer *lethe_tokenizer_from_hf(const lethe_hf_tokenizer_files *f, char **chat_template,
                                         lethe_status *status);

#endif
