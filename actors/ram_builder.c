/* ram_builder.c: building a VM's RAM from backing requests (mb_ram.h): the objects, the plan
 * of regions (the legacy split), the region operations that make them, the undo of a failed
 * build, and destroy. The checks are ram_check.c's; the operations run in ram_steps.c. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ram_internal.h"

/* The PC's boundaries below 1 MiB (OpenVMM's x86 legacy split): low RAM, the VGA window,
 * twelve 16 KiB PAM windows, the BIOS window; then high RAM up to the range's end. */
static const uint64_t legacy_bounds[] = {0,       0xa0000, 0xc0000, 0xc4000, 0xc8000, 0xcc000,
                                         0xd0000, 0xd4000, 0xd8000, 0xdc000, 0xe0000, 0xe4000,
                                         0xe8000, 0xec000, 0xf0000, 0x100000};
enum { LEGACY_BOUNDS = sizeof legacy_bounds / sizeof legacy_bounds[0] };

static bool is_legacy(const mb_ram_config *cfg, const mb_ram_range *g) {
  return cfg->x86_legacy && g->gpa == 0 && g->size >= 0x100000;
}

static void ram_free(mb_ram *ram) {
  if (ram == NULL) return;
  for (size_t i = 0; i < ram->nobjs; i++) mb_object_unref(ram->objs[i]);
  free(ram->objs);
  free(ram->regions);
  free(ram);
}

/* ---- objects ------------------------------------------------------------------------------ */

static uint64_t request_size(const mb_ram_request *q) {
  uint64_t total = 0;
  for (size_t k = 0; k < q->count; k++) total += q->ranges[k].size;
  return total;
}

static int alloc_error(const mb_ram_request *q, size_t i, uint64_t size, int rc,
                       mb_ram_error *err) {
  char a[32], b[32];
  if (q->hugepage_size)
    return mb__ram_fail(err, rc, MB_RAM_ALLOC,
                        "request %zu: hugetlb backing of %s (%" PRIu64 " pages of %s) could "
                        "not be reserved: %s", i, mb__ram_size(a, size),
                        size / q->hugepage_size, mb__ram_size(b, q->hugepage_size),
                        membacking_strerror(rc));
  if (q->use_existing_fd)
    return mb__ram_fail(err, rc, MB_RAM_ALLOC, "request %zu: existing fd %d cannot back %s: %s",
                        i, q->existing_fd, mb__ram_size(a, size), membacking_strerror(rc));
  return mb__ram_fail(err, rc, MB_RAM_ALLOC, "request %zu: backing of %s could not be made: %s",
                      i, mb__ram_size(a, size), membacking_strerror(rc));
}

static int make_object(const mb_ram_request *q, size_t i, size_t n, mb_object **out,
                       mb_ram_error *err) {
  char name[32];
  snprintf(name, sizeof name, n == 1 ? "guest-ram" : "guest-ram-%zu", i);
  mb_object_options o = {
      .kind = q->private_memory ? MB_OBJECT_ANON
              : q->use_existing_fd ? MB_OBJECT_FD : MB_OBJECT_MEMFD,
      .size = request_size(q), .name = name, .fd = q->existing_fd,
      .hugetlb_page_size = q->hugepage_size, .thp = q->transparent_hugepages,
      .bind_node = q->use_numa_node, .numa_node = q->numa_node, .prefetch = q->prefetch};
  int rc = mb_object_create_opts(&o, out);
  return rc ? alloc_error(q, i, o.size, rc, err) : 0;
}

static int make_objects(mb_ram *ram, const mb_ram_config *cfg, mb_ram_error *err) {
  ram->objs = calloc(cfg->count, sizeof *ram->objs);
  if (ram->objs == NULL) return mb__ram_fail(err, MB_ENOMEM, MB_RAM_ALLOC, "out of memory");
  for (; ram->nobjs < cfg->count; ram->nobjs++) {
    int rc = make_object(&cfg->requests[ram->nobjs], ram->nobjs, cfg->count,
                         &ram->objs[ram->nobjs], err);
    if (rc) return rc;
  }
  return 0;
}

/* ---- the plan: regions in guest address order, three steps each ------------------------------ */

static size_t region_count(const mb_ram_config *cfg) {
  size_t n = 0;
  for (size_t i = 0; i < cfg->count; i++)
    for (size_t k = 0; k < cfg->requests[i].count; k++)
      n += is_legacy(cfg, &cfg->requests[i].ranges[k]) ? LEGACY_BOUNDS : 1;
  return n;
}

static void add_region(mb_ram *ram, uint64_t start, uint64_t end, const ram_region *like) {
  if (end > start) {
    ram_region *r = &ram->regions[ram->count++];
    *r = *like;
    r->range = (mb_ram_range){start, end - start};
    r->obj_off += start - like->range.gpa;
  }
}

