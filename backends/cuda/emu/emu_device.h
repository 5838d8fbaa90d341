/* emu_device.h — what nvcc gives a kernel source, for a host C++ compiler:
 * the CPU emulator of the CUDA device (docs/CUDA.md, "The CPU emulator").
 *
 * Included before a kernel file (backends/cuda/k_*.cu) when that file is
 * built by g++ as C++ (LETHE_CUDA_EMU defined; CMake writes one wrapper .cc
 * per kernel file). The CUDA headers themselves compile under g++ and give
 * the types (dim3, float4, __half, __nv_bfloat16 with host conversions) and
 * empty __global__ / __device__ / __host__; this header adds the rest:
 * thread indices, __shared__, barriers, warp collectives, atomics, the
 * intrinsics the kernels use, cp.async, and LETHE_CU_LAUNCH (cuda_launch.cuh)
 * as a launcher that runs the grid on the emulator (emu_block.cc).
 *
 * Model: every CUDA thread of a block is a fiber; blocks run one after
 * another; a block's threads run one at a time until each reaches a barrier
 * (__syncthreads*: the block; __syncwarp, shuffles, ballot: its warp's
 * lanes in the mask), then the exchange happens. Launches are serialized
 * process-wide (one mutex), so __shared__ is a function-local static.
 */
#ifndef LETHE_CUDA_EMU_DEVICE_H
#define LETHE_CUDA_EMU_DEVICE_H

#ifndef LETHE_CUDA_EMU
#define LETHE_CUDA_EMU 1
#endif

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <type_traits>

#include "emu_api.h"

/* ---- declaration specifiers nvcc knows and g++ does not */
#undef __shared__
#define __shared__ static   /* launches are serialized; one block at a time; filled with NaN bytes
                              before each block where the link gathers them (emu_shared.ld) */
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace lethe_emu {

/* The running thread's coordinates (set by the scheduler at every switch). */
extern uint3 g_thread_idx, g_block_idx;
extern dim3 g_block_dim, g_grid_dim;

/* Collectives (emu_block.cc). `file`/`line` name the call site for errors. */
enum coll_kind { COLL_BAR = 1, COLL_BAR_OR, COLL_BAR_AND, COLL_BAR_COUNT, COLL_WARP_SYNC, COLL_SHFL, COLL_BALLOT, COLL_MMA };
enum shfl_mode { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR };
int block_sync(int kind, int pred, const char *file, int line);
void warp_sync(unsigned mask, const char *file, int line);
uint64_t warp_shfl(unsigned mask, uint64_t v, int mode, int arg, int width, const char *file, int line);
unsigned warp_ballot(unsigned mask, int pred, const char *file, int line);
/* mma.sync.aligned.m16n8k16 (cuda_mma.cuh): a collective of the whole warp.
 * Every one of the 32 lanes must arrive (a lane that exited or is not in the
 * block fails the launch, like any collective); then the lanes' fragments
 * are gathered, lethe_mma_m16n8k16_ref (the project's warp reference) runs
 * once, and each lane gets its D registers back in c. */
void warp_mma(float c[4], const uint32_t a[4], const uint32_t b[2], const char *file, int line);

/* cp.async (emulated with its semantics: the 16 bytes are read at issue and
 * land in shared memory only when a wait retires their group). */
void *dyn_shared();   /* the running block's dynamic shared memory (emu_block.cc) */
void cp_async16(void *dst, const void *src);
void cp_async_commit();
void cp_async_wait(int n);

/* The launcher behind LETHE_CU_LAUNCH: checks the configuration as a real
 * launch does and hands the grid to the runtime (emu_runtime.cc), which runs
 * it on its stream's order (now, at a sync, or at a graph replay). */
cudaError_t launch(const char *name, const void *kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   std::function<void()> body);

template <class K>
struct launcher {
    const char *name;
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    K kernel;
    template <class... A>
    void operator()(A... args) const {
        K k = kernel;
        launch(name, (const void *)k, grid, block, smem, stream, [=]() { k(args...); });   /* arguments copied at launch */
    }
};
template <class K>
launcher<K> make_launcher(const char *name, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, K k) {
    return launcher<K>{name, grid, block, smem, stream, k};
}

template <class T>
static inline uint64_t to_u64(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    return u;
}
template <class T>
static inline T from_u64(uint64_t u) {
    T v;
    memcpy(&v, &u, sizeof v);
    return v;
}

}   // namespace lethe_emu

