/* bandwidth.c — the memory-bandwidth roofline of a device (lethe bench --roofline).
 *
 * Decoding is bandwidth-bound: every token streams the weights and the live
 * KV rows once, so the fastest a device can decode is its memory bandwidth
 * divided by those bytes. We measure that bandwidth the way decode uses it:
 *   - CPU: a streaming read of a buffer far larger than the caches, split in
 *     contiguous slices over the threads (as the GEMV kernels split rows);
 *   - GPU: a device-to-device copy through the backend's buffer_copy (read +
 *     write counted), the usual way GPU bandwidth is quoted; timed by the
 *     device's own clock where the backend reports it (device_ms), since
 *     a copy at several TB/s lasts under a millisecond and the host's
 *     submit/wait overhead would be a visible share of it.
 * Best of the repetitions after a warm-up: the roofline is what the memory
 * can do, and a shared machine only ever makes a run slower.
 */
#include "backend.h"
#include "common.h"

#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* "model name" of /proc/cpuinfo, without the thread count the CPU backend's
 * own name carries: the roofline belongs to the chip, not to a -t value. */
static void cpu_model_name(char *buf, size_t size) {
    snprintf(buf, size, "CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        const char *p = strchr(line, ':');
        if (!p) break;
        p++;
        while (*p == ' ' || *p == '\t') p++;
        snprintf(buf, size, "%s", p);
        buf[strcspn(buf, "\n")] = '\0';
        break;
    }
    fclose(f);
}

lethe_status lethe_device_name(const char *backend, int device, char *buf, size_t buf_size) {
    if (!backend || !buf || buf_size == 0) return lethe_fail(LETHE_ERR_INVALID_ARG, "device_name: invalid arguments");
    if (strcmp(backend, "cpu") == 0) {
        if (device != 0) return lethe_fail(LETHE_ERR_BACKEND, "cpu: there is only device 0 (asked for %d)", device);
        cpu_model_name(buf, buf_size);
        return LETHE_OK;
    }
    lethe_backend *be = lethe_backend_gpu_new(backend, device);
    if (!be) return LETHE_ERR_BACKEND;   /* message set by the registry */
    lethe_backend_info info = {0};
    be->iface->get_info(be, &info);
    snprintf(buf, buf_size, "%s", info.device_name);
    be->iface->free(be);
    return LETHE_OK;
}

/* 4 x 32-byte accumulators: enough independent adds to keep the loads in
 * flight; GCC/Clang vector extensions compile to AVX2/AVX-512 or NEON. */
typedef uint64_t bw_vec __attribute__((vector_size(32)));

static uint64_t read_slice(const bw_vec *p, size_t n) {   /* p: [n] vectors */
    bw_vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += p[i];
        a1 += p[i + 1];
        a2 += p[i + 2];
        a3 += p[i + 3];
    }
    for (; i < n; i++) a0 += p[i];
    bw_vec s = a0 + a1 + a2 + a3;
    return s[0] + s[1] + s[2] + s[3];
}

static lethe_status cpu_bandwidth(int n_threads, size_t bytes, int reps, lethe_bandwidth *out) {
    if (n_threads <= 0) n_threads = omp_get_num_procs();
    if (n_threads <= 0) n_threads = 1;
    size_t n_vec = bytes / sizeof(bw_vec);
    bw_vec *buf = aligned_alloc(64, n_vec * sizeof(bw_vec));
    if (!buf) return lethe_fail(LETHE_ERR_OOM, "roofline: cannot allocate %zu bytes to read", bytes);
    /* every thread writes its own slice first: the pages are real and
     * (on NUMA machines) local to the thread that reads them */
#pragma omp parallel num_threads(n_threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        size_t b = n_vec * (size_t)t / (size_t)nt, e = n_vec * (size_t)(t + 1) / (size_t)nt;
        memset(buf + b, 1, (e - b) * sizeof(bw_vec));
    }
    volatile uint64_t sink = 0;
    double best = 0.0;
    for (int r = -1; r < reps; r++) {   /* r = -1: warm-up */
        uint64_t total = 0;
        double t0 = now_s();
#pragma omp parallel num_threads(n_threads) reduction(+ : total)
        {
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
            size_t b = n_vec * (size_t)t / (size_t)nt, e = n_vec * (size_t)(t + 1) / (size_t)nt;
            total += read_slice(buf + b, e - b);
        }
        double dt = now_s() - t0;
        sink += total;
        if (r >= 0 && (best == 0.0 || dt < best)) best = dt;
    }
    (void)sink;
    free(buf);
    out->bytes = n_vec * sizeof(bw_vec);
    out->seconds = best;
    out->gbps = best > 0 ? (double)out->bytes / best / 1e9 : 0.0;
    out->n_threads = n_threads;
    snprintf(out->method, sizeof out->method, "streaming read");
    cpu_model_name(out->device_name, sizeof out->device_name);
    return LETHE_OK;
}

