/* test_locks.c: locks through a VA mapper. On a loop the test thread runs itself (attach
 * mode) the test plays the mapping manager (VAM_* sent directly) or the region manager (MM_*
 * to a real mapping manager): what a lock refuses, how a teardown parks behind a lock while
 * the mapper goes on serving, the order of what queues behind it, resolves passing an
 * unmap in flight, the watchdog. On started loops: a loop stopping with a parked unmap, and
 * the public API (mb_mapper_lock, a region unmap waiting for an unlock, mapper removal).
 * Nothing is timed but the watchdog, which is polled for with a generous bound. */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "membacking.h"
#include "mp_util.h"

#define R(gpa, size, w) {(gpa), (size), (w)}

/* Everything on the home loop runs until nothing is left to do. */
static void settle(mp_fixture *f) {
  for (int i = 0; i < 64; i++)
    uv_run(&f->h.uv, UV_RUN_NOWAIT);
}

/* ---- requests left in flight ----------------------------------------------------------------- */

typedef struct pending {
  bool done;
  int status;
  mb_msg *reply;
} pending;

static void on_pending(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  pending *p = ctx;
  mb_msg_keep(reply);
  p->reply = reply;
  p->status = reply->status;
  p->done = true;
}

/* A request from the home loop's actor, not waited for. */
static void call_async(mp_fixture *f, mb_addr to, mb_msg *m, pending *p) {
  *p = (pending){false, 0, NULL};
  mb_call(mb_loop_actor(f->h.loop), to, m, on_pending, p);
}

static void pending_free(pending *p) {
  mb_msg_free(p->reply);
  p->reply = NULL;
}

static void vam_unmap_async(mp_fixture *f, mb_vam *v, uint64_t gpa, uint64_t size, pending *p) {
  vam_unmap_msg *m = vam_unmap_new();
  m->gpa = gpa;
  m->size = size;
  call_async(f, mb_vam_addr(v), &m->hdr, p);
}

static void vam_map_async(mp_fixture *f, mb_vam *v, mb_map_entry *e, pending *p) {
  vam_map_msg *m = vam_map_new();
  m->entries = e; /* stays ours until the answer */
  m->count = 1;
  call_async(f, mb_vam_addr(v), &m->hdr, p);
}

