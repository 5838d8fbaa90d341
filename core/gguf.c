/* gguf.c — reader for GGUF v2/v3 model files.
 *
 * Layout (little-endian throughout; see llama.cpp docs/gguf.md):
 *   "GGUF" u32 version, u64 n_tensors, u64 n_kv,
 *   n_kv    × { str key, u32 type, value }
 *   n_tensors × { str name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
 *   padding to general.alignment (default 32), then the data section;
 *   each tensor's offset is relative to the data section and aligned.
 *   str = u64 len + bytes (no NUL); array = u32 elem_type, u64 n, elements.
 *
 * The file is hostile until proven otherwise: every length and count is
 * checked against the bytes that remain BEFORE anything is allocated or
 * read, so a header claiming 2^60 entries fails at once with TRUNCATED
 * instead of attempting the allocation. Strings stay views into the file;
 * keys and tensor names are copied so they can be NUL-terminated.
 */
#include "gguf.h"

#include "common.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__unix__) || defined(__APPLE__)
#  define LETHE_HAVE_MMAP 1
#  include <fcntl.h>
#  include <sys/mman.h>
#  include <sys/stat.h>
#  include <unistd.h>
#endif

#define GGUF_DEFAULT_ALIGNMENT 32
/* Arrays of arrays are legal but no model uses them; bound the recursion so a
 * crafted file cannot blow the stack. */
#define GGUF_MAX_ARRAY_DEPTH 8
/* Smallest possible encodings, used to bound counts before allocating:
 * kv = key len (8) + type (4) + a 1-byte value; tensor info = name len (8)
 * + n_dims (4) + one dim (8) + type (4) + offset (8). */
#define GGUF_MIN_KV_BYTES 13u
#define GGUF_MIN_TENSOR_INFO_BYTES 32u

/* The public struct is the first member, so a lethe_gguf * is also the
 * address of the private state (hash indexes for the lookups). */
typedef struct gguf_impl {
    lethe_gguf pub;
    size_t *kv_index;      /* [kv_index_cap] kv number, SIZE_MAX = empty     */
    size_t kv_index_cap;   /* power of two                                   */
    size_t *t_index;       /* [t_index_cap] tensor number, SIZE_MAX = empty  */
    size_t t_index_cap;
} gguf_impl;

/* ---- little-endian cursor over the file bytes ---------------------------- */

typedef struct rd {
    const uint8_t *p;
    size_t size;
    size_t pos;
} rd;

static size_t rd_left(const rd *r) { return r->size - r->pos; }

static uint32_t le32(const uint8_t *b) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint64_t le64(const uint8_t *b) { return (uint64_t)le32(b) | (uint64_t)le32(b + 4) << 32; }

static lethe_status rd_need(const rd *r, size_t n, const char *what) {
    if (n <= rd_left(r)) return LETHE_OK;
    return lethe_fail(LETHE_ERR_TRUNCATED,
                      "gguf: file ends while reading %s (need %zu bytes at offset %zu, file size %zu)",
                      what, n, r->pos, r->size);
}

static lethe_status rd_u32(rd *r, uint32_t *out, const char *what) {
    lethe_status s = rd_need(r, 4, what);
    if (s) return s;
    *out = le32(r->p + r->pos);
    r->pos += 4;
    return LETHE_OK;
}

static lethe_status rd_u64(rd *r, uint64_t *out, const char *what) {
    lethe_status s = rd_need(r, 8, what);
    if (s) return s;
    *out = le64(r->p + r->pos);
    r->pos += 8;
    return LETHE_OK;
}

static lethe_status rd_str(rd *r, lethe_gguf_str *out, const char *what) {
    uint64_t len;
    lethe_status s = rd_u64(r, &len, what);
    if (s) return s;
    if (len > rd_left(r)) {
        return lethe_fail(LETHE_ERR_TRUNCATED,
                          "gguf: string length %" PRIu64 " in %s at offset %zu exceeds the %zu bytes "
                          "left in the file",
                          len, what, r->pos - 8, rd_left(r));
    }
    out->len = len;
    out->ptr = (const char *)(r->p + r->pos);
    r->pos += (size_t)len;
    return LETHE_OK;
}

/* A NUL-terminated copy of a key or tensor name; names with an embedded NUL
 * would alias other names after copying, so they are corrupt. */
static lethe_status copy_name(const lethe_gguf_str *s, char **out, const char *what, uint64_t idx) {
    if (memchr(s->ptr, 0, (size_t)s->len)) {
        return lethe_fail(LETHE_ERR_CORRUPT, "gguf: %s %" PRIu64 " contains a NUL byte", what, idx);
    }
    char *c = malloc((size_t)s->len + 1);
    if (!c) return lethe_fail(LETHE_ERR_OOM, "gguf: out of memory copying %s %" PRIu64, what, idx);
    memcpy(c, s->ptr, (size_t)s->len);
    c[s->len] = 0;
    *out = c;
    return LETHE_OK;
}

