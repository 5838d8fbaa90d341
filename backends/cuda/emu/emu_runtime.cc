/* emu_runtime.cc — the CUDA runtime calls the CUDA module makes
 * (backends/cuda/ *.c), on the CPU emulator, for the emulated module
 * liblethe-cuda-emu.so (cmake/cuda_emu.cmake): device memory is host memory,
 * kernels run on the emulator (emu_block.cc).
 *
 * Streams are queues: work (kernels, async copies and memsets, cuBLAS calls,
 * event records) runs when the stream is synchronized, when a blocking call
 * needs it (cudaMemcpy waits for the legacy stream and the blocking streams,
 * not for streams created cudaStreamNonBlocking, as on a GPU; cudaFree and
 * cudaFreeHost wait for the device), or when the stream is destroyed. So a
 * host read of device results without its synchronization sees stale bytes,
 * and a test over it fails. Copies follow the runtime's rules: an async
 * host-to-device copy from pageable memory reads its source at the call
 * (the runtime stages it), one from pinned memory (cudaMallocHost) at its
 * turn in the stream; a device-to-pageable copy completes before the call
 * returns. LETHE_CUDA_EMU_SYNC=1 runs all work at once instead (to tell an
 * ordering bug from a kernel bug).
 * Capture (cudaStreamBeginCapture) records the stream's work as graph nodes
 * instead of running it; an executable replays them in order at its
 * cudaGraphLaunch, reading every argument pointer then (kernel arguments
 * are the values of the capture). cudaGraphExecUpdate succeeds when the
 * node types match one for one.
 * Fresh cudaMalloc / cudaMallocManaged / cudaMallocHost memory is filled
 * with 0xFF bytes (f32 NaN): a read of device memory nobody wrote shows.
 * Device: one, H100-like properties (sm_90, 132 SMs, 80 GiB).
 */
#include "emu_stream.h"

#include <cuda_runtime_api.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

struct CUstream_st {
    std::recursive_mutex run_mu;   /* held while the queue drains: one drainer at a time keeps the order */
    std::deque<std::function<void()>> q;
    bool blocking = true;
    bool capturing = false;
    bool capture_bad = false;
    struct CUgraph_st *cap = nullptr;
};
struct CUevent_st {
    bool done = true;
    double t = 0;
};
struct emu_node {
    int kind;
    std::function<void()> fn;
};
struct CUgraph_st {
    std::vector<emu_node> nodes;
};
struct CUgraphExec_st {
    std::vector<emu_node> nodes;
};

