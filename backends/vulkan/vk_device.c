/* vk_device.c — the Vulkan backend's device side: instance and device
 * selection, feature probing, memory, buffers and staging, pipelines (all
 * built once, at creation), and the backend's life. See vk_internal.h. */
#include "vk_internal.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

const char *lethe_vk_check(VkResult r) {
    switch (r) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_LAYER_NOT_PRESENT: return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_OUT_OF_POOL_MEMORY: return "VK_ERROR_OUT_OF_POOL_MEMORY";
    case VK_ERROR_INVALID_SHADER_NV: return "VK_ERROR_INVALID_SHADER_NV";
    case VK_TIMEOUT: return "VK_TIMEOUT";
    default: return "VK_ERROR (other)";
    }
}

#define VKF(call, what)                                                                          \
    do {                                                                                         \
        VkResult r_ = (call);                                                                    \
        if (r_ != VK_SUCCESS) return lethe_fail(LETHE_ERR_BACKEND, "vulkan: %s failed: %s", what, \
                                                lethe_vk_check(r_));                             \
    } while (0)

/* ------------------------------------------------------------- memory */

static int find_memory(const vk_ctx *c, uint32_t bits, VkMemoryPropertyFlags want) {
    for (uint32_t i = 0; i < c->mem_props.memoryTypeCount; i++)
        if ((bits & (1u << i)) && (c->mem_props.memoryTypes[i].propertyFlags & want) == want) return (int)i;
    return -1;
}

/* A buffer of `size` bytes, mapped if host_visible, in the memory type that
 * `pick` chooses from the buffer's memoryTypeBits (setting *flag as it
 * likes), or without `pick` the first host-visible coherent type
 * (host_visible) or device-local one. */
typedef int (*type_pick_fn)(const vk_ctx *c, uint32_t bits, VkDeviceSize size, bool *flag);

static lethe_status buf_create_with(vk_ctx *c, VkDeviceSize size, bool host_visible, type_pick_fn pick,
                                    bool *flag, vk_buf *out);

lethe_status lethe_vk_buf_create(vk_ctx *c, VkDeviceSize size, bool host_visible, vk_buf *out) {
    return buf_create_with(c, size, host_visible, NULL, NULL, out);
}

/* The shared buffer (vk_buffer_alloc_shared): host-visible, in the memory
 * shared_memory_type prefers; if that allocation fails (a BAR heap too full
 * for it), in plain host-visible memory. */
static int shared_memory_type(const vk_ctx *c, uint32_t bits, VkDeviceSize size, bool *device_local);
static int host_memory_type(const vk_ctx *c, uint32_t bits, VkDeviceSize size, bool *device_local) {
    (void)size;
    *device_local = false;
    return find_memory(c, bits, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT);
}

static lethe_status buf_create_shared(vk_ctx *c, VkDeviceSize size, vk_buf *out, bool *device_local) {
    lethe_status st = buf_create_with(c, size, true, shared_memory_type, device_local, out);
    if (st != LETHE_OK && *device_local) {
        LETHE_LOGI("vulkan: device-local host-visible memory refused %.1f MiB (%s): trying host memory",
                   (double)size / 1048576.0, lethe_last_error());
        lethe_clear_error();
        st = buf_create_with(c, size, true, host_memory_type, device_local, out);
    }
    return st;
}

static lethe_status buf_create_with(vk_ctx *c, VkDeviceSize size, bool host_visible, type_pick_fn pick,
                                    bool *flag, vk_buf *out) {
    memset(out, 0, sizeof *out);
    size = (size + 15) & ~(VkDeviceSize)15;   /* never 0; shaders read whole words */
    if (size == 0) size = 16;
    VkBufferCreateInfo bi = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
        .size = size,
        .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                 VK_BUFFER_USAGE_TRANSFER_DST_BIT,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    VKF(vkCreateBuffer(c->dev, &bi, NULL, &out->buf), "vkCreateBuffer");
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(c->dev, out->buf, &req);
    int type = pick ? pick(c, req.memoryTypeBits, req.size, flag)
        : host_visible
        ? find_memory(c, req.memoryTypeBits, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT)
        : find_memory(c, req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
    if (type < 0 && !host_visible) type = find_memory(c, req.memoryTypeBits, 0);
    if (type < 0) {
        vkDestroyBuffer(c->dev, out->buf, NULL);
        out->buf = VK_NULL_HANDLE;
        return lethe_fail(LETHE_ERR_BACKEND, "vulkan: no %s memory type for a buffer",
                          host_visible ? "host-visible coherent" : "device");
    }
    VkMemoryAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
        .allocationSize = req.size,
        .memoryTypeIndex = (uint32_t)type,
    };
    VkResult r = vkAllocateMemory(c->dev, &ai, NULL, &out->mem);
    if (r != VK_SUCCESS) {
        vkDestroyBuffer(c->dev, out->buf, NULL);
        out->buf = VK_NULL_HANDLE;
        return lethe_fail(r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY ? LETHE_ERR_OOM
                                                                                                 : LETHE_ERR_BACKEND,
                          "vulkan: cannot allocate %.1f MiB of %s memory: %s", (double)size / 1048576.0,
                          host_visible ? "host-visible" : "device", lethe_vk_check(r));
    }
    vkBindBufferMemory(c->dev, out->buf, out->mem, 0);
    out->size = size;
    out->mem_type = (uint32_t)type;
    if (host_visible) {
        r = vkMapMemory(c->dev, out->mem, 0, VK_WHOLE_SIZE, 0, &out->map);
        if (r != VK_SUCCESS) {
            lethe_vk_buf_destroy(c, out);
            return lethe_fail(LETHE_ERR_BACKEND, "vulkan: vkMapMemory failed: %s", lethe_vk_check(r));
        }
    }
    return LETHE_OK;
}

void lethe_vk_buf_destroy(vk_ctx *c, vk_buf *b) {
    if (!b || !c->dev) return;
    if (b->buf) vkDestroyBuffer(c->dev, b->buf, NULL);
    if (b->mem) vkFreeMemory(c->dev, b->mem, NULL);
    memset(b, 0, sizeof *b);
}

VkResult lethe_vk_queue_submit(vk_ctx *c, const VkSubmitInfo *si, VkFence fence) {
    pthread_mutex_lock(&c->d->queue_mu);
    VkResult r = vkQueueSubmit(c->queue, 1, si, fence);
    pthread_mutex_unlock(&c->d->queue_mu);
    return r;
}

