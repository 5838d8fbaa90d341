/* cmd_bench.c — `lethe bench`: llama-bench-style speed tests, swept over
 * comma lists, with the memory-bandwidth roofline and a peer side by side.
 *
 * Tests (as llama-bench): ppN decodes N random tokens in n_batch pieces
 * (BOS first if the model adds one), tgN decodes N single random tokens one
 * after the other. Each row gets a fresh context sized n_prompt + n_gen +
 * depth, one untimed warm-up run, then -r timed repetitions; before every
 * run the sequences are cleared and, with -d N, refilled with N random
 * tokens (untimed). t/s = tokens / seconds, mean +/- sample sd over the
 * repetitions. Random ids come from a fixed-seed generator so runs are
 * reproducible.
 *
 * --parallel P: P sequences decode together. The depth is filled once in
 * sequence 0 and forked to the others; a tg step is one call with one token
 * of every sequence (logits for all of them, as a real parallel decode
 * needs); a pp test feeds each sequence its prompt in turn. t/s is the sum
 * over the sequences (aggregate throughput).
 *
 * Beyond llama-bench's columns, per row: KV bytes resident after the run and
 * the context's peak, KV slot reads per token (sum over layers and heads of
 * the live length read), the compression ratio, the achieved bandwidth and
 * its share of the device's roofline (bench_roofline.c). Achieved GB/s is
 * what decoding must stream divided by the time: every decode call reads
 * the weights once (model bytes) and every slot read is one K and one V row
 * of head_dim f16 values. On pp rows that is far below the roofline by
 * nature (prefill is compute-bound); on tg rows it says how close decoding
 * came to the physical limit. Where the GPU backend has a device clock
 * (Vulkan timestamps; lethe_get_device_ms), the rows also say how busy the
 * device was during the timed part and what the kernels achieved over the
 * device's own time (device_busy_pct, device_gbps in csv/json): t/s stays
 * wall-clock, what a user gets and what llama-bench reports.
 *
 * Output: rows go to stdout as they are measured (so an error later leaves
 * the rows already measured in place, and json still closes its array), a
 * progress line goes to stderr, errors are one line each; the exit status is
 * 1 if any row, the peer or the plots failed. --plot DIR also writes the rows
 * to DIR/NAME.jsonl and plots them with tools/bench_report.py (bench_plot.c
 * says why the script and not C). */
#include "bench.h"
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char k_bench_help[] =
    "Measure prompt processing (pp, -p sizes) and generation (tg, -n sizes)\n"
    "in tokens per second, llama-bench style: one warm-up, then -r timed runs.\n"
    "-m, --backend, --device, -t, -p, -n, -d, --parallel, --kv-policy,\n"
    "--kv-budget, --dms-window and --dms-force-rate take comma lists: every\n"
    "combination is a row (axes a policy ignores are not multiplied).\n"
    "-o md|csv|json|jsonl. Rows carry KV bytes, reads/token, compression,\n"
    "achieved GB/s and % of the roofline cached by `lethe bench --roofline`.\n"
    "examples:\n"
    "  lethe bench -p 512 -n 128 -d 0,1024 -r 5 -o md\n"
    "  lethe bench --roofline                      (measure and cache the CPU's bandwidth)\n"
    "  lethe bench -p 0 -n 64 -d 0,2048 --kv-policy none,dms --dms-force-rate 0.9 --jsonl out.jsonl\n"
    "  lethe bench -t 2 --peer llama.cpp=$HOME/.cache/lethe/llama.cpp-build/bin\n"
    "  lethe bench -p 0 -n 128 -d 0,1024,4096 --kv-policy none,dms --plot plots   (plots/bench-tg-depth.svg ...)";