namespace lethe_emu {

namespace {

std::recursive_mutex g_mu;   /* streams, queues, allocations */
CUstream_st g_legacy;        /* stream 0 (legacy default) */
/* never destroyed (reachable until exit, so LeakSanitizer sees what they
 * hold as live, as the driver's own tables would be) */
std::vector<CUstream_st *> &g_streams = *new std::vector<CUstream_st *>, &g_dead = *new std::vector<CUstream_st *>;
std::map<uintptr_t, size_t> &g_allocs = *new std::map<uintptr_t, size_t>, &g_pinned = *new std::map<uintptr_t, size_t>;
std::vector<CUevent_st *> &g_events = *new std::vector<CUevent_st *>;   /* kept: queued work may record a destroyed event */
size_t g_used;
thread_local int t_device;
int g_sync_mode = -1;

const size_t k_total = (size_t)80 << 30;

bool sync_mode() {
    if (g_sync_mode < 0) {
        const char *e = getenv("LETHE_CUDA_EMU_SYNC");
        g_sync_mode = e && *e && strcmp(e, "0") != 0;
    }
    return g_sync_mode;
}

CUstream_st *resolve(cudaStream_t s) {
    if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return &g_legacy;
    return s;
}

/* runs everything queued on s, in order */
void drain(CUstream_st *s) {
    std::lock_guard<std::recursive_mutex> run(s->run_mu);
    for (;;) {
        std::function<void()> fn;
        {
            std::lock_guard<std::recursive_mutex> lk(g_mu);
            if (s->q.empty()) return;
            fn = std::move(s->q.front());
            s->q.pop_front();
        }
        fn();
    }
}

/* what waits for the legacy stream: itself and every blocking stream */
void drain_legacy() {
    std::vector<CUstream_st *> all;
    {
        std::lock_guard<std::recursive_mutex> lk(g_mu);
        all = g_streams;
    }
    for (CUstream_st *s : all)
        if (s->blocking) drain(s);
    drain(&g_legacy);
}

void drain_all() {
    std::vector<CUstream_st *> all;
    {
        std::lock_guard<std::recursive_mutex> lk(g_mu);
        all = g_streams;
    }
    for (CUstream_st *s : all) drain(s);
    drain(&g_legacy);
}

bool is_pinned(const void *p, size_t n) {
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    const uintptr_t a = (uintptr_t)p;
    auto it = g_pinned.upper_bound(a);
    if (it == g_pinned.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

double now_s() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

cudaError_t fail(cudaError_t e) {
    set_last_error(e);
    return e;
}

void *emu_alloc(size_t size, std::map<uintptr_t, size_t> *pinned) {
    /* exactly the bytes asked for (256-byte aligned, as cudaMalloc): under
     * ASan a kernel or copy that reads or writes past a buffer's end is
     * reported, as compute-sanitizer's memcheck would on a GPU */
    const size_t n = size ? size : 1;
    void *p = nullptr;
    if (posix_memalign(&p, 256, n) != 0) return nullptr;
    memset(p, 0xFF, n);   /* uninitialized device memory: NaN bytes */
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    g_allocs[(uintptr_t)p] = n;
    if (pinned) (*pinned)[(uintptr_t)p] = n;
    g_used += n;
    return p;
}

cudaError_t emu_free(void *p, bool host) {
    if (!p) return cudaSuccess;
    drain_all();   /* cudaFree waits for the device */
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end() || (host != (g_pinned.count((uintptr_t)p) != 0)))
        return fail(cudaErrorInvalidValue);
    g_used -= it->second;
    g_allocs.erase(it);
    g_pinned.erase((uintptr_t)p);
    free(p);
    return cudaSuccess;
}

}   // namespace

cudaError_t stream_submit(cudaStream_t stream, int kind, std::function<void()> fn) {
    CUstream_st *s = resolve(stream);
    {
        std::lock_guard<std::recursive_mutex> lk(g_mu);
        if (s->capturing) {
            s->cap->nodes.push_back(emu_node{kind, std::move(fn)});
            return cudaSuccess;
        }
        if (!sync_mode()) {
            s->q.push_back(std::move(fn));
            return cudaSuccess;
        }
    }
    drain(s);
    fn();
    return cudaSuccess;
}

cudaError_t stream_submit_grid(cudaStream_t stream, grid_work w) {
    return stream_submit(stream, WORK_KERNEL, [w]() { exec_grid(w); });
}

}   // namespace lethe_emu

using namespace lethe_emu;

extern "C" {

/* ---------------------------------------------------------------- device */

cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
    if (d != 0) return fail(cudaErrorInvalidDevice);
    t_device = d;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *d) {
    *d = t_device;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) {
    if (d != 0) return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "CUDA emulator (CPU, H100-like properties)");
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 132;
    p->l2CacheSize = 50 << 20;
    p->totalGlobalMem = k_total;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->sharedMemPerBlock = 48 << 10;
    p->managedMemory = 1;
    p->concurrentManagedAccess = 1;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int d) {
    if (d != 0) return fail(cudaErrorInvalidDevice);
    switch (a) {
    case cudaDevAttrManagedMemory:
    case cudaDevAttrConcurrentManagedAccess: *v = 1; break;
    case cudaDevAttrMultiProcessorCount: *v = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    default: *v = 0; break;
    }
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *fr, size_t *tot) {
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    *tot = k_total;
    *fr = k_total - std::min(g_used, k_total);
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
    drain_all();
    return sticky_error();
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure (cuda emulator: a kernel failed, see its message)";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorGraphExecUpdateFailure: return "the graph update was not performed";
    default: return "cuda emulator: unknown error";
    }
}
const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorGraphExecUpdateFailure: return "cudaErrorGraphExecUpdateFailure";
    default: return "cudaErrorUnknown";
    }
}

/* ---------------------------------------------------------------- memory */

