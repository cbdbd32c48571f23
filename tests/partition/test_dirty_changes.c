/* test_dirty_changes.c: dirty tracking across the changes that delete what a guest wrote
 * through: with tracking on, a guest writes pages just before each change (a region unmap, a
 * mapping replace, an access change, a mapping remove, a region remove, the partition's own
 * removal), and the next sync must answer exactly the pages written. Run with the partition
 * named by argv[1]:
 *   soft  the soft partition (its writes mark the set at once);
 *   fake  kvm_attach on the fake VM (tu_fake_vm.h): a guest write is a bit in its slot's log,
 *         so a change that deletes the slot must read the log first;
 *   kvm   the kvm backend on real KVM: its probe vCPU writes, the kernel logs (exits 77,
 *         skipped, without a usable /dev/kvm). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mb_access.h"
#include "membacking.h"
#include "test_util.h"
#include "tu_fake_vm.h"

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define PG (4 * KiB)

enum { SOFT, FAKE, KVM };
static int kind;

typedef struct world {
  mb_loop *mgr, *pl;
  mb_mm *mm;
  mb_partition *part;
  tu_fake_vm vm;
  mb_kvm_attach_config kc;
  mb_object *a, *b;
  mb_region_id low, high;  /* [0, 4M) and [8M, 12M), each one mapping of a */
  uint64_t written[64];    /* the pages written since the last sync */
  size_t nwritten;
} world;

static mb_region_id ram(world *w, const char *name, uint64_t gpa, uint64_t size) {
  mb_region_id id;
  mb_region_params p = {name, gpa, size, 0, false, 0};
  assert_int_equal(mb_region_add_sync(w->mm, &p, &id), 0);
  mb_mapping_params m = {id, 0, size, w->a, gpa, true};
  assert_int_equal(mb_mapping_add_sync(w->mm, &m), 0);
  assert_int_equal(mb_region_map_sync(w->mm, id, true), 0);
  return id;
}

static void partition_add(world *w) {
  if (kind == FAKE) {
    mb_partition_params pp = tu_fake_params(&w->vm, &w->kc, 1, 32);
    assert_int_equal(mb_partition_attach_sync(w->mm, &pp, &w->part), 0);
  } else {
    const mb_partition_ops *ops = kind == SOFT ? &mb_partition_soft : &mb_partition_kvm;
    assert_int_equal(mb_partition_add_sync(w->mm, ops, w->pl, &w->part), 0);
  }
}

static void world_init(world *w) {
  memset(w, 0, sizeof *w);
  assert_int_equal(mb_access_reinstall(), 0);
  tu_fake_init(&w->vm);
  w->mgr = tu_start("mgr");
  w->pl = tu_start("part");
  mb_mm_config cfg = {.max_addr = 1ull << 30, .loop = w->mgr, .part_loop = w->pl};
  assert_int_equal(mb_mm_create(&cfg, &w->mm), 0);
  w->a = tu_memfd_byte("a", 16 * MiB, 0);
  w->b = tu_memfd_byte("b", 16 * MiB, 0);
  partition_add(w);
  w->low = ram(w, "low", 0, 4 * MiB);
  w->high = ram(w, "high", 8 * MiB, 4 * MiB);
  assert_int_equal(mb_dirty_start_sync(w->mm), 0);
}

static void world_fini(world *w) {
  mb_mm_destroy(w->mm);
  mb_object_unref(w->a);
  mb_object_unref(w->b);
  tu_stop(w->mgr);
  tu_stop(w->pl);
  tu_fake_fini(&w->vm);
}

/* The guest writes a byte in each of n pages from gpa on, every third page. */
static void guest_writes(world *w, uint64_t gpa, int n) {
  for (int i = 0; i < n; i++) {
    uint64_t at = gpa + (uint64_t)i * 3 * PG;
    uint8_t v = (uint8_t)(i + 1);
    if (kind == FAKE)
      assert_true(tu_fake_dirty(&w->vm, at));
    else
      assert_int_equal(mb_partition_access_sync(w->part, at + 5, &v, 1, true), 0);
    assert_true(w->nwritten < 64);
    w->written[w->nwritten++] = at;
  }
}

/* The next sync answers exactly the pages written since the last one. */
static void expect_synced(world *w) {
  mb_range_list *l = NULL;
  assert_int_equal(mb_dirty_sync_ranges_sync(w->mm, 0, 1ull << 30, &l), 0);
  size_t k = 0;
  for (size_t i = 0; i < l->count; i++)
    for (uint64_t p = l->ranges[i].gpa; p < l->ranges[i].gpa + l->ranges[i].size; p += PG) {
      assert_true(k < w->nwritten);
      assert_int_equal(p, w->written[k++]); /* written in ascending order by each test */
    }
  assert_int_equal(k, w->nwritten);
  free(l);
  w->nwritten = 0;
}

static void test_unmap(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  guest_writes(&w, 64 * KiB, 5);
  assert_int_equal(mb_region_unmap_sync(w.mm, w.low), 0);
  expect_synced(&w);
  assert_int_equal(mb_region_map_sync(w.mm, w.low, true), 0);
  guest_writes(&w, 1 * MiB, 2);
  expect_synced(&w);
  world_fini(&w);
}

static void test_replace(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  guest_writes(&w, 8 * MiB + 2 * MiB, 4);
  mb_mapping_params p = {w.high, 2 * MiB, 1 * MiB, w.b, 0, true};
  assert_int_equal(mb_mapping_replace_sync(w.mm, &p), 0);
  expect_synced(&w);
  world_fini(&w);
}

static void test_access_change(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  guest_writes(&w, 0, 6);
  assert_int_equal(mb_region_map_sync(w.mm, w.low, false), 0); /* rw -> ro: slot delete+add */
  expect_synced(&w);
  assert_int_equal(mb_region_map_sync(w.mm, w.low, true), 0);
  guest_writes(&w, 2 * MiB, 1);
  expect_synced(&w);
  world_fini(&w);
}

static void test_removes(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  guest_writes(&w, 8 * MiB, 3);
  assert_int_equal(mb_mapping_remove_sync(w.mm, w.high, 0, 64 * KiB), 0);
  expect_synced(&w);
  guest_writes(&w, 1 * MiB, 3);
  guest_writes(&w, 9 * MiB, 3);
  assert_int_equal(mb_region_remove_sync(w.mm, w.low), 0);
  assert_int_equal(mb_region_remove_sync(w.mm, w.high), 0);
  expect_synced(&w);
  world_fini(&w);
}

static void test_partition_remove(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  guest_writes(&w, 3 * MiB, 4);
  guest_writes(&w, 8 * MiB, 4);
  assert_int_equal(mb_partition_remove_sync(w.part), 0); /* its slots go: logs read first */
  expect_synced(&w);
  world_fini(&w);
}

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "soft";
  kind = strcmp(what, "fake") == 0 ? FAKE : strcmp(what, "kvm") == 0 ? KVM : SOFT;
  if (kind == KVM && !tu_kvm_usable()) {
    printf("SKIP: no usable /dev/kvm here: dirty tracking on real KVM was not run\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unmap),         cmocka_unit_test(test_replace),
      cmocka_unit_test(test_access_change), cmocka_unit_test(test_removes),
      cmocka_unit_test(test_partition_remove),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
