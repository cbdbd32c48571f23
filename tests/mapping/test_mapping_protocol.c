/* test_mapping_protocol.c: the mapping manager's and the VA mappers' messages on one loop
 * that the test thread runs itself (attach mode): the test plays the region manager. Eager
 * mappers only (a lazy mapper's fault would block this very thread; see
 * test_mapping_threads.c), plus lazy mappers that must receive nothing but unmaps. */
#include "mp_util.h"

#include <unistd.h>

static mb_vam *add_vam(mp_fixture *f, uint64_t max_addr, bool eager) {
  return mp_vam_add(f->h.loop, f->mm, max_addr, eager);
}

static void drop_vam(mp_fixture *f, mb_vam *v) {
  mp_vam_drop(f->h.loop, f->mm, v);
}

#define R(gpa, size, w) {(gpa), (size), (w)}

/* ---- MM_MAP ---------------------------------------------------------------------------------- */

static void test_map_pushes_to_eager_mappers(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *e1 = add_vam(&f, 64 * MiB, true), *e2 = add_vam(&f, 64 * MiB, true);
  mb_vam *lazy = add_vam(&f, 64 * MiB, false);
  mb_object *a = tu_memfd_pages("mp", 16 * PAGE, 10), *b = tu_memfd_pages("mp", 8 * PAGE, 100);
  mb_map_entry batch[] = {
      {0x200000, 4 * PAGE, b, 2 * PAGE, false},
      {0x100000, 8 * PAGE, a, 4 * PAGE, true},
  };
  assert_int_equal(mp_map(f.mm, batch, 2), 0);
  MP_EXPECT_RANGES(e1, R(0x100000, 8 * PAGE, true), R(0x200000, 4 * PAGE, false));
  MP_EXPECT_RANGES(e2, R(0x100000, 8 * PAGE, true), R(0x200000, 4 * PAGE, false));
  MP_EXPECT_NO_RANGES(lazy); /* a lazy mapper learns on its faults */
  mp_expect_bytes(e1, 0x100000, 8 * PAGE, 0x100000, 4 * PAGE, 10);
  mp_expect_bytes(e2, 0x200000 + 100, 3 * PAGE, 0x200000, 2 * PAGE, 100);

  mb_map_entry *list = NULL;
  assert_int_equal(mp_list(f.mm, &list), 2);
  assert_int_equal(list[0].gpa, 0x100000);
  assert_int_equal(list[0].size, 8 * PAGE);
  assert_ptr_equal(list[0].obj, a);
  assert_int_equal(list[0].obj_off, 4 * PAGE);
  assert_true(list[0].writable);
  assert_int_equal(list[1].gpa, 0x200000);
  assert_ptr_equal(list[1].obj, b);
  assert_false(list[1].writable);
  mb_map_entries_free(list, 2);

  /* A write through one mapper is seen through the other (both map the same memfd). */
  uint8_t in[3] = {1, 2, 3}, out[3] = {0};
  assert_int_equal(mb_vam_write(e1, 0x100000 + PAGE - 1, in, 3), 0);
  assert_int_equal(mb_vam_read(e2, 0x100000 + PAGE - 1, out, 3), 0);
  assert_memory_equal(in, out, 3);

  mb_object_unref(a);
  mb_object_unref(b);
  drop_vam(&f, e1);
  drop_vam(&f, e2);
  drop_vam(&f, lazy);
  mp_end(&f);
}

