/* cli_common.c — option table and parsing (getopt_long), one-line errors,
 * logging, model/context setup and text helpers shared by the subcommands. */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CLI_ALL (CLI_CHAT | CLI_GENERATE | CLI_TOKENIZE | CLI_LOGITS | CLI_PERPLEXITY | CLI_BENCH | CLI_INFO | CLI_EVAL)
#define CLI_RUN (CLI_CHAT | CLI_GENERATE | CLI_LOGITS | CLI_PERPLEXITY | CLI_BENCH | CLI_EVAL)
#define CLI_SAMPLE (CLI_CHAT | CLI_GENERATE | CLI_EVAL)   /* eval: --hyper samples */

/* Long-only options get codes above the char range. */
enum {
    OPT_TEMP = 256, OPT_TOP_K, OPT_TOP_P, OPT_MIN_P, OPT_REPEAT_PENALTY, OPT_REPEAT_LAST_N,
    OPT_SEED, OPT_BACKEND, OPT_DEVICE, OPT_SYSTEM, OPT_IGNORE_EOS, OPT_STATS, OPT_NO_SPECIAL,
    OPT_PIECES, OPT_TOKENS, OPT_CHUNKS, OPT_KV_POLICY, OPT_KV_BUDGET, OPT_DMS_WINDOW, OPT_DMS_FORCE,
    OPT_KV_MEM, OPT_KV_STATS, OPT_PARALLEL, OPT_DMS_ADAPTER, OPT_POLICIES, OPT_PASSKEY, OPT_SAVE, OPT_LOAD,
    OPT_PEER, OPT_JSONL, OPT_ROOFLINE, OPT_PROGRESS, OPT_NO_PROGRESS, OPT_KV_TYPE, OPT_PLOT, OPT_PLOT_NAME,
    OPT_VARTRACK, OPT_ARITH, OPT_HYPER, OPT_DEPTHS, OPT_TRIALS, OPT_HOST_SAMPLING,
};

typedef struct cli_optdef {
    const char *name;
    int has_arg;
    int code;        /* short letter or OPT_* */
    int cmds;        /* where it is valid     */
    const char *arg; /* metavar for help      */
    const char *help;
} cli_optdef;

