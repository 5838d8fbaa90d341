/* test_bench.c — `lethe bench` pieces (tools/lethe/bench_*.c, linked in by
 * tests/CMakeLists.txt): statistics, sweep expansion, the formats (the md
 * table parses back to the JSON numbers), the peer's output parser, the
 * roofline cache; then the CLI end to end: a sweep with --jsonl whose md
 * matches its JSON lines, --parallel rows, and the failures that must be
 * one line, a non-zero exit and the rows already measured kept (bad flags,
 * an unknown backend, a peer that does not run, a context that does not
 * fit). No timing is asserted: only that numbers exist and agree. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <spawn.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "bench.h"
#include "testutil.h"

extern char **environ;

/* ---- statistics --------------------------------------------------------- */

static void test_stats(void **state) {
    (void)state;
    const double x[] = {1, 2, 3, 4};
    double m, sd;
    bench_mean_sd(x, 4, &m, &sd);
    assert_float_equal(m, 2.5, 1e-12);
    assert_float_equal(sd, sqrt(5.0 / 3.0), 1e-12);   /* sample sd: n - 1 */
    bench_mean_sd(x + 2, 1, &m, &sd);
    assert_float_equal(m, 3.0, 1e-12);
    assert_float_equal(sd, 0.0, 0.0);
    /* large mean, tiny spread: the two-pass formula keeps the digits */
    const double y[] = {1e9 + 1, 1e9 + 2, 1e9 + 3};
    bench_mean_sd(y, 3, &m, &sd);
    assert_float_equal(m, 1e9 + 2, 1e-6);
    assert_float_equal(sd, 1.0, 1e-9);
}

/* ---- sweep -------------------------------------------------------------- */

static void test_sweep_expansion(void **state) {
    (void)state;
    bench_sweep_args a = {
        .default_model = "m.gguf", .threads = "1,2", .prompts = "0,8", .gens = "4", .depths = "0,32",
        .parallel = "1,2", .kv_policies = "none,window,dms", .kv_budgets = "16,32", .dms_windows = "8,16",
    };
    bench_sweep s;
    assert_true(bench_sweep_build(&a, &s));
    /* threads 2 x (none 1 + window 2 budgets + dms 2 windows) x parallel 2 x (pp8, tg4) x depths 2 */
    assert_int_equal(s.n_points, 2 * 5 * 2 * 2 * 2);
    const bench_point *p = s.points;
    assert_string_equal(p[0].model, "m.gguf");
    assert_string_equal(p[0].backend, "cpu");
    assert_int_equal(p[0].threads, 1);
    assert_int_equal(p[0].kv_policy, LETHE_KV_POLICY_NONE);
    assert_int_equal(p[0].kv_budget, 0);
    assert_int_equal(p[0].dms_window, -1);
    assert_int_equal(p[0].n_prompt, 8);
    assert_int_equal(p[0].n_gen, 0);
    assert_int_equal(p[0].depth, 0);
    assert_int_equal(p[1].depth, 32);          /* depth innermost */
    assert_int_equal(p[2].n_gen, 4);           /* then tg after pp */
    assert_int_equal(p[2].n_prompt, 0);
    assert_int_equal(p[4].parallel, 2);        /* then parallel */
    assert_int_equal(p[8].kv_policy, LETHE_KV_POLICY_WINDOW);
    assert_int_equal(p[8].kv_budget, 16);
    assert_int_equal(p[16].kv_budget, 32);
    assert_int_equal(p[24].kv_policy, LETHE_KV_POLICY_DMS);
    assert_int_equal(p[24].dms_window, 8);
    assert_int_equal(p[24].kv_budget, 0);      /* dms ignores the budget */
    assert_int_equal(p[32].dms_window, 16);
    assert_int_equal(p[40].threads, 2);        /* threads outermost here */
    for (size_t i = 0; i < s.n_points; i++) assert_true((s.points[i].n_prompt > 0) != (s.points[i].n_gen > 0));
    bench_sweep_free(&s);

    /* models and backends are the outer axes */
    bench_sweep_args b = {.models = "a.gguf,b.gguf", .backends = "cpu,vulkan", .prompts = "0", .gens = "1"};
    assert_true(bench_sweep_build(&b, &s));
    assert_int_equal(s.n_points, 4);
    assert_string_equal(s.points[1].model, "a.gguf");
    assert_string_equal(s.points[1].backend, "vulkan");
    assert_string_equal(s.points[2].model, "b.gguf");
    assert_int_equal(s.points[0].kv_policy, LETHE_KV_POLICY_AUTO);
    bench_sweep_free(&s);
}

static void test_sweep_errors(void **state) {
    (void)state;
    bench_sweep s;
    const bench_sweep_args bad[] = {
        {.default_model = "m", .prompts = "1,,2"},
        {.default_model = "m", .backends = "cpu,tpu"},
        {.default_model = "m", .kv_policies = "none,lru"},
        {.default_model = "m", .kv_budgets = "0"},
        {.default_model = "m", .dms_windows = "-1"},
        {.default_model = "m", .dms_force = "1.5"},
        {.default_model = "m", .parallel = "0"},
        {.default_model = "m", .threads = "x"},
        {.default_model = "m", .prompts = "0", .gens = "0"},
        {.models = "a,", .default_model = "m"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_false(bench_sweep_build(&bad[i], &s));
        assert_null(s.points);
    }
}

/* ---- formats ------------------------------------------------------------ */

static void fill_row(bench_row *r) {
    memset(r, 0, sizeof *r);
    snprintf(r->engine, sizeof r->engine, "lethe");
    snprintf(r->model, sizeof r->model, "llama a|b \"q\"");   /* a '|' and quotes survive every format */
    snprintf(r->model_file, sizeof r->model_file, "/m/x,y.gguf");
    r->model_bytes = 96576768;
    r->n_params = 134515008;
    snprintf(r->backend, sizeof r->backend, "cpu");
    snprintf(r->device_name, sizeof r->device_name, "AMD EPYC");
    r->threads = 2;
    r->n_batch = 512;
    r->parallel = 1;
    snprintf(r->kv_policy, sizeof r->kv_policy, "dms w256 forced 0.90");
    r->n_gen = 128;
    r->depth = 4096;
    bench_test_name(r->test, sizeof r->test, 0, 128, 4096, 1);
    r->reps = 3;
    r->samples[0] = 240.5;
    r->samples[1] = 251.25;
    r->samples[2] = 244.875;
    bench_mean_sd(r->samples, 3, &r->avg_ts, &r->sd_ts);
    r->kv_bytes = 15335424;
    r->kv_peak = 16777216;
    r->kv_reads_per_tok = 58004.25;
    r->compression = 3.8671875;
    r->gbps = 27.1234;
    r->roofline_gbps = 29.5;
    r->roofline_pct = 100.0 * r->gbps / r->roofline_gbps;
    r->device_busy_pct = 87.5;
    r->device_gbps = 31.0;
    r->peer_ts = NAN;
    r->ratio = NAN;
    snprintf(r->date, sizeof r->date, "2026-11-23T15:00:00Z");
    snprintf(r->commit, sizeof r->commit, "abc1234");
    snprintf(r->command, sizeof r->command, "lethe bench -n 128 -d 4096 'a b'");
}

static char *print_to_string(bench_fmt fmt, const bench_row *rows, int n) {
    /* static: GCC's -Wdangling-pointer takes the result for the address of a
     * local that open_memstream was given; the buffer itself is the heap's */
    static char *buf;
    static size_t len;
    buf = NULL;
    len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    bench_print_header(f, fmt);
    for (int i = 0; i < n; i++) bench_print_row(f, fmt, &rows[i], i == 0);
    bench_print_footer(f, fmt, n > 0);
    fclose(f);
    return buf;
}

/* Split one md table line into trimmed cells; returns the count. */
static int md_cells(const char *line, char cells[][160], int max) {
    int n = 0;
    const char *p = strchr(line, '|');
    while (p && n < max) {
        const char *q = strchr(p + 1, '|');
        const char *nl = strchr(p + 1, '\n');
        if (!q || (nl && nl < q)) break;
        const char *b = p + 1, *e = q;
        while (b < e && *b == ' ') b++;
        while (e > b && e[-1] == ' ') e--;
        snprintf(cells[n++], 160, "%.*s", (int)(e - b), b);
        p = q;
    }
    return n;
}

static int col(char hdr[][160], int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(hdr[i], name)) return i;
    fail_msg("md column '%s' missing", name);
    return -1;
}