/* ---- value types ----------------------------------------------------------- */

static size_t scalar_size(uint32_t t) {
    switch (t) {
    case LETHE_GGUF_U8: case LETHE_GGUF_I8: case LETHE_GGUF_BOOL: return 1;
    case LETHE_GGUF_U16: case LETHE_GGUF_I16: return 2;
    case LETHE_GGUF_U32: case LETHE_GGUF_I32: case LETHE_GGUF_F32: return 4;
    case LETHE_GGUF_U64: case LETHE_GGUF_I64: case LETHE_GGUF_F64: return 8;
    default: return 0;   /* STRING, ARRAY, unknown */
    }
}

static const char *type_name(uint32_t t) {
    static const char *const names[] = {
        [LETHE_GGUF_U8] = "u8", [LETHE_GGUF_I8] = "i8", [LETHE_GGUF_U16] = "u16",
        [LETHE_GGUF_I16] = "i16", [LETHE_GGUF_U32] = "u32", [LETHE_GGUF_I32] = "i32",
        [LETHE_GGUF_F32] = "f32", [LETHE_GGUF_BOOL] = "bool", [LETHE_GGUF_STRING] = "string",
        [LETHE_GGUF_ARRAY] = "array", [LETHE_GGUF_U64] = "u64", [LETHE_GGUF_I64] = "i64",
        [LETHE_GGUF_F64] = "f64",
    };
    _Static_assert(LETHE_ARRAY_SIZE(names) == LETHE_GGUF_TYPE_COUNT, "a name per gguf type");
    return t < LETHE_GGUF_TYPE_COUNT ? names[t] : "?";
}

/* Decode one little-endian scalar into the widened union. */
static void decode_scalar(uint32_t t, const uint8_t *b, lethe_gguf_kv *kv) {
    switch (t) {
    case LETHE_GGUF_U8: kv->v.u = b[0]; break;
    case LETHE_GGUF_I8: kv->v.i = (int8_t)b[0]; break;
    case LETHE_GGUF_U16: kv->v.u = (uint16_t)(b[0] | b[1] << 8); break;
    case LETHE_GGUF_I16: kv->v.i = (int16_t)(uint16_t)(b[0] | b[1] << 8); break;
    case LETHE_GGUF_U32: kv->v.u = le32(b); break;
    case LETHE_GGUF_I32: kv->v.i = (int32_t)le32(b); break;
    case LETHE_GGUF_U64: kv->v.u = le64(b); break;
    case LETHE_GGUF_I64: kv->v.i = (int64_t)le64(b); break;
    case LETHE_GGUF_BOOL: kv->v.b = b[0] != 0; break;
    case LETHE_GGUF_F32: {
        uint32_t bits = le32(b);
        float f;
        memcpy(&f, &bits, 4);
        kv->v.f = f;
        break;
    }
    case LETHE_GGUF_F64: {
        uint64_t bits = le64(b);
        memcpy(&kv->v.f, &bits, 8);
        break;
    }
    default: break;
    }
}

/* Walk over the elements of an array without storing them (arrays nested in
 * arrays). `depth` is the nesting level of the array being skipped. */
static lethe_status skip_array_body(rd *r, uint32_t elem, uint64_t n, int depth, const char *key) {
    if (depth > GGUF_MAX_ARRAY_DEPTH) {
        return lethe_fail(LETHE_ERR_CORRUPT, "gguf: key '%s': arrays nested deeper than %d levels",
                          key, GGUF_MAX_ARRAY_DEPTH);
    }
    size_t es = scalar_size(elem);
    if (es) {
        if (n > rd_left(r) / es) {
            return lethe_fail(LETHE_ERR_TRUNCATED,
                              "gguf: key '%s': nested array of %" PRIu64 " %s needs more than the %zu "
                              "bytes left in the file", key, n, type_name(elem), rd_left(r));
        }
        r->pos += (size_t)(n * es);
        return LETHE_OK;
    }
    if (elem == LETHE_GGUF_STRING) {
        for (uint64_t i = 0; i < n; i++) {
            lethe_gguf_str s;
            lethe_status st = rd_str(r, &s, "a string in a nested array");
            if (st) return st;
        }
        return LETHE_OK;
    }
    if (elem == LETHE_GGUF_ARRAY) {
        for (uint64_t i = 0; i < n; i++) {
            uint32_t sub;
            uint64_t sub_n;
            lethe_status st = rd_u32(r, &sub, "a nested array's element type");
            if (!st) st = rd_u64(r, &sub_n, "a nested array's length");
            if (!st) st = skip_array_body(r, sub, sub_n, depth + 1, key);
            if (st) return st;
        }
        return LETHE_OK;
    }
    return lethe_fail(LETHE_ERR_CORRUPT, "gguf: key '%s': nested array has unknown element type %" PRIu32,
                      key, elem);
}

