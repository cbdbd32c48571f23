/* test_thread_exit.c: the per-thread caches' exit hook (runtime/thread_exit.h). A thread's
 * drains run when it exits, last registered first, each with its own argument; another
 * thread's do not run then; a registration the hook has no room for is refused, and its
 * drain never runs. */
#include <pthread.h>
#include <stdatomic.h>

#include "rt_util.h"
#include "thread_exit.h"

enum { MAX_SEEN = 16 };

typedef struct seen {
  _Atomic unsigned n;
  int who[MAX_SEEN]; /* the drains' arguments, in the order they ran */
} seen;

static seen ran;

static void drain(void *arg) {
  unsigned i = atomic_fetch_add(&ran.n, 1);
  if (i < MAX_SEEN) ran.who[i] = (int)(intptr_t)arg;
}

/* Registers drains for 1..count, stopping at the first refusal: how many were taken. */
static void *register_some(void *count) {
  intptr_t taken = 0;
  while (taken < (intptr_t)count && mb__at_thread_exit(drain, (void *)(taken + 1)))
    taken++;
  return (void *)taken;
}

static intptr_t run_thread(intptr_t count) {
  pthread_t t;
  void *taken;
  assert_int_equal(pthread_create(&t, NULL, register_some, (void *)count), 0);
  assert_int_equal(pthread_join(t, &taken), 0);
  return (intptr_t)taken;
}

static void test_drains_run_at_exit_last_first(void **state) {
  (void)state;
  atomic_store(&ran.n, 0);
  assert_int_equal(run_thread(3), 3);
  assert_int_equal(atomic_load(&ran.n), 3);
  assert_int_equal(ran.who[0], 3);
  assert_int_equal(ran.who[1], 2);
  assert_int_equal(ran.who[2], 1);
}

static void test_only_the_exiting_threads_drains_run(void **state) {
  (void)state;
  atomic_store(&ran.n, 0);
  assert_int_equal(mb__at_thread_exit(drain, (void *)99), true); /* this thread's: not now */
  assert_int_equal(run_thread(1), 1);
  assert_int_equal(atomic_load(&ran.n), 1);
  assert_int_equal(ran.who[0], 1);
}

static void test_a_refused_registration_never_runs(void **state) {
  (void)state;
  atomic_store(&ran.n, 0);
  intptr_t taken = run_thread(MAX_SEEN);
  assert_true(taken >= 3 && taken < MAX_SEEN); /* room for the library's caches, and bounded */
  assert_int_equal(atomic_load(&ran.n), (unsigned)taken);
  for (intptr_t i = 0; i < taken; i++)
    assert_int_equal(ran.who[i], taken - i);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_drains_run_at_exit_last_first),
      cmocka_unit_test(test_only_the_exiting_threads_drains_run),
      cmocka_unit_test(test_a_refused_registration_never_runs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
