/* bench_protect.c: VTL protections (spec/bench.md, version 2):
 *
 *   protect.kvm   with a VTL-0 KVM partition: `protect 0 GPA 4K ro` of one page inside a
 *                 mapped 1 GiB RAM region, then `protect 0 GPA 4K rw` (skipped without
 *                 /dev/kvm). Its floor, syscalls.slot_split (baseline_slot_split.c): the KVM
 *                 slot deletes and adds that realise the same two changes, made directly.
 *
 * A manager on the home loop (home.h) with VTLs 0 and 2 (so VTL 0 can be protected) and a
 * kvm partition at VTL 0 (a KVM VM of its own with a probe vCPU); a 1 GiB RAM region of VTL 0
 * at GPA 0 holding one mapping of a 1 GiB memfd, mapped read-write: one memory slot. No VA
 * mapper of the benchmark's own: the manager's primary mappers (one per VTL) do not enforce
 * protections, so the only consumer that changes is the partition.
 *
 * One operation, timed from its first call to its last completion (mb_bench_chain, as
 * map.kvm): mb_protect(VTL 0, PROTECT_GPA, 4 KiB, ro), issued from the home loop, then from
 * its completion mb_protect(..., rw). What the library does for them (backends/part_view.c
 * on backends/kvm_attach.c): the ro change deletes the 1 GiB slot and adds three (the half
 * below the page rw, the page with KVM_MEM_READONLY, the rest rw); the rw change deletes
 * those three and adds the 1 GiB slot back. 8 KVM_SET_USER_MEMORY_REGION calls, which the
 * floor makes alone, in the same order.
 *
 * The set-up runs one operation untimed and checks it: between the two changes the
 * partition's slots (mb_partition_ranges: the backend's own pieces) are exactly those three,
 * the page reads what was written before through the probe vCPU and a write to it answers
 * MB_E_PROTECTED, while the page above it takes a write; afterwards one writable range again
 * and the page takes a write. So a row never measures a protect that changed nothing.
 */
#include <errno.h>
#include <stdlib.h>

#include "areas.h"
#include "harness.h"
#include "home.h"
#include "membacking.h"
#include "protect_page.h"

#define VTLS ((uint8_t)(1u << 0 | 1u << 2)) /* VTL 0, protected by VTL 2 */

typedef struct protect_bench {
  bool have_home;
  mb_mm *mm;
  mb_partition *part;
  mb_object *ram;
} protect_bench;

static void protect_free(protect_bench *st) {
  if (st->mm)
    mb_mm_destroy(st->mm); /* inline: its loop is this thread's */
  mb_object_unref(st->ram);
  if (st->have_home)
    mb_bench_home_put();
  free(st);
}

static void protect_teardown(void *state) { protect_free(state); }

/* The manager on the home loop, its kvm partition (or a skip), the RAM mapped rw. */
static int protect_guest(mb_bench *b, protect_bench *st) {
  int rc = mb_bench_home_get(b);
  if (rc != 0)
    return rc;
  st->have_home = true;
  mb_mm_config cfg = {.max_addr = PROTECT_MAX_ADDR, .loop = mb_bench_home_loop(), .vtls = VTLS};
  if ((rc = mb_mm_create(&cfg, &st->mm)) != 0) {
    st->mm = NULL;
    return mb_bench_fail(b, "mb_mm_create: %s", membacking_strerror(rc));
  }
  if ((rc = mb_bench_partition_add(b, st->mm, &mb_partition_kvm, NULL, &st->part)) != 0)
    return rc;
  if ((rc = mb_object_create(MB_OBJECT_MEMFD, PROTECT_RAM_SIZE, "bench-protect", &st->ram)) != 0)
    return mb_bench_fail(b, "object: %s", membacking_strerror(rc));
  mb_region_params rp = {.name = "ram", .gpa = 0, .size = PROTECT_RAM_SIZE, .vtl = 0};
  mb_region_id id;
  rc = mb_bench_region_add(st->mm, &rp, &id);
  mb_mapping_params mp = {.region = id, .offset = 0, .size = PROTECT_RAM_SIZE, .obj = st->ram,
                          .obj_offset = 0, .writable = true};
  if (rc == 0)
    rc = mb_bench_mapping_add(st->mm, &mp);
  if (rc == 0)
    rc = mb_bench_region_map(st->mm, id, true);
  return rc ? mb_bench_fail(b, "RAM region: %s", membacking_strerror(rc)) : 0;
}

/* ---- the operation ------------------------------------------------------------------------ */

static void protect_issue(void *state, uint32_t step, mb_done_fn done, void *ctx) {
  protect_bench *st = state;
  mb_protect(st->mm, 0, PROTECT_GPA, PROTECT_PAGE_SIZE, step == 0 ? MB_PROT_RO : MB_PROT_RW,
             done, ctx);
}

static const char *protect_name(const void *state, uint32_t step) {
  (void)state;
  return step == 0 ? "protect ro" : "protect rw";
}

static const mb_bench_op protect_op = {.steps = 2, .issue = protect_issue, .name = protect_name};

static int protect_run(mb_bench *b, void *state, uint32_t n) {
  return mb_bench_chain(b, &protect_op, state, n);
}