static lethe_status read_value(rd *r, uint32_t type, lethe_gguf_kv *kv) {
    char what[160];
    snprintf(what, sizeof what, "the value of key '%.100s'", kv->key);
    size_t es = scalar_size(type);
    if (es) {
        lethe_status s = rd_need(r, es, what);
        if (s) return s;
        decode_scalar(type, r->p + r->pos, kv);
        r->pos += es;
        return LETHE_OK;
    }
    if (type == LETHE_GGUF_STRING) return rd_str(r, &kv->v.s, what);
    if (type != LETHE_GGUF_ARRAY) {
        return lethe_fail(LETHE_ERR_CORRUPT, "gguf: key '%s' has unknown value type %" PRIu32, kv->key, type);
    }

    uint32_t elem;
    uint64_t n;
    lethe_status s = rd_u32(r, &elem, what);
    if (!s) s = rd_u64(r, &n, what);
    if (s) return s;
    if (elem >= LETHE_GGUF_TYPE_COUNT) {
        return lethe_fail(LETHE_ERR_CORRUPT, "gguf: key '%s' is an array of unknown element type %" PRIu32,
                          kv->key, elem);
    }
    kv->arr_type = (lethe_gguf_type)elem;
    kv->n = n;
    kv->arr = r->p + r->pos;
    es = scalar_size(elem);
    if (es) {
        if (n > rd_left(r) / es) {
            return lethe_fail(LETHE_ERR_TRUNCATED,
                              "gguf: key '%s' claims an array of %" PRIu64 " %s (%zu bytes each) but only "
                              "%zu bytes are left in the file", kv->key, n, type_name(elem), es, rd_left(r));
        }
        r->pos += (size_t)(n * es);
        return LETHE_OK;
    }
    if (elem == LETHE_GGUF_STRING) {
        /* Each string takes at least its 8-byte length: bound n before allocating. */
        if (n > rd_left(r) / 8) {
            return lethe_fail(LETHE_ERR_TRUNCATED,
                              "gguf: key '%s' claims an array of %" PRIu64 " strings but only %zu bytes "
                              "are left in the file", kv->key, n, rd_left(r));
        }
        if (n == 0) return LETHE_OK;
        kv->arr_str = malloc((size_t)n * sizeof *kv->arr_str);
        if (!kv->arr_str) {
            return lethe_fail(LETHE_ERR_OOM, "gguf: out of memory for %" PRIu64 " strings of key '%s'",
                              n, kv->key);
        }
        for (uint64_t i = 0; i < n; i++) {
            s = rd_str(r, &kv->arr_str[i], what);
            if (s) return s;
        }
        return LETHE_OK;
    }
    /* Array of arrays: validated and skipped; `arr` points at the first
     * nested array's header for anyone who wants to walk it. */
    return skip_array_body(r, elem, n, 1, kv->key);
}

/* ---- name indexes ---------------------------------------------------------- */

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static size_t index_cap_for(uint64_t n) {
    size_t cap = 8;
    while (cap < 2 * n) cap *= 2;
    return cap;
}

/* Names of entry i is names(i). Returns the clashing entry, or SIZE_MAX if
 * `name` was inserted. */
typedef const char *(*name_of_fn)(const lethe_gguf *g, size_t i);

static const char *kv_name(const lethe_gguf *g, size_t i) { return g->kv[i].key; }
static const char *tensor_name(const lethe_gguf *g, size_t i) { return g->tensors[i].name; }

static size_t index_insert(const lethe_gguf *g, size_t *idx, size_t cap, name_of_fn name_of, size_t i) {
    const char *name = name_of(g, i);
    for (size_t h = (size_t)hash_str(name) & (cap - 1);; h = (h + 1) & (cap - 1)) {
        if (idx[h] == SIZE_MAX) {
            idx[h] = i;
            return SIZE_MAX;
        }
        if (strcmp(name_of(g, idx[h]), name) == 0) return idx[h];
    }
}

