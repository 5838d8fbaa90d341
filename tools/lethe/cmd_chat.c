/* cmd_chat.c — `lethe chat`: interactive, streaming, multi-turn chat.
 *
 * Multi-turn without re-reading the whole conversation: every turn renders
 * the full history with the model's chat template, tokenizes it, and decodes
 * only the tokens past the longest common prefix with what the KV cache
 * already holds. The cache holds the previous prompt, the generated reply and
 * the end-of-generation token the model sampled, so the next rendering
 * ("...reply<|im_end|>\n<|im_start|>user...") usually extends it. The API has
 * no way to drop a cache suffix, so when the prefix breaks (the reply
 * re-tokenized differently) the sequence is cleared and re-decoded: correct,
 * only slower. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct chat_state {
    lethe_model *m;
    lethe_context *ctx;
    lethe_sampler *smp;
    const cli_opts *o;
    int32_t n_ctx;
    int32_t n_batch;          /* tokens per decode call (-b)                  */
    lethe_chat_message *msgs;   /* [n_msgs] history; role literals, content malloc'ed */
    size_t n_msgs, cap_msgs;
    lethe_token *cached;        /* [n_ctx] tokens in the KV cache of sequence 0 */
    int32_t n_cached;
    char *render;               /* rendered conversation, grown on demand */
    int32_t render_cap;
} chat_state;

static bool push_msg(chat_state *c, const char *role, const char *content) {
    if (c->n_msgs == c->cap_msgs) {
        size_t ncap = c->cap_msgs ? c->cap_msgs * 2 : 16;
        lethe_chat_message *nm = realloc(c->msgs, ncap * sizeof *nm);
        if (!nm) return false;
        c->msgs = nm;
        c->cap_msgs = ncap;
    }
    char *dup = strdup(content);
    if (!dup) return false;
    c->msgs[c->n_msgs++] = (lethe_chat_message){role, dup};
    return true;
}

static void pop_msg(chat_state *c) {
    if (c->n_msgs == 0) return;
    free((char *)c->msgs[--c->n_msgs].content);
}

/* Keep the system message (if any), forget the rest and the cache. */
static void chat_reset(chat_state *c) {
    size_t keep = (c->n_msgs > 0 && !strcmp(c->msgs[0].role, "system")) ? 1 : 0;
    while (c->n_msgs > keep) pop_msg(c);
    lethe_seq_clear(c->ctx, 0);
    c->n_cached = 0;
    lethe_sampler_reset(c->smp);
}

/* Render the history; returns the length or -1 after an error line. */
static int32_t render_history(chat_state *c) {
    for (;;) {
        int32_t n = lethe_chat_apply(c->m, c->msgs, c->n_msgs, true, c->render, c->render_cap);
        if (n < 0) {
            cli_error_status((lethe_status)-n, "cannot apply the chat template");
            return -1;
        }
        if (n < c->render_cap) return n;
        int32_t ncap = n + 1024;
        char *nr = realloc(c->render, (size_t)ncap);
        if (!nr) {
            cli_error("out of memory");
            return -1;
        }
        c->render = nr;
        c->render_cap = ncap;
    }
}

enum { TURN_OK = 0, TURN_FAIL = 1, TURN_CTX_FULL = 2 };

/* Feed tokens to the cache, keeping `cached` in step. Long inputs go in
 * n_batch-sized calls: an evicting cache frees memory
 * between them, and each committed call is recorded at once. */
static int feed(chat_state *c, const lethe_token *t, int32_t n) {
    if (n <= 0) return TURN_OK;
    if (c->n_cached + n > c->n_ctx) return TURN_CTX_FULL;
    for (int32_t i = 0; i < n; i += c->n_batch) {
        const int32_t m = n - i < c->n_batch ? n - i : c->n_batch;
        lethe_status st = lethe_decode(c->ctx, lethe_batch_one(t + i, m));
        if (st == LETHE_ERR_CONTEXT_FULL) return TURN_CTX_FULL;
        if (st != LETHE_OK) {
            cli_error_status(st, "decode failed");
            return TURN_FAIL;
        }
        memcpy(c->cached + c->n_cached, t + i, (size_t)m * sizeof *t);
        c->n_cached += m;
    }
    return TURN_OK;
}

/* Answer the last user message: stream the reply to stdout and append it to
 * the history. */
