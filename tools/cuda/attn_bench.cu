/* attn_bench.cu — lethe_cuda_attn_bench: prefill ATTENTION alone on the GPU,
 * the tiled f32 kernel (k_attention.cu) against the tensor-core kernel
 * (k_attn_tc.cu), on a synthetic paged f16 KV cache. tools/gpu-check.sh runs
 * it as its `attn` stage.
 *
 *   lethe_cuda_attn_bench [-c CASE,...] [-r REPS]
 *
 * A case is HKVxGxD@DEPTH+T[:dms]: Hkv KV heads, G query heads per KV head,
 * head dim D, one sequence with DEPTH tokens cached and a prompt of T tokens
 * (positions DEPTH .. DEPTH + T - 1) whose K/V are in the cache too, so each
 * KV head's stream holds DEPTH + T slots; its pages are interleaved with the
 * other heads' (page p of head h = pool page p * Hkv + h). ":dms" marks the
 * history as a DMS cache would: every 5th slot flagged (expire = pos + 256),
 * every 97th a hole (pos = INT32_MAX). K, V, Q random in [-1, 1).
 * Default cases: the Llama-3-8B / Qwen3-8B attention shape (8 KV heads, G 4,
 * D 128) at depth 8192 with a 512-token prompt (DMS), a 32768-token prompt
 * from depth 0 (the refill of a 32k context), G 8 / D 128 and G 3 / D 64
 * (SmolLM2's D) at depth 4096 with DMS.
 *
 * Per case: both kernels' outputs poisoned (NaN) and checked fully written;
 * NMSE of tc against f32 (f16 Q and P: ~1e-7 measured on the host; the limit
 * here is 1e-5); the mean time of REPS launches between CUDA events after a
 * warm-up (default: as many as fill ~300 ms, 1 to 20); nominal TFLOP/s =
 * 4 D Hq x (query, key) pairs under the causal mask (pairs a DMS flag or a
 * hole hides are counted too) over the time.
 * Exit status: 0, 1 an output unwritten or an NMSE over the limit, 2 no GPU / bad usage.
 */
#include "cuda_kernels.h"
#include "cuda_launch.cuh"

#include <cuda_fp16.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(call)                                                                                          \
    do {                                                                                                  \
        cudaError_t e_ = (call);                                                                          \
        if (e_ != cudaSuccess) {                                                                          \
            fprintf(stderr, "attn_bench: %s: %s (line %d)\n", #call, cudaGetErrorString(e_), __LINE__); \
            exit(2);                                                                                      \
        }                                                                                                 \
    } while (0)

#define NMSE_MAX 1e-5
#define P LETHE_CU_KV_PAGE

__device__ uint32_t hash32(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return (uint32_t)x;
}
__device__ float unit(uint64_t i) { return (float)(hash32(i) >> 8) * (2.0f / 16777216.0f) - 1.0f; }   /* [-1, 1) */

__global__ void k_fill_h(__half *x, int64_t n, uint64_t seed) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = __float2half_rn(unit(seed * 0x9E3779B97F4A7C15ull + (uint64_t)i));
}
__global__ void k_fill_f(float *x, int64_t n, uint64_t seed) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = unit(seed * 0x9E3779B97F4A7C15ull + (uint64_t)i);
}

typedef struct bcase {
    int Hkv, G, D, depth, T;
    bool dms;
} bcase;

static int parse_case(const char *s, bcase *c) {
    char tail[16] = "";
    memset(c, 0, sizeof *c);
    const int n = sscanf(s, "%dx%dx%d@%d+%d%15s", &c->Hkv, &c->G, &c->D, &c->depth, &c->T, tail);
    if (n < 5 || c->Hkv < 1 || c->G < 1 || c->depth < 0 || c->T < 1) return -1;
    if (n == 6 && strcmp(tail, ":dms")) return -1;
    c->dms = n == 6;
    if (!lethe_cu_attn_tc_ok(c->D, c->G, 1)) return -1;
    return 0;
}

/* work [n_blocks][Hkv] for blocks of rows / G tokens of the one sequence */
static int make_work(const bcase *c, int rows, int L, int n_pages, lethe_cu_attn_work **out) {
    const int BQ = rows / c->G, nb = (c->T + BQ - 1) / BQ;
    lethe_cu_attn_work *w = (lethe_cu_attn_work *)malloc(sizeof *w * (size_t)nb * c->Hkv);
    for (int b = 0; b < nb; b++)
        for (int h = 0; h < c->Hkv; h++) {
            const int t0 = b * BQ;
            w[(size_t)b * c->Hkv + h] = (lethe_cu_attn_work){L, h * n_pages, t0, c->T - t0 < BQ ? c->T - t0 : BQ};
        }
    *out = w;
    return nb;
}

