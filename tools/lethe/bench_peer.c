/* bench_peer.c — `lethe bench --peer llama.cpp=PATH`: llama-bench on the
 * same model file, threads, batch size, sizes, depths and repetitions, in
 * the same invocation, so the ratio column compares runs taken minutes
 * apart on the same machine (shared machines drift more than that between
 * sessions). llama-bench writes `-o jsonl` rows on stdout; its stderr goes
 * to a temporary file whose last line explains a failure in one line. The
 * peer is built by tools/peer/build-llama-cpp.sh, never committed. */
#include "bench.h"
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

bool bench_peer_parse(const char *spec, char *name, size_t name_cap, char *path, size_t path_cap) {
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || !eq[1]) {
        cli_error("invalid value '%s' for --peer: expected llama.cpp=PATH (llama-bench or its folder)", spec);
        return false;
    }
    snprintf(name, name_cap, "%.*s", (int)(eq - spec), spec);
    if (strcmp(name, "llama.cpp") != 0) {
        cli_error("unknown peer '%s' in --peer %s: the peer this build knows is llama.cpp", name, spec);
        return false;
    }
    struct stat sb;
    if (stat(eq + 1, &sb) == 0 && S_ISDIR(sb.st_mode)) snprintf(path, path_cap, "%s/llama-bench", eq + 1);
    else snprintf(path, path_cap, "%s", eq + 1);
    return true;
}

void bench_peer_free(bench_peer_result *r) {
    free(r->rows);
    r->rows = NULL;
    r->n_rows = 0;
}

