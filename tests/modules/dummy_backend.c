/* dummy_backend.c — a backend module that has no device, built twice for
 * test_backend_module: as liblethe-dummy.so (a valid module) and, with
 * DUMMY_BAD_ABI, as liblethe-badabi.so (a module of a future ABI). It uses
 * the host's services only through lethe_module_host, as a real module must. */
#include "backend_module.h"

static const lethe_module_host *g_host;

static int dummy_device_count(void) { return 1; }

static lethe_backend *dummy_create(int device, lethe_status *status) {
    lethe_status st = g_host->fail(LETHE_ERR_UNSUPPORTED, "dummy backend: device %d cannot compute", device);
    if (status) *status = st;
    return NULL;
}

#ifdef DUMMY_BAD_ABI
static const lethe_backend_module k_module = {LETHE_BACKEND_MODULE_ABI + 1, "badabi", dummy_device_count, dummy_create, NULL};
#else
static const lethe_backend_module k_module = {LETHE_BACKEND_MODULE_ABI, "dummy", dummy_device_count, dummy_create, NULL};
#endif

__attribute__((visibility("default"))) const lethe_backend_module *lethe_backend_module_entry(const lethe_module_host *host) {
    if (!host || host->abi != LETHE_BACKEND_MODULE_ABI) return NULL;
    g_host = host;
    return &k_module;
}
