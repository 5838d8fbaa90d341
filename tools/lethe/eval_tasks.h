/* eval_tasks.h — the synthetic tasks of `lethe eval`, without a model:
 * problem generators (deterministic for a seed, with their answer keys),
 * prompt builders, and the parsers/scorers of a continuation.
 *
 *   needle     a 5-digit pass key at a chosen depth of a filler haystack
 *   vartrack   RULER-style variable tracking: VAR A = 12345. VAR B = A. ...
 *              spread through the haystack; the model lists the variables
 *              that hold the value
 *   arith      one- and two-step arithmetic word problems, few-shot, the
 *              answer parsed from the continuation's first line
 *
 * cmd_eval.c tokenizes and runs these; tests/test_eval_tasks.c checks them. */
#ifndef LETHE_EVAL_TASKS_H
#define LETHE_EVAL_TASKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* splitmix64: a small, seedable generator whose stream depends only on the seed. */
typedef struct eval_rng { uint64_t s; } eval_rng;
uint64_t eval_rng_next(eval_rng *r);
/* Uniform in [lo, hi] (inclusive). */
int eval_rng_range(eval_rng *r, int lo, int hi);

/* The haystack's repeated filler sentence group. */
extern const char eval_filler[];

/* head + n_sent filler groups + tail, with inserts[i] placed before filler
 * group at[i] (at[i] == n_sent: after the last one; at must be ascending).
 * malloc'ed, NULL when out of memory. */
char *eval_haystack(const char *head, const char *const *inserts, const int *at, int n_ins, int n_sent,
                    const char *tail);

/* Filler group index of a needle at `depth` in [0, 1] of n_sent groups. */
int eval_depth_at(double depth, int n_sent);

/* ---- needle (pass key) -------------------------------------------------- */

/* The needle prompt: key (10000..99999) at depth of n_sent filler groups. */
char *eval_needle_prompt(int key, double depth, int n_sent);
/* True when the continuation (leading spaces skipped) starts with the key. */
bool eval_needle_score(const char *cont, int key);

/* ---- variable tracking -------------------------------------------------- */

#define EVAL_VT_MAX 16
typedef struct eval_vt {
    int n;                        /* variables in the chain (hops + 1)          */
    char name[EVAL_VT_MAX][6];    /* 5 upper-case letters each; name[0] = value */
    int value;                    /* 10000..99999                               */
    /* a distractor chain of the same length with another value, interleaved
     * with the first (RULER's num_chains = 2): listing every VAR is wrong */
    char other[EVAL_VT_MAX][6];
    int other_value;
    /* a one-shot example with its own names and value (never the problem's) */
    char ex_name[3][6];
    int ex_value;
} eval_vt;

/* A problem of `hops` assignments after the first (1 <= hops < EVAL_VT_MAX). */
bool eval_vt_make(uint64_t seed, int hops, eval_vt *out);
/* The prompt: the example, then the statements of both chains spread
 * evenly over n_sent filler groups, then the question about p->value. */
char *eval_vt_prompt(const eval_vt *p, int n_sent);
/* How many of the chain's names occur as whole words in the continuation
 * (RULER's string_match_all counts this over p->n). */
int eval_vt_score(const char *cont, const eval_vt *p);
/* The answer is exact: every name of the chain and none of the distractor's. */
bool eval_vt_exact(const char *cont, const eval_vt *p);

/* ---- arithmetic word problems ------------------------------------------- */

typedef struct eval_arith {
    char text[256];               /* the question                               */
    char work[64];                /* the worked answer: "3 + 4 = 7"             */
    long answer;
    int kind;                     /* 0 add, 1 subtract, 2 multiply, 3 add then subtract */
} eval_arith;

void eval_arith_make(uint64_t seed, eval_arith *out);
/* A few-shot prompt: `shots` solved examples (from a fixed seed that the
 * problems never use), then "Question: <p>\nAnswer:". malloc'ed. */
char *eval_arith_prompt(const eval_arith *p, int shots);
/* The answer in a continuation: on its first line, the first integer after
 * the last '=' if there is one, else the first integer. false: none. */
bool eval_arith_parse(const char *cont, long *out);

/* Majority vote over the valid answers; ties go to the answer that appeared
 * first. Returns the winner's votes (0: no valid answer, *winner unchanged). */
int eval_majority(const long *ans, const bool *valid, int n, long *winner);

#endif
