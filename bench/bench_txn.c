/* bench_txn.c: transactions (spec/bench.md, version 2):
 *
 *   txn.pam                13 shadow-RAM windows over a ROM mapped in one transaction, then
 *                          unmapped in another, with the manager's eager VA mapper and a soft
 *                          partition
 *   txn.pam.separate       its floor: the same 26 region operations, one by one
 *   txn.pam.kvm            txn.pam with a KVM partition (skipped without /dev/kvm)
 *   txn.pam.separate.kvm   its floor
 *
 * What a PC's chipset does when the firmware flips its PAM registers: the BIOS area
 * [0xc0000, 0x100000) is a 256 KiB ROM (a device region, priority 0, mapped read-only, one
 * mapping of a ROM memfd) under 13 shadow-RAM windows of 16 KiB each from 0xc0000 on (RAM
 * regions, priority 255, each holding one mapping of a RAM memfd at its own offset from the
 * window's start, so adjacent windows show adjacent bytes of the memfd). All are added up
 * front; the windows start unmapped (the ROM shows). The manager's overlap policy is `any`, as
 * QEMU's memory regions overlap: under `nested` a region may only sit over lower-priority
 * regions it contains, and a window lies inside the ROM (the ROM is then visible in pieces).
 *
 * One operation (txn.pam): begin; map every window rw; commit; begin; unmap every window;
 * commit. The separate floor issues the 26 maps and unmaps alone, each an operation that
 * brings every consumer up to date. Every step is issued from the previous one's completion on
 * the home loop, where the manager's actors live, timed from the first call to the last
 * completion (home.h, as map.soft). Both sides run at the same time, interleaved, each with a
 * manager of its own on the same loop.
 *
 * Nothing is populated: the VA mapper's work is mmaps over the ROM's VA and back; what the
 * transaction can save is the per-operation round trips through the actors and the VA and
 * partition changes that adjacent windows allow to merge.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "areas.h"
#include "harness.h"
#include "home.h"
#include "membacking.h"

#define KIB ((uint64_t)1 << 10)
#define MAX_ADDR ((uint64_t)4 << 30)

enum { PAM_WINDOWS = 13 };
#define ROM_AT ((uint64_t)0xc0000)
#define ROM_SIZE (256 * KIB)
#define WINDOW_SIZE (16 * KIB)

typedef struct pam_bench {
  bool have_home;
  bool txn;            /* in transactions (txn.pam*), or one by one (txn.pam.separate*) */
  mb_mm *mm;
  mb_partition *part;
  mb_object *rom, *ram; /* ROM_SIZE each */
  mb_region_id rom_id;
  mb_region_id win[PAM_WINDOWS];
} pam_bench;

/* ---- the guest ---------------------------------------------------------------------------- */

static void pam_free(pam_bench *st) {
  if (st->mm)
    mb_mm_destroy(st->mm); /* inline: its loop is this thread's */
  mb_object_unref(st->rom);
  mb_object_unref(st->ram);
  if (st->have_home)
    mb_bench_home_put();
  free(st);
}

static void pam_teardown(void *state) { pam_free(state); }

/* The manager, on the home loop, with its partition. */
static int pam_manager(mb_bench *b, pam_bench *st, const mb_partition_ops *ops) {
  int rc = mb_bench_home_get(b);
  if (rc != 0)
    return rc;
  st->have_home = true;
  mb_mm_config cfg = {.max_addr = MAX_ADDR, .overlap = MB_OVERLAP_ANY,
                      .loop = mb_bench_home_loop()};
  if ((rc = mb_mm_create(&cfg, &st->mm)) != 0) {
    st->mm = NULL;
    return mb_bench_fail(b, "mb_mm_create: %s", membacking_strerror(rc));
  }
  return mb_bench_partition_add(b, st->mm, ops, NULL, &st->part);
}

/* The ROM, mapped read-only. */
static int pam_rom(mb_bench *b, pam_bench *st) {
  mb_region_params rp = {.name = "rom", .gpa = ROM_AT, .size = ROM_SIZE, .priority = 0,
                         .device = true};
  int rc = mb_bench_region_add(st->mm, &rp, &st->rom_id);
  mb_mapping_params mp = {.region = st->rom_id, .offset = 0, .size = ROM_SIZE, .obj = st->rom,
                          .obj_offset = 0, .writable = false};
  if (rc == 0)
    rc = mb_bench_mapping_add(st->mm, &mp);
  if (rc == 0)
    rc = mb_bench_region_map(st->mm, st->rom_id, false);
  return rc ? mb_bench_fail(b, "ROM region: %s", membacking_strerror(rc)) : 0;
}

