/* kvm_attach.h: the slot map of a KVM partition, shared by the kvm_attach backend (a VM the
 * VMM owns) and the kvm backend (a VM of its own, built on it). Internal. */
#ifndef MB_KVM_ATTACH_H
#define MB_KVM_ATTACH_H

#include <stdbool.h>
#include <stdint.h>

#include "kvm_slots.h"
#include "mb_partition.h"
#include "pieces.h"

typedef struct mb_kvm_attach {
  uint64_t max_addr;
  int vm_fd;
  mb_kvm_set_region_fn set_region; /* never NULL once initialized */
  void *ctx;
  mb_kvm_slots slots;
  mb_rtree pieces; /* of mb_piece: slot and host set */
} mb_kvm_attach;

/* 0, MB_E_INVALID (a bad configuration: not a KVM VM, a slot range past its limit), or
 * -ENOMEM. Nothing to undo on failure. */
int mb__kvm_attach_init(mb_kvm_attach *a, uint64_t max_addr, const mb_kvm_attach_config *c);
/* Deletes exactly the slots it created. */
void mb__kvm_attach_fini(mb_kvm_attach *a);
/* mb_partition.h's map and unmap, on a slot each. */
int mb__kvm_attach_map(mb_kvm_attach *a, uint64_t gpa, uint64_t size, void *host, bool writable);
int mb__kvm_attach_unmap(mb_kvm_attach *a, uint64_t gpa, uint64_t size);

#endif
