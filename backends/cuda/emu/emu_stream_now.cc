/* emu_stream_now.cc — streams for the kernel-only emulator (tests that call
 * the launchers of cuda_kernels.h directly): every grid runs when it is
 * launched. The module's emulated runtime (emu_runtime.cc) replaces this
 * file with real stream order. */
#include "emu_stream.h"

namespace lethe_emu {

cudaError_t stream_submit_grid(cudaStream_t stream, grid_work w) {
    (void)stream;
    exec_grid(w);
    return cudaSuccess;
}

}   // namespace lethe_emu
