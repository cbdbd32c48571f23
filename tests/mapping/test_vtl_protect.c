/* test_vtl_protect.c: VTL protections in the mapping manager and the VA mappers, on one loop
 * the test thread runs itself (attach mode); the test plays the region manager (MM_PROTECT,
 * MM_MAP, ...) and, for ordering, the mapping manager (VAM_PROTECT sent directly). What an
 * access and a lock through a protecting mapper answer, in which order; that the pages
 * really are protected (a raw probe faults); what survives a rise; that protections outlive
 * mappings; a protecting mapper added late; mappers that enforce nothing (protect=false, an
 * alias window); a protect parked behind a lock with requests queued behind it; rollback. */
#include <errno.h>

#include "mp_util.h"

#define R(gpa, size, w) {(gpa), (size), (w)}
#define P(n) ((uint64_t)(n) * PAGE)

enum { VTLS_0_1 = 0x3, VTLS_0_2 = 0x5, NONE = MB_PROT_NONE, RO = MB_PROT_RO, RW = MB_PROT_RW };
#define GMAX (64 * MiB)
#define ALIAS (1ull << 30)

/* Everything on the home loop runs until nothing is left to do. */
static void settle(mp_fixture *f) {
  for (int i = 0; i < 64; i++)
    uv_run(&f->h.uv, UV_RUN_NOWAIT);
}

static int rd(mb_vam *v, uint64_t gpa) {
  uint8_t b;
  return mb_vam_read(v, gpa, &b, 1);
}

static int wr(mb_vam *v, uint64_t gpa, uint8_t b) {
  return mb_vam_write(v, gpa, &b, 1);
}

static uint8_t byte_at(mb_vam *v, uint64_t gpa) {
  uint8_t b = 0;
  assert_int_equal(mb_vam_read(v, gpa, &b, 1), 0);
  return b;
}

/* Can the host touch the page at all (a raw probe, as a device model would)? */
static bool probe(mb_vam *v, uint64_t gpa, bool write) {
  mb_fault f;
  int rc = mb_access_probe(mb_vam_base(v) + gpa, 1, write, &f);
  assert_true(rc == 0 || rc == -EFAULT);
  return rc == 0;
}

static int lock_rc(mb_vam *v, uint64_t gpa, uint64_t size, bool writable) {
  mb_lock *l = NULL;
  int rc = mb_vam_lock(v, gpa, size, writable, &l);
  mb_vam_unlock(l);
  return rc;
}

/* ---- the rig: VTL-0 mappers, one protecting (p), one not (plain) ----------------------------- */

typedef struct rig {
  mp_fixture f;
  mb_addr mm;
  mb_vam *p, *plain;
  mb_object *a;
} rig;

/* [0, 16p) rw and [16p, 20p) read-only, both of one object (fill base 10). */
static void rig_open(rig *r) {
  mp_begin(&r->f);
  r->mm = mp_mm_create_geom(r->f.h.loop, GMAX, 0, VTLS_0_1);
  r->p = mp_vam_create(r->f.h.loop, r->mm, GMAX, true);
  r->plain = mp_vam_create(r->f.h.loop, r->mm, GMAX, true);
  assert_int_equal(mp_add_mapper_vtl(r->mm, r->p, true, 0, true, false), 0);
  assert_int_equal(mp_add_mapper_vtl(r->mm, r->plain, true, 0, false, false), 0);
  r->a = tu_memfd_pages("prot", P(32), 10);
  mb_map_entry e[] = {{0, P(16), r->a, 0, true}, {P(16), P(4), r->a, P(16), false}};
  assert_int_equal(mp_map(r->mm, e, 2), 0);
}

static void rig_close(rig *r) {
  mb_object_unref(r->a);
  mp_vam_drop(r->f.h.loop, r->mm, r->p);
  mp_vam_drop(r->f.h.loop, r->mm, r->plain);
  mp_end(&r->f);
}

/* ---- accesses -------------------------------------------------------------------------------- */

