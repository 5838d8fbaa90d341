/* dms_adapter.c — apply a separately shipped DMS adapter to a base model
 * (DESIGN.md §3.1.6, `--dms-adapter FILE`).
 *
 * The file is safetensors with, per layer l,
 *   model.layers.l.self_attn.dms_proj_alpha.weight       [Hkv, E] (or [1, E]: per layer)
 *   model.layers.l.self_attn.dms_proj_alpha_norm.weight  [E]
 * (GGUF-style blk.l.dms_alpha.weight / blk.l.dms_alpha_norm.weight also
 * accepted), f32, f16 or bf16, and optional string metadata dms_window_size,
 * dms_alpha_scale, dms_initial_alpha_offset, dms_alpha_per — the config.json
 * keys of an HF DMS checkpoint. The tensors are copied to f32 (a few KB per
 * layer), so the file is closed after loading.
 */
#include "common.h"
#include "model.h"
#include "safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The header's __metadata__ (string values), parsed again here: the reader
 * validated the file and keeps tensors only. */
static lethe_status read_metadata(const char *path, lethe_dms_hparams *d) {
    FILE *f = fopen(path, "rb");
    if (!f) return lethe_fail(LETHE_ERR_IO, "dms adapter: cannot open '%s': %s", path, strerror(errno));
    uint8_t lenb[8];
    char *hdr = NULL;
    lethe_status st = LETHE_OK;
    uint64_t n = 0;
    if (fread(lenb, 1, 8, f) == 8) {
        for (int i = 7; i >= 0; i--) n = n << 8 | lenb[i];
        hdr = n < (1u << 26) ? malloc(n + 1) : NULL;
        if (hdr && fread(hdr, 1, n, f) != n) { free(hdr); hdr = NULL; }
    }
    fclose(f);
    if (!hdr) return lethe_fail(LETHE_ERR_CORRUPT, "dms adapter: '%s': unreadable header", path);
    hdr[n] = 0;
    json_error_t err;
    json_t *root = json_loads(hdr, 0, &err);
    free(hdr);
    json_t *meta = root ? json_object_get(root, "__metadata__") : NULL;
    const char *v;
    char *end;
    if (meta && (v = json_string_value(json_object_get(meta, "dms_window_size")))) {
        long w = strtol(v, &end, 10);
        if (*end || end == v || w < 0 || w > (1 << 24))
            st = lethe_fail(LETHE_ERR_CORRUPT, "dms adapter: dms_window_size '%.32s' is not a window size", v);
        d->window = (int32_t)w;
    }
    if (st == LETHE_OK && meta && (v = json_string_value(json_object_get(meta, "dms_alpha_scale")))) {
        d->alpha_scale = strtof(v, &end);
        if (*end || end == v || !isfinite(d->alpha_scale))
            st = lethe_fail(LETHE_ERR_CORRUPT, "dms adapter: dms_alpha_scale '%.32s' is not a number", v);
    }
    if (st == LETHE_OK && meta && (v = json_string_value(json_object_get(meta, "dms_initial_alpha_offset")))) {
        d->alpha_offset = strtof(v, &end);
        if (*end || end == v || !isfinite(d->alpha_offset))
            st = lethe_fail(LETHE_ERR_CORRUPT, "dms adapter: dms_initial_alpha_offset '%.32s' is not a number", v);
    }
    if (st == LETHE_OK && meta && (v = json_string_value(json_object_get(meta, "dms_alpha_per")))) {
        if (!strcmp(v, "layer")) d->per_layer = true;
        else if (strcmp(v, "head"))
            st = lethe_fail(LETHE_ERR_CORRUPT, "dms adapter: dms_alpha_per '%.32s' is not \"head\" or \"layer\"", v);
    }
    json_decref(root);
    return st;
}

static const lethe_st_tensor *find_either(const lethe_safetensors *st, int l, const char *hf_suffix,
                                          const char *gguf_suffix, char *name, size_t cap) {
    snprintf(name, cap, "model.layers.%d.self_attn.%s", l, hf_suffix);
    const lethe_st_tensor *t = lethe_safetensors_find(st, name);
    if (t) return t;
    char alt[128];
    snprintf(alt, sizeof alt, "blk.%d.%s", l, gguf_suffix);
    t = lethe_safetensors_find(st, alt);
    if (t) snprintf(name, cap, "%s", alt);
    return t;
}

