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
 *   scale.regions.N     map.soft's operation with N other mapped regions present
 *   scale.mappings.N    mapping.dax's operation with N other mappings in the region
 *
 * The floors are syscalls.map_unmap (the two mmaps the VA mapper makes), syscalls.map_unmap_kvm
 * (the same plus the memslot add and delete), and scale.*.10 for the scaling rows.
 *
 * One loop, on the harness thread. Every actor of a manager (region manager, mapping manager,
 * the eager VA mapper mb_mm_primary_mapper() that partitions use, the partition mapper) lives
 * on one loop that is attached to a uv_loop_t the harness thread runs, and the benchmark is a
 * requester on that same loop: it issues each step with the asynchronous API from the
 * previous step's completion callback, and run() runs uv_run until the n-th operation has
 * completed (see "the measured operation" below). That is "all actors on one loop"
 * literally: one thread does all the work, with no cross-thread wake-up in the measured
 * operation, as in a VMM whose memory actors share its main loop. (A started loop plus the
 * _sync API would add two cross-thread wake-ups per step, the cost rpc.cross_thread already
 * measures, ~1 us each at best and ~25 us when the loop thread sleeps, and would leave the
 * harness thread idle while the loop thread works.)
 *
 * The loop is shared by every benchmark of this file set up at the same time: the measured
 * side and its baseline (scale.regions.1000 runs with scale.regions.10 as its baseline, each
 * with a manager of its own) both attach to the same thread, and a thread runs at most one
 * runtime loop.
 *
 * map.spread keeps the requester on that home loop (as a VMM's main loop) and starts three
 * loops of its own for the manager's actors: mb_mm_config.loop (region and mapping managers),
 * mb_mm_config.part_loop (the primary eager VA mapper) and the partition's loop
 * (mb_partition_add's loop), as membacking-replay --layout=spread builds them. Each step then
 * crosses threads: from the home loop to the managers, from them to the VA mapper and the
 * partition mapper, and each answer back.
 *
 * The one VA mapper's only VA work is the floor's: map = one MAP_FIXED memfd mmap, unmap =
 * one MAP_FIXED PROT_NONE mmap, both 2 MiB, unpopulated.
 */
#include <inttypes.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "areas.h"
#include "harness.h"
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
 *   mapping.dax / scale.mappings.*:  a 1 GiB device region at 4 GiB; the measured mapping at
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

/* ---- the shared attached loop -------------------------------------------------------------- */

/* `vmm` stands for the VMM's own handles on its loop (its devices, its timers): a referenced
 * handle that is never signalled, as a VMM's loop always has some. It costs nothing while
 * nothing signals it. */
static struct {
  uv_loop_t uv;
  uv_async_t vmm;
  mb_loop *loop;
  unsigned users;
} home;

static void home_vmm_signalled(uv_async_t *h) { (void)h; }

static int home_get(mb_bench *b) {
  if (home.users++ > 0)
    return 0;
  int err = uv_loop_init(&home.uv);
  if (err != 0) {
    home.users = 0;
    return mb_bench_fail(b, "loop: %s", uv_strerror(err));
  }
  bool vmm = (err = uv_async_init(&home.uv, &home.vmm, home_vmm_signalled)) == 0;
  if (vmm)
    home.loop = mb_loop_attach(&home.uv, "bench-map", &err);
  if (err == 0)
    return 0;
  home.users = 0;
  home.loop = NULL;
  if (vmm)
    uv_close((uv_handle_t *)&home.vmm, NULL);
  uv_run(&home.uv, UV_RUN_DEFAULT); /* close callbacks, the attach's included */
  uv_loop_close(&home.uv);
  return mb_bench_fail(b, "loop: %s", mb_strerror(err));
}

static void home_put(void) {
  if (--home.users > 0)
    return;
  mb_loop_stop(home.loop);
  uv_close((uv_handle_t *)&home.vmm, NULL);
  uv_run(&home.uv, UV_RUN_DEFAULT); /* closes the loop's handles */
  mb_loop_free(home.loop);
  uv_loop_close(&home.uv);
  home.loop = NULL;
}

/* ---- waiting for completions --------------------------------------------------------------- */

typedef struct done_rec {
  int pending;    /* completions still due */
  int status;     /* the first failure */
  uint64_t value; /* of the last completion */
} done_rec;

static void on_done(void *ctx, int status, uint64_t value) {
  done_rec *d = ctx;
  if (status != 0 && d->status == 0)
    d->status = status;
  d->value = value;
  d->pending--;
}

/* Run the loop until every completion of d came in. Each completion runs on this loop; the
 * actors it waits for are on it too (ONE_LOOP) or on loops that wake it when they answer
 * (SPREAD). */
static int pump(done_rec *d) {
  while (d->pending > 0)
    uv_run(&home.uv, UV_RUN_ONCE);
  return d->status;
}

/* ---- one manager set up for a benchmark ---------------------------------------------------- */

typedef enum kind { K_REGION, K_MAPPING } kind;

/* Where the manager's actors run: all on the home loop, or spread over three started loops
 * (map.spread). The requester is on the home loop either way. */
typedef enum shape { ONE_LOOP, SPREAD } shape;
enum { SPREAD_MGR, SPREAD_VA, SPREAD_PART, SPREAD_LOOPS };

typedef struct map_bench {
  kind kind;
  bool have_home;
  mb_loop *spread[SPREAD_LOOPS]; /* SPREAD: managers, primary VA mapper, partition mapper */
  mb_mm *mm;
  mb_object *obj;    /* the measured 2 MiB memfd */
  mb_object *other;  /* backs every other region or mapping */
  mb_region_id id;   /* the measured region, or the device region */
  mb_mapping_params slot; /* K_MAPPING: the measured mapping */
  mb_partition *part;
  uint32_t others;
  uint64_t next;     /* classify: the next of the others to ask about */
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
  mb_object_unref(st->other);
  if (st->have_home) {
    uv_run(&home.uv, UV_RUN_NOWAIT); /* let the loop finish with the destroyed actors */
    home_put();
  }
  free(st);
}

static void map_teardown(void *state) { map_bench_free(state); }

static int region_add(map_bench *st, uint64_t gpa, uint64_t size, bool device,
                      mb_region_id *id) {
  mb_region_params p = {.name = NULL, .gpa = gpa, .size = size, .priority = 0, .device = device};
  done_rec d = {1, 0, 0};
  mb_region_add(st->mm, &p, on_done, &d);
  int rc = pump(&d);
  *id = (mb_region_id)d.value;
  return rc;
}

static int mapping_add(map_bench *st, const mb_mapping_params *p) {
  done_rec d = {1, 0, 0};
  mb_mapping_add(st->mm, p, on_done, &d);
  return pump(&d);
}

static int region_map(map_bench *st, mb_region_id id) {
  done_rec d = {1, 0, 0};
  mb_region_map(st->mm, id, true, on_done, &d);
  return pump(&d);
}

/* The N other mapped regions (K_REGION) or mappings (K_MAPPING). Each step of the setup is
 * issued for all of them before the loop runs: operations complete in the order issued. */
static int add_others(mb_bench *b, map_bench *st, uint32_t n) {
  if (n == 0)
    return 0;
  uint64_t size = st->kind == K_REGION ? OTHER_REGION_SIZE : OTHER_MAPPING_SIZE;
  int rc = mb_object_create(MB_OBJECT_MEMFD, size, "bench-other", &st->other);
  if (rc != 0)
    return mb_bench_fail(b, "object: %s", membacking_strerror(rc));
  if (st->kind == K_MAPPING) {
    done_rec d = {(int)n, 0, 0};
    for (uint32_t i = 0; i < n; i++) {
      mb_mapping_params p = {.region = st->id, .offset = OTHER_MAPPINGS_AT + i * OTHER_MAPPING_STRIDE,
                             .size = size, .obj = st->other, .obj_offset = 0, .writable = true};
      mb_mapping_add(st->mm, &p, on_done, &d);
    }
    rc = pump(&d);
    return rc ? mb_bench_fail(b, "other mappings: %s", membacking_strerror(rc)) : 0;
  }
  mb_region_id *ids = calloc(n, sizeof *ids);
  if (ids == NULL)
    return -ENOMEM;
  for (uint32_t i = 0; i < n && rc == 0; i++) {
    rc = region_add(st, OTHER_REGIONS_AT + i * OTHER_REGION_STRIDE, size, false, &ids[i]);
  }
  done_rec d = {0, 0, 0};
  for (uint32_t i = 0; i < n && rc == 0; i++) {
    mb_mapping_params p = {.region = ids[i], .offset = 0, .size = size, .obj = st->other,
                           .obj_offset = 0, .writable = true};
    d.pending++;
    mb_mapping_add(st->mm, &p, on_done, &d);
    d.pending++;
    mb_region_map(st->mm, ids[i], true, on_done, &d);
  }
  if (rc == 0)
    rc = pump(&d);
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

static int partition_add(mb_bench *b, map_bench *st, const mb_partition_ops *ops) {
  done_rec d = {1, 0, 0};
  mb_partition_add(st->mm, ops, st->spread[SPREAD_PART], on_done, &d);
  int rc = pump(&d);
  st->part = (mb_partition *)(uintptr_t)d.value;
  if (rc == MB_E_UNSUPPORTED && access("/dev/kvm", R_OK | W_OK) != 0)
    return mb_bench_skip(b, "%s partition unsupported here: /dev/kvm: %s", ops->name,
                         strerror(errno));
  if (rc == MB_E_UNSUPPORTED)
    return mb_bench_skip(b, "%s partition unsupported here", ops->name);
  return rc ? mb_bench_fail(b, "%s partition: %s", ops->name, membacking_strerror(rc)) : 0;
}

/* The manager, in its shape, with a partition of `ops` (NULL: none). The requester (this
 * thread) is on the shared home loop in both shapes. */
static int manager_create(mb_bench *b, map_bench *st, shape sh, const mb_partition_ops *ops) {
  int rc = home_get(b);
  if (rc != 0)
    return rc;
  st->have_home = true;
  if (sh == SPREAD && (rc = spread_start(b, st)) != 0)
    return rc;
  mb_mm_config cfg = {.max_addr = MAX_ADDR, .overlap = MB_OVERLAP_NESTED, .loop = home.loop};
  if (sh == SPREAD) {
    cfg.loop = st->spread[SPREAD_MGR];
    cfg.part_loop = st->spread[SPREAD_VA];
  }
  if ((rc = mb_mm_create(&cfg, &st->mm)) != 0) {
    st->mm = NULL;
    return mb_bench_fail(b, "mb_mm_create: %s", membacking_strerror(rc));
  }
  return ops ? partition_add(b, st, ops) : 0;
}

/* The measured region (K_REGION: with its mapping, not mapped; K_MAPPING: the device region,
 * mapped, without the measured mapping). */
static int measured_add(mb_bench *b, map_bench *st) {
  int rc = mb_object_create(MB_OBJECT_MEMFD, MB_SLOT, "bench-map", &st->obj);
  if (rc != 0)
    return mb_bench_fail(b, "object: %s", membacking_strerror(rc));
  if (st->kind == K_MAPPING) {
    if ((rc = region_add(st, DEVICE_AT, DEVICE_SIZE, true, &st->id)) != 0 ||
        (rc = region_map(st, st->id)) != 0)
      return mb_bench_fail(b, "device region: %s", membacking_strerror(rc));
    st->slot = (mb_mapping_params){.region = st->id, .offset = 0, .size = MB_SLOT,
                                   .obj = st->obj, .obj_offset = 0, .writable = true};
    return 0;
  }
  if ((rc = region_add(st, MEASURED_REGION_AT, MB_SLOT, false, &st->id)) != 0)
    return mb_bench_fail(b, "region add: %s", membacking_strerror(rc));
  mb_mapping_params p = {.region = st->id, .offset = 0, .size = MB_SLOT, .obj = st->obj,
                         .obj_offset = 0, .writable = true};
  if ((rc = mapping_add(st, &p)) != 0)
    return mb_bench_fail(b, "mapping add: %s", membacking_strerror(rc));
  return 0;
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

/* ---- the measured operation ------------------------------------------------------------------
 *
 * One operation: region map + region unmap (K_REGION), or mapping add + mapping remove
 * (K_MAPPING); each step is issued when the previous one completed, from its completion
 * callback, so the caller is on the loop like every actor: run() starts the first operation
 * and runs uv_run until the n-th has completed. Each operation is timed from just before its
 * first call to its second completion (MB_BENCH_SELF_TIMED).
 *
 * Why chain in the callbacks instead of issuing each step from run() and running uv_run until
 * it completes: every uv_run iteration polls (epoll_wait), and a system call costs ~1 us in
 * this machine's nested guest (an empty uv_run iteration measured 1.3 us here), which would
 * be two such polls per operation that no VMM issuing its memory operations from its own
 * loop pays; here the loop only goes back to libuv once per turn budget (runtime/loop.c,
 * TURN_BUDGET deliveries), which shows in p99, not p50. */

typedef struct chain {
  mb_bench *b;
  map_bench *st;
  uint32_t left;
  uint64_t t0;
  bool done;
} chain;

static void op_first(chain *c);

static void chain_fail(chain *c, const char *what, int status) {
  mb_bench_fail(c->b, "%s: %s", what, membacking_strerror(status));
  c->done = true;
}

static void op_second_done(void *ctx, int status, uint64_t value) {
  (void)value;
  chain *c = ctx;
  uint64_t t1 = mb_bench_now_ns();
  if (status != 0) {
    chain_fail(c, c->st->kind == K_REGION ? "region unmap" : "mapping remove", status);
    return;
  }
  mb_bench_sample(c->b, (double)(t1 - c->t0));
  c->left--;
  op_first(c);
}

static void op_first_done(void *ctx, int status, uint64_t value) {
  (void)value;
  chain *c = ctx;
  map_bench *st = c->st;
  if (status != 0) {
    chain_fail(c, st->kind == K_REGION ? "region map" : "mapping add", status);
    return;
  }
  if (st->kind == K_REGION)
    mb_region_unmap(st->mm, st->id, op_second_done, c);
  else
    mb_mapping_remove(st->mm, st->id, st->slot.offset, st->slot.size, op_second_done, c);
}

static void op_first(chain *c) {
  map_bench *st = c->st;
  if (c->left == 0) {
    c->done = true;
    return;
  }
  c->t0 = mb_bench_now_ns();
  if (st->kind == K_REGION)
    mb_region_map(st->mm, st->id, true, op_first_done, c);
  else
    mb_mapping_add(st->mm, &st->slot, op_first_done, c);
}

static int map_run(mb_bench *b, void *state, uint32_t n) {
  chain c = {b, state, n, 0, false};
  op_first(&c);
  while (!c.done)
    uv_run(&home.uv, UV_RUN_ONCE);
  return 0; /* a failure was reported with mb_bench_fail() */
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
