/* test_txn_rollback.c: a transaction's commit when the host refuses one of its steps
 * (mem/fault_inject.h). A manager with every kind of consumer (the primary mapper, an eager
 * and a lazy mapper of its own, a soft partition, and a kvm_attach partition on a fake VM that
 * enforces KVM's slot rules, tests/common/tu_fake_vm.h) gets a transaction with a mix of
 * everything (an access change, a split by a mapping remove, a replace, an unmap, a map, a
 * region unmapped and mapped again with a mapping added, a region added and one removed).
 * Its commit is made to fail at the n-th mmap, for n = 1, 2, ... until it succeeds, then at the
 * n-th KVM slot change, mprotect, munmap and allocation. After each failed commit: the error is
 * the one injected, every consumer is exactly as before the begin (each mapper's and
 * partition's ranges, the VM's slot table, the bytes read through each), the transaction is
 * closed and every region's state is the begin's again; the rolled-back manager then runs the
 * next transaction. (One allocation is the commit request itself: refused up front, the call
 * does nothing, as any call, so its transaction stays open and a second commit commits it.)
 * The commit that succeeds must give what the same operations give without a transaction (a
 * reference manager), and leave the slots of pieces that end as they began untouched.
 *
 * Built with the whole library compiled again with MB_FAULT_INJECTION (tests/fault/meson.build),
 * so it runs in every build. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault_inject.h"
#include "mb_access.h"
#include "membacking.h"
#include "test_util.h"
#include "tu_fake_vm.h"

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define MAX_ADDR (64 * MiB)
#define PROBE_END (14 * MiB)
#define PROBE_STEP (64 * KiB)
enum { PROBES = PROBE_END / PROBE_STEP, SLOT_FIRST = 8, SLOT_COUNT = 32 };

/* ---- the world: a manager with every kind of consumer ---------------------------------------- */

/* Regions by what the transaction does to them; each 1 MiB at 2 MiB * role. */
enum { R_ACCESS, R_SPLIT, R_GONE, R_SHOWN, R_AGAIN, R_ADDED, R_REMOVED, REGIONS };
enum { C_PRIMARY, C_EAGER, C_LAZY, C_SOFT, C_KVM, CONSUMERS };
static const char *const consumer_names[CONSUMERS] = {"primary", "eager", "lazy", "soft", "kvm"};

typedef struct loops {
  mb_loop *mgr, *eager, *lazy, *soft, *kvm;
} loops;

typedef struct world {
  mb_mm *mm;
  mb_mapper *mapper[3];   /* C_PRIMARY, C_EAGER, C_LAZY */
  mb_partition *part[2];  /* C_SOFT, C_KVM */
  tu_fake_vm vm;
  mb_region_id r[REGIONS];
  bool exists[REGIONS];
  bool added_once; /* r[R_ADDED] is the id a transaction gave (gone again after a rollback) */
} world;

static loops L;
static mb_object *X, *Y; /* page k of X holds bytes 0x10 + k, of Y 0x80 + k */

static uint64_t gpa_of(int role) { return (uint64_t)role * 2 * MiB; }

static mb_region_id region(world *w, int role, bool device) {
  mb_region_params p = {"r", gpa_of(role), MiB, 1, device, 0};
  assert_int_equal(mb_region_add_sync(w->mm, &p, &w->r[role]), 0);
  w->exists[role] = true;
  return w->r[role];
}

static void mapping(world *w, int role, uint64_t off, uint64_t size, mb_object *o,
                    uint64_t obj_off, bool writable) {
  mb_mapping_params p = {w->r[role], off, size, o, obj_off, writable};
  assert_int_equal(mb_mapping_add_sync(w->mm, &p), 0);
}

/* Every region but R_ADDED, mapped (but R_SHOWN), with the mappings the mix changes. */
static void world_regions(world *w) {
  region(w, R_ACCESS, false);
  mapping(w, R_ACCESS, 0, MiB, X, 0, true);
  region(w, R_SPLIT, false);
  mapping(w, R_SPLIT, 0, 512 * KiB, X, MiB, true);
  mapping(w, R_SPLIT, 512 * KiB, 512 * KiB, Y, 512 * KiB, true);
  region(w, R_GONE, true);
  mapping(w, R_GONE, 0, MiB, X, 2 * MiB, true);
  region(w, R_SHOWN, false);
  mapping(w, R_SHOWN, 0, MiB, Y, MiB, true);
  region(w, R_AGAIN, true);
  mapping(w, R_AGAIN, 0, 512 * KiB, X, 3 * MiB, true);
  region(w, R_REMOVED, false);
  mapping(w, R_REMOVED, 0, MiB, Y, 2 * MiB, false);
  for (int role = 0; role < REGIONS; role++)
    if (w->exists[role] && role != R_SHOWN)
      assert_int_equal(mb_region_map_sync(w->mm, w->r[role], true), 0);
}

