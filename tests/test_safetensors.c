/* test_safetensors.c — the safetensors reader, config.json and tokenizer.json
 * on good and hostile input: each bad case gives its status and a message
 * naming the problem, never a crash. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hf_model.h"
#include "hf_tokenizer.h"
#include "lethe.h"
#include "safetensors.h"
#include "testutil.h"

/* A safetensors image: 8-byte length, the header, then `data_len` bytes. */
static uint8_t *image(const char *header, size_t data_len, size_t *size) {
    size_t n = strlen(header);
    *size = 8 + n + data_len;
    uint8_t *b = calloc(1, *size);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(b + 8, header, n);
    for (size_t i = 0; i < data_len; i++) b[8 + n + i] = (uint8_t)i;
    return b;
}

static lethe_status parse(const char *header, size_t data_len) {
    size_t size;
    uint8_t *b = image(header, data_len, &size);
    lethe_status st = LETHE_ERR_INTERNAL;
    lethe_safetensors *s = lethe_safetensors_parse(b, size, &st);
    if (s) assert_int_equal(st, LETHE_OK);
    else assert_int_not_equal(st, LETHE_OK);
    lethe_safetensors_close(s);
    free(b);
    return st;
}

static void expect(const char *header, size_t data_len, lethe_status want, const char *msg_part) {
    lethe_status st = parse(header, data_len);
    if (st != want)
        fail_msg("header %s: got %s (%s), want %s", header, lethe_strerror(st), lethe_last_error(), lethe_strerror(want));
    if (msg_part && !strstr(lethe_last_error(), msg_part))
        fail_msg("message '%s' does not mention '%s'", lethe_last_error(), msg_part);
}

static void test_good(void **s) {
    (void)s;
    const char *h = "{\"__metadata__\":{\"format\":\"pt\"},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[16,28]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                    "\"c\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[28,36]}}";
    size_t size;
    uint8_t *b = image(h, 36, &size);
    lethe_status st;
    lethe_safetensors *t = lethe_safetensors_parse(b, size, &st);
    assert_non_null(t);
    assert_int_equal(t->n_tensors, 3);
    const lethe_st_tensor *x = lethe_safetensors_find(t, "b");
    assert_non_null(x);
    assert_int_equal(x->type, LETHE_BF16);
    assert_int_equal(x->n_dims, 2);
    assert_int_equal(x->ne[0], 3);   /* innermost first */
    assert_int_equal(x->ne[1], 2);
    assert_int_equal(x->size, 12);
    assert_ptr_equal(x->data, b + size - 36 + 16);
    x = lethe_safetensors_find(t, "c");
    assert_int_equal(x->n_dims, 0);
    assert_null(lethe_safetensors_find(t, "d"));
    lethe_safetensors_close(t);
    free(b);
}

static void test_header_past_file(void **s) {
    (void)s;
    uint8_t b[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}'};
    lethe_status st;
    assert_null(lethe_safetensors_parse(b, sizeof b, &st));
    assert_int_equal(st, LETHE_ERR_TRUNCATED);
    assert_non_null(strstr(lethe_last_error(), "past the end"));
    assert_null(lethe_safetensors_parse(b, 5, &st));
    assert_int_equal(st, LETHE_ERR_TRUNCATED);
}

static void test_bad_json(void **s) {
    (void)s;
    expect("{\"a\":{\"dtype\":\"F32\",", 0, LETHE_ERR_CORRUPT, "invalid");
    expect("[1,2]", 0, LETHE_ERR_BAD_MAGIC, NULL);
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, LETHE_ERR_CORRUPT, NULL);
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, LETHE_ERR_CORRUPT, "data_offsets");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, LETHE_ERR_CORRUPT, "dimension");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, LETHE_ERR_UNSUPPORTED, "dimensions");
}

static void test_unknown_dtype(void **s) {
    (void)s;
    expect("{\"a\":{\"dtype\":\"F12\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, LETHE_ERR_UNSUPPORTED_DTYPE, "F12");
}

static void test_offsets_out_of_range(void **s) {
    (void)s;
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12, LETHE_ERR_CORRUPT, "outside");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 12, LETHE_ERR_CORRUPT, "outside");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[18446744073709551615,4]}}", 12, LETHE_ERR_CORRUPT, NULL);
}

static void test_overlap(void **s) {
    (void)s;
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, LETHE_ERR_CORRUPT, "overlap");
}

static void test_shape_bytes_mismatch(void **s) {
    (void)s;
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, LETHE_ERR_SHAPE, "spans 8 bytes");
    expect("{\"a\":{\"dtype\":\"BF16\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,8]}}", 8,
           LETHE_ERR_CORRUPT, NULL);
}

/* ---- directories ------------------------------------------------------------ */

