/* vk_probe.c — decides shaders/exact.glsl's NATIVE_FMA for a device by
 * measurement, once, before its pipelines are built (vk_device.c).
 *
 * Why: Vulkan lets fma() round twice, and Mesa's lavapipe does; the CPU
 * backend fuses, so the shaders emulate a fused multiply-add from exact
 * two_sum / two_prod steps (fma_rn), some 20 flops for one. A driver whose
 * fma() is a true fused instruction (NVIDIA's, AMD's) gives the same bits
 * for one instruction, and the attention and matmul inner loops are made of
 * fma_rn. Which driver fuses is a property of its compiler, not of a vendor
 * name, so it is measured: shaders/fma_probe.comp, built with NATIVE_FMA on,
 * evaluates fma_rn (= fma()), div_rn and exp_det (which are built on it) on
 * PROBE_N fixed inputs, about half of them chosen so that one rounding and
 * two give different floats (c = -RN(a b): fused gives the product's
 * rounding error, unfused 0), and the host compares every result bit for
 * bit with C's fmaf, a / b and lethe_cpu_expf (what the CPU backend
 * computes). All equal: NATIVE_FMA on for every pipeline. Anything else,
 * or a probe that cannot run: off, the emulation, which is exact anywhere.
 * When off, the probe runs once more with the emulation, to check it on
 * this driver (a warning if it does not reproduce the CPU).
 *
 * LETHE_VK_NATIVE_FMA=0 or 1 forces the choice without a probe (tests, and
 * a way out should a driver fuse in the probe but not elsewhere).
 */
#include "vk_internal.h"

#include "cpu_kernels.h"   /* lethe_cpu_expf: the CPU backend's exp, the reference */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PROBE_N 256    /* probes: in and out are [PROBE_N][4] floats */
#define PROBE_WG 64    /* workgroup size (specialization constant 0) */

