// dequant.glsl — element k of a weight row whose first byte is byte `rb` of
// the weight binding `wq` (uint words), for WTYPE = the lethe_dtype id
// (= GGML's). Block layouts are GGUF's (core/dtype.h). The includer declares
//   layout(binding = 0) readonly buffer Wq { uint wq[]; };
// Every block starts at an even byte, so 16-bit reads never straddle words.

uint wq_u8(uint b) { return (wq[b >> 2] >> ((b & 3u) << 3)) & 0xFFu; }
uint wq_u16(uint b) { return (wq[b >> 2] >> ((b & 2u) << 3)) & 0xFFFFu; }
// 4 bytes from an even byte offset (block fields are 2-aligned, not 4-aligned)
uint wq_u32(uint b) {
    uint i = b >> 2;
    return (b & 2u) == 0u ? wq[i] : (wq[i] >> 16) | (wq[i + 1u] << 16);
}
float wq_f16(uint b) { return f16_value(wq_u16(b)); }

#if WTYPE == 0          // f32
float deq(uint rb, uint k) { return uintBitsToFloat(wq[(rb >> 2) + k]); }
#elif WTYPE == 1        // f16
float deq(uint rb, uint k) { return wq_f16(rb + 2u * k); }
#elif WTYPE == 30       // bf16: the high half of an f32
float deq(uint rb, uint k) { return uintBitsToFloat(wq_u16(rb + 2u * k) << 16); }
#elif WTYPE == 2        // q4_0 {f16 d; u8 qs[16]}: (q - 8) * d, low nibbles first
float deq(uint rb, uint k) {
    uint b = rb + (k >> 5) * 18u, j = k & 31u;
    uint q = wq_u8(b + 2u + (j & 15u));
    q = j < 16u ? (q & 15u) : (q >> 4);
    return (float(q) - 8.0) * wq_f16(b);
}
#elif WTYPE == 3        // q4_1 {f16 d, m; u8 qs[16]}: q * d + m
float deq(uint rb, uint k) {
    uint b = rb + (k >> 5) * 20u, j = k & 31u;
    uint q = wq_u8(b + 4u + (j & 15u));
    q = j < 16u ? (q & 15u) : (q >> 4);
    return float(q) * wq_f16(b) + wq_f16(b + 2u);
}
#elif WTYPE == 6        // q5_0 {f16 d; u8 qh[4]; u8 qs[16]}: bit j of qh is element j's 5th bit
float deq(uint rb, uint k) {
    uint b = rb + (k >> 5) * 22u, j = k & 31u;
    uint qh = wq_u8(b + 2u + (j >> 3));
    uint q = wq_u8(b + 6u + (j & 15u));
    q = (j < 16u ? (q & 15u) : (q >> 4)) | (((qh >> (j & 7u)) & 1u) << 4);
    return (float(q) - 16.0) * wq_f16(b);
}
#elif WTYPE == 7        // q5_1 {f16 d, m; u8 qh[4]; u8 qs[16]}
float deq(uint rb, uint k) {
    uint b = rb + (k >> 5) * 24u, j = k & 31u;
    uint qh = wq_u8(b + 4u + (j >> 3));
    uint q = wq_u8(b + 8u + (j & 15u));
    q = (j < 16u ? (q & 15u) : (q >> 4)) | (((qh >> (j & 7u)) & 1u) << 4);
    return float(q) * wq_f16(b) + wq_f16(b + 2u);
}
#elif WTYPE == 8        // q8_0 {f16 d; i8 qs[32]}
float deq(uint rb, uint k) {
    uint b = rb + (k >> 5) * 34u, j = k & 31u;
    int q = int(wq_u8(b + 2u + j));
    q = q >= 128 ? q - 256 : q;
    return float(q) * wq_f16(b);
}
#else
#error "dequant.glsl: unsupported WTYPE"
#endif

