/* backend_cuda.c — the CUDA backend, as seen from liblethe: a module
 * (liblethe-cuda.so, backends/cuda/) loaded at run time, so that liblethe
 * and the CLI never link cudart or cuBLAS and start without a driver.
 *
 * The driver decides first: libcuda.so.1 is dlopen'ed and closed again
 * before the module (and with it cuBLAS, hundreds of MB) is touched, so a
 * machine without an NVIDIA driver pays nothing and gets a clear message.
 */
#include "backend.h"
#include "backend_module.h"
#include "common.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* The module once a backend of it started (it stays loaded), so that
 * lethe_backend_cuda_forget reaches its devices without ever loading it. */
static pthread_mutex_t g_cuda_mu = PTHREAD_MUTEX_INITIALIZER;
static const lethe_backend_module *g_cuda_module;

void lethe_backend_cuda_forget(const void *lo, size_t size) {
    pthread_mutex_lock(&g_cuda_mu);
    const lethe_backend_module *m = g_cuda_module;
    pthread_mutex_unlock(&g_cuda_mu);
    if (m && m->forget) m->forget(lo, size);
}

lethe_backend *lethe_backend_cuda_new(int device) {
    /* tests only: LETHE_CUDA_EMU=1 loads the same module built on the CPU
     * emulator of the device (liblethe-cuda-emu.so, docs/CUDA.md), no driver */
    const char *emu = getenv("LETHE_CUDA_EMU");
    const bool use_emu = emu && *emu && strcmp(emu, "0") != 0;
#if !defined(LETHE_HAVE_CUDA) && !defined(LETHE_HAVE_CUDA_EMU)
    (void)device;
    (void)use_emu;
    lethe_fail(LETHE_ERR_BACKEND, "cuda: this build has no CUDA backend (the CUDA toolkit was not found at build time)");
    return NULL;
#else
    const char *env = getenv("LETHE_CUDA_DEVICE");
    if (env && *env) device = atoi(env);
    if (!use_emu) {
#ifndef LETHE_HAVE_CUDA
        lethe_fail(LETHE_ERR_BACKEND, "cuda: this build has no CUDA backend (the CUDA toolkit was not found at build time)");
        return NULL;
#endif
        void *drv = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!drv) {
            const char *why = dlerror();
            lethe_fail(LETHE_ERR_BACKEND, "cuda: no NVIDIA driver on this machine (%s)", why ? why : "libcuda.so.1 not found");
            return NULL;
        }
        dlclose(drv);
    }
    const lethe_backend_module *m = NULL;
    if (lethe_backend_module_load(use_emu ? "cuda-emu" : "cuda", &m) != LETHE_OK) return NULL;
    int n = m->device_count ? m->device_count() : 0;
    if (n <= 0) {
        lethe_fail(LETHE_ERR_BACKEND, "cuda: the driver reports no usable CUDA device");
        return NULL;
    }
    if (device < 0 || device >= n) {
        lethe_fail(LETHE_ERR_BACKEND, "cuda: no device %d (%d found)", device, n);
        return NULL;
    }
    lethe_status st = LETHE_OK;
    lethe_backend *be = m->create(device, &st);
    if (be) {
        pthread_mutex_lock(&g_cuda_mu);
        g_cuda_module = m;
        pthread_mutex_unlock(&g_cuda_mu);
    }
    return be;
#endif
}