static size_t index_find(const lethe_gguf *g, const size_t *idx, size_t cap, name_of_fn name_of,
                         const char *name) {
    if (!idx) return SIZE_MAX;
    for (size_t h = (size_t)hash_str(name) & (cap - 1);; h = (h + 1) & (cap - 1)) {
        if (idx[h] == SIZE_MAX) return SIZE_MAX;
        if (strcmp(name_of(g, idx[h]), name) == 0) return idx[h];
    }
}

static size_t *index_new(size_t cap) {
    size_t *idx = malloc(cap * sizeof *idx);
    if (idx) memset(idx, 0xff, cap * sizeof *idx);   /* all SIZE_MAX */
    return idx;
}

/* ---- parsing ----------------------------------------------------------------- */

static lethe_status parse_kvs(gguf_impl *gi, rd *r) {
    lethe_gguf *g = &gi->pub;
    if (g->n_kv > rd_left(r) / GGUF_MIN_KV_BYTES) {
        return lethe_fail(LETHE_ERR_TRUNCATED,
                          "gguf: header claims %" PRIu64 " key-value pairs but only %zu bytes are left "
                          "in the file", g->n_kv, rd_left(r));
    }
    gi->kv_index_cap = index_cap_for(g->n_kv);
    gi->kv_index = index_new(gi->kv_index_cap);
    g->kv = calloc(g->n_kv ? (size_t)g->n_kv : 1, sizeof *g->kv);
    if (!g->kv || !gi->kv_index) return lethe_fail(LETHE_ERR_OOM, "gguf: out of memory for %" PRIu64 " kvs", g->n_kv);

    for (uint64_t i = 0; i < g->n_kv; i++) {
        lethe_gguf_kv *kv = &g->kv[i];
        char what[64];
        snprintf(what, sizeof what, "key %" PRIu64, i);
        lethe_gguf_str key = {0};
        lethe_status s = rd_str(r, &key, what);
        if (!s) s = copy_name(&key, &kv->key, "key", i);
        if (s) return s;
        size_t dup = index_insert(g, gi->kv_index, gi->kv_index_cap, kv_name, (size_t)i);
        if (dup != SIZE_MAX) {
            return lethe_fail(LETHE_ERR_CORRUPT, "gguf: duplicate key '%s' (entries %zu and %" PRIu64 ")",
                              kv->key, dup, i);
        }
        uint32_t type;
        snprintf(what, sizeof what, "the type of key %" PRIu64, i);
        s = rd_u32(r, &type, what);
        if (s) return s;
        if (type >= LETHE_GGUF_TYPE_COUNT) {
            return lethe_fail(LETHE_ERR_CORRUPT, "gguf: key '%s' has unknown value type %" PRIu32, kv->key, type);
        }
        kv->type = (lethe_gguf_type)type;
        s = read_value(r, type, kv);
        if (s) return s;
    }
    return LETHE_OK;
}

static lethe_status parse_alignment(lethe_gguf *g) {
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const lethe_gguf_kv *kv = lethe_gguf_find(g, "general.alignment");
    if (!kv) return LETHE_OK;
    int64_t a;
    if (kv->type == LETHE_GGUF_BOOL || !lethe_gguf_get_int(g, "general.alignment", &a)) {
        return lethe_fail(LETHE_ERR_CORRUPT, "gguf: general.alignment must be an integer, not %s",
                          type_name(kv->type));
    }
    /* Power of two so offsets can be checked with a mask; at most 2^31 so
     * padding arithmetic cannot overflow. */
    if (a <= 0 || a > (int64_t)1 << 31 || (a & (a - 1)) != 0) {
        return lethe_fail(LETHE_ERR_CORRUPT, "gguf: general.alignment %" PRId64 " is not a power of two", a);
    }
    g->alignment = (size_t)a;
    return LETHE_OK;
}

