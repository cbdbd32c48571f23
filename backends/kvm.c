/* kvm.c: the kvm partition backend: a KVM VM of its own (/dev/kvm, x86-64) with one probe vCPU
 * that makes the guest accesses scenarios and tests ask for.
 *
 * Map. The VM's memory slots are managed by the kvm_attach code (kvm_attach.h), exactly as for
 * a VM a VMM owns: slot 0 is this backend's own (below), slots 1 and up are kvm_attach's.
 *
 * Guest program. access() has the vCPU perform the access, so the answer is KVM's own. The
 * vCPU runs in 64-bit long mode (kvm_vcpu.h: identity page tables over every guest physical
 * address, a GDT, long-mode special registers). Its code, GDT, stack, page tables and a
 * scratch buffer (kvm_vcpu.h's data area) live in private memory: slot 0, at max_addr
 * rounded up to 2 MiB, outside the guest range [0, max_addr) that the partition maps, and
 * never reported by ranges(). The program is two instructions:
 *
 *       rep movsb      ; copy rcx bytes from [rsi] to [rdi]
 *       hlt            ; done: KVM_EXIT_HLT (there is no in-kernel irqchip)
 *
 * A read runs it with rsi = gpa, rdi = scratch and then copies the scratch to the caller's
 * buffer; a write fills the scratch first and runs it with rsi = scratch, rdi = gpa. Longer
 * accesses go in scratch-sized chunks. Every run sets rip, rsp, rflags, rsi, rdi and rcx
 * afresh, so a failed run leaves nothing behind; the one exception, an MMIO exit, which KVM
 * finishes on the next KVM_RUN, is drained at once (mb__kvm_vcpu_drain_mmio). The IDT is
 * empty: a guest exception would triple-fault (KVM_EXIT_SHUTDOWN -> -EIO), and then the
 * special registers are loaded again before the next run.
 *
 * Outcome of a run: HLT -> 0. An exit about guest memory is decided by the rule every KVM
 * partition uses (mb_kvm_exit.h), from this partition's own slots: an MMIO exit, a memory-fault
 * exit or a bare EFAULT at an address inside a slot, other than a write to a read-only slot,
 * is MB_E_FAULT (its host memory cannot serve it: a PROT_NONE hole, a write to a read-only
 * page), which kvm-pvm hosts report as MMIO; anything else is MB_E_MMIO. Bytes before the
 * failing one may already have been copied, as on a real CPU.
 */
#include <errno.h>
#include <stdlib.h>

#include "gpa_map.h"
#include "kvm_attach.h"
#include "mb_kvm_exit.h"
#include "kvm_vcpu.h"
#include "mb_range.h"
#include "mb_partition.h"
#include "pieces.h"

#if defined(__x86_64__) && defined(__linux__)

#include <fcntl.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define VA_LIMIT (1ull << 47) /* identity mapping needs canonical lower-half addresses */
#define SCRATCH_SIZE 0x10000  /* the private data area: the access's bytes */

static const uint8_t guest_code[] = {0xf3, 0xa4, /* rep movsb */ 0xf4 /* hlt */};

typedef struct kvm_part {
  uint64_t max_addr;
  int kvm_fd, vm_fd;
  mb_kvm_lm lm;         /* slot 0: code, GDT, stack, scratch, page tables */
  mb_kvm_vcpu vcpu;
  bool attached;        /* attach holds slots 1 and up */
  mb_kvm_attach attach;
  bool need_sregs;      /* load sregs before the next run (after an unexpected exit) */
  bool stuck;           /* an MMIO exit could not be drained: the vCPU is unusable */
} kvm_part;

/* ---- creation ------------------------------------------------------------------------- */

static int open_vm(kvm_part *p) {
  p->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (p->kvm_fd < 0)
    return mb__kvm_unsupported_unless_resource(errno);
  if (!mb__kvm_usable(p->kvm_fd))
    return MB_E_UNSUPPORTED;
  p->vm_fd = ioctl(p->kvm_fd, KVM_CREATE_VM, 0);
  if (p->vm_fd < 0)
    return mb__kvm_unsupported_unless_resource(errno);
  mb_kvm_attach_config c = {.vm_fd = p->vm_fd, .slot_first = 1};
  int rc = mb__kvm_attach_init(&p->attach, p->max_addr, &c);
  p->attached = rc == 0;
  return rc == MB_E_INVALID ? MB_E_UNSUPPORTED : rc; /* a VM with one slot only */
}

