/* bench_roofline.c — `lethe bench --roofline`: measure each device's memory
 * bandwidth (lethe_measure_bandwidth: a streaming read on the CPU, a
 * device-to-device copy on a GPU) and cache it, one small JSON file per
 * device under ${LETHE_CACHE:-~/.cache/lethe}/roofline/, so every later
 * bench row can say how close decoding came to the physical limit.
 * A device is named by backend, index and model name, so swapping a GPU or
 * moving the cache to another machine never reuses a stale number. */
#include "bench.h"
#include "cli.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static void cache_dir(char *out, size_t cap) {
    const char *cache = getenv("LETHE_CACHE");
    const char *home = getenv("HOME");
    if (cache && *cache) snprintf(out, cap, "%s/roofline", cache);
    else snprintf(out, cap, "%s/.cache/lethe/roofline", home && *home ? home : ".");
}

void bench_roofline_path(char *out, size_t cap, const char *backend, int32_t device, const char *device_name) {
    char dir[3072], slug[128];
    cache_dir(dir, sizeof dir);
    size_t k = 0;
    for (const char *c = device_name; *c && k + 1 < sizeof slug; c++) {
        char ch = *c;
        bool keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.';
        if (keep) slug[k++] = ch;
        else if (k > 0 && slug[k - 1] != '_') slug[k++] = '_';
    }
    while (k > 0 && slug[k - 1] == '_') k--;
    slug[k] = '\0';
    snprintf(out, cap, "%s/%s-%d-%s.json", dir, backend, device, k ? slug : "device");
}

double bench_roofline_cached(const char *backend, int32_t device, const char *device_name) {
    char path[4096];
    bench_roofline_path(path, sizeof path, backend, device, device_name);
    json_error_t err;
    json_t *o = json_load_file(path, 0, &err);
    if (!o) return NAN;
    json_t *g = json_object_get(o, "gbps");
    double v = json_is_number(g) ? json_number_value(g) : NAN;
    json_decref(o);
    return isfinite(v) && v > 0 ? v : NAN;
}

bool bench_roofline_measure(const char *backend, int32_t device, int32_t threads, int reps, bench_fmt fmt, FILE *out,
                            bool first) {
    lethe_bandwidth bw;
    lethe_status st = lethe_measure_bandwidth(backend, device, threads, 0, reps, &bw);
    if (st != LETHE_OK) {
        char what[96];
        snprintf(what, sizeof what, "roofline of %s device %d not measured", backend, device);
        cli_error_status(st, what);
        return false;
    }
    char path[4096], dir[3072], date[32];
    bench_roofline_path(path, sizeof path, backend, device, bw.device_name);
    cache_dir(dir, sizeof dir);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    json_t *o = json_object();
    json_object_set_new(o, "backend", json_string(backend));
    json_object_set_new(o, "device", json_integer(device));
    json_object_set_new(o, "device_name", json_string(bw.device_name));
    json_object_set_new(o, "method", json_string(bw.method));
    json_object_set_new(o, "gbps", json_real(bw.gbps));
    json_object_set_new(o, "bytes", json_integer((json_int_t)bw.bytes));
    json_object_set_new(o, "seconds", json_real(bw.seconds));
    json_object_set_new(o, "n_threads", json_integer(bw.n_threads));
    json_object_set_new(o, "repetitions", json_integer(reps));
    json_object_set_new(o, "date", json_string(date));
    json_object_set_new(o, "cache_file", json_string(path));
    bool saved = bench_mkdir_p(dir) && json_dump_file(o, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0;
    if (!saved) cli_warn("cannot write the roofline cache '%s': %s", path, strerror(errno));
    if (fmt == BENCH_MD) {
        if (first) {
            fprintf(out, "| backend | device | device name | method | threads | GB/s | cached in |\n");
            fprintf(out, "| ------- | -----: | ----------- | ------ | ------: | ---: | --------- |\n");
        }
        fprintf(out, "| %s | %d | %s | %s | %d | %.2f | %s |\n", backend, device, bw.device_name, bw.method,
                bw.n_threads, bw.gbps, saved ? path : "(not cached)");
    } else {
        json_dumpf(o, out, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
        fputc('\n', out);
    }
    fflush(out);
    json_decref(o);
    return true;
}
