/* emu_fiber.cc — fiber switching for the CUDA emulator (emu_fiber.h). */
#include "emu_fiber.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace lethe_emu {

static void *g_sched_sp;          /* the scheduler's saved context */
#ifdef EMU_ASAN
static void *g_sched_fake;
static const void *g_sched_bottom;
static size_t g_sched_size;
#endif

bool fiber_alloc(fiber *f, size_t size) {
    if (f->stack) return true;
    const size_t guard = 4096;
    void *p = mmap(nullptr, size + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return false;
    mprotect(p, guard, PROT_NONE);   /* a stack overflow faults instead of writing the next stack */
    f->stack = (char *)p + guard;
    f->size = size;
    return true;
}

#if defined(__x86_64__)
extern "C" void lethe_emu_swap(void **save_sp, void *to_sp);
asm(R"(
    .text
    .globl lethe_emu_swap
    .hidden lethe_emu_swap
    .type lethe_emu_swap,@function
lethe_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size lethe_emu_swap, .-lethe_emu_swap
)");

void fiber_prepare(fiber *f, void (*entry)()) {
#ifdef EMU_ASAN
    __asan_unpoison_memory_region(f->stack, f->size);   /* frames of a fiber abandoned mid-way */
#endif
    uintptr_t top = ((uintptr_t)f->stack + f->size) & ~(uintptr_t)15;
    uint64_t *a = (uint64_t *)(top - 16);   /* the return address, at a 16-byte boundary */
    a[0] = (uint64_t)(uintptr_t)entry;
    a[1] = 0;
    uint64_t *sp = a - 7;                   /* csr word, r15, r14, r13, r12, rbx, rbp */
    memset(sp, 0, 7 * sizeof *sp);
    const uint32_t mxcsr = 0x1F80u, fpucw = 0x037Fu;
    memcpy(sp, &mxcsr, 4);
    memcpy((char *)sp + 4, &fpucw, 4);
    f->sp = sp;
}

void fiber_switch_to(fiber *f) {
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&g_sched_fake, f->stack, f->size);
#endif
    lethe_emu_swap(&g_sched_sp, f->sp);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#endif
}

void fiber_switch_back(fiber *f, bool dying) {
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(dying ? nullptr : &f->asan_fake, g_sched_bottom, g_sched_size);
#else
    (void)dying;
#endif
    lethe_emu_swap(&f->sp, g_sched_sp);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(f->asan_fake, &g_sched_bottom, &g_sched_size);
#endif
}

void fiber_started(fiber *f) {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_sched_bottom, &g_sched_size);
#else
    (void)f;
#endif
}

#else   /* ucontext */

static ucontext_t g_sched_uc;

void fiber_prepare(fiber *f, void (*entry)()) {
#ifdef EMU_ASAN
    __asan_unpoison_memory_region(f->stack, f->size);
#endif
    if (!f->uctx) f->uctx = calloc(1, sizeof(ucontext_t));
    ucontext_t *uc = (ucontext_t *)f->uctx;
    getcontext(uc);
    uc->uc_stack.ss_sp = f->stack;
    uc->uc_stack.ss_size = f->size;
    uc->uc_link = nullptr;
    makecontext(uc, entry, 0);
}

void fiber_switch_to(fiber *f) {
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&g_sched_fake, f->stack, f->size);
#endif
    swapcontext(&g_sched_uc, (ucontext_t *)f->uctx);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#endif
}

void fiber_switch_back(fiber *f, bool dying) {
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(dying ? nullptr : &f->asan_fake, g_sched_bottom, g_sched_size);
#else
    (void)dying;
#endif
    swapcontext((ucontext_t *)f->uctx, &g_sched_uc);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(f->asan_fake, &g_sched_bottom, &g_sched_size);
#endif
}

void fiber_started(fiber *f) {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_sched_bottom, &g_sched_size);
#else
    (void)f;
#endif
}

#endif

}   // namespace lethe_emu