static void test_map_validation(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *e = add_vam(&f, 64 * MiB, true);
  mb_object *a = tu_memfd_pages("mp", 16 * PAGE, 1);
  assert_int_equal(mp_map1(f.mm, a, 0x10000, 4 * PAGE, 0, true), 0);

  /* against the visible mappings and within the batch */
  assert_int_equal(mp_map1(f.mm, a, 0x10000 + 3 * PAGE, 2 * PAGE, 0, true), MB_E_OVERLAP);
  assert_int_equal(mp_map1(f.mm, a, 0x10000 - PAGE, 2 * PAGE, 0, true), MB_E_OVERLAP);
  mb_map_entry two[] = {{0x40000, 2 * PAGE, a, 0, true}, {0x41000, 2 * PAGE, a, 0, true}};
  assert_int_equal(mp_map(f.mm, two, 2), MB_E_OVERLAP);
  /* malformed */
  assert_int_equal(mp_map1(f.mm, a, 0x40001, PAGE, 0, true), MB_E_INVALID);
  assert_int_equal(mp_map1(f.mm, a, 0x40000, PAGE + 1, 0, true), MB_E_INVALID);
  assert_int_equal(mp_map1(f.mm, a, 0x40000, 0, 0, true), MB_E_INVALID);
  assert_int_equal(mp_map1(f.mm, a, 0x40000, PAGE, 16 * PAGE, true), MB_E_INVALID);
  assert_int_equal(mp_map1(f.mm, a, 0x40000, 2 * PAGE, 15 * PAGE, true), MB_E_INVALID);
  assert_int_equal(mp_map1(f.mm, NULL, 0x40000, PAGE, 0, true), MB_E_INVALID);
  assert_int_equal(mp_map1(f.mm, a, UINT64_MAX - PAGE + 1, 2 * PAGE, 0, true), MB_E_INVALID);
  mm_map_msg *m = mm_map_new();
  m->count = 3; /* and no array */
  assert_int_equal(mp_call(f.mm, &m->hdr), MB_E_INVALID);
  mb_msg_free(&m->hdr);
  /* an empty batch is a no-op */
  assert_int_equal(mp_map(f.mm, NULL, 0), 0);

  /* nothing of the failed batches is visible anywhere */
  mb_map_entry *list = NULL;
  assert_int_equal(mp_list(f.mm, &list), 1);
  mb_map_entries_free(list, 1);
  MP_EXPECT_RANGES(e, R(0x10000, 4 * PAGE, true));

  assert_int_equal(mp_unmap(f.mm, 0x10001, PAGE), MB_E_INVALID);
  assert_int_equal(mp_unmap(f.mm, 0x10000, 0), MB_E_INVALID);
  assert_int_equal(mp_unmap(f.mm, UINT64_MAX - PAGE + 1, 2 * PAGE), MB_E_INVALID);
  MP_EXPECT_RANGES(e, R(0x10000, 4 * PAGE, true));

  mb_object_unref(a);
  drop_vam(&f, e);
  mp_end(&f);
}

/* A mapper that cannot establish the batch: the others unmap it again, the manager forgets
 * it, and the error comes back. No half-applied state anywhere. */
static void test_map_rollback(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *big = add_vam(&f, 64 * MiB, true), *big2 = add_vam(&f, 64 * MiB, true);
  mb_vam *small = add_vam(&f, 1 * MiB, true); /* its reservation ends at 1 MiB */
  mb_vam *lazy = add_vam(&f, 64 * MiB, false);
  mb_object *a = tu_memfd_pages("mp", 64 * PAGE, 7);
  assert_int_equal(mp_map1(f.mm, a, 0x10000, 4 * PAGE, 0, true), 0);

  /* entries below 1 MiB (established by `small` first, then undone), then one beyond */
  mb_map_entry batch[] = {
      {0x20000, 2 * PAGE, a, 8 * PAGE, true},
      {0x22000, 2 * PAGE, a, 10 * PAGE, false},
      {0x30000, 1 * PAGE, a, 20 * PAGE, true},
      {0x100000, 4 * PAGE, a, 30 * PAGE, true},
  };
  assert_int_equal(mp_map(f.mm, batch, 4), MB_E_INVALID);
  mb_vam *all[] = {big, big2, small};
  for (int i = 0; i < 3; i++)
    MP_EXPECT_RANGES(all[i], R(0x10000, 4 * PAGE, true));
  MP_EXPECT_NO_RANGES(lazy);
  mb_map_entry *list = NULL;
  assert_int_equal(mp_list(f.mm, &list), 1);
  mb_map_entries_free(list, 1);
  uint8_t byte;
  assert_int_equal(mb_vam_read(big, 0x20000, &byte, 1), MB_E_UNMAPPED);

  /* the same batch without the entry beyond 1 MiB goes through */
  assert_int_equal(mp_map(f.mm, batch, 3), 0);
  for (int i = 0; i < 3; i++)
    MP_EXPECT_RANGES(all[i], R(0x10000, 4 * PAGE, true), R(0x20000, 2 * PAGE, true),
                     R(0x22000, 2 * PAGE, false), R(0x30000, PAGE, true));
  mp_expect_bytes(small, 0x20000, 4 * PAGE, 0x20000, 8 * PAGE, 7);

  /* with `small` gone from the manager, the entry beyond 1 MiB is fine */
  drop_vam(&f, small);
  assert_int_equal(mp_map(f.mm, &batch[3], 1), 0);
  mp_expect_bytes(big2, 0x100000, 4 * PAGE, 0x100000, 30 * PAGE, 7);

  mb_object_unref(a);
  drop_vam(&f, big);
  drop_vam(&f, big2);
  drop_vam(&f, lazy);
  mp_end(&f);
}

/* ---- MM_UNMAP -------------------------------------------------------------------------------- */

