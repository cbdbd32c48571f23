/* tu_fake_vm.h: a fake KVM VM for tests of the kvm_attach backend without /dev/kvm. It keeps
 * a VM's memory slots as KVM does and enforces KVM's rules on them (an id below the limit, no
 * overlap with another slot, no resize or re-add of a live slot, delete only what exists); the
 * backend reaches it through mb_kvm_attach_config's set_region hook. A test may make the n-th
 * call fail, and may look at the map from inside each call (on_set). */
#ifndef MB_TU_FAKE_VM_H
#define MB_TU_FAKE_VM_H

#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "membacking.h"

enum { TU_FAKE_SLOTS = 64 };

typedef struct tu_fake_vm {
  pthread_mutex_t lock;
  struct kvm_userspace_memory_region slot[TU_FAKE_SLOTS]; /* memory_size 0: free */
  int calls, fail_at, fail_err; /* fail the fail_at-th call (1-based) with fail_err */
  int violations;               /* deletes of a slot that does not exist: a bug of ours */
  /* a hook run inside each call: the test's look at the exit question mid-operation */
  void (*on_set)(struct tu_fake_vm *vm, const struct kvm_userspace_memory_region *r);
  void *ctx;
} tu_fake_vm;

static inline bool tu_fake_overlaps(const struct kvm_userspace_memory_region *a, uint64_t gpa,
                                    uint64_t size) {
  return a->memory_size && a->guest_phys_addr < gpa + size &&
         gpa < a->guest_phys_addr + a->memory_size;
}

static inline int tu_fake_set_locked(tu_fake_vm *vm, const struct kvm_userspace_memory_region *r) {
  if (r->slot >= TU_FAKE_SLOTS)
    return -EINVAL;
  struct kvm_userspace_memory_region *s = &vm->slot[r->slot];
  if (r->memory_size == 0) {
    if (s->memory_size == 0)
      vm->violations++;
    s->memory_size = 0;
    return 0;
  }
  if (s->memory_size != 0)
    return -EINVAL; /* KVM cannot resize or re-add a live slot */
  for (int i = 0; i < TU_FAKE_SLOTS; i++)
    if (tu_fake_overlaps(&vm->slot[i], r->guest_phys_addr, r->memory_size))
      return -EEXIST;
  *s = *r;
  return 0;
}

/* The set_region hook (mb_kvm_set_region_fn). */
static inline int tu_fake_set_region(void *ctx, const struct kvm_userspace_memory_region *r) {
  tu_fake_vm *vm = ctx;
  if (vm->on_set)
    vm->on_set(vm, r);
  pthread_mutex_lock(&vm->lock);
  int rc = ++vm->calls == vm->fail_at ? vm->fail_err : tu_fake_set_locked(vm, r);
  pthread_mutex_unlock(&vm->lock);
  return rc;
}

/* The slots in use, and whether all of them lie in [first, first + count). */
static inline int tu_fake_used(tu_fake_vm *vm, uint32_t first, uint32_t count, bool *inside) {
  int n = 0;
  *inside = true;
  pthread_mutex_lock(&vm->lock);
  for (uint32_t i = 0; i < TU_FAKE_SLOTS; i++) {
    if (!vm->slot[i].memory_size)
      continue;
    n++;
    *inside &= i >= first && i < first + count;
  }
  pthread_mutex_unlock(&vm->lock);
  return n;
}

/* A copy of the slot table (out: TU_FAKE_SLOTS entries), for comparing the VM before and after. */
static inline void tu_fake_slots(tu_fake_vm *vm, struct kvm_userspace_memory_region *out) {
  pthread_mutex_lock(&vm->lock);
  memcpy(out, vm->slot, sizeof vm->slot);
  pthread_mutex_unlock(&vm->lock);
}

/* Partition parameters that attach membacking to the fake VM's slots [first, first + count). */
static inline mb_partition_params tu_fake_params(tu_fake_vm *vm, mb_kvm_attach_config *c,
                                                 uint32_t first, uint32_t count) {
  *c = (mb_kvm_attach_config){.vm_fd = -1, .slot_first = first, .slot_count = count,
                              .set_region = tu_fake_set_region, .ctx = vm};
  return (mb_partition_params){&mb_partition_kvm_attach, c, NULL};
}

/* An empty VM but for the VMM's own slot 0 (firmware), far above the guest's RAM. */
static inline void tu_fake_init(tu_fake_vm *vm) {
  memset(vm, 0, sizeof *vm);
  pthread_mutex_init(&vm->lock, NULL);
  vm->slot[0] = (struct kvm_userspace_memory_region){0, 0, 1ull << 40, 4096, 0x1000};
}

static inline void tu_fake_fini(tu_fake_vm *vm) { pthread_mutex_destroy(&vm->lock); }

#endif