/* Private memory with the program in slot 0, then the vCPU over it (kvm_vcpu.h). */
static int setup_vcpu(kvm_part *p) {
  struct kvm_cpuid2 *cpuid = NULL;
  int rc = mb__kvm_cpuid_get(p->kvm_fd, &cpuid);
  if (rc == 0)
    rc = mb__kvm_lm_plan(&p->lm, cpuid, p->max_addr, SCRATCH_SIZE);
  if (rc == 0)
    rc = mb__kvm_lm_alloc(&p->lm, guest_code, sizeof guest_code);
  if (rc == 0)
    rc = mb__kvm_lm_slot(&p->lm, p->vm_fd, 0);
  if (rc == 0)
    rc = mb__kvm_vcpu_create(&p->vcpu, p->kvm_fd, p->vm_fd, 0, cpuid, &p->lm);
  free(cpuid);
  return rc;
}

static void kvm_destroy(void *inst);

static int kvm_create(uint64_t max_addr, const void *config, void **inst) {
  if (max_addr == 0 || !mb_page_aligned(max_addr) || max_addr > VA_LIMIT)
    return -EINVAL;
  if (config != NULL)
    return MB_E_INVALID; /* its own VM has nothing to configure */
  kvm_part *p = calloc(1, sizeof *p);
  if (!p)
    return -ENOMEM;
  p->max_addr = max_addr;
  p->kvm_fd = p->vm_fd = p->vcpu.fd = -1;
  int rc = open_vm(p);
  if (rc == 0)
    rc = setup_vcpu(p);
  if (rc != 0) {
    kvm_destroy(p);
    return rc;
  }
  *inst = p;
  return 0;
}

static void kvm_destroy(void *inst) {
  kvm_part *p = inst;
  if (!p)
    return;
  if (p->attached)
    mb__kvm_attach_fini(&p->attach);
  mb__kvm_vcpu_destroy(&p->vcpu);
  if (p->vm_fd >= 0)
    close(p->vm_fd); /* the VM goes with its last fd, private slot included */
  mb__kvm_lm_free(&p->lm);
  if (p->kvm_fd >= 0)
    close(p->kvm_fd);
  free(p);
}

/* ---- the map -------------------------------------------------------------------------- */

static int kvm_map(void *inst, uint64_t gpa, uint64_t size, void *host_va, bool writable) {
  return mb__kvm_attach_map(&((kvm_part *)inst)->attach, gpa, size, host_va, writable);
}

static int kvm_unmap(void *inst, uint64_t gpa, uint64_t size) {
  return mb__kvm_attach_unmap(&((kvm_part *)inst)->attach, gpa, size);
}

static size_t kvm_ranges(void *inst, mb_part_range *out, size_t max) {
  return mb_pieces_ranges(&((kvm_part *)inst)->attach.pieces, out, max);
}

/* Dirty tracking is kvm_attach's on the VM's slots: the probe vCPU's writes are the guest's,
 * logged by the kernel (its own slot 0 is never logged). */
static int kvm_dirty_start(void *inst, struct mb_dirty_set *set) {
  return mb__kvm_dirty_start(&((kvm_part *)inst)->attach, set);
}

static int kvm_dirty_collect(void *inst, uint64_t gpa, uint64_t size) {
  return mb__kvm_dirty_collect(&((kvm_part *)inst)->attach, gpa, size);
}

static void kvm_dirty_stop(void *inst) {
  mb__kvm_dirty_stop(&((kvm_part *)inst)->attach);
}

/* ---- access --------------------------------------------------------------------------- */

/* An MMIO exit leaves the instruction half done: finish it without running further guest code,
 * and start clean (whatever the emulator did) with the special registers loaded again. */
static void drain_mmio(kvm_part *p) {
  p->stuck = !mb__kvm_vcpu_drain_mmio(&p->vcpu);
  p->need_sregs = true;
}