/* Run the transfer command buffer recorded by `rec` and wait for it. */
lethe_status lethe_vk_xfer_begin(vk_ctx *c) {
    VKF(vkResetCommandBuffer(c->xfer, 0), "vkResetCommandBuffer");
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                   .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    VKF(vkBeginCommandBuffer(c->xfer, &bi), "vkBeginCommandBuffer");
    return LETHE_OK;
}

lethe_status lethe_vk_xfer_submit(vk_ctx *c) {
    VKF(vkEndCommandBuffer(c->xfer), "vkEndCommandBuffer");
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &c->xfer};
    VKF(vkResetFences(c->dev, 1, &c->fence), "vkResetFences");
    VKF(lethe_vk_queue_submit(c, &si, c->fence), "vkQueueSubmit (transfer)");
    VKF(vkWaitForFences(c->dev, 1, &c->fence, VK_TRUE, UINT64_MAX), "vkWaitForFences (transfer)");
    return LETHE_OK;
}

static lethe_status ensure_staging(vk_ctx *c, size_t need) {
    if (c->staging.buf && c->staging.size >= need) return LETHE_OK;
    lethe_vk_buf_destroy(c, &c->staging);
    return lethe_vk_buf_create(c, need, true, &c->staging);
}

/* Copies go through a staging buffer of at most 64 MiB, in pieces. */
#define STAGING_MAX ((size_t)64 << 20)

lethe_status lethe_vk_write(vk_ctx *c, VkBuffer dst, VkDeviceSize offs, const void *src, size_t size) {
    lethe_status st = ensure_staging(c, LETHE_MIN(size, STAGING_MAX));
    if (st != LETHE_OK) return st;
    for (size_t done = 0; done < size;) {
        size_t n = LETHE_MIN(size - done, (size_t)c->staging.size);
        memcpy(c->staging.map, (const uint8_t *)src + done, n);
        if ((st = lethe_vk_xfer_begin(c)) != LETHE_OK) return st;
        VkBufferCopy cp = {.srcOffset = 0, .dstOffset = offs + done, .size = n};
        vkCmdCopyBuffer(c->xfer, c->staging.buf, dst, 1, &cp);
        if ((st = lethe_vk_xfer_submit(c)) != LETHE_OK) return st;
        done += n;
    }
    return LETHE_OK;
}

lethe_status lethe_vk_read(vk_ctx *c, VkBuffer src, VkDeviceSize offs, void *dst, size_t size) {
    lethe_status st = ensure_staging(c, LETHE_MIN(size, STAGING_MAX));
    if (st != LETHE_OK) return st;
    for (size_t done = 0; done < size;) {
        size_t n = LETHE_MIN(size - done, (size_t)c->staging.size);
        if ((st = lethe_vk_xfer_begin(c)) != LETHE_OK) return st;
        VkBufferCopy cp = {.srcOffset = offs + done, .dstOffset = 0, .size = n};
        vkCmdCopyBuffer(c->xfer, src, c->staging.buf, 1, &cp);
        if ((st = lethe_vk_xfer_submit(c)) != LETHE_OK) return st;
        memcpy((uint8_t *)dst + done, c->staging.map, n);
        done += n;
    }
    return LETHE_OK;
}

/* The device's weight cache: one copy per host range, whichever backend
 * asks first uploads it (through its own staging; the others wait on the
 * lock, then find it). Lookups return a VkBuffer handle, which stays valid
 * until lethe_backend_vulkan_forget drops it (its model is freed, so no
 * backend records it any more) or the device goes. */
lethe_status lethe_vk_weight(vk_ctx *c, const void *host, size_t size, VkBuffer *out) {
    vk_device *d = c->d;
    lethe_status st = LETHE_OK;
    pthread_mutex_lock(&d->weights_mu);
    for (int i = 0; i < d->n_weights; i++)
        if (d->weights[i].host == host && d->weights[i].size == size) {
            *out = d->weights[i].b.buf;
            goto out;
        }
    if (d->n_weights == d->cap_weights) {
        int cap = d->cap_weights ? 2 * d->cap_weights : 64;
        vk_weight *w = realloc(d->weights, (size_t)cap * sizeof *w);
        if (!w) { st = lethe_fail(LETHE_ERR_OOM, "vulkan: weight table"); goto out; }
        d->weights = w;
        d->cap_weights = cap;
    }
    vk_weight *w = &d->weights[d->n_weights];
    memset(w, 0, sizeof *w);
    if ((st = lethe_vk_buf_create(c, size, false, &w->b)) != LETHE_OK) goto out;
    if ((st = lethe_vk_write(c, w->b.buf, 0, host, size)) != LETHE_OK) {
        lethe_vk_buf_destroy(c, &w->b);
        goto out;
    }
    w->host = host;
    w->size = size;
    d->n_weights++;
    d->weight_bytes += size;
    d->uploads++;
    *out = w->b.buf;
out:
    pthread_mutex_unlock(&d->weights_mu);
    return st;
}

/* ------------------------------------------------------------ buffers */

static lethe_status vk_buffer_alloc(lethe_backend *be, size_t size, lethe_buffer **out) {
    vk_ctx *c = be->ctx;
    *out = NULL;
    lethe_buffer *b = calloc(1, sizeof *b);
    vk_buf *vb = calloc(1, sizeof *vb);
    if (!b || !vb) {
        free(b);
        free(vb);
        return lethe_fail(LETHE_ERR_OOM, "vulkan: buffer handle");
    }
    lethe_status st = lethe_vk_buf_create(c, size, false, vb);
    if (st != LETHE_OK) {
        free(b);
        free(vb);
        return st;
    }
    b->backend = be;
    b->size = size;
    b->impl = vb;
    *out = b;
    return LETHE_OK;
}

/* The memory of the shared buffer. The shaders read the KV cache at every
 * step and the host touches only what it evicts, moves or saves, so the
 * best home is device-local memory the host can map: every type of a
 * discrete GPU's resizable BAR (DEVICE_LOCAL | HOST_VISIBLE | HOST_COHERENT),
 * or any type of an integrated GPU or lavapipe, where all memory is both.
 * Such a type is taken when its heap is large enough for the buffer (a
 * 256 MiB BAR without resizable BAR rarely is); else the first host-visible
 * coherent type, system memory the GPU reads over the bus (PCIe on a
 * discrete GPU: far slower than its own memory). The Vulkan spec orders
 * types of equal properties by performance, so the first match of each
 * kind is the one to take. LETHE_VK_KV_MEMORY=host forces the second. */
