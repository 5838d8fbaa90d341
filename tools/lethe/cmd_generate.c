/* cmd_generate.c — the one-shot subcommands: generate, tokenize, logits, info. */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Parse argv; returns -1 to go on, else the exit status (help shown or error). */
static int parse_or_exit(int cmd, const char *name, const char *summary, int argc, char **argv, cli_opts *o) {
    int rc = cli_parse(cmd, name, argc, argv, o);
    if (rc) return rc;
    if (o->help) {
        cli_print_help(cmd, name, summary);
        return 0;
    }
    return -1;
}

/* ---- generate ----------------------------------------------------------- */

static const char k_generate_help[] =
    "Continue a prompt. Only the continuation goes to stdout (no prompt echo);\n"
    "timings go to stderr with -v or --stats. --temp 0 is greedy and deterministic.\n"
    "--parallel N forks N sequences from the prompt and decodes them together,\n"
    "each with its own cache and seed (--seed + i); they print when all are done.\n"
    "example: lethe generate -p \"The capital of France is\" -n 16 --temp 0";

/* --parallel N: fork the prefilled prompt into N sequences, then one batched
 * decode per step with one token of every live sequence. A sequence that
 * does not fit the KV budget is refused (at fork) or retired (when a step
 * runs out of pages), leaving the others untouched. */
static int generate_parallel(const cli_opts *o, lethe_model *m, lethe_context *ctx, int32_t n_prompt) {
    const int32_t N = o->parallel, n_ctx = lethe_n_ctx(ctx);
    int rc = CLI_EXIT_FAIL;
    lethe_sampler **smp = calloc((size_t)N, sizeof *smp);
    char **text = calloc((size_t)N, sizeof *text);
    size_t *len = calloc((size_t)N, sizeof *len), *cap = calloc((size_t)N, sizeof *cap);
    int32_t *ids = malloc((size_t)N * sizeof *ids), *row = malloc((size_t)N * sizeof *row);
    int32_t *n_gen = calloc((size_t)N, sizeof *n_gen);
    lethe_token *next = malloc((size_t)N * sizeof *next);
    int8_t *want = malloc((size_t)N);
    bool *live = calloc((size_t)N, sizeof *live);
    const char **why = calloc((size_t)N, sizeof *why);
    if (!smp || !text || !len || !cap || !ids || !row || !n_gen || !next || !want || !live || !why) {
        cli_error("out of memory");
        goto done;
    }
    /* every sequence's first token comes from the prompt's output (logits
     * or candidates, cli_device_sampling), sampled before any fork */
    for (int32_t s = 0; s < N; s++) {
        lethe_sampler_params sp = o->sp;
        if (sp.seed != LETHE_SEED_RANDOM) sp.seed += (uint64_t)s;
        smp[s] = lethe_sampler_new(sp, lethe_n_vocab(m));
        if (!smp[s]) {
            cli_error_status(LETHE_ERR_INVALID_ARG, "bad sampling parameters");
            goto done;
        }
        next[s] = lethe_sample(smp[s], ctx, -1);
        if (next[s] < 0) {
            cli_error_status(LETHE_ERR_INTERNAL, "no output after the prompt");
            goto done;
        }
    }
    int32_t n_live = 0;
    for (int32_t s = 0; s < N; s++) {
        if (s > 0) {
            lethe_status st = lethe_seq_fork(ctx, 0, s);
            if (st != LETHE_OK) {   /* the others are the same size: refused too */
                if (s < N - 1) cli_warn("sequences %d-%d refused: %s (%s)", s, N - 1, lethe_strerror(st), lethe_last_error());
                else cli_warn("sequence %d refused: %s (%s)", s, lethe_strerror(st), lethe_last_error());
                for (int32_t r = s; r < N; r++) why[r] = "refused: no room in the KV budget";
                break;
            }
        }
        live[s] = true;
        n_live++;
    }
    while (n_live > 0) {
        int32_t nb = 0;
        for (int32_t s = 0; s < N; s++) {
            if (!live[s]) continue;
            lethe_token t = next[s];
            if ((!o->ignore_eos && lethe_token_is_eog(m, t)) || t < 0) {
                live[s] = false;
                n_live--;
                lethe_seq_clear(ctx, s);   /* its pages go back to the pool */
                continue;
            }
            cli_piece_append(m, t, &text[s], &len[s], &cap[s]);
            lethe_sampler_accept(smp[s], t);
            if (++n_gen[s] >= o->n_predict && o->n_predict >= 0) {
                live[s] = false;
                n_live--;
                continue;
            }
            if (lethe_seq_len(ctx, s) >= n_ctx) {
                live[s] = false;
                n_live--;
                why[s] = "stopped: context full";
                continue;
            }
            ids[nb] = s;
            row[nb] = t;
            want[nb] = 1;
            nb++;
        }
        if (nb == 0) break;
        lethe_batch b = {.n_tokens = nb, .tokens = row, .seq_id = ids, .logits = want};
        lethe_status st = lethe_decode(ctx, b);
        while (st == LETHE_ERR_CONTEXT_FULL && nb > 1) {
            /* out of KV pages: retire the last sequence, the rest go on */
            const int32_t s = ids[--nb];
            live[s] = false;
            n_live--;
            why[s] = "stopped: the KV budget ran out";
            lethe_seq_clear(ctx, s);
            cli_warn("sequence %d stopped after %d tokens: the KV budget ran out", s, n_gen[s]);
            b.n_tokens = nb;
            st = lethe_decode(ctx, b);
        }
        if (st != LETHE_OK) {
            cli_error_status(st, "decode failed");
            goto done;
        }
        for (int32_t i = 0; i < nb; i++) next[ids[i]] = lethe_sample(smp[ids[i]], ctx, i);
    }
    if (o->kv_stats) cli_print_kv_stats(ctx, m, false);
    for (int32_t s = 0; s < N; s++) {
        printf("=== sequence %d (%d tokens%s%s) ===\n", s, n_gen[s], why[s] ? ", " : "", why[s] ? why[s] : "");
        if (len[s]) fwrite(text[s], 1, len[s], stdout);
        printf("\n");
    }
    fflush(stdout);
    (void)n_prompt;
    rc = 0;
done:
    for (int32_t s = 0; smp && s < N; s++) lethe_sampler_free(smp[s]);
    for (int32_t s = 0; text && s < N; s++) free(text[s]);
    free(smp); free(text); free(len); free(cap); free(ids); free(row); free(n_gen); free(next); free(want);
    free(live); free(why);
    return rc;
}