static lethe_status parse_tensor_info(gguf_impl *gi, rd *r, uint64_t i) {
    lethe_gguf *g = &gi->pub;
    lethe_gguf_tensor *t = &g->tensors[i];
    char what[96];
    snprintf(what, sizeof what, "the name of tensor %" PRIu64, i);
    lethe_gguf_str name;
    lethe_status s = rd_str(r, &name, what);
    if (!s) s = copy_name(&name, &t->name, "tensor name", i);
    if (s) return s;
    size_t dup = index_insert(g, gi->t_index, gi->t_index_cap, tensor_name, (size_t)i);
    if (dup != SIZE_MAX) {
        return lethe_fail(LETHE_ERR_CORRUPT, "gguf: duplicate tensor name '%s' (tensors %zu and %" PRIu64 ")",
                          t->name, dup, i);
    }
    snprintf(what, sizeof what, "the shape of tensor '%.60s'", t->name);
    uint32_t n_dims;
    s = rd_u32(r, &n_dims, what);
    if (s) return s;
    if (n_dims < 1 || n_dims > 4) {
        return lethe_fail(LETHE_ERR_CORRUPT, "gguf: tensor '%s' has %" PRIu32 " dimensions (1 to 4 supported)",
                          t->name, n_dims);
    }
    t->n_dims = (int)n_dims;
    uint64_t ne[4] = {1, 1, 1, 1};
    for (uint32_t d = 0; d < n_dims; d++) {
        s = rd_u64(r, &ne[d], what);
        if (s) return s;
    }
    /* Each dim positive and the element count representable in int64. */
    uint64_t nelem = 1;
    for (int d = 0; d < 4; d++) {
        if (ne[d] == 0 || ne[d] > (uint64_t)INT64_MAX || ne[d] > (uint64_t)INT64_MAX / nelem) {
            return lethe_fail(LETHE_ERR_CORRUPT,
                              "gguf: tensor '%s' has absurd dimensions [%" PRIu64 ", %" PRIu64 ", %" PRIu64
                              ", %" PRIu64 "] (a dimension is zero or the element count overflows)",
                              t->name, ne[0], ne[1], ne[2], ne[3]);
        }
        nelem *= ne[d];
        t->ne[d] = (int64_t)ne[d];
    }

    snprintf(what, sizeof what, "the type of tensor '%.60s'", t->name);
    uint32_t type;
    s = rd_u32(r, &type, what);
    if (s) return s;
    const lethe_dtype_traits *tr = type < LETHE_DTYPE_MAX ? lethe_dtype_get((int)type) : NULL;
    if (!tr) {
        return lethe_fail(LETHE_ERR_UNSUPPORTED_DTYPE, "gguf: tensor '%s' has unknown data type id %" PRIu32,
                          t->name, type);
    }
    t->type = (lethe_dtype)type;
    if (ne[0] % (uint64_t)tr->blck_size != 0) {
        return lethe_fail(LETHE_ERR_CORRUPT,
                          "gguf: tensor '%s' of type %s has %" PRIu64 " elements per row, not a multiple "
                          "of the block size %d", t->name, tr->name, ne[0], tr->blck_size);
    }
    /* bytes = nelem / blck * type_size, checked for overflow */
    uint64_t nblocks = nelem / (uint64_t)tr->blck_size;
    if (nblocks > SIZE_MAX / tr->type_size) {
        return lethe_fail(LETHE_ERR_CORRUPT,
                          "gguf: tensor '%s' has absurd dimensions [%" PRIu64 ", %" PRIu64 ", %" PRIu64
                          ", %" PRIu64 "] (its size in bytes overflows)", t->name, ne[0], ne[1], ne[2], ne[3]);
    }
    t->size = (size_t)nblocks * tr->type_size;

    snprintf(what, sizeof what, "the data offset of tensor '%.60s'", t->name);
    return rd_u64(r, &t->offset, what);
}

typedef struct span { uint64_t off; size_t size; size_t idx; } span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Offsets aligned, data inside the file, no two tensors sharing bytes. */
static lethe_status check_tensor_data(lethe_gguf *g) {
    size_t avail = g->size - g->data_offset;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        lethe_gguf_tensor *t = &g->tensors[i];
        if (t->offset & (g->alignment - 1)) {
            return lethe_fail(LETHE_ERR_CORRUPT,
                              "gguf: tensor '%s' data offset %" PRIu64 " is not a multiple of the alignment %zu",
                              t->name, t->offset, g->alignment);
        }
        if (t->offset > avail || t->size > avail - (size_t)t->offset) {
            return lethe_fail(LETHE_ERR_TRUNCATED,
                              "gguf: tensor '%s' data [offset %" PRIu64 ", %zu bytes] runs past the end of the "
                              "file (data section at %zu, file size %zu)",
                              t->name, t->offset, t->size, g->data_offset, g->size);
        }
        t->data = g->base + g->data_offset + t->offset;
    }
    if (g->n_tensors < 2) return LETHE_OK;
    span *sp = malloc((size_t)g->n_tensors * sizeof *sp);
    if (!sp) return lethe_fail(LETHE_ERR_OOM, "gguf: out of memory checking tensor overlap");
    for (size_t i = 0; i < g->n_tensors; i++) sp[i] = (span){g->tensors[i].offset, g->tensors[i].size, i};
    qsort(sp, (size_t)g->n_tensors, sizeof *sp, span_cmp);
    lethe_status s = LETHE_OK;
    for (size_t i = 1; i < g->n_tensors && !s; i++) {
        if (sp[i - 1].off + sp[i - 1].size > sp[i].off) {
            const lethe_gguf_tensor *a = &g->tensors[sp[i - 1].idx], *b = &g->tensors[sp[i].idx];
            s = lethe_fail(LETHE_ERR_CORRUPT,
                           "gguf: tensors '%s' [offset %" PRIu64 ", %zu bytes] and '%s' [offset %" PRIu64
                           "] overlap", a->name, a->offset, a->size, b->name, b->offset);
        }
    }
    free(sp);
    return s;
}

