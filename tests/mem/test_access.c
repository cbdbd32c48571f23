/* test_access.c: fault-tolerant copies on one thread: success paths, precise fault reports
 * for reads, writes and fills that run into PROT_NONE, read-only, unmapped and truncated
 * (SIGBUS) pages, retry after mapping, copies from a signal handler, and chaining of
 * faults that are not ours to the previously installed handler (or the default action, in
 * forked children). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mb_access.h"
#include "mb_range.h"
#include "va_reserve.h"

#define PAGE ((size_t)MB_PAGE_SIZE)

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_HAS_TSAN 1
#endif
#endif
#ifndef TEST_HAS_TSAN
#define TEST_HAS_TSAN 0
#endif

/* cmocka installs its own SIGSEGV/SIGBUS handlers around each test; put ours back first. */
static void begin(void) {
  assert_int_equal(mb_access_reinstall(), 0);
}

/* ---- a guest window: pages 0-1 RW, page 2 PROT_NONE, pages 3-4 RW, 5-7 reserved --------- */

typedef struct window {
  mb_va va;
  int fd;
} window;

static uint8_t pattern(size_t off) {
  return (uint8_t)(off * 13 + off / PAGE);
}

static void window_fill(window *w) {
  for (size_t i = 0; i < 5 * PAGE; i++)
    if (i / PAGE != 2)
      w->va.base[i] = pattern(i);
}

static void window_open(window *w) {
  assert_int_equal(mb_va_reserve(&w->va, 8 * PAGE), 0);
  w->fd = memfd_create("test-access", MFD_CLOEXEC);
  assert_true(w->fd >= 0);
  assert_int_equal(ftruncate(w->fd, 8 * PAGE), 0);
  assert_int_equal(mb_va_map_fd(&w->va, 0, 2 * PAGE, w->fd, 0, true), 0);
  assert_int_equal(mb_va_map_fd(&w->va, 3 * PAGE, 2 * PAGE, w->fd, 3 * PAGE, true), 0);
  window_fill(w);
}

static void window_close(window *w) {
  mb_va_release(&w->va);
  close(w->fd);
}

/* Offsets and lengths chosen to hit the different paths of memcpy/memset (small, vector
 * sized, odd, rep-movsb sized, multi-page) on both sides of a page boundary. */
static const size_t starts[] = {0, 1, 100, PAGE - 64, PAGE + 1, 2 * PAGE - 200, 2 * PAGE - 33,
                                2 * PAGE - 1};
static const size_t extras[] = {1, 7, 31, 32, 33, 63, 64, 65, 200, 1000, PAGE, PAGE + 5};

/* ---- success paths --------------------------------------------------------------------- */

static void test_success(void **state) {
  (void)state;
  begin();
  window w;
  window_open(&w);
  static uint8_t buf[2 * PAGE];
  mb_fault f;
  assert_int_equal(mb_access_read(buf, w.va.base, 2 * PAGE, &f), 0);
  for (size_t i = 0; i < 2 * PAGE; i++)
    assert_int_equal(buf[i], pattern(i));
  memset(buf, 0x5c, sizeof buf);
  assert_int_equal(mb_access_write(w.va.base + 3 * PAGE + 7, buf, PAGE, &f), 0);
  assert_int_equal(w.va.base[3 * PAGE + 7], 0x5c);
  assert_int_equal(w.va.base[4 * PAGE + 6], 0x5c);
  assert_int_equal(w.va.base[4 * PAGE + 7], pattern(4 * PAGE + 7));
  assert_int_equal(mb_access_fill(w.va.base + 10, 0x1ab, 100, &f), 0);
  assert_int_equal(w.va.base[10], 0xab);
  assert_int_equal(w.va.base[109], 0xab);
  assert_int_equal(w.va.base[110], pattern(110));
  /* zero length touches nothing, even on a PROT_NONE page */
  assert_int_equal(mb_access_read(buf, w.va.base + 2 * PAGE, 0, &f), 0);
  assert_int_equal(mb_access_write(w.va.base + 2 * PAGE, buf, 0, NULL), 0);
  assert_int_equal(mb_access_fill(w.va.base + 2 * PAGE, 0, 0, NULL), 0);
  /* a guest range that wraps the address space is invalid */
  assert_int_equal(mb_access_read(buf, (void *)(UINTPTR_MAX - 10), 100, &f), -EINVAL);
  window_close(&w);
}

