/* kvm.c: the KVM partition backend: a real KVM VM (/dev/kvm, x86-64) with one vCPU.
 *
 * Map. Each map() is one KVM user memory slot at gpa -> host_va, KVM_MEM_READONLY when the
 * piece is not writable. Slot 0 is the backend's own (below); the others are handed out and
 * recycled as pieces come and go. When KVM has no slot left, map() returns -ENOSPC.
 *
 * Guest program. access() has the vCPU perform the access, so the answer is KVM's own. The
 * vCPU runs in 64-bit long mode on identity page tables that map every guest physical address
 * below cover_end (1 GiB pages when the CPU offers pdpe1gb, else 2 MiB pages). Its code, GDT,
 * stack, page tables and a scratch buffer live in private memory: slot 0, at priv_base =
 * max_addr rounded up to 2 MiB, outside the guest range [0, max_addr) that the partition
 * maps, and never reported by ranges(). The program is two instructions:
 *
 *       rep movsb      ; copy rcx bytes from [rsi] to [rdi]
 *       hlt            ; done: KVM_EXIT_HLT (there is no in-kernel irqchip)
 *
 * A read runs it with rsi = gpa, rdi = scratch and then copies the scratch to the caller's
 * buffer; a write fills the scratch first and runs it with rsi = scratch, rdi = gpa. Longer
 * accesses go in scratch-sized chunks. Every run sets rip, rsp, rflags, rsi, rdi and rcx
 * afresh, so a failed run leaves nothing behind; the one exception, an MMIO exit, which KVM
 * finishes on the next KVM_RUN, is drained at once (drain_mmio). The IDT is empty: a guest
 * exception would triple-fault (KVM_EXIT_SHUTDOWN -> -EIO), and then the special registers
 * are loaded again before the next run.
 *
 * Outcome of a run: HLT -> 0. KVM_EXIT_MMIO (no slot at the address, or a write to a
 * read-only slot) -> MB_E_MMIO. KVM_RUN failing with EFAULT, or KVM_EXIT_MEMORY_FAULT (the
 * slot's host memory cannot serve it: a PROT_NONE hole, a write to a read-only page) ->
 * MB_E_FAULT. Bytes before the failing one may already have been copied, as on a real CPU.
 *
 * Not done, on purpose: KVM_SET_TSS_ADDR and KVM_SET_IDENTITY_MAP_ADDR, which only Intel CPUs
 * without "unrestricted guest" (before 2010) need to emulate real mode; the vCPU never runs
 * in real mode (its registers are set straight to long mode).
 */
#include <errno.h>
#include <stdlib.h>

#include "mb_range.h"
#include "partition.h"
#include "pieces.h"

#if defined(__x86_64__) && defined(__linux__)

#include <fcntl.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "range_tree.h"

#ifndef KVM_EXIT_MEMORY_FAULT
#define KVM_EXIT_MEMORY_FAULT 39 /* Linux 6.8; older headers lack it */
#endif

#define PAGE ((uint64_t)MB_PAGE_SIZE)
#define GIB (1ull << 30)
#define MIB2 (1ull << 21)
#define PML4E_SPAN (1ull << 39)
#define VA_LIMIT (1ull << 47) /* identity mapping needs canonical lower-half addresses */

/* Private memory layout (offsets from priv_base). */
enum {
  CODE_OFF = 0x0000,
  GDT_OFF = 0x1000,
  STACK_OFF = 0x2000, /* one page; rsp starts at its top */
  SCRATCH_OFF = 0x3000,
  SCRATCH_SIZE = 0x10000,
  PT_OFF = SCRATCH_OFF + SCRATCH_SIZE, /* PML4, then PDPTs, then PDs (2 MiB pages only) */
};

#define CR0_PE (1ull << 0)
#define CR0_MP (1ull << 1)
#define CR0_ET (1ull << 4)
#define CR0_NE (1ull << 5)
#define CR0_WP (1ull << 16)
#define CR0_PG (1ull << 31)
#define CR4_PAE (1ull << 5)
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)
#define PTE_P (1ull << 0)
#define PTE_W (1ull << 1)
#define PTE_PS (1ull << 7)
#define CPUID_LM (1u << 29)      /* 0x80000001 edx */
#define CPUID_PDPE1GB (1u << 26) /* 0x80000001 edx */

