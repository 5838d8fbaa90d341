#version 450
// kv_store.comp — KV_STORE on the device, in two variants:
//   rows  (default): k, v [T, Hkv, D] f32 -> the token's reserved slot of its
//         head stream, converted to the cache dtype (F16: two halves per word);
//   flags (-DDMS_FLAGS): decision [T, Hkv] f32; a positive logit sets the
//         expire of the sequence's previous token in that stream.
// Each again with -DKV_SPLIT: the cache over several bindings (kv_split.glsl).
// Legend: T tokens, Hkv KV heads, D head dim, r = t * Hkv + h a (token, head)
// row. The KV binding is the cache's shared buffer (kv_cache.h: pool, then
// pos, then expire) read as 32-bit words. The host resolves every address
// from its bookkeeping (slots reserved, previous tokens) into meta
// [T * Hkv][META], so the shaders only move data:
//   one binding (META 4): {K row word, V row word, expire word of the
//     previous token or -1, its new expire};
//   split (META 8): {K binding, K word, V binding, V word, expire binding,
//     expire word or -1, new expire, 0}.
#include "common.glsl"
layout(local_size_x_id = 0) in;
#ifdef KV_SPLIT
#define META 8u
#define M_KB 0u
#define M_KW 1u
#define M_VB 2u
#define M_VW 3u
#define M_EB 4u
#define M_EW 5u
#define M_EV 6u
#else
#define META 4u
#define M_KW 0u
#define M_VW 1u
#define M_EW 2u
#define M_EV 3u
#endif
#if defined(DMS_FLAGS)
layout(binding = 0) readonly buffer Dec { float dec[]; };
layout(binding = 1) buffer KV { uint kv[]; };
layout(binding = 2) readonly buffer Meta { int meta[]; };
layout(push_constant) uniform P { uint n_rows, dec_off, meta_off, n_bind; } p;
#include "kv_split.glsl"

void main() {
    uint r = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (r >= p.n_rows) return;
    int e = meta[p.meta_off + r * META + M_EW];
#ifdef KV_SPLIT
    uint eb = uint(meta[p.meta_off + r * META + M_EB]);
#else
    uint eb = 0u;
#endif
    // every previous token is flagged by exactly one (t, h): no two rows write one word
    if (e >= 0 && dec[p.dec_off + r] > 0.0) kv_store_word(eb, uint(e), uint(meta[p.meta_off + r * META + M_EV]));
}
#else
layout(binding = 0) readonly buffer K { float k[]; };
layout(binding = 1) readonly buffer V { float v[]; };
layout(binding = 2) buffer KV { uint kv[]; };
layout(binding = 3) readonly buffer Meta { int meta[]; };
layout(push_constant) uniform P {
    uint D, n_rows, k_off, v_off, meta_off;
    uint f16;           // cache dtype: 1 F16 (D even), 0 F32
    uint n_bind;        // KV_SPLIT: bindings in use
} p;
#include "kv_split.glsl"

void main() {
    uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    uint words = p.f16 != 0u ? p.D / 2u : p.D;   // one invocation per word of a row
    if (i >= p.n_rows * words) return;
    uint r = i / words, w = i % words;
    uint kw = uint(meta[p.meta_off + r * META + M_KW]), vw = uint(meta[p.meta_off + r * META + M_VW]);
#ifdef KV_SPLIT
    uint kb = uint(meta[p.meta_off + r * META + M_KB]), vb = uint(meta[p.meta_off + r * META + M_VB]);
#else
    uint kb = 0u, vb = 0u;
#endif
    uint src = r * p.D;
    uint kx, vx;
    if (p.f16 != 0u) {
        uint d = 2u * w;
        // f16_bits, not packHalf2x16: the CPU's round-to-nearest-even, subnormals kept
        kx = f16_bits(k[p.k_off + src + d]) | (f16_bits(k[p.k_off + src + d + 1u]) << 16);
        vx = f16_bits(v[p.v_off + src + d]) | (f16_bits(v[p.v_off + src + d + 1u]) << 16);
    } else {
        kx = floatBitsToUint(k[p.k_off + src + w]);
        vx = floatBitsToUint(v[p.v_off + src + w]);
    }
    kv_store_word(kb, kw + w, kx);
    kv_store_word(vb, vw + w, vx);
}
#endif