/* ---- precise faults -------------------------------------------------------------------- */

static void test_read_fault_precise(void **state) {
  (void)state;
  begin();
  window w;
  window_open(&w);
  static uint8_t buf[4 * PAGE];
  for (size_t s = 0; s < sizeof starts / sizeof starts[0]; s++) {
    for (size_t e = 0; e < sizeof extras / sizeof extras[0]; e++) {
      size_t start = starts[s], before = 2 * PAGE - start, n = before + extras[e];
      mb_fault f;
      memset(buf, 0xee, sizeof buf);
      assert_int_equal(mb_access_read(buf, w.va.base + start, n, &f), -EFAULT);
      assert_ptr_equal(f.addr, w.va.base + 2 * PAGE);
      assert_true(f.done == before);
      assert_int_equal(f.signo, SIGSEGV);
      assert_int_equal(f.code, SEGV_ACCERR);
      for (size_t i = 0; i < before; i++)
        if (buf[i] != pattern(start + i))
          fail_msg("start %zu n %zu: byte %zu not copied", start, n, i);
      /* one byte short of the boundary succeeds */
      assert_int_equal(mb_access_read(buf, w.va.base + start, before, &f), 0);
    }
  }
  window_close(&w);
}

static void test_write_fault_precise(void **state) {
  (void)state;
  begin();
  window w;
  window_open(&w);
  static uint8_t src[4 * PAGE];
  memset(src, 0x77, sizeof src);
  for (size_t s = 0; s < sizeof starts / sizeof starts[0]; s++) {
    for (size_t e = 0; e < sizeof extras / sizeof extras[0]; e++) {
      size_t start = starts[s], before = 2 * PAGE - start, n = before + extras[e];
      mb_fault f;
      window_fill(&w);
      assert_int_equal(mb_access_write(w.va.base + start, src, n, &f), -EFAULT);
      assert_ptr_equal(f.addr, w.va.base + 2 * PAGE);
      assert_true(f.done == before);
      assert_int_equal(f.signo, SIGSEGV);
      for (size_t i = 0; i < before; i++)
        if (w.va.base[start + i] != 0x77)
          fail_msg("start %zu n %zu: byte %zu not written", start, n, i);
      if (start > 0)
        assert_int_equal(w.va.base[start - 1], pattern(start - 1));
    }
  }
  window_close(&w);
}

static void test_fill_fault_precise(void **state) {
  (void)state;
  begin();
  window w;
  window_open(&w);
  for (size_t s = 0; s < sizeof starts / sizeof starts[0]; s++) {
    for (size_t e = 0; e < sizeof extras / sizeof extras[0]; e++) {
      size_t start = starts[s], before = 2 * PAGE - start, n = before + extras[e];
      mb_fault f;
      window_fill(&w);
      assert_int_equal(mb_access_fill(w.va.base + start, 0, n, &f), -EFAULT);
      assert_ptr_equal(f.addr, w.va.base + 2 * PAGE);
      assert_true(f.done == before);
      for (size_t i = 0; i < before; i++)
        assert_int_equal(w.va.base[start + i], 0);
    }
  }
  window_close(&w);
}

static void test_fault_at_first_byte(void **state) {
  (void)state;
  begin();
  window w;
  window_open(&w);
  uint8_t buf[3 * PAGE];
  mb_fault f;
  /* starting on the bad page: the start itself is reported, even mid-page */
  assert_int_equal(mb_access_read(buf, w.va.base + 2 * PAGE + 100, 10, &f), -EFAULT);
  assert_ptr_equal(f.addr, w.va.base + 2 * PAGE + 100);
  assert_true(f.done == 0);
  assert_int_equal(mb_access_write(w.va.base + 2 * PAGE, buf, 3 * PAGE, &f), -EFAULT);
  assert_ptr_equal(f.addr, w.va.base + 2 * PAGE);
  assert_true(f.done == 0);
  /* pages 3-4 are fine, page 5 is reserved */
  assert_int_equal(mb_access_read(buf, w.va.base + 3 * PAGE + 5, 2 * PAGE, &f), -EFAULT);
  assert_ptr_equal(f.addr, w.va.base + 5 * PAGE);
  assert_true(f.done == 2 * PAGE - 5);
  window_close(&w);
}

