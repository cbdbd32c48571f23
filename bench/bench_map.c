/* bench_map.c: the cost of changing guest memory (spec/bench.md):
 *
 *   map.soft            region map + region unmap of a 2 MiB region holding one memfd mapping,
 *                       with the manager's eager VA mapper and a soft partition
 *   map.spread          map.soft's operation in the design's shape: region and mapping managers
 *                       on one started loop, the eager VA mapper on a second, the soft
 *                       partition's mapper on a third, issued from the harness thread's loop
 *                       (the VMM's); its floor is map.soft, all on one loop (version 2)
 *   map.kvm             the same with a KVM partition (skipped without /dev/kvm)
 *   mapping.dax         mapping add + mapping remove of 2 MiB inside a mapped 1 GiB device
 *                       region, with the eager VA mapper
 *   mapping.replace     mapping replace of that 2 MiB by another file's, the two files
 *                       alternating (version 2)
 *   scale.regions.N     map.soft's operation with N other mapped regions present
 *   scale.mappings.N    mapping.dax's operation with N other mappings in the region
 *   access.change       region map ro + region map rw (an access change, in place) of a mapped
 *                       64 MiB RAM region whose pages are all populated, with the eager VA
 *                       mapper and a soft partition (version 2)
 *
 * The floors are syscalls.map_unmap (the two mmaps the VA mapper makes), syscalls.map_unmap_kvm
 * (the same plus the memslot add and delete), syscalls.map_replace (one MAP_FIXED mmap of the
 * new file over the old), syscalls.mprotect (the populated 64 MiB to read-only and back) and
 * scale.*.10 for the scaling rows.
 *
 * One loop, on the harness thread. Every actor of a manager (region manager, mapping manager,
 * the eager VA mapper mb_mm_primary_mapper() that partitions use, the partition mapper) lives
 * on one loop that is attached to a uv_loop_t the harness thread runs, and the benchmark is a
 * requester on that same loop: it issues each step with the asynchronous API from the
 * previous step's completion callback, and run() runs uv_run until the n-th operation has
 * completed (home.h, mb_bench_chain). That is "all actors on one loop"
 * literally: one thread does all the work, with no cross-thread wake-up in the measured
 * operation, as in a VMM whose memory actors share its main loop. (A started loop plus the
 * _sync API would add two cross-thread wake-ups per step, the cost rpc.cross_thread already
 * measures, ~1 us each at best and ~25 us when the loop thread sleeps, and would leave the
 * harness thread idle while the loop thread works.)
 *
 * The loop (home.h) is shared by every benchmark set up at the same time: the measured side
 * and its baseline (scale.regions.1000 runs with scale.regions.10 as its baseline, each with
 * a manager of its own) both attach to the same thread, and a thread runs at most one runtime
 * loop.
 *
 * map.spread keeps the requester on that home loop (as a VMM's main loop) and starts three
 * loops of its own for the manager's actors: mb_mm_config.loop (region and mapping managers),
 * mb_mm_config.part_loop (the primary eager VA mapper) and the partition's loop
 * (mb_partition_add's loop), as membacking-replay --layout=spread builds them. Each step then
 * crosses threads: from the home loop to the managers, from them to the VA mapper and the
 * partition mapper, and each answer back.
 *
 * The one VA mapper's only VA work is the floor's: map = one MAP_FIXED memfd mmap, unmap =
 * one MAP_FIXED PROT_NONE mmap, both 2 MiB, unpopulated; replace = one MAP_FIXED mmap of the
 * other memfd over the first, unpopulated too (but for the one page the set-up's check
 * writes, whose page-table entry only the first measured replace drops).
 */
#include <inttypes.h>
#include <errno.h>
#include <stdlib.h>

#include "areas.h"
#include "harness.h"
#include "home.h"
#include "membacking.h"

#define KIB ((uint64_t)1 << 10)
#define MIB ((uint64_t)1 << 20)
#define GIB ((uint64_t)1 << 30)
/* The guest address space: small enough for valgrind to reserve (callgrind profiles). */
#define MAX_ADDR ((uint64_t)8 << 30)

