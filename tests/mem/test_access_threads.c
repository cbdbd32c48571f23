/* test_access_threads.c: fault-tolerant copies from several threads at once: each thread
 * faults and succeeds many times on its own pages, and readers race a thread that keeps
 * mapping and unmapping a shared page (every result must be a full copy or a precise fault
 * at that page). Iteration counts are fixed; nothing is timed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mb_access.h"
#include "mb_range.h"
#include "va_reserve.h"

#define PAGE ((size_t)MB_PAGE_SIZE)
#define THREADS 4
#define ROUNDS 1500

/* Each thread owns 4 pages: [RW][PROT_NONE][RW][RO]. */
static mb_va va;
static int memfd;

static uint8_t value_at(size_t off) {
  return (uint8_t)(off * 7 + 3);
}

/* Returns NULL on success or a description of the first failure (threads cannot assert). */
static const char *own_pages_round(uint8_t *base, size_t round) {
  static _Thread_local char msg[128];
  uint8_t buf[2 * PAGE];
  mb_fault f;
  size_t start = (round * 61) % PAGE;
  size_t base_off = (size_t)(base - va.base);
  if (mb_access_read(buf, base + start, 2 * PAGE - start, &f) != -EFAULT)
    return "read across the PROT_NONE page did not fault";
  if (f.addr != base + PAGE || f.done != PAGE - start || f.signo != SIGSEGV)
    return "imprecise read fault";
  for (size_t i = 0; i < f.done; i++)
    if (buf[i] != value_at(base_off + start + i)) {
      snprintf(msg, sizeof msg, "read byte %zu not copied", i);
      return msg;
    }
  if (mb_access_read(buf, base + 2 * PAGE, 2 * PAGE, NULL) != 0)
    return "read of mapped pages failed";
  memset(buf, (int)round, PAGE);
  if (mb_access_write(base + 2 * PAGE + start, buf, PAGE + 1, &f) != -EFAULT)
    return "write into the read-only page did not fault";
  if (f.addr != base + 3 * PAGE || f.done != PAGE - start || f.code != SEGV_ACCERR)
    return "imprecise write fault";
  if (mb_access_write(base + 2 * PAGE, buf, PAGE, NULL) != 0)
    return "write of a writable page failed";
  if (mb_access_fill(base + start, 0, PAGE + 1, &f) != -EFAULT || f.addr != base + PAGE)
    return "fill fault";
  /* put back what the fill destroyed */
  for (size_t i = start; i < PAGE; i++)
    base[i] = value_at(base_off + i);
  return NULL;
}

static void *own_pages_worker(void *arg) {
  uint8_t *base = arg;
  for (size_t round = 0; round < ROUNDS; round++) {
    const char *err = own_pages_round(base, round);
    if (err != NULL)
      return (void *)err;
  }
  return NULL;
}

static void run_threads(void *(*fn)(void *), void *args[THREADS]) {
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++)
    assert_int_equal(pthread_create(&t[i], NULL, fn, args[i]), 0);
  for (int i = 0; i < THREADS; i++) {
    void *err;
    assert_int_equal(pthread_join(t[i], &err), 0);
    if (err != NULL)
      fail_msg("thread %d: %s", i, (const char *)err);
  }
}

static void test_threads_fault_and_succeed(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0);
  assert_int_equal(mb_va_reserve(&va, THREADS * 4 * PAGE), 0);
  memfd = memfd_create("test-access-threads", MFD_CLOEXEC);
  assert_true(memfd >= 0);
  assert_int_equal(ftruncate(memfd, THREADS * 4 * PAGE), 0);
  void *args[THREADS];
  for (int i = 0; i < THREADS; i++) {
    uint64_t off = (uint64_t)i * 4 * PAGE;
    assert_int_equal(mb_va_map_fd(&va, off, PAGE, memfd, off, true), 0);
    assert_int_equal(mb_va_map_fd(&va, off + 2 * PAGE, 2 * PAGE, memfd, off + 2 * PAGE, true),
                     0);
    for (size_t b = 0; b < PAGE; b++)
      va.base[off + b] = value_at(off + b);
    assert_int_equal(mb_va_protect(&va, off + 3 * PAGE, PAGE, false), 0);
    args[i] = va.base + off;
  }
  run_threads(own_pages_worker, args);
  mb_va_release(&va);
  close(memfd);
}

