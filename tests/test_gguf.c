/* test_gguf.c — the GGUF reader and writer: a round trip of every value type
 * and tensors, the real default model, and one test per kind of bad input,
 * each pinned to its own status and to a message naming the culprit. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "gguf_write.h"
#include "lethe.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------ */

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* Offset just past the only occurrence of `s` in buf (fails the test if absent). */
static size_t after(const uint8_t *buf, size_t n, const char *s) {
    size_t k = strlen(s);
    size_t found = SIZE_MAX;
    for (size_t i = 0; i + k <= n; i++) {
        if (memcmp(buf + i, s, k) == 0) {
            assert_true(found == SIZE_MAX);   /* names used for patching are unique */
            found = i + k;
        }
    }
    assert_true(found != SIZE_MAX);
    return found;
}

/* Parse a private copy of exactly n bytes (so a sanitizer sees any over-read). */
static lethe_status parse_status(const uint8_t *buf, size_t n) {
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, buf, n);
    lethe_status s = LETHE_ERR_INTERNAL;
    lethe_gguf *g = lethe_gguf_parse(copy, n, &s);
    if (g) assert_int_equal(s, LETHE_OK);
    else assert_int_not_equal(s, LETHE_OK);
    lethe_gguf_close(g);
    free(copy);
    return s;
}

static void assert_error_mentions(const char *what) {
    const char *e = lethe_last_error();
    if (!strstr(e, what)) fail_msg("error message \"%s\" does not mention \"%s\"", e, what);
}

static void fill_bytes(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (uint8_t)(seed >> 24);
    }
}

/* A small valid file: a few kvs and two tensors. The last tensor's size is a
 * multiple of the alignment, so the file ends exactly where its data ends and
 * every proper prefix is invalid. Tensor infos start with "tq.w" then "ta.w". */
static uint8_t *small_file(size_t *size) {
    lethe_gguf_writer *w = lethe_gguf_writer_new();
    assert_non_null(w);
    assert_int_equal(lethe_gguf_writer_add_str(w, "general.architecture", "llama"), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_u32(w, "test.u32", 7), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_str(w, "test.abc", "hello"), LETHE_OK);
    int32_t ints[3] = {1, 2, 3};
    assert_int_equal(lethe_gguf_writer_add_arr(w, "test.ints", LETHE_GGUF_I32, ints, 3), LETHE_OK);
    const char *strs[2] = {"ab", "cde"};
    assert_int_equal(lethe_gguf_writer_add_arr_str(w, "test.list", strs, 2), LETHE_OK);
    uint8_t q[40], a[128];   /* q4_1 [32, 2]: 2 blocks of 20 B; f32 [8, 4] */
    fill_bytes(q, sizeof q, 1);
    fill_bytes(a, sizeof a, 2);
    int64_t ne_q[2] = {32, 2}, ne_a[2] = {8, 4};
    assert_int_equal(lethe_gguf_writer_add_tensor(w, "tq.w", LETHE_Q4_1, 2, ne_q, q, true), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_tensor(w, "ta.w", LETHE_F32, 2, ne_a, a, true), LETHE_OK);
    void *buf;
    assert_int_equal(lethe_gguf_writer_write_mem(w, &buf, size), LETHE_OK);
    assert_int_equal(*size, lethe_gguf_writer_size(w));
    lethe_gguf_writer_free(w);
    return buf;
}

/* Byte offsets inside the tensor info of `name` (n_dims 2 in small_file). */
#define TI_NDIMS(buf, n, name) after(buf, n, name)
#define TI_NE(buf, n, name, d) (after(buf, n, name) + 4 + 8 * (d))
#define TI_TYPE(buf, n, name) (after(buf, n, name) + 4 + 16)
#define TI_OFFSET(buf, n, name) (after(buf, n, name) + 4 + 16 + 4)

/* A tiny hand-built GGUF: header + raw kv bytes, no tensors. */
typedef struct bb { uint8_t b[1024]; size_t n; } bb;
static void bb_u32(bb *x, uint32_t v) { put32(x->b + x->n, v); x->n += 4; }
static void bb_u64(bb *x, uint64_t v) { put64(x->b + x->n, v); x->n += 8; }
static void bb_str(bb *x, const char *s) { bb_u64(x, strlen(s)); memcpy(x->b + x->n, s, strlen(s)); x->n += strlen(s); }
static void bb_header(bb *x, uint64_t n_tensors, uint64_t n_kv) {
    x->n = 0;
    memcpy(x->b, "GGUF", 4);
    x->n = 4;
    bb_u32(x, 3);
    bb_u64(x, n_tensors);
    bb_u64(x, n_kv);
}

/* ---- round trip --------------------------------------------------------------- */

