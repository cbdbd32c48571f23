/* test_api_alloc_fail.c: every allocation that the runtime and the API make through the
 * fault-injection seam (mem/fault_inject.h, MB_FI_ALLOC: messages, actors, loops, handle
 * slots' users) made to fail in turn: while a loop is started or attached, while a manager is
 * created or destroyed, while consumers are added and removed (blocking and asynchronous
 * forms), while ranges and the introspection are read, and while a lock's watchdog starts.
 * Each call either succeeds, and then everything it made works, or answers an error
 * (MB_ENOMEM) and changes nothing; nothing hangs and nothing is left behind (no descriptor,
 * no address space, no libuv handle, no actor; the sanitizer builds check memory). Built
 * from the library's sources with MB_FAULT_INJECTION (tests/api/meson.build), so it runs in
 * every build. */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mb_access.h"
#include "fault_inject.h"
#include "membacking.h"
#include "test_util.h"

enum { MAX_N = 400 };

/* A hang is the failure F4 was: a watchdog thread ends the process when `what` makes no
 * progress (watchdog_kick) for 20 s. */
typedef struct watchdog {
  pthread_t t;
  sem_t stop;
  const char *what;
  _Atomic uint64_t progress;
} watchdog;

static void *watchdog_main(void *arg) {
  watchdog *w = arg;
  uint64_t seen = UINT64_MAX;
  for (;;) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += 20;
    if (sem_timedwait(&w->stop, &t) == 0) return NULL;
    if (errno == EINTR) continue;
    uint64_t now = atomic_load(&w->progress);
    if (now == seen) {
      fprintf(stderr, "HANG: %s\n", w->what);
      _exit(1);
    }
    seen = now;
  }
}

static void watchdog_start(watchdog *w, const char *what) {
  w->what = what;
  atomic_init(&w->progress, 0);
  sem_init(&w->stop, 0, 0);
  assert_int_equal(pthread_create(&w->t, NULL, watchdog_main, w), 0);
}

static void watchdog_kick(watchdog *w) { atomic_fetch_add(&w->progress, 1); }

static void watchdog_stop(watchdog *w) {
  sem_post(&w->stop);
  pthread_join(w->t, NULL);
  sem_destroy(&w->stop);
}

/* Arms the n-th allocation from now; after `call`, disarms and says whether it fired. */
static void arm(uint64_t n) {
  mb_fi_reset();
  assert_int_equal(mb_fi_arm(MB_FI_ALLOC, n, ENOMEM), 0);
}

static bool fired(void) {
  bool f = mb_fi_injected(MB_FI_ALLOC) > 0;
  mb_fi_reset();
  return f;
}

/* ---- F4: a loop whose making fails ---------------------------------------------------------- */

static void test_loop_start(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  tu_stop(tu_start("warm")); /* libuv's process-wide signal pipe, made once, stays open */
  int fds = tu_fd_count();
  watchdog w;
  watchdog_start(&w, "mb_loop_start with an allocation failing");
  uint64_t n = 1;
  for (; n < MAX_N; n++) {
    arm(n);
    int err = 0;
    mb_loop *l = mb_loop_start("fi", &err);
    bool f = fired();
    if (l) {
      tu_stop(l);
      if (!f) break; /* every allocation of mb_loop_start has failed once */
    } else {
      assert_true(f);
      assert_int_equal(err, MB_ENOMEM);
    }
    if (tu_fd_count() != fds)
      fail_msg("n=%llu: %d descriptors, not %d", (unsigned long long)n, tu_fd_count(), fds);
  }
  watchdog_stop(&w);
  assert_true(n > 1 && n < MAX_N);
  print_message("mb_loop_start: %llu allocations failed in turn\n", (unsigned long long)n - 1);
}