static int chat_turn(chat_state *c) {
    int32_t len = render_history(c);
    if (len < 0) return TURN_FAIL;
    int32_t n_tok = 0;
    lethe_token *toks = cli_tokenize(c->m, c->render, (size_t)len, true, true, &n_tok);
    if (!toks) return TURN_FAIL;
    /* A template that writes BOS itself plus add_special would give two. */
    lethe_token bos = lethe_token_bos(c->m);
    lethe_token *tk = toks;
    if (n_tok >= 2 && bos >= 0 && toks[0] == bos && toks[1] == bos) {
        tk++;
        n_tok--;
    }
    if (n_tok >= c->n_ctx) {
        free(toks);
        return TURN_CTX_FULL;
    }

    int32_t common = 0;
    while (common < c->n_cached && common < n_tok && c->cached[common] == tk[common]) common++;
    /* no partial truncation in the API: a diverging cache is rebuilt; and the
     * last prompt token must be decoded now to get fresh logits */
    if (common < c->n_cached || common >= n_tok) {
        lethe_seq_clear(c->ctx, 0);
        c->n_cached = 0;
        common = 0;
        if (c->o->verbose) cli_warn("chat: cache prefix mismatch, re-reading the conversation");
    }
    int rc = feed(c, tk + common, n_tok - common);
    free(toks);
    if (rc != TURN_OK) return rc;

    char *reply = malloc(256);
    size_t rlen = 0, rcap = 256;
    if (!reply) return cli_error("out of memory"), TURN_FAIL;
    reply[0] = '\0';
    int32_t n_gen = 0;
    bool full = false;
    double t0 = cli_now_s();
    for (; c->o->n_predict < 0 || n_gen < c->o->n_predict; n_gen++) {
        lethe_token t = lethe_sample(c->smp, c->ctx, -1);   /* candidates or logits (cli_device_sampling) */
        if (t < 0) {
            free(reply);
            return cli_error_status(LETHE_ERR_INTERNAL, "sampling failed"), TURN_FAIL;
        }
        lethe_sampler_accept(c->smp, t);
        if (lethe_token_is_eog(c->m, t)) {
            /* keep the end-of-turn token in the cache: the next rendering has it */
            if (c->n_cached < c->n_ctx) feed(c, &t, 1);
            break;
        }
        /* Pieces are raw bytes: a UTF-8 character split over two tokens is
         * completed by the terminal when the second part arrives. */
        cli_write_piece(c->m, t, stdout, false);
        fflush(stdout);
        if (!cli_piece_append(c->m, t, &reply, &rlen, &rcap)) {
            free(reply);
            return cli_error("out of memory"), TURN_FAIL;
        }
        if (c->n_cached >= c->n_ctx) {
            full = true;
            break;
        }
        rc = feed(c, &t, 1);
        if (rc == TURN_CTX_FULL) {
            full = true;
            break;
        }
        if (rc != TURN_OK) {
            free(reply);
            return rc;
        }
    }
    double t1 = cli_now_s();
    fputc('\n', stdout);
    fflush(stdout);
    if (c->o->stats || c->o->verbose)
        fprintf(stderr, "lethe: %d tokens in %.2f s (%.2f t/s), %d tokens in context\n", n_gen, t1 - t0,
                n_gen / ((t1 - t0) > 0 ? (t1 - t0) : 1e-9), c->n_cached);
    bool ok = push_msg(c, "assistant", reply);
    free(reply);
    if (!ok) return cli_error("out of memory"), TURN_FAIL;
    if (full) cli_warn("context full (%d tokens): the reply was cut; the next message starts a new conversation",
                       c->n_ctx);
    return TURN_OK;
}

/* One user message: answer it, resetting once if the context is full. */
static int chat_user(chat_state *c, const char *text) {
    if (!push_msg(c, "user", text)) return cli_error("out of memory"), TURN_FAIL;
    int rc = chat_turn(c);
    if (rc == TURN_CTX_FULL && c->n_msgs > 2) {
        fprintf(stderr, "lethe: context full (%d tokens): conversation reset\n", c->n_ctx);
        char *keep = strdup(text);
        if (!keep) return cli_error("out of memory"), TURN_FAIL;
        chat_reset(c);
        push_msg(c, "user", keep);
        free(keep);
        rc = chat_turn(c);
    }
    if (rc == TURN_CTX_FULL) {
        pop_msg(c);
        cli_error("the message does not fit in the context of %d tokens (raise -c)", c->n_ctx);
        /* the cache may hold a partial prompt now: start the next turn clean */
        lethe_seq_clear(c->ctx, 0);
        c->n_cached = 0;
        return TURN_FAIL;
    }
    return rc;
}

static const char k_chat_help[] =
    "Chat with the model using its chat template; replies stream token by token.\n"
    "Type /reset to start over, /quit (or end of input) to leave.\n"
    "With -p TEXT: answer once and exit (for scripts).\n"
    "--save FILE keeps the conversation and its KV cache (DMS flags included) when the chat\n"
    "ends; --load FILE resumes it: with --temp 0 the replies are those of an unbroken chat.";