typedef struct bench_env {
    const cli_opts *o;
    bench_fmt fmt;
    FILE *jsonl;            /* --jsonl FILE, or NULL */
    FILE *plot_rows;        /* --plot DIR: DIR/NAME.jsonl, or NULL */
    uint64_t rng;
    lethe_token *tok;       /* [cap] token ids of one decode call */
    int32_t *seq;           /* [cap] their sequences              */
    int8_t *logits;         /* [cap] all 1: every token's logits  */
    int32_t cap;
    /* the loaded model */
    lethe_model *m;
    lethe_model_info mi;
    int32_t n_vocab;
    bool add_bos;
    lethe_token bos;
    char model_desc[160];
    /* provenance, the same in every row */
    char date[32], commit[48], command[1024];
    /* progress */
    bool progress, tty;
    double t_start, units_done, units_total;
    bool any_rows;
} bench_env;

static lethe_token rand_token(bench_env *e) {
    e->rng ^= e->rng << 13;
    e->rng ^= e->rng >> 7;
    e->rng ^= e->rng << 17;
    return (lethe_token)(e->rng % (uint64_t)e->n_vocab);
}

/* n random tokens into sequence `s` in n_batch pieces (BOS first when the
 * sequence is empty); counts the decode calls. */
static lethe_status run_prompt(bench_env *e, lethe_context *ctx, int32_t s, int32_t n, int64_t *calls) {
    for (int32_t done = 0; done < n;) {
        int32_t nb = n - done < e->o->n_batch ? n - done : e->o->n_batch;
        for (int32_t i = 0; i < nb; i++) {
            e->tok[i] = rand_token(e);
            e->seq[i] = s;
        }
        if (done == 0 && e->add_bos && lethe_seq_len(ctx, s) == 0) e->tok[0] = e->bos;
        lethe_batch b = lethe_batch_one(e->tok, nb);
        b.seq_id = e->seq;
        lethe_status st = lethe_decode(ctx, b);
        if (st != LETHE_OK) return st;
        done += nb;
        if (calls) (*calls)++;
    }
    return LETHE_OK;
}

/* n steps, each one token of every sequence 0..P-1. */
static lethe_status run_gen(bench_env *e, lethe_context *ctx, int32_t P, int32_t n, int64_t *calls) {
    for (int32_t i = 0; i < n; i++) {
        for (int32_t s = 0; s < P; s++) {
            e->tok[s] = (e->add_bos && lethe_seq_len(ctx, s) == 0) ? e->bos : rand_token(e);
            e->seq[s] = s;
            e->logits[s] = 1;
        }
        lethe_batch b = lethe_batch_one(e->tok, P);
        b.seq_id = e->seq;
        b.logits = e->logits;
        lethe_status st = lethe_decode(ctx, b);
        if (st != LETHE_OK) return st;
        if (calls) (*calls)++;
    }
    return LETHE_OK;
}

/* Clear every sequence, then fill sequence 0 to `depth` and fork it. */
static lethe_status refill(bench_env *e, lethe_context *ctx, const bench_point *p) {
    lethe_status st = lethe_seq_clear(ctx, -1);
    if (st == LETHE_OK && p->depth > 0) st = run_prompt(e, ctx, 0, p->depth, NULL);
    for (int32_t s = 1; st == LETHE_OK && p->depth > 0 && s < p->parallel; s++) st = lethe_seq_fork(ctx, 0, s);
    return st;
}

static lethe_status timed_part(bench_env *e, lethe_context *ctx, const bench_point *p, int64_t *calls) {
    if (p->n_gen > 0) return run_gen(e, ctx, p->parallel, p->n_gen, calls);
    lethe_status st = LETHE_OK;
    for (int32_t s = 0; st == LETHE_OK && s < p->parallel; s++) st = run_prompt(e, ctx, s, p->n_prompt, calls);
    return st;
}

