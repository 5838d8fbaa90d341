/* emu_block.cc — the CUDA emulator's grid runner: blocks one after another,
 * a block's threads as fibers (emu_fiber.h) run one at a time until each
 * waits at a barrier or a warp collective; then the collectives whose
 * participants are all there complete, and the next round runs. The order
 * of a round is forward, reverse or seeded random (emu_api.h).
 *
 * What it checks: a thread that exits, or waits at another barrier (another
 * source line or kind), while others wait at __syncthreads; a warp
 * collective whose mask names a lane that exited, is not in the block or
 * waits at something else (mma.sync: always the whole warp); a shuffle
 * reading a lane outside its mask. Each
 * fails the launch with a message naming kernel, block, threads and lines.
 * What it does not model: concurrency (threads never run at once: no data
 * race can tear a value; a race shows only as an order dependence), the
 * memory model (every write is visible at once to the threads that run
 * later, barrier or not), lockstep outside collectives, timing.
 */
#include "emu_device.h"
#include "emu_fiber.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

/* the gathered __shared__ arrays of the link (emu_shared.ld); absent: no poison */
extern "C" char lethe_emu_shared_begin[] __attribute__((weak));
extern "C" char lethe_emu_shared_end[] __attribute__((weak));

namespace lethe_emu {

void mma_warp_ref(const uint32_t a[32][4], const uint32_t b[32][2], float c[32][4]);   /* emu_mma.cc */

uint3 g_thread_idx, g_block_idx;
dim3 g_block_dim, g_grid_dim;

namespace {

enum { ST_RUN, ST_WAIT, ST_EXIT };

struct copy16 {
    void *dst;
    unsigned char bytes[16];
};

struct thr {
    fiber f;
    int state = ST_RUN;
    uint3 tid{};
    /* what it waits at */
    int kind = 0, pred = 0, mode = 0, arg = 0, width = 32;
    unsigned mask = 0;
    uint64_t val = 0, result = 0;
    /* mma: this lane's fragments (its own registers, valid while it waits) */
    const uint32_t *ma = nullptr, *mb = nullptr;
    float *mc = nullptr;
    const char *file = "";
    int line = 0;
    /* cp.async: copies not yet committed, committed groups not yet landed */
    std::vector<copy16> open;
    std::deque<std::vector<copy16>> groups;
};

constexpr size_t k_stack_bytes =
#ifdef __SANITIZE_ADDRESS__
    512 << 10;
#else
    128 << 10;
#endif

struct grid_run {
    const char *name = "";
    const std::function<void()> *body = nullptr;
    std::vector<thr> t;
    int n = 0, cur = -1;
    bool failed = false;
    std::string msg;
    uint64_t rng = 0;
    char *dyn = nullptr;   /* dynamic shared memory of the grid's blocks */
};

grid_run g;   /* one grid at a time (the runtime holds its lock) */
int g_order = -1;
uint64_t g_seed = 1;
uint64_t g_launches, g_blocks, g_threads, g_mmas;

/* ---- shared memory poison. A kernel's __shared__ arrays are statics in
 * the gathered section, sorted by name: one kernel's lie together. Before
 * the first block of a kernel not seen yet, the whole section is filled
 * with 0xFF bytes; after it, the bytes it changed give the kernel's range,
 * which is filled again before each later block. A read of shared memory
 * no thread of the block wrote then sees NaN / -1, not the last block's
 * values. (A range the first block never wrote is not refilled: a missed
 * poison, never a false alarm.) Raw writes, not memset: under ASan the
 * section holds redzones. */
struct srange {
    char *lo, *hi;
};
std::unordered_map<const void *, srange> g_sranges;

__attribute__((no_sanitize_address)) void poison(char *lo, char *hi) {
    volatile char *p = lo;
    while (p < hi && ((uintptr_t)p & 7)) *p++ = (char)0xFF;
    for (; p + 8 <= hi; p += 8) *(volatile uint64_t *)p = ~(uint64_t)0;
    while (p < hi) *p++ = (char)0xFF;
}

__attribute__((no_sanitize_address)) srange written(char *lo, char *hi) {
    srange r{nullptr, nullptr};
    for (char *p = lo; p < hi; p++)
        if (*(volatile char *)p != (char)0xFF) {
            if (!r.lo) r.lo = p;
            r.hi = p + 1;
        }
    if (!r.lo) r.lo = r.hi = lo;
    return r;
}

bool shared_limit_checked() {
#ifdef __SANITIZE_ADDRESS__
    return false;
#else
    return true;
#endif
}

void land(std::vector<copy16> &v) {
    for (const copy16 &c : v) memcpy(c.dst, c.bytes, 16);
    v.clear();
}

void thread_main() {
    thr &me = g.t[g.cur];
    fiber_started(&me.f);
    (*g.body)();
    for (auto &grp : me.groups) land(grp);   /* outstanding copies still land */
    me.groups.clear();
    land(me.open);
    me.state = ST_EXIT;
    fiber_switch_back(&me.f, true);
    abort();   /* never resumed */
}

/* The running thread waits; returns when the collective completed. */
thr &wait_here(int kind, const char *file, int line) {
    thr &me = g.t[g.cur];
    me.state = ST_WAIT;
    me.kind = kind;
    me.file = file;
    me.line = line;
    fiber_switch_back(&me.f, false);
    return g.t[g.cur];
}

const char *kind_name(int k) {
    switch (k) {
    case COLL_BAR: return "__syncthreads";
    case COLL_BAR_OR: return "__syncthreads_or";
    case COLL_BAR_AND: return "__syncthreads_and";
    case COLL_BAR_COUNT: return "__syncthreads_count";
    case COLL_WARP_SYNC: return "__syncwarp";
    case COLL_SHFL: return "__shfl_*_sync";
    case COLL_BALLOT: return "__ballot_sync";
    case COLL_MMA: return "mma.sync (cu_mma_m16n8k16)";
    }
    return "?";
}
bool is_block_kind(int k) { return k >= COLL_BAR && k <= COLL_BAR_COUNT; }

void failf(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g.failed = true;
    char head[256];
    snprintf(head, sizeof head, "cuda emulator: kernel %s, block (%u,%u,%u): ", g.name, g_block_idx.x, g_block_idx.y,
             g_block_idx.z);
    g.msg = std::string(head) + buf;
}

std::string where(const thr &x) {
    char b[256];
    if (x.state == ST_EXIT) snprintf(b, sizeof b, "thread (%u,%u,%u) exited", x.tid.x, x.tid.y, x.tid.z);
    else snprintf(b, sizeof b, "thread (%u,%u,%u) waits at %s (%s:%d)", x.tid.x, x.tid.y, x.tid.z, kind_name(x.kind),
                  x.file, x.line);
    return b;
}

/* Completes the warp collectives whose lanes are all there; false if none. */
bool resolve_warps() {
    bool progress = false;
    for (int w0 = 0; w0 < g.n && !g.failed; w0 += 32) {
        const int nl = g.n - w0 < 32 ? g.n - w0 : 32;
        for (int l = 0; l < nl && !g.failed; l++) {
            thr &a = g.t[w0 + l];
            if (a.state != ST_WAIT || is_block_kind(a.kind)) continue;
            const unsigned m = a.mask;
            if (!(m >> l & 1u)) {
                failf("%s: its mask 0x%08x leaves out the lane itself (%d)", where(a).c_str(), m, l);
                return false;
            }
            bool ready = true;
            for (int k = 0; k < 32 && ready; k++) {
                if (!(m >> k & 1u)) continue;
                if (k >= nl) {
                    failf("%s with mask 0x%08x: lane %d is not in the block", where(a).c_str(), m, k);
                    return false;
                }
                const thr &b = g.t[w0 + k];
                if (b.state == ST_EXIT) {
                    failf("%s with mask 0x%08x, but lane %d exited", where(a).c_str(), m, k);
                    return false;
                }
                if (b.state != ST_WAIT) ready = false;
                else if (b.kind != a.kind || b.mask != m || (a.kind == COLL_SHFL && (b.mode != a.mode || b.width != a.width)))
                    ready = false;   /* a divergent collective: reported as a deadlock if nothing else moves */
            }
            if (!ready) continue;
            if (a.kind == COLL_MMA) {
                uint32_t fa[32][4], fb[32][2];
                float fc[32][4];
                for (int k = 0; k < 32; k++) {
                    const thr &b = g.t[w0 + k];
                    memcpy(fa[k], b.ma, sizeof fa[k]);
                    memcpy(fb[k], b.mb, sizeof fb[k]);
                    memcpy(fc[k], b.mc, sizeof fc[k]);
                }
                mma_warp_ref(fa, fb, fc);
                for (int k = 0; k < 32; k++) memcpy(g.t[w0 + k].mc, fc[k], sizeof fc[k]);
                g_mmas++;
            } else if (a.kind == COLL_BALLOT) {
                unsigned bits = 0;
                for (int k = 0; k < 32; k++)
                    if ((m >> k & 1u) && g.t[w0 + k].pred) bits |= 1u << k;
                for (int k = 0; k < 32; k++)
                    if (m >> k & 1u) g.t[w0 + k].result = bits;
            } else if (a.kind == COLL_SHFL) {
                for (int k = 0; k < 32; k++) {
                    if (!(m >> k & 1u)) continue;
                    thr &b = g.t[w0 + k];
                    const int wd = b.width, base = k - k % wd, in = k % wd;
                    int src = k;
                    switch (b.mode) {
                    case SHFL_IDX: src = base + ((b.arg % wd) + wd) % wd; break;
                    case SHFL_UP: src = in - b.arg >= 0 ? k - b.arg : k; break;
                    case SHFL_DOWN: src = in + b.arg < wd ? k + b.arg : k; break;
                    case SHFL_XOR: src = (in ^ b.arg) < wd ? base + (in ^ b.arg) : k; break;
                    }
                    if (src < 0 || src >= 32 || !(m >> src & 1u)) {
                        failf("%s: lane %d reads lane %d, outside the mask 0x%08x", where(b).c_str(), k, src, m);
                        return false;
                    }
                    b.result = g.t[w0 + src].val;
                }
            }
            for (int k = 0; k < 32; k++)
                if (m >> k & 1u) g.t[w0 + k].state = ST_RUN;
            progress = true;
        }
    }
    return progress;
}

bool resolve_block() {
    int waiting = 0, exited = 0, first = -1;
    for (int i = 0; i < g.n; i++) {
        if (g.t[i].state == ST_EXIT) exited++;
        else if (g.t[i].state == ST_WAIT && is_block_kind(g.t[i].kind)) {
            waiting++;
            if (first < 0) first = i;
        }
    }
    if (waiting == 0 || waiting + exited != g.n) return false;
    const thr &a = g.t[first];
    if (exited) {
        for (int i = 0; i < g.n; i++)
            if (g.t[i].state == ST_EXIT) {
                failf("%s while %d threads wait at %s (%s:%d): a barrier some threads never reach", where(g.t[i]).c_str(),
                      waiting, kind_name(a.kind), a.file, a.line);
                return false;
            }
    }
    int count = 0;
    for (int i = 0; i < g.n; i++) {
        const thr &b = g.t[i];
        if (b.kind != a.kind || b.line != a.line || strcmp(b.file, a.file)) {
            failf("divergent barriers: %s, %s", where(a).c_str(), where(b).c_str());
            return false;
        }
        count += b.pred != 0;
    }
    const uint64_t r = a.kind == COLL_BAR_OR ? count > 0 : a.kind == COLL_BAR_AND ? count == g.n : (uint64_t)count;
    for (int i = 0; i < g.n; i++) {
        g.t[i].result = r;
        g.t[i].state = ST_RUN;
    }
    return true;
}

void deadlock() {
    std::string s = "deadlock:";
    int shown = 0;
    for (int i = 0; i < g.n && shown < 6; i++)
        if (g.t[i].state == ST_WAIT) {
            s += " " + where(g.t[i]) + ";";
            shown++;
        }
    for (int i = 0; i < g.n; i++)
        if (g.t[i].state == ST_EXIT) {
            s += " " + where(g.t[i]) + ";";
            break;
        }
    failf("%s", s.c_str());
}

uint64_t next_rand() {
    uint64_t x = g.rng += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

void run_block(uint3 b) {
    g_block_idx = b;
    for (int i = 0; i < g.n; i++) {
        thr &x = g.t[i];
        if (!fiber_alloc(&x.f, k_stack_bytes)) {
            failf("cannot allocate a fiber stack");
            return;
        }
        fiber_prepare(&x.f, thread_main);
        x.state = ST_RUN;
        x.tid = make_uint3(i % g_block_dim.x, i / g_block_dim.x % g_block_dim.y, i / (g_block_dim.x * g_block_dim.y));
        x.open.clear();
        x.groups.clear();
    }
    g_blocks++;
    g_threads += (uint64_t)g.n;
    std::vector<int> order;
    order.reserve(g.n);
    for (;;) {
        order.clear();
        for (int i = 0; i < g.n; i++)
            if (g.t[i].state == ST_RUN) order.push_back(i);
        if (order.empty()) {
            bool all_exit = true;
            for (int i = 0; i < g.n; i++) all_exit &= g.t[i].state == ST_EXIT;
            if (all_exit) return;
            if (!resolve_warps() && !g.failed && !resolve_block() && !g.failed) deadlock();
            if (g.failed) return;
            continue;
        }
        if (g_order == LETHE_CU_EMU_REVERSE) {
            for (size_t i = 0, j = order.size() - 1; i < j; i++, j--) std::swap(order[i], order[j]);
        } else if (g_order == LETHE_CU_EMU_RANDOM) {
            for (size_t i = order.size() - 1; i > 0; i--) std::swap(order[i], order[next_rand() % (i + 1)]);
        }
        for (int i : order) {
            g.cur = i;
            g_thread_idx = g.t[i].tid;
            fiber_switch_to(&g.t[i].f);
        }
        g.cur = -1;
        if (g.failed) return;
    }
}

}   // namespace

/* ---- called by the running thread (emu_device.h) */

int block_sync(int kind, int pred, const char *file, int line) {
    thr &me = g.t[g.cur];
    me.pred = pred;
    return (int)wait_here(kind, file, line).result;
}

void warp_sync(unsigned mask, const char *file, int line) {
    g.t[g.cur].mask = mask;
    wait_here(COLL_WARP_SYNC, file, line);
}

uint64_t warp_shfl(unsigned mask, uint64_t v, int mode, int arg, int width, const char *file, int line) {
    thr &me = g.t[g.cur];
    me.mask = mask;
    me.val = v;
    me.mode = mode;
    me.arg = arg;
    me.width = width;
    if (width < 1 || width > 32 || (width & (width - 1))) {
        failf("%s:%d: shuffle width %d is not a power of two <= 32", file, line, width);
        width = 32;
        me.width = 32;
    }
    return wait_here(COLL_SHFL, file, line).result;
}

unsigned warp_ballot(unsigned mask, int pred, const char *file, int line) {
    thr &me = g.t[g.cur];
    me.mask = mask;
    me.pred = pred;
    return (unsigned)wait_here(COLL_BALLOT, file, line).result;
}

void warp_mma(float c[4], const uint32_t a[4], const uint32_t b[2], const char *file, int line) {
    thr &me = g.t[g.cur];
    me.mask = 0xffffffffu;   /* .aligned: the whole warp, every lane */
    me.ma = a;
    me.mb = b;
    me.mc = c;
    wait_here(COLL_MMA, file, line);
}

void *dyn_shared() { return g.dyn; }

void cp_async16(void *dst, const void *src) {
    copy16 c;
    c.dst = dst;
    memcpy(c.bytes, src, 16);   /* the source is read now; the destination changes at the wait */
    g.t[g.cur].open.push_back(c);
}
void cp_async_commit() {
    thr &me = g.t[g.cur];
    me.groups.push_back(std::move(me.open));
    me.open.clear();
}
void cp_async_wait(int n) {
    thr &me = g.t[g.cur];
    while ((int)me.groups.size() > n) {
        land(me.groups.front());
        me.groups.pop_front();
    }
}

/* Runs a whole grid now; returns false (message in *msg) when a block failed. */
bool run_grid(const char *name, const void *kernel, dim3 grid, dim3 block, size_t smem,
              const std::function<void()> &body, std::string *msg) {
    if (g_order < 0) {
        g_order = LETHE_CU_EMU_FORWARD;
        const char *e = getenv("LETHE_CUDA_EMU_ORDER");
        if (e && !strncmp(e, "reverse", 7)) g_order = LETHE_CU_EMU_REVERSE;
        else if (e && !strncmp(e, "random", 6)) {
            g_order = LETHE_CU_EMU_RANDOM;
            if (e[6] == ':') g_seed = strtoull(e + 7, nullptr, 10);
        }
    }
    g.name = name;
    g.body = &body;
    g.n = (int)(block.x * block.y * block.z);
    if ((int)g.t.size() < g.n) g.t.resize((size_t)g.n);
    g.failed = false;
    g.msg.clear();
    g_block_dim = block;
    g_grid_dim = grid;
    g_launches++;
    /* exactly smem bytes (none: no buffer), so under ASan a read past them is reported */
    std::unique_ptr<char[]> dyn(smem ? new char[smem] : nullptr);
    g.dyn = dyn.get();
    for (unsigned z = 0; z < grid.z && !g.failed; z++)
        for (unsigned y = 0; y < grid.y && !g.failed; y++)
            for (unsigned x = 0; x < grid.x && !g.failed; x++) {
                g.rng = g_seed * 0x100000001B3ull ^ (g_launches << 20) ^ ((uint64_t)x << 40) ^ ((uint64_t)y << 8) ^ z;
                char *sb = lethe_emu_shared_begin, *se = lethe_emu_shared_end;
                auto it = sb && se > sb ? g_sranges.find(kernel) : g_sranges.end();
                const bool learn = sb && se > sb && it == g_sranges.end();
                if (learn) poison(sb, se);
                else if (it != g_sranges.end()) poison(it->second.lo, it->second.hi);
                if (g.dyn) poison(g.dyn, g.dyn + smem);
                run_block(make_uint3(x, y, z));
                if (learn) {
                    const srange r = written(sb, se);
                    g_sranges[kernel] = r;
                    /* the static limit a launch checks on a GPU, from the bytes the first block
                     * wrote (a kernel's arrays lie together); not under ASan (its redzones) */
                    if (shared_limit_checked() && r.hi - r.lo > 48 * 1024)
                        failf("static shared memory of %zu bytes or more, over the 48 KiB a launch allows",
                              (size_t)(r.hi - r.lo));
                }
            }
    g.dyn = nullptr;
    if (g.failed) *msg = g.msg;
    return !g.failed;
}

void set_order(int order, uint64_t seed) {
    g_order = order;
    g_seed = seed;
}

int shared_size_checked() { return shared_limit_checked() && lethe_emu_shared_begin != nullptr; }

uint64_t mma_count() { return g_mmas; }

void stats(uint64_t *l, uint64_t *b, uint64_t *t) {
    if (l) *l = g_launches;
    if (b) *b = g_blocks;
    if (t) *t = g_threads;
}

}   // namespace lethe_emu