static char *make_dir(void) {
    char *d = strdup("/tmp/lethe-st-XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

static void put(const char *dir, const char *name, const void *data, size_t n) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void rm_dir(char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

static void test_shards(void **s) {
    (void)s;
    char *d = make_dir();
    size_t n1, n2;
    uint8_t *a = image("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &n1);
    uint8_t *b = image("{\"y\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, &n2);
    put(d, "m-1.safetensors", a, n1);
    put(d, "m-2.safetensors", b, n2);
    const char *idx = "{\"metadata\":{},\"weight_map\":{\"x\":\"m-1.safetensors\",\"y\":\"m-2.safetensors\"}}";
    put(d, "model.safetensors.index.json", idx, strlen(idx));
    lethe_status st;
    lethe_safetensors *t = lethe_safetensors_open_dir(d, &st);
    assert_non_null(t);
    assert_int_equal(t->n_files, 2);
    assert_int_equal(lethe_safetensors_find(t, "y")->shard, 1);
    lethe_safetensors_close(t);

    /* a shard missing */
    idx = "{\"weight_map\":{\"x\":\"m-1.safetensors\",\"y\":\"m-3.safetensors\"}}";
    put(d, "model.safetensors.index.json", idx, strlen(idx));
    assert_null(lethe_safetensors_open_dir(d, &st));
    assert_int_equal(st, LETHE_ERR_IO);
    assert_non_null(strstr(lethe_last_error(), "m-3.safetensors"));
    /* the index names a tensor the shard lacks */
    idx = "{\"weight_map\":{\"x\":\"m-1.safetensors\",\"y\":\"m-1.safetensors\"}}";
    put(d, "model.safetensors.index.json", idx, strlen(idx));
    assert_null(lethe_safetensors_open_dir(d, &st));
    assert_int_equal(st, LETHE_ERR_MISSING_TENSOR);
    /* a shard name that leaves the directory */
    idx = "{\"weight_map\":{\"x\":\"../etc/passwd\"}}";
    put(d, "model.safetensors.index.json", idx, strlen(idx));
    assert_null(lethe_safetensors_open_dir(d, &st));
    assert_int_equal(st, LETHE_ERR_CORRUPT);
    /* the same tensor in two shards */
    uint8_t *c = image("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &n1);
    put(d, "m-2.safetensors", c, n1);
    idx = "{\"weight_map\":{\"x\":\"m-1.safetensors\",\"z\":\"m-2.safetensors\"}}";
    put(d, "model.safetensors.index.json", idx, strlen(idx));
    assert_null(lethe_safetensors_open_dir(d, &st));
    assert_int_equal(st, LETHE_ERR_CORRUPT);
    assert_non_null(strstr(lethe_last_error(), "twice"));
    /* malformed index */
    put(d, "model.safetensors.index.json", "{\"weight_map\":", 14);
    assert_null(lethe_safetensors_open_dir(d, &st));
    assert_int_equal(st, LETHE_ERR_CORRUPT);
    free(a);
    free(b);
    free(c);
    rm_dir(d);
}

/* ---- config.json ------------------------------------------------------------- */

#define CFG_HEAD "{\"model_type\":\"llama\",\"num_hidden_layers\":2,\"hidden_size\":64,\"intermediate_size\":96,"
#define CFG_TAIL "\"num_attention_heads\":4,\"vocab_size\":100"

static lethe_status cfg(const char *json, lethe_hparams *hp) {
    return lethe_hf_parse_config(json, strlen(json), hp);
}

static void test_config(void **s) {
    (void)s;
    lethe_hparams hp;
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL "}", &hp), LETHE_OK);
    assert_int_equal(hp.head_dim, 16);
    assert_int_equal(hp.rope.mode, LETHE_ROPE_NEOX);   /* HF weights are not permuted */
    assert_int_equal(hp.dms.variant, LETHE_DMS_NONE);
    /* malformed JSON */
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL, &hp), LETHE_ERR_CORRUPT);
    assert_non_null(strstr(lethe_last_error(), "invalid JSON"));
    /* a missing key */
    assert_int_equal(cfg("{\"model_type\":\"llama\",\"num_hidden_layers\":2,\"intermediate_size\":96," CFG_TAIL "}", &hp),
                     LETHE_ERR_CORRUPT);
    assert_non_null(strstr(lethe_last_error(), "missing key 'hidden_size'"));
    assert_int_equal(cfg("{\"num_hidden_layers\":2}", &hp), LETHE_ERR_CORRUPT);
    /* wrong types and ranges */
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"num_key_value_heads\":3}", &hp), LETHE_ERR_CORRUPT);
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"rms_norm_eps\":\"x\"}", &hp), LETHE_ERR_CORRUPT);
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"head_dim\":3}", &hp), LETHE_ERR_CORRUPT);
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"rope_theta\":-1}", &hp), LETHE_ERR_CORRUPT);
    assert_int_equal(cfg("{\"model_type\":\"gpt2\"}", &hp), LETHE_ERR_UNSUPPORTED);
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"hidden_act\":\"gelu\"}", &hp), LETHE_ERR_UNSUPPORTED);
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}", &hp),
                     LETHE_ERR_UNSUPPORTED);
    /* rope scaling */
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,"
                         "\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}}", &hp),
                     LETHE_OK);
    assert_true(hp.rope.llama3_factor == 8.0f && hp.rope.llama3_orig_ctx == 8192);
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"rope_scaling\":{\"type\":\"linear\",\"factor\":2}}", &hp), LETHE_OK);
    assert_true(hp.rope.freq_scale == 0.5f);
}

