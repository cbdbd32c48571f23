/* test_api_misuse.c: the public API used wrongly or at the wrong moment, and what it promises
 * then (membacking.h, "Misuse" and "Threads"): handles that are refused once what they named is
 * gone (double remove, double unlock, use after remove or destroy), a manager destroyed with
 * operations in flight or locks held, blocking calls from a loop the operation needs, readers
 * racing a removal, and asynchronous calls from a thread that runs no loop. */
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
#include "membacking.h"
#include "test_util.h"

#define MiB (1ull << 20)
#define GiB (1ull << 30)

/* ---- helpers ----------------------------------------------------------------------------- */


static void wait_done(tu_home *h, tu_done *d) {
  while (d->calls == 0) uv_run(&h->uv, UV_RUN_ONCE);
  assert_int_equal(d->calls, 1);
}

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

/* Runs fn on `loop`; a call that does not come back within 10 s is a hang: the process
 * reports it and exits (the loop cannot be recovered). */
typedef struct deadline_run {
  mb_exec_fn fn;
  void *arg;
  sem_t done;
} deadline_run;

static void deadline_body(mb_loop *loop, void *arg) {
  deadline_run *r = arg;
  r->fn(loop, r->arg);
  sem_post(&r->done);
}

static void exec_or_die(mb_loop *loop, mb_exec_fn fn, void *arg, const char *what) {
  deadline_run r;
  r.fn = fn;
  r.arg = arg;
  sem_init(&r.done, 0, 0);
  assert_int_equal(mb_loop_post(loop, deadline_body, &r), 0);
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  t.tv_sec += 10;
  while (sem_timedwait(&r.done, &t) != 0) {
    if (errno != EINTR) {
      fprintf(stderr, "HANG: %s did not return within 10 s\n", what);
      _exit(1);
    }
  }
  sem_destroy(&r.done);
}

/* A manager on `ml` (partitions' view on `pl`, or ml) with 16 MiB of RAM at 0, mapped rw. */
typedef struct vm {
  mb_mm *mm;
  mb_object *obj;
  mb_region_id ram;
} vm;

static vm vm_make(mb_loop *ml, mb_loop *pl) {
  vm v = {0};
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = ml, .part_loop = pl};
  assert_int_equal(mb_mm_create(&cfg, &v.mm), 0);
  v.obj = tu_memfd_byte("t", 16 * MiB, 0x11);
  mb_region_params p = {"ram", 0, 16 * MiB, 0, false, 0};
  assert_int_equal(mb_region_add_sync(v.mm, &p, &v.ram), 0);
  mb_mapping_params mp = {v.ram, 0, 16 * MiB, v.obj, 0, true};
  assert_int_equal(mb_mapping_add_sync(v.mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(v.mm, v.ram, true), 0);
  return v;
}

static void vm_free(vm *v) {
  mb_mm_destroy(v->mm);
  mb_object_unref(v->obj);
}

/* ---- F1: mb_mm_destroy while a consumer is being added or removed ------------------------- */

enum { ADD_PARTITION = 1, ON_MANAGER_LOOP = 2, REMOVE = 4 };

/* `what` in flight on the test's own loop, then the manager destroyed at once: the operation
 * ends exactly once, with 0 (it finished first: the handle is invalid now) or MB_EGONE, and
 * leaves nothing behind (a mapper's VA reservation is 4 GiB here). */