/* One range at object offset off: one region, or the legacy split's sixteen (VTL 0's). */
static void plan_range(mb_ram *ram, const mb_ram_config *cfg, const mb_ram_range *g,
                       mb_object *obj, uint64_t off, uint8_t vtl) {
  ram_region like = {.range = *g, .obj = obj, .obj_off = off, .vtl = vtl};
  if (!is_legacy(cfg, g)) {
    add_region(ram, g->gpa, g->gpa + g->size, &like);
    return;
  }
  like.window = true;
  for (size_t b = 0; b < LEGACY_BOUNDS; b++) {
    uint64_t end = b + 1 < LEGACY_BOUNDS ? legacy_bounds[b + 1] : g->size;
    add_region(ram, legacy_bounds[b], end, &like);
  }
}

static int by_gpa(const void *a, const void *b) {
  const ram_region *x = a, *y = b;
  return x->range.gpa < y->range.gpa ? -1 : x->range.gpa > y->range.gpa;
}

static int plan_regions(mb_ram *ram, const mb_ram_config *cfg, mb_ram_error *err) {
  ram->regions = calloc(region_count(cfg), sizeof *ram->regions);
  if (ram->regions == NULL) return mb__ram_fail(err, MB_ENOMEM, MB_RAM_ALLOC, "out of memory");
  for (size_t i = 0; i < cfg->count; i++) {
    uint64_t off = 0;
    for (size_t k = 0; k < cfg->requests[i].count; k++) {
      const mb_ram_range *g = &cfg->requests[i].ranges[k];
      plan_range(ram, cfg, g, ram->objs[i], off, cfg->requests[i].vtl);
      off += g->size;
    }
  }
  qsort(ram->regions, ram->count, sizeof *ram->regions, by_gpa);
  return 0;
}

/* Add, map the backing into, and map each region: 3 steps per region. */
static ram_step *build_steps(const mb_ram *ram) {
  ram_step *s = calloc(3 * ram->count, sizeof *s);
  for (uint32_t r = 0; s && r < ram->count; r++) {
    s[3 * r] = (ram_step){RS_REGION_ADD, r, false};
    s[3 * r + 1] = (ram_step){RS_MAPPING_ADD, r, false};
    s[3 * r + 2] = (ram_step){RS_REGION_MAP, r, true};
  }
  return s;
}

/* Removal of every region the manager has, last first: an undo or a destroy. */
static ram_step *remove_steps(const mb_ram *ram, size_t *n) {
  ram_step *s = calloc(ram->count ? ram->count : 1, sizeof *s);
  *n = 0;
  for (size_t r = ram->count; s && r-- > 0;)
    if (ram->regions[r].added) s[(*n)++] = (ram_step){RS_REGION_REMOVE, (uint32_t)r, false};
  return s;
}

/* Everything up to the region operations: checks, objects, the plan. */
static int prepare(mb_mm *mm, const mb_ram_config *cfg, mb_ram_error *err, mb_ram **out,
                   ram_step **steps) {
  *out = NULL;
  if (err) *err = (mb_ram_error){0};
  if (mm == NULL) return mb__ram_fail(err, MB_E_INVALID, MB_RAM_EMPTY_OR_UNALIGNED, "no manager");
  int rc = mb__ram_check(cfg, mb_mm_max_addr(mm), mb_mm_vtls(mm), err);
  if (rc) return rc;
  mb_ram *ram = calloc(1, sizeof *ram);
  if (ram == NULL) return mb__ram_fail(err, MB_ENOMEM, MB_RAM_ALLOC, "out of memory");
  ram->mm = mm;
  rc = make_objects(ram, cfg, err);
  if (rc == 0) rc = plan_regions(ram, cfg, err);
  if (rc == 0 && (*steps = build_steps(ram)) == NULL)
    rc = mb__ram_fail(err, MB_ENOMEM, MB_RAM_ALLOC, "out of memory");
  if (rc) ram_free(ram);
  else *out = ram;
  return rc;
}

static int step_error(const mb_ram *ram, const ram_run *run, mb_ram_error *err) {
  static const char *const what[] = {"region add", "mapping add", "region map"};
  const ram_step *s = &run->steps[run->next];
  const ram_region *r = &ram->regions[s->reg];
  char a[32];
  return mb__ram_fail(err, run->status, MB_RAM_REGION,
                      "RAM region [0x%" PRIx64 ", +%s): %s refused: %s", r->range.gpa,
                      mb__ram_size(a, r->range.size), what[s->kind % 3],
                      membacking_strerror(run->status));
}

/* ---- build and destroy, blocking ------------------------------------------------------------ */

/* Removes what the manager has and frees the RAM: the first refusal, if any. */
static int teardown_sync(mb_ram *ram) {
  size_t n = 0;
  ram_step *s = remove_steps(ram, &n);
  int rc = MB_ENOMEM;
  if (s) {
    ram_run undo = {.ram = ram, .steps = s, .n = n, .keep_going = true};
    rc = mb__ram_run_sync(&undo);
  }
  free(s);
  ram_free(ram);
  return rc;
}