static void describe_policy(char *out, size_t cap, const lethe_kv_stats *ks, const bench_point *p) {
    if (ks->policy == LETHE_KV_POLICY_DMS && p->dms_force >= 0)
        snprintf(out, cap, "dms w%d forced %.2f", ks->dms_window, (double)p->dms_force);
    else if (ks->policy == LETHE_KV_POLICY_DMS)
        snprintf(out, cap, "dms w%d", ks->dms_window);
    else if (ks->policy == LETHE_KV_POLICY_NONE)
        snprintf(out, cap, "none");
    else
        snprintf(out, cap, "%s %d", lethe_kv_policy_name(ks->policy), p->kv_budget);
}

/* One row: warm-up + reps. False after an error line. */
static bool run_point(bench_env *e, const bench_point *p, bench_row *r) {
    const cli_opts o = *e->o;
    int32_t need = p->n_prompt + p->n_gen + p->depth + 1;   /* +1: a BOS the sizes do not count */
    int32_t w = p->dms_window >= 0 ? p->dms_window : e->mi.dms_window;
    if ((p->kv_policy == LETHE_KV_POLICY_DMS || p->kv_policy == LETHE_KV_POLICY_AUTO) && w >= need)
        need = w + 1;   /* a DMS window must fit in the context */
    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = need > 16 ? need : 16;
    cp.n_batch = o.n_batch;
    cp.n_threads = p->threads;
    cp.n_seq_max = p->parallel;
    cp.kv_policy = p->kv_policy;
    cp.kv_budget_tokens = p->kv_budget;
    cp.dms_window = p->dms_window;
    cp.dms_force_rate = p->dms_force;
    cp.kv_budget_bytes = o.kv_mem;
    lethe_status st = LETHE_OK;
    lethe_context *ctx = lethe_context_new(e->m, cp, &st);
    if (!ctx) {
        char msg[160];
        snprintf(msg, sizeof msg, "bench %s: cannot create a context", r->test);
        cli_error_status(st != LETHE_OK ? st : LETHE_ERR_INTERNAL, msg);
        return false;
    }

    /* tg (and pp's last token) on a GPU: the decode returns what `lethe
     * generate`'s default chain samples from, its top-k candidates selected
     * on the device, not the logits rows (--host-sampling: the rows). On a
     * CPU-only context there is no copy to save and the TOP_K pass is work
     * llama-bench does not do (measured 2026-12-04, SmolLM2 tg128 on 2
     * cores: 297-302 t/s with candidates, 318-323 with rows), so the CPU
     * rows keep returning logits rows, comparable with the peer. */
    if (lethe_get_memory_info(ctx).device_contexts > 0) {
        lethe_sampler *chain = lethe_sampler_new(lethe_sampler_default_params(), e->mi.n_vocab);
        if (chain) cli_device_sampling(ctx, &o, chain);
        lethe_sampler_free(chain);
    }

    const char *what = "warm-up";
    /* warm-up, as llama-bench: a short run of the same kind */
    st = refill(e, ctx, p);
    if (st == LETHE_OK && p->n_prompt > 0)
        st = run_prompt(e, ctx, 0, p->n_prompt < o.n_batch ? p->n_prompt : o.n_batch, NULL);
    if (st == LETHE_OK && p->n_gen > 0) st = run_gen(e, ctx, p->parallel, 1, NULL);

    const int32_t n_tok = (p->n_prompt > 0 ? p->n_prompt : p->n_gen) * p->parallel;
    /* one K and one V row of head_dim f16 values per slot read */
    const double slot_bytes = (double)e->mi.head_dim * 2.0 * 2.0;
    double gbps[BENCH_MAX_REPS], busy[BENCH_MAX_REPS], dgbps[BENCH_MAX_REPS];
    bool device_clock = true;   /* until a run is not timed by the device */
    for (int i = 0; st == LETHE_OK && i < r->reps; i++) {
        what = "timed run";
        if ((st = refill(e, ctx, p)) != LETHE_OK) break;
        uint64_t reads0 = lethe_get_kv_stats(ctx).reads;
        int64_t calls = 0;
        const double d0 = lethe_get_device_ms(ctx);
        double t0 = cli_now_s();
        st = timed_part(e, ctx, p, &calls);
        double dt = cli_now_s() - t0;
        const double dd = d0 >= 0 ? (lethe_get_device_ms(ctx) - d0) * 1e-3 : 0.0;   /* device seconds */
        if (dd <= 0) device_clock = false;
        if (st != LETHE_OK) break;
        if (dt <= 0) dt = 1e-9;
        lethe_kv_stats ks = lethe_get_kv_stats(ctx);
        r->samples[i] = n_tok / dt;
        const double reads = (double)(ks.reads - reads0);
        const double bytes = (double)calls * (double)e->mi.weight_bytes + reads * slot_bytes;
        gbps[i] = bytes / dt / 1e9;
        busy[i] = dd > 0 ? 100.0 * dd / dt : NAN;
        dgbps[i] = dd > 0 ? bytes / dd / 1e9 : NAN;
        r->kv_bytes = (double)ks.bytes_resident;
        r->kv_peak = (double)ks.bytes_peak;
        r->kv_reads_per_tok = reads / n_tok;
        r->compression = ks.compression_ratio;
        if (i == 0) describe_policy(r->kv_policy, sizeof r->kv_policy, &ks, p);
        if (o.verbose) fprintf(stderr, "lethe: rep %d: %.2f t/s\n", i + 1, r->samples[i]);
    }
    lethe_context_free(ctx);
    if (st != LETHE_OK) {
        char msg[160];
        snprintf(msg, sizeof msg, "bench %s: %s failed", r->test, what);
        cli_error_status(st, msg);
        return false;
    }
    bench_mean_sd(r->samples, r->reps, &r->avg_ts, &r->sd_ts);
    double sd_unused;
    bench_mean_sd(gbps, r->reps, &r->gbps, &sd_unused);
    r->roofline_pct = isfinite(r->roofline_gbps) ? 100.0 * r->gbps / r->roofline_gbps : NAN;
    r->device_busy_pct = r->device_gbps = NAN;
    if (device_clock) {
        bench_mean_sd(busy, r->reps, &r->device_busy_pct, &sd_unused);
        bench_mean_sd(dgbps, r->reps, &r->device_gbps, &sd_unused);
    }
    return true;
}

