/* test_vtl_windows.c: the mapping manager's views and windows, on one loop the test thread
 * runs itself (attach mode); the test plays the region manager and speaks view space (view
 * n's guest address g is n * stride + g). A VTL-2 mapper with an alias shows view 2 at g and
 * view 0 at alias + g; a VTL-0 mapper shows view 0 only; lazy mappers resolve in their own
 * space; the manager lists in view space. */
#include "mp_util.h"

#define R(gpa, size, w) {(gpa), (size), (w)}

enum { VTLS_0_2 = 0x5 };
#define GMAX (64 * MiB)
#define STRIDE (1ull << 30) /* mb_mm_stride(GMAX) */
#define ALIAS (1ull << 30)
#define V2 (2 * STRIDE) /* view 2's slice */

typedef struct rig {
  mp_fixture f;
  mb_addr mm;
  mb_vam *v0, *v2; /* eager: VTL 0; VTL 2 with the alias window */
} rig;

static void rig_open(rig *r) {
  mp_begin(&r->f);
  r->mm = mp_mm_create_geom(r->f.h.loop, GMAX, ALIAS, VTLS_0_2);
  r->v0 = mp_vam_create(r->f.h.loop, r->mm, GMAX, true);
  r->v2 = mp_vam_create(r->f.h.loop, r->mm, ALIAS + GMAX, true);
  assert_int_equal(mp_add_mapper_vtl(r->mm, r->v0, true, 0, false, false), 0);
  assert_int_equal(mp_add_mapper_vtl(r->mm, r->v2, true, 2, false, true), 0);
}

static void rig_close(rig *r) {
  mp_vam_drop(r->f.h.loop, r->mm, r->v0);
  mp_vam_drop(r->f.h.loop, r->mm, r->v2);
  mp_end(&r->f);
}

static void test_stride(void **state) {
  (void)state;
  assert_int_equal(mb_mm_stride(0), 1ull << 30);
  assert_int_equal(mb_mm_stride(PAGE), 1ull << 30);
  assert_int_equal(mb_mm_stride(1ull << 30), 1ull << 30);
  assert_int_equal(mb_mm_stride((1ull << 30) + PAGE), 2ull << 30);
  assert_int_equal(mb_mm_stride(48ull << 30), 64ull << 30);
  assert_int_equal(mb_mm_stride(64ull << 30), 64ull << 30);
}

static void create_fn(mb_loop *l, void *arg) {
  const mb_mm_geom *g = *(const mb_mm_geom **)arg;
  *(mb_actor **)arg = mb_mapping_manager_create(l, g);
}

static mb_actor *try_create(mb_loop *l, const mb_mm_geom *g) {
  void *box = (void *)g;
  assert_int_equal(mb_loop_exec(l, create_fn, &box), 0);
  return box;
}

static void test_bad_geometry(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  assert_null(try_create(f.h.loop, NULL));
  assert_null(try_create(f.h.loop, &(mb_mm_geom){0, 0, 0, 1}));
  assert_null(try_create(f.h.loop, &(mb_mm_geom){GMAX + 1, 0, 0, 1}));
  assert_null(try_create(f.h.loop, &(mb_mm_geom){GMAX, GMAX / 2, 0, 1}));      /* stride < max */
  assert_null(try_create(f.h.loop, &(mb_mm_geom){GMAX, 3 * GMAX, 0, 1}));      /* not 2^n */
  assert_null(try_create(f.h.loop, &(mb_mm_geom){GMAX, 0, ALIAS + 1, 5}));    /* unaligned */
  mb_actor *ok = try_create(f.h.loop, &(mb_mm_geom){GMAX, 0, ALIAS, VTLS_0_2});
  assert_non_null(ok);
  mp_end(&f); /* the manager goes with the loop */
}

/* What MM_ADD_MAPPER accepts: a configured VTL, an alias only at VTL 2 with one configured,
 * protections only at a protectable VTL. */