static int shared_memory_type(const vk_ctx *c, uint32_t bits, VkDeviceSize size, bool *device_local) {
    const VkMemoryPropertyFlags hv = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    const char *env = getenv("LETHE_VK_KV_MEMORY");
    const bool host_only = env && strcmp(env, "host") == 0;
    *device_local = false;
    if (!host_only)
        for (uint32_t i = 0; i < c->mem_props.memoryTypeCount; i++) {
            const VkMemoryType *t = &c->mem_props.memoryTypes[i];
            if ((bits & (1u << i)) && (t->propertyFlags & (hv | VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)) ==
                                          (hv | VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) &&
                c->mem_props.memoryHeaps[t->heapIndex].size >= size) {
                *device_local = true;
                return (int)i;
            }
        }
    return find_memory(c, bits, hv);
}

/* Host-visible, coherent memory mapped for the buffer's life: the host
 * reads and writes it with plain pointers (host_ptr) between computes, the
 * shaders bind it (the KV pool and its per-slot metadata, kv_cache.h).
 * Coherent memory needs no flush: host writes made before vkQueueSubmit are
 * visible to the submitted work, and compute() ends with a shader-write ->
 * host-read barrier and waits on its fence before the host reads. */
static lethe_status vk_buffer_alloc_shared(lethe_backend *be, size_t size, lethe_buffer **out) {
    vk_ctx *c = be->ctx;
    *out = NULL;
    /* maxBufferSize bounds a VkBuffer (a larger one is invalid usage);
     * maxMemoryAllocationSize is a soft limit (the spec lets a larger
     * allocation fail with VK_ERROR_OUT_OF_DEVICE_MEMORY, NVIDIA's succeed):
     * past it, try and say so */
    if (c->max_buffer && size > c->max_buffer) {
        /* kv_cache.c then keeps the pool in host memory: the KV ops run on the CPU */
        LETHE_LOGW("vulkan: a shared buffer of %.1f MiB exceeds the device's maxBufferSize of %.1f MiB: "
                   "the KV cache stays in host memory and its ops run on the CPU",
                   (double)size / 1048576.0, (double)c->max_buffer / 1048576.0);
        return lethe_fail(LETHE_ERR_OOM, "vulkan: shared buffer of %zu bytes exceeds maxBufferSize", size);
    }
    if (c->max_alloc && size > c->max_alloc)
        LETHE_LOGI("vulkan: a shared buffer of %.1f MiB exceeds maxMemoryAllocationSize (%.1f MiB), a soft limit: "
                   "trying", (double)size / 1048576.0, (double)c->max_alloc / 1048576.0);
    lethe_buffer *b = calloc(1, sizeof *b);
    vk_buf *vb = calloc(1, sizeof *vb);
    if (!b || !vb) {
        free(b);
        free(vb);
        return lethe_fail(LETHE_ERR_OOM, "vulkan: buffer handle");
    }
    bool device_local = false;
    lethe_status st = buf_create_shared(c, size, vb, &device_local);
    if (st != LETHE_OK) {
        /* kv_cache.c clears the error and keeps the pool in host memory: say so here */
        LETHE_LOGW("vulkan: no shared buffer of %.1f MiB (%s): the KV cache stays in host memory and its ops run "
                   "on the CPU", (double)size / 1048576.0, lethe_last_error());
        free(b);
        free(vb);
        return st;
    }
    /* where the KV cache lives decides what each decode step costs: say it */
    const VkMemoryType *mt = &c->mem_props.memoryTypes[vb->mem_type];
    const char *env = getenv("LETHE_VK_KV_MEMORY");
    LETHE_LOGI("vulkan: shared buffer (KV cache) of %zu KiB in memory type %u, heap %u of %.0f MiB: %s%s",
               size >> 10, vb->mem_type, mt->heapIndex,
               (double)c->mem_props.memoryHeaps[mt->heapIndex].size / 1048576.0,
               (mt->propertyFlags & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)
                   ? "device-local and host-visible (resizable BAR, or unified memory)"
                   : "host memory, read by the device over the bus",
               env && strcmp(env, "host") == 0 ? " (LETHE_VK_KV_MEMORY=host)"
               : device_local ? "" : " (no device-local host-visible type with a heap that large)");
    b->backend = be;
    b->size = size;
    b->host_ptr = vb->map;
    b->impl = vb;
    *out = b;
    return LETHE_OK;
}

static void vk_buffer_free(lethe_buffer *buf) {
    if (!buf) return;
    vk_ctx *c = buf->backend->ctx;
    /* vkDeviceWaitIdle externally synchronizes every queue of the device,
     * and other backends submit to the shared one */
    pthread_mutex_lock(&c->d->queue_mu);
    vkDeviceWaitIdle(c->dev);
    pthread_mutex_unlock(&c->d->queue_mu);
    vk_buf *vb = buf->impl;
    if (vb->kv_pool) vkDestroyDescriptorPool(c->dev, vb->kv_pool, NULL);   /* frees kv_set */
    lethe_vk_buf_destroy(c, buf->impl);
    free(buf->impl);
    free(buf);
}

static lethe_status vk_buffer_set(lethe_buffer *buf, size_t offs, const void *src, size_t size) {
    if (!buf || offs > buf->size || size > buf->size - offs)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "vulkan: buffer_set of %zu bytes at %zu is outside a buffer of %zu",
                          size, offs, buf ? buf->size : 0);
    if (!size) return LETHE_OK;
    return lethe_vk_write(buf->backend->ctx, ((vk_buf *)buf->impl)->buf, offs, src, size);
}

static lethe_status vk_buffer_get(lethe_buffer *buf, size_t offs, void *dst, size_t size) {
    if (!buf || offs > buf->size || size > buf->size - offs)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "vulkan: buffer_get of %zu bytes at %zu is outside a buffer of %zu",
                          size, offs, buf ? buf->size : 0);
    if (!size) return LETHE_OK;
    return lethe_vk_read(buf->backend->ctx, ((vk_buf *)buf->impl)->buf, offs, dst, size);
}

/* A device-to-device copy (lethe bench --roofline times it as the device's
 * bandwidth). Submitted and waited for here: the interface allows an
 * asynchronous copy, and the transfer command buffer is reused by the next
 * transfer, so this one finishes first. */
static lethe_status vk_buffer_copy(lethe_buffer *dst, size_t dst_offs, lethe_buffer *src, size_t src_offs,
                                   size_t size) {
    if (!dst || !src || dst->backend != src->backend || dst_offs > dst->size || size > dst->size - dst_offs ||
        src_offs > src->size || size > src->size - src_offs)
        return lethe_fail(LETHE_ERR_INVALID_ARG, "vulkan: buffer_copy of %zu bytes outside its buffers", size);
    if (!size) return LETHE_OK;
    vk_ctx *c = dst->backend->ctx;
    lethe_status st = lethe_vk_xfer_begin(c);
    if (st != LETHE_OK) return st;
    VkBufferCopy cp = {.srcOffset = src_offs, .dstOffset = dst_offs, .size = size};
    vkCmdCopyBuffer(c->xfer, ((vk_buf *)src->impl)->buf, ((vk_buf *)dst->impl)->buf, 1, &cp);
    return lethe_vk_xfer_submit(c);
}

