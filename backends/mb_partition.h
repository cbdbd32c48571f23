/* mb_partition.h: the partition backend interface. A backend is a hypervisor partition's guest
 * physical address space; the partition mapper actor (actors/partition_mapper.h) drives one
 * instance. Each backend lives in its own file (soft.c, kvm.c) and exports one ops table.
 *
 * Threads: an instance is used by one thread at a time (its partition mapper's loop thread),
 * the dirty-tracking calls included.
 * Ranges: gpa and size are 4 KiB multiples; map() is only called for a range that overlaps no
 * mapped range; unmap() only with exactly a range that map() mapped (a "piece"). A caller that
 * breaks this gets -EEXIST / -ENOENT (never a crash); a malformed range gets MB_E_INVALID. */
#ifndef MB_PARTITION_H
#define MB_PARTITION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mb_errors.h"

struct mb_dirty_set; /* mem/dirty_set.h: the manager's set of dirty pages */

typedef struct mb_part_range {
  uint64_t gpa, size;
  bool writable;
} mb_part_range;

typedef struct mb_partition_ops {
  const char *name; /* "soft", "kvm", "kvm_attach" */
  size_t config_size; /* bytes of its configuration (0: it takes none) */
  /* Make an instance for guest addresses below max_addr, with the backend's own
   * configuration (NULL for soft and kvm; an mb_kvm_attach_config for kvm_attach), read
   * during the call only. 0, MB_E_INVALID for a bad configuration, MB_E_UNSUPPORTED when the
   * backend cannot run here (no /dev/kvm), or a negative errno. */
  int (*create)(uint64_t max_addr, const void *config, void **inst);
  void (*destroy)(void *inst); /* unmaps everything */
  /* Map [gpa, gpa+size) to host memory at host_va (the VA mapper's base + gpa). -ENOSPC when
   * the backend has no room left (kvm: out of memory slots). */
  int (*map)(void *inst, uint64_t gpa, uint64_t size, void *host_va, bool writable);
  int (*unmap)(void *inst, uint64_t gpa, uint64_t size);
  /* A guest access, as the guest's CPU would make it: 0, MB_E_MMIO (not mapped, or a write to
   * a read-only range) or MB_E_FAULT (mapped, but the host memory cannot serve it); decided
   * at the first byte that fails (earlier bytes may have been copied). MB_E_INVALID when
   * gpa + len wraps or exceeds max_addr. */
  int (*access)(void *inst, uint64_t gpa, void *buf, size_t len, bool write);
  /* The mapped ranges in ascending order: writes up to max entries, returns the total. */
  size_t (*ranges)(void *inst, mb_part_range *out, size_t max);

  /* Dirty-page tracking: optional, all three or none (NULL: the backend cannot track). While
   * tracking is on, every guest write the backend can see ends up in the set, by guest
   * physical address: at once (soft: access() marks what it wrote), or when collected (kvm:
   * the kernel logs the guest's writes per slot until dirty_collect or until the slot is
   * deleted, which moves the slot's log into the set first). The set must outlive the
   * tracking: until dirty_stop, or destroy, which moves the logs of the slots it deletes.
   *
   * dirty_start: tracking on, into set (not owned). 0, MB_E_INVALID if it is on already, or a
   * negative errno with nothing changed (kvm: an ioctl failed).
   * dirty_collect: moves what the backend has logged in [gpa, gpa + size) (page aligned) into
   * the set, and clears it there; it may move pages around the range too (kvm: to the log's
   * 64-page boundaries), never a page twice. 0, MB_E_INVALID (tracking off, a bad range), or
   * a negative errno: what was moved stays moved, what was not stays logged, nothing is lost.
   * dirty_stop: tracking off; what is logged and not collected is forgotten. */
  int (*dirty_start)(void *inst, struct mb_dirty_set *set);
  int (*dirty_collect)(void *inst, uint64_t gpa, uint64_t size);
  void (*dirty_stop)(void *inst);
} mb_partition_ops;

extern const mb_partition_ops mb_partition_soft; /* in-process: follows its recorded map */
/* A KVM VM of its own with a probe vCPU that makes guest accesses (scenarios, tests): built on
 * kvm_attach, with slot 0 for its vCPU's code. MB_E_UNSUPPORTED without /dev/kvm. */
extern const mb_partition_ops mb_partition_kvm;