/* The exit rule's map for the probe vCPU: its own slots (nothing changes them while it runs). */
static int own_slots_kind(void *ctx, uint64_t gpa, uint64_t len, bool write) {
  (void)len;
  return mb_pieces_exit_kind(&((kvm_part *)ctx)->attach.pieces, gpa, write);
}

/* An exit about guest memory: MB_E_MMIO or MB_E_FAULT (mb_kvm_exit.h decides); 1 if it is not. */
static int memory_exit(kvm_part *p, int rc, int err) {
  mb_kvm_exit ex;
  if (mb__kvm_exit_classify(rc, err, p->vcpu.run, own_slots_kind, p, &ex) != 0)
    return 1;
  if (rc == 0)
    drain_mmio(p); /* an MMIO exit leaves the instruction half done */
  return ex.kind == MB_GPA_MMIO ? MB_E_MMIO : MB_E_FAULT;
}

/* Runs the vCPU until the program ends or fails. */
static int run_program(kvm_part *p) {
  for (;;) {
    int rc = ioctl(p->vcpu.fd, KVM_RUN, 0), err = rc < 0 ? errno : 0;
    if (rc < 0 && (err == EINTR || err == EAGAIN))
      continue;
    int mem = memory_exit(p, rc, err);
    if (mem != 1)
      return mem;
    if (rc < 0)
      return -err;
    if (p->vcpu.run->exit_reason == KVM_EXIT_HLT)
      return 0;
    if (p->vcpu.run->exit_reason == KVM_EXIT_INTR)
      continue;
    p->need_sregs = true; /* SHUTDOWN (a guest exception), FAIL_ENTRY, INTERNAL_ERROR, ... */
    return -EIO;
  }
}

/* One run of the program: copy n bytes from guest address src to guest address dst. */
static int run_copy(kvm_part *p, uint64_t src, uint64_t dst, uint64_t n) {
  if (p->need_sregs) {
    if (ioctl(p->vcpu.fd, KVM_SET_SREGS, &p->vcpu.sregs) < 0)
      return -errno;
    p->need_sregs = false;
  }
  struct kvm_regs regs = {
      .rip = p->lm.base + MB_KVM_LM_CODE,
      .rsp = mb__kvm_lm_stack_top(&p->lm),
      .rflags = 0x2, /* the reserved bit; DF = 0: rep movsb goes up */
      .rsi = src,
      .rdi = dst,
      .rcx = n,
  };
  if (ioctl(p->vcpu.fd, KVM_SET_REGS, &regs) < 0)
    return -errno;
  return run_program(p);
}

static int kvm_access(void *inst, uint64_t gpa, void *buf, size_t len, bool write) {
  kvm_part *p = inst;
  if (len > p->max_addr || gpa > p->max_addr - len)
    return MB_E_INVALID;
  uint8_t *b = buf;
  uint8_t *scratch = p->lm.host + MB_KVM_LM_DATA;
  uint64_t scratch_gpa = p->lm.base + MB_KVM_LM_DATA;
  while (len > 0) {
    if (p->stuck)
      return -EIO;
    size_t n = len < SCRATCH_SIZE ? len : SCRATCH_SIZE;
    if (write)
      memcpy(scratch, b, n);
    int rc = write ? run_copy(p, scratch_gpa, gpa, n) : run_copy(p, gpa, scratch_gpa, n);
    if (rc != 0)
      return rc;
    if (!write)
      memcpy(b, scratch, n);
    gpa += n;
    b += n;
    len -= n;
  }
  return 0;
}

const mb_partition_ops mb_partition_kvm = {
    .name = "kvm",
    .create = kvm_create,
    .destroy = kvm_destroy,
    .map = kvm_map,
    .unmap = kvm_unmap,
    .access = kvm_access,
    .ranges = kvm_ranges,
    .dirty_start = kvm_dirty_start,
    .dirty_collect = kvm_dirty_collect,
    .dirty_stop = kvm_dirty_stop,
};

#else /* no KVM on this platform */

static int kvm_create(uint64_t max_addr, const void *config, void **inst) {
  (void)max_addr, (void)config, (void)inst;
  return MB_E_UNSUPPORTED;
}

const mb_partition_ops mb_partition_kvm = {.name = "kvm", .create = kvm_create};

#endif