/* One table drives getopt_long, validation per subcommand and the help text. */
static const cli_optdef k_opts[] = {
    {"model", required_argument, 'm', CLI_ALL, "FILE", "model file (GGUF); default: the SmolLM2-135M-Instruct download"},
    {"prompt", required_argument, 'p', CLI_CHAT | CLI_GENERATE | CLI_TOKENIZE | CLI_LOGITS, "TEXT", "prompt text (chat: answer once and exit)"},
    {"prompt", required_argument, 'p', CLI_BENCH, "N,..", "prompt sizes to test (pp), comma list (512; 0: none)"},
    {"file", required_argument, 'f', CLI_GENERATE | CLI_TOKENIZE | CLI_LOGITS | CLI_PERPLEXITY | CLI_EVAL, "FILE", "read the prompt/text from FILE"},
    {"n-predict", required_argument, 'n', CLI_GENERATE | CLI_CHAT, "N", "tokens to generate (-1: until end of generation)"},
    {"n-predict", required_argument, 'n', CLI_BENCH, "N,..", "generation lengths to test (tg), comma list (128; 0: none)"},
    {"ctx-size", required_argument, 'c', CLI_CHAT | CLI_GENERATE | CLI_LOGITS | CLI_PERPLEXITY | CLI_EVAL, "N", "context size in tokens (perplexity: window, 512; eval: text window, 1024)"},
    {"threads", required_argument, 't', CLI_RUN, "N", "CPU threads (0: all cores)"},
    {"batch-size", required_argument, 'b', CLI_RUN, "N", "tokens per decode call (512)"},
    {"temp", required_argument, OPT_TEMP, CLI_SAMPLE, "T", "temperature (0: greedy)"},
    {"top-k", required_argument, OPT_TOP_K, CLI_SAMPLE, "K", "keep the K most likely tokens (0: off)"},
    {"top-p", required_argument, OPT_TOP_P, CLI_SAMPLE, "P", "nucleus sampling mass (1: off)"},
    {"min-p", required_argument, OPT_MIN_P, CLI_SAMPLE, "P", "drop tokens below P x the best probability (0: off)"},
    {"repeat-penalty", required_argument, OPT_REPEAT_PENALTY, CLI_SAMPLE, "X", "penalty for recent tokens (1: off)"},
    {"repeat-last-n", required_argument, OPT_REPEAT_LAST_N, CLI_SAMPLE, "N", "how many recent tokens are penalised"},
    {"seed", required_argument, OPT_SEED, CLI_SAMPLE | CLI_EVAL, "N", "sampling seed (-1: random; eval: the problems and --hyper's samples)"},
    {"system", required_argument, OPT_SYSTEM, CLI_CHAT, "TEXT", "system message"},
    {"save", required_argument, OPT_SAVE, CLI_CHAT, "FILE", "save the conversation and its KV cache when the chat ends"},
    {"load", required_argument, OPT_LOAD, CLI_CHAT, "FILE", "resume a conversation saved with --save"},
    {"ignore-eos", no_argument, OPT_IGNORE_EOS, CLI_GENERATE, NULL, "keep generating past end-of-generation tokens"},
    {"host-sampling", no_argument, OPT_HOST_SAMPLING, CLI_CHAT | CLI_GENERATE | CLI_BENCH, NULL,
     "decodes return whole logits rows, sampled on the host (default: only the top-k candidates the chain needs, "
     "selected on the device, when the chain allows: greedy, or top-k <= 256 without a repetition penalty; the same "
     "tokens; bench on a GPU: what each tg step returns, default the 40 of generate's default chain; bench on the CPU always returns rows)"},
    {"stats", no_argument, OPT_STATS, CLI_GENERATE | CLI_CHAT, NULL, "print timings on stderr"},
    {"no-special", no_argument, OPT_NO_SPECIAL, CLI_TOKENIZE, NULL, "no BOS/EOS and no special-token parsing"},
    {"pieces", no_argument, OPT_PIECES, CLI_TOKENIZE, NULL, "print one 'id<TAB>piece' per line"},
    {"tokens", required_argument, OPT_TOKENS, CLI_LOGITS, "ID,..", "token ids instead of a prompt"},
    {"output", required_argument, 'o', CLI_LOGITS, "FILE", "output file: float32 [n_tokens, n_vocab]"},
    {"output", required_argument, 'o', CLI_BENCH, "FMT", "output format: md (default), csv, json, jsonl"},
    {"output", required_argument, 'o', CLI_EVAL, "FMT", "output format: md (default), json"},
    {"policies", required_argument, OPT_POLICIES, CLI_EVAL, "P,..", "policies to compare with none (dms,window,tova,h2o)"},
    {"passkey", required_argument, OPT_PASSKEY, CLI_EVAL, "L,..", "passkey retrieval at these prompt lengths (tokens)"},
    {"vartrack", required_argument, OPT_VARTRACK, CLI_EVAL, "L,..", "variable tracking (RULER-style, 4 hops) at these prompt lengths"},
    {"depths", required_argument, OPT_DEPTHS, CLI_EVAL, "P,..", "passkey depths in percent of the haystack (20,50,80)"},
    {"trials", required_argument, OPT_TRIALS, CLI_EVAL, "N", "problems per (length, depth) for --passkey and --vartrack (1)"},
    {"arith", required_argument, OPT_ARITH, CLI_EVAL, "N", "N arithmetic word problems, 8-shot, greedy"},
    {"hyper", required_argument, OPT_HYPER, CLI_EVAL, "N",
     "N arithmetic problems, --parallel sequences sampled each in a --kv-mem pool: majority vote and pass@N"},
    {"chunks", required_argument, OPT_CHUNKS, CLI_PERPLEXITY, "N", "score at most N windows (-1: all)"},
    {"depth", required_argument, 'd', CLI_BENCH, "N,..", "fill the cache with N tokens first, comma list (0)"},
    {"repetitions", required_argument, 'r', CLI_BENCH, "N", "timed runs per test after one warm-up (5)"},
    {"kv-policy", required_argument, OPT_KV_POLICY, CLI_RUN, "NAME",
     "KV eviction: dms (default for DMS models), none (default otherwise), window, tova, h2o, quest"},
    {"kv-budget", required_argument, OPT_KV_BUDGET, CLI_RUN, "N", "live tokens per head for window/tova/h2o/quest"},
    {"dms-window", required_argument, OPT_DMS_WINDOW, CLI_RUN, "W", "DMS: flagged tokens stay visible W more steps (model's)"},
    {"dms-force-rate", required_argument, OPT_DMS_FORCE, CLI_RUN, "R",
     "DMS on any model: flag a fraction R of tokens by a hash (speed/memory tests; not the model's answers)"},
    {"dms-adapter", required_argument, OPT_DMS_ADAPTER, CLI_RUN | CLI_INFO, "FILE",
     "apply a DMS adapter (safetensors) to a model that is not DMS"},
    {"kv-mem", required_argument, OPT_KV_MEM, CLI_RUN, "SIZE", "KV pool size, e.g. 512M, 1G (default: room for -c per sequence)"},
    {"kv-type", required_argument, OPT_KV_TYPE, CLI_RUN, "TYPE", "K/V storage type: f16 (default) or f32"},
    {"kv-stats", no_argument, OPT_KV_STATS, CLI_GENERATE | CLI_CHAT, NULL, "print KV cache statistics (live tokens per layer and head) on stderr"},
    {"parallel", required_argument, OPT_PARALLEL, CLI_GENERATE, "N", "N continuations of one prompt, decoded together"},
    {"parallel", required_argument, OPT_PARALLEL, CLI_EVAL, "N", "--hyper: sequences asked per problem (as many as --kv-mem admits)"},
    {"parallel", required_argument, OPT_PARALLEL, CLI_BENCH, "N,..", "sequences decoding together; t/s is their sum (1)"},
    {"peer", required_argument, OPT_PEER, CLI_BENCH, "NAME=PATH", "also run a peer on the same file and settings: llama.cpp=PATH to llama-bench (or its folder)"},
    {"jsonl", required_argument, OPT_JSONL, CLI_BENCH, "FILE", "also append every row to FILE as a JSON line"},
    {"plot", required_argument, OPT_PLOT, CLI_BENCH, "DIR", "also write the rows to DIR/NAME.jsonl and plot them there (SVG, PNG, NAME.md tables; needs python3 and gnuplot)"},
    {"plot-name", required_argument, OPT_PLOT_NAME, CLI_BENCH, "NAME", "file name prefix for --plot (bench)"},
    {"roofline", no_argument, OPT_ROOFLINE, CLI_BENCH, NULL, "measure and cache each device's memory bandwidth (--backend, --device, -t, -r)"},
    {"progress", no_argument, OPT_PROGRESS, CLI_BENCH, NULL, "progress line on stderr even when it is not a terminal"},
    {"no-progress", no_argument, OPT_NO_PROGRESS, CLI_BENCH, NULL, "no progress line"},
    {"backend", required_argument, OPT_BACKEND, CLI_ALL, "NAME", "cpu (default), vulkan, cuda, auto"},
    {"device", required_argument, OPT_DEVICE, CLI_ALL, "N", "device index within the backend (0)"},
    {"verbose", no_argument, 'v', CLI_ALL, NULL, "more log output (repeat for debug)"},
    {"help", no_argument, 'h', CLI_ALL, NULL, "show this help"},
};
#define N_OPTS (sizeof k_opts / sizeof k_opts[0])

