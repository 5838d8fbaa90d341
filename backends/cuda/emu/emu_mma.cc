/* emu_mma.cc — the CUDA emulator's mma.sync.m16n8k16: the warp's gathered
 * fragments through the project's whole-warp reference
 * (cuda_mma.cuh, lethe_mma_m16n8k16_ref, checked against the PTX ISA's
 * layouts and a plain product by tests/test_cuda_mma.c). emu_block.cc
 * gathers and scatters the lanes (warp_mma); this file only reaches the
 * reference, in a TU of its own so the scheduler does not include the
 * attention headers. */
#include "emu_device.h"

#include "cuda_mma.cuh"

namespace lethe_emu {

void mma_warp_ref(const uint32_t a[32][4], const uint32_t b[32][2], float c[32][4]) { lethe_mma_m16n8k16_ref(a, b, c); }

}   // namespace lethe_emu
