/* baseline_slot_split.c: the kernel floor of protect.kvm (spec/bench.md, version 2):
 *
 *   syscalls.slot_split   the KVM slot deletes and adds that make one page of a 1 GiB slot
 *                         read-only and writable again, made directly (skipped without
 *                         /dev/kvm).
 *
 * A KVM VM of the benchmark's own, made as protect.kvm's kvm partition makes its VM: slot 0
 * is the vCPU's private memory (kvm_vcpu.h: code, GDT, stack, page tables) at the end of the
 * 4 GiB guest range, and the guest RAM is 1 GiB at GPA 0 over a 1 GiB memfd mapped shared,
 * one writable slot while nothing is protected (protect_page.h).
 *
 * One operation, timed: the KVM_SET_USER_MEMORY_REGION calls the library makes for
 * `protect 0 PROTECT_GPA 4K ro` and then `rw` (backends/part_view.c plans them, the
 * kvm_attach code makes them), in the same order with the same arguments:
 *   ro: delete the 1 GiB slot; add [0, page) rw, the page with KVM_MEM_READONLY, [page end,
 *       1 GiB) rw;
 *   rw: delete those three, lowest first; add the 1 GiB slot rw.
 * Slot numbers come as the library hands them out (backends/kvm_slots.h): the last number
 * freed is the next taken, numbers never taken in ascending order from 1.
 *
 * The set-up runs one operation untimed and checks it with the vCPU (a two-instruction
 * program, `mov [rdi], rax; hlt`): between the changes a write to the page exits for MMIO
 * (the read-only slot) and a write to the page above it lands; afterwards a write to the page
 * lands. As protect.kvm's set-up, this has the vCPU run before the measured operations.
 */
#include "areas.h"
#include "harness.h"
#include "protect_page.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__linux__)

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvm_vcpu.h"
#include "mb_errors.h"

static const uint8_t store_code[] = {
    0x48, 0x89, 0x07, /* mov [rdi], rax */
    0xf4,             /* hlt */
};
enum { SLOT_PRIVATE = 0, SPLIT = 3 /* slots of the RAM while the page is protected */ };

typedef struct slot_split {
  int kvm_fd, vm_fd, mem_fd;
  uint8_t *ram;
  mb_kvm_lm lm;
  mb_kvm_vcpu vcpu;
  uint32_t whole;          /* the slot of the whole RAM, while unprotected */
  uint32_t split[SPLIT];   /* the slots of the three parts, while protected */
  uint32_t free[SPLIT];    /* freed slot numbers, a stack */
  uint32_t nfree, fresh;   /* fresh: the next number never taken */
} slot_split;

static void slot_split_free(slot_split *s) {
  mb__kvm_vcpu_destroy(&s->vcpu);
  if (s->vm_fd >= 0)
    close(s->vm_fd);
  mb__kvm_lm_free(&s->lm);
  if (s->ram != NULL && s->ram != MAP_FAILED)
    munmap(s->ram, PROTECT_RAM_SIZE);
  if (s->mem_fd >= 0)
    close(s->mem_fd);
  if (s->kvm_fd >= 0)
    close(s->kvm_fd);
  free(s);
}

static void slot_split_teardown(void *state) { slot_split_free(state); }

/* ---- slots, as the library numbers and sets them ----------------------------------------- */

static uint32_t slot_take(slot_split *s) { return s->nfree ? s->free[--s->nfree] : s->fresh++; }
static void slot_give(slot_split *s, uint32_t slot) { s->free[s->nfree++] = slot; }

