/* test_hf_convert.c — `lethe convert`: the tiny HF checkpoints of
 * tests/data/hf written as GGUF, loaded back, against transformers' logits.
 *
 * Limits (max |lethe - ref| / max |ref|, every position):
 *   f32 GGUF  1e-4 (the same arithmetic as the safetensors path; llama's Q/K
 *             rows permuted for NORM RoPE must give the same result as NEOX);
 *   f16 GGUF  2e-3 (weights rounded to 11 bits; measured 3e-4 to 6e-4);
 *   q8_0 GGUF 3e-2 (measured 1.5e-2 to 1.8e-2).
 * When llama.cpp's peer binaries are present (tools/peer/build-llama-cpp.sh),
 * llama.cpp loads the f32 GGUF too and must reproduce transformers within 1e-4. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "hf_convert.h"
#include "lethe.h"
#include "testutil.h"

#define MAX_TOK 256

static int read_tokens(const char *model, lethe_token *toks) {
    char p[1024];
    snprintf(p, sizeof p, "%s/hf/%s/tokens.txt", tu_data_dir(), model);
    FILE *f = fopen(p, "r");
    if (!f) fail_msg("cannot open %s", p);
    int n = 0;
    while (n < MAX_TOK && fscanf(f, "%d", &toks[n]) == 1) n++;
    fclose(f);
    return n;
}

static double rel_err(const float *ref, const float *got, size_t n) {
    double maxref = 0, maxdiff = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        maxref = fmax(maxref, fabs(ref[i]));
        maxdiff = fmax(maxdiff, fabs((double)ref[i] - got[i]));
    }
    return maxdiff / (maxref > 0 ? maxref : 1);
}

static char *convert(const char *model, lethe_dtype type) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/hf/%s", tu_data_dir(), model);
    char *out = malloc(64);
    snprintf(out, 64, "/tmp/lethe-conv-XXXXXX");
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    close(fd);
    lethe_status st = lethe_hf_convert(dir, out, type);
    if (st != LETHE_OK) fail_msg("convert %s: %s: %s", model, lethe_strerror(st), lethe_last_error());
    return out;
}

/* lethe's logits over the fixture tokens from a GGUF, vs transformers. */
static double gguf_error(const char *model, const char *gguf, const char *text_check) {
    lethe_status st;
    lethe_model *m = lethe_model_load(gguf, lethe_model_default_params(), &st);
    if (!m) fail_msg("load %s: %s: %s", gguf, lethe_strerror(st), lethe_last_error());
    lethe_token toks[MAX_TOK];
    int n = read_tokens(model, toks);
    if (text_check) {   /* the tokenizer went through GGUF unchanged */
        lethe_token got[MAX_TOK];
        int k = lethe_tokenize(m, text_check, strlen(text_check), got, MAX_TOK, true, true);
        assert_int_equal(k, n);
        assert_memory_equal(got, toks, (size_t)n * sizeof *got);
    }
    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = 256;
    cp.n_threads = 2;
    cp.kv_type = LETHE_KV_F32;
    lethe_context *c = lethe_context_new(m, cp, &st);
    assert_non_null(c);
    int V = lethe_n_vocab(m);
    int8_t want[MAX_TOK];
    memset(want, 1, sizeof want);
    lethe_batch b = lethe_batch_one(toks, n);
    b.logits = want;
    assert_int_equal(lethe_decode(c, b), LETHE_OK);
    float *got = malloc((size_t)n * V * sizeof *got);
    for (int i = 0; i < n; i++) memcpy(got + (size_t)i * V, lethe_get_logits(c, i), (size_t)V * sizeof *got);
    char p[1024];
    snprintf(p, sizeof p, "%s/hf/%s/logits.f32", tu_data_dir(), model);
    size_t size;
    float *ref = tu_read_file(p, &size);
    assert_non_null(ref);
    assert_int_equal(size, (size_t)n * V * sizeof(float));
    double e = rel_err(ref, got, (size_t)n * V);
    free(ref);
    free(got);
    lethe_context_free(c);
    lethe_model_free(m);
    return e;
}

static char *prompt(void) {
    char p[1024];
    snprintf(p, sizeof p, "%s/hf/prompt.txt", tu_data_dir());
    size_t n;
    char *t = tu_read_file(p, &n);
    assert_non_null(t);
    char *z = realloc(t, n + 1);
    z[n] = 0;
    return z;
}

