/* test_sampler.c — the sampler of lethe.h: greedy, top-k, top-p, min-p,
 * temperature, seeding and the repetition penalty, on crafted distributions. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lethe.h"
#include "testutil.h"

#define NV 1000

static lethe_sampler_params plain_params(void) {
    lethe_sampler_params p = lethe_sampler_default_params();
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.seed = 1234;
    return p;
}

/* Logits whose softmax is exactly `probs` (the rest of the vocab gets -inf). */
static void logits_from_probs(float *logits, int nv, const double *probs, int n) {
    for (int i = 0; i < nv; i++) logits[i] = -INFINITY;
    for (int i = 0; i < n; i++) logits[i] = (float)log(probs[i]);
}

static void test_defaults(void **state) {
    (void)state;
    lethe_sampler_params p = lethe_sampler_default_params();
    assert_true(p.temperature > 0.0f);
    assert_int_equal(p.top_k, 40);
    assert_true(p.seed == LETHE_SEED_RANDOM);
}

static void test_bad_params(void **state) {
    (void)state;
    lethe_sampler_params p = plain_params();
    assert_null(lethe_sampler_new(p, 0));
    assert_true(strlen(lethe_last_error()) > 0);
    p.top_p = 1.5f;
    assert_null(lethe_sampler_new(p, NV));
    p = plain_params(); p.top_k = -1;
    assert_null(lethe_sampler_new(p, NV));
    p = plain_params(); p.min_p = -0.1f;
    assert_null(lethe_sampler_new(p, NV));
    p = plain_params(); p.repeat_penalty = 0.0f;
    assert_null(lethe_sampler_new(p, NV));
    p = plain_params(); p.temperature = NAN;
    assert_null(lethe_sampler_new(p, NV));
    /* NULL inputs never crash */
    assert_int_equal(lethe_sampler_sample(NULL, NULL), -1);
    lethe_sampler_accept(NULL, 3);
    lethe_sampler_reset(NULL);
    lethe_sampler_free(NULL);
}

static void test_greedy_is_argmax(void **state) {
    (void)state;
    float *logits = malloc(NV * sizeof(float));
    lethe_sampler_params p = plain_params();
    p.temperature = 0.0f;
    lethe_sampler *s = lethe_sampler_new(p, NV);
    assert_non_null(s);
    for (uint64_t trial = 0; trial < 20; trial++) {
        tu_rand_fill(logits, NV, trial + 1);
        int best = 0;
        for (int i = 1; i < NV; i++) if (logits[i] > logits[best]) best = i;
        assert_int_equal(lethe_sampler_sample(s, logits), best);
    }
    /* ties go to the lowest id */
    for (int i = 0; i < NV; i++) logits[i] = 0.0f;
    logits[700] = 3.0f; logits[41] = 3.0f; logits[999] = 3.0f;
    assert_int_equal(lethe_sampler_sample(s, logits), 41);
    /* negative temperature is greedy too */
    lethe_sampler_free(s);
    p.temperature = -1.0f;
    s = lethe_sampler_new(p, NV);
    assert_int_equal(lethe_sampler_sample(s, logits), 41);
    lethe_sampler_free(s);
    free(logits);
}

static void test_top_k1_is_greedy(void **state) {
    (void)state;
    float *logits = malloc(NV * sizeof(float));
    const float temps[] = {0.1f, 1.0f, 5.0f, 100.0f};
    for (size_t t = 0; t < 4; t++) {
        lethe_sampler_params p = plain_params();
        p.temperature = temps[t];
        p.top_k = 1;
        p.seed = 99 + t;
        lethe_sampler *s = lethe_sampler_new(p, NV);
        assert_non_null(s);
        for (uint64_t trial = 0; trial < 10; trial++) {
            tu_rand_fill(logits, NV, 1000 + trial);
            int best = 0;
            for (int i = 1; i < NV; i++) if (logits[i] > logits[best]) best = i;
            assert_int_equal(lethe_sampler_sample(s, logits), best);
        }
        lethe_sampler_free(s);
    }
    free(logits);
}