/* The windows with their mappings, unmapped. */
static int pam_windows(mb_bench *b, pam_bench *st) {
  int rc = 0;
  for (int i = 0; i < PAM_WINDOWS && rc == 0; i++) {
    char name[16];
    snprintf(name, sizeof name, "pam%d", i);
    mb_region_params rp = {.name = name, .gpa = ROM_AT + i * WINDOW_SIZE, .size = WINDOW_SIZE,
                           .priority = 255, .device = false};
    rc = mb_bench_region_add(st->mm, &rp, &st->win[i]);
  }
  mb_bench_done d = {0, 0, 0};
  for (int i = 0; i < PAM_WINDOWS && rc == 0; i++, d.pending++) {
    mb_mapping_params mp = {.region = st->win[i], .offset = 0, .size = WINDOW_SIZE,
                            .obj = st->ram, .obj_offset = i * WINDOW_SIZE, .writable = true};
    mb_mapping_add(st->mm, &mp, mb_bench_on_done, &d); /* they complete in the order issued */
  }
  if (rc == 0)
    rc = mb_bench_pump(&d);
  return rc ? mb_bench_fail(b, "shadow RAM windows: %s", membacking_strerror(rc)) : 0;
}

/* ---- the measured operation ----------------------------------------------------------------
 *
 * Its steps: in transactions, each half (map, then unmap) is begin, 13 region operations,
 * commit; one by one, each half is the 13 region operations. */

enum { TXN_HALF = PAM_WINDOWS + 2 };

/* Step `step` as (map or unmap, window), or a begin (-1) or commit (PAM_WINDOWS). */
static void pam_decode(const pam_bench *st, uint32_t step, bool *map, int *window) {
  uint32_t half = st->txn ? TXN_HALF : PAM_WINDOWS;
  *map = step < half;
  *window = (int)(step % half) - (st->txn ? 1 : 0);
}

static void pam_step(void *state, uint32_t step, mb_done_fn done, void *ctx) {
  pam_bench *st = state;
  bool map;
  int w;
  pam_decode(st, step, &map, &w);
  if (w < 0)
    mb_txn_begin(st->mm, done, ctx);
  else if (w == PAM_WINDOWS)
    mb_txn_commit(st->mm, done, ctx);
  else if (map)
    mb_region_map(st->mm, st->win[w], true, done, ctx);
  else
    mb_region_unmap(st->mm, st->win[w], done, ctx);
}

static const char *pam_step_name(const void *state, uint32_t step) {
  bool map;
  int w;
  pam_decode(state, step, &map, &w);
  if (w < 0)
    return map ? "txn begin (before the maps)" : "txn begin (before the unmaps)";
  if (w == PAM_WINDOWS)
    return map ? "txn commit (of the maps)" : "txn commit (of the unmaps)";
  return map ? "region map" : "region unmap";
}

static int pam_run(mb_bench *b, void *state, uint32_t n) {
  pam_bench *st = state;
  mb_bench_op op = {.steps = 2 * (st->txn ? TXN_HALF : PAM_WINDOWS), .issue = pam_step,
                    .name = pam_step_name};
  return mb_bench_chain(b, &op, st, n);
}

/* ---- set-up ---------------------------------------------------------------------------------
 *
 * Once, before the warm-up, one operation runs untimed, each half waited for and checked
 * through the VA mapper and the partition: the windows are writable RAM after the first half
 * and the read-only ROM after the second. A row never measures an operation that does not do
 * its work. */

/* Steps [first, first + count) of one operation, issued at once (they complete in order). */
static int pam_steps(pam_bench *st, uint32_t first, uint32_t count) {
  mb_bench_done d = {0, 0, 0};
  for (uint32_t s = first; s < first + count; s++) {
    d.pending++;
    pam_step(st, s, mb_bench_on_done, &d);
  }
  return mb_bench_pump(&d);
}

static bool va_writable(const mb_range_list *l, uint64_t gpa) {
  for (size_t i = 0; i < l->count; i++)
    if (gpa >= l->ranges[i].gpa && gpa - l->ranges[i].gpa < l->ranges[i].size)
      return l->ranges[i].writable;
  return false;
}

