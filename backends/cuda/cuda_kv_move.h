/* cuda_kv_move.h — the index math of the KV row-move kernels (k_kv_move.cu),
 * behind the backend's buffer_move_rows (core/backend.h: a compaction's K/V
 * rows, a fork's pages, moved inside the managed KV buffer). Plain C that
 * nvcc also compiles as __host__ __device__, so that tests/test_cuda_host_kv_move.c
 * runs the very lanes on the host; the module cannot call liblethe, so
 * nothing here does.
 *
 * Legend: n moves of a batch, R row bytes, W word bytes a lane copies (16,
 * 4 or 1: the widest that divides R, every offset and the buffer's address),
 * WPR = R / W words per row, C rows per chunk (cu_move_chunk_rows).
 *
 * Why gather then scatter: moves run in parallel, and a compaction's later
 * move may write an earlier move's source (slot i moves to j < i, then slot
 * i' > i moves to i). So a chunk of C moves is two launches on the stream:
 *   gather  (phase 0): lane g copies word g % WPR of move g / WPR from the
 *                      buffer's source row into scratch row g / WPR;
 *   scatter (phase 1): the same word from scratch to the destination row.
 * Every source of the chunk is read before any destination is written (the
 * launch boundary orders them). Chunks run in order; that equals the whole
 * batch gathered then scattered because the contract (backend.h) forbids a
 * move to read a row an earlier move writes, and destinations never repeat,
 * so no scatter races another. Scratch: C * R bytes, moves: C pairs. */
#ifndef LETHE_CUDA_KV_MOVE_H
#define LETHE_CUDA_KV_MOVE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define CU_MOVE_FN static __host__ __device__ __forceinline__
#else
#define CU_MOVE_FN static inline
#endif

#define CU_MOVE_CHUNK_BYTES ((size_t)8 << 20)   /* scratch rows per chunk: at most this many bytes */

/* W for a batch: `bits` is the OR of R, every src / dst offset and the
 * buffer's device address. */
CU_MOVE_FN int cu_move_word_bytes(size_t bits) { return bits % 16 == 0 ? 16 : bits % 4 == 0 ? 4 : 1; }

/* C: rows per chunk (at least 1, whatever R). */
CU_MOVE_FN size_t cu_move_chunk_rows(size_t row_bytes) {
    const size_t c = CU_MOVE_CHUNK_BYTES / row_bytes;
    return c ? c : 1;
}

/* Lane g of a chunk's launch (g < n * WPR): byte offsets of the word it
 * reads and writes. mv [n][2]: {src, dst} byte offsets into the buffer
 * (lethe_row_move). Phase 0 reads the buffer and writes scratch, phase 1
 * reads scratch and writes the buffer. */
CU_MOVE_FN void cu_move_lane(int phase, const size_t *mv, int64_t g, int64_t wpr, int wb, size_t row_bytes,
                             size_t *from, size_t *to) {
    const int64_t m = g / wpr;
    const size_t w = (size_t)(g - m * wpr) * (size_t)wb;
    const size_t s = (size_t)m * row_bytes + w;   /* scratch */
    if (phase == 0) {
        *from = mv[2 * m] + w;
        *to = s;
    } else {
        *from = s;
        *to = mv[2 * m + 1] + w;
    }
}

#endif