static double jnum(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    assert_non_null(v);
    return json_is_null(v) ? NAN : json_number_value(v);
}

/* md rows → the numbers of json rows, within the md's printed precision. */
static void check_md_against_json(const char *md, json_t *rows) {
    char hdr[32][160], cells[32][160];
    const char *line = md;
    int nh = md_cells(line, hdr, 32);
    assert_true(nh >= 17);
    line = strchr(line, '\n') + 1;   /* the separator */
    line = strchr(line, '\n') + 1;
    size_t i = 0;
    for (; line && *line == '|'; i++) {
        assert_true(i < json_array_size(rows));
        json_t *o = json_array_get(rows, i);
        int nc = md_cells(line, cells, 32);
        assert_int_equal(nc, nh);
        /* t/s "a ± b" */
        double ts = 0, sd = 0;
        assert_int_equal(sscanf(cells[col(hdr, nh, "t/s")], "%lf ± %lf", &ts, &sd), 2);
        assert_float_equal(ts, jnum(o, "avg_ts"), 0.0051);
        assert_float_equal(sd, jnum(o, "stddev_ts"), 0.0051);
        assert_string_equal(cells[col(hdr, nh, "test")], json_string_value(json_object_get(o, "test")));
        assert_string_equal(cells[col(hdr, nh, "backend")], json_string_value(json_object_get(o, "backend")));
        {   /* the model name, with the '|' md cannot hold written as '_' */
            char want[256];
            snprintf(want, sizeof want, "%s", json_string_value(json_object_get(o, "model")));
            for (char *c = want; *c; c++)
                if (*c == '|') *c = '_';
            assert_string_equal(cells[col(hdr, nh, "model")], want);
        }
        assert_string_equal(cells[col(hdr, nh, "engine")], json_string_value(json_object_get(o, "engine")));
        assert_string_equal(cells[col(hdr, nh, "kv policy")], json_string_value(json_object_get(o, "kv_policy")));
        assert_int_equal(atoi(cells[col(hdr, nh, "threads")]), (int)jnum(o, "n_threads"));
        double size = bench_parse_human_bytes(cells[col(hdr, nh, "size")]);
        assert_float_equal(size, jnum(o, "size_bytes"), 0.005 * 1048576 + 1);
        assert_float_equal(atof(cells[col(hdr, nh, "params")]) * 1e6, jnum(o, "n_params"), 0.005e6 + 1);
        struct { const char *md, *js; double tol; bool bytes; } num[] = {
            {"KV resident", "kv_bytes", 0.005 * 1048576 + 1, true},
            {"KV peak", "kv_peak_bytes", 0.005 * 1048576 + 1, true},
            {"KV reads/tok", "kv_reads_per_token", 0.5, false},
            {"CR", "compression", 0.0051, false},
            {"GB/s", "gbps", 0.0051, false},
            {"% roofline", "roofline_pct", 0.051, false},
            {"peer t/s", "peer_ts", 0.0051, false},
            {"ratio", "ratio", 0.0051, false},
        };
        for (size_t k = 0; k < sizeof num / sizeof num[0]; k++) {
            const char *c = cells[col(hdr, nh, num[k].md)];
            double want = jnum(o, num[k].js);
            if (isnan(want)) {
                assert_string_equal(c, "");   /* unknown: an empty cell */
                continue;
            }
            double got = num[k].bytes ? bench_parse_human_bytes(c) : atof(c);
            if (fabs(got - want) > num[k].tol) fail_msg("md %s = '%s', json %s = %g", num[k].md, c, num[k].js, want);
        }
        line = strchr(line, '\n');
        line = line ? line + 1 : NULL;
    }
    assert_int_equal(i, json_array_size(rows));
}

/* One RFC 4180 record of `p` into fields (quotes undone); returns the count
 * and sets *next to the following line. */
static int csv_fields(const char *p, char fields[][1100], int max, const char **next) {
    int n = 0;
    for (;;) {
        size_t k = 0;
        char *f = fields[n < max ? n : max - 1];
        if (*p == '"') {
            for (p++; *p && !(*p == '"' && p[1] != '"'); p++) {
                if (*p == '"') p++;   /* "" -> " */
                if (k + 1 < 1100) f[k++] = *p;
            }
            if (*p == '"') p++;
        } else {
            for (; *p && *p != ',' && *p != '\n'; p++)
                if (k + 1 < 1100) f[k++] = *p;
        }
        f[k] = '\0';
        n++;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p == '\n') p++;
        *next = p;
        return n;
    }
}

/* csv rows → json rows: every column is a key of the json row with the
 * same value (strings equal, numbers to the 10 digits both print, null ↔ empty). */
