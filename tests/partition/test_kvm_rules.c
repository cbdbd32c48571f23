/* test_kvm_rules.c: every KVM rule that can be decided without /dev/kvm, called directly:
 * slot numbers (kvm_slots.h), the exit rule on the three kernel behaviours (mb_kvm_exit.h), the
 * exit question on a live manager (mb_partition_classify[_exit]), and the kvm_attach backend
 * driven by a manager against a fake VM that enforces KVM's slot rules (set_region hook). */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mb_access.h"
#include "kvm_slots.h"
#include "membacking.h"
#include "test_util.h"
#include "tu_fake_vm.h"

#define MiB (1ull << 20)
#define KiB (1ull << 10)
#ifndef KVM_EXIT_MEMORY_FAULT
#define KVM_EXIT_MEMORY_FAULT 39
#endif

/* ---- slot numbers ----------------------------------------------------------------------- */

static void test_slots(void **unused) {
  (void)unused;
  mb_kvm_slots s;
  assert_int_equal(mb_kvm_slots_init(&s, 0, 0), MB_E_INVALID);
  assert_int_equal(mb_kvm_slots_init(&s, MB_KVM_SLOT_LIMIT - 2, 3), MB_E_INVALID);
  assert_int_equal(mb_kvm_slots_init(&s, 10, 3), 0);
  uint32_t a, b, c, d;
  assert_int_equal(mb_kvm_slots_take(&s, &a), 0);
  assert_int_equal(mb_kvm_slots_take(&s, &b), 0);
  assert_int_equal(mb_kvm_slots_take(&s, &c), 0);
  assert_int_equal(a, 10);
  assert_int_equal(b, 11);
  assert_int_equal(c, 12);
  assert_int_equal(mb_kvm_slots_take(&s, &d), -ENOSPC); /* only the range given */
  assert_int_equal(mb_kvm_slots_used(&s), 3);
  mb_kvm_slots_give(&s, b);
  assert_int_equal(mb_kvm_slots_take(&s, &d), 0);
  assert_int_equal(d, 11); /* recycled */
  mb_kvm_slots_give(&s, a);
  mb_kvm_slots_give(&s, c);
  assert_int_equal(mb_kvm_slots_used(&s), 1);
  mb_kvm_slots_fini(&s);
}

/* ---- the exit rule on the three kernel behaviours ------------------------------------ */

/* A map for the rule: [1M, 2M) is RAM with a hole at [1M+64K, 1M+128K) and a read-only page
 * at 1M+128K; [4M, 5M) is a read-only region; [6M, 6M+8K) is RAM protected by a higher VTL,
 * none then ro; nothing elsewhere. */
static int fixed_map_lookup(void *ctx, uint64_t gpa, uint64_t len, bool write) {
  (void)ctx, (void)len;
  if (gpa >= 6 * MiB && gpa < 6 * MiB + 8 * KiB)
    return gpa < 6 * MiB + 4 * KiB || write ? MB_GPA_PROTECTED : MB_GPA_RAM;
  if (gpa >= 4 * MiB && gpa < 5 * MiB)
    return write ? MB_GPA_MMIO : MB_GPA_RAM;
  if (gpa < MiB || gpa >= 2 * MiB)
    return MB_GPA_MMIO;
  if (gpa >= MiB + 64 * KiB && gpa < MiB + 128 * KiB)
    return MB_GPA_FAULT;
  if (gpa >= MiB + 128 * KiB && gpa < MiB + 132 * KiB && write)
    return MB_GPA_FAULT;
  return MB_GPA_RAM;
}

static struct kvm_run *run_mmio(struct kvm_run *run, uint64_t gpa, uint32_t len, bool write) {
  memset(run, 0, sizeof *run);
  run->exit_reason = KVM_EXIT_MMIO;
  run->mmio.phys_addr = gpa;
  run->mmio.len = len;
  run->mmio.is_write = write;
  return run;
}

