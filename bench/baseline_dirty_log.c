/* baseline_dirty_log.c: the kernel floor of dirty.sync.kvm (spec/bench.md, version 2):
 *
 *   syscalls.dirty_log   KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG of a 1 GiB memory slot in
 *                        which the guest has dirtied 256 random pages since the last clear
 *                        (skipped without /dev/kvm).
 *
 * A KVM VM of the benchmark's own, made as dirty.sync.kvm's kvm partition makes its VM: the
 * guest RAM is slot 1, 1 GiB at GPA 0 over a 1 GiB memfd mapped shared, with
 * KVM_MEM_LOG_DIRTY_PAGES, on a VM with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled
 * (KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, without INITIALLY_SET, as the library enables it);
 * slot 0 is the vCPU's private memory (kvm_vcpu.h: code, GDT, stack, mailbox, page tables).
 *
 * One operation: untimed, the guest program below writes 8 bytes at the start of each of 256
 * distinct random pages (dirty_pick.h: the same sequence of page sets as dirty.sync.kvm) and
 * rings its doorbell: one KVM_RUN (bracketed as preparation: its CPU is not in cpu_ns). Timed:
 * KVM_GET_DIRTY_LOG of the slot into a bitmap, then KVM_CLEAR_DIRTY_LOG of those bits over the
 * whole slot (first page 0, every page), as the library's sync of the whole region does.
 *
 * The set-up runs one operation untimed and checks it: the log holds exactly the pages
 * written, and after the clear a read of the log finds none.
 */
#include "areas.h"
#include "dirty_pick.h"
#include "harness.h"

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

/* The guest program: writes rcx (the count, then down to 1) at each of the `count` guest
 * addresses of its mailbox (kvm_vcpu.h's data page, 0x3000 after the code), rings the
 * doorbell (OUT 0xe0) and starts over, reading the mailbox again.
 *   start: lea rbx, [rip + mailbox]
 *          mov rcx, [rbx]; lea rsi, [rbx + 8]      ; count, the addresses
 *          test rcx, rcx; jz done
 *   loop:  mov rdi, [rsi]; mov [rdi], rcx
 *          add rsi, 8; dec rcx; jnz loop
 *   done:  out 0xe0, al
 *          jmp start */
static const uint8_t writer_code[] = {
    0x48, 0x8d, 0x1d, 0xf9, 0x2f, 0x00, 0x00, /* 00 lea rbx, [rip + 0x2ff9] (= 0x3000) */
    0x48, 0x8b, 0x0b,                         /* 07 mov rcx, [rbx] */
    0x48, 0x8d, 0x73, 0x08,                   /* 0a lea rsi, [rbx + 8] */
    0x48, 0x85, 0xc9,                         /* 0e test rcx, rcx */
    0x74, 0x0f,                               /* 11 jz 0x22 (done) */
    0x48, 0x8b, 0x3e,                         /* 13 loop: mov rdi, [rsi] */
    0x48, 0x89, 0x0f,                         /* 16 mov [rdi], rcx */
    0x48, 0x83, 0xc6, 0x08,                   /* 19 add rsi, 8 */
    0x48, 0xff, 0xc9,                         /* 1d dec rcx */
    0x75, 0xf1,                               /* 20 jnz 0x13 (loop) */
    0xe6, 0xe0,                               /* 22 done: out 0xe0, al */
    0xeb, 0xda,                               /* 24 jmp 0x00 */
};
enum { DOORBELL_PORT = 0xe0, SLOT_PRIVATE = 0, SLOT_RAM = 1 };

typedef struct writer_mailbox {
  uint64_t count;
  uint64_t gpa[DIRTY_PAGES];
} writer_mailbox;
_Static_assert(sizeof(writer_mailbox) <= MB_KVM_LM_PAGE, "the mailbox is one page");

typedef struct dirty_log {
  int kvm_fd, vm_fd, mem_fd;
  void *ram;
  mb_kvm_lm lm;
  mb_kvm_vcpu vcpu;
  uint64_t rng;
  uint64_t bitmap[DIRTY_WORDS]; /* KVM_GET_DIRTY_LOG's */
  uint64_t seen[DIRTY_WORDS];   /* dirty_pick's scratch */
  uint64_t pages[DIRTY_PAGES];  /* the page numbers written since the last clear */
} dirty_log;

static void dirty_log_free(dirty_log *dl) {
  mb__kvm_vcpu_destroy(&dl->vcpu);
  if (dl->vm_fd >= 0)
    close(dl->vm_fd);
  mb__kvm_lm_free(&dl->lm);
  if (dl->ram != NULL && dl->ram != MAP_FAILED)
    munmap(dl->ram, DIRTY_RAM_SIZE);
  if (dl->mem_fd >= 0)
    close(dl->mem_fd);
  if (dl->kvm_fd >= 0)
    close(dl->kvm_fd);
  free(dl);
}