static int vam_map_sync(mb_vam *v, mb_map_entry *e) {
  vam_map_msg *m = vam_map_new();
  m->entries = e;
  m->count = 1;
  int rc = mp_call(mb_vam_addr(v), &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

/* What a mapping manager forwards for a lazy fault: establish `e`. */
static void vam_resolve_async(mp_fixture *f, mb_vam *v, mb_map_entry e, pending *p) {
  mm_resolve_msg *m = mm_resolve_new();
  m->mapper = mb_vam_addr(v);
  m->gpa = e.gpa;
  m->entry = e;
  m->found = true;
  call_async(f, mb_vam_addr(v), &m->hdr, p);
}

static size_t waiting(mb_vam *v) {
  mb_vam_lock_info *info;
  size_t n, w;
  assert_int_equal(mb_vam_locks(v, &info, &n, &w), 0);
  free(info);
  return w;
}

/* ---- what a lock accepts --------------------------------------------------------------------- */

static void test_lock_checks(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *v = mp_vam_create(f.h.loop, f.mm, 4 * MiB, true);
  mb_object *a = tu_memfd_pages("mp", 16 * PAGE, 50);
  mb_map_entry rw = {0x10000, 8 * PAGE, a, 0, true}, ro = {0x20000, 2 * PAGE, a, 8 * PAGE, false};
  assert_int_equal(vam_map_sync(v, &rw), 0);
  assert_int_equal(vam_map_sync(v, &ro), 0);

  mb_lock *l1, *l2, *l3, *bad = (mb_lock *)1;
  assert_int_equal(mb_vam_lock(v, 0x10000 + PAGE, 2 * PAGE, true, &l1), 0);
  uint8_t *p = mb_vam_lock_ptr(l1);
  assert_ptr_equal(p, mb_vam_base(v) + 0x10000 + PAGE);
  assert_int_equal(mb_vam_lock_gpa(l1), 0x10000 + PAGE);
  assert_int_equal(mb_vam_lock_size(l1), 2 * PAGE);
  assert_int_equal(p[0], 51); /* plain loads and stores through the pointer */
  p[PAGE + 7] = 0xab;
  uint8_t b;
  assert_int_equal(mb_vam_read(v, 0x10000 + 2 * PAGE + 7, &b, 1), 0);
  assert_int_equal(b, 0xab);
  assert_int_equal(mb_vam_lock(v, 0x10000 + 2 * PAGE, PAGE, false, &l2), 0); /* overlapping */
  assert_int_equal(mb_vam_lock(v, 0x20000, 2 * PAGE, false, &l3), 0);

  /* malformed */
  assert_int_equal(mb_vam_lock(v, 0x10000, 0, true, &bad), MB_E_INVALID);
  assert_null(bad);
  assert_int_equal(mb_vam_lock(v, 0x10001, PAGE, true, &bad), MB_E_INVALID);
  assert_int_equal(mb_vam_lock(v, 0x10000, PAGE + 1, true, &bad), MB_E_INVALID);
  assert_int_equal(mb_vam_lock(v, 4 * MiB - PAGE, 2 * PAGE, false, &bad), MB_E_INVALID);
  assert_int_equal(mb_vam_lock(v, 4 * MiB, PAGE, false, &bad), MB_E_INVALID);
  assert_int_equal(mb_vam_lock(v, 0x1000, UINT64_MAX - 0xfff, false, &bad), MB_E_INVALID);
  /* the first problem in address order decides */
  assert_int_equal(mb_vam_lock(v, 0x10000 + 7 * PAGE, 2 * PAGE, false, &bad), MB_E_UNMAPPED);
  assert_int_equal(mb_vam_lock(v, 0xf000, 2 * PAGE, false, &bad), MB_E_UNMAPPED);
  assert_int_equal(mb_vam_lock(v, 0x20000, PAGE, true, &bad), MB_E_READONLY);
  assert_int_equal(mb_vam_lock(v, 0x20000, 3 * PAGE, true, &bad), MB_E_READONLY);
  assert_int_equal(mb_vam_lock(v, 0x1f000, 2 * PAGE, true, &bad), MB_E_UNMAPPED);
  assert_null(bad);

  /* the snapshot, ascending */
  mb_vam_lock_info *info;
  size_t n, w;
  assert_int_equal(mb_vam_locks(v, &info, &n, &w), 0);
  assert_int_equal(n, 3);
  assert_int_equal(w, 0);
  assert_int_equal(info[0].gpa, 0x10000 + PAGE);
  assert_int_equal(info[0].size, 2 * PAGE);
  assert_true(info[0].writable);
  assert_false(info[0].overdue);
  assert_int_equal(info[1].gpa, 0x10000 + 2 * PAGE);
  assert_false(info[1].writable);
  assert_int_equal(info[2].gpa, 0x20000);
  assert_true(info[0].since.tv_sec > 0);
  free(info);

  /* a mapper being removed takes no new lock, and is not retired while one is held */
  assert_int_equal(mb_vam_retire(v), MB_E_INVALID);
  mb_vam_unlock(l1);
  mb_vam_unlock(l2);
  mb_vam_unlock(l3);
  assert_int_equal(mb_vam_locks(v, &info, &n, &w), 0);
  assert_int_equal(n, 0);
  assert_null(info);
  assert_int_equal(mb_vam_retire(v), 0);
  assert_int_equal(mb_vam_lock(v, 0x10000, PAGE, false, &bad), MB_E_INVALID);
  mb_vam_unretire(v);
  assert_int_equal(mb_vam_lock(v, 0x10000, PAGE, false, &l1), 0);
  mb_vam_unlock(l1);
  mb_vam_unlock(NULL);

  /* a lazy mapper's lock on its own loop thread would wait for that very loop */
  mb_vam *lazy = mp_vam_add(f.h.loop, f.mm, 4 * MiB, false);
  assert_int_equal(mb_vam_lock(lazy, 0x10000, PAGE, false, &bad), MB_EDEADLK);
  mp_vam_drop(f.h.loop, f.mm, lazy);

  mb_object_unref(a);
  mp_vam_destroy(f.h.loop, v);
  mp_end(&f);
}

/* ---- parking --------------------------------------------------------------------------------- */

/* An unmap over a lock parks; the mapper answers queries meanwhile, queues what changes it
 * in arrival order, serves resolves clear of the queue, and refuses locks on what drains. */
static void test_unmap_parks(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *v = mp_vam_create(f.h.loop, f.mm, 4 * MiB, true);
  mb_object *a = tu_memfd_pages("mp", 16 * PAGE, 10), *b = tu_memfd_pages("mp", 4 * PAGE, 200);
  mb_map_entry all = {0, 16 * PAGE, a, 0, true};
  assert_int_equal(vam_map_sync(v, &all), 0);
  mb_lock *l;
  assert_int_equal(mb_vam_lock(v, 4 * PAGE, 2 * PAGE, true, &l), 0);
  uint8_t *p = mb_vam_lock_ptr(l);

  pending un, map0, un12, res_far, res_near;
  vam_unmap_async(&f, v, 0, 8 * PAGE, &un);
  settle(&f);
  assert_false(un.done);
  assert_int_equal(mb_vam_stats_get(v).parked, 1);
  MP_EXPECT_RANGES(v, R(0, 16 * PAGE, true)); /* queries are answered, the range still there */
  p[0] = 0x77;                                /* and the locked pages are still usable */
  mb_map_entry e0 = {0, PAGE, b, 0, true};    /* over the parked range: must come after it */
  vam_map_async(&f, v, &e0, &map0);
  vam_unmap_async(&f, v, 12 * PAGE, PAGE, &un12);
  vam_resolve_async(&f, v, (mb_map_entry){1 * MiB, 2 * PAGE, mb_object_ref(b), 0, false},
                    &res_far);
  vam_resolve_async(&f, v, (mb_map_entry){2 * PAGE, PAGE, mb_object_ref(b), 0, false},
                    &res_near);
  settle(&f);
  assert_false(map0.done);
  assert_false(un12.done);
  assert_false(res_near.done);
  assert_true(res_far.done); /* clear of every queued range: served at once */
  assert_int_equal(res_far.status, 0);
  MP_EXPECT_RANGES(v, R(0, 16 * PAGE, true), R(1 * MiB, 2 * PAGE, false));
  assert_int_equal(waiting(v), 4);

  /* what is torn down, or queued to be, cannot be locked anew; elsewhere it can */
  mb_lock *x;
  assert_int_equal(mb_vam_lock(v, 7 * PAGE, 2 * PAGE, false, &x), MB_E_UNMAPPED);
  assert_int_equal(mb_vam_lock(v, 12 * PAGE, PAGE, false, &x), MB_E_UNMAPPED);
  assert_int_equal(mb_vam_lock(v, 8 * PAGE, 4 * PAGE, true, &x), 0);
  mb_vam_unlock(x); /* kicks: nothing it held up, nothing moves */
  settle(&f);
  assert_false(un.done);

  mb_vam_unlock(l);
  settle(&f);
  assert_true(un.done && map0.done && un12.done && res_near.done);
  assert_int_equal(un.status, 0);
  assert_int_equal(map0.status, 0);
  assert_int_equal(un12.status, 0);
  assert_int_equal(res_near.status, 0);
  /* in arrival order: the unmap, then b at 0, the unmap at 12, b's page at 2 */
  MP_EXPECT_RANGES(v, R(0, PAGE, true), R(2 * PAGE, PAGE, false), R(8 * PAGE, 4 * PAGE, true),
                   R(13 * PAGE, 3 * PAGE, true), R(1 * MiB, 2 * PAGE, false));
  mp_expect_bytes(v, 0, PAGE, 0, 0, 200);
  assert_int_equal(mb_vam_read(v, 4 * PAGE, &(uint8_t){0}, 1), MB_E_UNMAPPED);
  assert_int_equal(waiting(v), 0);
  mb_object_unref(((mm_resolve_msg *)(void *)res_far.reply)->entry.obj);
  mb_object_unref(((mm_resolve_msg *)(void *)res_near.reply)->entry.obj);
  pending *all_p[] = {&un, &map0, &un12, &res_far, &res_near};
  for (size_t i = 0; i < 5; i++)
    pending_free(all_p[i]);

  mb_object_unref(a);
  mb_object_unref(b);
  mp_vam_destroy(f.h.loop, v);
  mp_end(&f);
}

/* A map that would replace locked pages with another backing parks too; the locked pointer
 * keeps seeing the old pages until the unlock. */
static void test_replace_parks(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *v = mp_vam_create(f.h.loop, f.mm, 4 * MiB, true);
  mb_object *a = tu_memfd_pages("mp", 8 * PAGE, 1), *b = tu_memfd_pages("mp", 8 * PAGE, 100);
  mb_map_entry ea = {0, 8 * PAGE, a, 0, true}, eb = {0, 8 * PAGE, b, 0, true};
  assert_int_equal(vam_map_sync(v, &ea), 0);
  mb_lock *l;
  assert_int_equal(mb_vam_lock(v, 2 * PAGE, PAGE, false, &l), 0);
  pending rep;
  vam_map_async(&f, v, &eb, &rep);
  settle(&f);
  assert_false(rep.done);
  assert_int_equal(((uint8_t *)mb_vam_lock_ptr(l))[0], 3);
  mb_lock *x;
  assert_int_equal(mb_vam_lock(v, 0, PAGE, false, &x), MB_E_UNMAPPED); /* it drains now */
  mb_vam_unlock(l);
  settle(&f);
  assert_true(rep.done);
  assert_int_equal(rep.status, 0);
  mp_expect_bytes(v, 0, 8 * PAGE, 0, 0, 100);
  pending_free(&rep);
  mb_object_unref(a);
  mb_object_unref(b);
  mp_vam_destroy(f.h.loop, v);
  mp_end(&f);
}

/* A resolve clear of the parked head, itself held up by another lock, goes as soon as that
 * lock goes: it does not wait for the head. */
static void test_resolve_passes_parked_head(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *v = mp_vam_create(f.h.loop, f.mm, 4 * MiB, true);
  mb_object *a = tu_memfd_pages("mp", 16 * PAGE, 1), *b = tu_memfd_pages("mp", 4 * PAGE, 100);
  mb_map_entry all = {0, 16 * PAGE, a, 0, true};
  assert_int_equal(vam_map_sync(v, &all), 0);
  mb_lock *l1, *l2;
  assert_int_equal(mb_vam_lock(v, 0, PAGE, true, &l1), 0);
  assert_int_equal(mb_vam_lock(v, 8 * PAGE, PAGE, false, &l2), 0);
  pending un, res;
  vam_unmap_async(&f, v, 0, 4 * PAGE, &un);
  vam_resolve_async(&f, v, (mb_map_entry){8 * PAGE, PAGE, mb_object_ref(b), 0, true}, &res);
  settle(&f);
  assert_false(un.done);
  assert_false(res.done); /* it would replace a locked page */
  assert_int_equal(waiting(v), 2);
  mb_vam_unlock(l2);
  settle(&f);
  assert_true(res.done);
  assert_int_equal(res.status, 0);
  assert_false(un.done);
  mp_expect_bytes(v, 8 * PAGE, PAGE, 8 * PAGE, 0, 100);
  mb_vam_unlock(l1);
  settle(&f);
  assert_true(un.done);
  assert_int_equal(un.status, 0);
  MP_EXPECT_RANGES(v, R(4 * PAGE, 12 * PAGE, true));
  mb_object_unref(((mm_resolve_msg *)(void *)res.reply)->entry.obj);
  pending_free(&un);
  pending_free(&res);
  mb_object_unref(a);
  mb_object_unref(b);
  mp_vam_destroy(f.h.loop, v);
  mp_end(&f);
}

/* With a real mapping manager: MM_UNMAP waits for the locked mapper's acknowledgement (the
 * others have given theirs); a resolve passes it, requests after it wait, in order. */
static void test_manager_waits_for_lock(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *e = mp_vam_create(f.h.loop, f.mm, 4 * MiB, true);
  mb_vam *e2 = mp_vam_create(f.h.loop, f.mm, 4 * MiB, true);
  mb_vam *lazy = mp_vam_create(f.h.loop, f.mm, 4 * MiB, false);
  assert_int_equal(mp_add_mapper(f.mm, e, true), 0);
  assert_int_equal(mp_add_mapper(f.mm, e2, true), 0);
  assert_int_equal(mp_add_mapper(f.mm, lazy, false), 0);
  mb_object *a = tu_memfd_pages("mp", 16 * PAGE, 30);
  assert_int_equal(mp_map1(f.mm, a, 0, 8 * PAGE, 0, true), 0);
  assert_int_equal(mp_map1(f.mm, a, 1 * MiB, 4 * PAGE, 8 * PAGE, false), 0);
  mb_lock *l;
  assert_int_equal(mb_vam_lock(e, 2 * PAGE, PAGE, true, &l), 0);

  pending un, list, map;
  mm_unmap_msg *um = mm_unmap_new();
  um->gpa = 0;
  um->size = 8 * PAGE;
  call_async(&f, f.mm, &um->hdr, &un);
  settle(&f);
  assert_false(un.done);
  MP_EXPECT_RANGES(e2, R(1 * MiB, 4 * PAGE, false)); /* the others have unmapped */
  MP_EXPECT_RANGES(e, R(0, 8 * PAGE, true), R(1 * MiB, 4 * PAGE, false));

  /* a lazy fault meanwhile: resolved (elsewhere) or unmapped (the range going away) */
  mm_resolve_msg *r = mm_resolve_new();
  r->mapper = mb_vam_addr(lazy);
  r->gpa = 1 * MiB + PAGE;
  assert_int_equal(mp_call(f.mm, &r->hdr), 0);
  mb_object_unref(r->entry.obj);
  mb_msg_free(&r->hdr);
  MP_EXPECT_RANGES(lazy, R(1 * MiB, 4 * PAGE, false));
  r = mm_resolve_new();
  r->mapper = mb_vam_addr(lazy);
  r->gpa = 2 * PAGE;
  assert_int_equal(mp_call(f.mm, &r->hdr), MB_E_UNMAPPED);
  mb_msg_free(&r->hdr);

  /* later requests wait behind it, in order */
  call_async(&f, f.mm, &mm_list_new()->hdr, &list);
  mb_map_entry *batch = malloc(sizeof *batch);
  batch[0] = mp_entry(a, 0, 2 * PAGE, 0, true);
  mm_map_msg *mm = mm_map_new();
  mm->entries = batch;
  mm->count = 1;
  call_async(&f, f.mm, &mm->hdr, &map);
  settle(&f);
  assert_false(list.done);
  assert_false(map.done);

  mb_vam_unlock(l);
  settle(&f);
  assert_true(un.done && list.done && map.done);
  assert_int_equal(un.status, 0);
  assert_int_equal(map.status, 0);
  mm_list_msg *lm = mm_list_of(list.reply); /* taken after the unmap, before the map */
  assert_int_equal(list.status, 0);
  assert_int_equal(lm->count, 1);
  assert_int_equal(lm->entries[0].gpa, 1 * MiB);
  mb_map_entries_free(lm->entries, lm->count);
  lm->entries = NULL;
  MP_EXPECT_RANGES(e, R(0, 2 * PAGE, true), R(1 * MiB, 4 * PAGE, false));
  MP_EXPECT_RANGES(e2, R(0, 2 * PAGE, true), R(1 * MiB, 4 * PAGE, false));
  pending_free(&un);
  pending_free(&list);
  pending_free(&map);

  mb_object_unref(a);
  assert_int_equal(mp_remove_mapper(f.mm, e), 0);
  assert_int_equal(mp_remove_mapper(f.mm, e2), 0);
  assert_int_equal(mp_remove_mapper(f.mm, lazy), 0);
  mp_vam_destroy(f.h.loop, e);
  mp_vam_destroy(f.h.loop, e2);
  mp_vam_destroy(f.h.loop, lazy);
  mp_end(&f);
}

/* ---- the watchdog --------------------------------------------------------------------------- */

typedef struct log_sink {
  int lines;
  char last[256];
} log_sink;

static void sink(void *ctx, const char *line) {
  log_sink *s = ctx;
  s->lines++;
  snprintf(s->last, sizeof s->last, "%s", line);
}

static uint64_t ms_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

static void tick(uv_timer_t *t) { (void)t; }

/* Runs the home loop for about `ms`, or until the sink has `until_lines` lines (the
 * watchdog's timer is unreferenced, so a referenced timer of the test's own keeps uv_run
 * returning). */
static void run_for(mp_fixture *f, uint64_t ms, log_sink *s, int until_lines) {
  uv_timer_t t;
  uv_timer_init(&f->h.uv, &t);
  uv_timer_start(&t, tick, 1, 1);
  uint64_t stop = ms_now() + ms;
  while (ms_now() < stop && (s == NULL || s->lines < until_lines))
    uv_run(&f->h.uv, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&f->h.uv, UV_RUN_NOWAIT);
}

static void test_watchdog(void **state) {
  (void)state;
  mp_fixture f;
  mp_begin(&f);
  mb_vam *v = mp_vam_create(f.h.loop, f.mm, 4 * MiB, true);
  mb_object *a = tu_memfd_pages("mp", 8 * PAGE, 0);
  mb_map_entry e = {0x4000, 4 * PAGE, a, 0, true};
  assert_int_equal(vam_map_sync(v, &e), 0);
  log_sink s = {0, ""};
  mb_vam_set_watchdog(v, 20, sink, &s);
  mb_lock *l1, *l2;
  assert_int_equal(mb_vam_lock(v, 0x4000, 2 * PAGE, true, &l1), 0);
  run_for(&f, 10000, &s, 1);
  assert_int_equal(s.lines, 1);
  assert_non_null(strstr(s.last, "membacking: lock held for "));
  assert_non_null(strstr(s.last, " ms: mapper home/"));
  assert_non_null(strstr(s.last, "(eager) range [0x4000, 0x6000) rw since 20"));
  mb_vam_lock_info *info;
  size_t n, w;
  assert_int_equal(mb_vam_locks(v, &info, &n, &w), 0);
  assert_int_equal(n, 1);
  assert_true(info[0].overdue);
  assert_true(info[0].held_ns >= 20 * 1000000u);
  free(info);
  /* once per lock; a second one is reported on its own */
  assert_int_equal(mb_vam_lock(v, 0x6000, PAGE, false, &l2), 0);
  run_for(&f, 10000, &s, 2);
  assert_int_equal(s.lines, 2);
  assert_non_null(strstr(s.last, "range [0x6000, 0x7000) ro"));
  run_for(&f, 100, NULL, 0);
  assert_int_equal(s.lines, 2);
  mb_vam_unlock(l1);
  mb_vam_unlock(l2);
  run_for(&f, 50, NULL, 0); /* the timer finds nothing and stops */

  /* off: nothing is reported; turned on, locks already held are watched */
  mb_vam_set_watchdog(v, 0, sink, &s);
  assert_int_equal(mb_vam_lock(v, 0x4000, PAGE, true, &l1), 0);
  run_for(&f, 100, NULL, 0);
  assert_int_equal(s.lines, 2);
  mb_vam_set_watchdog(v, 10, sink, &s);
  run_for(&f, 10000, &s, 3);
  assert_int_equal(s.lines, 3);
  mb_vam_unlock(l1);

  mb_object_unref(a);
  mp_vam_destroy(f.h.loop, v);
  mp_end(&f);
}

/* ---- started loops --------------------------------------------------------------------------- */

typedef struct sync_unmap {
  mb_vam *v;
  uint64_t gpa, size;
  int rc;
} sync_unmap;

static void *unmap_thread(void *arg) {
  sync_unmap *u = arg;
  vam_unmap_msg *m = vam_unmap_new();
  m->gpa = u->gpa;
  m->size = u->size;
  u->rc = mb_call_sync(mb_vam_addr(u->v), &m->hdr);
  mb_msg_free(&m->hdr);
  return NULL;
}

static void wait_waiting(mb_vam *v, size_t n) {
  while (waiting(v) != n)
    usleep(100);
}

/* The mapper's loop stops while an unmap is parked: it is answered (stopped), and a lock
 * released afterwards kicks nobody. */
static void test_stop_with_parked_unmap(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0);
  int fds = tu_fd_count();
  mb_loop *lv = tu_start("vam");
  mb_vam *v = mp_vam_create(lv, (mb_addr){0}, 4 * MiB, true);
  mb_object *a = tu_memfd_pages("mp", 4 * PAGE, 9);
  mb_map_entry e = {0, 4 * PAGE, a, 0, true};
  assert_int_equal(vam_map_sync(v, &e), 0);
  mb_lock *l;
  assert_int_equal(mb_vam_lock(v, 0, PAGE, true, &l), 0);
  sync_unmap u = {v, 0, 4 * PAGE, 1};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, unmap_thread, &u), 0);
  wait_waiting(v, 1);
  tu_stop(lv);
  pthread_join(t, NULL);
  assert_int_equal(u.rc, MB_ESTOPPED);
  ((uint8_t *)mb_vam_lock_ptr(l))[0] = 1; /* never torn down: still mapped */
  mb_vam_unlock(l);
  mb_vam_destroy(v);
  mb_object_unref(a);
  assert_int_equal(tu_fd_count(), fds);
}