static void test_config_dms(void **s) {
    (void)s;
    lethe_hparams hp;
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"dms_window_size\":256}", &hp), LETHE_OK);
    assert_int_equal(hp.dms.variant, LETHE_DMS_NEURON);
    assert_int_equal(hp.dms.window, 256);
    assert_true(hp.dms.alpha_scale == 100.0f && hp.dms.alpha_offset == 5.0f);
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"dms_window_size\":8,\"dms_separate_alpha\":true,"
                         "\"dms_alpha_per\":\"layer\",\"dms_alpha_scale\":50,\"dms_initial_alpha_offset\":2.5}", &hp),
                     LETHE_OK);
    assert_int_equal(hp.dms.variant, LETHE_DMS_ADAPTER);
    assert_true(hp.dms.per_layer);
    assert_true(hp.dms.alpha_scale == 50.0f && hp.dms.alpha_offset == 2.5f);
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"dms_window_size\":-1}", &hp), LETHE_ERR_CORRUPT);
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"dms_window_size\":8,\"dms_alpha_per\":\"token\"}", &hp), LETHE_ERR_CORRUPT);
    assert_non_null(strstr(lethe_last_error(), "token"));
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"dms_window_size\":8,\"dms_alpha_scale\":1e300}", &hp), LETHE_ERR_CORRUPT);
    assert_int_equal(cfg(CFG_HEAD CFG_TAIL ",\"dms_window_size\":8,\"dms_separate_alpha\":\"yes\"}", &hp),
                     LETHE_ERR_CORRUPT);
}

/* A model directory copied from the fixtures with one file replaced. */
static char *copy_model(const char *name) {
    char *d = make_dir();
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp -r '%s/hf/%s/.' '%s/'", tu_data_dir(), name, d);
    assert_int_equal(system(cmd), 0);
    return d;
}

static lethe_status load_dir(const char *d) {
    lethe_status st = LETHE_OK;
    lethe_model *m = lethe_model_load(d, lethe_model_default_params(), &st);
    lethe_model_free(m);
    return m ? LETHE_OK : st;
}

static void test_model_dir_bad(void **s) {
    (void)s;
    char *d = copy_model("dms-adapter");
    assert_int_equal(load_dir(d), LETHE_OK);
    /* the adapter variant without its tensors */
    char p[512];
    snprintf(p, sizeof p, "%s/hf/dms-neuron/model.safetensors", tu_data_dir());
    size_t n;
    void *st = tu_read_file(p, &n);
    put(d, "model.safetensors", st, n);
    assert_int_equal(load_dir(d), LETHE_ERR_MISSING_TENSOR);
    assert_non_null(strstr(lethe_last_error(), "dms_proj_alpha"));
    free(st);
    /* no weights at all */
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    unlink(p);
    assert_int_equal(load_dir(d), LETHE_ERR_IO);
    rm_dir(d);

    d = copy_model("llama-f32");
    /* a tensor of the wrong shape: config says hidden 64, claim 32 */
    snprintf(p, sizeof p, "%s/config.json", d);
    size_t cl;
    char *c = tu_read_file(p, &cl);
    char *h = strstr(c, "\"intermediate_size\": 96");
    assert_non_null(h);
    memcpy(h, "\"intermediate_size\": 48", 23);
    put(d, "config.json", c, cl);
    assert_int_equal(load_dir(d), LETHE_ERR_SHAPE);
    assert_non_null(strstr(lethe_last_error(), "mlp"));
    free(c);
    /* tokenizer.json of an unknown model type */
    const char *tj = "{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}";
    put(d, "tokenizer.json", tj, strlen(tj));
    snprintf(p, sizeof p, "%s/hf/llama-f32/config.json", tu_data_dir());
    c = tu_read_file(p, &cl);
    put(d, "config.json", c, cl);
    free(c);
    assert_int_equal(load_dir(d), LETHE_ERR_UNSUPPORTED);
    assert_non_null(strstr(lethe_last_error(), "Unigram"));
    put(d, "tokenizer.json", "{", 1);
    assert_int_equal(load_dir(d), LETHE_ERR_TOKENIZER);
    rm_dir(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),          cmocka_unit_test(test_header_past_file),
        cmocka_unit_test(test_bad_json),      cmocka_unit_test(test_unknown_dtype),
        cmocka_unit_test(test_offsets_out_of_range), cmocka_unit_test(test_overlap),
        cmocka_unit_test(test_shape_bytes_mismatch), cmocka_unit_test(test_shards),
        cmocka_unit_test(test_config),        cmocka_unit_test(test_config_dms),
        cmocka_unit_test(test_model_dir_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
