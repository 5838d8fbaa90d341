/* test_backend_module.c — the version string and the run-time lookup of
 * backend modules relative to the library (core/backend_module.c). This
 * test links lethe statically, so "the library" is this program in
 * <build>/tests and the lookup goes to <build>/tests/<bin→lib>/lethe, i.e.
 * <build>/lib/lethe, where the build puts the two test modules. The
 * shared-library case is checked by tests/install/test_install.sh against a
 * real install. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend_module.h"
#include "lethe.h"
#include "lethe_build_config.h"

/* Runs first, in a child process, because the folder is computed once. */
static void test_env_override(void **state) {
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("LETHE_BACKEND_DIR", "/opt/somewhere/modules", 1);
        _exit(strcmp(lethe_backend_dir(), "/opt/somewhere/modules") == 0 ? 0 : 1);
    }
    int ws = 0;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
}

static void test_version(void **state) {
    (void)state;
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d (backends: ", LETHE_VERSION_MAJOR, LETHE_VERSION_MINOR,
             LETHE_VERSION_PATCH);
    const char *v = lethe_version();
    assert_true(strncmp(v, want, strlen(want)) == 0);
    assert_non_null(strstr(v, "cpu"));
    assert_string_equal(v + strlen(v) - 1, ")");
}

static void test_dir_is_found_relative_to_the_program(void **state) {
    (void)state;
    const char *dir = lethe_backend_dir();
    assert_true(dir[0] == '/');
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    assert_true(n > 0);
    exe[n] = 0;
    *strrchr(exe, '/') = 0;
    /* <folder of this program>/<bin→lib>/lethe */
    assert_true(strncmp(dir, exe, strlen(exe)) == 0);
    assert_string_equal(dir + strlen(dir) - strlen("/" LETHE_MODULE_SUBDIR), "/" LETHE_MODULE_SUBDIR);
    /* ...which is where the build put the test module */
    char path[8192];
    assert_int_equal(lethe_backend_module_path("dummy", path, sizeof path), LETHE_OK);
    assert_int_equal(access(path, R_OK), 0);
}

static void test_load_module(void **state) {
    (void)state;
    const lethe_backend_module *m = NULL;
    lethe_status st = lethe_backend_module_load("dummy", &m);
    if (st != LETHE_OK) fail_msg("%s: %s", lethe_strerror(st), lethe_last_error());
    assert_string_equal(m->name, "dummy");
    assert_int_equal(m->device_count(), 1);
    /* the module reports failure through the host's lethe_fail: the message
     * lands in this thread's lethe_last_error() */
    lethe_status cst = LETHE_OK;
    assert_null(m->create(3, &cst));
    assert_int_equal(cst, LETHE_ERR_UNSUPPORTED);
    assert_string_equal(lethe_last_error(), "dummy backend: device 3 cannot compute");
    /* loading again gives the same module */
    const lethe_backend_module *m2 = NULL;
    assert_int_equal(lethe_backend_module_load("dummy", &m2), LETHE_OK);
    assert_ptr_equal(m, m2);
}

static void test_missing_and_bad_modules(void **state) {
    (void)state;
    const lethe_backend_module *m = (const void *)1;
    assert_int_equal(lethe_backend_module_load("nosuch", &m), LETHE_ERR_BACKEND);
    assert_null(m);
    assert_non_null(strstr(lethe_last_error(), "liblethe-nosuch.so"));
    assert_non_null(strstr(lethe_last_error(), lethe_backend_dir()));
    assert_int_equal(lethe_backend_module_load("badabi", &m), LETHE_ERR_BACKEND);
    assert_non_null(strstr(lethe_last_error(), "ABI"));
    assert_null(m);
    assert_int_equal(lethe_backend_module_load("../dummy", &m), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_backend_module_load("", &m), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_backend_module_load(NULL, &m), LETHE_ERR_INVALID_ARG);
    assert_int_equal(lethe_backend_module_load("dummy", NULL), LETHE_ERR_INVALID_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_override),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_dir_is_found_relative_to_the_program),
        cmocka_unit_test(test_load_module),
        cmocka_unit_test(test_missing_and_bad_modules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