#define MMIO_DRAIN_MAX 65536

static const uint8_t guest_code[] = {0xf3, 0xa4, /* rep movsb */ 0xf4 /* hlt */};
static const uint64_t guest_gdt[] = {
    0,                     /* null */
    0x00af9b000000ffffull, /* 0x08: 64-bit code, DPL 0 */
    0x00cf93000000ffffull, /* 0x10: data, DPL 0 */
};

typedef struct kvm_part {
  uint64_t max_addr;
  int kvm_fd, vm_fd, vcpu_fd;
  struct kvm_run *run;
  size_t run_size;
  uint8_t *priv; /* host memory of slot 0 */
  uint64_t priv_base, priv_size, cover_end;
  bool gb_pages;
  mb_rtree pieces;
  uint32_t nslots;      /* user slots KVM offers (slot 0 is ours) */
  uint32_t fresh;       /* slots [fresh, nslots) have never been used */
  uint32_t *free_slots; /* recycled slot numbers, a stack of nfree */
  uint32_t nfree;
  bool need_sregs;      /* load sregs before the next run (after an unexpected exit) */
  bool stuck;           /* an MMIO exit could not be drained: the vCPU is unusable */
  struct kvm_sregs sregs;
} kvm_part;


/* ---- slots ---------------------------------------------------------------------------- */

static int slot_take(kvm_part *p, uint32_t *slot) {
  if (p->nfree > 0)
    *slot = p->free_slots[--p->nfree];
  else if (p->fresh < p->nslots)
    *slot = p->fresh++;
  else
    return -ENOSPC;
  return 0;
}

static void slot_give(kvm_part *p, uint32_t slot) {
  p->free_slots[p->nfree++] = slot; /* at most nslots - 1 are ever out */
}