/* ---- errors and logs ---------------------------------------------------- */

static void print_flat(FILE *f, const char *s) {
    for (; *s; s++) fputc(*s == '\n' || *s == '\r' ? ' ' : *s, f);
}

static void vline(const char *kind, const char *fmt, va_list ap) {
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    fprintf(stderr, "lethe: %s: ", kind);
    print_flat(stderr, msg);
    fputc('\n', stderr);
    fflush(stderr);
}

int cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vline("error", fmt, ap);
    va_end(ap);
    return CLI_EXIT_FAIL;
}

void cli_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vline("warning", fmt, ap);
    va_end(ap);
}

int cli_error_status(lethe_status s, const char *what) {
    const char *detail = lethe_last_error();
    if (detail && *detail) return cli_error("%s: %s (%s)", what, lethe_strerror(s), detail);
    return cli_error("%s: %s", what, lethe_strerror(s));
}

static void cli_log_sink(lethe_log_level level, const char *msg, void *user) {
    int verbose = (int)(intptr_t)user;
    if (level == LETHE_LOG_ERROR && verbose == 0) return;   /* reported via the status */
    const char *kind = level == LETHE_LOG_ERROR ? "log error" : level == LETHE_LOG_WARN ? "warning"
                       : level == LETHE_LOG_INFO ? "info" : "debug";
    fprintf(stderr, "lethe: %s: ", kind);
    print_flat(stderr, msg);
    fputc('\n', stderr);
}

void cli_setup_log(int verbose) {
    lethe_set_log(cli_log_sink, (void *)(intptr_t)verbose);
    lethe_set_log_level(verbose >= 2 ? LETHE_LOG_DEBUG : verbose == 1 ? LETHE_LOG_INFO : LETHE_LOG_WARN);
}