/* KV row moves on the device (backend.h buffer_move_rows): the pool may be
 * device-local host-visible (BAR) memory, where host reads are uncached and
 * slow. Regions of one vkCmdCopyBuffer must not overlap, and a compaction's
 * later move may write an earlier one's source, so each chunk (at most
 * MOVE_CHUNK bytes of rows) is two copies through device scratch: every
 * source row into scratch, a transfer barrier, scratch into every
 * destination (disjoint by the contract); then a transfer -> host barrier,
 * and the submit waits. Checks and the scratch come before any copy. */
#define MOVE_CHUNK ((size_t)8 << 20)

static lethe_status vk_buffer_move_rows(lethe_buffer *buf, const lethe_row_move *moves, size_t n, size_t row_bytes) {
    if (!n) return LETHE_OK;
    if (!buf || !row_bytes) return lethe_fail(LETHE_ERR_INVALID_ARG, "vulkan: row moves of %zu bytes", row_bytes);
    for (size_t i = 0; i < n; i++)
        if (moves[i].src > buf->size || row_bytes > buf->size - moves[i].src || moves[i].dst > buf->size ||
            row_bytes > buf->size - moves[i].dst)
            return lethe_fail(LETHE_ERR_INVALID_ARG, "vulkan: row move %zu (%zu -> %zu, %zu bytes) past a buffer of %zu",
                              i, moves[i].src, moves[i].dst, row_bytes, buf->size);
    vk_ctx *c = buf->backend->ctx;
    const size_t chunk = LETHE_MIN(n, LETHE_MAX(MOVE_CHUNK / row_bytes, (size_t)1));
    if (c->moves.size < chunk * row_bytes) {
        lethe_vk_buf_destroy(c, &c->moves);
        lethe_status st = lethe_vk_buf_create(c, chunk * row_bytes, false, &c->moves);
        if (st != LETHE_OK) return st;
    }
    VkBufferCopy *reg = malloc(chunk * sizeof *reg);
    if (!reg) return lethe_fail(LETHE_ERR_OOM, "vulkan: row move regions");
    const VkBuffer pool = ((vk_buf *)buf->impl)->buf;
    lethe_status st = LETHE_OK;
    for (size_t b = 0; b < n && st == LETHE_OK; b += chunk) {
        const size_t m = LETHE_MIN(n - b, chunk);
        if ((st = lethe_vk_xfer_begin(c)) != LETHE_OK) break;
        for (size_t i = 0; i < m; i++)
            reg[i] = (VkBufferCopy){.srcOffset = moves[b + i].src, .dstOffset = i * row_bytes, .size = row_bytes};
        vkCmdCopyBuffer(c->xfer, pool, c->moves.buf, (uint32_t)m, reg);
        VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                              .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT,
                              .dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT};
        vkCmdPipelineBarrier(c->xfer, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 1, &mb, 0, NULL,
                             0, NULL);
        for (size_t i = 0; i < m; i++)
            reg[i] = (VkBufferCopy){.srcOffset = i * row_bytes, .dstOffset = moves[b + i].dst, .size = row_bytes};
        vkCmdCopyBuffer(c->xfer, c->moves.buf, pool, (uint32_t)m, reg);
        VkMemoryBarrier hb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                              .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT, .dstAccessMask = VK_ACCESS_HOST_READ_BIT};
        vkCmdPipelineBarrier(c->xfer, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &hb, 0, NULL, 0,
                             NULL);
        st = lethe_vk_xfer_submit(c);
    }
    free(reg);
    return st;
}

/* ---------------------------------------------------------- pipelines */

VkPipeline lethe_vk_pipeline(const vk_ctx *c, const char *name) {
    for (int i = 0; i < c->n_pipes; i++)
        if (strcmp(c->pipes[i].name, name) == 0) return c->pipes[i].pipe;
    return VK_NULL_HANDLE;
}

/* Workgroup size (specialization constant 0) per shader family. */
static uint32_t wg_size_for(const char *name) {
    if (strncmp(name, "matmul_vec", 10) == 0) return 32;
    if (strncmp(name, "rms_norm", 8) == 0) return 64;
    if (strcmp(name, "quantize_q8") == 0) return 64;
    /* attention and attention_split: = WG in shaders/attention.comp */
    if (strncmp(name, "attention", 9) == 0) return 64;
    /* quest_select and quest_select_split: = WG in shaders/quest.comp */
    if (strncmp(name, "quest_select", 12) == 0) return 64;
    return 256;
}

typedef struct vk_spec {    /* specialization constants 0 and 1 */
    uint32_t wg;
    VkBool32 native_fma;
} vk_spec;

bool lethe_vk_is_split_pipe(const char *name) {
    const size_t n = strlen(name);
    return n > 6 && strcmp(name + n - 6, "_split") == 0;
}

VkResult lethe_vk_make_pipeline(vk_ctx *c, const lethe_vk_spirv *s, uint32_t wg, bool native_fma, VkPipeline *out) {
    *out = VK_NULL_HANDLE;
    VkShaderModuleCreateInfo mi = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                                   .codeSize = s->size, .pCode = s->code};
    VkShaderModule mod;
    VkResult r = vkCreateShaderModule(c->dev, &mi, NULL, &mod);
    if (r != VK_SUCCESS) return r;
    /* a constant a shader does not declare (NATIVE_FMA outside exact.glsl's
     * users) is ignored by Vulkan's rules */
    const vk_spec spec = {wg, native_fma ? VK_TRUE : VK_FALSE};
    const VkSpecializationMapEntry me[2] = {
        {.constantID = 0, .offset = offsetof(vk_spec, wg), .size = sizeof(uint32_t)},
        {.constantID = 1, .offset = offsetof(vk_spec, native_fma), .size = sizeof(VkBool32)},
    };
    VkSpecializationInfo si = {.mapEntryCount = 2, .pMapEntries = me, .dataSize = sizeof spec, .pData = &spec};
    VkComputePipelineCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                  .module = mod, .pName = "main", .pSpecializationInfo = &si},
        .layout = lethe_vk_is_split_pipe(s->name) ? c->layout_kv : c->layout,
    };
    r = vkCreateComputePipelines(c->dev, VK_NULL_HANDLE, 1, &ci, NULL, out);
    vkDestroyShaderModule(c->dev, mod, NULL);
    if (r != VK_SUCCESS) *out = VK_NULL_HANDLE;
    return r;
}