static void test_roundtrip_all_types(void **state) {
    (void)state;
    lethe_gguf_writer *w = lethe_gguf_writer_new();
    assert_non_null(w);
    assert_int_equal(lethe_gguf_writer_add_u8(w, "k.u8", 200), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_i8(w, "k.i8", -100), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_u16(w, "k.u16", 60000), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_i16(w, "k.i16", -30000), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_u32(w, "k.u32", 4000000000u), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_i32(w, "k.i32", -2000000000), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_u64(w, "k.u64", (1ull << 63) + 5), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_i64(w, "k.i64", INT64_MIN + 1), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_f32(w, "k.f32", 1.5f), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_f64(w, "k.f64", -2.25e300), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_bool(w, "k.true", true), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_bool(w, "k.false", false), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_str(w, "k.str", "hello w\xc3\xb6rld"), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_str(w, "k.empty", ""), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_strn(w, "k.bin", "a\0b", 3), LETHE_OK);
    /* duplicates are refused */
    assert_int_equal(lethe_gguf_writer_add_u8(w, "k.u8", 1), LETHE_ERR_INVALID_ARG);

    uint8_t a_u8[3] = {0, 128, 255};
    int8_t a_i8[3] = {-128, 0, 127};
    uint16_t a_u16[2] = {1, 65535};
    int16_t a_i16[2] = {-32768, 32767};
    uint32_t a_u32[2] = {0, 0xffffffffu};
    int32_t a_i32[100];
    for (int i = 0; i < 100; i++) a_i32[i] = i * i - 50;
    float a_f32[3] = {0.5f, -1.25f, 3e38f};
    bool a_bool[4] = {true, false, false, true};
    uint64_t a_u64[2] = {0, UINT64_MAX};
    int64_t a_i64[2] = {INT64_MIN, INT64_MAX};
    double a_f64[2] = {1e-300, -0.1};
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.u8", LETHE_GGUF_U8, a_u8, 3), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.i8", LETHE_GGUF_I8, a_i8, 3), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.u16", LETHE_GGUF_U16, a_u16, 2), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.i16", LETHE_GGUF_I16, a_i16, 2), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.u32", LETHE_GGUF_U32, a_u32, 2), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.i32", LETHE_GGUF_I32, a_i32, 100), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.f32", LETHE_GGUF_F32, a_f32, 3), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.bool", LETHE_GGUF_BOOL, a_bool, 4), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.u64", LETHE_GGUF_U64, a_u64, 2), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.i64", LETHE_GGUF_I64, a_i64, 2), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.f64", LETHE_GGUF_F64, a_f64, 2), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.empty", LETHE_GGUF_F32, NULL, 0), LETHE_OK);
    const char *strs[3] = {"x", "", "long string \xe2\x9c\x93"};
    assert_int_equal(lethe_gguf_writer_add_arr_str(w, "a.str", strs, 3), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_arr(w, "a.bad", LETHE_GGUF_STRING, strs, 3), LETHE_ERR_INVALID_ARG);

    /* tensors: [ne...] of each layout family; data copied or referenced */
    float t32[4 * 3];
    tu_rand_fill(t32, 12, 1);
    uint8_t t16[64 * 2], tq41[20 * 2 * 2 * 3], tq80[34 * 1 * 2 * 2 * 2];
    fill_bytes(t16, sizeof t16, 3);
    fill_bytes(tq41, sizeof tq41, 4);
    fill_bytes(tq80, sizeof tq80, 5);
    int64_t ne32[2] = {4, 3}, ne16[1] = {64}, ne41[3] = {64, 2, 3}, ne80[4] = {32, 2, 2, 2}, ne0[1] = {5};
    assert_int_equal(lethe_gguf_writer_add_tensor(w, "w.f32", LETHE_F32, 2, ne32, t32, true), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_tensor(w, "w.f16", LETHE_F16, 1, ne16, t16, false), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_tensor(w, "w.q4_1", LETHE_Q4_1, 3, ne41, tq41, false), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_tensor(w, "w.q8_0", LETHE_Q8_0, 4, ne80, tq80, true), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_tensor(w, "w.zero", LETHE_F32, 1, ne0, NULL, false), LETHE_OK);
    /* refused: duplicate name, ne[0] not a multiple of the block, 5 dims */
    assert_int_equal(lethe_gguf_writer_add_tensor(w, "w.f32", LETHE_F32, 2, ne32, t32, true), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_gguf_writer_add_tensor(w, "w.bad", LETHE_Q8_0, 2, ne32, t32, true), LETHE_ERR_INVALID_ARG);
    int64_t ne5[5] = {1, 1, 1, 1, 1};
    assert_int_equal(lethe_gguf_writer_add_tensor(w, "w.bad", LETHE_F32, 5, ne5, t32, true), LETHE_ERR_INVALID_ARG);

    void *buf;
    size_t size;
    assert_int_equal(lethe_gguf_writer_write_mem(w, &buf, &size), LETHE_OK);
    assert_int_equal(size, lethe_gguf_writer_size(w));
    char *path = tu_write_temp(buf, 0);
    assert_int_equal(lethe_gguf_writer_write_file(w, path), LETHE_OK);
    lethe_gguf_writer_free(w);

    /* the file on disk is the same bytes */
    size_t fsize;
    void *fbuf = tu_read_file(path, &fsize);
    assert_non_null(fbuf);
    assert_int_equal(fsize, size);
    assert_memory_equal(fbuf, buf, size);
    free(fbuf);

    for (int mode = 0; mode < 3; mode++) {
        lethe_status s = LETHE_ERR_INTERNAL;
        lethe_gguf *g = mode == 0 ? lethe_gguf_parse(buf, size, &s) : lethe_gguf_open(path, mode == 1, &s);
        assert_non_null(g);
        assert_int_equal(s, LETHE_OK);
        assert_int_equal(g->version, 3);
        assert_int_equal(g->n_kv, 28);
        assert_int_equal(g->n_tensors, 5);
        assert_int_equal(g->alignment, 32);
        assert_int_equal(g->data_offset % 32, 0);
        assert_int_equal(g->size, size);

        int64_t iv;
        double dv;
        bool bv;
        char sb[64];
        const lethe_gguf_kv *kv = lethe_gguf_find(g, "k.u8");
        assert_non_null(kv);
        assert_int_equal(kv->type, LETHE_GGUF_U8);
        assert_int_equal(kv->v.u, 200);
        assert_true(lethe_gguf_get_int(g, "k.i8", &iv)); assert_int_equal(iv, -100);
        assert_true(lethe_gguf_get_int(g, "k.u16", &iv)); assert_int_equal(iv, 60000);
        assert_true(lethe_gguf_get_int(g, "k.i16", &iv)); assert_int_equal(iv, -30000);
        assert_true(lethe_gguf_get_int(g, "k.u32", &iv)); assert_int_equal(iv, 4000000000ll);
        assert_true(lethe_gguf_get_int(g, "k.i32", &iv)); assert_int_equal(iv, -2000000000);
        assert_false(lethe_gguf_get_int(g, "k.u64", &iv));   /* > INT64_MAX */
        assert_int_equal(lethe_gguf_find(g, "k.u64")->v.u, (1ull << 63) + 5);
        assert_true(lethe_gguf_get_int(g, "k.i64", &iv)); assert_true(iv == INT64_MIN + 1);
        assert_false(lethe_gguf_get_int(g, "k.f32", &iv));
        assert_true(lethe_gguf_get_float(g, "k.f32", &dv)); assert_true(dv == 1.5);
        assert_true(lethe_gguf_get_float(g, "k.f64", &dv)); assert_true(dv == -2.25e300);
        assert_true(lethe_gguf_get_float(g, "k.i32", &dv)); assert_true(dv == -2e9);
        assert_true(lethe_gguf_get_bool(g, "k.true", &bv)); assert_true(bv);
        assert_true(lethe_gguf_get_bool(g, "k.false", &bv)); assert_false(bv);
        assert_false(lethe_gguf_get_bool(g, "k.u8", &bv));
        assert_true(lethe_gguf_get_str(g, "k.str", sb, sizeof sb)); assert_string_equal(sb, "hello w\xc3\xb6rld");
        assert_true(lethe_gguf_get_str(g, "k.str", sb, 4)); assert_string_equal(sb, "hel");
        assert_true(lethe_gguf_get_str(g, "k.empty", sb, sizeof sb)); assert_string_equal(sb, "");
        kv = lethe_gguf_find(g, "k.bin");
        assert_int_equal(kv->v.s.len, 3);
        assert_memory_equal(kv->v.s.ptr, "a\0b", 3);
        assert_false(lethe_gguf_get_str(g, "k.u8", sb, sizeof sb));
        assert_false(lethe_gguf_get_int(g, "no.such.key", &iv));
        assert_null(lethe_gguf_find(g, "no.such.key"));

        struct { const char *key; lethe_gguf_type t; const void *data; uint64_t n; size_t es; } arrs[] = {
            {"a.u8", LETHE_GGUF_U8, a_u8, 3, 1}, {"a.i8", LETHE_GGUF_I8, a_i8, 3, 1},
            {"a.u16", LETHE_GGUF_U16, a_u16, 2, 2}, {"a.i16", LETHE_GGUF_I16, a_i16, 2, 2},
            {"a.u32", LETHE_GGUF_U32, a_u32, 2, 4}, {"a.i32", LETHE_GGUF_I32, a_i32, 100, 4},
            {"a.f32", LETHE_GGUF_F32, a_f32, 3, 4}, {"a.bool", LETHE_GGUF_BOOL, a_bool, 4, 1},
            {"a.u64", LETHE_GGUF_U64, a_u64, 2, 8}, {"a.i64", LETHE_GGUF_I64, a_i64, 2, 8},
            {"a.f64", LETHE_GGUF_F64, a_f64, 2, 8}, {"a.empty", LETHE_GGUF_F32, NULL, 0, 4},
        };
        for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) {
            kv = lethe_gguf_find(g, arrs[i].key);
            assert_non_null(kv);
            assert_int_equal(kv->type, LETHE_GGUF_ARRAY);
            assert_int_equal(kv->arr_type, arrs[i].t);
            assert_int_equal(kv->n, arrs[i].n);
            /* this host is little-endian: the file bytes equal the native values */
            if (arrs[i].n) assert_memory_equal(kv->arr, arrs[i].data, arrs[i].n * arrs[i].es);
        }
        kv = lethe_gguf_find(g, "a.str");
        assert_int_equal(kv->arr_type, LETHE_GGUF_STRING);
        assert_int_equal(kv->n, 3);
        for (int i = 0; i < 3; i++) {
            assert_int_equal(kv->arr_str[i].len, strlen(strs[i]));
            assert_memory_equal(kv->arr_str[i].ptr, strs[i], strlen(strs[i]));
        }

        /* text rendering */
        char txt[256];
        assert_int_equal(lethe_gguf_kv_to_string(lethe_gguf_find(g, "k.u32"), txt, sizeof txt), 10);
        assert_string_equal(txt, "4000000000");
        lethe_gguf_kv_to_string(lethe_gguf_find(g, "k.i8"), txt, sizeof txt);
        assert_string_equal(txt, "-100");
        lethe_gguf_kv_to_string(lethe_gguf_find(g, "k.f32"), txt, sizeof txt);
        assert_string_equal(txt, "1.5");
        lethe_gguf_kv_to_string(lethe_gguf_find(g, "k.true"), txt, sizeof txt);
        assert_string_equal(txt, "true");
        lethe_gguf_kv_to_string(lethe_gguf_find(g, "k.str"), txt, sizeof txt);
        assert_string_equal(txt, "hello w\xc3\xb6rld");
        lethe_gguf_kv_to_string(lethe_gguf_find(g, "a.u16"), txt, sizeof txt);
        assert_string_equal(txt, "[1, 65535]");
        lethe_gguf_kv_to_string(lethe_gguf_find(g, "a.str"), txt, sizeof txt);
        assert_string_equal(txt, "[\"x\", \"\", \"long string \xe2\x9c\x93\"]");
        lethe_gguf_kv_to_string(lethe_gguf_find(g, "a.i32"), txt, sizeof txt);
        assert_non_null(strstr(txt, "[-50, -49, -46, "));
        assert_non_null(strstr(txt, "(100 i32)"));
        assert_int_equal(lethe_gguf_kv_to_string(lethe_gguf_find(g, "k.u32"), txt, 5), 4);
        assert_string_equal(txt, "4000");

        struct { const char *name; lethe_dtype t; int nd; const int64_t *ne; const void *data; size_t bytes; } ts[] = {
            {"w.f32", LETHE_F32, 2, ne32, t32, sizeof t32}, {"w.f16", LETHE_F16, 1, ne16, t16, sizeof t16},
            {"w.q4_1", LETHE_Q4_1, 3, ne41, tq41, sizeof tq41}, {"w.q8_0", LETHE_Q8_0, 4, ne80, tq80, sizeof tq80},
        };
        for (size_t i = 0; i < 4; i++) {
            const lethe_gguf_tensor *t = lethe_gguf_find_tensor(g, ts[i].name);
            assert_non_null(t);
            assert_ptr_equal(t, &g->tensors[i]);   /* file order kept */
            assert_string_equal(t->name, ts[i].name);
            assert_int_equal(t->type, ts[i].t);
            assert_int_equal(t->n_dims, ts[i].nd);
            for (int d = 0; d < 4; d++) assert_int_equal(t->ne[d], d < ts[i].nd ? ts[i].ne[d] : 1);
            assert_int_equal(t->size, ts[i].bytes);
            assert_int_equal(t->offset % 32, 0);
            assert_ptr_equal(t->data, g->base + g->data_offset + t->offset);
            assert_memory_equal(t->data, ts[i].data, ts[i].bytes);
        }
        const lethe_gguf_tensor *tz = lethe_gguf_find_tensor(g, "w.zero");
        assert_int_equal(tz->size, 20);
        for (int i = 0; i < 20; i++) assert_int_equal(((const uint8_t *)tz->data)[i], 0);
        assert_null(lethe_gguf_find_tensor(g, "w.none"));
        lethe_gguf_close(g);
    }
    unlink(path);
    free(path);
    free(buf);
}