static lethe_status parse_all(gguf_impl *gi) {
    lethe_gguf *g = &gi->pub;
    rd r = {g->base, g->size, 0};
    if (g->size < 4) {
        /* A prefix of the magic is a cut file; anything else is not GGUF. */
        if (memcmp(g->base, "GGUF", g->size) == 0) {
            return lethe_fail(LETHE_ERR_TRUNCATED, "gguf: file is only %zu bytes, too short for a header", g->size);
        }
    }
    if (g->size < 4 || memcmp(g->base, "GGUF", 4) != 0) {
        return lethe_fail(LETHE_ERR_BAD_MAGIC, "gguf: bad magic (file does not start with \"GGUF\")");
    }
    r.pos = 4;
    lethe_status s = rd_u32(&r, &g->version, "the version");
    if (s) return s;
    if (g->version != 2 && g->version != 3) {
        if (g->version == 1) {
            return lethe_fail(LETHE_ERR_BAD_VERSION, "gguf: version 1 files are not supported (reconvert the model)");
        }
        return lethe_fail(LETHE_ERR_BAD_VERSION,
                          "gguf: unsupported version %" PRIu32 " (2 and 3 are read; a big-endian file "
                          "shows as a huge version)", g->version);
    }
    s = rd_u64(&r, &g->n_tensors, "the tensor count");
    if (!s) s = rd_u64(&r, &g->n_kv, "the key-value count");
    if (!s) s = parse_kvs(gi, &r);
    if (!s) s = parse_alignment(g);
    if (s) return s;

    if (g->n_tensors > rd_left(&r) / GGUF_MIN_TENSOR_INFO_BYTES) {
        return lethe_fail(LETHE_ERR_TRUNCATED,
                          "gguf: header claims %" PRIu64 " tensors but only %zu bytes are left in the file",
                          g->n_tensors, rd_left(&r));
    }
    gi->t_index_cap = index_cap_for(g->n_tensors);
    gi->t_index = index_new(gi->t_index_cap);
    g->tensors = calloc(g->n_tensors ? (size_t)g->n_tensors : 1, sizeof *g->tensors);
    if (!g->tensors || !gi->t_index) {
        return lethe_fail(LETHE_ERR_OOM, "gguf: out of memory for %" PRIu64 " tensor infos", g->n_tensors);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        s = parse_tensor_info(gi, &r, i);
        if (s) return s;
    }

    /* The data section starts at the next multiple of the alignment. A file
     * without tensors may end before that padding. */
    size_t pad = (g->alignment - r.pos % g->alignment) % g->alignment;
    if (pad > rd_left(&r)) {
        if (g->n_tensors > 0) {
            return lethe_fail(LETHE_ERR_TRUNCATED,
                              "gguf: file ends at %zu, before the data section (at %zu)", g->size, r.pos + pad);
        }
        pad = rd_left(&r);
    }
    g->data_offset = r.pos + pad;
    return check_tensor_data(g);
}

/* ---- open / parse / close ---------------------------------------------------- */

static lethe_gguf *parse_owned(const void *data, size_t size, void *map, size_t map_size, void *heap,
                               lethe_status *status) {
    gguf_impl *gi = calloc(1, sizeof *gi);
    if (!gi) {
        lethe_status s = lethe_fail(LETHE_ERR_OOM, "gguf: out of memory");
#ifdef LETHE_HAVE_MMAP
        if (map) munmap(map, map_size);
#endif
        free(heap);
        if (status) *status = s;
        return NULL;
    }
    lethe_gguf *g = &gi->pub;
    g->base = data;
    g->size = size;
    g->map = map;
    g->map_size = map_size;
    g->heap = heap;
    lethe_status s = parse_all(gi);
    if (status) *status = s;
    if (s) {
        lethe_gguf_close(g);
        return NULL;
    }
    return g;
}

lethe_gguf *lethe_gguf_parse(const void *data, size_t size, lethe_status *status) {
    if (!data && size) {
        lethe_status s = lethe_fail(LETHE_ERR_INVALID_ARG, "gguf: NULL buffer of %zu bytes", size);
        if (status) *status = s;
        return NULL;
    }
    static const uint8_t empty[1];
    return parse_owned(data ? data : empty, size, NULL, 0, NULL, status);
}