/* Build every pipeline once. One that fails is logged and left NULL: the
 * ops needing it report unsupported and run on the CPU. LETHE_VK_FAIL_PIPELINE
 * (a variant name, or "all") simulates such a failure, for tests. */
static lethe_status build_pipelines(vk_ctx *c) {
    VkDescriptorSetLayoutBinding b[LETHE_VK_BINDINGS];
    for (int i = 0; i < LETHE_VK_BINDINGS; i++)
        b[i] = (VkDescriptorSetLayoutBinding){.binding = (uint32_t)i,
                                              .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                              .descriptorCount = 1,
                                              .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
    VkDescriptorSetLayoutCreateInfo dl = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                                          .bindingCount = LETHE_VK_BINDINGS, .pBindings = b};
    VKF(vkCreateDescriptorSetLayout(c->dev, &dl, NULL, &c->dsl), "vkCreateDescriptorSetLayout");
    VkPushConstantRange pr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .offset = 0, .size = LETHE_VK_PUSH_BYTES};
    VkPipelineLayoutCreateInfo pl = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                                     .setLayoutCount = 1, .pSetLayouts = &c->dsl,
                                     .pushConstantRangeCount = 1, .pPushConstantRanges = &pr};
    VKF(vkCreatePipelineLayout(c->dev, &pl, NULL, &c->layout), "vkCreatePipelineLayout");
    if (c->kv_split) {
        VkDescriptorSetLayoutBinding kb = {.binding = 0, .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                           .descriptorCount = LETHE_VK_KV_MAX_BIND,
                                           .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
        VkDescriptorSetLayoutCreateInfo kl = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                                              .bindingCount = 1, .pBindings = &kb};
        VKF(vkCreateDescriptorSetLayout(c->dev, &kl, NULL, &c->dsl_kv), "vkCreateDescriptorSetLayout (KV)");
        const VkDescriptorSetLayout sets[2] = {c->dsl, c->dsl_kv};
        VkPipelineLayoutCreateInfo pk = pl;
        pk.setLayoutCount = 2;
        pk.pSetLayouts = sets;
        VKF(vkCreatePipelineLayout(c->dev, &pk, NULL, &c->layout_kv), "vkCreatePipelineLayout (KV)");
    }

    /* NATIVE_FMA first: every pipeline below is built with the same value */
    lethe_vk_decide_native_fma(c);

    int n = 0;
    while (lethe_vk_spirv_table[n].name) n++;
    c->pipes = calloc((size_t)n, sizeof *c->pipes);
    if (!c->pipes) return lethe_fail(LETHE_ERR_OOM, "vulkan: pipelines");
    c->n_pipes = n;
    const char *fail = getenv("LETHE_VK_FAIL_PIPELINE");
    int n_built = 0;
    for (int i = 0; i < n; i++) {
        const lethe_vk_spirv *s = &lethe_vk_spirv_table[i];
        c->pipes[i].name = s->name;
        const size_t len = strlen(s->name);
        if (strcmp(s->name, "fma_probe") == 0) continue;   /* vk_probe.c's, used once above */
        if (!c->f64 && len > 4 && strcmp(s->name + len - 4, "_f64") == 0) continue;   /* needs shaderFloat64 */
        if (!c->kv_split && lethe_vk_is_split_pipe(s->name)) continue;              /* see probe_features */
        if (fail && (strcmp(fail, "all") == 0 || strcmp(fail, s->name) == 0)) {
            if (strcmp(fail, "all") != 0)
                LETHE_LOGW("vulkan: pipeline %s disabled by LETHE_VK_FAIL_PIPELINE: its ops run on the CPU", s->name);
            continue;
        }
        VkResult r = lethe_vk_make_pipeline(c, s, wg_size_for(s->name), c->native_fma, &c->pipes[i].pipe);
        if (r != VK_SUCCESS) {
            c->pipes[i].pipe = VK_NULL_HANDLE;
            LETHE_LOGW("vulkan: pipeline %s failed to build (%s): its ops run on the CPU", s->name, lethe_vk_check(r));
        } else {
            n_built++;
        }
    }
    if (n_built == 0) return lethe_fail(LETHE_ERR_BACKEND, "vulkan: no compute pipeline could be built");
    return LETHE_OK;
}

/* ------------------------------------------------------ device choice */

/* Device index N counts discrete GPUs first, then integrated, virtual,
 * CPU (lavapipe) and others, each group in the driver's order: --device 0
 * is the best GPU on a machine that also has lavapipe installed. */
static int type_rank(VkPhysicalDeviceType t) {
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 0;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 1;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return 3;
    default: return 4;
    }
}

static lethe_status pick_device(vk_ctx *c, int index) {
    uint32_t n = 0;
    VKF(vkEnumeratePhysicalDevices(c->inst, &n, NULL), "vkEnumeratePhysicalDevices");
    if (n == 0) return lethe_fail(LETHE_ERR_BACKEND, "vulkan: no Vulkan device found");
    VkPhysicalDevice devs[64];
    if (n > 64) n = 64;
    VKF(vkEnumeratePhysicalDevices(c->inst, &n, devs), "vkEnumeratePhysicalDevices");
    VkPhysicalDevice order[64];
    int k = 0;
    for (int rank = 0; rank <= 4; rank++)
        for (uint32_t i = 0; i < n; i++) {
            VkPhysicalDeviceProperties p;
            vkGetPhysicalDeviceProperties(devs[i], &p);
            if (type_rank(p.deviceType) == rank) order[k++] = devs[i];
        }
    if (index < 0 || index >= k)
        return lethe_fail(LETHE_ERR_BACKEND, "vulkan: device %d requested, %d device%s found", index, k,
                          k == 1 ? "" : "s");
    c->phys = order[index];
    c->device_index = index;
    vkGetPhysicalDeviceProperties(c->phys, &c->props);
    vkGetPhysicalDeviceMemoryProperties(c->phys, &c->mem_props);
    snprintf(c->device_name, sizeof c->device_name, "%.127s", c->props.deviceName);
    if (c->props.apiVersion < VK_API_VERSION_1_2)
        return lethe_fail(LETHE_ERR_BACKEND, "vulkan: device %d (%s) supports Vulkan %u.%u; lethe's shaders need 1.2",
                          index, c->device_name, VK_API_VERSION_MAJOR(c->props.apiVersion),
                          VK_API_VERSION_MINOR(c->props.apiVersion));
    return LETHE_OK;
}