static void test_large_copy_fault_near_end(void **state) {
  (void)state;
  begin();
  enum { PAGES = 300, BAD = 257 };
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, PAGES * PAGE), 0);
  assert_int_equal(mb_va_map_anon(&va, 0, PAGES * PAGE, true), 0);
  assert_int_equal(mb_va_unmap(&va, BAD * PAGE, PAGE), 0);
  uint8_t *buf = malloc(PAGES * PAGE);
  assert_non_null(buf);
  for (size_t i = 0; i < BAD * PAGE; i++)
    va.base[i] = (uint8_t)(i ^ (i >> 9));
  mb_fault f;
  assert_int_equal(mb_access_read(buf, va.base + 3, PAGES * PAGE - 3, &f), -EFAULT);
  assert_ptr_equal(f.addr, va.base + BAD * PAGE);
  assert_true(f.done == BAD * PAGE - 3);
  for (size_t i = 0; i < f.done; i++)
    if (buf[i] != (uint8_t)((i + 3) ^ ((i + 3) >> 9)))
      fail_msg("byte %zu not copied", i);
  free(buf);
  mb_va_release(&va);
}

static void test_read_only_write(void **state) {
  (void)state;
  begin();
  window w;
  window_open(&w);
  assert_int_equal(mb_va_protect(&w.va, 4 * PAGE, PAGE, false), 0);
  uint8_t src[2 * PAGE];
  memset(src, 0x42, sizeof src);
  mb_fault f;
  assert_int_equal(mb_access_write(w.va.base + 3 * PAGE + 10, src, 2 * PAGE, &f), -EFAULT);
  assert_ptr_equal(f.addr, w.va.base + 4 * PAGE);
  assert_true(f.done == PAGE - 10);
  assert_int_equal(f.signo, SIGSEGV);
  assert_int_equal(f.code, SEGV_ACCERR);
  assert_int_equal(w.va.base[4 * PAGE - 1], 0x42);
  for (size_t i = 0; i < PAGE; i++)
    assert_int_equal(w.va.base[4 * PAGE + i], pattern(4 * PAGE + i)); /* untouched */
  /* reading a read-only page is fine */
  assert_int_equal(mb_access_read(src, w.va.base + 4 * PAGE, PAGE, &f), 0);
  window_close(&w);
}

static void test_unmapped_hole_maperr(void **state) {
  (void)state;
  begin();
  /* outside any reservation: a real hole gives SEGV_MAPERR */
  uint8_t *p = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                    0);
  assert_true(p != MAP_FAILED);
  assert_int_equal(munmap(p + PAGE, PAGE), 0);
  uint8_t buf[3 * PAGE];
  mb_fault f;
  assert_int_equal(mb_access_read(buf, p + 20, 2 * PAGE, &f), -EFAULT);
  assert_ptr_equal(f.addr, p + PAGE);
  assert_int_equal(f.code, SEGV_MAPERR);
  munmap(p, PAGE);
  munmap(p + 2 * PAGE, PAGE);
}

static void test_sigbus_truncated(void **state) {
  (void)state;
  begin();
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 4 * PAGE), 0);
  int fd = memfd_create("test-sigbus", MFD_CLOEXEC);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, 3 * PAGE), 0);
  assert_int_equal(mb_va_map_fd(&va, 0, 3 * PAGE, fd, 0, true), 0);
  memset(va.base, 0x31, 3 * PAGE);
  assert_int_equal(ftruncate(fd, PAGE), 0); /* pages 1-2 are now beyond the end of the file */
  uint8_t buf[3 * PAGE];
  mb_fault f;
  assert_int_equal(mb_access_read(buf, va.base + 64, 2 * PAGE, &f), -EFAULT);
  assert_ptr_equal(f.addr, va.base + PAGE);
  assert_true(f.done == PAGE - 64);
  assert_int_equal(f.signo, SIGBUS);
  assert_int_equal(f.code, BUS_ADRERR);
  assert_int_equal(buf[0], 0x31);
  assert_int_equal(buf[PAGE - 65], 0x31);
  assert_int_equal(mb_access_fill(va.base + 2 * PAGE, 1, 8, &f), -EFAULT);
  assert_int_equal(f.signo, SIGBUS);
  assert_ptr_equal(f.addr, va.base + 2 * PAGE);
  /* growing the file back makes the pages usable again (zero-filled) */
  assert_int_equal(ftruncate(fd, 3 * PAGE), 0);
  assert_int_equal(mb_access_read(buf, va.base, 3 * PAGE, &f), 0);
  assert_int_equal(buf[PAGE], 0);
  mb_va_release(&va);
  close(fd);
}