static struct kvm_run *run_memory_fault(struct kvm_run *run, uint64_t gpa, uint64_t size) {
  memset(run, 0, sizeof *run);
  run->exit_reason = KVM_EXIT_MEMORY_FAULT;
  uint64_t *mf = (uint64_t *)(void *)&run->mmio; /* {flags, gpa, size} */
  mf[0] = 0, mf[1] = gpa, mf[2] = size;
  return run;
}

static int kind_of(int rc, int err, struct kvm_run *run) {
  mb_kvm_exit ex;
  int r = mb__kvm_exit_classify(rc, err, run, fixed_map_lookup, NULL, &ex);
  return r == 0 ? ex.kind : r;
}

static void test_exit_rule(void **unused) {
  (void)unused;
  struct kvm_run run;
  /* kvm-pvm hosts: everything comes back as an MMIO exit; the map decides. */
  assert_int_equal(kind_of(0, 0, run_mmio(&run, 3 * MiB, 4, false)), MB_GPA_MMIO);
  assert_int_equal(kind_of(0, 0, run_mmio(&run, 4 * MiB, 1, true)), MB_GPA_MMIO);
  assert_int_equal(kind_of(0, 0, run_mmio(&run, MiB + 64 * KiB, 8, false)), MB_GPA_FAULT);
  assert_int_equal(kind_of(0, 0, run_mmio(&run, MiB + 128 * KiB, 1, true)), MB_GPA_FAULT);
  assert_int_equal(kind_of(0, 0, run_mmio(&run, MiB, 8, true)), MB_GPA_RAM); /* raced: retry */
  mb_kvm_exit ex;
  assert_int_equal(mb__kvm_exit_classify(0, 0, run_mmio(&run, 0x1234, 2, true), fixed_map_lookup,
                                         NULL, &ex), 0);
  assert_true(ex.gpa == 0x1234 && ex.len == 2 && ex.write);
  /* mainline 6.8+: -1/EFAULT with KVM_EXIT_MEMORY_FAULT. */
  assert_int_equal(kind_of(-1, EFAULT, run_memory_fault(&run, MiB + 64 * KiB, 4096)),
                   MB_GPA_FAULT);
  assert_int_equal(kind_of(-1, EFAULT, run_memory_fault(&run, MiB + 128 * KiB, 4096)),
                   MB_GPA_FAULT); /* reads, does not write: a write to a read-only page */
  assert_int_equal(kind_of(-1, EFAULT, run_memory_fault(&run, MiB, 4096)), MB_GPA_RAM);
  assert_int_equal(kind_of(-1, EFAULT, run_memory_fault(&run, 3 * MiB, 4096)), MB_GPA_MMIO);
  /* a VTL protection: its own outcome (an intercept for the higher VTL), never MMIO */
  assert_int_equal(kind_of(0, 0, run_mmio(&run, 6 * MiB, 4, false)), MB_GPA_PROTECTED);
  assert_int_equal(kind_of(0, 0, run_mmio(&run, 6 * MiB + 4 * KiB, 4, true)), MB_GPA_PROTECTED);
  assert_int_equal(kind_of(0, 0, run_mmio(&run, 6 * MiB + 4 * KiB, 4, false)), MB_GPA_RAM);
  assert_int_equal(kind_of(-1, EFAULT, run_memory_fault(&run, 6 * MiB, 4096)), MB_GPA_PROTECTED);
  assert_int_equal(kind_of(-1, EFAULT, run_memory_fault(&run, 6 * MiB + 4 * KiB, 4096)),
                   MB_GPA_PROTECTED); /* reads, does not write: the write was forbidden */
  /* older kernels: a bare EFAULT, no address. */
  memset(&run, 0, sizeof run);
  run.exit_reason = KVM_EXIT_HLT; /* stale */
  assert_int_equal(mb__kvm_exit_classify(-1, EFAULT, &run, fixed_map_lookup, NULL, &ex), 0);
  assert_true(ex.kind == MB_GPA_FAULT && ex.len == 0);
  /* not about memory */
  assert_int_equal(kind_of(0, 0, &run), MB_E_INVALID);                 /* HLT */
  assert_int_equal(kind_of(-1, EINTR, &run), MB_E_INVALID);
  run.exit_reason = KVM_EXIT_IO;
  assert_int_equal(kind_of(0, 0, &run), MB_E_INVALID);
  assert_int_equal(kind_of(-1, EFAULT, run_mmio(&run, 3 * MiB, 4, false)), MB_GPA_FAULT);
  assert_int_equal(kind_of(0, 0, run_mmio(&run, UINT64_MAX - 1, 8, false)), MB_E_INVALID);
}

