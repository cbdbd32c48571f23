/* test_api_txn.c: mapping replace and transactions through the public API (membacking.h), as
 * a VMM uses them: blocking calls from the test thread, an eager and a lazy mapper and a soft
 * partition on loops of their own. (Rollback under injected failures: tests/fault.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "mb_access.h"
#include "membacking.h"
#include "test_util.h"

#define MiB (1ull << 20)
#define KiB (1ull << 10)

typedef struct world {
  mb_loop *mgr, *ml, *pl;
  mb_mm *mm;
  mb_mapper *eager, *lazy;
  mb_partition *part;
  mb_object *a, *b; /* 8 MiB each, every byte 0xaa / 0xbb */
} world;

static void world_init(world *w) {
  assert_int_equal(mb_access_reinstall(), 0);
  w->mgr = tu_start("mgr");
  w->ml = tu_start("mappers");
  w->pl = tu_start("part");
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = w->mgr};
  assert_int_equal(mb_mm_create(&cfg, &w->mm), 0);
  w->a = tu_memfd_byte("a", 8 * MiB, 0xaa);
  w->b = tu_memfd_byte("b", 8 * MiB, 0xbb);
  assert_int_equal(mb_mapper_add_sync(w->mm, w->ml, true, &w->eager), 0);
  assert_int_equal(mb_mapper_add_sync(w->mm, w->ml, false, &w->lazy), 0);
  assert_int_equal(mb_partition_add_sync(w->mm, &mb_partition_soft, w->pl, &w->part), 0);
}

static void world_fini(world *w) {
  mb_mm_destroy(w->mm);
  mb_object_unref(w->a);
  mb_object_unref(w->b);
  tu_stop(w->mgr);
  tu_stop(w->ml);
  tu_stop(w->pl);
}

static mb_region_id region(world *w, uint64_t gpa, uint64_t size, uint8_t prio) {
  mb_region_id id;
  mb_region_params p = {"r", gpa, size, prio, false, 0};
  assert_int_equal(mb_region_add_sync(w->mm, &p, &id), 0);
  return id;
}

static int mapping(world *w, mb_region_id r, uint64_t off, uint64_t size, mb_object *o,
                   uint64_t obj_off, bool replace) {
  mb_mapping_params p = {r, off, size, o, obj_off, true};
  return replace ? mb_mapping_replace_sync(w->mm, &p) : mb_mapping_add_sync(w->mm, &p);
}

/* The byte at gpa through a mapper, or -(error). */
static int byte_via(mb_mapper *m, uint64_t gpa) {
  uint8_t v;
  int rc = mb_mapper_read(m, gpa, &v, 1);
  return rc ? -abs(rc) - 1000 : v;
}

static int byte_guest(world *w, uint64_t gpa) {
  uint8_t v;
  int rc = mb_partition_access_sync(w->part, gpa, &v, 1, false);
  return rc ? -abs(rc) - 1000 : v;
}

/* Every view of gpa shows `want` (-1: the mappers show it unmapped, the guest a hole). */
static void expect_byte(world *w, uint64_t gpa, int want) {
  int unmapped = -abs(MB_E_UNMAPPED) - 1000;
  assert_int_equal(byte_via(w->eager, gpa), want < 0 ? unmapped : want);
  assert_int_equal(byte_via(w->lazy, gpa), want < 0 ? unmapped : want);
  if (want >= 0)
    assert_int_equal(byte_guest(w, gpa), want);
}

/* ---- mapping replace ------------------------------------------------------------------------- */

/* A straddling mapping is split at the range's edges; the new bytes show everywhere. */
static void test_replace_splits(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  mb_region_id r = region(&w, 0, 4 * MiB, 0);
  assert_int_equal(mapping(&w, r, 0, 4 * MiB, w.a, 0, false), 0);
  assert_int_equal(mb_region_map_sync(w.mm, r, true), 0);
  expect_byte(&w, 1 * MiB, 0xaa); /* the lazy mapper faults the whole mapping in */
  assert_int_equal(mapping(&w, r, 1 * MiB, 1 * MiB, w.b, 0, true), 0);
  expect_byte(&w, 1 * MiB - 1, 0xaa);
  expect_byte(&w, 1 * MiB, 0xbb);
  expect_byte(&w, 2 * MiB - 1, 0xbb);
  expect_byte(&w, 2 * MiB, 0xaa);
  /* What was split is three mappings now: removing the middle leaves the sides. */
  assert_int_equal(mb_mapping_remove_sync(w.mm, r, 1 * MiB, 1 * MiB), 0);
  expect_byte(&w, 1 * MiB, -1);
  expect_byte(&w, 3 * MiB, 0xaa);
  world_fini(&w);
}

