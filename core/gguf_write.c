/* gguf_write.c — GGUF v3 writer. Each kv is serialized when it is added
 * (key, type, value bytes), so writing is a concatenation and the exact file
 * size is known up front; tensor data is streamed at write time. */
#include "gguf_write.h"

#include "common.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GGUF_ALIGNMENT_KEY "general.alignment"

typedef struct wbuf { uint8_t *p; size_t len, cap; bool oom; } wbuf;

typedef struct wkv {
    char *key;
    wbuf blob;               /* key str + u32 type + value, as in the file */
} wkv;

typedef struct wtensor {
    char *name;
    lethe_dtype type;
    int n_dims;
    int64_t ne[4];
    const void *data;        /* NULL: zeros */
    void *owned;             /* the copy, when copied */
    size_t size;             /* bytes */
} wtensor;

struct lethe_gguf_writer {
    uint32_t version;
    uint32_t alignment;
    wkv *kv; size_t n_kv, cap_kv;
    wtensor *t; size_t n_t, cap_t;
};

/* ---- little-endian byte buffer ---------------------------------------------- */

static void wb_put(wbuf *b, const void *p, size_t n) {
    if (b->oom) return;
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->len < n) {
            if (cap > SIZE_MAX / 2) { b->oom = true; return; }
            cap *= 2;
        }
        uint8_t *q = realloc(b->p, cap);
        if (!q) { b->oom = true; return; }
        b->p = q;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void wb_u32(wbuf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    wb_put(b, x, 4);
}

static void wb_u64(wbuf *b, uint64_t v) {
    wb_u32(b, (uint32_t)v);
    wb_u32(b, (uint32_t)(v >> 32));
}

static void wb_str(wbuf *b, const char *s, size_t n) {
    wb_u64(b, n);
    wb_put(b, s, n);
}

/* One scalar from native memory to little-endian bytes. */
static void wb_scalar(wbuf *b, lethe_gguf_type t, const void *p) {
    switch (t) {
    case LETHE_GGUF_U8: case LETHE_GGUF_I8: wb_put(b, p, 1); break;
    case LETHE_GGUF_BOOL: { uint8_t v = *(const bool *)p ? 1 : 0; wb_put(b, &v, 1); break; }
    case LETHE_GGUF_U16: case LETHE_GGUF_I16: {
        uint16_t v; memcpy(&v, p, 2);
        uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
        wb_put(b, x, 2);
        break;
    }
    case LETHE_GGUF_U32: case LETHE_GGUF_I32: case LETHE_GGUF_F32: {
        uint32_t v; memcpy(&v, p, 4); wb_u32(b, v); break;
    }
    case LETHE_GGUF_U64: case LETHE_GGUF_I64: case LETHE_GGUF_F64: {
        uint64_t v; memcpy(&v, p, 8); wb_u64(b, v); break;
    }
    default: break;
    }
}

static size_t scalar_size(lethe_gguf_type t) {
    switch (t) {
    case LETHE_GGUF_U8: case LETHE_GGUF_I8: case LETHE_GGUF_BOOL: return 1;
    case LETHE_GGUF_U16: case LETHE_GGUF_I16: return 2;
    case LETHE_GGUF_U32: case LETHE_GGUF_I32: case LETHE_GGUF_F32: return 4;
    case LETHE_GGUF_U64: case LETHE_GGUF_I64: case LETHE_GGUF_F64: return 8;
    default: return 0;
    }
}

/* ---- writer ---------------------------------------------------------------------- */

lethe_gguf_writer *lethe_gguf_writer_new(void) {
    lethe_gguf_writer *w = calloc(1, sizeof *w);
    if (!w) {
        lethe_fail(LETHE_ERR_OOM, "gguf writer: out of memory");
        return NULL;
    }
    w->version = 3;
    w->alignment = 32;
    return w;
}

void lethe_gguf_writer_free(lethe_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].blob.p);
    }
    free(w->kv);
    for (size_t i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        free(w->t[i].owned);
    }
    free(w->t);
    free(w);
}

lethe_status lethe_gguf_writer_set_version(lethe_gguf_writer *w, uint32_t version) {
    if (!w || (version != 2 && version != 3)) {
        return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: version %" PRIu32 " (2 or 3 supported)", version);
    }
    w->version = version;
    return LETHE_OK;
}

static wkv *find_kv(lethe_gguf_writer *w, const char *key) {
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, key) == 0) return &w->kv[i];
    }
    return NULL;
}

/* Start a new kv: checks the key, appends the key string and type; the
 * caller appends the value bytes to the returned blob. */