static void destroy_inflight(int what) {
  tu_home h;
  tu_home_init(&h, "home");
  mb_loop *ml = tu_start("mgr"), *cl = tu_start("cons");
  mb_loop *target = (what & ON_MANAGER_LOOP) ? NULL : cl;
  long before = vmsize_kib();
  for (int i = 0; i < 30; i++) {
    mb_mm *mm = NULL;
    mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = ml};
    assert_int_equal(mb_mm_create(&cfg, &mm), 0);
    mb_mapper *old = NULL;
    mb_partition *oldp = NULL;
    if (what & REMOVE) {
      if (what & ADD_PARTITION)
        assert_int_equal(mb_partition_add_sync(mm, &mb_partition_soft, target, &oldp), 0);
      else
        assert_int_equal(mb_mapper_add_sync(mm, target, true, &old), 0);
    }
    tu_done d = {0};
    if (oldp) mb_partition_remove(oldp, tu_on_done, &d);
    else if (old) mb_mapper_remove(old, tu_on_done, &d);
    else if (what & ADD_PARTITION) mb_partition_add(mm, &mb_partition_soft, target, tu_on_done, &d);
    else mb_mapper_add(mm, target, true, tu_on_done, &d);
    mb_mm_destroy(mm);
    wait_done(&h, &d);
    if (d.status != 0 && d.status != MB_EGONE)
      fail_msg("round %d: %s", i, membacking_strerror(d.status));
    uint8_t b;
    if (what & REMOVE) {
      if (oldp) assert_int_equal(mb_partition_access_sync(oldp, 0, &b, 1, false), MB_E_INVALID);
      else assert_int_equal(mb_mapper_read(old, 0, &b, 1), MB_E_INVALID);
    } else if (d.status == 0 && (what & ADD_PARTITION)) {
      mb_partition *p = (mb_partition *)(uintptr_t)d.value;
      assert_int_equal(mb_partition_access_sync(p, 0, &b, 1, false), MB_E_INVALID);
    } else if (d.status == 0) {
      assert_int_equal(mb_mapper_read((mb_mapper *)(uintptr_t)d.value, 0, &b, 1), MB_E_INVALID);
    }
  }
  long grown_mib = (vmsize_kib() - before) / 1024;
  if (grown_mib > 4096) fail_msg("VmSize grew by %ld MiB over 30 rounds", grown_mib);
  tu_stop(cl);
  tu_stop(ml);
  tu_home_fini(&h);
}

static void test_destroy_inflight_mapper_add(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  destroy_inflight(0);
  destroy_inflight(ON_MANAGER_LOOP);
}

static void test_destroy_inflight_partition_add(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  destroy_inflight(ADD_PARTITION);
  destroy_inflight(ADD_PARTITION | ON_MANAGER_LOOP);
}

static void test_destroy_inflight_remove(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  destroy_inflight(REMOVE);
  destroy_inflight(REMOVE | ADD_PARTITION);
}

/* Region operations in flight when the manager goes: each answered once, with an error or
 * not, and a recording (closed by the destroy) is not written to afterwards. */
static void test_destroy_inflight_regions(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  tu_home h;
  tu_home_init(&h, "home");
  mb_loop *ml = tu_start("mgr");
  vm v = vm_make(ml, NULL);
  char path[] = "/tmp/mb-misuse-rec-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(mb_mm_record(v.mm, path), 0);
  enum { N = 100 };
  tu_done d[N] = {{0}};
  for (int i = 0; i < N; i++) {
    mb_region_params p = {"r", (32 + (uint64_t)i) * MiB, MiB, 0, false, 0};
    if (i % 2) mb_region_map(v.mm, v.ram, i & 2, tu_on_done, &d[i]);
    else mb_region_add(v.mm, &p, tu_on_done, &d[i]);
  }
  vm_free(&v);
  for (int i = 0; i < N; i++) wait_done(&h, &d[i]);
  unlink(path);
  tu_stop(ml);
  tu_home_fini(&h);
}

/* ---- F2: blocking calls from a loop the operation needs ------------------------------------ */

typedef struct sync_try {
  vm *v;
  mb_mapper *mapper;     /* a consumer on the loop the calls are made from, or NULL */
  mb_partition *part;
  mb_loop *add_to;       /* where the calls add a mapper and a partition (NULL: the manager's) */
  int rc[6];
} sync_try;

static void sync_calls(mb_loop *loop, void *arg) {
  (void)loop;
  sync_try *s = arg;
  mb_region_id id;
  mb_region_params p = {"x", 64 * MiB, MiB, 0, false, 0};
  mb_mapper *m = NULL;
  mb_partition *pt = NULL;
  s->rc[0] = mb_region_map_sync(s->v->mm, s->v->ram, false);
  s->rc[1] = mb_mapping_remove_sync(s->v->mm, s->v->ram, 0, 4096);
  s->rc[2] = mb_region_add_sync(s->v->mm, &p, &id);
  s->rc[3] = mb_mapper_add_sync(s->v->mm, s->add_to, true, &m);
  s->rc[4] = s->mapper ? mb_mapper_remove_sync(s->mapper) : MB_EDEADLK;
  s->rc[5] = s->part ? mb_partition_remove_sync(s->part)
                     : mb_partition_add_sync(s->v->mm, &mb_partition_soft, s->add_to, &pt);
}