/* The public API: a region unmap waits for an unlock from another thread; a mapper that holds
 * locks is not removed; the snapshot and the watchdog setting through mb_mapper_*. */
typedef struct api_unmap {
  mb_mm *mm;
  mb_region_id id;
  atomic_bool done;
  int rc;
} api_unmap;

static void *api_unmap_thread(void *arg) {
  api_unmap *u = arg;
  u->rc = mb_region_unmap_sync(u->mm, u->id);
  atomic_store(&u->done, true);
  return NULL;
}

static size_t api_waiting(mb_mapper *m) {
  mb_lock_list *ll;
  assert_int_equal(mb_mapper_locks(m, &ll), 0);
  size_t w = ll->waiting;
  free(ll);
  return w;
}

static void test_api(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0);
  int fds = tu_fd_count();
  mb_loop *mgr = tu_start("mgr"), *ml = tu_start("mapper"), *pl = tu_start("part");
  mb_mm *mm;
  mb_mm_config cfg = {.max_addr = 1ull << 30, .loop = mgr};
  assert_int_equal(mb_mm_create(&cfg, &mm), 0);
  mb_object *ram = tu_memfd_pages("mp", 16 * PAGE, 0x10);
  mb_region_id r;
  mb_region_params rp = {"ram", 0x100000, 16 * PAGE, 0, false, 0};
  assert_int_equal(mb_region_add_sync(mm, &rp, &r), 0);
  mb_mapping_params mp = {r, 0, 16 * PAGE, ram, 0, true};
  assert_int_equal(mb_mapping_add_sync(mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(mm, r, true), 0);
  mb_mapper *lazy;
  mb_partition *part;
  assert_int_equal(mb_mapper_add_sync(mm, ml, false, &lazy), 0);
  assert_int_equal(mb_partition_add_sync(mm, &mb_partition_soft, pl, &part), 0);

  mb_lock *l, *bad;
  assert_int_equal(mb_mapper_lock(lazy, 0x100000 + 2 * PAGE, 2 * PAGE, true, &l), 0);
  assert_int_equal(mb_lock_gpa(l), 0x100000 + 2 * PAGE);
  assert_int_equal(mb_lock_size(l), 2 * PAGE);
  uint8_t *p = mb_lock_ptr(l);
  assert_ptr_equal(p, mb_mapper_base(lazy) + 0x100000 + 2 * PAGE);
  assert_int_equal(p[0], 0x12); /* faulted in */
  p[0] = 0xcd;
  assert_int_equal(mb_mapper_lock(lazy, 0x100000 + 15 * PAGE, 2 * PAGE, false, &bad),
                   MB_E_UNMAPPED);
  assert_int_equal(mb_mapper_remove_sync(lazy), MB_E_INVALID);
  mb_mapper_lock_watchdog(lazy, 0, NULL, NULL);

  api_unmap u = {mm, r, false, 1};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, api_unmap_thread, &u), 0);
  while (api_waiting(lazy) != 1)
    usleep(100);
  assert_false(atomic_load(&u.done));
  uint8_t b;
  assert_int_equal(mb_partition_access_sync(part, 0x100000 + 2 * PAGE, &b, 1, false), MB_E_MMIO);
  p[1] = 0xef; /* still ours */
  mb_lock_list *ll;
  assert_int_equal(mb_mapper_locks(lazy, &ll), 0);
  assert_int_equal(ll->count, 1);
  assert_int_equal(ll->locks[0].gpa, 0x100000 + 2 * PAGE);
  assert_true(ll->locks[0].writable);
  free(ll);
  mb_mapper_unlock(l);
  pthread_join(t, NULL);
  assert_int_equal(u.rc, 0);
  assert_int_equal(mb_mapper_read(lazy, 0x100000 + 2 * PAGE, &b, 1), MB_E_UNMAPPED);
  assert_int_equal(mb_region_map_sync(mm, r, true), 0);
  assert_int_equal(mb_mapper_read(lazy, 0x100000 + 2 * PAGE + 1, &b, 1), 0);
  assert_int_equal(b, 0xef);

  assert_int_equal(mb_mapper_remove_sync(lazy), 0);
  mb_mm_destroy(mm);
  mb_object_unref(ram);
  tu_stop(mgr);
  tu_stop(ml);
  tu_stop(pl);
  assert_int_equal(tu_fd_count(), fds);
}

int main(void) {
  mp_warm_up();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lock_checks),
      cmocka_unit_test(test_unmap_parks),
      cmocka_unit_test(test_replace_parks),
      cmocka_unit_test(test_resolve_passes_parked_head),
      cmocka_unit_test(test_manager_waits_for_lock),
      cmocka_unit_test(test_watchdog),
      cmocka_unit_test(test_stop_with_parked_unmap),
      cmocka_unit_test(test_api),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