static void world_init(world *w) {
  memset(w, 0, sizeof *w);
  tu_fake_init(&w->vm);
  mb_mm_config cfg = {.max_addr = MAX_ADDR, .loop = L.mgr};
  assert_int_equal(mb_mm_create(&cfg, &w->mm), 0);
  w->mapper[C_PRIMARY] = mb_mm_primary_mapper(w->mm);
  assert_int_equal(mb_mapper_add_sync(w->mm, L.eager, true, &w->mapper[C_EAGER]), 0);
  assert_int_equal(mb_mapper_add_sync(w->mm, L.lazy, false, &w->mapper[C_LAZY]), 0);
  assert_int_equal(mb_partition_add_sync(w->mm, &mb_partition_soft, L.soft, &w->part[0]), 0);
  mb_kvm_attach_config kc;
  mb_partition_params pp = tu_fake_params(&w->vm, &kc, SLOT_FIRST, SLOT_COUNT);
  pp.loop = L.kvm;
  assert_int_equal(mb_partition_attach_sync(w->mm, &pp, &w->part[1]), 0);
  world_regions(w);
}

static void world_fini(world *w) {
  mb_mm_destroy(w->mm);
  assert_int_equal(w->vm.violations, 0);
  tu_fake_fini(&w->vm);
}

/* What the transaction does: a bit of everything. */
static void mix(world *w) {
  mb_mm *mm = w->mm;
  assert_int_equal(mb_region_map_sync(mm, w->r[R_ACCESS], false), 0); /* access change */
  assert_int_equal(mb_mapping_remove_sync(mm, w->r[R_SPLIT], 256 * KiB, 512 * KiB), 0);
  mb_mapping_params rp = {w->r[R_SPLIT], 0, 128 * KiB, Y, 3 * MiB, true};
  assert_int_equal(mb_mapping_replace_sync(mm, &rp), 0);
  assert_int_equal(mb_region_unmap_sync(mm, w->r[R_GONE]), 0);
  assert_int_equal(mb_region_map_sync(mm, w->r[R_SHOWN], true), 0);
  assert_int_equal(mb_region_unmap_sync(mm, w->r[R_AGAIN]), 0); /* and back: costs nothing */
  assert_int_equal(mb_region_map_sync(mm, w->r[R_AGAIN], true), 0);
  mapping(w, R_AGAIN, 512 * KiB, 512 * KiB, Y, 4 * MiB, true);
  region(w, R_ADDED, false);
  w->added_once = true;
  mapping(w, R_ADDED, 0, MiB, X, 4 * MiB, true);
  assert_int_equal(mb_region_map_sync(mm, w->r[R_ADDED], false), 0);
  assert_int_equal(mb_region_remove_sync(mm, w->r[R_REMOVED]), 0);
  w->exists[R_REMOVED] = false;
}

/* ---- what every consumer shows --------------------------------------------------------------- */

typedef struct probe {
  int rc;
  uint64_t value;
} probe;

typedef struct snap {
  mb_range_list *ranges[CONSUMERS];
  struct kvm_userspace_memory_region slots[TU_FAKE_SLOTS];
  probe bytes[CONSUMERS][PROBES];
  int state[REGIONS]; /* MB_REGION_* or the error (MB_E_NOTFOUND: no such region) */
} snap;

static int consumer_read(world *w, int c, uint64_t gpa, uint64_t *v) {
  if (c <= C_LAZY)
    return mb_mapper_read(w->mapper[c], gpa, v, sizeof *v);
  return mb_partition_access_sync(w->part[c - C_SOFT], gpa, v, sizeof *v, false);
}

static int consumer_ranges(world *w, int c, mb_range_list **out) {
  if (c <= C_LAZY)
    return mb_mapper_ranges_sync(w->mapper[c], out);
  return mb_partition_ranges_sync(w->part[c - C_SOFT], out);
}

/* Bytes first: the lazy mapper's reads establish what they touch, so its ranges are taken
 * once every probe has been made. */