static void expect_deadlk(mb_loop *loop, sync_try *s, const char *where) {
  exec_or_die(loop, sync_calls, s, where);
  for (int i = 0; i < 6; i++)
    if (s->rc[i] != MB_EDEADLK)
      fail_msg("%s: call %d answered %s, not MB_EDEADLK", where, i, membacking_strerror(s->rc[i]));
}

/* Every blocking call made on a loop that runs the manager, its partitions' mapper, or one of
 * its consumers answers MB_EDEADLK at once and changes nothing; from a loop the manager does
 * not use, the same calls work. */
static void test_sync_on_needed_loops(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *ml = tu_start("mgr"), *pl = tu_start("part"), *el = tu_start("eager"),
          *ll = tu_start("lazy"), *ptl = tu_start("partition"), *other = tu_start("other");
  vm v = vm_make(ml, pl);
  mb_mapper *eager = NULL, *lazy = NULL;
  mb_partition *part = NULL;
  assert_int_equal(mb_mapper_add_sync(v.mm, el, true, &eager), 0);
  assert_int_equal(mb_mapper_add_sync(v.mm, ll, false, &lazy), 0);
  assert_int_equal(mb_partition_add_sync(v.mm, &mb_partition_soft, ptl, &part), 0);
  expect_deadlk(ml, &(sync_try){&v, NULL, NULL, NULL, {0}}, "the manager's loop");
  expect_deadlk(pl, &(sync_try){&v, NULL, NULL, pl, {0}}, "part_loop");
  expect_deadlk(el, &(sync_try){&v, eager, NULL, el, {0}}, "an eager mapper's loop");
  expect_deadlk(ll, &(sync_try){&v, lazy, NULL, NULL, {0}}, "a lazy mapper's loop");
  expect_deadlk(ptl, &(sync_try){&v, NULL, part, other, {0}}, "a partition's loop");
  uint8_t b = 0; /* nothing changed */
  assert_int_equal(mb_mapper_read(eager, 0, &b, 1), 0);
  assert_int_equal(b, 0x11);
  assert_int_equal(mb_mapper_write(lazy, 0, &b, 1), 0);
  assert_int_equal(mb_partition_access_sync(part, 0, &b, 1, true), 0);
  sync_try ok = {&v, NULL, NULL, NULL, {0}};
  exec_or_die(other, sync_calls, &ok, "a loop of nothing of the manager's");
  for (int i = 0; i < 4; i++) assert_int_equal(ok.rc[i], 0);
  assert_int_equal(ok.rc[5], 0);
  ok.add_to = other; /* a consumer's own loop is one the add needs */
  exec_or_die(other, sync_calls, &ok, "the loop of the mapper to add");
  assert_int_equal(ok.rc[3], MB_EDEADLK);
  vm_free(&v);
  mb_loop *loops[] = {other, ptl, ll, el, pl, ml};
  for (int i = 0; i < 6; i++) tu_stop(loops[i]);
}

/* ---- F14: handles refused once what they named is gone ------------------------------------- */

