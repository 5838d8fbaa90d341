#version 450
// kv_store.comp — KV_STORE on the device, in two variants:
//   rows  (default): k, v [T, Hkv, D] f32 -> the token's reserved slot of its
//         head stream, converted to the cache dtype (F16: two halves per word);
//   flags (-DDMS_FLAGS): decision [T, Hkv] f32; a positive logit sets the
//         expire of the sequence's previous token in that stream.
// Legend: T tokens, Hkv KV heads, D head dim, r = t * Hkv + h a (token, head)
// row. The KV binding is the cache's shared buffer (kv_cache.h: pool, then
// pos, then expire) read as 32-bit words. The host resolves every address
// from its bookkeeping (slots reserved, previous tokens) into meta
// [T * Hkv][4] = {K row word, V row word, expire word of the previous token
// or -1, its new expire}, so the shaders only move data.
#include "common.glsl"
layout(local_size_x_id = 0) in;
#if defined(DMS_FLAGS)
layout(binding = 0) readonly buffer Dec { float dec[]; };
layout(binding = 1) buffer KV { uint kv[]; };
layout(binding = 2) readonly buffer Meta { int meta[]; };
layout(push_constant) uniform P { uint n_rows, dec_off, meta_off; } p;

void main() {
    uint r = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (r >= p.n_rows) return;
    int e = meta[p.meta_off + r * 4u + 2u];
    // every previous token is flagged by exactly one (t, h): no two rows write one word
    if (e >= 0 && dec[p.dec_off + r] > 0.0) kv[uint(e)] = uint(meta[p.meta_off + r * 4u + 3u]);
}
#else
layout(binding = 0) readonly buffer K { float k[]; };
layout(binding = 1) readonly buffer V { float v[]; };
layout(binding = 2) buffer KV { uint kv[]; };
layout(binding = 3) readonly buffer Meta { int meta[]; };
layout(push_constant) uniform P {
    uint D, n_rows, k_off, v_off, meta_off;
    uint f16;           // cache dtype: 1 F16 (D even), 0 F32
} p;

void main() {
    uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    uint words = p.f16 != 0u ? p.D / 2u : p.D;   // one invocation per word of a row
    if (i >= p.n_rows * words) return;
    uint r = i / words, w = i % words;
    uint kw = uint(meta[p.meta_off + r * 4u]), vw = uint(meta[p.meta_off + r * 4u + 1u]);
    uint src = r * p.D;
    if (p.f16 != 0u) {
        uint d = 2u * w;
        // f16_bits, not packHalf2x16: the CPU's round-to-nearest-even, subnormals kept
        kv[kw + w] = f16_bits(k[p.k_off + src + d]) | (f16_bits(k[p.k_off + src + d + 1u]) << 16);
        kv[vw + w] = f16_bits(v[p.v_off + src + d]) | (f16_bits(v[p.v_off + src + d + 1u]) << 16);
    } else {
        kv[kw + w] = floatBitsToUint(k[p.k_off + src + w]);
        kv[vw + w] = floatBitsToUint(v[p.v_off + src + w]);
    }
}
#endif
