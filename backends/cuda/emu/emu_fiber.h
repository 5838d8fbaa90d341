/* emu_fiber.h — the emulator's fibers: one per CUDA thread of the running
 * block, on stacks of its own, switched to and from the scheduler's stack.
 * x86-64: a 6-register switch (callee-saved registers, MXCSR and the x87
 * control word); elsewhere ucontext. Annotated for AddressSanitizer (its
 * fiber API), so ASan follows the stack switches; not for ThreadSanitizer
 * (the emulator is not built in TSan builds). */
#ifndef LETHE_CUDA_EMU_FIBER_H
#define LETHE_CUDA_EMU_FIBER_H

#include <stddef.h>

namespace lethe_emu {

struct fiber {
    void *sp = nullptr;        /* saved stack pointer (x86-64) or ucontext */
    char *stack = nullptr;
    size_t size = 0;
    void *asan_fake = nullptr;
    void *uctx = nullptr;
};

/* Allocates the fiber's stack once (kept across blocks). */
bool fiber_alloc(fiber *f, size_t size);
/* Makes f start entry() at its next switch_to. */
void fiber_prepare(fiber *f, void (*entry)());
/* Scheduler -> fiber: returns when the fiber switches back. */
void fiber_switch_to(fiber *f);
/* Fiber -> scheduler; `dying`: never resumed (its stack is reused). */
void fiber_switch_back(fiber *f, bool dying);
/* The first thing a fiber does when it starts. */
void fiber_started(fiber *f);

}   // namespace lethe_emu

#endif
