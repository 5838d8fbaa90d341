/* cmd_eval.c — `lethe eval`: what forgetting costs, per KV policy.
 *
 * Every policy of --policies runs on the same tokens as the reference
 * (policy none) in lock step, one context each:
 *   - text (-f FILE): over the second half of a -c window, the mean
 *     KL(p_none || p_policy) in nats per token, the share of positions where
 *     both pick the same greedy token, and the policy's own perplexity;
 *   - passkey (--passkey L,..): a 5-digit key hidden at --depths (20 %, 50 %,
 *     80 %) of an L-token haystack, then "What is the pass key?": the share
 *     of greedy answers that repeat it, per length and per depth;
 *   - variable tracking (--vartrack L,..): RULER's chain VAR A = 12345.
 *     VAR B = A. ... (4 hops) and a distractor chain with another value,
 *     spread through an L-token haystack; the greedy answer must name the
 *     variables that hold the value (recall of the chain's names, and exact
 *     answers: all of them, none of the distractor's);
 *   - arithmetic (--arith N): N generated word problems, 8-shot, greedy; the
 *     number on the answer's first line must be the key;
 *   - hyper-scaling (--hyper N, eval_hyper.c): each of N problems sampled
 *     --parallel times in one --kv-mem pool, as many sequences as the pool
 *     admits; majority vote and pass@N.
 * The generators and scorers live in eval_tasks.c (no model there).
 * Each row also reports the live tokens per head and the KV bytes the
 * policy held, so policies are compared at the memory they used
 * (baselines get --kv-budget; DMS keeps what its decisions keep).
 */
#include "cli.h"
#include "eval.h"
#include "eval_tasks.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char k_eval_help[] =
    "Compare KV policies against keeping everything: KL divergence, greedy agreement and\n"
    "perplexity on a text (-f, scored over the second half of a -c window); passkey retrieval\n"
    "(--passkey) and variable tracking (--vartrack) at the given prompt lengths; generated\n"
    "arithmetic word problems (--arith); best-of-N under a fixed KV pool (--hyper with\n"
    "--parallel and --kv-mem). Baselines use --kv-budget tokens per head (--kv-budget match:\n"
    "the live tokens dms held at the same question, equal memory); dms uses the model's\n"
    "decisions (or --dms-force-rate / --dms-adapter). --kv-mem applies to --hyper only.\n"
    "example: lethe eval -f book.txt -c 2048 --passkey 1024,4096 --vartrack 2048 --arith 50 \\\n"
    "           --policies dms,window,tova --kv-budget 256 --dms-adapter models/dms/X.safetensors";

/* log-softmax of n logits into out (double). */
static void log_softmax(const float *x, int32_t n, double *out) {
    double mx = -INFINITY, s = 0;
    for (int32_t i = 0; i < n; i++) mx = fmax(mx, x[i]);
    for (int32_t i = 0; i < n; i++) s += exp((double)x[i] - mx);
    const double lse = mx + log(s);
    for (int32_t i = 0; i < n; i++) out[i] = (double)x[i] - lse;
}

