/* test_protect.c: VTL protections in the partition mapper (partition_mapper.h: PM_PROTECT),
 * driven by messages from the test thread, on the soft backend and on kvm_attach over the fake
 * KVM VM (tests/common/tu_fake_vm.h, no /dev/kvm needed): pieces split into sub-ranges by
 * effective access (none: no slot; ro: a KVM_MEM_READONLY slot), a protection over several
 * pieces, rw again merging a piece back into one slot, the access order (MMIO, PROTECTED,
 * then the backend's answer), the effective ranges, access changes and unmaps under
 * protections, -ENOSPC and a failure at every ioctl of a protect leaving the VM exactly as it
 * was, and dirty pages of a slot that a protection deletes. Argument: soft or fake. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dirty_set.h"
#include "mb_access.h"
#include "mb_backing.h"
#include "partition_mapper.h"
#include "test_util.h"
#include "tu_fake_vm.h"
#include "va_reserve.h"

#define K 1024ull
#define MAX_ADDR (1ull << 20)
#define BACKED (512 * K) /* [0, BACKED) of the guest's host memory is a memfd, the rest a hole */
#define FILL 0x20
#define SLOT_FIRST 8

static bool use_fake; /* kvm_attach on the fake VM, else soft */

/* ---- the bench: host memory, a started loop, a mapper, maybe the fake VM ----------------- */

typedef struct bench {
  mb_va va;
  mb_object *obj;
  mb_loop *l;
  tu_fake_vm vm;
  mb_kvm_attach_config cfg;
  mb_actor *actor;
  mb_addr pm;
} bench;

typedef struct spawn {
  bench *b;
  uint32_t slots;
  int rc;
} spawn;

static void spawn_fn(mb_loop *l, void *arg) {
  spawn *s = arg;
  bench *b = s->b;
  const mb_partition_ops *ops = &mb_partition_soft;
  const void *config = NULL;
  if (use_fake) {
    (void)tu_fake_params(&b->vm, &b->cfg, SLOT_FIRST, s->slots);
    ops = &mb_partition_kvm_attach;
    config = &b->cfg;
  }
  s->rc = mb_partition_mapper_create(l, ops, config, MAX_ADDR, NULL, &b->actor);
}

/* slots: the fake VM's budget for the partition. */
static void bench_open(bench *b, uint32_t slots) {
  memset(b, 0, sizeof *b);
  assert_int_equal(mb_access_reinstall(), 0); /* cmocka replaced the fault handlers */
  assert_int_equal(mb_va_reserve(&b->va, MAX_ADDR), 0);
  b->obj = tu_memfd_pages("prot", BACKED, FILL);
  assert_int_equal(mb_object_map_into(b->obj, &b->va, 0, BACKED, 0, true), 0);
  tu_fake_init(&b->vm);
  b->l = tu_start("part");
  spawn s = {b, slots, -1};
  assert_int_equal(mb_loop_exec(b->l, spawn_fn, &s), 0);
  assert_int_equal(s.rc, 0);
  b->pm = mb_actor_addr(b->actor);
}

static void bench_close(bench *b) {
  tu_stop(b->l); /* destroys the mapper, which deletes its slots */
  bool inside;
  assert_int_equal(tu_fake_used(&b->vm, 0, 1, &inside), 1); /* the VMM's own slot 0 only */
  assert_int_equal(b->vm.violations, 0);
  tu_fake_fini(&b->vm);
  mb_va_release(&b->va);
  mb_object_unref(b->obj);
}

/* ---- requests ------------------------------------------------------------------------------ */

static int call(mb_addr pm, mb_msg *m) {
  int rc = mb_call_sync(pm, m);
  mb_msg_free(m);
  return rc;
}

static int map(bench *b, uint64_t gpa, uint64_t size, bool writable) {
  pm_map_msg *m = pm_map_new();
  m->gpa = gpa, m->size = size, m->writable = writable, m->host = b->va.base + gpa;
  return call(b->pm, &m->hdr);
}

static int unmap(bench *b, uint64_t gpa, uint64_t size) {
  pm_unmap_msg *m = pm_unmap_new();
  m->gpa = gpa, m->size = size;
  return call(b->pm, &m->hdr);
}

static int access_set(bench *b, uint64_t gpa, uint64_t size, bool writable) {
  pm_access_set_msg *m = pm_access_set_new();
  m->gpa = gpa, m->size = size, m->writable = writable;
  return call(b->pm, &m->hdr);
}

static int protect_items(bench *b, mb_prot_item *items, uint32_t n) {
  pm_protect_msg *m = pm_protect_new();
  m->items = items, m->count = n;
  return call(b->pm, &m->hdr);
}