static void test_alignment_and_version(void **state) {
    (void)state;
    lethe_gguf_writer *w = lethe_gguf_writer_new();
    assert_int_equal(lethe_gguf_writer_set_version(w, 2), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_set_version(w, 1), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_gguf_writer_set_alignment(w, 48), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_gguf_writer_set_alignment(w, 128), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_set_alignment(w, 64), LETHE_OK);   /* updates the kv */
    assert_int_equal(lethe_gguf_writer_add_u64(w, "general.alignment", 64), LETHE_ERR_INVALID_ARG);
    float x[3] = {1, 2, 3};
    int64_t ne[1] = {3};
    assert_int_equal(lethe_gguf_writer_add_tensor(w, "a", LETHE_F32, 1, ne, x, true), LETHE_OK);
    assert_int_equal(lethe_gguf_writer_add_tensor(w, "b", LETHE_F32, 1, ne, x, true), LETHE_OK);
    void *buf;
    size_t size;
    assert_int_equal(lethe_gguf_writer_write_mem(w, &buf, &size), LETHE_OK);
    lethe_gguf_writer_free(w);
    lethe_status s;
    lethe_gguf *g = lethe_gguf_parse(buf, size, &s);
    assert_non_null(g);
    assert_int_equal(g->version, 2);
    assert_int_equal(g->n_kv, 1);
    assert_int_equal(g->alignment, 64);
    assert_int_equal(g->data_offset % 64, 0);
    assert_int_equal(g->tensors[0].offset, 0);
    assert_int_equal(g->tensors[1].offset, 64);
    assert_int_equal(size, g->data_offset + 128);   /* the last tensor is padded too */
    assert_memory_equal(g->tensors[1].data, x, sizeof x);
    lethe_gguf_close(g);
    free(buf);

    /* no tensors, no kvs: just the header */
    w = lethe_gguf_writer_new();
    assert_int_equal(lethe_gguf_writer_write_mem(w, &buf, &size), LETHE_OK);
    lethe_gguf_writer_free(w);
    assert_int_equal(size, 32);
    g = lethe_gguf_parse(buf, 24, &s);   /* without the padding: still valid */
    assert_non_null(g);
    assert_int_equal(g->n_tensors, 0);
    lethe_gguf_close(g);
    free(buf);
}

