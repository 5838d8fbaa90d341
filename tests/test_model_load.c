/* test_model_load.c — loading models, good and bad. Synthetic models
 * (core/synth.c) of each architecture and weight dtype must load and run;
 * broken files (missing, wrong magic, truncated, missing tensor, wrong
 * shape, unsupported dtype, unsupported architecture, absurd
 * hyper-parameters) must each give their own status and a clear message. */
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
#include "gguf_write.h"
#include "lethe.h"
#include "synth.h"
#include "testutil.h"

static char *tmp_path(const char *tag) {
    char *p = malloc(4096);
    const char *dir = getenv("TMPDIR");
    snprintf(p, 4096, "%s/lethe-model-%d-%s.gguf", dir ? dir : "/tmp", (int)getpid(), tag);
    return p;
}

static lethe_status try_load(const char *path) {
    lethe_status st = LETHE_OK;
    lethe_model *m = lethe_model_load(path, lethe_model_default_params(), &st);
    if (m) {
        lethe_model_free(m);
        return LETHE_OK;
    }
    assert_int_not_equal(st, LETHE_OK);
    assert_true(strlen(lethe_last_error()) > 0);
    return st;
}

/* Run a synthetic model on a short prompt; the logits must be finite. */
static void run_synth(lethe_synth_params sp) {
    char *path = tmp_path("run");
    lethe_status st = lethe_synth_write(path, sp);
    if (st != LETHE_OK) fail_msg("synth: %s", lethe_last_error());
    lethe_model *m = lethe_model_load(path, lethe_model_default_params(), &st);
    if (!m) fail_msg("load %s: %s", sp.arch, lethe_last_error());
    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 2;
    lethe_context *c = lethe_context_new(m, cp, &st);
    assert_non_null(c);
    lethe_token toks[32];
    int n = lethe_tokenize(m, "the theory in the north", 23, toks, 32, true, true);
    assert_true(n > 0);
    assert_int_equal(lethe_decode(c, lethe_batch_one(toks, n)), LETHE_OK);
    const float *lg = lethe_get_logits(c, -1);
    double sum = 0;
    for (int i = 0; i < lethe_n_vocab(m); i++) {
        assert_true(isfinite(lg[i]));
        sum += fabs(lg[i]);
    }
    assert_true(sum > 0);
    lethe_context_free(c);
    lethe_model_free(m);
    unlink(path);
    free(path);
}

static void test_synthetic_models_run(void **state) {
    (void)state;
    static const lethe_dtype wtypes[] = {LETHE_F32, LETHE_F16, LETHE_Q8_0, LETHE_Q4_0, LETHE_Q4_1};
    for (size_t i = 0; i < sizeof wtypes / sizeof wtypes[0]; i++) {
        lethe_synth_params sp = lethe_synth_default_params();
        sp.wtype = wtypes[i];
        sp.embd_type = wtypes[i];
        sp.tied_output = i % 2 == 0;
        run_synth(sp);
    }
    static const char *const archs[] = {"qwen2", "qwen3"};
    for (size_t i = 0; i < 2; i++) {
        lethe_synth_params sp = lethe_synth_default_params();
        sp.arch = archs[i];
        run_synth(sp);
    }
}

/* ---- broken files, derived from a valid synthetic model ------------------ */

typedef struct mutation {
    const char *drop_tensor;          /* leave this tensor out              */
    const char *reshape_tensor;       /* give this tensor ne[1] + 1 rows    */
    const char *retype_tensor;        /* mark this tensor with `new_type`   */
    int new_type;
    const char *int_key;              /* override an integer key            */
    int64_t int_value;
    const char *str_key;              /* override a string key              */
    const char *str_value;
} mutation;

static char *make_broken(const mutation *mu) {
    char *good = tmp_path("good"), *bad = tmp_path("bad");
    lethe_synth_params sp = lethe_synth_default_params();
    sp.wtype = LETHE_Q8_0;
    assert_int_equal(lethe_synth_write(good, sp), LETHE_OK);
    lethe_status st;
    lethe_gguf *g = lethe_gguf_open(good, true, &st);
    assert_non_null(g);
    lethe_gguf_writer *w = lethe_gguf_writer_new();
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const lethe_gguf_kv *kv = &g->kv[i];
        if (mu->int_key && !strcmp(kv->key, mu->int_key)) {
            assert_int_equal(lethe_gguf_writer_add_i64(w, kv->key, mu->int_value), LETHE_OK);
        } else if (mu->str_key && !strcmp(kv->key, mu->str_key)) {
            assert_int_equal(lethe_gguf_writer_add_str(w, kv->key, mu->str_value), LETHE_OK);
        } else {
            assert_int_equal(lethe_gguf_writer_add_kv(w, kv), LETHE_OK);
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lethe_gguf_tensor *t = &g->tensors[i];
        if (mu->drop_tensor && !strcmp(t->name, mu->drop_tensor)) continue;
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        lethe_dtype type = t->type;
        const void *data = t->data;
        if (mu->reshape_tensor && !strcmp(t->name, mu->reshape_tensor)) {
            ne[1] += 1;
            data = NULL;   /* zeros of the new size */
        }
        if (mu->retype_tensor && !strcmp(t->name, mu->retype_tensor)) {
            type = (lethe_dtype)mu->new_type;
            ne[0] = 256;   /* one k-quant block per row */
            data = NULL;
        }
        assert_int_equal(lethe_gguf_writer_add_tensor(w, t->name, type, t->n_dims, ne, data, false), LETHE_OK);
    }
    assert_int_equal(lethe_gguf_writer_write_file(w, bad), LETHE_OK);
    lethe_gguf_writer_free(w);
    lethe_gguf_close(g);
    unlink(good);
    free(good);
    return bad;
}