/* Sets (size > 0) or deletes (size == 0) a slot: 0 or -errno. */
static int slot_set(kvm_part *p, uint32_t slot, uint64_t gpa, uint64_t size, const void *host,
                    bool writable) {
  struct kvm_userspace_memory_region r = {
      .slot = slot,
      .flags = writable ? 0 : KVM_MEM_READONLY,
      .guest_phys_addr = gpa,
      .memory_size = size,
      .userspace_addr = (uintptr_t)host,
  };
  return ioctl(p->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0 ? -errno : 0;
}

/* ---- creation ------------------------------------------------------------------------- */

/* "KVM is not usable here" for errors that say so; other errors (no fds, no memory) stay. */
static int unsupported_unless_resource(int err) {
  return (err == EMFILE || err == ENFILE || err == ENOMEM) ? -err : MB_E_UNSUPPORTED;
}

static bool has_cap(const kvm_part *p, long cap) {
  return ioctl(p->kvm_fd, KVM_CHECK_EXTENSION, cap) > 0;
}

static int open_vm(kvm_part *p) {
  p->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (p->kvm_fd < 0)
    return unsupported_unless_resource(errno);
  if (ioctl(p->kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
    return MB_E_UNSUPPORTED;
  if (!has_cap(p, KVM_CAP_USER_MEMORY) || !has_cap(p, KVM_CAP_READONLY_MEM) ||
      !has_cap(p, KVM_CAP_IMMEDIATE_EXIT) || !has_cap(p, KVM_CAP_EXT_CPUID))
    return MB_E_UNSUPPORTED;
  int n = ioctl(p->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS);
  p->nslots = n > 1 ? (uint32_t)n : 32; /* the documented default */
  p->vm_fd = ioctl(p->kvm_fd, KVM_CREATE_VM, 0);
  if (p->vm_fd < 0)
    return unsupported_unless_resource(errno);
  p->free_slots = calloc(p->nslots, sizeof *p->free_slots);
  if (!p->free_slots)
    return -ENOMEM;
  p->fresh = 1;
  return 0;
}

/* The CPUID KVM supports, which the vCPU gets as is (malloc'd). */
static int cpuid_get(kvm_part *p, struct kvm_cpuid2 **out) {
  for (uint32_t n = 64; n <= 4096; n *= 2) {
    struct kvm_cpuid2 *c = calloc(1, sizeof *c + n * sizeof c->entries[0]);
    if (!c)
      return -ENOMEM;
    c->nent = n;
    if (ioctl(p->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
      *out = c;
      return 0;
    }
    int err = errno;
    free(c);
    if (err != E2BIG)
      return -err;
  }
  return -E2BIG;
}

static const struct kvm_cpuid_entry2 *cpuid_find(const struct kvm_cpuid2 *c, uint32_t fn) {
  for (uint32_t i = 0; i < c->nent; i++)
    if (c->entries[i].function == fn && c->entries[i].index == 0)
      return &c->entries[i];
  return NULL;
}

/* Places the private memory and sizes the page tables from the CPU's features. */
static int plan_private(kvm_part *p, const struct kvm_cpuid2 *c) {
  const struct kvm_cpuid_entry2 *ext = cpuid_find(c, 0x80000001);
  const struct kvm_cpuid_entry2 *addr = cpuid_find(c, 0x80000008);
  if (!ext || !(ext->edx & CPUID_LM))
    return MB_E_UNSUPPORTED;
  p->gb_pages = (ext->edx & CPUID_PDPE1GB) != 0;
  unsigned phys_bits = addr ? (addr->eax & 0xff) : 36;
  p->priv_base = (p->max_addr + MIB2 - 1) & ~(MIB2 - 1);
  p->cover_end = ((p->priv_base + GIB - 1) & ~(GIB - 1)) + GIB; /* holds all private memory */
  if (p->cover_end > VA_LIMIT)
    return MB_E_UNSUPPORTED;
  uint64_t pml4_entries = (p->cover_end + PML4E_SPAN - 1) / PML4E_SPAN;
  uint64_t pds = p->gb_pages ? 0 : p->cover_end / GIB;
  p->priv_size = PT_OFF + (1 + pml4_entries + pds) * PAGE;
  if (phys_bits < 64 && p->priv_base + p->priv_size > (1ull << phys_bits))
    return MB_E_UNSUPPORTED;
  return 0;
}

/* Identity tables for [0, cover_end): the PML4, its PDPTs (one page per 512 GiB, laid out as
 * one array indexed by GiB) and, for 2 MiB pages, the PDs (one array indexed by 2 MiB). */
static void build_tables(kvm_part *p) {
  uint64_t *pml4 = (uint64_t *)(void *)(p->priv + PT_OFF);
  uint64_t pml4_entries = (p->cover_end + PML4E_SPAN - 1) / PML4E_SPAN;
  uint64_t *pdpt = pml4 + 512;
  uint64_t *pd = pdpt + 512 * pml4_entries;
  uint64_t pdpt_gpa = p->priv_base + PT_OFF + PAGE;
  uint64_t pd_gpa = pdpt_gpa + pml4_entries * PAGE;
  uint64_t gibs = p->cover_end / GIB;
  for (uint64_t i = 0; i < pml4_entries; i++)
    pml4[i] = (pdpt_gpa + i * PAGE) | PTE_P | PTE_W;
  for (uint64_t g = 0; g < gibs; g++)
    pdpt[g] = p->gb_pages ? (g * GIB) | PTE_P | PTE_W | PTE_PS : (pd_gpa + g * PAGE) | PTE_P | PTE_W;
  if (!p->gb_pages)
    for (uint64_t m = 0; m < gibs * 512; m++)
      pd[m] = (m * MIB2) | PTE_P | PTE_W | PTE_PS;
}

static int setup_private(kvm_part *p) {
  void *m = mmap(NULL, p->priv_size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED)
    return -errno;
  p->priv = m;
  memcpy(p->priv + CODE_OFF, guest_code, sizeof guest_code);
  memcpy(p->priv + GDT_OFF, guest_gdt, sizeof guest_gdt);
  build_tables(p);
  return slot_set(p, 0, p->priv_base, p->priv_size, p->priv, true);
}

/* Flat 64-bit segments from the GDT above, paging on, the tables in CR3. */
static void long_mode_sregs(kvm_part *p, struct kvm_sregs *s) {
  struct kvm_segment code = {.base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 11,
                             .present = 1, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1};
  struct kvm_segment data = code;
  data.selector = 0x10;
  data.type = 3;
  data.db = 1;
  data.l = 0;
  s->cs = code;
  s->ds = s->es = s->fs = s->gs = s->ss = data;
  s->gdt.base = p->priv_base + GDT_OFF;
  s->gdt.limit = sizeof guest_gdt - 1;
  s->idt.base = 0;
  s->idt.limit = 0;
  s->cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
  s->cr3 = p->priv_base + PT_OFF;
  s->cr4 = CR4_PAE;
  s->efer = EFER_LME | EFER_LMA;
}

static int setup_vcpu(kvm_part *p, const struct kvm_cpuid2 *c) {
  p->vcpu_fd = ioctl(p->vm_fd, KVM_CREATE_VCPU, 0);
  if (p->vcpu_fd < 0)
    return unsupported_unless_resource(errno);
  int size = ioctl(p->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (size < (int)sizeof *p->run)
    return MB_E_UNSUPPORTED;
  void *run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, p->vcpu_fd, 0);
  if (run == MAP_FAILED)
    return -errno;
  p->run = run;
  p->run_size = (size_t)size;
  /* The CPUID first: KVM checks EFER.LME against the guest's CPUID (long mode). */
  if (ioctl(p->vcpu_fd, KVM_SET_CPUID2, c) < 0 || ioctl(p->vcpu_fd, KVM_GET_SREGS, &p->sregs) < 0)
    return -errno;
  long_mode_sregs(p, &p->sregs);
  return ioctl(p->vcpu_fd, KVM_SET_SREGS, &p->sregs) < 0 ? -errno : 0;
}

static void kvm_destroy(void *inst);

static int kvm_create(uint64_t max_addr, void **inst) {
  if (max_addr == 0 || !mb_page_aligned(max_addr) || max_addr > VA_LIMIT)
    return -EINVAL;
  kvm_part *p = calloc(1, sizeof *p);
  if (!p)
    return -ENOMEM;
  p->max_addr = max_addr;
  p->kvm_fd = p->vm_fd = p->vcpu_fd = -1;
  mb_rtree_init(&p->pieces);
  struct kvm_cpuid2 *cpuid = NULL;
  int rc = open_vm(p);
  if (rc == 0)
    rc = cpuid_get(p, &cpuid);
  if (rc == 0)
    rc = plan_private(p, cpuid);
  if (rc == 0)
    rc = setup_private(p);
  if (rc == 0)
    rc = setup_vcpu(p, cpuid);
  free(cpuid);
  if (rc != 0) {
    kvm_destroy(p);
    return rc;
  }
  *inst = p;
  return 0;
}

static void unslot(mb_piece *pc, void *ctx) {
  slot_set(ctx, pc->slot, pc->node.start, 0, NULL, true);
}

static void kvm_destroy(void *inst) {
  kvm_part *p = inst;
  if (!p)
    return;
  mb_pieces_clear(&p->pieces, unslot, p);
  if (p->run)
    munmap(p->run, p->run_size);
  if (p->vcpu_fd >= 0)
    close(p->vcpu_fd);
  if (p->vm_fd >= 0)
    close(p->vm_fd); /* the VM goes with its last fd, private slot included */
  if (p->priv)
    munmap(p->priv, p->priv_size);
  if (p->kvm_fd >= 0)
    close(p->kvm_fd);
  free(p->free_slots);
  free(p);
}

/* ---- the map -------------------------------------------------------------------------- */

static int kvm_map(void *inst, uint64_t gpa, uint64_t size, void *host_va, bool writable) {
  kvm_part *p = inst;
  int rc = mb_pieces_check_map(&p->pieces, p->max_addr, gpa, size, host_va);
  if (rc != 0)
    return rc;
  uint32_t slot;
  if ((rc = slot_take(p, &slot)) != 0)
    return rc;
  rc = slot_set(p, slot, gpa, size, host_va, writable);
  if (rc == 0 && (rc = mb_pieces_add(&p->pieces, gpa, size, host_va, writable, slot)) != 0)
    slot_set(p, slot, gpa, 0, NULL, true);
  if (rc != 0)
    slot_give(p, slot);
  return rc;
}

static int kvm_unmap(void *inst, uint64_t gpa, uint64_t size) {
  kvm_part *p = inst;
  mb_piece *pc = mb_pieces_exact(&p->pieces, gpa, size);
  if (!pc)
    return -ENOENT;
  int rc = slot_set(p, pc->slot, gpa, 0, NULL, true);
  if (rc != 0)
    return rc;
  slot_give(p, pc->slot);
  mb_pieces_drop(&p->pieces, pc);
  return 0;
}

static size_t kvm_ranges(void *inst, mb_part_range *out, size_t max) {
  return mb_pieces_ranges(&((kvm_part *)inst)->pieces, out, max);
}

/* ---- access --------------------------------------------------------------------------- */

/* After an MMIO exit KVM holds the instruction half done and would finish it on the next
 * KVM_RUN, with the next access's registers. Finish it now without running any further guest
 * code: with immediate_exit set, KVM_RUN completes the pending MMIO (a read gets all-ones, as
 * from an empty bus) and returns EINTR; a rep movsb may exit for MMIO a few more times first. */
static void drain_mmio(kvm_part *p) {
  struct kvm_run *run = p->run;
  run->immediate_exit = 1;
  int i = 0;
  for (; i < MMIO_DRAIN_MAX && run->exit_reason == KVM_EXIT_MMIO; i++) {
    if (!run->mmio.is_write)
      memset(run->mmio.data, 0xff, sizeof run->mmio.data);
    if (ioctl(p->vcpu_fd, KVM_RUN, 0) < 0)
      break; /* EINTR: nothing is pending any more */
  }
  p->stuck = i == MMIO_DRAIN_MAX;
  p->need_sregs = true; /* cheap insurance: whatever the emulator did, start clean */
  run->immediate_exit = 0;
}

/* Runs the vCPU until the program ends or fails. */
static int run_program(kvm_part *p) {
  for (;;) {
    if (ioctl(p->vcpu_fd, KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN)
        continue;
      return errno == EFAULT ? MB_E_FAULT : -errno;
    }
    switch (p->run->exit_reason) {
    case KVM_EXIT_HLT:
      return 0;
    case KVM_EXIT_MMIO:
      drain_mmio(p);
      return MB_E_MMIO;
    case KVM_EXIT_MEMORY_FAULT:
      return MB_E_FAULT;
    case KVM_EXIT_INTR:
      continue;
    default: /* SHUTDOWN (a guest exception), FAIL_ENTRY, INTERNAL_ERROR, ... */
      p->need_sregs = true;
      return -EIO;
    }
  }
}

/* One run of the program: copy n bytes from guest address src to guest address dst. */
static int run_copy(kvm_part *p, uint64_t src, uint64_t dst, uint64_t n) {
  if (p->need_sregs) {
    if (ioctl(p->vcpu_fd, KVM_SET_SREGS, &p->sregs) < 0)
      return -errno;
    p->need_sregs = false;
  }
  struct kvm_regs regs = {
      .rip = p->priv_base + CODE_OFF,
      .rsp = p->priv_base + STACK_OFF + PAGE,
      .rflags = 0x2, /* the reserved bit; DF = 0: rep movsb goes up */
      .rsi = src,
      .rdi = dst,
      .rcx = n,
  };
  if (ioctl(p->vcpu_fd, KVM_SET_REGS, &regs) < 0)
    return -errno;
  return run_program(p);
}

static int kvm_access(void *inst, uint64_t gpa, void *buf, size_t len, bool write) {
  kvm_part *p = inst;
  if (len > p->max_addr || gpa > p->max_addr - len)
    return MB_E_INVALID;
  uint8_t *b = buf;
  uint8_t *scratch = p->priv + SCRATCH_OFF;
  uint64_t scratch_gpa = p->priv_base + SCRATCH_OFF;
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
};

#else /* no KVM on this platform */

static int kvm_create(uint64_t max_addr, void **inst) {
  (void)max_addr;
  (void)inst;
  return MB_E_UNSUPPORTED;
}

const mb_partition_ops mb_partition_kvm = {.name = "kvm", .create = kvm_create};

#endif