static int protect(bench *b, uint64_t gpa, uint64_t size, uint8_t access) {
  mb_prot_item it = {gpa, size, access};
  return protect_items(b, &it, 1);
}

static int guest(bench *b, uint64_t gpa, void *buf, uint64_t len, bool write) {
  pm_access_msg *m = pm_access_new();
  m->gpa = gpa, m->buf = buf, m->len = len, m->write = write;
  return call(b->pm, &m->hdr);
}

static int dirty_start(bench *b, mb_dirty_set *set) {
  pm_dirty_start_msg *m = pm_dirty_start_new();
  m->set = set;
  return call(b->pm, &m->hdr);
}

static int dirty_stop(bench *b) {
  return call(b->pm, &pm_dirty_stop_new()->hdr);
}

/* The mapper's ranges are want[0..n). */
static void assert_ranges(bench *b, const mb_part_range *want, size_t n) {
  pm_ranges_msg *m = pm_ranges_new();
  assert_int_equal(mb_call_sync(b->pm, &m->hdr), 0);
  assert_int_equal(m->count, n);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(m->ranges[i].gpa, want[i].gpa);
    assert_int_equal(m->ranges[i].size, want[i].size);
    assert_int_equal(m->ranges[i].writable, want[i].writable);
  }
  free(m->ranges);
  mb_msg_free(&m->hdr);
}

/* ---- the fake VM's slots --------------------------------------------------------------------- */

typedef struct slot_want {
  uint64_t gpa, size;
  bool readonly;
} slot_want;

/* The VM's live slots (a deleted slot keeps stale fields in the fake VM: cleared here). */
static void live_slots(bench *b, struct kvm_userspace_memory_region *t) {
  tu_fake_slots(&b->vm, t);
  for (int i = 0; i < TU_FAKE_SLOTS; i++)
    if (!t[i].memory_size)
      memset(&t[i], 0, sizeof t[i]);
}

/* The partition's slots (all but the VMM's slot 0) are exactly want[0..n), at their host. */
static void assert_slots(bench *b, const slot_want *want, size_t n) {
  if (!use_fake)
    return;
  struct kvm_userspace_memory_region t[TU_FAKE_SLOTS];
  tu_fake_slots(&b->vm, t);
  size_t found = 0;
  for (int i = SLOT_FIRST; i < TU_FAKE_SLOTS; i++) {
    if (!t[i].memory_size)
      continue;
    found++;
    bool matched = false;
    for (size_t j = 0; j < n && !matched; j++)
      matched = t[i].guest_phys_addr == want[j].gpa && t[i].memory_size == want[j].size &&
                t[i].userspace_addr == (uintptr_t)(b->va.base + want[j].gpa) &&
                ((t[i].flags & KVM_MEM_READONLY) != 0) == want[j].readonly;
    if (!matched)
      fail_msg("slot %d: [%#llx, +%#llx) flags %#x is not expected", i,
               (unsigned long long)t[i].guest_phys_addr, (unsigned long long)t[i].memory_size,
               t[i].flags);
  }
  assert_int_equal(found, n);
}

/* ---- tests ------------------------------------------------------------------------------------ */

/* A piece is split by protections; back to rw it is one sub-range (one slot) again. */
static void test_split_and_merge(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b, 16);
  assert_int_equal(map(&b, 0, 256 * K, true), 0);
  assert_int_equal(protect(&b, 64 * K, 64 * K, MB_PROT_NONE), 0);
  const mb_part_range r1[] = {{0, 64 * K, true}, {128 * K, 128 * K, true}};
  assert_ranges(&b, r1, 2);
  const slot_want s1[] = {{0, 64 * K, false}, {128 * K, 128 * K, false}};
  assert_slots(&b, s1, 2);
  assert_int_equal(protect(&b, 160 * K, 32 * K, MB_PROT_RO), 0);
  const mb_part_range r2[] = {{0, 64 * K, true}, {128 * K, 32 * K, true},
                              {160 * K, 32 * K, false}, {192 * K, 64 * K, true}};
  assert_ranges(&b, r2, 4);
  const slot_want s2[] = {{0, 64 * K, false}, {128 * K, 32 * K, false},
                          {160 * K, 32 * K, true}, {192 * K, 64 * K, false}};
  assert_slots(&b, s2, 4);
  /* the same protection again changes no slot */
  int calls = b.vm.calls;
  assert_int_equal(protect(&b, 160 * K, 32 * K, MB_PROT_RO), 0);
  assert_int_equal(b.vm.calls, calls);
  /* everything rw again: one piece, one slot */
  assert_int_equal(protect(&b, 0, MAX_ADDR, MB_PROT_RW), 0);
  const mb_part_range r3[] = {{0, 256 * K, true}};
  assert_ranges(&b, r3, 1);
  const slot_want s3[] = {{0, 256 * K, false}};
  assert_slots(&b, s3, 1);
  bench_close(&b);
}