static void dirty_log_teardown(void *state) { dirty_log_free(state); }

/* ---- the VM ----------------------------------------------------------------------------- */

/* /dev/kvm, usable, with the manual clear protocol, and a VM: 0 or mb_bench_skip(). */
static int vm_open(mb_bench *b, dirty_log *dl) {
  if ((dl->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0)
    return mb_bench_skip(b, "/dev/kvm: %s", strerror(errno));
  if (!mb__kvm_usable(dl->kvm_fd))
    return mb_bench_skip(b, "/dev/kvm: KVM API version or capabilities missing");
  if (ioctl(dl->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) <= 0)
    return mb_bench_skip(b, "/dev/kvm: no KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2");
  if ((dl->vm_fd = ioctl(dl->kvm_fd, KVM_CREATE_VM, 0)) < 0)
    return mb_bench_skip(b, "KVM_CREATE_VM: %s", strerror(errno));
  struct kvm_enable_cap cap = {.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                               .args = {KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE}};
  if (ioctl(dl->vm_fd, KVM_ENABLE_CAP, &cap) < 0)
    return mb_bench_fail(b, "KVM_ENABLE_CAP manual dirty log: %s", strerror(errno));
  return 0;
}

/* The guest RAM: a 1 GiB memfd, mapped shared, as slot SLOT_RAM with dirty logging. */
static int vm_ram(mb_bench *b, dirty_log *dl) {
  if ((dl->mem_fd = memfd_create("mb-bench-dirty-log", MFD_CLOEXEC)) < 0 ||
      ftruncate(dl->mem_fd, (off_t)DIRTY_RAM_SIZE) != 0)
    return mb_bench_fail(b, "memfd: %s", strerror(errno));
  dl->ram = mmap(NULL, DIRTY_RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, dl->mem_fd, 0);
  if (dl->ram == MAP_FAILED)
    return mb_bench_fail(b, "mmap: %s", strerror(errno));
  struct kvm_userspace_memory_region r = {
      .slot = SLOT_RAM, .flags = KVM_MEM_LOG_DIRTY_PAGES, .guest_phys_addr = 0,
      .memory_size = DIRTY_RAM_SIZE, .userspace_addr = (uint64_t)(uintptr_t)dl->ram};
  if (ioctl(dl->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
    return mb_bench_fail(b, "KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));
  return 0;
}

/* The private memory with the program, and the vCPU in long mode at its start. */
static int vm_vcpu(mb_bench *b, dirty_log *dl) {
  struct kvm_cpuid2 *cpuid = NULL;
  int rc = mb__kvm_cpuid_get(dl->kvm_fd, &cpuid);
  if (rc == 0 && (rc = mb__kvm_lm_plan(&dl->lm, cpuid, DIRTY_RAM_SIZE, MB_KVM_LM_PAGE)) == 0 &&
      (rc = mb__kvm_lm_alloc(&dl->lm, writer_code, sizeof writer_code)) == 0 &&
      (rc = mb__kvm_lm_slot(&dl->lm, dl->vm_fd, SLOT_PRIVATE)) == 0)
    rc = mb__kvm_vcpu_create(&dl->vcpu, dl->kvm_fd, dl->vm_fd, 0, cpuid, &dl->lm);
  free(cpuid);
  if (rc == MB_E_UNSUPPORTED)
    return mb_bench_skip(b, "KVM: no vCPU in long mode here");
  if (rc != 0)
    return mb_bench_fail(b, "the vCPU: error %d", rc);
  struct kvm_regs regs = {.rip = dl->lm.base + MB_KVM_LM_CODE,
                          .rsp = mb__kvm_lm_stack_top(&dl->lm), .rflags = 0x2};
  if (ioctl(dl->vcpu.fd, KVM_SET_REGS, &regs) < 0)
    return mb_bench_fail(b, "KVM_SET_REGS: %s", strerror(errno));
  return 0;
}

/* ---- the operation ------------------------------------------------------------------------ */

/* Untimed: the guest writes DIRTY_PAGES random pages, one KVM_RUN to its doorbell. */
static int guest_writes(mb_bench *b, dirty_log *dl) {
  dirty_pick(&dl->rng, dl->seen, dl->pages);
  writer_mailbox *m = (writer_mailbox *)(void *)(dl->lm.host + MB_KVM_LM_DATA);
  m->count = DIRTY_PAGES;
  for (int i = 0; i < DIRTY_PAGES; i++)
    m->gpa[i] = dl->pages[i] * DIRTY_PAGE_SIZE;
  const struct kvm_run *run = dl->vcpu.run;
  for (;;) {
    int rc = ioctl(dl->vcpu.fd, KVM_RUN, 0), err = rc < 0 ? errno : 0;
    if ((rc < 0 && (err == EINTR || err == EAGAIN)) ||
        (rc == 0 && run->exit_reason == KVM_EXIT_INTR))
      continue;
    if (rc == 0 && run->exit_reason == KVM_EXIT_IO && run->io.port == DOORBELL_PORT)
      return 0;
    return mb_bench_fail(b, "guest: KVM_RUN %d (%s), exit reason %u", rc,
                         rc < 0 ? strerror(err) : "ok", run->exit_reason);
  }
}

/* Timed: the slot's log, and the clear of what it reported over the whole slot. */
static int get_and_clear(mb_bench *b, dirty_log *dl) {
  struct kvm_dirty_log get = {.slot = SLOT_RAM, .dirty_bitmap = dl->bitmap};
  if (ioctl(dl->vm_fd, KVM_GET_DIRTY_LOG, &get) < 0)
    return mb_bench_fail(b, "KVM_GET_DIRTY_LOG: %s", strerror(errno));
  struct kvm_clear_dirty_log clear = {.slot = SLOT_RAM, .num_pages = DIRTY_RAM_PAGES,
                                      .first_page = 0, .dirty_bitmap = dl->bitmap};
  if (ioctl(dl->vm_fd, KVM_CLEAR_DIRTY_LOG, &clear) < 0)
    return mb_bench_fail(b, "KVM_CLEAR_DIRTY_LOG: %s", strerror(errno));
  return 0;
}

static int dirty_log_run(mb_bench *b, void *state, uint32_t n) {
  dirty_log *dl = state;
  for (uint32_t i = 0; i < n; i++) {
    mb_bench_prep_begin(b);
    int rc = guest_writes(b, dl);
    mb_bench_prep_end(b);
    if (rc != 0)
      return rc;
    uint64_t t0 = mb_bench_now_ns();
    rc = get_and_clear(b, dl);
    uint64_t t1 = mb_bench_now_ns();
    if (rc != 0)
      return rc;
    mb_bench_sample(b, (double)(t1 - t0));
  }
  return 0;
}

/* ---- set-up ------------------------------------------------------------------------------- */

/* One operation, untimed: the log holds exactly the pages written; after the clear, none. */
static int dirty_log_check(mb_bench *b, dirty_log *dl) {
  int rc = guest_writes(b, dl);
  if (rc == 0)
    rc = get_and_clear(b, dl);
  if (rc == 0 && !dirty_bitmap_is(dl->bitmap, dl->pages, DIRTY_PAGES))
    return mb_bench_fail(b, "check: the log after %d guest writes is not the pages written",
                         DIRTY_PAGES);
  if (rc == 0)
    rc = get_and_clear(b, dl);
  if (rc == 0 && !dirty_bitmap_is(dl->bitmap, dl->pages, 0))
    return mb_bench_fail(b, "check: the log is not empty after its clear");
  return rc;
}

static int dirty_log_setup(mb_bench *b, void **state) {
  dirty_log *dl = calloc(1, sizeof *dl);
  if (dl == NULL)
    return -ENOMEM;
  dl->kvm_fd = dl->vm_fd = dl->mem_fd = dl->vcpu.fd = -1;
  dl->rng = DIRTY_SEED;
  int rc = vm_open(b, dl);
  if (rc == 0)
    rc = vm_ram(b, dl);
  if (rc == 0)
    rc = vm_vcpu(b, dl);
  if (rc == 0)
    rc = dirty_log_check(b, dl);
  if (rc != 0) {
    dirty_log_free(dl);
    return rc;
  }
  *state = dl;
  return 0;
}

#else

static int dirty_log_setup(mb_bench *b, void **state) {
  (void)state;
  return mb_bench_skip(b, "the KVM guest program needs x86-64 Linux");
}
static int dirty_log_run(mb_bench *b, void *state, uint32_t n) {
  (void)b, (void)state, (void)n;
  return 0;
}
static void dirty_log_teardown(void *state) { (void)state; }

#endif

/* ---- registration --------------------------------------------------------------------------- */

static const mb_bench_def dirty_log_benches[] = {
    {.name = "syscalls.dirty_log", .unit = MB_BENCH_NS, .setup = dirty_log_setup,
     .run = dirty_log_run, .teardown = dirty_log_teardown,
     .flags = MB_BENCH_SELF_TIMED | MB_BENCH_CPU,
     .doc = "KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG of a 1 GiB slot after the guest dirtied "
            "256 random pages (untimed)"},
};

void mb_bench_area_baseline_dirty_log(void) { MB_BENCH_REGISTER_ALL(dirty_log_benches); }
