/* safetensors.c — safetensors files and sharded checkpoints, checked and
 * mapped in place (see safetensors.h for the format and the checks). */
#include "safetensors.h"
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header larger than this is hostile (real ones are well under 1 MiB even
 * for 100B-parameter shards); the reference implementation caps it too. */
#define ST_MAX_HEADER ((uint64_t)100 << 20)

typedef struct st_dtype_def {
    const char *name;
    int type;          /* lethe_dtype or -1 */
    size_t elem;       /* bytes per element */
} st_dtype_def;

static const st_dtype_def k_dtypes[] = {
    {"F32", LETHE_F32, 4}, {"F16", LETHE_F16, 2}, {"BF16", LETHE_BF16, 2}, {"F64", LETHE_F64, 8},
    {"I8", LETHE_I8, 1},   {"I16", LETHE_I16, 2}, {"I32", LETHE_I32, 4},   {"I64", LETHE_I64, 8},
    {"U8", -1, 1},         {"U16", -1, 2},        {"U32", -1, 4},          {"U64", -1, 8},
    {"BOOL", -1, 1},       {"F8_E4M3", -1, 1},    {"F8_E5M2", -1, 1},
};

static const st_dtype_def *find_dtype(const char *s) {
    for (size_t i = 0; i < LETHE_ARRAY_SIZE(k_dtypes); i++)
        if (!strcmp(k_dtypes[i].name, s)) return &k_dtypes[i];
    return NULL;
}

static lethe_safetensors *st_new(void) {
    lethe_safetensors *st = calloc(1, sizeof *st);
    if (!st) lethe_fail(LETHE_ERR_OOM, "safetensors: out of memory");
    return st;
}

void lethe_safetensors_close(lethe_safetensors *st) {
    if (!st) return;
    for (size_t i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    for (int i = 0; i < st->n_files; i++)
        if (st->files[i].map) munmap(st->files[i].map, st->files[i].size);
    free(st->files);
    free(st);
}

static lethe_status push_tensor(lethe_safetensors *st, const lethe_st_tensor *t) {
    if (st->n_tensors == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 64;
        lethe_st_tensor *v = realloc(st->tensors, cap * sizeof *v);
        if (!v) return lethe_fail(LETHE_ERR_OOM, "safetensors: out of memory");
        st->tensors = v;
        st->cap = cap;
    }
    st->tensors[st->n_tensors++] = *t;
    return LETHE_OK;
}

/* One tensor entry of a header. */
static lethe_status parse_entry(const char *what, const char *name, json_t *e, const uint8_t *data,
                                uint64_t data_size, int shard, lethe_st_tensor *t) {
    memset(t, 0, sizeof *t);
    if (!json_is_object(e))
        return lethe_fail(LETHE_ERR_CORRUPT, "safetensors: %s: entry '%s' is not an object", what, name);
    json_t *jd = json_object_get(e, "dtype"), *js = json_object_get(e, "shape"), *jo = json_object_get(e, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2)
        return lethe_fail(LETHE_ERR_CORRUPT,
                          "safetensors: %s: tensor '%s' needs a string dtype, a shape array and two data_offsets",
                          what, name);
    const st_dtype_def *dt = find_dtype(json_string_value(jd));
    if (!dt)
        return lethe_fail(LETHE_ERR_UNSUPPORTED_DTYPE, "safetensors: %s: tensor '%s' has unknown dtype '%.16s'", what,
                          name, json_string_value(jd));
    size_t nd = json_array_size(js);
    if (nd > 4)
        return lethe_fail(LETHE_ERR_UNSUPPORTED, "safetensors: %s: tensor '%s' has %zu dimensions (at most 4)", what,
                          name, nd);
    uint64_t count = 1;
    t->ne[0] = t->ne[1] = t->ne[2] = t->ne[3] = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0 || json_integer_value(d) > ((json_int_t)1 << 40))
            return lethe_fail(LETHE_ERR_CORRUPT, "safetensors: %s: tensor '%s' dimension %zu is not a valid size",
                              what, name, i);
        uint64_t v = (uint64_t)json_integer_value(d);
        if (v && count > (UINT64_MAX >> 8) / v)
            return lethe_fail(LETHE_ERR_CORRUPT, "safetensors: %s: tensor '%s' is implausibly large", what, name);
        count *= v;
        t->ne[nd - 1 - i] = (int64_t)v;
    }
    json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
    if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 || json_integer_value(je) < 0)
        return lethe_fail(LETHE_ERR_CORRUPT, "safetensors: %s: tensor '%s' data_offsets are not non-negative integers",
                          what, name);
    uint64_t b = (uint64_t)json_integer_value(jb), en = (uint64_t)json_integer_value(je);
    if (b > en || en > data_size)
        return lethe_fail(LETHE_ERR_CORRUPT,
                          "safetensors: %s: tensor '%s' data_offsets [%llu, %llu] are outside the %llu data bytes", what,
                          name, (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_size);
    if (en - b != count * dt->elem)
        return lethe_fail(LETHE_ERR_SHAPE,
                          "safetensors: %s: tensor '%s' is %s with %llu elements (%llu bytes) but spans %llu bytes",
                          what, name, dt->name, (unsigned long long)count, (unsigned long long)(count * dt->elem),
                          (unsigned long long)(en - b));
    t->name = strdup(name);
    if (!t->name) return lethe_fail(LETHE_ERR_OOM, "safetensors: out of memory");
    snprintf(t->st_dtype, sizeof t->st_dtype, "%s", dt->name);
    t->type = dt->type;
    t->n_dims = (int)nd;
    t->data = data + b;
    t->size = (size_t)(en - b);
    t->shard = shard;
    return LETHE_OK;
}

