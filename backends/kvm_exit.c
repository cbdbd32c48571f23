/* kvm_exit.c: deciding KVM exits about guest memory (see mb_kvm_exit.h). */
#include "mb_kvm_exit.h"

#include <errno.h>
#include <stddef.h>

#include "gpa_map.h"
#include "mb_errors.h"

#if defined(__linux__)
#include <linux/kvm.h>

#ifndef KVM_EXIT_MEMORY_FAULT
#define KVM_EXIT_MEMORY_FAULT 39 /* Linux 6.8; Debian 12's headers lack it and its member */
#endif

/* kvm_run.memory_fault: {flags, gpa, size} at the start of the exit union, where mmio is. */
typedef struct memory_fault {
  uint64_t flags, gpa, size;
} memory_fault;

static const memory_fault *memory_fault_of(const struct kvm_run *run) {
  return (const memory_fault *)(const void *)((const char *)run +
                                              offsetof(struct kvm_run, mmio));
}

/* A memory fault does not say read or write: a page that reads but does not write is a write
 * to a read-only mapping, or one that the VTL's protection forbids; one that now does both
 * was repaired meanwhile (retry). */
static int memory_fault_kind(mb_kvm_lookup_fn lookup, void *ctx, uint64_t gpa, uint64_t len) {
  int kind = lookup(ctx, gpa, len, false);
  if (kind != MB_GPA_RAM)
    return kind;
  kind = lookup(ctx, gpa, len, true);
  return kind == MB_GPA_FAULT || kind == MB_GPA_PROTECTED ? kind : MB_GPA_RAM;
}

int mb__kvm_exit_classify(int rc, int err, const struct kvm_run *run, mb_kvm_lookup_fn lookup,
                          void *ctx, mb_kvm_exit *out) {
  if (rc == 0 && run->exit_reason == KVM_EXIT_MMIO) {
    *out = (mb_kvm_exit){0, run->mmio.phys_addr, run->mmio.len, run->mmio.is_write != 0};
    if (out->len == 0 || out->gpa + out->len < out->gpa)
      return MB_E_INVALID;
    out->kind = lookup(ctx, out->gpa, out->len, out->write);
    return 0;
  }
  if (rc >= 0 || err != EFAULT)
    return MB_E_INVALID;
  if (run->exit_reason == KVM_EXIT_MEMORY_FAULT) {
    const memory_fault *mf = memory_fault_of(run);
    uint64_t len = mf->size ? mf->size : 1;
    *out = (mb_kvm_exit){0, mf->gpa, len, false};
    if (mf->gpa + len < mf->gpa)
      return MB_E_INVALID;
    out->kind = memory_fault_kind(lookup, ctx, mf->gpa, len);
    return 0;
  }
  *out = (mb_kvm_exit){MB_GPA_FAULT, 0, 0, false}; /* an older kernel: no address given */
  return 0;
}

uint8_t *mb__kvm_exit_mmio_data(struct kvm_run *run, const mb_kvm_exit *ex) {
  if (!run || !ex || run->exit_reason != KVM_EXIT_MMIO || ex->kind != MB_GPA_RAM ||
      ex->gpa != run->mmio.phys_addr || ex->len == 0 || ex->len > sizeof run->mmio.data)
    return NULL;
  return run->mmio.data;
}

#else

uint8_t *mb__kvm_exit_mmio_data(struct kvm_run *run, const mb_kvm_exit *ex) {
  (void)run, (void)ex;
  return NULL;
}

int mb__kvm_exit_classify(int rc, int err, const struct kvm_run *run, mb_kvm_lookup_fn lookup,
                          void *ctx, mb_kvm_exit *out) {
  (void)rc, (void)err, (void)run, (void)lookup, (void)ctx, (void)out;
  return MB_E_INVALID;
}

#endif
