/* bench.h — the pieces of `lethe bench` (cmd_bench.c drives them):
 *   bench_stats.c    mean and sample standard deviation
 *   bench_sweep.c    comma lists → the ordered list of configurations
 *   bench_format.c   rows as md / csv / json / jsonl
 *   bench_roofline.c measured device bandwidth, cached per device
 *   bench_peer.c     llama-bench on the same file and settings
 *   bench_plot.c     --plot DIR: runs tools/bench_report.py on the rows
 * Kept apart from the CLI's option parsing so tests link them directly. */
#ifndef LETHE_BENCH_H
#define LETHE_BENCH_H

#include "lethe.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- statistics --------------------------------------------------------- */

/* Mean and sample standard deviation (n - 1; 0 when n < 2) of x[0..n). */
void bench_mean_sd(const double *x, int n, double *mean, double *sd);

/* ---- sweep -------------------------------------------------------------- */

/* One measured configuration: a row of the output. */
typedef struct bench_point {
    const char *model;        /* file path                                   */
    const char *backend;      /* "cpu", "vulkan", "cuda", "auto"             */
    int32_t device;
    int32_t threads;          /* 0: all cores                                */
    lethe_kv_policy_kind kv_policy;
    int32_t kv_budget;        /* 0: unset                                    */
    int32_t dms_window;       /* -1: the model's                             */
    float dms_force;          /* -1: off                                     */
    int32_t parallel;         /* sequences decoding together                 */
    int32_t n_prompt, n_gen;  /* exactly one is > 0: a ppN or a tgN test     */
    int32_t depth;            /* tokens in the cache before the test         */
} bench_point;

/* The comma lists, as given on the command line (NULL: the default). */
typedef struct bench_sweep_args {
    const char *models;       /* default: `default_model`                    */
    const char *default_model;
    const char *backends, *devices, *threads, *prompts, *gens, *depths;
    const char *parallel, *kv_policies, *kv_budgets, *dms_windows, *dms_force;
} bench_sweep_args;

typedef struct bench_sweep {
    char **models; int n_models;
    char **backends; int n_backends;
    int32_t *devices; int n_devices;
    int32_t *threads; int n_threads;
    int32_t *prompts; int n_prompts;
    int32_t *gens; int n_gens;
    int32_t *depths; int n_depths;
    int32_t *parallel; int n_parallel;
    lethe_kv_policy_kind *policies; int n_policies;
    int32_t *budgets; int n_budgets;
    int32_t *windows; int n_windows;
    float *force; int n_force;
    bench_point *points; size_t n_points;   /* the expansion, in run order */
} bench_sweep;

/* Parse every list (one error line and false on a bad value) and expand the
 * sweep. Order, outermost first: model, backend, device, threads, policy,
 * budget, window, force rate, parallel, then the pp sizes and the tg sizes
 * (0 skipped, as llama-bench), innermost depth. Axes a policy ignores are
 * not multiplied: --kv-budget only for window/tova/h2o/quest, --dms-window
 * and --dms-force-rate only for dms and auto. */
bool bench_sweep_build(const bench_sweep_args *a, bench_sweep *s);
void bench_sweep_free(bench_sweep *s);

/* ---- rows and formats --------------------------------------------------- */

#define BENCH_MAX_REPS 1000

typedef struct bench_row {
    char engine[16];          /* "lethe" or the peer's name ("llama.cpp")    */
    char model[160];          /* "llama SmolLM2 135M Instruct"               */
    char model_file[512];
    uint64_t model_bytes, n_params;
    char backend[16];
    int32_t device;
    char device_name[128];
    int32_t threads, n_batch, parallel;
    char kv_policy[64];       /* "none", "dms w256", "window 1024", ...      */
    int32_t n_prompt, n_gen, depth;
    char test[48];            /* "pp512", "tg128 @ d4096", "tg128 x4"        */
    int reps;
    double samples[BENCH_MAX_REPS];   /* t/s of each repetition           */
    double avg_ts, sd_ts;
    /* KV: -1 / NAN where unknown (peer rows) */
    double kv_bytes, kv_peak, kv_reads_per_tok, compression;
    double gbps;              /* bytes the step must stream / time          */
    double roofline_gbps;     /* the device's measured bandwidth (NAN: none) */
    double roofline_pct;
    /* by the GPU's own clock (lethe_get_device_ms; NAN: no such clock):
     * the share of the timed wall time the device was busy, and the
     * bytes streamed over the device time (the kernels' bandwidth) */
    double device_busy_pct, device_gbps;
    double peer_ts, ratio;    /* the peer's t/s on the same test; ours / it  */
    /* provenance */
    char date[32], commit[48], command[1024];
} bench_row;

