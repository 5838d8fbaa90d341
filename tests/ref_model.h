/* ref_model.h — a float64 dense reference of the llama-family forward pass
 * with every KV policy's rule (DESIGN.md §3.1, §3.2), for tests. It reads a
 * loaded model's f32 weights and simulates the policy query by query, in the
 * token-by-token order the engine's decode follows. */
#ifndef LETHE_TEST_REF_MODEL_H
#define LETHE_TEST_REF_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "model.h"

typedef enum { REF_NONE, REF_DMS, REF_WINDOW, REF_TOVA, REF_H2O, REF_QUEST } ref_rule;

typedef struct ref_policy {
    ref_rule rule;
    int window;     /* DMS w                                          */
    int budget;     /* WINDOW, TOVA, H2O, QUEST: tokens per head      */
    int sinks;      /* WINDOW                                         */
    int recent;     /* H2O                                            */
} ref_policy;

/* Run tokens [0, N) at positions 0..N-1. Outputs (any may be NULL):
 *   logits [N][V]
 *   flag   [L][N][Hkv]  DMS: 1 if token j is flagged (by token j+1)
 *   alive  [L][Hkv][N]  1 if token j is still cached after the last token
 *                       (the set the next query would start from). */
void ref_forward(const lethe_model *m, const int32_t *tok, int N, const ref_policy *pol, double *logits,
                 uint8_t *flag, uint8_t *alive);

/* Worst |a - b| / max |b| over one row's V values, maxed over N rows;
 * +inf on NaN. */
double ref_worst_rel(const float *got, const double *ref, int N, int V);

#endif
