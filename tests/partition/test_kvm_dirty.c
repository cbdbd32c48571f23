/* test_kvm_dirty.c: dirty-page tracking of the partition backends (mb_partition.h's dirty
 * calls), driven directly, against the backend named on the command line:
 *   soft   the soft partition (guest writes are its access() writes)
 *   fake   kvm_attach on a fake VM (tests/common/tu_fake_vm.h) that keeps KVM's slot and dirty
 *          log rules; a guest write is a bit the test sets in the slot's log
 *   kvm    the kvm backend on real KVM: its probe vCPU makes the writes (exit 77, skipped,
 *          without /dev/kvm; the nested rig, tests/kvmrig, runs it)
 * Every case keeps a model: the pages written since tracking started or since the sync that
 * last covered them. A sync of a range (collect, then take from the set) must answer exactly
 * the model's pages in it, each once, whatever happened to the slots in between.
 *
 * Guest layout (P = 4 KiB pages), host memory behind all of it:
 *   A  [0, 256P)                 rw   a 64-page multiple at 0
 *   B  [256P, 356P)              rw   right after A; 100 pages: the log's last word is partial
 *   C  [512P + 5P, 817P)         rw   300 pages, not 64-page aligned in guest addresses
 *   R  [1024P, 1040P)            ro   never logged
 *   N  [2048P, 2112P)            rw   mapped by the cases that map while tracking */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dirty_set.h"
#include "mb_access.h"
#include "mb_backing.h"
#include "mb_partition.h"
#include "test_util.h"
#include "tu_fake_vm.h"
#include "va_reserve.h"

#define PG 4096ull
#define PAGES 4096
#define MAX_ADDR (PAGES * PG)

typedef struct piece {
  uint64_t first, n; /* pages */
  bool writable;
} piece;

static const piece A = {0, 256, true}, B = {256, 100, true}, C = {517, 300, true},
                   R = {1024, 16, false}, N = {2048, 64, true};

typedef enum { SOFT, FAKE, KVM } backend;
static backend which;

typedef struct fx {
  const mb_partition_ops *ops;
  void *inst;
  mb_va va;
  mb_object *obj;
  tu_fake_vm vm;
  mb_kvm_attach_config cfg;
  mb_dirty_set *set;
  bool tracking;
  bool pending[PAGES]; /* the model: written, not yet answered */
} fx;

/* ---- fixture ------------------------------------------------------------------------------ */

static int map(fx *f, piece p) {
  return f->ops->map(f->inst, p.first * PG, p.n * PG, f->va.base + p.first * PG, p.writable);
}

static int unmap(fx *f, piece p) {
  return f->ops->unmap(f->inst, p.first * PG, p.n * PG);
}

static fx *fx_new(void) {
  fx *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(mb_access_reinstall(), 0);
  assert_int_equal(mb_va_reserve(&f->va, MAX_ADDR), 0);
  assert_int_equal(mb_object_create(MB_OBJECT_MEMFD, MAX_ADDR, "dirty", &f->obj), 0);
  assert_int_equal(mb_object_map_into(f->obj, &f->va, 0, MAX_ADDR, 0, true), 0);
  const void *config = NULL;
  f->ops = which == SOFT ? &mb_partition_soft : which == KVM ? &mb_partition_kvm
                                                             : &mb_partition_kvm_attach;
  if (which == FAKE) {
    tu_fake_init(&f->vm);
    (void)tu_fake_params(&f->vm, &f->cfg, 1, 16);
    config = &f->cfg;
  }
  assert_int_equal(f->ops->create(MAX_ADDR, config, &f->inst), 0);
  assert_int_equal(mb_dirty_set_create(MAX_ADDR, &f->set), 0);
  const piece all[] = {A, B, C, R};
  for (size_t i = 0; i < 4; i++)
    assert_int_equal(map(f, all[i]), 0);
  return f;
}

static void fx_free(fx *f) {
  f->ops->destroy(f->inst);
  if (which == FAKE) {
    assert_int_equal(f->vm.violations, 0);
    tu_fake_fini(&f->vm);
  }
  mb_dirty_set_destroy(f->set);
  mb_va_release(&f->va);
  mb_object_unref(f->obj);
  free(f);
}

static void start(fx *f) {
  assert_int_equal(f->ops->dirty_start(f->inst, f->set), 0);
  f->tracking = true;
}

static void stop(fx *f) {
  f->ops->dirty_stop(f->inst);
  mb_dirty_set_clear(f->set); /* tracking off forgets */
  memset(f->pending, 0, sizeof f->pending);
  f->tracking = false;
}

