/* ram_steps.c: a list of region operations run in sequence, by the blocking API or by the
 * asynchronous one (each step issued from the completion of the one before), for the RAM
 * builder's build, undo, destroy and visibility switches (ram_internal.h). */
#include <stdlib.h>

#include "ram_internal.h"

ram_step mb__ram_vis_step(uint32_t reg, mb_ram_visibility vis) {
  if (vis == MB_RAM_NONE) return (ram_step){RS_REGION_UNMAP, reg, false};
  return (ram_step){RS_REGION_MAP, reg, vis == MB_RAM_RW};
}

static mb_region_params region_params(const ram_region *r) {
  return (mb_region_params){.name = "ram", .gpa = r->range.gpa, .size = r->range.size,
                            .priority = MB_RAM_PRIORITY, .vtl = r->vtl};
}

static mb_mapping_params mapping_params(const ram_region *r) {
  return (mb_mapping_params){r->id, 0, r->range.size, r->obj, r->obj_off, true};
}

/* What a step's success changes in the RAM's own records. */
static void step_done(ram_run *run, const ram_step *s, uint64_t value) {
  ram_region *r = &run->ram->regions[s->reg];
  if (s->kind == RS_REGION_ADD) {
    r->id = (mb_region_id)value;
    r->added = true;
  } else if (s->kind == RS_REGION_REMOVE) {
    r->added = false;
  }
}

static int step_sync(ram_run *run, const ram_step *s, uint64_t *value) {
  mb_mm *mm = run->ram->mm;
  ram_region *r = &run->ram->regions[s->reg];
  mb_region_params rp = region_params(r);
  mb_mapping_params mp = mapping_params(r);
  mb_region_id id = 0;
  int rc = 0;
  switch (s->kind) {
  case RS_REGION_ADD: rc = mb_region_add_sync(mm, &rp, &id); *value = id; break;
  case RS_MAPPING_ADD: rc = mb_mapping_add_sync(mm, &mp); break;
  case RS_REGION_MAP: rc = mb_region_map_sync(mm, r->id, s->writable); break;
  case RS_REGION_UNMAP: rc = mb_region_unmap_sync(mm, r->id); break;
  case RS_REGION_REMOVE: rc = mb_region_remove_sync(mm, r->id); break;
  case RS_TXN_BEGIN: rc = mb_txn_begin_sync(mm); break;
  case RS_TXN_COMMIT: rc = mb_txn_commit_sync(mm); break;
  }
  return rc;
}

int mb__ram_run_sync(ram_run *run) {
  run->status = 0;
  for (run->next = 0; run->next < run->n; run->next++) {
    const ram_step *s = &run->steps[run->next];
    uint64_t value = 0;
    int rc = step_sync(run, s, &value);
    if (rc == 0) step_done(run, s, value);
    if (rc != 0 && run->status == 0) run->status = rc;
    if (rc != 0 && !run->keep_going) break;
  }
  return run->status;
}

/* ---- asynchronous ----------------------------------------------------------------------- */

static void issue(ram_run *run);

static void on_step(void *ctx, int status, uint64_t value) {
  ram_run *run = ctx;
  const ram_step *s = &run->steps[run->next];
  if (status == 0) step_done(run, s, value);
  if (status != 0 && run->status == 0) run->status = status;
  if (status != 0 && !run->keep_going) {
    run->finish(run);
    return;
  }
  run->next++;
  issue(run);
}

static void issue(ram_run *run) {
  if (run->next >= run->n) {
    run->finish(run);
    return;
  }
  mb_mm *mm = run->ram->mm;
  const ram_step *s = &run->steps[run->next];
  ram_region *r = &run->ram->regions[s->reg];
  mb_region_params rp = region_params(r);
  mb_mapping_params mp = mapping_params(r);
  switch (s->kind) {
  case RS_REGION_ADD: mb_region_add(mm, &rp, on_step, run); break;
  case RS_MAPPING_ADD: mb_mapping_add(mm, &mp, on_step, run); break;
  case RS_REGION_MAP: mb_region_map(mm, r->id, s->writable, on_step, run); break;
  case RS_REGION_UNMAP: mb_region_unmap(mm, r->id, on_step, run); break;
  case RS_REGION_REMOVE: mb_region_remove(mm, r->id, on_step, run); break;
  case RS_TXN_BEGIN: mb_txn_begin(mm, on_step, run); break;
  case RS_TXN_COMMIT: mb_txn_commit(mm, on_step, run); break;
  }
}

void mb__ram_run_async(ram_run *run) {
  run->status = 0;
  run->next = 0;
  issue(run);
}

/* ---- completing later ------------------------------------------------------------------- */

typedef struct later {
  void (*fn)(void *arg);
  void *arg;
} later;

static void later_run(mb_loop *loop, void *arg) {
  (void)loop;
  later l = *(later *)arg;
  free(arg);
  l.fn(l.arg);
}

void mb__ram_later(void (*fn)(void *arg), void *arg) {
  mb_loop *here = mb_loop_current();
  later *l = here ? malloc(sizeof *l) : NULL;
  if (l != NULL) {
    *l = (later){fn, arg};
    if (mb_loop_post(here, later_run, l) == 0) return;
    free(l);
  }
  fn(arg);
}