static double nmse_host(const float *ref, const float *got, size_t n, size_t *unwritten) {
    double num = 0, den = 0;
    *unwritten = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) || isnan(ref[i])) {
            (*unwritten)++;
            continue;
        }
        num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

int main(int argc, char **argv) {
    const char *def[] = {"8x4x128@8192+512:dms", "8x4x128@0+32768", "4x8x128@4096+512:dms", "3x3x64@4096+512:dms"};
    const char *cases[16];
    int nc = 4, reps = 0;
    for (int i = 0; i < 4; i++) cases[i] = def[i];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-c") && i + 1 < argc) {
            nc = 0;
            for (char *tok = strtok(argv[++i], ","); tok && nc < 16; tok = strtok(NULL, ",")) cases[nc++] = tok;
        } else if (!strcmp(argv[i], "-r") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [-c HKVxGxD@DEPTH+T[:dms],...] [-r REPS]\n", argv[0]);
            return 2;
        }
    }
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        fprintf(stderr, "attn_bench: no CUDA device\n");
        return 2;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    printf("GPU: %s, %d SMs\n\n", prop.name, prop.multiProcessorCount);
    printf("| case | Hq x D | depth + T | f32 ms | tc ms | tc / f32 speedup | tc nominal TFLOP/s | NMSE tc vs f32 |\n");
    printf("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
    fflush(stdout);
    int bad = 0;
    for (int ci = 0; ci < nc; ci++) {
        bcase c;
        if (parse_case(cases[ci], &c)) {
            fprintf(stderr, "attn_bench: bad case '%s' (HKVxGxD@DEPTH+T[:dms], D 64 or 128, G <= 8)\n", cases[ci]);
            return 2;
        }
        const int L = c.depth + c.T, n_pages = (L + P - 1) / P, Hq = c.Hkv * c.G;
        const size_t slot = 2 * (size_t)c.D, page = 2 * (size_t)P * slot, pool_pages = (size_t)n_pages * c.Hkv;
        /* the cache: pool (random f16), pos / expire, page lists */
        uint8_t *pool;
        int32_t *pos, *kexp, *pl, *qpos;
        CK(cudaMalloc(&pool, pool_pages * page));
        CK(cudaMalloc(&pos, pool_pages * P * sizeof(int32_t)));
        CK(cudaMalloc(&kexp, pool_pages * P * sizeof(int32_t)));
        CK(cudaMalloc(&pl, pool_pages * sizeof(int32_t)));
        CK(cudaMalloc(&qpos, (size_t)c.T * sizeof(int32_t)));
        const int64_t nh = (int64_t)(pool_pages * page / 2);
        LETHE_CU_LAUNCH((unsigned)((nh + 255) / 256), 256, 0, st, k_fill_h)((__half *)pool, nh, 11 + ci);
        CK(cudaGetLastError());
        int32_t *hpos = (int32_t *)malloc(pool_pages * P * sizeof(int32_t));
        int32_t *hexp = (int32_t *)malloc(pool_pages * P * sizeof(int32_t));
        int32_t *hpl = (int32_t *)malloc(pool_pages * sizeof(int32_t));
        int32_t *hq = (int32_t *)malloc((size_t)c.T * sizeof(int32_t));
        double pairs = 0;
        for (int h = 0; h < c.Hkv; h++)
            for (int p = 0; p < n_pages; p++) {
                const int32_t pg = p * c.Hkv + h;
                hpl[h * n_pages + p] = pg;
                for (int s = 0; s < P; s++) {
                    const int j = p * P + s;
                    int32_t ps = j < L ? j : INT32_MAX, ex = INT32_MAX;
                    if (c.dms && j < c.depth && j % 5 == 2) ex = j + 256;
                    if (c.dms && j < c.depth && j % 97 == 13) ps = INT32_MAX;
                    hpos[(size_t)pg * P + s] = ps;
                    hexp[(size_t)pg * P + s] = ex;
                }
            }
        for (int t = 0; t < c.T; t++) {
            hq[t] = c.depth + t;
            pairs += (double)(c.depth + t + 1);
        }
        CK(cudaMemcpy(pos, hpos, pool_pages * P * sizeof(int32_t), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(kexp, hexp, pool_pages * P * sizeof(int32_t), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(pl, hpl, pool_pages * sizeof(int32_t), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(qpos, hq, (size_t)c.T * sizeof(int32_t), cudaMemcpyHostToDevice));
        const size_t nq = (size_t)c.T * Hq * c.D;
        float *q, *out[2];
        CK(cudaMalloc(&q, nq * sizeof(float)));
        CK(cudaMalloc(&out[0], nq * sizeof(float)));
        CK(cudaMalloc(&out[1], nq * sizeof(float)));
        LETHE_CU_LAUNCH((unsigned)((nq + 255) / 256), 256, 0, st, k_fill_f)(q, (int64_t)nq, 101 + ci);
        CK(cudaGetLastError());
        const lethe_cu_kv_view view = {pool, pos, kexp, page, slot, 1, c.D, NULL, NULL};
        const float scale = 1.0f / sqrtf((float)c.D);
        double ms[2] = {0, 0};
        for (int k = 0; k < 2; k++) {   /* 0: the tiled f32 kernel, 1: tensor cores */
            const int mode = k ? LETHE_CU_ATTN_TC : LETHE_CU_ATTN_TILED;
            lethe_cu_attn_work *hw, *work;
            const int nb = make_work(&c, k ? LETHE_CU_ATTN_TC_ROWS : LETHE_CU_ATTN_ROWS, L, n_pages, &hw);
            CK(cudaMalloc(&work, sizeof *hw * (size_t)nb * c.Hkv));
            CK(cudaMemcpy(work, hw, sizeof *hw * (size_t)nb * c.Hkv, cudaMemcpyHostToDevice));
            CK(cudaMemsetAsync(out[k], 0xFF, nq * sizeof(float), st));   /* NaN: every output must be written */
#define LAUNCH() lethe_cu_attention(&view, q, out[k], work, nb, mode, pl, qpos, c.Hkv, c.G, scale, NULL, 1, NULL, \
                                    NULL, 0, st)
            CK(cudaEventRecord(e0, st));
            CK(LAUNCH());
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            float warm;
            CK(cudaEventElapsedTime(&warm, e0, e1));
            int n = reps > 0 ? reps : (int)(300.0f / (warm > 0.01f ? warm : 0.01f));
            n = n < 1 ? 1 : n > 20 ? 20 : n;
            CK(cudaEventRecord(e0, st));
            for (int r = 0; r < n; r++) CK(LAUNCH());
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
#undef LAUNCH
            float tot;
            CK(cudaEventElapsedTime(&tot, e0, e1));
            ms[k] = tot / n;
            CK(cudaFree(work));
            free(hw);
        }
        float *h0 = (float *)malloc(nq * sizeof(float)), *h1 = (float *)malloc(nq * sizeof(float));
        CK(cudaMemcpy(h0, out[0], nq * sizeof(float), cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(h1, out[1], nq * sizeof(float), cudaMemcpyDeviceToHost));
        size_t unw = 0;
        const double e = nmse_host(h0, h1, nq, &unw);
        const double flops = 4.0 * c.D * Hq * pairs;
        printf("| %s | %dx%d | %d + %d | %.3f | %.3f | %.2fx | %.1f | %.3g%s |\n", cases[ci], Hq, c.D, c.depth, c.T,
               ms[0], ms[1], ms[0] / ms[1], flops / (ms[1] * 1e-3) / 1e12, e,
               unw ? " **UNWRITTEN**" : !(e < NMSE_MAX) ? " **OVER**" : "");
        fflush(stdout);
        if (unw || !(e < NMSE_MAX)) bad = 1;
        free(h0);
        free(h1);
        free(hpos);
        free(hexp);
        free(hpl);
        free(hq);
        CK(cudaFree(q));
        CK(cudaFree(out[0]));
        CK(cudaFree(out[1]));
        CK(cudaFree(pool));
        CK(cudaFree(pos));
        CK(cudaFree(kexp));
        CK(cudaFree(pl));
        CK(cudaFree(qpos));
    }
    printf("\n(NMSE limit %g: the tc kernel rounds Q and P to f16; f32 is exact f32)\n", NMSE_MAX);
    return bad;
}
