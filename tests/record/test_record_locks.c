/* test_record_locks.c: locks in a recording (spec "Recording", "Locks"). A manager that
 * records is driven through the lock API directly: a lock taken on a thread of its own, one
 * refused, a region unmap that waits for the lock (issued from the test's loop), a lock refused
 * meanwhile because it is judged against the new state, the unlock on the other thread that
 * lets the unmap complete, and a second unlock of the same handle. The recording must name the
 * lock, write the refused ones with their errors and no live name, write the waiting unmap as
 * `async` at its issue with `expect pending` before what it crossed and `await` at its reply,
 * the second unlock as `notfound`; then parse, and replay in both layouts (argv[1] is
 * membacking-replay). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rec_util.h"
#include "membacking.h"
#include "scenario.h"
#include "test_util.h"

enum { PG = 4096, TEXT_MAX = 1 << 16 };
#define KiB 1024ull
#define MiB (1ull << 20)

static const char *replay_path;

typedef struct world {
  tu_home home; /* the asynchronous unmap completes here */
  mb_loop *mgr, *ml;
  mb_mm *mm;
  mb_region_id r;
  mb_mapper *m, *m2;
  mb_object *ram;
} world;

static void world_init(world *w, const char *path) {
  tu_home_init(&w->home, "client");
  w->mgr = tu_start("mgr");
  w->ml = tu_start("mappers");
  mb_mm_config cfg = {.max_addr = 1ull << 30, .loop = w->mgr};
  assert_int_equal(mb_mm_create(&cfg, &w->mm), 0);
  assert_int_equal(mb_mm_record(w->mm, path), 0);
  w->ram = tu_memfd_byte("ram", 64 * KiB, 0x11);
  mb_region_params rp = {"r", 0, 64 * KiB, 0, false, 0};
  assert_int_equal(mb_region_add_sync(w->mm, &rp, &w->r), 0);
  mb_mapping_params mp = {w->r, 0, 64 * KiB, w->ram, 0, true};
  assert_int_equal(mb_mapping_add_sync(w->mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(w->mm, w->r, true), 0);
  assert_int_equal(mb_mapper_add_sync(w->mm, w->ml, true, &w->m), 0);
  assert_int_equal(mb_mapper_add_sync(w->mm, w->ml, true, &w->m2), 0);
}

static void world_fini(world *w) {
  mb_mm_destroy(w->mm); /* closes the recording */
  mb_object_unref(w->ram);
  tu_stop(w->mgr);
  tu_stop(w->ml);
  tu_home_fini(&w->home);
}

/* A lock or an unlock on a thread that is no loop's. */
typedef struct lock_call {
  mb_mapper *m;
  uint64_t gpa;
  mb_lock *lock; /* in: to unlock (m NULL); out: the lock taken */
  int rc;
} lock_call;

static void *lock_thread(void *arg) {
  lock_call *c = arg;
  c->rc = c->m ? mb_mapper_lock(c->m, c->gpa, PG, true, &c->lock) : mb_mapper_unlock(c->lock);
  return NULL;
}

static int on_thread(lock_call *c) {
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, lock_thread, c), 0);
  assert_int_equal(pthread_join(t, NULL), 0);
  return c->rc;
}

typedef struct unmap_call {
  world *w;
  tu_done d;
  bool done;
} unmap_call;

static void unmap_done(void *ctx, int status, uint64_t value) {
  unmap_call *c = ctx;
  tu_on_done(&c->d, status, value);
  c->done = true;
}

static void unmap_issue(mb_loop *loop, void *arg) {
  (void)loop;
  unmap_call *c = arg;
  mb_region_unmap(c->w->mm, c->w->r, unmap_done, c);
}

/* Runs the test's loop until the mapper has a request parked behind its locks. */
static void until_waiting(world *w, mb_mapper *m) {
  for (;;) {
    mb_lock_list *l = NULL;
    assert_int_equal(mb_mapper_locks(m, &l), 0);
    size_t waiting = l->waiting;
    free(l);
    if (waiting) return;
    uv_run(&w->home.uv, UV_RUN_NOWAIT);
    sched_yield();
  }
}

/* Runs the test's loop until mapper m (eager) has torn page gpa down: the unmap reaches each
 * mapper on its own loop, and only the one holding the lock waits. */
static void until_unmapped(world *w, mb_mapper *m, uint64_t gpa) {
  uint8_t b;
  while (mb_mapper_read(m, gpa, &b, 1) != MB_E_UNMAPPED) {
    uv_run(&w->home.uv, UV_RUN_NOWAIT);
    sched_yield();
  }
}

static void drive(world *w) {
  lock_call held = {w->m, 0x2000, NULL, 0};
  assert_int_equal(on_thread(&held), 0);
  mb_lock *none = NULL;
  assert_int_equal(mb_mapper_lock(w->m, 1 * MiB, PG, true, &none), MB_E_UNMAPPED);
  unmap_call u = {w, {0, 0, 0}, false};
  assert_int_equal(mb_loop_post(w->home.loop, unmap_issue, &u), 0);
  until_waiting(w, w->m);
  until_unmapped(w, w->m2, 0);
  assert_false(u.done);
  lock_call late = {w->m2, 0, NULL, 0}; /* judged against the new state: unmapped */
  assert_int_equal(on_thread(&late), MB_E_UNMAPPED);
  lock_call release = {NULL, 0, held.lock, 0};
  assert_int_equal(on_thread(&release), 0);
  tu_home_run_until(&w->home, &u.done);
  assert_int_equal(u.d.status, 0);
  assert_int_equal(mb_mapper_unlock(held.lock), MB_E_INVALID); /* a second unlock */
}

static const char *const want_lines[] = {
    "lock m1 0x2000 0x1000 rw as L1 => ok\n",
    "lock m1 0x100000 0x1000 rw as L_failed => error:unmapped\n",
    "async a1 region unmap r\n",
    "expect pending a1\n",
    "lock m2 0x0 0x1000 rw as L_failed => error:unmapped\n",
    "unlock L1\n",
    "await a1 => ok\n",
    "unlock L1 => error:notfound\n",
};

/* The lock lines of the recording, in order, and nothing the format cannot replay. */
static void check_text(const char *path) {
  static char text[TEXT_MAX];
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  assert_null(strstr(text, "not replayable"));
  const char *at = text;
  for (size_t i = 0; i < sizeof want_lines / sizeof want_lines[0]; i++) {
    const char *hit = strstr(at, want_lines[i]);
    if (hit == NULL) {
      fputs(text, stderr);
      fputs(want_lines[i], stderr);
      fail_msg("that lock line (%zu) is missing from the recording above, or out of order", i);
    }
    at = hit + strlen(want_lines[i]);
  }
}

static void check_parses(const char *path) {
  char err[256];
  scenario *sc = NULL;
  if (scenario_parse_file(path, &sc, err, sizeof err) != 0) fail_msg("%s", err);
  scenario_free(sc);
}

static void test_record_locks(void **state) {
  (void)state;
  char path[] = "/tmp/test_record_locks_XXXXXX";
  rec_tmp_file(path);
  world w;
  world_init(&w, path);
  drive(&w);
  world_fini(&w);
  check_text(path);
  check_parses(path);
  rec_check_replays(replay_path, path);
  unlink(path);
}

int main(int argc, char **argv) {
  replay_path = argc > 1 ? argv[1] : NULL;
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_record_locks)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