/* ---- numbers ------------------------------------------------------------ */

bool cli_parse_i32(const char *flag, const char *s, int32_t lo, int32_t hi, int32_t *out) {
    char *end = NULL;
    errno = 0;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || !*s || end == s || *end != '\0' || errno == ERANGE || v < lo || v > hi) {
        cli_error("invalid value '%s' for %s: expected an integer in [%d, %d]", s ? s : "", flag, lo, hi);
        return false;
    }
    *out = (int32_t)v;
    return true;
}

bool cli_parse_f32(const char *flag, const char *s, float lo, float hi, float *out) {
    char *end = NULL;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    if (!s || !*s || end == s || *end != '\0' || errno == ERANGE || !isfinite(v) || v < lo || v > hi) {
        cli_error("invalid value '%s' for %s: expected a number in [%g, %g]", s ? s : "", flag, (double)lo, (double)hi);
        return false;
    }
    *out = (float)v;
    return true;
}

bool cli_parse_size(const char *flag, const char *s, size_t *out) {
    char *end = NULL;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    double mul = 1;
    if (end && *end) {
        switch (*end) {
        case 'k': case 'K': mul = 1024.0; break;
        case 'm': case 'M': mul = 1048576.0; break;
        case 'g': case 'G': mul = 1073741824.0; break;
        default: mul = 0;
        }
        if (mul && end[1] && strcmp(end + 1, "iB") && strcmp(end + 1, "B")) mul = 0;
    }
    if (!s || !*s || end == s || errno == ERANGE || !isfinite(v) || v <= 0 || mul == 0 || v * mul > 1e15) {
        cli_error("invalid value '%s' for %s: expected a size such as 4096, 512M or 2G", s ? s : "", flag);
        return false;
    }
    *out = (size_t)(v * mul);
    return true;
}

bool cli_parse_i32_list(const char *flag, const char *s, int32_t lo, int32_t hi, int32_t **out, int *n_out) {
    size_t n = 1;
    for (const char *c = s; *c; c++) n += *c == ',';
    int32_t *v = malloc(n * sizeof *v);
    char *copy = strdup(s);
    if (!v || !copy) {
        free(v); free(copy);
        cli_error("out of memory");
        return false;
    }
    size_t k = 0;
    char *p = copy;
    /* strtok_r would skip empty items ("1,,2"); split by hand so they are errors */
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        if (!cli_parse_i32(flag, p, lo, hi, &v[k])) {
            free(v); free(copy);
            return false;
        }
        k++;
        if (!comma) break;
        p = comma + 1;
    }
    free(copy);
    *out = v;
    *n_out = (int)k;
    return true;
}

/* ---- options ------------------------------------------------------------ */

/* lethe bench: flags that take comma lists there are kept as given, for the
 * sweep to expand; the bench-only flags too. True when `c` was taken. */
static bool bench_opt(int c, const char *arg, cli_opts *o) {
    switch (c) {
    case 't': o->threads_list = arg; return true;
    case OPT_BACKEND: o->backend_list = arg; return true;
    case OPT_DEVICE: o->device_list = arg; return true;
    case OPT_KV_POLICY: o->kv_policy_list = arg; return true;
    case OPT_KV_BUDGET: o->kv_budget_list = arg; return true;
    case OPT_DMS_WINDOW: o->dms_window_list = arg; return true;
    case OPT_DMS_FORCE: o->dms_force_list = arg; return true;
    case OPT_PARALLEL: o->parallel_list = arg; return true;
    case OPT_PEER: o->peer = arg; return true;
    case OPT_JSONL: o->jsonl = arg; return true;
    case OPT_PLOT: o->plot_dir = arg; return true;
    case OPT_PLOT_NAME: o->plot_name = arg; return true;
    case OPT_ROOFLINE: o->roofline = true; return true;
    case OPT_PROGRESS: o->progress = 1; return true;
    case OPT_NO_PROGRESS: o->progress = 0; return true;
    default: return false;
    }
}

static const cli_optdef *find_def(int code, int cmd) {
    for (size_t i = 0; i < N_OPTS; i++)
        if (k_opts[i].code == code && (k_opts[i].cmds & cmd)) return &k_opts[i];
    return NULL;
}

static const char *flag_name(int code) {
    static char buf[64];
    for (size_t i = 0; i < N_OPTS; i++) {
        if (k_opts[i].code != code) continue;
        if (code < 256) snprintf(buf, sizeof buf, "-%c/--%s", code, k_opts[i].name);
        else snprintf(buf, sizeof buf, "--%s", k_opts[i].name);
        return buf;
    }
    return "?";
}