/* ---- a manager with a soft partition: the exit question on real memory ----------------- */

typedef struct world {
  mb_loop *loop;
  mb_mm *mm;
  mb_partition *part;
  mb_object *obj;
  mb_region_id ram, rom;
} world;

/* RAM [0, 4M) from a memfd except a hole at [1M, 2M) and a read-only mapping at [2M, 3M);
 * ROM [8M, 9M) mapped read-only. */
static void world_init(world *w, const mb_partition_params *params) {
  assert_int_equal(mb_access_reinstall(), 0);
  w->loop = tu_start("mgr");
  mb_mm_config cfg = {.max_addr = 64 * MiB, .overlap = MB_OVERLAP_ANY, .loop = w->loop};
  assert_int_equal(mb_mm_create(&cfg, &w->mm), 0);
  w->obj = tu_memfd_byte("t", 8 * MiB, 0x5a);
  mb_region_params ram = {"ram", 0, 4 * MiB, 1, false, 0}, rom = {"rom", 8 * MiB, MiB, 1, false, 0};
  assert_int_equal(mb_region_add_sync(w->mm, &ram, &w->ram), 0);
  assert_int_equal(mb_region_add_sync(w->mm, &rom, &w->rom), 0);
  mb_mapping_params m[] = {{w->ram, 0, MiB, w->obj, 0, true},
                           {w->ram, 2 * MiB, MiB, w->obj, 2 * MiB, false},
                           {w->ram, 3 * MiB, MiB, w->obj, 3 * MiB, true},
                           {w->rom, 0, MiB, w->obj, 4 * MiB, true}};
  for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
    assert_int_equal(mb_mapping_add_sync(w->mm, &m[i]), 0);
  assert_int_equal(mb_region_map_sync(w->mm, w->ram, true), 0);
  assert_int_equal(mb_region_map_sync(w->mm, w->rom, false), 0);
  mb_partition_params soft = {&mb_partition_soft, NULL, NULL, 0};
  assert_int_equal(mb_partition_attach_sync(w->mm, params ? params : &soft, &w->part), 0);
}

static void world_fini(world *w) {
  mb_mm_destroy(w->mm);
  mb_object_unref(w->obj);
  tu_stop(w->loop);
}

