/* access_signals.c: installs the fault handler of access.c (mb_access_init,
 * mb_access_reinstall) and chains faults that are not ours to the handler installed before
 * it, as the kernel would have delivered them.
 *
 * Invariant: mb__prev[i] is written only under mb__install_lock and before our handler is
 * (re)installed, so a handler running on any thread reads a complete action; reinstalling
 * while other threads take chained faults is excluded by contract (mb_access.h).
 */
#include "access_signals.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <ucontext.h>

#include "mb_access.h"

atomic_bool mb__access_ready;

static pthread_once_t mb__once = PTHREAD_ONCE_INIT;
static pthread_mutex_t mb__install_lock = PTHREAD_MUTEX_INITIALIZER;
static int mb__init_rc;
/* The handlers we chain to: [0] SIGSEGV, [1] SIGBUS. */
static struct sigaction mb__prev[2];

/* ---- chaining -------------------------------------------------------------------------- */

/* Restores the default action and takes the signal again: a real fault (si_code > 0) simply
 * re-executes the faulting instruction when we return, keeping its original context for the
 * core dump; a sent signal is re-sent. */
static void retake_default(int sig, const siginfo_t *si) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, NULL);
  if (si->si_code <= 0)
    raise(sig);
}

/* Calls a previous handler function with the mask the kernel would have given it: the
 * interrupted context's mask plus its sa_mask (plus the signal unless SA_NODEFER). Set, not
 * added to ours, because a wrapper may have blocked more around us (ThreadSanitizer blocks
 * every signal), and a handler that faults needs SIGSEGV/SIGBUS as the kernel left them. */
static void call_prev(const struct sigaction *old, int sig, siginfo_t *si, void *uc) {
  sigset_t mask, saved;
  mask = old->sa_mask;
  if (!(old->sa_flags & SA_NODEFER))
    sigaddset(&mask, sig);
  if (uc != NULL) {
    sigorset(&mask, &mask, &((const ucontext_t *)uc)->uc_sigmask);
    pthread_sigmask(SIG_SETMASK, &mask, &saved);
  } else {
    pthread_sigmask(SIG_BLOCK, &mask, &saved);
  }
  if (old->sa_flags & SA_SIGINFO)
    old->sa_sigaction(sig, si, uc);
  else
    old->sa_handler(sig);
  pthread_sigmask(SIG_SETMASK, &saved, NULL);
}

void mb__access_chain(int sig, siginfo_t *si, void *uc) {
  const struct sigaction *old = &mb__prev[sig == SIGBUS];
  int saved_errno = errno;
  /* SIG_DFL/SIG_IGN mean the same with or without SA_SIGINFO (the two fields share
   * storage, a union in glibc and musl). */
  void (*h)(int) = old->sa_handler;
  if (h == SIG_IGN && si->si_code <= 0) {
    /* an ignored sent signal: nothing to do (a real fault cannot be ignored) */
  } else if (h == SIG_DFL || h == SIG_IGN) {
    retake_default(sig, si);
  } else {
    call_prev(old, sig, si, uc);
  }
  errno = saved_errno;
}

/* ---- installation ---------------------------------------------------------------------- */

/* Ours with or without SA_SIGINFO: signal() can reinstall our function without the flag. */
static bool is_ours(const struct sigaction *sa) {
  return sa->sa_sigaction == mb__access_on_fault;
}

/* Installs our handler for sig; what was there before (unless ours) becomes *prev. */
static int install(int sig, struct sigaction *prev) {
  struct sigaction sa, cur;
  if (sigaction(sig, NULL, &cur) != 0)
    return -errno;
  if (!is_ours(&cur))
    *prev = cur; /* before installing: our handler may run at once on another thread */
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = mb__access_on_fault;
  /* SA_NODEFER: the kernel does not block the signal, so after the siglongjmp (which saves
   * and restores no mask) the next fault is delivered too. SA_ONSTACK: run on the thread's
   * alternate stack if it has one, so stack overflows still reach the chained handler. */
  sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  return sigaction(sig, &sa, NULL) == 0 ? 0 : -errno;
}

static int install_both(void) {
  pthread_mutex_lock(&mb__install_lock);
  struct sigaction segv_before;
  sigaction(SIGSEGV, NULL, &segv_before);
  int rc = install(SIGSEGV, &mb__prev[0]);
  if (rc == 0) {
    rc = install(SIGBUS, &mb__prev[1]);
    if (rc != 0)
      sigaction(SIGSEGV, &segv_before, NULL);
  }
  pthread_mutex_unlock(&mb__install_lock);
  return rc;
}

static void init_once(void) {
  mb__init_rc = install_both();
  atomic_store_explicit(&mb__access_ready, mb__init_rc == 0, memory_order_release);
}

int mb_access_init(void) {
  pthread_once(&mb__once, init_once);
  return mb__init_rc;
}

int mb_access_reinstall(void) {
  int rc = mb_access_init();
  return rc != 0 ? rc : install_both();
}