static void emit(bench_env *e, const bench_row *r) {
    bench_print_row(stdout, e->fmt, r, !e->any_rows);
    fflush(stdout);   /* a row is kept when a timeout kills the run later (tools/gpu-check.sh) */
    if (e->jsonl) {
        bench_print_json_row(e->jsonl, r);
        fputc('\n', e->jsonl);
        fflush(e->jsonl);
    }
    if (e->plot_rows) {
        bench_print_json_row(e->plot_rows, r);
        fputc('\n', e->plot_rows);
        fflush(e->plot_rows);
    }
    e->any_rows = true;
}

/* ---- progress ----------------------------------------------------------- */

/* Rough cost of a row for the time estimate: a prompt token costs ~1/10 of
 * a generated one on every backend we have; the estimate then scales by the
 * time the finished rows really took. */
static double point_units(const bench_point *p, int reps) {
    double per_run = 0.1 * p->depth + 0.1 * (double)p->n_prompt * p->parallel +
                     (double)p->n_gen * (1.0 + 0.25 * (p->parallel - 1));
    return (reps + 1) * (per_run + 1.0);
}

static void progress(bench_env *e, size_t i, size_t n, const char *what) {
    if (!e->progress) return;
    char eta[32] = "";
    double el = cli_now_s() - e->t_start;
    if (e->units_done > 0) {
        double left = el / e->units_done * (e->units_total - e->units_done);
        if (left >= 3600) snprintf(eta, sizeof eta, ", ~%dh%02dm left", (int)(left / 3600), (int)fmod(left / 60, 60));
        else if (left >= 60) snprintf(eta, sizeof eta, ", ~%dm%02ds left", (int)(left / 60), (int)fmod(left, 60));
        else snprintf(eta, sizeof eta, ", ~%.0fs left", left);
    }
    if (e->tty) fprintf(stderr, "\r\033[Klethe: bench [%zu/%zu] %s%s", i + 1, n, what, eta);
    else fprintf(stderr, "lethe: bench [%zu/%zu] %s%s\n", i + 1, n, what, eta);
    fflush(stderr);
}