/* ---- set-up ------------------------------------------------------------------------------- */

/* One step of the operation alone, waited for. */
static int step_once(mb_bench *b, protect_bench *st, uint32_t step) {
  mb_bench_done d = {1, 0, 0};
  protect_issue(st, step, mb_bench_on_done, &d);
  int rc = mb_bench_pump(&d);
  return rc ? mb_bench_fail(b, "check: %s: %s", protect_name(st, step), membacking_strerror(rc))
            : 0;
}

/* A guest access of 8 bytes through the partition (its probe vCPU): its answer. */
static int guest_access(protect_bench *st, uint64_t gpa, uint64_t *v, bool write) {
  mb_bench_done d = {1, 0, 0};
  mb_partition_access(st->part, gpa, v, sizeof *v, write, mb_bench_on_done, &d);
  return mb_bench_pump(&d);
}

/* Are the partition's slots exactly `want` (n ranges)? 0, or a failure. */
static int slots_are(mb_bench *b, protect_bench *st, const mb_part_range *want, size_t n,
                     const char *when) {
  mb_bench_done d = {1, 0, 0};
  mb_partition_ranges(st->part, mb_bench_on_done, &d);
  int rc = mb_bench_pump(&d);
  if (rc != 0)
    return mb_bench_fail(b, "check: partition ranges: %s", membacking_strerror(rc));
  mb_range_list *l = (mb_range_list *)(uintptr_t)d.value;
  bool same = l->count == n;
  for (size_t i = 0; same && i < n; i++)
    same = l->ranges[i].gpa == want[i].gpa && l->ranges[i].size == want[i].size &&
           l->ranges[i].writable == want[i].writable;
  size_t count = l->count;
  free(l);
  return same ? 0
              : mb_bench_fail(b, "check: %s, the partition has %zu slots, not the %zu expected",
                              when, count, n);
}

/* Between the two changes: three slots, the page readable but not writable, its neighbour
 * writable. `before` is what the page holds. */
static int check_protected(mb_bench *b, protect_bench *st, uint64_t before) {
  const uint64_t end = PROTECT_GPA + PROTECT_PAGE_SIZE;
  const mb_part_range split[] = {{0, PROTECT_GPA, true},
                                 {PROTECT_GPA, PROTECT_PAGE_SIZE, false},
                                 {end, PROTECT_RAM_SIZE - end, true}};
  int rc = slots_are(b, st, split, 3, "after protect ro");
  if (rc != 0)
    return rc;
  uint64_t v = 0;
  if ((rc = guest_access(st, PROTECT_GPA, &v, false)) != 0 || v != before)
    return mb_bench_fail(b, "check: a read of the ro page answered %s, %#llx",
                         membacking_strerror(rc), (unsigned long long)v);
  if ((rc = guest_access(st, PROTECT_GPA, &v, true)) != MB_E_PROTECTED)
    return mb_bench_fail(b, "check: a write to the ro page answered %s, not protected",
                         membacking_strerror(rc));
  v = 2;
  if ((rc = guest_access(st, end, &v, true)) != 0)
    return mb_bench_fail(b, "check: a write next to the ro page: %s", membacking_strerror(rc));
  return 0;
}

/* One operation, untimed, checked before, between and after its changes. */
static int protect_check(mb_bench *b, protect_bench *st) {
  uint64_t before = 0x5afe;
  int rc = guest_access(st, PROTECT_GPA, &before, true);
  if (rc != 0)
    return mb_bench_fail(b, "check: a write to the page: %s", membacking_strerror(rc));
  if ((rc = step_once(b, st, 0)) != 0 || (rc = check_protected(b, st, before)) != 0 ||
      (rc = step_once(b, st, 1)) != 0)
    return rc;
  const mb_part_range whole[] = {{0, PROTECT_RAM_SIZE, true}};
  if ((rc = slots_are(b, st, whole, 1, "after protect rw")) != 0)
    return rc;
  uint64_t v = 3;
  if ((rc = guest_access(st, PROTECT_GPA, &v, true)) != 0)
    return mb_bench_fail(b, "check: a write to the page after protect rw: %s",
                         membacking_strerror(rc));
  return 0;
}

static int protect_setup(mb_bench *b, void **state) {
  protect_bench *st = calloc(1, sizeof *st);
  if (st == NULL)
    return -ENOMEM;
  int rc = protect_guest(b, st);
  if (rc == 0)
    rc = protect_check(b, st);
  if (rc != 0) {
    protect_free(st);
    return rc;
  }
  *state = st;
  return 0;
}

/* ---- registration --------------------------------------------------------------------------- */

static const mb_bench_def protect_benches[] = {
    {.name = "protect.kvm", .unit = MB_BENCH_NS, .baseline = "syscalls.slot_split",
     .setup = protect_setup, .run = protect_run, .teardown = protect_teardown,
     .flags = MB_BENCH_SELF_TIMED | MB_BENCH_CPU,
     .doc = "protect 0 of one page ro, then rw, inside a mapped 1 GiB RAM region; VTL-0 kvm "
            "partition, one loop"},
};

void mb_bench_area_bench_protect(void) { MB_BENCH_REGISTER_ALL(protect_benches); }