/* llama.cpp on the same GGUF (skipped when its binaries are not built). */
static void check_llama_cpp(const char *model, const char *gguf) {
    char bin[1024];
    const char *home = getenv("HOME");
    snprintf(bin, sizeof bin, "%s/.cache/lethe/llama.cpp-build/bin/lethe-peer-dump", home ? home : "");
    if (access(bin, X_OK) != 0) {
        print_message("llama.cpp peer not built: %s skipped\n", model);
        return;
    }
    char out[] = "/tmp/lethe-peer-XXXXXX";
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    close(fd);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' -m '%s' -t 1 --prompt-file '%s/hf/prompt.txt' --logits '%s' >/dev/null 2>&1", bin,
             gguf, tu_data_dir(), out);
    assert_int_equal(system(cmd), 0);
    size_t n1, n2;
    float *got = tu_read_file(out, &n1);
    char p[1024];
    snprintf(p, sizeof p, "%s/hf/%s/logits.f32", tu_data_dir(), model);
    float *ref = tu_read_file(p, &n2);
    assert_non_null(got);
    assert_int_equal(n1, n2);
    double e = rel_err(ref, got, n1 / sizeof(float));
    print_message("%s: llama.cpp on the converted GGUF: relative error %.3g\n", model, e);
    assert_true(e <= 1e-4);
    free(got);
    free(ref);
    unlink(out);
}

static void check(const char *model) {
    char *text = prompt();
    static const struct { lethe_dtype t; double lim; } kinds[] = {{LETHE_F32, 1e-4}, {LETHE_F16, 2e-3}, {LETHE_Q8_0, 3e-2}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        char *g = convert(model, kinds[i].t);
        double e = gguf_error(model, g, i == 0 ? text : NULL);
        print_message("%s as %s GGUF: relative error %.3g\n", model, lethe_dtype_name(kinds[i].t), e);
        assert_true(e <= kinds[i].lim);
        if (kinds[i].t == LETHE_F32) check_llama_cpp(model, g);
        unlink(g);
        free(g);
    }
    free(text);
}

static void test_llama(void **s) { (void)s; check("llama-f32"); }
static void test_qwen2(void **s) { (void)s; check("qwen2-f32"); }
static void test_qwen3(void **s) { (void)s; check("qwen3-f32"); }

static void test_dms_keys(void **s) {
    (void)s;
    char *g = convert("dms-adapter", LETHE_Q8_0);
    lethe_status st;
    lethe_gguf *f = lethe_gguf_open(g, true, &st);
    assert_non_null(f);
    int64_t w;
    double x;
    char buf[32];
    assert_true(lethe_gguf_get_int(f, "qwen3.dms.window_size", &w));
    assert_int_equal(w, 16);
    assert_true(lethe_gguf_get_float(f, "qwen3.dms.alpha_scale", &x) && x == 100.0);
    assert_true(lethe_gguf_get_float(f, "qwen3.dms.alpha_offset", &x) && x == 5.0);
    assert_true(lethe_gguf_get_str(f, "qwen3.dms.variant", buf, sizeof buf));
    assert_string_equal(buf, "adapter");
    assert_true(lethe_gguf_get_str(f, "qwen3.dms.alpha_per", buf, sizeof buf));
    assert_string_equal(buf, "head");
    const lethe_gguf_tensor *t = lethe_gguf_find_tensor(f, "blk.1.dms_alpha.weight");
    assert_non_null(t);
    assert_int_equal(t->type, LETHE_F32);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->ne[1], 2);
    t = lethe_gguf_find_tensor(f, "blk.1.dms_alpha_norm.weight");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 1);
    t = lethe_gguf_find_tensor(f, "blk.0.attn_q.weight");
    assert_int_equal(t->type, LETHE_Q8_0);
    lethe_gguf_close(f);
    unlink(g);
    free(g);
    /* bad input: not a directory, unsupported type */
    assert_int_equal(lethe_hf_convert("/nonexistent", "/tmp/x.gguf", LETHE_F16), LETHE_ERR_INVALID_ARG);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/hf/llama-f32", tu_data_dir());
    assert_int_equal(lethe_hf_convert(dir, "/tmp/x.gguf", LETHE_Q6_K), LETHE_ERR_UNSUPPORTED);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama),
        cmocka_unit_test(test_qwen2),
        cmocka_unit_test(test_qwen3),
        cmocka_unit_test(test_dms_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