static void check_csv_against_json(const char *csv, json_t *rows) {
    static char hdr[40][1100], cells[40][1100];
    const char *p = csv;
    int nh = csv_fields(p, hdr, 40, &p);
    assert_true(nh >= 30);
    size_t i = 0;
    for (; *p; i++) {
        assert_true(i < json_array_size(rows));
        json_t *o = json_array_get(rows, i);
        int nc = csv_fields(p, cells, 40, &p);
        assert_int_equal(nc, nh);
        for (int c = 0; c < nh; c++) {
            json_t *v = json_object_get(o, hdr[c]);
            if (!v) fail_msg("csv column '%s' is not a json key", hdr[c]);
            if (json_is_string(v)) {
                if (strcmp(cells[c], json_string_value(v)))
                    fail_msg("csv %s = '%s', json '%s'", hdr[c], cells[c], json_string_value(v));
            } else if (json_is_null(v)) {
                if (cells[c][0]) fail_msg("csv %s = '%s', json null", hdr[c], cells[c]);
            } else {
                double want = json_number_value(v), got = strtod(cells[c], NULL);
                if (!cells[c][0] || fabs(got - want) > 1e-9 * fabs(want) + 1e-12)
                    fail_msg("csv %s = '%s', json %.17g", hdr[c], cells[c], want);
            }
        }
    }
    assert_int_equal(i, json_array_size(rows));
}

static void test_formats(void **state) {
    (void)state;
    bench_row rows[2];
    fill_row(&rows[0]);
    fill_row(&rows[1]);
    snprintf(rows[1].engine, sizeof rows[1].engine, "llama.cpp");
    rows[1].kv_bytes = rows[1].kv_peak = rows[1].kv_reads_per_tok = rows[1].compression = NAN;
    rows[1].gbps = rows[1].roofline_pct = rows[1].roofline_gbps = NAN;
    rows[1].device_busy_pct = rows[1].device_gbps = NAN;
    rows[0].peer_ts = 123.456;
    rows[0].ratio = rows[0].avg_ts / rows[0].peer_ts;

    char *js = print_to_string(BENCH_JSON, rows, 2);
    json_error_t err;
    json_t *arr = json_loads(js, 0, &err);
    if (!arr) fail_msg("json does not parse: %s\n%s", err.text, js);
    assert_int_equal(json_array_size(arr), 2);
    json_t *o = json_array_get(arr, 0);
    assert_string_equal(json_string_value(json_object_get(o, "model")), "llama a|b \"q\"");
    assert_string_equal(json_string_value(json_object_get(o, "command")), rows[0].command);
    assert_float_equal(jnum(o, "avg_ts"), rows[0].avg_ts, 1e-6);
    assert_int_equal(json_array_size(json_object_get(o, "samples_ts")), 3);
    assert_float_equal(json_number_value(json_array_get(json_object_get(o, "samples_ts"), 1)), 251.25, 1e-9);
    assert_true(json_is_null(json_object_get(json_array_get(arr, 1), "kv_bytes")));

    char *md = print_to_string(BENCH_MD, rows, 2);
    check_md_against_json(md, arr);
    assert_non_null(strstr(md, "llama a_b"));   /* '|' cannot break the table */

    /* jsonl: the same objects, one per line */
    char *jl = print_to_string(BENCH_JSONL, rows, 2);
    char *nl = strchr(jl, '\n');
    assert_non_null(nl);
    json_t *first = json_loadb(jl, (size_t)(nl - jl), 0, &err);
    assert_non_null(first);
    assert_true(json_equal(first, o));
    json_decref(first);

    /* csv: header names match the json keys, values match too */
    char *csv2 = print_to_string(BENCH_CSV, rows, 2);
    check_csv_against_json(csv2, arr);
    free(csv2);
    char *csv = print_to_string(BENCH_CSV, rows, 1);
    assert_non_null(strstr(csv, "\"/m/x,y.gguf\""));   /* quoted: it has a comma */
    assert_non_null(strstr(csv, ",\"llama a|b \"\"q\"\"\","));
    assert_non_null(strstr(csv, ",dms w256 forced 0.90,"));
    const char *row = strchr(csv, '\n') + 1;
    assert_non_null(strstr(row, ",tg128 @ d4096,"));
    char avg[64];
    snprintf(avg, sizeof avg, ",%.10g,", rows[0].avg_ts);
    assert_non_null(strstr(row, avg));

    free(js);
    free(md);
    free(jl);
    free(csv);
    json_decref(arr);

    char name[48];
    bench_test_name(name, sizeof name, 512, 0, 0, 1);
    assert_string_equal(name, "pp512");
    bench_test_name(name, sizeof name, 0, 64, 2048, 4);
    assert_string_equal(name, "tg64 x4 @ d2048");
    bench_fmt f;
    assert_true(bench_fmt_parse("jsonl", &f) && f == BENCH_JSONL);
    assert_false(bench_fmt_parse("xml", &f));
    assert_float_equal(bench_parse_human_bytes("2.50 MiB"), 2.5 * 1048576, 1e-6);
    assert_float_equal(bench_parse_human_bytes("512 B"), 512, 1e-9);
}

/* ---- peer --------------------------------------------------------------- */