static snap *snap_take(world *w) {
  snap *s = calloc(1, sizeof *s);
  assert_non_null(s);
  for (int c = 0; c < CONSUMERS; c++)
    for (int i = 0; i < PROBES; i++)
      s->bytes[c][i].rc = consumer_read(w, c, (uint64_t)i * PROBE_STEP, &s->bytes[c][i].value);
  for (int c = 0; c < CONSUMERS; c++)
    assert_int_equal(consumer_ranges(w, c, &s->ranges[c]), 0);
  tu_fake_slots(&w->vm, s->slots);
  for (int role = 0; role < REGIONS; role++) {
    int st = MB_E_NOTFOUND, rc = MB_E_NOTFOUND;
    if (w->exists[role] || (role == R_ADDED && w->added_once))
      rc = mb_region_state_sync(w->mm, w->r[role], &st);
    s->state[role] = rc ? rc : st;
  }
  return s;
}

static void snap_free(snap *s) {
  for (int c = 0; c < CONSUMERS; c++)
    free(s->ranges[c]);
  free(s);
}

/* ---- comparing what consumers show ----------------------------------------------------------- */

static void print_ranges(const char *label, const mb_range_list *l) {
  printf("    %s:", label);
  for (size_t i = 0; i < l->count; i++)
    printf(" 0x%llx+0x%llx:%s", (unsigned long long)l->ranges[i].gpa,
           (unsigned long long)l->ranges[i].size, l->ranges[i].writable ? "rw" : "ro");
  printf("\n");
}

/* Adjacent ranges of the same access merged: two managers may cut the same map differently. */
static mb_range_list *merged(const mb_range_list *l) {
  mb_range_list *m = calloc(1, sizeof *m + (l->count + 1) * sizeof m->ranges[0]);
  assert_non_null(m);
  for (size_t i = 0; i < l->count; i++) {
    mb_part_range *last = m->count ? &m->ranges[m->count - 1] : NULL;
    if (last && last->gpa + last->size == l->ranges[i].gpa &&
        last->writable == l->ranges[i].writable)
      last->size += l->ranges[i].size;
    else
      m->ranges[m->count++] = l->ranges[i];
  }
  return m;
}

static bool ranges_equal(const mb_range_list *a, const mb_range_list *b) {
  if (a->count != b->count)
    return false;
  for (size_t i = 0; i < a->count; i++)
    if (a->ranges[i].gpa != b->ranges[i].gpa || a->ranges[i].size != b->ranges[i].size ||
        a->ranges[i].writable != b->ranges[i].writable)
      return false;
  return true;
}

/* Differences in ranges (exactly, or as merged) and bytes, each said on stdout. */
static int diff_consumers(const snap *a, const snap *b, bool exact) {
  int n = 0;
  for (int c = 0; c < CONSUMERS; c++) {
    mb_range_list *ma = merged(a->ranges[c]), *mb = merged(b->ranges[c]);
    bool same = exact ? ranges_equal(a->ranges[c], b->ranges[c]) : ranges_equal(ma, mb);
    free(ma);
    free(mb);
    if (!same) {
      n++;
      printf("  %s: ranges differ\n", consumer_names[c]);
      print_ranges("expected", a->ranges[c]);
      print_ranges("got     ", b->ranges[c]);
    }
    for (int i = 0; i < PROBES; i++) {
      const probe *p = &a->bytes[c][i], *q = &b->bytes[c][i];
      if (p->rc == q->rc && (p->rc != 0 || p->value == q->value))
        continue;
      n++;
      printf("  %s at 0x%llx: expected %s 0x%016llx, got %s 0x%016llx\n", consumer_names[c],
             (unsigned long long)i * PROBE_STEP, p->rc ? membacking_strerror(p->rc) : "",
             (unsigned long long)p->value, q->rc ? membacking_strerror(q->rc) : "",
             (unsigned long long)q->value);
    }
  }
  return n;
}

static int diff_states(const snap *a, const snap *b) {
  int n = 0;
  for (int role = 0; role < REGIONS; role++)
    if (a->state[role] != b->state[role]) {
      n++;
      printf("  region %d: state %d, expected %d\n", role, b->state[role], a->state[role]);
    }
  return n;
}

