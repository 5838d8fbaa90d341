// lethe-peer-dump: runs a model through llama.cpp (libllama) and writes what
// lethe's tests compare against: prompt token ids, the logits of every prompt
// position, and a greedy continuation.
//
// This is our own small program against llama.cpp's public C API (llama.h);
// it is built by tools/peer/build-llama-cpp.sh and driven by
// tools/peer/make-fixtures.sh. It is a test-data generator, not part of lethe.
//
// Usage:
//   lethe-peer-dump -m MODEL (--prompt-file F | -p TEXT) [options]
//     -t N                 threads (default 1: a single, reproducible order of sums)
//     -c N                 context size (default: prompt + greedy tokens + 16)
//     --tokenize           print the prompt's token ids on stdout (space separated)
//     --tokens OUT.txt     write the prompt's token ids, one per line
//     --logits OUT.bin     float32 little-endian logits, [n_tokens, n_vocab], no header
//     --logits-f16 OUT     the same as IEEE float16 (round to nearest even)
//     --greedy N           greedy (argmax) continuation of up to N tokens; stops after
//                          an end-of-generation token, which is included
//     --out-tokens OUT.txt where the continuation's ids go, one per line (default stdout)
//     --out-margins OUT    per generated token, the gap between the top two logits
//                          (one per line, %.6f): small gaps mark near-ties where
//                          another engine may rightly pick the other token
//     --kv-f16             keep the KV cache in f16 (default f32: a tighter reference)
//     --flash-attn         use llama.cpp's flash attention (default off)
//
// The prompt is tokenized with add_special as the model's metadata says
// (add_bos / add_eos) and parse_special = true, so ChatML markers such as
// <|im_start|> become their special tokens.

#define _POSIX_C_SOURCE 200809L  // strdup

#include "llama.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *fmt, const char *arg) {
    fprintf(stderr, "lethe-peer-dump: ");
    fprintf(stderr, fmt, arg ? arg : "");
    fprintf(stderr, "\n");
    exit(1);
}

// llama.cpp logs a lot at load time; keep warnings and errors only so the
// fixture script's output stays readable.
static void quiet_log(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open prompt file '%s'", path);
    if (fseek(f, 0, SEEK_END) != 0) die("cannot seek '%s'", path);
    long n = ftell(f);
    if (n < 0) die("cannot size '%s'", path);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    if (!buf) die("out of memory reading '%s'", path);
    if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) die("short read on '%s'", path);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

// IEEE 754 binary32 -> binary16, round to nearest even, with inf/NaN kept.
// Written out by hand so the fixture format does not depend on a compiler's
// _Float16 support.
static uint16_t f32_to_f16(float value) {
    uint32_t x;
    memcpy(&x, &value, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t man = x & 0x7fffffu;
    if (exp == 0xff) {  // inf or NaN (keep NaN quiet and non-zero)
        return (uint16_t)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0));
    }
    int32_t e = (int32_t)exp - 127 + 15;
    if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u);  // overflow -> inf
    if (e <= 0) {                                       // subnormal or zero
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000u;  // implicit leading one
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u);
        uint32_t mid = 1u << (shift - 1u);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fffu;
    // a carry out of the mantissa correctly bumps the exponent (up to inf)
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++;
    return (uint16_t)(sign | half);
}

static FILE *open_out(const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "lethe-peer-dump: cannot write '%s': %s\n", path, strerror(errno));
        exit(1);
    }
    return f;
}

static void close_out(FILE *f, const char *path) {
    if (ferror(f) || fclose(f) != 0) die("write error on '%s'", path);
}

static void write_ids(const char *path, const llama_token *ids, int n) {
    FILE *f = open_out(path);
    for (int i = 0; i < n; i++) fprintf(f, "%d\n", ids[i]);
    close_out(f, path);
}

// Index of the largest logit (first maximum wins on ties); *gap gets the
// distance to the runner-up.
static llama_token argmax(const float *row, int n_vocab, float *gap) {
    int best = 0;
    for (int i = 1; i < n_vocab; i++) {
        if (row[i] > row[best]) best = i;
    }
    float second = -INFINITY;
    for (int i = 0; i < n_vocab; i++) {
        if (i != best && row[i] > second) second = row[i];
    }
    *gap = row[best] - second;
    return (llama_token)best;
}

