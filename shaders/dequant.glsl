// dequant.glsl — element k of a weight row whose first byte is byte `rb` of
// the weight binding `wq` (uint words), for WTYPE = the lethe_dtype id
// (= GGML's). Block layouts are GGUF's (core/dtype.h). The includer declares
//   layout(binding = 0) readonly buffer Wq { uint wq[]; };
// Every block starts at an even byte, so 16-bit reads never straddle words.

uint wq_u8(uint b) { return (wq[b >> 2] >> ((b & 3u) << 3)) & 0xFFu; }
uint wq_u16(uint b) { return (wq[b >> 2] >> ((b & 2u) << 3)) & 0xFFFFu; }
float wq_f16(uint b) { return unpackHalf2x16(wq_u16(b)).x; }

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