static void test_add_mapper_checks(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_addr mm = mp_mm_create_geom(f.h.loop, GMAX, ALIAS, VTLS_0_2);
  mb_addr plain = mp_mm_create_geom(f.h.loop, GMAX, 0, 0x7); /* VTLs 0, 1, 2; no alias */
  mb_vam *v = mp_vam_create(f.h.loop, mm, ALIAS + GMAX, true);
  assert_int_equal(mp_add_mapper_vtl(mm, v, true, 1, false, false), MB_E_INVALID); /* no VTL 1 */
  assert_int_equal(mp_add_mapper_vtl(mm, v, true, 3, false, false), MB_E_INVALID);
  assert_int_equal(mp_add_mapper_vtl(mm, v, true, 0, false, true), MB_E_INVALID); /* alias at 0 */
  assert_int_equal(mp_add_mapper_vtl(mm, v, true, 2, true, false), MB_E_INVALID); /* protect 2 */
  assert_int_equal(mp_add_mapper_vtl(plain, v, true, 2, false, true), MB_E_INVALID); /* none */
  assert_int_equal(mp_add_mapper_vtl(plain, v, true, 1, true, false), 0); /* 1 under 2 */
  assert_int_equal(mp_remove_mapper(plain, v), 0);
  assert_int_equal(mp_add_mapper_vtl(mm, v, true, 0, true, false), 0); /* 0 under 2 */
  assert_int_equal(mp_add_mapper_vtl(mm, v, true, 0, true, false), MB_E_INVALID); /* twice */
  assert_int_equal(mp_remove_mapper(mm, v), 0);
  mp_vam_destroy(f.h.loop, v);
  mp_end(&f);
}

/* A request never straddles a view slice. */
static void test_requests_stay_in_a_slice(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  mb_object *a = tu_memfd_pages("vtl", 16 * PAGE, 1);
  assert_int_equal(mp_map1(r.mm, a, STRIDE - PAGE, 2 * PAGE, 0, true), MB_E_INVALID);
  assert_int_equal(mp_unmap(r.mm, V2 - PAGE, 2 * PAGE), MB_E_INVALID);
  assert_int_equal(mp_map1(r.mm, a, STRIDE - PAGE, PAGE, 0, true), 0); /* ends at the edge */
  MP_EXPECT_NO_RANGES(r.v0); /* beyond max_addr: in nobody's window */
  MP_EXPECT_NO_RANGES(r.v2);
  mb_object_unref(a);
  rig_close(&r);
}

/* View 0 reaches the VTL-0 mapper at g and the VTL-2 one at alias + g; view 2 only the VTL-2
 * one, at g. Unmaps, replaces and a late eager mapper follow the same windows. */
