/* test_locks_stress.c: locks against teardowns, many threads, the public API.
 *
 * Lockers lock ranges through two eager mappers and a lazy one and write through the
 * raw pointers while they hold them, checking that what they wrote stays; meanwhile tearers
 * unmap, remap, remove and re-add the same regions, remove and re-add mappings and change
 * access. Each locker owns its own pages of every region (writers never share a byte), each
 * tearer its own regions. After every teardown completes, its tearer fills the torn-down
 * pages of the backing with a sentinel through a view of its own, lets the lockers run, and
 * checks the sentinel is intact: no write lands after its range's teardown completed. A
 * locker that sees its own bytes change under a held lock has caught a teardown (and the
 * sentinel fill) under its lock. Nothing may crash, every operation must complete and
 * succeed. Every mapper's lock watchdog runs at 1 ms throughout, and each report must be of a
 * lock of the test's, held no longer than the test has run (a lock taken while the watchdog
 * looked was once reported as held for 2^64 ns), and so must every lock of the snapshots the
 * lockers take. Iteration counts are fixed; nothing is
 * timed. Runs under ASan and TSan. */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mb_access.h"
#include "api_internal.h" /* the mappers' parked counts */
#include "membacking.h"
#include "test_util.h"

#define PAGE 4096ull
#define MiB (1ull << 20)

enum {
  NREGIONS = 4,
  NLOCKERS = 4,
  PAGES_EACH = 4,                       /* pages of every region a locker owns */
  PAGES = NLOCKERS * PAGES_EACH,        /* pages per region */
  NTEARERS = 2,
  LOCK_ITERS = 5000,
  TEAR_ITERS = 300,
  SENTINEL = 0xee,
};

typedef struct world {
  mb_mm *mm;
  mb_mapper *mappers[3];                /* eager, lazy, eager */
  mb_object *obj[NREGIONS];
  uint8_t *view[NREGIONS];              /* the backing, mapped by the test itself */
  mb_region_id id[NREGIONS];            /* its tearer's only */
  atomic_int errors;
  atomic_uint_fast64_t locked, refused, teardowns, reported;
  uint64_t t0_ms;                       /* CLOCK_MONOTONIC at the start */
  char why[256];
  pthread_mutex_t why_lock;
} world;

static uint64_t region_gpa(int i) { return (uint64_t)(i + 1) * MiB; }

static void stress_fail(world *w, const char *fmt, ...) {
  pthread_mutex_lock(&w->why_lock);
  if (atomic_fetch_add(&w->errors, 1) == 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->why, sizeof w->why, fmt, ap);
    va_end(ap);
  }
  pthread_mutex_unlock(&w->why_lock);
}

static uint32_t rnd(uint32_t *s) { /* xorshift: each thread its own, fixed seeds */
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- the watchdog's reports (the mappers' loop threads) -------------------------------------- */

/* A report names a range inside a region, held no longer than the test has run. */
static void on_report(void *ctx, const char *line) {
  world *w = ctx;
  unsigned long long ms, a, b;
  if (sscanf(line, "membacking: lock held for %llu ms: mapper %*s %*s range [%llx, %llx)", &ms,
             &a, &b) != 3) {
    stress_fail(w, "a report the test cannot read: %s", line);
    return;
  }
  uint64_t ran = mono_ms() - w->t0_ms;
  if (ms > ran || a >= b || a < region_gpa(0) || b > region_gpa(NREGIONS - 1) + PAGES * PAGE)
    stress_fail(w, "a report of a lock never held so (the test ran %llu ms): %s",
                (unsigned long long)ran, line);
  atomic_fetch_add(&w->reported, 1);
}

/* ---- lockers --------------------------------------------------------------------------------- */

typedef struct locker {
  world *w;
  int t;
} locker;