/* Guest layout (max_addr 8 GiB). The measured 2 MiB always has PROT_NONE reservation on both
 * sides in the VA mapper, like the floor's slot: the map splits the reservation's VMA in
 * three and the unmap merges it back (at the reservation's edge the kernel would do
 * different, cheaper VMA work than the floor).
 *   map.* / scale.regions.*:   the measured region at 512 MiB, 2 MiB, RAM; the N other
 *                              regions of 64 KiB each from 1 GiB on, one every 128 KiB (a
 *                              PROT_NONE gap between them: one VMA each), each holding one
 *                              mapping.
 *   mapping.* / scale.mappings.*:  a 1 GiB device region at 4 GiB; the measured mapping at
 *                              its offset 0 (2 MiB); the N other mappings of 4 KiB from
 *                              offset 4 MiB on, one every 64 KiB. */
enum { MB_SLOT = 2 * MIB };
#define MEASURED_REGION_AT (512 * MIB)
#define OTHER_REGIONS_AT GIB
#define OTHER_REGION_SIZE (64 * KIB)
#define OTHER_REGION_STRIDE (128 * KIB)
#define DEVICE_AT (4 * GIB)
#define DEVICE_SIZE GIB
#define OTHER_MAPPINGS_AT (4 * MIB)
#define OTHER_MAPPING_SIZE (4 * KIB)
#define OTHER_MAPPING_STRIDE (64 * KIB)
/* access.change: the measured region at MEASURED_REGION_AT is 64 MiB instead (below 1 GiB). */
#define ACCESS_SIZE (64 * MIB)
#define PAGE_SIZE_4K (4 * KIB)

/* ---- one manager set up for a benchmark ---------------------------------------------------- */

/* What is measured: a region's map and unmap, a mapping's add and remove, the replace of
 * a mapping (which is there from the set-up on) by the other of two files, or a mapped
 * region's access change to read-only and back. */
typedef enum kind { K_REGION, K_MAPPING, K_REPLACE, K_ACCESS } kind;

/* Where the manager's actors run: all on the home loop, or spread over three started loops
 * (map.spread). The requester is on the home loop either way. */
typedef enum shape { ONE_LOOP, SPREAD } shape;
enum { SPREAD_MGR, SPREAD_VA, SPREAD_PART, SPREAD_LOOPS };

typedef struct map_bench {
  kind kind;
  bool have_home;
  mb_loop *spread[SPREAD_LOOPS]; /* SPREAD: managers, primary VA mapper, partition mapper */
  mb_mm *mm;
  mb_object *obj;    /* the measured 2 MiB memfd (K_ACCESS: 64 MiB) */
  mb_object *obj_b;  /* K_REPLACE: the other 2 MiB memfd */
  mb_object *other;  /* backs every other region or mapping */
  mb_region_id id;   /* the measured region, or the device region */
  mb_mapping_params slot; /* K_MAPPING, K_REPLACE: the measured mapping */
  mb_partition *part;
  uint32_t others;
  uint64_t next;     /* classify: the next of the others to ask about; K_REPLACE: replaces */
} map_bench;

static void spread_stop(map_bench *st) {
  for (int i = SPREAD_LOOPS - 1; i >= 0; i--) {
    if (st->spread[i]) {
      mb_loop_stop(st->spread[i]);
      mb_loop_free(st->spread[i]);
      st->spread[i] = NULL;
    }
  }
}

static void map_bench_free(map_bench *st) {
  if (st->mm)
    mb_mm_destroy(st->mm); /* ONE_LOOP: inline, its loop is this thread's */
  spread_stop(st);
  mb_object_unref(st->obj);
  mb_object_unref(st->obj_b);
  mb_object_unref(st->other);
  if (st->have_home)
    mb_bench_home_put();
  free(st);
}

static void map_teardown(void *state) { map_bench_free(state); }

/* The N other mapped regions (K_REGION) or mappings (K_MAPPING). Each step of the setup is
 * issued for all of them before the loop runs: operations complete in the order issued. */