static lethe_gguf *open_fail(lethe_status *status, lethe_status s) {
    if (status) *status = s;
    return NULL;
}

lethe_gguf *lethe_gguf_open(const char *path, bool use_mmap, lethe_status *status) {
    if (!path) return open_fail(status, lethe_fail(LETHE_ERR_INVALID_ARG, "gguf: NULL path"));
#ifdef LETHE_HAVE_MMAP
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return open_fail(status, lethe_fail(LETHE_ERR_IO, "gguf: cannot open '%s': %s", path, strerror(errno)));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return open_fail(status, lethe_fail(LETHE_ERR_IO, "gguf: cannot stat '%s': %s", path, strerror(e)));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return open_fail(status, lethe_fail(LETHE_ERR_IO, "gguf: '%s' is not a regular file", path));
    }
    size_t size = (size_t)st.st_size;
    if (use_mmap && size > 0) {
        void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        int e = errno;
        close(fd);
        if (m == MAP_FAILED) {
            return open_fail(status, lethe_fail(LETHE_ERR_IO, "gguf: cannot map '%s': %s", path, strerror(e)));
        }
        return parse_owned(m, size, m, size, NULL, status);
    }
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return open_fail(status, lethe_fail(LETHE_ERR_OOM, "gguf: out of memory reading '%s' (%zu bytes)", path, size));
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int e = n < 0 ? errno : 0;
            close(fd);
            free(buf);
            return open_fail(status, lethe_fail(LETHE_ERR_IO, "gguf: cannot read '%s': %s", path,
                                                e ? strerror(e) : "file shrank while reading"));
        }
        got += (size_t)n;
    }
    close(fd);
    return parse_owned(buf, size, NULL, 0, buf, status);
#else
    (void)use_mmap;
    FILE *f = fopen(path, "rb");
    if (!f) return open_fail(status, lethe_fail(LETHE_ERR_IO, "gguf: cannot open '%s': %s", path, strerror(errno)));
    long end = -1;
    if (fseek(f, 0, SEEK_END) == 0) end = ftell(f);
    if (end < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return open_fail(status, lethe_fail(LETHE_ERR_IO, "gguf: cannot seek '%s'", path));
    }
    size_t size = (size_t)end;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf || fread(buf, 1, size, f) != size) {
        fclose(f);
        free(buf);
        return open_fail(status, lethe_fail(LETHE_ERR_IO, "gguf: cannot read '%s'", path));
    }
    fclose(f);
    return parse_owned(buf, size, NULL, 0, buf, status);
#endif
}

