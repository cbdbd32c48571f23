/* kvm_slots.c: memory slot numbers (see kvm_slots.h). */
#include "kvm_slots.h"

#include <errno.h>
#include <stdlib.h>

#include "mb_errors.h"

int mb_kvm_slots_init(mb_kvm_slots *s, uint32_t first, uint32_t count) {
  *s = (mb_kvm_slots){0};
  if (count == 0 || first >= MB_KVM_SLOT_LIMIT || count > MB_KVM_SLOT_LIMIT - first)
    return MB_E_INVALID;
  s->free = malloc(count * sizeof *s->free);
  if (!s->free)
    return -ENOMEM;
  s->first = first;
  s->count = count;
  return 0;
}

void mb_kvm_slots_fini(mb_kvm_slots *s) {
  free(s->free);
  *s = (mb_kvm_slots){0};
}

int mb_kvm_slots_take(mb_kvm_slots *s, uint32_t *slot) {
  if (s->nfree > 0)
    *slot = s->free[--s->nfree];
  else if (s->fresh < s->count)
    *slot = s->first + s->fresh++;
  else
    return -ENOSPC;
  return 0;
}

void mb_kvm_slots_give(mb_kvm_slots *s, uint32_t slot) {
  s->free[s->nfree++] = slot; /* at most count are ever out, so there is room */
}
