/* kvm_vcpu.c: a long-mode x86-64 vCPU for guest code of one's own (see kvm_vcpu.h): the
 * CPUID KVM supports, the private memory's plan, its identity page tables and GDT, and the
 * special registers of 64-bit long mode. */
#include "kvm_vcpu.h"

#if defined(__x86_64__) && defined(__linux__)

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mb_errors.h"

#define PAGE ((uint64_t)MB_KVM_LM_PAGE)
#define GIB (1ull << 30)
#define MIB2 (1ull << 21)
#define PML4E_SPAN (1ull << 39)
#define VA_LIMIT (1ull << 47) /* identity mapping needs canonical lower-half addresses */

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

static const uint64_t lm_gdt[] = {
    0,                     /* null */
    0x00af9b000000ffffull, /* 0x08: 64-bit code, DPL 0 */
    0x00cf93000000ffffull, /* 0x10: data, DPL 0 */
};

/* ---- KVM and its CPUID ------------------------------------------------------------------ */

int mb__kvm_unsupported_unless_resource(int err) {
  return (err == EMFILE || err == ENFILE || err == ENOMEM) ? -err : MB_E_UNSUPPORTED;
}

static bool has_cap(int kvm_fd, long cap) {
  return ioctl(kvm_fd, KVM_CHECK_EXTENSION, cap) > 0;
}

bool mb__kvm_usable(int kvm_fd) {
  return ioctl(kvm_fd, KVM_GET_API_VERSION, 0) == KVM_API_VERSION &&
         has_cap(kvm_fd, KVM_CAP_USER_MEMORY) && has_cap(kvm_fd, KVM_CAP_READONLY_MEM) &&
         has_cap(kvm_fd, KVM_CAP_IMMEDIATE_EXIT) && has_cap(kvm_fd, KVM_CAP_EXT_CPUID);
}

