/* replay_vtl.c: virtual trust levels (spec "Virtual trust levels"). `protect` goes to the
 * library (mb_protect), which answers every rule of the section itself: a VTL that cannot be
 * protected (VTL 2, or one without a higher VTL configured, or one not configured), a range
 * that is unaligned, empty, wraps or ends past max_addr (error:invalid). It is a region-manager
 * request: it queues behind an operation that waits, is allowed inside a transaction and under
 * `async`, and waits for a lock whose right it takes. `expect protection` asks the manager
 * (mb_protections); the parser has refused a VTL that cannot be protected. The VTLs of regions
 * and consumers are passed through as they are (replay_ops.c): one the configuration does not
 * have is the library's error:invalid. */
#include <stdlib.h>
#include <string.h>

#include "replay.h"

uint64_t replay_consumer_span(const scenario *sc, uint8_t vtl) {
  return vtl == 2 && sc->vtl0_alias ? sc->vtl0_alias + sc->max_addr : sc->max_addr;
}

static int prot_access(scenario_prot p) {
  switch (p) {
  case SCENARIO_PROT_NONE: return MB_PROT_NONE;
  case SCENARIO_PROT_RO: return MB_PROT_RO;
  case SCENARIO_PROT_RW: return MB_PROT_RW;
  }
  return -1;
}

void replay_protect(replay_world *w, replay_op *op) {
  const scenario_protect *p = &op->cmd->protect;
  mb_protect(w->mm, p->vtl, p->gpa, p->size, prot_access(p->access), replay_op_done, op);
}

static void apply_protections(replay_op *op) {
  if (op->status == 0) op->prots = (mb_prot_list *)(uintptr_t)op->value;
}

void replay_expect_protection(replay_world *w, replay_op *op) {
  op->apply = apply_protections;
  mb_protections(w->mm, op->cmd->expect_protection.vtl, replay_op_done, op);
}

/* ---- comparing ------------------------------------------------------------------------------- */

static int by_gpa(const void *a, const void *b) {
  const scenario_range *x = a, *y = b;
  return x->gpa < y->gpa ? -1 : x->gpa > y->gpa;
}

/* The protections as RANGES are written: ascending, rw left out, adjacent items of one access
 * merged (r->items malloc'd). False when out of memory. */
static bool normalise(const mb_prot_list *l, scenario_ranges *r) {
  *r = (scenario_ranges){NULL, 0};
  if (!l || l->count == 0) return true;
  if (!(r->items = calloc(l->count, sizeof *r->items))) return false;
  size_t n = 0;
  for (size_t i = 0; i < l->count; i++) {
    const mb_prot_item *it = &l->items[i];
    if (it->access == MB_PROT_RW || it->size == 0) continue;
    r->items[n++] = (scenario_range){it->gpa, it->size, it->access == MB_PROT_RO,
                                     it->access == MB_PROT_NONE};
  }
  qsort(r->items, n, sizeof *r->items, by_gpa);
  for (size_t i = 0; i < n; i++) {
    scenario_range *last = r->n ? &r->items[r->n - 1] : NULL;
    const scenario_range *x = &r->items[i];
    if (last && last->gpa + last->size == x->gpa && last->ro == x->ro && last->none == x->none)
      last->size += x->size;
    else
      r->items[r->n++] = *x;
  }
  return true;
}

static bool same(const scenario_ranges *a, const scenario_ranges *b) {
  if (a->n != b->n) return false;
  for (size_t i = 0; i < a->n; i++) {
    const scenario_range *x = &a->items[i], *y = &b->items[i];
    if (x->gpa != y->gpa || x->size != y->size || x->ro != y->ro || x->none != y->none)
      return false;
  }
  return true;
}

/* "got RANGES" through the scenario printer: an `expect protection` line, minus its head. */
static char *got_text(uint8_t vtl, const scenario_ranges *r) {
  scenario_cmd c = {.kind = SCENARIO_EXPECT_PROTECTION};
  c.expect_protection.vtl = vtl;
  c.expect_protection.ranges = *r;
  char *line = replay_command_text(&c);
  char head[32];
  snprintf(head, sizeof head, "expect protection %u ", (unsigned)vtl);
  char *s = line && strncmp(line, head, strlen(head)) == 0
                ? replay_strdupf("got %s", line + strlen(head))
                : NULL;
  free(line);
  return s;
}

bool replay_check_protection(const replay_op *op, const scenario_cmd *expect, char **got) {
  const scenario_expect_protection *want = &expect->expect_protection;
  scenario_ranges actual;
  if (!normalise(op->prots, &actual)) {
    *got = replay_strdupf("failed: out of memory");
    return false;
  }
  bool ok = same(&actual, &want->ranges);
  if (!ok) *got = got_text(want->vtl, &actual);
  free(actual.items);
  return ok;
}