static void test_loop_attach(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  tu_stop(tu_start("warm"));
  int fds = tu_fd_count();
  uint64_t n = 1;
  for (; n < MAX_N; n++) {
    uv_loop_t uv;
    assert_int_equal(uv_loop_init(&uv), 0);
    arm(n);
    int err = 0;
    mb_loop *l = mb_loop_attach(&uv, "fi", &err);
    bool f = fired();
    if (l) {
      assert_int_equal(mb_loop_stop(l), 0);
      uv_run(&uv, UV_RUN_DEFAULT);
      mb_loop_free(l);
    } else {
      assert_true(f);
      assert_int_equal(err, MB_ENOMEM);
      assert_null(mb_loop_current()); /* the thread runs no loop, not a freed one */
      uv_run(&uv, UV_RUN_DEFAULT);
    }
    assert_int_equal(uv_loop_close(&uv), 0);
    assert_int_equal(tu_fd_count(), fds);
    if (l && !f) break;
  }
  assert_true(n > 1 && n < MAX_N);
  print_message("mb_loop_attach: %llu allocations failed in turn\n", (unsigned long long)n - 1);
}

/* ---- F3: a manager whose making fails ------------------------------------------------------- */

static long vmsize_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  assert_non_null(f);
  char line[256];
  long kib = -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmSize:", 7) == 0) kib = atol(line + 7);
  fclose(f);
  return kib;
}

static void test_mm_create(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *ml = tu_start("mgr"), *pl = tu_start("part");
  int fds = tu_fd_count();
  long vm = vmsize_kib();
  uint64_t n = 1;
  for (; n < MAX_N; n++) {
    mb_mm *mm = NULL;
    mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = ml, .part_loop = pl};
    arm(n);
    int rc = mb_mm_create(&cfg, &mm);
    bool f = fired();
    if (rc == 0) {
      mb_mm_destroy(mm);
      if (!f) break;
    } else {
      assert_true(f);
      assert_int_equal(rc, MB_ENOMEM);
    }
    assert_int_equal(tu_fd_count(), fds);
    if (vmsize_kib() - vm > 1024 * 1024) fail_msg("n=%llu: VmSize grew", (unsigned long long)n);
  }
  assert_true(n > 1 && n < MAX_N);
  print_message("mb_mm_create: %llu allocations failed in turn\n", (unsigned long long)n - 1);
  tu_stop(pl);
  tu_stop(ml);
}

/* ---- sweeps over a whole operation ----------------------------------------------------------- */

#define MiB (1ull << 20)

/* One run of an operation: arms the n-th allocation where the operation starts, checks what
 * came out, and answers whether the failure fired (fired()). */
typedef bool (*armed_op)(void *ctx, uint64_t n);

/* op with n = 1, 2, ... until a run in which no allocation failed. */
static void sweep(const char *what, armed_op op, void *ctx) {
  watchdog w;
  watchdog_start(&w, what);
  uint64_t n = 1;
  for (; n < MAX_N && op(ctx, n); n++) watchdog_kick(&w);
  watchdog_stop(&w);
  if (n == 1 || n == MAX_N) fail_msg("%s: %llu runs", what, (unsigned long long)n);
  print_message("%s: %llu allocations failed in turn\n", what, (unsigned long long)n - 1);
}


static void tick(uv_timer_t *t) { (void)t; }

/* Runs the test's loop until d is answered. A timer of the test's own keeps the loop running
 * meanwhile, as a VMM's handles keep its loop running. */
static void wait_done(tu_home *h, tu_done *d) {
  uv_timer_t t;
  uv_timer_init(&h->uv, &t);
  uv_timer_start(&t, tick, 1, 1);
  while (d->calls == 0) uv_run(&h->uv, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&h->uv, UV_RUN_NOWAIT); /* the close completes before t goes */
  assert_int_equal(d->calls, 1);
}

/* A status of a run: 0, or the injected failure reported as out of memory. */
static void ok_or_enomem(int status, bool f, const char *what, uint64_t n) {
  if (status == 0) return;
  if (!f || status != MB_ENOMEM)
    fail_msg("%s, n=%llu: %s (%d)%s", what, (unsigned long long)n, membacking_strerror(status),
             status, f ? "" : " with no allocation failed");
}