/* Arrays of arrays are accepted (and copied by the writer); too deep fails. */
static void test_nested_arrays(void **state) {
    (void)state;
    bb x;
    bb_header(&x, 0, 2);
    bb_str(&x, "nest");
    bb_u32(&x, LETHE_GGUF_ARRAY);
    bb_u32(&x, LETHE_GGUF_ARRAY);   /* array of 2 arrays */
    bb_u64(&x, 2);
    bb_u32(&x, LETHE_GGUF_U16); bb_u64(&x, 2); bb_u32(&x, 0x00020001);
    bb_u32(&x, LETHE_GGUF_STRING); bb_u64(&x, 1); bb_str(&x, "in");
    bb_str(&x, "after");
    bb_u32(&x, LETHE_GGUF_U8);
    x.b[x.n++] = 9;
    lethe_status s;
    lethe_gguf *g = lethe_gguf_parse(x.b, x.n, &s);
    assert_non_null(g);
    const lethe_gguf_kv *kv = lethe_gguf_find(g, "nest");
    assert_int_equal(kv->arr_type, LETHE_GGUF_ARRAY);
    assert_int_equal(kv->n, 2);
    assert_int_equal(lethe_gguf_find(g, "after")->v.u, 9);

    /* copying through the writer gives the same bytes */
    lethe_gguf_writer *w = lethe_gguf_writer_new();
    for (uint64_t i = 0; i < g->n_kv; i++) assert_int_equal(lethe_gguf_writer_add_kv(w, &g->kv[i]), LETHE_OK);
    void *buf;
    size_t size;
    assert_int_equal(lethe_gguf_writer_write_mem(w, &buf, &size), LETHE_OK);
    assert_int_equal(size, 32 * ((x.n + 31) / 32));
    assert_memory_equal(buf, x.b, x.n);
    free(buf);
    lethe_gguf_writer_free(w);
    lethe_gguf_close(g);

    /* 20 levels of arrays: refused, no stack blow-up */
    bb_header(&x, 0, 1);
    bb_str(&x, "deep");
    bb_u32(&x, LETHE_GGUF_ARRAY);
    for (int i = 0; i < 20; i++) { bb_u32(&x, LETHE_GGUF_ARRAY); bb_u64(&x, 1); }
    bb_u32(&x, LETHE_GGUF_U8); bb_u64(&x, 0);
    assert_int_equal(parse_status(x.b, x.n), LETHE_ERR_CORRUPT);
    assert_error_mentions("deep");
}

