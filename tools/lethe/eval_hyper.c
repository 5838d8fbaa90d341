/* eval_hyper.c — `lethe eval --hyper N`: inference-time hyper-scaling.
 *
 * Each of N generated arithmetic problems is prefilled once into sequence 0
 * of a context whose KV pool is --kv-mem bytes, then forked into up to
 * --parallel sequences: as many as the pool admits (lethe_seq_fork refuses a
 * copy that does not fit). The admitted sequences sample their answers
 * together, one batched decode per step; when a step runs out of pages the
 * last sequence is retired (its answer does not count), as `generate
 * --parallel` does. The finished answers vote: the majority answer is the
 * policy's answer (ties: the earliest), and pass@N counts a problem when any
 * finished answer is right.
 *
 * The point: a policy that keeps fewer tokens per sequence (dms at CR x)
 * fits about CR x more sequences in the same memory; whether more votes
 * from a compressed cache beat fewer from a full one is what this measures.
 * Every policy sees the same problems and the same sampler seeds. */
#include "eval.h"
#include "eval_tasks.h"

#include <stdlib.h>
#include <string.h>

#define HYPER_MAX_NEW 24   /* tokens of an answer line ("3 + 4 - 2 = 5") */

typedef struct hyper_seq {
    lethe_sampler *smp;
    char *text;
    size_t len, cap;
    int n_gen;
    bool live, finished;   /* finished: its answer line is complete (it votes) */
} hyper_seq;

/* The line of a sequence is complete: a newline after some text. */
static bool line_done(const char *s, size_t len) {
    const char *nl = memchr(s, '\n', len);
    if (!nl) return false;
    for (const char *c = s; c < nl; c++)
        if (*c != ' ') return true;
    return memchr(nl + 1, '\n', len - (size_t)(nl + 1 - s)) != NULL;   /* a blank first line: the second ends it */
}

/* One problem for one policy: fork, sample, vote. False on an engine error
 * other than running out of KV room (reported). */
static bool hyper_problem(lethe_model *m, const cli_opts *o, lethe_context *ctx, const lethe_token *toks, int32_t n,
                          const eval_arith *p, uint64_t seed, eval_run *e, bool *warned, hyper_seq *sq, long *ans,
                          bool *valid, int32_t *ids, lethe_token *row, int8_t *want, float *first) {
    const int32_t N = o->parallel, V = lethe_n_vocab(m);
    eval_hyper *h = &e->hy;
    const char *name = lethe_kv_policy_name(e->kind);
    h->n++;
    lethe_seq_clear(ctx, -1);
    lethe_status st = cli_decode_chunks(ctx, toks, n, 0, o->n_batch);
    if (st == LETHE_ERR_CONTEXT_FULL) {
        if (!*warned)
            cli_warn("hyper: policy %s: the prompt (%d tokens) does not fit the KV pool of %zu bytes: no sequence "
                     "admitted (%s)", name, n, h->capacity, lethe_last_error());
        *warned = true;
        h->no_fit++;
        return true;
    }
    if (st != LETHE_OK) {
        cli_error_status(st, "hyper: prompt decode failed");
        return false;
    }
    memcpy(first, lethe_get_logits(ctx, -1), (size_t)V * sizeof *first);
    int32_t admitted = 1;
    for (; admitted < N; admitted++) {
        st = lethe_seq_fork(ctx, 0, admitted);
        if (st == LETHE_OK) continue;
        if (st != LETHE_ERR_CONTEXT_FULL) {
            cli_error_status(st, "hyper: fork failed");
            return false;
        }
        if (!*warned)
            cli_warn("hyper: policy %s admits %d of %d sequences in a KV pool of %zu bytes (%s)", name, admitted, N,
                     h->capacity, lethe_last_error());
        *warned = true;
        break;
    }
    const lethe_kv_stats ks = lethe_get_kv_stats(ctx);
    h->admitted += admitted;
    h->bytes_seq += (double)ks.bytes_resident / admitted;
    h->live += ks.mean_live_slots;
    int n_live = 0;
    for (int32_t s = 0; s < admitted; s++) {
        lethe_sampler_params sp = o->sp;
        sp.seed = seed * 4099u + (uint64_t)s;   /* the same seeds for every policy */
        lethe_sampler_free(sq[s].smp);
        sq[s].smp = lethe_sampler_new(sp, V);
        if (!sq[s].smp) {
            cli_error_status(LETHE_ERR_INVALID_ARG, "bad sampling parameters");
            return false;
        }
        sq[s].len = sq[s].n_gen = 0;
        if (sq[s].text) sq[s].text[0] = 0;
        sq[s].live = true;
        sq[s].finished = false;
        row[s] = lethe_sampler_sample(sq[s].smp, first);
        n_live++;
    }
    while (n_live > 0) {
        int32_t nb = 0;
        for (int32_t s = 0; s < admitted; s++) {
            hyper_seq *q = &sq[s];
            if (!q->live) continue;
            const lethe_token t = row[s];
            bool done = t < 0 || lethe_token_is_eog(m, t);
            if (!done) {
                cli_piece_append(m, t, &q->text, &q->len, &q->cap);
                lethe_sampler_accept(q->smp, t);
                done = line_done(q->text, q->len) || ++q->n_gen >= HYPER_MAX_NEW ||
                       lethe_seq_len(ctx, s) >= lethe_n_ctx(ctx);
            }
            if (done) {
                q->live = false;
                q->finished = true;
                n_live--;
                lethe_seq_clear(ctx, s);   /* its pages go back to the pool */
                continue;
            }
            ids[nb] = s;
            want[nb] = 1;
            nb++;
        }
        if (nb == 0) break;
        lethe_token *tk = row + N;   /* the step's tokens, in batch order */
        for (int32_t i = 0; i < nb; i++) tk[i] = row[ids[i]];
        lethe_batch b = {.n_tokens = nb, .tokens = tk, .seq_id = ids, .logits = want};
        st = lethe_decode(ctx, b);
        while (st == LETHE_ERR_CONTEXT_FULL && nb > 1) {
            const int32_t s = ids[--nb];   /* out of pages: retire the last, the rest go on */
            sq[s].live = false;
            n_live--;
            lethe_seq_clear(ctx, s);
            b.n_tokens = nb;
            st = lethe_decode(ctx, b);
        }
        if (st == LETHE_ERR_CONTEXT_FULL) {   /* not even one sequence can grow */
            sq[ids[0]].live = false;
            n_live--;
            lethe_seq_clear(ctx, ids[0]);
            continue;
        }
        if (st != LETHE_OK) {
            cli_error_status(st, "hyper: decode failed");
            return false;
        }
        for (int32_t i = 0; i < nb; i++) row[ids[i]] = lethe_sampler_sample(sq[ids[i]].smp, lethe_get_logits(ctx, i));
    }
    const lethe_kv_stats end = lethe_get_kv_stats(ctx);
    if (end.bytes_peak > h->peak) h->peak = end.bytes_peak;
    int n_done = 0;
    bool any = false;
    for (int32_t s = 0; s < admitted; s++) {
        valid[s] = sq[s].finished && sq[s].text && eval_arith_parse(sq[s].text, &ans[s]);
        n_done += sq[s].finished;
        any = any || (valid[s] && ans[s] == p->answer);
        if (o->verbose)
            fprintf(stderr, "lethe: hyper %s seq %d (want %ld): %s'%s'\n", name, s, p->answer,
                    sq[s].finished ? "" : "retired ", sq[s].text ? sq[s].text : "");
    }
    long win = 0;
    h->completed += n_done;
    h->maj_ok += eval_majority(ans, valid, admitted, &win) > 0 && win == p->answer;
    h->pass_ok += any;
    return true;
}