static lethe_status kv_begin(lethe_gguf_writer *w, const char *key, lethe_gguf_type type, wbuf **blob) {
    if (!w || !key) return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: NULL writer or key");
    if (find_kv(w, key)) return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: duplicate key '%s'", key);
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? 2 * w->cap_kv : 16;
        wkv *kv = realloc(w->kv, cap * sizeof *kv);
        if (!kv) return lethe_fail(LETHE_ERR_OOM, "gguf writer: out of memory");
        w->kv = kv;
        w->cap_kv = cap;
    }
    wkv *kv = &w->kv[w->n_kv];
    memset(kv, 0, sizeof *kv);
    kv->key = malloc(strlen(key) + 1);
    if (!kv->key) return lethe_fail(LETHE_ERR_OOM, "gguf writer: out of memory");
    strcpy(kv->key, key);
    wb_str(&kv->blob, key, strlen(key));
    wb_u32(&kv->blob, (uint32_t)type);
    w->n_kv++;
    *blob = &kv->blob;
    return LETHE_OK;
}

/* Finish the kv just begun: on out-of-memory drop it again. */
static lethe_status kv_end(lethe_gguf_writer *w) {
    wkv *kv = &w->kv[w->n_kv - 1];
    if (!kv->blob.oom) return LETHE_OK;
    lethe_status s = lethe_fail(LETHE_ERR_OOM, "gguf writer: out of memory for key '%s'", kv->key);
    free(kv->key);
    free(kv->blob.p);
    w->n_kv--;
    return s;
}

static lethe_status add_scalar(lethe_gguf_writer *w, const char *key, lethe_gguf_type t, const void *v) {
    bool is_alignment = key && strcmp(key, GGUF_ALIGNMENT_KEY) == 0;
    uint32_t a = 0;
    if (is_alignment) {
        /* llama.cpp insists on u32 here, and the value drives our padding. */
        if (t == LETHE_GGUF_U32) memcpy(&a, v, 4);
        if (t != LETHE_GGUF_U32 || a == 0 || (a & (a - 1)) != 0) {
            return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: %s must be a u32 power of two",
                              GGUF_ALIGNMENT_KEY);
        }
    }
    wbuf *b;
    lethe_status s = kv_begin(w, key, t, &b);
    if (s) return s;
    wb_scalar(b, t, v);
    s = kv_end(w);
    if (!s && is_alignment) w->alignment = a;
    return s;
}

lethe_status lethe_gguf_writer_set_alignment(lethe_gguf_writer *w, uint32_t alignment) {
    if (!w || alignment == 0 || (alignment & (alignment - 1)) != 0) {
        return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: alignment %" PRIu32 " is not a power of two",
                          alignment);
    }
    wkv *kv = find_kv(w, GGUF_ALIGNMENT_KEY);
    if (kv) {
        /* the value is the blob's last 4 bytes */
        wbuf *b = &kv->blob;
        b->len -= 4;
        wb_u32(b, alignment);
        w->alignment = alignment;
        return LETHE_OK;
    }
    return add_scalar(w, GGUF_ALIGNMENT_KEY, LETHE_GGUF_U32, &alignment);
}

lethe_status lethe_gguf_writer_add_u8(lethe_gguf_writer *w, const char *k, uint8_t v) { return add_scalar(w, k, LETHE_GGUF_U8, &v); }
lethe_status lethe_gguf_writer_add_i8(lethe_gguf_writer *w, const char *k, int8_t v) { return add_scalar(w, k, LETHE_GGUF_I8, &v); }
lethe_status lethe_gguf_writer_add_u16(lethe_gguf_writer *w, const char *k, uint16_t v) { return add_scalar(w, k, LETHE_GGUF_U16, &v); }
lethe_status lethe_gguf_writer_add_i16(lethe_gguf_writer *w, const char *k, int16_t v) { return add_scalar(w, k, LETHE_GGUF_I16, &v); }
lethe_status lethe_gguf_writer_add_u32(lethe_gguf_writer *w, const char *k, uint32_t v) { return add_scalar(w, k, LETHE_GGUF_U32, &v); }
lethe_status lethe_gguf_writer_add_i32(lethe_gguf_writer *w, const char *k, int32_t v) { return add_scalar(w, k, LETHE_GGUF_I32, &v); }
lethe_status lethe_gguf_writer_add_u64(lethe_gguf_writer *w, const char *k, uint64_t v) { return add_scalar(w, k, LETHE_GGUF_U64, &v); }
lethe_status lethe_gguf_writer_add_i64(lethe_gguf_writer *w, const char *k, int64_t v) { return add_scalar(w, k, LETHE_GGUF_I64, &v); }
lethe_status lethe_gguf_writer_add_f32(lethe_gguf_writer *w, const char *k, float v) { return add_scalar(w, k, LETHE_GGUF_F32, &v); }
lethe_status lethe_gguf_writer_add_f64(lethe_gguf_writer *w, const char *k, double v) { return add_scalar(w, k, LETHE_GGUF_F64, &v); }
lethe_status lethe_gguf_writer_add_bool(lethe_gguf_writer *w, const char *k, bool v) { return add_scalar(w, k, LETHE_GGUF_BOOL, &v); }