/* 16 MiB of RAM at guest address 0 filled with `fill`, mapped rw (blocking forms). */
static mb_region_id ram_map(mb_mm *mm, mb_object *obj) {
  mb_region_params p = {"ram", 0, 16 * MiB, 0, false, 0};
  mb_region_id id = 0;
  assert_int_equal(mb_region_add_sync(mm, &p, &id), 0);
  mb_mapping_params mp = {id, 0, 16 * MiB, obj, 0, true};
  assert_int_equal(mb_mapping_add_sync(mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(mm, id, true), 0);
  return id;
}

/* The byte at guest address 0 through a mapper (its handle must be live). */
static int byte_at_0(mb_mapper *m) {
  uint8_t b = 0;
  int rc = mb_mapper_read(m, 0, &b, 1);
  return rc ? rc : b;
}

/* ---- B3: the partitions' mapper of a manager that was made --------------------------------- */

typedef struct create_ctx {
  mb_mm_config cfg;
  mb_object *obj;
  tu_home *home; /* the manager's loop, run by the test thread; NULL: started loops */
} create_ctx;

/* A manager made while an allocation fails is whole: its primary mapper shows guest RAM. */
static bool create_once(void *arg, uint64_t n) {
  create_ctx *c = arg;
  mb_mm *mm = NULL;
  arm(n);
  int rc = mb_mm_create(&c->cfg, &mm);
  bool f = fired();
  ok_or_enomem(rc, f, "mb_mm_create", n);
  if (rc) return f;
  ram_map(mm, c->obj);
  if (byte_at_0(mb_mm_primary_mapper(mm)) != 0x11)
    fail_msg("n=%llu: the primary mapper reads %d at 0", (unsigned long long)n,
             byte_at_0(mb_mm_primary_mapper(mm)));
  mb_mm_destroy(mm);
  return f;
}

static void test_mm_create_primary_works(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *ml = tu_start("mgr"), *pl = tu_start("part");
  create_ctx c = {{.max_addr = 1ull << 32, .loop = ml, .part_loop = pl}, NULL, NULL};
  c.obj = tu_memfd_byte("ram", 16 * MiB, 0x11);
  sweep("mb_mm_create, then the primary mapper", create_once, &c);
  mb_object_unref(c.obj);
  tu_stop(pl);
  tu_stop(ml);
}

/* The asynchronous forms on the test's loop, each waited for: region add, mapping add, map. */
static int ram_map_async(tu_home *h, mb_mm *mm, mb_object *obj) {
  mb_region_params p = {"ram", 0, 16 * MiB, 0, false, 0};
  tu_done d = {0};
  mb_region_add(mm, &p, tu_on_done, &d);
  wait_done(h, &d);
  if (d.status) return d.status;
  mb_mapping_params mp = {(mb_region_id)d.value, 0, 16 * MiB, obj, 0, true};
  mb_region_id id = (mb_region_id)d.value;
  d = (tu_done){0};
  mb_mapping_add(mm, &mp, tu_on_done, &d);
  wait_done(h, &d);
  if (d.status) return d.status;
  d = (tu_done){0};
  mb_region_map(mm, id, true, tu_on_done, &d);
  wait_done(h, &d);
  return d.status;
}

/* Made on the thread that runs the manager's loop (as the replayer's single layout does): the
 * primary mapper's registration is answered only once that loop runs again. When it is
 * refused, every operation fails (MB_EGONE: the managers are gone). */
static bool create_here_once(void *arg, uint64_t n) {
  create_ctx *c = arg;
  mb_mm *mm = NULL;
  arm(n);
  int rc = mb_mm_create(&c->cfg, &mm);
  int rc2 = rc ? 0 : ram_map_async(c->home, mm, c->obj);
  bool f = fired();
  ok_or_enomem(rc, f, "mb_mm_create", n);
  if (rc2 == MB_EGONE && f) {
    uint8_t b;
    assert_int_equal(mb_mapper_read(mb_mm_primary_mapper(mm), 0, &b, 1), MB_E_UNMAPPED);
    rc2 = ram_map_async(c->home, mm, c->obj);
    assert_int_equal(rc2, MB_EGONE); /* still: nothing works, nothing is half made */
  } else {
    ok_or_enomem(rc2, f, "mapping RAM after mb_mm_create", n);
  }
  if (rc) return f;
  if (rc2) {
    mb_mm_destroy(mm); /* a step failed and changed nothing: again from a new manager */
    assert_int_equal(mb_mm_create(&c->cfg, &mm), 0);
    assert_int_equal(ram_map_async(c->home, mm, c->obj), 0);
  }
  if (byte_at_0(mb_mm_primary_mapper(mm)) != 0x11)
    fail_msg("n=%llu: the primary mapper reads %d at 0", (unsigned long long)n,
             byte_at_0(mb_mm_primary_mapper(mm)));
  mb_mm_destroy(mm);
  return f;
}

static void test_mm_create_on_its_loop(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  assert_int_equal(mb_access_reinstall(), 0);
  tu_home h;
  tu_home_init(&h, "home");
  create_ctx c = {{.max_addr = 1ull << 32, .loop = h.loop}, NULL, &h};
  c.obj = tu_memfd_byte("ram", 16 * MiB, 0x11);
  sweep("mb_mm_create on the manager's loop, then the primary mapper", create_here_once, &c);
  mb_object_unref(c.obj);
  tu_home_fini(&h);
}

/* ---- B4: a manager destroyed while an allocation fails --------------------------------------- */

typedef struct destroy_ctx {
  mb_loop *ml, *pl, *xl, *yl;
  mb_object *obj;
  int fds;
  long vm;
} destroy_ctx;

static void expect_actors(mb_loop *l, uint64_t n, uint64_t run) {
  uint64_t have = mb_loop_stats_get(l).actors;
  if (have != n)
    fail_msg("n=%llu: loop %s has %llu actors, not %llu", (unsigned long long)run,
             mb_loop_name(l), (unsigned long long)have, (unsigned long long)n);
}

/* Managers on ml, their partitions' mapper on pl, a mapper on xl, a partition on yl, a
 * recording: after the destroy, every loop has its own actor only, and nothing is left. */
static bool destroy_once(void *arg, uint64_t n) {
  destroy_ctx *c = arg;
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = c->ml, .part_loop = c->pl};
  assert_int_equal(mb_mm_create(&cfg, &mm), 0);
  char path[] = "/tmp/mb-alloc-fail-rec-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(mb_mm_record(mm, path), 0);
  mb_mapper *m = NULL;
  mb_partition *p = NULL;
  assert_int_equal(mb_mapper_add_sync(mm, c->xl, true, &m), 0);
  assert_int_equal(mb_partition_add_sync(mm, &mb_partition_soft, c->yl, &p), 0);
  ram_map(mm, c->obj);
  assert_int_equal(byte_at_0(m), 0x11);
  arm(n);
  mb_mm_destroy(mm);
  bool f = fired();
  unlink(path);
  expect_actors(c->ml, 1, n);
  expect_actors(c->pl, 1, n);
  expect_actors(c->xl, 1, n);
  expect_actors(c->yl, 1, n);
  assert_int_equal(byte_at_0(m), MB_E_INVALID);
  if (tu_fd_count() != c->fds) fail_msg("n=%llu: descriptors left", (unsigned long long)n);
  if (vmsize_kib() - c->vm > 1024 * 1024) fail_msg("n=%llu: VmSize grew", (unsigned long long)n);
  return f;
}

