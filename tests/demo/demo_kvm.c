/* demo_kvm.c: the VMM's own KVM VM and the thread of its vCPU.
 *
 * The VMM owns everything here: it opens /dev/kvm, creates the VM and one vCPU, gives the VM a
 * memory slot of its own (DEMO_SLOT_PRIVATE) with the guest program, its mailbox, a GDT, a
 * stack and identity page tables above the guest's range (kvm_vcpu.h, as the kvm backend's
 * probe vCPU does), and sets the vCPU up in 64-bit long mode at the program's doorbell.
 * membacking only manages the slots [DEMO_SLOT_FIRST, +DEMO_SLOT_COUNT) that demo_main.c
 * attaches it to; it never runs the vCPU.
 *
 * The vCPU thread runs KVM_RUN in a loop and handles every outcome itself:
 *   KVM_EXIT_IO at the doorbell port   the command is done: the next one goes in the mailbox;
 *                                      when that is STOP, the thread ends and leaves the guest
 *                                      parked at its doorbell (no HLT needed to stop it)
 *   EINTR, EAGAIN, KVM_EXIT_INTR       run again
 *   anything else                      the exit question, mb_partition_classify_exit():
 *     MMIO   the device model serves the access (fills run->mmio.data for a read), and the
 *            next KVM_RUN completes the instruction;
 *     RAM    the exit raced with a change of the map. After an MMIO exit the instruction is
 *            half done, and KVM would complete it with run->mmio.data on the next KVM_RUN,
 *            so the VMM serves it from guest RAM through the partitions' VA mapper, as
 *            QEMU's address_space_rw does, and asks again if that fails meanwhile. After a
 *            memory-fault exit (KVM_RUN -1/EFAULT) nothing ran: KVM_RUN again;
 *     FAULT  the guest touched RAM that is not there: a pending MMIO is drained (KVM_RUN with
 *            immediate_exit completes it without running guest code), and the guest restarts
 *            at its doorbell, the command marked failed;
 *     MB_E_INVALID: an exit the demo does not expect: it says which, and the vCPU stops. */
#include <errno.h>
#include <stdlib.h>

#include "demo.h"

#if defined(__x86_64__) && defined(__linux__)

#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "kvm_vcpu.h"

struct demo_kvm {
  int kvm_fd, vm_fd;
  mb_kvm_lm lm;      /* slot DEMO_SLOT_PRIVATE: program, mailbox, GDT, stack, page tables */
  mb_kvm_vcpu vcpu;
};

_Static_assert(DEMO_GUEST_MAILBOX == MB_KVM_LM_DATA - MB_KVM_LM_CODE,
               "the program finds its mailbox in kvm_vcpu.h's data area");

/* ---- the VM -------------------------------------------------------------------------------- */

static int open_vm(demo_kvm *k, const char **step) {
  *step = DEMO_KVM_STEP_OPEN;
  k->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (k->kvm_fd < 0)
    return -errno;
  *step = "KVM API version and capabilities";
  if (!mb__kvm_usable(k->kvm_fd))
    return MB_E_UNSUPPORTED;
  *step = "KVM_CREATE_VM";
  k->vm_fd = ioctl(k->kvm_fd, KVM_CREATE_VM, 0);
  return k->vm_fd < 0 ? -errno : 0;
}

/* The vCPU starts at the doorbell, so its first exit asks for the first command. */
static int start_regs(demo_kvm *k) {
  struct kvm_regs regs = {
      .rip = k->lm.base + MB_KVM_LM_CODE + DEMO_GUEST_DONE,
      .rsp = mb__kvm_lm_stack_top(&k->lm),
      .rflags = 0x2, /* the reserved bit; interrupts off */
  };
  return ioctl(k->vcpu.fd, KVM_SET_REGS, &regs) < 0 ? -errno : 0;
}