/* ---- the real model ------------------------------------------------------------ */

static void test_real_model(void **state) {
    (void)state;
    const char *path = tu_model_path();
    lethe_status s = LETHE_ERR_INTERNAL;
    lethe_gguf *g = lethe_gguf_open(path, true, &s);
    assert_non_null(g);
    assert_int_equal(s, LETHE_OK);
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_tensors, 272);
    int64_t n;
    assert_true(lethe_gguf_get_int(g, "llama.block_count", &n));
    assert_int_equal(n, 30);
    assert_true(lethe_gguf_get_int(g, "llama.embedding_length", &n));
    assert_int_equal(n, 576);
    char arch[32];
    assert_true(lethe_gguf_get_str(g, "general.architecture", arch, sizeof arch));
    assert_string_equal(arch, "llama");

    const lethe_gguf_tensor *t = lethe_gguf_find_tensor(g, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->type, LETHE_Q8_0);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 576);
    assert_int_equal(t->ne[1], 49152);
    assert_int_equal(t->size, (size_t)576 / 32 * 34 * 49152);
    t = lethe_gguf_find_tensor(g, "blk.29.ffn_down.weight");
    assert_non_null(t);
    assert_int_equal(t->ne[0], 1536);
    assert_int_equal(t->ne[1], 576);

    const lethe_gguf_kv *kv = lethe_gguf_find(g, "tokenizer.ggml.tokens");
    assert_non_null(kv);
    assert_int_equal(kv->type, LETHE_GGUF_ARRAY);
    assert_int_equal(kv->arr_type, LETHE_GGUF_STRING);
    assert_int_equal(kv->n, 49152);
    assert_non_null(kv->arr_str);
    char txt[512];
    assert_true(lethe_gguf_kv_to_string(kv, txt, sizeof txt) > 0);
    assert_non_null(strstr(txt, "(49152 string)"));

    /* Re-writing every kv and tensor with our writer reproduces the file byte
     * for byte: the writer's layout is the one llama.cpp's tools produce. */
    lethe_gguf_writer *w = lethe_gguf_writer_new();
    for (uint64_t i = 0; i < g->n_kv; i++) assert_int_equal(lethe_gguf_writer_add_kv(w, &g->kv[i]), LETHE_OK);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lethe_gguf_tensor *ti = &g->tensors[i];
        assert_int_equal(lethe_gguf_writer_add_tensor(w, ti->name, ti->type, ti->n_dims, ti->ne, ti->data, false),
                         LETHE_OK);
    }
    assert_int_equal(lethe_gguf_writer_size(w), g->size);
    void *buf;
    size_t size;
    assert_int_equal(lethe_gguf_writer_write_mem(w, &buf, &size), LETHE_OK);
    assert_int_equal(size, g->size);
    assert_true(memcmp(buf, g->base, size) == 0);
    free(buf);
    lethe_gguf_writer_free(w);
    lethe_gguf_close(g);

    /* the heap path reads the same */
    g = lethe_gguf_open(path, false, &s);
    assert_non_null(g);
    assert_int_equal(g->n_tensors, 272);
    lethe_gguf_close(g);
}

