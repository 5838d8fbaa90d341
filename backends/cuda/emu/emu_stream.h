/* emu_stream.h — the CUDA emulator's streams as the launcher sees them.
 * A grid is work on a stream (emu_runtime.cc): run at once, queued until
 * the stream is synchronized, or recorded into a graph under capture. */
#ifndef LETHE_CUDA_EMU_STREAM_H
#define LETHE_CUDA_EMU_STREAM_H

#include <cuda_runtime_api.h>

#include <functional>

namespace lethe_emu {

struct grid_work {
    const char *name;
    const void *kernel;   /* the kernel function: its shared memory's range (emu_block.cc) */
    dim3 grid, block;
    size_t smem;   /* dynamic shared memory bytes */
    std::function<void()> body;
};

/* Runs one grid now, under the process-wide execution lock; a failure
 * makes the sticky error (cudaErrorLaunchFailure). */
void exec_grid(const grid_work &w);
cudaError_t stream_submit_grid(cudaStream_t stream, grid_work w);
/* Any other work on a stream (copies, memsets, cuBLAS calls, event
 * records): kind names its graph node type (emu_runtime.cc). */
enum { WORK_KERNEL = 1, WORK_MEMCPY, WORK_MEMSET, WORK_EVENT, WORK_BLAS };
cudaError_t stream_submit(cudaStream_t stream, int kind, std::function<void()> fn);
void set_last_error(cudaError_t e);
cudaError_t sticky_error();

}   // namespace lethe_emu

#endif