void lethe_gguf_close(lethe_gguf *g) {
    if (!g) return;
    gguf_impl *gi = (gguf_impl *)g;
    if (g->kv) {
        for (uint64_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            free(g->kv[i].arr_str);
        }
        free(g->kv);
    }
    if (g->tensors) {
        for (uint64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
        free(g->tensors);
    }
    free(gi->kv_index);
    free(gi->t_index);
#ifdef LETHE_HAVE_MMAP
    if (g->map) munmap(g->map, g->map_size);
#endif
    free(g->heap);
    free(gi);
}

/* ---- lookups ------------------------------------------------------------------- */

const lethe_gguf_kv *lethe_gguf_find(const lethe_gguf *g, const char *key) {
    if (!g || !key) return NULL;
    const gguf_impl *gi = (const gguf_impl *)g;
    size_t i = index_find(g, gi->kv_index, gi->kv_index_cap, kv_name, key);
    return i == SIZE_MAX ? NULL : &g->kv[i];
}

const lethe_gguf_tensor *lethe_gguf_find_tensor(const lethe_gguf *g, const char *name) {
    if (!g || !name) return NULL;
    const gguf_impl *gi = (const gguf_impl *)g;
    size_t i = index_find(g, gi->t_index, gi->t_index_cap, tensor_name, name);
    return i == SIZE_MAX ? NULL : &g->tensors[i];
}

static bool is_unsigned(lethe_gguf_type t) {
    return t == LETHE_GGUF_U8 || t == LETHE_GGUF_U16 || t == LETHE_GGUF_U32 || t == LETHE_GGUF_U64;
}

static bool is_signed(lethe_gguf_type t) {
    return t == LETHE_GGUF_I8 || t == LETHE_GGUF_I16 || t == LETHE_GGUF_I32 || t == LETHE_GGUF_I64;
}

bool lethe_gguf_get_int(const lethe_gguf *g, const char *key, int64_t *out) {
    const lethe_gguf_kv *kv = lethe_gguf_find(g, key);
    if (!kv) return false;
    if (is_signed(kv->type)) {
        *out = kv->v.i;
        return true;
    }
    if (is_unsigned(kv->type) && kv->v.u <= (uint64_t)INT64_MAX) {
        *out = (int64_t)kv->v.u;
        return true;
    }
    return false;
}

bool lethe_gguf_get_float(const lethe_gguf *g, const char *key, double *out) {
    const lethe_gguf_kv *kv = lethe_gguf_find(g, key);
    if (!kv) return false;
    if (kv->type == LETHE_GGUF_F32 || kv->type == LETHE_GGUF_F64) *out = kv->v.f;
    else if (is_signed(kv->type)) *out = (double)kv->v.i;
    else if (is_unsigned(kv->type)) *out = (double)kv->v.u;
    else return false;
    return true;
}

bool lethe_gguf_get_bool(const lethe_gguf *g, const char *key, bool *out) {
    const lethe_gguf_kv *kv = lethe_gguf_find(g, key);
    if (!kv || kv->type != LETHE_GGUF_BOOL) return false;
    *out = kv->v.b;
    return true;
}

bool lethe_gguf_get_str(const lethe_gguf *g, const char *key, char *buf, size_t buf_size) {
    const lethe_gguf_kv *kv = lethe_gguf_find(g, key);
    if (!kv || kv->type != LETHE_GGUF_STRING || !buf || buf_size == 0) return false;
    size_t n = kv->v.s.len < buf_size - 1 ? (size_t)kv->v.s.len : buf_size - 1;
    memcpy(buf, kv->v.s.ptr, n);
    buf[n] = 0;
    return true;
}

/* ---- rendering ------------------------------------------------------------------ */

typedef struct sbuf { char *p; size_t cap, len; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->len + 1 >= b->cap) return;
    size_t room = b->cap - 1 - b->len;
    if (n > room) n = room;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_printf(sbuf *b, const char *fmt, ...) LETHE_PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void sb_scalar(sbuf *b, const lethe_gguf_kv *v, lethe_gguf_type t) {
    switch (t) {
    case LETHE_GGUF_U8: case LETHE_GGUF_U16: case LETHE_GGUF_U32: case LETHE_GGUF_U64:
        sb_printf(b, "%" PRIu64, v->v.u);
        break;
    case LETHE_GGUF_I8: case LETHE_GGUF_I16: case LETHE_GGUF_I32: case LETHE_GGUF_I64:
        sb_printf(b, "%" PRId64, v->v.i);
        break;
    case LETHE_GGUF_F32: sb_printf(b, "%.9g", v->v.f); break;
    case LETHE_GGUF_F64: sb_printf(b, "%.17g", v->v.f); break;
    case LETHE_GGUF_BOOL: sb_put(b, v->v.b ? "true" : "false", v->v.b ? 4 : 5); break;
    default: sb_put(b, "?", 1); break;
    }
}

int lethe_gguf_kv_to_string(const lethe_gguf_kv *kv, char *buf, size_t buf_size) {
    if (!kv || !buf || buf_size == 0) return -1;
    sbuf b = {buf, buf_size, 0};
    buf[0] = 0;
    if (kv->type == LETHE_GGUF_STRING) {
        sb_put(&b, kv->v.s.ptr, (size_t)kv->v.s.len);
        return (int)b.len;
    }
    if (kv->type != LETHE_GGUF_ARRAY) {
        sb_scalar(&b, kv, kv->type);
        return (int)b.len;
    }
    /* Arrays: the first few elements, then the count (vocabularies have 10^5). */
    const uint64_t show = 8;
    sb_put(&b, "[", 1);
    size_t es = scalar_size(kv->arr_type);
    for (uint64_t i = 0; i < kv->n && i < show; i++) {
        if (i) sb_put(&b, ", ", 2);
        if (kv->arr_type == LETHE_GGUF_STRING && kv->arr_str) {
            sb_put(&b, "\"", 1);
            sb_put(&b, kv->arr_str[i].ptr, (size_t)LETHE_MIN(kv->arr_str[i].len, 64u));
            sb_put(&b, kv->arr_str[i].len > 64 ? "...\"" : "\"", kv->arr_str[i].len > 64 ? 4 : 1);
        } else if (es) {
            lethe_gguf_kv tmp = {0};
            decode_scalar(kv->arr_type, (const uint8_t *)kv->arr + i * es, &tmp);
            sb_scalar(&b, &tmp, kv->arr_type);
        } else {
            sb_put(&b, "[...]", 5);
        }
    }
    if (kv->n > show) sb_printf(&b, ", ... (%" PRIu64 " %s)", kv->n, type_name(kv->arr_type));
    sb_put(&b, "]", 1);
    return (int)b.len;
}
