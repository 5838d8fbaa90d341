/* cuda_kernels.h — the C ABI between the CUDA backend's C side
 * (cuda_backend.c, cuda_ops.c) and its kernels (*.cu, one op family each).
 *
 * Every launcher enqueues on `stream` and returns cudaGetLastError() of the
 * launch (cudaSuccess = 0); none synchronizes. Pointers are device pointers.
 * Shapes outermost-first as in core/graph.h; legend:
 *   T tokens (rows of activations), E / N / F / K row widths (N weight rows,
 *   K the reduced dimension), R gathered rows, H heads, Hkv KV heads,
 *   G = Hq / Hkv query heads per KV head, D head dim.
 * `wtype` is a lethe_dtype id (core/dtype.h); weights are GGUF block rows of
 * `row_bytes` bytes each.
 */
#ifndef LETHE_CUDA_KERNELS_H
#define LETHE_CUDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Can the kernels read weights of this dtype (GET_ROWS, GEMV, dequant)? */
int lethe_cu_wtype_ok(int wtype);

/* k_elementwise.cu */
/* GET_ROWS: w [Nw, E] wtype, ids [R] -> out [R, E] f32; an id outside
 * [0, Nw) gives a zero row and sets *err = 1. */
cudaError_t lethe_cu_get_rows(int wtype, const void *w, size_t row_bytes, int64_t Nw, int64_t E,
                              const int32_t *ids, int64_t R, float *out, int *err, cudaStream_t stream);
/* RMS_NORM: x [T, E], w [E] or NULL -> y [T, E]; sums of squares in double. */
cudaError_t lethe_cu_rms_norm(const float *x, const float *w, float *y, int64_t T, int64_t E, float eps,
                              cudaStream_t stream);
/* ADD (mul = 0) / MUL (mul = 1): a [T, N], b [T, N] or [N] (bcast) -> y [T, N]. */
cudaError_t lethe_cu_binary(int mul, const float *a, const float *b, float *y, int64_t T, int64_t N, int bcast,
                            cudaStream_t stream);
/* SWIGLU: gate [n], up [n] -> silu(gate) * up. */
cudaError_t lethe_cu_swiglu(const float *gate, const float *up, float *y, int64_t n, cudaStream_t stream);
/* DMS_DECISION -> out [T, Hkv] logits (graph.h): mode 0 from q [T, Hkv*G, D]
 * (channel D-1 of head h*G), 1 from adapter projections x [T, xw] (xw = Hkv
 * or 1), 2 forced by the position hash (x unused). */
cudaError_t lethe_cu_dms_decision(int mode, const float *x, int64_t xw, int64_t D, float *out, int64_t T, int Hkv,
                                  int G, int per_layer, float scale, float offset, float rate, int layer,
                                  const int32_t *pos, cudaStream_t stream);

/* k_rope.cu */
/* ROPE: x [T, H, D] -> y, token t at angle pos[t] * invf[i] (computed in
 * double, as the CPU does). neox: pairs (i, i + n_rot/2), else (2i, 2i+1).
 * borrow_g > 0: channel D-1 of heads h % borrow_g == 0 is 0 before and after. */
cudaError_t lethe_cu_rope(const float *x, float *y, int64_t T, int64_t H, int64_t D, int n_rot, int neox,
                          const int32_t *pos, const double *invf, int borrow_g, cudaStream_t stream);

/* k_gemv.cu */
/* Decode GEMV for 1 <= T <= LETHE_CU_GEMV_MAX_T: w [N, K] wtype, x [T, K] f32
 * -> y [T, N] f32. Weights are read once for all T tokens (batched GEMV for
 * parallel sequences); quantized blocks are dequantized in registers. */
#define LETHE_CU_GEMV_MAX_T 8
cudaError_t lethe_cu_gemv(int wtype, const void *w, size_t row_bytes, const float *x, float *y, int64_t N,
                          int64_t K, int64_t T, cudaStream_t stream);

/* k_convert.cu (prefill: dequantize or convert, then cuBLAS) */
/* rows [r0, r1) of w [N, K] wtype -> out [r1 - r0, K] f16 (bf16 = 0) or bf16. */
cudaError_t lethe_cu_dequant_rows(int wtype, const void *w, size_t row_bytes, int64_t r0, int64_t r1, int64_t K,
                                  void *out, int bf16, cudaStream_t stream);
/* x [n] f32 -> out [n] f16 (bf16 = 0) or bf16, round to nearest even. */
cudaError_t lethe_cu_f32_to_half(const float *x, void *out, int64_t n, int bf16, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
