/* access.c: fault-tolerant guest copies (see access.h): the per-thread recovery point, the
 * SIGSEGV/SIGBUS handler and its chaining, and the search for the precise fault address.
 *
 * Invariant: mb__cur is the innermost copy running on this thread, or NULL. It is set only
 * around the copy itself (after sigsetjmp, before memcpy/memset; signal fences keep the
 * compiler from moving the copy outside), so a fault the handler sees while mb__cur != NULL
 * and inside [lo, lo + len) happened in that copy's guest side, whose frame is live: the
 * siglongjmp is safe. Copies made from a signal handler push themselves via `prev`.
 */
#include "access.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include "mb_range.h"

/* One attempt at a copy; lives in the frame of attempt(). */
struct mb__recover {
  sigjmp_buf jb;
  uintptr_t lo; /* guest side of this attempt: [lo, lo + len) */
  size_t len;
  struct mb__recover *prev;
  /* set by the handler before it jumps: */
  uintptr_t addr;
  int signo, code;
  bool have_mask;
  sigset_t mask; /* the signal mask when the fault happened */
};

/* One whole copy: dst <- src, or dst <- byte when fill; guest is the guest side. */
struct mb__job {
  unsigned char *dst;
  const unsigned char *src;
  int byte;
  bool fill;
  uintptr_t guest;
};

/* initial-exec: a plain %fs-relative access, cheap and async-signal-safe (a dynamic TLS
 * access from a handler could allocate). */
static _Thread_local struct mb__recover *mb__cur __attribute__((tls_model("initial-exec")));

static pthread_once_t mb__once = PTHREAD_ONCE_INIT;
static pthread_mutex_t mb__install_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_bool mb__ready;
static int mb__init_rc;
/* The handlers we chain to: [0] SIGSEGV, [1] SIGBUS. Written under mb__install_lock before
 * our handler is installed, read by the handler. */
static struct sigaction mb__prev[2];

/* ---- chaining -------------------------------------------------------------------------- */

/* Restores the default action and takes the signal again: a real fault (si_code > 0) simply
 * re-executes the faulting instruction when we return, keeping its original context for the
 * core dump; a sent signal is re-sent. */
static void mb__retake_default(int sig, const siginfo_t *si) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, NULL);
  if (si->si_code <= 0)
    raise(sig);
}

/* Calls a previous handler function as the kernel would have: with its sa_mask (and the
 * signal itself unless SA_NODEFER) blocked for the duration. */
static void mb__call_prev(const struct sigaction *old, int sig, siginfo_t *si, void *uc) {
  sigset_t mask, saved;
  mask = old->sa_mask;
  if (!(old->sa_flags & SA_NODEFER))
    sigaddset(&mask, sig);
  pthread_sigmask(SIG_BLOCK, &mask, &saved);
  if (old->sa_flags & SA_SIGINFO)
    old->sa_sigaction(sig, si, uc);
  else
    old->sa_handler(sig);
  pthread_sigmask(SIG_SETMASK, &saved, NULL);
}

static void mb__chain(int sig, siginfo_t *si, void *uc) {
  const struct sigaction *old = &mb__prev[sig == SIGBUS];
  int saved_errno = errno;
  /* The previous handler may jump out of our copy: leave only live recovery points. */
  struct mb__recover *cur = mb__cur;
  if (cur != NULL)
    mb__cur = cur->prev;
  /* SIG_DFL/SIG_IGN mean the same with or without SA_SIGINFO (the two fields share
   * storage, a union in glibc and musl). */
  void (*h)(int) = old->sa_handler;
  if (h == SIG_IGN && si->si_code <= 0) {
    /* an ignored sent signal: nothing to do (a real fault cannot be ignored) */
  } else if (h == SIG_DFL || h == SIG_IGN) {
    mb__retake_default(sig, si);
  } else {
    mb__call_prev(old, sig, si, uc);
  }
  mb__cur = cur;
  errno = saved_errno;
}

static void mb__on_fault(int sig, siginfo_t *si, void *uc) {
  struct mb__recover *r = mb__cur;
  if (r != NULL && si->si_code > 0) {
    uintptr_t a = (uintptr_t)si->si_addr;
    if (a - r->lo < r->len) {
      r->addr = a;
      r->signo = sig;
      r->code = si->si_code;
      r->have_mask = uc != NULL;
      if (uc != NULL)
        r->mask = ((const ucontext_t *)uc)->uc_sigmask;
      siglongjmp(r->jb, 1);
    }
  }
  mb__chain(sig, si, uc);
}

/* ---- installation ---------------------------------------------------------------------- */

static bool mb__is_ours(const struct sigaction *sa) {
  /* sa_handler and sa_sigaction share storage (a union in glibc and musl). */
  return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == mb__on_fault;
}

/* Installs our handler for sig; what was there before (unless ours) becomes *prev. */
static int mb__install(int sig, struct sigaction *prev) {
  struct sigaction sa, cur;
  if (sigaction(sig, NULL, &cur) != 0)
    return -errno;
  if (!mb__is_ours(&cur))
    *prev = cur; /* before installing: our handler may run at once on another thread */
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = mb__on_fault;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  return sigaction(sig, &sa, NULL) == 0 ? 0 : -errno;
}