static void expect_broken(const mutation *mu, lethe_status want, const char *in_message) {
    char *bad = make_broken(mu);
    lethe_status st = try_load(bad);
    if (st != want)
        fail_msg("expected %s, got %s: %s", lethe_strerror(want), lethe_strerror(st), lethe_last_error());
    if (in_message && !strstr(lethe_last_error(), in_message))
        fail_msg("message '%s' does not mention '%s'", lethe_last_error(), in_message);
    unlink(bad);
    free(bad);
}

static void test_missing_tensor(void **state) {
    (void)state;
    mutation mu = {.drop_tensor = "blk.1.ffn_up.weight"};
    expect_broken(&mu, LETHE_ERR_MISSING_TENSOR, "blk.1.ffn_up.weight");
}

static void test_wrong_shape(void **state) {
    (void)state;
    mutation mu = {.reshape_tensor = "blk.0.attn_k.weight"};
    expect_broken(&mu, LETHE_ERR_SHAPE, "blk.0.attn_k.weight");
}

static void test_unsupported_dtype(void **state) {
    (void)state;
    /* q2_k is a valid GGUF type the engine does not compute with */
    mutation mu = {.retype_tensor = "blk.0.attn_q.weight", .new_type = LETHE_Q2_K};
    expect_broken(&mu, LETHE_ERR_UNSUPPORTED_DTYPE, "blk.0.attn_q.weight");
}

static void test_unsupported_architecture(void **state) {
    (void)state;
    mutation mu = {.str_key = "general.architecture", .str_value = "mamba"};
    expect_broken(&mu, LETHE_ERR_UNSUPPORTED, "mamba");
}

static void test_absurd_hparams(void **state) {
    (void)state;
    mutation mu = {.int_key = "llama.block_count", .int_value = 1000000000};
    expect_broken(&mu, LETHE_ERR_CORRUPT, "block_count");
    mutation mu2 = {.int_key = "llama.attention.head_count_kv", .int_value = 3};
    expect_broken(&mu2, LETHE_ERR_CORRUPT, "head");
    mutation mu3 = {.int_key = "llama.embedding_length", .int_value = -5};
    expect_broken(&mu3, LETHE_ERR_CORRUPT, "embedding_length");
}

static void test_missing_and_foreign_files(void **state) {
    (void)state;
    assert_int_equal(try_load("/nonexistent/dir/model.gguf"), LETHE_ERR_IO);
    assert_non_null(strstr(lethe_last_error(), "/nonexistent/dir/model.gguf"));
    const char text[] = "this is a text file, not a model\n";
    char *p = tu_write_temp(text, sizeof text);
    assert_int_equal(try_load(p), LETHE_ERR_BAD_MAGIC);
    unlink(p);
    free(p);
    assert_int_equal(try_load(NULL), LETHE_ERR_INVALID_ARG);
}

static void test_truncated_default_model(void **state) {
    (void)state;
    size_t size;
    void *data = tu_read_file(tu_model_path(), &size);
    assert_non_null(data);
    /* inside the metadata, inside the tensor index, inside the tensor data */
    const size_t cuts[] = {100, 200000, size / 2, size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char *p = tu_write_temp(data, cuts[i]);
        lethe_status st = try_load(p);
        if (st != LETHE_ERR_TRUNCATED)
            fail_msg("cut at %zu: expected truncated, got %s: %s", cuts[i], lethe_strerror(st), lethe_last_error());
        unlink(p);
        free(p);
    }
    free(data);
}

static void test_backend_not_available(void **state) {
    (void)state;
    lethe_model_params mp = lethe_model_default_params();
    mp.backend = "nosuchbackend";
    lethe_status st;
    assert_null(lethe_model_load(tu_model_path(), mp, &st));
    assert_int_equal(st, LETHE_ERR_BACKEND);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_synthetic_models_run),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_unsupported_dtype),
        cmocka_unit_test(test_unsupported_architecture),
        cmocka_unit_test(test_absurd_hparams),
        cmocka_unit_test(test_missing_and_foreign_files),
        cmocka_unit_test(test_truncated_default_model),
        cmocka_unit_test(test_backend_not_available),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