static void probe_features(vk_ctx *c) {
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
    VkPhysicalDeviceVulkan11Features f11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES, .pNext = &f12};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f11};
    vkGetPhysicalDeviceFeatures2(c->phys, &f2);
    c->fp16_storage = f11.storageBuffer16BitAccess;
    c->int8_storage = f12.storageBuffer8BitAccess;
    c->shader_f16 = f12.shaderFloat16;
    c->shader_i8 = f12.shaderInt8;
    uint32_t n_ext = 0;
    vkEnumerateDeviceExtensionProperties(c->phys, NULL, &n_ext, NULL);
    VkExtensionProperties *ext = calloc(n_ext ? n_ext : 1, sizeof *ext);
    bool maint4 = false;
    if (ext) {
        vkEnumerateDeviceExtensionProperties(c->phys, NULL, &n_ext, ext);
        for (uint32_t i = 0; i < n_ext; i++) {
            if (strcmp(ext[i].extensionName, "VK_KHR_shader_integer_dot_product") == 0) c->int_dot = true;
            if (strcmp(ext[i].extensionName, "VK_KHR_maintenance4") == 0) maint4 = true;
        }
        free(ext);
    }
    /* maxBufferSize: Vulkan 1.3 or VK_KHR_maintenance4, whose properties a
     * device offering the extension reports (the instance asks for 1.2) */
    VkPhysicalDeviceMaintenance4Properties pm4 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_4_PROPERTIES};
    VkPhysicalDeviceMaintenance3Properties pm3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES,
                                                  .pNext = maint4 ? &pm4 : NULL};
    VkPhysicalDeviceVulkan11Properties p11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_PROPERTIES,
                                              .pNext = &pm3};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &p11};
    vkGetPhysicalDeviceProperties2(c->phys, &p2);
    c->subgroup_size = p11.subgroupSize;
    /* top_k.comp reduces with subgroupMax/Min: compute stage, basic + arithmetic */
    c->subgroup_arith = (p11.subgroupSupportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                        (p11.subgroupSupportedOperations & VK_SUBGROUP_FEATURE_BASIC_BIT) &&
                        (p11.subgroupSupportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT);
    c->f64 = f2.features.shaderFloat64;
    c->shared_mem = c->props.limits.maxComputeSharedMemorySize;
    c->max_range = c->props.limits.maxStorageBufferRange;
    c->align = LETHE_MAX((size_t)c->props.limits.minStorageBufferOffsetAlignment, (size_t)4);
    /* the test hook LETHE_VK_MAX_RANGE forces small bindings, so the split
     * of large tensors across bindings runs on any device */
    const char *mr = getenv("LETHE_VK_MAX_RANGE");
    if (mr && atol(mr) >= 1024 && (size_t)atol(mr) < c->max_range) c->max_range = (size_t)atol(mr);
    c->max_alloc = pm3.maxMemoryAllocationSize;
    c->max_buffer = maint4 ? pm4.maxBufferSize : 0;
    /* a KV cache over several bindings (vk_ops.c kv_plan): an array of
     * LETHE_VK_KV_MAX_BIND storage buffers beside set 0's four, indexed by
     * dynamically uniform values (shaders/kv_split.glsl: no need for
     * shaderStorageBufferArrayNonUniformIndexing, which lavapipe lacks) */
    const uint32_t need = LETHE_VK_BINDINGS + LETHE_VK_KV_MAX_BIND;
    c->kv_split = f2.features.shaderStorageBufferArrayDynamicIndexing &&
                  c->props.limits.maxPerStageDescriptorStorageBuffers >= need &&
                  c->props.limits.maxDescriptorSetStorageBuffers >= need &&
                  c->props.limits.maxPerStageResources >= need;
    if (!c->kv_split)
        LETHE_LOGI("vulkan: a KV cache larger than one binding (%zu MiB) stays on the CPU: the device lacks %s",
                   c->max_range >> 20, !f2.features.shaderStorageBufferArrayDynamicIndexing
                   ? "shaderStorageBufferArrayDynamicIndexing" : "32 storage buffers per stage");
}

/* --------------------------------------------------------------- life */

/* The process's devices: one per (device index, pipeline configuration).
 * The lock guards the list and every d->users; it is held while a device is
 * created (instance, probe, pipelines), so two contexts starting at once on
 * one device build it once. Lock order: registry, weights_mu, queue_mu. */
static pthread_mutex_t g_devices_mu = PTHREAD_MUTEX_INITIALIZER;
static vk_device *g_devices;

/* A backend's own resources (never the device's). */
static void ctx_release(vk_ctx *c) {
    if (!c->dev) return;
    /* nothing of ours is in flight: every submit of a backend waits for its fence */
    lethe_vk_buf_destroy(c, &c->staging);
    lethe_vk_buf_destroy(c, &c->upload);
    lethe_vk_buf_destroy(c, &c->dummy);
    lethe_vk_buf_destroy(c, &c->act);
    lethe_vk_buf_destroy(c, &c->moves);
    if (c->dpool) vkDestroyDescriptorPool(c->dev, c->dpool, NULL);
    if (c->qpool) vkDestroyQueryPool(c->dev, c->qpool, NULL);
    if (c->fence) vkDestroyFence(c->dev, c->fence, NULL);
    if (c->cpool) vkDestroyCommandPool(c->dev, c->cpool, NULL);
    c->dpool = VK_NULL_HANDLE;
    c->qpool = VK_NULL_HANDLE;
    c->fence = VK_NULL_HANDLE;
    c->cpool = VK_NULL_HANDLE;
    free(c->score_jobs);
    free(c->sets);
    c->score_jobs = NULL;
    c->sets = NULL;
}

/* The device's handles, as held by `s` (d->shared, or a backend whose
 * device failed before it was shared), and d's cache. */
static void device_teardown(vk_ctx *s, vk_device *d) {
    if (s->dev) {
        vkDeviceWaitIdle(s->dev);
        for (int i = 0; d && i < d->n_weights; i++) lethe_vk_buf_destroy(s, &d->weights[i].b);
        for (int i = 0; i < s->n_pipes; i++)
            if (s->pipes[i].pipe) vkDestroyPipeline(s->dev, s->pipes[i].pipe, NULL);
        if (s->layout) vkDestroyPipelineLayout(s->dev, s->layout, NULL);
        if (s->layout_kv) vkDestroyPipelineLayout(s->dev, s->layout_kv, NULL);
        if (s->dsl_kv) vkDestroyDescriptorSetLayout(s->dev, s->dsl_kv, NULL);
        if (s->dsl) vkDestroyDescriptorSetLayout(s->dev, s->dsl, NULL);
        vkDestroyDevice(s->dev, NULL);
    }
    if (s->inst) vkDestroyInstance(s->inst, NULL);
    free(s->pipes);
    if (d) {
        free(d->weights);
        pthread_mutex_destroy(&d->queue_mu);
        pthread_mutex_destroy(&d->weights_mu);
        free(d);
    }
}