lethe_status lethe_backend_measure_copy(lethe_backend *be, size_t bytes, int reps, lethe_bandwidth *out) {
    lethe_backend_info info = {0};
    be->iface->get_info(be, &info);
    snprintf(out->device_name, sizeof out->device_name, "%s", info.device_name);
    if (!be->iface->buffer_copy)
        return lethe_fail(LETHE_ERR_UNSUPPORTED,
                          "%s: the backend offers no device-to-device copy (backend buffer_copy), so its roofline "
                          "cannot be measured",
                          info.name);
    lethe_buffer *src = NULL, *dst = NULL;
    lethe_status st = be->iface->buffer_alloc(be, bytes, &src);
    if (st == LETHE_OK) st = be->iface->buffer_alloc(be, bytes, &dst);
    double best = 0.0;
    bool device_clock = be->iface->device_ms != NULL;   /* until a copy goes untimed */
    for (int r = -1; st == LETHE_OK && r < reps; r++) {
        double d0 = device_clock ? be->iface->device_ms(be) : 0.0;
        double t0 = now_s();
        st = be->iface->buffer_copy(dst, 0, src, 0, bytes);
        if (st == LETHE_OK) st = be->iface->synchronize(be);
        double dt = now_s() - t0;
        double dd = device_clock ? (be->iface->device_ms(be) - d0) * 1e-3 : 0.0;
        if (st != LETHE_OK || r < 0) continue;
        if (device_clock && dd <= 0) {   /* the backend does not time its copies: the host clock for all */
            device_clock = false;
            best = 0.0;
            r = -1;   /* this copy again, and every later one, by the host clock (r++ makes it 0) */
            continue;
        }
        double t = device_clock ? dd : dt;
        if (best == 0.0 || t < best) best = t;
    }
    if (dst) be->iface->buffer_free(dst);
    if (src) be->iface->buffer_free(src);
    if (st != LETHE_OK) return st;
    out->bytes = 2 * bytes;   /* each byte is read once and written once */
    out->seconds = best;
    out->gbps = best > 0 ? (double)out->bytes / best / 1e9 : 0.0;
    out->n_threads = 0;
    snprintf(out->method, sizeof out->method, "device-to-device copy, %s clock", device_clock ? "device" : "host");
    return LETHE_OK;
}

static lethe_status gpu_bandwidth(const char *backend, int device, size_t bytes, int reps, lethe_bandwidth *out) {
    lethe_backend *be = lethe_backend_gpu_new(backend, device);
    if (!be) return LETHE_ERR_BACKEND;
    lethe_status st = lethe_backend_measure_copy(be, bytes, reps, out);
    be->iface->free(be);
    return st;
}

lethe_status lethe_measure_bandwidth(const char *backend, int device, int n_threads, size_t bytes, int reps,
                                     lethe_bandwidth *out) {
    if (!backend || !out || reps < 1) return lethe_fail(LETHE_ERR_INVALID_ARG, "measure_bandwidth: invalid arguments");
    memset(out, 0, sizeof *out);
    if (bytes == 0) bytes = (size_t)1 << 30;
    if (bytes < ((size_t)1 << 20))
        return lethe_fail(LETHE_ERR_INVALID_ARG, "measure_bandwidth: %zu bytes is too small to leave the caches", bytes);
    if (strcmp(backend, "cpu") == 0) {
        if (device != 0) return lethe_fail(LETHE_ERR_BACKEND, "cpu: there is only device 0 (asked for %d)", device);
        return cpu_bandwidth(n_threads, bytes, reps, out);
    }
    return gpu_bandwidth(backend, device, bytes, reps, out);
}
