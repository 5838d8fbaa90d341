/* cuda_weights.h — the CUDA device's weight cache, in plain C (no CUDA
 * call), so tests/test_cuda_host_weights.c runs it on the host.
 *
 * One cache per device (cu_dev in cuda_internal.h), shared by every backend
 * on it under the device's lock: weights found by their host address, each
 * uploaded once. Open addressing with linear probing; deletion by backward
 * shift, so a lookup never needs tombstones.
 *
 * Retired copies: the same host address seen with more bytes (a larger view
 * of a weight) is uploaded again, larger; the smaller copy cannot be freed
 * then, because another backend may have looked it up and be about to
 * launch a kernel on it. It is kept, and freed when its host range is
 * forgotten (cu_wcache_forget: its model is freed) or the device goes.
 */
#ifndef LETHE_CUDA_WEIGHTS_H
#define LETHE_CUDA_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct cu_weight {   /* one device copy of host bytes [host, host + size) */
    const void *host;        /* NULL: an empty slot */
    size_t size;
    void *dev;
} cu_weight;

typedef struct cu_wcache {
    cu_weight *slots;        /* [cap], cap a power of two, at most half full */
    size_t cap, n;
    cu_weight *retired;      /* [n_retired] replaced copies (see above) */
    size_t n_retired, cap_retired;
    size_t bytes;            /* device bytes of live and retired copies */
    uint64_t uploads;        /* copies put since creation */
} cu_wcache;

/* Frees one device copy (cudaFree in the backend, a counter in tests). */
typedef void (*cu_weight_drop_fn)(void *dev, size_t size, void *user);

static inline size_t cu_wcache_hash(const void *p, size_t cap) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static inline cu_weight *cu_wcache_find(const cu_wcache *w, const void *host) {
    if (!w->cap) return NULL;
    for (size_t h = cu_wcache_hash(host, w->cap); w->slots[h].host; h = (h + 1) & (w->cap - 1))
        if (w->slots[h].host == host) return &w->slots[h];
    return NULL;
}

static inline int cu_wcache_grow(cu_wcache *w) {
    const size_t cap = w->cap ? 2 * w->cap : 1024;
    cu_weight *t = (cu_weight *)calloc(cap, sizeof *t);
    if (!t) return -1;
    for (size_t i = 0; i < w->cap; i++) {
        if (!w->slots[i].host) continue;
        size_t h = cu_wcache_hash(w->slots[i].host, cap);
        while (t[h].host) h = (h + 1) & (cap - 1);
        t[h] = w->slots[i];
    }
    free(w->slots);
    w->slots = t;
    w->cap = cap;
    return 0;
}

/* Add the copy `dev` of [host, host + size); a copy already there for
 * `host` is retired (kept until forgotten). 0, or -1 when out of memory
 * (nothing changed: the caller frees dev). */
static inline int cu_wcache_put(cu_wcache *w, const void *host, size_t size, void *dev) {
    cu_weight *old = cu_wcache_find(w, host);
    if (old) {
        if (w->n_retired == w->cap_retired) {
            const size_t cap = w->cap_retired ? 2 * w->cap_retired : 8;
            cu_weight *r = (cu_weight *)realloc(w->retired, cap * sizeof *r);
            if (!r) return -1;
            w->retired = r;
            w->cap_retired = cap;
        }
        w->retired[w->n_retired++] = *old;
        *old = (cu_weight){host, size, dev};
    } else {
        if (2 * (w->n + 1) > w->cap && cu_wcache_grow(w) != 0) return -1;
        size_t h = cu_wcache_hash(host, w->cap);
        while (w->slots[h].host) h = (h + 1) & (w->cap - 1);
        w->slots[h] = (cu_weight){host, size, dev};
        w->n++;
    }
    w->bytes += size;
    w->uploads++;
    return 0;
}

static inline int cu_wcache_overlaps(const cu_weight *e, uintptr_t a, uintptr_t b) {
    const uintptr_t h = (uintptr_t)e->host;
    return h < b && h + e->size > a;
}

/* Empty slot i and shift later members of its probe run back (Knuth's
 * algorithm R), so every remaining key stays reachable from its hash. */
static inline void cu_wcache_delete_at(cu_wcache *w, size_t i) {
    const size_t mask = w->cap - 1;
    size_t j = i;
    for (;;) {
        w->slots[i].host = NULL;
        for (;;) {
            j = (j + 1) & mask;
            if (!w->slots[j].host) return;
            const size_t k = cu_wcache_hash(w->slots[j].host, w->cap);
            /* j's key may stay when its home k lies cyclically in (i, j] */
            if (i <= j ? (i < k && k <= j) : (i < k || k <= j)) continue;
            break;
        }
        w->slots[i] = w->slots[j];
        i = j;
    }
}

/* Drop every copy, live or retired, whose host bytes overlap
 * [lo, lo + size): the host memory is going away. Returns how many. */
static inline size_t cu_wcache_forget(cu_wcache *w, const void *lo, size_t size, cu_weight_drop_fn drop, void *user) {
    const uintptr_t a = (uintptr_t)lo, b = a + size;
    size_t n = 0;
    for (size_t i = 0; i < w->cap;) {
        cu_weight *e = &w->slots[i];
        if (e->host && cu_wcache_overlaps(e, a, b)) {
            drop(e->dev, e->size, user);
            w->bytes -= e->size;
            w->n--;
            n++;
            cu_wcache_delete_at(w, i);   /* slot i may hold a shifted key now: look again */
        } else {
            i++;
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < w->n_retired; i++) {
        if (cu_wcache_overlaps(&w->retired[i], a, b)) {
            drop(w->retired[i].dev, w->retired[i].size, user);
            w->bytes -= w->retired[i].size;
            n++;
        } else {
            w->retired[k++] = w->retired[i];
        }
    }
    w->n_retired = k;
    return n;
}

/* Live copies whose host bytes lie in [lo, lo + size) (all when lo is NULL). */
static inline void cu_wcache_count(const cu_wcache *w, const void *lo, size_t size, size_t *n, size_t *bytes) {
    const uintptr_t a = (uintptr_t)lo, b = a + size;
    *n = *bytes = 0;
    for (size_t i = 0; i < w->cap; i++) {
        const cu_weight *e = &w->slots[i];
        const uintptr_t h = (uintptr_t)e->host;
        if (!e->host || (lo && (h < a || h + e->size > b))) continue;
        ++*n;
        *bytes += e->size;
    }
}

/* Drop every copy and the tables. */
static inline void cu_wcache_free(cu_wcache *w, cu_weight_drop_fn drop, void *user) {
    for (size_t i = 0; i < w->cap; i++)
        if (w->slots[i].host) drop(w->slots[i].dev, w->slots[i].size, user);
    for (size_t i = 0; i < w->n_retired; i++) drop(w->retired[i].dev, w->retired[i].size, user);
    free(w->slots);
    free(w->retired);
    *w = (cu_wcache){0};
}

#endif
