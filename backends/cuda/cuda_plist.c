/* cuda_plist.c — the device mirror of the KV cache's page lists: extents,
 * host copy, pending upload (cuda_plist.h). Plain C: the module and the
 * host tests run it. */
#include "cuda_plist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t errlen, int st, const char *what) {
    snprintf(err, errlen, "page-list mirror: %s", what);
    return st;
}

void cu_plist_free(cu_plist_mirror *m) {
    free(m->off);
    free(m->cap);
    free(m->n_dev);
    free(m->gen);
    free(m->host);
    free(m->pairs);
    free(m->moves);
    free(m->defer);
    for (int c = 0; c < CU_PLIST_CLASSES; c++) free(m->fl[c]);
    memset(m, 0, sizeof *m);
}

/* A new cache: no stream has an extent; the device arena, if any, is kept
 * (its contents are garbage to the new lists, which hold nothing there yet). */
static int reset(cu_plist_mirror *m, const lethe_kv_cache *kv) {
    const uint64_t dev = m->dev;
    const int32_t dev_cap = m->dev_cap;
    const bool check = m->check;
    const cu_plist_stats stats = m->stats;
    const void *buf = m->kv_buf;
    cu_plist_free(m);
    m->dev = dev;
    m->dev_cap = dev_cap;
    m->check = check;
    m->stats = stats;
    m->kv_buf = buf;
    m->kv_uid = kv->uid;
    m->n_streams = (size_t)kv->n_seq * (size_t)kv->n_layer * (size_t)kv->n_head_kv;
    const size_t S = m->n_streams ? m->n_streams : 1;
    m->off = malloc(S * sizeof *m->off);
    m->cap = calloc(S, sizeof *m->cap);
    m->n_dev = calloc(S, sizeof *m->n_dev);
    m->gen = calloc(S, sizeof *m->gen);
    if (!m->off || !m->cap || !m->n_dev || !m->gen) {
        cu_plist_free(m);
        return -1;
    }
    for (size_t i = 0; i < m->n_streams; i++) m->off[i] = -1;
    return 0;
}

static int push_i32(int32_t **a, int32_t *n, int32_t *cap, int32_t v) {
    if (*n == *cap) {
        const int32_t c = *cap ? 2 * *cap : 16;
        int32_t *x = realloc(*a, (size_t)c * sizeof *x);
        if (!x) return -1;
        *a = x;
        *cap = c;
    }
    (*a)[(*n)++] = v;
    return 0;
}

static int cls_of(int32_t n) {
    int c = CU_PLIST_MIN_CLASS;
    while (c < CU_PLIST_CLASSES - 1 && ((int32_t)1 << c) < n) c++;
    return c;
}

/* An extent of class c: a freed one, else from the top of the arena (the
 * host copy grows with it; the device arena is grown once per sync). */
static int extent_take(cu_plist_mirror *m, int c, int32_t *off) {
    if (m->fl_n[c]) {
        *off = m->fl[c][--m->fl_n[c]];
        return 0;
    }
    const int32_t size = (int32_t)1 << c;
    if (m->top > INT32_MAX - size) return -1;
    if (m->top + size > m->host_cap) {
        int64_t hc = m->host_cap ? 2 * (int64_t)m->host_cap : CU_PLIST_MIN_ARENA;
        while (hc < (int64_t)m->top + size) hc *= 2;
        if (hc > INT32_MAX) hc = INT32_MAX;
        int32_t *h = realloc(m->host, (size_t)hc * sizeof *h);
        if (!h) return -1;
        m->host = h;
        m->host_cap = (int32_t)hc;
    }
    *off = m->top;
    m->top += size;
    return 0;
}

static int pair_push(cu_plist_mirror *m, int32_t idx, int32_t page) {
    if (m->n_pairs == m->cap_pairs) {
        const size_t c = m->cap_pairs ? 2 * m->cap_pairs : 1024;
        int32_t *p = realloc(m->pairs, c * 2 * sizeof *p);
        if (!p) return -1;
        m->pairs = p;
        m->cap_pairs = c;
    }
    m->pairs[2 * m->n_pairs] = idx;
    m->pairs[2 * m->n_pairs + 1] = page;
    m->n_pairs++;
    return 0;
}

