/* test_vtl_alloc_fail.c: every allocation of a region, mapping or protection operation on a
 * manager with VTLs 0, 1 and 2 (and the VTL-2 alias) made to fail in turn (mem/fault_inject.h,
 * MB_FI_ALLOC). An operation on a VTL-0 region changes its shadow in every view at once; a
 * failure in any of them, in the region manager, the mapping manager, a mapper or a partition,
 * must leave everything as it was: every consumer's map, what each mapper reads, the
 * protections and the region states. A run in which nothing failed must equal the reference.
 * Built from the library's sources with the seam on (tests/api/meson.build). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fault_inject.h"
#include "membacking.h"
#include "test_util.h"

#define MiB (1ull << 20)
enum { MAX_N = 600, PG = 4096, FP_MAX = 8192 };

typedef struct world {
  mb_loop *loop;
  mb_mm *mm;
  mb_object *obj[2];
  mb_region_id ram, sec, hi;
  mb_mapper *m[3];
  mb_partition *p[3];
} world;

static const uint64_t ALIAS = 64 * MiB;

static void fill(mb_object *o, uint8_t v) {
  int fd = mb_object_fd(o);
  uint8_t page[PG];
  memset(page, v, sizeof page);
  for (uint64_t at = 0; at < 4 * MiB; at += PG)
    assert_int_equal(pwrite(fd, page, PG, (off_t)at), PG);
}

/* VTL-0 RAM [0, 4M) and VTL-2 memory [8M, 12M), mapped; a mapper and a soft partition at each
 * VTL; VTL 0 protected in places. */
static void world_make(world *w, mb_loop *loop) {
  *w = (world){.loop = loop};
  mb_mm_config cfg = {.max_addr = 32 * MiB, .overlap = MB_OVERLAP_ANY, .loop = loop, .vtls = 7,
                      .vtl0_alias = ALIAS};
  assert_int_equal(mb_mm_create(&cfg, &w->mm), 0);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(mb_object_create(MB_OBJECT_MEMFD, 4 * MiB, "o", &w->obj[i]), 0);
    fill(w->obj[i], (uint8_t)(0x11 * (i + 1)));
  }
  mb_region_params rp = {.name = "ram", .gpa = 0, .size = 4 * MiB};
  assert_int_equal(mb_region_add_sync(w->mm, &rp, &w->ram), 0);
  rp = (mb_region_params){.name = "sec", .gpa = 8 * MiB, .size = 4 * MiB, .vtl = 2};
  assert_int_equal(mb_region_add_sync(w->mm, &rp, &w->sec), 0);
  mb_mapping_params mp = {.region = w->ram, .size = 3 * MiB, .obj = w->obj[0], .writable = true};
  assert_int_equal(mb_mapping_add_sync(w->mm, &mp), 0);
  mp = (mb_mapping_params){.region = w->sec, .size = 4 * MiB, .obj = w->obj[1], .writable = true};
  assert_int_equal(mb_mapping_add_sync(w->mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(w->mm, w->ram, true), 0);
  assert_int_equal(mb_region_map_sync(w->mm, w->sec, true), 0);
  for (uint8_t v = 0; v < 3; v++) {
    assert_int_equal(mb_mapper_add_vtl_sync(w->mm, NULL, true, v, &w->m[v]), 0);
    mb_partition_params pp = {.ops = &mb_partition_soft, .vtl = v};
    assert_int_equal(mb_partition_attach_sync(w->mm, &pp, &w->p[v]), 0);
  }
  assert_int_equal(mb_protect_sync(w->mm, 0, 64 * 1024, 8 * PG, MB_PROT_RO), 0);
  assert_int_equal(mb_protect_sync(w->mm, 1, 2 * MiB, PG, MB_PROT_NONE), 0);
  rp = (mb_region_params){.name = "hi", .gpa = 2 * MiB, .size = MiB, .priority = 9};
  assert_int_equal(mb_region_add_sync(w->mm, &rp, &w->hi), 0); /* unmapped, over ram */
  mp = (mb_mapping_params){.region = w->hi, .size = MiB, .obj = w->obj[1], .writable = true};
  assert_int_equal(mb_mapping_add_sync(w->mm, &mp), 0);
}