// Integer view of the 32-element block types, for the q8 activation path
// (the CPU backend's arithmetic): a block at byte wb has scale d, offset m and
// quants u_j with w_j = d * u_j + m; q8_0's u_j are signed and m = 0.
#if WTYPE == 2 || WTYPE == 3 || WTYPE == 6 || WTYPE == 7 || WTYPE == 8
#define QBLOCK 1
#if WTYPE == 2
#define BS 18u
void wscale(uint wb, out float d, out float m) { d = wq_f16(wb); m = -8.0 * d; }
int wq_q(uint wb, uint j) { uint q = wq_u8(wb + 2u + (j & 15u)); return int(j < 16u ? (q & 15u) : (q >> 4)); }
#elif WTYPE == 3
#define BS 20u
void wscale(uint wb, out float d, out float m) { d = wq_f16(wb); m = wq_f16(wb + 2u); }
int wq_q(uint wb, uint j) { uint q = wq_u8(wb + 4u + (j & 15u)); return int(j < 16u ? (q & 15u) : (q >> 4)); }
#elif WTYPE == 6
#define BS 22u
void wscale(uint wb, out float d, out float m) { d = wq_f16(wb); m = -16.0 * d; }
int wq_q(uint wb, uint j) {
    uint q = wq_u8(wb + 6u + (j & 15u)), qh = wq_u8(wb + 2u + (j >> 3));
    return int((j < 16u ? (q & 15u) : (q >> 4)) | (((qh >> (j & 7u)) & 1u) << 4));
}
#elif WTYPE == 7
#define BS 24u
void wscale(uint wb, out float d, out float m) { d = wq_f16(wb); m = wq_f16(wb + 2u); }
int wq_q(uint wb, uint j) {
    uint q = wq_u8(wb + 8u + (j & 15u)), qh = wq_u8(wb + 4u + (j >> 3));
    return int((j < 16u ? (q & 15u) : (q >> 4)) | (((qh >> (j & 7u)) & 1u) << 4));
}
#else
#define BS 34u
void wscale(uint wb, out float d, out float m) { d = wq_f16(wb); m = 0.0; }
int wq_q(uint wb, uint j) { int q = int(wq_u8(wb + 2u + j)); return q >= 128 ? q - 256 : q; }
#endif
#endif

#if defined(QBLOCK) && defined(ACT_Q8)
// byte offsets of qs and qh inside a block
uint qs_off_() { return WTYPE == 2 ? 2u : WTYPE == 3 ? 4u : WTYPE == 6 ? 6u : WTYPE == 7 ? 8u : 2u; }
uint qh_off_() { return WTYPE == 6 ? 2u : 4u; }
// Integer dot of the weight block at byte wb with the q8 activation block
// at word xb of `xq` (declared by the includer), over the elements the CPU
// backend's SIMD lane `j` (0..7) sums: 4j .. 4j+3 (activation word j). The
// CPU accumulates each lane in float on its own (cpu_quant.c, DEF_DOT32_AVX2
// / DEF_TILE512), so the GEMV reproduces its sums lane by lane.
int lane_idot(uint wb, uint xb, uint j) {
    int x = int(xq[xb + 2u + j]), s = 0;
#if WTYPE == 8
    int q = int(wq_u32(wb + 2u + 4u * j));
    [[unroll]] for (int k = 0; k < 32; k += 8) s += bitfieldExtract(q, k, 8) * bitfieldExtract(x, k, 8);
#else
    // q4/q5: elements 0..15 are the low nibbles of qs[0..15], 16..31 the high ones
    uint q = wq_u32(wb + qs_off_() + 4u * (j & 3u)), sh = j < 4u ? 0u : 4u;
#if WTYPE == 6 || WTYPE == 7
    uint qh = wq_u32(wb + qh_off_()) >> (4u * j);
#endif
    [[unroll]] for (uint k = 0u; k < 4u; k++) {
        uint u = (q >> (8u * k + sh)) & 15u;
#if WTYPE == 6 || WTYPE == 7
        u |= ((qh >> k) & 1u) << 4;
#endif
        s += int(u) * bitfieldExtract(x, int(8u * k), 8);
    }
#endif
    return s;
}
#endif