static void test_protect_accesses(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  mb_prot_item items[] = {{P(2), P(1), NONE}, {P(3), P(2), RO}};
  assert_int_equal(mp_protect(r.mm, 0, items, 2), 0);
  MP_EXPECT_RANGES(r.p, R(0, P(2), true), R(P(3), P(2), false), R(P(5), P(11), true),
                   R(P(16), P(4), false));
  MP_EXPECT_RANGES(r.plain, R(0, P(16), true), R(P(16), P(4), false)); /* enforces nothing */

  assert_int_equal(rd(r.p, P(2)), MB_E_PROTECTED);
  assert_int_equal(wr(r.p, P(2) + 9, 1), MB_E_PROTECTED);
  assert_int_equal(rd(r.p, P(3)), 0);
  assert_int_equal(wr(r.p, P(4) + 5, 1), MB_E_PROTECTED);
  assert_int_equal(wr(r.p, P(5), 1), 0);
  assert_int_equal(rd(r.plain, P(2)), 0);
  assert_int_equal(wr(r.plain, P(3), 1), 0);
  /* the pages really are so: a raw probe faults */
  assert_false(probe(r.p, P(2), false));
  assert_false(probe(r.p, P(3), true));
  assert_true(probe(r.p, P(3), false));
  assert_true(probe(r.p, P(1), true));
  assert_true(probe(r.plain, P(2), true));

  /* the first failing byte decides, the bytes before it are written */
  uint8_t two[2] = {0xa1, 0xa2};
  assert_int_equal(mb_vam_write(r.p, P(2) - 1, two, 2), MB_E_PROTECTED);
  assert_int_equal(byte_at(r.plain, P(2) - 1), 0xa1);
  uint8_t buf[P(2)];
  assert_int_equal(mb_vam_read(r.p, P(1), buf, P(2)), MB_E_PROTECTED);
  assert_int_equal(mb_vam_write(r.p, P(2) + P(1) - 1, two, 2), MB_E_PROTECTED); /* none */

  /* unmapped, then read-only (mapping), then protected */
  assert_int_equal(mp_protect1(r.mm, 0, P(16), P(1), NONE), 0);
  assert_int_equal(mp_protect1(r.mm, 0, P(20), P(2), NONE), 0); /* nothing mapped there */
  assert_int_equal(rd(r.p, P(16)), MB_E_PROTECTED);
  assert_int_equal(wr(r.p, P(16), 1), MB_E_READONLY);
  assert_int_equal(rd(r.p, P(20)), MB_E_UNMAPPED);
  assert_int_equal(mb_vam_read(r.p, P(19), buf, P(2)), MB_E_UNMAPPED);
  assert_int_equal(wr(r.plain, P(16), 1), MB_E_READONLY);

  /* a rise: the bytes are there (the same memory, mapped again) */
  assert_int_equal(wr(r.plain, P(2) + 7, 0x77), 0);
  assert_int_equal(mp_protect1(r.mm, 0, P(2), P(1), RW), 0);
  assert_int_equal(byte_at(r.p, P(2) + 7), 0x77);
  assert_int_equal(wr(r.p, P(2) + 7, 0x78), 0);
  assert_int_equal(wr(r.p, P(6), 0x66), 0);
  assert_int_equal(mp_protect1(r.mm, 0, P(6), P(1), NONE), 0);
  assert_int_equal(mp_protect1(r.mm, 0, P(6), P(1), RO), 0);
  assert_int_equal(byte_at(r.p, P(6)), 0x66);
  assert_int_equal(wr(r.p, P(6), 1), MB_E_PROTECTED);
  assert_int_equal(mp_protect1(r.mm, 0, P(3), P(2), RW), 0);
  assert_int_equal(wr(r.p, P(4), 1), 0);
  MP_EXPECT_RANGES(r.p, R(0, P(6), true), R(P(6), P(1), false), R(P(7), P(9), true),
                   R(P(17), P(3), false));
  rig_close(&r);
}