/* The history as the state's user data: "role\0content\0" per message. */
static char *history_blob(const chat_state *c, size_t *size) {
    size_t n = 0;
    for (size_t i = 0; i < c->n_msgs; i++) n += strlen(c->msgs[i].role) + strlen(c->msgs[i].content) + 2;
    char *b = malloc(n ? n : 1), *w = b;
    if (!b) return NULL;
    for (size_t i = 0; i < c->n_msgs; i++) {
        const size_t r = strlen(c->msgs[i].role) + 1, t = strlen(c->msgs[i].content) + 1;
        memcpy(w, c->msgs[i].role, r);
        memcpy(w + r, c->msgs[i].content, t);
        w += r + t;
    }
    *size = n;
    return b;
}

static int chat_save(chat_state *c, const char *path) {
    size_t n = 0;
    char *blob = history_blob(c, &n);
    if (!blob) return cli_error("out of memory");
    lethe_status st = lethe_state_save_file(c->ctx, 0, path, c->cached, c->n_cached, blob, n);
    free(blob);
    if (st != LETHE_OK) return cli_error_status(st, "cannot save the chat");
    return 0;
}

static int chat_load(chat_state *c, const char *path) {
    void *blob = NULL;
    size_t n = 0;
    lethe_status st = lethe_state_load_file(c->ctx, 0, path, c->cached, c->n_ctx, &c->n_cached, &blob, &n);
    if (st != LETHE_OK) return cli_error_status(st, "cannot resume the chat");
    static const char *const roles[] = {"system", "user", "assistant"};
    const char *b = blob, *end = b + n;
    while (c->n_msgs) pop_msg(c);
    while (b < end) {
        const char *role = b, *z = memchr(b, 0, (size_t)(end - b));
        const char *content = z ? z + 1 : end, *z2 = z ? memchr(content, 0, (size_t)(end - content)) : NULL;
        const char *lit = NULL;
        for (size_t i = 0; z2 && i < 3; i++)
            if (!strcmp(role, roles[i])) lit = roles[i];
        if (!lit || !push_msg(c, lit, content)) {
            lethe_free(blob);
            lethe_seq_clear(c->ctx, 0);
            c->n_cached = 0;
            return cli_error("'%s' holds no chat history (saved by another program?)", path);
        }
        b = z2 + 1;
    }
    lethe_free(blob);
    return 0;
}

int cli_cmd_chat(int argc, char **argv) {
    cli_opts o;
    int rc = cli_parse(CLI_CHAT, "chat", argc, argv, &o);
    if (rc) return rc;
    if (o.help) {
        cli_print_help(CLI_CHAT, "chat", k_chat_help);
        return 0;
    }
    chat_state c = {0};
    c.o = &o;
    rc = CLI_EXIT_FAIL;
    c.m = cli_load_model(&o, true);
    if (!c.m) goto done;
    c.ctx = cli_new_context(c.m, &o, 0);
    if (!c.ctx) goto done;
    c.n_ctx = lethe_n_ctx(c.ctx);
    c.n_batch = o.n_batch > 0 ? o.n_batch : 512;
    c.cached = malloc((size_t)c.n_ctx * sizeof *c.cached);
    c.render_cap = 4096;
    c.render = malloc((size_t)c.render_cap);
    if (!c.cached || !c.render) {
        cli_error("out of memory");
        goto done;
    }
    c.smp = lethe_sampler_new(o.sp, lethe_n_vocab(c.m));
    if (!c.smp) {
        cli_error_status(LETHE_ERR_INVALID_ARG, "bad sampling parameters");
        goto done;
    }
    cli_device_sampling(c.ctx, &o, c.smp);
    if (o.load) {
        if (chat_load(&c, o.load)) goto done;
        if (o.system) cli_warn("--system ignored: the loaded conversation has its own");
    } else if (o.system && !push_msg(&c, "system", o.system)) {
        cli_error("out of memory");
        goto done;
    }

    if (o.prompt) {
        rc = chat_user(&c, o.prompt) == TURN_OK ? 0 : CLI_EXIT_FAIL;
        if (rc == 0 && o.save && chat_save(&c, o.save)) rc = CLI_EXIT_FAIL;
        goto done;
    }

    const bool tty = isatty(STDIN_FILENO);
    char *line = NULL;
    size_t line_cap = 0;
    for (;;) {
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        ssize_t n = getline(&line, &line_cap, stdin);
        if (n < 0) break;   /* EOF quits */
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0) continue;
        if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) break;
        if (!strcmp(line, "/reset")) {
            chat_reset(&c);
            fprintf(stderr, "lethe: conversation reset\n");
            continue;
        }
        if (chat_user(&c, line) == TURN_FAIL && !tty) {
            free(line);
            goto done;   /* scripted input: a failure ends the run */
        }
    }
    free(line);
    if (tty) fputc('\n', stdout);
    rc = o.save && chat_save(&c, o.save) ? CLI_EXIT_FAIL : 0;
done:
    while (c.n_msgs) pop_msg(&c);
    free(c.msgs);
    free(c.cached);
    free(c.render);
    lethe_sampler_free(c.smp);
    lethe_context_free(c.ctx);
    lethe_model_free(c.m);
    return rc;
}
