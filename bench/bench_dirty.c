/* bench_dirty.c: dirty-page tracking (spec/bench.md, version 2):
 *
 *   dirty.sync.kvm   `dirty sync` of a 1 GiB RAM region in which the guest has dirtied 256
 *                    random pages since the last sync; kvm partition (skipped without
 *                    /dev/kvm). Its floor, syscalls.dirty_log (baseline_dirty_log.c):
 *                    KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG of the same slot.
 *
 * A manager on the home loop (home.h) with a kvm partition (a KVM VM of its own with a probe
 * vCPU) and no VA mapper of the benchmark's own; a 1 GiB RAM region at GPA 0 holding one
 * mapping of a 1 GiB memfd, mapped read-write (one memory slot), and dirty tracking started
 * (mb_dirty_start: KVM_MEM_LOG_DIRTY_PAGES on the slot, the manual clear protocol).
 *
 * One operation: untimed, the guest writes 8 bytes at the start of each of 256 distinct
 * random pages (dirty_pick.h): mb_partition_access writes, which the probe vCPU performs, so
 * the kernel logs them; all 256 are issued at once and waited for (bracketed as preparation:
 * their CPU is not in cpu_ns, harness.h). Timed: mb_dirty_sync of
 * the whole region into the benchmark's bitmap (the asynchronous form of
 * mb_dirty_sync_bitmap), issued from the home loop and timed to its completion
 * (mb_bench_chain, as map.kvm): the region manager asks the partition to collect (the kvm
 * backend's KVM_GET_DIRTY_LOG and KVM_CLEAR_DIRTY_LOG of the slot), then answers the range of
 * its set into the bitmap and clears it. The blocking form from another thread would add a
 * cross-thread round trip per operation, which rpc.cross_thread measures already.
 *
 * The set-up runs one operation untimed and checks it: the sync answers exactly the 256
 * pages written (count and bitmap), and a second sync with no write in between answers none.
 * So a row never measures a sync that answers nothing.
 */
#include <errno.h>
#include <stdlib.h>

#include "areas.h"
#include "dirty_pick.h"
#include "harness.h"
#include "home.h"
#include "membacking.h"

#define MAX_ADDR ((uint64_t)4 << 30)
#define RAM_GPA ((uint64_t)0)

typedef struct dirty_bench {
  bool have_home, tracking;
  mb_mm *mm;
  mb_partition *part;
  mb_object *ram;
  uint64_t rng;
  uint64_t bitmap[DIRTY_WORDS]; /* the caller's bitmap of each sync */
  uint64_t seen[DIRTY_WORDS];   /* dirty_pick's scratch */
  uint64_t pages[DIRTY_PAGES];  /* the page numbers written since the last sync */
  uint64_t values[DIRTY_PAGES]; /* what the guest wrote there */
} dirty_bench;

static void dirty_free(dirty_bench *st) {
  if (st->tracking) {
    mb_bench_done d = {1, 0, 0};
    mb_dirty_stop(st->mm, mb_bench_on_done, &d);
    (void)mb_bench_pump(&d);
  }
  if (st->mm)
    mb_mm_destroy(st->mm); /* inline: its loop is this thread's */
  mb_object_unref(st->ram);
  if (st->have_home)
    mb_bench_home_put();
  free(st);
}

static void dirty_teardown(void *state) { dirty_free(state); }

/* The manager on the home loop, its kvm partition (or a skip), the RAM mapped rw. */
static int dirty_guest(mb_bench *b, dirty_bench *st) {
  int rc = mb_bench_home_get(b);
  if (rc != 0)
    return rc;
  st->have_home = true;
  mb_mm_config cfg = {.max_addr = MAX_ADDR, .loop = mb_bench_home_loop()};
  if ((rc = mb_mm_create(&cfg, &st->mm)) != 0) {
    st->mm = NULL;
    return mb_bench_fail(b, "mb_mm_create: %s", membacking_strerror(rc));
  }
  if ((rc = mb_bench_partition_add(b, st->mm, &mb_partition_kvm, NULL, &st->part)) != 0)
    return rc;
  if ((rc = mb_object_create(MB_OBJECT_MEMFD, DIRTY_RAM_SIZE, "bench-dirty", &st->ram)) != 0)
    return mb_bench_fail(b, "object: %s", membacking_strerror(rc));
  mb_region_params rp = {.name = "ram", .gpa = RAM_GPA, .size = DIRTY_RAM_SIZE, .device = false};
  mb_region_id id;
  rc = mb_bench_region_add(st->mm, &rp, &id);
  mb_mapping_params mp = {.region = id, .offset = 0, .size = DIRTY_RAM_SIZE, .obj = st->ram,
                          .obj_offset = 0, .writable = true};
  if (rc == 0)
    rc = mb_bench_mapping_add(st->mm, &mp);
  if (rc == 0)
    rc = mb_bench_region_map(st->mm, id, true);
  return rc ? mb_bench_fail(b, "RAM region: %s", membacking_strerror(rc)) : 0;
}