typedef enum { BENCH_MD, BENCH_CSV, BENCH_JSON, BENCH_JSONL } bench_fmt;

bool bench_fmt_parse(const char *s, bench_fmt *out);
/* Test name from the sizes: "pp512", "tg128 @ d4096", "tg128 x4 @ d0"... */
void bench_test_name(char *out, size_t cap, int32_t n_prompt, int32_t n_gen, int32_t depth, int32_t parallel);
void bench_print_header(FILE *f, bench_fmt fmt);
void bench_print_row(FILE *f, bench_fmt fmt, const bench_row *r, bool first);
void bench_print_footer(FILE *f, bench_fmt fmt, bool any_rows);
/* One row as a compact JSON object (no newline): what json and jsonl hold. */
void bench_print_json_row(FILE *f, const bench_row *r);

/* ---- roofline ----------------------------------------------------------- */

/* The cache file of a device: <cache>/roofline/<backend>-<device>-<name>.json */
void bench_roofline_path(char *out, size_t cap, const char *backend, int32_t device, const char *device_name);
/* Read a cached roofline: GB/s, or NAN when none is cached. */
double bench_roofline_cached(const char *backend, int32_t device, const char *device_name);
/* Measure backend/device now, write its cache file and print a row on
 * `out` (md or json lines). False after an error line. */
bool bench_roofline_measure(const char *backend, int32_t device, int32_t threads, int reps, bench_fmt fmt,
                            FILE *out, bool first);

/* ---- peer --------------------------------------------------------------- */

typedef struct bench_peer_result {
    bench_row *rows;
    int n_rows;
} bench_peer_result;

/* The last non-empty line of a file into out ("" if none): the one-line
 * reason of a child process that failed (the peer, the plot script). */
void bench_last_line(const char *path, char *out, size_t cap);
/* Parse "llama.cpp=PATH"; PATH may be llama-bench or its folder. */
bool bench_peer_parse(const char *spec, char *name, size_t name_cap, char *path, size_t path_cap);
/* Run the peer on every test of one (model, backend, threads) group:
 * pp sizes, tg sizes and depths as lists, reps repetitions. False after one
 * error line (the peer did not run, or its output did not parse). */
bool bench_peer_run(const char *name, const char *path, const char *model, const char *backend, int32_t threads,
                    int32_t n_batch, const int32_t *pp, int n_pp, const int32_t *tg, int n_tg, const int32_t *dd,
                    int n_dd, int reps, bench_peer_result *out);
/* Parse llama-bench's `-o jsonl` output into rows (engine = name). */
bool bench_peer_parse_jsonl(const char *name, const char *text, bench_peer_result *out);
void bench_peer_free(bench_peer_result *r);

/* ---- plots ------------------------------------------------------------- */

/* The plot script: $LETHE_BENCH_REPORT, else <exe dir>/<bin->share>/lethe/
 * bench_report.py (installed and build trees alike). `out` is the path
 * tried; false when it is not readable. */
bool bench_plot_script(char *out, size_t cap);
/* Can the script plot here (python3, the script, gnuplot)? False with a
 * one-line reason in `why`. `found`: what bench_plot_script returned. */
bool bench_plot_check(const char *script, bool found, char *why, size_t why_cap);
/* Plot `rows` (a jsonl file) into dir/name-*.svg/.png and dir/name.md; the
 * script's list of files goes to stderr. False with a reason in `why`. */
bool bench_plot_run(const char *script, const char *rows, const char *dir, const char *name, char *why,
                    size_t why_cap);
/* mkdir -p; false when `path` cannot be made a folder (errno says why). */
bool bench_mkdir_p(const char *path);

/* Human-readable bytes "92.10 MiB" and the inverse (tests, md parse-back). */
void bench_human_bytes(char *out, size_t cap, double b);
double bench_parse_human_bytes(const char *s);

#endif
