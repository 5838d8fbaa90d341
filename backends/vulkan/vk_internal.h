/* vk_internal.h — state shared by the Vulkan backend's files:
 * vk_device.c (instance, device, memory, buffers, pipelines, life) and
 * vk_ops.c (supports_op, graph recording, one function per op family).
 *
 * One device, many backends: every backend (one per context) on the same
 * device index and pipeline configuration shares one vk_device per process
 * (instance, device, queue, pipelines, the fma probe's verdict, the weight
 * cache), refcounted and destroyed with its last backend. A backend's own
 * part (command buffers, fence, descriptor pool, staging and upload buffers,
 * timestamps) is never shared, so contexts on different threads record and
 * wait at once; what they share is locked: submissions to the queue
 * (queue_mu) and the weight cache (weights_mu).
 *
 * Memory model: the executor's compute buffers are device-local Vulkan
 * buffers (lethe_buffer.impl = vk_buf). Weights (graph leaves with host data)
 * are uploaded once per device, on first use by any of its backends, into
 * device-local buffers cached by their host address, until the host memory
 * is forgotten (lethe_backends_forget, from lethe_model_free). Graph inputs (token
 * ids: leaves marked is_input) and host-computed tables (RoPE cos/sin) go
 * each compute into a host-visible "upload" buffer that shaders read directly.
 * compute() records the node range into one command buffer, submits it and
 * waits, so a finished compute leaves nothing in flight. The KV cache's
 * shared buffer (buffer_alloc_shared) is host-visible, device-local where a
 * heap allows; larger than one binding, it is bound as an array of chunks
 * of whole pages (vk_ops.c kv_plan, shaders/kv_split.glsl).
 */
#ifndef LETHE_VK_INTERNAL_H
#define LETHE_VK_INTERNAL_H

#include "backend.h"
#include "common.h"
#include "vk_shaders.h"

#include <pthread.h>
#include <vulkan/vulkan.h>

#define LETHE_VK_BINDINGS 4      /* storage buffers per dispatch (set 0, bindings 0..3) */
#define LETHE_VK_PUSH_BYTES 128  /* push-constant block, the minimum every device offers */
/* The KV cache's shared buffer over several bindings (shaders/kv_split.glsl:
 * set 1, binding 0, an array of this many storage buffers; = KV_MAX_BIND
 * there). 28 + the 4 of set 0 = 32, lavapipe's maxPerStageDescriptorStorageBuffers. */
#define LETHE_VK_KV_MAX_BIND 28

typedef struct vk_buf {
    VkBuffer buf;
    VkDeviceMemory mem;
    VkDeviceSize size;
    void *map;               /* host address when host-visible, else NULL */
    uint32_t mem_type;       /* index into the device's memory types */
    /* a KV cache's shared buffer larger than one binding (vk_ops.c kv_plan):
     * kv_plan 0 not planned yet, 1 split into kv_nbind chunks of kv_chunk
     * bytes bound as kv_set (from its own pool), -1 refused (ops on the CPU) */
    int kv_plan;
    uint32_t kv_nbind;
    size_t kv_chunk;
    VkDescriptorPool kv_pool;
    VkDescriptorSet kv_set;
    bool kv_noted;           /* the host-read warning of kv_on_device, said once */
} vk_buf;

typedef struct vk_weight {   /* a weight uploaded on first use */
    const void *host;
    size_t size;
    vk_buf b;
} vk_weight;

typedef struct vk_pipe {
    const char *name;
    VkPipeline pipe;         /* VK_NULL_HANDLE: failed to build, ops needing it fall back */
} vk_pipe;

typedef struct vk_device vk_device;

/* A backend. The fields from inst to n_pipes, except the per-backend
 * command pool, buffers, fence, timestamps and descriptor pool, are the
 * device's (d): copied from d->shared at creation, read-only afterwards. */