#define LETHE_CU_LAUNCH(grid, block, smem, stream, ...) \
    ::lethe_emu::make_launcher(#__VA_ARGS__, (grid), (block), (smem), (stream), __VA_ARGS__)

/* cuda_mma.cuh's host build of cu_mma_m16n8k16 reaches the warp through this */
#define LETHE_CU_EMU_MMA(c, a, b) ::lethe_emu::warp_mma((c), (a), (b), __FILE__, __LINE__)

/* dynamic shared memory (cuda_launch.cuh): the launch's smem bytes, per
 * block, filled with 0xFF bytes (NaN) before each block like __shared__ */
#define LETHE_CU_DYN_SHARED(T, name) T *const name = (T *)::lethe_emu::dyn_shared()

#define threadIdx (::lethe_emu::g_thread_idx)
#define blockIdx (::lethe_emu::g_block_idx)
#define blockDim (::lethe_emu::g_block_dim)
#define gridDim (::lethe_emu::g_grid_dim)
#ifndef warpSize
#define warpSize 32
#endif

#define __syncthreads() ((void)::lethe_emu::block_sync(::lethe_emu::COLL_BAR, 0, __FILE__, __LINE__))
#define __syncthreads_or(p) ::lethe_emu::block_sync(::lethe_emu::COLL_BAR_OR, (p) != 0, __FILE__, __LINE__)
#define __syncthreads_and(p) ::lethe_emu::block_sync(::lethe_emu::COLL_BAR_AND, (p) != 0, __FILE__, __LINE__)
#define __syncthreads_count(p) ::lethe_emu::block_sync(::lethe_emu::COLL_BAR_COUNT, (p) != 0, __FILE__, __LINE__)
#define LETHE_EMU_SYNCWARP_(m, ...) ::lethe_emu::warp_sync((m), __FILE__, __LINE__)
#define __syncwarp(...) LETHE_EMU_SYNCWARP_(__VA_ARGS__ + 0 ? (__VA_ARGS__ + 0) : 0xffffffffu, 0)
#define LETHE_EMU_SHFL_(mode, mask, v, a, w)                                                                  \
    ::lethe_emu::from_u64<decltype(+(v))>(                                                                     \
        ::lethe_emu::warp_shfl((mask), ::lethe_emu::to_u64(+(v)), (mode), (a), (w), __FILE__, __LINE__))
#define LETHE_EMU_SHFL_W_(mode, mask, v, a, w, ...) LETHE_EMU_SHFL_(mode, mask, v, a, w)
#define __shfl_sync(mask, v, ...) LETHE_EMU_SHFL_W_(::lethe_emu::SHFL_IDX, mask, v, __VA_ARGS__, 32, 0)
#define __shfl_up_sync(mask, v, ...) LETHE_EMU_SHFL_W_(::lethe_emu::SHFL_UP, mask, v, __VA_ARGS__, 32, 0)
#define __shfl_down_sync(mask, v, ...) LETHE_EMU_SHFL_W_(::lethe_emu::SHFL_DOWN, mask, v, __VA_ARGS__, 32, 0)
#define __shfl_xor_sync(mask, v, ...) LETHE_EMU_SHFL_W_(::lethe_emu::SHFL_XOR, mask, v, __VA_ARGS__, 32, 0)
#define __ballot_sync(mask, p) ::lethe_emu::warp_ballot((mask), (p) != 0, __FILE__, __LINE__)
#define __any_sync(mask, p) (::lethe_emu::warp_ballot((mask), (p) != 0, __FILE__, __LINE__) != 0u)
#define __all_sync(mask, p) (::lethe_emu::warp_ballot((mask), (p) != 0, __FILE__, __LINE__) == (mask))

/* ---- intrinsics: the device's results, one thread at a time. Atomics are
 * plain read-modify-writes: threads never run at the same time. */
static inline int atomicExch(int *p, int v) { const int o = *p; *p = v; return o; }
static inline unsigned atomicExch(unsigned *p, unsigned v) { const unsigned o = *p; *p = v; return o; }
static inline float atomicExch(float *p, float v) { const float o = *p; *p = v; return o; }
static inline int atomicMax(int *p, int v) { const int o = *p; if (v > o) *p = v; return o; }
static inline unsigned atomicMax(unsigned *p, unsigned v) { const unsigned o = *p; if (v > o) *p = v; return o; }
static inline int atomicMin(int *p, int v) { const int o = *p; if (v < o) *p = v; return o; }
static inline int atomicAdd(int *p, int v) { const int o = *p; *p = o + v; return o; }
static inline unsigned atomicAdd(unsigned *p, unsigned v) { const unsigned o = *p; *p = o + v; return o; }
static inline float atomicAdd(float *p, float v) { const float o = *p; *p = o + v; return o; }
static inline int atomicCAS(int *p, int c, int v) { const int o = *p; if (o == c) *p = v; return o; }

/* Rounded float operations: the emulator's TUs build with -ffp-contract=off,
 * so a * b is one rounding; fmaf is the fused operation. */
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline int __float2int_rn(float v) { return (int)nearbyintf(v); }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
static inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
template <class T>
static inline T __ldg(const T *p) { return *p; }
static inline int __dp4a(int a, int b, int c) {
    for (int k = 0; k < 4; k++)
        c += (int)(int8_t)(uint8_t)((uint32_t)a >> (8 * k)) * (int)(int8_t)(uint8_t)((uint32_t)b >> (8 * k));
    return c;
}

/* min / max as the CUDA math headers give them for device code */
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline long min(long a, long b) { return a < b ? a : b; }
static inline long max(long a, long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }

#endif
