/* affinity.h: CPU placement for the benchmarks whose operation is a hand-off between two
 * threads (fault.lazy and its floor syscalls.fault_remote; spin.pingpong, whose two spinning
 * threads are placed on two different CPUs instead).
 *
 * The cost of waking a sleeping thread depends mostly on where the two threads are: on one
 * CPU it is a context switch; across CPUs it is an IPI, which in this machine's nested guest
 * costs anything from ~25 us to hundreds of us (with 4 ms tails) depending on how long the
 * target vCPU has been idle and on what the host's adaptive halt-polling learnt from earlier
 * wake-ups. Left to the scheduler, one side of a benchmark may get same-CPU hand-offs and
 * the other cross-CPU ones, and the ratio flips between runs (measured here: fault.lazy
 * against syscalls.fault_remote unpinned gave 1.0x in some runs and 2.0x in others).
 *
 * So both sides pin the same way: the harness thread (which faults) and the thread that
 * serves the fault (the mapping manager's loop thread, the floor's mapper thread) on the
 * same CPU. Every hand-off is then a plain context switch, the same kernel work on both
 * sides, and the benchmark measures what the design adds in software.
 *
 * The harness thread's affinity is saved and restored (teardown restores it; nesting is
 * fine because the harness tears down in reverse order of setup: baseline first). */
#ifndef MB_BENCH_AFFINITY_H
#define MB_BENCH_AFFINITY_H

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>

typedef struct mb_bench_pin {
  bool active;     /* the calling thread was pinned */
  int cpu;         /* the CPU both threads run on */
  cpu_set_t saved; /* the calling thread's affinity before */
} mb_bench_pin;

/* Pin the calling (harness) thread to the first CPU the process may use. 0 or -errno. */
int mb_bench_pin_begin(mb_bench_pin *p);
/* Pin the calling thread (the serving thread, from its own code) to the same CPU. */
int mb_bench_pin_serving_self(const mb_bench_pin *p);
/* A CPU of the process's mask other than p->cpu (for two threads that must not share one:
 * spin.pingpong), or -1 when there is none. */
int mb_bench_pin_other_cpu(const mb_bench_pin *p);
/* Give the harness thread its saved affinity back. */
void mb_bench_pin_end(mb_bench_pin *p);

#endif
