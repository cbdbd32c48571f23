/* test_access_threads.c: fault-tolerant copies from several threads at once: each thread
 * faults and succeeds many times on its own pages, and readers race a thread that keeps
 * mapping and unmapping a shared page (every result must be a full copy or a precise fault
 * at that page); aligned copies of up to 8 bytes are one move (no reader sees a torn value,
 * no refused write lands in part). Iteration counts are fixed; nothing is timed. */
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

static void join_all(pthread_t *t, int n) {
  for (int i = 0; i < n; i++) {
    void *err;
    assert_int_equal(pthread_join(t[i], &err), 0);
    if (err != NULL)
      fail_msg("thread %d: %s", i, (const char *)err);
  }
}

static void run_threads(void *(*fn)(void *), void *args[THREADS]) {
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++)
    assert_int_equal(pthread_create(&t[i], NULL, fn, args[i]), 0);
  join_all(t, THREADS);
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

/* ---- one move: aligned copies of 1, 2, 4 and 8 bytes ---------------------------------------- */

enum { MOVES = 100000 };
static const size_t move_size[] = {1, 2, 4, 8};
static const size_t move_off[] = {3, 10, 20, 40}; /* naturally aligned */
static atomic_int moves_done;

static uint64_t move_value(size_t k, size_t i) { /* every byte differs between i and i + 1 */
  uint64_t v = (i & 1) ? 0xa55aa55aa55aa55aull : 0x5aa55aa55aa55aa5ull;
  return v >> (64 - 8 * move_size[k]);
}

/* Writes the two values of every width in turn, and fills 8 bytes at 56 with 0x00 or 0xff. */
static void *move_writer(void *arg) {
  (void)arg;
  for (size_t i = 0; i < MOVES; i++) {
    for (size_t k = 0; k < 4; k++) {
      uint64_t v = move_value(k, i);
      if (mb_access_write(va.base + move_off[k], &v, move_size[k], NULL) != 0)
        return (void *)"write failed";
    }
    if (mb_access_fill(va.base + 56, (i & 1) ? 0xff : 0, 8, NULL) != 0)
      return (void *)"fill failed";
  }
  atomic_store(&moves_done, 1);
  return NULL;
}

/* Every read sees one of the two values, never a mix of their bytes. */
static void *move_reader(void *arg) {
  (void)arg;
  while (!atomic_load(&moves_done)) {
    for (size_t k = 0; k < 4; k++) {
      uint64_t v = 0;
      if (mb_access_read(&v, va.base + move_off[k], move_size[k], NULL) != 0)
        return (void *)"read failed";
      if (v != move_value(k, 0) && v != move_value(k, 1))
        return (void *)"a read saw a torn value";
    }
    uint64_t f;
    if (mb_access_read(&f, va.base + 56, 8, NULL) != 0 || (f != 0 && f != UINT64_MAX))
      return (void *)"a read saw a torn fill";
  }
  return NULL;
}

/* Writes unique 8-byte values while the toggler makes the page read-only and writable again,
 * MOVES of them and until 1000 were refused: after a write that faulted, the slot (read
 * through a second mapping) still holds the last value written, nothing of the one refused. */
static void *move_refused_writer(void *arg) {
  const volatile uint64_t *alias = arg;
  uint64_t last = 0;
  unsigned refused = 0;
  for (uint64_t i = 1; i <= MOVES || refused < 1000; i++) {
    uint64_t v = i * 0x0101010101010101ull ^ 0x8040201008040201ull;
    int rc = mb_access_write(va.base + 8, &v, 8, NULL);
    if (rc == 0)
      last = v;
    else if (rc != -EFAULT)
      return (void *)"unexpected error";
    else if (refused++, *alias != last)
      return (void *)"a refused write landed, in part or whole";
  }
  atomic_store(&moves_done, 1);
  return NULL;
}

static void *move_toggler(void *arg) {
  (void)arg;
  for (unsigned i = 0; !atomic_load(&moves_done); i++)
    if (mb_va_protect(&va, 0, PAGE, i & 1) != 0)
      return (void *)"protect failed";
  return mb_va_protect(&va, 0, PAGE, true) != 0 ? (void *)"protect failed" : NULL;
}

static void test_threads_single_moves(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0);
  assert_int_equal(mb_va_reserve(&va, PAGE), 0);
  memfd = memfd_create("test-access-moves", MFD_CLOEXEC);
  assert_true(memfd >= 0);
  assert_int_equal(ftruncate(memfd, PAGE), 0);
  assert_int_equal(mb_va_map_fd(&va, 0, PAGE, memfd, 0, true), 0);
  uint64_t *alias = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, memfd, 0);
  assert_true(alias != MAP_FAILED);
  for (size_t k = 0; k < 4; k++) {
    uint64_t v = move_value(k, 0);
    assert_int_equal(mb_access_write(va.base + move_off[k], &v, move_size[k], NULL), 0);
  }
  pthread_t t[3];
  atomic_store(&moves_done, 0);
  assert_int_equal(pthread_create(&t[0], NULL, move_writer, NULL), 0);
  for (int i = 1; i < 3; i++)
    assert_int_equal(pthread_create(&t[i], NULL, move_reader, NULL), 0);
  join_all(t, 3);
  atomic_store(&moves_done, 0);
  assert_int_equal(mb_access_fill(va.base + 8, 0, 8, NULL), 0);
  assert_int_equal(pthread_create(&t[0], NULL, move_refused_writer, alias + 1), 0);
  assert_int_equal(pthread_create(&t[1], NULL, move_toggler, NULL), 0);
  join_all(t, 2);
  munmap(alias, PAGE);
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
      cmocka_unit_test(test_threads_single_moves),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
