/* cmd_bench.c — `lethe bench`: llama-bench-style speed tests.
 *
 * Tests (as llama-bench): ppN decodes N random tokens in n_batch pieces
 * (BOS first if the model adds one), tgN decodes N single random tokens one
 * after the other. Each test gets a fresh context sized n_prompt + n_gen +
 * depth, one untimed warm-up run, then -r timed repetitions; before every run
 * the sequence is cleared and, with -d N, refilled with N random tokens
 * (untimed). The result is t/s = tokens / seconds, mean +/- sample sd over
 * the repetitions. Random ids come from a fixed-seed generator so runs are
 * reproducible. Beyond llama-bench's columns we print the KV bytes resident
 * after the run and the KV reads per processed token (sum over layers and
 * heads of the live length read; see lethe_kv_stats). */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char k_bench_help[] =
    "Measure prompt processing (pp, -p sizes) and generation (tg, -n sizes)\n"
    "in tokens per second, llama-bench style: one warm-up, then -r timed runs.\n"
    "example: lethe bench -p 512 -n 128 -d 0,1024 -r 5 -o md";

typedef enum { FMT_MD, FMT_CSV, FMT_JSON } bench_fmt;

typedef struct bench_env {
    lethe_model *m;
    lethe_model_info mi;
    const cli_opts *o;
    int32_t n_vocab;
    bool add_bos;
    lethe_token bos;
    uint64_t rng;
    lethe_token *buf;   /* [n_batch] token ids of one decode call */
    char model_desc[160];
    const char *backend;
    int threads_shown;
    char kv_desc[64];   /* the KV policy in effect: "none", "dms w256 f0.90", "window 1024" */
} bench_env;

static lethe_token rand_token(bench_env *e) {
    e->rng ^= e->rng << 13;
    e->rng ^= e->rng >> 7;
    e->rng ^= e->rng << 17;
    return (lethe_token)(e->rng % (uint64_t)e->n_vocab);
}

/* n random tokens in n_batch pieces (BOS first when the sequence is empty). */
static lethe_status run_prompt(bench_env *e, lethe_context *ctx, int32_t n) {
    for (int32_t done = 0; done < n;) {
        int32_t nb = n - done < e->o->n_batch ? n - done : e->o->n_batch;
        for (int32_t i = 0; i < nb; i++) e->buf[i] = rand_token(e);
        if (done == 0 && e->add_bos && lethe_seq_len(ctx, 0) == 0) e->buf[0] = e->bos;
        lethe_status st = lethe_decode(ctx, lethe_batch_one(e->buf, nb));
        if (st != LETHE_OK) return st;
        done += nb;
    }
    return LETHE_OK;
}

/* n single-token steps. */
static lethe_status run_gen(bench_env *e, lethe_context *ctx, int32_t n) {
    lethe_token t = (e->add_bos && lethe_seq_len(ctx, 0) == 0) ? e->bos : rand_token(e);
    for (int32_t i = 0; i < n; i++) {
        lethe_status st = lethe_decode(ctx, lethe_batch_one(&t, 1));
        if (st != LETHE_OK) return st;
        t = rand_token(e);
    }
    return LETHE_OK;
}

static void human_bytes(char *out, size_t cap, double b) {
    if (b >= 1073741824.0) snprintf(out, cap, "%.2f GiB", b / 1073741824.0);
    else if (b >= 1048576.0) snprintf(out, cap, "%.2f MiB", b / 1048576.0);
    else if (b >= 1024.0) snprintf(out, cap, "%.2f KiB", b / 1024.0);
    else snprintf(out, cap, "%.0f B", b);
}

typedef struct bench_result {
    int32_t n_prompt, n_gen, depth;
    double avg_ts, sd_ts;
    double *samples;    /* [reps] t/s */
    int reps;
    size_t kv_bytes;
    double kv_reads_per_tok;
} bench_result;

static void print_header(bench_fmt fmt) {
    if (fmt == FMT_MD) {
        printf("| model | size | params | backend | threads | kv policy | test | t/s | KV bytes | KV reads/tok |\n");
        printf("| ----- | ---: | -----: | ------- | ------: | --------- | ---: | --: | -------: | -----------: |\n");
    } else if (fmt == FMT_CSV) {
        printf("model,size_bytes,n_params,backend,n_threads,kv_policy,n_batch,n_prompt,n_gen,n_depth,test,avg_ts,"
               "stddev_ts,kv_bytes,kv_reads_per_token\n");
    } else {
        printf("[\n");
    }
    fflush(stdout);
}