static uint32_t bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* in [PROBE_N][4]: a, b, c (fma and division operands), x (exp's).
 * a, b: random 24-bit significands in +-[2^-4, 2^4), so products, their
 * rounding errors (>= 2^-32 |ab| ulp-wise) and quotients stay normal floats:
 * a driver may flush subnormals, which would be a different question.
 * Odd probes: c = -RN(a b); even ones: c random of the same size; probe 0:
 * (1 + 2^-12)^2 - 1, fused 2^-11 + 2^-24, unfused 2^-11. x in [-80, 80]:
 * exp stays normal too. */
static void probe_inputs(float *in) {
    uint64_t s = 0x2545F4914F6CDD1DULL;
    for (int i = 0; i < PROBE_N; i++) {
        float v[3];
        for (int k = 0; k < 3; k++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            const float m = 1.0f + (float)(uint32_t)(s >> 41) / 8388608.0f;   /* 23 random bits */
            v[k] = ((s >> 32) & 1 ? -1.0f : 1.0f) * ldexpf(m, (int)((s >> 33) & 7) - 4);
        }
        volatile float ab = v[0] * v[1];   /* volatile: rounded here, never contracted into an fma */
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        in[4 * i] = v[0];
        in[4 * i + 1] = v[1];
        in[4 * i + 2] = (i & 1) ? -ab : v[2];
        in[4 * i + 3] = (float)(s >> 40) / 16777216.0f * 160.0f - 80.0f;
    }
    in[0] = in[1] = 1.0f + 1.0f / 4096.0f;
    in[2] = -1.0f;
}

/* What the CPU computes for each probe, and how many probes an unfused
 * multiply-add would get wrong (the probe's power to tell the two apart). */
static int probe_expected(const float *in, float *want) {
    int telling = 0;
    for (int i = 0; i < PROBE_N; i++) {
        const float a = in[4 * i], b = in[4 * i + 1], c = in[4 * i + 2], x = in[4 * i + 3];
        want[4 * i] = fmaf(a, b, c);
        want[4 * i + 1] = a / b;
        want[4 * i + 2] = lethe_cpu_expf(x);
        want[4 * i + 3] = 0.0f;
        volatile float ab = a * b;
        telling += bits(ab + c) != bits(want[4 * i]);
    }
    return telling;
}

/* One run of the probe shader with NATIVE_FMA = native: out [PROBE_N][4]. */
static lethe_status probe_run(vk_ctx *c, const lethe_vk_spirv *spv, bool native, const float *in, float *out) {
    const size_t bytes = (size_t)PROBE_N * 4 * sizeof(float);
    VkPipeline pipe = VK_NULL_HANDLE;
    VkDescriptorPool pool = VK_NULL_HANDLE;
    vk_buf bin = {0}, bout = {0};
    lethe_status st = LETHE_OK;
    VkResult r = lethe_vk_make_pipeline(c, spv, PROBE_WG, native, &pipe);
    if (r != VK_SUCCESS) {
        st = lethe_fail(LETHE_ERR_BACKEND, "its pipeline failed to build (%s)", lethe_vk_check(r));
        goto done;
    }
    if ((st = lethe_vk_buf_create(c, bytes, true, &bin)) != LETHE_OK) goto done;
    if ((st = lethe_vk_buf_create(c, bytes, true, &bout)) != LETHE_OK) goto done;
    memcpy(bin.map, in, bytes);
    memset(bout.map, 0xFF, bytes);   /* NaNs: a probe that writes nothing matches nothing */

    VkDescriptorPoolSize ps = {.type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .descriptorCount = LETHE_VK_BINDINGS};
    VkDescriptorPoolCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO, .maxSets = 1,
                                     .poolSizeCount = 1, .pPoolSizes = &ps};
    if ((r = vkCreateDescriptorPool(c->dev, &pi, NULL, &pool)) != VK_SUCCESS) {
        pool = VK_NULL_HANDLE;
        st = lethe_fail(LETHE_ERR_BACKEND, "vkCreateDescriptorPool: %s", lethe_vk_check(r));
        goto done;
    }
    VkDescriptorSet set;
    VkDescriptorSetAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO, .descriptorPool = pool,
                                      .descriptorSetCount = 1, .pSetLayouts = &c->dsl};
    if ((r = vkAllocateDescriptorSets(c->dev, &ai, &set)) != VK_SUCCESS) {
        st = lethe_fail(LETHE_ERR_BACKEND, "vkAllocateDescriptorSets: %s", lethe_vk_check(r));
        goto done;
    }
    VkDescriptorBufferInfo bi[LETHE_VK_BINDINGS];
    VkWriteDescriptorSet w[LETHE_VK_BINDINGS];
    for (int i = 0; i < LETHE_VK_BINDINGS; i++) {
        bi[i] = (VkDescriptorBufferInfo){i == 0 ? bin.buf : i == 1 ? bout.buf : c->dummy.buf, 0, VK_WHOLE_SIZE};
        w[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, .dstSet = set,
                                      .dstBinding = (uint32_t)i, .descriptorCount = 1,
                                      .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .pBufferInfo = &bi[i]};
    }
    vkUpdateDescriptorSets(c->dev, LETHE_VK_BINDINGS, w, 0, NULL);

    if ((st = lethe_vk_xfer_begin(c)) != LETHE_OK) goto done;
    const uint32_t n = PROBE_N;
    vkCmdBindPipeline(c->xfer, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
    vkCmdBindDescriptorSets(c->xfer, VK_PIPELINE_BIND_POINT_COMPUTE, c->layout, 0, 1, &set, 0, NULL);
    vkCmdPushConstants(c->xfer, c->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof n, &n);
    vkCmdDispatch(c->xfer, PROBE_N / PROBE_WG, 1, 1);
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER, .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_HOST_READ_BIT};
    vkCmdPipelineBarrier(c->xfer, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL,
                         0, NULL);
    if ((st = lethe_vk_xfer_submit(c)) != LETHE_OK) goto done;
    memcpy(out, bout.map, bytes);
done:
    if (pool) vkDestroyDescriptorPool(c->dev, pool, NULL);
    if (pipe) vkDestroyPipeline(c->dev, pipe, NULL);
    lethe_vk_buf_destroy(c, &bin);
    lethe_vk_buf_destroy(c, &bout);
    return st;
}