static int add_others(mb_bench *b, map_bench *st, uint32_t n) {
  if (n == 0)
    return 0;
  uint64_t size = st->kind == K_REGION ? OTHER_REGION_SIZE : OTHER_MAPPING_SIZE;
  int rc = mb_object_create(MB_OBJECT_MEMFD, size, "bench-other", &st->other);
  if (rc != 0)
    return mb_bench_fail(b, "object: %s", membacking_strerror(rc));
  if (st->kind != K_REGION) {
    mb_bench_done d = {(int)n, 0, 0};
    for (uint32_t i = 0; i < n; i++) {
      mb_mapping_params p = {.region = st->id, .offset = OTHER_MAPPINGS_AT + i * OTHER_MAPPING_STRIDE,
                             .size = size, .obj = st->other, .obj_offset = 0, .writable = true};
      mb_mapping_add(st->mm, &p, mb_bench_on_done, &d);
    }
    rc = mb_bench_pump(&d);
    return rc ? mb_bench_fail(b, "other mappings: %s", membacking_strerror(rc)) : 0;
  }
  mb_region_id *ids = calloc(n, sizeof *ids);
  if (ids == NULL)
    return -ENOMEM;
  for (uint32_t i = 0; i < n && rc == 0; i++) {
    mb_region_params p = {.gpa = OTHER_REGIONS_AT + i * OTHER_REGION_STRIDE, .size = size};
    rc = mb_bench_region_add(st->mm, &p, &ids[i]);
  }
  mb_bench_done d = {0, 0, 0};
  for (uint32_t i = 0; i < n && rc == 0; i++) {
    mb_mapping_params p = {.region = ids[i], .offset = 0, .size = size, .obj = st->other,
                           .obj_offset = 0, .writable = true};
    d.pending++;
    mb_mapping_add(st->mm, &p, mb_bench_on_done, &d);
    d.pending++;
    mb_region_map(st->mm, ids[i], true, mb_bench_on_done, &d);
  }
  if (rc == 0)
    rc = mb_bench_pump(&d);
  free(ids);
  return rc ? mb_bench_fail(b, "other regions: %s", membacking_strerror(rc)) : 0;
}

/* SPREAD: the three loop threads of the design's shape (the replayer's spread layout), lending
 * (MB_LOOP_LEND) as the replayer's are: a sleeping loop's turn runs on the thread that sends. */
static int spread_start(mb_bench *b, map_bench *st) {
  static const char *const names[SPREAD_LOOPS] = {"map-managers", "map-va", "map-partition"};
  for (int i = 0; i < SPREAD_LOOPS; i++) {
    int err = 0;
    st->spread[i] = mb_loop_start_flags(names[i], MB_LOOP_LEND, &err);
    if (st->spread[i] == NULL)
      return mb_bench_fail(b, "starting loop %s: %s", names[i], mb_strerror(err));
  }
  return 0;
}

/* The manager, in its shape, with a partition of `ops` (NULL: none). The requester (this
 * thread) is on the shared home loop in both shapes. */
static int manager_create(mb_bench *b, map_bench *st, shape sh, const mb_partition_ops *ops) {
  int rc = mb_bench_home_get(b);
  if (rc != 0)
    return rc;
  st->have_home = true;
  if (sh == SPREAD && (rc = spread_start(b, st)) != 0)
    return rc;
  mb_mm_config cfg = {.max_addr = MAX_ADDR, .overlap = MB_OVERLAP_NESTED,
                      .loop = mb_bench_home_loop()};
  if (sh == SPREAD) {
    cfg.loop = st->spread[SPREAD_MGR];
    cfg.part_loop = st->spread[SPREAD_VA];
  }
  if ((rc = mb_mm_create(&cfg, &st->mm)) != 0) {
    st->mm = NULL;
    return mb_bench_fail(b, "mb_mm_create: %s", membacking_strerror(rc));
  }
  return ops ? mb_bench_partition_add(b, st->mm, ops, st->spread[SPREAD_PART], &st->part) : 0;
}

static int replace_by(map_bench *st, mb_object *obj) {
  mb_mapping_params p = st->slot;
  p.obj = obj;
  mb_bench_done d = {1, 0, 0};
  mb_mapping_replace(st->mm, &p, mb_bench_on_done, &d);
  return mb_bench_pump(&d);
}