/* Removing the middle of a mapping leaves both sides, each reading its own object bytes. */
static void test_unmap_splits(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *e = add_vam(&f, 64 * MiB, true);
  mb_object *a = tu_memfd_pages("mp", 32 * PAGE, 50);
  assert_int_equal(mp_map1(f.mm, a, 0x100000, 16 * PAGE, 3 * PAGE, true), 0);

  assert_int_equal(mp_unmap(f.mm, 0x100000 + 5 * PAGE, 4 * PAGE), 0);
  MP_EXPECT_RANGES(e, R(0x100000, 5 * PAGE, true), R(0x100000 + 9 * PAGE, 7 * PAGE, true));
  mb_map_entry *list = NULL;
  assert_int_equal(mp_list(f.mm, &list), 2);
  assert_int_equal(list[0].gpa, 0x100000);
  assert_int_equal(list[0].size, 5 * PAGE);
  assert_int_equal(list[0].obj_off, 3 * PAGE);
  assert_int_equal(list[1].gpa, 0x100000 + 9 * PAGE);
  assert_int_equal(list[1].size, 7 * PAGE);
  assert_int_equal(list[1].obj_off, 12 * PAGE);
  mb_map_entries_free(list, 2);
  mp_expect_bytes(e, 0x100000, 5 * PAGE, 0x100000, 3 * PAGE, 50);
  mp_expect_bytes(e, 0x100000 + 9 * PAGE, 7 * PAGE, 0x100000, 3 * PAGE, 50);
  uint8_t buf[2 * PAGE];
  assert_int_equal(mb_vam_read(e, 0x100000 + 5 * PAGE, buf, 1), MB_E_UNMAPPED);
  assert_int_equal(mb_vam_read(e, 0x100000 + 4 * PAGE, buf, 2 * PAGE), MB_E_UNMAPPED);

  /* a late eager mapper gets the two pieces with their offsets */
  mb_vam *late = add_vam(&f, 64 * MiB, true);
  mp_expect_bytes(late, 0x100000 + 9 * PAGE, 7 * PAGE, 0x100000, 3 * PAGE, 50);

  /* edges: cut the left piece's tail and the right piece's head in one unmap */
  assert_int_equal(mp_unmap(f.mm, 0x100000 + 3 * PAGE, 8 * PAGE), 0);
  MP_EXPECT_RANGES(e, R(0x100000, 3 * PAGE, true), R(0x100000 + 11 * PAGE, 5 * PAGE, true));
  MP_EXPECT_RANGES(late, R(0x100000, 3 * PAGE, true), R(0x100000 + 11 * PAGE, 5 * PAGE, true));
  mp_expect_bytes(late, 0x100000 + 11 * PAGE, 5 * PAGE, 0x100000, 3 * PAGE, 50);
  assert_int_equal(mp_list(f.mm, &list), 2);
  assert_int_equal(list[1].obj_off, 14 * PAGE);
  mb_map_entries_free(list, 2);

  /* a range with nothing in it is a no-op; one covering everything empties all */
  assert_int_equal(mp_unmap(f.mm, 0x800000, 16 * PAGE), 0);
  assert_int_equal(mp_unmap(f.mm, 0, 64 * MiB), 0);
  MP_EXPECT_NO_RANGES(e);
  MP_EXPECT_NO_RANGES(late);
  assert_int_equal(mp_list(f.mm, &list), 0);

  mb_object_unref(a);
  drop_vam(&f, e);
  drop_vam(&f, late);
  mp_end(&f);
}

static void test_unmap_many_and_remap(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *e = add_vam(&f, 64 * MiB, true);
  mb_object *a = tu_memfd_pages("mp", 64 * PAGE, 0), *b = tu_memfd_pages("mp", 64 * PAGE, 128);
  /* eight 4-page mappings, alternating objects, back to back */
  mb_map_entry batch[8];
  for (int i = 0; i < 8; i++)
    batch[i] = (mb_map_entry){0x400000 + i * 4 * PAGE, 4 * PAGE, i % 2 ? b : a, i * 4 * PAGE,
                              true};
  assert_int_equal(mp_map(f.mm, batch, 8), 0);
  MP_EXPECT_RANGES(e, R(0x400000, 32 * PAGE, true)); /* adjacent, equal access: merged */

  /* drop pages 6..25: the 2nd mapping keeps its first 2 pages, the 7th its last 2 */
  assert_int_equal(mp_unmap(f.mm, 0x400000 + 6 * PAGE, 20 * PAGE), 0);
  MP_EXPECT_RANGES(e, R(0x400000, 6 * PAGE, true), R(0x400000 + 26 * PAGE, 6 * PAGE, true));
  mp_expect_bytes(e, 0x400000 + 4 * PAGE, 2 * PAGE, 0x400000 + 4 * PAGE, 4 * PAGE, 128);
  mp_expect_bytes(e, 0x400000 + 26 * PAGE, 2 * PAGE, 0x400000 + 24 * PAGE, 24 * PAGE, 0);
  mb_map_entry *list = NULL;
  assert_int_equal(mp_list(f.mm, &list), 4);
  assert_int_equal(list[2].gpa, 0x400000 + 26 * PAGE);
  assert_int_equal(list[2].obj_off, 26 * PAGE);
  mb_map_entries_free(list, 4);

  /* the hole takes a new mapping (read-only, another object offset) */
  assert_int_equal(mp_map1(f.mm, a, 0x400000 + 6 * PAGE, 20 * PAGE, 40 * PAGE, false), 0);
  MP_EXPECT_RANGES(e, R(0x400000, 6 * PAGE, true), R(0x400000 + 6 * PAGE, 20 * PAGE, false),
                   R(0x400000 + 26 * PAGE, 6 * PAGE, true));
  mp_expect_bytes(e, 0x400000 + 6 * PAGE, 20 * PAGE, 0x400000 + 6 * PAGE, 40 * PAGE, 0);

  mb_object_unref(a);
  mb_object_unref(b);
  drop_vam(&f, e);
  mp_end(&f);
}

