/* bench_sweep.c — `lethe bench` sweeps: every flag takes a comma list, and
 * the rows are the cross product in a fixed order (bench.h), llama-bench
 * style. Axes that a KV policy ignores are not multiplied, so
 * `--kv-policy none,window --kv-budget 512,1024` gives 3 configurations,
 * not 4 (none has no budget). */
#include "bench.h"
#include "cli.h"

#include <stdlib.h>
#include <string.h>

/* "a,b,c" → malloc'ed strings; empty items are errors. */
static bool split_str(const char *flag, const char *s, char ***out, int *n_out) {
    int n = 1;
    for (const char *c = s; *c; c++) n += *c == ',';
    char **v = calloc((size_t)n, sizeof *v);
    if (!v) return cli_error("out of memory"), false;
    const char *p = s;
    for (int k = 0; k < n; k++) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0) {
            cli_error("invalid value '%s' for %s: empty item in the list", s, flag);
            for (int j = 0; j < k; j++) free(v[j]);
            free(v);
            return false;
        }
        v[k] = strndup(p, len);
        if (!v[k]) {
            for (int j = 0; j < k; j++) free(v[j]);
            free(v);
            return cli_error("out of memory"), false;
        }
        p = comma ? comma + 1 : p + len;
    }
    *out = v;
    *n_out = n;
    return true;
}