static void batch_set(struct llama_batch *b, int i, llama_token tok, llama_pos pos, bool want_logits) {
    b->token[i] = tok;
    b->pos[i] = pos;
    b->n_seq_id[i] = 1;
    b->seq_id[i][0] = 0;
    b->logits[i] = want_logits ? 1 : 0;
}

static void usage(void) {
    fputs("usage: lethe-peer-dump -m MODEL (--prompt-file F | -p TEXT) [-t N] [-c N]\n"
          "       [--tokenize] [--tokens OUT.txt] [--logits OUT.bin] [--logits-f16 OUT]\n"
          "       [--greedy N [--out-tokens OUT.txt] [--out-margins OUT.txt]]\n"
          "       [--kv-f16] [--flash-attn]\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt_file = NULL, *prompt_text = NULL;
    const char *logits_path = NULL, *logits16_path = NULL, *tokens_path = NULL, *greedy_path = NULL;
    const char *margins_path = NULL;
    int n_threads = 1, n_ctx = 0, n_greedy = 0;
    bool do_tokenize = false, kv_f16 = false, flash_attn = false;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_next = i + 1 < argc;
#define NEXT() (has_next ? argv[++i] : (usage(), (char *)NULL))
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = NEXT();
        else if (!strcmp(a, "--prompt-file") || !strcmp(a, "-f")) prompt_file = NEXT();
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt_text = NEXT();
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) n_threads = atoi(NEXT());
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) n_ctx = atoi(NEXT());
        else if (!strcmp(a, "--tokenize")) do_tokenize = true;
        else if (!strcmp(a, "--tokens")) tokens_path = NEXT();
        else if (!strcmp(a, "--logits")) logits_path = NEXT();
        else if (!strcmp(a, "--logits-f16")) logits16_path = NEXT();
        else if (!strcmp(a, "--greedy")) n_greedy = atoi(NEXT());
        else if (!strcmp(a, "--out-tokens")) greedy_path = NEXT();
        else if (!strcmp(a, "--out-margins")) margins_path = NEXT();
        else if (!strcmp(a, "--kv-f16")) kv_f16 = true;
        else if (!strcmp(a, "--flash-attn")) flash_attn = true;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage();
        else die("unknown argument '%s' (try --help)", a);
