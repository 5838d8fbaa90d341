/* kv_policy.c — the score-based training-free baselines (DESIGN.md §3.2).
 *
 * TOVA: when a head holds more than `budget` tokens, drop the ones the last
 *       query attended to least (its softmax weight averaged over the G query
 *       heads of the group, written by the attention kernel into kv->score).
 * H2O:  keep the `recent` most recent tokens; among the older ones drop those
 *       with the least attention accumulated over every query since they
 *       arrived ("heavy hitters" stay).
 * Ties go to the older token. DMS and WINDOW need no scores: their tokens
 * expire by position (kv_cache.c); QUEST evicts nothing.
 */
#include "common.h"
#include "kv_cache.h"

#include <stdlib.h>

typedef struct {
    const lethe_kv_cache *kv;
    const lethe_kv_stream *s;
} sort_ctx;

/* lowest score first; equal scores: lower position first */
static int by_score(const void *a, const void *b, void *user) {
    const sort_ctx *c = user;
    const int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    const size_t mi = lethe_kv_meta(c->s, i), mj = lethe_kv_meta(c->s, j);
    const float si = c->kv->score[mi], sj = c->kv->score[mj];
    if (si != sj) return si < sj ? -1 : 1;
    return (c->kv->pos[mi] > c->kv->pos[mj]) - (c->kv->pos[mi] < c->kv->pos[mj]);
}

void lethe_kv_policy_evict(lethe_kv_cache *kv, lethe_kv_stream *s, int32_t next) {
    const lethe_kv_policy *p = &kv->policy;
    if (!kv->score || (p->rule != LETHE_KV_RULE_TOVA && p->rule != LETHE_KV_RULE_H2O)) return;
    const int32_t over = lethe_kv_live(s) - p->budget;
    if (over <= 0) return;
    /* candidates, into the compaction scratch (sized for the longest stream) */
    int32_t *cand = kv->map, n = 0;
    const int32_t keep_from = p->rule == LETHE_KV_RULE_H2O ? next - p->recent : INT32_MAX;
    for (int32_t i = 0; i < s->len; i++) {
        const int32_t pos = *lethe_kv_pos(kv, s, i);
        if (pos != LETHE_KV_HOLE && pos < keep_from) cand[n++] = i;
    }
    const int32_t k = LETHE_MIN(over, n);
    if (k <= 0) return;
    sort_ctx c = {kv, s};
    if (k == 1) {   /* decode: one token over, a scan is enough */
        int32_t best = 0;
        for (int32_t i = 1; i < n; i++)
            if (by_score(&cand[i], &cand[best], &c) < 0) best = i;
        cand[0] = cand[best];
    } else {
        qsort_r(cand, (size_t)n, sizeof *cand, by_score, &c);
    }
    /* stream_drop compacts through kv->map when it frees many: copy first */
    int32_t small[LETHE_KV_MAX_HOLES];
    if (k <= LETHE_KV_MAX_HOLES) {
        for (int32_t i = 0; i < k; i++) small[i] = cand[i];
        lethe_kv_stream_drop(kv, s, small, k);
        return;
    }
    /* many: mark them, then compact in one pass */
    for (int32_t i = 0; i < k; i++) *lethe_kv_pos(kv, s, cand[i]) = LETHE_KV_HOLE;
    lethe_kv_stream_compact(kv, s);
    kv->evicted += (uint64_t)k;
}