/* One protect over several pieces, rw runs included; a read-only piece under `ro` keeps its
 * slot untouched; protections outlive pieces (an unmapped piece mapped again is split). */
static void test_several_pieces(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b, 16);
  assert_int_equal(map(&b, 0, 128 * K, true), 0);         /* A */
  assert_int_equal(map(&b, 128 * K, 128 * K, false), 0);  /* B, read-only region */
  struct kvm_userspace_memory_region before[TU_FAKE_SLOTS];
  live_slots(&b, before);
  mb_prot_item items[] = {{32 * K, 32 * K, MB_PROT_NONE},
                          {64 * K, 32 * K, MB_PROT_RW},
                          {96 * K, 64 * K, MB_PROT_RO}};
  assert_int_equal(protect_items(&b, items, 3), 0);
  const mb_part_range r1[] = {{0, 32 * K, true}, {64 * K, 32 * K, true},
                              {96 * K, 160 * K, false}};
  assert_ranges(&b, r1, 3);
  const slot_want s1[] = {{0, 32 * K, false}, {64 * K, 32 * K, false},
                          {96 * K, 32 * K, true}, {128 * K, 128 * K, true}};
  assert_slots(&b, s1, 4);
  if (use_fake) { /* B's slot is the same slot as before */
    struct kvm_userspace_memory_region after[TU_FAKE_SLOTS];
    live_slots(&b, after);
    for (int i = SLOT_FIRST; i < TU_FAKE_SLOTS; i++)
      if (before[i].guest_phys_addr == 128 * K && before[i].memory_size)
        assert_memory_equal(&before[i], &after[i], sizeof after[i]);
  }
  /* protections belong to addresses: A goes and comes back split */
  assert_int_equal(unmap(&b, 0, 128 * K), 0);
  const slot_want s2[] = {{128 * K, 128 * K, true}};
  assert_slots(&b, s2, 1);
  assert_int_equal(map(&b, 0, 128 * K, true), 0);
  assert_ranges(&b, r1, 3);
  assert_slots(&b, s1, 4);
  /* an access change of A: its sub-ranges follow (ro everywhere: one slot) and come back */
  assert_int_equal(access_set(&b, 0, 128 * K, false), 0);
  const slot_want s3[] = {{0, 32 * K, true}, {64 * K, 64 * K, true}, {128 * K, 128 * K, true}};
  assert_slots(&b, s3, 3);
  assert_int_equal(access_set(&b, 0, 128 * K, true), 0);
  assert_slots(&b, s1, 4);
  assert_int_equal(access_set(&b, 0, 64 * K, true), -ENOENT);
  /* a piece wholly `none` has no slot, but is a piece all the same */
  assert_int_equal(protect(&b, 512 * K, 64 * K, MB_PROT_NONE), 0);
  assert_int_equal(map(&b, 512 * K, 64 * K, true), 0);
  assert_slots(&b, s1, 4);
  assert_int_equal(map(&b, 512 * K, 4 * K, true), -EEXIST);
  assert_int_equal(unmap(&b, 512 * K, 64 * K), 0);
  assert_int_equal(unmap(&b, 512 * K, 64 * K), -ENOENT);
  bench_close(&b);
}

/* A guest access is decided at its first failing byte: MMIO (no piece, a write to a read-only
 * region), then PROTECTED, then the backend's answer (FAULT: a hole); the bytes before it are
 * accessed. */
