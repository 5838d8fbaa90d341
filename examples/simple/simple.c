/* simple.c — stream a completion with lethe, the way an application does:
 * load a model, tokenize a prompt, prefill it, then sample one token at a
 * time and print each piece as soon as it exists.
 *
 *   cc simple.c $(pkg-config --cflags --libs lethe) -o simple   (or: make)
 *   ./simple MODEL.gguf "Once upon a time" 32
 *
 * Greedy by default (same output every run); set TEMP=0.8 for sampling. */
#include <lethe.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, lethe_status st) {
    fprintf(stderr, "simple: %s: %s (%s)\n", what, lethe_strerror(st), lethe_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [PROMPT] [N_TOKENS]\n", argv[0]);
        return 2;
    }
    const char *prompt = argc > 2 ? argv[2] : "Once upon a time";
    int n_predict = argc > 3 ? atoi(argv[3]) : 32;
    fprintf(stderr, "lethe %s\n", lethe_version());

    /* 1. the model: weights are mapped, read-only, shareable by contexts */
    lethe_status st;
    lethe_model *model = lethe_model_load(argv[1], lethe_model_default_params(), &st);
    if (!model) return fail("cannot load the model", st);

    /* 2. a context: the KV cache and the compute buffers of one conversation */
    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = 512;
    lethe_context *ctx = lethe_context_new(model, cp, &st);
    if (!ctx) {
        lethe_model_free(model);
        return fail("cannot create a context", st);
    }

    /* 3. tokenize: ask for the size first, then fill */
    int32_t n_prompt = lethe_tokenize(model, prompt, strlen(prompt), NULL, 0, true, true);
    lethe_token *tokens = n_prompt > 0 ? malloc((size_t)n_prompt * sizeof *tokens) : NULL;
    if (!tokens || lethe_tokenize(model, prompt, strlen(prompt), tokens, n_prompt, true, true) != n_prompt) {
        fprintf(stderr, "simple: cannot tokenize the prompt (%s)\n", lethe_last_error());
        return 1;
    }

    /* 4. a sampler: greedy unless TEMP is set */
    lethe_sampler_params sp = lethe_sampler_default_params();
    sp.temperature = getenv("TEMP") ? (float)atof(getenv("TEMP")) : 0.0f;
    sp.seed = 42;
    lethe_sampler *smp = lethe_sampler_new(sp, lethe_n_vocab(model));
    for (int32_t i = 0; i < n_prompt; i++) lethe_sampler_accept(smp, tokens[i]);

    /* 5. prefill the whole prompt in one call: logits of its last token */
    int rc = 0;
    st = lethe_decode(ctx, lethe_batch_one(tokens, n_prompt));
    if (st != LETHE_OK) rc = fail("prompt decode failed", st);

    /* 6. sample, print the piece, feed the token back: one token per step */
    printf("%s", prompt);
    for (int i = 0; rc == 0 && i < n_predict; i++) {
        lethe_token t = lethe_sampler_sample(smp, lethe_get_logits(ctx, -1));
        if (lethe_token_is_eog(model, t)) break;
        char piece[256];
        int32_t k = lethe_token_to_piece(model, t, piece, sizeof piece, false);
        if (k > 0 && k <= (int32_t)sizeof piece) fwrite(piece, 1, (size_t)k, stdout);
        fflush(stdout);   /* pieces may be partial UTF-8: the terminal joins them */
        lethe_sampler_accept(smp, t);
        if (i + 1 < n_predict && (st = lethe_decode(ctx, lethe_batch_one(&t, 1))) != LETHE_OK)
            rc = fail("decode failed", st);
    }
    printf("\n");

    lethe_kv_stats ks = lethe_get_kv_stats(ctx);
    fprintf(stderr, "%d tokens in the cache, %.1f KiB of KV\n", lethe_seq_len(ctx, 0),
            ks.bytes_resident / 1024.0);

    lethe_sampler_free(smp);
    free(tokens);
    lethe_context_free(ctx);
    lethe_model_free(model);
    return rc;
}