int cli_cmd_generate(int argc, char **argv) {
    cli_opts o;
    int rc = parse_or_exit(CLI_GENERATE, "generate", k_generate_help, argc, argv, &o);
    if (rc >= 0) return rc;
    if (!o.n_predict_set) o.n_predict = 128;

    size_t len = 0;
    char *text = cli_input_text(&o, &len, false, NULL);
    if (!text) return CLI_EXIT_USAGE;

    rc = CLI_EXIT_FAIL;
    lethe_model *m = NULL;
    lethe_context *ctx = NULL;
    lethe_sampler *smp = NULL;
    lethe_token *toks = NULL;
    int32_t n_prompt = 0;

    m = cli_load_model(&o, false);
    if (!m) goto done;
    toks = cli_tokenize(m, text, len, true, true, &n_prompt);
    if (!toks) goto done;
    if (n_prompt == 0) {
        cli_error("the prompt is empty (no tokens)");
        goto done;
    }
    ctx = cli_new_context(m, &o, 0);
    if (!ctx) goto done;
    const int32_t n_ctx = lethe_n_ctx(ctx);
    if (n_prompt > n_ctx) {
        cli_error("the prompt is %d tokens but the context holds %d (raise -c)", n_prompt, n_ctx);
        goto done;
    }
    smp = lethe_sampler_new(o.sp, lethe_n_vocab(m));
    if (!smp) {
        cli_error_status(LETHE_ERR_INVALID_ARG, "bad sampling parameters");
        goto done;
    }
    /* the prompt feeds the repetition penalty, as in llama.cpp */
    for (int32_t i = 0; i < n_prompt; i++) lethe_sampler_accept(smp, toks[i]);
    /* the decode selects the chain's candidates on the device when it can
     * (--parallel: every sequence's sampler has this chain) */
    cli_device_sampling(ctx, &o, smp);

    double t0 = cli_now_s();
    lethe_status st = cli_decode_chunks(ctx, toks, n_prompt, 0, o.n_batch);
    if (st != LETHE_OK) {
        cli_error_status(st, "prompt decode failed");
        goto done;
    }
    double t1 = cli_now_s();
    if (o.parallel > 1) {
        rc = generate_parallel(&o, m, ctx, n_prompt);
        goto done;
    }

    int32_t n_gen = 0;
    bool ctx_full = false;
    for (; o.n_predict < 0 || n_gen < o.n_predict; ) {
        lethe_token t = lethe_sample(smp, ctx, -1);   /* candidates or logits (cli_device_sampling) */
        if (t < 0) {
            cli_error_status(LETHE_ERR_INTERNAL, "sampling failed");
            goto done;
        }
        if (!o.ignore_eos && lethe_token_is_eog(m, t)) break;
        cli_write_piece(m, t, stdout, false);
        fflush(stdout);   /* stream token by token */
        lethe_sampler_accept(smp, t);
        n_gen++;
        if (o.n_predict >= 0 && n_gen >= o.n_predict) break;   /* no need to decode the last one */
        if (lethe_seq_len(ctx, 0) >= n_ctx) {
            ctx_full = true;
            break;
        }
        st = lethe_decode(ctx, lethe_batch_one(&t, 1));
        if (st != LETHE_OK) {
            fputc('\n', stdout);
            cli_error_status(st, "decode failed");
            goto done;
        }
    }
    double t2 = cli_now_s();
    if (isatty(STDOUT_FILENO)) fputc('\n', stdout);
    fflush(stdout);
    if (ctx_full) cli_warn("context full (%d tokens): stopped after %d generated tokens (raise -c)", n_ctx, n_gen);
    if (o.verbose || o.stats) {
        fprintf(stderr, "lethe: prompt %d tokens in %.1f ms (%.2f t/s); generated %d tokens in %.1f ms (%.2f t/s)\n",
                n_prompt, (t1 - t0) * 1e3, n_prompt / ((t1 - t0) > 0 ? (t1 - t0) : 1e-9), n_gen, (t2 - t1) * 1e3,
                n_gen / ((t2 - t1) > 0 ? (t2 - t1) : 1e-9));
        if (!o.kv_stats) cli_print_kv_stats(ctx, m, false);
    }
    if (o.kv_stats) cli_print_kv_stats(ctx, m, true);
    rc = 0;
done:
    lethe_sampler_free(smp);
    free(toks);
    lethe_context_free(ctx);
    lethe_model_free(m);
    free(text);
    return rc;
}

