/* eval.h — what cmd_eval.c (text, retrieval, arithmetic) and eval_hyper.c
 * (best-of-N in a fixed KV pool) share: the per-policy results. */
#ifndef LETHE_EVAL_H
#define LETHE_EVAL_H

#include "cli.h"

#define EVAL_MAX_LEN 16     /* prompt lengths per retrieval task */
#define EVAL_MAX_DEPTH 8    /* needle depths                     */
#define EVAL_ARITH_SHOTS 8
#define EVAL_VT_HOPS 4

/* One (task, length, depth) cell of one policy: sums over its problems. */
typedef struct eval_cell {
    int ok, n;              /* problems fully right / run                 */
    double score;           /* vartrack: names found / names in the chain  */
    double live;            /* mean live tokens per head at the question   */
    double bytes;           /* KV bytes resident at the question           */
    double tokens;          /* prompt tokens                               */
    double budget;          /* the baseline's --kv-budget in effect        */
} eval_cell;

/* --hyper: one policy's best-of-N in the --kv-mem pool. */
typedef struct eval_hyper {
    int n;                  /* problems                                    */
    int maj_ok, pass_ok;    /* majority vote right / any sequence right    */
    int no_fit;             /* problems whose prompt alone did not fit     */
    double admitted;        /* sum over problems of sequences admitted     */
    double completed;       /* ... of sequences that finished their answer */
    double bytes_seq;       /* ... of KV bytes per admitted sequence after the forks */
    double live;            /* ... of live tokens per head after the forks */
    size_t peak;            /* peak KV bytes resident in the pool          */
    size_t capacity;        /* the pool                                    */
    int32_t budget;         /* the baseline's --kv-budget in effect        */
    bool ran;
} eval_hyper;

typedef struct eval_run {
    lethe_kv_policy_kind kind;
    lethe_context *ctx;
    int32_t budget;              /* window/tova/h2o/quest: tokens per head in effect */
    int32_t n_ctx;
    double last_live;            /* live tokens per head at the last question */
    double kl, nll;              /* sums over scored positions */
    int64_t n, agree;
    double live, cr;             /* after the text */
    double reads;                /* slots read per head per token over the text */
    eval_cell pk[EVAL_MAX_LEN][EVAL_MAX_DEPTH];
    eval_cell vt[EVAL_MAX_LEN];
    eval_cell ar;
    eval_hyper hy;
    bool failed;
    char why[160];
} eval_run;

int32_t eval_argmax(const float *x, int32_t n);
bool eval_is_baseline(lethe_kv_policy_kind k);   /* a policy that takes --kv-budget */
/* A context for one policy: baselines get `budget` tokens per head, dms its
 * decisions, n_seq sequences in a pool of kv_mem bytes (0: room for n_ctx each). */
lethe_context *eval_policy_context(lethe_model *m, const cli_opts *o, lethe_kv_policy_kind kind, int32_t n_ctx,
                                   int32_t n_seq, size_t kv_mem, int32_t budget);
/* --kv-budget match: the baseline budget that equals the dms run's live
 * tokens per head (`live`), at least 1. */
int32_t eval_match_budget(double live);
/* The seed of the problem stream (--seed, 1 when random). */
uint64_t eval_seed(const cli_opts *o);
/* --hyper for every run's policy (each in its own context, one at a time). */
bool eval_hyper_run(lethe_model *m, const cli_opts *o, eval_run *runs, int n_runs);

#endif