static void test_double_remove(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *ml = tu_start("mgr"), *cl = tu_start("cons");
  vm v = vm_make(ml, NULL);
  mb_mapper *m = NULL, *m2 = NULL;
  mb_partition *p = NULL;
  assert_int_equal(mb_mapper_add_sync(v.mm, cl, true, &m), 0);
  assert_int_equal(mb_partition_add_sync(v.mm, &mb_partition_soft, cl, &p), 0);
  assert_int_equal(mb_mapper_remove_sync(m), 0);
  assert_int_equal(mb_mapper_remove_sync(m), MB_E_INVALID);
  assert_int_equal(mb_partition_remove_sync(p), 0);
  assert_int_equal(mb_partition_remove_sync(p), MB_E_INVALID);
  /* a new mapper may take the old one's slot: the old handle still names nothing */
  assert_int_equal(mb_mapper_add_sync(v.mm, cl, true, &m2), 0);
  uint8_t b = 0;
  assert_int_equal(mb_mapper_read(m, 0, &b, 1), MB_E_INVALID);
  assert_int_equal(mb_mapper_write(m, 0, &b, 1), MB_E_INVALID);
  assert_null(mb_mapper_base(m));
  mb_lock *l = NULL;
  assert_int_equal(mb_mapper_lock(m, 0, 4096, false, &l), MB_E_INVALID);
  mb_range_list *rl = NULL;
  assert_int_equal(mb_mapper_ranges_sync(m, &rl), MB_E_INVALID);
  assert_int_equal(mb_partition_access_sync(p, 0, &b, 1, false), MB_E_INVALID);
  assert_int_equal(mb_partition_classify(p, 0, 1, false), MB_E_INVALID);
  assert_int_equal(mb_mapper_remove_sync(NULL), MB_E_INVALID);
  assert_int_equal(mb_partition_remove_sync(NULL), MB_E_INVALID);
  assert_int_equal(mb_mapper_read(NULL, 0, &b, 1), MB_E_INVALID);
  assert_int_equal(mb_mapper_read((mb_mapper *)p, 0, &b, 1), MB_E_INVALID); /* wrong kind */
  assert_int_equal(mb_mapper_read(m2, 0, &b, 1), 0);
  assert_int_equal(b, 0x11);
  mb_mapper *primary = mb_mm_primary_mapper(v.mm);
  assert_int_equal(mb_mapper_remove_sync(primary), MB_E_INVALID);
  assert_int_equal(mb_mapper_read(primary, 0, &b, 1), 0);
  vm_free(&v);
  assert_int_equal(mb_mapper_read(m2, 0, &b, 1), MB_E_INVALID); /* gone with the manager */
  assert_int_equal(mb_mapper_read(primary, 0, &b, 1), MB_E_INVALID);
  tu_stop(cl);
  tu_stop(ml);
}

/* The asynchronous forms: the second removal is refused, on the caller's loop, not inline. */
static void test_double_remove_async(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  tu_home h;
  tu_home_init(&h, "home");
  mb_loop *ml = tu_start("mgr");
  vm v = vm_make(ml, NULL);
  mb_mapper *m = NULL;
  mb_partition *p = NULL;
  assert_int_equal(mb_mapper_add_sync(v.mm, NULL, false, &m), 0);
  assert_int_equal(mb_partition_add_sync(v.mm, &mb_partition_soft, NULL, &p), 0);
  tu_done d[4] = {{0}};
  mb_mapper_remove(m, tu_on_done, &d[0]);
  mb_mapper_remove(m, tu_on_done, &d[1]); /* while the first is in flight */
  mb_partition_remove(p, tu_on_done, &d[2]);
  mb_partition_remove(p, tu_on_done, &d[3]);
  for (int i = 0; i < 4; i++) assert_int_equal(d[i].calls, 0);
  for (int i = 0; i < 4; i++) wait_done(&h, &d[i]);
  assert_int_equal(d[0].status, 0);
  assert_int_equal(d[1].status, MB_E_INVALID);
  assert_int_equal(d[2].status, 0);
  assert_int_equal(d[3].status, MB_E_INVALID);
  d[0] = (tu_done){0};
  mb_mapper_remove(m, tu_on_done, &d[0]);
  assert_int_equal(d[0].calls, 0);
  wait_done(&h, &d[0]);
  assert_int_equal(d[0].status, MB_E_INVALID);
  vm_free(&v);
  tu_stop(ml);
  tu_home_fini(&h);
}