/* Are the windows shadow RAM (writable), or the ROM (read-only), for both consumers? */
static int pam_expect(mb_bench *b, pam_bench *st, bool shadow) {
  mb_bench_done d = {1, 0, 0};
  mb_mapper_ranges(mb_mm_primary_mapper(st->mm), mb_bench_on_done, &d);
  int rc = mb_bench_pump(&d);
  mb_range_list *l = (mb_range_list *)(uintptr_t)d.value;
  if (rc != 0 || l == NULL)
    return mb_bench_fail(b, "mapper ranges: %s", membacking_strerror(rc ? rc : MB_ENOMEM));
  for (int i = 0; i < PAM_WINDOWS && rc == 0; i++) {
    uint64_t gpa = ROM_AT + i * WINDOW_SIZE;
    bool va = va_writable(l, gpa);
    bool part = mb_partition_classify(st->part, gpa, 8, true) == MB_GPA_RAM;
    if (va != shadow || part != shadow)
      rc = mb_bench_fail(b, "check: window %d is %s in the VA mapper, %s in the partition "
                         "(expected %s)", i, va ? "writable" : "not writable",
                         part ? "writable RAM" : "not writable RAM",
                         shadow ? "shadow RAM" : "the ROM");
  }
  free(l);
  return rc;
}

static int pam_check(mb_bench *b, pam_bench *st) {
  uint32_t half = st->txn ? TXN_HALF : PAM_WINDOWS;
  int rc = pam_expect(b, st, false);
  if (rc == 0 && (rc = pam_steps(st, 0, half)) != 0)
    rc = mb_bench_fail(b, "check: the maps: %s", membacking_strerror(rc));
  if (rc == 0)
    rc = pam_expect(b, st, true);
  if (rc == 0 && (rc = pam_steps(st, half, half)) != 0)
    rc = mb_bench_fail(b, "check: the unmaps: %s", membacking_strerror(rc));
  return rc == 0 ? pam_expect(b, st, false) : rc;
}

static int pam_setup(mb_bench *b, void **state, bool txn, const mb_partition_ops *ops) {
  pam_bench *st = calloc(1, sizeof *st);
  if (st == NULL)
    return -ENOMEM;
  st->txn = txn;
  int rc = pam_manager(b, st, ops);
  if (rc == 0 && ((rc = mb_object_create(MB_OBJECT_MEMFD, ROM_SIZE, "bench-rom", &st->rom)) != 0 ||
                  (rc = mb_object_create(MB_OBJECT_MEMFD, ROM_SIZE, "bench-ram", &st->ram)) != 0))
    rc = mb_bench_fail(b, "object: %s", membacking_strerror(rc));
  if (rc == 0)
    rc = pam_rom(b, st);
  if (rc == 0)
    rc = pam_windows(b, st);
  if (rc == 0)
    rc = pam_check(b, st);
  if (rc != 0) {
    pam_free(st);
    return rc;
  }
  *state = st;
  return 0;
}

/* ---- registration --------------------------------------------------------------------------- */

static int txn_pam_setup(mb_bench *b, void **s) {
  return pam_setup(b, s, true, &mb_partition_soft);
}
static int separate_setup(mb_bench *b, void **s) {
  return pam_setup(b, s, false, &mb_partition_soft);
}
static int txn_pam_kvm_setup(mb_bench *b, void **s) {
  return pam_setup(b, s, true, &mb_partition_kvm);
}
static int separate_kvm_setup(mb_bench *b, void **s) {
  return pam_setup(b, s, false, &mb_partition_kvm);
}

#define PAM_BENCH(NAME, BASE, SETUP, DOC)                                                      \
  {.name = NAME, .unit = MB_BENCH_NS, .baseline = BASE, .setup = SETUP, .run = pam_run,       \
   .teardown = pam_teardown, .flags = MB_BENCH_SELF_TIMED | MB_BENCH_CPU, .doc = DOC}

static const mb_bench_def txn_benches[] = {
    PAM_BENCH("txn.pam", "txn.pam.separate", txn_pam_setup,
              "13 16 KiB shadow-RAM windows over a ROM mapped in one transaction, unmapped in "
              "another; eager VA mapper, soft partition, one loop"),
    PAM_BENCH("txn.pam.separate", NULL, separate_setup,
              "txn.pam's 13 region maps and 13 unmaps, one by one, without a transaction"),
    PAM_BENCH("txn.pam.kvm", "txn.pam.separate.kvm", txn_pam_kvm_setup,
              "txn.pam with a KVM partition"),
    PAM_BENCH("txn.pam.separate.kvm", NULL, separate_kvm_setup,
              "txn.pam.separate with a KVM partition"),
};

void mb_bench_area_bench_txn(void) { MB_BENCH_REGISTER_ALL(txn_benches); }