/* ---- kvm_attach: memory slots of a VM the VMM owns --------------------------------------
 *
 * The VMM creates the VM, its vCPUs and their threads, and runs KVM_RUN; membacking manages
 * the memory slots in [slot_first, slot_first + slot_count) of that VM and no other. Each
 * visible piece of guest memory is one slot (KVM_MEM_READONLY when the piece is read-only);
 * slot numbers are recycled, and when the range is used up, the operation that needed one
 * more fails with -ENOSPC and changes nothing. Slot budget with VTL protections (the
 * partition mapper maps a piece as sub-ranges split by effective access): a piece costs one
 * slot plus up to two more for each protected range inside it (a `ro` range in the middle
 * of a writable piece: three slots; `none`: two, none where it is none); protected back to
 * rw, they merge into one slot again. Removing the partition deletes exactly the
 * slots membacking created; the VM stays its owner's. A guest access through the partition
 * (mb_partition_access: device DMA) follows the map in process memory, as soft does.
 *
 * set_region, if not NULL, is called instead of ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, r)
 * (0 or -errno): for a VMM that fences its vCPUs around slot changes, or routes its ioctls.
 * It is called for the partition's loop, one call at a time: on the loop's thread or, for a
 * loop started with MB_LOOP_LEND, on a thread that runs the loop's turn while it sleeps.
 * vm_fd may then be -1 (unless dirty tracking uses the real ioctls below).
 *
 * Dirty tracking (mb_partition_ops' dirty calls). Start enables KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
 * on the VM (KVM_ENABLE_CAP with KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, without INITIALLY_SET:
 * the first collect answers only pages written since the start), once per partition, and
 * sets KVM_MEM_LOG_DIRTY_PAGES on every writable slot of membacking's (a flags-only update of
 * the live slot; read-only slots cannot be dirtied by the guest and are not logged); a slot
 * added while tracking is on has it from its creation, and stop clears it again. A collect is,
 * for each logged slot in the range, KVM_GET_DIRTY_LOG, then KVM_CLEAR_DIRTY_LOG of exactly
 * the bits it reported inside the range widened to the kernel's 64-page boundaries, and those
 * pages into the set. A slot deleted while tracking is on (an unmap, an access change, the
 * partition's removal) has its log read into the set (and cleared) first; when that fails, the
 * slot is not deleted and the operation fails. If the kernel refuses the capability (EINVAL,
 * ENOTTY: before Linux 5.3), tracking falls back to plain KVM_GET_DIRTY_LOG, which clears the
 * whole slot's log as it reads it: a collect then moves the whole log of each slot it touches.
 * The capability changes KVM_GET_DIRTY_LOG for the whole VM, the VMM's own slots included;
 * a VM with a dirty ring (KVM_CAP_DIRTY_LOG_RING) cannot be tracked (the kernel answers
 * -ENXIO). Writes the guest makes between a slot's last log read and its deletion are lost
 * unless the VMM keeps its vCPUs out of KVM_RUN around the delete (as QEMU does), and a
 * guest access through the partition (device DMA) is marked in the set directly.
 *
 * get_dirty_log, clear_dirty_log and enable_cap, if not NULL, are called instead of the ioctls
 * KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG and KVM_ENABLE_CAP on vm_fd (0 or -errno), with ctx,
 * on the same threads as set_region. */
struct kvm_userspace_memory_region;
struct kvm_dirty_log;
struct kvm_clear_dirty_log;
struct kvm_enable_cap;
typedef int (*mb_kvm_set_region_fn)(void *ctx, const struct kvm_userspace_memory_region *r);
typedef int (*mb_kvm_get_dirty_log_fn)(void *ctx, struct kvm_dirty_log *log);
typedef int (*mb_kvm_clear_dirty_log_fn)(void *ctx, struct kvm_clear_dirty_log *log);
typedef int (*mb_kvm_enable_cap_fn)(void *ctx, struct kvm_enable_cap *cap);

typedef struct mb_kvm_attach_config {
  int vm_fd;            /* the VMM's VM (KVM_CREATE_VM); never closed by membacking */
  uint32_t slot_first;  /* membacking's slots: [slot_first, slot_first + slot_count) */
  uint32_t slot_count;  /* 0: every slot from slot_first up to KVM_CAP_NR_MEMSLOTS */
  mb_kvm_set_region_fn set_region;
  void *ctx;
  mb_kvm_get_dirty_log_fn get_dirty_log;
  mb_kvm_clear_dirty_log_fn clear_dirty_log;
  mb_kvm_enable_cap_fn enable_cap;
} mb_kvm_attach_config;

extern const mb_partition_ops mb_partition_kvm_attach;

#endif