cudaError_t cudaMalloc(void **p, size_t size) {
    *p = emu_alloc(size, nullptr);
    return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaMallocManaged(void **p, size_t size, unsigned int flags) {
    (void)flags;
    *p = emu_alloc(size, nullptr);
    return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaMallocHost(void **p, size_t size) {
    *p = emu_alloc(size, &g_pinned);
    return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaFree(void *p) { return emu_free(p, false); }
cudaError_t cudaFreeHost(void *p) { return emu_free(p, true); }

cudaError_t cudaMemAdvise(const void *p, size_t n, enum cudaMemoryAdvise a, struct cudaMemLocation loc) {
    (void)p; (void)n; (void)a; (void)loc;
    return cudaSuccess;
}
cudaError_t cudaMemPrefetchAsync(const void *p, size_t n, struct cudaMemLocation loc, unsigned int flags,
                                 cudaStream_t s) {
    (void)p; (void)n; (void)loc; (void)flags; (void)s;
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
    (void)kind;
    {
        std::lock_guard<std::recursive_mutex> lk(g_mu);
        if (g_legacy.capturing) return fail(cudaErrorStreamCaptureUnsupported);
    }
    drain_legacy();   /* the legacy stream waits for the blocking streams, not the non-blocking ones */
    if (n) memmove(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t stream) {
    if (!n) return cudaSuccess;
    CUstream_st *s = resolve(stream);
    bool capturing;
    {
        std::lock_guard<std::recursive_mutex> lk(g_mu);
        capturing = s->capturing;
    }
    const bool h2d = kind == cudaMemcpyHostToDevice || (kind == cudaMemcpyDefault && !is_pinned(src, n));
    const bool d2h = kind == cudaMemcpyDeviceToHost;
    if (!capturing && h2d && !is_pinned(src, n)) {
        /* pageable source: staged by the runtime at the call */
        std::shared_ptr<std::vector<uint8_t>> stage(new std::vector<uint8_t>((const uint8_t *)src, (const uint8_t *)src + n));
        return stream_submit(stream, WORK_MEMCPY, [dst, stage]() { memcpy(dst, stage->data(), stage->size()); });
    }
    if (!capturing && d2h && !is_pinned(dst, n)) {
        /* pageable destination: the call returns when the copy is done */
        drain(s);
        memmove(dst, src, n);
        return cudaSuccess;
    }
    return stream_submit(stream, WORK_MEMCPY, [dst, src, n]() { memmove(dst, src, n); });
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t stream) {
    if (!n) return cudaSuccess;
    return stream_submit(stream, WORK_MEMSET, [p, v, n]() { memset(p, v, n); });
}

/* --------------------------------------------------------------- streams */

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *out, unsigned int flags) {
    CUstream_st *s = new CUstream_st;
    s->blocking = !(flags & cudaStreamNonBlocking);
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    g_streams.push_back(s);
    *out = s;
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *out) { return cudaStreamCreateWithFlags(out, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    if (!stream) return fail(cudaErrorInvalidValue);
    drain(stream);
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    g_streams.erase(std::remove(g_streams.begin(), g_streams.end(), stream), g_streams.end());
    g_dead.push_back(stream);   /* not freed: another thread's drain_all may hold it */
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    CUstream_st *s = resolve(stream);
    {
        std::lock_guard<std::recursive_mutex> lk(g_mu);
        if (s->capturing) {
            s->capture_bad = true;   /* a sync invalidates the capture, as on a GPU */
            return fail(cudaErrorStreamCaptureUnsupported);
        }
    }
    if (s == &g_legacy) drain_legacy();
    else drain(s);
    return sticky_error();
}

/* ---------------------------------------------------------------- events */

cudaError_t cudaEventCreate(cudaEvent_t *e) {
    CUevent_st *ev = new CUevent_st;
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    g_events.push_back(ev);
    *e = ev;
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    (void)e;   /* kept until exit (g_events): queued work may still record it */
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t stream) {
    if (!e) return fail(cudaErrorInvalidValue);
    e->done = false;
    return stream_submit(stream, WORK_EVENT, [e]() {
        e->t = now_s();
        e->done = true;
    });
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a || !b) return fail(cudaErrorInvalidValue);
    if (!a->done || !b->done) return fail(cudaErrorNotReady);
    *ms = (float)((b->t - a->t) * 1e3);
    return cudaSuccess;
}

/* ---------------------------------------------------------------- graphs */

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
    (void)mode;
    CUstream_st *s = resolve(stream);
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    if (s == &g_legacy || s->capturing) return fail(cudaErrorIllegalState);
    if (!s->q.empty()) {   /* earlier work is not part of the graph: it runs first */
        std::deque<std::function<void()>> q;
        q.swap(s->q);
        for (auto &fn : q) fn();
    }
    s->capturing = true;
    s->capture_bad = false;
    s->cap = new CUgraph_st;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *out) {
    CUstream_st *s = resolve(stream);
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    if (!s->capturing) return fail(cudaErrorIllegalState);
    s->capturing = false;
    CUgraph_st *gr = s->cap;
    s->cap = nullptr;
    if (s->capture_bad) {
        delete gr;
        *out = nullptr;
        return fail(cudaErrorStreamCaptureInvalidated);
    }
    *out = gr;
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *out, cudaGraph_t g, unsigned long long flags) {
    (void)flags;
    if (!g) return fail(cudaErrorInvalidValue);
    CUgraphExec_st *x = new CUgraphExec_st;
    x->nodes = g->nodes;
    *out = x;
    return cudaSuccess;
}

cudaError_t cudaGraphExecUpdate(cudaGraphExec_t x, cudaGraph_t g, cudaGraphExecUpdateResultInfo *info) {
    if (info) memset(info, 0, sizeof *info);
    if (!x || !g) return fail(cudaErrorInvalidValue);
    bool same = x->nodes.size() == g->nodes.size();
    for (size_t i = 0; same && i < g->nodes.size(); i++) same = x->nodes[i].kind == g->nodes[i].kind;
    if (!same) {
        if (info) info->result = cudaGraphExecUpdateErrorTopologyChanged;
        return fail(cudaErrorGraphExecUpdateFailure);
    }
    x->nodes = g->nodes;
    if (info) info->result = cudaGraphExecUpdateSuccess;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t x) {
    drain_all();   /* a launched executable may still be queued */
    delete x;
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t x, cudaStream_t stream) {
    if (!x) return fail(cudaErrorInvalidValue);
    std::vector<emu_node> nodes = x->nodes;   /* as launched: a later update does not change it */
    return stream_submit(stream, WORK_KERNEL, [nodes]() {
        for (const emu_node &n : nodes) n.fn();
    });
}

}   // extern "C"