static int move_push(cu_plist_mirror *m, int32_t from, int32_t to, int32_t count) {
    if (m->n_moves == m->cap_moves) {
        const size_t c = m->cap_moves ? 2 * m->cap_moves : 256;
        int32_t *p = realloc(m->moves, c * 3 * sizeof *p);
        if (!p) return -1;
        m->moves = p;
        m->cap_moves = c;
    }
    int32_t *r = m->moves + 3 * m->n_moves++;
    r[0] = from;
    r[1] = to;
    r[2] = count;
    return 0;
}

void cu_plist_applied(cu_plist_mirror *m) {
    m->stats.bytes += cu_plist_pending_bytes(m);
    m->stats.fulls += m->full;
    m->full = false;
    m->n_pairs = 0;
    m->n_moves = 0;
}

void cu_plist_invalidate(cu_plist_mirror *m) {
    m->full = true;
    m->n_pairs = 0;
    m->n_moves = 0;
}

bool cu_plist_check_env(void) {
    const char *e = getenv("LETHE_CUDA_PLIST_CHECK");
    return e && !strcmp(e, "1");
}

int cu_plist_check(const cu_plist_mirror *m, const lethe_kv_cache *kv, char *err, size_t errlen) {
    if (m->kv_uid != kv->uid) return fail(err, errlen, LETHE_ERR_INTERNAL, "mirrors another cache");
    const int L = kv->n_layer, H = kv->n_head_kv;
    for (size_t i = 0; i < m->n_streams; i++) {
        const lethe_kv_stream *s = &kv->streams[i];
        const int q = (int)(i / ((size_t)L * H)), l = (int)(i / H % L), h = (int)(i % H);
        if (!s->n_pages) continue;
        if (m->off[i] < 0 || m->cap[i] < s->n_pages || m->n_dev[i] < s->n_pages) {
            snprintf(err, errlen,
                     "page-list mirror is stale: stream (seq %d, layer %d, head %d) has %d pages, the mirror %d "
                     "(generation %llu, seen %llu): a page-list change that did not move plist_gen",
                     q, l, h, s->n_pages, m->off[i] < 0 ? 0 : m->n_dev[i], (unsigned long long)s->plist_gen,
                     (unsigned long long)m->gen[i]);
            return LETHE_ERR_INTERNAL;
        }
        for (int32_t j = 0; j < s->n_pages; j++)
            if (m->host[m->off[i] + j] != s->pages[j]) {
                snprintf(err, errlen,
                         "page-list mirror is stale: stream (seq %d, layer %d, head %d) page %d: cache %d, mirror %d "
                         "(generation %llu, seen %llu): a page-list change that did not move plist_gen",
                         q, l, h, j, s->pages[j], m->host[m->off[i] + j], (unsigned long long)s->plist_gen,
                         (unsigned long long)m->gen[i]);
                return LETHE_ERR_INTERNAL;
            }
    }
    return LETHE_OK;
}