/* ---- tokenize ----------------------------------------------------------- */

static const char k_tokenize_help[] =
    "Print the token ids of -p TEXT or -f FILE, space-separated on one line.\n"
    "Special tokens are added (BOS as the model asks) and parsed unless --no-special.";

/* Piece with control bytes escaped so one token stays on one line. */
static void print_piece_escaped(const lethe_model *m, lethe_token t) {
    char buf[512];
    int32_t n = lethe_token_to_piece(m, t, buf, sizeof buf, true);
    if (n < 0 || n > (int32_t)sizeof buf) n = 0;
    for (int32_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)buf[i];
        if (ch == '\n') fputs("\\n", stdout);
        else if (ch == '\t') fputs("\\t", stdout);
        else if (ch == '\r') fputs("\\r", stdout);
        else if (ch == '\\') fputs("\\\\", stdout);
        else if (ch < 0x20 || ch == 0x7f) printf("\\x%02x", ch);
        else fputc(ch, stdout);
    }
}

int cli_cmd_tokenize(int argc, char **argv) {
    cli_opts o;
    int rc = parse_or_exit(CLI_TOKENIZE, "tokenize", k_tokenize_help, argc, argv, &o);
    if (rc >= 0) return rc;
    size_t len = 0;
    char *text = cli_input_text(&o, &len, false, NULL);
    if (!text) return CLI_EXIT_USAGE;
    rc = CLI_EXIT_FAIL;
    lethe_model *m = cli_load_model(&o, false);
    lethe_token *toks = NULL;
    int32_t n = 0;
    if (!m) goto done;
    toks = cli_tokenize(m, text, len, !o.no_special, !o.no_special, &n);
    if (!toks) goto done;
    for (int32_t i = 0; i < n; i++) {
        if (o.pieces) {
            printf("%d\t", toks[i]);
            print_piece_escaped(m, toks[i]);
            fputc('\n', stdout);
        } else {
            printf(i ? " %d" : "%d", toks[i]);
        }
    }
    if (!o.pieces) fputc('\n', stdout);
    rc = 0;
done:
    free(toks);
    lethe_model_free(m);
    free(text);
    return rc;
}