static void test_mm_destroy(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  assert_int_equal(mb_access_reinstall(), 0);
  destroy_ctx c = {tu_start("mgr"), tu_start("part"), tu_start("x"), tu_start("y"), NULL, 0, 0};
  c.obj = tu_memfd_byte("ram", 16 * MiB, 0x11);
  c.fds = tu_fd_count();
  c.vm = vmsize_kib();
  sweep("mb_mm_destroy", destroy_once, &c);
  mb_object_unref(c.obj);
  tu_stop(c.yl);
  tu_stop(c.xl);
  tu_stop(c.pl);
  tu_stop(c.ml);
}

/* ---- B1: ranges ------------------------------------------------------------------------------ */

typedef struct ranges_ctx {
  tu_home *home;
  mb_mapper *m;
  mb_partition *p;
  int form; /* 0, 1: the blocking mapper and partition forms; 2, 3: the asynchronous ones */
} ranges_ctx;

static bool ranges_once(void *arg, uint64_t n) {
  ranges_ctx *c = arg;
  mb_range_list *l = NULL;
  tu_done d = {0};
  arm(n);
  int rc = c->form == 0 ? mb_mapper_ranges_sync(c->m, &l)
           : c->form == 1 ? mb_partition_ranges_sync(c->p, &l)
                          : 0;
  if (c->form == 2) mb_mapper_ranges(c->m, tu_on_done, &d);
  if (c->form == 3) mb_partition_ranges(c->p, tu_on_done, &d);
  if (c->form >= 2) {
    wait_done(c->home, &d);
    rc = d.status;
    l = (mb_range_list *)(uintptr_t)d.value;
  }
  bool f = fired();
  ok_or_enomem(rc, f, "ranges", n);
  if (rc == 0 && (l == NULL || l->count != 1 || l->ranges[0].size != 16 * MiB))
    fail_msg("n=%llu, form %d: not the one range of RAM", (unsigned long long)n, c->form);
  if (rc != 0 && l != NULL) fail_msg("n=%llu: a list with an error", (unsigned long long)n);
  free(l);
  return f;
}