lethe_status lethe_gguf_writer_add_strn(lethe_gguf_writer *w, const char *key, const char *v, size_t len) {
    if (!v && len) return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: NULL string for key '%s'", key ? key : "?");
    wbuf *b;
    lethe_status s = kv_begin(w, key, LETHE_GGUF_STRING, &b);
    if (s) return s;
    wb_str(b, v, len);
    return kv_end(w);
}

lethe_status lethe_gguf_writer_add_str(lethe_gguf_writer *w, const char *key, const char *v) {
    if (!v) return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: NULL string for key '%s'", key ? key : "?");
    return lethe_gguf_writer_add_strn(w, key, v, strlen(v));
}

lethe_status lethe_gguf_writer_add_arr(lethe_gguf_writer *w, const char *key, lethe_gguf_type elem,
                                       const void *data, uint64_t n) {
    size_t es = scalar_size(elem);
    if (!es || (!data && n)) {
        return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: key '%s': arrays of type %d need add_arr_str "
                          "or data", key ? key : "?", (int)elem);
    }
    wbuf *b;
    lethe_status s = kv_begin(w, key, LETHE_GGUF_ARRAY, &b);
    if (s) return s;
    wb_u32(b, (uint32_t)elem);
    wb_u64(b, n);
    /* bool arrays are 1 byte per element in the file as in the caller's memory */
    for (uint64_t i = 0; i < n && !b->oom; i++) wb_scalar(b, elem, (const uint8_t *)data + i * es);
    return kv_end(w);
}

lethe_status lethe_gguf_writer_add_arr_str(lethe_gguf_writer *w, const char *key, const char *const *strs,
                                           uint64_t n) {
    if (!strs && n) return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: NULL strings for key '%s'", key ? key : "?");
    for (uint64_t i = 0; i < n; i++) {
        if (!strs[i]) return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: key '%s': string %" PRIu64 " is NULL",
                                        key ? key : "?", i);
    }
    wbuf *b;
    lethe_status s = kv_begin(w, key, LETHE_GGUF_ARRAY, &b);
    if (s) return s;
    wb_u32(b, LETHE_GGUF_STRING);
    wb_u64(b, n);
    for (uint64_t i = 0; i < n && !b->oom; i++) wb_str(b, strs[i], strlen(strs[i]));
    return kv_end(w);
}

static uint64_t rd64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* Byte extent of the elements of an array already validated by the reader. */
static size_t nested_extent(const uint8_t *p, lethe_gguf_type elem, uint64_t n) {
    size_t es = scalar_size(elem);
    if (es) return (size_t)n * es;
    size_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (elem == LETHE_GGUF_STRING) {
            off += 8 + (size_t)rd64(p + off);
        } else {   /* ARRAY */
            lethe_gguf_type sub = (lethe_gguf_type)(p[off] | p[off + 1] << 8 | p[off + 2] << 16 | (uint32_t)p[off + 3] << 24);
            uint64_t sub_n = rd64(p + off + 4);
            off += 12;
            off += nested_extent(p + off, sub, sub_n);
        }
    }
    return off;
}