void cli_print_help(int cmd, const char *cmd_name, const char *summary) {
    printf("usage: lethe %s [options]\n\n%s\n\noptions:\n", cmd_name, summary);
    for (size_t i = 0; i < N_OPTS; i++) {
        const cli_optdef *d = &k_opts[i];
        if (!(d->cmds & cmd)) continue;
        char left[64];
        if (d->code < 256)
            snprintf(left, sizeof left, "-%c, --%s%s%s", d->code, d->name, d->arg ? " " : "", d->arg ? d->arg : "");
        else
            snprintf(left, sizeof left, "    --%s%s%s", d->name, d->arg ? " " : "", d->arg ? d->arg : "");
        printf("  %-28s %s\n", left, d->help);
    }
}

int cli_parse(int cmd, const char *cmd_name, int argc, char **argv, cli_opts *o) {
    memset(o, 0, sizeof *o);
    o->cmd = cmd;
    o->cmd_name = cmd_name;
    o->n_predict = -1;
    o->n_batch = 512;
    o->repetitions = 5;
    o->n_chunks = -1;
    o->sp = lethe_sampler_default_params();
    o->dms_window = -1;
    o->dms_force_rate = -1.0f;
    o->parallel = 1;
    o->progress = -1;
    o->trials = 1;

    /* getopt_long table from k_opts (duplicates by name are harmless: the first wins,
     * and the code is the same). */
    struct option lopts[N_OPTS + 1];
    char shorts[2 * N_OPTS + 2];
    size_t ns = 0, nl = 0;
    shorts[ns++] = ':';   /* report a missing argument as ':' rather than '?' */
    for (size_t i = 0; i < N_OPTS; i++) {
        bool dup = false;
        for (size_t j = 0; j < nl; j++) dup = dup || strcmp(lopts[j].name, k_opts[i].name) == 0;
        if (!dup) lopts[nl++] = (struct option){k_opts[i].name, k_opts[i].has_arg, NULL, k_opts[i].code};
        if (k_opts[i].code < 256 && !memchr(shorts, k_opts[i].code, ns)) {
            shorts[ns++] = (char)k_opts[i].code;
            if (k_opts[i].has_arg == required_argument) shorts[ns++] = ':';
        }
    }
    lopts[nl] = (struct option){0, 0, 0, 0};
    shorts[ns] = '\0';

    opterr = 0;   /* we print our own single error line */
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, shorts, lopts, NULL)) != -1) {
        if (c == '?') {
            if (optopt > 0 && optopt < 256)
                return cli_error("unknown option '-%c' for 'lethe %s' (see lethe %s --help)", optopt, cmd_name,
                                 cmd_name), CLI_EXIT_USAGE;
            if (optopt >= 256)   /* a long flag given a value it does not take: --stats=1 */
                return cli_error("option %s takes no value", flag_name(optopt)), CLI_EXIT_USAGE;
            const char *bad = argv[optind - 1];
            return cli_error("unknown option '%s' for 'lethe %s' (see lethe %s --help)", bad ? bad : "?", cmd_name,
                             cmd_name), CLI_EXIT_USAGE;
        }
        if (c == ':')
            return cli_error("option %s needs a value", optopt ? flag_name(optopt) : argv[optind - 1]), CLI_EXIT_USAGE;
        if (!find_def(c, cmd))
            return cli_error("option %s does not apply to 'lethe %s' (see lethe %s --help)", flag_name(c), cmd_name,
                             cmd_name), CLI_EXIT_USAGE;
        if (cmd == CLI_BENCH && bench_opt(c, optarg, o)) continue;
        bool ok = true;
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'p': o->prompt = optarg; break;
        case 'f': o->file = optarg; break;
        case 'n':
            o->n_str = optarg;
            if (cmd != CLI_BENCH) {
                ok = cli_parse_i32("-n", optarg, -1, INT32_MAX, &o->n_predict);
                o->n_predict_set = true;
            }
            break;
        case 'c': ok = cli_parse_i32("-c", optarg, 1, INT32_MAX, &o->n_ctx); o->n_ctx_set = true; break;
        case 't': ok = cli_parse_i32("-t", optarg, 0, 1024, &o->n_threads); break;   /* the library's limit */
        case 'b': ok = cli_parse_i32("-b", optarg, 1, INT32_MAX, &o->n_batch); break;
        case 'o': o->output = optarg; break;
        case 'd': o->depth = optarg; break;
        case 'r': ok = cli_parse_i32("-r", optarg, 1, 1000000, &o->repetitions); break;
        case 'v': o->verbose++; break;
        case 'h': o->help = true; break;
        case OPT_TEMP: ok = cli_parse_f32("--temp", optarg, -1e9f, 1e9f, &o->sp.temperature); break;
        case OPT_TOP_K: ok = cli_parse_i32("--top-k", optarg, 0, INT32_MAX, &o->sp.top_k); break;
        case OPT_TOP_P: ok = cli_parse_f32("--top-p", optarg, 1e-9f, 1.0f, &o->sp.top_p); break;
        case OPT_MIN_P: ok = cli_parse_f32("--min-p", optarg, 0.0f, 1.0f, &o->sp.min_p); break;
        case OPT_REPEAT_PENALTY:
            ok = cli_parse_f32("--repeat-penalty", optarg, 1e-6f, 1e6f, &o->sp.repeat_penalty);
            break;
        case OPT_REPEAT_LAST_N: ok = cli_parse_i32("--repeat-last-n", optarg, 0, 1 << 20, &o->sp.repeat_last_n); break;
        case OPT_SEED: {
            char *end = NULL;
            errno = 0;
            if (strcmp(optarg, "-1") == 0) { o->sp.seed = LETHE_SEED_RANDOM; break; }
            unsigned long long v = strtoull(optarg, &end, 10);
            if (!*optarg || *optarg == '-' || *end || errno == ERANGE) {
                cli_error("invalid value '%s' for --seed: expected a non-negative integer or -1", optarg);
                ok = false;
            } else {
                o->sp.seed = (uint64_t)v;
            }
            break;
        }
        case OPT_BACKEND:
            if (strcmp(optarg, "cpu") && strcmp(optarg, "vulkan") && strcmp(optarg, "cuda") && strcmp(optarg, "auto")) {
                cli_error("invalid value '%s' for --backend: expected cpu, vulkan, cuda or auto", optarg);
                ok = false;
            }
            o->backend = optarg;
            break;
        case OPT_DEVICE: ok = cli_parse_i32("--device", optarg, 0, 1024, &o->device); break;
        case OPT_SYSTEM: o->system = optarg; break;
        case OPT_IGNORE_EOS: o->ignore_eos = true; break;
        case OPT_HOST_SAMPLING: o->host_sampling = true; break;
        case OPT_STATS: o->stats = true; break;
        case OPT_NO_SPECIAL: o->no_special = true; break;
        case OPT_PIECES: o->pieces = true; break;
        case OPT_TOKENS: o->tokens = optarg; break;
        case OPT_CHUNKS:
            ok = cli_parse_i32("--chunks", optarg, -1, INT32_MAX, &o->n_chunks);
            if (ok && o->n_chunks == 0) {   /* nothing to score: not a perplexity */
                cli_error("invalid value '0' for --chunks: expected -1 (all) or at least 1");
                ok = false;
            }
            break;
        case OPT_KV_POLICY:
            if (lethe_kv_policy_parse(optarg, &o->kv_policy) != LETHE_OK) {
                cli_error("invalid value '%s' for --kv-policy: expected dms, none, window, tova, h2o, quest or auto",
                          optarg);
                ok = false;
            }
            break;
        case OPT_KV_BUDGET:
            if (cmd == CLI_EVAL && !strcmp(optarg, "match")) o->kv_budget_match = true;   /* per prompt, dms's live */
            else ok = cli_parse_i32("--kv-budget", optarg, 1, 1 << 24, &o->kv_budget);
            break;
        case OPT_DMS_WINDOW: ok = cli_parse_i32("--dms-window", optarg, 0, 1 << 24, &o->dms_window); break;
        case OPT_DMS_FORCE: ok = cli_parse_f32("--dms-force-rate", optarg, 0.0f, 1.0f, &o->dms_force_rate); break;
        case OPT_KV_MEM: ok = cli_parse_size("--kv-mem", optarg, &o->kv_mem); break;
        case OPT_KV_STATS: o->kv_stats = true; break;
        case OPT_DMS_ADAPTER: o->dms_adapter = optarg; break;
        case OPT_POLICIES: o->policies = optarg; break;
        case OPT_SAVE: o->save = optarg; break;
        case OPT_LOAD: o->load = optarg; break;
        case OPT_PASSKEY: o->passkey = optarg; break;
        case OPT_VARTRACK: o->vartrack = optarg; break;
        case OPT_DEPTHS: o->depths = optarg; break;
        case OPT_TRIALS: ok = cli_parse_i32("--trials", optarg, 1, 1000, &o->trials); break;
        case OPT_ARITH: ok = cli_parse_i32("--arith", optarg, 1, 100000, &o->arith); break;
        case OPT_HYPER: ok = cli_parse_i32("--hyper", optarg, 1, 100000, &o->hyper); break;
        case OPT_KV_TYPE:
            if (!strcmp(optarg, "f16")) o->kv_type = LETHE_KV_F16;
            else if (!strcmp(optarg, "f32")) o->kv_type = LETHE_KV_F32;
            else {
                cli_error("invalid value '%s' for --kv-type: expected f16 or f32", optarg);
                ok = false;
            }
            o->kv_type_set = ok;
            break;
        case OPT_PARALLEL: ok = cli_parse_i32("--parallel", optarg, 1, 4096, &o->parallel); break;
        default: return cli_error("internal: unhandled option %d", c), CLI_EXIT_USAGE;
        }
        if (!ok) return CLI_EXIT_USAGE;
    }
    if (o->help) return 0;
    if (optind < argc)
        return cli_error("unexpected argument '%s' for 'lethe %s' (options take flags; see lethe %s --help)",
                         argv[optind], cmd_name, cmd_name), CLI_EXIT_USAGE;
    cli_setup_log(o->verbose);
    return 0;
}

