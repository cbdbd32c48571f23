/* test_api_inspect.c: the asynchronous introspection (mb_mm_inspect) never blocks the loop
 * that asks: called from a loop the test thread runs, while another loop that the manager
 * uses is held up, it returns at once, that loop keeps running (its timer ticks, and it is
 * what lets the other loop go), and the answer comes on it afterwards, whole. */
#include <errno.h>
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

#include "mb_access.h"
#include "membacking.h"
#include "test_util.h"

#define MiB (1ull << 20)

/* A loop held up until the test's loop lets it go (or, if that never happens, 30 s pass). */
typedef struct gate {
  sem_t open;
  atomic_bool timed_out;
} gate;

static void hold_up(mb_loop *loop, void *arg) {
  (void)loop;
  gate *g = arg;
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  t.tv_sec += 30;
  while (sem_timedwait(&g->open, &t) != 0)
    if (errno != EINTR) {
      atomic_store(&g->timed_out, true);
      return;
    }
}

typedef struct run {
  gate *g;
  int calls, status;
  uint64_t value;
  int ticks_while_pending; /* timer ticks of the asking loop before the answer */
  bool opened;
} run;

static void on_done(void *ctx, int status, uint64_t value) {
  run *r = ctx;
  r->calls++;
  r->status = status;
  r->value = value;
}

/* The asking loop's timer: while the inspection is pending it ticks; the third tick lets the
 * held-up loop go. */
static void on_tick(uv_timer_t *t) {
  run *r = t->data;
  if (r->calls) return;
  if (++r->ticks_while_pending == 3) {
    r->opened = true;
    sem_post(&r->g->open);
  }
}

static void test_inspect_async_does_not_block(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  tu_home h;
  tu_home_init(&h, "asking");
  mb_loop *ml = tu_start("mgr"), *pl = tu_start("part"), *xl = tu_start("x");
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = ml, .part_loop = pl};
  assert_int_equal(mb_mm_create(&cfg, &mm), 0);
  mb_mapper *m = NULL;
  mb_partition *p = NULL;
  assert_int_equal(mb_mapper_add_sync(mm, xl, true, &m), 0);
  assert_int_equal(mb_partition_add_sync(mm, &mb_partition_soft, xl, &p), 0);
  mb_object *obj = tu_memfd_byte("ram", 16 * MiB, 0x11);
  mb_region_params rp = {"ram", 0, 16 * MiB, 0, false, 0};
  mb_region_id id = 0;
  assert_int_equal(mb_region_add_sync(mm, &rp, &id), 0);
  mb_mapping_params mp = {id, 0, 16 * MiB, obj, 0, true};
  assert_int_equal(mb_mapping_add_sync(mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(mm, id, true), 0);

  gate g = {.timed_out = false};
  sem_init(&g.open, 0, 0);
  assert_int_equal(mb_loop_post(xl, hold_up, &g), 0); /* x is held up from now on */
  run r = {.g = &g};
  uv_timer_t t;
  uv_timer_init(&h.uv, &t);
  t.data = &r;
  mb_mm_inspect(mm, on_done, &r); /* returns at once: nothing runs on x now */
  assert_int_equal(r.calls, 0);
  uv_timer_start(&t, on_tick, 1, 1);
  while (r.calls == 0) uv_run(&h.uv, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&h.uv, UV_RUN_NOWAIT);

  assert_false(atomic_load(&g.timed_out)); /* the asking loop let x go: it was running */
  assert_true(r.opened);
  assert_true(r.ticks_while_pending >= 3);
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.status, 0);
  char *json = (char *)(uintptr_t)r.value;
  FILE *sink = fopen("/dev/null", "w");
  assert_non_null(sink);
  assert_int_equal(mb_mm_mtree(json, sink), 0);
  fclose(sink);
  assert_non_null(strstr(json, "\"primary\":false")); /* x's mapper is in it */
  assert_non_null(strstr(json, "\"backend\":\"soft\"")); /* and x's partition */
  free(json);
  sem_destroy(&g.open);
  mb_mm_destroy(mm);
  mb_object_unref(obj);
  tu_stop(xl);
  tu_stop(pl);
  tu_stop(ml);
  tu_home_fini(&h);
}

/* A consumer removed while an inspection is on its way: whether the inspection reaches it
 * before or after it goes, nothing freed is read (the sanitizer builds check) and the JSON is
 * whole. */
static void test_inspect_async_consumer_removed(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  tu_home h;
  tu_home_init(&h, "asking");
  mb_loop *ml = tu_start("mgr"), *xl = tu_start("x");
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = ml};
  assert_int_equal(mb_mm_create(&cfg, &mm), 0);
  mb_mapper *m = NULL;
  assert_int_equal(mb_mapper_add_sync(mm, xl, false, &m), 0);
  gate g = {.timed_out = false};
  sem_init(&g.open, 0, 0);
  assert_int_equal(mb_loop_post(ml, hold_up, &g), 0); /* the managers' piece waits */
  run r = {.g = &g};
  mb_mm_inspect(mm, on_done, &r);
  run rm = {0};
  mb_mapper_remove(m, on_done, &rm); /* runs on x first, then waits for the managers */
  sem_post(&g.open);
  while (r.calls == 0 || rm.calls == 0) uv_run(&h.uv, UV_RUN_ONCE);
  assert_int_equal(rm.status, 0);
  assert_int_equal(r.status, 0);
  char *json = (char *)(uintptr_t)r.value;
  FILE *sink = fopen("/dev/null", "w");
  assert_int_equal(mb_mm_mtree(json, sink), 0);
  fclose(sink);
  free(json);
  sem_destroy(&g.open);
  mb_mm_destroy(mm);
  tu_stop(xl);
  tu_stop(ml);
  tu_home_fini(&h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_inspect_async_does_not_block),
      cmocka_unit_test(test_inspect_async_consumer_removed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