/* A guest write of page p (inside a mapped piece). */
static void guest_write(fx *f, uint64_t p, bool writable) {
  uint64_t v = p * 7 + 1;
  if (which == FAKE)
    assert_int_equal(tu_fake_dirty(&f->vm, p * PG), f->tracking && writable);
  else
    assert_int_equal(f->ops->access(f->inst, p * PG + 8, &v, sizeof v, true),
                     writable ? 0 : MB_E_MMIO);
  if (f->tracking && writable)
    f->pending[p] = true;
}

/* A sync of pages [first, end): collect, then take as ranges (a few at a time), which must be
 * exactly the model's pages there; the model forgets them. Returns how many were answered. */
static int sync_pages(fx *f, uint64_t first, uint64_t end) {
  assert_int_equal(f->ops->dirty_collect(f->inst, first * PG, (end - first) * PG), 0);
  bool answered[PAGES] = {0};
  int count = 0;
  mb_range r[4];
  uint64_t gpa = first * PG, next;
  while (gpa < end * PG) {
    int64_t n = mb_dirty_set_take_ranges(f->set, gpa, end * PG - gpa, r, 4, &next);
    assert_true(n >= 0);
    for (int64_t i = 0; i < n; i++)
      for (uint64_t p = r[i].start / PG; p < r[i].end / PG; p++)
        answered[p] = true, count++;
    gpa = next;
  }
  for (uint64_t p = first; p < end; p++) {
    if (answered[p] != f->pending[p])
      fail_msg("page %llu: answered %d, written %d", (unsigned long long)p, answered[p],
               f->pending[p]);
    f->pending[p] = false;
  }
  return count;
}

static int sync_all(fx *f) {
  return sync_pages(f, 0, PAGES);
}

/* ---- the rules, on every backend ------------------------------------------------------- */

/* Slots present at the start; pages written in several slots; syncs of part of a slot, on
 * and around the log's 64-page words, across slots, and of everything. */
static void test_collect_ranges(void **unused) {
  (void)unused;
  fx *f = fx_new();
  guest_write(f, 3, true); /* before the start: not dirty */
  start(f);
  const uint64_t pages[] = {0, 63, 64, 127, 128, 200, 255, 256, 300, 355, 517, 580, 581, 816};
  for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++)
    guest_write(f, pages[i], true);
  guest_write(f, 1030, false); /* read-only: never dirty */
  assert_int_equal(sync_pages(f, 64, 65), 1);   /* one page of a log word */
  assert_int_equal(sync_pages(f, 62, 66), 1);   /* 63: the word before, 64 went */
  assert_int_equal(sync_pages(f, 128, 129), 1); /* the first page of a word */
  assert_int_equal(sync_pages(f, 250, 260), 2); /* across A and B */
  assert_int_equal(sync_pages(f, 581, 900), 2); /* C's 64-page words are not the set's */
  assert_int_equal(sync_pages(f, 0, 10), 1);
  assert_int_equal(sync_all(f), 6);
  assert_int_equal(sync_all(f), 0);
  guest_write(f, 200, true); /* written again after its sync: dirty again */
  guest_write(f, 201, true);
  guest_write(f, 355, true); /* B's last page: the partial word */
  assert_int_equal(sync_all(f), 3);
  fx_free(f);
}

/* A slot deleted while tracking (an unmap, an access change) keeps its dirty pages. */
static void test_unmap_keeps_pages(void **unused) {
  (void)unused;
  fx *f = fx_new();
  start(f);
  guest_write(f, 256, true);
  guest_write(f, 300, true);
  guest_write(f, 600, true);
  guest_write(f, 10, true);
  assert_int_equal(unmap(f, B), 0);
  if (which == FAKE)
    assert_false(tu_fake_logging(&f->vm, 256 * PG));
  assert_int_equal(sync_pages(f, 256, 356), 2); /* gone from the partition, still dirty */
  /* an access change: the slot is deleted and added read-only */
  assert_int_equal(unmap(f, C), 0);
  piece c_ro = C;
  c_ro.writable = false;
  assert_int_equal(map(f, c_ro), 0);
  guest_write(f, 601, false);
  assert_int_equal(sync_all(f), 2); /* 600 and 10 */
  /* and back: read-write again, logged from the start */
  assert_int_equal(unmap(f, c_ro), 0);
  assert_int_equal(map(f, C), 0);
  guest_write(f, 602, true);
  assert_int_equal(sync_all(f), 1);
  fx_free(f);
}

