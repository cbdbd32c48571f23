/* access.c: fault-tolerant guest copies (see mb_access.h): the per-thread recovery point, the
 * fault handler's check "is this fault inside the current copy", the copies themselves and
 * the search for the precise fault address. Installing the handler and chaining the faults
 * that are not ours live in access_signals.c.
 *
 * Invariant: mb__cur is the innermost copy running on this thread, or NULL. It is set only
 * around the copy itself (after sigsetjmp, before memcpy/memset; signal fences keep the
 * compiler from moving the copy outside), so a fault the handler sees while mb__cur != NULL
 * and inside [lo, lo + len) happened in that copy's guest side, whose frame is live: the
 * siglongjmp is safe. Copies made from a signal handler push themselves via `prev`.
 */
#include "mb_access.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include "access_signals.h"
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

/* One whole copy. READ: guest src -> host dst; WRITE: host src -> guest dst; FILL: byte ->
 * guest dst. guest is the guest-side address. */
enum mb__op { MB__READ, MB__WRITE, MB__FILL, MB__PROBE_READ, MB__PROBE_WRITE };
struct mb__job {
  enum mb__op op;
  unsigned char *dst;
  const unsigned char *src;
  int byte;
  uintptr_t guest;
};

/* initial-exec: a plain %fs-relative access, cheap and async-signal-safe (a dynamic TLS
 * access from a handler could allocate). */
static _Thread_local struct mb__recover *mb__cur __attribute__((tls_model("initial-exec")));

/* Whether the fault path must put the signal mask back after jumping out of the handler.
 * Our handler runs with SA_NODEFER and an empty sa_mask, so the kernel blocks nothing and
 * the interrupted context's mask is still in force after siglongjmp; ThreadSanitizer,
 * however, runs handlers with every signal blocked. */
#if defined(__SANITIZE_THREAD__)
#define MB__RESTORE_MASK true
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MB__RESTORE_MASK true
#endif
#endif
#ifndef MB__RESTORE_MASK
#define MB__RESTORE_MASK false
#endif

/* ---- the handler ----------------------------------------------------------------------- */

void mb__access_on_fault(int sig, siginfo_t *si, void *uc) {
  struct mb__recover *r = mb__cur;
  if (r != NULL && si->si_code > 0) { /* si_code <= 0: sent by a process, not a fault */
    uintptr_t a = (uintptr_t)si->si_addr;
    if (a - r->lo < r->len) {
      r->addr = a;
      r->signo = sig;
      r->code = si->si_code;
      r->have_mask = uc != NULL && MB__RESTORE_MASK;
      if (uc != NULL)
        r->mask = ((const ucontext_t *)uc)->uc_sigmask;
      siglongjmp(r->jb, 1);
    }
  }
  /* Not ours. The previous handler may jump out of the copy (if any): while it runs, only
   * the recovery points below this one are live. */
  mb__cur = r != NULL ? r->prev : NULL;
  mb__access_chain(sig, si, uc);
  mb__cur = r;
}

/* ---- the copy itself ------------------------------------------------------------------- */

/* A probe touches one byte in each page of the guest range [p, p + n), as the guest's CPU
 * would: a load, or for a write a locked OR of zero, a store that changes nothing even while
 * the guest stores to the same byte. Inline assembly on x86-64: neither the compiler nor a
 * sanitizer turns it into anything else. */
static inline void mb__probe(uintptr_t p, size_t n, bool write) {
  uintptr_t end = p + n;
  for (uintptr_t a = p; a < end; a = (a & ~(uintptr_t)MB_PAGE_MASK) + MB_PAGE_SIZE) {
#if defined(__x86_64__)
    if (write)
      __asm__ volatile("lock orb $0, %0" : "+m"(*(unsigned char *)a)::"memory");
    else /* the load itself in assembly: a C load would be instrumented under TSan */
      __asm__ volatile("movb %0, %%al" ::"m"(*(const unsigned char *)a) : "al", "memory");
#else
    if (write)
      __atomic_fetch_or((unsigned char *)a, 0, __ATOMIC_RELAXED);
    else
      (void)*(volatile unsigned char *)a;
#endif
  }
}

#if defined(__SANITIZE_THREAD__)
#define MB__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MB__TSAN 1
#endif
#endif

#ifdef MB__TSAN
#define MB__GUEST_SIDE __attribute__((no_sanitize_thread))
#else
#define MB__GUEST_SIDE
#endif

/* ---- one move: a naturally aligned access of 1, 2, 4 or 8 bytes ---------------------------- */

static inline uint64_t mb__host_get(const unsigned char *p, size_t n) {
  uint16_t h;
  uint32_t w;
  uint64_t d;
  switch (n) {
  case 1: return *p;
  case 2: __builtin_memcpy(&h, p, 2); return h;
  case 4: __builtin_memcpy(&w, p, 4); return w;
  default: __builtin_memcpy(&d, p, 8); return d;
  }
}

static inline void mb__host_put(unsigned char *p, uint64_t v, size_t n) {
  uint16_t h = (uint16_t)v;
  uint32_t w = (uint32_t)v;
  switch (n) {
  case 1: *p = (unsigned char)v; break;
  case 2: __builtin_memcpy(p, &h, 2); break;
  case 4: __builtin_memcpy(p, &w, 4); break;
  default: __builtin_memcpy(p, &v, 8); break;
  }
}

/* The guest side: one volatile load or store of the access's width (aligned, so one
 * instruction; uninstrumented under TSan like the rest of the guest side). */
static inline MB__GUEST_SIDE uint64_t mb__guest_load(uintptr_t g, size_t n) {
  switch (n) {
  case 1: return *(const volatile uint8_t *)g;
  case 2: return *(const volatile uint16_t *)g;
  case 4: return *(const volatile uint32_t *)g;
  default: return *(const volatile uint64_t *)g;
  }
}