static int dirty_start(mb_bench *b, dirty_bench *st) {
  mb_bench_done d = {1, 0, 0};
  mb_dirty_start(st->mm, mb_bench_on_done, &d);
  int rc = mb_bench_pump(&d);
  st->tracking = rc == 0;
  return rc ? mb_bench_fail(b, "dirty start: %s", membacking_strerror(rc)) : 0;
}

/* ---- the operation ------------------------------------------------------------------------ */

/* Untimed: the guest writes DIRTY_PAGES random pages through the probe vCPU. */
static int guest_writes(mb_bench *b, dirty_bench *st) {
  dirty_pick(&st->rng, st->seen, st->pages);
  mb_bench_done d = {0, 0, 0};
  for (int i = 0; i < DIRTY_PAGES; i++, d.pending++) {
    st->values[i] = dirty_rand(&st->rng) | 1;
    mb_partition_access(st->part, RAM_GPA + st->pages[i] * DIRTY_PAGE_SIZE, &st->values[i],
                        sizeof st->values[i], true, mb_bench_on_done, &d);
  }
  int rc = mb_bench_pump(&d);
  return rc ? mb_bench_fail(b, "guest write: %s", membacking_strerror(rc)) : 0;
}

static void sync_issue(void *state, uint32_t step, mb_done_fn done, void *ctx) {
  (void)step;
  dirty_bench *st = state;
  mb_dirty_sync(st->mm, RAM_GPA, DIRTY_RAM_SIZE, st->bitmap, done, ctx);
}

static const char *sync_name(const void *state, uint32_t step) {
  (void)state, (void)step;
  return "dirty sync";
}

static int dirty_run(mb_bench *b, void *state, uint32_t n) {
  dirty_bench *st = state;
  const mb_bench_op op = {.steps = 1, .issue = sync_issue, .name = sync_name};
  for (uint32_t i = 0; i < n; i++) {
    mb_bench_prep_begin(b);
    int rc = guest_writes(b, st);
    mb_bench_prep_end(b);
    if (rc == 0)
      rc = mb_bench_chain(b, &op, st, 1);
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* ---- set-up ------------------------------------------------------------------------------- */

/* One sync, waited for: 0 with *pages, or a failure. */
static int sync_once(mb_bench *b, dirty_bench *st, uint64_t *pages) {
  mb_bench_done d = {1, 0, 0};
  sync_issue(st, 0, mb_bench_on_done, &d);
  int rc = mb_bench_pump(&d);
  *pages = d.value;
  return rc ? mb_bench_fail(b, "check: dirty sync: %s", membacking_strerror(rc)) : 0;
}

/* One operation, untimed: the sync answers exactly the pages written; the next one none. */
static int dirty_check(mb_bench *b, dirty_bench *st) {
  uint64_t pages = 0;
  int rc = sync_once(b, st, &pages); /* whatever the set-up left */
  if (rc == 0)
    rc = guest_writes(b, st);
  if (rc == 0 && (rc = sync_once(b, st, &pages)) == 0 &&
      (pages != DIRTY_PAGES || !dirty_bitmap_is(st->bitmap, st->pages, DIRTY_PAGES)))
    rc = mb_bench_fail(b, "check: the sync after %d guest writes answered %llu pages%s",
                       DIRTY_PAGES, (unsigned long long)pages,
                       pages == DIRTY_PAGES ? ", not the pages written" : "");
  if (rc == 0 && (rc = sync_once(b, st, &pages)) == 0 && pages != 0)
    rc = mb_bench_fail(b, "check: a sync with no write since the last answered %llu pages",
                       (unsigned long long)pages);
  return rc;
}

static int dirty_setup(mb_bench *b, void **state) {
  dirty_bench *st = calloc(1, sizeof *st);
  if (st == NULL)
    return -ENOMEM;
  st->rng = DIRTY_SEED;
  int rc = dirty_guest(b, st);
  if (rc == 0)
    rc = dirty_start(b, st);
  if (rc == 0)
    rc = dirty_check(b, st);
  if (rc != 0) {
    dirty_free(st);
    return rc;
  }
  *state = st;
  return 0;
}

/* ---- registration --------------------------------------------------------------------------- */

static const mb_bench_def dirty_benches[] = {
    {.name = "dirty.sync.kvm", .unit = MB_BENCH_NS, .baseline = "syscalls.dirty_log",
     .setup = dirty_setup, .run = dirty_run, .teardown = dirty_teardown,
     .flags = MB_BENCH_SELF_TIMED | MB_BENCH_CPU,
     .doc = "dirty sync of a 1 GiB RAM region after the guest dirtied 256 random pages "
            "(untimed); kvm partition, one loop"},
};

void mb_bench_area_bench_dirty(void) { MB_BENCH_REGISTER_ALL(dirty_benches); }
