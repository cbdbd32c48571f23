/* kvm_attach.h: the slot map of a KVM partition, shared by the kvm_attach backend (a VM the
 * VMM owns) and the kvm backend (a VM of its own, built on it). Internal. */
#ifndef MB_KVM_ATTACH_H
#define MB_KVM_ATTACH_H

#include <stdbool.h>
#include <stdint.h>

#include "kvm_slots.h"
#include "mb_partition.h"
#include "pieces.h"

/* How the kernel reads a slot's dirty log (chosen at the first dirty_start). */
enum { MB_KVM_LOG_UNKNOWN, MB_KVM_LOG_MANUAL, MB_KVM_LOG_LEGACY };

typedef struct mb_kvm_attach {
  uint64_t max_addr;
  int vm_fd;
  mb_kvm_set_region_fn set_region; /* never NULL once initialized */
  void *ctx;
  mb_kvm_slots slots;
  mb_rtree pieces; /* of mb_piece: slot and host set */
  /* dirty tracking (kvm_dirty.c): the VMM's hooks (NULL: the ioctl on vm_fd) and their ctx */
  mb_kvm_get_dirty_log_fn get_dirty_log;
  mb_kvm_clear_dirty_log_fn clear_dirty_log;
  mb_kvm_enable_cap_fn enable_cap;
  void *hook_ctx;
  struct mb_dirty_set *dirty; /* while tracking: where the logs go */
  int log_mode;               /* MB_KVM_LOG_* */
  uint64_t *log;              /* room for one slot's KVM_GET_DIRTY_LOG, log_words long */
  size_t log_words;
} mb_kvm_attach;

/* 0, MB_E_INVALID (a bad configuration: not a KVM VM, a slot range past its limit), or
 * -ENOMEM. Nothing to undo on failure. */
int mb__kvm_attach_init(mb_kvm_attach *a, uint64_t max_addr, const mb_kvm_attach_config *c);
/* Deletes exactly the slots it created. */
void mb__kvm_attach_fini(mb_kvm_attach *a);
/* mb_partition.h's map and unmap, on a slot each. */
int mb__kvm_attach_map(mb_kvm_attach *a, uint64_t gpa, uint64_t size, void *host, bool writable);
int mb__kvm_attach_unmap(mb_kvm_attach *a, uint64_t gpa, uint64_t size);
/* Sets the piece's slot again with KVM_MEM_LOG_DIRTY_PAGES on or off (a flags-only update of
 * the live slot): 0 (pc->logging follows) or -errno (nothing changed). */
int mb__kvm_attach_relog(mb_kvm_attach *a, mb_piece *pc, bool logging);

/* kvm_dirty.c: mb_partition.h's dirty calls on the slots (see there for the protocol). */
int mb__kvm_dirty_start(mb_kvm_attach *a, struct mb_dirty_set *set);
int mb__kvm_dirty_collect(mb_kvm_attach *a, uint64_t gpa, uint64_t size);
void mb__kvm_dirty_stop(mb_kvm_attach *a);
/* Before a logging piece's slot is deleted: its whole log into the set, cleared in the kernel
 * (manual mode) so that a slot that survives a failed delete reports nothing twice. 0, or
 * -errno with nothing moved and the log as it was (the slot must then stay). */
int mb__kvm_dirty_save(mb_kvm_attach *a, mb_piece *pc);

#endif