/* What a lazy mapper does: on a fault, map the reported page and retry from there. */
static void test_fault_then_map_and_retry(void **state) {
  (void)state;
  begin();
  enum { PAGES = 16 };
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, PAGES * PAGE), 0);
  int fd = memfd_create("test-retry", MFD_CLOEXEC);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, PAGES * PAGE), 0);
  static uint8_t src[PAGES * PAGE], back[PAGES * PAGE];
  for (size_t i = 0; i < sizeof src; i++)
    src[i] = (uint8_t)(i * 31 + 5);
  size_t done = 0;
  int faults = 0;
  while (done < sizeof src) {
    mb_fault f;
    int rc = mb_access_write(va.base + done, src + done, sizeof src - done, &f);
    if (rc == 0)
      break;
    assert_int_equal(rc, -EFAULT);
    assert_true(f.done % PAGE == 0);
    done += f.done;
    assert_ptr_equal(f.addr, va.base + done);
    assert_int_equal(mb_va_map_fd(&va, done, PAGE, fd, done, true), 0);
    faults++;
  }
  assert_int_equal(faults, PAGES);
  assert_int_equal(mb_access_read(back, va.base, sizeof back, NULL), 0);
  assert_memory_equal(back, src, sizeof src);
  mb_va_release(&va);
  close(fd);
}

/* ---- copies from a signal handler -------------------------------------------------------- */

static uint8_t *volatile usr_guest;
static volatile int usr_bad_rc, usr_good_rc;
static void *volatile usr_fault_addr;

static void on_usr1(int sig) {
  (void)sig;
  uint8_t buf[64];
  mb_fault f;
#if defined(__SANITIZE_THREAD__) || TEST_HAS_TSAN
  /* ThreadSanitizer runs every handler with all signals blocked, whatever its sa_mask; a
   * fault with SIGSEGV blocked kills the process, so a copy here needs them unblocked (as
   * mb_access.h says for any handler whose mask blocks them). */
  sigset_t faults;
  sigemptyset(&faults);
  sigaddset(&faults, SIGSEGV);
  sigaddset(&faults, SIGBUS);
  pthread_sigmask(SIG_UNBLOCK, &faults, NULL);
#endif
  usr_bad_rc = mb_access_read(buf, usr_guest + PAGE - 8, 64, &f);
  usr_fault_addr = f.addr;
  usr_good_rc = mb_access_read(buf, usr_guest, 64, NULL);
}

static void test_copy_in_signal_handler(void **state) {
  (void)state;
  begin();
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 2 * PAGE), 0);
  assert_int_equal(mb_va_map_anon(&va, 0, PAGE, true), 0);
  usr_guest = va.base;
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sigemptyset(&sa.sa_mask);
  assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
  assert_int_equal(raise(SIGUSR1), 0);
  assert_int_equal(usr_bad_rc, -EFAULT);
  assert_ptr_equal(usr_fault_addr, va.base + PAGE);
  assert_int_equal(usr_good_rc, 0);
  sigaction(SIGUSR1, &old, NULL);
  mb_va_release(&va);
}

/* ---- chaining to the previous handler ------------------------------------------------------ */

static sigjmp_buf prev_env;
static volatile int prev_calls, prev_signo, prev_nested_rc;
static void *volatile prev_addr;
static uint8_t *volatile prev_nested_guest;
static volatile int prev_usr2_blocked, prev_segv_blocked;

static void record_mask(void) {
  sigset_t cur;
  pthread_sigmask(SIG_BLOCK, NULL, &cur);
  prev_usr2_blocked = sigismember(&cur, SIGUSR2);
  prev_segv_blocked = sigismember(&cur, SIGSEGV);
}

static void prev_info_handler(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  prev_calls++;
  prev_signo = sig;
  prev_addr = si->si_addr;
  record_mask();
  if (prev_nested_guest != NULL) { /* a copy from inside the chained handler still works */
    static uint8_t buf[8];
    prev_nested_rc = mb_access_read(buf, prev_nested_guest, sizeof buf, NULL);
  }
  siglongjmp(prev_env, 1);
}

