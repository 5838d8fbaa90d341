/* cli.h — shared pieces of the `lethe` command-line tool: option parsing,
 * one-line error reporting, model/context setup and small text helpers.
 * The CLI talks to the engine through include/lethe.h only. */
#ifndef LETHE_CLI_H
#define LETHE_CLI_H

#include "lethe.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Subcommands, as bits so an option can say where it is valid. */
enum {
    CLI_CHAT = 1 << 0,
    CLI_GENERATE = 1 << 1,
    CLI_TOKENIZE = 1 << 2,
    CLI_LOGITS = 1 << 3,
    CLI_PERPLEXITY = 1 << 4,
    CLI_BENCH = 1 << 5,
    CLI_INFO = 1 << 6,
    CLI_EVAL = 1 << 7,
};

/* Exit statuses: 0 ok, 1 a runtime failure, 2 a usage error. */
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

typedef struct cli_opts {
    int cmd;                      /* one CLI_* bit                              */
    const char *cmd_name;         /* "generate", ...                            */
    const char *model;            /* -m; NULL: the default model path           */
    const char *prompt;           /* -p (bench: comma list of prompt sizes)     */
    const char *file;             /* -f                                         */
    const char *system;           /* --system (chat)                            */
    const char *tokens;           /* --tokens 1,2,3 (logits)                    */
    const char *output;           /* -o (logits: file; bench: md|csv|json)      */
    const char *n_str;            /* -n as given (bench: comma list)            */
    const char *depth;            /* -d (bench: comma list)                     */
    int32_t n_predict;            /* -n parsed (generate/chat)                  */
    bool n_predict_set;
    int32_t n_ctx;                /* -c; 0: engine default                      */
    bool n_ctx_set;
    int32_t n_threads;            /* -t; 0: all cores                           */
    int32_t n_batch;              /* -b                                         */
    int32_t repetitions;          /* -r (bench)                                 */
    int32_t n_chunks;             /* --chunks (perplexity); -1: all             */
    lethe_sampler_params sp;      /* --temp --top-k --top-p --min-p --repeat-* --seed */
    lethe_kv_policy_kind kv_policy; /* --kv-policy                             */
    int32_t kv_budget;            /* --kv-budget tokens per head (0: unset)     */
    bool kv_budget_match;         /* eval: --kv-budget match (dms's live tokens) */
    int32_t dms_window;           /* --dms-window (-1: the model's)             */
    float dms_force_rate;         /* --dms-force-rate (-1: off)                 */
    size_t kv_mem;                /* --kv-mem bytes of KV pool (0: enough for -c) */
    bool kv_stats;                /* --kv-stats                                 */
    const char *dms_adapter;      /* --dms-adapter FILE                         */
    const char *policies;         /* --policies dms,window,... (eval)           */
    const char *save, *load;      /* --save FILE / --load FILE (chat)           */
    const char *passkey;          /* --passkey 1024,2048 (eval)                 */
    const char *vartrack;         /* --vartrack 1024,2048 (eval)                */
    const char *depths;           /* --depths 20,50,80 (eval, percent)          */
    int32_t trials;               /* --trials per (length, depth) (eval, 1)     */
    int32_t arith;                /* --arith N problems (eval, 0: none)         */
    int32_t hyper;                /* --hyper N problems (eval, 0: none)         */
    lethe_kv_type kv_type;        /* --kv-type (valid when kv_type_set)         */
    bool kv_type_set;
    int32_t parallel;             /* --parallel N (generate)                    */
    const char *backend;          /* --backend                                  */
    int32_t device;               /* --device                                   */
    int verbose;                  /* -v count                                   */
    bool stats;                   /* --stats                                    */
    bool ignore_eos;              /* --ignore-eos                               */
    bool host_sampling;           /* --host-sampling: whole logits rows to the host */
    bool no_special;              /* --no-special (tokenize)                    */
    bool pieces;                  /* --pieces (tokenize)                        */
    bool help;                    /* -h                                         */
    /* bench: these flags take comma lists there, kept as given (NULL: not
     * given) and expanded by the sweep (bench_sweep.c) */
    const char *threads_list, *backend_list, *device_list, *kv_policy_list;
    const char *kv_budget_list, *dms_window_list, *dms_force_list, *parallel_list;
    const char *peer;             /* --peer llama.cpp=PATH (bench)              */
    const char *jsonl;            /* --jsonl FILE: rows also appended there     */
    const char *plot_dir;         /* --plot DIR (bench)                         */
    const char *plot_name;        /* --plot-name NAME (NULL: "bench")           */
    bool roofline;                /* --roofline (bench)                         */
    int progress;                 /* --progress / --no-progress (-1: on a tty)  */
} cli_opts;