static void test_lock_refusal(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  mb_prot_item items[] = {{P(2), P(1), NONE}, {P(3), P(2), RO}};
  assert_int_equal(mp_protect(r.mm, 0, items, 2), 0);
  assert_int_equal(mp_protect1(r.mm, 0, P(16), P(1), NONE), 0);
  assert_int_equal(lock_rc(r.p, P(2), P(1), false), MB_E_PROTECTED);
  assert_int_equal(lock_rc(r.p, P(1), P(3), false), MB_E_PROTECTED);
  assert_int_equal(lock_rc(r.p, P(3), P(1), true), MB_E_PROTECTED);
  assert_int_equal(lock_rc(r.p, P(3), P(2), false), 0);
  assert_int_equal(lock_rc(r.p, P(16), P(1), true), MB_E_READONLY); /* before protected */
  assert_int_equal(lock_rc(r.p, P(16), P(1), false), MB_E_PROTECTED);
  assert_int_equal(lock_rc(r.p, P(19), P(2), false), MB_E_UNMAPPED);
  /* the first failing page decides; on one page: unmapped, read-only, protected */
  assert_int_equal(lock_rc(r.p, P(2), P(19), false), MB_E_PROTECTED); /* 20p: unmapped */
  assert_int_equal(lock_rc(r.p, P(15), P(2), true), MB_E_READONLY);   /* 16p: ro and none */
  assert_int_equal(mp_protect1(r.mm, 0, P(20), P(1), NONE), 0);
  assert_int_equal(lock_rc(r.p, P(17), P(4), false), MB_E_UNMAPPED);  /* 20p: both */
  assert_int_equal(lock_rc(r.p, P(5), P(8), true), 0);
  assert_int_equal(lock_rc(r.plain, P(2), P(3), true), 0);
  rig_close(&r);
}

/* ---- protections outlive mappings ------------------------------------------------------------ */

