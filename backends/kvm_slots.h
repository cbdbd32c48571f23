/* kvm_slots.h: the memory slot numbers a KVM partition may use, [first, first + count), handed
 * out and recycled. Pure bookkeeping (no KVM), so tests check it without /dev/kvm.
 *
 * A freed number is the next one handed out (a stack), so a VM that maps and unmaps in turn
 * keeps reusing the same few numbers; numbers never handed out come in ascending order. */
#ifndef MB_KVM_SLOTS_H
#define MB_KVM_SLOTS_H

#include <stdint.h>

/* KVM slot ids are 16 bits (bits 16-31 name the address space). */
#define MB_KVM_SLOT_LIMIT 0x10000u

typedef struct mb_kvm_slots {
  uint32_t first, count;
  uint32_t fresh;  /* [first + fresh, first + count) were never handed out */
  uint32_t *free;  /* freed numbers, a stack of nfree (room for count) */
  uint32_t nfree;
} mb_kvm_slots;

/* 0, MB_E_INVALID (count 0, or past MB_KVM_SLOT_LIMIT) or -ENOMEM. */
int mb_kvm_slots_init(mb_kvm_slots *s, uint32_t first, uint32_t count);
void mb_kvm_slots_fini(mb_kvm_slots *s);
/* 0 with *slot, or -ENOSPC when every number is out. */
int mb_kvm_slots_take(mb_kvm_slots *s, uint32_t *slot);
/* Gives back a number that take handed out. */
void mb_kvm_slots_give(mb_kvm_slots *s, uint32_t slot);
/* How many are out now. */
static inline uint32_t mb_kvm_slots_used(const mb_kvm_slots *s) {
  return s->fresh - s->nfree;
}

#endif
