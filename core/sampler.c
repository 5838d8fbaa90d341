/* sampler.c — token sampling from a row of logits (the sampler part of lethe.h).
 *
 * Pipeline (llama.cpp's common chain, in this order):
 *   repetition penalty → [greedy if temperature <= 0] → top-k → softmax(logit / T)
 *   → top-p → min-p → draw with a seeded PRNG (xoshiro256**).
 *
 * Notes on semantics
 *  - The repetition penalty follows llama.cpp: each distinct token among the
 *    last repeat_last_n accepted ones has a positive logit divided by the
 *    penalty and a negative one multiplied by it (applied once per distinct
 *    token, however often it occurs). It applies in greedy mode too, as in
 *    llama.cpp, so a penalty changes a temperature-0 continuation.
 *  - Greedy ties go to the lowest token id; the candidate order used by the
 *    sorting stages is "higher logit first, then lower id", so every stage is
 *    deterministic.
 *  - top-p and min-p each keep a prefix of the sorted candidates, so they
 *    commute; min-p is therefore applied as a cheap pre-filter on the raw
 *    logits before sorting (p_i >= min_p * p_max  <=>  (l_i - l_max) / T >= ln min_p),
 *    which avoids sorting the whole vocabulary when top-k is off.
 *  - No allocation after lethe_sampler_new(): every buffer is n_vocab sized
 *    (or repeat_last_n sized) and allocated there. Sorting is an in-place
 *    heap sort (glibc's qsort may malloc).
 */
#include "common.h"

#include <math.h>
#include <string.h>
#include <time.h>

typedef struct lethe_cand {
    int32_t id;
    float logit;   /* penalised logit                       */
    float p;       /* unnormalised probability after softmax */
} lethe_cand;

struct lethe_sampler {
    lethe_sampler_params params;
    int32_t n_vocab;
    lethe_cand *cand;        /* [n_vocab] candidates, reused by every call          */
    uint8_t *seen;           /* [n_vocab] scratch flags for the repetition penalty  */
    lethe_token *recent;     /* [repeat_last_n] ring of the last accepted tokens    */
    int32_t n_recent;        /* valid entries in `recent` (<= repeat_last_n)        */
    int32_t recent_head;     /* next write position in the ring                     */
    uint64_t rng[4];         /* xoshiro256** state                                  */
};

/* ---- PRNG: xoshiro256**, seeded through splitmix64 --------------------- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4]) {
    const uint64_t result = rotl64(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* Uniform double in [0, 1) from the top 53 bits. */
static double rng_uniform(uint64_t s[4]) {
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

static void rng_seed(lethe_sampler *s) {
    uint64_t seed = s->params.seed;
    if (seed == LETHE_SEED_RANDOM) {
        /* A fresh seed per sampler: the clock plus the object's address so two
         * samplers created in the same nanosecond still differ. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        seed ^= (uint64_t)(uintptr_t)s * 0x9E3779B97F4A7C15ull;
    }
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
}

/* ---- params ------------------------------------------------------------ */

lethe_sampler_params lethe_sampler_default_params(void) {
    lethe_sampler_params p;
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.seed = LETHE_SEED_RANDOM;
    return p;
}

lethe_sampler *lethe_sampler_new(lethe_sampler_params params, int32_t n_vocab) {
    if (n_vocab <= 0) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "sampler: n_vocab must be > 0 (got %d)", (int)n_vocab);
        return NULL;
    }
    if (isnan(params.temperature)) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "sampler: temperature is NaN");
        return NULL;
    }
    if (params.top_k < 0) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "sampler: top_k must be >= 0 (got %d)", (int)params.top_k);
        return NULL;
    }
    if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "sampler: top_p must be in (0, 1] (got %g)", (double)params.top_p);
        return NULL;
    }
    if (!(params.min_p >= 0.0f && params.min_p <= 1.0f)) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "sampler: min_p must be in [0, 1] (got %g)", (double)params.min_p);
        return NULL;
    }
    if (!(params.repeat_penalty > 0.0f) || isinf(params.repeat_penalty)) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "sampler: repeat_penalty must be > 0 (got %g)",
                   (double)params.repeat_penalty);
        return NULL;
    }
    if (params.repeat_last_n < 0) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "sampler: repeat_last_n must be >= 0 (got %d)",
                   (int)params.repeat_last_n);
        return NULL;
    }

    lethe_sampler *s = calloc(1, sizeof(*s));
    if (!s) goto oom;
    s->params = params;
    s->n_vocab = n_vocab;
    s->cand = malloc((size_t)n_vocab * sizeof(*s->cand));
    s->seen = calloc((size_t)n_vocab, 1);
    if (params.repeat_last_n > 0) s->recent = malloc((size_t)params.repeat_last_n * sizeof(*s->recent));
    if (!s->cand || !s->seen || (params.repeat_last_n > 0 && !s->recent)) goto oom;
    rng_seed(s);
    return s;