/* ---- accesses through an eager mapper -------------------------------------------------------- */

static void test_readonly_vs_unmapped(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *e = add_vam(&f, 4 * MiB, true);
  mb_object *a = tu_memfd_pages("mp", 8 * PAGE, 20);
  assert_int_equal(mp_map1(f.mm, a, 0, 2 * PAGE, 0, true), 0);
  assert_int_equal(mp_map1(f.mm, a, 2 * PAGE, 2 * PAGE, 2 * PAGE, false), 0);
  uint8_t buf[6 * PAGE];
  memset(buf, 0xee, sizeof buf);

  assert_int_equal(mb_vam_write(e, 0, buf, 2 * PAGE), 0);
  assert_int_equal(mb_vam_write(e, PAGE, buf, 2 * PAGE), MB_E_READONLY);
  assert_int_equal(mb_vam_write(e, 2 * PAGE + 5, buf, 1), MB_E_READONLY);
  assert_int_equal(mb_vam_read(e, 2 * PAGE, buf, 2 * PAGE), 0); /* reading ro is fine */
  assert_int_equal(mb_vam_read(e, 0, buf, 5 * PAGE), MB_E_UNMAPPED); /* runs into the hole */
  assert_int_equal(mb_vam_write(e, 4 * PAGE, buf, 1), MB_E_UNMAPPED);
  assert_int_equal(mb_vam_write(e, 3 * PAGE, buf, 2 * PAGE), MB_E_READONLY); /* ro first */
  /* beyond max_addr */
  assert_int_equal(mb_vam_read(e, 4 * MiB - 1, buf, 2), MB_E_INVALID);
  assert_int_equal(mb_vam_read(e, 4 * MiB, buf, 1), MB_E_INVALID);
  assert_int_equal(mb_vam_read(e, UINT64_MAX, buf, 2), MB_E_INVALID);
  assert_int_equal(mb_vam_read(e, 4 * MiB, buf, 0), 0);
  assert_int_equal(mb_vam_read(e, 0, NULL, 1), MB_E_INVALID);

  mb_vam_stats s = mb_vam_stats_get(e);
  assert_int_equal(s.resolved, 0);
  assert_int_equal(s.unmapped, 2);
  assert_int_equal(s.faults, 5);

  /* an unmap turns readonly into unmapped */
  assert_int_equal(mp_unmap(f.mm, 2 * PAGE, 2 * PAGE), 0);
  assert_int_equal(mb_vam_write(e, 2 * PAGE, buf, 1), MB_E_UNMAPPED);

  mb_object_unref(a);
  drop_vam(&f, e);
  mp_end(&f);
}

/* A page that is established but keeps faulting (its file shrank under it: SIGBUS) is retried
 * a bounded number of times, then reported. */
static void test_backing_cannot_serve(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *e = add_vam(&f, 4 * MiB, true);
  mb_object *a = tu_memfd_pages("mp", 4 * PAGE, 1);
  assert_int_equal(mp_map1(f.mm, a, 0, 4 * PAGE, 0, true), 0);
  mp_expect_bytes(e, 0, 4 * PAGE, 0, 0, 1);
  assert_int_equal(ftruncate(mb_object_fd(a), 2 * PAGE), 0);
  uint8_t buf[2 * PAGE];
  assert_int_equal(mb_vam_read(e, PAGE, buf, PAGE), 0);
  assert_int_equal(mb_vam_read(e, PAGE, buf, 2 * PAGE), MB_E_FAULT);
  assert_int_equal(mb_vam_write(e, 3 * PAGE, buf, 1), MB_E_FAULT);
  mb_vam_stats s = mb_vam_stats_get(e);
  assert_true(s.faults >= 2 && s.faults < 100);
  assert_int_equal(s.unmapped, 0);
  mb_object_unref(a);
  drop_vam(&f, e);
  mp_end(&f);
}