static void prev_plain_handler(int sig) {
  prev_calls++;
  prev_signo = sig;
  record_mask();
  siglongjmp(prev_env, 1);
}

/* Installs h (or plain) as the "previous" handler for sig, then ours in front of it. */
static void install_prev(int sig, void (*h)(int, siginfo_t *, void *), void (*plain)(int),
                         int flags) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGUSR2);
  sa.sa_flags = flags;
  if (h != NULL) {
    sa.sa_sigaction = h;
    sa.sa_flags |= SA_SIGINFO;
  } else {
    sa.sa_handler = plain;
  }
  assert_int_equal(sigaction(sig, &sa, NULL), 0);
  assert_int_equal(mb_access_reinstall(), 0);
  prev_calls = 0;
  prev_signo = 0;
  prev_addr = NULL;
  prev_nested_guest = NULL;
  prev_nested_rc = 1;
}

static void touch(const void *p) {
  (void)*(const volatile uint8_t *)p;
}

static void test_chain_fault_outside_copy(void **state) {
  (void)state;
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 2 * PAGE), 0);
  install_prev(SIGSEGV, prev_info_handler, NULL, 0);
  if (sigsetjmp(prev_env, 1) == 0) {
    touch(va.base + 123);
    fail_msg("the fault did not reach the previous handler");
  }
  assert_int_equal(prev_calls, 1);
  assert_int_equal(prev_signo, SIGSEGV);
  assert_ptr_equal(prev_addr, va.base + 123);
  assert_true(prev_usr2_blocked); /* called with its own sa_mask */
  assert_true(prev_segv_blocked); /* and its signal blocked (no SA_NODEFER) */
  /* faults inside a copy do not reach it */
  uint8_t b;
  assert_int_equal(mb_access_read(&b, va.base, 1, NULL), -EFAULT);
  assert_int_equal(prev_calls, 1);
  mb_va_release(&va);
}

static void test_chain_plain_handler(void **state) {
  (void)state;
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, PAGE), 0);
  install_prev(SIGSEGV, NULL, prev_plain_handler, 0);
  if (sigsetjmp(prev_env, 1) == 0) {
    touch(va.base);
    fail_msg("the fault did not reach the previous handler");
  }
  assert_int_equal(prev_calls, 1);
  assert_int_equal(prev_signo, SIGSEGV);
  /* a sent SIGSEGV is not ours either, even during no copy */
  if (sigsetjmp(prev_env, 1) == 0) {
    raise(SIGSEGV);
    fail_msg("the sent signal did not reach the previous handler");
  }
  assert_int_equal(prev_calls, 2);
  mb_va_release(&va);
}

static void test_chain_host_side_fault(void **state) {
  (void)state;
  window w;
  window_open(&w);
  /* SA_NODEFER: a handler that itself faults (here inside a copy) needs SIGSEGV unblocked,
   * exactly as without membacking */
  install_prev(SIGSEGV, prev_info_handler, NULL, SA_NODEFER);
  prev_nested_guest = w.va.base + 2 * PAGE;
  /* the host buffer is bad: that is a bug in the caller, not a guest fault */
  uint8_t *bad_host = w.va.base + 6 * PAGE;
  if (sigsetjmp(prev_env, 1) == 0) {
    mb_access_read(bad_host, w.va.base, 100, NULL);
    fail_msg("the host-side fault did not reach the previous handler");
  }
  assert_int_equal(prev_calls, 1);
  assert_ptr_equal(prev_addr, bad_host);
  assert_int_equal(prev_nested_rc, -EFAULT); /* the nested guest fault was ours */
  /* the abandoned copy left no stale recovery point behind */
  uint8_t buf[2 * PAGE];
  mb_fault f;
  assert_int_equal(mb_access_read(buf, w.va.base + PAGE, 2 * PAGE, &f), -EFAULT);
  assert_ptr_equal(f.addr, w.va.base + 2 * PAGE);
  prev_nested_guest = NULL;
  if (sigsetjmp(prev_env, 1) == 0) {
    touch(w.va.base + 2 * PAGE);
    fail_msg("the fault did not reach the previous handler");
  }
  assert_int_equal(prev_calls, 2);
  window_close(&w);
}

