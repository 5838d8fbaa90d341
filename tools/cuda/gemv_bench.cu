/* gemv_bench.cu — lethe_cuda_gemv_bench: the decode GEMV (backends/cuda/k_gemv.cu)
 * alone on the GPU, old kernel against new (and, for the quantized types, the
 * "wide" layout: 2 lanes per row), per weight type on the Llama-3-8B matmul
 * shapes, as achieved GB/s and % of the device's copy roofline.
 * tools/gpu-check.sh runs it as its `gemv` stage.
 *
 *   lethe_cuda_gemv_bench [-t q4_0,q8_0,...] [-T 1,8] [-s 4096x4096,...] [-r REPS]
 *
 * The default run is 168 timed cases of ~3-5 ms each: seconds on an H100/H200.
 *
 * Legend: N weight rows (outputs), K reduced dim, T tokens (<= 8).
 * Shapes are N x K: 4096x4096 (q/o), 14336x4096 (gate/up), 4096x14336
 * (down), 128256x4096 (output). Weights are random: every quantized block
 * gets random codes and a small finite scale (and minimum), float rows
 * random values in [-1, 1]; activations random in [-1, 1].
 *
 * Method: the roofline is a device-to-device cudaMemcpyAsync of 1 GiB
 * (bytes read + written over the time, best of 10), the same copy `lethe
 * bench --roofline` times through buffer_copy. A GEMV's bytes are the
 * weights + T x K f32 activations + T x N f32 outputs (the q8 path's
 * activation blocks, 2 T K bytes written and read once, are not counted:
 * under 1% of the weights here); its time is the mean of back-to-back
 * launches between two CUDA events after a warm-up (REPS of them, or by
 * default as many as fill ~3 ms, 3 to 500), the activation quantization
 * kernel included: for the small shapes this is launch-rate bound (two
 * launches per q8 GEMV, no CUDA graph), as decode without graphs is. Before timing, each kernel's output is
 * poisoned (NaN) and checked fully written, the new kernel is compared
 * with the old one (NMSE: the q8 path rounds activations to 8 bits as the
 * CPU does, ~1e-5; the float path only reorders sums, ~1e-13), and wide
 * must give new's bits.
 * Exit status: 0, 1 when an output was not written or an NMSE is off, 2 no GPU.
 */
#include "cuda_kernels.h"
#include "cuda_launch.cuh"
#include "cuda_quant.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "gemv_bench"
#include "bench_util.cuh"

static const struct { const char *name; int id; } k_types[] = {
    {"q4_0", CU_Q4_0}, {"q4_1", CU_Q4_1}, {"q5_0", CU_Q5_0}, {"q5_1", CU_Q5_1},
    {"q8_0", CU_Q8_0}, {"f16", CU_F16},   {"bf16", CU_BF16}, {"f32", CU_F32},
};

/* one thread per 32-element block of w (n_blocks of them) */
__global__ void k_fill(uint8_t *w, int wtype, int64_t n_blocks, uint64_t seed) {
    const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    const int bb = cu_block_bytes(wtype);
    uint8_t *p = w + b * bb;
    const uint64_t s = seed * 0x9E3779B97F4A7C15ull + (uint64_t)b * 64;
    if (wtype == CU_F32) {
        for (int j = 0; j < 32; j++) ((float *)p)[j] = unit(s + j);
    } else if (wtype == CU_F16) {
        for (int j = 0; j < 32; j++) ((__half *)p)[j] = __float2half_rn(unit(s + j));
    } else if (wtype == CU_BF16) {
        for (int j = 0; j < 32; j++) ((__nv_bfloat16 *)p)[j] = __float2bfloat16_rn(unit(s + j));
    } else {
        for (int j = 0; j < bb; j++) p[j] = (uint8_t)hash32(s + j);
        const __half d = __float2half_rn(0.01f * unit(s + 40));
        memcpy(p, &d, 2);
        if (wtype == CU_Q4_1 || wtype == CU_Q5_1) {
            const __half m = __float2half_rn(0.05f * unit(s + 41));
            memcpy(p + 2, &m, 2);
        }
    }
}

static int parse_list(const char *s, char out[][32], int max) {
    int n = 0;
    while (*s && n < max) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len >= 32) len = 31;
        memcpy(out[n], s, len);
        out[n++][len] = 0;
        if (!e) break;
        s = e + 1;
    }
    return n;
}