/* A slot added while tracking logs from its creation; a read-only one is never logged. */
static void test_map_while_tracking(void **unused) {
  (void)unused;
  fx *f = fx_new();
  start(f);
  assert_int_equal(map(f, N), 0);
  piece ro = {3000, 8, false};
  assert_int_equal(map(f, ro), 0);
  if (which == FAKE) {
    assert_true(tu_fake_logging(&f->vm, N.first * PG));
    assert_false(tu_fake_logging(&f->vm, ro.first * PG));
  }
  guest_write(f, N.first, true);
  guest_write(f, N.first + 63, true);
  guest_write(f, ro.first, false);
  assert_int_equal(sync_pages(f, N.first, N.first + N.n), 2);
  guest_write(f, N.first + 1, true);
  assert_int_equal(unmap(f, N), 0);
  assert_int_equal(sync_all(f), 1);
  fx_free(f);
}

/* Stop turns logging off and forgets; a start again begins from nothing. */
static void test_stop_and_restart(void **unused) {
  (void)unused;
  fx *f = fx_new();
  assert_int_equal(f->ops->dirty_collect(f->inst, 0, MAX_ADDR), MB_E_INVALID); /* off */
  start(f);
  assert_int_equal(f->ops->dirty_start(f->inst, f->set), MB_E_INVALID); /* on already */
  assert_int_equal(f->ops->dirty_collect(f->inst, 1, PG), MB_E_INVALID);
  assert_int_equal(f->ops->dirty_collect(f->inst, MAX_ADDR - PG, 2 * PG), MB_E_INVALID);
  assert_int_equal(f->ops->dirty_collect(f->inst, 0, 0), 0);
  guest_write(f, 5, true);
  stop(f);
  if (which == FAKE)
    for (uint64_t p = 0; p < PAGES; p += 64)
      assert_false(tu_fake_logging(&f->vm, p * PG));
  guest_write(f, 6, true); /* not tracked */
  start(f);
  guest_write(f, 7, true);
  assert_int_equal(sync_all(f), 1);
  stop(f);
  fx_free(f);
}

/* Random writes, syncs of random ranges, unmaps and maps of B and N, against the model. */
static void test_random(void **unused) {
  (void)unused;
  fx *f = fx_new();
  start(f);
  uint64_t rng = 0x5eed;
  bool b_in = true, n_in = false;
  int steps = which == KVM ? 400 : 4000, answered = 0;
  for (int i = 0; i < steps; i++) {
    uint64_t r = tu_xorshift(&rng);
    if (r % 8 < 5) { /* a write in a mapped piece */
      const piece *all[] = {&A, &B, &C, &R, &N};
      const piece *p = all[(r >> 8) % 5];
      if ((p == &B && !b_in) || (p == &N && !n_in))
        continue;
      guest_write(f, p->first + (r >> 16) % p->n, p->writable);
    } else if (r % 8 < 7) {
      uint64_t first = (r >> 8) % PAGES, end = first + 1 + (r >> 24) % (PAGES - first);
      answered += sync_pages(f, first, end);
    } else if ((r >> 8) % 2) {
      assert_int_equal(b_in ? unmap(f, B) : map(f, B), 0);
      b_in = !b_in;
    } else {
      assert_int_equal(n_in ? unmap(f, N) : map(f, N), 0);
      n_in = !n_in;
    }
  }
  answered += sync_all(f);
  assert_true(answered > steps / 10);
  fx_free(f);
}

/* A write that fails midway has marked what it wrote: the pages before the failing byte. */
static void test_partial_write(void **unused) {
  (void)unused;
  if (which == KVM)
    skip(); /* the kernel logs the vCPU's writes itself */
  fx *f = fx_new();
  start(f);
  uint8_t buf[3 * PG] = {0};
  /* from the middle of B's second-last page past its end: nothing is mapped after B */
  uint64_t gpa = 354 * PG + 100;
  assert_int_equal(f->ops->access(f->inst, gpa, buf, sizeof buf, true), MB_E_MMIO);
  f->pending[354] = f->pending[355] = true;
  assert_int_equal(sync_all(f), 2);
  /* a hole in the host memory: a fault at C's page 600, after 599 was written */
  assert_int_equal(mb_va_unmap(&f->va, 600 * PG, PG), 0);
  assert_int_equal(f->ops->access(f->inst, 599 * PG, buf, 2 * PG, true), MB_E_FAULT);
  f->pending[599] = true;
  assert_int_equal(sync_all(f), 1);
  fx_free(f);
}

