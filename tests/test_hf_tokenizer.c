/* test_hf_tokenizer.c — tokenizer.json parity with the `tokenizers` library.
 *
 * tests/data/hf-tok/NAME/ holds a tokenizer.json built by `tokenizers` with a
 * family's real configuration (qwen2: NFC + Qwen2 split regex + ByteLevel;
 * llama3: Llama 3 regex, ignore_merges, BOS by post-processor; gpt2: Digits +
 * ByteLevel regex; spm: Llama 2 style SentencePiece BPE with byte fallback)
 * and expected.jsonl, the library's ids for a multilingual / emoji /
 * whitespace-heavy text set (tools/peer/make-tokenizer-fixtures.py). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_tokenizer.h"
#include "lethe.h"
#include "testutil.h"

static lethe_tokenizer *load(const char *name, size_t *n_texts, json_t **cases) {
    char p[1024];
    snprintf(p, sizeof p, "%s/hf-tok/%s/tokenizer.json", tu_data_dir(), name);
    size_t tl = 0, cl = 0;
    char *tj = tu_read_file(p, &tl);
    if (!tj) fail_msg("cannot read %s", p);
    snprintf(p, sizeof p, "%s/hf-tok/%s/tokenizer_config.json", tu_data_dir(), name);
    char *tc = tu_read_file(p, &cl);
    lethe_hf_tokenizer_files f = {tj, tl, tc, cl, NULL, 0, NULL, 0};
    lethe_status st;
    lethe_tokenizer *t = lethe_tokenizer_from_hf(&f, NULL, &st);
    if (!t) fail_msg("%s: %s: %s", name, lethe_strerror(st), lethe_last_error());
    free(tj);
    free(tc);
    snprintf(p, sizeof p, "%s/hf-tok/%s/expected.jsonl", tu_data_dir(), name);
    json_error_t err;
    FILE *fp = fopen(p, "r");
    assert_non_null(fp);
    json_t *arr = json_array();
    char line[1 << 14];
    while (fgets(line, sizeof line, fp)) {
        json_t *j = json_loads(line, 0, &err);
        if (!j) fail_msg("%s: %s", p, err.text);
        json_array_append_new(arr, j);
    }
    fclose(fp);
    *n_texts = json_array_size(arr);
    *cases = arr;
    return t;
}

static void check(const char *name) {
    size_t n;
    json_t *cases;
    lethe_tokenizer *t = load(name, &n, &cases);
    assert_true(n >= 50);
    int failures = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(cases, i);
        const char *text = json_string_value(json_object_get(c, "text"));
        size_t len = json_string_length(json_object_get(c, "text"));
        json_t *ids = json_object_get(c, "ids");
        lethe_token got[1024];
        int k = lethe_tokenizer_encode(t, text, len, got, 1024, true, true);
        bool ok = k == (int)json_array_size(ids);
        for (int j = 0; ok && j < k; j++) ok = got[j] == json_integer_value(json_array_get(ids, (size_t)j));
        if (!ok) {
            failures++;
            char *want = json_dumps(ids, JSON_COMPACT);
            char *shown = json_dumps(json_object_get(c, "text"), JSON_ENCODE_ANY);
            fprintf(stderr, "%s: text %zu %s\n  want %s\n  got ", name, i, shown, want);
            free(shown);
            for (int j = 0; j < k && j < 1024; j++) fprintf(stderr, "%d ", got[j]);
            fprintf(stderr, "\n");
            free(want);
        }
    }
    print_message("%s: %zu texts, %d differ\n", name, n, failures);
    assert_int_equal(failures, 0);
    json_decref(cases);
    lethe_tokenizer_free(t);
}

static void test_qwen2(void **s) { (void)s; check("qwen2"); }
static void test_llama3(void **s) { (void)s; check("llama3"); }
static void test_gpt2(void **s) { (void)s; check("gpt2"); }
static void test_spm(void **s) { (void)s; check("spm"); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen2),
        cmocka_unit_test(test_llama3),
        cmocka_unit_test(test_gpt2),
        cmocka_unit_test(test_spm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