/* A range partly unmapped (a hole) and then wholly unmapped is filled. */
static void test_replace_holes(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  mb_region_id r = region(&w, 8 * MiB, 4 * MiB, 0);
  assert_int_equal(mapping(&w, r, 0, 1 * MiB, w.a, 0, false), 0);
  assert_int_equal(mb_region_map_sync(w.mm, r, true), 0);
  assert_int_equal(mapping(&w, r, 512 * KiB, 2 * MiB, w.b, 4 * MiB, true), 0);
  expect_byte(&w, 8 * MiB, 0xaa);
  expect_byte(&w, 8 * MiB + 512 * KiB, 0xbb);
  expect_byte(&w, 10 * MiB + 512 * KiB - 1, 0xbb);
  expect_byte(&w, 10 * MiB + 512 * KiB, -1);
  assert_int_equal(mapping(&w, r, 3 * MiB, 1 * MiB, w.a, 0, true), 0);
  expect_byte(&w, 11 * MiB, 0xaa);
  world_fini(&w);
}

/* Errors as for add, minus overlap; a failed replace changes nothing. */
static void test_replace_errors(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  mb_region_id r = region(&w, 0, 4 * MiB, 0);
  assert_int_equal(mapping(&w, r, 0, 4 * MiB, w.a, 0, false), 0);
  assert_int_equal(mb_region_map_sync(w.mm, r, true), 0);
  assert_int_equal(mapping(&w, r, 4096, 100, w.b, 0, true), MB_E_INVALID);
  assert_int_equal(mapping(&w, r, 3 * MiB, 2 * MiB, w.b, 0, true), MB_E_INVALID);
  assert_int_equal(mapping(&w, r, 0, 1 * MiB, w.b, 8 * MiB, true), MB_E_INVALID);
  assert_int_equal(mapping(&w, 999, 0, 1 * MiB, w.b, 0, true), MB_E_NOTFOUND);
  expect_byte(&w, 0, 0xaa);
  expect_byte(&w, 4 * MiB - 1, 0xaa);
  world_fini(&w);
}

/* An unmapped region's replace changes no consumer; mapping the region shows it. */
static void test_replace_unmapped_region(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  mb_region_id r = region(&w, 0, 2 * MiB, 0);
  assert_int_equal(mapping(&w, r, 0, 2 * MiB, w.a, 0, false), 0);
  assert_int_equal(mapping(&w, r, 0, 1 * MiB, w.b, 0, true), 0);
  expect_byte(&w, 0, -1);
  assert_int_equal(mb_region_map_sync(w.mm, r, true), 0);
  expect_byte(&w, 0, 0xbb);
  expect_byte(&w, 1 * MiB, 0xaa);
  world_fini(&w);
}

/* ---- transactions ---------------------------------------------------------------------------- */

static int ranges_count(mb_partition *p) {
  mb_range_list *l = NULL;
  assert_int_equal(mb_partition_ranges_sync(p, &l), 0);
  int n = (int)l->count;
  free(l);
  return n;
}

/* Inside a transaction the manager's state changes at once, consumers only at the commit. */
static void test_txn_defers(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  mb_region_id r = region(&w, 0, 2 * MiB, 0);
  assert_int_equal(mapping(&w, r, 0, 2 * MiB, w.a, 0, false), 0);
  assert_int_equal(mb_txn_begin_sync(w.mm), 0);
  assert_int_equal(mb_region_map_sync(w.mm, r, true), 0);
  int state = -1;
  assert_int_equal(mb_region_state_sync(w.mm, r, &state), 0);
  assert_int_equal(state, MB_REGION_ACTIVE);
  expect_byte(&w, 0, -1);
  assert_int_equal(byte_guest(&w, 0), -abs(MB_E_MMIO) - 1000);
  assert_int_equal(mb_txn_commit_sync(w.mm), 0);
  expect_byte(&w, 0, 0xaa);
  world_fini(&w);
}

