/* affinity.h: CPU placement for the benchmarks whose operation is a hand-off between two
 * threads (fault.lazy and its floor syscalls.fault_remote).
 *
 * On a 2-vCPU guest the cost of waking a sleeping thread depends mostly on where the
 * scheduler put the two threads: a wake-up on the same CPU is a context switch, one across
 * CPUs an IPI (expensive in a nested guest). Left to the scheduler, the benchmark and its
 * floor can land in different cases and their ratio flips between runs. So both sides pin
 * the same way: the harness thread (which faults) on one CPU, the thread that serves the
 * fault (the mapping manager's loop, the floor's mapper thread) on another, i.e. the
 * cross-CPU case a VMM has when its vCPU threads and its memory manager run side by side.
 *
 * The harness thread's affinity is saved and restored (teardown restores it; nesting is
 * fine as long as restores come in reverse order, which the harness's teardown order
 * gives: baseline first, then the benchmark). With fewer than two usable CPUs nothing is
 * pinned. */
#ifndef MB_BENCH_AFFINITY_H
#define MB_BENCH_AFFINITY_H

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>

typedef struct mb_bench_pin {
  bool active;   /* two CPUs were found and the calling thread was pinned */
  int here;      /* the calling (harness) thread's CPU */
  int there;     /* the serving thread's CPU */
  cpu_set_t saved; /* the calling thread's affinity before */
} mb_bench_pin;

/* Pin the calling thread to the first CPU of its affinity mask and pick the second one for
 * the serving thread. Returns 0 (also when there is only one CPU: then p->active is false)
 * or a negative errno. */
int mb_bench_pin_begin(mb_bench_pin *p);
/* Pin the calling thread (the serving thread, from its own code) to p->there. */
int mb_bench_pin_serving_self(const mb_bench_pin *p);
/* Give the calling thread its saved affinity back. */
void mb_bench_pin_end(mb_bench_pin *p);

#endif