/* K_REPLACE, once at set-up: a byte written through the VA mapper into obj's first page is
 * gone once obj_b replaced obj there (an untouched memfd reads 0) and back once obj replaced
 * obj_b. A row never measures a replace that does not replace. */
static int replace_check(mb_bench *b, map_bench *st) {
  mb_mapper *m = mb_mm_primary_mapper(st->mm);
  uint8_t mark = 0xa1, seen[2] = {0xff, 0xff};
  int rc = mb_mapper_write(m, DEVICE_AT, &mark, 1);
  if (rc == 0 && (rc = replace_by(st, st->obj_b)) == 0)
    rc = mb_mapper_read(m, DEVICE_AT, &seen[0], 1);
  if (rc == 0 && (rc = replace_by(st, st->obj)) == 0)
    rc = mb_mapper_read(m, DEVICE_AT, &seen[1], 1);
  if (rc != 0)
    return mb_bench_fail(b, "check: %s", membacking_strerror(rc));
  if (seen[0] != 0 || seen[1] != mark)
    return mb_bench_fail(b, "check: read %#x after the replace by the other file (expected 0), "
                         "%#x after the replace back (expected %#x)", seen[0], seen[1], mark);
  return 0;
}

/* K_MAPPING, K_REPLACE: the device region, mapped, and the measured mapping's parameters;
 * K_REPLACE also adds that mapping (of obj; each replace puts the other object there). */
static int device_add(mb_bench *b, map_bench *st) {
  mb_region_params p = {.gpa = DEVICE_AT, .size = DEVICE_SIZE, .device = true};
  int rc = mb_bench_region_add(st->mm, &p, &st->id);
  if (rc == 0)
    rc = mb_bench_region_map(st->mm, st->id, true);
  if (rc != 0)
    return mb_bench_fail(b, "device region: %s", membacking_strerror(rc));
  st->slot = (mb_mapping_params){.region = st->id, .offset = 0, .size = MB_SLOT, .obj = st->obj,
                                 .obj_offset = 0, .writable = true};
  if (st->kind != K_REPLACE)
    return 0;
  if ((rc = mb_object_create(MB_OBJECT_MEMFD, MB_SLOT, "bench-map-b", &st->obj_b)) != 0)
    return mb_bench_fail(b, "object: %s", membacking_strerror(rc));
  if ((rc = mb_bench_mapping_add(st->mm, &st->slot)) != 0)
    return mb_bench_fail(b, "mapping add: %s", membacking_strerror(rc));
  return replace_check(b, st);
}

/* K_ACCESS, once at set-up (the region mapped rw, every page written): after `map ro` a write
 * through the VA mapper faults (MB_E_READONLY: the mapper's VA really is read-only) and the
 * bytes are still there (changed in place, not unmapped); after `map rw` it works again. A
 * row never measures an access change that changes nothing. */
static int access_check(mb_bench *b, map_bench *st) {
  mb_mapper *m = mb_mm_primary_mapper(st->mm);
  uint8_t mark = 0xa5, seen = 0;
  int ro_write = 0, rc = mb_bench_region_map(st->mm, st->id, false);
  if (rc == 0) {
    ro_write = mb_mapper_write(m, MEASURED_REGION_AT, &mark, 1);
    rc = mb_mapper_read(m, MEASURED_REGION_AT, &seen, 1);
  }
  if (rc == 0 && (rc = mb_bench_region_map(st->mm, st->id, true)) == 0)
    rc = mb_mapper_write(m, MEASURED_REGION_AT, &mark, 1);
  if (rc != 0)
    return mb_bench_fail(b, "check: %s", membacking_strerror(rc));
  if (ro_write != MB_E_READONLY || seen != mark)
    return mb_bench_fail(b, "check: after map ro a write answered %s (expected %s) and a read "
                         "%#x (expected %#x)", membacking_strerror(ro_write),
                         membacking_strerror(MB_E_READONLY), seen, mark);
  return 0;
}

