// common.glsl — shared by every lethe compute shader.
//
// Conventions (backends/vulkan/vk_ops.c binds to them):
//   set 0, bindings 0..3: storage buffers (a dispatch binds up to four);
//   push constants: a per-shader block of at most 128 bytes; element offsets
//   into each binding are push constants too (buffers are bound at offsets
//   rounded down to the device's minStorageBufferOffsetAlignment);
//   workgroup sizes are specialization constant 0 (local_size_x_id = 0).
// Everything is read as 32-bit words or floats, so no shader needs the 8- or
// 16-bit storage features.
#extension GL_EXT_control_flow_attributes : enable

// binary16 bits -> f32 by hand: unpackHalf2x16 may flush f16 subnormals to
// zero (lavapipe does), and quantized blocks of small weights have subnormal
// scales; the CPU backend keeps them.
float f16_value(uint h) {
    uint sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0u) return uintBitsToFloat(sign | floatBitsToUint(float(m) * 5.9604644775390625e-8));
    if (e == 31u) return uintBitsToFloat(sign | 0x7F800000u | (m << 13));
    return uintBitsToFloat(sign | ((e + 112u) << 23) | (m << 13));
}
// f32 -> binary16 bits, round to nearest even, subnormals kept: the CPU's
// F16C conversion. packHalf2x16 may round toward zero or flush subnormals.
uint f16_bits(float v) {
    uint u = floatBitsToUint(v), sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7E00u;                      // NaN
    if (a >= 0x477FF000u) return sign | 0x7C00u;                     // rounds to inf
    if (a < 0x38800000u) {                                           // f16 subnormal or zero: quantum 2^-24
        return sign | uint(roundEven(uintBitsToFloat(a) * 16777216.0));
    }
    uint rem = a & 0x1FFFu, h = ((a - 0x38000000u) >> 13);          // rebias 127 -> 15
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0u)) h++;
    return sign | h;
}
