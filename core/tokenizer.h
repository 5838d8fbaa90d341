/* tokenizer.h — text <-> token ids, from the vocabulary in a GGUF file.
 *
 * Byte-level BPE (tokenizer.ggml.model = "gpt2"): the text is split by the
 * pre-tokenizer of tokenizer.ggml.pre (gpt2, llama3/llama-bpe, smollm,
 * qwen2, ...) with PCRE2 (UTF + UCP), each piece mapped to GPT-2's byte
 * alphabet and merged by rank from tokenizer.ggml.merges. Special tokens
 * (token type CONTROL / USER_DEFINED) are matched in the raw text first,
 * leftmost-longest: USER_DEFINED always, CONTROL only when parse_special is
 * set (as Hugging Face and llama.cpp do).
 *
 * SentencePiece vocabularies (tokenizer.ggml.model = "llama") are supported
 * too (score-ordered merges, "▁" for spaces, <0xAB> byte fallback).
 * Ids match llama.cpp's test vectors for every supported vocabulary (see
 * tests/test_tokenizer.c). Implementation: tokenizer.c, tokenizer_pre.c
 * (pre-tokenizer regexes), tokenizer_spm.c, tokenizer_impl.h (internal).
 */
#ifndef LETHE_TOKENIZER_H
#define LETHE_TOKENIZER_H

#include "gguf.h"
#include "lethe.h"

typedef struct lethe_tokenizer lethe_tokenizer;

/* Build from GGUF metadata. NULL + status/message if the data is missing,
 * inconsistent, or of an unsupported model/pre-tokenizer. */
lethe_tokenizer *lethe_tokenizer_from_gguf(const lethe_gguf *g, lethe_status *status);
void lethe_tokenizer_free(lethe_tokenizer *tok);

/* Same contract as lethe_tokenize() in lethe.h. */
int32_t lethe_tokenizer_encode(const lethe_tokenizer *tok, const char *text, size_t len,
                               lethe_token *out, int32_t max_out, bool add_special,
                               bool parse_special);
/* Same contract as lethe_token_to_piece(). */
int32_t lethe_tokenizer_piece(const lethe_tokenizer *tok, lethe_token id, char *buf,
                              int32_t buf_size, bool render_special);

int32_t lethe_tokenizer_n_vocab(const lethe_tokenizer *tok);
lethe_token lethe_tokenizer_bos(const lethe_tokenizer *tok);   /* -1 if none */
lethe_token lethe_tokenizer_eos(const lethe_tokenizer *tok);
bool lethe_tokenizer_is_eog(const lethe_tokenizer *tok, lethe_token id);
/* id of a token whose text is exactly `text`, or -1 */
lethe_token lethe_tokenizer_find(const lethe_tokenizer *tok, const char *text);

/* Chat templates: the GGUF tokenizer.chat_template (Jinja) is classified, not
 * interpreted; the classified style is rendered in C. */
typedef enum lethe_chat_style {
    LETHE_CHAT_CHATML = 0,      /* <|im_start|>role\ncontent<|im_end|>\n  (SmolLM, Qwen) */
    LETHE_CHAT_LLAMA3,          /* <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> */
} lethe_chat_style;

lethe_chat_style lethe_chat_detect(const char *jinja_template /* may be NULL */);
/* Render; default_system is inserted first when the template does so and the
 * messages have no system message (SmolLM's "You are a helpful AI assistant
 * named SmolLM, trained by Hugging Face"), NULL for none. Same return
 * contract as lethe_chat_apply(). bos_text is prepended if non-NULL (Llama 3). */
int32_t lethe_chat_render(lethe_chat_style style, const char *default_system,
                          const char *bos_text, const lethe_chat_message *msgs, size_t n,
                          bool add_assistant_prompt, char *buf, int32_t buf_size);
/* Extract the default system message hard-coded in a ChatML Jinja template
 * (SmolLM2's), or NULL. Caller frees. */
char *lethe_chat_default_system(const char *jinja_template);

#endif