static void hold(world *w, mb_lock *l, bool writable, uint8_t stamp) {
  volatile uint8_t *p = mb_lock_ptr(l);
  size_t n = mb_lock_size(l);
  if (!writable) {
    uint8_t sum = 0;
    for (size_t i = 0; i < n; i += 512) sum += p[i]; /* loads through the pointer */
    (void)sum;
    sched_yield();
    return;
  }
  for (int round = 0; round < 3; round++) {
    for (size_t i = 0; i < n; i += 64) p[i] = stamp;
    sched_yield();
    for (size_t i = 0; i < n; i += 64)
      if (p[i] != stamp) {
        stress_fail(w, "a held lock's byte changed under it: %#x, not %#x", p[i], stamp);
        return;
      }
  }
}

/* A snapshot taken among the lockers holds no lock longer than the test has run. */
static void check_snapshot(world *w, mb_mapper *m) {
  mb_lock_list *list = NULL;
  if (mb_mapper_locks(m, &list) != 0) {
    stress_fail(w, "mb_mapper_locks failed");
    return;
  }
  uint64_t ran = mono_ms() - w->t0_ms;
  for (size_t i = 0; i < list->count; i++)
    if (list->locks[i].held_ms > ran)
      stress_fail(w, "a snapshot's lock held for %llu ms (the test ran %llu ms)",
                  (unsigned long long)list->locks[i].held_ms, (unsigned long long)ran);
  free(list);
}

static void *locker_main(void *arg) {
  locker *k = arg;
  world *w = k->w;
  uint32_t s = 0x9e3779b9u * (uint32_t)(k->t + 1);
  for (int it = 0; it < LOCK_ITERS && atomic_load(&w->errors) == 0; it++) {
    int region = (int)(rnd(&s) % NREGIONS);
    mb_mapper *m = w->mappers[rnd(&s) % 3];
    uint32_t first = rnd(&s) % PAGES_EACH, len = 1 + rnd(&s) % (PAGES_EACH - first);
    uint64_t gpa = region_gpa(region) + ((uint64_t)k->t * PAGES_EACH + first) * PAGE;
    bool writable = rnd(&s) % 4 != 0;
    mb_lock *l = NULL;
    if (it % 16 == 0)
      check_snapshot(w, m);
    int rc = mb_mapper_lock(m, gpa, len * PAGE, writable, &l);
    if (rc == 0) {
      atomic_fetch_add(&w->locked, 1);
      hold(w, l, writable, (uint8_t)(1 + (it + k->t) % 0x7f));
      mb_mapper_unlock(l);
    } else if (rc == MB_E_UNMAPPED || (rc == MB_E_READONLY && writable)) {
      atomic_fetch_add(&w->refused, 1);
    } else {
      stress_fail(w, "lock %#llx+%u pages: %s", (unsigned long long)gpa, len,
                  membacking_strerror(rc));
    }
  }
  return NULL;
}

/* ---- tearers --------------------------------------------------------------------------------- */

typedef struct tearer {
  world *w;
  int t;
} tearer;

static void check(world *w, int rc, const char *what, int region) {
  if (rc != 0) stress_fail(w, "%s of region %d: %s", what, region, membacking_strerror(rc));
}

/* The teardown of pages [a, b) of region i has completed: nothing may write there now. */
static void sentinel(world *w, int i, uint32_t a, uint32_t b) {
  uint8_t *v = w->view[i];
  memset(v + a * PAGE, SENTINEL, (b - a) * PAGE);
  for (int y = 0; y < 8; y++) sched_yield(); /* the lockers' turn */
  for (uint64_t o = a * PAGE; o < b * PAGE; o += 64)
    if (v[o] != SENTINEL) {
      stress_fail(w, "a write landed in region %d at +%#llx after its teardown completed", i,
           (unsigned long long)o);
      return;
    }
  atomic_fetch_add(&w->teardowns, 1);
}