/* ---- kvm_attach on the fake VM only ------------------------------------------------------ */

/* A collect asks the kernel only about logging slots in the range, and clears nothing when
 * nothing was logged. */
static void test_fake_calls(void **unused) {
  (void)unused;
  fx *f = fx_new();
  start(f);
  assert_int_equal(f->vm.enables, 1);
  assert_true(f->vm.manual);
  int gets = f->vm.gets, clears = f->vm.clears;
  assert_int_equal(sync_pages(f, R.first, R.first + R.n), 0); /* read-only: not logged */
  assert_int_equal(sync_pages(f, 900, 1000), 0);              /* no slot */
  assert_int_equal(f->vm.gets, gets);
  assert_int_equal(sync_pages(f, 0, 10), 0); /* logged, clean: a GET and no CLEAR */
  assert_int_equal(f->vm.gets, gets + 1);
  assert_int_equal(f->vm.clears, clears);
  guest_write(f, 20, true);
  assert_int_equal(sync_pages(f, 0, 30), 1);
  assert_int_equal(f->vm.clears, clears + 1);
  stop(f);
  start(f);
  assert_int_equal(f->vm.enables, 1); /* once */
  fx_free(f);
}

/* Writes through the partition (device DMA) go into the set at once. */
static void test_fake_dma(void **unused) {
  (void)unused;
  fx *f = fx_new();
  start(f);
  uint64_t v = 42;
  assert_int_equal(f->ops->access(f->inst, 700 * PG, &v, sizeof v, true), 0);
  assert_int_equal(f->ops->access(f->inst, 701 * PG, &v, sizeof v, false), 0); /* a read */
  mb_range r[2];
  uint64_t next;
  assert_int_equal(mb_dirty_set_take_ranges(f->set, 0, MAX_ADDR, r, 2, &next), 1);
  assert_int_equal(r[0].start, 700 * PG);
  assert_int_equal(r[0].end, 701 * PG);
  fx_free(f);
}

/* A kernel without the manual protocol: each GET clears the whole slot's log, so a collect
 * moves all of it into the set, and a sync of part of the slot still answers only its part. */
static void test_fake_legacy(void **unused) {
  (void)unused;
  fx *f = fx_new();
  f->vm.no_manual = true;
  start(f);
  assert_false(f->vm.manual);
  guest_write(f, 10, true);
  guest_write(f, 200, true);
  guest_write(f, 300, true);
  assert_int_equal(sync_pages(f, 0, 64), 1);
  assert_int_equal(f->vm.clears, 0);
  assert_int_equal(unmap(f, B), 0);
  assert_int_equal(sync_all(f), 2);
  fx_free(f);
}

/* ---- failures: every kernel call of each operation, made to fail in turn -------------- */

typedef struct op {
  const char *name;
  bool tracking; /* tracking on before it */
  int (*run)(fx *f);
} op;

static int op_start(fx *f) {
  int rc = f->ops->dirty_start(f->inst, f->set);
  f->tracking = rc == 0;
  return rc;
}

static int op_collect(fx *f) {
  return f->ops->dirty_collect(f->inst, 100 * PG, 500 * PG); /* A's end, B, C's start */
}

static int op_unmap(fx *f) {
  return unmap(f, C);
}

static int op_map(fx *f) {
  return map(f, N);
}

static int op_stop(fx *f) {
  f->ops->dirty_stop(f->inst);
  mb_dirty_set_clear(f->set);
  memset(f->pending, 0, sizeof f->pending);
  f->tracking = false;
  return 0;
}

/* An access change as the partition mapper makes it: delete, add, or add back on failure. */
static int op_change(fx *f) {
  int rc = unmap(f, C);
  if (rc != 0)
    return rc;
  piece ro = C;
  ro.writable = false;
  if ((rc = map(f, ro)) != 0)
    assert_int_equal(map(f, C), 0);
  return rc;
}

