/* bench_plot.c — `lethe bench --plot DIR`: the rows of this run go to
 * DIR/NAME.jsonl as they are measured, and at the end tools/bench_report.py
 * turns them into DIR/NAME-*.svg/.png and DIR/NAME.md.
 *
 * Why the CLI runs the script instead of driving gnuplot itself: the plots
 * (which series, how repeated points are averaged, titles, the Pareto view
 * from `lethe eval` data, the backend x device table) are defined once, in
 * bench_report.py, which docs/BENCHMARKS.md and tools/bench-cpu-peer.sh also
 * use; a second copy in C would drift. gnuplot is an external program either
 * way, and wherever a Debian gnuplot is installed python3 is too (the script
 * needs only its standard library). The script is installed next to the
 * binary's data, <prefix>/share/lethe/bench_report.py, and the build tree
 * mirrors that layout (bin/lethe, share/lethe/), so one relative lookup from
 * /proc/self/exe finds it in both; $LETHE_BENCH_REPORT overrides it.
 *
 * The check runs before the sweep (`bench_report.py check`: python3, the
 * script, gnuplot with its svg/pngcairo terminals), so a long sweep is not
 * run in the belief that plots will come; when it fails the rows are still
 * measured and written, and the command exits 1. */
#include "bench.h"
#include "cli.h"

#include "lethe_build_config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#ifndef LETHE_BIN_TO_DATADIR
#define LETHE_BIN_TO_DATADIR "../share"
#endif

bool bench_plot_script(char *out, size_t cap) {
    const char *env = getenv("LETHE_BENCH_REPORT");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return access(out, R_OK) == 0;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        snprintf(out, cap, "%s/lethe/bench_report.py", LETHE_BIN_TO_DATADIR);
        return false;
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    snprintf(out, cap, "%s/%s/lethe/bench_report.py", exe, LETHE_BIN_TO_DATADIR);
    return access(out, R_OK) == 0;
}

/* python3 SCRIPT args...: its stdout goes to our stderr (stdout holds only
 * results), its stderr to a temporary file whose last line is `why`.
 * True when it exited 0. */
static bool run_script(const char *script, const char *const *args, char *why, size_t why_cap) {
    why[0] = '\0';
    const char *argv[16];
    size_t na = 0;
    argv[na++] = "python3";
    argv[na++] = script;
    for (size_t i = 0; args[i] && na < 15; i++) argv[na++] = args[i];
    argv[na] = NULL;
    char errpath[] = "/tmp/lethe-plot-XXXXXX";
    int errfd = mkstemp(errpath);
    if (errfd < 0) return snprintf(why, why_cap, "cannot make a temporary file: %s", strerror(errno)), false;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, errfd, STDERR_FILENO);
    fflush(stderr);
    pid_t pid;
    int sp = posix_spawnp(&pid, "python3", &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(errfd);
    if (sp != 0) {
        unlink(errpath);
        snprintf(why, why_cap, "cannot start python3: %s", strerror(sp));
        return false;
    }
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {}
    bench_last_line(errpath, why, why_cap);
    unlink(errpath);
    if (WIFEXITED(ws) && WEXITSTATUS(ws) == 0) return true;
    if (!why[0]) {
        if (WIFSIGNALED(ws)) snprintf(why, why_cap, "python3 %s was killed by signal %d", script, WTERMSIG(ws));
        else snprintf(why, why_cap, "python3 %s exited with status %d", script, WEXITSTATUS(ws));
    }
    return false;
}

bool bench_plot_check(const char *script, bool found, char *why, size_t why_cap) {
    if (!found) {
        snprintf(why, why_cap, "the plot script '%s' is not there (set $LETHE_BENCH_REPORT to tools/bench_report.py)",
                 script);
        return false;
    }
    return run_script(script, (const char *const[]){"check", NULL}, why, why_cap);
}

bool bench_plot_run(const char *script, const char *rows, const char *dir, const char *name, char *why,
                    size_t why_cap) {
    return run_script(script, (const char *const[]){"plot", rows, "--out", dir, "--name", name, "--tables", NULL},
                      why, why_cap);
}

bool bench_mkdir_p(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return false;
        *p = '/';
    }
    if (mkdir(tmp, 0755) == 0) return true;
    struct stat sb;
    return errno == EEXIST && stat(tmp, &sb) == 0 && S_ISDIR(sb.st_mode);
}
