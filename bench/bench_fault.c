/* bench_fault.c: fault.lazy (spec/bench.md): the first read of an untouched mapped page
 * through a lazy VA mapper whose mapping manager runs on another thread. Its floor is
 * syscalls.fault_remote: a SIGSEGV on a PROT_NONE page served by a second, sleeping thread
 * over a raw futex round trip.
 *
 * Setup: a manager on a started loop (its own thread), a 2 MiB RAM region holding one 4 KiB
 * mapping of a filled memfd page (so the fault is a minor one, as in the floor), mapped, and
 * a lazy VA mapper on the manager's loop. The harness thread reads through the lazy mapper.
 * The harness thread and the loop thread are pinned to one CPU, as the floor's two threads
 * are (affinity.h: otherwise the scheduler decides whether a hand-off is a same-CPU switch or
 * a cross-CPU wake-up, whose cost in this nested guest varies tenfold, and the two sides do
 * not get the same).
 *
 * One sample (self-timed):
 *   untimed  mapping remove + mapping add of the page (_sync, from the harness thread): the
 *            lazy mapper's VA at the page is PROT_NONE again and the page is still mapped,
 *            i.e. untouched; then a pause longer than the runtime's linger (loop.c spins
 *            20 us after a turn that talked to another thread before it sleeps), so that
 *            the manager's thread is asleep like the floor's mapper thread;
 *   timed    mb_mapper_read() of one byte of the page: SIGSEGV, MM_RESOLVE to the mapping
 *            manager (blocking), which has the lazy mapper establish the page, and the
 *            retried copy.
 * The byte read is checked.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "affinity.h"
#include "areas.h"
#include "harness.h"
#include "membacking.h"

#define MIB ((uint64_t)1 << 20)
#define PAGE ((uint64_t)4096)
#define FAULT_GPA ((uint64_t)1 << 30) /* the region's start */
#define FILL_BYTE 0x5a
/* The guest address space: small enough for valgrind to reserve (callgrind profiles). */
#define MAX_ADDR ((uint64_t)8 << 30)

/* Longer than the runtime's LINGER_NS (20 us: a loop spins that long after a turn that talked
 * to another thread before it sleeps), with margin. */
enum { SETTLE_NS = 50000 };

typedef struct fault_lazy {
  mb_bench_pin pin; /* the harness thread and the manager's loop on one CPU (affinity.h) */
  mb_loop *loop;
  mb_mm *mm;
  mb_mapper *lazy;
  mb_object *page;
  mb_region_id id;
} fault_lazy;

static void fault_lazy_teardown(void *state) {
  fault_lazy *f = state;
  if (f->mm)
    mb_mm_destroy(f->mm); /* its mappers too */
  mb_object_unref(f->page);
  if (f->loop) {
    mb_loop_stop(f->loop);
    mb_loop_free(f->loop);
  }
  mb_bench_pin_end(&f->pin);
  free(f);
}

static void pin_loop_thread(mb_loop *loop, void *arg) {
  (void)loop;
  fault_lazy *f = arg;
  mb_bench_pin_serving_self(&f->pin);
}

static int fault_lazy_setup(mb_bench *b, void **state) {
  fault_lazy *f = calloc(1, sizeof *f);
  if (f == NULL)
    return -ENOMEM;
  const char *what = "sched_setaffinity";
  int rc = mb_bench_pin_begin(&f->pin);
  if (rc != 0)
    goto fail;
  what = "loop";
  f->loop = mb_loop_start("bench-fault-mm", &rc);
  if (f->loop == NULL)
    goto fail;
  mb_loop_exec(f->loop, pin_loop_thread, f);
  what = "mb_mm_create";
  mb_mm_config cfg = {.max_addr = MAX_ADDR, .overlap = MB_OVERLAP_NESTED, .loop = f->loop};
  if ((rc = mb_mm_create(&cfg, &f->mm)) != 0) {
    f->mm = NULL;
    goto fail;
  }
  what = "object";
  if ((rc = mb_object_create(MB_OBJECT_MEMFD, PAGE, "bench-fault", &f->page)) != 0 ||
      (rc = mb_object_fill_byte(f->page, FILL_BYTE)) != 0)
    goto fail;
  what = "region";
  mb_region_params rp = {.name = "fault", .gpa = FAULT_GPA, .size = 2 * MIB};
  if ((rc = mb_region_add_sync(f->mm, &rp, &f->id)) != 0)
    goto fail;
  what = "mapping add";
  mb_mapping_params mp = {.region = f->id, .offset = 0, .size = PAGE, .obj = f->page,
                          .obj_offset = 0, .writable = true};
  if ((rc = mb_mapping_add_sync(f->mm, &mp)) != 0)
    goto fail;
  what = "region map";
  if ((rc = mb_region_map_sync(f->mm, f->id, true)) != 0)
    goto fail;
  what = "lazy mapper";
  if ((rc = mb_mapper_add_sync(f->mm, NULL, false, &f->lazy)) != 0)
    goto fail;
  *state = f;
  return 0;
fail:
  fault_lazy_teardown(f);
  return mb_bench_fail(b, "%s: %s", what, membacking_strerror(rc));
}

static void settle(void) {
  uint64_t end = mb_bench_now_ns() + SETTLE_NS;
  while (mb_bench_now_ns() < end)
    __builtin_ia32_pause();
}

static int fault_lazy_run(mb_bench *b, void *state, uint32_t n) {
  fault_lazy *f = state;
  mb_mapping_params mp = {.region = f->id, .offset = 0, .size = PAGE, .obj = f->page,
                          .obj_offset = 0, .writable = true};
  for (uint32_t i = 0; i < n; i++) {
    int rc = mb_mapping_remove_sync(f->mm, f->id, 0, PAGE);
    if (rc != 0)
      return mb_bench_fail(b, "mapping remove: %s", membacking_strerror(rc));
    if ((rc = mb_mapping_add_sync(f->mm, &mp)) != 0)
      return mb_bench_fail(b, "mapping add: %s", membacking_strerror(rc));
    settle();
    volatile unsigned char byte = 0;
    uint64_t t0 = mb_bench_now_ns();
    rc = mb_mapper_read(f->lazy, FAULT_GPA, (void *)&byte, 1);
    uint64_t t1 = mb_bench_now_ns();
    if (rc != 0)
      return mb_bench_fail(b, "read through the lazy mapper: %s", membacking_strerror(rc));
    if (byte != FILL_BYTE)
      return mb_bench_fail(b, "read 0x%02x, expected 0x%02x", byte, FILL_BYTE);
    mb_bench_sample(b, (double)(t1 - t0));
  }
  return 0;
}

static const mb_bench_def fault_benches[] = {
    {
        .name = "fault.lazy",
        .unit = MB_BENCH_NS,
        .baseline = "syscalls.fault_remote",
        .flags = MB_BENCH_SELF_TIMED,
        .samples = 10000,
        .setup = fault_lazy_setup,
        .run = fault_lazy_run,
        .teardown = fault_lazy_teardown,
        .doc = "first read of an untouched mapped page through a lazy VA mapper, its mapping "
               "manager on another (sleeping) thread",
    },
};

void mb_bench_area_bench_fault(void) { MB_BENCH_REGISTER_ALL(fault_benches); }