/* Parse argv (argv[0] is the subcommand name). Returns 0 on success, or an
 * exit status after printing one error line. Sets o->help for -h. */
int cli_parse(int cmd, const char *cmd_name, int argc, char **argv, cli_opts *o);
void cli_print_help(int cmd, const char *cmd_name, const char *summary);

/* One line on stderr: "lethe: error: <message>". Newlines in the message are
 * flattened so the error stays on one line. Always returns CLI_EXIT_FAIL. */
int cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "lethe: error: <what>: <strerror(s)> (<lethe_last_error()>)". */
int cli_error_status(lethe_status s, const char *what);
void cli_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Numbers from flags: the whole string must parse and be in range, else an
 * error line is printed and false returned. */
bool cli_parse_i32(const char *flag, const char *s, int32_t lo, int32_t hi, int32_t *out);
bool cli_parse_f32(const char *flag, const char *s, float lo, float hi, float *out);
/* "4096", "512M", "2G" (binary units) → bytes. */
bool cli_parse_size(const char *flag, const char *s, size_t *out);
/* "512,1024" → malloc'ed array; false (error printed) on a bad list. */
bool cli_parse_i32_list(const char *flag, const char *s, int32_t lo, int32_t hi,
                        int32_t **out, int *n_out);

/* Route library logs through the CLI: WARN and above as "lethe: warning: ...",
 * more with -v. ERROR-level library logs are shown only with -v because the
 * failing call's status is reported by the CLI itself (one line, not two). */
void cli_setup_log(int verbose);

/* The default model path: ${LETHE_CACHE:-$HOME/.cache/lethe}/models/<file>. */
const char *cli_default_model_path(void);
/* Load the model of -m (or the default) with the backend options. Prints the
 * error line and returns NULL on failure. `progress` draws a bar on a tty. */
lethe_model *cli_load_model(const cli_opts *o, bool progress);
/* A context with -c/-b/-t, --parallel and the KV policy options applied;
 * n_ctx_override > 0 replaces -c. */
lethe_context *cli_new_context(lethe_model *m, const cli_opts *o, int32_t n_ctx_override);
/* On-device sampling support: when the sampler's chain can be served by
 * candidates (lethe_sampler_top_k_needed > 0) and --host-sampling is not
 * given, the context's decodes return only each output token's top-k
 * candidates (lethe_set_outputs(ctx, k, true)); sample with lethe_sample.
 * Returns k, or 0 when the decodes keep returning logits rows. */
int32_t cli_device_sampling(lethe_context *ctx, const cli_opts *o, const lethe_sampler *smp);

/* Whole file into a NUL-terminated malloc'ed buffer (error line on failure). */
char *cli_read_file(const char *path, size_t *len);
/* The text of -p or -f (exactly one must be given, unless `optional`);
 * malloc'ed. NULL with *missing=true when neither was given and optional. */
char *cli_input_text(const cli_opts *o, size_t *len, bool optional, bool *missing);
/* Tokenize to a malloc'ed array; NULL after an error line. */
lethe_token *cli_tokenize(const lethe_model *m, const char *text, size_t len,
                          bool add_special, bool parse_special, int32_t *n_out);
/* Does the model prepend BOS when add_special is true? */
bool cli_model_adds_bos(const lethe_model *m);
/* Write the bytes of a token's piece to f (special tokens not rendered). */
bool cli_write_piece(const lethe_model *m, lethe_token t, FILE *f, bool render_special);
/* Append the piece to a growable buffer (chat keeps the reply text). */
bool cli_piece_append(const lethe_model *m, lethe_token t, char **buf, size_t *len, size_t *cap);

double cli_now_s(void);   /* CLOCK_MONOTONIC in seconds */
/* Feed a sequence's tokens in n_batch-sized decode calls: each call is a
 * transaction, and between calls an evicting cache frees what the next
 * tokens will not see, so a long prompt never needs its full size at once. */
lethe_status cli_decode_chunks(lethe_context *ctx, const lethe_token *toks, int32_t n, int32_t seq, int32_t n_batch);
/* KV statistics on stderr; per (layer, head) live tokens with `per_head`. */
void cli_print_kv_stats(lethe_context *ctx, const lethe_model *m, bool per_head);

/* Subcommands. */
int cli_cmd_chat(int argc, char **argv);
int cli_cmd_generate(int argc, char **argv);
int cli_cmd_tokenize(int argc, char **argv);
int cli_cmd_logits(int argc, char **argv);
int cli_cmd_perplexity(int argc, char **argv);
int cli_cmd_bench(int argc, char **argv);
int cli_cmd_info(int argc, char **argv);
int cli_cmd_eval(int argc, char **argv);
int cli_cmd_convert(int argc, char **argv);   /* cmd_convert.c */
int cli_cmd_synth(int argc, char **argv);     /* cmd_synth.c */

#endif