/* ---- mappers --------------------------------------------------------------------------------- */

static void test_late_eager_mapper_gets_everything(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_object *a = tu_memfd_pages("mp", 32 * PAGE, 3);
  for (int i = 0; i < 5; i++)
    assert_int_equal(mp_map1(f.mm, a, 0x10000 * (i + 1), 2 * PAGE, i * 4 * PAGE, i != 2), 0);
  mb_vam *late = add_vam(&f, 64 * MiB, true);
  /* established before MM_ADD_MAPPER completed */
  MP_EXPECT_RANGES(late, R(0x10000, 2 * PAGE, true), R(0x20000, 2 * PAGE, true),
                   R(0x30000, 2 * PAGE, false), R(0x40000, 2 * PAGE, true),
                   R(0x50000, 2 * PAGE, true));
  for (int i = 0; i < 5; i++)
    mp_expect_bytes(late, 0x10000 * (i + 1), 2 * PAGE, 0x10000 * (i + 1), i * 4 * PAGE, 3);
  /* a late lazy mapper gets nothing */
  mb_vam *lazy = add_vam(&f, 64 * MiB, false);
  MP_EXPECT_NO_RANGES(lazy);

  /* a late eager mapper that cannot take everything is not registered */
  mb_vam *small = mp_vam_create(f.h.loop, f.mm, 0x30000, true);
  assert_int_equal(mp_add_mapper(f.mm, small, true), MB_E_INVALID);
  MP_EXPECT_NO_RANGES(small); /* its replay was undone */
  assert_int_equal(mp_remove_mapper(f.mm, small), MB_E_NOTFOUND);
  assert_int_equal(mp_unmap(f.mm, 0x10000, PAGE), 0);
  MP_EXPECT_NO_RANGES(small);
  mp_vam_destroy(f.h.loop, small);

  mb_object_unref(a);
  drop_vam(&f, late);
  drop_vam(&f, lazy);
  mp_end(&f);
}

static void test_add_remove_mapper(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *e = add_vam(&f, 64 * MiB, true);
  assert_int_equal(mp_add_mapper(f.mm, e, true), MB_E_INVALID); /* twice */
  assert_int_equal(mp_add_mapper(f.mm, e, false), MB_E_INVALID);
  mm_add_mapper_msg *m = mm_add_mapper_new(); /* nobody */
  m->eager = true;
  assert_int_equal(mp_call(f.mm, &m->hdr), MB_E_INVALID);
  mb_msg_free(&m->hdr);

  mb_object *a = tu_memfd_pages("mp", 4 * PAGE, 9);
  assert_int_equal(mp_map1(f.mm, a, 0, 4 * PAGE, 0, true), 0);
  assert_int_equal(mp_remove_mapper(f.mm, e), 0);
  assert_int_equal(mp_remove_mapper(f.mm, e), MB_E_NOTFOUND);
  /* a removed mapper hears nothing more: its ranges stay as they were */
  assert_int_equal(mp_map1(f.mm, a, 8 * PAGE, 4 * PAGE, 0, true), 0);
  assert_int_equal(mp_unmap(f.mm, 0, 4 * PAGE), 0);
  MP_EXPECT_RANGES(e, R(0, 4 * PAGE, true));
  /* registered again (as eager): replayed what is visible now, keeping what it holds */
  assert_int_equal(mp_add_mapper(f.mm, e, true), 0);
  MP_EXPECT_RANGES(e, R(0, 4 * PAGE, true), R(8 * PAGE, 4 * PAGE, true));
  assert_int_equal(mp_unmap(f.mm, 0, 16 * PAGE), 0);
  MP_EXPECT_NO_RANGES(e);

  mb_object_unref(a);
  drop_vam(&f, e);
  mp_end(&f);
}