static int cmp_by_offset(const void *a, const void *b) {
    const lethe_st_tensor *x = a, *y = b;
    if (x->shard != y->shard) return x->shard < y->shard ? -1 : 1;
    const uint8_t *p = x->data, *q = y->data;
    return p < q ? -1 : p > q ? 1 : 0;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const lethe_st_tensor *)a)->name, ((const lethe_st_tensor *)b)->name);
}

/* Parse the header of one file and append its tensors. */
static lethe_status parse_file(lethe_safetensors *st, const char *what, const uint8_t *bytes, size_t size, int shard) {
    if (size < 8)
        return lethe_fail(LETHE_ERR_TRUNCATED, "safetensors: %s: %zu bytes is too short for a header", what, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | bytes[i];
    if (n > size - 8)
        return lethe_fail(LETHE_ERR_TRUNCATED, "safetensors: %s: header length %llu runs past the end of the file (%zu bytes)",
                          what, (unsigned long long)n, size);
    if (n > ST_MAX_HEADER)
        return lethe_fail(LETHE_ERR_CORRUPT, "safetensors: %s: header length %llu is implausibly large", what,
                          (unsigned long long)n);
    if (n < 2 || bytes[8] != '{')
        return lethe_fail(LETHE_ERR_BAD_MAGIC, "safetensors: %s: not a safetensors file (no JSON header)", what);
    json_error_t err;
    json_t *root = json_loadb((const char *)bytes + 8, (size_t)n, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return lethe_fail(LETHE_ERR_CORRUPT, "safetensors: %s: header JSON is invalid: %s (line %d, column %d)", what,
                          err.text, err.line, err.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return lethe_fail(LETHE_ERR_CORRUPT, "safetensors: %s: header JSON is not an object", what);
    }
    const uint8_t *data = bytes + 8 + n;
    uint64_t data_size = size - 8 - n;
    size_t first = st->n_tensors;
    lethe_status s = LETHE_OK;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) continue;
        lethe_st_tensor t;
        if ((s = parse_entry(what, key, val, data, data_size, shard, &t)) != LETHE_OK) break;
        if ((s = push_tensor(st, &t)) != LETHE_OK) {
            free(t.name);
            break;
        }
        st->data_bytes += t.size;
    }
    json_decref(root);
    if (s != LETHE_OK) return s;
    /* no two tensors may share bytes */
    size_t cnt = st->n_tensors - first;
    if (cnt < 2) return LETHE_OK;   /* (st->tensors may still be NULL) */
    lethe_st_tensor *v = st->tensors + first;
    qsort(v, cnt, sizeof *v, cmp_by_offset);
    for (size_t i = 1; i < cnt; i++) {
        const uint8_t *prev_end = (const uint8_t *)v[i - 1].data + v[i - 1].size;
        if ((const uint8_t *)v[i].data < prev_end)
            return lethe_fail(LETHE_ERR_CORRUPT, "safetensors: %s: tensors '%s' and '%s' overlap", what, v[i - 1].name,
                              v[i].name);
    }
    return LETHE_OK;
}