/* The fake VM's slots are exactly the partition's pieces, each logging as tracking says. */
static void check_slots(fx *f) {
  mb_part_range r[8];
  size_t n = f->ops->ranges(f->inst, r, 8);
  bool inside;
  assert_int_equal(tu_fake_used(&f->vm, 1, 16, &inside), (int)n + 1); /* + the VMM's slot 0 */
  struct kvm_userspace_memory_region s[TU_FAKE_SLOTS];
  tu_fake_slots(&f->vm, s);
  for (size_t i = 0; i < n; i++) {
    int found = 0;
    for (int k = 1; k < TU_FAKE_SLOTS; k++) {
      if (s[k].memory_size != r[i].size || s[k].guest_phys_addr != r[i].gpa)
        continue;
      found++;
      assert_int_equal(!(s[k].flags & KVM_MEM_READONLY), r[i].writable);
      bool logs = (s[k].flags & KVM_MEM_LOG_DIRTY_PAGES) != 0;
      if (logs != (f->tracking && r[i].writable))
        fail_msg("slot at %#llx logs %d, tracking %d", (unsigned long long)r[i].gpa, logs,
                 f->tracking);
    }
    assert_int_equal(found, 1);
  }
}

/* Whether page p is in a writable piece of the partition now. */
static bool writable_now(fx *f, uint64_t p) {
  mb_part_range r[8];
  size_t n = f->ops->ranges(f->inst, r, 8);
  for (size_t i = 0; i < n && i < 8; i++)
    if (p * PG >= r[i].gpa && p * PG < r[i].gpa + r[i].size)
      return r[i].writable;
  return false;
}

/* Writes in A, B and C (when it is there) around the collect's edges. */
static void write_some(fx *f) {
  const uint64_t pages[] = {50, 99, 100, 255, 256, 355, 517, 599, 600, 700};
  for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++)
    if (writable_now(f, pages[i]))
      guest_write(f, pages[i], true);
}

/* After the failure: the state is whole, and nothing written is lost or answered twice. */
static void check_after(fx *f, const op *o, int rc) {
  f->vm.fail_at = 0;
  if (o->run == op_stop && rc == 0) { /* a stop that could not clear a flag: start afresh */
    start(f);
    assert_int_equal(sync_all(f), 0); /* what the slot logged while off is not dirty */
  }
  if (!f->tracking)
    start(f);
  check_slots(f);
  write_some(f);
  sync_all(f);
}

static void run_failures(const op *o) {
  for (int n = 1;; n++) {
    fx *f = fx_new();
    if (o->tracking) {
      start(f);
      write_some(f);
    }
    f->vm.fail_at = f->vm.calls + n, f->vm.fail_err = -EIO;
    int rc = o->run(f);
    bool reached = f->vm.calls >= f->vm.fail_at;
    if (reached && o->run != op_stop)
      assert_int_equal(rc, -EIO);
    if (!reached)
      assert_int_equal(rc, 0);
    check_after(f, o, rc);
    fx_free(f);
    if (!reached) {
      print_message("%s: %d calls, each failed once\n", o->name, n - 1);
      return;
    }
  }
}

static void test_fake_failures(void **unused) {
  (void)unused;
  static const op ops[] = {
      {"start", false, op_start}, {"collect", true, op_collect}, {"unmap", true, op_unmap},
      {"map", true, op_map},      {"stop", true, op_stop},       {"change", true, op_change},
  };
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
    run_failures(&ops[i]);
}

/* ---- main ------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
  const char *name = argc > 1 ? argv[1] : "soft";
  if (strcmp(name, "soft") == 0)
    which = SOFT;
  else if (strcmp(name, "fake") == 0)
    which = FAKE;
  else if (strcmp(name, "kvm") == 0)
    which = KVM;
  else {
    fprintf(stderr, "usage: %s soft|fake|kvm\n", argv[0]);
    return 2;
  }
  if (which == KVM && !tu_kvm_usable()) {
    printf("kvm: /dev/kvm cannot be used here: skipped (the nested rig runs it)\n");
    return 77;
  }
  const struct CMUnitTest common[] = {
      cmocka_unit_test(test_collect_ranges),   cmocka_unit_test(test_unmap_keeps_pages),
      cmocka_unit_test(test_map_while_tracking), cmocka_unit_test(test_stop_and_restart),
      cmocka_unit_test(test_random),           cmocka_unit_test(test_partial_write),
  };
  const struct CMUnitTest fake_only[] = {
      cmocka_unit_test(test_fake_calls),
      cmocka_unit_test(test_fake_dma),
      cmocka_unit_test(test_fake_legacy),
      cmocka_unit_test(test_fake_failures),
  };
  int rc = cmocka_run_group_tests_name(name, common, NULL, NULL);
  if (which == FAKE)
    rc |= cmocka_run_group_tests_name("fake VM", fake_only, NULL, NULL);
  return rc;
}