static void test_classify(void **unused) {
  (void)unused;
  world w;
  world_init(&w, NULL);
  mb_partition *p = w.part;
  assert_int_equal(mb_partition_classify(p, 0x1000, 8, false), MB_GPA_RAM);
  assert_int_equal(mb_partition_classify(p, 0x1000, 8, true), MB_GPA_RAM);
  assert_int_equal(mb_partition_classify(p, MiB + 8, 4, false), MB_GPA_FAULT);  /* a hole */
  assert_int_equal(mb_partition_classify(p, 2 * MiB, 4, false), MB_GPA_RAM);
  assert_int_equal(mb_partition_classify(p, 2 * MiB, 4, true), MB_GPA_FAULT);   /* ro mapping */
  assert_int_equal(mb_partition_classify(p, 8 * MiB, 4, false), MB_GPA_RAM);
  assert_int_equal(mb_partition_classify(p, 8 * MiB, 4, true), MB_GPA_MMIO);    /* ROM write */
  assert_int_equal(mb_partition_classify(p, 5 * MiB, 4, false), MB_GPA_MMIO);   /* nothing */
  /* the first failing byte decides */
  assert_int_equal(mb_partition_classify(p, MiB - 4, 8, false), MB_GPA_FAULT);
  assert_int_equal(mb_partition_classify(p, 4 * MiB - 4, 8, false), MB_GPA_MMIO);
  assert_int_equal(mb_partition_classify(p, 0, 0, false), MB_E_INVALID);
  assert_int_equal(mb_partition_classify(p, 64 * MiB - 4, 8, false), MB_E_INVALID);
  /* the probe changes no byte */
  uint8_t b = 0;
  assert_int_equal(mb_mapper_read(mb_mm_primary_mapper(w.mm), 0x1000, &b, 1), 0);
  assert_int_equal(b, 0x5a);
  /* the same answers through a KVM exit record, and they follow the map */
  struct kvm_run run;
  mb_kvm_exit ex;
  assert_int_equal(mb_partition_classify_exit(p, 0, 0, run_mmio(&run, MiB, 4, false), &ex), 0);
  assert_int_equal(ex.kind, MB_GPA_FAULT);
  /* an MMIO exit on RAM (the map moved under the access) is served from guest RAM */
  assert_int_equal(mb_partition_classify_exit(p, 0, 0, run_mmio(&run, 0x2000, 8, false), &ex), 0);
  assert_int_equal(ex.kind, MB_GPA_RAM);
  assert_int_equal(mb_partition_serve_exit(p, &ex, &run), 0);
  for (int i = 0; i < 8; i++)
    assert_int_equal(run.mmio.data[i], 0x5a);
  run_mmio(&run, 0x2000, 2, true);
  run.mmio.data[0] = 0xc3, run.mmio.data[1] = 0x3c;
  assert_int_equal(mb_partition_classify_exit(p, 0, 0, &run, &ex), 0);
  assert_int_equal(mb_partition_serve_exit(p, &ex, &run), 0);
  uint8_t two[2];
  assert_int_equal(mb_mapper_read(mb_mm_primary_mapper(w.mm), 0x2000, two, 2), 0);
  assert_true(two[0] == 0xc3 && two[1] == 0x3c);
  assert_int_equal(mb_partition_classify_exit(p, 0, 0, run_mmio(&run, MiB, 4, false), &ex), 0);
  assert_int_equal(mb_partition_serve_exit(p, &ex, &run), MB_E_INVALID); /* a hole: no */
  assert_int_equal(mb_region_unmap_sync(w.mm, w.ram), 0);
  assert_int_equal(mb_partition_classify(p, 0x1000, 8, false), MB_GPA_MMIO);
  assert_int_equal(mb_partition_classify_exit(p, 0, 0, run_mmio(&run, MiB, 4, false), &ex), 0);
  assert_int_equal(ex.kind, MB_GPA_MMIO);
  assert_int_equal(mb_region_map_sync(w.mm, w.rom, true), 0); /* access change in place */
  assert_int_equal(mb_partition_classify(p, 8 * MiB, 4, true), MB_GPA_RAM);
  world_fini(&w);
}

/* ---- kvm_attach against a fake VM (tu_fake_vm.h) ------------------------------------------ */

