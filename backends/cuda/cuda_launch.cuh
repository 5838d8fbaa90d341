/* cuda_launch.cuh — how every kernel in backends/cuda is launched.
 *
 *   LETHE_CU_LAUNCH(grid, block, smem, stream, kernel)(args...);
 *
 * is kernel<<<grid, block, smem, stream>>>(args...) for nvcc. The kernel
 * comes last so that template arguments with commas (k_attn_prefill<D, F16>)
 * pass through __VA_ARGS__; grid and block with commas go in parentheses
 * (dim3(a, b)). Spelling every launch this way, instead of the chevrons, lets
 * the same kernel sources be built by a host C++ compiler for a CPU emulation
 * of the device, which then supplies its own definition of this macro.
 */
#ifndef LETHE_CUDA_LAUNCH_CUH
#define LETHE_CUDA_LAUNCH_CUH

#ifndef LETHE_CU_LAUNCH
#define LETHE_CU_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#endif

/* A kernel's dynamic shared memory (the launch's smem bytes), as an array
 * `T name[]`: `extern __shared__ T name[]` for nvcc; the emulator points it
 * at its per-block buffer. */
#ifndef LETHE_CU_DYN_SHARED
#define LETHE_CU_DYN_SHARED(T, name) extern __shared__ T name[]
#endif

#endif
