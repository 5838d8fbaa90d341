/* bench_format.c — `lethe bench` rows as md (llama-bench's columns first,
 * then ours), csv, json (one array) and jsonl (one object per line).
 *
 * Every format carries the same numbers: json/jsonl/csv at full precision,
 * md rounded for reading (2 decimals, bytes in KiB/MiB/GiB). Unknown values
 * (a peer's KV columns, a roofline never measured) are empty cells in md and
 * csv and null in JSON. tests/test_bench.c parses the md back and checks it
 * against the JSON. */
#include "bench.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

bool bench_fmt_parse(const char *s, bench_fmt *out) {
    if (!strcmp(s, "md")) *out = BENCH_MD;
    else if (!strcmp(s, "csv")) *out = BENCH_CSV;
    else if (!strcmp(s, "json")) *out = BENCH_JSON;
    else if (!strcmp(s, "jsonl")) *out = BENCH_JSONL;
    else return false;
    return true;
}

void bench_test_name(char *out, size_t cap, int32_t n_prompt, int32_t n_gen, int32_t depth, int32_t parallel) {
    int l = n_prompt > 0 ? snprintf(out, cap, "pp%d", n_prompt) : snprintf(out, cap, "tg%d", n_gen);
    if (l > 0 && (size_t)l < cap && parallel > 1) l += snprintf(out + l, cap - (size_t)l, " x%d", parallel);
    if (l > 0 && (size_t)l < cap && depth > 0) snprintf(out + l, cap - (size_t)l, " @ d%d", depth);
}

void bench_human_bytes(char *out, size_t cap, double b) {
    if (b >= 1073741824.0) snprintf(out, cap, "%.2f GiB", b / 1073741824.0);
    else if (b >= 1048576.0) snprintf(out, cap, "%.2f MiB", b / 1048576.0);
    else if (b >= 1024.0) snprintf(out, cap, "%.2f KiB", b / 1024.0);
    else snprintf(out, cap, "%.0f B", b);
}

double bench_parse_human_bytes(const char *s) {
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s) return NAN;
    while (*end == ' ') end++;
    if (!strncmp(end, "GiB", 3)) return v * 1073741824.0;
    if (!strncmp(end, "MiB", 3)) return v * 1048576.0;
    if (!strncmp(end, "KiB", 3)) return v * 1024.0;
    return v;
}

static const char *k_csv_cols =
    "engine,model,model_file,size_bytes,n_params,backend,device,device_name,n_threads,n_batch,n_parallel,kv_policy,"
    "n_prompt,n_gen,n_depth,test,avg_ts,stddev_ts,kv_bytes,kv_peak_bytes,kv_reads_per_token,compression,gbps,"
    "roofline_gbps,roofline_pct,peer_ts,ratio,device_ts,date,commit,command";

void bench_print_header(FILE *f, bench_fmt fmt) {
    if (fmt == BENCH_MD) {
        fprintf(f, "| model | size | params | backend | threads | test | t/s | engine | kv policy | KV resident | "
                   "KV peak | KV reads/tok | CR | GB/s | %% roofline | peer t/s | ratio |\n");
        fprintf(f, "| ----- | ---: | -----: | ------- | ------: | ---: | --: | ------ | --------- | ----------: | "
                   "------: | -----------: | -: | ---: | ---------: | -------: | ----: |\n");
    } else if (fmt == BENCH_CSV) {
        fprintf(f, "%s\n", k_csv_cols);
    } else if (fmt == BENCH_JSON) {
        fprintf(f, "[\n");
    }
    fflush(f);
}

void bench_print_footer(FILE *f, bench_fmt fmt, bool any_rows) {
    if (fmt == BENCH_JSON) fprintf(f, "%s]\n", any_rows ? "\n" : "");
    fflush(f);
}

/* a number, or null when unknown (NAN or negative) */
static json_t *num_or_null(double v) { return isfinite(v) && v >= 0 ? json_real(v) : json_null(); }