static void test_attach_slots(void **unused) {
  (void)unused;
  tu_fake_vm vm;
  tu_fake_init(&vm);
  mb_kvm_attach_config c;
  mb_partition_params params = tu_fake_params(&vm, &c, 8, 4);
  world w;
  world_init(&w, &params);
  bool inside;
  assert_int_equal(tu_fake_used(&vm, 8, 4, &inside), 2 + 1); /* ram, rom, and the VMM's slot 0 */
  assert_int_equal(tu_fake_used(&vm, 0, 12, &inside), 3);
  /* three more regions fit the range of four only up to its end: the fifth is -ENOSPC and
   * changes nothing */
  mb_region_id r[3];
  for (int i = 0; i < 3; i++) {
    mb_region_params p = {"x", (16 + 2 * (uint64_t)i) * MiB, MiB, 1, false, 0};
    assert_int_equal(mb_region_add_sync(w.mm, &p, &r[i]), 0);
  }
  assert_int_equal(mb_region_map_sync(w.mm, r[0], true), 0);
  assert_int_equal(mb_region_map_sync(w.mm, r[1], true), 0);
  assert_int_equal(mb_region_map_sync(w.mm, r[2], true), -ENOSPC);
  int st = -1;
  assert_int_equal(mb_region_state_sync(w.mm, r[2], &st), 0);
  assert_int_equal(st, MB_REGION_UNMAPPED);
  assert_int_equal(mb_partition_classify(w.part, 20 * MiB, 4, false), MB_GPA_MMIO);
  /* slots are recycled */
  assert_int_equal(mb_region_unmap_sync(w.mm, r[0]), 0);
  assert_int_equal(mb_region_map_sync(w.mm, r[2], true), 0);
  /* a failing ioctl rolls the operation back */
  assert_int_equal(mb_region_unmap_sync(w.mm, r[1]), 0);
  vm.fail_at = vm.calls + 1, vm.fail_err = -ENOMEM;
  assert_int_equal(mb_region_map_sync(w.mm, r[0], true), -ENOMEM);
  assert_int_equal(mb_region_state_sync(w.mm, r[0], &st), 0);
  assert_int_equal(st, MB_REGION_UNMAPPED);
  mb_range_list *ranges = NULL;
  assert_int_equal(mb_partition_ranges_sync(w.part, &ranges), 0);
  assert_int_equal(ranges->count, 3); /* ram (with its hole), rom, r[2] */
  free(ranges);
  assert_int_equal(tu_fake_used(&vm, 8, 4, &inside), 4);
  /* removing the partition deletes exactly its slots: the VMM's stays */
  assert_int_equal(mb_partition_remove_sync(w.part), 0);
  assert_int_equal(tu_fake_used(&vm, 0, 1, &inside), 1);
  assert_true(inside);
  assert_int_equal(vm.violations, 0);
  world_fini(&w);
  tu_fake_fini(&vm);
}

/* The slot of the piece at gpa (NULL: none). */
static const struct kvm_userspace_memory_region *slot_at(const struct kvm_userspace_memory_region *t,
                                                         uint64_t gpa) {
  for (int i = 0; i < TU_FAKE_SLOTS; i++)
    if (t[i].memory_size && t[i].guest_phys_addr == gpa)
      return &t[i];
  return NULL;
}

/* An access change in place is exactly the slot's delete and its add with or without
 * KVM_MEM_READONLY (same slot range, same host memory); a failed add puts the slot back as it
 * was and the region keeps its access. A mapping replace and a transaction that ends as it
 * began make no slot call at all. */
static void test_attach_access_and_replace(void **unused) {
  (void)unused;
  tu_fake_vm vm;
  tu_fake_init(&vm);
  mb_kvm_attach_config c;
  mb_partition_params params = tu_fake_params(&vm, &c, 8, 4);
  world w;
  world_init(&w, &params);
  struct kvm_userspace_memory_region before[TU_FAKE_SLOTS], after[TU_FAKE_SLOTS];
  tu_fake_slots(&vm, before);
  int calls = vm.calls;
  assert_int_equal(mb_region_map_sync(w.mm, w.ram, false), 0);
  assert_int_equal(vm.calls, calls + 2);
  tu_fake_slots(&vm, after);
  const struct kvm_userspace_memory_region *o = slot_at(before, 0), *n = slot_at(after, 0);
  assert_non_null(n);
  assert_int_equal(n->flags, o->flags | KVM_MEM_READONLY);
  assert_int_equal(n->memory_size, o->memory_size);
  assert_int_equal(n->userspace_addr, o->userspace_addr);
  vm.fail_at = vm.calls + 2, vm.fail_err = -ENOMEM; /* the add back to read-write fails */
  assert_int_equal(mb_region_map_sync(w.mm, w.ram, true), -ENOMEM);
  tu_fake_slots(&vm, before);
  assert_memory_equal(before, after, sizeof before);
  assert_int_equal(mb_mapper_write(mb_mm_primary_mapper(w.mm), 0, "x", 1), MB_E_READONLY);
  assert_int_equal(mb_region_map_sync(w.mm, w.ram, true), 0);
  calls = vm.calls;
  mb_mapping_params rp = {w.ram, 0, MiB, w.obj, 5 * MiB, true};
  assert_int_equal(mb_mapping_replace_sync(w.mm, &rp), 0);
  assert_int_equal(mb_txn_begin_sync(w.mm), 0);
  assert_int_equal(mb_region_unmap_sync(w.mm, w.rom), 0);
  assert_int_equal(mb_region_map_sync(w.mm, w.rom, false), 0);
  assert_int_equal(mb_txn_commit_sync(w.mm), 0);
  assert_int_equal(vm.calls, calls);
  assert_int_equal(vm.violations, 0);
  world_fini(&w);
  tu_fake_fini(&vm);
}