static const char *jstr(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : "";
}
static double jnum(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

bool bench_peer_parse_jsonl(const char *name, const char *text, bench_peer_result *out) {
    out->rows = NULL;
    out->n_rows = 0;
    for (const char *line = text; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        if (len > 0 && line[0] == '{') {
            json_error_t err;
            json_t *o = json_loadb(line, len, 0, &err);
            if (!o) {
                cli_error("peer %s: cannot parse its output line: %s", name, err.text);
                bench_peer_free(out);
                return false;
            }
            bench_row *nr = realloc(out->rows, (size_t)(out->n_rows + 1) * sizeof *nr);
            if (!nr) {
                json_decref(o);
                bench_peer_free(out);
                return cli_error("out of memory"), false;
            }
            out->rows = nr;
            bench_row *r = &out->rows[out->n_rows++];
            memset(r, 0, sizeof *r);
            snprintf(r->engine, sizeof r->engine, "%s", name);
            snprintf(r->model, sizeof r->model, "%s", jstr(o, "model_type"));
            snprintf(r->model_file, sizeof r->model_file, "%s", jstr(o, "model_filename"));
            r->model_bytes = (uint64_t)jnum(o, "model_size");
            r->n_params = (uint64_t)jnum(o, "model_n_params");
            snprintf(r->backend, sizeof r->backend, "%s", jstr(o, "backends"));
            const char *gpu = jstr(o, "gpu_info");
            snprintf(r->device_name, sizeof r->device_name, "%s", *gpu ? gpu : jstr(o, "cpu_info"));
            r->threads = (int32_t)jnum(o, "n_threads");
            r->n_batch = (int32_t)jnum(o, "n_batch");
            r->parallel = 1;
            snprintf(r->kv_policy, sizeof r->kv_policy, "none");
            r->n_prompt = (int32_t)jnum(o, "n_prompt");
            r->n_gen = (int32_t)jnum(o, "n_gen");
            double d = jnum(o, "n_depth");
            r->depth = isfinite(d) ? (int32_t)d : 0;
            bench_test_name(r->test, sizeof r->test, r->n_prompt, r->n_gen, r->depth, 1);
            r->avg_ts = jnum(o, "avg_ts");
            r->sd_ts = jnum(o, "stddev_ts");
            json_t *s = json_object_get(o, "samples_ts");
            size_t i;
            json_t *v;
            json_array_foreach(s, i, v) {
                if (r->reps < BENCH_MAX_REPS && json_is_number(v)) r->samples[r->reps++] = json_number_value(v);
            }
            r->kv_bytes = r->kv_peak = r->kv_reads_per_tok = r->compression = NAN;
            r->gbps = r->roofline_gbps = r->roofline_pct = r->peer_ts = r->ratio = NAN;
            r->device_busy_pct = r->device_gbps = NAN;
            snprintf(r->date, sizeof r->date, "%s", jstr(o, "test_time"));
            snprintf(r->commit, sizeof r->commit, "%s %s", name, jstr(o, "build_commit"));
            json_decref(o);
            if (!isfinite(r->avg_ts)) {
                bench_peer_free(out);
                return cli_error("peer %s: a row without avg_ts", name), false;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    return true;
}

/* "512,1024"; an empty list is "0", which llama-bench reads as "no such
 * test" (an empty -p would give its default, 512) */
static void join_list(char *out, size_t cap, const int32_t *v, int n) {
    size_t k = 0;
    snprintf(out, cap, "%s", n > 0 ? "" : "0");
    for (int i = 0; i < n && k + 12 < cap; i++) k += (size_t)snprintf(out + k, cap - k, "%s%d", i ? "," : "", v[i]);
}

/* The last non-empty line of a file, for a one-line failure message. */
void bench_last_line(const char *path, char *out, size_t cap) {
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0]) snprintf(out, cap, "%.*s", (int)(cap - 1), line);
    }
    fclose(f);
}

bool bench_peer_run(const char *name, const char *path, const char *model, const char *backend, int32_t threads,
                    int32_t n_batch, const int32_t *pp, int n_pp, const int32_t *tg, int n_tg, const int32_t *dd,
                    int n_dd, int reps, bench_peer_result *out) {
    out->rows = NULL;
    out->n_rows = 0;
    if (access(path, X_OK) != 0) {
        cli_error("peer %s did not run: '%s' is not an executable llama-bench (%s); build it with "
                  "tools/peer/build-llama-cpp.sh", name, path, strerror(errno));
        return false;
    }
    char s_pp[256], s_tg[256], s_dd[256], s_t[16], s_b[16], s_r[16];
    join_list(s_pp, sizeof s_pp, pp, n_pp);
    join_list(s_tg, sizeof s_tg, tg, n_tg);
    join_list(s_dd, sizeof s_dd, dd, n_dd);
    snprintf(s_t, sizeof s_t, "%d", threads > 0 ? threads : (int)sysconf(_SC_NPROCESSORS_ONLN));
    snprintf(s_b, sizeof s_b, "%d", n_batch);
    snprintf(s_r, sizeof s_r, "%d", reps);
    /* a GPU row asks the peer to offload every layer; a CPU row none */
    const char *ngl = strcmp(backend, "cpu") == 0 ? "0" : "99";
    char *argv[] = {(char *)path, "-m", (char *)model, "-t", s_t, "-b", s_b, "-p", s_pp, "-n", s_tg, "-d", s_dd,
                    "-r", s_r, "-ngl", (char *)ngl, "-o", "jsonl", NULL};

    char errpath[] = "/tmp/lethe-peer-XXXXXX";
    int errfd = mkstemp(errpath);
    int pipefd[2] = {-1, -1};
    if (errfd < 0 || pipe(pipefd) != 0) {
        if (errfd >= 0) close(errfd), unlink(errpath);
        return cli_error("peer %s did not run: %s", name, strerror(errno)), false;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, errfd, STDERR_FILENO);
    posix_spawn_file_actions_addclose(&fa, pipefd[0]);
    pid_t pid;
    int sp = posix_spawn(&pid, path, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pipefd[1]);
    close(errfd);
    if (sp != 0) {
        close(pipefd[0]);
        unlink(errpath);
        return cli_error("peer %s did not run: cannot start '%s': %s", name, path, strerror(sp)), false;
    }
    size_t cap = 1 << 14, len = 0;
    char *text = malloc(cap);
    for (;;) {
        if (text && len + 1 >= cap) {
            char *nt = realloc(text, cap * 2);
            if (!nt) { free(text); text = NULL; }
            else { text = nt; cap *= 2; }
        }
        char sink[4096];
        ssize_t got = text ? read(pipefd[0], text + len, cap - len - 1) : read(pipefd[0], sink, sizeof sink);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        if (text) len += (size_t)got;
    }
    close(pipefd[0]);
    int wst = 0;
    while (waitpid(pid, &wst, 0) < 0 && errno == EINTR) {}
    char why[512];
    bench_last_line(errpath, why, sizeof why);
    unlink(errpath);
    if (!text) return cli_error("out of memory reading the peer's output"), false;
    text[len] = '\0';
    bool ok = true;
    if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0) {
        if (WIFSIGNALED(wst))
            cli_error("peer %s did not run: '%s' was killed by signal %d%s%s", name, path, WTERMSIG(wst),
                      why[0] ? ": " : "", why);
        else
            cli_error("peer %s did not run: '%s' exited with status %d%s%s", name, path, WEXITSTATUS(wst),
                      why[0] ? ": " : "", why);
        ok = false;
    } else if (!bench_peer_parse_jsonl(name, text, out)) {
        ok = false;
    } else if (out->n_rows == 0) {
        cli_error("peer %s printed no result rows%s%s", name, why[0] ? ": " : "", why);
        ok = false;
    }
    free(text);
    return ok;
}
