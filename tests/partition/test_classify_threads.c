/* test_classify_threads.c: the exit question asked from vCPU-like threads while the map keeps
 * changing under them (a stress test; CI also runs it under TSan). A changer cycles one region
 * through unmap, map, mapping remove and mapping add; after each completes it publishes what
 * the guest must be told from then on. A reader that saw the same published step before and
 * after its question must get exactly that answer: never RAM after an unmap completed, never
 * MMIO while the region stays mapped. */
#include <linux/kvm.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "mb_access.h"
#include "membacking.h"
#include "test_util.h"

#define MiB (1ull << 20)
#define CYCLES 100
#define READERS 2

/* step * 4 + what the guest is told once that step completed (CHANGING while one runs) */
enum { CHANGING = 3 };
static atomic_uint_fast64_t published;
static atomic_bool stop;
static atomic_ulong total_checked;

typedef struct shared {
  mb_mm *mm;
  mb_partition *part;
  mb_object *obj;
  mb_region_id r;
  atomic_ulong checked[READERS];
} shared;

typedef struct reader {
  shared *s;
  int id;
  unsigned long wrong;
} reader;

/* What the guest must be told at gpa 0x1000 once the step with this kind completed. */
static int expected(uint64_t kind) {
  return kind == 0 ? MB_GPA_MMIO : kind == 2 ? MB_GPA_FAULT : MB_GPA_RAM;
}

static void *reader_main(void *arg) {
  reader *rd = arg;
  struct kvm_run run;
  memset(&run, 0, sizeof run);
  run.exit_reason = KVM_EXIT_MMIO;
  run.mmio.phys_addr = 0x1000;
  run.mmio.len = 8;
  for (unsigned long i = 0; !atomic_load(&stop); i++) {
    uint64_t before = atomic_load(&published);
    int kind;
    if (i & 1) {
      mb_kvm_exit ex;
      kind = mb_partition_classify_exit(rd->s->part, 0, 0, &run, &ex) == 0 ? ex.kind : -1;
    } else {
      kind = mb_partition_classify(rd->s->part, 0x1000, 8, false);
    }
    uint64_t after = atomic_load(&published);
    if (before != after || (before & 3) == CHANGING)
      continue;
    rd->wrong += kind != expected(before & 3);
    atomic_fetch_add(&rd->s->checked[rd->id], 1);
    atomic_fetch_add(&total_checked, 1);
  }
  return NULL;
}

/* Publishes a step; after a completed one, lets every state be checked (bounded wait). */
static void publish(uint64_t step, uint64_t kind) {
  unsigned long seen = atomic_load(&total_checked);
  atomic_store(&published, step * 4 + kind);
  for (int i = 0; kind != CHANGING && atomic_load(&total_checked) <= seen && i < 100000;
       i++)
    sched_yield();
}

/* One cycle: unmap (MMIO), map (RAM), mapping remove (FAULT: a hole), mapping add (RAM). */
static void cycle(shared *s, uint64_t c) {
  mb_mapping_params mp = {s->r, 0, 2 * MiB, s->obj, 0, true};
  publish(c * 4 + 0, CHANGING);
  assert_int_equal(mb_region_unmap_sync(s->mm, s->r), 0);
  publish(c * 4 + 0, 0);
  publish(c * 4 + 1, CHANGING);
  assert_int_equal(mb_region_map_sync(s->mm, s->r, true), 0);
  publish(c * 4 + 1, 1);
  publish(c * 4 + 2, CHANGING);
  assert_int_equal(mb_mapping_remove_sync(s->mm, s->r, 0, 2 * MiB), 0);
  publish(c * 4 + 2, 2);
  publish(c * 4 + 3, CHANGING);
  assert_int_equal(mb_mapping_add_sync(s->mm, &mp), 0);
  publish(c * 4 + 3, 1);
}

static void test_classify_under_changes(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *mgr = tu_start("mgr"), *pl = tu_start("part");
  shared s = {0};
  mb_mm_config cfg = {.max_addr = 64 * MiB, .loop = mgr, .part_loop = pl};
  assert_int_equal(mb_mm_create(&cfg, &s.mm), 0);
  s.obj = tu_memfd_byte("t", 2 * MiB, 0x33);
  mb_region_params p = {"ram", 0, 2 * MiB, 1, false, 0};
  assert_int_equal(mb_region_add_sync(s.mm, &p, &s.r), 0);
  mb_mapping_params mp = {s.r, 0, 2 * MiB, s.obj, 0, true};
  assert_int_equal(mb_mapping_add_sync(s.mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(s.mm, s.r, true), 0);
  assert_int_equal(mb_partition_add_sync(s.mm, &mb_partition_soft, pl, &s.part), 0);
  publish(0, 1);
  pthread_t t[READERS];
  reader rd[READERS];
  for (int i = 0; i < READERS; i++) {
    rd[i] = (reader){&s, i, 0};
    assert_int_equal(pthread_create(&t[i], NULL, reader_main, &rd[i]), 0);
  }
  for (uint64_t c = 1; c <= CYCLES; c++)
    cycle(&s, c);
  atomic_store(&stop, true);
  for (int i = 0; i < READERS; i++) {
    pthread_join(t[i], NULL);
    assert_int_equal(rd[i].wrong, 0);
    assert_true(atomic_load(&s.checked[i]) > 0);
  }
  mb_mm_destroy(s.mm);
  mb_object_unref(s.obj);
  tu_stop(pl);
  tu_stop(mgr);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_classify_under_changes)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
