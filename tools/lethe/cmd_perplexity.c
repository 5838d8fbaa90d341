/* cmd_perplexity.c — `lethe perplexity -f FILE -c CTX`.
 *
 * How this matches llama.cpp's tools/perplexity (its default path, i.e.
 * without --ppl-stride), so numbers are comparable on the same model file:
 *  - the whole file is tokenized once with special tokens (BOS if the model
 *    adds one), and at least 2*CTX tokens are required;
 *  - the tokens are cut into n_chunk = n_tokens / CTX non-overlapping windows
 *    [i*CTX, (i+1)*CTX) (the tail is dropped); --chunks N caps n_chunk;
 *  - each window starts from an empty cache; if the model adds BOS, the first
 *    token of every window is replaced by BOS (only for the model input; the
 *    scored targets are the original tokens);
 *  - only the second half is scored, so every prediction has at least CTX/2
 *    tokens of context: positions j = CTX/2 .. CTX-2 predict token j+1, giving
 *    CTX - CTX/2 - 1 scored tokens per window;
 *  - nll = -log softmax(logits_j)[token_{j+1}] in double precision; the
 *    running perplexity exp(sum nll / count) is printed after each window as
 *    "[i]ppl," (on stderr here), and the final estimate is
 *    PPL = exp(mean nll) +/- PPL * sqrt(var(nll) / (count - 1)), with
 *    var = mean(nll^2) - mean(nll)^2, exactly llama.cpp's error estimate.
 * Differences: llama.cpp may pack several windows in one batch as separate
 * sequences (n_batch > CTX); we decode one window at a time in n_batch
 * pieces, which gives the same logits. */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char k_ppl_help[] =
    "Perplexity of a text file over non-overlapping windows of -c tokens\n"
    "(default 512), scoring the second half of each window as llama-perplexity\n"
    "does. Running values go to stderr, the final 'PPL = x +/- y' to stdout.";

/* -log softmax(logits)[target], in double. */
static double nll_of(const float *logits, int32_t n_vocab, lethe_token target) {
    float mx = logits[0];
    for (int32_t i = 1; i < n_vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; i++) sum += exp((double)logits[i] - mx);
    return -(((double)logits[target] - mx) - log(sum));
}

int cli_cmd_perplexity(int argc, char **argv) {
    cli_opts o;
    int rc = cli_parse(CLI_PERPLEXITY, "perplexity", argc, argv, &o);
    if (rc) return rc;
    if (o.help) {
        cli_print_help(CLI_PERPLEXITY, "perplexity", k_ppl_help);
        return 0;
    }
    if (!o.file) return cli_error("'lethe perplexity' needs -f FILE"), CLI_EXIT_USAGE;
    const int32_t n_ctx = o.n_ctx_set ? o.n_ctx : 512;
    if (n_ctx < 4) return cli_error("-c must be at least 4 for perplexity (got %d)", n_ctx), CLI_EXIT_USAGE;

    size_t len = 0;
    char *text = cli_read_file(o.file, &len);
    if (!text) return CLI_EXIT_FAIL;

    rc = CLI_EXIT_FAIL;
    lethe_context *ctx = NULL;
    lethe_token *toks = NULL, *win = NULL;
    int8_t *want = NULL;
    int32_t n_tok = 0;
    lethe_model *m = cli_load_model(&o, false);
    if (!m) goto done;
    toks = cli_tokenize(m, text, len, true, true, &n_tok);
    if (!toks) goto done;
    if (n_tok < 2 * n_ctx) {
        cli_error("perplexity with -c %d needs at least %d tokens; '%s' has %d", n_ctx, 2 * n_ctx, o.file, n_tok);
        goto done;
    }
    /* n_batch must not exceed the window: one window per decode sequence */
    o.n_batch = o.n_batch < n_ctx ? o.n_batch : n_ctx;
    ctx = cli_new_context(m, &o, n_ctx);
    if (!ctx) goto done;
    if (lethe_n_ctx(ctx) < n_ctx) {
        cli_error("the context holds only %d tokens, less than -c %d", lethe_n_ctx(ctx), n_ctx);
        goto done;
    }

    const int32_t n_vocab = lethe_n_vocab(m);
    const bool add_bos = cli_model_adds_bos(m);
    const lethe_token bos = lethe_token_bos(m);
    int32_t n_chunk = n_tok / n_ctx;
    if (o.n_chunks >= 0 && o.n_chunks < n_chunk) n_chunk = o.n_chunks;
    const int32_t first = n_ctx / 2;

    win = malloc((size_t)n_ctx * sizeof *win);       /* [n_ctx] model input of one window */
    want = malloc((size_t)o.n_batch);                  /* [n_batch] logits flags            */
    if (!win || !want) {
        cli_error("out of memory");
        goto done;
    }
    fprintf(stderr, "lethe: perplexity over %d chunks of %d tokens (batch %d)%s\n", n_chunk, n_ctx, o.n_batch,
            add_bos ? ", BOS first" : "");

    double nll = 0.0, nll2 = 0.0;
    int64_t count = 0;
    const double t_start = cli_now_s();
    for (int32_t ci = 0; ci < n_chunk; ci++) {
        const lethe_token *chunk = toks + (size_t)ci * n_ctx;   /* original tokens: targets */
        memcpy(win, chunk, (size_t)n_ctx * sizeof *win);
        if (add_bos) win[0] = bos;
        lethe_status st = lethe_seq_clear(ctx, 0);
        if (st != LETHE_OK) {
            cli_error_status(st, "cannot clear the cache");
            goto done;
        }
        for (int32_t b0 = 0; b0 < n_ctx; b0 += o.n_batch) {
            int32_t nb = n_ctx - b0 < o.n_batch ? n_ctx - b0 : o.n_batch;
            int n_out = 0;
            for (int32_t k = 0; k < nb; k++) {
                want[k] = (b0 + k >= first) ? 1 : 0;
                n_out += want[k];
            }
            lethe_batch batch = lethe_batch_one(win + b0, nb);
            batch.logits = want;
            /* the first half only fills the cache: an all-zero mask asks for no logits */
            st = lethe_decode(ctx, batch);
            if (st != LETHE_OK) {
                cli_error_status(st, "decode failed");
                goto done;
            }
            if (n_out == 0) continue;
            for (int32_t k = 0; k < nb; k++) {
                int32_t pos = b0 + k;
                if (pos < first || pos > n_ctx - 2) continue;   /* the last position has no target */
                const float *row = lethe_get_logits(ctx, k);   /* [n_vocab] */
                if (!row) {
                    cli_error_status(LETHE_ERR_INTERNAL, "no logits for a scored position");
                    goto done;
                }
                double v = nll_of(row, n_vocab, chunk[pos + 1]);
                nll += v;
                nll2 += v * v;
                count++;
            }
        }
        if (ci == 0)
            fprintf(stderr, "lethe: %.2f seconds per window - ETA %.2f minutes\n", cli_now_s() - t_start,
                    (cli_now_s() - t_start) * n_chunk / 60.0);
        fprintf(stderr, "[%d]%.4f,", ci + 1, exp(nll / (double)count));
        fflush(stderr);
    }
    fputc('\n', stderr);

    const double mean = nll / (double)count;
    const double ppl = exp(mean);
    double var = nll2 / (double)count - mean * mean;
    double err = var > 0 && count > 1 ? sqrt(var / (double)(count - 1)) * ppl : 0.0;
    printf("PPL = %.4f +/- %.5f\n", ppl, err);
    rc = 0;
done:
    free(want);
    free(win);
    free(toks);
    lethe_context_free(ctx);
    lethe_model_free(m);
    free(text);
    return rc;
}