static void world_free(world *w) {
  mb_mm_destroy(w->mm);
  for (int i = 0; i < 2; i++)
    mb_object_unref(w->obj[i]);
}

static void put(char *fp, size_t *at, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(fp + *at, FP_MAX - *at, fmt, ap);
  va_end(ap);
  assert_true(n >= 0 && *at + (size_t)n < FP_MAX);
  *at += (size_t)n;
}

static void put_ranges(char *fp, size_t *at, const char *who, mb_range_list *l) {
  put(fp, at, "%s:", who);
  for (size_t i = 0; i < l->count; i++)
    put(fp, at, " %llx+%llx%s", (unsigned long long)l->ranges[i].gpa,
        (unsigned long long)l->ranges[i].size, l->ranges[i].writable ? "w" : "r");
  put(fp, at, "\n");
  free(l);
}

/* What one page reads and whether it takes a write of its own bytes, through mapper v. */
static void put_page(char *fp, size_t *at, world *w, int v, uint64_t gpa) {
  uint8_t b = 0;
  int r = mb_mapper_read(w->m[v], gpa, &b, 1);
  int wr = r == 0 ? mb_mapper_write(w->m[v], gpa, &b, 1) : r;
  put(fp, at, "%d@%llx=%d/%02x/%d ", v, (unsigned long long)gpa, r, b, wr);
}

/* Everything a user can observe of the world. */
static void fingerprint(world *w, char *fp) {
  size_t at = 0;
  mb_range_list *l;
  for (int v = 0; v < 3; v++) {
    assert_int_equal(mb_mapper_ranges_sync(w->m[v], &l), 0);
    put_ranges(fp, &at, "m", l);
    assert_int_equal(mb_partition_ranges_sync(w->p[v], &l), 0);
    put_ranges(fp, &at, "p", l);
  }
  static const uint64_t pages[] = {0, 64 * 1024, 2 * MiB, 3 * MiB, 8 * MiB, 9 * MiB};
  for (int v = 0; v < 3; v++)
    for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++)
      put_page(fp, &at, w, v, pages[i]);
  put_page(fp, &at, w, 2, ALIAS + 64 * 1024);
  for (uint8_t v = 0; v < 2; v++) {
    mb_prot_list *pl;
    assert_int_equal(mb_protections_sync(w->mm, v, &pl), 0);
    put(fp, &at, "\nprot%u:", v);
    for (size_t i = 0; i < pl->count; i++)
      put(fp, &at, " %llx+%llx:%u", (unsigned long long)pl->items[i].gpa,
          (unsigned long long)pl->items[i].size, pl->items[i].access);
    free(pl);
  }
  mb_region_id ids[] = {w->ram, w->sec, w->hi};
  put(fp, &at, "\nstates");
  for (int i = 0; i < 3; i++) {
    int st = -1, rc = mb_region_state_sync(w->mm, ids[i], &st);
    put(fp, &at, " %d/%d", rc, st);
  }
  put(fp, &at, "\n");
}

typedef int (*op_fn)(world *w);

static int op_unmap(world *w) { return mb_region_unmap_sync(w->mm, w->ram); }
static int op_map_ro(world *w) { return mb_region_map_sync(w->mm, w->ram, false); }
static int op_remove(world *w) { return mb_region_remove_sync(w->mm, w->ram); }
static int op_map_remove(world *w) {
  return mb_mapping_remove_sync(w->mm, w->ram, MiB, MiB + 64 * 1024);
}
static int op_protect0(world *w) {
  return mb_protect_sync(w->mm, 0, 60 * 1024, 16 * PG, MB_PROT_NONE);
}
static int op_protect1(world *w) { return mb_protect_sync(w->mm, 1, 0, 4 * MiB, MB_PROT_RO); }