oom:
    lethe_sampler_free(s);
    lethe_fail(LETHE_ERR_OOM, "sampler: cannot allocate buffers for n_vocab=%d", (int)n_vocab);
    return NULL;
}

void lethe_sampler_free(lethe_sampler *s) {
    if (!s) return;
    free(s->cand);
    free(s->seen);
    free(s->recent);
    free(s);
}

void lethe_sampler_reset(lethe_sampler *s) {
    if (!s) return;
    s->n_recent = 0;
    s->recent_head = 0;
    rng_seed(s);
}

void lethe_sampler_accept(lethe_sampler *s, lethe_token token) {
    if (!s || s->params.repeat_last_n <= 0) return;
    s->recent[s->recent_head] = token;
    s->recent_head = (s->recent_head + 1) % s->params.repeat_last_n;
    if (s->n_recent < s->params.repeat_last_n) s->n_recent++;
}

/* ---- sorting ------------------------------------------------------------ */

/* True when a should come before b: higher logit first, ties to the lower id.
 * NaN logits (a broken model) sort last so they are never picked over a number. */
static inline bool cand_before(const lethe_cand *a, const lethe_cand *b) {
    if (isnan(b->logit)) return !isnan(a->logit) || a->id < b->id;
    if (isnan(a->logit)) return false;
    if (a->logit != b->logit) return a->logit > b->logit;
    return a->id < b->id;
}

/* Sift down in a heap whose root is the element that comes LAST in the
 * wanted order (so popping it to the end sorts the array in order). */
static void heap_sift(lethe_cand *c, size_t n, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && cand_before(&c[m], &c[l])) m = l;
        if (r < n && cand_before(&c[m], &c[r])) m = r;
        if (m == i) return;
        lethe_cand t = c[i]; c[i] = c[m]; c[m] = t;
        i = m;
    }
}

static void heap_build(lethe_cand *c, size_t n) {
    for (size_t i = n / 2; i-- > 0;) heap_sift(c, n, i);
}

/* Sort c[0..n) in candidate order, in place, without allocating. */
static void cand_sort(lethe_cand *c, size_t n) {
    heap_build(c, n);
    for (size_t end = n; end > 1; end--) {
        lethe_cand t = c[0]; c[0] = c[end - 1]; c[end - 1] = t;
        heap_sift(c, end - 1, 0);
    }
}

/* Move the k best of c[0..n) to c[0..k), sorted. O(n log k). */
static void cand_top_k(lethe_cand *c, size_t n, size_t k) {
    /* c[0..k) is a heap rooted at its worst member; anything better replaces it. */
    heap_build(c, k);
    for (size_t i = k; i < n; i++) {
        if (cand_before(&c[i], &c[0])) {
            c[0] = c[i];
            heap_sift(c, k, 0);
        }
    }
    cand_sort(c, k);
}

/* ---- sampling ----------------------------------------------------------- */

/* The chain's last steps over the n candidates left, in their order (both
 * sampling paths end here, so they draw the same token from the same
 * random number): softmax with temperature (unnormalised; the sum is
 * kept), top-p as the shortest prefix whose mass reaches top_p (at least
 * one), then the draw. */
static lethe_token softmax_top_p_draw(lethe_sampler *s, lethe_cand *c, size_t n, float lmax, float inv_t) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        c[i].p = expf((c[i].logit - lmax) * inv_t);
        sum += c[i].p;
    }
    if (s->params.top_p < 1.0f) {
        const double target = (double)s->params.top_p * sum;
        double cum = 0.0;
        size_t keep = n;
        for (size_t i = 0; i < n; i++) {
            cum += c[i].p;
            if (cum >= target) { keep = i + 1; break; }
        }
        n = keep;
        sum = 0.0;
        for (size_t i = 0; i < n; i++) sum += c[i].p;
    }
    double r = rng_uniform(s->rng) * sum;
    double acc = 0.0;
    for (size_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (r < acc) return c[i].id;
    }
    return c[n - 1].id;   /* rounding: r landed on the very top edge */
}