/* Private memory with the program and its mailbox, its slot, and the vCPU in long mode. */
static int setup_vcpu(demo_kvm *k, uint64_t guest_end, const char **step) {
  struct kvm_cpuid2 *cpuid = NULL;
  *step = "KVM_GET_SUPPORTED_CPUID";
  int rc = mb__kvm_cpuid_get(k->kvm_fd, &cpuid);
  if (rc == 0) {
    *step = "long mode (CPUID)";
    rc = mb__kvm_lm_plan(&k->lm, cpuid, guest_end, MB_KVM_LM_PAGE /* the mailbox */);
  }
  if (rc == 0) {
    *step = "private memory";
    rc = mb__kvm_lm_alloc(&k->lm, demo_guest_code, demo_guest_code_size);
  }
  if (rc == 0) {
    *step = "KVM_SET_USER_MEMORY_REGION (the private slot)";
    rc = mb__kvm_lm_slot(&k->lm, k->vm_fd, DEMO_SLOT_PRIVATE);
  }
  if (rc == 0) {
    *step = "KVM_CREATE_VCPU, KVM_SET_CPUID2, KVM_SET_SREGS";
    rc = mb__kvm_vcpu_create(&k->vcpu, k->kvm_fd, k->vm_fd, 0, cpuid, &k->lm);
  }
  if (rc == 0) {
    *step = "KVM_SET_REGS";
    rc = start_regs(k);
  }
  free(cpuid);
  return rc;
}

int demo_kvm_open(demo_kvm **out, uint64_t guest_end, const char **step) {
  demo_kvm *k = calloc(1, sizeof *k);
  if (!k) {
    *step = "memory";
    return -ENOMEM;
  }
  k->kvm_fd = k->vm_fd = k->vcpu.fd = -1;
  int rc = open_vm(k, step);
  if (rc == 0)
    rc = setup_vcpu(k, guest_end, step);
  if (rc != 0) {
    demo_kvm_close(k);
    return rc;
  }
  *out = k;
  return 0;
}

void demo_kvm_close(demo_kvm *k) {
  if (!k)
    return;
  mb__kvm_vcpu_destroy(&k->vcpu);
  if (k->vm_fd >= 0)
    close(k->vm_fd);
  mb__kvm_lm_free(&k->lm);
  if (k->kvm_fd >= 0)
    close(k->kvm_fd);
  free(k);
}

int demo_kvm_vm_fd(const demo_kvm *k) { return k->vm_fd; }

demo_mailbox *demo_kvm_mailbox(demo_kvm *k) {
  return (demo_mailbox *)(void *)(k->lm.host + MB_KVM_LM_DATA);
}

/* ---- the vCPU thread ----------------------------------------------------------------------- */

/* The guest gives the command up: it goes on at `off` in the program. */
static void restart_at(demo_vcpu *v, demo_kvm *k, uint64_t off) {
  struct kvm_regs regs;
  if (ioctl(k->vcpu.fd, KVM_GET_REGS, &regs) < 0) {
    demo_vcpu_fail(v, "KVM_GET_REGS: %s", membacking_strerror(-errno));
    return;
  }
  regs.rip = k->lm.base + MB_KVM_LM_CODE + off;
  if (ioctl(k->vcpu.fd, KVM_SET_REGS, &regs) < 0)
    demo_vcpu_fail(v, "KVM_SET_REGS: %s", membacking_strerror(-errno));
}

/* An access the exit question calls RAM, served from guest RAM as the guest would have made it. */
static int ram_access(demo_vcpu *v, const mb_kvm_exit *ex, struct kvm_run *run) {
  return mb_partition_serve_exit(v->part, ex, run);
}

/* KVM_EXIT_MMIO: the instruction waits for run->mmio (its data, for a read). */
static void mmio_exit(demo_vcpu *v, demo_kvm *k, mb_kvm_exit ex) {
  uint8_t *data = k->vcpu.run->mmio.data;
  for (;;) {
    switch (demo_vcpu_exit(v, &ex, data)) {
    case DEMO_EXIT_EMULATED:
      return;
    case DEMO_EXIT_FAULT:
      if (!mb__kvm_vcpu_drain_mmio(&k->vcpu))
        demo_vcpu_fail(v, "the MMIO exit at 0x%llx would not drain", (unsigned long long)ex.gpa);
      else
        restart_at(v, k, DEMO_GUEST_DONE);
      return;
    case DEMO_EXIT_RETRY:
      if (ram_access(v, &ex, k->vcpu.run) == 0)
        return;
      ex.kind = mb_partition_classify(v->part, ex.gpa, ex.len, ex.write); /* it moved again */
      continue;
    default:
      return;
    }
  }
}

/* KVM_RUN -1/EFAULT, with KVM_EXIT_MEMORY_FAULT or bare: nothing is pending. */
static void fault_exit(demo_vcpu *v, demo_kvm *k, const mb_kvm_exit *ex) {
  /* A bare EFAULT leaves exit_reason as it was: clear it, so that a later bare EFAULT is not
   * read as this memory fault again. */
  k->vcpu.run->exit_reason = KVM_EXIT_UNKNOWN;
  if (demo_vcpu_exit(v, ex, NULL) == DEMO_EXIT_FAULT)
    restart_at(v, k, DEMO_GUEST_DONE);
}