static void test_peer_parse(void **state) {
    (void)state;
    char name[32], path[4096];
    assert_true(bench_peer_parse("llama.cpp=/no/such/llama-bench", name, sizeof name, path, sizeof path));
    assert_string_equal(name, "llama.cpp");
    assert_string_equal(path, "/no/such/llama-bench");
    assert_true(bench_peer_parse("llama.cpp=/tmp", name, sizeof name, path, sizeof path));   /* a folder */
    assert_string_equal(path, "/tmp/llama-bench");
    assert_false(bench_peer_parse("llama.cpp", name, sizeof name, path, sizeof path));
    assert_false(bench_peer_parse("vllm=/x", name, sizeof name, path, sizeof path));

    /* llama-bench -o jsonl, abridged to the fields read, plus a log line */
    const char *out =
        "{\"build_commit\": \"abc\", \"cpu_info\": \"AMD EPYC\", \"gpu_info\": \"\", \"backends\": \"CPU\", "
        "\"model_filename\": \"x.gguf\", \"model_type\": \"llama 256M Q4_1\", \"model_size\": 96576768, "
        "\"model_n_params\": 134515008, \"n_batch\": 512, \"n_threads\": 2, \"n_prompt\": 512, \"n_gen\": 0, "
        "\"n_depth\": 0, \"test_time\": \"2026-11-23T15:29:23Z\", \"avg_ts\": 436.5, \"stddev_ts\": 37.25, "
        "\"samples_ts\": [400.0, 473.0]}\n"
        "not json: ignored\n"
        "{\"model_type\": \"llama 256M Q4_1\", \"n_threads\": 2, \"n_prompt\": 0, \"n_gen\": 128, \"n_depth\": 2048, "
        "\"avg_ts\": 69.0, \"stddev_ts\": 1.0, \"samples_ts\": [68.0, 70.0]}\n";
    bench_peer_result r;
    assert_true(bench_peer_parse_jsonl("llama.cpp", out, &r));
    assert_int_equal(r.n_rows, 2);
    assert_string_equal(r.rows[0].engine, "llama.cpp");
    assert_string_equal(r.rows[0].test, "pp512");
    assert_float_equal(r.rows[0].avg_ts, 436.5, 1e-9);
    assert_int_equal(r.rows[0].reps, 2);
    assert_int_equal((int64_t)r.rows[0].model_bytes, 96576768);
    assert_string_equal(r.rows[1].test, "tg128 @ d2048");
    assert_true(isnan(r.rows[1].kv_bytes));
    bench_peer_free(&r);
    assert_false(bench_peer_parse_jsonl("llama.cpp", "{\"avg_ts\": \n", &r));
    assert_false(bench_peer_parse_jsonl("llama.cpp", "{\"n_gen\": 1}\n", &r));   /* no avg_ts */

    /* a peer path that does not run: one line, false, no rows */
    const int32_t tg[] = {4}, dd[] = {0};
    assert_false(bench_peer_run("llama.cpp", "/no/such/llama-bench", "m.gguf", "cpu", 1, 512, NULL, 0, tg, 1, dd, 1, 1,
                                &r));
    assert_int_equal(r.n_rows, 0);
    /* one that runs but fails (exit status 1) */
    assert_false(bench_peer_run("llama.cpp", "/bin/false", "m.gguf", "cpu", 1, 512, NULL, 0, tg, 1, dd, 1, 1, &r));
    /* one that runs and prints nothing useful */
    assert_false(bench_peer_run("llama.cpp", "/bin/true", "m.gguf", "cpu", 1, 512, NULL, 0, tg, 1, dd, 1, 1, &r));
}

/* ---- roofline ----------------------------------------------------------- */

static void test_roofline(void **state) {
    (void)state;
    char dir[] = "/tmp/lethe-roofline-XXXXXX";
    assert_non_null(mkdtemp(dir));
    setenv("LETHE_CACHE", dir, 1);
    char path[4096];
    bench_roofline_path(path, sizeof path, "cuda", 1, "NVIDIA H100 80GB HBM3");
    char want[4200];
    snprintf(want, sizeof want, "%s/roofline/cuda-1-NVIDIA_H100_80GB_HBM3.json", dir);
    assert_string_equal(path, want);
    assert_true(isnan(bench_roofline_cached("cuda", 1, "NVIDIA H100 80GB HBM3")));
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/roofline", dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"gbps\": 3012.5, \"method\": \"device-to-device copy\"}", f);
    fclose(f);
    assert_float_equal(bench_roofline_cached("cuda", 1, "NVIDIA H100 80GB HBM3"), 3012.5, 1e-9);
    assert_true(isnan(bench_roofline_cached("cuda", 0, "NVIDIA H100 80GB HBM3")));   /* another device */
    unlink(path);
    rmdir(sub);
    rmdir(dir);
    unsetenv("LETHE_CACHE");

    /* the library's measurement, small: a number, the CPU's name, a method */
    lethe_bandwidth bw;
    assert_int_equal(lethe_measure_bandwidth("cpu", 0, 1, 8u << 20, 1, &bw), LETHE_OK);
    assert_true(bw.gbps > 0 && bw.bytes == (8u << 20));
    assert_string_equal(bw.method, "streaming read");
    assert_true(bw.device_name[0] != '\0');
    assert_int_equal(lethe_measure_bandwidth("cpu", 0, 1, 1024, 1, &bw), LETHE_ERR_INVALID_ARG);   /* fits a cache */
    assert_int_equal(lethe_measure_bandwidth("cpu", 3, 1, 0, 1, &bw), LETHE_ERR_BACKEND);
    assert_int_equal(lethe_measure_bandwidth("cpu", 0, 1, 0, 0, &bw), LETHE_ERR_INVALID_ARG);
    /* Vulkan (lavapipe in CI): a timed device-to-device copy */
    if (strstr(lethe_version(), "vulkan")) {
        /* keep lavapipe loaded past the backend's end, so LeakSanitizer can
         * name (and tests/lsan.supp suppress) the driver's own leaks */
        (void)dlopen("libvulkan_lvp.so", RTLD_LAZY);
        assert_int_equal(lethe_measure_bandwidth("vulkan", 0, 0, 8u << 20, 1, &bw), LETHE_OK);
        assert_true(bw.gbps > 0 && bw.bytes == 2 * (8u << 20));
        assert_non_null(strstr(bw.method, "device-to-device copy"));   /* ", host clock" or ", device clock" */
    }
    /* a backend this build lacks, or one without a device copy: a status, never a crash */
    assert_int_not_equal(lethe_measure_bandwidth("tpu", 0, 1, 8u << 20, 1, &bw), LETHE_OK);
    char name[128];
    assert_int_equal(lethe_device_name("cpu", 0, name, sizeof name), LETHE_OK);
    assert_int_not_equal(lethe_device_name("tpu", 0, name, sizeof name), LETHE_OK);
}

/* ---- the GPU roofline hook, on a stand-in backend ---------------------- */

/* A backend whose buffers are host memory and whose device clock advances
 * by a fixed time per copy (or not at all): what lethe_backend_measure_copy
 * does with buffer_copy and device_ms, exactly. */