bool eval_hyper_run(lethe_model *m, const cli_opts *o, eval_run *runs, int n_runs) {
    const int32_t N = o->parallel;
    /* the problems and their prompts, once for all policies */
    eval_arith *probs = calloc((size_t)o->hyper, sizeof *probs);
    lethe_token **toks = calloc((size_t)o->hyper, sizeof *toks);
    int32_t *n_tok = calloc((size_t)o->hyper, sizeof *n_tok);
    hyper_seq *sq = calloc((size_t)N, sizeof *sq);
    long *ans = calloc((size_t)N, sizeof *ans);
    bool *valid = calloc((size_t)N, sizeof *valid);
    int32_t *ids = calloc((size_t)N, sizeof *ids);
    lethe_token *row = calloc((size_t)N * 2, sizeof *row);
    int8_t *want = calloc((size_t)N, 1);
    float *first = calloc((size_t)lethe_n_vocab(m), sizeof *first);
    bool ok = probs && toks && n_tok && sq && ans && valid && ids && row && want && first;
    if (!ok) cli_error("out of memory");
    eval_rng rng = {eval_seed(o) ^ 0x4859504552ull};   /* "HYPER": not --arith's problems */
    int32_t n_ctx = 0;
    for (int i = 0; ok && i < o->hyper; i++) {
        eval_arith_make(eval_rng_next(&rng), &probs[i]);
        char *pr = eval_arith_prompt(&probs[i], EVAL_ARITH_SHOTS);
        toks[i] = pr ? cli_tokenize(m, pr, strlen(pr), true, false, &n_tok[i]) : NULL;
        if (!pr) cli_error("out of memory");
        free(pr);
        ok = toks[i] != NULL;
        if (ok && n_tok[i] + HYPER_MAX_NEW + 1 > n_ctx) n_ctx = n_tok[i] + HYPER_MAX_NEW + 1;
    }
    for (int r = 0; ok && r < n_runs; r++) {
        eval_run *e = &runs[r];
        if (eval_is_baseline(e->kind)) {
            /* match: dms (runs[1], run before) held this many live tokens per
             * head after its forks, on average over the problems */
            const eval_hyper *d = &runs[1].hy;
            e->hy.budget = !o->kv_budget_match ? o->kv_budget
                           : eval_match_budget(d->n > d->no_fit ? d->live / (d->n - d->no_fit) : 1);
        }
        lethe_context *ctx = eval_policy_context(m, o, e->kind, n_ctx, N, o->kv_mem, e->hy.budget);
        if (!ctx) {
            ok = false;
            break;
        }
        e->hy.ran = true;
        e->hy.capacity = lethe_get_kv_stats(ctx).bytes_capacity;
        bool warned = false;
        for (int i = 0; ok && i < o->hyper; i++)
            ok = hyper_problem(m, o, ctx, toks[i], n_tok[i], &probs[i], eval_seed(o) + (uint64_t)i, e, &warned, sq,
                               ans, valid, ids, row, want, first);
        lethe_context_free(ctx);
    }
    for (int i = 0; toks && i < o->hyper; i++) free(toks[i]);
    for (int32_t s = 0; sq && s < N; s++) {
        lethe_sampler_free(sq[s].smp);
        free(sq[s].text);
    }
    free(probs); free(toks); free(n_tok); free(sq); free(ans); free(valid); free(ids); free(row); free(want);
    free(first);
    return ok;
}
