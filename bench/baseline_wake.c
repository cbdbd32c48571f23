/* baseline_wake.c: the floors of a hand-off between two threads (spec/bench.md, version 2):
 *
 *   eventfd.pingpong   two raw threads bouncing one eventfd write each way, each blocked in
 *                      read(2): the kernel's wake floor, the floor of rpc.cross_thread
 *   spin.pingpong      two raw threads bouncing one cache line, both spinning: the hardware
 *                      floor (what a hand-off costs when neither side ever sleeps)
 *
 * One operation is one round trip. The harness thread is one side, inside run(); the peer is
 * a thread of the benchmark's own.
 *
 * eventfd.pingpong is not pinned, like rpc.cross_thread, which it is the floor of: both see
 * whatever placement the scheduler picks (one CPU: a context switch each way; two: a wake-up
 * IPI each way, ~25 us and up in this machine's nested guest). Each operation is timed alone.
 *
 * spin.pingpong pins its two threads to two different CPUs (affinity.h): two spinners on one
 * CPU would hand over only when the scheduler preempts one, which measures the time slice.
 * It skips where the process may use a single CPU. A round trip is a few hundred ns, so it is
 * timed in batches of SPIN_BATCH (the clock itself costs ~25 ns). Both threads burn a CPU
 * for as long as the benchmark is set up: cpu_ns is about twice the wall time. The kernel
 * brings a running thread's CPU time up to date only at its scheduler ticks, so the peer's
 * share is sampled, not exact: SPIN_SAMPLES (a tenth with --quick) makes the measured time
 * long enough for many ticks.
 */

#include "affinity.h"
#include "areas.h"
#include "harness.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* ---- eventfd.pingpong ----------------------------------------------------------------------- */

typedef struct efd_pingpong {
  int ping;            /* written by the harness thread, read by the peer */
  int pong;            /* written by the peer, read by the harness thread */
  pthread_t peer;
  atomic_bool stop;    /* set before the last ping: the peer returns instead of answering */
} efd_pingpong;

static int efd_bump(int fd) {
  uint64_t one = 1;
  return write(fd, &one, sizeof one) == (ssize_t)sizeof one ? 0 : -errno;
}

static int efd_wait(int fd) {
  uint64_t v;
  for (;;) {
    if (read(fd, &v, sizeof v) == (ssize_t)sizeof v)
      return 0;
    if (errno != EINTR)
      return -errno;
  }
}

static void *efd_peer_main(void *arg) {
  efd_pingpong *pp = arg;
  while (efd_wait(pp->ping) == 0 && !atomic_load_explicit(&pp->stop, memory_order_acquire))
    if (efd_bump(pp->pong) != 0)
      break;
  return NULL;
}

static void efd_close(efd_pingpong *pp) {
  if (pp->ping >= 0)
    close(pp->ping);
  if (pp->pong >= 0)
    close(pp->pong);
  free(pp);
}

static int efd_setup(mb_bench *b, void **state) {
  efd_pingpong *pp = calloc(1, sizeof *pp);
  if (pp == NULL)
    return -ENOMEM;
  pp->ping = eventfd(0, EFD_CLOEXEC);
  pp->pong = eventfd(0, EFD_CLOEXEC);
  int rc = pp->ping < 0 || pp->pong < 0 ? -errno : 0;
  if (rc != 0) {
    efd_close(pp);
    return mb_bench_fail(b, "eventfd: %s", strerror(-rc));
  }
  rc = pthread_create(&pp->peer, NULL, efd_peer_main, pp);
  if (rc != 0) {
    efd_close(pp);
    return mb_bench_fail(b, "pthread_create: %s", strerror(rc));
  }
  *state = pp;
  return 0;
}

static int efd_run(mb_bench *b, void *state, uint32_t n) {
  efd_pingpong *pp = state;
  for (uint32_t i = 0; i < n; i++) {
    int rc = efd_bump(pp->ping);
    if (rc == 0)
      rc = efd_wait(pp->pong);
    if (rc != 0)
      return mb_bench_fail(b, "eventfd round trip: %s", strerror(-rc));
  }
  return 0;
}

/* No round trip is in flight here: run() always waits for its pong. */
static void efd_teardown(void *state) {
  efd_pingpong *pp = state;
  atomic_store_explicit(&pp->stop, true, memory_order_release);
  efd_bump(pp->ping);
  pthread_join(pp->peer, NULL);
  efd_close(pp);
}