static void add_region(world *w, int i) {
  mb_region_params p = {"r", region_gpa(i), PAGES * PAGE, 0, false, 0};
  check(w, mb_region_add_sync(w->mm, &p, &w->id[i]), "add", i);
  mb_mapping_params mp = {w->id[i], 0, PAGES * PAGE, w->obj[i], 0, true};
  check(w, mb_mapping_add_sync(w->mm, &mp), "mapping add", i);
  check(w, mb_region_map_sync(w->mm, w->id[i], true), "map", i);
}

static void tear_once(world *w, int i, uint32_t *s) {
  switch (rnd(s) % 4) {
  case 0: /* region unmap, map again */
    check(w, mb_region_unmap_sync(w->mm, w->id[i]), "unmap", i);
    sentinel(w, i, 0, PAGES);
    check(w, mb_region_map_sync(w->mm, w->id[i], true), "map", i);
    break;
  case 1: { /* mapping remove of some pages, added back */
    uint32_t a = rnd(s) % PAGES, b = a + 1 + rnd(s) % (PAGES - a);
    int rc = mb_mapping_remove_sync(w->mm, w->id[i], a * PAGE, (b - a) * PAGE);
    check(w, rc, "mapping remove", i);
    sentinel(w, i, a, b);
    mb_mapping_params mp = {w->id[i], a * PAGE, (b - a) * PAGE, w->obj[i], a * PAGE, true};
    check(w, mb_mapping_add_sync(w->mm, &mp), "mapping add", i);
    break;
  }
  case 2: /* region remove, added again */
    check(w, mb_region_remove_sync(w->mm, w->id[i]), "remove", i);
    sentinel(w, i, 0, PAGES);
    add_region(w, i);
    break;
  default: /* access change: read-only a while (every VA mapping is replaced) */
    check(w, mb_region_map_sync(w->mm, w->id[i], false), "map ro", i);
    for (int y = 0; y < 4; y++) sched_yield();
    check(w, mb_region_map_sync(w->mm, w->id[i], true), "map rw", i);
    break;
  }
}

static void *tearer_main(void *arg) {
  tearer *t = arg;
  world *w = t->w;
  uint32_t s = 0x85ebca6bu * (uint32_t)(t->t + 1);
  for (int it = 0; it < TEAR_ITERS && atomic_load(&w->errors) == 0; it++) {
    int i = t->t + NTEARERS * (int)(rnd(&s) % (NREGIONS / NTEARERS));
    tear_once(w, i, &s);
  }
  return NULL;
}

/* ---- the test -------------------------------------------------------------------------------- */

/* One lock held until the watchdog reports something (within a generous bound): it ran. */
static void hold_until_reported(world *w) {
  mb_lock *l = NULL;
  assert_int_equal(mb_mapper_lock(w->mappers[0], region_gpa(0), PAGE, false, &l), 0);
  uint64_t before = atomic_load(&w->reported);
  for (int i = 0; i < 10000 && atomic_load(&w->reported) == before; i++) usleep(1000);
  assert_int_equal(mb_mapper_unlock(l), 0);
  if (atomic_load(&w->reported) == before) fail_msg("a lock held for 10 s was not reported");
}