void bench_print_json_row(FILE *f, const bench_row *r) {
    json_t *o = json_object();
    json_object_set_new(o, "engine", json_string(r->engine));
    json_object_set_new(o, "model", json_string(r->model));
    json_object_set_new(o, "model_file", json_string(r->model_file));
    json_object_set_new(o, "size_bytes", json_integer((json_int_t)r->model_bytes));
    json_object_set_new(o, "n_params", json_integer((json_int_t)r->n_params));
    json_object_set_new(o, "backend", json_string(r->backend));
    json_object_set_new(o, "device", json_integer(r->device));
    json_object_set_new(o, "device_name", json_string(r->device_name));
    json_object_set_new(o, "n_threads", json_integer(r->threads));
    json_object_set_new(o, "n_batch", json_integer(r->n_batch));
    json_object_set_new(o, "n_parallel", json_integer(r->parallel));
    json_object_set_new(o, "kv_policy", json_string(r->kv_policy));
    json_object_set_new(o, "n_prompt", json_integer(r->n_prompt));
    json_object_set_new(o, "n_gen", json_integer(r->n_gen));
    json_object_set_new(o, "n_depth", json_integer(r->depth));
    json_object_set_new(o, "test", json_string(r->test));
    json_object_set_new(o, "avg_ts", json_real(r->avg_ts));
    json_object_set_new(o, "stddev_ts", json_real(r->sd_ts));
    json_t *s = json_array();
    for (int i = 0; i < r->reps; i++) json_array_append_new(s, json_real(r->samples[i]));
    json_object_set_new(o, "samples_ts", s);
    json_object_set_new(o, "kv_bytes", num_or_null(r->kv_bytes));
    json_object_set_new(o, "kv_peak_bytes", num_or_null(r->kv_peak));
    json_object_set_new(o, "kv_reads_per_token", num_or_null(r->kv_reads_per_tok));
    json_object_set_new(o, "compression", num_or_null(r->compression));
    json_object_set_new(o, "gbps", num_or_null(r->gbps));
    json_object_set_new(o, "roofline_gbps", num_or_null(r->roofline_gbps));
    json_object_set_new(o, "roofline_pct", num_or_null(r->roofline_pct));
    json_object_set_new(o, "peer_ts", num_or_null(r->peer_ts));
    json_object_set_new(o, "ratio", num_or_null(r->ratio));
    json_object_set_new(o, "device_ts", num_or_null(r->device_ts));
    json_object_set_new(o, "date", json_string(r->date));
    json_object_set_new(o, "commit", json_string(r->commit));
    json_object_set_new(o, "command", json_string(r->command));
    /* 10 significant digits: exact enough, and readable */
    json_dumpf(o, f, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(o);
}

static void md_num(FILE *f, double v, const char *fmt) {
    fputs(" ", f);
    if (isfinite(v) && v >= 0) fprintf(f, fmt, v);
    fputs(" |", f);
}

static void md_bytes(FILE *f, double v) {
    char b[32] = "";
    if (isfinite(v) && v >= 0) bench_human_bytes(b, sizeof b, v);
    fprintf(f, " %s |", b);
}

/* quoted only when it must be (a comma, quote or line break), as RFC 4180 */
static void csv_str(FILE *f, const char *s) {
    if (!s[strcspn(s, ",\"\r\n")]) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void csv_num(FILE *f, double v) {
    if (isfinite(v) && v >= 0) fprintf(f, ",%.10g", v);
    else fputc(',', f);
}

/* md cells must not hold '|' or a newline */
static void md_cell(FILE *f, const char *s) {
    fputc(' ', f);
    for (; *s; s++) fputc(*s == '|' || *s == '\n' || *s == '\r' ? '_' : *s, f);
    fputs(" |", f);
}

void bench_print_row(FILE *f, bench_fmt fmt, const bench_row *r, bool first) {
    if (fmt == BENCH_MD) {
        char size[32];
        bench_human_bytes(size, sizeof size, (double)r->model_bytes);
        fputc('|', f);
        md_cell(f, r->model);
        fprintf(f, " %s | %.2f M |", size, r->n_params / 1e6);
        md_cell(f, r->backend);
        fprintf(f, " %d |", r->threads);
        md_cell(f, r->test);
        fprintf(f, " %.2f ± %.2f |", r->avg_ts, r->sd_ts);
        md_cell(f, r->engine);
        md_cell(f, r->kv_policy);
        md_bytes(f, r->kv_bytes);
        md_bytes(f, r->kv_peak);
        md_num(f, r->kv_reads_per_tok, "%.0f");
        md_num(f, r->compression, "%.2f");
        md_num(f, r->gbps, "%.2f");
        md_num(f, r->roofline_pct, "%.1f");
        md_num(f, r->peer_ts, "%.2f");
        md_num(f, r->ratio, "%.2f");
        fputc('\n', f);
    } else if (fmt == BENCH_CSV) {
        csv_str(f, r->engine); fputc(',', f);
        csv_str(f, r->model); fputc(',', f);
        csv_str(f, r->model_file);
        fprintf(f, ",%llu,%llu,", (unsigned long long)r->model_bytes, (unsigned long long)r->n_params);
        csv_str(f, r->backend);
        fprintf(f, ",%d,", r->device);
        csv_str(f, r->device_name);
        fprintf(f, ",%d,%d,%d,", r->threads, r->n_batch, r->parallel);
        csv_str(f, r->kv_policy);
        fprintf(f, ",%d,%d,%d,", r->n_prompt, r->n_gen, r->depth);
        csv_str(f, r->test);
        fprintf(f, ",%.10g,%.10g", r->avg_ts, r->sd_ts);
        csv_num(f, r->kv_bytes);
        csv_num(f, r->kv_peak);
        csv_num(f, r->kv_reads_per_tok);
        csv_num(f, r->compression);
        csv_num(f, r->gbps);
        csv_num(f, r->roofline_gbps);
        csv_num(f, r->roofline_pct);
        csv_num(f, r->peer_ts);
        csv_num(f, r->ratio);
        csv_num(f, r->device_ts);
        fputc(',', f); csv_str(f, r->date);
        fputc(',', f); csv_str(f, r->commit);
        fputc(',', f); csv_str(f, r->command);
        fputc('\n', f);
    } else if (fmt == BENCH_JSON) {
        fputs(first ? "  " : ",\n  ", f);
        bench_print_json_row(f, r);
    } else {
        bench_print_json_row(f, r);
        fputc('\n', f);
    }
    fflush(f);
}