static void test_double_unlock(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *ml = tu_start("mgr");
  vm v = vm_make(ml, NULL);
  mb_mapper *m = NULL;
  assert_int_equal(mb_mapper_add_sync(v.mm, NULL, true, &m), 0);
  mb_lock *l = NULL, *l2 = NULL;
  assert_int_equal(mb_mapper_lock(m, 0x1000, 4096, true, &l), 0);
  assert_ptr_equal(mb_lock_ptr(l), mb_mapper_base(m) + 0x1000);
  assert_int_equal(mb_lock_gpa(l), 0x1000);
  assert_int_equal(mb_lock_size(l), 4096);
  assert_int_equal(mb_mapper_unlock(l), 0);
  assert_int_equal(mb_mapper_unlock(l), MB_E_INVALID);
  assert_null(mb_lock_ptr(l));
  assert_int_equal(mb_lock_size(l), 0);
  assert_int_equal(mb_mapper_lock(m, 0x2000, 4096, false, &l2), 0); /* may reuse the slot */
  assert_int_equal(mb_mapper_unlock(l), MB_E_INVALID);
  mb_lock_list *ll = NULL;
  assert_int_equal(mb_mapper_locks(m, &ll), 0);
  assert_int_equal(ll->count, 1); /* l2 is still held */
  free(ll);
  assert_int_equal(mb_mapper_remove_sync(m), MB_E_INVALID); /* it holds a lock */
  assert_int_equal(mb_mapper_unlock(l2), 0);
  assert_int_equal(mb_mapper_unlock(NULL), 0);
  assert_int_equal(mb_mapper_remove_sync(m), 0);
  assert_int_equal(mb_mapper_unlock(l2), MB_E_INVALID);
  vm_free(&v);
  tu_stop(ml);
}

/* mb_mm_destroy with a lock held releases it: the lock's handle is refused afterwards. */
static void test_destroy_with_lock(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *ml = tu_start("mgr"), *cl = tu_start("cons");
  vm v = vm_make(ml, NULL);
  mb_mapper *m = NULL;
  assert_int_equal(mb_mapper_add_sync(v.mm, cl, false, &m), 0);
  mb_lock *l = NULL, *l2 = NULL;
  assert_int_equal(mb_mapper_lock(m, 0x1000, 4096, true, &l), 0);
  assert_int_equal(mb_mapper_lock(m, 0, 8192, false, &l2), 0);
  assert_int_equal(mb_mapper_remove_sync(m), MB_E_INVALID);
  assert_int_equal(mb_mapper_unlock(l2), 0);
  vm_free(&v);
  assert_int_equal(mb_mapper_unlock(l), MB_E_INVALID);
  assert_null(mb_lock_ptr(l));
  uint8_t b;
  assert_int_equal(mb_mapper_read(m, 0, &b, 1), MB_E_INVALID);
  tu_stop(cl);
  tu_stop(ml);
}

/* ---- F14: readers racing the removal of their mapper ------------------------------------ */

typedef struct reader {
  mb_mapper *_Atomic m;
  atomic_bool stop;
  atomic_long ok, invalid, other;
  atomic_int last_other;
  bool lazy;
} reader;

static void *reader_main(void *arg) {
  reader *r = arg;
  uint8_t buf[64];
  while (!atomic_load(&r->stop)) {
    int rc = mb_mapper_read(atomic_load(&r->m), 0x1000, buf, sizeof buf);
    if (rc == 0 && buf[0] == 0x11) atomic_fetch_add(&r->ok, 1);
    else if (rc == MB_E_INVALID) atomic_fetch_add(&r->invalid, 1);
    else if (rc == MB_E_UNMAPPED && r->lazy) continue; /* a fault after its manager forgot it */
    else atomic_fetch_add(&r->other, 1), atomic_store(&r->last_other, rc);
  }
  return NULL;
}

enum { READERS = 2, ROUNDS = 20 };

/* Readers never fail but for MB_E_INVALID once the handle is gone (and a lazy mapper's
 * MB_E_UNMAPPED for a page it faults in after the mapping manager let it go), never touch freed
 * memory (the sanitizer builds would say), whether the removal is blocking or asynchronous
 * (whose last step then runs on the mapper's own loop, where a lazy reader may be waiting). */