/* Results of each kind (0 fma, 1 division, 2 exp) that differ from the CPU's. */
static void probe_compare(const float *got, const float *want, int miss[3]) {
    miss[0] = miss[1] = miss[2] = 0;
    for (int i = 0; i < PROBE_N; i++)
        for (int k = 0; k < 3; k++) miss[k] += bits(got[4 * i + k]) != bits(want[4 * i + k]);
}

void lethe_vk_decide_native_fma(vk_ctx *c) {
    c->native_fma = false;
    const char *env = getenv("LETHE_VK_NATIVE_FMA");
    if (env && *env) {
        if ((env[0] == '0' || env[0] == '1') && env[1] == '\0') {
            c->native_fma = env[0] == '1';
            LETHE_LOGD("vulkan: NATIVE_FMA %s: forced by LETHE_VK_NATIVE_FMA=%s, no fma probe",
                       c->native_fma ? "on" : "off", env);
            return;
        }
        LETHE_LOGW("vulkan: LETHE_VK_NATIVE_FMA='%s' is not 0 or 1: ignored, the fma probe decides", env);
    }
    const lethe_vk_spirv *spv = NULL;
    for (int i = 0; lethe_vk_spirv_table[i].name; i++)
        if (strcmp(lethe_vk_spirv_table[i].name, "fma_probe") == 0) spv = &lethe_vk_spirv_table[i];
    const char *fail = getenv("LETHE_VK_FAIL_PIPELINE");   /* the test hook of vk_device.c */
    if (fail && strcmp(fail, "all") == 0) return;          /* the backend will not start anyway */
    if (!spv || (fail && strcmp(fail, "fma_probe") == 0)) {
        LETHE_LOGW("vulkan: fma probe failed (%s): NATIVE_FMA off, exact.glsl's emulated fma",
                   spv ? "disabled by LETHE_VK_FAIL_PIPELINE" : "no fma_probe shader in the build");
        return;
    }
    float *in = malloc(3 * (size_t)PROBE_N * 4 * sizeof(float));
    if (!in) {
        LETHE_LOGW("vulkan: fma probe failed (out of memory): NATIVE_FMA off, exact.glsl's emulated fma");
        return;
    }
    float *want = in + PROBE_N * 4, *got = want + PROBE_N * 4;
    probe_inputs(in);
    const int telling = probe_expected(in, want);
    int miss[3];
    lethe_status st = probe_run(c, spv, true, in, got);
    if (st != LETHE_OK) {
        LETHE_LOGW("vulkan: fma probe failed (%s): NATIVE_FMA off, exact.glsl's emulated fma", lethe_last_error());
        lethe_clear_error();   /* handled: the backend starts on the emulated path */
        free(in);
        return;
    }
    probe_compare(got, want, miss);
    c->native_fma = miss[0] == 0 && miss[1] == 0 && miss[2] == 0;
    if (c->native_fma) {
        LETHE_LOGD("vulkan: fma probe: fma() is fused on %s (all %d fma, division and exp results equal the CPU's; "
                   "an unfused fma would miss %d): NATIVE_FMA on",
                   c->device_name, PROBE_N, telling);
    } else {
        LETHE_LOGD("vulkan: fma probe: fma() is not fused on %s (with it, %d of %d fma, %d division and %d exp results "
                   "differ from the CPU's; an unfused fma would miss %d fma): NATIVE_FMA off, exact.glsl's emulated fma",
                   c->device_name, miss[0], PROBE_N, miss[1], miss[2], telling);
        /* the path the pipelines take now: it must reproduce the CPU here */
        st = probe_run(c, spv, false, in, got);
        if (st != LETHE_OK) {
            LETHE_LOGW("vulkan: fma probe of the emulation failed (%s)", lethe_last_error());
            lethe_clear_error();
        } else {
            probe_compare(got, want, miss);
            if (miss[0] || miss[1] || miss[2])
                LETHE_LOGW("vulkan: exact.glsl's emulation differs from the CPU on %s (%d fma, %d division, %d exp of "
                           "%d): Vulkan results will not be bit-identical to the CPU backend's",
                           c->device_name, miss[0], miss[1], miss[2], PROBE_N);
            else
                LETHE_LOGD("vulkan: fma probe: the emulation gives the CPU's %d fma, division and exp results", PROBE_N);
        }
    }
    free(in);
}