static void test_chain_sigbus(void **state) {
  (void)state;
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 2 * PAGE), 0);
  int fd = memfd_create("test-chain-bus", MFD_CLOEXEC);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, 2 * PAGE), 0);
  assert_int_equal(mb_va_map_fd(&va, 0, 2 * PAGE, fd, 0, true), 0);
  assert_int_equal(ftruncate(fd, 0), 0);
  install_prev(SIGBUS, prev_info_handler, NULL, 0);
  if (sigsetjmp(prev_env, 1) == 0) {
    touch(va.base + PAGE + 1);
    fail_msg("SIGBUS did not reach the previous handler");
  }
  assert_int_equal(prev_calls, 1);
  assert_int_equal(prev_signo, SIGBUS);
  assert_ptr_equal(prev_addr, va.base + PAGE + 1);
  mb_va_release(&va);
  close(fd);
}

/* ---- default actions, in forked children ----------------------------------------------- */

static void set_action(int sig, void (*h)(int)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = h;
  sigemptyset(&sa.sa_mask);
  if (sigaction(sig, &sa, NULL) != 0)
    _exit(90);
}

/* In a child: make `h` the previous handler of sig, check our copies still work, then
 * fault outside a copy (or send the signal). The child exits 0 only if it survives. */
static void child_scenario(int sig, void (*h)(int), int send) {
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  set_action(sig, h);
  if (mb_access_reinstall() != 0)
    _exit(91);
  uint8_t *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    _exit(92);
  if (sig == SIGBUS) {
    int fd = memfd_create("child", 0);
    if (fd < 0 || ftruncate(fd, PAGE) != 0)
      _exit(93);
    p = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED || ftruncate(fd, 0) != 0)
      _exit(94);
  } else if (mprotect(p, PAGE, PROT_NONE) != 0) {
    _exit(95);
  }
  uint8_t b;
  mb_fault f;
  if (mb_access_read(&b, p, 1, &f) != -EFAULT || f.signo != sig)
    _exit(96);
  if (send)
    raise(sig);
  else
    touch(p);
  _exit(0);
}

/* Runs child_scenario in a child; returns its wait status. */
static int run_child(int sig, void (*h)(int), int send) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0)
    child_scenario(sig, h, send);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return status;
}

static void expect_killed_by(int status, int sig) {
  if (!WIFSIGNALED(status))
    fail_msg("child exited with %d, expected death by signal %d",
             WIFEXITED(status) ? WEXITSTATUS(status) : -1, sig);
  assert_int_equal(WTERMSIG(status), sig);
}

static void test_default_action_kills(void **state) {
  (void)state;
  expect_killed_by(run_child(SIGSEGV, SIG_DFL, 0), SIGSEGV);
  expect_killed_by(run_child(SIGBUS, SIG_DFL, 0), SIGBUS);
  /* a real fault cannot be ignored: SIG_IGN behaves like SIG_DFL */
  expect_killed_by(run_child(SIGSEGV, SIG_IGN, 0), SIGSEGV);
  /* a sent signal takes the default action too */
  expect_killed_by(run_child(SIGSEGV, SIG_DFL, 1), SIGSEGV);
}

static void test_ignored_sent_signal(void **state) {
  (void)state;
  int status = run_child(SIGSEGV, SIG_IGN, 1);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_success),
      cmocka_unit_test(test_read_fault_precise),
      cmocka_unit_test(test_write_fault_precise),
      cmocka_unit_test(test_fill_fault_precise),
      cmocka_unit_test(test_fault_at_first_byte),
      cmocka_unit_test(test_large_copy_fault_near_end),
      cmocka_unit_test(test_read_only_write),
      cmocka_unit_test(test_unmapped_hole_maperr),
      cmocka_unit_test(test_sigbus_truncated),
      cmocka_unit_test(test_fault_then_map_and_retry),
      cmocka_unit_test(test_copy_in_signal_handler),
      cmocka_unit_test(test_chain_fault_outside_copy),
      cmocka_unit_test(test_chain_plain_handler),
      cmocka_unit_test(test_chain_host_side_fault),
      cmocka_unit_test(test_chain_sigbus),
      cmocka_unit_test(test_default_action_kills),
      cmocka_unit_test(test_ignored_sent_signal),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
