/* emu_api.h — the CPU emulator of the CUDA device as tests see it (plain C).
 * docs/CUDA.md, "The CPU emulator".
 *
 * Schedule order: between two barriers a block's runnable threads run one
 * after another, in this order: thread 0 first (FORWARD), the last first
 * (REVERSE), or a fresh seeded permutation at every step (RANDOM). A kernel
 * whose output depends on it reads shared or global memory another thread
 * of its block writes without a barrier in between. The environment
 * variable LETHE_CUDA_EMU_ORDER (forward | reverse | random[:seed]) sets
 * the order of a process at its first launch.
 *
 * Errors: a launch the device would refuse (block over 1024 threads, grid
 * y/z over 65535, dynamic shared memory over 48 KiB, a zero dimension)
 * returns cudaErrorInvalidConfiguration (static shared memory over 48 KiB:
 * the launch fails, see lethe_cu_emu_checks_shared_size); a kernel that deadlocks (a thread
 * exited, or waits at another barrier, while others wait at __syncthreads;
 * a warp collective whose mask names a lane that exited or waits elsewhere)
 * fails with cudaErrorLaunchFailure and the launch's message: kernel, block,
 * threads and the source lines of their barriers. Like a device fault it is
 * sticky (lethe_cu_emu_take_error clears it, for tests).
 *
 * What ran (for the tests that must reach a path: the tensor-core attention,
 * the fused passes, the page-list kernels): at exit the emulator counts the
 * grids it ran per launch (the kernel as the launch spells it, e.g.
 * k_attn_prefill_tc<128>) and the mma.sync warp steps. A name in the lists
 * below is a launch so spelled, or a kernel's name before its template
 * arguments (k_attn_prefill_tc: both). LETHE_CUDA_EMU_STATS=1
 * prints them to stderr; LETHE_CUDA_EMU_REQUIRE=k1,k2 ends the process with
 * status 3 if one of them never ran, LETHE_CUDA_EMU_FORBID=k1,k2 if one did.
 */
#ifndef LETHE_CUDA_EMU_API_H
#define LETHE_CUDA_EMU_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { LETHE_CU_EMU_FORWARD = 0, LETHE_CU_EMU_REVERSE = 1, LETHE_CU_EMU_RANDOM = 2 };

void lethe_cu_emu_set_order(int order, uint64_t seed);
/* The first kernel failure since the last call (0: none), its message into
 * msg; clears it. */
int lethe_cu_emu_take_error(char *msg, size_t size);
/* Does a launch fail when a kernel's static shared memory passes 48 KiB
 * (measured from its first block's writes; not under ASan)? */
int lethe_cu_emu_checks_shared_size(void);
/* Counters since the process started: launches, blocks, threads run. */
void lethe_cu_emu_stats(uint64_t *launches, uint64_t *blocks, uint64_t *threads);

#ifdef __cplusplus
}
#endif

#endif