static void test_ranges(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  assert_int_equal(mb_access_reinstall(), 0);
  tu_home h;
  tu_home_init(&h, "home");
  mb_loop *ml = tu_start("mgr"), *cl = tu_start("cons");
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = ml};
  assert_int_equal(mb_mm_create(&cfg, &mm), 0);
  mb_object *obj = tu_memfd_byte("ram", 16 * MiB, 0x11);
  ranges_ctx c = {&h, NULL, NULL, 0};
  assert_int_equal(mb_mapper_add_sync(mm, cl, true, &c.m), 0);
  assert_int_equal(mb_partition_add_sync(mm, &mb_partition_soft, cl, &c.p), 0);
  ram_map(mm, obj);
  static const char *const names[] = {"mb_mapper_ranges_sync", "mb_partition_ranges_sync",
                                      "mb_mapper_ranges", "mb_partition_ranges"};
  for (c.form = 0; c.form < 4; c.form++) sweep(names[c.form], ranges_once, &c);
  mb_mm_destroy(mm);
  mb_object_unref(obj);
  tu_stop(cl);
  tu_stop(ml);
  tu_home_fini(&h);
}

/* ---- B2: adding and removing consumers ------------------------------------------------------- */

typedef struct cons_ctx {
  tu_home *home;
  mb_mm *mm;
  mb_loop *target;
  bool partition;
  bool remove; /* the removal fails, not the add */
} cons_ctx;

/* A consumer added (asynchronously, from the test's loop): its handle, or 0 with the error. */
static uint64_t cons_add(cons_ctx *c, int *status) {
  tu_done d = {0};
  if (c->partition) mb_partition_add(c->mm, &mb_partition_soft, c->target, tu_on_done, &d);
  else mb_mapper_add(c->mm, c->target, true, tu_on_done, &d);
  wait_done(c->home, &d);
  *status = d.status;
  return d.value;
}

static int cons_remove(cons_ctx *c, uint64_t h) {
  tu_done d = {0};
  if (c->partition) mb_partition_remove((mb_partition *)(uintptr_t)h, tu_on_done, &d);
  else mb_mapper_remove((mb_mapper *)(uintptr_t)h, tu_on_done, &d);
  wait_done(c->home, &d);
  return d.status;
}

/* The guest's byte at 0 through a consumer, or its error (a partition's asynchronously when
 * the test's loop runs: it may be the partition's own). */
static int cons_byte(tu_home *home, uint64_t h, bool partition) {
  uint8_t b = 0;
  tu_done d = {0};
  int rc;
  if (!partition) {
    rc = mb_mapper_read((mb_mapper *)(uintptr_t)h, 0, &b, 1);
  } else if (home) {
    mb_partition_access((mb_partition *)(uintptr_t)h, 0, &b, 1, false, tu_on_done, &d);
    wait_done(home, &d);
    rc = d.status;
  } else {
    rc = mb_partition_access_sync((mb_partition *)(uintptr_t)h, 0, &b, 1, false);
  }
  return rc ? rc : b;
}