static void test_locks_against_teardowns(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0); /* cmocka puts its handlers in front per test */
  mb_loop *mgr = tu_start("mgr"), *part = tu_start("part"), *le = tu_start("eager"), *ll = tu_start("lazy");
  static world w;
  memset(&w, 0, sizeof w);
  pthread_mutex_init(&w.why_lock, NULL);
  mb_mm_config cfg = {.max_addr = 1ull << 30, .loop = mgr, .part_loop = part};
  assert_int_equal(mb_mm_create(&cfg, &w.mm), 0);
  for (int i = 0; i < NREGIONS; i++) {
    assert_int_equal(mb_object_create(MB_OBJECT_MEMFD, PAGES * PAGE, "stress", &w.obj[i]), 0);
    w.view[i] = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
                     mb_object_fd(w.obj[i]), 0);
    assert_true(w.view[i] != MAP_FAILED);
    add_region(&w, i);
  }
  assert_int_equal(mb_mapper_add_sync(w.mm, le, true, &w.mappers[0]), 0);
  assert_int_equal(mb_mapper_add_sync(w.mm, ll, false, &w.mappers[1]), 0);
  assert_int_equal(mb_mapper_add_sync(w.mm, le, true, &w.mappers[2]), 0);
  w.t0_ms = mono_ms();
  for (int m = 0; m < 3; m++)
    assert_int_equal(mb_mapper_lock_watchdog(w.mappers[m], 1, on_report, &w), 0);
  mb_partition *p;
  assert_int_equal(mb_partition_add_sync(w.mm, &mb_partition_soft, part, &p), 0);
  assert_int_equal(atomic_load(&w.errors), 0);

  pthread_t lt[NLOCKERS], tt[NTEARERS];
  locker lk[NLOCKERS];
  tearer tr[NTEARERS];
  for (int i = 0; i < NLOCKERS; i++) {
    lk[i] = (locker){&w, i};
    assert_int_equal(pthread_create(&lt[i], NULL, locker_main, &lk[i]), 0);
  }
  for (int i = 0; i < NTEARERS; i++) {
    tr[i] = (tearer){&w, i};
    assert_int_equal(pthread_create(&tt[i], NULL, tearer_main, &tr[i]), 0);
  }
  for (int i = 0; i < NLOCKERS; i++) pthread_join(lt[i], NULL);
  for (int i = 0; i < NTEARERS; i++) pthread_join(tt[i], NULL);
  hold_until_reported(&w);
  if (atomic_load(&w.errors)) fail_msg("%d error(s), the first: %s", atomic_load(&w.errors), w.why);
  print_message("locks %llu, refused %llu, teardowns checked %llu, watchdog reports %llu\n",
                (unsigned long long)atomic_load(&w.locked),
                (unsigned long long)atomic_load(&w.refused),
                (unsigned long long)atomic_load(&w.teardowns),
                (unsigned long long)atomic_load(&w.reported));
  uint64_t parked = 0;
  for (int m = 0; m < 3; m++) parked += mb_vam_stats_get(mb__mapper_vam(w.mappers[m])).parked;
  print_message("teardowns parked behind a lock: %llu\n", (unsigned long long)parked);
  assert_true(atomic_load(&w.locked) > 0);
  assert_true(atomic_load(&w.teardowns) > 0);
  assert_true(parked > 0); /* the test did what it is for */
  for (int m = 0; m < 3; m++) { /* nothing held, nothing waiting */
    mb_lock_list *l;
    assert_int_equal(mb_mapper_locks(w.mappers[m], &l), 0);
    assert_int_equal(l->count, 0);
    assert_int_equal(l->waiting, 0);
    free(l);
  }
  /* everything is still consistent: every region mapped, readable through every mapper */
  for (int i = 0; i < NREGIONS; i++) {
    uint8_t b;
    for (int m = 0; m < 3; m++)
      assert_int_equal(mb_mapper_read(w.mappers[m], region_gpa(i) + PAGE, &b, 1), 0);
    assert_int_equal(mb_partition_access_sync(p, region_gpa(i), &b, 1, false), 0);
  }

  assert_int_equal(mb_partition_remove_sync(p), 0);
  assert_int_equal(mb_mapper_remove_sync(w.mappers[0]), 0);
  assert_int_equal(mb_mapper_remove_sync(w.mappers[1]), 0);
  mb_mm_destroy(w.mm);
  for (int i = 0; i < NREGIONS; i++) {
    munmap(w.view[i], PAGES * PAGE);
    mb_object_unref(w.obj[i]);
  }
  pthread_mutex_destroy(&w.why_lock);
  tu_stop(mgr);
  tu_stop(part);
  tu_stop(le);
  tu_stop(ll);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_locks_against_teardowns),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