static void test_seed_reproducible(void **state) {
    (void)state;
    float *logits = malloc(NV * sizeof(float));
    tu_rand_fill(logits, NV, 7);
    for (int i = 0; i < NV; i++) logits[i] *= 3.0f;
    lethe_sampler_params p = plain_params();
    p.top_k = 50;
    p.seed = 42;
    lethe_sampler *a = lethe_sampler_new(p, NV);
    lethe_sampler *b = lethe_sampler_new(p, NV);
    p.seed = 43;
    lethe_sampler *c = lethe_sampler_new(p, NV);
    lethe_token seq_a[200], seq_b[200], seq_c[200];
    for (int i = 0; i < 200; i++) {
        seq_a[i] = lethe_sampler_sample(a, logits);
        seq_b[i] = lethe_sampler_sample(b, logits);
        seq_c[i] = lethe_sampler_sample(c, logits);
        assert_true(seq_a[i] >= 0 && seq_a[i] < NV);
    }
    assert_memory_equal(seq_a, seq_b, sizeof seq_a);
    assert_memory_not_equal(seq_a, seq_c, sizeof seq_a);
    /* reset restarts the same stream */
    lethe_sampler_reset(a);
    for (int i = 0; i < 200; i++) assert_int_equal(lethe_sampler_sample(a, logits), seq_a[i]);
    lethe_sampler_free(a);
    lethe_sampler_free(b);
    lethe_sampler_free(c);
    free(logits);
}

/* Draw n samples; counts[] gets the histogram over the first 8 ids,
 * returns how many fell outside them. */
static int draw_hist(lethe_sampler *s, const float *logits, int n, int counts[8]) {
    int outside = 0;
    memset(counts, 0, 8 * sizeof(int));
    for (int i = 0; i < n; i++) {
        lethe_token t = lethe_sampler_sample(s, logits);
        if (t >= 0 && t < 8) counts[t]++;
        else outside++;
    }
    return outside;
}

static void test_top_p(void **state) {
    (void)state;
    /* p = 0.4 0.3 0.2 0.1: top_p 0.65 keeps {0,1} (0.4 < 0.65 <= 0.7),
     * renormalised to 4/7 and 3/7. */
    const double probs[4] = {0.4, 0.3, 0.2, 0.1};
    float logits[NV];
    logits_from_probs(logits, NV, probs, 4);
    lethe_sampler_params p = plain_params();
    p.top_p = 0.65f;
    lethe_sampler *s = lethe_sampler_new(p, NV);
    int counts[8];
    const int n = 20000;
    assert_int_equal(draw_hist(s, logits, n, counts), 0);
    assert_int_equal(counts[2], 0);
    assert_int_equal(counts[3], 0);
    /* 4/7 = 0.571; sd of the fraction ~ 0.0035: allow ~6 sd */
    assert_in_range(counts[0], (int)(n * 0.551), (int)(n * 0.591));
    assert_in_range(counts[1], (int)(n * 0.409), (int)(n * 0.449));
    lethe_sampler_free(s);

    /* top_p 0.75 keeps {0,1,2} */
    p.top_p = 0.75f;
    s = lethe_sampler_new(p, NV);
    assert_int_equal(draw_hist(s, logits, n, counts), 0);
    assert_int_equal(counts[3], 0);
    assert_true(counts[2] > n / 6);   /* 0.2/0.9 = 0.22 */
    lethe_sampler_free(s);

    /* top_p tiny keeps only the best */
    p.top_p = 0.01f;
    s = lethe_sampler_new(p, NV);
    assert_int_equal(draw_hist(s, logits, 500, counts), 0);
    assert_int_equal(counts[0], 500);
    lethe_sampler_free(s);
}

