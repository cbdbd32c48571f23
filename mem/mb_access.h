/* mb_access.h: fault-tolerant copies into and out of guest memory.
 *
 * Guest memory lives in a VA reservation (va_reserve.h) where any page may be unmapped,
 * read-only or beyond the end of its file at any moment. These copies turn the resulting
 * SIGSEGV/SIGBUS into -EFAULT plus a precise report, so a caller (a lazy VA mapper) can get
 * the page mapped and retry.
 *
 * Semantics of a failed copy: f->addr is the lowest guest address of the copy that could not
 * be accessed (permissions are per page, so it is the copy's start or a page boundary) and
 * the f->done bytes before it have been copied. Bytes at and after f->addr are unspecified in
 * the destination (a fast copy may have moved some of them before it faulted).
 *
 * A naturally aligned copy of 1, 2, 4 or 8 bytes (the guest address a multiple of the size)
 * is one load or one store, as the guest's own instruction would be: it lands whole or not
 * at all, also when it races a protection change or an unmap, and a concurrent reader or
 * writer (the guest, another thread) sees the old value or the new one, never a mix.
 *
 * Only the guest side is protected. A fault on the host buffer, or any fault outside a copy,
 * goes to the handler that was installed before ours (its sa_sigaction or sa_handler, with
 * its mask); if that was SIG_DFL or SIG_IGN the default action is restored and the fault
 * retaken, so the process dies as it would have without membacking.
 *
 * Threads: every function may be called from any thread, concurrently, and from a signal
 * handler (a copy may interrupt another on the same thread). The recovery point is per
 * thread. The handlers are installed once, by mb_access_init or the first copy; code that
 * installs its own SIGSEGV/SIGBUS handler later must chain to ours, or the caller must call
 * mb_access_reinstall afterwards. A copy inside a signal handler needs SIGSEGV and SIGBUS
 * unblocked there (a fault while they are blocked kills the process); ThreadSanitizer runs
 * every handler with all signals blocked, so under TSan such a handler must unblock them.
 *
 * Cost: the fast path is a sigsetjmp without a signal mask (no system call), two
 * thread-local stores and memcpy/memset. A fault costs a signal delivery, a sigprocmask
 * and a few page-sized retries to find the exact address. Under ThreadSanitizer the guest
 * side is copied by an uninstrumented byte loop, one moves aside (races with the guest and
 * with map/unmap are by design); the host buffer is still checked.
 */
#ifndef MB_ACCESS_H
#define MB_ACCESS_H

#include <stdbool.h>
#include <stddef.h>

/* What a guest access at a guest physical address meets (mb_partition_classify,
 * mb_kvm_exit_decide): guest RAM, device MMIO (nothing visible, or a write to a read-only
 * range), a fault of the backing behind visible memory, or a page whose VTL protection
 * forbids the access (a secure intercept for the higher VTL). */
enum { MB_GPA_RAM = 0, MB_GPA_MMIO = 1, MB_GPA_FAULT = 2, MB_GPA_PROTECTED = 3 };

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mb_fault {
  void *addr;  /* first guest address that could not be accessed */
  size_t done; /* bytes copied before it: addr - guest start */
  int signo;   /* SIGSEGV or SIGBUS */
  int code;    /* its si_code: SEGV_MAPERR, SEGV_ACCERR, BUS_ADRERR, ... */
} mb_fault;

/* Installs the SIGSEGV and SIGBUS handlers (SA_SIGINFO | SA_NODEFER | SA_ONSTACK) once,
 * remembering the previous ones for chaining. Returns 0 or -errno; later calls return the
 * first result. Call it before starting threads that install their own handlers. */
int mb_access_init(void);

/* Puts our handlers back in front when other code (a test framework, a language runtime)
 * has replaced them since; the handlers in place now become the ones faults chain to (unless
 * they are ours). Must not race with faults on other threads that reach the chained handler. */
int mb_access_reinstall(void);

/* Copies n bytes from guest memory to dst. 0, -EFAULT (f filled in if non-NULL), or
 * -EINVAL if the guest range wraps the address space. */
int mb_access_read(void *dst, const void *guest_src, size_t n, mb_fault *f);
/* Copies n bytes from src into guest memory. */
int mb_access_write(void *guest_dst, const void *src, size_t n, mb_fault *f);
/* Sets n bytes of guest memory to (unsigned char)byte. */
int mb_access_fill(void *guest_dst, int byte, size_t n, mb_fault *f);
/* Checks that the guest could access [guest, guest + n) now, touching one byte per page: a
 * load, or for write a locked OR of zero (a store that changes no byte, even racing with
 * other stores; it does make the page dirty and, for private memory, the kernel copies it).
 * 0 or -EFAULT (f filled in as for a copy). */
int mb_access_probe(const void *guest, size_t n, bool write, mb_fault *f);

#ifdef __cplusplus
}
#endif

#endif /* MB_ACCESS_H */