int mb_ram_build_sync(mb_mm *mm, const mb_ram_config *cfg, mb_ram **out, mb_ram_error *err) {
  mb_ram *ram = NULL;
  ram_step *steps = NULL;
  if (out) *out = NULL;
  int rc = out ? prepare(mm, cfg, err, &ram, &steps)
               : mb__ram_fail(err, MB_E_INVALID, MB_RAM_EMPTY_OR_UNALIGNED, "no out pointer");
  if (rc) return rc;
  ram_run run = {.ram = ram, .steps = steps, .n = 3 * ram->count};
  rc = mb__ram_run_sync(&run);
  if (rc == 0) *out = ram;
  else step_error(ram, &run, err);
  free(steps);
  if (rc) teardown_sync(ram);
  return rc;
}

int mb_ram_destroy_sync(mb_ram *ram) {
  return ram ? teardown_sync(ram) : 0;
}

/* ---- build and destroy, asynchronous ------------------------------------------------------- */

typedef struct ram_op {
  ram_run run;
  ram_step *steps;
  mb_ram_error *err;
  mb_done_fn done;
  void *ctx;
  int status;               /* the answer */
  uint64_t value;
} ram_op;

static void op_answer(void *arg) {
  ram_op *op = arg;
  op->done(op->ctx, op->status, op->value);
  free(op->steps);
  free(op);
}

/* The removals are over: the RAM goes, and the answer with it. */
static void teardown_done(ram_run *run) {
  ram_op *op = run->owner;
  if (op->status == 0) op->status = run->status;
  ram_free(run->ram);
  mb__ram_later(op_answer, op); /* a run of no steps ends inside the call that starts it */
}

static void teardown_async(ram_op *op, mb_ram *ram) {
  free(op->steps);
  size_t n = 0;
  op->steps = remove_steps(ram, &n);
  if (op->steps == NULL) { /* no memory for the list: one removal after another, blocking */
    teardown_sync(ram);
    op_answer(op);
    return;
  }
  op->run = (ram_run){.ram = ram, .steps = op->steps, .n = n, .keep_going = true,
                      .finish = teardown_done, .owner = op};
  mb__ram_run_async(&op->run);
}

static void build_done(ram_run *run) {
  ram_op *op = run->owner;
  if (run->status == 0) {
    op->value = (uint64_t)(uintptr_t)run->ram;
    mb__ram_later(op_answer, op);
    return;
  }
  op->status = step_error(run->ram, run, op->err);
  teardown_async(op, run->ram);
}

static ram_op *op_new(mb_ram_error *err, mb_done_fn done, void *ctx) {
  ram_op *op = calloc(1, sizeof *op);
  if (op) *op = (ram_op){.err = err, .done = done, .ctx = ctx};
  return op;
}

void mb_ram_build(mb_mm *mm, const mb_ram_config *cfg, mb_ram_error *err, mb_done_fn done,
                  void *ctx) {
  ram_op *op = op_new(err, done, ctx);
  if (op == NULL) {
    done(ctx, mb__ram_fail(err, MB_ENOMEM, MB_RAM_ALLOC, "out of memory"), 0);
    return;
  }
  mb_ram *ram = NULL;
  op->status = mb_loop_current() ? prepare(mm, cfg, err, &ram, &op->steps)
               : mb__ram_fail(err, MB_EINVAL, MB_RAM_EMPTY_OR_UNALIGNED,
                              "the asynchronous build needs a loop on the calling thread");
  if (op->status) {
    mb__ram_later(op_answer, op);
    return;
  }
  op->run = (ram_run){.ram = ram, .steps = op->steps, .n = 3 * ram->count,
                      .finish = build_done, .owner = op};
  mb__ram_run_async(&op->run);
}

void mb_ram_destroy(mb_ram *ram, mb_done_fn done, void *ctx) {
  ram_op *op = op_new(NULL, done, ctx);
  if (op == NULL || ram == NULL || !mb_loop_current()) {
    int rc = ram ? mb_ram_destroy_sync(ram) : 0; /* a destroy does not fail for want of memory */
    if (op) {
      op->status = rc;
      mb__ram_later(op_answer, op);
    } else {
      done(ctx, rc, 0);
    }
    return;
  }
  teardown_async(op, ram);
}

/* ---- reading it ----------------------------------------------------------------------------- */

size_t mb_ram_region_count(const mb_ram *ram) { return ram ? ram->count : 0; }

bool mb_ram_region(const mb_ram *ram, size_t i, mb_ram_range *range, mb_region_id *id) {
  if (ram == NULL || i >= ram->count) return false;
  if (range) *range = ram->regions[i].range;
  if (id) *id = ram->regions[i].id;
  return true;
}
