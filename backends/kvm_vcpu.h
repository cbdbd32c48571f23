/* kvm_vcpu.h: an x86-64 vCPU in 64-bit long mode that runs guest code of one's own, on a KVM
 * VM (internal, not installed). Used by the kvm backend's probe vCPU (kvm.c) and by the demo
 * VMM (tests/demo), which both run a few instructions of their own against guest memory.
 *
 * Private memory. The code, its GDT, a stack, the caller's data and identity page tables live
 * in one block of host memory that the caller gives the VM as a memory slot of its own, at
 * GPA `base`: the end of the guest's range rounded up to 2 MiB, so it never overlaps guest
 * memory. Layout (offsets from base):
 *
 *   MB_KVM_LM_CODE   0x0000  the code (one page)
 *   MB_KVM_LM_GDT    0x1000  null, 64-bit code (selector 0x08), data (0x10), all DPL 0
 *   MB_KVM_LM_STACK  0x2000  one page; rsp starts at its top
 *   MB_KVM_LM_DATA   0x3000  the caller's data (data_size bytes)
 *   pt_off                   the PML4, its PDPTs and, without 1 GiB pages, the PDs
 *
 * The page tables map every address below cover_end to itself (1 GiB pages when the CPU
 * offers pdpe1gb, else 2 MiB pages), writable, supervisor only; cover_end lies past the
 * private memory, so the code reaches guest memory and its own memory by physical address.
 * The IDT is empty: a guest exception triple-faults (KVM_EXIT_SHUTDOWN).
 *
 * Not done, on purpose: KVM_SET_TSS_ADDR and KVM_SET_IDENTITY_MAP_ADDR, which only Intel CPUs
 * without "unrestricted guest" (before 2010) need to emulate real mode; the vCPU never runs in
 * real mode (its registers are set straight to long mode). */
#ifndef MB_KVM_VCPU_H
#define MB_KVM_VCPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__linux__)

#include <linux/kvm.h>

enum {
  MB_KVM_LM_PAGE = 0x1000,
  MB_KVM_LM_CODE = 0x0000,
  MB_KVM_LM_GDT = 0x1000,
  MB_KVM_LM_STACK = 0x2000,
  MB_KVM_LM_DATA = 0x3000,
};

typedef struct mb_kvm_lm {
  uint64_t base, size;   /* GPA and bytes of the private memory */
  uint64_t data_size;    /* the caller's data at MB_KVM_LM_DATA */
  uint64_t pt_off;       /* the page tables: MB_KVM_LM_DATA + data_size */
  uint64_t cover_end;    /* the page tables map [0, cover_end) to itself */
  bool gb_pages;
  uint8_t *host;         /* the private memory once allocated, else NULL */
} mb_kvm_lm;

typedef struct mb_kvm_vcpu {
  int fd;                /* -1 before mb__kvm_vcpu_create */
  struct kvm_run *run;
  size_t run_size;
  struct kvm_sregs sregs; /* long mode, as loaded at creation: load again after a shutdown */
} mb_kvm_vcpu;

/* A KVM error that says "KVM cannot do this here" becomes MB_E_UNSUPPORTED; a lack of
 * resources (no fds, no memory) stays -errno. */
int mb__kvm_unsupported_unless_resource(int err);
/* /dev/kvm (kvm_fd) speaks this API and has what the vCPU and read-only slots need:
 * KVM_CAP_USER_MEMORY, _READONLY_MEM, _IMMEDIATE_EXIT, _EXT_CPUID. */
bool mb__kvm_usable(int kvm_fd);
/* KVM_GET_SUPPORTED_CPUID (malloc'd; free() it): the vCPU gets it as is. 0 or -errno. */
int mb__kvm_cpuid_get(int kvm_fd, struct kvm_cpuid2 **out);

/* Places the private memory after a guest range that ends at guest_end, with data_size bytes
 * (a 4 KiB multiple) of the caller's data, and sizes the page tables from the CPU's features.
 * 0, MB_E_INVALID (data_size), or MB_E_UNSUPPORTED (no long mode; addresses out of reach). */
int mb__kvm_lm_plan(mb_kvm_lm *lm, const struct kvm_cpuid2 *c, uint64_t guest_end,
                    uint64_t data_size);
/* Maps the private memory (zeroed) and writes code (up to one page), the GDT and the page
 * tables. 0, MB_E_INVALID (code too long) or -errno. */
int mb__kvm_lm_alloc(mb_kvm_lm *lm, const void *code, size_t code_size);
void mb__kvm_lm_free(mb_kvm_lm *lm);
/* Gives the private memory to the VM as memory slot `slot`, writable. 0 or -errno. */
int mb__kvm_lm_slot(const mb_kvm_lm *lm, int vm_fd, uint32_t slot);

/* Creates vCPU `id` of the VM, maps its kvm_run, gives it the CPUID and loads long-mode
 * special registers over the private memory (it must be planned). General registers are the
 * caller's (rip: base + MB_KVM_LM_CODE + entry; rsp: mb__kvm_lm_stack_top). 0,
 * MB_E_UNSUPPORTED (KVM refuses the vCPU) or -errno; v->fd must be -1 before. */
int mb__kvm_vcpu_create(mb_kvm_vcpu *v, int kvm_fd, int vm_fd, unsigned long id,
                        const struct kvm_cpuid2 *c, const mb_kvm_lm *lm);
void mb__kvm_vcpu_destroy(mb_kvm_vcpu *v);
/* After an MMIO exit KVM holds the instruction half done and would finish it on the next
 * KVM_RUN. This finishes it without running further guest code: with immediate_exit set,
 * KVM_RUN completes the pending MMIO (a read gets all-ones, as from an empty bus) and returns
 * EINTR; a string instruction may exit for MMIO a few more times first. false when it would
 * not drain (the vCPU is then unusable). */
bool mb__kvm_vcpu_drain_mmio(mb_kvm_vcpu *v);

static inline uint64_t mb__kvm_lm_stack_top(const mb_kvm_lm *lm) {
  return lm->base + MB_KVM_LM_STACK + MB_KVM_LM_PAGE;
}

#else

typedef int mb_kvm_vcpu_unavailable; /* no KVM on this platform */

#endif
#endif