static void free_strs(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

static bool parse_f32_list(const char *flag, const char *s, float lo, float hi, float **out, int *n_out) {
    char **items = NULL;
    int n = 0;
    if (!split_str(flag, s, &items, &n)) return false;
    float *v = malloc((size_t)n * sizeof *v);
    bool ok = v != NULL;
    if (!ok) cli_error("out of memory");
    for (int i = 0; ok && i < n; i++) ok = cli_parse_f32(flag, items[i], lo, hi, &v[i]);
    free_strs(items, n);
    if (!ok) {
        free(v);
        return false;
    }
    *out = v;
    *n_out = n;
    return true;
}

static bool uses_budget(lethe_kv_policy_kind p) {
    return p == LETHE_KV_POLICY_WINDOW || p == LETHE_KV_POLICY_TOVA || p == LETHE_KV_POLICY_H2O ||
           p == LETHE_KV_POLICY_QUEST;
}
static bool uses_dms(lethe_kv_policy_kind p) { return p == LETHE_KV_POLICY_DMS || p == LETHE_KV_POLICY_AUTO; }

void bench_sweep_free(bench_sweep *s) {
    free_strs(s->models, s->n_models);
    free_strs(s->backends, s->n_backends);
    free(s->devices);
    free(s->threads);
    free(s->prompts);
    free(s->gens);
    free(s->depths);
    free(s->parallel);
    free(s->policies);
    free(s->budgets);
    free(s->windows);
    free(s->force);
    free(s->points);
    memset(s, 0, sizeof *s);
}

bool bench_sweep_build(const bench_sweep_args *a, bench_sweep *s) {
    memset(s, 0, sizeof *s);
    bool ok = split_str("-m", a->models ? a->models : a->default_model, &s->models, &s->n_models) &&
              split_str("--backend", a->backends ? a->backends : "cpu", &s->backends, &s->n_backends);
    for (int i = 0; ok && i < s->n_backends; i++) {
        const char *b = s->backends[i];
        if (strcmp(b, "cpu") && strcmp(b, "vulkan") && strcmp(b, "cuda") && strcmp(b, "auto")) {
            cli_error("invalid value '%s' for --backend: expected cpu, vulkan, cuda or auto (comma list)", b);
            ok = false;
        }
    }
    ok = ok && cli_parse_i32_list("--device", a->devices ? a->devices : "0", 0, 1024, &s->devices, &s->n_devices);
    ok = ok && cli_parse_i32_list("-t", a->threads ? a->threads : "0", 0, 1024, &s->threads, &s->n_threads);
    ok = ok && cli_parse_i32_list("-p", a->prompts ? a->prompts : "512", 0, 1 << 24, &s->prompts, &s->n_prompts);
    ok = ok && cli_parse_i32_list("-n", a->gens ? a->gens : "128", 0, 1 << 24, &s->gens, &s->n_gens);
    ok = ok && cli_parse_i32_list("-d", a->depths ? a->depths : "0", 0, 1 << 24, &s->depths, &s->n_depths);
    ok = ok && cli_parse_i32_list("--parallel", a->parallel ? a->parallel : "1", 1, 4096, &s->parallel, &s->n_parallel);
    ok = ok && cli_parse_i32_list("--kv-budget", a->kv_budgets ? a->kv_budgets : "0", 0, 1 << 24, &s->budgets,
                                  &s->n_budgets);
    ok = ok && cli_parse_i32_list("--dms-window", a->dms_windows ? a->dms_windows : "-1", -1, 1 << 24, &s->windows,
                                  &s->n_windows);
    ok = ok && parse_f32_list("--dms-force-rate", a->dms_force ? a->dms_force : "-1", a->dms_force ? 0.0f : -1.0f, 1.0f, &s->force,
                              &s->n_force);
    if (ok) {
        char **names = NULL;
        int n = 0;
        ok = split_str("--kv-policy", a->kv_policies ? a->kv_policies : "auto", &names, &n);
        if (ok) {
            s->policies = malloc((size_t)n * sizeof *s->policies);
            if (!s->policies) ok = false, cli_error("out of memory");
            for (int i = 0; ok && i < n; i++) {
                if (lethe_kv_policy_parse(names[i], &s->policies[i]) != LETHE_OK) {
                    cli_error("invalid value '%s' for --kv-policy: expected dms, none, window, tova, h2o, quest or "
                              "auto (comma list)", names[i]);
                    ok = false;
                }
            }
            s->n_policies = n;
            free_strs(names, n);
        }
    }
    /* a budget of 0 means "unset" in a list only as the default; -1 likewise for windows */
    for (int i = 0; ok && a->kv_budgets && i < s->n_budgets; i++)
        if (s->budgets[i] < 1) ok = false, cli_error("invalid value '%d' for --kv-budget: expected at least 1", s->budgets[i]);
    for (int i = 0; ok && a->dms_windows && i < s->n_windows; i++)
        if (s->windows[i] < 0) ok = false, cli_error("invalid value '%d' for --dms-window: expected at least 0", s->windows[i]);
    for (int i = 0; ok && a->dms_force && i < s->n_force; i++)
        if (s->force[i] < 0) ok = false, cli_error("invalid value '%g' for --dms-force-rate: expected a number in [0, 1]", (double)s->force[i]);
    if (!ok) {
        bench_sweep_free(s);
        return false;
    }

    /* count, then fill: two passes over the same loops */
    for (int pass = 0; pass < 2; pass++) {
        size_t k = 0;
        for (int mi = 0; mi < s->n_models; mi++)
        for (int bi = 0; bi < s->n_backends; bi++)
        for (int di = 0; di < s->n_devices; di++)
        for (int ti = 0; ti < s->n_threads; ti++)
        for (int pi = 0; pi < s->n_policies; pi++)
        for (int ki = 0; ki < s->n_budgets; ki++)
        for (int wi = 0; wi < s->n_windows; wi++)
        for (int fi = 0; fi < s->n_force; fi++)
        for (int qi = 0; qi < s->n_parallel; qi++)
        for (int kind = 0; kind < 2; kind++) {
            const lethe_kv_policy_kind pol = s->policies[pi];
            if ((ki > 0 && !uses_budget(pol)) || ((wi > 0 || fi > 0) && !uses_dms(pol))) continue;
            const int32_t *sizes = kind == 0 ? s->prompts : s->gens;
            const int n_sizes = kind == 0 ? s->n_prompts : s->n_gens;
            for (int zi = 0; zi < n_sizes; zi++) {
                if (sizes[zi] == 0) continue;
                for (int ei = 0; ei < s->n_depths; ei++, k++) {
                    if (pass == 0) continue;
                    s->points[k] = (bench_point){
                        .model = s->models[mi], .backend = s->backends[bi], .device = s->devices[di],
                        .threads = s->threads[ti], .kv_policy = pol,
                        .kv_budget = uses_budget(pol) ? s->budgets[ki] : 0,
                        .dms_window = uses_dms(pol) ? s->windows[wi] : -1,
                        .dms_force = uses_dms(pol) ? s->force[fi] : -1.0f,
                        .parallel = s->parallel[qi],
                        .n_prompt = kind == 0 ? sizes[zi] : 0, .n_gen = kind == 1 ? sizes[zi] : 0,
                        .depth = s->depths[ei],
                    };
                }
            }
        }
        if (pass == 0) {
            s->n_points = k;
            if (k == 0) {
                cli_error("nothing to measure: every -p and -n size is 0");
                bench_sweep_free(s);
                return false;
            }
            s->points = calloc(k, sizeof *s->points);
            if (!s->points) {
                cli_error("out of memory");
                bench_sweep_free(s);
                return false;
            }
        }
    }
    return true;
}