/* ---- bad input: one status per cause ---------------------------------------- */

static void test_missing_file(void **state) {
    (void)state;
    lethe_status s = LETHE_OK;
    const char *path = "/nonexistent/dir/model.gguf";
    assert_null(lethe_gguf_open(path, true, &s));
    assert_int_equal(s, LETHE_ERR_IO);
    assert_error_mentions(path);
    assert_error_mentions("No such file");
    assert_null(lethe_gguf_open("/", false, &s));   /* a directory */
    assert_int_equal(s, LETHE_ERR_IO);
}

static void test_bad_magic(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = small_file(&n);
    buf[0] = 'X';
    assert_int_equal(parse_status(buf, n), LETHE_ERR_BAD_MAGIC);
    assert_error_mentions("magic");
    assert_int_equal(parse_status((const uint8_t *)"PK\x03\x04 zip", 8), LETHE_ERR_BAD_MAGIC);
    assert_int_equal(parse_status((const uint8_t *)"GG", 2), LETHE_ERR_TRUNCATED);   /* a cut header */
    /* through a file too */
    char *path = tu_write_temp(buf, n);
    lethe_status s;
    assert_null(lethe_gguf_open(path, true, &s));
    assert_int_equal(s, LETHE_ERR_BAD_MAGIC);
    unlink(path);
    free(path);
    free(buf);
}

static void test_bad_version(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = small_file(&n);
    put32(buf + 4, 1);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_BAD_VERSION);
    assert_error_mentions("version 1");
    put32(buf + 4, 4);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_BAD_VERSION);
    put32(buf + 4, 0x03000000);   /* a big-endian v3 file */
    assert_int_equal(parse_status(buf, n), LETHE_ERR_BAD_VERSION);
    put32(buf + 4, 2);
    assert_int_equal(parse_status(buf, n), LETHE_OK);
    free(buf);
}