/* ---- logits ------------------------------------------------------------- */

static const char k_logits_help[] =
    "Write the logits of EVERY position as float32 little-endian, shape\n"
    "[n_tokens, n_vocab], no header. Input: -p TEXT / -f FILE (tokenized with\n"
    "special tokens) or --tokens 1,2,3.";

int cli_cmd_logits(int argc, char **argv) {
    cli_opts o;
    int rc = parse_or_exit(CLI_LOGITS, "logits", k_logits_help, argc, argv, &o);
    if (rc >= 0) return rc;
    if (!o.output) return cli_error("'lethe logits' needs -o FILE"), CLI_EXIT_USAGE;
    if (o.tokens && (o.prompt || o.file))
        return cli_error("give either --tokens or -p/-f, not both"), CLI_EXIT_USAGE;

    char *text = NULL;
    size_t len = 0;
    lethe_token *toks = NULL;
    int32_t n_tok = 0;
    if (o.tokens) {
        int n = 0;
        if (!cli_parse_i32_list("--tokens", o.tokens, 0, INT32_MAX, &toks, &n)) return CLI_EXIT_USAGE;
        n_tok = n;
    } else {
        text = cli_input_text(&o, &len, false, NULL);
        if (!text) return CLI_EXIT_USAGE;
    }

    rc = CLI_EXIT_FAIL;
    lethe_context *ctx = NULL;
    FILE *f = NULL;
    bool wrote = false;
    lethe_model *m = cli_load_model(&o, false);
    if (!m) goto done;
    const int32_t n_vocab = lethe_n_vocab(m);
    if (text) {
        toks = cli_tokenize(m, text, len, true, true, &n_tok);
        if (!toks) goto done;
    }
    if (n_tok == 0) {
        cli_error("no tokens to evaluate");
        goto done;
    }
    for (int32_t i = 0; i < n_tok; i++) {
        if (toks[i] >= n_vocab) {
            cli_error("token id %d is out of range (the vocabulary has %d tokens)", toks[i], n_vocab);
            goto done;
        }
    }
    ctx = cli_new_context(m, &o, 0);
    if (!ctx) goto done;
    if (n_tok > lethe_n_ctx(ctx)) {
        cli_error("%d tokens do not fit in the context of %d (raise -c)", n_tok, lethe_n_ctx(ctx));
        goto done;
    }
    struct stat before;
    const bool was_link = lstat(o.output, &before) == 0 && S_ISLNK(before.st_mode);
    f = fopen(o.output, "wb");
    if (!f) {
        cli_error("cannot create '%s': %s", o.output, strerror(errno));
        goto done;
    }
    /* on failure, remove only a regular file written through its own name:
     * never a device (-o /dev/stdout) or a symlink (its target stays) */
    struct stat now;
    wrote = !was_link && fstat(fileno(f), &now) == 0 && S_ISREG(now.st_mode);
    /* Chunks of n_batch so each decode's logits are all read before the next one. */
    int8_t *want = malloc((size_t)o.n_batch);
    if (!want) {
        cli_error("out of memory");
        goto done;
    }
    memset(want, 1, (size_t)o.n_batch);
    for (int32_t start = 0; start < n_tok; start += o.n_batch) {
        int32_t nb = n_tok - start < o.n_batch ? n_tok - start : o.n_batch;
        lethe_batch b = lethe_batch_one(toks + start, nb);
        b.logits = want;
        lethe_status st = lethe_decode(ctx, b);
        if (st != LETHE_OK) {
            free(want);
            cli_error_status(st, "decode failed");
            goto done;
        }
        for (int32_t i = 0; i < nb; i++) {
            const float *row = lethe_get_logits(ctx, i);   /* [n_vocab] */
            if (!row) {
                free(want);
                cli_error_status(LETHE_ERR_INTERNAL, "no logits for a position");
                goto done;
            }
            /* float32 little-endian: the host order on every target lethe builds for */
            if (fwrite(row, sizeof(float), (size_t)n_vocab, f) != (size_t)n_vocab) {
                free(want);
                cli_error("cannot write '%s': %s", o.output, strerror(errno));
                goto done;
            }
        }
    }
    free(want);
    if (fclose(f) != 0) {
        f = NULL;
        cli_error("cannot write '%s': %s", o.output, strerror(errno));
        goto done;
    }
    f = NULL;
    if (o.verbose) fprintf(stderr, "lethe: wrote %d x %d logits to %s\n", n_tok, n_vocab, o.output);
    rc = 0;
done:
    if (f) fclose(f);
    if (rc != 0 && wrote) unlink(o.output);   /* no half-written file that looks valid */
    lethe_context_free(ctx);
    lethe_model_free(m);
    free(toks);
    free(text);
    return rc;
}