static void progress_clear(bench_env *e) {
    if (e->progress && e->tty) fprintf(stderr, "\r\033[K");
}

/* ---- provenance --------------------------------------------------------- */

/* The commit of the source tree this binary was built from, asked of git at
 * run time ("+dirty" with local changes); $LETHE_COMMIT overrides it (a
 * binary run away from its tree). */
static void find_commit(char *out, size_t cap) {
    const char *env = getenv("LETHE_COMMIT");
    snprintf(out, cap, "%s", env && *env ? env : "unknown");
    if (env && *env) return;
#ifdef LETHE_SOURCE_DIR
    if (strchr(LETHE_SOURCE_DIR, '\'')) return;
    FILE *f = popen("git -C '" LETHE_SOURCE_DIR "' describe --always --dirty=+dirty --abbrev=7 2>/dev/null", "r");
    if (!f) return;
    char line[64];
    if (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0]) snprintf(out, cap, "%.*s", (int)(cap - 1), line);
    }
    pclose(f);
#endif
}

static void build_command(char *out, size_t cap, int argc, char **argv) {
    size_t k = (size_t)snprintf(out, cap, "lethe");
    for (int i = 0; i < argc && k + 4 < cap; i++) {
        const char *a = argv[i];
        bool plain = *a != '\0';
        for (const char *c = a; *c; c++)
            if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=.,/:+@%", *c)) plain = false;
        if (plain) k += (size_t)snprintf(out + k, cap - k, " %s", a);
        else k += (size_t)snprintf(out + k, cap - k, " '%s'", a);   /* a quote inside stays as typed */
    }
}

/* ---- the sweep ---------------------------------------------------------- */

static void filter_nonzero(const int32_t *v, int n, int32_t *out, int *n_out) {
    *n_out = 0;
    for (int i = 0; i < n; i++)
        if (v[i] > 0) out[(*n_out)++] = v[i];
}

static int run_roofline(const cli_opts *o, bench_fmt fmt, const bench_sweep_args *a) {
    bench_sweep s;
    bench_sweep_args ra = *a;
    ra.prompts = "1";   /* the sweep needs a test; only backends/devices/threads are used */
    ra.gens = "0";
    if (!bench_sweep_build(&ra, &s)) return CLI_EXIT_USAGE;
    int32_t threads = 0;   /* the roofline is the chip's: all cores unless -t says */
    for (int i = 0; i < s.n_threads; i++) threads = s.threads[i] > threads ? s.threads[i] : threads;
    int rc = 0;
    bool first = true;
    for (int b = 0; b < s.n_backends; b++)
        for (int d = 0; d < s.n_devices; d++) {
            if (bench_roofline_measure(s.backends[b], s.devices[d], threads, o->repetitions, fmt, stdout, first))
                first = false;
            else
                rc = CLI_EXIT_FAIL;
        }
    bench_sweep_free(&s);
    return rc;
}

