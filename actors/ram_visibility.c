/* ram_visibility.c: RAM visibility control (mb_ram.h): the legacy windows switched between
 * RAM read-write, RAM read-only and not RAM, as a chipset's PAM registers do. A call is one
 * transaction: begin, one map or unmap per window that changes, commit. If a step inside
 * fails, the windows already switched are switched back inside the same transaction before
 * the commit, so the commit changes nothing; if the commit fails, the manager puts every
 * consumer back itself. Either way every window stays as it was. */
#include <inttypes.h>
#include <stdlib.h>

#include "ram_internal.h"

static const char *const vis_names[] = {"RAM read-write", "RAM read-only", "not RAM"};

/* The region of the RAM with exactly [gpa, gpa + size), or -1. */
static long find_region(const mb_ram *ram, uint64_t gpa, uint64_t size) {
  for (size_t i = 0; i < ram->count; i++)
    if (ram->regions[i].range.gpa == gpa && ram->regions[i].range.size == size) return (long)i;
  return -1;
}

int mb_ram_visibility_of(const mb_ram *ram, uint64_t gpa, uint64_t size) {
  long i = ram ? find_region(ram, gpa, size) : -1;
  return i < 0 ? -1 : (int)ram->regions[i].vis;
}

static int bad_window(const mb_ram_window *w, const char *why, mb_ram_error *err) {
  return mb__ram_fail(err, MB_E_INVALID, MB_RAM_BAD_WINDOW,
                      "window [0x%" PRIx64 ", 0x%" PRIx64 "): %s", w->gpa, w->gpa + w->size, why);
}

/* The steps of a call: begin, a step per window that changes, commit; reg[] says which region
 * each window is. Nothing changes when a window is wrong. */
static int plan(const mb_ram *ram, const mb_ram_window *w, size_t n, ram_step **out, size_t *len,
                mb_ram_error *err) {
  uint32_t *reg = calloc(n ? n : 1, sizeof *reg);
  ram_step *s = calloc(n + 2, sizeof *s);
  int rc = reg && s ? 0 : mb__ram_fail(err, MB_ENOMEM, MB_RAM_ALLOC, "out of memory");
  size_t k = 0;
  if (rc == 0) s[k++] = (ram_step){RS_TXN_BEGIN, 0, false};
  for (size_t i = 0; i < n && rc == 0; i++) {
    long r = find_region(ram, w[i].gpa, w[i].size);
    if (r < 0 || !ram->regions[r].window)
      rc = bad_window(&w[i], "not a legacy window of this RAM", err);
    else if ((unsigned)w[i].vis > MB_RAM_NONE)
      rc = bad_window(&w[i], "unknown visibility", err);
    for (size_t j = 0; j < i && rc == 0; j++)
      if (reg[j] == (uint32_t)r) rc = bad_window(&w[i], "listed twice", err);
    reg[i] = (uint32_t)r;
    if (rc == 0 && ram->regions[r].vis != w[i].vis) s[k++] = mb__ram_vis_step(reg[i], w[i].vis);
  }
  if (rc == 0) s[k++] = (ram_step){RS_TXN_COMMIT, 0, false};
  free(reg);
  if (rc) free(s);
  *out = rc ? NULL : s;
  *len = k;
  return rc;
}

static mb_ram_visibility vis_of_step(const ram_step *s) {
  return s->kind == RS_REGION_UNMAP ? MB_RAM_NONE : s->writable ? MB_RAM_RW : MB_RAM_RO;
}

/* After a step inside the transaction failed (run->next): the steps that switch the windows
 * before it back, in place of the failed ones, then the commit. Rewrites the list. */
static size_t plan_undo(const mb_ram *ram, ram_step *s, size_t failed) {
  size_t k = 0;
  for (size_t i = 1; i < failed; i++) s[k++] = mb__ram_vis_step(s[i].reg, ram->regions[s[i].reg].vis);
  s[k++] = (ram_step){RS_TXN_COMMIT, 0, false};
  return k;
}

static void record(mb_ram *ram, const ram_step *s, size_t len) {
  for (size_t i = 1; i + 1 < len; i++) ram->regions[s[i].reg].vis = vis_of_step(&s[i]);
}