int cu_plist_sync(cu_plist_mirror *m, const lethe_kv_cache *kv, cu_plist_alloc_fn alloc, void *user, char *err,
                  size_t errlen) {
    const size_t S = (size_t)kv->n_seq * (size_t)kv->n_layer * (size_t)kv->n_head_kv;
    if (m->kv_uid != kv->uid || m->n_streams != S || !m->off)
        if (reset(m, kv)) return fail(err, errlen, LETHE_ERR_OOM, "out of memory");
    memset(&m->last, 0, sizeof m->last);
    m->last.syncs = 1;
    m->stats.syncs++;
    /* an upload never applied (a compute that failed before it): new pairs
     * could name the same entries; the whole copy replaces both */
    if (m->n_pairs || m->n_moves) cu_plist_invalidate(m);
    if (kv->plist_clock != m->clock_seen) {
        /* pass 1: larger extents for the lists that outgrew theirs; what the
         * device holds of a list moves with it (a run), its old extent is
         * free once this sync is over */
        m->n_defer = 0;
        for (size_t i = 0; i < S; i++) {
            const lethe_kv_stream *s = &kv->streams[i];
            if (s->plist_gen == m->gen[i] || s->n_pages <= m->cap[i]) continue;
            const int c = cls_of(s->n_pages);
            int32_t off;
            if (extent_take(m, c, &off)) return fail(err, errlen, LETHE_ERR_OOM, "out of memory (arena)");
            const int32_t old = m->off[i], keep = old >= 0 ? m->n_dev[i] : 0;
            if (old >= 0) {
                if (keep) memcpy(m->host + off, m->host + old, (size_t)keep * sizeof(int32_t));
                if (keep && !m->full && move_push(m, old, off, keep)) cu_plist_invalidate(m);
                if (push_i32(&m->defer, &m->n_defer, &m->cap_defer, old) ||
                    push_i32(&m->defer, &m->n_defer, &m->cap_defer, cls_of(m->cap[i])))
                    return fail(err, errlen, LETHE_ERR_OOM, "out of memory (free extents)");
            }
            m->off[i] = off;
            m->cap[i] = (int32_t)1 << c;
            m->n_dev[i] = keep;
            m->last.moves += keep > 0;
        }
        if (m->top > m->dev_cap) {   /* a larger arena, the old one copied into it on the device */
            int64_t want = m->dev_cap ? 2 * (int64_t)m->dev_cap : CU_PLIST_MIN_ARENA;
            while (want < m->top) want *= 2;
            if (want > INT32_MAX) want = INT32_MAX;
            uint64_t dev = 0;
            const bool fresh = !m->dev;
            const int rc = alloc ? alloc(user, m, (size_t)want, &dev) : LETHE_ERR_UNSUPPORTED;
            if (rc != LETHE_OK || !dev) {   /* the old arena is gone either way */
                m->dev = 0;
                m->dev_cap = 0;
                cu_plist_invalidate(m);
                return fail(err, errlen, LETHE_ERR_OOM, "no device arena");
            }
            m->dev = dev;
            m->dev_cap = (int32_t)want;
            m->last.growths = 1;
            m->stats.growths++;
            if (fresh) cu_plist_invalidate(m);   /* nothing was on the device */
        }
        /* pass 2: the entries that differ from what the device holds */
        for (size_t i = 0; i < S; i++) {
            const lethe_kv_stream *s = &kv->streams[i];
            if (s->plist_gen == m->gen[i]) continue;
            m->last.changed++;
            int32_t *h = s->n_pages ? m->host + m->off[i] : NULL;   /* pass 1 gave it an extent */
            for (int32_t j = 0; j < s->n_pages; j++) {
                if (j < m->n_dev[i] && h[j] == s->pages[j]) continue;
                h[j] = s->pages[j];
                if (m->full) continue;
                if (pair_push(m, m->off[i] + j, s->pages[j])) {
                    cu_plist_invalidate(m);   /* the host copy is right: send it whole */
                    continue;
                }
                m->last.pairs++;
            }
            if (s->n_pages > m->n_dev[i]) m->n_dev[i] = s->n_pages;
            m->gen[i] = s->plist_gen;
        }
        for (int32_t k = 0; k < m->n_defer; k += 2) {   /* the extents left behind */
            const int c = m->defer[k + 1];
            if (push_i32(&m->fl[c], &m->fl_n[c], &m->fl_cap[c], m->defer[k]))
                return fail(err, errlen, LETHE_ERR_OOM, "out of memory (free extents)");
        }
        m->n_defer = 0;
        m->clock_seen = kv->plist_clock;
    }
    if (m->full) {
        m->last.fulls = 1;
        m->last.pairs = 0;
        m->last.moves = 0;
    }
    m->last.bytes = cu_plist_pending_bytes(m);
    m->stats.changed += m->last.changed;
    m->stats.pairs += m->last.pairs;
    m->stats.moves += m->last.moves;
    if (m->check) return cu_plist_check(m, kv, err, errlen);
    return LETHE_OK;
}