static int op_replace(world *w) {
  mb_mapping_params mp = {.region = w->ram, .offset = MiB, .size = MiB, .obj = w->obj[1],
                          .obj_offset = 2 * MiB, .writable = true};
  return mb_mapping_replace_sync(w->mm, &mp);
}

static int op_map_hi(world *w) { return mb_region_map_sync(w->mm, w->hi, true); }

static int op_add_region(world *w) {
  mb_region_params rp = {.name = "new", .gpa = 16 * MiB, .size = MiB, .vtl = 1};
  mb_region_id id;
  return mb_region_add_sync(w->mm, &rp, &id);
}

static int op_add_mapping(world *w) { /* into the ram region's hole */
  mb_mapping_params mp = {.region = w->ram, .offset = 3 * MiB, .size = MiB, .obj = w->obj[1],
                          .obj_offset = MiB, .writable = false};
  return mb_mapping_add_sync(w->mm, &mp);
}

/* A transaction of one change: the commit runs whatever the change answered (a refused one
 * leaves nothing to do); the first failure is the answer. */
static int txn_of(world *w, op_fn change) {
  int rc = mb_txn_begin_sync(w->mm);
  if (rc) return rc;
  int c = change(w);
  rc = mb_txn_commit_sync(w->mm);
  return c ? c : rc;
}

static int op_txn_protect(world *w) { return txn_of(w, op_protect0); }
static int op_txn_map_ro(world *w) { return txn_of(w, op_map_ro); }

/* Runs op with the n-th allocation failing, for n = 1, 2, ... until a run in which none
 * did; each on a fresh world. A failed run leaves the world exactly as before; a run where
 * the failure fired but the operation succeeded (a retry) equals the reference. */
static void sweep(const char *what, op_fn op) {
  assert_int_equal(mb_access_reinstall(), 0); /* ours in front of cmocka's handlers */
  mb_loop *loop = tu_start("vtl");
  char *before = malloc(FP_MAX), *after = malloc(FP_MAX), *ref = malloc(FP_MAX);
  world w;
  world_make(&w, loop);
  assert_int_equal(op(&w), 0);
  fingerprint(&w, ref);
  world_free(&w);
  uint64_t n = 1;
  for (; n < MAX_N; n++) {
    world_make(&w, loop);
    fingerprint(&w, before);
    mb_fi_reset();
    assert_int_equal(mb_fi_arm(MB_FI_ALLOC, n, ENOMEM), 0);
    int rc = op(&w);
    bool fired = mb_fi_injected(MB_FI_ALLOC) > 0;
    mb_fi_reset();
    if (rc != 0 && !(fired && (rc == MB_ENOMEM || rc == -ENOMEM)))
      fail_msg("%s n=%llu: %s", what, (unsigned long long)n, membacking_strerror(rc));
    fingerprint(&w, after);
    if (strcmp(after, rc ? before : ref) != 0)
      fail_msg("%s n=%llu (rc %d):\nexpected:\n%s\ngot:\n%s", what, (unsigned long long)n, rc,
               rc ? before : ref, after);
    world_free(&w);
    if (!fired) break;
  }
  assert_true(n > 1 && n < MAX_N);
  print_message("%s: %llu allocations failed in turn\n", what, (unsigned long long)n - 1);
  free(before), free(after), free(ref);
  tu_stop(loop);
}

static void test_region_ops(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  sweep("region unmap", op_unmap);
  sweep("region map ro", op_map_ro);
  sweep("region remove", op_remove);
  sweep("region map over", op_map_hi);
  sweep("region add", op_add_region);
}

static void test_mapping_ops(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  sweep("mapping add", op_add_mapping);
  sweep("mapping remove", op_map_remove);
  sweep("mapping replace", op_replace);
}

static void test_protect_ops(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  sweep("protect 0", op_protect0);
  sweep("protect 1", op_protect1);
}

static void test_txn(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  sweep("txn protect", op_txn_protect);
  sweep("txn map ro", op_txn_map_ro);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_region_ops),
      cmocka_unit_test(test_mapping_ops),
      cmocka_unit_test(test_protect_ops),
      cmocka_unit_test(test_txn),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
