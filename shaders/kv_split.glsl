// kv_split.glsl — the KV cache's shared buffer seen through one binding or,
// in the KV_SPLIT variants, through several (backends/vulkan/vk_ops.c).
//
// The buffer (kv_cache.h: pool of pages, then pos, then expire) is read as
// 32-bit words. A device binds at most maxStorageBufferRange bytes per
// descriptor (128 MiB on lavapipe); a larger cache is cut into chunks of
// `chunk_pages` whole pages (= chunk_words words), chunk i bound as kvs[i]
// (set 1, binding 0, an array of KV_MAX_BIND). Chunks are whole pages, so no
// K or V row straddles two bindings; pos and expire are single words, each
// in exactly one chunk: word `x` of the buffer is kvs[x / chunk_words]
// .w[x % chunk_words]. The host hands the shaders (binding, word) pairs, or
// page numbers, never a buffer-wide word index, so a cache may exceed the
// 2^32 words of a uint.
//
// Indexing: many devices lack shaderStorageBufferArrayNonUniformIndexing
// (lavapipe does), so an index into kvs[] must be dynamically uniform. An
// access whose binding differs between invocations goes through a loop over
// the bindings (kv_load / kv_store_word / the callers' own loops): the loop
// counter, the same in every invocation, is the index, and each invocation
// does its access in the iteration equal to its binding. Rows read by a
// whole workgroup at once (attention's V rows) index kvs[] directly.
//
// Needs, before the #include: the push-constant block `p` with n_bind (the
// bindings in use); KV_READONLY defined for the shaders that only read.

#define KV_MAX_BIND 28   // = LETHE_VK_KV_MAX_BIND (vk_internal.h)

#ifdef KV_SPLIT
#ifdef KV_READONLY
layout(set = 1, binding = 0) readonly buffer KVS { uint w[]; } kvs[KV_MAX_BIND];
#else
layout(set = 1, binding = 0) buffer KVS { uint w[]; } kvs[KV_MAX_BIND];
#endif
#define KVW(b, i) kvs[b].w[i]   // b dynamically uniform

uint kv_load(uint b, uint i) {
    uint r = 0u;
    for (uint k = 0u; k < p.n_bind; k++)
        if (k == b) r = kvs[k].w[i];
    return r;
}

#ifndef KV_READONLY
void kv_store_word(uint b, uint i, uint v) {
    for (uint k = 0u; k < p.n_bind; k++)
        if (k == b) kvs[k].w[i] = v;
}
#endif
#else
#define KVW(b, i) kv[i]
#define kv_load(b, i) kv[i]
#define kv_store_word(b, i, v) kv[i] = (v)
#endif
