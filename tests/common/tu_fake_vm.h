/* tu_fake_vm.h: a fake KVM VM for tests of the kvm_attach backend without /dev/kvm. It keeps
 * a VM's memory slots as KVM does and enforces KVM's rules on them (an id below the limit, no
 * overlap with another slot, no resize or re-add of a live slot, delete only what exists, of a
 * live slot only KVM_MEM_LOG_DIRTY_PAGES may change); the backend reaches it through
 * mb_kvm_attach_config's set_region hook. A test may make the n-th call fail, and may look at
 * the map from inside each call (on_set).
 *
 * Dirty logging, through the config's get_dirty_log, clear_dirty_log and enable_cap hooks: a
 * slot with KVM_MEM_LOG_DIRTY_PAGES has a bitmap (from zero when the flag is set, gone with
 * the flag or the slot) that the test sets to stand for guest writes (tu_fake_dirty). GET
 * copies it out and, unless KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 was enabled, clears it; CLEAR
 * (manual mode only) clears what it is given, with the kernel's rules: first_page a multiple
 * of 64, num_pages too unless it runs to the slot's end, inside the slot; a slot that does
 * not log is -ENOENT for both. no_manual makes the capability unknown (-EINVAL), as on
 * kernels before 5.3. fail_at counts every call of every hook. */
#ifndef MB_TU_FAKE_VM_H
#define MB_TU_FAKE_VM_H

#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "membacking.h"

enum { TU_FAKE_SLOTS = 64 };