/* Sort by name; a name twice (across shards) is an error. */
static lethe_status finish(lethe_safetensors *st) {
    if (st->n_tensors < 2) return LETHE_OK;
    qsort(st->tensors, st->n_tensors, sizeof *st->tensors, cmp_by_name);
    for (size_t i = 1; i < st->n_tensors; i++)
        if (!strcmp(st->tensors[i - 1].name, st->tensors[i].name))
            return lethe_fail(LETHE_ERR_CORRUPT, "safetensors: tensor '%s' appears twice", st->tensors[i].name);
    return LETHE_OK;
}

lethe_safetensors *lethe_safetensors_parse(const void *data, size_t size, lethe_status *status) {
    lethe_status s;
    lethe_safetensors *st = st_new();
    if (!st) { s = LETHE_ERR_OOM; goto fail; }
    if ((s = parse_file(st, "buffer", data, size, 0)) != LETHE_OK) goto fail;
    if ((s = finish(st)) != LETHE_OK) goto fail;
    if (status) *status = LETHE_OK;
    return st;
fail:
    lethe_safetensors_close(st);
    if (status) *status = s;
    return NULL;
}

/* Map a file and append it to st->files. */
static lethe_status map_file(lethe_safetensors *st, const char *path, const char *what) {
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return lethe_fail(LETHE_ERR_IO, "safetensors: cannot open %s '%s': %s", what, path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return lethe_fail(LETHE_ERR_IO, "safetensors: %s '%s' is not a regular file", what, path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            return lethe_fail(LETHE_ERR_IO, "safetensors: cannot map '%s': %s", path, strerror(errno));
        }
    }
    close(fd);
    lethe_st_file *f = realloc(st->files, (size_t)(st->n_files + 1) * sizeof *f);
    if (!f) {
        if (map) munmap(map, size);
        return lethe_fail(LETHE_ERR_OOM, "safetensors: out of memory");
    }
    st->files = f;
    st->files[st->n_files].map = map;
    st->files[st->n_files].size = size;
    st->n_files++;
    return LETHE_OK;
}

static lethe_status open_one(lethe_safetensors *st, const char *path) {
    lethe_status s = map_file(st, path, "file");
    if (s != LETHE_OK) return s;
    const lethe_st_file *f = &st->files[st->n_files - 1];
    const char *base = strrchr(path, '/');
    return parse_file(st, base ? base + 1 : path, f->map, f->size, st->n_files - 1);
}

lethe_safetensors *lethe_safetensors_open(const char *path, lethe_status *status) {
    lethe_status s;
    lethe_safetensors *st = st_new();
    if (!st) { s = LETHE_ERR_OOM; goto fail; }
    if ((s = open_one(st, path)) != LETHE_OK) goto fail;
    if ((s = finish(st)) != LETHE_OK) goto fail;
    if (status) *status = LETHE_OK;
    return st;
fail:
    lethe_safetensors_close(st);
    if (status) *status = s;
    return NULL;
}

