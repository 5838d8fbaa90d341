/* cmd_eval.c — `lethe eval`: what forgetting costs, per KV policy.
 *
 * Every policy of --policies runs on the same tokens as the reference
 * (policy none) in lock step, one context each:
 *   - text (-f FILE): over the second half of a -c window, the mean
 *     KL(p_none || p_policy) in nats per token, the share of positions where
 *     both pick the same greedy token, and the policy's own perplexity;
 *   - passkey (--passkey L,..): a 5-digit key hidden at 20 %, 50 % and 80 % of
 *     an L-token haystack, then "What is the pass key?": the share of greedy
 *     answers that repeat it.
 * Each row also reports the live tokens per head and the compression the
 * policy reached, so policies are compared at the memory they used
 * (baselines get --kv-budget; DMS keeps what its decisions keep).
 */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char k_eval_help[] =
    "Compare KV policies against keeping everything: KL divergence, greedy agreement and\n"
    "perplexity on a text (-f, scored over the second half of a -c window), and passkey\n"
    "retrieval at the given lengths (--passkey). Baselines use --kv-budget tokens per head;\n"
    "dms uses the model's decisions (or --dms-force-rate / --dms-adapter).\n"
    "example: lethe eval -f book.txt -c 2048 --passkey 1024,2048 --policies dms,window,tova --kv-budget 256";

typedef struct eval_run {
    lethe_kv_policy_kind kind;
    lethe_context *ctx;
    double kl, nll;              /* sums over scored positions */
    int64_t n, agree;
    double live, cr;             /* after the text */
    double reads;                /* slots read per head per token over the text */
    int pk_ok, pk_n;
    double pk_live;              /* mean live tokens per head at the question */
    bool failed;
    char why[160];
} eval_run;

/* log-softmax of n logits into out (double). */
static void log_softmax(const float *x, int32_t n, double *out) {
    double mx = -INFINITY, s = 0;
    for (int32_t i = 0; i < n; i++) mx = fmax(mx, x[i]);
    for (int32_t i = 0; i < n; i++) s += exp((double)x[i] - mx);
    const double lse = mx + log(s);
    for (int32_t i = 0; i < n; i++) out[i] = (double)x[i] - lse;
}