lethe_status lethe_gguf_writer_add_kv(lethe_gguf_writer *w, const lethe_gguf_kv *kv) {
    if (!kv) return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: NULL kv");
    switch (kv->type) {
    case LETHE_GGUF_U8: { uint8_t v = (uint8_t)kv->v.u; return add_scalar(w, kv->key, kv->type, &v); }
    case LETHE_GGUF_I8: { int8_t v = (int8_t)kv->v.i; return add_scalar(w, kv->key, kv->type, &v); }
    case LETHE_GGUF_U16: { uint16_t v = (uint16_t)kv->v.u; return add_scalar(w, kv->key, kv->type, &v); }
    case LETHE_GGUF_I16: { int16_t v = (int16_t)kv->v.i; return add_scalar(w, kv->key, kv->type, &v); }
    case LETHE_GGUF_U32: { uint32_t v = (uint32_t)kv->v.u; return add_scalar(w, kv->key, kv->type, &v); }
    case LETHE_GGUF_I32: { int32_t v = (int32_t)kv->v.i; return add_scalar(w, kv->key, kv->type, &v); }
    case LETHE_GGUF_U64: return add_scalar(w, kv->key, kv->type, &kv->v.u);
    case LETHE_GGUF_I64: return add_scalar(w, kv->key, kv->type, &kv->v.i);
    case LETHE_GGUF_F32: { float v = (float)kv->v.f; return add_scalar(w, kv->key, kv->type, &v); }
    case LETHE_GGUF_F64: return add_scalar(w, kv->key, kv->type, &kv->v.f);
    case LETHE_GGUF_BOOL: return add_scalar(w, kv->key, kv->type, &kv->v.b);
    case LETHE_GGUF_STRING: return lethe_gguf_writer_add_strn(w, kv->key, kv->v.s.ptr, (size_t)kv->v.s.len);
    case LETHE_GGUF_ARRAY: break;
    default: return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: key '%s' has unknown type %d", kv->key, (int)kv->type);
    }
    wbuf *b;
    lethe_status s = kv_begin(w, kv->key, LETHE_GGUF_ARRAY, &b);
    if (s) return s;
    wb_u32(b, (uint32_t)kv->arr_type);
    wb_u64(b, kv->n);
    if (kv->arr_type == LETHE_GGUF_STRING) {
        for (uint64_t i = 0; i < kv->n && !b->oom; i++) wb_str(b, kv->arr_str[i].ptr, (size_t)kv->arr_str[i].len);
    } else {
        /* scalars and nested arrays are already little-endian file bytes */
        wb_put(b, kv->arr, nested_extent(kv->arr, kv->arr_type, kv->n));
    }
    return kv_end(w);
}

lethe_status lethe_gguf_writer_add_tensor(lethe_gguf_writer *w, const char *name, lethe_dtype type,
                                          int n_dims, const int64_t *ne, const void *data, bool copy) {
    if (!w || !name || !ne) return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: NULL writer, name or shape");
    const lethe_dtype_traits *tr = lethe_dtype_get((int)type);
    if (!tr) return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: tensor '%s': unknown type %d", name, (int)type);
    if (n_dims < 1 || n_dims > 4) {
        return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: tensor '%s': %d dimensions (1 to 4)", name, n_dims);
    }
    uint64_t nelem = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] <= 0 || (uint64_t)ne[d] > (uint64_t)INT64_MAX / nelem) {
            return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: tensor '%s': bad dimension %d = %" PRId64,
                              name, d, ne[d]);
        }
        nelem *= (uint64_t)ne[d];
    }
    if (ne[0] % tr->blck_size) {
        return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: tensor '%s': ne[0] = %" PRId64
                          " is not a multiple of the %s block size %d", name, ne[0], tr->name, tr->blck_size);
    }
    if (nelem / (uint64_t)tr->blck_size > SIZE_MAX / tr->type_size) {
        return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: tensor '%s' is too large", name);
    }
    for (size_t i = 0; i < w->n_t; i++) {
        if (strcmp(w->t[i].name, name) == 0) {
            return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: duplicate tensor name '%s'", name);
        }
    }
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 64;
        wtensor *t = realloc(w->t, cap * sizeof *t);
        if (!t) return lethe_fail(LETHE_ERR_OOM, "gguf writer: out of memory");
        w->t = t;
        w->cap_t = cap;
    }
    wtensor t = {0};
    t.type = type;
    t.n_dims = n_dims;
    for (int d = 0; d < 4; d++) t.ne[d] = d < n_dims ? ne[d] : 1;
    t.size = (size_t)(nelem / (uint64_t)tr->blck_size) * tr->type_size;
    t.name = malloc(strlen(name) + 1);
    if (!t.name) return lethe_fail(LETHE_ERR_OOM, "gguf writer: out of memory");
    strcpy(t.name, name);
    t.data = data;
    if (data && copy) {
        t.owned = malloc(t.size ? t.size : 1);
        if (!t.owned) {
            free(t.name);
            return lethe_fail(LETHE_ERR_OOM, "gguf writer: out of memory copying tensor '%s' (%zu bytes)", name, t.size);
        }
        memcpy(t.owned, data, t.size);
        t.data = t.owned;
    }
    w->t[w->n_t++] = t;
    return LETHE_OK;
}

/* ---- output ------------------------------------------------------------------------ */

static size_t pad_to(size_t n, size_t a) { return (a - n % a) % a; }

static size_t meta_size(const lethe_gguf_writer *w) {
    size_t n = 4 + 4 + 8 + 8;
    for (size_t i = 0; i < w->n_kv; i++) n += w->kv[i].blob.len;
    for (size_t i = 0; i < w->n_t; i++) n += 8 + strlen(w->t[i].name) + 4 + 8 * (size_t)w->t[i].n_dims + 4 + 8;
    return n;
}