static int mb__install_both(void) {
  pthread_mutex_lock(&mb__install_lock);
  struct sigaction segv_before;
  sigaction(SIGSEGV, NULL, &segv_before);
  int rc = mb__install(SIGSEGV, &mb__prev[0]);
  if (rc == 0) {
    rc = mb__install(SIGBUS, &mb__prev[1]);
    if (rc != 0)
      sigaction(SIGSEGV, &segv_before, NULL);
  }
  pthread_mutex_unlock(&mb__install_lock);
  return rc;
}

static void mb__init_once(void) {
  mb__init_rc = mb__install_both();
  atomic_store_explicit(&mb__ready, mb__init_rc == 0, memory_order_release);
}

int mb_access_init(void) {
  pthread_once(&mb__once, mb__init_once);
  return mb__init_rc;
}

int mb_access_reinstall(void) {
  int rc = mb_access_init();
  return rc != 0 ? rc : mb__install_both();
}

/* ---- copies ---------------------------------------------------------------------------- */

/* Back from the handler: pop the recovery point and restore the mask the copy ran with.
 * sigsetjmp(.., 0) saved no mask (that would be a system call per copy); SA_NODEFER keeps
 * the kernel from blocking the signal, but a wrapper around our handler may block more
 * (ThreadSanitizer runs handlers with every signal blocked), so the fault path, slow
 * anyway, puts the interrupted context's mask back explicitly. */
static int landed(struct mb__recover *r) {
  mb__cur = r->prev;
  if (r->have_mask)
    pthread_sigmask(SIG_SETMASK, &r->mask, NULL);
  return -EFAULT;
}

/* Runs bytes [off, off + n) of the job under a recovery point. 0, or -EFAULT with r->addr,
 * r->signo, r->code describing the fault. Only r is used after a jump, and r is not
 * modified between sigsetjmp and the jump, so nothing needs to be volatile. */
static int attempt(struct mb__recover *r, const struct mb__job *j, size_t off, size_t n) {
  r->lo = j->guest + off;
  r->len = n;
  r->prev = mb__cur;
  if (sigsetjmp(r->jb, 0) != 0)
    return landed(r);
  mb__cur = r;
  atomic_signal_fence(memory_order_seq_cst);
  if (j->fill)
    memset(j->dst + off, j->byte, n);
  else
    memcpy(j->dst + off, j->src + off, n);
  atomic_signal_fence(memory_order_seq_cst);
  mb__cur = r->prev;
  return 0;
}

static size_t min_size(size_t a, size_t b) {
  return a < b ? a : b;
}

/* After a whole-copy attempt faulted: finds the first inaccessible guest byte, copying
 * everything before it. Access rights are per page, so it copies up to the faulting page in
 * one piece, then that page alone; if the page turns out accessible (mapped meanwhile) it
 * goes on. Each round either advances `done` or moves the fault to an earlier page. */
static int locate_fault(struct mb__recover *r, const struct mb__job *j, size_t n,
                        mb_fault *f) {
  size_t done = 0;
  for (;;) {
    /* [0, done) is copied; the last attempt faulted at r->addr >= guest + done. */
    uintptr_t page = r->addr & ~(uintptr_t)MB_PAGE_MASK;
    if (page > j->guest + done) {
      if (attempt(r, j, done, page - j->guest - done) != 0)
        continue;
      done = page - j->guest;
    }
    size_t in_page = MB_PAGE_SIZE - ((j->guest + done) & MB_PAGE_MASK);
    size_t piece = min_size(n - done, in_page);
    if (attempt(r, j, done, piece) != 0)
      break;
    done += piece;
    if (done == n || attempt(r, j, done, n - done) == 0)
      return 0;
  }
  if (f != NULL) {
    f->addr = (void *)(j->guest + done);
    f->done = done;
    f->signo = r->signo;
    f->code = r->code;
  }
  return -EFAULT;
}

static int run(const struct mb__job *j, size_t n, mb_fault *f) {
  if (!atomic_load_explicit(&mb__ready, memory_order_acquire)) {
    int rc = mb_access_init();
    if (rc != 0)
      return rc;
  }
  if (n == 0)
    return 0;
  if (n - 1 > UINTPTR_MAX - j->guest)
    return -EINVAL;
  struct mb__recover r;
  if (attempt(&r, j, 0, n) == 0)
    return 0;
  return locate_fault(&r, j, n, f);
}

int mb_access_read(void *dst, const void *guest_src, size_t n, mb_fault *f) {
  struct mb__job j = {dst, guest_src, 0, false, (uintptr_t)guest_src};
  return run(&j, n, f);
}

int mb_access_write(void *guest_dst, const void *src, size_t n, mb_fault *f) {
  struct mb__job j = {guest_dst, src, 0, false, (uintptr_t)guest_dst};
  return run(&j, n, f);
}

int mb_access_fill(void *guest_dst, int byte, size_t n, mb_fault *f) {
  struct mb__job j = {guest_dst, NULL, byte, true, (uintptr_t)guest_dst};
  return run(&j, n, f);
}