static void test_min_p(void **state) {
    (void)state;
    /* p = 0.5 0.25 0.15 0.1; min_p 0.3 keeps p >= 0.15 → {0,1,2},
     * min_p 0.45 keeps {0,1}. */
    const double probs[4] = {0.5, 0.25, 0.15, 0.10};
    float logits[NV];
    logits_from_probs(logits, NV, probs, 4);
    lethe_sampler_params p = plain_params();
    p.min_p = 0.29f;
    lethe_sampler *s = lethe_sampler_new(p, NV);
    int counts[8];
    const int n = 20000;
    assert_int_equal(draw_hist(s, logits, n, counts), 0);
    assert_int_equal(counts[3], 0);
    /* 0.15/0.9 = 0.1667 */
    assert_in_range(counts[2], (int)(n * 0.146), (int)(n * 0.187));
    lethe_sampler_free(s);

    p.min_p = 0.45f;
    s = lethe_sampler_new(p, NV);
    assert_int_equal(draw_hist(s, logits, n, counts), 0);
    assert_int_equal(counts[2] + counts[3], 0);
    /* 0.5/0.75 = 0.667 */
    assert_in_range(counts[0], (int)(n * 0.647), (int)(n * 0.687));
    lethe_sampler_free(s);
}

static void test_temperature_and_top_k(void **state) {
    (void)state;
    /* Uniform over 4 tokens at T=1; T=0.5 squares the odds of 2:1 logits. */
    const double probs[4] = {0.4, 0.2, 0.2, 0.2};
    float logits[NV];
    logits_from_probs(logits, NV, probs, 4);
    lethe_sampler_params p = plain_params();
    p.temperature = 0.5f;   /* weights 0.16 0.04 0.04 0.04 → 0.571 for id 0 */
    lethe_sampler *s = lethe_sampler_new(p, NV);
    int counts[8];
    const int n = 20000;
    assert_int_equal(draw_hist(s, logits, n, counts), 0);
    assert_in_range(counts[0], (int)(n * 0.551), (int)(n * 0.591));
    lethe_sampler_free(s);

    /* top_k 2 on ties: keeps id 0 and the lowest id among the tied (id 1). */
    p = plain_params();
    p.top_k = 2;
    s = lethe_sampler_new(p, NV);
    assert_int_equal(draw_hist(s, logits, n, counts), 0);
    assert_int_equal(counts[2] + counts[3], 0);
    assert_in_range(counts[0], (int)(n * 0.647), (int)(n * 0.687));
    lethe_sampler_free(s);

    /* a full vocabulary with all stages on stays inside the vocabulary */
    float *big = malloc(NV * sizeof(float));
    tu_rand_fill(big, NV, 5);
    p = lethe_sampler_default_params();
    p.seed = 5;
    s = lethe_sampler_new(p, NV);
    for (int i = 0; i < 100; i++) {
        lethe_token t = lethe_sampler_sample(s, big);
        assert_true(t >= 0 && t < NV);
    }
    lethe_sampler_free(s);
    free(big);
}