/* An add or a removal that fails changes nothing; one that succeeds is complete. Either way
 * it answers, on the test's loop. */
static bool cons_once(void *arg, uint64_t n) {
  cons_ctx *c = arg;
  int rc;
  if (!c->remove) arm(n);
  uint64_t h = cons_add(c, &rc);
  bool f = c->remove ? false : fired();
  if (!c->remove) ok_or_enomem(rc, f, c->partition ? "mb_partition_add" : "mb_mapper_add", n);
  if (rc) return f;
  assert_int_equal(cons_byte(c->home, h, c->partition), 0x11);
  if (c->remove) arm(n);
  rc = cons_remove(c, h);
  if (c->remove) f = fired();
  ok_or_enomem(rc, f, c->partition ? "mb_partition_remove" : "mb_mapper_remove", n);
  if (rc == 0) {
    assert_int_equal(cons_byte(c->home, h, c->partition), MB_E_INVALID);
    return f;
  }
  assert_int_equal(cons_byte(c->home, h, c->partition), 0x11); /* still there, whole */
  assert_int_equal(cons_remove(c, h), 0);
  return f;
}

static void consumers_async(bool same_loop) {
  tu_home h;
  tu_home_init(&h, "home");
  mb_loop *ml = tu_start("mgr"), *tl = same_loop ? NULL : tu_start("target");
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = ml};
  assert_int_equal(mb_mm_create(&cfg, &mm), 0);
  mb_object *obj = tu_memfd_byte("ram", 16 * MiB, 0x11);
  ram_map(mm, obj);
  long vm = vmsize_kib();
  cons_ctx c = {&h, mm, same_loop ? h.loop : tl, false, false};
  sweep("mb_mapper_add", cons_once, &c);
  c.remove = true;
  sweep("mb_mapper_remove", cons_once, &c);
  c.partition = true;
  sweep("mb_partition_remove", cons_once, &c);
  c.remove = false;
  sweep("mb_partition_add", cons_once, &c);
  if (vmsize_kib() - vm > 1024 * 1024) fail_msg("VmSize grew");
  mb_mm_destroy(mm);
  mb_object_unref(obj);
  if (tl) tu_stop(tl);
  tu_stop(ml);
  tu_home_fini(&h);
}

static void test_consumers_async(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  assert_int_equal(mb_access_reinstall(), 0);
  consumers_async(false);
}

static void test_consumers_async_same_loop(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  assert_int_equal(mb_access_reinstall(), 0);
  consumers_async(true);
}

/* The blocking forms, from a thread that runs no loop. */
static bool cons_sync_once(void *arg, uint64_t n) {
  cons_ctx *c = arg;
  mb_mapper *m = NULL;
  mb_partition *p = NULL;
  if (!c->remove) arm(n);
  int rc = c->partition ? mb_partition_add_sync(c->mm, &mb_partition_soft, c->target, &p)
                        : mb_mapper_add_sync(c->mm, c->target, true, &m);
  bool f = c->remove ? false : fired();
  ok_or_enomem(rc, f, "a blocking add", n);
  if (rc) return f;
  uint64_t h = c->partition ? (uint64_t)(uintptr_t)p : (uint64_t)(uintptr_t)m;
  assert_int_equal(cons_byte(c->home, h, c->partition), 0x11);
  if (c->remove) arm(n);
  rc = c->partition ? mb_partition_remove_sync(p) : mb_mapper_remove_sync(m);
  if (c->remove) f = fired();
  ok_or_enomem(rc, f, "a blocking remove", n);
  if (rc == 0) {
    assert_int_equal(cons_byte(c->home, h, c->partition), MB_E_INVALID);
    return f;
  }
  assert_int_equal(cons_byte(c->home, h, c->partition), 0x11);
  assert_int_equal(c->partition ? mb_partition_remove_sync(p) : mb_mapper_remove_sync(m), 0);
  return f;
}

