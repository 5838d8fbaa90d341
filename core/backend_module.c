/* backend_module.c — run-time lookup and loading of backend modules. See
 * backend_module.h for the lookup rule. */
#include "backend_module.h"
#include "common.h"
#include "lethe_build_config.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

static char g_backend_dir[PATH_MAX + 64];   /* a folder of PATH_MAX + the suffix */
static pthread_once_t g_backend_dir_once = PTHREAD_ONCE_INIT;

/* Folder part of `path` into `dir` ("/a/b/liblethe.so.0" → "/a/b"). */
static void dir_of(const char *path, char *dir, size_t size) {
    snprintf(dir, size, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = 0;
    else if (slash) *slash = 0;
    else snprintf(dir, size, ".");
}

static void find_backend_dir(void) {
    const char *env = getenv("LETHE_BACKEND_DIR");
    if (env && *env) {
        snprintf(g_backend_dir, sizeof g_backend_dir, "%s", env);
        return;
    }
    /* Which file holds this code: liblethe.so, or a program that linked
     * liblethe.a? dladdr names the object; for the main program glibc gives
     * argv[0], which may be relative, so the program is named by
     * /proc/self/exe instead. */
    char self[PATH_MAX] = "", exe[PATH_MAX] = "", dir[PATH_MAX];
    Dl_info info;
    if (dladdr((void *)&find_backend_dir, &info) && info.dli_fname && !realpath(info.dli_fname, self))
        self[0] = 0;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    bool in_program = !self[0] || !strcmp(self, exe);
    dir_of(in_program ? exe : self, dir, sizeof dir);
    if (in_program)
        snprintf(g_backend_dir, sizeof g_backend_dir, "%s/%s%s%s", dir, LETHE_BIN_TO_LIBDIR,
                 *LETHE_BIN_TO_LIBDIR ? "/" : "", LETHE_MODULE_SUBDIR);
    else
        snprintf(g_backend_dir, sizeof g_backend_dir, "%s/%s", dir, LETHE_MODULE_SUBDIR);
}

const char *lethe_backend_dir(void) {
    pthread_once(&g_backend_dir_once, find_backend_dir);
    return g_backend_dir;
}

lethe_status lethe_backend_module_path(const char *name, char *buf, size_t buf_size) {
    if (!name || !*name || strlen(name) > 32 || strpbrk(name, "/.") || !buf)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "backend module: bad name '%s'", name ? name : "(null)");
    int k = snprintf(buf, buf_size, "%s/liblethe-%s.so", lethe_backend_dir(), name);
    if (k < 0 || (size_t)k >= buf_size)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "backend module: path of '%s' is too long", name);
    return LETHE_OK;
}

static const lethe_module_host k_host = {
    .abi = LETHE_BACKEND_MODULE_ABI,
    .fail = lethe_fail,
    .log = lethe_log,
};

lethe_status lethe_backend_module_load(const char *name, const lethe_backend_module **out) {
    if (!out) return lethe_fail(LETHE_ERR_INVALID_ARG, "backend module: out is NULL");
    *out = NULL;
    char path[PATH_MAX + 64];
    lethe_status st = lethe_backend_module_path(name, path, sizeof path);
    if (st != LETHE_OK) return st;
    if (access(path, F_OK) != 0)
        return lethe_fail(LETHE_ERR_BACKEND, "backend '%s' is not installed: no %s (this build has: %s)", name, path,
                          LETHE_BACKENDS_STRING);
    /* RTLD_LOCAL: two modules may use the same library names internally. */
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) return lethe_fail(LETHE_ERR_BACKEND, "backend '%s': cannot load %s: %s", name, path, dlerror());
    lethe_backend_module_entry_fn entry;
    *(void **)&entry = dlsym(h, LETHE_BACKEND_MODULE_ENTRY);
    if (!entry) {
        dlclose(h);
        return lethe_fail(LETHE_ERR_BACKEND, "backend '%s': %s exports no %s()", name, path,
                          LETHE_BACKEND_MODULE_ENTRY);
    }
    const lethe_backend_module *m = entry(&k_host);
    if (!m || m->abi != LETHE_BACKEND_MODULE_ABI || !m->name || strcmp(m->name, name) || !m->create) {
        /* the message first: m points into the module */
        st = lethe_fail(LETHE_ERR_BACKEND, "backend '%s': %s is not a lethe backend module of ABI %d (it says abi %u, name '%s')",
                        name, path, LETHE_BACKEND_MODULE_ABI, m ? m->abi : 0u, m && m->name ? m->name : "");
        dlclose(h);
        return st;
    }
    *out = m;   /* never dlclose'd: backends created from it may live on */
    return LETHE_OK;
}