static void test_repeat_penalty(void **state) {
    (void)state;
    float logits[NV];
    for (int i = 0; i < NV; i++) logits[i] = -5.0f;
    logits[10] = 2.0f;   /* positive: divided by the penalty   */
    logits[11] = 1.5f;
    logits[20] = -1.0f;  /* negative: multiplied by the penalty */
    logits[21] = -1.5f;
    lethe_sampler_params p = plain_params();
    p.temperature = 0.0f;
    p.repeat_penalty = 1.5f;   /* 2.0/1.5 = 1.33 < 1.5 */
    p.repeat_last_n = 3;
    lethe_sampler *s = lethe_sampler_new(p, NV);
    assert_int_equal(lethe_sampler_sample(s, logits), 10);
    lethe_sampler_accept(s, 10);
    assert_int_equal(lethe_sampler_sample(s, logits), 11);
    /* repeated occurrences are penalised once: 2.0/1.5 still beats nothing else */
    lethe_sampler_accept(s, 11);
    lethe_sampler_accept(s, 10);
    /* 10 → 1.33, 11 → 1.0 */
    assert_int_equal(lethe_sampler_sample(s, logits), 10);
    /* window of 3: pushing three other tokens forgets 10 and 11 */
    lethe_sampler_accept(s, 500);
    lethe_sampler_accept(s, 501);
    lethe_sampler_accept(s, 502);
    assert_int_equal(lethe_sampler_sample(s, logits), 10);
    lethe_sampler_free(s);

    /* negative logits get more negative */
    float neg[NV];
    for (int i = 0; i < NV; i++) neg[i] = -100.0f;
    neg[20] = -1.0f;   /* *1.6 = -1.6 < -1.5 */
    neg[21] = -1.5f;
    p.repeat_penalty = 1.6f;
    s = lethe_sampler_new(p, NV);
    assert_int_equal(lethe_sampler_sample(s, neg), 20);
    lethe_sampler_accept(s, 20);
    assert_int_equal(lethe_sampler_sample(s, neg), 21);
    /* reset forgets the history */
    lethe_sampler_reset(s);
    assert_int_equal(lethe_sampler_sample(s, neg), 20);
    lethe_sampler_free(s);

    /* the input logits are never modified */
    float copy[NV];
    memcpy(copy, logits, sizeof copy);
    p.repeat_penalty = 2.0f;
    s = lethe_sampler_new(p, NV);
    lethe_sampler_accept(s, 10);
    lethe_sampler_sample(s, logits);
    assert_memory_equal(copy, logits, sizeof copy);
    lethe_sampler_free(s);
}

/* Sampling from a row's best candidates (what on-device TOP_K returns)
 * must pick the token the full row gives, draw after draw from one seed:
 * the same kept set, the same order, the same random numbers. Chains of
 * every kind the candidates can serve; rows with ties, -inf, NaN, all
 * equal; logits spread so that min-p sometimes keeps fewer than top_k (the
 * host then draws in id order, which the (top_k + 1)-th candidate tells). */
static void test_sample_top_k_matches(void **state) {
    (void)state;
    const struct { float temp; int32_t top_k; float top_p, min_p; } ch[] = {
        {0.0f, 40, 0.95f, 0.05f}, {0.8f, 1, 1.0f, 0.0f},   {0.8f, 40, 0.95f, 0.05f}, {0.8f, 64, 1.0f, 0.05f},
        {1.5f, 64, 1.0f, 0.0f},   {0.7f, 5, 0.5f, 0.0f},   {1.0f, 40, 1.0f, 0.2f},   {0.3f, 64, 0.9f, 0.5f},
        {2.0f, 255, 1.0f, 0.01f}, {1.2f, 200, 0.99f, 0.0f},
    };
    const float scales[3] = {1.0f, 20.0f, 60.0f};
    const int pats[4] = {0, 1, 2, 5};
    float *row = malloc(NV * sizeof(float));
    int32_t *cand = malloc(257 * 2 * sizeof(int32_t));
    assert_non_null(row);
    assert_non_null(cand);
    int id_order_rows = 0, draws = 0;
    for (size_t c = 0; c < sizeof ch / sizeof ch[0]; c++) {
        lethe_sampler_params p = plain_params();
        p.temperature = ch[c].temp;
        p.top_k = ch[c].top_k;
        p.top_p = ch[c].top_p;
        p.min_p = ch[c].min_p;
        p.seed = 77 + c;
        lethe_sampler *full = lethe_sampler_new(p, NV), *dev = lethe_sampler_new(p, NV);
        assert_non_null(full);
        assert_non_null(dev);
        const int32_t need = lethe_sampler_top_k_needed(dev);
        const int32_t want = ch[c].temp == 0.0f || ch[c].top_k == 1 ? 1
                           : ch[c].top_k + (ch[c].min_p > 0.0f && ch[c].top_p >= 1.0f);
        assert_int_equal(need, want);
        for (int i = 0; i < 240; i++) {
            tu_topk_fill(row, NV, pats[i % 4], 1000 * c + i);
            for (int j = 0; j < NV; j++) row[j] *= scales[(i / 4) % 3];
            tu_topk_oracle(row, NV, need, cand);
            if (ch[c].min_p > 0.0f && ch[c].top_p >= 1.0f && ch[c].temp > 0.0f) {
                float lmax = -INFINITY;
                int kept = 0;
                for (int j = 0; j < NV; j++) if (row[j] > lmax) lmax = row[j];
                for (int j = 0; j < NV; j++) kept += (row[j] - lmax) / ch[c].temp >= logf(ch[c].min_p);
                id_order_rows += isfinite(lmax) && kept <= ch[c].top_k;
            }
            const lethe_token a = lethe_sampler_sample(full, row);
            const lethe_token b = lethe_sampler_sample_top_k(dev, (const lethe_candidate *)cand, need);
            if (a != b)
                fail_msg("chain %zu row %d (pattern %d): full row %d, candidates %d", c, i, pats[i % 4], a, b);
            draws++;
        }
        lethe_sampler_free(full);
        lethe_sampler_free(dev);
    }
    print_message("  %d draws identical; %d rows drawn in id order (min-p kept <= top_k)\n", draws, id_order_rows);
    assert_true(id_order_rows > 10);
    free(row);
    free(cand);
}