static void test_attach_config(void **unused) {
  (void)unused;
  tu_fake_vm vm;
  tu_fake_init(&vm);
  world w;
  world_init(&w, NULL);
  mb_kvm_attach_config c;
  mb_partition_params params = tu_fake_params(&vm, &c, MB_KVM_SLOT_LIMIT - 1, 2);
  mb_partition *p = NULL;
  assert_int_equal(mb_partition_attach_sync(w.mm, &params, &p), MB_E_INVALID);
  params = tu_fake_params(&vm, &c, 0, 0);
  c.set_region = NULL; /* and vm_fd -1: not a KVM VM */
  assert_int_equal(mb_partition_attach_sync(w.mm, &params, &p), MB_E_INVALID);
  c.vm_fd = 0; /* stdin: not a KVM VM either */
  assert_int_equal(mb_partition_attach_sync(w.mm, &params, &p), MB_E_INVALID);
  params = (mb_partition_params){&mb_partition_soft, &c, NULL, 0}; /* soft takes no config */
  assert_int_equal(mb_partition_attach_sync(w.mm, &params, &p), MB_E_INVALID);
  assert_int_equal(mb_partition_attach_sync(w.mm, NULL, &p), MB_E_INVALID);
  /* too few slots for what is visible: the add fails and leaves nothing behind */
  params = tu_fake_params(&vm, &c, 4, 1);
  assert_int_equal(mb_partition_attach_sync(w.mm, &params, &p), -ENOSPC);
  bool inside;
  assert_int_equal(tu_fake_used(&vm, 0, 1, &inside), 1);
  world_fini(&w);
  tu_fake_fini(&vm);
}

/* While an operation deletes and re-adds slots (and, between the two, changes the VA mapper),
 * a page that stays RAM is RAM. */
typedef struct midway {
  mb_partition *part;
  int asked, ram;
} midway;

static void ask_midway(tu_fake_vm *vm, const struct kvm_userspace_memory_region *r) {
  midway *m = vm->ctx;
  (void)r;
  if (!m || !m->part)
    return;
  m->asked++;
  /* [0, 1M) and [3M, 4M) stay RAM throughout; [16M, 17M) is the region going away */
  m->ram += mb_partition_classify(m->part, 0x1000, 8, true) == MB_GPA_RAM;
  m->ram += mb_partition_classify(m->part, 3 * MiB, 8, true) == MB_GPA_RAM;
}