/* K_ACCESS: the region mapped rw, every page written once through the VA mapper (populated,
 * as a running guest's RAM: the mprotects walk present page-table entries), checked. */
static int access_prepare(mb_bench *b, map_bench *st) {
  mb_mapper *m = mb_mm_primary_mapper(st->mm);
  uint8_t mark = 0xa5;
  int rc = mb_bench_region_map(st->mm, st->id, true);
  for (uint64_t off = 0; rc == 0 && off < ACCESS_SIZE; off += PAGE_SIZE_4K)
    rc = mb_mapper_write(m, MEASURED_REGION_AT + off, &mark, 1);
  if (rc != 0)
    return mb_bench_fail(b, "populate: %s", membacking_strerror(rc));
  return access_check(b, st);
}

/* The measured region (K_REGION: with its mapping, not mapped; K_ACCESS: mapped, populated)
 * or the device region. */
static int measured_add(mb_bench *b, map_bench *st) {
  uint64_t size = st->kind == K_ACCESS ? ACCESS_SIZE : MB_SLOT;
  int rc = mb_object_create(MB_OBJECT_MEMFD, size, "bench-map", &st->obj);
  if (rc != 0)
    return mb_bench_fail(b, "object: %s", membacking_strerror(rc));
  if (st->kind != K_REGION && st->kind != K_ACCESS)
    return device_add(b, st);
  mb_region_params rp = {.gpa = MEASURED_REGION_AT, .size = size};
  if ((rc = mb_bench_region_add(st->mm, &rp, &st->id)) != 0)
    return mb_bench_fail(b, "region add: %s", membacking_strerror(rc));
  mb_mapping_params p = {.region = st->id, .offset = 0, .size = size, .obj = st->obj,
                         .obj_offset = 0, .writable = true};
  if ((rc = mb_bench_mapping_add(st->mm, &p)) != 0)
    return mb_bench_fail(b, "mapping add: %s", membacking_strerror(rc));
  return st->kind == K_ACCESS ? access_prepare(b, st) : 0;
}

/* A manager in shape `sh` with the measured region, a partition of `ops` (NULL: none) and
 * n others. */
static int map_setup_shape(mb_bench *b, void **state, kind k, shape sh,
                           const mb_partition_ops *ops, uint32_t others) {
  map_bench *st = calloc(1, sizeof *st);
  if (st == NULL)
    return -ENOMEM;
  st->kind = k;
  int rc = manager_create(b, st, sh, ops);
  if (rc == 0)
    rc = measured_add(b, st);
  if (rc == 0)
    rc = add_others(b, st, others);
  if (rc != 0) {
    map_bench_free(st);
    return rc;
  }
  st->others = others;
  *state = st;
  return 0;
}

static int map_setup_common(mb_bench *b, void **state, kind k, const mb_partition_ops *ops,
                            uint32_t others) {
  return map_setup_shape(b, state, k, ONE_LOOP, ops, others);
}

/* ---- the measured operations ---------------------------------------------------------------
 *
 * K_REGION: region map + region unmap; K_MAPPING: mapping add + mapping remove; K_REPLACE: one
 * mapping replace, by obj_b and obj in turn; K_ACCESS: region map ro + region map rw of the
 * mapped region. Chained on the home loop (home.h). */

static void region_step(void *state, uint32_t step, mb_done_fn done, void *ctx) {
  map_bench *st = state;
  if (step == 0)
    mb_region_map(st->mm, st->id, true, done, ctx);
  else
    mb_region_unmap(st->mm, st->id, done, ctx);
}

static const char *region_step_name(const void *state, uint32_t step) {
  (void)state;
  return step == 0 ? "region map" : "region unmap";
}

static void access_step(void *state, uint32_t step, mb_done_fn done, void *ctx) {
  map_bench *st = state;
  mb_region_map(st->mm, st->id, step != 0, done, ctx);
}

static const char *access_step_name(const void *state, uint32_t step) {
  (void)state;
  return step == 0 ? "region map ro" : "region map rw";
}

static void mapping_step(void *state, uint32_t step, mb_done_fn done, void *ctx) {
  map_bench *st = state;
  if (step == 0)
    mb_mapping_add(st->mm, &st->slot, done, ctx);
  else
    mb_mapping_remove(st->mm, st->id, st->slot.offset, st->slot.size, done, ctx);
}