size_t lethe_gguf_writer_size(const lethe_gguf_writer *w) {
    if (!w) return 0;
    size_t n = meta_size(w);
    n += pad_to(n, w->alignment);
    for (size_t i = 0; i < w->n_t; i++) n += w->t[i].size + pad_to(w->t[i].size, w->alignment);
    return n;
}

typedef bool (*sink_fn)(void *ctx, const void *p, size_t n);

static bool sink_zeros(sink_fn sink, void *ctx, size_t n) {
    static const uint8_t zeros[4096];
    while (n) {
        size_t k = n < sizeof zeros ? n : sizeof zeros;
        if (!sink(ctx, zeros, k)) return false;
        n -= k;
    }
    return true;
}

/* Emit the whole file through `sink`. The meta part is small, so it is built
 * in one buffer; tensor data goes straight from the caller's memory. */
static lethe_status emit(const lethe_gguf_writer *w, sink_fn sink, void *ctx) {
    wbuf m = {0};
    wb_put(&m, "GGUF", 4);
    wb_u32(&m, w->version);
    wb_u64(&m, w->n_t);
    wb_u64(&m, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) wb_put(&m, w->kv[i].blob.p, w->kv[i].blob.len);
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        wb_str(&m, t->name, strlen(t->name));
        wb_u32(&m, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) wb_u64(&m, (uint64_t)t->ne[d]);
        wb_u32(&m, (uint32_t)t->type);
        wb_u64(&m, off);
        off += t->size + pad_to(t->size, w->alignment);
    }
    if (m.oom) {
        free(m.p);
        return lethe_fail(LETHE_ERR_OOM, "gguf writer: out of memory building the header");
    }
    bool ok = sink(ctx, m.p, m.len) && sink_zeros(sink, ctx, pad_to(m.len, w->alignment));
    free(m.p);
    for (size_t i = 0; ok && i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        ok = (t->data ? sink(ctx, t->data, t->size) : sink_zeros(sink, ctx, t->size)) &&
             sink_zeros(sink, ctx, pad_to(t->size, w->alignment));
    }
    return ok ? LETHE_OK : LETHE_ERR_IO;   /* the sink set the message */
}

typedef struct mem_sink { uint8_t *p; size_t len, cap; } mem_sink;

static bool mem_write(void *ctx, const void *p, size_t n) {
    mem_sink *s = ctx;
    if (n > s->cap - s->len) {
        lethe_fail(LETHE_ERR_INTERNAL, "gguf writer: size computation is off");
        return false;
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
    return true;
}

lethe_status lethe_gguf_writer_write_mem(const lethe_gguf_writer *w, void **out, size_t *out_size) {
    if (!w || !out || !out_size) return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: NULL argument");
    size_t size = lethe_gguf_writer_size(w);
    mem_sink s = {malloc(size), 0, size};
    if (!s.p) return lethe_fail(LETHE_ERR_OOM, "gguf writer: out of memory for a %zu-byte file", size);
    lethe_status st = emit(w, mem_write, &s);
    if (!st && s.len != size) st = lethe_fail(LETHE_ERR_INTERNAL, "gguf writer: wrote %zu of %zu bytes", s.len, size);
    if (st) {
        free(s.p);
        return st == LETHE_ERR_IO ? LETHE_ERR_INTERNAL : st;
    }
    *out = s.p;
    *out_size = size;
    return LETHE_OK;
}

typedef struct file_sink { FILE *f; const char *path; } file_sink;

static bool file_write(void *ctx, const void *p, size_t n) {
    file_sink *s = ctx;
    if (fwrite(p, 1, n, s->f) == n) return true;
    lethe_fail(LETHE_ERR_IO, "gguf writer: cannot write '%s': %s", s->path, strerror(errno));
    return false;
}

lethe_status lethe_gguf_writer_write_file(const lethe_gguf_writer *w, const char *path) {
    if (!w || !path) return lethe_fail(LETHE_ERR_INVALID_ARG, "gguf writer: NULL writer or path");
    FILE *f = fopen(path, "wb");
    if (!f) return lethe_fail(LETHE_ERR_IO, "gguf writer: cannot create '%s': %s", path, strerror(errno));
    file_sink s = {f, path};
    lethe_status st = emit(w, file_write, &s);
    if (fclose(f) != 0 && !st) st = lethe_fail(LETHE_ERR_IO, "gguf writer: cannot write '%s': %s", path, strerror(errno));
    if (st) remove(path);
    return st;
}