/* ---- info --------------------------------------------------------------- */

static const char k_info_help[] = "Print the model's architecture, sizes and a few metadata keys.";

int cli_cmd_info(int argc, char **argv) {
    cli_opts o;
    int rc = parse_or_exit(CLI_INFO, "info", k_info_help, argc, argv, &o);
    if (rc >= 0) return rc;
    lethe_model *m = cli_load_model(&o, false);
    if (!m) return CLI_EXIT_FAIL;
    lethe_model_info mi = lethe_model_get_info(m);
    printf("file         %s\n", o.model ? o.model : cli_default_model_path());
    printf("arch         %s\n", mi.arch);
    printf("name         %s\n", mi.name);
    printf("n_layer      %d\n", mi.n_layer);
    printf("n_embd       %d\n", mi.n_embd);
    printf("n_head       %d\n", mi.n_head);
    printf("n_head_kv    %d\n", mi.n_head_kv);
    printf("head_dim     %d\n", mi.head_dim);
    printf("n_ff         %d\n", mi.n_ff);
    printf("n_vocab      %d\n", mi.n_vocab);
    if (mi.dms_variant)
        printf("dms          %s variant, window %d\n", mi.dms_variant == 1 ? "neuron" : "adapter", mi.dms_window);
    else
        printf("dms          no (run with --kv-policy dms --dms-force-rate R --dms-window W to measure eviction)\n");
    printf("n_ctx_train  %d\n", mi.n_ctx_train);
    printf("n_params     %llu\n", (unsigned long long)mi.n_params);
    printf("weight_bytes %llu (%.2f MiB)\n", (unsigned long long)mi.weight_bytes, mi.weight_bytes / 1048576.0);
    printf("bos          %d\n", lethe_token_bos(m));
    printf("eos          %d\n", lethe_token_eos(m));
    static const char *const keys[] = {"general.architecture", "general.name", "general.file_type",
                                       "tokenizer.ggml.model", "tokenizer.ggml.pre"};
    char buf[512];
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (lethe_model_meta_str(m, keys[i], buf, sizeof buf) >= 0) printf("%-22s %s\n", keys[i], buf);
    lethe_model_free(m);
    return 0;
}