static const char *mapping_step_name(const void *state, uint32_t step) {
  (void)state;
  return step == 0 ? "mapping add" : "mapping remove";
}

static void replace_step(void *state, uint32_t step, mb_done_fn done, void *ctx) {
  (void)step;
  map_bench *st = state;
  mb_mapping_params p = st->slot;
  p.obj = st->next++ % 2 == 0 ? st->obj_b : st->obj;
  mb_mapping_replace(st->mm, &p, done, ctx);
}

static const char *replace_step_name(const void *state, uint32_t step) {
  (void)state, (void)step;
  return "mapping replace";
}

static const mb_bench_op map_ops[] = {
    [K_REGION] = {.steps = 2, .issue = region_step, .name = region_step_name},
    [K_MAPPING] = {.steps = 2, .issue = mapping_step, .name = mapping_step_name},
    [K_REPLACE] = {.steps = 1, .issue = replace_step, .name = replace_step_name},
    [K_ACCESS] = {.steps = 2, .issue = access_step, .name = access_step_name},
};

static int map_run(mb_bench *b, void *state, uint32_t n) {
  map_bench *st = state;
  return mb_bench_chain(b, &map_ops[st->kind], st, n);
}

/* ---- setups ---------------------------------------------------------------------------------- */

static int map_soft_setup(mb_bench *b, void **s) {
  return map_setup_common(b, s, K_REGION, &mb_partition_soft, 0);
}
static int map_spread_setup(mb_bench *b, void **s) {
  return map_setup_shape(b, s, K_REGION, SPREAD, &mb_partition_soft, 0);
}
static int map_kvm_setup(mb_bench *b, void **s) {
  return map_setup_common(b, s, K_REGION, &mb_partition_kvm, 0);
}
static int mapping_dax_setup(mb_bench *b, void **s) {
  return map_setup_common(b, s, K_MAPPING, NULL, 0);
}
static int mapping_replace_setup(mb_bench *b, void **s) {
  return map_setup_common(b, s, K_REPLACE, NULL, 0);
}
static int access_change_setup(mb_bench *b, void **s) {
  return map_setup_common(b, s, K_ACCESS, &mb_partition_soft, 0);
}

#define SCALE_SETUPS(N)                                                                        \
  static int scale_regions_##N##_setup(mb_bench *b, void **s) {                              \
    return map_setup_common(b, s, K_REGION, &mb_partition_soft, N);                          \
  }                                                                                            \
  static int scale_mappings_##N##_setup(mb_bench *b, void **s) {                             \
    return map_setup_common(b, s, K_MAPPING, NULL, N);                                       \
  }
SCALE_SETUPS(10)
SCALE_SETUPS(100)
SCALE_SETUPS(1000)
SCALE_SETUPS(10000)

/* ---- the exit question ------------------------------------------------------------------
 *
 * classify: mb_partition_classify of 8 bytes in one of 10,000 mapped regions (each its own
 * piece and mapping), as a vCPU thread's exit handler asks it: the calls go round 64 regions
 * spread over the whole map, so the lookup walks the full tree each time while the probed
 * pages stay in the TLB (a TLB miss on a cold page costs ~5 us in this nested guest, which
 * would measure the host's paging, not the question). */
enum { CLASSIFY_SET = 64, CLASSIFY_SPREAD = 157 };

/* The guest has touched its pages before it exits on them: the first touch of a page (the
 * kernel allocating it) is not the question's cost. */
static int classify_setup(mb_bench *b, void **s) {
  int rc = map_setup_common(b, s, K_REGION, &mb_partition_soft, 10000);
  map_bench *st = rc == 0 ? *s : NULL;
  for (uint32_t i = 0; st && i < st->others; i++)
    if (mb_mapper_write(mb_mm_primary_mapper(st->mm), OTHER_REGIONS_AT + i * OTHER_REGION_STRIDE,
                        "", 1) != 0)
      return mb_bench_fail(b, "touch: region %u", i);
  return rc;
}