static void test_consumers_sync(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *ml = tu_start("mgr"), *tl = tu_start("target");
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = ml};
  assert_int_equal(mb_mm_create(&cfg, &mm), 0);
  mb_object *obj = tu_memfd_byte("ram", 16 * MiB, 0x11);
  ram_map(mm, obj);
  long vm = vmsize_kib();
  cons_ctx c = {NULL, mm, tl, false, false};
  sweep("mb_mapper_add_sync", cons_sync_once, &c);
  c.remove = true;
  sweep("mb_mapper_remove_sync", cons_sync_once, &c);
  c.partition = true;
  sweep("mb_partition_remove_sync", cons_sync_once, &c);
  c.remove = false;
  sweep("mb_partition_add_sync", cons_sync_once, &c);
  if (vmsize_kib() - vm > 1024 * 1024) fail_msg("VmSize grew");
  mb_mm_destroy(mm);
  mb_object_unref(obj);
  tu_stop(tl);
  tu_stop(ml);
}

/* ---- B5: the lock watchdog ----------------------------------------------------------------- */

static void on_log(void *ctx, const char *line) {
  (void)line;
  atomic_store((atomic_bool *)ctx, true);
}

typedef struct watch_ctx {
  mb_mm *mm;
  mb_loop *xl;
} watch_ctx;

/* The first lock through a new mapper starts its watchdog: a lock held past the threshold is
 * reported, whichever allocation failed (or the lock is refused). */
static bool watch_once(void *arg, uint64_t n) {
  watch_ctx *c = arg;
  mb_mapper *m = NULL;
  atomic_bool logged = false;
  assert_int_equal(mb_mapper_add_sync(c->mm, c->xl, true, &m), 0);
  assert_int_equal(mb_mapper_lock_watchdog(m, 1, on_log, &logged), 0);
  mb_lock *l = NULL;
  arm(n);
  int rc = mb_mapper_lock(m, 0, 4096, false, &l);
  for (int i = 0; rc == 0 && i < 10000 && !atomic_load(&logged); i++) usleep(1000);
  bool f = fired();
  ok_or_enomem(rc, f, "mb_mapper_lock", n);
  if (rc == 0 && !atomic_load(&logged))
    fail_msg("n=%llu: a lock held for 10 s was not reported", (unsigned long long)n);
  assert_int_equal(mb_mapper_unlock(l), 0);
  assert_int_equal(mb_mapper_lock_watchdog(m, 0, NULL, NULL), 0);
  assert_int_equal(mb_mapper_remove_sync(m), 0);
  return f;
}

static void test_lock_watchdog(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  assert_int_equal(mb_access_reinstall(), 0);
  watch_ctx c = {NULL, tu_start("x")};
  mb_loop *ml = tu_start("mgr");
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = ml};
  assert_int_equal(mb_mm_create(&cfg, &c.mm), 0);
  mb_object *obj = tu_memfd_byte("ram", 16 * MiB, 0x11);
  ram_map(c.mm, obj);
  sweep("the first lock's watchdog", watch_once, &c);
  mb_mm_destroy(c.mm);
  mb_object_unref(obj);
  tu_stop(ml);
  tu_stop(c.xl);
}

/* ---- introspection ---------------------------------------------------------------------- */

typedef struct insp_ctx {
  tu_home *home;
  mb_mm *mm;
  bool async;
  FILE *sink;
} insp_ctx;

/* An inspection is valid JSON (mb_mm_mtree reads it) or an error, never half of one. */
static bool inspect_once(void *arg, uint64_t n) {
  insp_ctx *c = arg;
  char *json = NULL;
  int rc;
  arm(n);
  if (c->async) {
    tu_done d = {0};
    mb_mm_inspect(c->mm, tu_on_done, &d);
    wait_done(c->home, &d);
    rc = d.status;
    json = (char *)(uintptr_t)d.value;
  } else {
    rc = mb_mm_inspect_sync(c->mm, &json);
  }
  bool f = fired();
  ok_or_enomem(rc, f, c->async ? "mb_mm_inspect" : "mb_mm_inspect_sync", n);
  if (rc == 0 && (json == NULL || mb_mm_mtree(json, c->sink) != 0))
    fail_msg("n=%llu: the inspection is not JSON: %.300s", (unsigned long long)n,
             json ? json : "(null)");
  if (rc == 0 && !strstr(json, "\"backend\":\"soft\""))
    fail_msg("n=%llu: the partition is missing: %.300s", (unsigned long long)n, json);
  if (rc != 0 && json != NULL) fail_msg("n=%llu: JSON with an error", (unsigned long long)n);
  free(json);
  return f;
}