static void test_windows(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  mb_object *a = tu_memfd_pages("vtl", 16 * PAGE, 10), *b = tu_memfd_pages("vtl", 16 * PAGE, 90);
  mb_map_entry batch[] = {
      {0x100000, 8 * PAGE, a, 0, true},     /* view 0 */
      {V2 + 0x100000, 4 * PAGE, b, 0, false}, /* view 2, the same guest address */
      {V2 + 0x300000, 2 * PAGE, b, 8 * PAGE, true},
  };
  assert_int_equal(mp_map(r.mm, batch, 3), 0);
  MP_EXPECT_RANGES(r.v0, R(0x100000, 8 * PAGE, true));
  MP_EXPECT_RANGES(r.v2, R(0x100000, 4 * PAGE, false), R(0x300000, 2 * PAGE, true),
                   R(ALIAS + 0x100000, 8 * PAGE, true));
  mp_expect_bytes(r.v0, 0x100000, 8 * PAGE, 0x100000, 0, 10);
  mp_expect_bytes(r.v2, ALIAS + 0x100000, 8 * PAGE, ALIAS + 0x100000, 0, 10);
  mp_expect_bytes(r.v2, 0x100000, 4 * PAGE, 0x100000, 0, 90);
  /* one memory: a write through the alias is seen at VTL 0 */
  uint8_t x = 0x5a, y = 0;
  assert_int_equal(mb_vam_write(r.v2, ALIAS + 0x100000 + 3, &x, 1), 0);
  assert_int_equal(mb_vam_read(r.v0, 0x100000 + 3, &y, 1), 0);
  assert_int_equal(y, 0x5a);

  /* the manager's own list is in view space */
  mb_map_entry *list;
  assert_int_equal(mp_list(r.mm, &list), 3);
  assert_int_equal(list[0].gpa, 0x100000);
  assert_int_equal(list[1].gpa, V2 + 0x100000);
  assert_int_equal(list[2].gpa, V2 + 0x300000);
  mb_map_entries_free(list, 3);

  /* a late eager VTL-2 mapper with the alias gets both views; one without only view 2 */
  mb_vam *late = mp_vam_create(r.f.h.loop, r.mm, ALIAS + GMAX, true);
  mb_vam *own = mp_vam_create(r.f.h.loop, r.mm, GMAX, true);
  assert_int_equal(mp_add_mapper_vtl(r.mm, late, true, 2, false, true), 0);
  assert_int_equal(mp_add_mapper_vtl(r.mm, own, true, 2, false, false), 0);
  MP_EXPECT_RANGES(late, R(0x100000, 4 * PAGE, false), R(0x300000, 2 * PAGE, true),
                   R(ALIAS + 0x100000, 8 * PAGE, true));
  MP_EXPECT_RANGES(own, R(0x100000, 4 * PAGE, false), R(0x300000, 2 * PAGE, true));

  /* view 0's unmap: the VTL-0 mapper at g, the alias windows at alias + g */
  assert_int_equal(mp_unmap(r.mm, 0x100000 + 2 * PAGE, 2 * PAGE), 0);
  MP_EXPECT_RANGES(r.v0, R(0x100000, 2 * PAGE, true), R(0x100000 + 4 * PAGE, 4 * PAGE, true));
  MP_EXPECT_RANGES(r.v2, R(0x100000, 4 * PAGE, false), R(0x300000, 2 * PAGE, true),
                   R(ALIAS + 0x100000, 2 * PAGE, true),
                   R(ALIAS + 0x100000 + 4 * PAGE, 4 * PAGE, true));
  MP_EXPECT_RANGES(own, R(0x100000, 4 * PAGE, false), R(0x300000, 2 * PAGE, true));

  /* view 2's replace: the VTL-2 mappers at g; the VTL-0 mapper hears nothing */
  mb_map_entry *repl = malloc(sizeof *repl);
  repl[0] = mp_entry(a, V2 + 0x100000, 2 * PAGE, 8 * PAGE, true);
  mm_replace_msg *m = mm_replace_new();
  m->gpa = V2 + 0x100000;
  m->size = 4 * PAGE;
  m->entries = repl;
  m->count = 1;
  assert_int_equal(mp_call(r.mm, &m->hdr), 0);
  mb_msg_free(&m->hdr);
  MP_EXPECT_RANGES(own, R(0x100000, 2 * PAGE, true), R(0x300000, 2 * PAGE, true));
  mp_expect_bytes(own, 0x100000, 2 * PAGE, 0x100000, 8 * PAGE, 10);
  MP_EXPECT_RANGES(r.v0, R(0x100000, 2 * PAGE, true), R(0x100000 + 4 * PAGE, 4 * PAGE, true));
  MP_EXPECT_RANGES(late, R(0x100000, 2 * PAGE, true), R(0x300000, 2 * PAGE, true),
                   R(ALIAS + 0x100000, 2 * PAGE, true),
                   R(ALIAS + 0x100000 + 4 * PAGE, 4 * PAGE, true));

  mb_object_unref(a);
  mb_object_unref(b);
  mp_vam_drop(r.f.h.loop, r.mm, late);
  mp_vam_drop(r.f.h.loop, r.mm, own);
  rig_close(&r);
}

static int resolve(mb_addr mm, mb_vam *v, uint64_t gpa, mb_map_entry *out) {
  mm_resolve_msg *m = mm_resolve_new();
  m->mapper = mb_vam_addr(v);
  m->gpa = gpa;
  int rc = mp_call(mm, &m->hdr);
  *out = m->entry;
  mb_object_unref(m->entry.obj);
  mb_msg_free(&m->hdr);
  return rc;
}

/* A lazy mapper's faults are in its own space: the manager answers with the entry of the
 * window that shows the address, moved there. */
