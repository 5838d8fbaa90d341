/* test_llama_cpp_parity.c — the default model against llama.cpp, the
 * independent peer. Fixtures in tests/data were produced by llama.cpp
 * (tools/peer/make-fixtures.sh) for each tests/data/prompts/NAME.txt:
 *   NAME.tokens.txt    llama.cpp's token ids of the prompt (one per line)
 *   NAME.logits.f16    its logits at every position, f16 [n_tokens, n_vocab]
 *   NAME.greedy64.txt  its greedy continuation (ids, one per line)
 * Required: identical ids, logits NMSE <= 1e-3 at every position, identical
 * greedy continuations. */
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
    lethe_status st;
    lethe_context *c = lethe_context_new(g_model, cp, &st);
    assert_non_null(c);
    int8_t want[512];
    memset(want, 1, sizeof want);
    lethe_batch b = lethe_batch_one(ids, n);
    b.logits = want;
    assert_int_equal(lethe_decode(c, b), LETHE_OK);
    float *ref = malloc((size_t)V * sizeof(float));
    double worst = 0;
    for (int i = 0; i < n; i++) {
        for (int32_t j = 0; j < V; j++) ref[j] = lethe_f16_to_f32(ref16[(size_t)i * V + j]);
        double e = tu_nmse(ref, lethe_get_logits(c, i), (size_t)V);
        if (e > worst) worst = e;
        if (e > 1e-3) fail_msg("%s: position %d: logits NMSE %.3g > 1e-3", name, i, e);
    }
    print_message("%s: %d tokens, worst logits NMSE %.3g\n", name, n, worst);

    int32_t greedy_ref[128];
    snprintf(path, sizeof path, "%s/%s.greedy64.txt", dir, name);
    int n_greedy = read_ids(path, greedy_ref, 128);
    assert_true(n_greedy > 0);
    for (int i = 0; i < n_greedy; i++) {
        const float *lg = lethe_get_logits(c, -1);
        lethe_token best = 0;
        for (int32_t j = 1; j < V; j++)
            if (lg[j] > lg[best]) best = j;
        if (best != greedy_ref[i])
            fail_msg("%s: greedy token %d is %d, llama.cpp chose %d", name, i, best, greedy_ref[i]);
        if (i + 1 < n_greedy) assert_int_equal(lethe_decode(c, lethe_batch_one(&best, 1)), LETHE_OK);
    }
    print_message("%s: %d greedy tokens identical\n", name, n_greedy);
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