static void test_inspect(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  assert_int_equal(mb_access_reinstall(), 0);
  tu_home h;
  tu_home_init(&h, "home");
  mb_loop *ml = tu_start("mgr"), *pl = tu_start("part"), *xl = tu_start("x");
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = ml, .part_loop = pl};
  assert_int_equal(mb_mm_create(&cfg, &mm), 0);
  mb_object *obj = tu_memfd_byte("ram", 16 * MiB, 0x11);
  mb_mapper *m = NULL;
  mb_partition *p = NULL;
  assert_int_equal(mb_mapper_add_sync(mm, xl, false, &m), 0);
  assert_int_equal(mb_partition_add_sync(mm, &mb_partition_soft, xl, &p), 0);
  ram_map(mm, obj);
  insp_ctx c = {&h, mm, false, fopen("/dev/null", "w")};
  assert_non_null(c.sink);
  sweep("mb_mm_inspect_sync", inspect_once, &c);
  c.async = true;
  sweep("mb_mm_inspect", inspect_once, &c);
  fclose(c.sink);
  mb_mm_destroy(mm);
  mb_object_unref(obj);
  tu_stop(xl);
  tu_stop(pl);
  tu_stop(ml);
  tu_home_fini(&h);
}

typedef struct mtree_ctx {
  const char *json;
  FILE *sink;
} mtree_ctx;

static bool mtree_once(void *arg, uint64_t n) {
  mtree_ctx *c = arg;
  arm(n);
  int rc = mb_mm_mtree(c->json, c->sink);
  bool f = fired();
  ok_or_enomem(rc, f, "mb_mm_mtree", n);
  return f;
}

static void test_mtree(void **unused) {
  (void)unused;
  if (!mb_fi_enabled()) skip();
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *ml = tu_start("mgr");
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = ml};
  assert_int_equal(mb_mm_create(&cfg, &mm), 0);
  mb_object *obj = tu_memfd_byte("ram", 16 * MiB, 0x11);
  ram_map(mm, obj);
  mb_partition *p = NULL;
  assert_int_equal(mb_partition_add_sync(mm, &mb_partition_soft, NULL, &p), 0);
  mtree_ctx c = {NULL, fopen("/dev/null", "w")};
  char *json = NULL;
  assert_int_equal(mb_mm_inspect_sync(mm, &json), 0);
  c.json = json;
  sweep("mb_mm_mtree", mtree_once, &c);
  free(json);
  fclose(c.sink);
  mb_mm_destroy(mm);
  mb_object_unref(obj);
  tu_stop(ml);
}

/* With an argument, only the tests whose name contains it. */
int main(int argc, char **argv) {
  struct CMUnitTest tests[] = {
      cmocka_unit_test(test_loop_start),
      cmocka_unit_test(test_loop_attach),
      cmocka_unit_test(test_mm_create),
      cmocka_unit_test(test_mm_create_primary_works),
      cmocka_unit_test(test_mm_create_on_its_loop),
      cmocka_unit_test(test_mm_destroy),
      cmocka_unit_test(test_ranges),
      cmocka_unit_test(test_consumers_async),
      cmocka_unit_test(test_consumers_async_same_loop),
      cmocka_unit_test(test_consumers_sync),
      cmocka_unit_test(test_lock_watchdog),
      cmocka_unit_test(test_inspect),
      cmocka_unit_test(test_mtree),
  };
  size_t n = 0;
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
    if (argc < 2 || strstr(tests[i].name, argv[1])) tests[n++] = tests[i];
  return _cmocka_run_group_tests("test_api_alloc_fail", tests, n, NULL, NULL);
}