/* ---- readers racing a mapper ------------------------------------------------------------- */

/* Page 0 is always mapped, page 1 comes and goes; the file holds value_at() everywhere. */
static atomic_int racing_done;

static void *toggler(void *arg) {
  (void)arg;
  for (int i = 0; i < 4 * ROUNDS; i++) {
    int rc = (i & 1) ? mb_va_unmap(&va, PAGE, PAGE)
                     : mb_va_map_fd(&va, PAGE, PAGE, memfd, PAGE, false);
    if (rc != 0)
      return (void *)"toggle failed";
  }
  atomic_store(&racing_done, 1);
  return NULL;
}

static void *racer(void *arg) {
  (void)arg;
  uint8_t buf[2 * PAGE];
  size_t round = 0, ok = 0, faulted = 0;
  while (!atomic_load(&racing_done) || round < 100) {
    size_t start = (round++ * 97) % PAGE;
    mb_fault f;
    int rc = mb_access_read(buf, va.base + start, 2 * PAGE - start, &f);
    size_t valid = 2 * PAGE - start;
    if (rc == -EFAULT) {
      if (f.addr != va.base + PAGE || f.done != PAGE - start)
        return (void *)"fault not at the toggled page";
      valid = f.done;
      faulted++;
    } else if (rc != 0) {
      return (void *)"unexpected error";
    } else {
      ok++;
    }
    for (size_t i = 0; i < valid; i++)
      if (buf[i] != value_at(start + i))
        return (void *)"wrong data";
  }
  (void)ok;
  (void)faulted;
  return NULL;
}

static void test_threads_race_mapper(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0);
  assert_int_equal(mb_va_reserve(&va, 2 * PAGE), 0);
  memfd = memfd_create("test-access-race", MFD_CLOEXEC);
  assert_true(memfd >= 0);
  assert_int_equal(ftruncate(memfd, 2 * PAGE), 0);
  uint8_t page[2 * PAGE];
  for (size_t i = 0; i < sizeof page; i++)
    page[i] = value_at(i);
  assert_int_equal(pwrite(memfd, page, sizeof page, 0), (ssize_t)sizeof page);
  assert_int_equal(mb_va_map_fd(&va, 0, PAGE, memfd, 0, false), 0);
  atomic_store(&racing_done, 0);
  pthread_t tog;
  assert_int_equal(pthread_create(&tog, NULL, toggler, NULL), 0);
  void *args[THREADS - 1] = {0};
  pthread_t t[THREADS - 1];
  for (int i = 0; i < THREADS - 1; i++)
    assert_int_equal(pthread_create(&t[i], NULL, racer, args[i]), 0);
  void *err;
  assert_int_equal(pthread_join(tog, &err), 0);
  if (err != NULL)
    fail_msg("toggler: %s", (const char *)err);
  for (int i = 0; i < THREADS - 1; i++) {
    assert_int_equal(pthread_join(t[i], &err), 0);
    if (err != NULL)
      fail_msg("racer %d: %s", i, (const char *)err);
  }
  mb_va_release(&va);
  close(memfd);
}

/* ---- lazy initialization ----------------------------------------------------------------- */

/* Threads race the first, lazy initialization; this must be the first test of the process. */
static void *lazy_first_use(void *arg) {
  uint8_t *p = arg, b;
  mb_fault f;
  if (mb_access_read(&b, p, 1, &f) != -EFAULT || f.addr != p)
    return (void *)"first use did not catch the fault";
  return NULL;
}

static void test_threads_lazy_init(void **state) {
  (void)state;
  /* no mb_access_init/reinstall: the copies install the handlers themselves */
  assert_int_equal(mb_va_reserve(&va, PAGE), 0);
  void *args[THREADS];
  for (int i = 0; i < THREADS; i++)
    args[i] = va.base + (size_t)i * 512;
  run_threads(lazy_first_use, args);
  mb_va_release(&va);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_threads_lazy_init), /* first: nothing is installed yet */
      cmocka_unit_test(test_threads_fault_and_succeed),
      cmocka_unit_test(test_threads_race_mapper),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