static void vk_free(lethe_backend *be) {
    if (!be) return;
    vk_ctx *c = be->ctx;
    if (c) {
        ctx_release(c);
        vk_device *d = c->d;
        pthread_mutex_lock(&g_devices_mu);
        const bool shared = d && d->users > 0;   /* else its device failed to start: c's own */
        const bool last = shared && --d->users == 0;
        if (last)   /* the last backend takes the device down */
            for (vk_device **p = &g_devices; *p; p = &(*p)->next)
                if (*p == d) { *p = d->next; break; }
        pthread_mutex_unlock(&g_devices_mu);
        if (last) device_teardown(&d->shared, d);
        else if (!shared) device_teardown(c, d);
        free(c);
    }
    free(be);
}

static void vk_get_info(lethe_backend *be, lethe_backend_info *info) {
    vk_ctx *c = be->ctx;
    memset(info, 0, sizeof *info);
    info->name = "vulkan";
    snprintf(info->device_name, sizeof info->device_name, "%s", c->device_name);
    for (uint32_t i = 0; i < c->mem_props.memoryHeapCount; i++)
        if (c->mem_props.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
            info->mem_total += c->mem_props.memoryHeaps[i].size;
    info->mem_free = info->mem_total;   /* VK_EXT_memory_budget is optional: not queried */
}

static lethe_status vk_synchronize(lethe_backend *be) {
    vk_ctx *c = be->ctx;
    pthread_mutex_lock(&c->d->queue_mu);
    VkResult r = vkQueueWaitIdle(c->queue);
    pthread_mutex_unlock(&c->d->queue_mu);
    VKF(r, "vkQueueWaitIdle");
    return LETHE_OK;
}

static void vk_device_share(lethe_backend *be, const void *lo, size_t size, lethe_device_share *out) {
    vk_device *d = ((vk_ctx *)be->ctx)->d;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&g_devices_mu);
    out->users = d->users;
    pthread_mutex_unlock(&g_devices_mu);
    pthread_mutex_lock(&d->weights_mu);
    const uintptr_t a = (uintptr_t)lo, b = a + size;
    for (int i = 0; i < d->n_weights; i++) {
        const uintptr_t h = (uintptr_t)d->weights[i].host;
        if (lo && (h < a || h + d->weights[i].size > b)) continue;
        out->n_weights++;
        out->weight_bytes += d->weights[i].size;
    }
    out->uploads = d->uploads;
    pthread_mutex_unlock(&d->weights_mu);
}

void lethe_backend_vulkan_forget(const void *lo, size_t size) {
    const uintptr_t a = (uintptr_t)lo, b = a + size;
    pthread_mutex_lock(&g_devices_mu);
    for (vk_device *d = g_devices; d; d = d->next) {
        pthread_mutex_lock(&d->weights_mu);
        int k = 0;
        for (int i = 0; i < d->n_weights; i++) {
            vk_weight *w = &d->weights[i];
            const uintptr_t h = (uintptr_t)w->host;
            if (h < b && h + w->size > a) {   /* overlaps: its host bytes are going away */
                lethe_vk_buf_destroy(&d->shared, &w->b);
                d->weight_bytes -= w->size;
            } else {
                d->weights[k++] = *w;
            }
        }
        d->n_weights = k;
        pthread_mutex_unlock(&d->weights_mu);
    }
    pthread_mutex_unlock(&g_devices_mu);
}

/* every compute() brackets its command buffer with two timestamps (vk_ops.c) */
static double vk_device_ms(lethe_backend *be) { return ((vk_ctx *)be->ctx)->total_compute_ms; }

static const lethe_backend_iface k_vk_iface = {
    .free = vk_free,
    .get_info = vk_get_info,
    .buffer_alloc = vk_buffer_alloc,
    .buffer_free = vk_buffer_free,
    .buffer_set = vk_buffer_set,
    .buffer_get = vk_buffer_get,
    .supports_op = lethe_vk_supports_op,
    .compute = lethe_vk_compute,
    .synchronize = vk_synchronize,
    .buffer_copy = vk_buffer_copy,
    .buffer_alloc_shared = vk_buffer_alloc_shared,
    .buffer_move_rows = vk_buffer_move_rows,
    .device_ms = vk_device_ms,
    .device_share = vk_device_share,
};

static lethe_status vk_init(vk_ctx *c, int device) {
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .pApplicationName = "lethe",
                             .pEngineName = "lethe", .apiVersion = VK_API_VERSION_1_2};
    VkInstanceCreateInfo ii = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app};
    VkResult r = vkCreateInstance(&ii, NULL, &c->inst);
    if (r != VK_SUCCESS) {
        c->inst = VK_NULL_HANDLE;
        return lethe_fail(LETHE_ERR_BACKEND, "vulkan: no Vulkan driver (vkCreateInstance: %s)", lethe_vk_check(r));
    }
    lethe_status st = pick_device(c, device);
    if (st != LETHE_OK) return st;
    probe_features(c);

    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(c->phys, &nq, NULL);
    VkQueueFamilyProperties qf[32];
    if (nq > 32) nq = 32;
    vkGetPhysicalDeviceQueueFamilyProperties(c->phys, &nq, qf);
    int fam = -1;
    for (uint32_t i = 0; i < nq && fam < 0; i++)
        if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) fam = (int)i;
    if (fam < 0) return lethe_fail(LETHE_ERR_BACKEND, "vulkan: device %s has no compute queue", c->device_name);
    c->qfam = (uint32_t)fam;
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, .queueFamilyIndex = c->qfam,
                                  .queueCount = 1, .pQueuePriorities = &prio};
    VkPhysicalDeviceFeatures feat = {.shaderFloat64 = c->f64, .shaderStorageBufferArrayDynamicIndexing = c->kv_split};
    VkDeviceCreateInfo di = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .queueCreateInfoCount = 1,
                             .pQueueCreateInfos = &qi, .pEnabledFeatures = &feat};
    VKF(vkCreateDevice(c->phys, &di, NULL, &c->dev), "vkCreateDevice");
    vkGetDeviceQueue(c->dev, c->qfam, 0, &c->queue);

    return LETHE_OK;
}

