/* mp_util.h: helpers for the mapping tests: the test plays the region manager, sending
 * MM_* requests to a mapping manager and VAM_* requests to VA mappers, either as the built-in
 * actor of a loop the test thread runs itself (attach mode) or with blocking calls to
 * started loops. */
#ifndef MB_MP_UTIL_H
#define MB_MP_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "mb_access.h"
#include "mb_backing.h"
#include "mapping_manager.h"
#include "mb_errors.h"
#include "mb_runtime.h"
#include "test_util.h" /* tu_home, tu_start, tu_stop, tu_memfd_pages, tu_fd_count */
#include "va_mapper.h"

#define PAGE ((uint64_t)MB_PAGE_SIZE)
#define MiB (1ull << 20)

/* ---- actors, created on their loop's thread (inline when it is the caller's) ----------------- */

typedef struct mp_create {
  mb_addr mm;
  uint64_t max_addr, alias;
  uint8_t vtls;
  bool eager;
  int rc;
  mb_vam *vam;
  mb_actor *actor;
} mp_create;

/* The geometry of the tests that know nothing of VTLs: one view, larger than any test's
 * mappers. */
#define MP_MAX_ADDR (1ull << 46)

static inline void mp_mm_fn(mb_loop *l, void *arg) {
  mp_create *c = arg;
  mb_mm_geom g = {c->max_addr ? c->max_addr : MP_MAX_ADDR, 0, c->alias, c->vtls};
  c->actor = mb_mapping_manager_create(l, &g);
}

/* A mapping manager with geometry: max_addr, alias (0: none), vtls (bit mask). */
static inline mb_addr mp_mm_create_geom(mb_loop *l, uint64_t max_addr, uint64_t alias,
                                        uint8_t vtls) {
  mp_create c = {.max_addr = max_addr, .alias = alias, .vtls = vtls};
  assert_int_equal(mb_loop_exec(l, mp_mm_fn, &c), 0);
  assert_non_null(c.actor);
  return mb_actor_addr(c.actor);
}

static inline mb_addr mp_mm_create(mb_loop *l) {
  mp_create c = {0};
  assert_int_equal(mb_loop_exec(l, mp_mm_fn, &c), 0);
  assert_non_null(c.actor);
  return mb_actor_addr(c.actor);
}

static inline void mp_vam_fn(mb_loop *l, void *arg) {
  mp_create *c = arg;
  c->rc = mb_vam_create(l, c->mm, c->max_addr, c->eager, &c->vam);
}

static inline mb_vam *mp_vam_create(mb_loop *l, mb_addr mm, uint64_t max_addr, bool eager) {
  mp_create c = {.mm = mm, .max_addr = max_addr, .eager = eager};
  assert_int_equal(mb_loop_exec(l, mp_vam_fn, &c), 0);
  assert_int_equal(c.rc, 0);
  assert_non_null(c.vam);
  return c.vam;
}

static inline void mp_vam_destroy_fn(mb_loop *l, void *arg) {
  (void)l;
  mb_vam_destroy(arg);
}

static inline void mp_vam_destroy(mb_loop *l, mb_vam *v) {
  assert_int_equal(mb_loop_exec(l, mp_vam_destroy_fn, v), 0);
}

/* ---- the attach-mode fixture: a mapping manager on a loop the test thread runs ----------- */

typedef struct mp_fixture {
  tu_home h;
  mb_addr mm;
  int fds; /* open descriptors before the test */
} mp_fixture;

static inline void mp_begin(mp_fixture *f) {
  assert_int_equal(mb_access_reinstall(), 0); /* cmocka puts its handlers in front per test */
  f->fds = tu_fd_count();
  tu_home_init(&f->h, "home");
  f->mm = mp_mm_create(f->h.loop);
}

/* Stops the loop (destroying the manager with whatever it still holds). */
static inline void mp_end(mp_fixture *f) {
  tu_home_fini(&f->h);
  assert_int_equal(tu_fd_count(), f->fds); /* every object reference was dropped */
}