static inline MB__GUEST_SIDE void mb__guest_store(uintptr_t g, uint64_t v, size_t n) {
  switch (n) {
  case 1: *(volatile uint8_t *)g = (uint8_t)v; break;
  case 2: *(volatile uint16_t *)g = (uint16_t)v; break;
  case 4: *(volatile uint32_t *)g = (uint32_t)v; break;
  default: *(volatile uint64_t *)g = v; break;
  }
}

/* A naturally aligned guest access of 1, 2, 4 or 8 bytes is one load or one store, as the
 * guest's own instruction would be: it lands whole or not at all, also when it races a
 * protection change or an unmap, and a concurrent reader sees the old value or the new one
 * (a device model's ring index, say). false: not such an access. Not for probes. */
static inline MB__GUEST_SIDE bool mb__one_move(const struct mb__job *j, size_t off, size_t n) {
  uintptr_t g = j->guest + off;
  if (n > 8 || (n & (n - 1)) != 0 || (g & (n - 1)) != 0)
    return false;
  if (j->op == MB__READ)
    mb__host_put(j->dst + off, mb__guest_load(g, n), n);
  else if (j->op == MB__FILL)
    mb__guest_store(g, 0x0101010101010101ull * (unsigned char)j->byte, n);
  else
    mb__guest_store(g, mb__host_get(j->src + off, n), n);
  return true;
}

#ifndef MB__TSAN
static inline void mb__copy(const struct mb__job *j, size_t off, size_t n) {
  if (j->op >= MB__PROBE_READ)
    mb__probe(j->guest + off, n, j->op == MB__PROBE_WRITE);
  else if (mb__one_move(j, off, n))
    return;
  else if (j->op == MB__FILL)
    memset(j->dst + off, j->byte, n);
  else
    memcpy(j->dst + off, j->src + off, n);
}

static inline void mb__annotate_host(const struct mb__job *j, size_t n) {
  (void)j;
  (void)n;
}
#else
/* Under ThreadSanitizer the guest side is not instrumented. Guest memory is shared with the
 * guest and with concurrent map/unmap calls by design (a copy that races an unmap faults and
 * is retried), so every such race would be reported; and TSan's memcpy interceptor would
 * see the fault inside the runtime. The host side is still checked: mb__annotate_host
 * reports the whole host buffer as accessed. The volatile loop keeps the compiler from
 * turning it back into an (intercepted) memcpy call; speed does not matter here. */
void __tsan_read_range(void *addr, unsigned long size);
void __tsan_write_range(void *addr, unsigned long size);

__attribute__((no_sanitize_thread, noinline)) static void
mb__copy(const struct mb__job *j, size_t off, size_t n) {
  if (j->op >= MB__PROBE_READ) {
    mb__probe(j->guest + off, n, j->op == MB__PROBE_WRITE);
    return;
  }
  if (mb__one_move(j, off, n))
    return;
  volatile unsigned char *d = j->dst + off;
  const volatile unsigned char *s = j->src + off;
  for (size_t i = 0; i < n; i++)
    d[i] = j->op == MB__FILL ? (unsigned char)j->byte : s[i];
}

static void mb__annotate_host(const struct mb__job *j, size_t n) {
  if (j->op == MB__READ)
    __tsan_write_range(j->dst, n);
  else if (j->op == MB__WRITE)
    __tsan_read_range((void *)j->src, n);
}
#endif

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
  mb__copy(j, off, n);
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
__attribute__((noinline, cold)) static int locate_fault(struct mb__recover *r,
                                                       const struct mb__job *j, size_t n,
                                                       mb_fault *f) {
  size_t done = 0;
  /* A copy within one page that faulted: that page is the fault (rights are per page). */
  if (n <= MB_PAGE_SIZE - (j->guest & MB_PAGE_MASK))
    goto report;
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
report:
  if (f != NULL) {
    f->addr = (void *)(j->guest + done);
    f->done = done;
    f->signo = r->signo;
    f->code = r->code;
  }
  return -EFAULT;
}

/* The fast path is: two checks, attempt() (sigsetjmp, two TLS stores, memcpy) and return;
 * everything else is out of line. */
static inline int run(const struct mb__job *j, size_t n, mb_fault *f) {
  if (!atomic_load_explicit(&mb__access_ready, memory_order_acquire)) {
    int rc = mb_access_init();
    if (rc != 0)
      return rc;
  }
  if (n == 0)
    return 0;
  if (n - 1 > UINTPTR_MAX - j->guest)
    return -EINVAL;
  mb__annotate_host(j, n);
  struct mb__recover r;
  if (attempt(&r, j, 0, n) == 0)
    return 0;
  return locate_fault(&r, j, n, f);
}

int mb_access_read(void *dst, const void *guest_src, size_t n, mb_fault *f) {
  struct mb__job j = {MB__READ, dst, guest_src, 0, (uintptr_t)guest_src};
  return run(&j, n, f);
}

int mb_access_write(void *guest_dst, const void *src, size_t n, mb_fault *f) {
  struct mb__job j = {MB__WRITE, guest_dst, src, 0, (uintptr_t)guest_dst};
  return run(&j, n, f);
}

int mb_access_fill(void *guest_dst, int byte, size_t n, mb_fault *f) {
  struct mb__job j = {MB__FILL, guest_dst, NULL, byte, (uintptr_t)guest_dst};
  return run(&j, n, f);
}

int mb_access_probe(const void *guest, size_t n, bool write, mb_fault *f) {
  struct mb__job j = {write ? MB__PROBE_WRITE : MB__PROBE_READ, NULL, NULL, 0,
                      (uintptr_t)guest};
  return run(&j, n, f);
}