/* Penalise every distinct recent token once (llama.cpp semantics). */
static void apply_repeat_penalty(lethe_sampler *s) {
    const float pen = s->params.repeat_penalty;
    if (pen == 1.0f || s->n_recent == 0) return;
    for (int32_t i = 0; i < s->n_recent; i++) {
        lethe_token t = s->recent[i];
        if (t < 0 || t >= s->n_vocab || s->seen[t]) continue;
        s->seen[t] = 1;
        /* cand[] is still indexed by token id here. */
        float *l = &s->cand[t].logit;
        *l = *l > 0.0f ? *l / pen : *l * pen;
    }
    for (int32_t i = 0; i < s->n_recent; i++) {
        lethe_token t = s->recent[i];
        if (t >= 0 && t < s->n_vocab) s->seen[t] = 0;
    }
}

lethe_token lethe_sampler_sample(lethe_sampler *s, const float *logits) {
    if (!s || !logits) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "sampler: NULL sampler or logits");
        return -1;
    }
    const int32_t nv = s->n_vocab;
    lethe_cand *c = s->cand;
    for (int32_t i = 0; i < nv; i++) {
        c[i].id = i;
        c[i].logit = logits[i];
    }
    apply_repeat_penalty(s);

    /* Greedy: the first best in candidate order (lowest id on ties). */
    if (!(s->params.temperature > 1e-6f) || s->params.top_k == 1) { /* tiny T: 1/T overflows; greedy is its limit */
        int32_t best = 0;
        for (int32_t i = 1; i < nv; i++)
            if (cand_before(&c[i], &c[best])) best = i;
        return c[best].id;
    }

    const float inv_t = 1.0f / s->params.temperature;
    size_t n = (size_t)nv;

    /* min-p pre-filter (see the header comment: it commutes with top-k/top-p,
     * because every stage keeps a prefix of the same order). */
    float lmax = -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (c[i].logit > lmax) lmax = c[i].logit;
    if (!isfinite(lmax)) {
        /* All -inf/NaN (or +inf): fall back to the deterministic best. */
        int32_t best = 0;
        for (int32_t i = 1; i < nv; i++)
            if (cand_before(&c[i], &c[best])) best = i;
        return c[best].id;
    }
    if (s->params.min_p > 0.0f) {
        const float thr = logf(s->params.min_p);   /* -inf when min_p == 0 */
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if ((c[i].logit - lmax) * inv_t >= thr) c[m++] = c[i];
        n = m;   /* >= 1: the max itself always passes */
    }

    /* top-k, then the rest sorted (top-p needs the order). */
    if (s->params.top_k > 0 && (size_t)s->params.top_k < n) {
        cand_top_k(c, n, (size_t)s->params.top_k);
        n = (size_t)s->params.top_k;
    } else if (s->params.top_p < 1.0f) {
        cand_sort(c, n);
    }

    return softmax_top_p_draw(s, c, n, lmax, inv_t);
}

/* ---- sampling from a row's best candidates (on-device sampling) ---------
 *
 * lethe_sampler_sample above, restated for the k best candidates of a row
 * in candidate order (what the TOP_K op returns). It takes the same steps on
 * the same values in the same order, so it returns the same token and
 * consumes the same random numbers, whenever the chain only ever looks at
 * those k:
 *  - greedy: the first best in candidate order is cand[0];
 *  - lmax (the largest non-NaN logit, first by id among equals) is cand[0]'s
 *    logit unless that is NaN, and then every logit is NaN;
 *  - min-p keeps a prefix of the candidate order (x -> (x - lmax) / T is
 *    monotone in float arithmetic; NaN and -inf never pass), so the kept
 *    set is known from the candidates as soon as one of them fails;
 *  - top-k keeps the first top_k in candidate order;
 *  - the draw walks the kept candidates in candidate order when top-k cut
 *    (or top-p sorted), but in id order when neither did (the host path
 *    then never sorts): only with top_p = 1 and min-p keeping <= top_k, which
 *    the (top_k + 1)-th candidate tells apart.
 * A repetition penalty changes logits before the selection, and top_k off
 * needs the whole row: those chains take lethe_sampler_sample. */