static struct {
    int copies, syncs, allocs;
    size_t last_size;
    bool timed;
    double dev_ms;
} g_fake;
static void fk_free(lethe_backend *be) { (void)be; }
static void fk_info(lethe_backend *be, lethe_backend_info *i) {
    (void)be;
    i->name = "fake";
    snprintf(i->device_name, sizeof i->device_name, "Fake GPU 9000");
}
static lethe_status fk_alloc(lethe_backend *be, size_t size, lethe_buffer **out) {
    lethe_buffer *b = calloc(1, sizeof *b);
    assert_non_null(b);
    b->backend = be;
    b->size = size;
    b->host_ptr = calloc(1, size);
    assert_non_null(b->host_ptr);
    g_fake.allocs++;
    *out = b;
    return LETHE_OK;
}
static void fk_buffer_free(lethe_buffer *b) {
    free(b->host_ptr);
    free(b);
    g_fake.allocs--;
}
static lethe_status fk_copy(lethe_buffer *dst, size_t doff, lethe_buffer *src, size_t soff, size_t size) {
    assert_true(doff + size <= dst->size && soff + size <= src->size && dst != src);
    memcpy((char *)dst->host_ptr + doff, (char *)src->host_ptr + soff, size);
    g_fake.copies++;
    g_fake.last_size = size;
    if (g_fake.timed) g_fake.dev_ms += 0.5;
    return LETHE_OK;
}
static lethe_status fk_sync(lethe_backend *be) {
    (void)be;
    g_fake.syncs++;
    return LETHE_OK;
}
static double fk_device_ms(lethe_backend *be) {
    (void)be;
    return g_fake.dev_ms;
}

static void test_measure_copy(void **state) {
    (void)state;
    lethe_backend_iface iface = {.free = fk_free, .get_info = fk_info, .buffer_alloc = fk_alloc,
                                 .buffer_free = fk_buffer_free, .synchronize = fk_sync,
                                 .buffer_copy = fk_copy, .device_ms = fk_device_ms};
    lethe_backend be = {.iface = &iface};
    const size_t bytes = 1u << 20;
    lethe_bandwidth bw;

    /* the device clock times each copy at 0.5 ms: that is the result */
    memset(&g_fake, 0, sizeof g_fake);
    g_fake.timed = true;
    assert_int_equal(lethe_backend_measure_copy(&be, bytes, 3, &bw), LETHE_OK);
    assert_int_equal(g_fake.copies, 4);   /* a warm-up + 3 */
    assert_int_equal(g_fake.syncs, 4);
    assert_int_equal(g_fake.last_size, bytes);
    assert_int_equal(g_fake.allocs, 0);   /* both buffers freed */
    assert_int_equal(bw.bytes, 2 * bytes);   /* read + write */
    assert_float_equal(bw.seconds, 0.5e-3, 1e-12);
    assert_float_equal(bw.gbps, 2.0 * bytes / 0.5e-3 / 1e9, 1e-6);
    assert_string_equal(bw.method, "device-to-device copy, device clock");
    assert_string_equal(bw.device_name, "Fake GPU 9000");
    assert_int_equal(bw.n_threads, 0);

    /* a device clock that does not see copies: the host clock, for every rep */
    memset(&g_fake, 0, sizeof g_fake);
    assert_int_equal(lethe_backend_measure_copy(&be, bytes, 3, &bw), LETHE_OK);
    assert_string_equal(bw.method, "device-to-device copy, host clock");
    assert_int_equal(g_fake.copies, 3 + 2);   /* warm-up, the untimed try, then 3 by the host clock */
    assert_true(bw.seconds > 0 && bw.gbps > 0);
    assert_float_equal(bw.gbps, 2.0 * bytes / bw.seconds / 1e9, 1e-6 * bw.gbps);

    /* no device clock at all */
    iface.device_ms = NULL;
    memset(&g_fake, 0, sizeof g_fake);
    g_fake.timed = true;
    assert_int_equal(lethe_backend_measure_copy(&be, bytes, 2, &bw), LETHE_OK);
    assert_string_equal(bw.method, "device-to-device copy, host clock");
    assert_int_equal(g_fake.copies, 3);

    /* no buffer_copy: a status and a message, nothing allocated */
    iface.buffer_copy = NULL;
    memset(&g_fake, 0, sizeof g_fake);
    assert_int_equal(lethe_backend_measure_copy(&be, bytes, 2, &bw), LETHE_ERR_UNSUPPORTED);
    assert_non_null(strstr(lethe_last_error(), "buffer_copy"));
    assert_int_equal(g_fake.allocs, 0);
    assert_int_equal(g_fake.copies, 0);
}

/* ---- the CLI end to end ------------------------------------------------- */

typedef struct run_result {
    int status;
    char *out, *err;
} run_result;

static char *slurp(const char *path) {
    size_t n = 0;
    char *raw = tu_read_file(path, &n);
    char *s = calloc(1, n + 1);
    if (raw) memcpy(s, raw, n);
    free(raw);
    return s;
}

/* `lethe bench args...` with stdout/stderr captured, OpenMP workers passive
 * (tests share 2 cores) and LETHE_CACHE pointed at `cache` (no roofline). */
static run_result bench(const char *cache, const char *const *args) {
    const char *b = getenv("LETHE_BIN");
    if (!b || access(b, X_OK) != 0) fail_msg("LETHE_BIN (%s) is not an executable", b ? b : "(unset)");
    char out_path[] = "/tmp/lethe-bench-out-XXXXXX", err_path[] = "/tmp/lethe-bench-err-XXXXXX";
    int fo = mkstemp(out_path), fe = mkstemp(err_path);
    assert_true(fo >= 0 && fe >= 0);
    close(fo);
    close(fe);
    const char *argv[64];
    size_t na = 0;
    argv[na++] = b;
    argv[na++] = "bench";
    argv[na++] = "-m";
    argv[na++] = tu_model_path();
    for (size_t i = 0; args[i] && na < 62; i++) argv[na++] = args[i];
    argv[na] = NULL;
    char cache_env[4200];
    snprintf(cache_env, sizeof cache_env, "LETHE_CACHE=%s", cache);
    const char *envp[512];
    size_t ne = 0;
    for (char **e = environ; *e && ne < 500; e++)
        if (strncmp(*e, "LETHE_CACHE=", 12) && strncmp(*e, "OMP_WAIT_POLICY=", 16)) envp[ne++] = *e;
    envp[ne++] = cache_env;
    envp[ne++] = "OMP_WAIT_POLICY=passive";
    envp[ne] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_TRUNC, 0);
    posix_spawn_file_actions_addopen(&fa, 2, err_path, O_WRONLY | O_TRUNC, 0);
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, b, &fa, NULL, (char *const *)argv, (char *const *)envp), 0);
    posix_spawn_file_actions_destroy(&fa);
    int ws = 0;
    assert_true(waitpid(pid, &ws, 0) == pid);
    run_result r = {WIFEXITED(ws) ? WEXITSTATUS(ws) : 128, slurp(out_path), slurp(err_path)};
    unlink(out_path);
    unlink(err_path);
    return r;
}

static int count_char(const char *s, char c) {
    int n = 0;
    for (; *s; s++) n += *s == c;
    return n;
}

