/* api.c — the thin public wrappers over the tokenizer and chat templates. */
#include "common.h"
#include "model.h"

#include <string.h>

const char *lethe_version(void) {
#ifdef LETHE_HAVE_VULKAN
    return "0.1.0 (backends: cpu vulkan)";
#else
    return "0.1.0 (backends: cpu)";
#endif
}

int32_t lethe_tokenize(const lethe_model *m, const char *text, size_t text_len, lethe_token *tokens,
                       int32_t max_tokens, bool add_special, bool parse_special) {
    if (!m || (!text && text_len) || max_tokens < 0 || (!tokens && max_tokens))
        return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG, "tokenize: invalid arguments");
    return lethe_tokenizer_encode(m->tok, text ? text : "", text_len, tokens, max_tokens, add_special,
                                  parse_special);
}

int32_t lethe_token_to_piece(const lethe_model *m, lethe_token token, char *buf, int32_t buf_size,
                             bool render_special) {
    if (!m || buf_size < 0 || (!buf && buf_size))
        return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG, "token_to_piece: invalid arguments");
    return lethe_tokenizer_piece(m->tok, token, buf, buf_size, render_special);
}

lethe_token lethe_token_bos(const lethe_model *m) { return m ? lethe_tokenizer_bos(m->tok) : -1; }
lethe_token lethe_token_eos(const lethe_model *m) { return m ? lethe_tokenizer_eos(m->tok) : -1; }
bool lethe_token_is_eog(const lethe_model *m, lethe_token t) { return m && lethe_tokenizer_is_eog(m->tok, t); }
int32_t lethe_n_vocab(const lethe_model *m) { return m ? m->hp.n_vocab : 0; }

int32_t lethe_chat_apply(const lethe_model *m, const lethe_chat_message *msgs, size_t n_msgs,
                         bool add_assistant_prompt, char *buf, int32_t buf_size) {
    if (!m || (!msgs && n_msgs) || buf_size < 0 || (!buf && buf_size))
        return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG, "chat_apply: invalid arguments");
    for (size_t i = 0; i < n_msgs; i++)
        if (!msgs[i].role || !msgs[i].content)
            return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG, "chat_apply: message %zu has no role or content", i);
    const char *bos = NULL;
    char bos_buf[64];
    if (m->chat_style == LETHE_CHAT_LLAMA3) {
        lethe_token b = lethe_tokenizer_bos(m->tok);
        int32_t k = b >= 0 ? lethe_tokenizer_piece(m->tok, b, bos_buf, sizeof bos_buf - 1, true) : -1;
        if (k > 0 && k < (int32_t)sizeof bos_buf) { bos_buf[k] = 0; bos = bos_buf; }
    }
    return lethe_chat_render(m->chat_style, m->chat_system, bos, msgs, n_msgs, add_assistant_prompt, buf,
                             buf_size);
}