#undef NEXT
    }
    if (!model_path) die("-m MODEL is required%s", NULL);
    if (!prompt_file == !prompt_text) die("give exactly one of --prompt-file and -p%s", NULL);
    if (n_threads < 1) die("-t must be >= 1%s", NULL);
    if (n_greedy < 0) die("--greedy must be >= 0%s", NULL);

    size_t prompt_len = 0;
    char *prompt = prompt_file ? read_file(prompt_file, &prompt_len) : strdup(prompt_text);
    if (!prompt_file) prompt_len = strlen(prompt);

    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;  // CPU only: the reference must not depend on a GPU
    struct llama_model *model = llama_model_load_from_file(model_path, mp);
    if (!model) die("cannot load model '%s'", model_path);
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    // Tokenize: the first call with no room returns -(tokens needed).
    const bool add_special = llama_vocab_get_add_bos(vocab) || llama_vocab_get_add_eos(vocab);
    int n_prompt = -llama_tokenize(vocab, prompt, (int32_t)prompt_len, NULL, 0, add_special, true);
    if (n_prompt <= 0) die("the prompt tokenizes to no tokens%s", NULL);
    llama_token *ids = malloc((size_t)(n_prompt + n_greedy) * sizeof *ids);
    if (!ids) die("out of memory%s", NULL);
    if (llama_tokenize(vocab, prompt, (int32_t)prompt_len, ids, n_prompt, add_special, true) != n_prompt) {
        die("tokenization failed%s", NULL);
    }

    if (tokens_path) write_ids(tokens_path, ids, n_prompt);
    if (do_tokenize) {
        for (int i = 0; i < n_prompt; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    }
    const bool want_logits = logits_path || logits16_path;
    if (!want_logits && n_greedy == 0) goto done_model;  // tokenize only: no context needed

    {
        struct llama_context_params cp = llama_context_default_params();
        cp.n_ctx = (uint32_t)(n_ctx > 0 ? n_ctx : n_prompt + n_greedy + 16);
        cp.n_batch = (uint32_t)n_prompt;  // the whole prompt in one decode call
        cp.n_ubatch = (uint32_t)n_prompt;
        cp.n_seq_max = 1;
        cp.n_threads = n_threads;
        cp.n_threads_batch = n_threads;
        cp.flash_attn_type = flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
        cp.type_k = kv_f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
        cp.type_v = kv_f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
        cp.no_perf = true;
        if ((int)cp.n_ctx < n_prompt + n_greedy) die("-c is smaller than prompt + greedy tokens%s", NULL);
        struct llama_context *ctx = llama_init_from_model(model, cp);
        if (!ctx) die("cannot create a llama context%s", NULL);

        // Prompt: one batch, logits at every position (or only the last when
        // just continuing).
        struct llama_batch batch = llama_batch_init(n_prompt, 0, 1);
        for (int i = 0; i < n_prompt; i++) {
            batch_set(&batch, i, ids[i], i, want_logits || i == n_prompt - 1);
        }
        batch.n_tokens = n_prompt;
        if (llama_decode(ctx, batch) != 0) die("llama_decode failed on the prompt%s", NULL);

        if (want_logits) {
            FILE *f32 = logits_path ? open_out(logits_path) : NULL;
            FILE *f16 = logits16_path ? open_out(logits16_path) : NULL;
            uint16_t *row16 = malloc((size_t)n_vocab * sizeof *row16);
            if (!row16) die("out of memory%s", NULL);
            for (int i = 0; i < n_prompt; i++) {
                const float *row = llama_get_logits_ith(ctx, i);  // [n_vocab]
                if (!row) die("no logits for a prompt position%s", NULL);
                // Written as raw floats: this tool only runs on little-endian hosts.
                if (f32 && fwrite(row, sizeof(float), (size_t)n_vocab, f32) != (size_t)n_vocab) {
                    die("write error on '%s'", logits_path);
                }
                if (f16) {
                    for (int v = 0; v < n_vocab; v++) row16[v] = f32_to_f16(row[v]);
                    if (fwrite(row16, sizeof *row16, (size_t)n_vocab, f16) != (size_t)n_vocab) {
                        die("write error on '%s'", logits16_path);
                    }
                }
            }
            free(row16);
            if (f32) close_out(f32, logits_path);
            if (f16) close_out(f16, logits16_path);
        }

        if (n_greedy > 0) {
            llama_token *gen = ids + n_prompt;
            float *gaps = malloc((size_t)n_greedy * sizeof *gaps);
            if (!gaps) die("out of memory%s", NULL);
            int n_gen = 0;
            const float *last = llama_get_logits_ith(ctx, n_prompt - 1);
            struct llama_batch one = llama_batch_init(1, 0, 1);
            while (n_gen < n_greedy) {
                llama_token tok = argmax(last, n_vocab, &gaps[n_gen]);
                gen[n_gen++] = tok;
                if (llama_vocab_is_eog(vocab, tok) || n_gen == n_greedy) break;
                batch_set(&one, 0, tok, n_prompt + n_gen - 1, true);
                one.n_tokens = 1;
                if (llama_decode(ctx, one) != 0) die("llama_decode failed while generating%s", NULL);
                last = llama_get_logits_ith(ctx, 0);
                if (!last) die("no logits while generating%s", NULL);
            }
            llama_batch_free(one);
            if (greedy_path) {
                write_ids(greedy_path, gen, n_gen);
            } else {
                for (int i = 0; i < n_gen; i++) printf("%d\n", gen[i]);
            }
            if (margins_path) {
                FILE *f = open_out(margins_path);
                for (int i = 0; i < n_gen; i++) fprintf(f, "%.6f\n", gaps[i]);
                close_out(f, margins_path);
            }
            free(gaps);
        }

        llama_batch_free(batch);
        llama_free(ctx);
    }

done_model:
    llama_model_free(model);
    llama_backend_free();
    free(ids);
    free(prompt);
    return 0;
}