static void test_truncated_everywhere(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = small_file(&n);
    assert_int_equal(parse_status(buf, n), LETHE_OK);
    /* in the header: TRUNCATED, never a crash */
    assert_int_equal(parse_status(buf, 10), LETHE_ERR_TRUNCATED);
    assert_int_equal(parse_status(buf, 30), LETHE_ERR_TRUNCATED);
    assert_int_equal(parse_status(buf, after(buf, n, "test.abc") + 6), LETHE_ERR_TRUNCATED);
    assert_error_mentions("test.abc");
    /* every proper prefix fails with a status */
    for (size_t k = 0; k < n; k++) {
        lethe_status s = parse_status(buf, k);
        if (s == LETHE_OK) fail_msg("a file cut to %zu of %zu bytes parsed", k, n);
    }
    /* cut through the tensor infos */
    assert_int_equal(parse_status(buf, TI_TYPE(buf, n, "ta.w") + 2), LETHE_ERR_TRUNCATED);
    assert_error_mentions("ta.w");
    free(buf);
}

static void test_truncated_tensor_data(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = small_file(&n);
    assert_int_equal(parse_status(buf, n - 1), LETHE_ERR_TRUNCATED);
    assert_error_mentions("'ta.w'");
    assert_error_mentions("runs past the end of the file");
    /* and through a real file, mapped and read */
    char *path = tu_write_temp(buf, n - 100);
    for (int m = 0; m < 2; m++) {
        lethe_status s;
        assert_null(lethe_gguf_open(path, m, &s));
        assert_int_equal(s, LETHE_ERR_TRUNCATED);
        assert_error_mentions("ta.w");
    }
    unlink(path);
    free(path);
    free(buf);
}

static void test_offset_out_of_range(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = small_file(&n);
    put64(buf + TI_OFFSET(buf, n, "tq.w"), (uint64_t)1 << 40);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_TRUNCATED);
    assert_error_mentions("'tq.w'");
    /* an offset that wraps around when added to the data section */
    put64(buf + TI_OFFSET(buf, n, "tq.w"), UINT64_MAX - 31);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_TRUNCATED);
    assert_error_mentions("'tq.w'");
    free(buf);
}

static void test_misaligned_offset(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = small_file(&n);
    size_t o = TI_OFFSET(buf, n, "ta.w");
    put64(buf + o, get64(buf + o) - 4);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    assert_error_mentions("'ta.w'");
    assert_error_mentions("alignment");
    free(buf);
}

static void test_overlapping_tensors(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = small_file(&n);
    put64(buf + TI_OFFSET(buf, n, "ta.w"), 32);   /* t.q covers [0, 40) */
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    assert_error_mentions("overlap");
    assert_error_mentions("tq.w");
    free(buf);
}

static void test_absurd_dims(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = small_file(&n);
    /* element count overflows int64 */
    put64(buf + TI_NE(buf, n, "ta.w", 0), (uint64_t)1 << 40);
    put64(buf + TI_NE(buf, n, "ta.w", 1), (uint64_t)1 << 40);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    assert_error_mentions("'ta.w'");
    assert_error_mentions("absurd");
    /* a negative (as int64) dimension */
    put64(buf + TI_NE(buf, n, "ta.w", 0), UINT64_MAX);
    put64(buf + TI_NE(buf, n, "ta.w", 1), 1);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    /* a zero dimension */
    put64(buf + TI_NE(buf, n, "ta.w", 0), 0);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    assert_error_mentions("'ta.w'");
    /* the count fits int64 but the bytes overflow size_t */
    put64(buf + TI_NE(buf, n, "ta.w", 0), ((uint64_t)1 << 62) + 8);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    assert_error_mentions("overflows");
    /* huge but representable: the data cannot be in the file */
    free(buf);
    buf = small_file(&n);
    put64(buf + TI_NE(buf, n, "tq.w", 0), (uint64_t)1 << 62);
    put64(buf + TI_NE(buf, n, "tq.w", 1), 1);
    put32(buf + TI_TYPE(buf, n, "tq.w"), LETHE_Q8_0);
    assert_int_equal(parse_status(buf, n), sizeof(size_t) == 8 ? LETHE_ERR_TRUNCATED : LETHE_ERR_CORRUPT);
    /* a row not made of whole blocks */
    free(buf);
    buf = small_file(&n);
    put64(buf + TI_NE(buf, n, "tq.w", 0), 33);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    assert_error_mentions("block size");
    free(buf);
}

static void test_unsupported_dtype(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = small_file(&n);
    put32(buf + TI_TYPE(buf, n, "tq.w"), 99);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_UNSUPPORTED_DTYPE);
    assert_error_mentions("'tq.w'");
    assert_error_mentions("99");
    put32(buf + TI_TYPE(buf, n, "tq.w"), 4);   /* a removed ggml type id (q4_2) */
    assert_int_equal(parse_status(buf, n), LETHE_ERR_UNSUPPORTED_DTYPE);
    put32(buf + TI_TYPE(buf, n, "tq.w"), 0x80000000u);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_UNSUPPORTED_DTYPE);
    free(buf);
}