static void test_attach_stays_ram(void **unused) {
  (void)unused;
  tu_fake_vm vm;
  tu_fake_init(&vm);
  midway m = {0};
  mb_kvm_attach_config c;
  mb_partition_params params = tu_fake_params(&vm, &c, 1, 16);
  world w;
  world_init(&w, &params);
  vm.ctx = &m;
  vm.on_set = ask_midway;
  m.part = w.part;
  /* a region of higher priority over [1M, 2M) of ram splits ram's piece: its slot is deleted
   * and two are added; unmapping it again joins them */
  mb_region_id hi;
  mb_region_params p = {"hi", MiB, MiB, 2, false, 0};
  assert_int_equal(mb_region_add_sync(w.mm, &p, &hi), 0);
  mb_mapping_params mp = {hi, 0, MiB, w.obj, 5 * MiB, true};
  assert_int_equal(mb_mapping_add_sync(w.mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(w.mm, hi, true), 0);
  assert_int_equal(mb_partition_classify(w.part, MiB, 8, false), MB_GPA_RAM); /* no hole now */
  assert_int_equal(mb_region_unmap_sync(w.mm, hi), 0);
  assert_int_equal(mb_partition_classify(w.part, MiB, 8, false), MB_GPA_FAULT);
  /* an access change deletes and re-adds the slots too */
  assert_int_equal(mb_region_map_sync(w.mm, w.ram, false), 0);
  assert_true(m.asked >= 3);
  assert_int_equal(m.ram, 2 * m.asked);
  assert_int_equal(mb_partition_classify(w.part, 0x1000, 8, true), MB_GPA_MMIO);
  m.part = NULL;
  assert_int_equal(vm.violations, 0);
  world_fini(&w);
  tu_fake_fini(&vm);
}

/* ---- kvm_attach on a real VM (skipped without /dev/kvm) ----------------------------------- */

/* The VMM's own slot 0 at gpa over 4 KiB of its memory: 0 or -errno (EEXIST: overlaps a slot). */
static int vmm_slot(int vm, uint64_t gpa, void *mem, uint64_t size) {
  struct kvm_userspace_memory_region r = {0, 0, gpa, size, (uintptr_t)mem};
  return ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0 ? -errno : 0;
}

static void test_attach_real_vm(void **unused) {
  (void)unused;
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0)
    skip(); /* no /dev/kvm here: checked on hosts that have it */
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  assert_true(vm >= 0);
  void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  assert_true(page != MAP_FAILED);
  mb_kvm_attach_config c = {.vm_fd = vm, .slot_first = 8, .slot_count = 2};
  mb_partition_params params = {&mb_partition_kvm_attach, &c, NULL, 0};
  world w;
  world_init(&w, &params);
  /* membacking's slots are in the VM: the VMM's own slot cannot overlap them */
  assert_int_equal(vmm_slot(vm, 0, page, 4096), -EEXIST);
  assert_int_equal(vmm_slot(vm, 32 * MiB, page, 4096), 0);
  mb_region_id extra;
  mb_region_params p = {"extra", 16 * MiB, MiB, 1, false, 0};
  assert_int_equal(mb_region_add_sync(w.mm, &p, &extra), 0);
  assert_int_equal(mb_region_map_sync(w.mm, extra, true), -ENOSPC); /* two slots only */
  assert_int_equal(mb_partition_classify(w.part, 0x1000, 8, true), MB_GPA_RAM);
  assert_int_equal(mb_partition_remove_sync(w.part), 0);
  /* removal deleted membacking's slots, and only those: the VMM's slot 0 is still there */
  assert_int_equal(vmm_slot(vm, 32 * MiB, page, 8192), -EINVAL); /* no resize of a live slot */
  struct kvm_userspace_memory_region r = {9, 0, 0, 4096, (uintptr_t)page};
  assert_int_equal(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r), 0); /* gpa 0 is free again */
  world_fini(&w);
  munmap(page, 4096);
  close(vm);
  close(kvm);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_slots),
      cmocka_unit_test(test_exit_rule),
      cmocka_unit_test(test_classify),
      cmocka_unit_test(test_attach_slots),
      cmocka_unit_test(test_attach_access_and_replace),
      cmocka_unit_test(test_attach_config),
      cmocka_unit_test(test_attach_stays_ram),
      cmocka_unit_test(test_attach_real_vm),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