/* A shard name from an index must be a plain file name in the directory. */
static bool safe_file_name(const char *s) {
    return s[0] && s[0] != '.' && !strchr(s, '/') && !strchr(s, '\\') && strlen(s) < 256;
}

static lethe_status open_index(lethe_safetensors *st, const char *dir, const char *index_path) {
    json_error_t err;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return lethe_fail(LETHE_ERR_CORRUPT, "safetensors: model.safetensors.index.json is invalid: %s (line %d)",
                          err.text, err.line);
    lethe_status s = LETHE_OK;
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map) || json_object_size(map) == 0) {
        s = lethe_fail(LETHE_ERR_CORRUPT, "safetensors: model.safetensors.index.json has no weight_map");
        goto done;
    }
    /* each distinct shard once, in order of first mention */
    json_t *shards = json_object();
    if (!shards) { s = lethe_fail(LETHE_ERR_OOM, "safetensors: out of memory"); goto done; }
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val) {
        if (!json_is_string(val) || !safe_file_name(json_string_value(val))) {
            s = lethe_fail(LETHE_ERR_CORRUPT, "safetensors: index: tensor '%s' maps to an invalid shard name", key);
            break;
        }
        const char *file = json_string_value(val);
        if (json_object_get(shards, file)) continue;
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path) {
            s = lethe_fail(LETHE_ERR_INVALID_ARG, "safetensors: path too long");
            break;
        }
        if (access(path, R_OK) != 0) {
            s = lethe_fail(LETHE_ERR_IO, "safetensors: shard '%s' named by the index is missing (%s)", file,
                           strerror(errno));
            break;
        }
        if ((s = open_one(st, path)) != LETHE_OK) break;
        json_object_set_new(shards, file, json_integer(st->n_files - 1));
    }
    if (s == LETHE_OK && (s = finish(st)) == LETHE_OK) {
        /* every tensor the index names must be in the shard it names */
        json_object_foreach(map, key, val) {
            const lethe_st_tensor *t = lethe_safetensors_find(st, key);
            json_int_t want = json_integer_value(json_object_get(shards, json_string_value(val)));
            if (!t || t->shard != (int)want) {
                s = lethe_fail(LETHE_ERR_MISSING_TENSOR, "safetensors: index says tensor '%s' is in '%s', but it is not",
                               key, json_string_value(val));
                break;
            }
        }
    }
    json_decref(shards);
done:
    json_decref(root);
    return s;
}

lethe_safetensors *lethe_safetensors_open_dir(const char *dir, lethe_status *status) {
    lethe_status s;
    lethe_safetensors *st = st_new();
    if (!st) { s = LETHE_ERR_OOM; goto fail; }
    char path[4096];
    if (snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir) >= (int)sizeof path) {
        s = lethe_fail(LETHE_ERR_INVALID_ARG, "safetensors: path too long");
        goto fail;
    }
    if (access(path, F_OK) == 0) {
        if ((s = open_index(st, dir, path)) != LETHE_OK) goto fail;
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (access(path, F_OK) != 0) {
            s = lethe_fail(LETHE_ERR_IO, "safetensors: '%s' has neither model.safetensors nor model.safetensors.index.json",
                           dir);
            goto fail;
        }
        if ((s = open_one(st, path)) != LETHE_OK) goto fail;
        if ((s = finish(st)) != LETHE_OK) goto fail;
    }
    if (status) *status = LETHE_OK;
    return st;
fail:
    lethe_safetensors_close(st);
    if (status) *status = s;
    return NULL;
}

const lethe_st_tensor *lethe_safetensors_find(const lethe_safetensors *st, const char *name) {
    if (!st || !name) return NULL;
    size_t lo = 0, hi = st->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->tensors[mid].name, name);
        if (c == 0) return &st->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}
