/* test_mapping_fault_inject.c: the mapping manager and the VA mappers when the host refuses a
 * system call or an allocation (mem/fault_inject.h: MB_FI_MMAP, MB_FI_ALLOC). Every failure
 * point of an operation is made to fail in turn, SQLite-style: the operation answers the
 * error, and every consumer is left as it was (the manager's visible mappings, each eager
 * mapper's established ranges and the bytes read through them), with nothing leaked.
 *
 * Built from the sources of runtime/, mem/ and these two actors with MB_FAULT_INJECTION
 * (tests/mapping/meson.build), so it runs in every build, the default one included; it links
 * no membacking library. */
#include <errno.h>
#include <pthread.h>
#include <unistd.h>

#include "fault_inject.h"
#include "mp_util.h"

#define R(gpa, size, w) {(gpa), (size), (w)}

enum { BASE = 10, MAX_ENTRIES = 8 };

static int setup(void **state) {
  (void)state;
  mb_fi_reset();
  return 0;
}

/* ---- requests that tolerate a failed allocation of their own message ------------------------- */

static int try_unmap(mb_addr mm, uint64_t gpa, uint64_t size) {
  mm_unmap_msg *m = mm_unmap_new();
  if (m == NULL)
    return MB_ENOMEM;
  m->gpa = gpa;
  m->size = size;
  int rc = mp_call(mm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

/* MM_MAP of a copy of e[0..n) (references added; the manager owns the copy). */
static int try_map(mb_addr mm, const mb_map_entry *e, uint32_t n) {
  mm_map_msg *m = mm_map_new();
  if (m == NULL)
    return MB_ENOMEM;
  mb_map_entry *copy = malloc(n * sizeof *copy);
  assert_non_null(copy);
  for (uint32_t i = 0; i < n; i++) {
    copy[i] = e[i];
    mb_object_ref(copy[i].obj);
  }
  m->entries = copy;
  m->count = n;
  int rc = mp_call(mm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

/* ---- the state every consumer must agree on -------------------------------------------------- */

/* layout minus [a, b): what stays visible after a successful unmap (into out; its count). */
static uint32_t subtract(const mb_map_entry *layout, uint32_t n, uint64_t a, uint64_t b,
                         mb_map_entry *out) {
  uint32_t k = 0;
  for (uint32_t i = 0; i < n; i++) {
    const mb_map_entry *e = &layout[i];
    uint64_t end = e->gpa + e->size;
    if (e->gpa < a)
      out[k++] = (mb_map_entry){e->gpa, (end < a ? end : a) - e->gpa, e->obj, e->obj_off,
                                e->writable};
    if (end > b) {
      uint64_t s = e->gpa > b ? e->gpa : b;
      out[k++] = (mb_map_entry){s, end - s, e->obj, e->obj_off + (s - e->gpa), e->writable};
    }
  }
  return k;
}

/* The manager lists exactly `want` (no two of them adjacent), each eager mapper has exactly
 * their ranges established, and reads through it give their bytes. */
static void expect_state(mb_addr mm, mb_vam **eager, int nv, const mb_map_entry *want,
                         uint32_t n) {
  mb_map_entry *list = NULL;
  assert_int_equal(mp_list(mm, &list), n);
  mb_part_range ranges[MAX_ENTRIES];
  for (uint32_t i = 0; i < n; i++) {
    assert_int_equal(list[i].gpa, want[i].gpa);
    assert_int_equal(list[i].size, want[i].size);
    assert_ptr_equal(list[i].obj, want[i].obj);
    assert_int_equal(list[i].obj_off, want[i].obj_off);
    assert_int_equal(list[i].writable, want[i].writable);
    ranges[i] = (mb_part_range){want[i].gpa, want[i].size, want[i].writable};
  }
  mb_map_entries_free(list, n);
  for (int v = 0; v < nv; v++) {
    mp_expect_ranges(eager[v], ranges, n);
    for (uint32_t i = 0; i < n; i++)
      mp_expect_bytes(eager[v], want[i].gpa, want[i].size, want[i].gpa, want[i].obj_off, BASE);
  }
}

/* ---- a rig: two eager mappers and a lazy one on a loop the test thread runs ------------------ */

typedef struct rig {
  mp_fixture f;
  mb_vam *eager[2], *lazy;
  mb_object *obj;
  mb_map_entry layout[3];
} rig;

/* Three mappings with gaps between them (so no two are merged anywhere). */
static void rig_open(rig *r) {
  mp_begin(&r->f);
  for (int i = 0; i < 2; i++)
    r->eager[i] = mp_vam_add(r->f.h.loop, r->f.mm, 64 * MiB, true);
  r->lazy = mp_vam_add(r->f.h.loop, r->f.mm, 64 * MiB, false);
  r->obj = tu_memfd_pages("fi", 32 * PAGE, BASE);
  r->layout[0] = (mb_map_entry){0x100000, 8 * PAGE, r->obj, 0, true};
  r->layout[1] = (mb_map_entry){0x110000, 4 * PAGE, r->obj, 8 * PAGE, false};
  r->layout[2] = (mb_map_entry){0x120000, 8 * PAGE, r->obj, 16 * PAGE, true};
}

static void rig_close(rig *r) {
  mb_object_unref(r->obj);
  for (int i = 0; i < 2; i++)
    mp_vam_drop(r->f.h.loop, r->f.mm, r->eager[i]);
  mp_vam_drop(r->f.h.loop, r->f.mm, r->lazy);
  mp_end(&r->f);
}

static void rig_reset(rig *r) {
  assert_int_equal(try_unmap(r->f.mm, 0, 64 * MiB), 0);
  assert_int_equal(try_map(r->f.mm, r->layout, 3), 0);
}

/* The unmaps the sweeps try: inside one mapping (split in two), across a gap (two trimmed),
 * over whole mappings and a trimmed one, over everything, and over nothing visible. */
static const struct {
  uint64_t a, b;
} unmaps[] = {
    {0x102000, 0x104000}, {0x106000, 0x112000}, {0x100000, 0x124000},
    {0, 0x200000},        {0x130000, 0x131000},
};

/* Fails the n-th call of `kind` during an MM_UNMAP of [a, b), for every n until one passes
 * untouched: each failed attempt must leave the layout, a successful one the layout minus
 * the range. Returns how many attempts failed. */
static int sweep_unmap(rig *r, mb_fi_kind kind, uint64_t a, uint64_t b) {
  mb_map_entry after[MAX_ENTRIES];
  uint32_t nafter = subtract(r->layout, 3, a, b, after);
  int failed = 0;
  for (uint64_t n = 1;; n++) {
    mb_fi_reset();
    assert_int_equal(mb_fi_arm(kind, n, ENOMEM), 0);
    int rc = try_unmap(r->f.mm, a, b - a);
    uint64_t injected = mb_fi_injected(kind);
    mb_fi_arm(kind, 0, ENOMEM);
    if (rc == 0) {
      expect_state(r->f.mm, r->eager, 2, after, nafter);
      rig_reset(r);
    } else {
      assert_true(rc == -ENOMEM || rc == MB_ENOMEM);
      assert_int_equal(injected, 1);
      expect_state(r->f.mm, r->eager, 2, r->layout, 3);
      failed++;
    }
    if (injected == 0)
      return failed;
  }
}

/* F7: a teardown mmap refused in one mapper (the n-th of the operation) fails the unmap, and
 * the manager and every mapper keep the range: the refusing mapper left it as it was, the
 * others get it mapped again. */
static void test_unmap_teardown_refused(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  assert_int_equal(try_map(r.f.mm, r.layout, 3), 0);
  for (size_t i = 0; i < sizeof unmaps / sizeof unmaps[0]; i++) {
    int failed = sweep_unmap(&r, MB_FI_MMAP, unmaps[i].a, unmaps[i].b);
    assert_int_equal(failed, i == 4 ? 0 : 2); /* one teardown per eager mapper */
  }
  rig_close(&r);
}

/* Every allocation of an unmap (requests, the manager's spare node, each mapper's spare
 * range, the messages to the mappers) refused in turn. */
static void test_unmap_allocation_refused(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  assert_int_equal(try_map(r.f.mm, r.layout, 3), 0);
  for (size_t i = 0; i < sizeof unmaps / sizeof unmaps[0]; i++)
    assert_true(sweep_unmap(&r, MB_FI_ALLOC, unmaps[i].a, unmaps[i].b) >= 1);
  rig_close(&r);
}

/* The same for a map: every mmap and every allocation of it refused in turn leaves nothing
 * mapped anywhere. */
static void test_map_refused(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  const mb_fi_kind kinds[] = {MB_FI_MMAP, MB_FI_ALLOC};
  for (int k = 0; k < 2; k++) {
    for (uint64_t n = 1;; n++) {
      mb_fi_reset();
      assert_int_equal(mb_fi_arm(kinds[k], n, ENOMEM), 0);
      int rc = try_map(r.f.mm, r.layout, 3);
      uint64_t injected = mb_fi_injected(kinds[k]);
      mb_fi_arm(kinds[k], 0, ENOMEM);
      if (rc == 0) {
        expect_state(r.f.mm, r.eager, 2, r.layout, 3);
        assert_int_equal(try_unmap(r.f.mm, 0, 64 * MiB), 0);
      } else {
        assert_true(rc == -ENOMEM || rc == MB_ENOMEM);
        expect_state(r.f.mm, r.eager, 2, NULL, 0);
      }
      if (injected == 0)
        break;
    }
  }
  rig_close(&r);
}

/* ---- a mapper's replacement refused ---------------------------------------------------------- */

/* VAM_MAP sent to the mapper directly (the test plays the mapping manager). */
static int vam_map(mb_vam *v, mb_map_entry *e, uint32_t n) {
  vam_map_msg *m = vam_map_new();
  assert_non_null(m);
  m->entries = e;
  m->count = n;
  int rc = mp_call(mb_vam_addr(v), &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

/* A range established with one backing, mapped over with another: when the kernel refuses
 * the replacement, the mapper's record follows what its VA holds. Refused once, the range
 * ends up torn down (the batch is undone); refused for good (the replacement, and the
 * teardowns after it), the old pages stay mapped and stay recorded, never mapped unrecorded
 * (where a later unmap would miss them). */
static void test_replace_refused(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *v = mp_vam_create(f.h.loop, f.mm, 64 * MiB, true);
  mb_object *a = tu_memfd_pages("fi", 4 * PAGE, BASE), *b = tu_memfd_pages("fi", 4 * PAGE, 99);
  mb_map_entry old = {0x100000, 4 * PAGE, a, 0, true}, new = {0x100000, 4 * PAGE, b, 0, true};
  uint8_t byte;

  assert_int_equal(vam_map(v, &old, 1), 0);
  assert_int_equal(mb_fi_arm(MB_FI_MMAP, 1, ENOMEM), 0);
  assert_int_equal(vam_map(v, &new, 1), -ENOMEM);
  MP_EXPECT_NO_RANGES(v);
  assert_int_equal(mb_vam_read(v, 0x100000, &byte, 1), MB_E_UNMAPPED);

  assert_int_equal(vam_map(v, &old, 1), 0);
  assert_int_equal(mb_fi_arm_persist(MB_FI_MMAP, 1, ENOMEM), 0);
  assert_int_equal(vam_map(v, &new, 1), -ENOMEM);
  assert_int_equal(mb_fi_arm(MB_FI_MMAP, 0, ENOMEM), 0);
  MP_EXPECT_RANGES(v, R(0x100000, 4 * PAGE, true));
  mp_expect_bytes(v, 0x100000, 4 * PAGE, 0x100000, 0, BASE);

  vam_unmap_msg *u = vam_unmap_new();
  u->gpa = 0x100000;
  u->size = 4 * PAGE;
  assert_int_equal(mp_call(mb_vam_addr(v), &u->hdr), 0);
  mb_msg_free(&u->hdr);
  MP_EXPECT_NO_RANGES(v);
  assert_int_equal(mb_vam_read(v, 0x100000, &byte, 1), MB_E_UNMAPPED);
  mb_object_unref(a);
  mb_object_unref(b);
  mp_vam_destroy(f.h.loop, v);
  mp_end(&f);
}

/* ---- a lazy mapper whose fault-in is refused (F12) ------------------------------------------- */

typedef struct lazy_rig {
  mb_loop *lm, *lv;
  mb_addr mm;
  mb_vam *lazy;
  mb_object *obj;
} lazy_rig;

static void lazy_open(lazy_rig *r) {
  assert_int_equal(mb_access_reinstall(), 0);
  r->lm = tu_start("mm");
  r->lv = tu_start("lazy");
  r->mm = mp_mm_create(r->lm);
  r->lazy = mp_vam_add(r->lv, r->mm, 64 * MiB, false);
  r->obj = tu_memfd_pages("fi", 8 * PAGE, BASE);
  assert_int_equal(mp_map1(r->mm, r->obj, 0x100000, 8 * PAGE, 0, true), 0);
}

static void lazy_close(lazy_rig *r) {
  mb_object_unref(r->obj);
  mp_vam_drop(r->lv, r->mm, r->lazy);
  tu_stop(r->lv);
  tu_stop(r->lm);
}

/* The mapper's mmap for a fault is refused: the access (and a lock) report the host's error,
 * not "unmapped", the mapper records nothing, and the next access maps the page. */
static void test_lazy_fault_refused(void **state) {
  (void)state;
  lazy_rig r;
  lazy_open(&r);
  uint8_t b = 0;
  assert_int_equal(mb_fi_arm(MB_FI_MMAP, 1, ENOMEM), 0);
  assert_int_equal(mb_vam_read(r.lazy, 0x100000 + 5, &b, 1), -ENOMEM);
  assert_int_equal(mb_fi_injected(MB_FI_MMAP), 1);
  MP_EXPECT_NO_RANGES(r.lazy);
  mb_vam_stats s = mb_vam_stats_get(r.lazy);
  assert_int_equal(s.unmapped, 0);
  assert_int_equal(s.resolved, 0);

  mb_lock *l = NULL;
  assert_int_equal(mb_fi_arm(MB_FI_MMAP, 1, ENOMEM), 0);
  assert_int_equal(mb_vam_lock(r.lazy, 0x100000, PAGE, true, &l), -ENOMEM);
  assert_null(l);
  mb_vam_lock_info *info = NULL;
  size_t n = 1, waiting = 1;
  assert_int_equal(mb_vam_locks(r.lazy, &info, &n, &waiting), 0);
  assert_int_equal(n, 0);
  MP_EXPECT_NO_RANGES(r.lazy);

  /* the runtime's own refusal (the resolve request cannot be allocated) as it is too */
  assert_int_equal(mb_fi_arm(MB_FI_ALLOC, 1, ENOMEM), 0);
  assert_int_equal(mb_vam_read(r.lazy, 0x100000, &b, 1), MB_ENOMEM);
  MP_EXPECT_NO_RANGES(r.lazy);

  mp_expect_bytes(r.lazy, 0x100000, 8 * PAGE, 0x100000, 0, BASE);
  MP_EXPECT_RANGES(r.lazy, R(0x100000, 8 * PAGE, true));
  /* nothing visible there: still unmapped */
  assert_int_equal(mb_vam_read(r.lazy, 0x200000, &b, 1), MB_E_UNMAPPED);
  lazy_close(&r);
}

/* ---- protections (MM_PROTECT, VAM_PROTECT) ---------------------------------------------------- */

static int try_protect(mb_addr mm, const mb_prot_item *items, uint32_t n) {
  mm_protect_msg *m = mm_protect_new();
  if (m == NULL)
    return MB_ENOMEM;
  m->vtl = 0;
  m->items = items;
  m->count = n;
  int rc = mp_call(mm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

/* Two protection states of [0, 5p) of a mapping over [0, 16p): state 0 has page 2 read-only;
 * state 1 has pages 0-1 `none`, page 2 read-write, pages 3-4 read-only (a drop to none, a
 * rise, a drop to ro; back again, the rise from none maps the pages again). */
static const mb_prot_item prot_states[2][3] = {
    {{0, 2 * PAGE, MB_PROT_RW}, {2 * PAGE, PAGE, MB_PROT_RO}, {3 * PAGE, 2 * PAGE, MB_PROT_RW}},
    {{0, 2 * PAGE, MB_PROT_NONE}, {2 * PAGE, PAGE, MB_PROT_RW}, {3 * PAGE, 2 * PAGE, MB_PROT_RO}},
};

/* What a protecting mapper shows in state s: its ranges, and each page's real access. */
static void expect_prot_state(mb_vam *v, int s) {
  if (s == 0)
    MP_EXPECT_RANGES(v, R(0, 2 * PAGE, true), R(2 * PAGE, PAGE, false),
                     R(3 * PAGE, 13 * PAGE, true));
  else
    MP_EXPECT_RANGES(v, R(2 * PAGE, PAGE, true), R(3 * PAGE, 2 * PAGE, false),
                     R(5 * PAGE, 11 * PAGE, true));
  for (uint32_t i = 0; i < 3; i++)
    for (uint64_t g = prot_states[s][i].gpa; g < prot_states[s][i].gpa + prot_states[s][i].size;
         g += PAGE) {
      mb_fault f;
      uint8_t a = prot_states[s][i].access;
      assert_int_equal(mb_access_probe(mb_vam_base(v) + g, 1, false, &f) == 0, a != MB_PROT_NONE);
      assert_int_equal(mb_access_probe(mb_vam_base(v) + g, 1, true, &f) == 0, a == MB_PROT_RW);
    }
  mp_expect_bytes(v, 5 * PAGE, 11 * PAGE, 0, 0, BASE);
}

/* The manager's own copy: a protecting mapper added now gets it. */
static void expect_mm_prot_state(mp_fixture *f, mb_addr mm, int s) {
  mb_vam *late = mp_vam_create(f->h.loop, mm, 64 * MiB, true);
  assert_int_equal(mp_add_mapper_vtl(mm, late, true, 0, true, false), 0);
  expect_prot_state(late, s);
  mp_vam_drop(f->h.loop, mm, late);
}

/* Fails the n-th call of `kind` during a move from state 1 - to to state `to`, for every n
 * until one passes untouched: a failed move leaves both mappers and the manager in the old
 * state, a successful one in the new. Returns how many attempts failed. */
static int sweep_protect(mp_fixture *f, mb_addr mm, mb_vam **p, mb_fi_kind kind, int to) {
  int failed = 0;
  for (uint64_t n = 1;; n++) {
    assert_int_equal(try_protect(mm, prot_states[1 - to], 3), 0);
    mb_fi_reset();
    assert_int_equal(mb_fi_arm(kind, n, ENOMEM), 0);
    int rc = try_protect(mm, prot_states[to], 3);
    uint64_t injected = mb_fi_injected(kind);
    mb_fi_arm(kind, 0, ENOMEM);
    int s = rc == 0 ? to : 1 - to;
    if (rc != 0) {
      assert_true(rc == -ENOMEM || rc == MB_ENOMEM);
      failed++;
    }
    for (int i = 0; i < 2; i++)
      expect_prot_state(p[i], s);
    expect_mm_prot_state(f, mm, s);
    if (injected == 0)
      return failed;
  }
}

/* Every mprotect, mmap and allocation of a protection change refused in turn: the change is
 * all or nothing, in each mapper (its pages and its map) and in the manager. */
static void test_protect_refused(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_addr mm = mp_mm_create_geom(f.h.loop, 64 * MiB, 0, 0x3);
  mb_vam *p[2];
  for (int i = 0; i < 2; i++) {
    p[i] = mp_vam_create(f.h.loop, mm, 64 * MiB, true);
    assert_int_equal(mp_add_mapper_vtl(mm, p[i], true, 0, true, false), 0);
  }
  mb_object *obj = tu_memfd_pages("fi", 16 * PAGE, BASE);
  assert_int_equal(mp_map1(mm, obj, 0, 16 * PAGE, 0, true), 0);
  assert_true(sweep_protect(&f, mm, p, MB_FI_MPROTECT, 1) >= 2);
  assert_true(sweep_protect(&f, mm, p, MB_FI_MPROTECT, 0) >= 2);
  assert_true(sweep_protect(&f, mm, p, MB_FI_MMAP, 0) >= 2); /* rises from none map */
  assert_true(sweep_protect(&f, mm, p, MB_FI_ALLOC, 1) >= 1);
  assert_true(sweep_protect(&f, mm, p, MB_FI_ALLOC, 0) >= 1);
  mb_object_unref(obj);
  for (int i = 0; i < 2; i++)
    mp_vam_drop(f.h.loop, mm, p[i]);
  mp_end(&f);
}

int main(void) {
  if (!mb_fi_enabled())
    return 77;
  mp_warm_up();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_unmap_teardown_refused, setup),
      cmocka_unit_test_setup(test_unmap_allocation_refused, setup),
      cmocka_unit_test_setup(test_map_refused, setup),
      cmocka_unit_test_setup(test_replace_refused, setup),
      cmocka_unit_test_setup(test_lazy_fault_refused, setup),
      cmocka_unit_test_setup(test_protect_refused, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