/* ---- model and context -------------------------------------------------- */

const char *cli_default_model_path(void) {
    static char path[4096];
    const char *cache = getenv("LETHE_CACHE");
    const char *home = getenv("HOME");
    if (cache && *cache)
        snprintf(path, sizeof path, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
    else
        snprintf(path, sizeof path, "%s/.cache/lethe/models/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : ".");
    return path;
}

static int g_progress_last = -1;

static bool progress_bar(float p, void *user) {
    (void)user;
    int pct = (int)(p * 100.0f + 0.5f);
    if (pct < 0) pct = 0;
    if (pct > 100) pct = 100;
    if (pct == g_progress_last) return true;
    g_progress_last = pct;
    char bar[31];
    int fill = pct * 30 / 100;
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    fprintf(stderr, "\rloading model [%s] %3d%%", bar, pct);
    fflush(stderr);
    return true;
}

lethe_model *cli_load_model(const cli_opts *o, bool progress) {
    const char *path = o->model ? o->model : cli_default_model_path();
    if (access(path, R_OK) != 0) {
        if (!o->model)
            cli_error("default model not found at %s: run tools/fetch-model.sh to download it (or pass -m FILE)", path);
        else
            cli_error("cannot open model '%s': %s", path, strerror(errno));
        return NULL;
    }
    lethe_model_params mp = lethe_model_default_params();
    if (o->backend) mp.backend = o->backend;
    mp.device = o->device;
    mp.dms_adapter = o->dms_adapter;
    bool bar = progress && isatty(STDERR_FILENO);
    if (bar) {
        g_progress_last = -1;
        mp.progress = progress_bar;
    }
    lethe_status st = LETHE_OK;
    lethe_model *m = lethe_model_load(path, mp, &st);
    if (bar && g_progress_last >= 0) fprintf(stderr, "\r%60s\r", "");
    if (!m) {
        char what[4200];
        snprintf(what, sizeof what, "cannot load model '%s'", path);
        cli_error_status(st != LETHE_OK ? st : LETHE_ERR_INTERNAL, what);
    }
    return m;
}

lethe_context *cli_new_context(lethe_model *m, const cli_opts *o, int32_t n_ctx_override) {
    lethe_context_params cp = lethe_context_default_params();
    if (n_ctx_override > 0) cp.n_ctx = n_ctx_override;
    else if (o->n_ctx_set) cp.n_ctx = o->n_ctx;
    cp.n_batch = o->n_batch;
    cp.n_threads = o->n_threads;
    cp.n_seq_max = o->parallel > 1 ? o->parallel : 1;
    cp.kv_policy = o->kv_policy;
    cp.kv_budget_tokens = o->kv_budget;
    cp.dms_window = o->dms_window;
    cp.dms_force_rate = o->dms_force_rate;
    cp.kv_budget_bytes = o->kv_mem;
    if (o->kv_type_set) cp.kv_type = o->kv_type;
    lethe_status st = LETHE_OK;
    lethe_context *ctx = lethe_context_new(m, cp, &st);
    if (!ctx) cli_error_status(st != LETHE_OK ? st : LETHE_ERR_INTERNAL, "cannot create a context");
    return ctx;
}

int32_t cli_device_sampling(lethe_context *ctx, const cli_opts *o, const lethe_sampler *smp) {
    const int32_t k = o->host_sampling ? 0 : lethe_sampler_top_k_needed(smp);
    if (k <= 0 || lethe_set_outputs(ctx, k, true) != LETHE_OK) {
        if (o->verbose) fprintf(stderr, "lethe: sampling from whole logits rows on the host\n");
        return 0;
    }
    if (o->verbose) fprintf(stderr, "lethe: sampling from the %d best candidates the decode selects\n", k);
    return k;
}

/* ---- text --------------------------------------------------------------- */

char *cli_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        cli_error("cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    bool err = ferror(f);
    fclose(f);
    if (!buf) {
        cli_error("out of memory reading '%s'", path);
        return NULL;
    }
    if (err) {
        free(buf);
        cli_error("cannot read '%s'", path);
        return NULL;
    }
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

char *cli_input_text(const cli_opts *o, size_t *len, bool optional, bool *missing) {
    if (missing) *missing = false;
    if (o->prompt && o->file) {
        cli_error("give either -p TEXT or -f FILE, not both");
        return NULL;
    }
    if (o->file) return cli_read_file(o->file, len);
    if (o->prompt) {
        char *s = strdup(o->prompt);
        if (!s) { cli_error("out of memory"); return NULL; }
        *len = strlen(s);
        return s;
    }
    if (missing) *missing = true;
    if (!optional) cli_error("'lethe %s' needs -p TEXT or -f FILE", o->cmd_name);
    return NULL;
}

lethe_token *cli_tokenize(const lethe_model *m, const char *text, size_t len, bool add_special,
                          bool parse_special, int32_t *n_out) {
    /* a byte-level BPE never makes more tokens than bytes (+ BOS/EOS) */
    size_t cap = len + 8;
    if (cap > INT32_MAX) {
        cli_error("text too long to tokenize (%zu bytes)", len);
        return NULL;
    }
    lethe_token *toks = malloc(cap * sizeof *toks);
    if (!toks) { cli_error("out of memory"); return NULL; }
    int32_t n = lethe_tokenize(m, text, len, toks, (int32_t)cap, add_special, parse_special);
    if (n > (int32_t)cap) {   /* some tokenizer did make more: retry with the exact size */
        lethe_token *nt = realloc(toks, (size_t)n * sizeof *toks);
        if (!nt) { free(toks); cli_error("out of memory"); return NULL; }
        toks = nt;
        n = lethe_tokenize(m, text, len, toks, n, add_special, parse_special);
    }
    if (n < 0) {
        free(toks);
        cli_error_status((lethe_status)-n, "cannot tokenize the text");
        return NULL;
    }
    *n_out = n;
    return toks;
}

bool cli_model_adds_bos(const lethe_model *m) {
    lethe_token bos = lethe_token_bos(m);
    if (bos < 0) return false;
    lethe_token t[8];
    int32_t n = lethe_tokenize(m, "a", 1, t, 8, true, false);
    return n >= 1 && n <= 8 && t[0] == bos;
}

bool cli_write_piece(const lethe_model *m, lethe_token t, FILE *f, bool render_special) {
    char small[256];
    int32_t n = lethe_token_to_piece(m, t, small, sizeof small, render_special);
    if (n < 0) return false;
    if (n <= (int32_t)sizeof small) return fwrite(small, 1, (size_t)n, f) == (size_t)n;
    char *big = malloc((size_t)n);
    if (!big) return false;
    int32_t n2 = lethe_token_to_piece(m, t, big, n, render_special);
    bool ok = n2 >= 0 && n2 <= n && fwrite(big, 1, (size_t)n2, f) == (size_t)n2;
    free(big);
    return ok;
}

bool cli_piece_append(const lethe_model *m, lethe_token t, char **buf, size_t *len, size_t *cap) {
    for (;;) {
        size_t room = *cap - *len;
        int32_t n = lethe_token_to_piece(m, t, *buf + *len, room > INT32_MAX ? INT32_MAX : (int32_t)room, false);
        if (n < 0) return false;
        if ((size_t)n < room) {   /* keep one byte for the NUL */
            *len += (size_t)n;
            (*buf)[*len] = '\0';
            return true;
        }
        size_t ncap = (*cap) * 2 + (size_t)n + 1;
        char *nb = realloc(*buf, ncap);
        if (!nb) return false;
        *buf = nb;
        *cap = ncap;
    }
}

double cli_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
