/* kvm_attach.c: the kvm_attach partition backend: memory slots of a KVM VM the VMM owns (see
 * mb_partition.h). Each piece is one slot in the VMM's slot range; the piece map (pieces.h) says
 * which slot backs which guest range. kvm.c builds its own VM on this; kvm_dirty.c logs the
 * slots' dirty pages. */
#include <errno.h>
#include <stdlib.h>

#include "dirty_set.h"
#include "fault_inject.h"
#include "kvm_attach.h"
#include "mb_range.h"

#if defined(__linux__)

#include <linux/kvm.h>
#include <sys/ioctl.h>

static int ioctl_set_region(void *ctx, const struct kvm_userspace_memory_region *r) {
  int vm_fd = *(const int *)ctx;
  return ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, r) < 0 ? -errno : 0;
}

static uint32_t slot_flags(bool writable, bool logging) {
  return (writable ? 0 : KVM_MEM_READONLY) | (logging ? KVM_MEM_LOG_DIRTY_PAGES : 0);
}

/* Sets (size > 0) or deletes (size == 0) a slot: 0 or -errno. The fault-injection seam
 * (mem/fault_inject.h) sees every call, through the ioctl or the VMM's hook alike. */
static int slot_set(mb_kvm_attach *a, uint32_t slot, uint64_t gpa, uint64_t size,
                    const void *host, uint32_t flags) {
  struct kvm_userspace_memory_region r = {
      .slot = slot,
      .flags = flags,
      .guest_phys_addr = gpa,
      .memory_size = size,
      .userspace_addr = (uintptr_t)host,
  };
  if (mb__fi_fail(MB_FI_KVM_SET_REGION))
    return -errno;
  return a->set_region(a->ctx, &r);
}

/* The VM's slot limit (KVM_CAP_NR_MEMSLOTS), or 0 when vm_fd is not a KVM VM. */
static uint32_t vm_slot_limit(int vm_fd) {
  int n = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS);
  if (n <= 0)
    return 0;
  return (uint32_t)n < MB_KVM_SLOT_LIMIT ? (uint32_t)n : MB_KVM_SLOT_LIMIT;
}

/* The slot range the configuration asks for, checked against the VM's limit. */
static int plan_slots(const mb_kvm_attach_config *c, uint32_t *count) {
  uint32_t limit = MB_KVM_SLOT_LIMIT;
  if (!c->set_region && (limit = vm_slot_limit(c->vm_fd)) == 0)
    return MB_E_INVALID; /* not a KVM VM */
  if (c->slot_first >= limit)
    return MB_E_INVALID;
  *count = c->slot_count ? c->slot_count : limit - c->slot_first;
  return *count <= limit - c->slot_first ? 0 : MB_E_INVALID;
}

int mb__kvm_attach_init(mb_kvm_attach *a, uint64_t max_addr, const mb_kvm_attach_config *c) {
  *a = (mb_kvm_attach){0};
  if (!c || max_addr == 0 || !mb_page_aligned(max_addr))
    return MB_E_INVALID;
  uint32_t count;
  int rc = plan_slots(c, &count);
  if (rc == 0)
    rc = mb_kvm_slots_init(&a->slots, c->slot_first, count);
  if (rc != 0)
    return rc;
  a->max_addr = max_addr;
  a->vm_fd = c->vm_fd;
  a->set_region = c->set_region ? c->set_region : ioctl_set_region;
  a->ctx = c->set_region ? c->ctx : &a->vm_fd;
  a->get_dirty_log = c->get_dirty_log;
  a->clear_dirty_log = c->clear_dirty_log;
  a->enable_cap = c->enable_cap;
  a->hook_ctx = c->ctx;
  mb_rtree_init(&a->pieces);
  return 0;
}

/* The partition goes: a slot deleted while tracking still has its log saved first (whether
 * that works or not, the slot goes). */
static void unslot(mb_piece *pc, void *ctx) {
  mb_kvm_attach *a = ctx;
  if (pc->logging && a->dirty)
    (void)mb__kvm_dirty_save(a, pc);
  slot_set(a, pc->slot, pc->node.start, 0, NULL, 0);
}

void mb__kvm_attach_fini(mb_kvm_attach *a) {
  mb_pieces_clear(&a->pieces, unslot, a);
  mb_kvm_slots_fini(&a->slots);
  a->dirty = NULL;
  free(a->log);
  a->log = NULL;
}