/* The rules: nothing that changes consumers, no locks, no nesting, no stray commit. */
static void test_txn_rules(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  assert_int_equal(mb_txn_commit_sync(w.mm), MB_E_INVALID);
  assert_int_equal(mb_txn_begin_sync(w.mm), 0);
  assert_int_equal(mb_txn_begin_sync(w.mm), MB_E_INVALID);
  mb_mapper *m = NULL;
  mb_partition *p = NULL;
  mb_lock *lock = NULL;
  assert_int_equal(mb_mapper_add_sync(w.mm, w.ml, true, &m), MB_E_INVALID);
  assert_int_equal(mb_partition_add_sync(w.mm, &mb_partition_soft, w.pl, &p), MB_E_INVALID);
  assert_int_equal(mb_mapper_remove_sync(w.lazy), MB_E_INVALID);
  assert_int_equal(mb_mapper_lock(w.eager, 0, 4096, false, &lock), MB_E_INVALID);
  assert_int_equal(mb_txn_commit_sync(w.mm), 0);
  assert_int_equal(mb_mapper_add_sync(w.mm, w.ml, true, &m), 0);
  assert_int_equal(mb_mapper_remove_sync(m), 0);
  world_fini(&w);
}

/* Mixed changes, a region removed and one added, an unmap and map that cancel out. */
static void test_txn_mixed(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  mb_region_id keep = region(&w, 0, 1 * MiB, 0), gone = region(&w, 4 * MiB, 1 * MiB, 0);
  assert_int_equal(mapping(&w, keep, 0, 1 * MiB, w.a, 0, false), 0);
  assert_int_equal(mapping(&w, gone, 0, 1 * MiB, w.a, 1 * MiB, false), 0);
  assert_int_equal(mb_region_map_sync(w.mm, keep, true), 0);
  assert_int_equal(mb_region_map_sync(w.mm, gone, true), 0);
  expect_byte(&w, 0, 0xaa);
  assert_int_equal(ranges_count(w.part), 2);
  assert_int_equal(mb_txn_begin_sync(w.mm), 0);
  assert_int_equal(mb_region_unmap_sync(w.mm, keep), 0);
  assert_int_equal(mb_region_map_sync(w.mm, keep, true), 0);
  assert_int_equal(mb_region_remove_sync(w.mm, gone), 0);
  mb_region_id fresh = region(&w, 8 * MiB, 1 * MiB, 0);
  assert_int_equal(mapping(&w, fresh, 0, 1 * MiB, w.b, 0, false), 0);
  assert_int_equal(mapping(&w, keep, 0, 4096, w.b, 0, true), 0);
  assert_int_equal(mb_region_map_sync(w.mm, fresh, false), 0);
  expect_byte(&w, 4 * MiB, 0xaa); /* nothing changed yet */
  assert_int_equal(mb_txn_commit_sync(w.mm), 0);
  expect_byte(&w, 0, 0xbb);
  expect_byte(&w, 4096, 0xaa);
  expect_byte(&w, 4 * MiB, -1);
  expect_byte(&w, 8 * MiB, 0xbb);
  assert_int_equal(mb_mapper_write(w.eager, 8 * MiB, "x", 1), MB_E_READONLY);
  int state = -1;
  assert_int_equal(mb_region_state_sync(w.mm, gone, &state), MB_E_NOTFOUND);
  world_fini(&w);
}

/* A transaction left open when the manager goes: nothing leaks (ASan checks). */
static void test_txn_open_at_destroy(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  mb_region_id r = region(&w, 0, 1 * MiB, 0);
  assert_int_equal(mb_txn_begin_sync(w.mm), 0);
  assert_int_equal(mapping(&w, r, 0, 1 * MiB, w.a, 0, false), 0);
  assert_int_equal(mb_region_remove_sync(w.mm, r), 0);
  world_fini(&w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_replace_splits),
      cmocka_unit_test(test_replace_holes),
      cmocka_unit_test(test_replace_errors),
      cmocka_unit_test(test_replace_unmapped_region),
      cmocka_unit_test(test_txn_defers),
      cmocka_unit_test(test_txn_rules),
      cmocka_unit_test(test_txn_mixed),
      cmocka_unit_test(test_txn_open_at_destroy),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
