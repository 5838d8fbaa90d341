/* backend_module.h — backends that live in their own shared library
 * (liblethe-cuda.so, ...) and are loaded at run time, so that liblethe and
 * the CLI start on machines without the backend's driver and runtime.
 *
 * Where modules are looked up (lethe_backend_dir(), public):
 *   1. $LETHE_BACKEND_DIR, when set (tests, unusual layouts);
 *   2. <folder of liblethe.so>/lethe/             when lethe is a shared library;
 *   3. <folder of the executable>/<bin→lib>/lethe/ when lethe is linked statically
 *      into a program in <prefix>/bin (bin→lib is fixed at configure time,
 *      e.g. "../lib").
 * The folder is found from the library's own address (dladdr), never from a
 * build-tree path, so an install works from any prefix and the build tree
 * (which mirrors the install layout: bin/, lib/, lib/lethe/) works too.
 *
 * A module is liblethe-<name>.so in that folder. It exports one C function,
 * LETHE_BACKEND_MODULE_ENTRY, that receives the host's services and returns
 * a static description. liblethe hides its internal symbols, so a module
 * does not link against them: whatever it needs from the host (error
 * reporting, logging) comes through lethe_module_host.
 */
#ifndef LETHE_BACKEND_MODULE_H
#define LETHE_BACKEND_MODULE_H

#include "backend.h"

/* Bumped whenever lethe_backend_iface (backend.h) or these structs change
 * layout: a module built against another layout is refused by name instead
 * of having fields read past its iface. 2: the iface grew device_ms and
 * buffer_host_done. 3: the iface grew device_share, the module forget.
 * 4: the iface grew buffer_move_rows. 5: lethe_kv_stream / lethe_kv_cache
 * (kv_cache.h, read by a module's kernels' tables) grew plist_gen, uid. */
#define LETHE_BACKEND_MODULE_ABI 5
#define LETHE_BACKEND_MODULE_ENTRY "lethe_backend_module_entry"

typedef struct lethe_module_host {
    uint32_t abi;                       /* LETHE_BACKEND_MODULE_ABI */
    lethe_status (*fail)(lethe_status s, const char *fmt, ...);
    void (*log)(lethe_log_level level, const char *fmt, ...);
} lethe_module_host;

typedef struct lethe_backend_module {
    uint32_t abi;                       /* must equal LETHE_BACKEND_MODULE_ABI */
    const char *name;                   /* "cuda": must match the file name    */
    /* Usable devices on this machine (0 when the driver is missing). */
    int (*device_count)(void);
    /* A backend on device `device`; NULL with a status on failure. */
    lethe_backend *(*create)(int device, lethe_status *status);
    /* Drop every device's cached copies of host bytes [lo, lo + size)
     * (backend.h, lethe_backends_forget); NULL: the module caches none. */
    void (*forget)(const void *lo, size_t size);
} lethe_backend_module;

typedef const lethe_backend_module *(*lethe_backend_module_entry_fn)(const lethe_module_host *host);

/* Full path of module `name` ("cuda" → <dir>/liblethe-cuda.so) into buf.
 * LETHE_ERR_INVALID_ARG for a bad name, a path that does not fit. */
lethe_status lethe_backend_module_path(const char *name, char *buf, size_t buf_size);

/* dlopen module `name` from lethe_backend_dir() and check its ABI. The module
 * stays loaded for the life of the process. LETHE_ERR_BACKEND, with the path
 * and dlerror() in the message, when it is missing or not a lethe module. */
lethe_status lethe_backend_module_load(const char *name, const lethe_backend_module **out);

#endif