static void free_run(run_result *r) {
    free(r->out);
    free(r->err);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_cli_sweep(void **state) {
    (void)state;
    char dir[] = "/tmp/lethe-bench-cache-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char jsonl[4200];
    snprintf(jsonl, sizeof jsonl, "%s/rows.jsonl", dir);
    /* 2 policies (window: 2 budgets) x (pp6, tg3) x 2 depths = 12 rows */
    run_result r = bench(dir, ARGS("-p", "6", "-n", "3", "-d", "0,20", "-r", "2", "-t", "1", "--kv-policy",
                                   "none,window", "--kv-budget", "8,16", "--jsonl", jsonl, "--no-progress"));
    if (r.status != 0) fail_msg("bench failed: %s", r.err);
    assert_int_equal(count_char(r.out, '\n'), 2 + 12);
    /* --jsonl holds the same rows as the md table */
    char *jl = slurp(jsonl);
    assert_int_equal(count_char(jl, '\n'), 12);
    json_t *arr = json_array();
    for (char *line = jl; *line;) {
        char *nl = strchr(line, '\n');
        json_error_t err;
        json_t *o = json_loadb(line, (size_t)(nl - line), 0, &err);
        if (!o) fail_msg("jsonl line does not parse: %s", err.text);
        json_array_append_new(arr, o);
        line = nl + 1;
    }
    check_md_against_json(r.out, arr);
    json_t *o = json_array_get(arr, 7);   /* window 8, tg3 @ d20 */
    assert_string_equal(json_string_value(json_object_get(o, "kv_policy")), "window 8");
    assert_string_equal(json_string_value(json_object_get(o, "test")), "tg3 @ d20");
    assert_true(jnum(o, "compression") > 1.0);   /* 24 tokens seen, 8 kept */
    assert_true(jnum(o, "gbps") > 0);
    assert_true(isnan(jnum(o, "roofline_pct")));   /* nothing cached in this LETHE_CACHE */
    assert_true(isnan(jnum(o, "device_busy_pct")));   /* the CPU has no device clock */
    assert_non_null(strstr(r.err, "no roofline cached"));
    assert_string_equal(json_string_value(json_object_get(o, "engine")), "lethe");
    assert_non_null(strstr(json_string_value(json_object_get(o, "command")), "--kv-budget 8,16"));
    json_decref(arr);
    free(jl);
    unlink(jsonl);
    free_run(&r);

    /* csv end to end: the same rows as its --jsonl, column by column */
    r = bench(dir, ARGS("-p", "4", "-n", "2", "-d", "0,8", "-r", "2", "-t", "1", "--kv-policy", "window",
                        "--kv-budget", "6", "--jsonl", jsonl, "--no-progress", "-o", "csv"));
    if (r.status != 0) fail_msg("bench -o csv failed: %s", r.err);
    jl = slurp(jsonl);
    arr = json_array();
    for (char *line = jl; *line;) {
        char *nl = strchr(line, '\n');
        json_error_t err;
        json_t *jo = json_loadb(line, (size_t)(nl - line), 0, &err);
        if (!jo) fail_msg("jsonl line does not parse: %s", err.text);
        json_array_append_new(arr, jo);
        line = nl + 1;
    }
    assert_int_equal(json_array_size(arr), 4);
    check_csv_against_json(r.out, arr);
    json_decref(arr);
    free(jl);
    unlink(jsonl);
    free_run(&r);

    /* --parallel: aggregate rows, named "x P"; json closes its array */
    r = bench(dir, ARGS("-p", "0", "-n", "2", "-d", "4", "--parallel", "1,3", "-r", "1", "-t", "1", "-o", "json"));
    if (r.status != 0) fail_msg("bench --parallel failed: %s", r.err);
    json_error_t err;
    arr = json_loads(r.out, 0, &err);
    assert_non_null(arr);
    assert_int_equal(json_array_size(arr), 2);
    o = json_array_get(arr, 1);
    assert_string_equal(json_string_value(json_object_get(o, "test")), "tg2 x3 @ d4");
    assert_int_equal((int)jnum(o, "n_parallel"), 3);
    assert_true(jnum(o, "avg_ts") > 0);
    json_decref(arr);
    free_run(&r);

    /* Vulkan (lavapipe in CI): the device's timestamps reach the row. The
     * child cannot keep lavapipe loaded, so under ASan its leaks at exit
     * would have no frames to suppress: leak checking is off for it. */
    if (strstr(lethe_version(), "vulkan")) {
        const char *asan = getenv("ASAN_OPTIONS");
        char *saved = asan ? strdup(asan) : NULL;
        setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
        r = bench(dir, ARGS("--backend", "vulkan", "-p", "0", "-n", "2", "-r", "1", "-o", "json", "--no-progress"));
        if (saved) setenv("ASAN_OPTIONS", saved, 1);
        else unsetenv("ASAN_OPTIONS");
        free(saved);
        if (r.status != 0) fail_msg("bench --backend vulkan failed: %s", r.err);
        arr = json_loads(r.out, 0, &err);
        assert_non_null(arr);
        o = json_array_get(arr, 0);
        assert_string_equal(json_string_value(json_object_get(o, "backend")), "vulkan");
        assert_true(jnum(o, "device_busy_pct") > 0 && jnum(o, "device_gbps") > 0);
        json_decref(arr);
        free_run(&r);
    }
    rmdir(dir);
}

/* One error line on stderr mentioning `needle`, exit status `status`. */
static void expect_error(const run_result *r, int status, const char *needle) {
    if (r->status != status) fail_msg("exit %d, expected %d; stderr: %s", r->status, status, r->err);
    const char *e = strstr(r->err, "lethe: error: ");
    if (!e) fail_msg("no error line; stderr: %s", r->err);
    assert_null(strstr(e + 1, "lethe: error: "));   /* exactly one */
    if (needle && !strstr(e, needle)) fail_msg("error line lacks '%s': %s", needle, e);
}

static void test_cli_failures(void **state) {
    (void)state;
    char dir[] = "/tmp/lethe-bench-cache-XXXXXX";
    assert_non_null(mkdtemp(dir));
    run_result r;
    r = bench(dir, ARGS("--bogus"));
    expect_error(&r, 2, "--bogus");
    assert_string_equal(r.out, "");
    free_run(&r);
    r = bench(dir, ARGS("--backend", "cpu,tpu"));
    expect_error(&r, 2, "tpu");
    free_run(&r);
    r = bench(dir, ARGS("-o", "xml"));
    expect_error(&r, 2, "xml");
    free_run(&r);
    r = bench(dir, ARGS("--peer", "vllm=/x"));
    expect_error(&r, 2, "vllm");
    free_run(&r);
    r = bench(dir, ARGS("-p", "0", "-n", "0"));
    expect_error(&r, 2, "nothing to measure");
    free_run(&r);

    /* a peer that does not run: one line, our rows still print, exit 1 */
    r = bench(dir, ARGS("-p", "0", "-n", "2", "-r", "1", "-t", "1", "--peer", "llama.cpp=/no/such/llama-bench",
                        "-o", "csv"));
    expect_error(&r, 1, "/no/such/llama-bench");
    assert_int_equal(count_char(r.out, '\n'), 2);   /* header + our tg2 */
    assert_non_null(strstr(r.out, "lethe,"));
    free_run(&r);

    /* a context that does not fit (a KV pool of one page per head stream at
     * most, depths past it): the rows before are written, one line per
     * refused row, exit 1, and json still closes its array */
    r = bench(dir, ARGS("-p", "0", "-n", "2", "-d", "0,4000", "-r", "1", "-t", "1", "--kv-mem", "1M", "-o", "json"));
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "lethe: error: "));
    assert_non_null(strstr(r.err, "tg2 @ d4000"));
    json_error_t err;
    json_t *arr = json_loads(r.out, 0, &err);
    if (!arr) fail_msg("json output does not parse after an error: %s\n%s", err.text, r.out);
    assert_int_equal(json_array_size(arr), 1);   /* tg2 was measured */
    json_decref(arr);
    free_run(&r);

    /* a model of the list that does not load, first or last: one line for
     * it, the other model's rows written, exit 1 */
    char list[8500];
    snprintf(list, sizeof list, "/no/such/model.gguf,%s", tu_model_path());
    r = bench(dir, ARGS("-m", list, "-p", "0", "-n", "2", "-r", "1", "-t", "1", "-o", "csv"));
    expect_error(&r, 1, "/no/such/model.gguf");
    assert_int_equal(count_char(r.out, '\n'), 2);   /* header + the good model's tg2 */
    free_run(&r);
    char trunc[4200];   /* a model file cut short: it does not load */
    snprintf(trunc, sizeof trunc, "%s/cut.gguf", dir);
    {
        size_t n = 0;
        char *m = tu_read_file(tu_model_path(), &n);
        assert_non_null(m);
        FILE *tf = fopen(trunc, "wb");
        assert_non_null(tf);
        assert_int_equal(fwrite(m, 1, n / 3, tf), n / 3);
        fclose(tf);
        free(m);
    }
    snprintf(list, sizeof list, "%s,%s", tu_model_path(), trunc);
    r = bench(dir, ARGS("-m", list, "-p", "0", "-n", "2", "-r", "1", "-t", "1", "-o", "json"));
    expect_error(&r, 1, "cut.gguf");
    arr = json_loads(r.out, 0, &err);
    if (!arr) fail_msg("json output does not parse after a model failed: %s\n%s", err.text, r.out);
    assert_int_equal(json_array_size(arr), 1);
    json_decref(arr);
    free_run(&r);
    unlink(trunc);

    /* --roofline: a device that cannot be measured gets one line; the
     * others are measured and cached; exit 1 */
    r = bench(dir, ARGS("--roofline", "--backend", "cpu,cuda", "-t", "1", "-r", "1", "-o", "jsonl"));
    expect_error(&r, 1, "cuda");
    assert_int_equal(count_char(r.out, '\n'), 1);
    assert_non_null(strstr(r.out, "\"method\":\"streaming read\""));
    free_run(&r);
    char cached[4200];
    snprintf(cached, sizeof cached, "%s/roofline", dir);
    {   /* the cpu file is there; remove it so rmdir below works */
        char name[128], path[4300];
        assert_int_equal(lethe_device_name("cpu", 0, name, sizeof name), LETHE_OK);
        setenv("LETHE_CACHE", dir, 1);
        bench_roofline_path(path, sizeof path, "cpu", 0, name);
        assert_true(bench_roofline_cached("cpu", 0, name) > 0);
        unsetenv("LETHE_CACHE");
        unlink(path);
        rmdir(cached);
    }

    /* a GPU backend that is not there must not run on the CPU under its name */
    r = bench(dir, ARGS("-p", "0", "-n", "2", "-r", "1", "--backend", "cuda,cpu", "-t", "1", "-o", "csv"));
    expect_error(&r, 1, "cuda");
    assert_int_equal(count_char(r.out, '\n'), 2);   /* header + the cpu row */
    assert_null(strstr(r.out, ",cuda,"));
    free_run(&r);
    rmdir(dir);
}

