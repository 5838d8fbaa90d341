/* executor.h — runs a graph over the available backends.
 *
 * Placement: each node goes to the first backend (in priority order) whose
 * supports_op accepts it; consecutive nodes on the same backend run as one
 * compute() call. Memory: intermediate results are packed into one compute
 * buffer by liveness (a node's memory is reused once its last reader has
 * run); the buffer only grows, so steady-state decoding allocates nothing.
 */
#ifndef LETHE_EXECUTOR_H
#define LETHE_EXECUTOR_H

#include "backend.h"

typedef struct lethe_executor lethe_executor;

/* backends[0] is the preferred one; the CPU backend must be among them (it
 * is the fallback for every op). The executor does not own the backends. */
lethe_executor *lethe_executor_new(lethe_backend **backends, int n_backends);
void lethe_executor_free(lethe_executor *ex);

lethe_status lethe_executor_run(lethe_executor *ex, lethe_graph *g,
                                lethe_abort_fn abort_fn, void *abort_user);

/* Bytes of the compute buffer (for the memory report). */
size_t lethe_executor_buffer_size(const lethe_executor *ex);

/* Compute buffer + every backend's scratch, in bytes (the "compute" line of
 * the memory report). */
size_t lethe_executor_memory(const lethe_executor *ex);
/* Cap on lethe_executor_memory() (0: none). A run that would grow past it
 * fails with LETHE_ERR_OOM before allocating or computing anything. */
void lethe_executor_set_mem_limit(lethe_executor *ex, size_t limit);

#endif