int main(int argc, char **argv) {
    char types[16][32], tlist[16][32], shapes[16][32];
    int nt = parse_list("q4_0,q4_1,q5_0,q5_1,q8_0,f16,bf16,f32", types, 16);
    int nT = parse_list("1,8", tlist, 16);
    int ns = parse_list("4096x4096,14336x4096,4096x14336,128256x4096", shapes, 16);
    int reps = 0;   /* adaptive */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) nt = parse_list(argv[++i], types, 16);
        else if (!strcmp(argv[i], "-T") && i + 1 < argc) nT = parse_list(argv[++i], tlist, 16);
        else if (!strcmp(argv[i], "-s") && i + 1 < argc) ns = parse_list(argv[++i], shapes, 16);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) reps = atoi(argv[++i]);   /* 0: adaptive */
        else {
            fprintf(stderr, "usage: %s [-t q4_0,q8_0,...] [-T 1,8] [-s NxK,...] [-r REPS]\n", argv[0]);
            return 2;
        }
    }
    if (reps < 0) reps = 0;
    cudaDeviceProp prop;
    cudaStream_t st;
    cudaEvent_t e0, e1;
    if (bench_open(&prop, &st, &e0, &e1)) return 2;

    /* roofline: 1 GiB device-to-device copy, read + written */
    const size_t cb = (size_t)1 << 30;
    void *ca, *cbuf;
    CK(cudaMalloc(&ca, cb));
    CK(cudaMalloc(&cbuf, cb));
    CK(cudaMemsetAsync(ca, 1, cb, st));
    float best = 1e30f;
    for (int i = 0; i < 12; i++) {
        CK(cudaEventRecord(e0, st));
        CK(cudaMemcpyAsync(cbuf, ca, cb, cudaMemcpyDeviceToDevice, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 2 && ms < best) best = ms;
    }
    CK(cudaFree(ca));
    CK(cudaFree(cbuf));
    const double roof = 2.0 * (double)cb / (best * 1e-3) / 1e9;
    printf("GPU: %s, %d SMs; copy roofline %.0f GB/s (1 GiB device-to-device, read + written, best of 10)\n\n",
           prop.name, prop.multiProcessorCount, roof);
    printf("| type | N x K | T | old us | old GB/s | old %% | new us | new GB/s | new %% | new/old | wide us | wide %% "
           "| NMSE new vs old |\n");
    printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    fflush(stdout);

    int bad = 0;
    for (int si = 0; si < ns; si++) {
        long long Nl = 0, Kl = 0;
        if (sscanf(shapes[si], "%lldx%lld", &Nl, &Kl) != 2 || Nl <= 0 || Kl <= 0 || Kl % 32) {
            fprintf(stderr, "gemv_bench: bad shape '%s' (N x K, K %% 32 == 0)\n", shapes[si]);
            return 2;
        }
        const int64_t N = Nl, K = Kl;
        float *x, *y, *yo, *yw;
        CK(cudaMalloc(&x, (size_t)8 * K * sizeof(float)));
        CK(cudaMalloc(&y, (size_t)8 * N * sizeof(float)));
        CK(cudaMalloc(&yo, (size_t)8 * N * sizeof(float)));
        CK(cudaMalloc(&yw, (size_t)8 * N * sizeof(float)));
        LETHE_CU_LAUNCH((unsigned)((8 * K + 255) / 256), 256, 0, st, k_fill_f)(x, 8 * K, 7);
        float *hy = (float *)malloc((size_t)8 * N * sizeof(float)), *ho = (float *)malloc((size_t)8 * N * sizeof(float));
        float *hw = (float *)malloc((size_t)8 * N * sizeof(float));
        for (int ti = 0; ti < nt; ti++) {
            int wt = -1;
            for (size_t k = 0; k < sizeof k_types / sizeof k_types[0]; k++)
                if (!strcmp(types[ti], k_types[k].name)) wt = k_types[k].id;
            if (wt < 0) {
                fprintf(stderr, "gemv_bench: unknown type '%s'\n", types[ti]);
                return 2;
            }
            const size_t rb = (size_t)(K / 32) * cu_block_bytes(wt), wbytes = rb * (size_t)N;
            uint8_t *w;
            CK(cudaMalloc(&w, wbytes));
            const int64_t nblk = N * (K / 32);
            LETHE_CU_LAUNCH((unsigned)((nblk + 255) / 256), 256, 0, st, k_fill)(w, wt, nblk, 1000 + (uint64_t)ti);
            CK(cudaGetLastError());
            void *act = NULL;
            const size_t ab = lethe_cu_gemv_act_bytes(wt, K, 8, LETHE_CU_GEMV_NEW);
            if (ab) CK(cudaMalloc(&act, ab));
            for (int Ti = 0; Ti < nT; Ti++) {
                const int64_t T = atoi(tlist[Ti]);
                if (T < 1 || T > LETHE_CU_GEMV_MAX_T) {
                    fprintf(stderr, "gemv_bench: T must be 1..%d\n", LETHE_CU_GEMV_MAX_T);
                    return 2;
                }
                /* variants: old, new, wide (quantized types only) */
                static const int vars[3] = {LETHE_CU_GEMV_OLD, LETHE_CU_GEMV_NEW, LETHE_CU_GEMV_WIDE};
                float *outs[3] = {yo, y, yw};
                double us[3] = {0, 0, 0};
                const int nvar = ab ? 3 : 2;
                for (int v = 0; v < nvar; v++) {
                    float *out = outs[v];
                    CK(cudaMemsetAsync(out, 0xFF, (size_t)T * N * sizeof(float), st));   /* NaN */
                    /* the checked output (the timed runs rewrite the same values), timed once */
                    CK(cudaEventRecord(e0, st));
                    CK(lethe_cu_gemv(wt, w, rb, x, out, N, K, T, vars[v], act, st));
                    CK(cudaEventRecord(e1, st));
                    CK(cudaEventSynchronize(e1));
                    float ms;
                    CK(cudaEventElapsedTime(&ms, e0, e1));
                    /* repetitions: -r, or enough for ~3 ms of launches (3..500) */
                    int n = reps > 0 ? reps : (int)(3.0f / (ms > 1e-3f ? ms : 1e-3f)) + 1;
                    if (reps <= 0) n = n < 3 ? 3 : n > 500 ? 500 : n;
                    CK(lethe_cu_gemv(wt, w, rb, x, out, N, K, T, vars[v], act, st));   /* warm-up */
                    CK(cudaEventRecord(e0, st));
                    for (int i = 0; i < n; i++) CK(lethe_cu_gemv(wt, w, rb, x, out, N, K, T, vars[v], act, st));
                    CK(cudaEventRecord(e1, st));
                    CK(cudaEventSynchronize(e1));
                    CK(cudaEventElapsedTime(&ms, e0, e1));
                    us[v] = 1e3 * ms / n;
                }
                CK(cudaMemcpy(hy, y, (size_t)T * N * sizeof(float), cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(ho, yo, (size_t)T * N * sizeof(float), cudaMemcpyDeviceToHost));
                int64_t wide_diff = 0;
                if (ab) {
                    CK(cudaMemcpy(hw, yw, (size_t)T * N * sizeof(float), cudaMemcpyDeviceToHost));
                    for (int64_t j = 0; j < T * N; j++) wide_diff += memcmp(&hw[j], &hy[j], sizeof(float)) != 0;
                }
                double num = 0, den = 0;
                int64_t nan = 0;
                for (int64_t j = 0; j < T * N; j++) {
                    if (!isfinite(hy[j]) || !isfinite(ho[j])) nan++;
                    num += ((double)hy[j] - ho[j]) * ((double)hy[j] - ho[j]);
                    den += (double)ho[j] * ho[j];
                }
                const double nmse = den > 0 ? num / den : num;
                const bool quant = ab != 0;
                const bool ok = nan == 0 && wide_diff == 0 && nmse < (quant ? 1e-3 : 1e-8);
                if (!ok) bad = 1;
                const double bytes = (double)wbytes + 4.0 * (double)(T * K + T * N);
                const double gb_old = bytes / (us[0] * 1e-6) / 1e9, gb_new = bytes / (us[1] * 1e-6) / 1e9;
                char wide[64] = "- | -";
                if (ab) snprintf(wide, sizeof wide, "%.1f | %.1f", us[2], 100.0 * bytes / (us[2] * 1e-6) / 1e9 / roof);
                printf("| %s | %lldx%lld | %lld | %.1f | %.0f | %.1f | %.1f | %.0f | %.1f | %.2fx | %s | %.2e%s%s |\n",
                       types[ti], Nl, Kl, (long long)T, us[0], gb_old, 100.0 * gb_old / roof, us[1], gb_new,
                       100.0 * gb_new / roof, us[0] / us[1], wide, nmse,
                       nan ? " **NOT WRITTEN / NaN**" : ok ? "" : " **OFF**",
                       wide_diff ? " **wide differs from new**" : "");
                fflush(stdout);
            }
            CK(cudaFree(w));
            if (act) CK(cudaFree(act));
        }
        CK(cudaFree(x));
        CK(cudaFree(y));
        CK(cudaFree(yo));
        CK(cudaFree(yw));
        free(hy);
        free(ho);
        free(hw);
    }
    return bad;
}
