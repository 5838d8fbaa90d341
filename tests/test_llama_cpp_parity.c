/* test_llama_cpp_parity.c — the default model against llama.cpp, the
 * independent peer. Fixtures in tests/data were produced by llama.cpp
 * (tools/peer/make-fixtures.sh; f32 KV cache, no flash attention, so lethe
 * runs with an f32 cache here too) for each tests/data/prompts/NAME.txt:
 *   NAME.tokens.txt            llama.cpp's token ids of the prompt
 *   NAME.logits.f16            its logits at every position, f16 [n_tokens, n_vocab]
 *   NAME.greedy64.txt          its greedy continuation
 *   NAME.greedy64.margins.txt  its top-1 minus top-2 logit at each greedy step
 *
 * What is required, and why these limits:
 *  - token ids identical;
 *  - at every prompt position the same argmax (unless the peer's own top-2
 *    gap is below LETHE_TIE) and logits NMSE <= 2e-2. Both engines round
 *    activations to 8 bits inside quantized matmuls, so a difference in the
 *    last bit of any sum flips some roundings and the two runs drift apart
 *    by the size of that quantization noise. llama.cpp disagrees with itself
 *    by this much: flash attention on vs off moves its logits by NMSE up to
 *    3.7e-2 on these prompts, an f16 instead of f32 cache by 7.6e-3, and at
 *    low-variance positions it sits 1.6e-2 from a float64 evaluation of the
 *    same weights (tools/peer/reference.py). Most positions agree far more
 *    closely (down to 4e-8, the f16 storage of the fixture); the test prints
 *    the median and the worst so drift is visible.
 *  - the greedy continuation, teacher-forced with the peer's tokens so one
 *    near-tie does not derail the rest: at each of the 64 steps lethe's
 *    argmax equals the peer's token wherever the peer's margin >= LETHE_TIE
 *    (0.25 logit: the drift above is ~0.1-0.3 logit RMS at the worst
 *    positions; the observed disagreements had margins 0.005-0.16), and at
 *    >= 90% of all steps.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "lethe.h"
#include "testutil.h"

#define LETHE_TIE 0.25f
#define LETHE_NMSE_LIMIT 2e-2

static lethe_model *g_model;

static int setup(void **state) {
    (void)state;
    lethe_status st;
    g_model = lethe_model_load(tu_model_path(), lethe_model_default_params(), &st);
    if (!g_model) fail_msg("load: %s: %s", lethe_strerror(st), lethe_last_error());
    return 0;
}

static int teardown(void **state) {
    (void)state;
    lethe_model_free(g_model);
    return 0;
}

static int read_ids(const char *path, int32_t *ids, int max) {
    FILE *f = fopen(path, "r");
    if (!f) fail_msg("cannot open fixture %s", path);
    int n = 0;
    while (n < max && fscanf(f, "%d", &ids[n]) == 1) n++;
    fclose(f);
    return n;
}

static void check_prompt(const char *name) {
    char path[4096];
    const char *dir = tu_data_dir();
    const int32_t V = lethe_n_vocab(g_model);

    snprintf(path, sizeof path, "%s/prompts/%s.txt", dir, name);
    size_t text_len;
    char *text = tu_read_file(path, &text_len);
    assert_non_null(text);
    int32_t ref_ids[512], ids[512];
    snprintf(path, sizeof path, "%s/%s.tokens.txt", dir, name);
    int n_ref = read_ids(path, ref_ids, 512);
    int n = lethe_tokenize(g_model, text, text_len, ids, 512, true, true);
    assert_int_equal(n, n_ref);
    assert_memory_equal(ids, ref_ids, (size_t)n * sizeof(int32_t));

    snprintf(path, sizeof path, "%s/%s.logits.f16", dir, name);
    size_t lbytes;
    uint16_t *ref16 = tu_read_file(path, &lbytes);
    assert_non_null(ref16);
    assert_int_equal(lbytes, (size_t)n * V * 2);

    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = 512;
    cp.n_threads = 2;
    cp.kv_type = LETHE_KV_F32;   /* as the fixtures were made */
    lethe_status st;
    lethe_context *c = lethe_context_new(g_model, cp, &st);
    assert_non_null(c);
    int8_t want[512];
    memset(want, 1, sizeof want);
    lethe_batch b = lethe_batch_one(ids, n);
    b.logits = want;
    assert_int_equal(lethe_decode(c, b), LETHE_OK);
    float *ref = malloc((size_t)V * sizeof(float));
    double errs[512];
    for (int i = 0; i < n; i++) {
        for (int32_t j = 0; j < V; j++) ref[j] = lethe_f16_to_f32(ref16[(size_t)i * V + j]);
        const float *got = lethe_get_logits(c, i);
        errs[i] = tu_nmse(ref, got, (size_t)V);
        if (getenv("LETHE_TEST_VERBOSE")) print_message("%s %d %.3g\n", name, i, errs[i]);
        if (errs[i] > LETHE_NMSE_LIMIT)
            fail_msg("%s: position %d: logits NMSE %.3g > %.1g", name, i, errs[i], LETHE_NMSE_LIMIT);
        int32_t a_ref = 0, a_got = 0, second = -1;
        for (int32_t j = 1; j < V; j++) {
            if (ref[j] > ref[a_ref]) a_ref = j;
            if (got[j] > got[a_got]) a_got = j;
        }
        for (int32_t j = 0; j < V; j++)
            if (j != a_ref && (second < 0 || ref[j] > ref[second])) second = j;
        if (a_got != a_ref && ref[a_ref] - ref[second] >= LETHE_TIE)
            fail_msg("%s: position %d: argmax %d, llama.cpp %d (margin %.3f)", name, i, a_got, a_ref,
                     ref[a_ref] - ref[second]);
    }
    double sorted[512];
    memcpy(sorted, errs, (size_t)n * sizeof(double));
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
            double t = sorted[j]; sorted[j] = sorted[j - 1]; sorted[j - 1] = t;
        }
    print_message("%s: %d tokens, logits NMSE median %.3g, worst %.3g\n", name, n, sorted[n / 2], sorted[n - 1]);

    int32_t greedy_ref[128];
    float margins[128];
    snprintf(path, sizeof path, "%s/%s.greedy64.txt", dir, name);
    int n_greedy = read_ids(path, greedy_ref, 128);
    snprintf(path, sizeof path, "%s/%s.greedy64.margins.txt", dir, name);
    FILE *mf = fopen(path, "r");
    assert_non_null(mf);
    int n_margins = 0;
    while (n_margins < 128 && fscanf(mf, "%f", &margins[n_margins]) == 1) n_margins++;
    fclose(mf);
    assert_true(n_greedy > 0);
    assert_int_equal(n_margins, n_greedy);
    int same = 0, checked = 0;
    for (int i = 0; i < n_greedy; i++) {
        const float *lg = lethe_get_logits(c, -1);
        lethe_token best = 0;
        for (int32_t j = 1; j < V; j++)
            if (lg[j] > lg[best]) best = j;
        same += best == greedy_ref[i];
        if (margins[i] >= LETHE_TIE) {
            checked++;
            if (best != greedy_ref[i])
                fail_msg("%s: greedy step %d: argmax %d, llama.cpp chose %d with margin %.3f", name, i, best,
                         greedy_ref[i], margins[i]);
        }
        if (i + 1 < n_greedy) assert_int_equal(lethe_decode(c, lethe_batch_one(&greedy_ref[i], 1)), LETHE_OK);
    }
    print_message("%s: greedy %d/%d steps identical; all %d with a peer margin >= %.2f identical\n", name, same,
                  n_greedy, checked, LETHE_TIE);
    assert_true(same * 10 >= n_greedy * 9);
    free(ref);
    free(ref16);
    free(text);
    lethe_context_free(c);
}

static void test_all_fixtures(void **state) {
    (void)state;
    char path[4096];
    snprintf(path, sizeof path, "%s/prompts", tu_data_dir());
    DIR *d = opendir(path);
    assert_non_null(d);
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".txt")) continue;
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(len - 4), e->d_name);
        check_prompt(name);
        count++;
    }
    closedir(d);
    assert_true(count >= 3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_fixtures),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
