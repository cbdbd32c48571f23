/* mb_kvm_exit.h: what a KVM_RUN outcome says about guest memory, on every kernel these hosts run.
 *
 * A guest access that its memory slot's host memory cannot serve (a PROT_NONE hole, a write
 * to a page mapped read-only inside a writable slot) comes back three ways:
 *   KVM_RUN -1/EFAULT alone       no address, exit_reason left as it was: kvm_amd on Debian's
 *                                 6.1 and 6.12 (checked under nested emulation);
 *   -1/EFAULT, KVM_EXIT_MEMORY_FAULT  gpa and size given: kernels and paths that fill in
 *                                 kvm_run.memory_fault (6.8+ where KVM reports it);
 *   KVM_RUN 0, KVM_EXIT_MMIO      at the address, exactly like an access where no slot
 *                                 exists: kvm-pvm hosts (kernel 6.18).
 * So the exit reason alone cannot tell device MMIO from guest RAM that is not there: the
 * memory manager's own map decides (`lookup`), the same way for all three. Pure code: tests
 * feed it kvm_run records they make themselves, without /dev/kvm.
 *
 * VTL protections (mb_vtl.h) are memory slots too (no slot where the protection is none, a
 * read-only slot where it is ro), so an access they forbid also comes back as an MMIO exit
 * (or a memory fault): the map answers MB_GPA_PROTECTED for it, and the VMM delivers a secure
 * intercept to the higher VTL instead of emulating a device. */
#ifndef MB_KVM_EXIT_H
#define MB_KVM_EXIT_H

#include <stdbool.h>
#include <stdint.h>

#include "mb_access.h"

struct kvm_run;

/* A decided exit. kind: MB_GPA_RAM (guest RAM, retry the instruction), MB_GPA_MMIO (device
 * MMIO: emulate it), MB_GPA_PROTECTED (the VTL's protection forbids the access: never
 * emulated; after an MMIO exit, finish the pending MMIO without running guest code, as for
 * FAULT, then deliver the intercept to the higher VTL) or MB_GPA_FAULT (the backing failed).
 * len 0: the kernel gave no address (a bare EFAULT). */
typedef struct mb_kvm_exit {
  int kind;
  uint64_t gpa, len;
  bool write;
} mb_kvm_exit;

/* The map's answer for an access (mb_access.h's MB_GPA_* values; MB_GPA_PROTECTED only from a
 * map that applies protections). */
typedef int (*mb_kvm_lookup_fn)(void *ctx, uint64_t gpa, uint64_t len, bool write);

/* rc and err: what KVM_RUN returned and its errno; run: the vCPU's kvm_run. 0 with *out for
 * an exit about guest memory (an MMIO exit, a memory fault, a bare EFAULT); MB_E_INVALID for
 * any other outcome (HLT, IO, EINTR, ...: nothing to decide). */
int mb__kvm_exit_classify(int rc, int err, const struct kvm_run *run, mb_kvm_lookup_fn lookup,
                          void *ctx, mb_kvm_exit *out);
/* run->mmio.data when ex is the RAM answer to run's MMIO exit (so it can be served there),
 * else NULL. */
uint8_t *mb__kvm_exit_mmio_data(struct kvm_run *run, const mb_kvm_exit *ex);

#endif
