/* fault_inject.h: the seam through which mem/ makes the system calls that can fail, so tests
 * can make any one of them fail (SQLite-style: every failure point has a test that checks
 * nothing leaked and nothing was left half-done).
 *
 * Every mmap, munmap, mprotect, memfd_create and ftruncate in mem/ goes through the
 * mb__sys_* wrappers below; backends/kvm_attach.c asks mb__fi_fail(MB_FI_KVM_SET_REGION)
 * before each KVM_SET_USER_MEMORY_REGION (mem/ knows nothing of KVM). Built without
 * MB_FAULT_INJECTION (the default) they are inline calls of the system call itself: no cost
 * at all. Built with it (meson -Dfault_injection=true for the whole library, or
 * -DMB_FAULT_INJECTION=1 for one test program that compiles mem/ itself), each wrapper first
 * counts the call and fails it, with errno set, when armed to.
 *
 * Kinds are a closed enum; a new seam adds a kind and a wrapper. The library's allocations
 * (MB_FI_ALLOC: actors/, runtime/, messages) go through the seam too, though mem/ makes none.
 *
 * Threads: every function may be called from any thread. Counting is exact under
 * concurrency; which of several concurrent calls is "the n-th" is whichever counts n-th.
 */
#ifndef MB_FAULT_INJECT_H
#define MB_FAULT_INJECT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mb_fi_kind {
  MB_FI_MMAP,
  MB_FI_MUNMAP,
  MB_FI_MPROTECT,
  MB_FI_MEMFD_CREATE,
  MB_FI_FTRUNCATE,
  MB_FI_KVM_SET_REGION, /* backends/kvm_attach.c: KVM_SET_USER_MEMORY_REGION (ioctl or hook) */
  MB_FI_ALLOC, /* the library's allocations: mb__malloc/calloc/realloc below, mb_msg_new */
  MB_FI_KINDS /* the number of kinds, not a kind */
} mb_fi_kind;

/* True if this build injects faults. Tests that need it exit 77 (skipped) when false. */
bool mb_fi_enabled(void);
/* Makes the n-th call of `kind` from now on (n >= 1: 1 is the next call) fail with errno
 * err (> 0), once. Replaces what was armed for that kind; n == 0 disarms it. 0, or
 * MB_E_INVALID (bad kind or err), or MB_E_UNSUPPORTED when the build has no injection. */
int mb_fi_arm(mb_fi_kind kind, uint64_t n, int err);
/* The same, but the n-th call and every later one fail, until disarmed or reset. */
int mb_fi_arm_persist(mb_fi_kind kind, uint64_t n, int err);
/* Disarms every kind and sets every counter to 0. */
void mb_fi_reset(void);
/* Calls of `kind` since the last reset, failed ones included (0 without injection). */
uint64_t mb_fi_calls(mb_fi_kind kind);
/* Calls of `kind` failed on purpose since the last reset (0 without injection). */
uint64_t mb_fi_injected(mb_fi_kind kind);
/* The kind's name as MB_FI spells it ("mmap", "kvm_set_region"), or NULL for no kind. */
const char *mb_fi_kind_name(mb_fi_kind kind);

/* Arming from the environment (only in a build with injection), read once when the library is
 * loaded, before main:
 *   MB_FI="KIND:N[:ERRNO][,KIND:N[:ERRNO]...]"
 *       fail the N-th call (N >= 1, counted from process start) of KIND, once, with ERRNO
 *       (a number or a name such as ENOMEM, EMFILE, ENOSPC; default ENOMEM). KIND is a name of
 *       mb_fi_kind_name: mmap, munmap, mprotect, memfd_create, ftruncate, kvm_set_region,
 *       alloc.
 *       A value that does not parse is reported on stderr and arms nothing.
 *   MB_FI_COUNT=1
 *       at exit, print one line per kind to stderr, for a driver that sweeps every N:
 *         mb_fi: KIND calls=C injected=I
 *   MB_FI_TRACE=1
 *       print where each injected failure happened to stderr, for addr2line:
 *         mb_fi: injected KIND call N at: OBJECT+0xOFFSET OBJECT+0xOFFSET ...
 * Example: MB_FI=mmap:7 MB_FI_COUNT=1 membacking-replay --fault-check FILE.mbs */

#ifdef MB_FAULT_INJECTION
/* Counts one call of kind; true (errno set) if it must fail. */
bool mb__fi_fail(mb_fi_kind kind);
#else
static inline bool mb__fi_fail(mb_fi_kind kind) {
  (void)kind;
  return false;
}
#endif

static inline void *mb__sys_mmap(void *addr, size_t len, int prot, int flags, int fd,
                                 off_t off) {
  return mb__fi_fail(MB_FI_MMAP) ? MAP_FAILED : mmap(addr, len, prot, flags, fd, off);
}

static inline int mb__sys_munmap(void *addr, size_t len) {
  return mb__fi_fail(MB_FI_MUNMAP) ? -1 : munmap(addr, len);
}

static inline int mb__sys_mprotect(void *addr, size_t len, int prot) {
  return mb__fi_fail(MB_FI_MPROTECT) ? -1 : mprotect(addr, len, prot);
}

static inline int mb__sys_memfd_create(const char *name, unsigned flags) {
  return mb__fi_fail(MB_FI_MEMFD_CREATE) ? -1 : memfd_create(name, flags);
}

static inline int mb__sys_ftruncate(int fd, off_t len) {
  return mb__fi_fail(MB_FI_FTRUNCATE) ? -1 : ftruncate(fd, len);
}

/* Allocations (MB_FI_ALLOC): the actors allocate through these, and mb_msg_new asks
 * mb__fi_fail(MB_FI_ALLOC) before it takes a block, so a test can fail any one of them. */
static inline void *mb__malloc(size_t size) {
  return mb__fi_fail(MB_FI_ALLOC) ? NULL : malloc(size);
}

static inline void *mb__calloc(size_t n, size_t size) {
  return mb__fi_fail(MB_FI_ALLOC) ? NULL : calloc(n, size);
}

static inline void *mb__realloc(void *p, size_t size) {
  return mb__fi_fail(MB_FI_ALLOC) ? NULL : realloc(p, size);
}

/* free(p) that makes no call for NULL: jemalloc 5.3 looks every pointer up in its page map
 * before it checks for NULL (~40 instructions and the map's pages per call), and an
 * operation's path frees several arrays that are usually absent. */
static inline void mb__free(void *p) {
  if (p != NULL)
    free(p);
}

#ifdef __cplusplus
}
#endif

#endif /* MB_FAULT_INJECT_H */