/* A mapper destroyed without MM_REMOVE_MAPPER counts as having acknowledged. */
static void test_gone_mapper_counts_as_acked(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *e = add_vam(&f, 64 * MiB, true), *gone = add_vam(&f, 64 * MiB, true);
  mb_vam *gone_lazy = add_vam(&f, 64 * MiB, false);
  mp_vam_destroy(f.h.loop, gone);
  mp_vam_destroy(f.h.loop, gone_lazy);
  mb_object *a = tu_memfd_pages("mp", 4 * PAGE, 9);
  assert_int_equal(mp_map1(f.mm, a, 0, 4 * PAGE, 0, true), 0);
  assert_int_equal(mp_unmap(f.mm, PAGE, PAGE), 0);
  MP_EXPECT_RANGES(e, R(0, PAGE, true), R(2 * PAGE, 2 * PAGE, true));
  /* a late eager mapper that is gone before its replay is not registered */
  mb_vam *late = mp_vam_create(f.h.loop, f.mm, 64 * MiB, true);
  mb_addr late_addr = mb_vam_addr(late);
  mp_vam_destroy(f.h.loop, late);
  mm_add_mapper_msg *m = mm_add_mapper_new();
  m->mapper = late_addr;
  m->eager = true;
  assert_int_equal(mp_call(f.mm, &m->hdr), MB_EGONE);
  mb_msg_free(&m->hdr);

  mb_object_unref(a);
  drop_vam(&f, e);
  mp_end(&f);
}

/* ---- MM_RESOLVE and MM_LIST ------------------------------------------------------------------ */

static int resolve(mb_addr mm, mb_vam *v, uint64_t gpa, mm_resolve_msg **out) {
  mm_resolve_msg *m = mm_resolve_new();
  m->mapper = mb_vam_addr(v);
  m->gpa = gpa;
  int rc = mp_call(mm, &m->hdr);
  *out = m;
  return rc;
}

static void test_resolve(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *lazy = add_vam(&f, 64 * MiB, false);
  mb_vam *stranger = mp_vam_create(f.h.loop, f.mm, 64 * MiB, false);
  mb_object *a = tu_memfd_pages("mp", 16 * PAGE, 60);
  assert_int_equal(mp_map1(f.mm, a, 0x40000, 8 * PAGE, 4 * PAGE, false), 0);
  assert_int_equal(mp_map1(f.mm, a, 0x50000, 2 * PAGE, 0, true), 0);

  mm_resolve_msg *m;
  assert_int_equal(resolve(f.mm, lazy, 0x3f000, &m), MB_E_UNMAPPED);
  assert_false(m->found);
  assert_null(m->entry.obj);
  mb_msg_free(&m->hdr);
  assert_int_equal(resolve(f.mm, stranger, 0x40000, &m), MB_E_NOTFOUND);
  mb_msg_free(&m->hdr);
  MP_EXPECT_NO_RANGES(stranger);

  /* found: the manager fills the entry and forwards; the mapper establishes all of it */
  assert_int_equal(resolve(f.mm, lazy, 0x40000 + 5 * PAGE + 17, &m), 0);
  assert_true(m->found);
  assert_int_equal(m->entry.gpa, 0x40000);
  assert_int_equal(m->entry.size, 8 * PAGE);
  assert_int_equal(m->entry.obj_off, 4 * PAGE);
  assert_false(m->entry.writable);
  assert_ptr_equal(m->entry.obj, a);
  mb_object_unref(m->entry.obj); /* the requester's reference */
  mb_msg_free(&m->hdr);
  MP_EXPECT_RANGES(lazy, R(0x40000, 8 * PAGE, false));
  mp_expect_bytes(lazy, 0x40000, 8 * PAGE, 0x40000, 4 * PAGE, 60); /* no fault now */
  assert_int_equal(mb_vam_stats_get(lazy).faults, 0);
  /* resolving it again changes nothing */
  assert_int_equal(resolve(f.mm, lazy, 0x40000, &m), 0);
  mb_object_unref(m->entry.obj);
  mb_msg_free(&m->hdr);
  MP_EXPECT_RANGES(lazy, R(0x40000, 8 * PAGE, false));
  /* the lazy mapper is told of unmaps */
  assert_int_equal(mp_unmap(f.mm, 0x40000 + 2 * PAGE, 2 * PAGE), 0);
  MP_EXPECT_RANGES(lazy, R(0x40000, 2 * PAGE, false), R(0x40000 + 4 * PAGE, 4 * PAGE, false));
  /* a resolve the mapper cannot establish (beyond its reservation) fails */
  mb_vam *tiny = add_vam(&f, 0x50000, false);
  assert_int_equal(resolve(f.mm, tiny, 0x50000, &m), MB_E_INVALID);
  mb_object_unref(m->entry.obj);
  mb_msg_free(&m->hdr);
  MP_EXPECT_NO_RANGES(tiny);

  mb_object_unref(a);
  drop_vam(&f, lazy);
  drop_vam(&f, tiny);
  mp_vam_destroy(f.h.loop, stranger);
  mp_end(&f);
}

/* ---- VAM_* sent directly --------------------------------------------------------------------- */