/* Sets (size > 0) or deletes (size == 0) a slot over the RAM: 0 or -errno. */
static int slot_set(slot_split *s, uint32_t slot, uint64_t gpa, uint64_t size, bool writable) {
  struct kvm_userspace_memory_region r = {
      .slot = slot,
      .flags = writable ? 0 : KVM_MEM_READONLY,
      .guest_phys_addr = gpa,
      .memory_size = size,
      .userspace_addr = size ? (uint64_t)(uintptr_t)(s->ram + gpa) : 0,
  };
  return ioctl(s->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0 ? -errno : 0;
}

/* The page read-only: the whole slot goes, the three parts come. */
static int split(slot_split *s) {
  const uint64_t end = PROTECT_GPA + PROTECT_PAGE_SIZE;
  int rc = slot_set(s, s->whole, 0, 0, true);
  if (rc != 0)
    return rc;
  slot_give(s, s->whole);
  s->split[0] = slot_take(s);
  if ((rc = slot_set(s, s->split[0], 0, PROTECT_GPA, true)) != 0)
    return rc;
  s->split[1] = slot_take(s);
  if ((rc = slot_set(s, s->split[1], PROTECT_GPA, PROTECT_PAGE_SIZE, false)) != 0)
    return rc;
  s->split[2] = slot_take(s);
  return slot_set(s, s->split[2], end, PROTECT_RAM_SIZE - end, true);
}

/* The page read-write again: the three parts go, the whole slot comes back. */
static int join(slot_split *s) {
  static const uint64_t gpa[SPLIT] = {0, PROTECT_GPA, PROTECT_GPA + PROTECT_PAGE_SIZE};
  for (int i = 0; i < SPLIT; i++) {
    int rc = slot_set(s, s->split[i], gpa[i], 0, true);
    if (rc != 0)
      return rc;
    slot_give(s, s->split[i]);
  }
  s->whole = slot_take(s);
  return slot_set(s, s->whole, 0, PROTECT_RAM_SIZE, true);
}

/* ---- the VM ----------------------------------------------------------------------------- */

/* /dev/kvm, usable (read-only slots included), and a VM: 0 or mb_bench_skip(). */
static int vm_open(mb_bench *b, slot_split *s) {
  if ((s->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0)
    return mb_bench_skip(b, "/dev/kvm: %s", strerror(errno));
  if (!mb__kvm_usable(s->kvm_fd))
    return mb_bench_skip(b, "/dev/kvm: KVM API version or capabilities missing");
  if ((s->vm_fd = ioctl(s->kvm_fd, KVM_CREATE_VM, 0)) < 0)
    return mb_bench_skip(b, "KVM_CREATE_VM: %s", strerror(errno));
  return 0;
}

/* The guest RAM: a 1 GiB memfd, mapped shared, as one writable slot. */
static int vm_ram(mb_bench *b, slot_split *s) {
  if ((s->mem_fd = memfd_create("mb-bench-slot-split", MFD_CLOEXEC)) < 0 ||
      ftruncate(s->mem_fd, (off_t)PROTECT_RAM_SIZE) != 0)
    return mb_bench_fail(b, "memfd: %s", strerror(errno));
  s->ram = mmap(NULL, PROTECT_RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, s->mem_fd, 0);
  if (s->ram == MAP_FAILED)
    return mb_bench_fail(b, "mmap: %s", strerror(errno));
  s->whole = slot_take(s);
  int rc = slot_set(s, s->whole, 0, PROTECT_RAM_SIZE, true);
  return rc ? mb_bench_fail(b, "KVM_SET_USER_MEMORY_REGION: %s", strerror(-rc)) : 0;
}

/* The private memory with the program, and the vCPU in long mode over it. */
static int vm_vcpu(mb_bench *b, slot_split *s) {
  struct kvm_cpuid2 *cpuid = NULL;
  int rc = mb__kvm_cpuid_get(s->kvm_fd, &cpuid);
  if (rc == 0 && (rc = mb__kvm_lm_plan(&s->lm, cpuid, PROTECT_MAX_ADDR, MB_KVM_LM_PAGE)) == 0 &&
      (rc = mb__kvm_lm_alloc(&s->lm, store_code, sizeof store_code)) == 0 &&
      (rc = mb__kvm_lm_slot(&s->lm, s->vm_fd, SLOT_PRIVATE)) == 0)
    rc = mb__kvm_vcpu_create(&s->vcpu, s->kvm_fd, s->vm_fd, 0, cpuid, &s->lm);
  free(cpuid);
  if (rc == MB_E_UNSUPPORTED)
    return mb_bench_skip(b, "KVM: no vCPU in long mode here");
  return rc ? mb_bench_fail(b, "the vCPU: error %d", rc) : 0;
}

/* ---- the operation ------------------------------------------------------------------------ */

static int slot_split_run(mb_bench *b, void *state, uint32_t n) {
  slot_split *s = state;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t t0 = mb_bench_now_ns();
    int rc = split(s);
    if (rc == 0)
      rc = join(s);
    uint64_t t1 = mb_bench_now_ns();
    if (rc != 0)
      return mb_bench_fail(b, "KVM_SET_USER_MEMORY_REGION: %s", strerror(-rc));
    mb_bench_sample(b, (double)(t1 - t0));
  }
  return 0;
}

/* ---- set-up ------------------------------------------------------------------------------- */

/* The vCPU stores v at gpa: 0 (it halted), 1 (an MMIO exit there, drained), or a failure. */
static int guest_store(mb_bench *b, slot_split *s, uint64_t gpa, uint64_t v) {
  struct kvm_regs regs = {.rip = s->lm.base + MB_KVM_LM_CODE,
                          .rsp = mb__kvm_lm_stack_top(&s->lm), .rflags = 0x2, .rdi = gpa,
                          .rax = v};
  if (ioctl(s->vcpu.fd, KVM_SET_SREGS, &s->vcpu.sregs) < 0 ||
      ioctl(s->vcpu.fd, KVM_SET_REGS, &regs) < 0)
    return mb_bench_fail(b, "check: vCPU registers: %s", strerror(errno));
  const struct kvm_run *run = s->vcpu.run;
  for (;;) {
    int rc = ioctl(s->vcpu.fd, KVM_RUN, 0), err = rc < 0 ? errno : 0;
    if ((rc < 0 && (err == EINTR || err == EAGAIN)) ||
        (rc == 0 && run->exit_reason == KVM_EXIT_INTR))
      continue;
    if (rc == 0 && run->exit_reason == KVM_EXIT_HLT)
      return 0;
    if (rc == 0 && run->exit_reason == KVM_EXIT_MMIO && run->mmio.phys_addr == gpa &&
        run->mmio.is_write)
      return mb__kvm_vcpu_drain_mmio(&s->vcpu)
                 ? 1
                 : mb_bench_fail(b, "check: the vCPU's MMIO exit did not drain");
    return mb_bench_fail(b, "check: guest store: KVM_RUN %d (%s), exit reason %u", rc,
                         rc < 0 ? strerror(err) : "ok", run->exit_reason);
  }
}

/* One operation, untimed, checked between and after its changes. */
static int slot_split_check(mb_bench *b, slot_split *s) {
  const uint64_t above = PROTECT_GPA + PROTECT_PAGE_SIZE;
  int rc = split(s);
  if (rc != 0)
    return mb_bench_fail(b, "check: split: KVM_SET_USER_MEMORY_REGION: %s", strerror(-rc));
  if ((rc = guest_store(b, s, PROTECT_GPA, 1)) != 1)
    return rc < 0 ? rc : mb_bench_fail(b, "check: a write to the read-only page landed");
  uint64_t got;
  if ((rc = guest_store(b, s, above, 2)) != 0 ||
      (memcpy(&got, s->ram + above, sizeof got), got != 2))
    return rc < 0 ? rc : mb_bench_fail(b, "check: a write next to the read-only page failed");
  if ((rc = join(s)) != 0)
    return mb_bench_fail(b, "check: join: KVM_SET_USER_MEMORY_REGION: %s", strerror(-rc));
  if ((rc = guest_store(b, s, PROTECT_GPA, 3)) != 0 ||
      (memcpy(&got, s->ram + PROTECT_GPA, sizeof got), got != 3))
    return rc < 0 ? rc : mb_bench_fail(b, "check: a write to the page after the join failed");
  return 0;
}

static int slot_split_setup(mb_bench *b, void **state) {
  slot_split *s = calloc(1, sizeof *s);
  if (s == NULL)
    return -ENOMEM;
  s->kvm_fd = s->vm_fd = s->mem_fd = s->vcpu.fd = -1;
  s->fresh = SLOT_PRIVATE + 1; /* the library's slots start after its private one */
  int rc = vm_open(b, s);
  if (rc == 0)
    rc = vm_ram(b, s);
  if (rc == 0)
    rc = vm_vcpu(b, s);
  if (rc == 0)
    rc = slot_split_check(b, s);
  if (rc != 0) {
    slot_split_free(s);
    return rc;
  }
  *state = s;
  return 0;
}

#else

static int slot_split_setup(mb_bench *b, void **state) {
  (void)state;
  return mb_bench_skip(b, "the KVM guest program needs x86-64 Linux");
}
static int slot_split_run(mb_bench *b, void *state, uint32_t n) {
  (void)b, (void)state, (void)n;
  return 0;
}
static void slot_split_teardown(void *state) { (void)state; }

#endif

/* ---- registration --------------------------------------------------------------------------- */

static const mb_bench_def slot_split_benches[] = {
    {.name = "syscalls.slot_split", .unit = MB_BENCH_NS, .setup = slot_split_setup,
     .run = slot_split_run, .teardown = slot_split_teardown,
     .flags = MB_BENCH_SELF_TIMED | MB_BENCH_CPU,
     .doc = "the KVM slot deletes and adds of one page of a 1 GiB slot made read-only, then "
            "writable again"},
};

void mb_bench_area_baseline_slot_split(void) { MB_BENCH_REGISTER_ALL(slot_split_benches); }