static int32_t argmax(const float *x, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static lethe_context *policy_context(lethe_model *m, const cli_opts *o, lethe_kv_policy_kind kind, int32_t n_ctx) {
    cli_opts po = *o;
    po.kv_policy = kind;
    if (kind != LETHE_KV_POLICY_DMS) po.dms_force_rate = -1.0f;   /* forced decisions are DMS-only */
    if (kind == LETHE_KV_POLICY_NONE || kind == LETHE_KV_POLICY_DMS) po.kv_budget = 0;
    return cli_new_context(m, &po, n_ctx);
}

/* Feed `toks` to every live run's context in calls of `chunk` tokens with all
 * logits; the reference (runs[0], policy none) first, then each policy,
 * scoring positions >= first. */
static bool run_text(lethe_model *m, eval_run *runs, int n_runs, const lethe_token *toks, int32_t n, int32_t first,
                     int32_t chunk) {
    const int32_t V = lethe_n_vocab(m);
    double *lref = malloc(sizeof(double) * (size_t)chunk * V), *lq = malloc(sizeof(double) * V);
    int32_t *ref_arg = malloc(sizeof(int32_t) * (size_t)chunk);
    int8_t *want = malloc((size_t)chunk);
    if (!lref || !lq || !ref_arg || !want) {
        free(lref); free(lq); free(ref_arg); free(want);
        cli_error("out of memory");
        return false;
    }
    memset(want, 1, (size_t)chunk);
    for (int32_t i0 = 0; i0 < n; i0 += chunk) {
        const int32_t nb = n - i0 < chunk ? n - i0 : chunk;
        for (int r = 0; r < n_runs; r++) {
            eval_run *e = &runs[r];
            if (e->failed) continue;
            lethe_batch b = lethe_batch_one(toks + i0, nb);
            b.logits = want;
            lethe_status st = lethe_decode(e->ctx, b);
            if (st != LETHE_OK) {
                e->failed = true;
                snprintf(e->why, sizeof e->why, "%s (%s)", lethe_strerror(st), lethe_last_error());
                if (r == 0) break;
                continue;
            }
            for (int32_t j = 0; j < nb; j++) {
                const int32_t pos = i0 + j;
                if (pos < first || pos + 1 >= n) continue;   /* the last position has no target */
                const float *row = lethe_get_logits(e->ctx, j);
                if (r == 0) {
                    log_softmax(row, V, lref + (size_t)j * V);
                    ref_arg[j] = argmax(row, V);
                    e->nll -= lref[(size_t)j * V + toks[pos + 1]];
                    e->agree++;
                    e->n++;
                    continue;
                }
                log_softmax(row, V, lq);
                const double *lr = lref + (size_t)j * V;
                double kl = 0;
                for (int32_t v = 0; v < V; v++) kl += exp(lr[v]) * (lr[v] - lq[v]);
                e->kl += kl;
                e->nll -= lq[toks[pos + 1]];
                e->agree += argmax(row, V) == ref_arg[j];
                e->n++;
            }
        }
        if (runs[0].failed) break;
    }
    const lethe_model_info mi = lethe_model_get_info(m);
    for (int r = 0; r < n_runs; r++) {
        lethe_kv_stats ks = lethe_get_kv_stats(runs[r].ctx);
        runs[r].live = ks.mean_live_slots;
        runs[r].cr = ks.compression_ratio;
        runs[r].reads = (double)ks.reads / ((double)n * mi.n_layer * mi.n_head_kv);
    }
    free(lref); free(lq); free(ref_arg); free(want);
    return !runs[0].failed;
}

static const char *const k_filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";

/* The haystack prompt of about `len` tokens with `key` at fraction `depth`. */
static char *passkey_prompt(const lethe_model *m, int32_t len, double depth, int key) {
    int32_t f = lethe_tokenize(m, k_filler, strlen(k_filler), NULL, 0, false, false);
    if (f < 0) f = -f;   /* the needed size */
    if (f < 1) f = 1;
    const int32_t n_sent = (len - 60) / f > 1 ? (len - 60) / f : 1;
    const int32_t at = (int32_t)(depth * n_sent);
    char needle[96];
    snprintf(needle, sizeof needle, "The pass key is %05d. Remember it. %05d is the pass key. ", key, key);
    static const char head[] = "There is important information hidden in a lot of irrelevant text. Find it and memorize it. ";
    static const char tail[] = "What is the pass key? The pass key is";
    const size_t cap = sizeof head + (size_t)n_sent * strlen(k_filler) + sizeof needle + sizeof tail;
    char *p = malloc(cap), *w = p;
    if (!p) return NULL;
    w += sprintf(w, "%s", head);
    for (int32_t s = 0; s < n_sent; s++) {
        if (s == at) w += sprintf(w, "%s", needle);
        w += sprintf(w, "%s", k_filler);
    }
    sprintf(w, "%s", tail);
    return p;
}

/* Greedy continuation of 8 tokens; true if it starts with the key. */
static bool passkey_trial(lethe_model *m, eval_run *e, const lethe_token *toks, int32_t n, int key, int32_t n_batch) {
    lethe_seq_clear(e->ctx, 0);
    lethe_status st = cli_decode_chunks(e->ctx, toks, n, 0, n_batch);
    if (st != LETHE_OK) {
        e->failed = true;
        snprintf(e->why, sizeof e->why, "%s (%s)", lethe_strerror(st), lethe_last_error());
        return false;
    }
    e->pk_live += lethe_get_kv_stats(e->ctx).mean_live_slots;
    char out[128] = "";
    size_t len = 0;
    for (int i = 0; i < 8; i++) {
        lethe_token t = argmax(lethe_get_logits(e->ctx, -1), lethe_n_vocab(m));
        if (lethe_token_is_eog(m, t)) break;
        char piece[64];
        int32_t k = lethe_token_to_piece(m, t, piece, sizeof piece, false);
        if (k > 0 && len + (size_t)k < sizeof out) {
            memcpy(out + len, piece, (size_t)k);
            len += (size_t)k;
            out[len] = 0;
        }
        if (lethe_decode(e->ctx, lethe_batch_one(&t, 1)) != LETHE_OK) break;
    }
    const char *d = out;
    while (*d == ' ') d++;
    char want[8];
    snprintf(want, sizeof want, "%05d", key);
    return strncmp(d, want, 5) == 0;
}

int cli_cmd_eval(int argc, char **argv) {
    cli_opts o;
    int rc = cli_parse(CLI_EVAL, "eval", argc, argv, &o);
    if (rc) return rc;
    if (o.help) {
        cli_print_help(CLI_EVAL, "eval", k_eval_help);
        return 0;
    }
    const bool json = o.output && !strcmp(o.output, "json");
    if (o.output && !json && strcmp(o.output, "md"))
        return cli_error("invalid value '%s' for -o: expected md or json", o.output), CLI_EXIT_USAGE;
    int32_t *pk_len = NULL;
    int n_pk = 0;
    if (o.passkey && !cli_parse_i32_list("--passkey", o.passkey, 64, 1 << 20, &pk_len, &n_pk)) return CLI_EXIT_USAGE;
    if (!o.file && !n_pk) {
        free(pk_len);
        return cli_error("nothing to evaluate: give a text with -f and/or passkey lengths with --passkey"),
               CLI_EXIT_USAGE;
    }
    /* the policies: none first (the reference), then the others, once each */
    eval_run runs[8] = {0};
    int n_runs = 1;
    runs[0].kind = LETHE_KV_POLICY_NONE;
    {
        char *list = strdup(o.policies ? o.policies : "dms,window,tova,h2o");
        for (char *save = NULL, *tok = list ? strtok_r(list, ",", &save) : NULL; tok; tok = strtok_r(NULL, ",", &save)) {
            lethe_kv_policy_kind k;
            if (lethe_kv_policy_parse(tok, &k) != LETHE_OK || k == LETHE_KV_POLICY_AUTO) {
                cli_error("invalid policy '%s' in --policies (dms, window, tova, h2o, quest, none)", tok);
                free(list);
                free(pk_len);
                return CLI_EXIT_USAGE;
            }
            bool dup = false;
            for (int r = 0; r < n_runs; r++) dup = dup || runs[r].kind == k;
            if (!dup && n_runs < 8) runs[n_runs++].kind = k;
        }
        free(list);
    }

    rc = CLI_EXIT_FAIL;
    lethe_model *m = cli_load_model(&o, false);
    lethe_token *toks = NULL;
    char *text = NULL;
    if (!m) goto done;
    int32_t n_ctx = o.n_ctx_set ? o.n_ctx : 1024;
    for (int i = 0; i < n_pk; i++) n_ctx = pk_len[i] + 64 > n_ctx ? pk_len[i] + 64 : n_ctx;
    for (int r = 0; r < n_runs; r++) {
        runs[r].ctx = policy_context(m, &o, runs[r].kind, n_ctx);
        if (!runs[r].ctx) goto done;
    }
    const int32_t chunk = o.n_batch < 64 ? o.n_batch : 64;   /* [chunk, V] reference log-probs held at once */

    int32_t n_text = 0;
    if (o.file) {
        size_t len = 0;
        text = cli_read_file(o.file, &len);
        if (!text) goto done;
        toks = cli_tokenize(m, text, len, true, false, &n_text);
        if (!toks) goto done;
        const int32_t win = o.n_ctx_set ? o.n_ctx : 1024;
        if (n_text < 16) {
            cli_error("'%s' has only %d tokens: too short to evaluate", o.file, n_text);
            goto done;
        }
        if (n_text > win) n_text = win;
        if (!run_text(m, runs, n_runs, toks, n_text, n_text / 2, chunk)) {
            cli_error("the reference run failed: %s", runs[0].why);
            goto done;
        }
    }
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ (o.sp.seed == LETHE_SEED_RANDOM ? 1 : o.sp.seed);
    static const double depths[] = {0.2, 0.5, 0.8};
    for (int li = 0; li < n_pk; li++)
        for (int di = 0; di < 3; di++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            const int key = (int)((rng >> 33) % 90000) + 10000;
            char *p = passkey_prompt(m, pk_len[li], depths[di], key);
            int32_t np = 0;
            lethe_token *pt = p ? cli_tokenize(m, p, strlen(p), true, false, &np) : NULL;
            free(p);
            if (!pt) goto done;
            for (int r = 0; r < n_runs; r++) {
                if (runs[r].failed) continue;
                runs[r].pk_ok += passkey_trial(m, &runs[r], pt, np, key, o.n_batch);
                runs[r].pk_n++;
            }
            free(pt);
        }

    if (json) printf("[\n");
    else {
        printf("| policy | budget | live/head | CR | reads/head/tok | KL nats/tok | greedy agree | ppl | passkey |\n");
        printf("| ------ | -----: | --------: | -: | -------------: | ----------: | -----------: | --: | ------: |\n");
    }
    for (int r = 0; r < n_runs; r++) {
        const eval_run *e = &runs[r];
        char budget[32] = "-", kl[32] = "-", agree[32] = "-", ppl[32] = "-", pk[32] = "-", live[32] = "-", cr[32] = "-";
        char reads[32] = "-";
        if (e->kind != LETHE_KV_POLICY_NONE && e->kind != LETHE_KV_POLICY_DMS) snprintf(budget, sizeof budget, "%d", o.kv_budget);
        if (e->n > 0) {
            snprintf(kl, sizeof kl, "%.4f", e->kl / (double)e->n);
            snprintf(agree, sizeof agree, "%.1f %%", 100.0 * (double)e->agree / (double)e->n);
            snprintf(ppl, sizeof ppl, "%.3f", exp(e->nll / (double)e->n));
            snprintf(live, sizeof live, "%.1f", e->live);
            snprintf(cr, sizeof cr, "%.2f", e->cr);
            snprintf(reads, sizeof reads, "%.1f", e->reads);
        }
        if (e->pk_n > 0) {
            snprintf(pk, sizeof pk, "%d/%d", e->pk_ok, e->pk_n);
            if (e->n == 0) snprintf(live, sizeof live, "%.1f", e->pk_live / e->pk_n);
        }
        const char *name = lethe_kv_policy_name(e->kind);
        if (json)
            printf("%s  {\"policy\": \"%s\", \"budget\": %d, \"live_per_head\": %s, \"compression\": %s, "
                   "\"reads_per_head_per_token\": %s, \"kl\": %s, "
                   "\"greedy_agree\": %s, \"perplexity\": %s, \"passkey_ok\": %d, \"passkey_n\": %d%s%s%s}",
                   r ? ",\n" : "", name, strcmp(budget, "-") ? o.kv_budget : 0, strcmp(live, "-") ? live : "null",
                   strcmp(cr, "-") ? cr : "null", strcmp(reads, "-") ? reads : "null", e->n ? kl : "null",
                   e->n ? (snprintf(agree, sizeof agree, "%.4f", (double)e->agree / (double)e->n), agree) : "null",
                   e->n ? ppl : "null", e->pk_ok, e->pk_n, e->failed ? ", \"error\": \"" : "", e->failed ? "failed" : "",
                   e->failed ? "\"" : "");
        else
            printf("| %s%s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name, e->failed ? " (failed)" : "", budget, live,
                   cr, reads, kl, agree, ppl, pk);
        if (e->failed) cli_warn("policy %s failed: %s", name, e->why);
    }
    if (json) printf("\n]\n");
    fflush(stdout);
    rc = 0;
done:
    for (int r = 0; r < n_runs; r++) lethe_context_free(runs[r].ctx);
    lethe_model_free(m);
    free(toks);
    free(text);
    free(pk_len);
    return rc;
}