/* The progress line goes to stderr only: stdout is exactly the results
 * (json parses whole), stderr names every row; --no-progress silences it. */
static void test_cli_progress(void **state) {
    (void)state;
    char dir[] = "/tmp/lethe-bench-cache-XXXXXX";
    assert_non_null(mkdtemp(dir));
    run_result r = bench(dir, ARGS("-p", "0", "-n", "2", "-d", "0,4", "-r", "1", "-t", "1", "--progress", "-o", "json"));
    if (r.status != 0) fail_msg("bench --progress failed: %s", r.err);
    json_error_t err;
    json_t *arr = json_loads(r.out, 0, &err);
    if (!arr) fail_msg("stdout is not only the json: %s\n%s", err.text, r.out);
    assert_int_equal(json_array_size(arr), 2);
    json_decref(arr);
    assert_null(strstr(r.out, "lethe:"));
    assert_non_null(strstr(r.err, "lethe: bench [1/2] tg2"));
    assert_non_null(strstr(r.err, "lethe: bench [2/2] tg2 @ d4"));
    assert_non_null(strstr(r.err, "left"));   /* the estimate, once a row is done */
    free_run(&r);
    r = bench(dir, ARGS("-p", "0", "-n", "2", "-r", "1", "-t", "1", "--no-progress", "-o", "csv"));
    assert_int_equal(r.status, 0);
    assert_null(strstr(r.err, "bench ["));
    free_run(&r);
    rmdir(dir);
}

/* A GPU row where the backend has a device clock (Vulkan timestamps; in CI
 * lavapipe): the device columns are filled and consistent with the wall
 * clock, the CPU row's are null. And the GPU roofline: measured through
 * buffer_copy once the backend offers it (then a row gets % roofline), else
 * one line naming buffer_copy. Skipped where no Vulkan device is. */
