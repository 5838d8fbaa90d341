/* chat.c — chat templates: classify the GGUF's Jinja template, render in C.
 *
 * lethe does not interpret Jinja. The two template families it supports are
 * recognised by their marker tokens and rendered exactly as their templates
 * would; a template's hard-coded default system message (SmolLM2, Qwen2.5)
 * is extracted once so the rendering can insert it the way the template does.
 */
#include "common.h"
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

lethe_chat_style lethe_chat_detect(const char *tmpl) {
    if (!tmpl) return LETHE_CHAT_CHATML;
    if (strstr(tmpl, "<|im_start|>")) return LETHE_CHAT_CHATML;
    if (strstr(tmpl, "<|start_header_id|>")) return LETHE_CHAT_LLAMA3;
    return LETHE_CHAT_CHATML; /* the documented default when the template is unknown */
}

/* Appends to a caller buffer while counting the full length, so one pass
 * both renders and reports the size needed. */
typedef struct outbuf {
    char *buf;
    size_t cap;   /* bytes available including the NUL */
    size_t len;   /* full rendered length so far */
} outbuf;

static void put(outbuf *o, const char *s) {
    size_t n = strlen(s);
    if (o->cap > 0 && o->len < o->cap - 1) {
        size_t room = o->cap - 1 - o->len;
        memcpy(o->buf + o->len, s, n < room ? n : room);
    }
    o->len += n;
}

int32_t lethe_chat_render(lethe_chat_style style, const char *default_system, const char *bos_text,
                          const lethe_chat_message *msgs, size_t n, bool add_assistant_prompt, char *buf,
                          int32_t buf_size) {
    if (buf_size < 0 || (!buf && buf_size > 0) || (!msgs && n > 0))
        return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG, "chat: invalid arguments");
    if (style != LETHE_CHAT_CHATML && style != LETHE_CHAT_LLAMA3)
        return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG, "chat: unknown style %d", (int)style);
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG, "chat: message %zu has no role or content", i);
    }
    outbuf o = {buf, (size_t)buf_size, 0};
    /* SmolLM2: {% if loop.first and messages[0]['role'] != 'system' %} — only
     * inside the message loop, so an empty conversation gets no system turn. */
    bool add_system = default_system && n > 0 && strcmp(msgs[0].role, "system") != 0;
    if (style == LETHE_CHAT_CHATML) {
        if (add_system) {
            put(&o, "<|im_start|>system\n");
            put(&o, default_system);
            put(&o, "<|im_end|>\n");
        }
        for (size_t i = 0; i < n; i++) {
            put(&o, "<|im_start|>");
            put(&o, msgs[i].role);
            put(&o, "\n");
            put(&o, msgs[i].content);
            put(&o, "<|im_end|>\n");
        }
        if (add_assistant_prompt) put(&o, "<|im_start|>assistant\n");
    } else {
        if (bos_text) put(&o, bos_text);
        if (add_system) {
            put(&o, "<|start_header_id|>system<|end_header_id|>\n\n");
            put(&o, default_system);
            put(&o, "<|eot_id|>");
        }
        for (size_t i = 0; i < n; i++) {
            put(&o, "<|start_header_id|>");
            put(&o, msgs[i].role);
            put(&o, "<|end_header_id|>\n\n");
            put(&o, msgs[i].content);
            put(&o, "<|eot_id|>");
        }
        if (add_assistant_prompt) put(&o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    }
    if (o.cap > 0) o.buf[o.len < o.cap - 1 ? o.len : o.cap - 1] = 0;
    if (o.len > INT32_MAX) return -(int32_t)lethe_fail(LETHE_ERR_INVALID_ARG, "chat: rendered text exceeds 2 GiB");
    return (int32_t)o.len;
}

/* Copy s[0..n) undoing Jinja string escapes (\n \t \' \" \\) if `escaped`. */
static char *copy_text(const char *s, size_t n, bool escaped) {
    char *out = malloc(n + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (escaped && s[i] == '\\' && i + 1 < n) {
            char c = s[++i];
            out[o++] = c == 'n' ? '\n' : c == 't' ? '\t' : c;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = 0;
    return out;
}

char *lethe_chat_default_system(const char *tmpl) {
    if (!tmpl) return NULL;
    /* The marker is followed by a real newline, or by "\n" written inside a
     * Jinja string literal. */
    static const struct { const char *marker; bool escaped; } forms[] = {
        {"<|im_start|>system\n", false},
        {"<|im_start|>system\\n", true},
    };
    for (size_t f = 0; f < 2; f++) {
        const char *p = tmpl;
        while ((p = strstr(p, forms[f].marker)) != NULL) {
            const char *start = p + strlen(forms[f].marker);
            const char *end = strstr(start, "<|im_end|>");
            if (!end) break;
            size_t n = (size_t)(end - start);
            /* A system turn filled from messages[0] is template code, not a
             * hard-coded message: it leaves the string literal (quotes) or
             * opens an expression. */
            bool code = false;
            for (size_t i = 0; i < n && !code; i++) {
                char c = start[i];
                if (c == '\'' || c == '"') code = !(forms[f].escaped && i > 0 && start[i - 1] == '\\');
                if (c == '{' && i + 1 < n && (start[i + 1] == '{' || start[i + 1] == '%')) code = true;
            }
            if (!code && n > 0) return copy_text(start, n, forms[f].escaped);
            p = start;
        }
    }
    return NULL;
}