int cli_cmd_bench(int argc, char **argv) {
    cli_opts o;
    int rc = cli_parse(CLI_BENCH, "bench", argc, argv, &o);
    if (rc) return rc;
    if (o.help) {
        cli_print_help(CLI_BENCH, "bench", k_bench_help);
        return 0;
    }
    bench_env e = {0};
    e.o = &o;
    e.fmt = BENCH_MD;
    if (o.output && !bench_fmt_parse(o.output, &e.fmt))
        return cli_error("invalid value '%s' for -o: expected md, csv, json or jsonl", o.output), CLI_EXIT_USAGE;
    if (o.repetitions > BENCH_MAX_REPS)
        return cli_error("invalid value '%d' for -r: at most %d repetitions", o.repetitions, BENCH_MAX_REPS),
               CLI_EXIT_USAGE;
    bench_sweep_args a = {
        .models = o.model, .default_model = cli_default_model_path(), .backends = o.backend_list,
        .devices = o.device_list, .threads = o.threads_list, .prompts = o.prompt, .gens = o.n_str,
        .depths = o.depth, .parallel = o.parallel_list, .kv_policies = o.kv_policy_list,
        .kv_budgets = o.kv_budget_list, .dms_windows = o.dms_window_list, .dms_force = o.dms_force_list,
    };
    const char *plot_name = o.plot_name ? o.plot_name : "bench";
    if (o.plot_dir && o.roofline)
        return cli_error("--plot applies to bench rows, not to --roofline"), CLI_EXIT_USAGE;
    if (o.plot_name && !o.plot_dir) return cli_error("--plot-name needs --plot DIR"), CLI_EXIT_USAGE;
    if (o.plot_dir && !*o.plot_dir) return cli_error("invalid value '' for --plot: expected a folder"), CLI_EXIT_USAGE;
    if (!*plot_name || strchr(plot_name, '/') || plot_name[0] == '.')
        return cli_error("invalid value '%s' for --plot-name: expected a file name prefix (no '/', not starting with '.')",
                         plot_name), CLI_EXIT_USAGE;
    if (o.roofline) return run_roofline(&o, e.fmt, &a);

    char peer_name[32] = "", peer_path[4096] = "";
    if (o.peer && !bench_peer_parse(o.peer, peer_name, sizeof peer_name, peer_path, sizeof peer_path))
        return CLI_EXIT_USAGE;
    bench_sweep s;
    if (!bench_sweep_build(&a, &s)) return CLI_EXIT_USAGE;

    rc = 0;
    bench_row *r = calloc(1, sizeof *r);
    int32_t *pp = malloc((size_t)s.n_prompts * sizeof *pp), *tg = malloc((size_t)s.n_gens * sizeof *tg);
    int n_pp = 0, n_tg = 0;
    e.cap = o.n_batch;
    for (int i = 0; i < s.n_parallel; i++) e.cap = s.parallel[i] > e.cap ? s.parallel[i] : e.cap;
    e.tok = malloc((size_t)e.cap * sizeof *e.tok);
    e.seq = malloc((size_t)e.cap * sizeof *e.seq);
    e.logits = malloc((size_t)e.cap);
    if (!r || !pp || !tg || !e.tok || !e.seq || !e.logits) {
        cli_error("out of memory");
        rc = CLI_EXIT_FAIL;
        goto done;
    }
    filter_nonzero(s.prompts, s.n_prompts, pp, &n_pp);
    filter_nonzero(s.gens, s.n_gens, tg, &n_tg);
    if (o.jsonl && !(e.jsonl = fopen(o.jsonl, "a"))) {
        cli_error("cannot open '%s' for --jsonl: %s", o.jsonl, strerror(errno));
        rc = CLI_EXIT_FAIL;
        goto done;
    }
    char plot_rows_path[4200] = "", plot_script[4096] = "";
    bool plot_ok = false;
    if (o.plot_dir) {
        snprintf(plot_rows_path, sizeof plot_rows_path, "%s/%s.jsonl", o.plot_dir, plot_name);
        if (!bench_mkdir_p(o.plot_dir) || !(e.plot_rows = fopen(plot_rows_path, "w"))) {
            cli_error("cannot write '%s' for --plot: %s", plot_rows_path, strerror(errno));
            rc = CLI_EXIT_FAIL;
            goto done;
        }
        /* before the sweep: a long run should not end in "no gnuplot" */
        char why[600];
        bool found = bench_plot_script(plot_script, sizeof plot_script);
        plot_ok = bench_plot_check(plot_script, found, why, sizeof why);
        if (!plot_ok) {
            cli_error("--plot %s: no plots will be made: %s; the rows are still measured and written to %s",
                      o.plot_dir, why, plot_rows_path);
            rc = CLI_EXIT_FAIL;
        }
    }
    e.rng = 0x2545F4914F6CDD1Dull;
    time_t now = time(NULL);
    strftime(e.date, sizeof e.date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    find_commit(e.commit, sizeof e.commit);
    build_command(e.command, sizeof e.command, argc, argv);
    e.tty = isatty(STDERR_FILENO);
    e.progress = o.progress < 0 ? e.tty : o.progress == 1;
    e.t_start = cli_now_s();
    for (size_t i = 0; i < s.n_points; i++) e.units_total += point_units(&s.points[i], o.repetitions);

    bench_print_header(stdout, e.fmt);
    const bench_point *loaded = NULL;    /* the point whose model/backend/device is loaded */
    const bench_point *grouped = NULL;   /* the point whose peer group ran */
    bool load_failed = false, peer_ok = false, peer_disabled = !o.peer;
    bench_peer_result peer = {0};
    char device_name[128] = "";
    double roofline = NAN;
    for (size_t i = 0; i < s.n_points; i++) {
        const bench_point *p = &s.points[i];
        /* a new model, backend or device: (re)load */
        if (!loaded || strcmp(p->model, loaded->model) || strcmp(p->backend, loaded->backend) ||
            p->device != loaded->device) {
            lethe_model_free(e.m);
            e.m = NULL;
            loaded = p;
            load_failed = true;
            progress_clear(&e);
            /* a GPU that does not start would make the engine run on the CPU
             * under the GPU's name: refuse the rows instead */
            device_name[0] = '\0';
            if (strcmp(p->backend, "auto") == 0) {
                snprintf(device_name, sizeof device_name, "auto");
            } else if (lethe_device_name(p->backend, p->device, device_name, sizeof device_name) != LETHE_OK) {
                cli_error("backend %s device %d is not available: %s", p->backend, p->device, lethe_last_error());
                device_name[0] = '\0';
                rc = CLI_EXIT_FAIL;
            }
            cli_opts lo = o;
            lo.model = p->model;
            lo.backend = p->backend;
            lo.device = p->device;
            if (device_name[0] && (e.m = cli_load_model(&lo, false)) != NULL) {
                load_failed = false;
                e.mi = lethe_model_get_info(e.m);
                e.n_vocab = lethe_n_vocab(e.m);
                e.add_bos = cli_model_adds_bos(e.m);
                e.bos = lethe_token_bos(e.m);
                snprintf(e.model_desc, sizeof e.model_desc, "%s%s%s", e.mi.arch, e.mi.name[0] ? " " : "",
                         e.mi.name);
                roofline = bench_roofline_cached(p->backend, p->device, device_name);
                if (!isfinite(roofline) && strcmp(p->backend, "auto") != 0)
                    cli_warn("no roofline cached for %s device %d (%s): run 'lethe bench --roofline --backend %s "
                             "--device %d' for the %% roofline column", p->backend, p->device, device_name,
                             p->backend, p->device);
            } else if (device_name[0]) {
                rc = CLI_EXIT_FAIL;   /* cli_load_model said why */
            }
        }
        if (load_failed) {
            e.units_done += point_units(p, o.repetitions);
            continue;
        }
        /* a new (model, backend, device, threads) group: the peer runs its tests first */
        if (!peer_disabled && (!grouped || strcmp(p->model, grouped->model) || strcmp(p->backend, grouped->backend) ||
                               p->device != grouped->device || p->threads != grouped->threads)) {
            grouped = p;
            bench_peer_free(&peer);
            progress(&e, i, s.n_points, "peer llama-bench");
            double t_peer = cli_now_s();
            peer_ok = bench_peer_run(peer_name, peer_path, p->model, p->backend, p->threads, o.n_batch, pp, n_pp, tg,
                                     n_tg, s.depths, s.n_depths, o.repetitions, &peer);
            e.t_start += cli_now_s() - t_peer;   /* the estimate counts our rows only */
            progress_clear(&e);
            if (!peer_ok) {   /* one line said why; our rows go on */
                rc = CLI_EXIT_FAIL;
                peer_disabled = true;
            }
            for (int k = 0; peer_ok && k < peer.n_rows; k++) {
                bench_row *pr = &peer.rows[k];
                snprintf(pr->model_file, sizeof pr->model_file, "%s", p->model);
                pr->device = p->device;
                snprintf(pr->command, sizeof pr->command, "%s", e.command);
                emit(&e, pr);
            }
        }

        memset(r, 0, sizeof *r);
        snprintf(r->engine, sizeof r->engine, "lethe");
        snprintf(r->model, sizeof r->model, "%s", e.model_desc);
        snprintf(r->model_file, sizeof r->model_file, "%s", p->model);
        r->model_bytes = e.mi.weight_bytes;
        r->n_params = e.mi.n_params;
        snprintf(r->backend, sizeof r->backend, "%s", p->backend);
        r->device = p->device;
        snprintf(r->device_name, sizeof r->device_name, "%s", device_name);
        r->threads = p->threads > 0 ? p->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
        r->n_batch = o.n_batch;
        r->parallel = p->parallel;
        r->n_prompt = p->n_prompt;
        r->n_gen = p->n_gen;
        r->depth = p->depth;
        bench_test_name(r->test, sizeof r->test, p->n_prompt, p->n_gen, p->depth, p->parallel);
        r->reps = o.repetitions;
        r->roofline_gbps = roofline;
        r->peer_ts = r->ratio = NAN;
        r->device_busy_pct = r->device_gbps = NAN;
        snprintf(r->date, sizeof r->date, "%s", e.date);
        snprintf(r->commit, sizeof r->commit, "%s", e.commit);
        snprintf(r->command, sizeof r->command, "%s", e.command);
        char what[160];
        snprintf(what, sizeof what, "%s %s", r->test, p->kv_policy == LETHE_KV_POLICY_AUTO ? "" : lethe_kv_policy_name(p->kv_policy));
        progress(&e, i, s.n_points, what);
        bool ok = run_point(&e, p, r);
        e.units_done += point_units(p, o.repetitions);
        progress_clear(&e);
        if (!ok) {
            rc = CLI_EXIT_FAIL;
            continue;
        }
        for (int k = 0; peer_ok && p->parallel == 1 && k < peer.n_rows; k++) {
            const bench_row *pr = &peer.rows[k];
            if (pr->n_prompt == p->n_prompt && pr->n_gen == p->n_gen && pr->depth == p->depth && pr->avg_ts > 0) {
                r->peer_ts = pr->avg_ts;
                r->ratio = r->avg_ts / pr->avg_ts;
            }
        }
        emit(&e, r);
    }
    progress_clear(&e);
    bench_print_footer(stdout, e.fmt, e.any_rows);
    bench_peer_free(&peer);
    if (e.plot_rows) {
        fclose(e.plot_rows);
        e.plot_rows = NULL;
        char why[600];
        if (plot_ok && e.any_rows && !bench_plot_run(plot_script, plot_rows_path, o.plot_dir, plot_name, why, sizeof why)) {
            cli_error("--plot %s: plots not made: %s (the rows are in %s)", o.plot_dir, why, plot_rows_path);
            rc = CLI_EXIT_FAIL;
        }
    }
done:
    if (e.jsonl) fclose(e.jsonl);
    if (e.plot_rows) fclose(e.plot_rows);
    lethe_model_free(e.m);
    free(e.tok);
    free(e.seq);
    free(e.logits);
    free(pp);
    free(tg);
    free(r);
    bench_sweep_free(&s);
    return rc;
}
