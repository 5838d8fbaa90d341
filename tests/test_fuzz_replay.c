/* test_fuzz_replay.c — every input kept under tests/fuzz/corpus/TARGET/
 * (fuzzing seeds and the inputs of crashes found and fixed) through the same
 * target bodies as the fuzzers (fuzz/fuzz_targets.h), in the normal suite, so
 * a fixed crash stays fixed. Run under ASan/UBSan by tools/test-sanitize.sh. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/fuzz_targets.h"
#include "testutil.h"

static int replay(const char *target, int (*fn)(const uint8_t *, size_t)) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/../fuzz/corpus/%s", tu_data_dir(), target);
    DIR *d = opendir(dir);
    if (!d) fail_msg("cannot open %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[2048];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        size_t size = 0;
        uint8_t *data = tu_read_file(p, &size);
        assert_non_null(data);
        /* an exact-size copy, so ASan sees any read past the input */
        uint8_t *exact = malloc(size ? size : 1);
        memcpy(exact, data, size);
        fn(exact, size);
        free(exact);
        free(data);
        n++;
    }
    closedir(d);
    print_message("%s: %d inputs\n", target, n);
    return n;
}

static void test_safetensors(void **s) { (void)s; assert_true(replay("safetensors", lethe_fuzz_safetensors) > 0); }
static void test_hf_config(void **s) { (void)s; assert_true(replay("hf_config", lethe_fuzz_hf_config) > 0); }
static void test_tokenizer_json(void **s) { (void)s; assert_true(replay("tokenizer_json", lethe_fuzz_tokenizer_json) > 0); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_safetensors),
        cmocka_unit_test(test_hf_config),
        cmocka_unit_test(test_tokenizer_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
