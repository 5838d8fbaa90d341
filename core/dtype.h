/* dtype.h — element types of tensors.
 *
 * The numeric values are GGML's type ids, so a GGUF tensor's type field maps
 * to a lethe_dtype directly, and the quantized block layouts are GGUF's, so
 * weights are used in place (mmap), never converted.
 *
 * A row of `n` elements of a block type occupies n / blck_size blocks of
 * type_size bytes; n must be a multiple of blck_size.
 */
#ifndef LETHE_DTYPE_H
#define LETHE_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum lethe_dtype {
    LETHE_F32  = 0,
    LETHE_F16  = 1,
    LETHE_Q4_0 = 2,
    LETHE_Q4_1 = 3,
    LETHE_Q5_0 = 6,
    LETHE_Q5_1 = 7,
    LETHE_Q8_0 = 8,
    LETHE_Q8_1 = 9,
    LETHE_Q2_K = 10,
    LETHE_Q3_K = 11,
    LETHE_Q4_K = 12,
    LETHE_Q5_K = 13,
    LETHE_Q6_K = 14,
    LETHE_Q8_K = 15,
    LETHE_I8   = 24,
    LETHE_I16  = 25,
    LETHE_I32  = 26,
    LETHE_I64  = 27,
    LETHE_F64  = 28,
    LETHE_BF16 = 30,
    LETHE_DTYPE_MAX = 40  /* exclusive upper bound of ids */
} lethe_dtype;

#define LETHE_QK4_0 32
#define LETHE_QK4_1 32
#define LETHE_QK5_0 32
#define LETHE_QK5_1 32
#define LETHE_QK8_0 32
#define LETHE_QK8_1 32
#define LETHE_QK_K 256

typedef uint16_t lethe_f16;   /* IEEE binary16 bits */
typedef uint16_t lethe_bf16;  /* bfloat16 bits      */

/* GGUF block layouts (byte-exact). */
typedef struct { lethe_f16 d; uint8_t qs[LETHE_QK4_0 / 2]; } lethe_block_q4_0;              /* 18 B */
typedef struct { lethe_f16 d, m; uint8_t qs[LETHE_QK4_1 / 2]; } lethe_block_q4_1;           /* 20 B */
typedef struct { lethe_f16 d; uint8_t qh[4]; uint8_t qs[LETHE_QK5_0 / 2]; } lethe_block_q5_0;   /* 22 B */
typedef struct { lethe_f16 d, m; uint8_t qh[4]; uint8_t qs[LETHE_QK5_1 / 2]; } lethe_block_q5_1; /* 24 B */
typedef struct { lethe_f16 d; int8_t qs[LETHE_QK8_0]; } lethe_block_q8_0;                   /* 34 B */
/* q8_1: s = d * sum(qs), used for activations against q4_1/q5_1 weights */
typedef struct { lethe_f16 d, s; int8_t qs[LETHE_QK8_1]; } lethe_block_q8_1;                /* 36 B */
typedef struct {                                                                            /* 144 B */
    lethe_f16 d, dmin;
    uint8_t scales[12];       /* 8 sub-block scales and mins, 6 bits each */
    uint8_t qs[LETHE_QK_K / 2];
} lethe_block_q4_k;
typedef struct {                                                                            /* 176 B */
    lethe_f16 d, dmin;
    uint8_t scales[12];
    uint8_t qh[LETHE_QK_K / 8];
    uint8_t qs[LETHE_QK_K / 2];
} lethe_block_q5_k;
typedef struct {                                                                            /* 210 B */
    uint8_t ql[LETHE_QK_K / 2];      /* low 4 bits   */
    uint8_t qh[LETHE_QK_K / 4];      /* high 2 bits  */
    int8_t scales[LETHE_QK_K / 16];  /* 8-bit sub-block scales */
    lethe_f16 d;
} lethe_block_q6_k;
/* q8_k: activations against k-quants */
typedef struct { float d; int8_t qs[LETHE_QK_K]; int16_t bsums[LETHE_QK_K / 16]; } lethe_block_q8_k;

typedef struct lethe_dtype_traits {
    const char *name;     /* "q4_1"; NULL for ids that are not types          */
    int blck_size;        /* elements per block (1 for scalar types)          */
    size_t type_size;     /* bytes per block                                  */
    bool quantized;
    /* Reference dequantization of one row of n elements (n % blck_size == 0).
     * NULL for integer types. This is the plain oracle every backend is tested against. */
    void (*to_f32)(const void *src, float *dst, int64_t n);
    /* Reference quantization of a row (NULL where not implemented). */
    void (*from_f32)(const float *src, void *dst, int64_t n);
} lethe_dtype_traits;

/* Traits of a type, or NULL if `t` is not a known type id. */
const lethe_dtype_traits *lethe_dtype_get(int t);
const char *lethe_dtype_name(int t);        /* "?" if unknown */
/* Bytes of a row of n elements; 0 if n is not a multiple of the block size. */
size_t lethe_row_size(lethe_dtype t, int64_t n);
/* Can the engine compute with weights of this type? */
bool lethe_dtype_supported(int t);

float lethe_f16_to_f32(lethe_f16 h);
lethe_f16 lethe_f32_to_f16(float f);        /* round to nearest even */
float lethe_bf16_to_f32(lethe_bf16 h);
lethe_bf16 lethe_f32_to_bf16(float f);      /* round to nearest even */

#endif