static int vam_map(mb_vam *v, const mb_map_entry *e, uint32_t n) {
  vam_map_msg *m = vam_map_new();
  m->entries = (mb_map_entry *)e; /* stays ours */
  m->count = n;
  int rc = mp_call(mb_vam_addr(v), &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

static int vam_unmap(mb_vam *v, uint64_t gpa, uint64_t size) {
  vam_unmap_msg *m = vam_unmap_new();
  m->gpa = gpa;
  m->size = size;
  int rc = mp_call(mb_vam_addr(v), &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

static void test_vam_messages(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *v = mp_vam_create(f.h.loop, f.mm, 1 * MiB, true);
  mb_object *a = tu_memfd_pages("mp", 16 * PAGE, 33);
  /* adjacent ranges merge only with equal access */
  mb_map_entry ok[] = {
      {0, 2 * PAGE, a, 0, true},
      {2 * PAGE, 2 * PAGE, a, 8 * PAGE, true},
      {4 * PAGE, PAGE, a, 0, false},
      {6 * PAGE, PAGE, a, 0, false},
  };
  assert_int_equal(vam_map(v, ok, 4), 0);
  MP_EXPECT_RANGES(v, R(0, 4 * PAGE, true), R(4 * PAGE, PAGE, false), R(6 * PAGE, PAGE, false));
  mp_expect_bytes(v, 2 * PAGE, 2 * PAGE, 2 * PAGE, 8 * PAGE, 33);

  /* a failing batch is undone (what it established before the failure included) */
  mb_map_entry bad[] = {
      {8 * PAGE, 2 * PAGE, a, 0, true},
      {0x80000, PAGE, a, 16 * PAGE, true}, /* outside the object */
  };
  assert_int_equal(vam_map(v, bad, 2), MB_E_INVALID);
  mb_map_entry beyond[] = {{12 * PAGE, 2 * PAGE, a, 0, true}, {1 * MiB, PAGE, a, 0, true}};
  assert_int_equal(vam_map(v, beyond, 2), MB_E_INVALID);
  MP_EXPECT_RANGES(v, R(0, 4 * PAGE, true), R(4 * PAGE, PAGE, false), R(6 * PAGE, PAGE, false));

  /* re-establishing with another backing replaces; with the same, keeps */
  mb_map_entry over = {PAGE, 2 * PAGE, a, 12 * PAGE, false};
  assert_int_equal(vam_map(v, &over, 1), 0);
  MP_EXPECT_RANGES(v, R(0, PAGE, true), R(PAGE, 2 * PAGE, false), R(3 * PAGE, PAGE, true),
                   R(4 * PAGE, PAGE, false), R(6 * PAGE, PAGE, false));
  mp_expect_bytes(v, PAGE, 2 * PAGE, PAGE, 12 * PAGE, 33);
  mp_expect_bytes(v, 3 * PAGE, PAGE, 2 * PAGE, 8 * PAGE, 33);

  assert_int_equal(vam_unmap(v, 1, PAGE), MB_E_INVALID);
  assert_int_equal(vam_unmap(v, 0, 0), MB_E_INVALID);
  assert_int_equal(vam_unmap(v, 2 * MiB, PAGE), 0);     /* beyond: nothing there */
  assert_int_equal(vam_unmap(v, 2 * PAGE, 1 * MiB), 0); /* clipped to the reservation */
  MP_EXPECT_RANGES(v, R(0, PAGE, true), R(PAGE, PAGE, false));
  mb_object_unref(a);
  mp_vam_destroy(f.h.loop, v);
  mp_end(&f);
}

/* ---- a large batch --------------------------------------------------------------------------- */

enum { MANY = 6000 };

static void test_many_mappings_in_one_batch(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *e = add_vam(&f, 64 * MiB, true);
  mb_vam *lazy = add_vam(&f, 64 * MiB, false);
  mb_object *objs[3] = {tu_memfd_pages("mp", MANY * PAGE, 0), tu_memfd_pages("mp", MANY * PAGE, 77),
                        tu_memfd_pages("mp", MANY * PAGE, 200)};
  mb_map_entry *batch = malloc(MANY * sizeof *batch);
  assert_non_null(batch);
  /* one page each, in reverse order, every third one at a gap */
  for (uint32_t i = 0; i < MANY; i++) {
    uint32_t k = MANY - 1 - i;
    batch[i] = (mb_map_entry){(uint64_t)k * 2 * PAGE, PAGE, objs[k % 3], (uint64_t)k * PAGE,
                              k % 5 != 0};
  }
  assert_int_equal(mp_map(f.mm, batch, MANY), 0);
  mb_map_entry *list = NULL;
  assert_int_equal(mp_list(f.mm, &list), MANY);
  for (uint32_t k = 0; k < MANY; k++)
    assert_int_equal(list[k].gpa, (uint64_t)k * 2 * PAGE);
  mb_map_entries_free(list, MANY);
  mb_part_range *r = NULL;
  assert_int_equal(mp_ranges(e, &r), MANY);
  free(r);
  for (uint32_t k = 0; k < MANY; k += 97)
    mp_expect_bytes(e, (uint64_t)k * 2 * PAGE, PAGE, (uint64_t)k * 2 * PAGE, (uint64_t)k * PAGE,
                    (uint8_t[]){0, 77, 200}[k % 3]);

  /* a late eager mapper gets all of them */
  mb_vam *late = add_vam(&f, 64 * MiB, true);
  assert_int_equal(mp_ranges(late, &r), MANY);
  free(r);
  /* one unmap of a middle stretch */
  assert_int_equal(mp_unmap(f.mm, 1000 * 2 * PAGE, 3000 * 2 * PAGE), 0);
  assert_int_equal(mp_list(f.mm, &list), MANY - 3000);
  mb_map_entries_free(list, MANY - 3000);
  assert_int_equal(mp_ranges(late, &r), MANY - 3000);
  free(r);
  /* empty everything, then a batch that a small mapper takes only 1500 entries of: it
   * undoes them, the others roll back 5000 one-page runs */
  assert_int_equal(mp_unmap(f.mm, 0, 64 * MiB), 0);
  mb_vam *small = add_vam(&f, 3000 * PAGE, true);
  for (uint32_t k = 0; k < 5000; k++)
    batch[k] = (mb_map_entry){(uint64_t)k * 2 * PAGE, PAGE, objs[k % 3], 0, true};
  assert_int_equal(mp_map(f.mm, batch, 5000), MB_E_INVALID);
  MP_EXPECT_NO_RANGES(e);
  MP_EXPECT_NO_RANGES(late);
  MP_EXPECT_NO_RANGES(small);
  assert_int_equal(mp_list(f.mm, &list), 0);
  /* and back to back, the rollback is one run */
  for (uint32_t k = 0; k < 5000; k++)
    batch[k] = (mb_map_entry){(uint64_t)k * PAGE, PAGE, objs[k % 3], (uint64_t)k * PAGE, true};
  assert_int_equal(mp_map(f.mm, batch, 5000), MB_E_INVALID);
  MP_EXPECT_NO_RANGES(e);
  assert_int_equal(mp_map(f.mm, batch, 3000), 0);
  MP_EXPECT_RANGES(small, R(0, 3000 * PAGE, true));
  MP_EXPECT_RANGES(late, R(0, 3000 * PAGE, true));
  free(batch);

  for (int i = 0; i < 3; i++)
    mb_object_unref(objs[i]);
  drop_vam(&f, small);
  drop_vam(&f, e);
  drop_vam(&f, lazy);
  drop_vam(&f, late);
  mp_end(&f); /* the manager goes with its mappings */
}

/* ---- shutdown -------------------------------------------------------------------------------- */

/* The loop stops with everything still registered and mapped; mappers whose actor went with
 * the loop are destroyed afterwards. */
static void test_stop_with_everything_held(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *e = add_vam(&f, 64 * MiB, true), *lazy = add_vam(&f, 64 * MiB, false);
  mb_object *a = tu_memfd_pages("mp", 8 * PAGE, 1);
  assert_int_equal(mp_map1(f.mm, a, 0, 8 * PAGE, 0, true), 0);
  mm_resolve_msg *m;
  assert_int_equal(resolve(f.mm, lazy, 0, &m), 0);
  mb_object_unref(m->entry.obj);
  mb_msg_free(&m->hdr);
  mb_object_unref(a);
  tu_home_fini(&f.h);
  mb_vam_destroy(e);
  mb_vam_destroy(lazy);
  assert_int_equal(tu_fd_count(), f.fds);
}

int main(void) {
  mp_warm_up();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_map_pushes_to_eager_mappers),
      cmocka_unit_test(test_map_validation),
      cmocka_unit_test(test_map_rollback),
      cmocka_unit_test(test_unmap_splits),
      cmocka_unit_test(test_unmap_many_and_remap),
      cmocka_unit_test(test_readonly_vs_unmapped),
      cmocka_unit_test(test_backing_cannot_serve),
      cmocka_unit_test(test_late_eager_mapper_gets_everything),
      cmocka_unit_test(test_add_remove_mapper),
      cmocka_unit_test(test_gone_mapper_counts_as_acked),
      cmocka_unit_test(test_resolve),
      cmocka_unit_test(test_vam_messages),
      cmocka_unit_test(test_many_mappings_in_one_batch),
      cmocka_unit_test(test_stop_with_everything_held),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