static int replace1(mb_addr mm, uint64_t gpa, uint64_t size, mb_object *obj, uint64_t off,
                    bool writable) {
  mb_map_entry *e = malloc(sizeof *e);
  *e = mp_entry(obj, gpa, size, off, writable);
  mm_replace_msg *m = mm_replace_new();
  m->gpa = gpa;
  m->size = size;
  m->entries = e;
  m->count = 1;
  int rc = mp_call(mm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

static void test_protections_outlive_mappings(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  assert_int_equal(mp_unmap(r.mm, 0, P(20)), 0);
  assert_int_equal(mp_protect1(r.mm, 0, P(4), P(2), NONE), 0);
  assert_int_equal(mp_map1(r.mm, r.a, 0, P(8), 0, true), 0);
  MP_EXPECT_RANGES(r.p, R(0, P(4), true), R(P(6), P(2), true));
  MP_EXPECT_RANGES(r.plain, R(0, P(8), true));
  assert_false(probe(r.p, P(4), false));
  assert_int_equal(mp_unmap(r.mm, 0, P(8)), 0);
  assert_int_equal(mp_map1(r.mm, r.a, 0, P(8), 0, false), 0);
  MP_EXPECT_RANGES(r.p, R(0, P(4), false), R(P(6), P(2), false));

  /* another backing over it: the protected pages stay protected */
  mb_object *b = tu_memfd_pages("prot", P(8), 100);
  assert_int_equal(replace1(r.mm, 0, P(8), b, 0, true), 0);
  MP_EXPECT_RANGES(r.p, R(0, P(4), true), R(P(6), P(2), true));
  mp_expect_bytes(r.p, 0, P(4), 0, 0, 100);
  assert_int_equal(rd(r.p, P(5)), MB_E_PROTECTED);
  assert_false(probe(r.p, P(5), false));
  /* an access change only (the same bytes): a rise does not expose a `none` page */
  assert_int_equal(replace1(r.mm, 0, P(8), b, 0, false), 0);
  MP_EXPECT_RANGES(r.p, R(0, P(4), false), R(P(6), P(2), false));
  assert_int_equal(replace1(r.mm, 0, P(8), b, 0, true), 0);
  MP_EXPECT_RANGES(r.p, R(0, P(4), true), R(P(6), P(2), true));
  assert_false(probe(r.p, P(4), false));
  assert_true(probe(r.plain, P(4), true));
  /* and a rise of the protection maps the new backing's bytes */
  assert_int_equal(mp_protect1(r.mm, 0, P(4), P(2), RW), 0);
  mp_expect_bytes(r.p, P(4), P(2), 0, 0, 100);
  mb_object_unref(b);
  rig_close(&r);
}

/* ---- mappers added later, and mappers that enforce nothing ----------------------------------- */

static void test_late_protecting_mapper(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  mb_prot_item items[] = {{P(2), P(1), NONE}, {P(3), P(2), RO}};
  assert_int_equal(mp_protect(r.mm, 0, items, 2), 0);
  mb_vam *late = mp_vam_create(r.f.h.loop, r.mm, GMAX, true);
  mb_vam *lazy = mp_vam_create(r.f.h.loop, r.mm, GMAX, false);
  mb_vam *small = mp_vam_create(r.f.h.loop, r.mm, P(32), true);
  assert_int_equal(mp_add_mapper_vtl(r.mm, late, true, 0, true, false), 0);
  assert_int_equal(mp_add_mapper_vtl(r.mm, lazy, false, 0, true, false), 0);
  /* protections cover [0, max_addr): a protecting mapper must hold it all */
  assert_int_equal(mp_add_mapper_vtl(r.mm, small, true, 0, true, false), MB_E_INVALID);
  MP_EXPECT_RANGES(late, R(0, P(2), true), R(P(3), P(2), false), R(P(5), P(11), true),
                   R(P(16), P(4), false));
  assert_int_equal(rd(late, P(2)), MB_E_PROTECTED);
  assert_false(probe(late, P(2), false));
  /* a lazy one resolves with its protections */
  mm_resolve_msg *m = mm_resolve_new();
  m->mapper = mb_vam_addr(lazy);
  m->gpa = P(4);
  assert_int_equal(mp_call(r.mm, &m->hdr), 0);
  mb_object_unref(m->entry.obj);
  mb_msg_free(&m->hdr);
  MP_EXPECT_RANGES(lazy, R(0, P(2), true), R(P(3), P(2), false), R(P(5), P(11), true));
  assert_int_equal(rd(lazy, P(2)), MB_E_PROTECTED);
  assert_int_equal(wr(lazy, P(3), 1), MB_E_PROTECTED);
  mp_vam_drop(r.f.h.loop, r.mm, late);
  mp_vam_drop(r.f.h.loop, r.mm, lazy);
  mp_vam_destroy(r.f.h.loop, small);
  rig_close(&r);
}

/* A VTL-2 mapper's alias window shows view 0 without VTL 0's protections. */
static void test_alias_window_unprotected(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_addr mm = mp_mm_create_geom(f.h.loop, GMAX, ALIAS, VTLS_0_2);
  mb_vam *p0 = mp_vam_create(f.h.loop, mm, GMAX, true);
  mb_vam *v2 = mp_vam_create(f.h.loop, mm, ALIAS + GMAX, true);
  assert_int_equal(mp_add_mapper_vtl(mm, p0, true, 0, true, false), 0);
  assert_int_equal(mp_add_mapper_vtl(mm, v2, true, 2, false, true), 0);
  mb_object *a = tu_memfd_pages("prot", P(8), 40);
  assert_int_equal(mp_map1(mm, a, 0, P(8), 0, true), 0);
  assert_int_equal(mp_protect1(mm, 0, P(1), P(2), NONE), 0);
  assert_int_equal(mp_protect1(mm, 2, 0, P(1), NONE), MB_E_INVALID); /* VTL 2: none */
  assert_int_equal(mp_protect1(mm, 1, 0, P(1), NONE), MB_E_INVALID); /* no VTL 1 */
  MP_EXPECT_RANGES(p0, R(0, P(1), true), R(P(3), P(5), true));
  MP_EXPECT_RANGES(v2, R(ALIAS, P(8), true));
  assert_int_equal(rd(p0, P(1)), MB_E_PROTECTED);
  mp_expect_bytes(v2, ALIAS + P(1), P(2), ALIAS, 0, 40);
  assert_true(probe(v2, ALIAS + P(2), true));
  mb_object_unref(a);
  mp_vam_drop(f.h.loop, mm, p0);
  mp_vam_drop(f.h.loop, mm, v2);
  mp_end(&f);
}

static int vam_protect(mb_vam *v, const mb_prot_item *items, uint32_t n) {
  vam_protect_msg *m = vam_protect_new();
  m->items = items;
  m->count = n;
  int rc = mp_call(mb_vam_addr(v), &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

static void test_protect_checks(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  mb_prot_item gap[] = {{0, P(1), NONE}, {P(2), P(1), RO}};
  mb_prot_item bad_access[] = {{0, P(1), 3}};
  mb_prot_item unaligned[] = {{1, P(1), NONE}};
  mb_prot_item empty[] = {{0, 0, NONE}};
  mb_prot_item beyond[] = {{GMAX - P(1), P(2), NONE}};
  assert_int_equal(mp_protect(r.mm, 0, gap, 2), MB_E_INVALID);
  assert_int_equal(mp_protect(r.mm, 0, bad_access, 1), MB_E_INVALID);
  assert_int_equal(mp_protect(r.mm, 0, unaligned, 1), MB_E_INVALID);
  assert_int_equal(mp_protect(r.mm, 0, empty, 1), MB_E_INVALID);
  assert_int_equal(mp_protect(r.mm, 0, beyond, 1), MB_E_INVALID);
  assert_int_equal(mp_protect(r.mm, 0, gap, 0), MB_E_INVALID);
  assert_int_equal(mp_protect(r.mm, 1, gap, 1), MB_E_INVALID); /* VTL 1 is the top one */
  assert_int_equal(vam_protect(r.p, gap, 2), MB_E_INVALID);
  assert_int_equal(vam_protect(r.p, beyond, 1), MB_E_INVALID);
  assert_int_equal(vam_protect(r.p, gap, 0), MB_E_INVALID);
  MP_EXPECT_RANGES(r.p, R(0, P(16), true), R(P(16), P(4), false));
  rig_close(&r);
}

static void test_inspect_lists_protections(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  mb_prot_item items[] = {{P(2), P(1), NONE}, {P(3), P(2), RO}};
  assert_int_equal(mp_protect(r.mm, 0, items, 2), 0);
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  mb__vam_inspect(r.p, f);
  fclose(f);
  assert_non_null(strstr(text, "\"protections\":[{\"gpa\":8192,\"size\":4096,\"access\":\"none\"},"
                               "{\"gpa\":12288,\"size\":8192,\"access\":\"ro\"}]"));
  assert_non_null(strstr(text, "{\"gpa\":12288,\"size\":8192,\"access\":\"ro\"}"));
  free(text);
  rig_close(&r);
}

/* ---- parking behind locks -------------------------------------------------------------------- */

typedef struct pending {
  bool done;
  int status, seq;
  mb_msg *reply;
} pending;

static int replies;

static void on_pending(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  pending *p = ctx;
  mb_msg_keep(reply);
  p->reply = reply;
  p->status = reply->status;
  p->seq = ++replies;
  p->done = true;
}

static void call_async(mp_fixture *f, mb_addr to, mb_msg *m, pending *p) {
  *p = (pending){false, 0, 0, NULL};
  mb_call(mb_loop_actor(f->h.loop), to, m, on_pending, p);
}

static void pending_free(pending *p) {
  mb_msg_free(p->reply);
  p->reply = NULL;
}

static size_t waiting(mb_vam *v) {
  mb_vam_lock_info *info;
  size_t n, w;
  assert_int_equal(mb_vam_locks(v, &info, &n, &w), 0);
  free(info);
  return w;
}

/* VAM_PROTECT taking write from a writable lock parks; later requests queue behind it and
 * are answered after it, in order; new locks that need what it takes are refused meanwhile,
 * others are not; an unlock lets it go on. */
static void test_vam_protect_parks(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  mb_lock *w, *ro;
  assert_int_equal(mb_vam_lock(r.p, P(6), P(1), true, &w), 0);
  assert_int_equal(mb_vam_lock(r.p, P(8), P(1), false, &ro), 0);
  mb_prot_item items[] = {{P(6), P(1), RO}, {P(7), P(1), RW}, {P(8), P(1), RO}};
  pending prot, unmap, prot2;
  vam_protect_msg *pm = vam_protect_new();
  pm->items = items;
  pm->count = 3;
  call_async(&r.f, mb_vam_addr(r.p), &pm->hdr, &prot);
  vam_unmap_msg *um = vam_unmap_new();
  um->gpa = P(12);
  um->size = P(1);
  call_async(&r.f, mb_vam_addr(r.p), &um->hdr, &unmap);
  mb_prot_item raise[] = {{P(6), P(1), RW}};
  vam_protect_msg *pm2 = vam_protect_new();
  pm2->items = raise;
  pm2->count = 1;
  call_async(&r.f, mb_vam_addr(r.p), &pm2->hdr, &prot2);
  settle(&r.f);
  assert_false(prot.done || unmap.done || prot2.done);
  assert_int_equal(waiting(r.p), 3);
  /* nothing changed yet, and the mapper goes on answering */
  MP_EXPECT_RANGES(r.p, R(0, P(16), true), R(P(16), P(4), false));
  mb_vam_lock_ptr(w)[5] = 0x42;
  assert_int_equal(wr(r.p, P(6) + 6, 0x43), 0);
  assert_int_equal(lock_rc(r.p, P(6), P(1), true), MB_E_PROTECTED); /* it takes write */
  assert_int_equal(lock_rc(r.p, P(6), P(1), false), 0);
  assert_int_equal(lock_rc(r.p, P(7), P(1), true), 0);
  assert_int_equal(lock_rc(r.p, P(12), P(1), false), MB_E_UNMAPPED); /* draining */

  mb_vam_unlock(w);
  settle(&r.f);
  assert_true(prot.done && unmap.done && prot2.done);
  assert_int_equal(prot.status, 0);
  assert_int_equal(unmap.status, 0);
  assert_int_equal(prot2.status, 0);
  assert_true(prot.seq < unmap.seq && unmap.seq < prot2.seq);
  MP_EXPECT_RANGES(r.p, R(0, P(8), true), R(P(8), P(1), false), R(P(9), P(3), true),
                   R(P(13), P(3), true), R(P(16), P(4), false));
  assert_int_equal(byte_at(r.p, P(6) + 5), 0x42);
  assert_int_equal(wr(r.p, P(8), 1), MB_E_PROTECTED);
  assert_int_equal(mb_vam_lock_ptr(ro)[0], byte_at(r.plain, P(8))); /* still readable */
  mb_vam_unlock(ro);
  pending_free(&prot);
  pending_free(&unmap);
  pending_free(&prot2);
  rig_close(&r);
}

/* Through the manager: MM_PROTECT waits for the locked mapper (the others took it), requests
 * after it wait; a protection to `none` parks behind any lock. */
static void test_mm_protect_parks(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  mb_vam *p2 = mp_vam_create(r.f.h.loop, r.mm, GMAX, true);
  assert_int_equal(mp_add_mapper_vtl(r.mm, p2, true, 0, true, false), 0);
  mb_lock *l;
  assert_int_equal(mb_vam_lock(r.p, P(4), P(2), false, &l), 0);
  mb_prot_item items[] = {{P(5), P(1), NONE}};
  pending prot, unmap;
  mm_protect_msg *pm = mm_protect_new();
  pm->vtl = 0;
  pm->items = items;
  pm->count = 1;
  call_async(&r.f, r.mm, &pm->hdr, &prot);
  mm_unmap_msg *um = mm_unmap_new();
  um->gpa = P(10);
  um->size = P(1);
  call_async(&r.f, r.mm, &um->hdr, &unmap);
  settle(&r.f);
  assert_false(prot.done || unmap.done);
  assert_int_equal(rd(p2, P(5)), MB_E_PROTECTED); /* the other protecting mapper took it */
  assert_int_equal(rd(r.p, P(5)), 0);
  MP_EXPECT_RANGES(r.p, R(0, P(16), true), R(P(16), P(4), false));
  assert_int_equal(lock_rc(r.p, P(5), P(1), false), MB_E_PROTECTED);
  mb_vam_unlock(l);
  settle(&r.f);
  assert_true(prot.done && unmap.done);
  assert_int_equal(prot.status, 0);
  assert_int_equal(unmap.status, 0);
  assert_true(prot.seq < unmap.seq);
  assert_int_equal(rd(r.p, P(5)), MB_E_PROTECTED);
  MP_EXPECT_RANGES(r.p, R(0, P(5), true), R(P(6), P(4), true), R(P(11), P(5), true),
                   R(P(16), P(4), false));
  pending_free(&prot);
  pending_free(&unmap);
  mp_vam_drop(r.f.h.loop, r.mm, p2);
  rig_close(&r);
}

/* ---- rollback -------------------------------------------------------------------------------- */

/* One protecting mapper refuses (its reservation is too small for the items): the others get
 * the old protections back, the manager's copy is unchanged (a mapper added later shows it). */
static void test_protect_rollback(void **state) {
  (void)state;
  rig r;
  rig_open(&r);
  assert_int_equal(mp_protect1(r.mm, 0, P(9), P(1), RO), 0);
  mb_vam *small = mp_vam_create(r.f.h.loop, r.mm, P(32), true);
  mb_vam *p2 = mp_vam_create(r.f.h.loop, r.mm, GMAX, true);
  assert_int_equal(mp_protect1(r.mm, 0, P(9), P(1), RW), 0); /* so that small can join */
  assert_int_equal(mp_add_mapper_vtl(r.mm, small, true, 0, true, false), 0);
  assert_int_equal(mp_add_mapper_vtl(r.mm, p2, true, 0, true, false), 0);
  mb_prot_item items[] = {{P(8), P(2), NONE}, {P(10), P(30), RW}}; /* beyond small's 32 pages */
  assert_int_equal(mp_protect(r.mm, 0, items, 2), MB_E_INVALID);
  MP_EXPECT_RANGES(r.p, R(0, P(16), true), R(P(16), P(4), false));
  MP_EXPECT_RANGES(p2, R(0, P(16), true), R(P(16), P(4), false));
  assert_int_equal(rd(r.p, P(8)), 0);
  assert_true(probe(p2, P(9), true));
  mb_vam *late = mp_vam_create(r.f.h.loop, r.mm, GMAX, true);
  assert_int_equal(mp_add_mapper_vtl(r.mm, late, true, 0, true, false), 0);
  MP_EXPECT_RANGES(late, R(0, P(16), true), R(P(16), P(4), false));
  /* within everybody's reach it goes through */
  items[1].size = P(10);
  assert_int_equal(mp_protect(r.mm, 0, items, 2), 0);
  assert_int_equal(rd(small, P(9)), MB_E_PROTECTED);
  assert_int_equal(rd(late, P(8)), MB_E_PROTECTED);
  assert_int_equal(rd(r.plain, P(8)), 0);
  mp_vam_drop(r.f.h.loop, r.mm, small);
  mp_vam_drop(r.f.h.loop, r.mm, p2);
  mp_vam_drop(r.f.h.loop, r.mm, late);
  rig_close(&r);
}

int main(void) {
  mp_warm_up();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_protect_accesses),
      cmocka_unit_test(test_lock_refusal),
      cmocka_unit_test(test_protections_outlive_mappings),
      cmocka_unit_test(test_late_protecting_mapper),
      cmocka_unit_test(test_alias_window_unprotected),
      cmocka_unit_test(test_protect_checks),
      cmocka_unit_test(test_inspect_lists_protections),
      cmocka_unit_test(test_vam_protect_parks),
      cmocka_unit_test(test_mm_protect_parks),
      cmocka_unit_test(test_protect_rollback),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