static void test_cli_gpu_clock(void **state) {
    (void)state;
    /* a backend of our own first, to pin the driver while it is loaded:
     * lavapipe's own leaks then keep its name for tests/lsan.supp */
    lethe_backend *vb = lethe_backend_vulkan_new(0);
    if (!vb) {
        print_message("no Vulkan device (%s): skipped\n", lethe_last_error());
        skip();
    }
    tu_pin_vulkan_driver();
    vb->iface->free(vb);
    char name[128];
    assert_int_equal(lethe_device_name("vulkan", 0, name, sizeof name), LETHE_OK);
    /* The lethe children cannot pin the driver, so LeakSanitizer (sanitizer
     * builds) could not name lavapipe's leaks there: no leak check in them.
     * The engine's Vulkan paths are leak-checked in process by
     * test_vulkan_e2e/test_vulkan_dms. */
    const char *asan = getenv("ASAN_OPTIONS");
    char *asan_saved = asan ? strdup(asan) : NULL;
    char asan_child[1024];
    snprintf(asan_child, sizeof asan_child, "%s%sdetect_leaks=0", asan ? asan : "", asan && *asan ? ":" : "");
    setenv("ASAN_OPTIONS", asan_child, 1);
    char dir[] = "/tmp/lethe-bench-cache-XXXXXX";
    assert_non_null(mkdtemp(dir));
    run_result r = bench(dir, ARGS("--roofline", "--backend", "vulkan", "-r", "1", "-o", "jsonl"));
    bool have_roofline = r.status == 0;
    if (have_roofline) {
        json_error_t err;
        json_t *o = json_loads(r.out, 0, &err);
        assert_non_null(o);
        assert_true(json_number_value(json_object_get(o, "gbps")) > 0);
        assert_non_null(strstr(json_string_value(json_object_get(o, "method")), "device-to-device copy"));
        json_decref(o);
    } else {
        expect_error(&r, 1, "buffer_copy");
    }
    free_run(&r);

    r = bench(dir, ARGS("--backend", "vulkan,cpu", "-p", "0", "-n", "1", "-r", "1", "-t", "1", "-o", "json"));
    if (r.status != 0) fail_msg("bench on vulkan failed: %s", r.err);
    json_error_t err;
    json_t *arr = json_loads(r.out, 0, &err);
    assert_non_null(arr);
    assert_int_equal(json_array_size(arr), 2);
    json_t *gpu = json_array_get(arr, 0), *cpu = json_array_get(arr, 1);
    assert_string_equal(json_string_value(json_object_get(gpu, "backend")), "vulkan");
    assert_string_equal(json_string_value(json_object_get(gpu, "device_name")), name);
    double busy = jnum(gpu, "device_busy_pct"), dg = jnum(gpu, "device_gbps"), g = jnum(gpu, "gbps");
    if (isnan(busy)) {
        print_message("the Vulkan device has no timestamps: device columns null\n");
        assert_true(isnan(dg));
    } else {
        assert_true(busy > 0 && busy <= 100.5);             /* device time within the wall time */
        assert_float_equal(dg, g * 100.0 / busy, 1e-6 * dg);  /* the same bytes over the device time */
    }
    assert_true(have_roofline ? jnum(gpu, "roofline_pct") > 0 : isnan(jnum(gpu, "roofline_pct")));
    assert_true(isnan(jnum(cpu, "device_busy_pct")) && isnan(jnum(cpu, "device_gbps")));
    json_decref(arr);
    free_run(&r);
    if (asan_saved) setenv("ASAN_OPTIONS", asan_saved, 1);
    else unsetenv("ASAN_OPTIONS");
    free(asan_saved);
    char path[4300];
    setenv("LETHE_CACHE", dir, 1);
    bench_roofline_path(path, sizeof path, "vulkan", 0, name);
    unsetenv("LETHE_CACHE");
    unlink(path);
    snprintf(path, sizeof path, "%s/roofline", dir);
    rmdir(path);
    rmdir(dir);
}

/* A stand-in llama-bench (a shell script): the arguments it was given, and
 * its row joining ours with a ratio. */
static void test_cli_peer(void **state) {
    (void)state;
    char dir[] = "/tmp/lethe-bench-peer-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char script[4200], args_file[4200], spec[4300];
    snprintf(script, sizeof script, "%s/llama-bench", dir);
    snprintf(args_file, sizeof args_file, "%s/args", dir);
    FILE *f = fopen(script, "w");
    assert_non_null(f);
    fprintf(f, "#!/bin/sh\necho \"$@\" > '%s'\n"
               "echo 'log line on stdout'\n"
               "echo '{\"model_type\": \"fake\", \"backends\": \"CPU\", \"n_threads\": 1, \"n_prompt\": 0, "
               "\"n_gen\": 2, \"n_depth\": 0, \"avg_ts\": 0.5, \"stddev_ts\": 0.0, \"samples_ts\": [0.5]}'\n",
            args_file);
    fclose(f);
    assert_int_equal(chmod(script, 0755), 0);
    snprintf(spec, sizeof spec, "llama.cpp=%s", dir);   /* the folder form */
    run_result r = bench(dir, ARGS("-p", "0", "-n", "2", "-r", "1", "-t", "1", "--peer", spec, "-o", "json"));
    if (r.status != 0) fail_msg("bench with a peer failed: %s", r.err);
    char *args = slurp(args_file);
    assert_non_null(strstr(args, "-p 0 -n 2 -d 0 -r 1 -ngl 0 -o jsonl"));   /* -p 0: no pp test, not its default */
    assert_non_null(strstr(args, "-t 1 -b 512"));
    free(args);
    json_error_t err;
    json_t *arr = json_loads(r.out, 0, &err);
    assert_non_null(arr);
    assert_int_equal(json_array_size(arr), 2);
    json_t *peer = json_array_get(arr, 0), *ours = json_array_get(arr, 1);
    assert_string_equal(json_string_value(json_object_get(peer, "engine")), "llama.cpp");
    assert_string_equal(json_string_value(json_object_get(ours, "engine")), "lethe");
    assert_float_equal(jnum(ours, "peer_ts"), 0.5, 1e-9);
    assert_float_equal(jnum(ours, "ratio"), jnum(ours, "avg_ts") / 0.5, 1e-6);
    json_decref(arr);
    free_run(&r);
    unlink(args_file);
    unlink(script);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_sweep_expansion),
        cmocka_unit_test(test_sweep_errors),
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_peer_parse),
        cmocka_unit_test(test_roofline),
        cmocka_unit_test(test_measure_copy),
        cmocka_unit_test(test_cli_sweep),
        cmocka_unit_test(test_cli_failures),
        cmocka_unit_test(test_cli_progress),
        cmocka_unit_test(test_cli_gpu_clock),
        cmocka_unit_test(test_cli_peer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