static const char *exit_name(uint32_t reason) {
  switch (reason) {
  case KVM_EXIT_UNKNOWN: return "UNKNOWN";
  case KVM_EXIT_IO: return "IO";
  case KVM_EXIT_HLT: return "HLT";
  case KVM_EXIT_MMIO: return "MMIO";
  case KVM_EXIT_SHUTDOWN: return "SHUTDOWN (a guest exception)";
  case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
  case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
  default: return "other";
  }
}

static unsigned long long exit_detail(const struct kvm_run *run) {
  if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR)
    return run->internal.suberror;
  if (run->exit_reason == KVM_EXIT_FAIL_ENTRY)
    return run->fail_entry.hardware_entry_failure_reason;
  return 0;
}

/* Everything a remote reader needs to tell what the vCPU did. */
static void unexpected_exit(demo_vcpu *v, demo_kvm *k, int rc, int err) {
  const struct kvm_run *run = k->vcpu.run;
  struct kvm_regs regs = {0};
  if (ioctl(k->vcpu.fd, KVM_GET_REGS, &regs) < 0)
    regs.rip = ~0ull; /* unknown */
  demo_vcpu_fail(v,
                 "unexpected KVM_RUN outcome: rc %d (%s), exit %u %s (detail 0x%llx), "
                 "rip 0x%llx (the program is at 0x%llx)",
                 rc, rc < 0 ? membacking_strerror(-err) : "ok", run->exit_reason,
                 exit_name(run->exit_reason), exit_detail(run), (unsigned long long)regs.rip,
                 (unsigned long long)(k->lm.base + MB_KVM_LM_CODE));
}

/* KVM_EXIT_IO: only the doorbell is expected. false: do not run the guest again. */
static bool io_exit(demo_vcpu *v, demo_kvm *k) {
  const struct kvm_run *run = k->vcpu.run;
  if (run->io.direction != KVM_EXIT_IO_OUT || run->io.port != DEMO_DOORBELL_PORT ||
      run->io.size != 1 || run->io.count != 1) {
    demo_vcpu_fail(v, "unexpected I/O: port 0x%x, %s, size %u, count %u", run->io.port,
                   run->io.direction == KVM_EXIT_IO_OUT ? "out" : "in", run->io.size,
                   run->io.count);
    return false;
  }
  return demo_vcpu_doorbell(v);
}

void demo_kvm_vcpu_run(demo_vcpu *v) {
  demo_kvm *k = v->kvm;
  const struct kvm_run *run = k->vcpu.run;
  while (!atomic_load(&v->failed)) {
    int rc = ioctl(k->vcpu.fd, KVM_RUN, 0), err = rc < 0 ? errno : 0;
    if (rc < 0 && (err == EINTR || err == EAGAIN))
      continue;
    if (rc == 0 && run->exit_reason == KVM_EXIT_IO) {
      if (!io_exit(v, k))
        return; /* STOP, or a failure */
      continue;
    }
    if (rc == 0 && run->exit_reason == KVM_EXIT_INTR)
      continue;
    mb_kvm_exit ex;
    if (mb_partition_classify_exit(v->part, rc, err, run, &ex) != 0)
      unexpected_exit(v, k, rc, err);
    else if (rc == 0 && ex.len <= sizeof run->mmio.data)
      mmio_exit(v, k, ex);
    else if (rc == 0)
      demo_vcpu_fail(v, "an MMIO exit of %llu bytes", (unsigned long long)ex.len);
    else
      fault_exit(v, k, &ex);
  }
}

#else /* no KVM on this platform: the soft vCPU only */

int demo_kvm_open(demo_kvm **out, uint64_t guest_end, const char **step) {
  (void)out, (void)guest_end;
  *step = "KVM on this platform";
  return MB_E_UNSUPPORTED;
}

void demo_kvm_close(demo_kvm *k) { (void)k; }
int demo_kvm_vm_fd(const demo_kvm *k) { (void)k; return -1; }
demo_mailbox *demo_kvm_mailbox(demo_kvm *k) { (void)k; return NULL; }
void demo_kvm_vcpu_run(demo_vcpu *v) { (void)v; }

#endif