static int diff_slots_exact(const snap *a, const snap *b) {
  int n = 0;
  for (int i = 0; i < TU_FAKE_SLOTS; i++)
    if (memcmp(&a->slots[i], &b->slots[i], sizeof a->slots[i]) != 0) {
      n++;
      printf("  slot %d: gpa 0x%llx size 0x%llx flags %u, expected gpa 0x%llx size 0x%llx "
             "flags %u\n", i, (unsigned long long)b->slots[i].guest_phys_addr,
             (unsigned long long)b->slots[i].memory_size, b->slots[i].flags,
             (unsigned long long)a->slots[i].guest_phys_addr,
             (unsigned long long)a->slots[i].memory_size, a->slots[i].flags);
    }
  return n;
}

/* The same consumer state as before the begin, in the same world. */
static void expect_unchanged(const snap *before, const snap *now) {
  int n = diff_consumers(before, now, true) + diff_states(before, now) +
          diff_slots_exact(before, now);
  assert_int_equal(n, 0);
}

/* ---- the slot table of two managers ---------------------------------------------------------- */

static int by_gpa(const void *x, const void *y) {
  const struct kvm_userspace_memory_region *a = x, *b = y;
  return a->guest_phys_addr < b->guest_phys_addr ? -1 : a->guest_phys_addr > b->guest_phys_addr;
}

/* The slots membacking holds as (gpa, size, flags), by gpa; each must map the primary mapper's
 * VA of its gpa (partitions map the partitions' mapper). Returns how many. */
static int slot_list(world *w, const snap *s, struct kvm_userspace_memory_region *out) {
  int n = 0;
  uintptr_t base = (uintptr_t)mb_mapper_base(w->mapper[C_PRIMARY]);
  for (int i = SLOT_FIRST; i < SLOT_FIRST + SLOT_COUNT; i++) {
    const struct kvm_userspace_memory_region *r = &s->slots[i];
    if (!r->memory_size)
      continue;
    assert_int_equal(r->userspace_addr, base + r->guest_phys_addr);
    out[n] = *r;
    out[n].slot = 0, out[n].userspace_addr = 0;
    n++;
  }
  qsort(out, (size_t)n, sizeof *out, by_gpa);
  return n;
}

static void expect_same_slots(world *wa, const snap *a, world *wb, const snap *b) {
  struct kvm_userspace_memory_region la[TU_FAKE_SLOTS], lb[TU_FAKE_SLOTS];
  int na = slot_list(wa, a, la), nb = slot_list(wb, b, lb);
  assert_int_equal(na, nb);
  for (int i = 0; i < na; i++)
    assert_memory_equal(&la[i], &lb[i], sizeof la[i]);
}

/* Slots whose piece ended as it began (R_SPLIT, R_AGAIN and the VMM's slot 0) were left alone:
 * same slot, same entry. */
static void expect_untouched(const snap *before, const snap *after) {
  int kept = 0;
  for (int i = 0; i < TU_FAKE_SLOTS; i++) {
    const struct kvm_userspace_memory_region *r = &before->slots[i];
    bool keep = r->memory_size && (i == 0 || r->guest_phys_addr == gpa_of(R_SPLIT) ||
                                   r->guest_phys_addr == gpa_of(R_AGAIN));
    if (keep)
      assert_memory_equal(r, &after->slots[i], sizeof *r);
    kept += keep;
  }
  assert_int_equal(kept, 3);
}

/* ---- the commit, failing at each step in turn ------------------------------------------------ */

/* What the mix gives without a transaction: the reference. */
static snap *reference(world *ref) {
  world_init(ref);
  snap_free(snap_take(ref)); /* the same reads as the world under test had before its begin */
  mix(ref);
  return snap_take(ref);
}

/* A successful commit: what the reference shows, and untouched slots of unchanged pieces. */
static void expect_committed(world *w, const snap *before, const snap *ref_snap, world *ref) {
  snap *after = snap_take(w);
  int n = diff_consumers(ref_snap, after, false) + diff_states(ref_snap, after);
  assert_int_equal(n, 0);
  expect_same_slots(ref, ref_snap, w, after);
  expect_untouched(before, after);
  snap_free(after);
}

/* After a failed commit, the consumers and the VM are as before the begin (the manager's own
 * state is checked once the transaction is known to be closed). */
static void expect_consumers_unchanged(world *w, const snap *before) {
  snap *now = snap_take(w);
  assert_int_equal(diff_consumers(before, now, true) + diff_slots_exact(before, now), 0);
  snap_free(now);
}

/* A second commit finds no transaction: the failed one closed it, and the manager's state is
 * the begin's again. Only a commit whose own request could not be allocated (MB_ENOMEM from
 * the call, which then does nothing, as any call) leaves the transaction open: the second
 * commit commits it. true then. */