static void print_row(const bench_env *e, const bench_result *r, bench_fmt fmt, bool first) {
    char test[64];
    if (r->n_prompt > 0) snprintf(test, sizeof test, "pp%d", r->n_prompt);
    else snprintf(test, sizeof test, "tg%d", r->n_gen);
    if (r->depth > 0) {
        size_t l = strlen(test);
        snprintf(test + l, sizeof test - l, " @ d%d", r->depth);
    }
    if (fmt == FMT_MD) {
        char size[32], kv[32];
        human_bytes(size, sizeof size, (double)e->mi.weight_bytes);
        human_bytes(kv, sizeof kv, (double)r->kv_bytes);
        printf("| %s | %s | %.2f M | %s | %d | %s | %s | %.2f ± %.2f | %s | %.0f |\n", e->model_desc, size,
               e->mi.n_params / 1e6, e->backend, e->threads_shown, e->kv_desc, test, r->avg_ts, r->sd_ts, kv,
               r->kv_reads_per_tok);
    } else if (fmt == FMT_CSV) {
        printf("\"%s\",%llu,%llu,%s,%d,%s,%d,%d,%d,%d,%s,%.6f,%.6f,%zu,%.3f\n", e->model_desc,
               (unsigned long long)e->mi.weight_bytes, (unsigned long long)e->mi.n_params, e->backend,
               e->threads_shown, e->kv_desc, e->o->n_batch, r->n_prompt, r->n_gen, r->depth, test, r->avg_ts, r->sd_ts,
               r->kv_bytes, r->kv_reads_per_tok);
    } else {
        printf("%s  {\"model\": \"%s\", \"size_bytes\": %llu, \"n_params\": %llu, \"backend\": \"%s\", "
               "\"n_threads\": %d, \"kv_policy\": \"%s\", \"n_batch\": %d, \"n_prompt\": %d, \"n_gen\": %d, "
               "\"n_depth\": %d, \"test\": \"%s\", \"avg_ts\": %.6f, \"stddev_ts\": %.6f, \"samples_ts\": [",
               first ? "" : ",\n", e->model_desc, (unsigned long long)e->mi.weight_bytes,
               (unsigned long long)e->mi.n_params, e->backend, e->threads_shown, e->kv_desc, e->o->n_batch, r->n_prompt,
               r->n_gen, r->depth, test, r->avg_ts, r->sd_ts);
        for (int i = 0; i < r->reps; i++) printf("%s%.6f", i ? ", " : "", r->samples[i]);
        printf("], \"kv_bytes\": %zu, \"kv_reads_per_token\": %.3f}", r->kv_bytes, r->kv_reads_per_tok);
    }
    fflush(stdout);
}

/* One test: warm-up + reps. Returns false after an error line. */
static bool run_test(bench_env *e, bench_result *r) {
    const cli_opts *o = e->o;
    int32_t need = r->n_prompt + r->n_gen + r->depth;
    if (o->dms_window >= need) need = o->dms_window + 1;   /* a DMS window must fit in the context */
    lethe_context *ctx = cli_new_context(e->m, o, need > 16 ? need : 16);
    if (!ctx) return false;
    lethe_status st = LETHE_OK;
    const char *what = "warm-up";
    /* warm-up, as llama-bench: a short run of the same kind */
    lethe_seq_clear(ctx, 0);
    if (r->depth > 0) st = run_prompt(e, ctx, r->depth);
    if (st == LETHE_OK && r->n_prompt > 0)
        st = run_prompt(e, ctx, r->n_prompt < o->n_batch ? r->n_prompt : o->n_batch);
    if (st == LETHE_OK && r->n_gen > 0) st = run_gen(e, ctx, 1);

    double sum = 0.0;
    for (int i = 0; st == LETHE_OK && i < r->reps; i++) {
        what = "timed run";
        lethe_seq_clear(ctx, 0);
        if (r->depth > 0 && (st = run_prompt(e, ctx, r->depth)) != LETHE_OK) break;
        uint64_t reads0 = lethe_get_kv_stats(ctx).reads;
        double t0 = cli_now_s();
        st = r->n_prompt > 0 ? run_prompt(e, ctx, r->n_prompt) : run_gen(e, ctx, r->n_gen);
        double t1 = cli_now_s();
        if (st != LETHE_OK) break;
        int32_t n = r->n_prompt > 0 ? r->n_prompt : r->n_gen;
        r->samples[i] = n / (t1 - t0 > 0 ? t1 - t0 : 1e-9);
        sum += r->samples[i];
        lethe_kv_stats ks = lethe_get_kv_stats(ctx);
        r->kv_bytes = ks.bytes_resident;
        if (i == 0) {   /* what the context resolved the policy to (auto -> dms or none) */
            if (ks.policy == LETHE_KV_POLICY_DMS && o->dms_force_rate >= 0)
                snprintf(e->kv_desc, sizeof e->kv_desc, "dms w%d forced %.2f", ks.dms_window, (double)o->dms_force_rate);
            else if (ks.policy == LETHE_KV_POLICY_DMS)
                snprintf(e->kv_desc, sizeof e->kv_desc, "dms w%d", ks.dms_window);
            else if (ks.policy == LETHE_KV_POLICY_NONE)
                snprintf(e->kv_desc, sizeof e->kv_desc, "none");
            else
                snprintf(e->kv_desc, sizeof e->kv_desc, "%s %d", lethe_kv_policy_name(ks.policy), o->kv_budget);
        }
        r->kv_reads_per_tok = (double)(ks.reads - reads0) / n;
        if (o->verbose) fprintf(stderr, "lethe: rep %d: %.2f t/s\n", i + 1, r->samples[i]);
    }
    lethe_context_free(ctx);
    if (st != LETHE_OK) {
        char msg[96];
        snprintf(msg, sizeof msg, "bench %s failed", what);
        cli_error_status(st, msg);
        return false;
    }
    r->avg_ts = sum / r->reps;
    double ss = 0.0;
    for (int i = 0; i < r->reps; i++) ss += (r->samples[i] - r->avg_ts) * (r->samples[i] - r->avg_ts);
    r->sd_ts = r->reps > 1 ? sqrt(ss / (r->reps - 1)) : 0.0;
    return true;
}