/* A backend's own resources, on the device its fields name. */
static lethe_status ctx_init(vk_ctx *c) {
    VkCommandPoolCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                  .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                  .queueFamilyIndex = c->qfam};
    VKF(vkCreateCommandPool(c->dev, &pi, NULL, &c->cpool), "vkCreateCommandPool");
    VkCommandBuffer cbs[2];
    VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, .commandPool = c->cpool,
                                      .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY, .commandBufferCount = 2};
    VKF(vkAllocateCommandBuffers(c->dev, &ai, cbs), "vkAllocateCommandBuffers");
    c->cmd = cbs[0];
    c->xfer = cbs[1];
    VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    VKF(vkCreateFence(c->dev, &fi, NULL, &c->fence), "vkCreateFence");
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(c->phys, &nq, NULL);
    VkQueueFamilyProperties qf[32];
    if (nq > 32) nq = 32;
    vkGetPhysicalDeviceQueueFamilyProperties(c->phys, &nq, qf);
    if (c->props.limits.timestampComputeAndGraphics && c->qfam < nq && qf[c->qfam].timestampValidBits > 0) {
        VkQueryPoolCreateInfo q = {.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                                   .queryType = VK_QUERY_TYPE_TIMESTAMP, .queryCount = 2};
        if (vkCreateQueryPool(c->dev, &q, NULL, &c->qpool) != VK_SUCCESS) c->qpool = VK_NULL_HANDLE;
        c->ts_period_ns = c->props.limits.timestampPeriod;
    }
    return lethe_vk_buf_create(c, 16, false, &c->dummy);
}

/* The environment that shapes a device's pipelines (test hooks and escape
 * hatches): backends that differ in it get devices of their own. */
static void device_key(int index, char *key, size_t n) {
    const char *fma = getenv("LETHE_VK_NATIVE_FMA"), *fail = getenv("LETHE_VK_FAIL_PIPELINE"),
               *range = getenv("LETHE_VK_MAX_RANGE");
    snprintf(key, n, "%d|%.40s|%.40s|%.40s", index, fma ? fma : "", fail ? fail : "", range ? range : "");
}

/* c gets the device for `index`: the process's, shared, or a new one
 * (instance, device, queue, probe, pipelines) that later backends share. */
static lethe_status vk_attach(vk_ctx *c, int index) {
    char key[sizeof ((vk_device *)0)->key];
    device_key(index, key, sizeof key);
    lethe_status st = LETHE_OK;
    pthread_mutex_lock(&g_devices_mu);
    vk_device *d = g_devices;
    while (d && strcmp(d->key, key) != 0) d = d->next;
    if (d) {
        d->users++;   /* counted first: vk_free releases it if ctx_init fails */
        *c = d->shared;
        c->d = d;
        pthread_mutex_unlock(&g_devices_mu);
        return ctx_init(c);
    }
    d = calloc(1, sizeof *d);
    if (!d) {
        pthread_mutex_unlock(&g_devices_mu);
        return lethe_fail(LETHE_ERR_OOM, "vulkan: cannot allocate the device");
    }
    pthread_mutex_init(&d->queue_mu, NULL);
    pthread_mutex_init(&d->weights_mu, NULL);
    snprintf(d->key, sizeof d->key, "%s", key);
    c->d = d;   /* users 0 until it works: vk_free then tears it down as c's own */
    if ((st = vk_init(c, index)) == LETHE_OK && (st = ctx_init(c)) == LETHE_OK && (st = build_pipelines(c)) == LETHE_OK) {
        /* the device's fields; the backend's own cleared (see vk_ctx) */
        vk_ctx *s = &d->shared;
        *s = *c;
        s->cpool = VK_NULL_HANDLE;
        s->cmd = s->xfer = VK_NULL_HANDLE;
        s->fence = VK_NULL_HANDLE;
        s->qpool = VK_NULL_HANDLE;
        s->last_compute_ms = s->total_compute_ms = 0.0;
        s->dpool = VK_NULL_HANDLE;
        s->dpool_cap = s->cap_sets = 0;
        s->sets = NULL;
        memset(&s->staging, 0, sizeof s->staging);
        memset(&s->upload, 0, sizeof s->upload);
        memset(&s->dummy, 0, sizeof s->dummy);
        memset(&s->act, 0, sizeof s->act);
        s->upload_used = 0;
        s->score_jobs = NULL;
        s->n_score_jobs = s->cap_score_jobs = 0;
        d->users = 1;
        d->next = g_devices;
        g_devices = d;
    }
    pthread_mutex_unlock(&g_devices_mu);
    return st;
}

lethe_backend *lethe_backend_vulkan_new(int device) {
    const char *env = getenv("LETHE_VK_DEVICE");
    if (env && *env) {
        char *end = NULL;
        long v = strtol(env, &end, 10);
        if (*end || v < 0 || v > 1024) {
            lethe_fail(LETHE_ERR_INVALID_ARG, "vulkan: LETHE_VK_DEVICE='%s' is not a device index", env);
            return NULL;
        }
        device = (int)v;
    }
    lethe_backend *be = calloc(1, sizeof *be);
    vk_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        lethe_fail(LETHE_ERR_OOM, "vulkan: cannot allocate the backend");
        return NULL;
    }
    be->iface = &k_vk_iface;
    be->ctx = c;
    if (vk_attach(c, device) != LETHE_OK) {
        vk_free(be);   /* keeps the failure message: vk_free does not call lethe_fail */
        return NULL;
    }
    LETHE_LOGI("vulkan: device %d: %s (Vulkan %u.%u); fp16 storage %s, int8 storage %s, fp16 math %s, "
               "int dot product %s, fp64 %s, subgroup %u, shared memory %zu KiB, max binding %zu %s%s, fma %s",
               c->device_index, c->device_name, VK_API_VERSION_MAJOR(c->props.apiVersion),
               VK_API_VERSION_MINOR(c->props.apiVersion), c->fp16_storage ? "yes" : "no",
               c->int8_storage ? "yes" : "no", c->shader_f16 ? "yes" : "no", c->int_dot ? "yes" : "no", c->f64 ? "yes" : "no",
               c->subgroup_size, c->shared_mem / 1024, c->max_range >> (c->max_range >= (1u << 20) ? 20 : 10),
               c->max_range >= (1u << 20) ? "MiB" : "KiB",
               c->kv_split ? " (KV cache up to 28 bindings)" : "",
               c->native_fma ? "native (fused)" : "emulated (exact)");
    return be;
}

double lethe_backend_vulkan_last_ms(lethe_backend *be) {
    return be && be->iface == &k_vk_iface ? ((vk_ctx *)be->ctx)->last_compute_ms : 0.0;
}

int lethe_backend_vulkan_native_fma(lethe_backend *be) {
    return be && be->iface == &k_vk_iface ? ((vk_ctx *)be->ctx)->native_fma : -1;
}

