/* test_api_alloc_fail.c: every allocation that the runtime and the API make through the
 * fault-injection seam (mem/fault_inject.h, MB_FI_ALLOC: messages, actors, loops, handle
 * slots' users) made to fail in turn while a loop is started or attached and while a manager
 * is created: each call either succeeds or answers MB_ENOMEM, and leaves nothing behind (no
 * descriptor, no address space, no libuv handle; the sanitizer builds check memory). Built
 * from the library's sources with MB_FAULT_INJECTION (tests/api/meson.build), so it runs in
 * every build. */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
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

/* A hang is the failure F4 was: a watchdog thread ends the process if `what` takes 20 s. */
typedef struct watchdog {
  pthread_t t;
  sem_t stop;
  const char *what;
} watchdog;

static void *watchdog_main(void *arg) {
  watchdog *w = arg;
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  t.tv_sec += 20;
  while (sem_timedwait(&w->stop, &t) != 0)
    if (errno != EINTR) {
      fprintf(stderr, "HANG: %s\n", w->what);
      _exit(1);
    }
  return NULL;
}

static void watchdog_start(watchdog *w, const char *what) {
  w->what = what;
  sem_init(&w->stop, 0, 0);
  assert_int_equal(pthread_create(&w->t, NULL, watchdog_main, w), 0);
}

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

/* With an argument, only the tests whose name contains it. */
int main(int argc, char **argv) {
  struct CMUnitTest tests[] = {
      cmocka_unit_test(test_loop_start),
      cmocka_unit_test(test_loop_attach),
      cmocka_unit_test(test_mm_create),
  };
  size_t n = 0;
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
    if (argc < 2 || strstr(tests[i].name, argv[1])) tests[n++] = tests[i];
  return _cmocka_run_group_tests("test_api_alloc_fail", tests, n, NULL, NULL);
}
