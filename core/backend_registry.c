/* backend_registry.c — GPU backends by name, and stubs for those this build
 * lacks, so callers (engine, tests) need no #ifdefs. */
#include "backend.h"
#include "common.h"

#include <string.h>

#ifndef LETHE_HAVE_VULKAN
lethe_backend *lethe_backend_vulkan_new(int device) {
    (void)device;
    lethe_fail(LETHE_ERR_BACKEND, "vulkan: this build has no Vulkan backend (Vulkan or glslc was not found)");
    return NULL;
}
double lethe_backend_vulkan_last_ms(lethe_backend *be) {
    (void)be;
    return 0.0;
}
int lethe_backend_vulkan_native_fma(lethe_backend *be) {
    (void)be;
    return -1;
}
void lethe_backend_vulkan_forget(const void *lo, size_t size) {
    (void)lo;
    (void)size;
}
#endif

void lethe_backends_forget(const void *lo, size_t size) {
    if (!lo || !size) return;
    lethe_backend_vulkan_forget(lo, size);
    lethe_backend_cuda_forget(lo, size);
}

lethe_backend *lethe_backend_gpu_new(const char *name, int device) {
    if (name && strcmp(name, "vulkan") == 0) return lethe_backend_vulkan_new(device);
    if (name && strcmp(name, "cuda") == 0) return lethe_backend_cuda_new(device);
    if (name && strcmp(name, "auto") == 0) {   /* CUDA where an NVIDIA driver is, else Vulkan */
        lethe_backend *be = lethe_backend_cuda_new(device);
        if (be) return be;
        lethe_clear_error();
        return lethe_backend_vulkan_new(device);
    }
    lethe_fail(LETHE_ERR_BACKEND, "backend '%s' is not available in this build", name ? name : "(null)");
    return NULL;
}