static void test_access_order(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b, 16);
  assert_int_equal(map(&b, 0, 128 * K, true), 0);
  assert_int_equal(map(&b, 128 * K, 64 * K, false), 0);
  assert_int_equal(map(&b, BACKED, 64 * K, true), 0); /* a hole behind it */
  assert_int_equal(protect(&b, 32 * K, 32 * K, MB_PROT_NONE), 0);
  assert_int_equal(protect(&b, 64 * K, 32 * K, MB_PROT_RO), 0);
  assert_int_equal(protect(&b, 160 * K, 32 * K, MB_PROT_NONE), 0);
  assert_int_equal(protect(&b, 256 * K, 64 * K, MB_PROT_NONE), 0); /* no piece there */
  uint8_t buf[64];
  memset(buf, 0x77, sizeof buf);
  assert_int_equal(guest(&b, 32 * K, buf, 4, false), MB_E_PROTECTED);
  assert_int_equal(guest(&b, 64 * K, buf, 4, false), 0);
  assert_int_equal(buf[0], mb_fill_pages_byte(FILL, 64 * K));
  assert_int_equal(guest(&b, 64 * K, buf, 4, true), MB_E_PROTECTED);
  assert_int_equal(guest(&b, 160 * K, buf, 4, false), MB_E_PROTECTED);
  assert_int_equal(guest(&b, 160 * K, buf, 4, true), MB_E_MMIO);  /* read-only region first */
  assert_int_equal(guest(&b, 256 * K, buf, 4, false), MB_E_MMIO); /* no piece first */
  assert_int_equal(guest(&b, BACKED, buf, 4, false), MB_E_FAULT);
  /* the first failing byte decides; the bytes before it are written */
  memset(buf, 0xc4, sizeof buf);
  assert_int_equal(guest(&b, 32 * K - 16, buf, 32, true), MB_E_PROTECTED);
  assert_memory_equal(b.va.base + 32 * K - 16, buf, 16);
  assert_int_equal(b.va.base[32 * K], mb_fill_pages_byte(FILL, 32 * K));
  assert_int_equal(guest(&b, 128 * K - 8, buf, 16, true), MB_E_MMIO);
  assert_memory_equal(b.va.base + 128 * K - 8, buf, 8);
  assert_int_equal(guest(&b, 96 * K - 8, buf, 16, false), 0); /* ro then rw: reads pass */
  assert_int_equal(protect(&b, BACKED, 4 * K, MB_PROT_NONE), 0);
  assert_int_equal(guest(&b, BACKED, buf, 4, false), MB_E_PROTECTED); /* before the hole */
  assert_int_equal(guest(&b, MAX_ADDR - 2, buf, 4, false), MB_E_INVALID);
  bench_close(&b);
}

/* Malformed lists are refused and change nothing. */
static void test_bad_items(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b, 16);
  assert_int_equal(map(&b, 0, 128 * K, true), 0);
  mb_prot_item gap[] = {{0, 4 * K, MB_PROT_NONE}, {8 * K, 4 * K, MB_PROT_NONE}};
  assert_int_equal(protect_items(&b, gap, 2), MB_E_INVALID);
  mb_prot_item bad[] = {{0, 4 * K, 3}};
  assert_int_equal(protect_items(&b, bad, 1), MB_E_INVALID);
  assert_int_equal(protect(&b, 0, 100, MB_PROT_NONE), MB_E_INVALID);
  assert_int_equal(protect(&b, 0, 0, MB_PROT_NONE), MB_E_INVALID);
  assert_int_equal(protect(&b, MAX_ADDR - 4 * K, 8 * K, MB_PROT_NONE), MB_E_INVALID);
  assert_int_equal(protect_items(&b, gap, 0), MB_E_INVALID);
  const mb_part_range r[] = {{0, 128 * K, true}};
  assert_ranges(&b, r, 1);
  /* PM_MAP with no host and no va_base to fall back on */
  pm_map_msg *m = pm_map_new();
  m->gpa = 256 * K, m->size = 4 * K, m->writable = true;
  assert_int_equal(call(b.pm, &m->hdr), MB_E_INVALID);
  bench_close(&b);
}

/* Out of slots: the protect fails with -ENOSPC and the VM, the ranges and the protections are
 * exactly as before. */
static void test_enospc(void **unused) {
  (void)unused;
  if (!use_fake)
    skip();
  bench b;
  bench_open(&b, 2);
  assert_int_equal(map(&b, 0, 256 * K, true), 0);
  struct kvm_userspace_memory_region before[TU_FAKE_SLOTS], after[TU_FAKE_SLOTS];
  live_slots(&b, before);
  assert_int_equal(protect(&b, 64 * K, 64 * K, MB_PROT_RO), -ENOSPC); /* needs three */
  live_slots(&b, after);
  assert_memory_equal(before, after, sizeof before);
  const mb_part_range r[] = {{0, 256 * K, true}};
  assert_ranges(&b, r, 1);
  uint8_t byte = 1;
  assert_int_equal(guest(&b, 64 * K, &byte, 1, true), 0); /* not protected */
  /* two fit: the failed one was not stored */
  assert_int_equal(protect(&b, 64 * K, 64 * K, MB_PROT_NONE), 0);
  const mb_part_range r2[] = {{0, 64 * K, true}, {128 * K, 128 * K, true}};
  assert_ranges(&b, r2, 2);
  /* a map that would need a third slot fails the same way */
  assert_int_equal(map(&b, 256 * K, 64 * K, true), -ENOSPC);
  assert_ranges(&b, r2, 2);
  assert_int_equal(guest(&b, 256 * K, &byte, 1, false), MB_E_MMIO);
  bench_close(&b);
}