/* ---- requests -------------------------------------------------------------------------------- */

typedef struct mp_wait {
  bool done;
} mp_wait;

static inline void mp_on_reply(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  mb_msg_keep(reply); /* the caller reads the reply fields, then frees it */
  ((mp_wait *)ctx)->done = true;
}

/* A request from the calling thread: a blocking call, or, on a thread running an attached
 * loop, a call from that loop's actor while the thread runs the loop. The reply is written
 * into *msg (the same message comes back). */
static inline int mp_call(mb_addr to, mb_msg *msg) {
  mb_loop *l = mb_loop_current();
  if (l == NULL)
    return mb_call_sync(to, msg);
  mp_wait w = {false};
  mb_call(mb_loop_actor(l), to, msg, mp_on_reply, &w);
  while (!w.done)
    uv_run(mb_loop_uv(l), UV_RUN_ONCE);
  return msg->status;
}

/* An entry with its own reference on obj. */
static inline mb_map_entry mp_entry(mb_object *obj, uint64_t gpa, uint64_t size, uint64_t off,
                                    bool writable) {
  return (mb_map_entry){gpa, size, mb_object_ref(obj), off, writable};
}

/* MM_MAP of a copy of entries[0..n) (references added; the manager owns the copy). */
static inline int mp_map(mb_addr mm, const mb_map_entry *entries, uint32_t n) {
  mb_map_entry *copy = malloc((n ? n : 1) * sizeof *copy);
  assert_non_null(copy);
  for (uint32_t i = 0; i < n; i++) {
    copy[i] = entries[i];
    if (copy[i].obj)
      mb_object_ref(copy[i].obj);
  }
  mm_map_msg *m = mm_map_new();
  m->entries = copy;
  m->count = n;
  int rc = mp_call(mm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

static inline int mp_map1(mb_addr mm, mb_object *obj, uint64_t gpa, uint64_t size, uint64_t off,
                          bool writable) {
  mb_map_entry e = {gpa, size, obj, off, writable};
  return mp_map(mm, &e, 1);
}

static inline int mp_unmap(mb_addr mm, uint64_t gpa, uint64_t size) {
  mm_unmap_msg *m = mm_unmap_new();
  m->gpa = gpa;
  m->size = size;
  int rc = mp_call(mm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

static inline int mp_add_mapper(mb_addr mm, mb_vam *v, bool eager) {
  mm_add_mapper_msg *m = mm_add_mapper_new();
  m->mapper = mb_vam_addr(v);
  m->eager = eager;
  int rc = mp_call(mm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

/* MM_ADD_MAPPER with a VTL, protections and an alias window. */
static inline int mp_add_mapper_vtl(mb_addr mm, mb_vam *v, bool eager, uint8_t vtl,
                                    bool protect, bool alias) {
  mm_add_mapper_msg *m = mm_add_mapper_new();
  m->mapper = mb_vam_addr(v);
  m->eager = eager;
  m->vtl = vtl;
  m->protect = protect;
  m->alias = alias;
  int rc = mp_call(mm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

/* MM_PROTECT of VTL vtl: items[0..n) (ours). */
static inline int mp_protect(mb_addr mm, uint8_t vtl, const mb_prot_item *items, uint32_t n) {
  mm_protect_msg *m = mm_protect_new();
  m->vtl = vtl;
  m->items = items;
  m->count = n;
  int rc = mp_call(mm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

/* MM_PROTECT of one range to one access. */
static inline int mp_protect1(mb_addr mm, uint8_t vtl, uint64_t gpa, uint64_t size,
                              uint8_t access) {
  mb_prot_item it = {gpa, size, access};
  return mp_protect(mm, vtl, &it, 1);
}

static inline int mp_remove_mapper(mb_addr mm, mb_vam *v) {
  mm_remove_mapper_msg *m = mm_remove_mapper_new();
  m->mapper = mb_vam_addr(v);
  int rc = mp_call(mm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

/* A VA mapper created on l and added to the mapping manager mm. */
static inline mb_vam *mp_vam_add(mb_loop *l, mb_addr mm, uint64_t max_addr, bool eager) {
  mb_vam *v = mp_vam_create(l, mm, max_addr, eager);
  assert_int_equal(mp_add_mapper(mm, v, eager), 0);
  return v;
}

/* Removes v from mm, then destroys it on its loop l. */
static inline void mp_vam_drop(mb_loop *l, mb_addr mm, mb_vam *v) {
  assert_int_equal(mp_remove_mapper(mm, v), 0);
  mp_vam_destroy(l, v);
}

/* MM_LIST: the visible mappings (free with mb_map_entries_free). */
static inline uint32_t mp_list(mb_addr mm, mb_map_entry **out) {
  mm_list_msg *m = mm_list_new();
  assert_int_equal(mp_call(mm, &m->hdr), 0);
  uint32_t n = m->count;
  *out = m->entries;
  if (n == 0)
    assert_null(m->entries);
  mb_msg_free(&m->hdr);
  return n;
}

/* VAM_RANGES: the mapper's established ranges (free() them). */
static inline uint32_t mp_ranges(mb_vam *v, mb_part_range **out) {
  vam_ranges_msg *m = vam_ranges_new();
  assert_int_equal(mp_call(mb_vam_addr(v), &m->hdr), 0);
  uint32_t n = m->count;
  *out = m->ranges;
  mb_msg_free(&m->hdr);
  return n;
}

/* Checks the mapper's established ranges against "gpa+size:rw ..." pairs (n of them). */
static inline void mp_expect_ranges(mb_vam *v, const mb_part_range *want, uint32_t n) {
  mb_part_range *got = NULL;
  uint32_t k = mp_ranges(v, &got);
  if (k != n) {
    for (uint32_t i = 0; i < k; i++)
      print_message("  got 0x%llx+0x%llx:%s\n", (unsigned long long)got[i].gpa,
                    (unsigned long long)got[i].size, got[i].writable ? "rw" : "ro");
  }
  assert_int_equal(k, n);
  for (uint32_t i = 0; i < n; i++) {
    assert_int_equal(got[i].gpa, want[i].gpa);
    assert_int_equal(got[i].size, want[i].size);
    assert_int_equal(got[i].writable, want[i].writable);
  }
  free(got);
}

#define MP_EXPECT_RANGES(v, ...)                                                               \
  do {                                                                                         \
    const mb_part_range want_[] = {__VA_ARGS__};                                               \
    mp_expect_ranges((v), want_, sizeof want_ / sizeof want_[0]);                              \
  } while (0)
#define MP_EXPECT_NO_RANGES(v) mp_expect_ranges((v), NULL, 0)

/* ---- objects and contents -------------------------------------------------------------------- */

/* True when buf[0..len) is what guest bytes [gpa, gpa+len) of a mapping of a
 * fill_pages(base) object at (map_gpa, obj_off) hold. */
static inline bool mp_bytes_ok(const uint8_t *buf, size_t len, uint64_t gpa, uint64_t map_gpa,
                               uint64_t obj_off, uint8_t base) {
  for (size_t i = 0; i < len; i++)
    if (buf[i] != mb_fill_pages_byte(base, obj_off + (gpa + i - map_gpa)))
      return false;
  return true;
}

/* Reads len bytes at gpa through v and checks them against the object's pattern. */
static inline void mp_expect_bytes(mb_vam *v, uint64_t gpa, size_t len, uint64_t map_gpa,
                                   uint64_t obj_off, uint8_t base) {
  uint8_t *buf = malloc(len);
  assert_non_null(buf);
  assert_int_equal(mb_vam_read(v, gpa, buf, len), 0);
  assert_true(mp_bytes_ok(buf, len, gpa, map_gpa, obj_off, base));
  free(buf);
}

/* libuv opens process-wide descriptors on first use; open them before counting. */
static inline void mp_warm_up(void) {
  tu_home h;
  tu_home_init(&h, "home");
  tu_home_fini(&h);
}

#endif