static void test_n_dims(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = small_file(&n);
    put32(buf + TI_NDIMS(buf, n, "tq.w"), 5);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    assert_error_mentions("'tq.w'");
    assert_error_mentions("5 dimensions");
    put32(buf + TI_NDIMS(buf, n, "tq.w"), 0);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    put32(buf + TI_NDIMS(buf, n, "tq.w"), UINT32_MAX);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    free(buf);
}

static void test_huge_counts(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = small_file(&n);
    /* string length */
    put64(buf + after(buf, n, "test.abc") + 4, (uint64_t)1 << 62);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_TRUNCATED);
    assert_error_mentions("test.abc");
    free(buf);
    /* key length */
    buf = small_file(&n);
    put64(buf + after(buf, n, "test.u32") - 8 - 8, UINT64_MAX);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_TRUNCATED);
    free(buf);
    /* scalar array count */
    buf = small_file(&n);
    put64(buf + after(buf, n, "test.ints") + 8, (uint64_t)1 << 61);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_TRUNCATED);
    assert_error_mentions("test.ints");
    free(buf);
    /* string array count: bounded before the [n] views are allocated */
    buf = small_file(&n);
    put64(buf + after(buf, n, "test.list") + 8, (uint64_t)1 << 60);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_TRUNCATED);
    assert_error_mentions("test.list");
    free(buf);
    /* a string inside a string array */
    buf = small_file(&n);
    put64(buf + after(buf, n, "test.list") + 16, (uint64_t)1 << 50);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_TRUNCATED);
    free(buf);
    /* header counts */
    buf = small_file(&n);
    put64(buf + 16, (uint64_t)1 << 60);   /* n_kv */
    assert_int_equal(parse_status(buf, n), LETHE_ERR_TRUNCATED);
    assert_error_mentions("key-value");
    put64(buf + 16, 5);
    put64(buf + 8, (uint64_t)1 << 60);    /* n_tensors */
    assert_int_equal(parse_status(buf, n), LETHE_ERR_TRUNCATED);
    assert_error_mentions("tensors");
    put64(buf + 8, 2);
    assert_int_equal(parse_status(buf, n), LETHE_OK);
    free(buf);
    /* tensor name length */
    buf = small_file(&n);
    put64(buf + after(buf, n, "ta.w") - 4 - 8, (uint64_t)1 << 60);
    assert_int_equal(parse_status(buf, n), LETHE_ERR_TRUNCATED);
    free(buf);
}

static void test_duplicates_and_bad_kvs(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = small_file(&n);
    buf[after(buf, n, "ta.w") - 3] = 'q';   /* rename ta.w to tq.w */
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    assert_error_mentions("duplicate tensor name 'tq.w'");
    free(buf);

    buf = small_file(&n);
    memcpy(buf + after(buf, n, "test.abc") - 3, "u32", 3);   /* test.abc -> test.u32 */
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    assert_error_mentions("duplicate key 'test.u32'");
    free(buf);

    buf = small_file(&n);
    put32(buf + after(buf, n, "test.u32"), 13);   /* unknown value type */
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    assert_error_mentions("test.u32");
    free(buf);

    buf = small_file(&n);
    put32(buf + after(buf, n, "test.ints") + 4, 77);   /* unknown element type */
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    assert_error_mentions("test.ints");
    free(buf);

    buf = small_file(&n);
    buf[after(buf, n, "test.u32") - 2] = 0;   /* NUL inside a key */
    assert_int_equal(parse_status(buf, n), LETHE_ERR_CORRUPT);
    free(buf);

    /* general.alignment: not a power of two, zero, or not an integer */
    bb x;
    bb_header(&x, 0, 1);
    bb_str(&x, "general.alignment");
    bb_u32(&x, LETHE_GGUF_U32);
    size_t at = x.n;
    bb_u32(&x, 48);
    assert_int_equal(parse_status(x.b, x.n), LETHE_ERR_CORRUPT);
    assert_error_mentions("48");
    put32(x.b + at, 0);
    assert_int_equal(parse_status(x.b, x.n), LETHE_ERR_CORRUPT);
    put32(x.b + at, 16);
    assert_int_equal(parse_status(x.b, x.n), LETHE_OK);
    put32(x.b + at - 4, LETHE_GGUF_F32);
    assert_int_equal(parse_status(x.b, x.n), LETHE_ERR_CORRUPT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_all_types),
        cmocka_unit_test(test_alignment_and_version),
        cmocka_unit_test(test_nested_arrays),
        cmocka_unit_test(test_real_model),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_bad_magic),
        cmocka_unit_test(test_bad_version),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_truncated_tensor_data),
        cmocka_unit_test(test_offset_out_of_range),
        cmocka_unit_test(test_misaligned_offset),
        cmocka_unit_test(test_overlapping_tensors),
        cmocka_unit_test(test_absurd_dims),
        cmocka_unit_test(test_unsupported_dtype),
        cmocka_unit_test(test_n_dims),
        cmocka_unit_test(test_huge_counts),
        cmocka_unit_test(test_duplicates_and_bad_kvs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