/* The n-th ioctl of a protect fails, for every n (dirty tracking on: the logs read before
 * deletes count too): the protect answers the error and the VM, the ranges and the
 * protections are as before; the next n until it succeeds. */
static void test_fail_every_call(void **unused) {
  (void)unused;
  if (!use_fake)
    skip();
  bench b;
  bench_open(&b, 16);
  mb_dirty_set *set;
  assert_int_equal(mb_dirty_set_create(MAX_ADDR, &set), 0);
  assert_int_equal(dirty_start(&b, set), 0);
  assert_int_equal(map(&b, 0, 128 * K, true), 0);
  assert_int_equal(map(&b, 128 * K, 128 * K, true), 0);
  assert_int_equal(protect(&b, 96 * K, 64 * K, MB_PROT_RO), 0);
  const mb_part_range r0[] = {{0, 96 * K, true}, {96 * K, 64 * K, false}, {160 * K, 96 * K, true}};
  mb_prot_item items[] = {{16 * K, 16 * K, MB_PROT_NONE}, {32 * K, 96 * K, MB_PROT_RW},
                          {128 * K, 8 * K, MB_PROT_RO}, {136 * K, 8 * K, MB_PROT_NONE}};
  int n, rc = -EIO;
  for (n = 1; rc != 0; n++) {
    assert_true(n < 64);
    struct kvm_userspace_memory_region before[TU_FAKE_SLOTS], after[TU_FAKE_SLOTS];
    live_slots(&b, before);
    b.vm.fail_at = b.vm.calls + n, b.vm.fail_err = -EIO;
    rc = protect_items(&b, items, 4);
    b.vm.fail_at = 0;
    if (rc == 0)
      break;
    assert_int_equal(rc, -EIO);
    live_slots(&b, after);
    assert_memory_equal(before, after, sizeof before);
    assert_ranges(&b, r0, 3);
    assert_int_equal(b.vm.violations, 0);
  }
  assert_true(n > 8); /* deletes (with their log reads) and adds of both pieces */
  const mb_part_range r1[] = {{0, 16 * K, true}, {32 * K, 96 * K, true}, {128 * K, 8 * K, false},
                              {144 * K, 16 * K, false}, {160 * K, 96 * K, true}};
  assert_ranges(&b, r1, 5);
  assert_int_equal(dirty_stop(&b), 0);
  mb_dirty_set_destroy(set);
  bench_close(&b);
}

/* A slot that a protect deletes has its dirty log moved into the set first; the slots it adds
 * log from their start. */
static void test_dirty_survives(void **unused) {
  (void)unused;
  if (!use_fake)
    skip();
  bench b;
  bench_open(&b, 16);
  mb_dirty_set *set;
  assert_int_equal(mb_dirty_set_create(MAX_ADDR, &set), 0);
  assert_int_equal(dirty_start(&b, set), 0);
  assert_int_equal(map(&b, 0, 256 * K, true), 0);
  assert_true(tu_fake_dirty(&b.vm, 100 * K)); /* the guest writes two pages */
  assert_true(tu_fake_dirty(&b.vm, 200 * K));
  assert_int_equal(protect(&b, 96 * K, 8 * K, MB_PROT_NONE), 0);
  assert_true(mb_dirty_set_any(set, 100 * K, 4 * K));
  assert_true(mb_dirty_set_any(set, 200 * K, 4 * K));
  assert_true(tu_fake_logging(&b.vm, 200 * K)); /* the new slots log */
  assert_false(tu_fake_logging(&b.vm, 100 * K)); /* no slot there */
  assert_int_equal(protect(&b, 192 * K, 64 * K, MB_PROT_RO), 0);
  assert_false(tu_fake_logging(&b.vm, 200 * K)); /* read-only slots do not log */
  assert_int_equal(dirty_stop(&b), 0);
  mb_dirty_set_destroy(set);
  bench_close(&b);
}

int main(int argc, char **argv) {
  use_fake = argc > 1 && strcmp(argv[1], "fake") == 0;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_split_and_merge),
      cmocka_unit_test(test_several_pieces),
      cmocka_unit_test(test_access_order),
      cmocka_unit_test(test_bad_items),
      cmocka_unit_test(test_enospc),
      cmocka_unit_test(test_fail_every_call),
      cmocka_unit_test(test_dirty_survives),
  };
  return cmocka_run_group_tests_name(use_fake ? "protect-fake" : "protect-soft", tests, NULL,
                                     NULL);
}