typedef struct vk_ctx {
    vk_device *d;            /* shared with the other backends on the device */
    VkInstance inst;
    VkPhysicalDevice phys;
    VkDevice dev;
    VkQueue queue;
    uint32_t qfam;
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties mem_props;
    char device_name[128];
    int device_index;

    /* probed features (logged; the shaders need none of the optional ones) */
    bool fp16_storage, int8_storage, shader_f16, shader_i8, int_dot;
    bool f64;                /* shaderFloat64: enabled when present (rms_norm_f64) */
    uint32_t subgroup_size;
    bool subgroup_arith;     /* compute-stage subgroup basic + arithmetic ops (top_k.comp) */
    size_t shared_mem;       /* maxComputeSharedMemorySize */
    size_t max_range;        /* maxStorageBufferRange (bytes one binding may span) */
    size_t align;            /* minStorageBufferOffsetAlignment (>= 4) */
    VkDeviceSize max_alloc;  /* maxMemoryAllocationSize (Vulkan 1.1; a soft limit) */
    VkDeviceSize max_buffer; /* maxBufferSize (VK_KHR_maintenance4), 0 if not reported */
    bool kv_split;           /* the *_split pipelines can exist: shaderStorageBufferArrayDynamicIndexing
                              * and 4 + LETHE_VK_KV_MAX_BIND storage buffers per stage and per set */
    bool native_fma;         /* exact.glsl's NATIVE_FMA (specialization constant 1) for every
                              * pipeline: the driver's fma() measured fused (vk_probe.c) */

    VkCommandPool cpool;
    VkCommandBuffer cmd;     /* the graph's command buffer */
    VkCommandBuffer xfer;    /* one-shot transfers (buffer_set/get, weight uploads) */
    VkFence fence;
    VkQueryPool qpool;       /* 2 timestamps around each compute; NULL if unsupported */
    double ts_period_ns;
    double last_compute_ms, total_compute_ms;

    VkDescriptorSetLayout dsl;
    VkPipelineLayout layout;
    VkDescriptorSetLayout dsl_kv;   /* set 1 of the *_split pipelines: the KV chunks */
    VkPipelineLayout layout_kv;     /* {dsl, dsl_kv}; NULL without kv_split */
    VkDescriptorPool dpool;
    uint32_t dpool_cap;      /* sets the pool holds */
    VkDescriptorSet *sets;   /* [cap_sets] handles allocated per compute */
    uint32_t cap_sets;

    vk_pipe *pipes;          /* parallel to lethe_vk_spirv_table */
    int n_pipes;

    vk_buf staging;          /* host-visible: buffer_set / buffer_get / weight uploads */
    vk_buf upload;           /* host-visible, bound directly: inputs, RoPE tables */
    size_t upload_used;
    vk_buf dummy;            /* bound where a shader's binding is unused */
    vk_buf act;              /* device scratch: q8 blocks of a matmul's activations */
    vk_buf moves;            /* device scratch: KV rows in flight (buffer_move_rows) */

    /* ATTENTION nodes of the current compute whose softmax weights the host
     * folds into TOVA / H2O scores once the device is done, or whose QUEST
     * selections give the KV reads (vk_ops.c) */
    struct vk_score_job *score_jobs;
    int n_score_jobs, cap_score_jobs;
} vk_ctx;

/* The shared device (one per device index and pipeline configuration per
 * process; the registry in vk_device.c). */
struct vk_device {
    vk_ctx shared;           /* its device fields; the per-backend ones zero */
    char key[160];           /* index + the environment that shapes pipelines */
    int users;               /* backends on it (registry lock)                */
    vk_device *next;         /* registry list (registry lock)                 */
    pthread_mutex_t queue_mu;     /* the queue is externally synchronized     */
    pthread_mutex_t weights_mu;   /* guards the weight cache below            */
    vk_weight *weights;
    int n_weights, cap_weights;
    size_t weight_bytes;     /* bytes of weights cached now                   */
    uint64_t uploads;        /* weights uploaded since creation               */
};

typedef struct vk_score_job {
    const lethe_node *n;
    size_t off;              /* byte offset of the weights [T][Hq][stride] in the upload buffer */
    uint32_t stride;
    bool quest;              /* QUEST instead: the selections [T * Hkv][stride] ({n, pages}), for the KV reads */
} vk_score_job;

/* vk_device.c */
lethe_status lethe_vk_buf_create(vk_ctx *c, VkDeviceSize size, bool host_visible, vk_buf *out);
void lethe_vk_buf_destroy(vk_ctx *c, vk_buf *b);
lethe_status lethe_vk_write(vk_ctx *c, VkBuffer dst, VkDeviceSize offs, const void *src, size_t size);
lethe_status lethe_vk_read(vk_ctx *c, VkBuffer src, VkDeviceSize offs, void *dst, size_t size);
/* Is `name` a KV_SPLIT variant (built in layout_kv)? */
bool lethe_vk_is_split_pipe(const char *name);
/* The device buffer holding a weight (uploaded on first use by any backend
 * on the device; the upload goes through c's staging). */
lethe_status lethe_vk_weight(vk_ctx *c, const void *host, size_t size, VkBuffer *out);
/* Pipeline by shader-variant name; VK_NULL_HANDLE if absent or failed. */
VkPipeline lethe_vk_pipeline(const vk_ctx *c, const char *name);
/* One compute pipeline of `s` in c->layout (c->layout_kv for the *_split
 * variants) with the specialization
 * constants every shader shares: 0 = workgroup size, 1 = NATIVE_FMA. */
VkResult lethe_vk_make_pipeline(vk_ctx *c, const lethe_vk_spirv *s, uint32_t wg, bool native_fma, VkPipeline *out);
/* vkQueueSubmit on the shared queue, under its lock. */
VkResult lethe_vk_queue_submit(vk_ctx *c, const VkSubmitInfo *si, VkFence fence);
/* The one-shot command buffer c->xfer: begin it; end, submit and wait. */
lethe_status lethe_vk_xfer_begin(vk_ctx *c);
lethe_status lethe_vk_xfer_submit(vk_ctx *c);
const char *lethe_vk_check(VkResult r); /* "VK_ERROR_..." */

/* vk_probe.c: sets c->native_fma (LETHE_VK_NATIVE_FMA=0/1 forces it; else
 * the probe shader decides; any failure of the probe leaves it false). Needs
 * c->layout and c->dummy; called once, before the pipelines are built. */
void lethe_vk_decide_native_fma(vk_ctx *c);

/* vk_ops.c */
bool lethe_vk_supports_op(lethe_backend *be, const lethe_node *n);
lethe_status lethe_vk_compute(lethe_backend *be, lethe_graph *g, int begin, int end,
                              lethe_abort_fn abort_fn, void *abort_user);

#endif