int cli_cmd_bench(int argc, char **argv) {
    cli_opts o;
    int rc = cli_parse(CLI_BENCH, "bench", argc, argv, &o);
    if (rc) return rc;
    if (o.help) {
        cli_print_help(CLI_BENCH, "bench", k_bench_help);
        return 0;
    }
    bench_fmt fmt = FMT_MD;
    if (o.output) {
        if (!strcmp(o.output, "md")) fmt = FMT_MD;
        else if (!strcmp(o.output, "csv")) fmt = FMT_CSV;
        else if (!strcmp(o.output, "json")) fmt = FMT_JSON;
        else return cli_error("invalid value '%s' for -o: expected md, csv or json", o.output), CLI_EXIT_USAGE;
    }
    int32_t *pp = NULL, *tg = NULL, *dd = NULL;
    int n_pp = 0, n_tg = 0, n_dd = 0;
    rc = CLI_EXIT_USAGE;
    bench_env e = {0};
    double *samples = NULL;
    if (!cli_parse_i32_list("-p", o.prompt ? o.prompt : "512", 0, 1 << 24, &pp, &n_pp)) goto done;
    if (!cli_parse_i32_list("-n", o.n_str ? o.n_str : "128", 0, 1 << 24, &tg, &n_tg)) goto done;
    if (!cli_parse_i32_list("-d", o.depth ? o.depth : "0", 0, 1 << 24, &dd, &n_dd)) goto done;

    rc = CLI_EXIT_FAIL;
    e.o = &o;
    e.m = cli_load_model(&o, false);
    if (!e.m) goto done;
    e.mi = lethe_model_get_info(e.m);
    e.n_vocab = lethe_n_vocab(e.m);
    e.add_bos = cli_model_adds_bos(e.m);
    e.bos = lethe_token_bos(e.m);
    e.rng = 0x2545F4914F6CDD1Dull;
    e.backend = o.backend ? o.backend : "cpu";
    e.threads_shown = o.n_threads > 0 ? o.n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(e.model_desc, sizeof e.model_desc, "%s%s%s", e.mi.arch, e.mi.name[0] ? " " : "", e.mi.name);
    /* the name is printed inside md cells, CSV and JSON strings: keep it plain */
    for (char *ch = e.model_desc; *ch; ch++)
        if (*ch == '"' || *ch == '\\' || *ch == '|' || *ch == ',' || (unsigned char)*ch < 0x20) *ch = '_';
    e.buf = malloc((size_t)o.n_batch * sizeof *e.buf);
    samples = malloc((size_t)o.repetitions * sizeof *samples);
    if (!e.buf || !samples) {
        cli_error("out of memory");
        goto done;
    }

    print_header(fmt);
    bool first = true;
    for (int kind = 0; kind < 2; kind++) {
        const int32_t *sizes = kind == 0 ? pp : tg;
        int n_sizes = kind == 0 ? n_pp : n_tg;
        for (int si = 0; si < n_sizes; si++) {
            if (sizes[si] <= 0) continue;
            for (int di = 0; di < n_dd; di++) {
                bench_result r = {0};
                r.n_prompt = kind == 0 ? sizes[si] : 0;
                r.n_gen = kind == 1 ? sizes[si] : 0;
                r.depth = dd[di];
                r.reps = o.repetitions;
                r.samples = samples;
                if (!run_test(&e, &r)) {
                    if (fmt == FMT_JSON) printf("\n]\n");
                    goto done;
                }
                print_row(&e, &r, fmt, first);
                first = false;
            }
        }
    }
    if (fmt == FMT_JSON) printf("\n]\n");
    rc = 0;
done:
    free(samples);
    free(e.buf);
    lethe_model_free(e.m);
    free(pp);
    free(tg);
    free(dd);
    return rc;
}