/* ---- spin.pingpong -------------------------------------------------------------------------- */

enum { SPIN_BATCH = 16, SPIN_SAMPLES = 100000 };
#define SPIN_STOP UINT64_MAX

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__ __volatile__("pause");
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

typedef struct spin_pingpong {
  /* The one line both threads bounce: the harness thread writes odd values, the peer answers
   * with the next even one; SPIN_STOP ends the peer. */
  _Alignas(64) _Atomic uint64_t seq;
  char pad[64 - sizeof(uint64_t)];
  pthread_t peer;
  mb_bench_pin pin; /* the harness thread's placement, restored in teardown */
} spin_pingpong;

static void *spin_peer_main(void *arg) {
  spin_pingpong *sp = arg;
  for (;;) {
    uint64_t v = atomic_load_explicit(&sp->seq, memory_order_acquire);
    if (v == SPIN_STOP)
      return NULL;
    if (v & 1)
      atomic_store_explicit(&sp->seq, v + 1, memory_order_release);
    else
      cpu_relax();
  }
}

/* The peer thread, created already pinned to `cpu`. */
static int spin_start_peer(spin_pingpong *sp, int cpu) {
  pthread_attr_t attr;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  int rc = pthread_attr_init(&attr);
  if (rc != 0)
    return -rc;
  rc = pthread_attr_setaffinity_np(&attr, sizeof set, &set);
  if (rc == 0)
    rc = pthread_create(&sp->peer, &attr, spin_peer_main, sp);
  pthread_attr_destroy(&attr);
  return -rc;
}

static int spin_setup(mb_bench *b, void **state) {
  spin_pingpong *sp = aligned_alloc(64, sizeof *sp);
  if (sp == NULL)
    return -ENOMEM;
  memset(sp, 0, sizeof *sp);
  int rc = mb_bench_pin_begin(&sp->pin);
  int other = rc == 0 && sp->pin.active ? mb_bench_pin_other_cpu(&sp->pin) : -1;
  if (other < 0) {
    mb_bench_pin_end(&sp->pin);
    free(sp);
    return rc != 0 ? mb_bench_fail(b, "pinning: %s", strerror(-rc))
                   : mb_bench_skip(b, "needs two CPUs (the process may use one)");
  }
  if ((rc = spin_start_peer(sp, other)) != 0) {
    mb_bench_pin_end(&sp->pin);
    free(sp);
    return mb_bench_fail(b, "peer thread: %s", strerror(-rc));
  }
  *state = sp;
  return 0;
}

static int spin_run(mb_bench *b, void *state, uint32_t n) {
  (void)b;
  spin_pingpong *sp = state;
  uint64_t v = atomic_load_explicit(&sp->seq, memory_order_relaxed);
  for (uint32_t i = 0; i < n; i++) {
    atomic_store_explicit(&sp->seq, v + 1, memory_order_release);
    v += 2;
    while (atomic_load_explicit(&sp->seq, memory_order_acquire) != v)
      cpu_relax();
  }
  return 0;
}

static void spin_teardown(void *state) {
  spin_pingpong *sp = state;
  atomic_store_explicit(&sp->seq, SPIN_STOP, memory_order_release);
  pthread_join(sp->peer, NULL);
  mb_bench_pin_end(&sp->pin);
  free(sp);
}

static const mb_bench_def wake_benches[] = {
    {.name = "eventfd.pingpong", .unit = MB_BENCH_NS, .setup = efd_setup, .run = efd_run,
     .teardown = efd_teardown, .flags = MB_BENCH_CPU,
     .doc = "one eventfd write each way between two raw threads blocked in read (kernel floor)"},
    {.name = "spin.pingpong", .unit = MB_BENCH_NS, .setup = spin_setup, .run = spin_run,
     .teardown = spin_teardown, .batch = SPIN_BATCH, .samples = SPIN_SAMPLES,
     .flags = MB_BENCH_CPU,
     .doc = "one cache line bounced each way between two spinning threads on two CPUs "
            "(hardware floor)"},
};

void mb_bench_area_baseline_wake(void) { MB_BENCH_REGISTER_ALL(wake_benches); }