static void test_lazy_resolve_in_windows(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  mb_vam *lazy = mp_vam_create(r.f.h.loop, r.mm, ALIAS + GMAX, false);
  mb_vam *lazy0 = mp_vam_create(r.f.h.loop, r.mm, GMAX, false);
  assert_int_equal(mp_add_mapper_vtl(r.mm, lazy, false, 2, false, true), 0);
  assert_int_equal(mp_add_mapper_vtl(r.mm, lazy0, false, 0, false, false), 0);
  mb_object *a = tu_memfd_pages("vtl", 16 * PAGE, 20), *b = tu_memfd_pages("vtl", 16 * PAGE, 70);
  assert_int_equal(mp_map1(r.mm, a, 0x200000, 8 * PAGE, 2 * PAGE, true), 0);
  assert_int_equal(mp_map1(r.mm, b, V2 + 0x200000, 4 * PAGE, 0, false), 0);

  mb_map_entry e;
  assert_int_equal(resolve(r.mm, lazy, ALIAS + 0x200000 + 5 * PAGE, &e), 0);
  assert_int_equal(e.gpa, ALIAS + 0x200000);
  assert_int_equal(e.size, 8 * PAGE);
  assert_int_equal(e.obj_off, 2 * PAGE);
  assert_ptr_equal(e.obj, a);
  assert_int_equal(resolve(r.mm, lazy, 0x200000 + PAGE, &e), 0);
  assert_int_equal(e.gpa, 0x200000);
  assert_ptr_equal(e.obj, b);
  MP_EXPECT_RANGES(lazy, R(0x200000, 4 * PAGE, false), R(ALIAS + 0x200000, 8 * PAGE, true));
  mp_expect_bytes(lazy, ALIAS + 0x200000, 8 * PAGE, ALIAS + 0x200000, 2 * PAGE, 20);
  /* between the windows, and beyond them: nothing */
  assert_int_equal(resolve(r.mm, lazy, GMAX, &e), MB_E_UNMAPPED);
  assert_int_equal(resolve(r.mm, lazy, ALIAS + GMAX, &e), MB_E_UNMAPPED);
  /* a VTL-0 mapper sees view 0 only */
  assert_int_equal(resolve(r.mm, lazy0, 0x200000, &e), 0);
  assert_ptr_equal(e.obj, a);
  MP_EXPECT_RANGES(lazy0, R(0x200000, 8 * PAGE, true));
  /* the alias window hears view 0's unmaps */
  assert_int_equal(mp_unmap(r.mm, 0x200000, 8 * PAGE), 0);
  MP_EXPECT_RANGES(lazy, R(0x200000, 4 * PAGE, false));
  MP_EXPECT_NO_RANGES(lazy0);

  mb_object_unref(a);
  mb_object_unref(b);
  mp_vam_drop(r.f.h.loop, r.mm, lazy);
  mp_vam_drop(r.f.h.loop, r.mm, lazy0);
  rig_close(&r);
}

/* A failure in one window rolls every mapper back: a VTL-2 mapper whose reservation cannot
 * hold the alias window fails the map, and the VTL-0 mapper unmaps again. */
static void test_window_failure_rolls_back(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  mb_vam *short2 = mp_vam_create(r.f.h.loop, r.mm, GMAX, true); /* no room for the alias */
  assert_int_equal(mp_add_mapper_vtl(r.mm, short2, true, 2, false, true), 0);
  mb_object *a = tu_memfd_pages("vtl", 16 * PAGE, 30);
  assert_int_equal(mp_map1(r.mm, a, V2 + 0x10000, 2 * PAGE, 0, true), 0); /* view 2: fine */
  assert_int_equal(mp_map1(r.mm, a, 0x10000, 4 * PAGE, 0, true), MB_E_INVALID);
  MP_EXPECT_NO_RANGES(r.v0);
  MP_EXPECT_RANGES(r.v2, R(0x10000, 2 * PAGE, true));
  MP_EXPECT_RANGES(short2, R(0x10000, 2 * PAGE, true));
  mb_map_entry *list;
  assert_int_equal(mp_list(r.mm, &list), 1);
  mb_map_entries_free(list, 1);
  mb_object_unref(a);
  mp_vam_drop(r.f.h.loop, r.mm, short2);
  rig_close(&r);
}

int main(void) {
  mp_warm_up();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stride),
      cmocka_unit_test(test_bad_geometry),
      cmocka_unit_test(test_add_mapper_checks),
      cmocka_unit_test(test_requests_stay_in_a_slice),
      cmocka_unit_test(test_windows),
      cmocka_unit_test(test_lazy_resolve_in_windows),
      cmocka_unit_test(test_window_failure_rolls_back),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