int32_t eval_argmax(const float *x, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

bool eval_is_baseline(lethe_kv_policy_kind k) { return k != LETHE_KV_POLICY_NONE && k != LETHE_KV_POLICY_DMS; }

int32_t eval_match_budget(double live) {
    const long b = lround(live);
    return b < 1 ? 1 : b > (1 << 24) ? 1 << 24 : (int32_t)b;
}

lethe_context *eval_policy_context(lethe_model *m, const cli_opts *o, lethe_kv_policy_kind kind, int32_t n_ctx,
                                   int32_t n_seq, size_t kv_mem, int32_t budget) {
    cli_opts po = *o;
    po.parallel = n_seq;
    po.kv_mem = kv_mem;
    po.kv_budget = budget;
    po.kv_policy = kind;
    if (kind != LETHE_KV_POLICY_DMS) po.dms_force_rate = -1.0f;   /* forced decisions are DMS-only */
    if (!eval_is_baseline(kind)) po.kv_budget = 0;
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
                    ref_arg[j] = eval_argmax(row, V);
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
                e->agree += eval_argmax(row, V) == ref_arg[j];
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

uint64_t eval_seed(const cli_opts *o) { return o->sp.seed == LETHE_SEED_RANDOM ? 1 : o->sp.seed; }

/* Tokens of a text without special tokens (the count only). */
static int32_t count_tokens(const lethe_model *m, const char *s) {
    int32_t n = lethe_tokenize(m, s, strlen(s), NULL, 0, false, false);
    return n < 0 ? 0 : n;
}

/* Filler groups that bring a prompt to about `len` tokens, given the prompt
 * with none (`bare`): one group's tokens measured on the model's tokenizer. */
static int32_t filler_groups(const lethe_model *m, const char *bare, int32_t len) {
    int32_t f = count_tokens(m, eval_filler), b = count_tokens(m, bare);
    if (f < 1) f = 1;
    return len - b > f ? (len - b) / f : 1;
}

/* --kv-budget match: before a baseline answers, its context gets the budget
 * the dms run (answered first: runs[1]) held at this same question. */
static bool match_budget(lethe_model *m, const cli_opts *o, eval_run *runs, int r) {
    eval_run *e = &runs[r];
    if (!o->kv_budget_match || !eval_is_baseline(e->kind)) return true;
    const int32_t want = eval_match_budget(runs[1].last_live);
    if (e->ctx && e->budget == want) return true;
    lethe_context_free(e->ctx);
    e->ctx = eval_policy_context(m, o, e->kind, e->n_ctx, 1, 0, want);
    e->budget = want;
    if (!e->ctx) {
        e->failed = true;
        snprintf(e->why, sizeof e->why, "no context with --kv-budget %d (%s)", want, lethe_last_error());
    }
    return e->ctx != NULL;
}

/* Greedy continuation of `max_new` tokens after the prompt, in sequence 0
 * of run r's context (cleared first), into out (NUL-terminated). With
 * `stop_nl` it stops at the first newline after some text. The cell gets the
 * memory held at the question. False when the prompt failed (the run is
 * marked failed). */
static bool greedy_answer(lethe_model *m, const cli_opts *o, eval_run *runs, int r, const lethe_token *toks, int32_t n,
                          int max_new, bool stop_nl, char *out, size_t cap, eval_cell *cell) {
    eval_run *e = &runs[r];
    out[0] = 0;
    if (!match_budget(m, o, runs, r)) return false;
    lethe_seq_clear(e->ctx, 0);
    lethe_status st = cli_decode_chunks(e->ctx, toks, n, 0, o->n_batch);
    if (st != LETHE_OK) {
        e->failed = true;
        snprintf(e->why, sizeof e->why, "%s (%s)", lethe_strerror(st), lethe_last_error());
        return false;
    }
    const lethe_kv_stats ks = lethe_get_kv_stats(e->ctx);
    cell->live += ks.mean_live_slots;
    cell->bytes += (double)ks.bytes_resident;
    cell->tokens += n;
    cell->budget += e->budget;
    e->last_live = ks.mean_live_slots;
    size_t len = 0;
    for (int i = 0; i < max_new; i++) {
        lethe_token t = eval_argmax(lethe_get_logits(e->ctx, -1), lethe_n_vocab(m));
        if (lethe_token_is_eog(m, t)) break;
        char piece[64];
        int32_t k = lethe_token_to_piece(m, t, piece, sizeof piece, false);
        if (k > 0 && len + (size_t)k < cap) {
            memcpy(out + len, piece, (size_t)k);
            len += (size_t)k;
            out[len] = 0;
        }
        if (stop_nl && k > 0 && memchr(piece, '\n', (size_t)(k < 64 ? k : 64))) {
            bool text = false;
            for (const char *c = out; *c && *c != '\n' && !text; c++) text = *c != ' ';
            if (text || strchr(out, '\n') != strrchr(out, '\n')) break;   /* an answer line, or a second newline */
        }
        if (i + 1 == max_new || lethe_seq_len(e->ctx, 0) >= lethe_n_ctx(e->ctx)) break;
        if (lethe_decode(e->ctx, lethe_batch_one(&t, 1)) != LETHE_OK) break;
    }
    return true;
}

/* Tokenize a prompt (BOS as the model asks); NULL after an error line. */
static lethe_token *prompt_tokens(const lethe_model *m, char *p, int32_t *n) {
    lethe_token *t = p ? cli_tokenize(m, p, strlen(p), true, false, n) : NULL;
    if (!p) cli_error("out of memory");
    free(p);
    return t;
}

static bool run_passkey(lethe_model *m, const cli_opts *o, eval_run *runs, int n_runs, const int32_t *lens, int n_len,
                        const double *depths, int n_dep) {
    eval_rng rng = {eval_seed(o)};
    for (int li = 0; li < n_len; li++) {
        char *bare = eval_needle_prompt(10000, 0.5, 0);
        const int32_t n_sent = bare ? filler_groups(m, bare, lens[li]) : 1;
        free(bare);
        for (int di = 0; di < n_dep; di++)
            for (int tr = 0; tr < o->trials; tr++) {
                const int key = eval_rng_range(&rng, 10000, 99999);
                int32_t np = 0;
                lethe_token *pt = prompt_tokens(m, eval_needle_prompt(key, depths[di], n_sent), &np);
                if (!pt) return false;
                for (int r = 0; r < n_runs; r++) {
                    if (runs[r].failed) continue;
                    char out[128];
                    eval_cell *c = &runs[r].pk[li][di];
                    if (!greedy_answer(m, o, runs, r, pt, np, 8, false, out, sizeof out, c)) continue;
                    c->ok += eval_needle_score(out, key);
                    if (o->verbose)
                        fprintf(stderr, "lethe: passkey %s L=%d depth %.2f: want %05d, got '%s'\n",
                                lethe_kv_policy_name(runs[r].kind), lens[li], depths[di], key, out);
                    c->n++;
                }
                free(pt);
            }
    }
    return true;
}

static bool run_vartrack(lethe_model *m, const cli_opts *o, eval_run *runs, int n_runs, const int32_t *lens, int n_len) {
    eval_rng rng = {eval_seed(o) ^ 0x7654};
    for (int li = 0; li < n_len; li++)
        for (int tr = 0; tr < o->trials; tr++) {
            eval_vt p;
            eval_vt_make(eval_rng_next(&rng), EVAL_VT_HOPS, &p);
            char *bare = eval_vt_prompt(&p, 0);
            const int32_t n_sent = bare ? filler_groups(m, bare, lens[li]) : 1;
            free(bare);
            int32_t np = 0;
            lethe_token *pt = prompt_tokens(m, eval_vt_prompt(&p, n_sent), &np);
            if (!pt) return false;
            for (int r = 0; r < n_runs; r++) {
                if (runs[r].failed) continue;
                char out[256];
                eval_cell *c = &runs[r].vt[li];
                if (!greedy_answer(m, o, runs, r, pt, np, 8 * p.n, true, out, sizeof out, c)) continue;
                const int k = eval_vt_score(out, &p);
                c->score += (double)k / p.n;
                c->ok += eval_vt_exact(out, &p);
                c->n++;
                if (o->verbose) fprintf(stderr, "lethe: vartrack %s L=%d: %d/%d in '%s'\n",
                                        lethe_kv_policy_name(runs[r].kind), lens[li], k, p.n, out);
            }
            free(pt);
        }
    return true;
}

static bool run_arith(lethe_model *m, const cli_opts *o, eval_run *runs, int n_runs) {
    eval_rng rng = {eval_seed(o)};
    for (int i = 0; i < o->arith; i++) {
        eval_arith p;
        eval_arith_make(eval_rng_next(&rng), &p);
        int32_t np = 0;
        lethe_token *pt = prompt_tokens(m, eval_arith_prompt(&p, EVAL_ARITH_SHOTS), &np);
        if (!pt) return false;
        for (int r = 0; r < n_runs; r++) {
            if (runs[r].failed) continue;
            char out[256];
            eval_cell *c = &runs[r].ar;
            if (!greedy_answer(m, o, runs, r, pt, np, 24, true, out, sizeof out, c)) continue;
            long v = 0;
            c->ok += eval_arith_parse(out, &v) && v == p.answer;
            c->n++;
            if (o->verbose) fprintf(stderr, "lethe: arith %s: want %ld, got '%s'\n", lethe_kv_policy_name(runs[r].kind),
                                    p.answer, out);
        }
        free(pt);
    }
    return true;
}

/* ---- output ------------------------------------------------------------- */

static double per(double x, int n) { return n ? x / n : 0; }

static void json_cell(bool *first, const char *task, const eval_run *e, int32_t len, double depth, const eval_cell *c) {
    printf("%s  {\"task\": \"%s\", \"policy\": \"%s\", \"budget\": %.0f", *first ? "" : ",\n", task,
           lethe_kv_policy_name(e->kind), c->n ? c->budget / c->n : 0.0);
    if (len > 0) printf(", \"length\": %d, \"tokens\": %.1f", len, per(c->tokens, c->n));
    if (depth >= 0) printf(", \"depth\": %.2f", depth);
    printf(", \"ok\": %d, \"n\": %d, \"accuracy\": %.4f", c->ok, c->n, per(c->ok, c->n));
    if (!strcmp(task, "vartrack")) printf(", \"recall\": %.4f", per(c->score, c->n));
    printf(", \"live_per_head\": %.1f, \"kv_bytes\": %.0f}", per(c->live, c->n), per(c->bytes, c->n));
    *first = false;
}

static void cell_add(eval_cell *a, const eval_cell *b) {
    a->ok += b->ok, a->n += b->n, a->score += b->score, a->live += b->live, a->bytes += b->bytes, a->tokens += b->tokens;
    a->budget += b->budget;
}

/* The budget column: the fixed --kv-budget, "match", or "-". */
static const char *budget_str(const cli_opts *o, lethe_kv_policy_kind k, char *buf, size_t cap) {
    if (!eval_is_baseline(k)) return "-";
    if (o->kv_budget_match) return "match";
    snprintf(buf, cap, "%d", o->kv_budget);
    return buf;
}

static void print_results(const cli_opts *o, bool json, const eval_run *runs, int n_runs, const int32_t *pk_len,
                          int n_pk, const double *depths, int n_dep, const int32_t *vt_len, int n_vt) {
    bool first = true;
    const bool summary = o->file || n_pk || n_vt || o->arith;   /* --hyper alone has its own table */
    if (json) printf("[\n");
    else if (summary) {
        printf("| policy | budget | live/head | CR | reads/head/tok | KL nats/tok | greedy agree | ppl | passkey "
               "| vartrack | arith |\n");
        printf("| ------ | -----: | --------: | -: | -------------: | ----------: | -----------: | --: | ------: "
               "| -------: | ----: |\n");
    }
    for (int r = 0; summary && r < n_runs; r++) {
        const eval_run *e = &runs[r];
        char budget[32] = "-", kl[32] = "-", agree[32] = "-", ppl[32] = "-", pk[32] = "-", live[32] = "-", cr[32] = "-";
        char reads[32] = "-", vt[32] = "-", ar[32] = "-";
        eval_cell pkt = {0}, vtt = {0};
        for (int li = 0; li < n_pk; li++)
            for (int di = 0; di < n_dep; di++) cell_add(&pkt, &e->pk[li][di]);
        for (int li = 0; li < n_vt; li++) cell_add(&vtt, &e->vt[li]);
        char bb[16];
        snprintf(budget, sizeof budget, "%s", budget_str(o, e->kind, bb, sizeof bb));
        if (e->n > 0) {
            snprintf(kl, sizeof kl, "%.4f", e->kl / (double)e->n);
            snprintf(agree, sizeof agree, json ? "%.4f" : "%.1f %%", (json ? 1.0 : 100.0) * (double)e->agree / (double)e->n);
            snprintf(ppl, sizeof ppl, "%.3f", exp(e->nll / (double)e->n));
            snprintf(live, sizeof live, "%.1f", e->live);
            snprintf(cr, sizeof cr, "%.2f", e->cr);
            snprintf(reads, sizeof reads, "%.1f", e->reads);
        }
        if (pkt.n > 0) {
            snprintf(pk, sizeof pk, "%d/%d", pkt.ok, pkt.n);
            if (e->n == 0) snprintf(live, sizeof live, "%.1f", pkt.live / pkt.n);
        }
        if (vtt.n > 0) snprintf(vt, sizeof vt, "%.0f %%", 100.0 * vtt.score / vtt.n);
        if (e->ar.n > 0) snprintf(ar, sizeof ar, "%d/%d", e->ar.ok, e->ar.n);
        const char *name = lethe_kv_policy_name(e->kind);
        if (json) {
            const bool t = e->n > 0;
            char bstr[48];   /* match: the budget varies per question (in the task rows) */
            snprintf(bstr, sizeof bstr, "%s", !eval_is_baseline(e->kind) ? "0"
                     : o->kv_budget_match ? "null, \"budget_match\": true" : bb);
            printf("%s  {\"task\": \"summary\", \"policy\": \"%s\", \"budget\": %s, \"live_per_head\": %s, "
                   "\"compression\": %s, \"reads_per_head_per_token\": %s, \"kl\": %s, \"greedy_agree\": %s, "
                   "\"perplexity\": %s, \"passkey_ok\": %d, \"passkey_n\": %d, \"vartrack_recall\": ",
                   first ? "" : ",\n", name, bstr, strcmp(live, "-") ? live : "null",
                   t ? cr : "null", t ? reads : "null", t ? kl : "null", t ? agree : "null", t ? ppl : "null", pkt.ok,
                   pkt.n);
            if (vtt.n) printf("%.4f", vtt.score / vtt.n);
            else printf("null");
            printf(", \"arith_ok\": %d, \"arith_n\": %d%s}", e->ar.ok, e->ar.n,
                   e->failed ? ", \"error\": \"failed\"" : "");
            first = false;
        } else {
            printf("| %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name, e->failed ? " (failed)" : "",
                   budget, live, cr, reads, kl, agree, ppl, pk, vt, ar);
        }
    }
    for (int r = 0; r < n_runs; r++)
        if (runs[r].failed) cli_warn("policy %s failed: %s", lethe_kv_policy_name(runs[r].kind), runs[r].why);
    if (json) {
        for (int r = 0; r < n_runs; r++) {
            const eval_run *e = &runs[r];
            for (int li = 0; li < n_pk; li++)
                for (int di = 0; di < n_dep; di++)
                    if (e->pk[li][di].n) json_cell(&first, "passkey", e, pk_len[li], depths[di], &e->pk[li][di]);
            for (int li = 0; li < n_vt; li++)
                if (e->vt[li].n) json_cell(&first, "vartrack", e, vt_len[li], -1, &e->vt[li]);
            if (e->ar.n) json_cell(&first, "arith", e, 0, -1, &e->ar);
            const eval_hyper *h = &e->hy;
            if (h->ran && h->n) {
                printf("%s  {\"task\": \"hyper\", \"policy\": \"%s\", \"budget\": %d, \"kv_mem\": %zu, \"parallel\": %d, "
                       "\"n\": %d, \"admitted\": %.2f, \"completed\": %.2f, \"no_fit\": %d, \"majority_ok\": %d, "
                       "\"pass_ok\": %d, \"accuracy\": %.4f, \"pass_at_n\": %.4f, \"kv_bytes_per_seq\": %.0f, "
                       "\"live_per_head\": %.1f, \"kv_bytes_peak\": %zu}",
                       first ? "" : ",\n", lethe_kv_policy_name(e->kind), h->budget, h->capacity, o->parallel, h->n, per(h->admitted, h->n),
                       per(h->completed, h->n), h->no_fit, h->maj_ok, h->pass_ok, per(h->maj_ok, h->n),
                       per(h->pass_ok, h->n), per(h->bytes_seq, h->n - h->no_fit), per(h->live, h->n - h->no_fit),
                       h->peak);
                first = false;
            }
        }
        printf("\n]\n");
        fflush(stdout);
        return;
    }
    /* md: the retrieval tasks per length (and the needle per depth), then --hyper */
    if (n_pk) {
        printf("%spasskey, per prompt length (right/trials, mean live tokens per head at the question):\n\n| policy |",
               summary ? "\n" : "");
        for (int li = 0; li < n_pk; li++) printf(" %d |", pk_len[li]);
        printf("\n| ------ |");
        for (int li = 0; li < n_pk; li++) printf(" --: |");
        printf("\n");
        for (int r = 0; r < n_runs; r++) {
            printf("| %s |", lethe_kv_policy_name(runs[r].kind));
            for (int li = 0; li < n_pk; li++) {
                eval_cell c = {0};
                for (int di = 0; di < n_dep; di++) cell_add(&c, &runs[r].pk[li][di]);
                printf(" %d/%d @ %.0f |", c.ok, c.n, per(c.live, c.n));
            }
            printf("\n");
        }
        printf("\npasskey, per needle depth (all lengths):\n\n| policy |");
        for (int di = 0; di < n_dep; di++) printf(" %.0f %% |", depths[di] * 100);
        printf("\n| ------ |");
        for (int di = 0; di < n_dep; di++) printf(" --: |");
        printf("\n");
        for (int r = 0; r < n_runs; r++) {
            printf("| %s |", lethe_kv_policy_name(runs[r].kind));
            for (int di = 0; di < n_dep; di++) {
                eval_cell c = {0};
                for (int li = 0; li < n_pk; li++) cell_add(&c, &runs[r].pk[li][di]);
                printf(" %d/%d |", c.ok, c.n);
            }
            printf("\n");
        }
    }
    if (n_vt) {
        printf("\nvariable tracking (%d hops), per prompt length (names recalled, exact answers, live/head):\n\n"
               "| policy |", EVAL_VT_HOPS);
        for (int li = 0; li < n_vt; li++) printf(" %d |", vt_len[li]);
        printf("\n| ------ |");
        for (int li = 0; li < n_vt; li++) printf(" --: |");
        printf("\n");
        for (int r = 0; r < n_runs; r++) {
            printf("| %s |", lethe_kv_policy_name(runs[r].kind));
            for (int li = 0; li < n_vt; li++) {
                const eval_cell *c = &runs[r].vt[li];
                printf(" %.0f %%, %d/%d @ %.0f |", 100 * per(c->score, c->n), c->ok, c->n, per(c->live, c->n));
            }
            printf("\n");
        }
    }
    if (runs[0].hy.ran) {
        printf("%sbest-of-%d, %d arithmetic problems, KV pool %.2f MiB (mean sequences admitted / finished per problem):\n\n",
               summary ? "\n" : "", o->parallel, runs[0].hy.n, runs[0].hy.capacity / 1048576.0);
        printf("| policy | budget | admitted | finished | KV/seq | live/head | majority | pass@N |\n");
        printf("| ------ | -----: | -------: | -------: | -----: | --------: | -------: | -----: |\n");
        for (int r = 0; r < n_runs; r++) {
            const eval_hyper *h = &runs[r].hy;
            char b[16] = "-";
            if (eval_is_baseline(runs[r].kind)) snprintf(b, sizeof b, "%d", runs[r].hy.budget);
            printf("| %s | %s | %.2f | %.2f | %.0f KiB | %.0f | %d/%d | %d/%d |\n", lethe_kv_policy_name(runs[r].kind),
                   b, per(h->admitted, h->n), per(h->completed, h->n), per(h->bytes_seq, h->n - h->no_fit) / 1024,
                   per(h->live, h->n - h->no_fit), h->maj_ok, h->n, h->pass_ok, h->n);
        }
    }
    fflush(stdout);
}

/* "20,50,80" (percent) → fractions. */
static bool parse_depths(const char *s, double *out, int *n) {
    int32_t *v = NULL;
    int k = 0;
    if (!cli_parse_i32_list("--depths", s, 0, 100, &v, &k)) return false;
    if (k > EVAL_MAX_DEPTH) {
        free(v);
        cli_error("too many values for --depths: at most %d", EVAL_MAX_DEPTH);
        return false;
    }
    for (int i = 0; i < k; i++) out[i] = v[i] / 100.0;
    *n = k;
    free(v);
    return true;
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
    int32_t *pk_len = NULL, *vt_len = NULL;
    int n_pk = 0, n_vt = 0, n_dep = 3;
    double depths[EVAL_MAX_DEPTH] = {0.2, 0.5, 0.8};
    rc = CLI_EXIT_USAGE;
    if (o.passkey && !cli_parse_i32_list("--passkey", o.passkey, 64, 1 << 20, &pk_len, &n_pk)) goto done0;
    if (o.vartrack && !cli_parse_i32_list("--vartrack", o.vartrack, 64, 1 << 20, &vt_len, &n_vt)) goto done0;
    if (o.depths && !parse_depths(o.depths, depths, &n_dep)) goto done0;
    if (n_pk > EVAL_MAX_LEN || n_vt > EVAL_MAX_LEN) {
        cli_error("too many lengths for --%s: at most %d", n_pk > EVAL_MAX_LEN ? "passkey" : "vartrack", EVAL_MAX_LEN);
        goto done0;
    }
    if (!o.file && !n_pk && !n_vt && !o.arith && !o.hyper) {
        cli_error("nothing to evaluate: give a text with -f and/or --passkey, --vartrack, --arith, --hyper");
        goto done0;
    }
    if (o.hyper && o.parallel < 2) {
        cli_error("--hyper needs --parallel N with N >= 2 (the sequences sampled per problem)");
        goto done0;
    }
    if (!o.hyper && (o.parallel > 1 || o.kv_mem)) {
        cli_error("%s applies to --hyper only (the other tasks run one sequence with room for the prompt)",
                  o.parallel > 1 ? "--parallel" : "--kv-mem");
        goto done0;
    }
    /* the policies: none first (the reference), then the others, once each */
    eval_run *runs = calloc(8, sizeof *runs);
    int n_runs = 1;
    if (!runs) {
        cli_error("out of memory");
        rc = CLI_EXIT_FAIL;
        goto done0;
    }
    runs[0].kind = LETHE_KV_POLICY_NONE;
    {
        char *list = strdup(o.policies ? o.policies : "dms,window,tova,h2o");
        for (char *save = NULL, *tok = list ? strtok_r(list, ",", &save) : NULL; tok; tok = strtok_r(NULL, ",", &save)) {
            lethe_kv_policy_kind k;
            if (lethe_kv_policy_parse(tok, &k) != LETHE_OK || k == LETHE_KV_POLICY_AUTO) {
                cli_error("invalid policy '%s' in --policies (dms, window, tova, h2o, quest, none)", tok);
                free(list);
                free(runs);
                goto done0;
            }
            bool dup = false;
            for (int r = 0; r < n_runs; r++) dup = dup || runs[r].kind == k;
            if (!dup && n_runs < 8) runs[n_runs++].kind = k;
        }
        free(list);
    }
    int has_base = 0, dms_at = -1;
    for (int r = 0; r < n_runs; r++) {
        has_base += eval_is_baseline(runs[r].kind);
        if (runs[r].kind == LETHE_KV_POLICY_DMS) dms_at = r;
    }
    if (has_base && !o.kv_budget && !o.kv_budget_match) {
        cli_error("the policies window/tova/h2o/quest need --kv-budget N (live tokens per head) or --kv-budget match");
        free(runs);
        goto done0;
    }
    if (o.kv_budget_match) {
        if (dms_at < 0 || (o.file && has_base)) {
            cli_error("--kv-budget match gives the baselines dms's live tokens per question: %s",
                      dms_at < 0 ? "put dms in --policies" : "it does not apply to -f (give a number)");
            free(runs);
            goto done0;
        }
        const eval_run d = runs[dms_at];   /* dms answers right after none, so its memory is known first */
        memmove(&runs[2], &runs[1], sizeof *runs * (size_t)(dms_at - 1));
        runs[1] = d;
    }

    rc = CLI_EXIT_FAIL;
    lethe_model *m = cli_load_model(&o, false);
    lethe_token *toks = NULL;
    char *text = NULL;
    if (!m) goto done;
    int32_t n_ctx = o.n_ctx_set ? o.n_ctx : 1024;
    for (int i = 0; i < n_pk; i++) n_ctx = pk_len[i] + 64 > n_ctx ? pk_len[i] + 64 : n_ctx;
    for (int i = 0; i < n_vt; i++) n_ctx = vt_len[i] + 128 > n_ctx ? vt_len[i] + 128 : n_ctx;
    const bool greedy_tasks = o.file || n_pk || n_vt || o.arith;
    for (int r = 0; r < n_runs; r++) {
        runs[r].n_ctx = n_ctx;
        runs[r].budget = eval_is_baseline(runs[r].kind) ? o.kv_budget : 0;
        if (!greedy_tasks || (o.kv_budget_match && eval_is_baseline(runs[r].kind))) continue;   /* match: per prompt */
        runs[r].ctx = eval_policy_context(m, &o, runs[r].kind, n_ctx, 1, 0, runs[r].budget);
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
    if (n_pk && !run_passkey(m, &o, runs, n_runs, pk_len, n_pk, depths, n_dep)) goto done;
    if (n_vt && !run_vartrack(m, &o, runs, n_runs, vt_len, n_vt)) goto done;
    if (o.arith && !run_arith(m, &o, runs, n_runs)) goto done;
    for (int r = 0; r < n_runs; r++) {   /* --hyper makes its own contexts: give these back first */
        lethe_context_free(runs[r].ctx);
        runs[r].ctx = NULL;
    }
    if (o.hyper && !eval_hyper_run(m, &o, runs, n_runs)) goto done;
    print_results(&o, json, runs, n_runs, pk_len, n_pk, depths, n_dep, vt_len, n_vt);
    rc = 0;
done:
    for (int r = 0; r < n_runs; r++) lethe_context_free(runs[r].ctx);
    free(runs);
    lethe_model_free(m);
    free(toks);
    free(text);
done0:
    free(pk_len);
    free(vt_len);
    return rc;
}
