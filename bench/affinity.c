/* affinity.c: see affinity.h. */
#include "affinity.h"

#include <errno.h>

static int pin_self(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return -pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

int mb_bench_pin_begin(mb_bench_pin *p) {
  p->active = false;
  p->cpu = -1;
  int rc = pthread_getaffinity_np(pthread_self(), sizeof p->saved, &p->saved);
  if (rc != 0)
    return -rc;
  cpu_set_t all; /* the process's (its main thread's) mask, whatever the caller has now */
  if (sched_getaffinity(0, sizeof all, &all) != 0)
    return -errno;
  for (int cpu = 0; cpu < CPU_SETSIZE && p->cpu < 0; cpu++)
    if (CPU_ISSET(cpu, &all))
      p->cpu = cpu;
  if (p->cpu < 0)
    return 0;
  if ((rc = pin_self(p->cpu)) != 0)
    return rc;
  p->active = true;
  return 0;
}

int mb_bench_pin_serving_self(const mb_bench_pin *p) {
  return p->active ? pin_self(p->cpu) : 0;
}

/* From the harness thread's mask before mb_bench_pin_begin (it is pinned now). */
int mb_bench_pin_other_cpu(const mb_bench_pin *p) {
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
    if (CPU_ISSET(cpu, &p->saved) && cpu != p->cpu)
      return cpu;
  return -1;
}

void mb_bench_pin_end(mb_bench_pin *p) {
  if (p->active)
    pthread_setaffinity_np(pthread_self(), sizeof p->saved, &p->saved);
  p->active = false;
}
