/* test_dirty_threads.c: dirty tracking under concurrency (dirty_log.h's invariant: a page
 * written while tracking is on is marked after its write, and a sync never loses a mark).
 * Writer threads write their own pages through a VA mapper and under writable locks (taken and
 * released all the time) while the main thread syncs random ranges; afterwards the union of
 * every sync's answers must be exactly the pages written: none missed, none that nobody
 * wrote. Run under TSan as well (suite concurrent). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "mb_access.h"
#include "membacking.h"
#include "test_util.h"

#define MiB (1ull << 20)
#define PG 4096ull

enum { WRITERS = 3, OWN = 256, ALL = 1024, ROUNDS = 1500 }; /* pages [WRITERS * OWN, ALL): never */

typedef struct shared {
  mb_mm *mm;
  mb_mapper *mapper;
  atomic_int running;
  bool written[ALL]; /* each writer sets its own pages' entries only */
} shared;

typedef struct writer {
  shared *s;
  int id;
  uint64_t rng;
} writer;

static uint32_t next(writer *w) {
  w->rng ^= w->rng << 13, w->rng ^= w->rng >> 7, w->rng ^= w->rng << 17;
  return (uint32_t)(w->rng >> 32);
}

/* One write of page p: through the mapper, or under a writable lock through its pointer. */
static void write_page(writer *w, uint64_t p) {
  shared *s = w->s;
  uint64_t v = p ^ (uint64_t)w->id << 56;
  if (next(w) % 2) {
    assert_int_equal(mb_mapper_write(s->mapper, p * PG + 8, &v, sizeof v), 0);
  } else {
    mb_lock *l = NULL;
    assert_int_equal(mb_mapper_lock(s->mapper, p * PG, PG, true, &l), 0);
    memcpy((uint8_t *)mb_lock_ptr(l) + 16, &v, sizeof v);
    assert_int_equal(mb_mapper_unlock(l), 0);
  }
  s->written[p] = true;
}

static void *writer_main(void *arg) {
  writer *w = arg;
  for (int i = 0; i < ROUNDS; i++)
    write_page(w, (uint64_t)w->id * OWN + next(w) % OWN);
  atomic_fetch_sub(&w->s->running, 1);
  return NULL;
}

/* Syncs [first, first + n) pages, adding its answer to seen. */
static void sync_into(shared *s, uint64_t first, uint64_t n, bool *seen) {
  mb_range_list *l = NULL;
  assert_int_equal(mb_dirty_sync_ranges_sync(s->mm, first * PG, n * PG, &l), 0);
  for (size_t i = 0; i < l->count; i++)
    for (uint64_t p = l->ranges[i].gpa / PG; p < (l->ranges[i].gpa + l->ranges[i].size) / PG; p++)
      seen[p] = true;
  free(l);
}

static void test_writers_and_syncs(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *mgr = tu_start("mgr"), *ml = tu_start("mapper");
  shared s = {0};
  mb_mm_config cfg = {.max_addr = 1ull << 30, .loop = mgr};
  assert_int_equal(mb_mm_create(&cfg, &s.mm), 0);
  mb_object *ram = tu_memfd_byte("ram", ALL * PG, 0);
  mb_region_id id;
  mb_region_params rp = {"ram", 0, ALL * PG, 0, false, 0};
  assert_int_equal(mb_region_add_sync(s.mm, &rp, &id), 0);
  mb_mapping_params mp = {id, 0, ALL * PG, ram, 0, true};
  assert_int_equal(mb_mapping_add_sync(s.mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(s.mm, id, true), 0);
  assert_int_equal(mb_mapper_add_sync(s.mm, ml, true, &s.mapper), 0);
  assert_int_equal(mb_dirty_start_sync(s.mm), 0);
  static bool seen[ALL];
  memset(seen, 0, sizeof seen);
  writer w[WRITERS];
  pthread_t t[WRITERS];
  atomic_store(&s.running, WRITERS);
  for (int i = 0; i < WRITERS; i++) {
    w[i] = (writer){&s, i, 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)};
    assert_int_equal(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
  }
  writer r = {&s, -1, 12345};
  while (atomic_load(&s.running) > 0) {
    uint64_t first = next(&r) % ALL;
    sync_into(&s, first, 1 + next(&r) % (ALL - first), seen);
  }
  for (int i = 0; i < WRITERS; i++)
    pthread_join(t[i], NULL);
  sync_into(&s, 0, ALL, seen);
  for (int p = 0; p < ALL; p++)
    if (seen[p] != s.written[p])
      fail_msg("page %d: written %d, answered %d", p, s.written[p], seen[p]);
  assert_int_equal(mb_dirty_stop_sync(s.mm), 0);
  mb_mm_destroy(s.mm);
  mb_object_unref(ram);
  tu_stop(mgr);
  tu_stop(ml);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_writers_and_syncs)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