int mb__kvm_attach_map(mb_kvm_attach *a, uint64_t gpa, uint64_t size, void *host,
                       bool writable) {
  int rc = mb_pieces_check_map(&a->pieces, a->max_addr, gpa, size, host);
  uint32_t slot;
  if (rc != 0 || (rc = mb_kvm_slots_take(&a->slots, &slot)) != 0)
    return rc;
  bool logging = a->dirty != NULL && writable; /* a read-only slot is never dirtied */
  rc = slot_set(a, slot, gpa, size, host, slot_flags(writable, logging));
  mb_piece *pc = NULL;
  if (rc == 0 && !(pc = mb_pieces_add(&a->pieces, gpa, size, host, writable, slot))) {
    slot_set(a, slot, gpa, 0, NULL, 0); /* out of memory: the new slot goes again */
    rc = -ENOMEM;
  }
  if (rc != 0) {
    mb_kvm_slots_give(&a->slots, slot);
    return rc;
  }
  pc->logging = logging;
  return 0;
}

int mb__kvm_attach_relog(mb_kvm_attach *a, mb_piece *pc, bool logging) {
  int rc = slot_set(a, pc->slot, pc->node.start, pc->node.end - pc->node.start, pc->host,
                    slot_flags(pc->writable, logging));
  if (rc == 0)
    pc->logging = logging;
  return rc;
}

int mb__kvm_attach_unmap(mb_kvm_attach *a, uint64_t gpa, uint64_t size) {
  mb_piece *pc = mb_pieces_exact(&a->pieces, gpa, size);
  if (!pc)
    return -ENOENT;
  int rc = pc->logging && a->dirty ? mb__kvm_dirty_save(a, pc) : 0;
  if (rc == 0)
    rc = slot_set(a, pc->slot, gpa, 0, NULL, 0);
  if (rc != 0)
    return rc; /* the slot is still there, and so is the piece */
  mb_kvm_slots_give(&a->slots, pc->slot);
  mb_pieces_drop(&a->pieces, pc);
  return 0;
}

/* ---- the backend ---------------------------------------------------------------------- */

static int attach_create(uint64_t max_addr, const void *config, void **inst) {
  mb_kvm_attach *a = malloc(sizeof *a);
  if (!a)
    return -ENOMEM;
  int rc = mb__kvm_attach_init(a, max_addr, config);
  if (rc != 0) {
    free(a);
    return rc;
  }
  *inst = a;
  return 0;
}

static void attach_destroy(void *inst) {
  if (!inst)
    return;
  mb__kvm_attach_fini(inst);
  free(inst);
}

static int attach_map(void *inst, uint64_t gpa, uint64_t size, void *host, bool writable) {
  return mb__kvm_attach_map(inst, gpa, size, host, writable);
}

static int attach_unmap(void *inst, uint64_t gpa, uint64_t size) {
  return mb__kvm_attach_unmap(inst, gpa, size);
}

static int attach_access(void *inst, uint64_t gpa, void *buf, size_t len, bool write) {
  mb_kvm_attach *a = inst;
  return mb_pieces_access(&a->pieces, a->max_addr, gpa, buf, len, write, a->dirty);
}

static size_t attach_ranges(void *inst, mb_part_range *out, size_t max) {
  return mb_pieces_ranges(&((mb_kvm_attach *)inst)->pieces, out, max);
}

static int attach_dirty_start(void *inst, mb_dirty_set *set) {
  return mb__kvm_dirty_start(inst, set);
}

static int attach_dirty_collect(void *inst, uint64_t gpa, uint64_t size) {
  return mb__kvm_dirty_collect(inst, gpa, size);
}

static void attach_dirty_stop(void *inst) {
  mb__kvm_dirty_stop(inst);
}

const mb_partition_ops mb_partition_kvm_attach = {
    .name = "kvm_attach",
    .config_size = sizeof(mb_kvm_attach_config),
    .create = attach_create,
    .destroy = attach_destroy,
    .map = attach_map,
    .unmap = attach_unmap,
    .access = attach_access,
    .ranges = attach_ranges,
    .dirty_start = attach_dirty_start,
    .dirty_collect = attach_dirty_collect,
    .dirty_stop = attach_dirty_stop,
};

#else /* no KVM on this platform */

static int attach_create(uint64_t max_addr, const void *config, void **inst) {
  (void)max_addr, (void)config, (void)inst;
  return MB_E_UNSUPPORTED;
}

const mb_partition_ops mb_partition_kvm_attach = {
    .name = "kvm_attach", .config_size = sizeof(mb_kvm_attach_config), .create = attach_create};

#endif