/* What candidates cannot serve, and bad candidates. */
static void test_sample_top_k_refusals(void **state) {
    (void)state;
    lethe_sampler_params p = plain_params();
    p.top_k = 0;
    lethe_sampler *s = lethe_sampler_new(p, NV);
    assert_int_equal(lethe_sampler_top_k_needed(s), 0);   /* top-k off: the whole row */
    lethe_candidate c[3] = {{5, 2.0f}, {7, 1.0f}, {1, 0.5f}};
    assert_int_equal(lethe_sampler_sample_top_k(s, c, 3), -1);
    lethe_sampler_free(s);
    p.top_k = 3;
    p.repeat_penalty = 1.3f;   /* changes logits before selection */
    s = lethe_sampler_new(p, NV);
    assert_int_equal(lethe_sampler_top_k_needed(s), 0);
    lethe_sampler_free(s);
    p.repeat_penalty = 1.0f;
    p.top_k = NV;              /* no cut at all */
    s = lethe_sampler_new(p, NV);
    assert_int_equal(lethe_sampler_top_k_needed(s), 0);
    lethe_sampler_free(s);
    p.top_k = 3;
    s = lethe_sampler_new(p, NV);
    assert_int_equal(lethe_sampler_top_k_needed(s), 3);
    assert_int_equal(lethe_sampler_sample_top_k(s, c, 2), -1);          /* too few */
    lethe_candidate bad[3] = {{5, 1.0f}, {7, 2.0f}, {1, 0.5f}};
    assert_int_equal(lethe_sampler_sample_top_k(s, bad, 3), -1);        /* out of order */
    lethe_candidate oob[3] = {{5, 2.0f}, {NV, 1.0f}, {1, 0.5f}};
    assert_int_equal(lethe_sampler_sample_top_k(s, oob, 3), -1);        /* id out of range */
    lethe_token t = lethe_sampler_sample_top_k(s, c, 3);
    assert_true(t == 5 || t == 7 || t == 1);
    lethe_sampler_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_greedy_is_argmax),
        cmocka_unit_test(test_top_k1_is_greedy),
        cmocka_unit_test(test_seed_reproducible),
        cmocka_unit_test(test_top_p),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_temperature_and_top_k),
        cmocka_unit_test(test_repeat_penalty),
        cmocka_unit_test(test_sample_top_k_matches),
        cmocka_unit_test(test_sample_top_k_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