int32_t lethe_sampler_top_k_needed(const lethe_sampler *s) {
    if (!s) return 0;
    const lethe_sampler_params *p = &s->params;
    if (p->repeat_penalty != 1.0f && p->repeat_last_n > 0) return 0;
    int32_t need;
    if (!(p->temperature > 1e-6f) || p->top_k == 1) need = 1;
    else if (p->top_k <= 0) return 0;
    else need = p->top_k + (p->min_p > 0.0f && !(p->top_p < 1.0f) ? 1 : 0);
    /* top_k >= n_vocab: the host never cuts at top_k; a row of exactly
     * n_vocab candidates is the whole row, but asking for it is no saving */
    if (need > 1 && p->top_k >= s->n_vocab) return 0;
    return need <= LETHE_TOP_K_MAX && need <= s->n_vocab ? need : 0;
}

/* Candidate order for a candidate array: ids ascending (the host's index
 * order, for the draw when nothing sorted). Insertion sort: n <= 257. */
static void cand_sort_by_id(lethe_cand *c, size_t n) {
    for (size_t i = 1; i < n; i++) {
        lethe_cand x = c[i];
        size_t j = i;
        for (; j > 0 && c[j - 1].id > x.id; j--) c[j] = c[j - 1];
        c[j] = x;
    }
}

lethe_token lethe_sampler_sample_top_k(lethe_sampler *s, const lethe_candidate *cand, int32_t n_cand) {
    if (!s || !cand) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "sampler: NULL sampler or candidates");
        return -1;
    }
    const int32_t need = lethe_sampler_top_k_needed(s);
    if (need == 0) {
        lethe_fail(LETHE_ERR_UNSUPPORTED, "sampler: this chain needs every logit (top_k off, or a repetition penalty)");
        return -1;
    }
    if (n_cand < need) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "sampler: %d candidates given, this chain needs %d", (int)n_cand, (int)need);
        return -1;
    }
    lethe_cand *c = s->cand;
    for (int32_t i = 0; i < need; i++) {
        c[i].id = cand[i].id;
        c[i].logit = cand[i].logit;
        if (c[i].id < 0 || c[i].id >= s->n_vocab || (i > 0 && !cand_before(&c[i - 1], &c[i]))) {
            lethe_fail(LETHE_ERR_INVALID_ARG, "sampler: candidate %d (id %d) is out of range or out of order",
                       (int)i, (int)c[i].id);
            return -1;
        }
    }
    const lethe_sampler_params *p = &s->params;
    if (!(p->temperature > 1e-6f) || p->top_k == 1) return c[0].id;

    const float inv_t = 1.0f / p->temperature;
    const float lmax = isnan(c[0].logit) ? -INFINITY : c[0].logit;
    if (!isfinite(lmax)) return c[0].id;
    const size_t K = (size_t)p->top_k;
    size_t m = (size_t)need;   /* kept by min-p among the candidates */
    bool cut;                  /* top-k cut (the host sorts): more than K kept */
    if (p->min_p > 0.0f) {
        const float thr = logf(p->min_p);
        size_t k = 0;
        for (size_t i = 0; i < (size_t)need; i++)
            if ((c[i].logit - lmax) * inv_t >= thr) c[k++] = c[i];
        m = k;
        /* with top_p < 1 the host sorts either way: only the count matters */
        cut = p->top_p < 1.0f ? m >= K : m > K;
    } else {
        cut = true;   /* every logit is kept and top_k < n_vocab */
    }
    size_t n = m < K ? m : K;
    if (!cut && !(p->top_p < 1.0f)) cand_sort_by_id(c, n);

    return softmax_top_p_draw(s, c, n, lmax, inv_t);
}

lethe_token lethe_sample(lethe_sampler *s, lethe_context *ctx, int32_t i) {
    if (!s || !ctx) {
        lethe_fail(LETHE_ERR_INVALID_ARG, "sample: NULL sampler or context");
        return -1;
    }
    const int32_t need = lethe_sampler_top_k_needed(s);
    if (need > 0) {
        const lethe_candidate *cand = NULL;
        const int32_t n = lethe_get_top_k(ctx, i, &cand);
        if (n >= need) return lethe_sampler_sample_top_k(s, cand, n);
        lethe_clear_error();
    }
    const float *logits = lethe_get_logits(ctx, i);
    if (!logits) return -1;   /* the reason is get_logits' */
    return lethe_sampler_sample(s, logits);
}
