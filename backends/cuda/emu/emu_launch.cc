/* emu_launch.cc — kernel launches on the CUDA emulator: the configuration
 * checks a real launch makes, the sticky error state behind
 * cudaGetLastError, and the grid handed to its stream (emu_stream.h: run
 * now, or queued until a synchronization, or recorded by a capture). */
#include "emu_device.h"
#include "emu_stream.h"

#include <stdio.h>
#include <string.h>

#include <stdlib.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <string>

namespace lethe_emu {

bool run_grid(const char *name, const void *kernel, dim3 grid, dim3 block, size_t smem, const std::function<void()> &body,
              std::string *msg);
void set_order(int order, uint64_t seed);
void stats(uint64_t *l, uint64_t *b, uint64_t *t);
int shared_size_checked();
uint64_t mma_count();

static std::recursive_mutex g_exec_mu;   /* one grid at a time, process-wide */
static std::mutex g_err_mu;
static cudaError_t g_sticky = cudaSuccess;   /* a kernel failed: like a device fault, until taken */
static std::string g_sticky_msg;
static thread_local cudaError_t t_last = cudaSuccess;

void set_last_error(cudaError_t e) {
    if (e != cudaSuccess) t_last = e;
}

cudaError_t sticky_error() {
    std::lock_guard<std::mutex> lk(g_err_mu);
    return g_sticky;
}

/* Grids run per launch site (its kernel expression, e.g.
 * k_attn_prefill_tc<64>), replays of captured graphs included: what the tests' environment asks
 * about at exit (LETHE_CUDA_EMU_STATS / _REQUIRE / _FORBID, emu_api.h). */
static std::map<std::string, uint64_t> g_ran;

static void at_exit_check() {
    std::lock_guard<std::recursive_mutex> lk(g_exec_mu);
    const char *st = getenv("LETHE_CUDA_EMU_STATS");
    if (st && *st && strcmp(st, "0")) {
        std::string s = "cuda emulator: grids run:";
        for (auto &kv : g_ran) s += " " + kv.first + " " + std::to_string(kv.second) + ",";
        s += " mma.sync warp steps " + std::to_string(mma_count());
        fprintf(stderr, "%s\n", s.c_str());
    }
    bool bad = false;
    for (int forbid = 0; forbid < 2; forbid++) {
        const char *e = getenv(forbid ? "LETHE_CUDA_EMU_FORBID" : "LETHE_CUDA_EMU_REQUIRE");
        std::string list = e ? e : "";
        size_t i = 0;
        while (i < list.size()) {
            size_t j = list.find(',', i);
            if (j == std::string::npos) j = list.size();
            const std::string k = list.substr(i, j - i);
            i = j + 1;
            if (k.empty()) continue;
            uint64_t n = 0;   /* k names a launch (k_attn_prefill_tc<64>) or all of a kernel's (k_attn_prefill_tc) */
            for (auto &kv : g_ran)
                if (kv.first == k || kv.first.compare(0, kv.first.find('<'), k) == 0) n += kv.second;
            if (!forbid && n == 0) {
                fprintf(stderr, "cuda emulator: kernel %s never ran (LETHE_CUDA_EMU_REQUIRE)\n", k.c_str());
                bad = true;
            } else if (forbid && n != 0) {
                fprintf(stderr, "cuda emulator: kernel %s ran %llu grids (LETHE_CUDA_EMU_FORBID)\n", k.c_str(),
                        (unsigned long long)n);
                bad = true;
            }
        }
    }
    if (bad) _exit(3);   /* the test fails: the path it was meant to exercise was not taken */
}

/* not a function-local static: those are .bss._ZZ* sections, which
 * emu_shared.ld gathers as __shared__ memory and fills with 0xFF bytes */
static bool g_at_exit_registered;

static void count_grid(const char *name) {
    if (!g_at_exit_registered) {
        g_at_exit_registered = true;
        atexit(at_exit_check);
    }
    g_ran[name]++;
}

void exec_grid(const grid_work &w) {
    std::lock_guard<std::recursive_mutex> lk(g_exec_mu);
    if (sticky_error() != cudaSuccess) return;   /* a faulted context runs nothing more */
    count_grid(w.name);
    std::string msg;
    if (!run_grid(w.name, w.kernel, w.grid, w.block, w.smem, w.body, &msg)) {
        fprintf(stderr, "%s\n", msg.c_str());
        std::lock_guard<std::mutex> lk2(g_err_mu);
        if (g_sticky == cudaSuccess) {
            g_sticky = cudaErrorLaunchFailure;
            g_sticky_msg = msg;
        }
    }
}

cudaError_t launch(const char *name, const void *kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   std::function<void()> body) {
    const uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 || block.z > 64 ||
        grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 || smem > 48 * 1024) {
        fprintf(stderr, "cuda emulator: kernel %s: invalid launch grid (%u,%u,%u) block (%u,%u,%u) smem %zu\n", name,
                grid.x, grid.y, grid.z, block.x, block.y, block.z, smem);
        set_last_error(cudaErrorInvalidConfiguration);
        return cudaErrorInvalidConfiguration;
    }
    grid_work w{name, kernel, grid, block, smem, std::move(body)};
    const cudaError_t e = stream_submit_grid(stream, std::move(w));
    set_last_error(e);
    return e;
}

}   // namespace lethe_emu

using namespace lethe_emu;

extern "C" {

cudaError_t cudaGetLastError(void) {
    const cudaError_t s = sticky_error();
    if (s != cudaSuccess) return s;
    const cudaError_t e = t_last;
    t_last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) {
    const cudaError_t s = sticky_error();
    return s != cudaSuccess ? s : t_last;
}

void lethe_cu_emu_set_order(int order, uint64_t seed) {
    std::lock_guard<std::recursive_mutex> lk(g_exec_mu);
    set_order(order, seed);
}

int lethe_cu_emu_take_error(char *msg, size_t size) {
    std::lock_guard<std::mutex> lk(g_err_mu);
    const int e = (int)g_sticky;
    if (msg && size) snprintf(msg, size, "%s", g_sticky_msg.c_str());
    g_sticky = cudaSuccess;
    g_sticky_msg.clear();
    t_last = cudaSuccess;
    return e;
}

int lethe_cu_emu_checks_shared_size(void) { return shared_size_checked(); }

void lethe_cu_emu_stats(uint64_t *launches, uint64_t *blocks, uint64_t *threads) {
    std::lock_guard<std::recursive_mutex> lk(g_exec_mu);
    stats(launches, blocks, threads);
}

}