static int failure(const mb_ram *ram, const ram_run *run, mb_ram_error *err) {
  const ram_step *s = &run->steps[run->next];
  if (s->kind == RS_TXN_BEGIN || s->kind == RS_TXN_COMMIT)
    return mb__ram_fail(err, run->status, MB_RAM_REGION, "transaction %s refused: %s",
                        s->kind == RS_TXN_BEGIN ? "begin" : "commit",
                        membacking_strerror(run->status));
  const mb_ram_range *g = &ram->regions[s->reg].range;
  return mb__ram_fail(err, run->status, MB_RAM_REGION,
                      "window [0x%" PRIx64 ", 0x%" PRIx64 ") to %s refused: %s; no window "
                      "changed", g->gpa, g->gpa + g->size, vis_names[vis_of_step(s)],
                      membacking_strerror(run->status));
}

/* A step inside the transaction failed: its steps before it are undone in it. */
static bool needs_undo(const ram_run *run) {
  return run->status != 0 && run->next > 0 && run->next + 1 < run->n;
}

/* ---- blocking ------------------------------------------------------------------------------ */

int mb_ram_set_visibility_sync(mb_ram *ram, const mb_ram_window *w, size_t n,
                               mb_ram_error *err) {
  if (err) *err = (mb_ram_error){0};
  if (ram == NULL) return mb__ram_fail(err, MB_E_INVALID, MB_RAM_BAD_WINDOW, "no RAM");
  ram_step *s = NULL;
  size_t len = 0;
  int rc = plan(ram, w, n, &s, &len, err);
  if (rc) return rc;
  ram_run run = {.ram = ram, .steps = s, .n = len};
  rc = mb__ram_run_sync(&run);
  if (rc == 0) record(ram, s, len);
  else failure(ram, &run, err);
  if (needs_undo(&run)) {
    ram_run undo = {.ram = ram, .steps = s, .n = plan_undo(ram, s, run.next), .keep_going = true};
    mb__ram_run_sync(&undo);
  }
  free(s);
  return rc;
}

/* ---- asynchronous -------------------------------------------------------------------------- */

typedef struct vis_op {
  ram_run run;
  ram_step *steps;
  size_t len;
  mb_ram_error *err;
  mb_done_fn done;
  void *ctx;
  int status;
} vis_op;

static void vis_answer(void *arg) {
  vis_op *op = arg;
  op->done(op->ctx, op->status, 0);
  free(op->steps);
  free(op);
}

static void undo_done(ram_run *run) {
  mb__ram_later(vis_answer, run->owner);
}

static void vis_done(ram_run *run) {
  vis_op *op = run->owner;
  op->status = run->status;
  if (run->status == 0) record(run->ram, op->steps, op->len);
  else failure(run->ram, run, op->err);
  if (!needs_undo(run)) {
    mb__ram_later(vis_answer, op);
    return;
  }
  size_t n = plan_undo(run->ram, op->steps, run->next);
  op->run = (ram_run){.ram = run->ram, .steps = op->steps, .n = n, .keep_going = true,
                      .finish = undo_done, .owner = op};
  mb__ram_run_async(&op->run);
}

void mb_ram_set_visibility(mb_ram *ram, const mb_ram_window *w, size_t n, mb_ram_error *err,
                           mb_done_fn done, void *ctx) {
  if (err) *err = (mb_ram_error){0};
  vis_op *op = calloc(1, sizeof *op);
  if (op == NULL) {
    done(ctx, mb__ram_fail(err, MB_ENOMEM, MB_RAM_ALLOC, "out of memory"), 0);
    return;
  }
  *op = (vis_op){.err = err, .done = done, .ctx = ctx};
  op->status = ram == NULL ? mb__ram_fail(err, MB_E_INVALID, MB_RAM_BAD_WINDOW, "no RAM")
               : !mb_loop_current()
                   ? mb__ram_fail(err, MB_EINVAL, MB_RAM_BAD_WINDOW, "no loop on this thread")
                   : plan(ram, w, n, &op->steps, &op->len, err);
  if (op->status) {
    mb__ram_later(vis_answer, op);
    return;
  }
  op->run = (ram_run){.ram = ram, .steps = op->steps, .n = op->len, .finish = vis_done,
                      .owner = op};
  mb__ram_run_async(&op->run);
}