static void remove_while_reading(bool eager, bool async) {
  tu_home h;
  tu_home_init(&h, "home");
  mb_loop *ml = tu_start("mgr"), *cl = tu_start("cons");
  vm v = vm_make(ml, NULL);
  reader r = {0};
  r.lazy = !eager;
  pthread_t t[READERS];
  mb_mapper *m = NULL;
  assert_int_equal(mb_mapper_add_sync(v.mm, cl, eager, &m), 0);
  atomic_store(&r.m, m);
  for (int i = 0; i < READERS; i++)
    assert_int_equal(pthread_create(&t[i], NULL, reader_main, &r), 0);
  for (int round = 0; round < ROUNDS; round++) {
    /* let the readers read through this mapper first (slow under TSan): bounded */
    long before = atomic_load(&r.ok);
    for (int i = 0; atomic_load(&r.ok) == before && i < 3000; i++)
      usleep(1000);
    if (async) {
      tu_done d = {0};
      mb_mapper_remove(m, tu_on_done, &d);
      wait_done(&h, &d);
      assert_int_equal(d.status, 0);
    } else {
      assert_int_equal(mb_mapper_remove_sync(m), 0);
    }
    uint8_t b;
    assert_int_equal(mb_mapper_read(m, 0x1000, &b, 1), MB_E_INVALID);
    usleep(1000);
    assert_int_equal(mb_mapper_add_sync(v.mm, cl, eager, &m), 0);
    atomic_store(&r.m, m);
  }
  atomic_store(&r.stop, true);
  for (int i = 0; i < READERS; i++) pthread_join(t[i], NULL);
  if (atomic_load(&r.other))
    fail_msg("%ld reads failed otherwise (%s)", atomic_load(&r.other),
             membacking_strerror(atomic_load(&r.last_other)));
  assert_true(atomic_load(&r.ok) > 0);
  assert_true(atomic_load(&r.invalid) > 0);
  vm_free(&v);
  tu_stop(cl);
  tu_stop(ml);
  tu_home_fini(&h);
}

static void test_remove_while_reading(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  remove_while_reading(true, false);
  remove_while_reading(false, false);
}

static void test_remove_while_reading_async(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  remove_while_reading(true, true);
  remove_while_reading(false, true);
}

/* ---- asynchronous calls from a thread that runs no loop ------------------------------------ */

/* The one case answered inside the call: there is no loop to answer on later. */
static void test_async_without_loop(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *ml = tu_start("mgr");
  vm v = vm_make(ml, NULL);
  mb_mapper *m = NULL;
  assert_int_equal(mb_mapper_add_sync(v.mm, NULL, true, &m), 0);
  assert_null(mb_loop_current());
  tu_done d[5] = {{0}};
  mb_region_params p = {"x", 64 * MiB, MiB, 0, false, 0};
  mb_region_add(v.mm, &p, tu_on_done, &d[0]);
  mb_region_map(v.mm, v.ram, false, tu_on_done, &d[1]);
  mb_mapper_add(v.mm, NULL, true, tu_on_done, &d[2]);
  mb_mapper_remove(m, tu_on_done, &d[3]);
  mb_mapper_ranges(m, tu_on_done, &d[4]);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(d[i].calls, 1);
    assert_int_equal(d[i].status, MB_EINVAL);
  }
  uint8_t b = 0; /* nothing happened */
  assert_int_equal(mb_mapper_write(m, 0, &b, 1), 0);
  assert_int_equal(mb_mapper_remove_sync(m), 0);
  vm_free(&v);
  tu_stop(ml);
}

/* With an argument, only the tests whose name contains it. */
int main(int argc, char **argv) {
  struct CMUnitTest tests[] = {
      cmocka_unit_test(test_destroy_inflight_mapper_add),
      cmocka_unit_test(test_destroy_inflight_partition_add),
      cmocka_unit_test(test_destroy_inflight_remove),
      cmocka_unit_test(test_destroy_inflight_regions),
      cmocka_unit_test(test_sync_on_needed_loops),
      cmocka_unit_test(test_double_remove),
      cmocka_unit_test(test_double_remove_async),
      cmocka_unit_test(test_double_unlock),
      cmocka_unit_test(test_destroy_with_lock),
      cmocka_unit_test(test_remove_while_reading),
      cmocka_unit_test(test_remove_while_reading_async),
      cmocka_unit_test(test_async_without_loop),
  };
  size_t n = 0;
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
    if (argc < 2 || strstr(tests[i].name, argv[1])) tests[n++] = tests[i];
  return _cmocka_run_group_tests("test_api_misuse", tests, n, NULL, NULL);
}