static bool closed_by_failure(world *w, const snap *before, mb_fi_kind kind, int rc) {
  int again = mb_txn_commit_sync(w->mm);
  if (again == 0 && kind == MB_FI_ALLOC && rc == MB_ENOMEM)
    return true;
  assert_int_equal(again, MB_E_INVALID);
  w->exists[R_ADDED] = false, w->exists[R_REMOVED] = true;
  snap *now = snap_take(w);
  expect_unchanged(before, now);
  snap_free(now);
  return false;
}

enum { ROLLED_BACK, COMMITTED, COMMITTED_ON_RETRY };

/* One transaction whose commit fails at the n-th call of kind (if it makes that many). */
static int commit_failing_at(world *w, const snap *before, mb_fi_kind kind, uint64_t n,
                             bool *injected) {
  assert_int_equal(mb_txn_begin_sync(w->mm), 0);
  mix(w);
  uint64_t was = mb_fi_injected(kind);
  assert_int_equal(mb_fi_arm(kind, n, ENOMEM), 0);
  int rc = mb_txn_commit_sync(w->mm);
  assert_int_equal(mb_fi_arm(kind, 0, ENOMEM), 0);
  *injected = mb_fi_injected(kind) > was;
  if (rc == 0)
    return COMMITTED;
  int want = kind == MB_FI_ALLOC ? MB_ENOMEM : -ENOMEM;
  if (!*injected || rc != want)
    printf("%s:%llu: the commit answered %s (%s injected)\n", mb_fi_kind_name(kind),
           (unsigned long long)n, membacking_strerror(rc), *injected ? "one" : "none");
  assert_true(*injected);
  assert_int_equal(rc, want);
  expect_consumers_unchanged(w, before);
  return closed_by_failure(w, before, kind, rc) ? COMMITTED_ON_RETRY : ROLLED_BACK;
}

static void sweep_kind(mb_fi_kind kind, world *ref, const snap *ref_snap) {
  world w;
  world_init(&w);
  snap *before = snap_take(&w);
  uint64_t n = 1, counts[3] = {0, 0, 0};
  for (;; n++) {
    bool injected = false;
    int outcome = commit_failing_at(&w, before, kind, n, &injected);
    counts[outcome]++;
    if (outcome == ROLLED_BACK)
      continue;
    expect_committed(&w, before, ref_snap, ref);
    if (!injected)
      break;
    /* committed with a refused step: start again from the begin's state */
    snap_free(before);
    world_fini(&w);
    world_init(&w);
    before = snap_take(&w);
  }
  printf("%s: failing each of the commit's %llu calls: %llu commits rolled back, %llu "
         "refused up front (committed on retry), %llu committed all the same\n",
         mb_fi_kind_name(kind), (unsigned long long)n - 1,
         (unsigned long long)counts[ROLLED_BACK], (unsigned long long)counts[COMMITTED_ON_RETRY],
         (unsigned long long)counts[COMMITTED] - 1);
  snap_free(before);
  world_fini(&w);
}

static void test_txn_rollback(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0); /* in front of cmocka's handlers */
  world ref;
  snap *ref_snap = reference(&ref);
  const mb_fi_kind kinds[] = {MB_FI_MMAP, MB_FI_KVM_SET_REGION, MB_FI_MPROTECT, MB_FI_MUNMAP,
                              MB_FI_ALLOC};
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
    sweep_kind(kinds[k], &ref, ref_snap);
  snap_free(ref_snap);
  world_fini(&ref);
}

/* ---- main ------------------------------------------------------------------------------------ */

static int setup(void **state) {
  (void)state;
  mb_fi_reset();
  L = (loops){tu_start("mgr"), tu_start("eager"), tu_start("lazy"), tu_start("soft"),
              tu_start("kvm")};
  X = tu_memfd_pages("x", 8 * MiB, 0x10);
  Y = tu_memfd_pages("y", 8 * MiB, 0x80);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  mb_object_unref(X);
  mb_object_unref(Y);
  mb_loop *all[] = {L.mgr, L.eager, L.lazy, L.soft, L.kvm};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    tu_stop(all[i]);
  return 0;
}

int main(void) {
  if (!mb_fi_enabled()) {
    printf("SKIP: built without fault injection\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_txn_rollback)};
  return cmocka_run_group_tests_name("txn-rollback", tests, setup, teardown);
}