/* Copy a tensor to f32 at dst (n elements), checking its dtype. */
static lethe_status to_f32(const lethe_st_tensor *t, const char *name, float *dst, int64_t n) {
    const lethe_dtype_traits *tr = t->type >= 0 ? lethe_dtype_get(t->type) : NULL;
    if (!tr || !tr->to_f32 || (t->type != LETHE_F32 && t->type != LETHE_F16 && t->type != LETHE_BF16))
        return lethe_fail(LETHE_ERR_UNSUPPORTED_DTYPE, "dms adapter: tensor '%s' is %s (f32, f16 or bf16 expected)",
                          name, t->st_dtype);
    tr->to_f32(t->data, dst, n);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(dst[i])) return lethe_fail(LETHE_ERR_CORRUPT, "dms adapter: tensor '%s' holds a non-finite value", name);
    return LETHE_OK;
}

lethe_status lethe_dms_adapter_apply(lethe_model *m, const char *path) {
    lethe_hparams *hp = &m->hp;
    if (hp->dms.variant != LETHE_DMS_NONE)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "dms adapter: the model is already a DMS model (%s variant)",
                          hp->dms.variant == LETHE_DMS_NEURON ? "neuron" : "adapter");
    lethe_dms_hparams d = {.variant = LETHE_DMS_ADAPTER, .window = 512, .alpha_scale = 100.0f, .alpha_offset = 5.0f};
    lethe_status st = read_metadata(path, &d);
    if (st != LETHE_OK) return st;
    lethe_safetensors *sf = lethe_safetensors_open(path, &st);
    if (!sf) return st;
    const int64_t E = hp->n_embd, Hkv = hp->n_head_kv;
    /* rows per layer: Hkv, or 1 when the adapter decides per layer */
    const lethe_st_tensor *t0 = NULL;
    char name[160];
    t0 = find_either(sf, 0, "dms_proj_alpha.weight", "dms_alpha.weight", name, sizeof name);
    const int64_t rows = t0 && t0->ne[1] == 1 && Hkv > 1 ? 1 : Hkv;
    if (rows == 1) d.per_layer = true;
    const size_t per_layer = (size_t)(rows * E + E);
    float *mem = malloc((size_t)hp->n_layer * per_layer * sizeof(float));
    if (!mem) {
        lethe_safetensors_close(sf);
        return lethe_fail(LETHE_ERR_OOM, "dms adapter");
    }
    for (int l = 0; l < hp->n_layer && st == LETHE_OK; l++) {
        float *a = mem + (size_t)l * per_layer, *nw = a + rows * E;
        const lethe_st_tensor *ta = find_either(sf, l, "dms_proj_alpha.weight", "dms_alpha.weight", name, sizeof name);
        if (!ta) { st = lethe_fail(LETHE_ERR_MISSING_TENSOR, "dms adapter: '%s' is missing", name); break; }
        if (ta->n_dims != 2 || ta->ne[0] != E || ta->ne[1] != rows) {
            st = lethe_fail(LETHE_ERR_SHAPE, "dms adapter: '%s' is [%lld, %lld], the model needs [%lld, %lld]", name,
                            (long long)ta->ne[1], (long long)ta->ne[0], (long long)rows, (long long)E);
            break;
        }
        if ((st = to_f32(ta, name, a, rows * E)) != LETHE_OK) break;
        const lethe_st_tensor *tn = find_either(sf, l, "dms_proj_alpha_norm.weight", "dms_alpha_norm.weight", name, sizeof name);
        if (!tn) { st = lethe_fail(LETHE_ERR_MISSING_TENSOR, "dms adapter: '%s' is missing", name); break; }
        if (tn->n_dims != 1 || tn->ne[0] != E) {
            st = lethe_fail(LETHE_ERR_SHAPE, "dms adapter: '%s' has %lld values, the model's width is %lld", name,
                            (long long)tn->ne[0], (long long)E);
            break;
        }
        if ((st = to_f32(tn, name, nw, E)) != LETHE_OK) break;
    }
    lethe_safetensors_close(sf);
    if (st != LETHE_OK) {
        free(mem);
        return st;
    }
    /* all checked: now the model changes */
    for (int l = 0; l < hp->n_layer; l++) {
        float *a = mem + (size_t)l * per_layer;
        lethe_layer *L = &m->layers[l];
        int64_t ne_a[2] = {E, rows}, ne_n[2] = {E, 1};
        lethe_tensor_init(&L->dms_alpha, LETHE_F32, 2, ne_a);
        L->dms_alpha.data = a;
        snprintf(L->dms_alpha.name, sizeof L->dms_alpha.name, "blk.%d.dms_alpha.weight", l);
        lethe_tensor_init(&L->dms_alpha_norm, LETHE_F32, 2, ne_n);
        L->dms_alpha_norm.data = a + rows * E;
        snprintf(L->dms_alpha_norm.name, sizeof L->dms_alpha_norm.name, "blk.%d.dms_alpha_norm.weight", l);
    }
    hp->dms = d;
    m->dms_adapter_mem = mem;
    m->info.dms_variant = LETHE_DMS_ADAPTER;
    m->info.dms_window = d.window;
    return LETHE_OK;
}