static int classify_run(mb_bench *b, void *state, uint32_t n) {
  map_bench *st = state;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t k = (st->next++ % CLASSIFY_SET) * CLASSIFY_SPREAD % st->others;
    uint64_t gpa = OTHER_REGIONS_AT + k * OTHER_REGION_STRIDE + 64;
    if (mb_partition_classify(st->part, gpa, 8, true) != MB_GPA_RAM)
      return mb_bench_fail(b, "classify %#" PRIx64 ": not RAM", gpa);
  }
  return 0;
}

/* ---- registration ---------------------------------------------------------------------------- */

#define MAP_BENCH(NAME, BASE, SETUP, DOC)                                                      \
  {.name = NAME, .unit = MB_BENCH_NS, .baseline = BASE, .setup = SETUP, .run = map_run,       \
   .teardown = map_teardown, .flags = MB_BENCH_SELF_TIMED, .doc = DOC}

#define SCALE_REGIONS(N)                                                                       \
  MAP_BENCH("scale.regions." #N, "scale.regions.10", scale_regions_##N##_setup,              \
            "map.soft's region map + unmap with " #N " other mapped regions present")
#define SCALE_MAPPINGS(N)                                                                      \
  MAP_BENCH("scale.mappings." #N, "scale.mappings.10", scale_mappings_##N##_setup,           \
            "mapping.dax's mapping add + remove with " #N " other mappings in the region")

static const mb_bench_def map_benches[] = {
    MAP_BENCH("map.soft", "syscalls.map_unmap", map_soft_setup,
              "region map + unmap of 2 MiB (one memfd mapping), eager VA mapper, soft "
              "partition, all actors on one loop"),
    {.name = "map.spread", .unit = MB_BENCH_NS, .baseline = "map.soft",
     .setup = map_spread_setup, .run = map_run, .teardown = map_teardown,
     .flags = MB_BENCH_SELF_TIMED | MB_BENCH_CPU,
     .doc = "map.soft's region map + unmap with the managers, the eager VA mapper and the "
            "soft partition each on a loop thread of its own, issued from the harness's loop"},
    MAP_BENCH("map.kvm", "syscalls.map_unmap_kvm", map_kvm_setup,
              "region map + unmap of 2 MiB (one memfd mapping), eager VA mapper, KVM "
              "partition, all actors on one loop"),
    MAP_BENCH("mapping.dax", "syscalls.map_unmap", mapping_dax_setup,
              "mapping add + remove of 2 MiB in a mapped 1 GiB device region, eager VA "
              "mapper, one loop"),
    {.name = "mapping.replace", .unit = MB_BENCH_NS, .baseline = "syscalls.map_replace",
     .setup = mapping_replace_setup, .run = map_run, .teardown = map_teardown,
     .flags = MB_BENCH_SELF_TIMED | MB_BENCH_CPU,
     .doc = "mapping replace of 2 MiB in a mapped 1 GiB device region by another memfd's "
            "(two alternating), eager VA mapper, one loop"},
    {.name = "access.change", .unit = MB_BENCH_NS, .baseline = "syscalls.mprotect",
     .setup = access_change_setup, .run = map_run, .teardown = map_teardown,
     .flags = MB_BENCH_SELF_TIMED | MB_BENCH_CPU,
     .doc = "region map ro + region map rw of a mapped 64 MiB RAM region, every page "
            "populated, eager VA mapper, soft partition, one loop"},
    SCALE_REGIONS(10),
    SCALE_REGIONS(100),
    SCALE_REGIONS(1000),
    SCALE_REGIONS(10000),
    SCALE_MAPPINGS(10),
    SCALE_MAPPINGS(100),
    SCALE_MAPPINGS(1000),
    SCALE_MAPPINGS(10000),
    {.name = "classify", .unit = MB_BENCH_NS, .setup = classify_setup, .run = classify_run,
     .teardown = map_teardown, .batch = 100,
     .doc = "mb_partition_classify of one write on a guest with 10,000 mapped regions"},
};

void mb_bench_area_bench_map(void) { MB_BENCH_REGISTER_ALL(map_benches); }