typedef struct tu_fake_vm {
  pthread_mutex_t lock;
  struct kvm_userspace_memory_region slot[TU_FAKE_SLOTS]; /* memory_size 0: free */
  uint64_t *log[TU_FAKE_SLOTS]; /* the dirty log of a slot with LOG_DIRTY_PAGES, else NULL */
  bool manual;                  /* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled */
  bool no_manual;               /* the kernel does not know the capability */
  int gets, clears, enables;    /* successful dirty-log calls */
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

static inline uint64_t tu_fake_pages(const struct kvm_userspace_memory_region *s) {
  return s->memory_size / 4096;
}

/* The slot's log follows its LOG_DIRTY_PAGES flag: a new, empty one when it is set. */
static inline int tu_fake_log_follow(tu_fake_vm *vm, uint32_t i) {
  bool on = vm->slot[i].memory_size && (vm->slot[i].flags & KVM_MEM_LOG_DIRTY_PAGES);
  if (on == (vm->log[i] != NULL))
    return 0;
  free(vm->log[i]);
  vm->log[i] = on ? calloc((tu_fake_pages(&vm->slot[i]) + 63) / 64, 8) : NULL;
  return on && !vm->log[i] ? -ENOMEM : 0;
}

/* A change of a live slot: only LOG_DIRTY_PAGES may change (KVM_MR_FLAGS_ONLY). */
static inline int tu_fake_flags_only(tu_fake_vm *vm, const struct kvm_userspace_memory_region *r) {
  struct kvm_userspace_memory_region *s = &vm->slot[r->slot];
  if (r->guest_phys_addr != s->guest_phys_addr || r->memory_size != s->memory_size ||
      r->userspace_addr != s->userspace_addr ||
      ((r->flags ^ s->flags) & ~(uint32_t)KVM_MEM_LOG_DIRTY_PAGES))
    return -EINVAL; /* KVM cannot move, resize or make read-only a live slot */
  s->flags = r->flags;
  return tu_fake_log_follow(vm, r->slot);
}

static inline int tu_fake_set_locked(tu_fake_vm *vm, const struct kvm_userspace_memory_region *r) {
  if (r->slot >= TU_FAKE_SLOTS)
    return -EINVAL;
  struct kvm_userspace_memory_region *s = &vm->slot[r->slot];
  if (r->memory_size == 0) {
    if (s->memory_size == 0)
      vm->violations++;
    s->memory_size = 0;
    return tu_fake_log_follow(vm, r->slot);
  }
  if (s->memory_size != 0)
    return tu_fake_flags_only(vm, r);
  for (int i = 0; i < TU_FAKE_SLOTS; i++)
    if (tu_fake_overlaps(&vm->slot[i], r->guest_phys_addr, r->memory_size))
      return -EEXIST;
  *s = *r;
  return tu_fake_log_follow(vm, r->slot);
}

/* Counts a call of any hook: true if it is the one to fail. */
static inline bool tu_fake_call_fails(tu_fake_vm *vm) {
  return ++vm->calls == vm->fail_at;
}

/* The set_region hook (mb_kvm_set_region_fn). */
static inline int tu_fake_set_region(void *ctx, const struct kvm_userspace_memory_region *r) {
  tu_fake_vm *vm = ctx;
  if (vm->on_set)
    vm->on_set(vm, r);
  pthread_mutex_lock(&vm->lock);
  int rc = tu_fake_call_fails(vm) ? vm->fail_err : tu_fake_set_locked(vm, r);
  pthread_mutex_unlock(&vm->lock);
  return rc;
}

static inline int tu_fake_get_locked(tu_fake_vm *vm, struct kvm_dirty_log *l) {
  if (l->slot >= TU_FAKE_SLOTS)
    return -EINVAL;
  uint64_t *log = vm->log[l->slot];
  if (!log)
    return -ENOENT;
  size_t bytes = (tu_fake_pages(&vm->slot[l->slot]) + 63) / 64 * 8;
  memcpy(l->dirty_bitmap, log, bytes);
  if (!vm->manual)
    memset(log, 0, bytes);
  vm->gets++;
  return 0;
}

static inline int tu_fake_clear_locked(tu_fake_vm *vm, struct kvm_clear_dirty_log *l) {
  if (l->slot >= TU_FAKE_SLOTS || !vm->manual || l->first_page % 64)
    return -EINVAL;
  uint64_t *log = vm->log[l->slot], npages = tu_fake_pages(&vm->slot[l->slot]);
  if (!log)
    return -ENOENT;
  if (l->first_page > npages || l->num_pages > npages - l->first_page ||
      (l->num_pages < npages - l->first_page && l->num_pages % 64))
    return -EINVAL;
  const uint64_t *bits = l->dirty_bitmap;
  for (uint64_t i = 0; i < (l->num_pages + 63) / 64; i++)
    log[l->first_page / 64 + i] &= ~bits[i];
  vm->clears++;
  return 0;
}

/* The get_dirty_log hook (mb_kvm_get_dirty_log_fn). */
static inline int tu_fake_get_dirty_log(void *ctx, struct kvm_dirty_log *l) {
  tu_fake_vm *vm = ctx;
  pthread_mutex_lock(&vm->lock);
  int rc = tu_fake_call_fails(vm) ? vm->fail_err : tu_fake_get_locked(vm, l);
  pthread_mutex_unlock(&vm->lock);
  return rc;
}

/* The clear_dirty_log hook (mb_kvm_clear_dirty_log_fn). */
static inline int tu_fake_clear_dirty_log(void *ctx, struct kvm_clear_dirty_log *l) {
  tu_fake_vm *vm = ctx;
  pthread_mutex_lock(&vm->lock);
  int rc = tu_fake_call_fails(vm) ? vm->fail_err : tu_fake_clear_locked(vm, l);
  pthread_mutex_unlock(&vm->lock);
  return rc;
}

/* The enable_cap hook (mb_kvm_enable_cap_fn): only the manual dirty log protocol. */
static inline int tu_fake_enable_cap(void *ctx, struct kvm_enable_cap *cap) {
  tu_fake_vm *vm = ctx;
  pthread_mutex_lock(&vm->lock);
  int rc = 0;
  if (tu_fake_call_fails(vm))
    rc = vm->fail_err;
  else if (vm->no_manual || cap->cap != KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 || cap->flags ||
           cap->args[0] & ~(uint64_t)KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
    rc = -EINVAL;
  else
    vm->manual = cap->args[0] != 0, vm->enables++;
  pthread_mutex_unlock(&vm->lock);
  return rc;
}

/* A guest write at gpa, as the kernel logs it: the page's bit in the log of the slot holding
 * it, if that slot logs (and is writable). True if it was logged. */
static inline bool tu_fake_dirty(tu_fake_vm *vm, uint64_t gpa) {
  bool logged = false;
  pthread_mutex_lock(&vm->lock);
  for (int i = 0; i < TU_FAKE_SLOTS; i++) {
    const struct kvm_userspace_memory_region *s = &vm->slot[i];
    if (!tu_fake_overlaps(s, gpa, 1) || !vm->log[i] || (s->flags & KVM_MEM_READONLY))
      continue;
    uint64_t p = (gpa - s->guest_phys_addr) / 4096;
    vm->log[i][p / 64] |= 1ull << (p % 64);
    logged = true;
  }
  pthread_mutex_unlock(&vm->lock);
  return logged;
}

/* Whether the slot holding gpa logs dirty pages (false with no slot there). */
static inline bool tu_fake_logging(tu_fake_vm *vm, uint64_t gpa) {
  bool on = false;
  pthread_mutex_lock(&vm->lock);
  for (int i = 0; i < TU_FAKE_SLOTS; i++)
    if (tu_fake_overlaps(&vm->slot[i], gpa, 1))
      on = (vm->slot[i].flags & KVM_MEM_LOG_DIRTY_PAGES) != 0 && vm->log[i];
  pthread_mutex_unlock(&vm->lock);
  return on;
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
                              .set_region = tu_fake_set_region, .ctx = vm,
                              .get_dirty_log = tu_fake_get_dirty_log,
                              .clear_dirty_log = tu_fake_clear_dirty_log,
                              .enable_cap = tu_fake_enable_cap};
  return (mb_partition_params){&mb_partition_kvm_attach, c, NULL, 0};
}

/* An empty VM but for the VMM's own slot 0 (firmware), far above the guest's RAM. */
static inline void tu_fake_init(tu_fake_vm *vm) {
  memset(vm, 0, sizeof *vm);
  pthread_mutex_init(&vm->lock, NULL);
  vm->slot[0] = (struct kvm_userspace_memory_region){0, 0, 1ull << 40, 4096, 0x1000};
}

static inline void tu_fake_fini(tu_fake_vm *vm) {
  for (int i = 0; i < TU_FAKE_SLOTS; i++)
    free(vm->log[i]);
  pthread_mutex_destroy(&vm->lock);
}

/* Whether the kvm backend can run here (a usable /dev/kvm): tests on real KVM skip without. */
static inline bool tu_kvm_usable(void) {
  void *inst = NULL;
  if (mb_partition_kvm.create(1ull << 30, NULL, &inst) != 0)
    return false;
  mb_partition_kvm.destroy(inst);
  return true;
}

#endif