int mb__kvm_cpuid_get(int kvm_fd, struct kvm_cpuid2 **out) {
  for (uint32_t n = 64; n <= 4096; n *= 2) {
    struct kvm_cpuid2 *c = calloc(1, sizeof *c + n * sizeof c->entries[0]);
    if (!c)
      return -ENOMEM;
    c->nent = n;
    if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
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

/* ---- the private memory ------------------------------------------------------------------ */

int mb__kvm_lm_plan(mb_kvm_lm *lm, const struct kvm_cpuid2 *c, uint64_t guest_end,
                    uint64_t data_size) {
  *lm = (mb_kvm_lm){0};
  if (data_size % PAGE != 0 || guest_end > VA_LIMIT)
    return MB_E_INVALID;
  const struct kvm_cpuid_entry2 *ext = cpuid_find(c, 0x80000001);
  const struct kvm_cpuid_entry2 *addr = cpuid_find(c, 0x80000008);
  if (!ext || !(ext->edx & CPUID_LM))
    return MB_E_UNSUPPORTED;
  lm->gb_pages = (ext->edx & CPUID_PDPE1GB) != 0;
  unsigned phys_bits = addr ? (addr->eax & 0xff) : 36;
  lm->base = (guest_end + MIB2 - 1) & ~(MIB2 - 1);
  lm->cover_end = ((lm->base + GIB - 1) & ~(GIB - 1)) + GIB; /* holds all private memory */
  if (lm->cover_end > VA_LIMIT)
    return MB_E_UNSUPPORTED;
  uint64_t pml4_entries = (lm->cover_end + PML4E_SPAN - 1) / PML4E_SPAN;
  uint64_t pds = lm->gb_pages ? 0 : lm->cover_end / GIB;
  lm->data_size = data_size;
  lm->pt_off = MB_KVM_LM_DATA + data_size;
  lm->size = lm->pt_off + (1 + pml4_entries + pds) * PAGE;
  if (phys_bits < 64 && lm->base + lm->size > (1ull << phys_bits))
    return MB_E_UNSUPPORTED;
  return 0;
}

/* Identity tables for [0, cover_end): the PML4, its PDPTs (one page per 512 GiB, laid out as
 * one array indexed by GiB) and, for 2 MiB pages, the PDs (one array indexed by 2 MiB). */
static void build_tables(mb_kvm_lm *lm) {
  uint64_t *pml4 = (uint64_t *)(void *)(lm->host + lm->pt_off);
  uint64_t pml4_entries = (lm->cover_end + PML4E_SPAN - 1) / PML4E_SPAN;
  uint64_t *pdpt = pml4 + 512;
  uint64_t *pd = pdpt + 512 * pml4_entries;
  uint64_t pdpt_gpa = lm->base + lm->pt_off + PAGE;
  uint64_t pd_gpa = pdpt_gpa + pml4_entries * PAGE;
  uint64_t gibs = lm->cover_end / GIB;
  for (uint64_t i = 0; i < pml4_entries; i++)
    pml4[i] = (pdpt_gpa + i * PAGE) | PTE_P | PTE_W;
  for (uint64_t g = 0; g < gibs; g++)
    pdpt[g] = lm->gb_pages ? (g * GIB) | PTE_P | PTE_W | PTE_PS
                           : (pd_gpa + g * PAGE) | PTE_P | PTE_W;
  if (!lm->gb_pages)
    for (uint64_t m = 0; m < gibs * 512; m++)
      pd[m] = (m * MIB2) | PTE_P | PTE_W | PTE_PS;
}

int mb__kvm_lm_alloc(mb_kvm_lm *lm, const void *code, size_t code_size) {
  if (code_size > PAGE)
    return MB_E_INVALID;
  void *m = mmap(NULL, lm->size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED)
    return -errno;
  lm->host = m;
  memcpy(lm->host + MB_KVM_LM_CODE, code, code_size);
  memcpy(lm->host + MB_KVM_LM_GDT, lm_gdt, sizeof lm_gdt);
  build_tables(lm);
  return 0;
}

void mb__kvm_lm_free(mb_kvm_lm *lm) {
  if (lm->host)
    munmap(lm->host, lm->size);
  lm->host = NULL;
}

int mb__kvm_lm_slot(const mb_kvm_lm *lm, int vm_fd, uint32_t slot) {
  struct kvm_userspace_memory_region r = {
      .slot = slot,
      .flags = 0,
      .guest_phys_addr = lm->base,
      .memory_size = lm->size,
      .userspace_addr = (uintptr_t)lm->host,
  };
  return ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0 ? -errno : 0;
}

/* ---- the vCPU ------------------------------------------------------------------------------ */

/* Flat 64-bit segments from the GDT above, paging on, the tables in CR3. */
static void long_mode_sregs(const mb_kvm_lm *lm, struct kvm_sregs *s) {
  struct kvm_segment code = {.base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 11,
                             .present = 1, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1};
  struct kvm_segment data = code;
  data.selector = 0x10;
  data.type = 3;
  data.db = 1;
  data.l = 0;
  s->cs = code;
  s->ds = s->es = s->fs = s->gs = s->ss = data;
  s->gdt.base = lm->base + MB_KVM_LM_GDT;
  s->gdt.limit = sizeof lm_gdt - 1;
  s->idt.base = 0;
  s->idt.limit = 0;
  s->cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
  s->cr3 = lm->base + lm->pt_off;
  s->cr4 = CR4_PAE;
  s->efer = EFER_LME | EFER_LMA;
}

int mb__kvm_vcpu_create(mb_kvm_vcpu *v, int kvm_fd, int vm_fd, unsigned long id,
                        const struct kvm_cpuid2 *c, const mb_kvm_lm *lm) {
  v->fd = ioctl(vm_fd, KVM_CREATE_VCPU, id);
  if (v->fd < 0)
    return mb__kvm_unsupported_unless_resource(errno);
  int size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (size < (int)sizeof *v->run)
    return MB_E_UNSUPPORTED;
  void *run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
  if (run == MAP_FAILED)
    return -errno;
  v->run = run;
  v->run_size = (size_t)size;
  /* The CPUID first: KVM checks EFER.LME against the guest's CPUID (long mode). */
  if (ioctl(v->fd, KVM_SET_CPUID2, c) < 0 || ioctl(v->fd, KVM_GET_SREGS, &v->sregs) < 0)
    return -errno;
  long_mode_sregs(lm, &v->sregs);
  return ioctl(v->fd, KVM_SET_SREGS, &v->sregs) < 0 ? -errno : 0;
}

void mb__kvm_vcpu_destroy(mb_kvm_vcpu *v) {
  if (v->run)
    munmap(v->run, v->run_size);
  if (v->fd >= 0)
    close(v->fd);
  v->run = NULL;
  v->fd = -1;
}

bool mb__kvm_vcpu_drain_mmio(mb_kvm_vcpu *v) {
  struct kvm_run *run = v->run;
  run->immediate_exit = 1;
  int i = 0;
  for (; i < MMIO_DRAIN_MAX && run->exit_reason == KVM_EXIT_MMIO; i++) {
    if (!run->mmio.is_write)
      memset(run->mmio.data, 0xff, sizeof run->mmio.data);
    if (ioctl(v->fd, KVM_RUN, 0) < 0)
      break; /* EINTR: nothing is pending any more */
  }
  run->immediate_exit = 0;
  return i < MMIO_DRAIN_MAX;
}

#endif
