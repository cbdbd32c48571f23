/* region_protect.c: the region manager's VTL protections (region_manager.h: RM_PROTECT and
 * RM_PROTECTIONS). The manager holds, per VTL that a higher VTL may protect, the source of
 * truth: an mb_prot_map in the VTL's guest addresses. A protect changes it at once, then makes
 * the VTL's partitions (PM_PROTECT) and, through the mapping manager, its protecting mappers
 * (MM_PROTECT) enforce it, partitions first; a failed call takes every change back. Each
 * consumer keeps its own copy, so pieces and mappings set up later follow it by themselves:
 * nothing here depends on regions. Inside a transaction, the maps change at once and the
 * consumers hear of it at the commit, as one cover per VTL of the range the transaction
 * protected. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fault_inject.h" /* mb__malloc */
#include "mb_errors.h"
#include "mb_hot.h"
#include "partition_mapper.h"
#include "region_internal.h"

void rm__prot_init(rm_state *st) {
  for (unsigned v = 0; v < RM_VIEWS; v++)
    mb_prot_init(&st->prot[v]);
}

static void maps_free(mb_prot_map *maps) {
  for (unsigned v = 0; maps && v < RM_VIEWS; v++)
    mb_prot_fini(&maps[v]);
  free(maps);
}

void rm__prot_fini(rm_state *st) {
  for (unsigned v = 0; v < RM_VIEWS; v++)
    mb_prot_fini(&st->prot[v]);
  maps_free(st->prot_begin);
  st->prot_begin = NULL;
}

bool rm__prot_vtl_ok(const rm_state *st, unsigned vtl) {
  return vtl < MB_VTL_MAX && rm_has_view(st, vtl) && (st->cfg.geom.vtls >> (vtl + 1)) != 0;
}

/* The only kinds that plan protection items (below). */
static bool plans_prot(uint32_t kind) {
  return kind == RM_PROTECT || kind == RM_PARTITION_ADD || kind == RM_TXN_COMMIT;
}

void rm__prot_op_free(rm_op *op) {
  if (!plans_prot(op->kind))
    return;
  for (unsigned v = 0; v < RM_VIEWS; v++) {
    mb__free(op->prot[v].fwd);
    mb__free(op->prot[v].inv);
    op->prot[v] = (rm_prot_calls){0};
  }
}

/* A request's range and access, checked. */
static int protect_check(const rm_state *st, const rm_protect_msg *m) {
  mb_range r;
  if (!rm__prot_vtl_ok(st, m->vtl) || m->access > MB_PROT_RW ||
      mb_range_make(m->gpa, m->size, &r) != 0 || r.end > st->cfg.max_addr)
    return MB_E_INVALID;
  return 0;
}

/* The calls of pc (VTL pc->vtl): PM_PROTECT to its partitions (pm), or MM_PROTECT. */
static int plan_calls(rm_state *st, rm_op *op, const rm_prot_calls *pc, bool pm) {
  if (!pm)
    return rm__op_add_call(op, (rm_call){.kind = CALL_MM_PROTECT, .gpa = pc->vtl,
                                         .to = st->cfg.mapping_manager});
  for (size_t i = 0; i < st->nparts; i++) {
    if (st->parts[i].vtl != pc->vtl)
      continue;
    int rc = rm__op_add_call(op, (rm_call){.kind = CALL_PM_PROTECT, .gpa = pc->vtl,
                                           .to = st->parts[i].addr});
    if (rc)
      return rc;
  }
  return 0;
}

/* An undo cannot give up: it waits for memory. */
static void set_items_must(mb_prot_map *m, const mb_prot_item *items, size_t n) {
  while (mb_prot_set_items(m, items, n) != 0)
    nanosleep(&(struct timespec){0, 1000000}, NULL);
}

MB_COLD int rm__prot_plan(rm_state *st, rm_op *op) {
  rm_protect_msg *m = rm_protect_of(op->req);
  int rc = protect_check(st, m);
  if (rc)
    return rc;
  rm_prot_calls *pc = &op->prot[m->vtl];
  pc->vtl = m->vtl;
  rc = mb_prot_items(&st->prot[m->vtl], m->gpa, m->size, &pc->inv, &pc->ninv);
  pc->fwd = rc ? NULL : mb__malloc(sizeof *pc->fwd);
  if (pc->fwd == NULL)
    return MB_ENOMEM;
  pc->fwd[0] = (mb_prot_item){m->gpa, m->size, m->access};
  pc->nfwd = 1;
  if (pc->ninv == 1 && pc->inv[0].access == m->access)
    return 0; /* no change */
  if (mb_prot_set(&st->prot[m->vtl], m->gpa, m->size, m->access) != 0)
    return MB_ENOMEM;
  rc = plan_calls(st, op, pc, true);
  rm__op_end_step(op);
  if (rc == 0)
    rc = plan_calls(st, op, pc, false);
  rm__op_end_step(op);
  if (rc)
    rm__prot_undo(st, op);
  return rc;
}

MB_COLD void rm__prot_undo(rm_state *st, rm_op *op) {
  for (unsigned v = 0; v < RM_VIEWS; v++)
    if (op->prot[v].inv != NULL && op->kind == RM_PROTECT)
      set_items_must(&st->prot[v], op->prot[v].inv, op->prot[v].ninv);
}

int rm__prot_plan_partition(rm_state *st, rm_op *op, const rm_part *p) {
  if (!rm__prot_vtl_ok(st, p->vtl) || mb_prot_count(&st->prot[p->vtl]) == 0)
    return 0;
  rm_prot_calls *pc = &op->prot[p->vtl];
  pc->vtl = p->vtl;
  int rc = mb_prot_items(&st->prot[p->vtl], 0, st->cfg.max_addr, &pc->fwd, &pc->nfwd);
  pc->inv = rc ? NULL : mb__malloc(sizeof *pc->inv); /* back: all rw (a failed add) */
  if (pc->inv == NULL)
    return MB_ENOMEM;
  pc->inv[0] = (mb_prot_item){0, st->cfg.max_addr, MB_PROT_RW};
  pc->ninv = 1;
  return rm__op_add_call(op, (rm_call){.kind = CALL_PM_PROTECT, .gpa = p->vtl, .to = p->addr});
}

/* ---- transactions -------------------------------------------------------------------------- */

/* Every VTL's map, copied (at a transaction's first protect). */
static mb_prot_map *maps_copy(const rm_state *st) {
  mb_prot_map *c = mb__calloc(RM_VIEWS, sizeof *c);
  for (unsigned v = 0; c && v < RM_VIEWS; v++) {
    mb_prot_init(&c[v]);
    mb_prot_item *items;
    size_t n;
    if (mb_prot_items(&st->prot[v], 0, st->cfg.max_addr, &items, &n) != 0) {
      maps_free(c);
      return NULL;
    }
    int rc = mb_prot_set_items(&c[v], items, n);
    free(items);
    if (rc) {
      maps_free(c);
      return NULL;
    }
  }
  return c;
}

int rm__prot_txn(rm_state *st, rm_protect_msg *m) {
  int rc = protect_check(st, m);
  if (rc)
    return rc;
  if (st->prot_begin == NULL && (st->prot_begin = maps_copy(st)) == NULL)
    return MB_ENOMEM;
  return mb_prot_set(&st->prot[m->vtl], m->gpa, m->size, m->access);
}

/* Swaps the maps with those kept at the begin. */
static void maps_swap(rm_state *st) {
  for (unsigned v = 0; v < RM_VIEWS; v++) {
    mb_prot_map t = st->prot[v];
    st->prot[v] = st->prot_begin[v];
    st->prot_begin[v] = t;
  }
}

void rm__prot_txn_end(rm_state *st, bool ok) {
  if (st->prot_begin == NULL)
    return;
  if (!ok)
    maps_swap(st);
  maps_free(st->prot_begin);
  st->prot_begin = NULL;
}

/* The first and last guest address where the maps a and b differ: [*a0, *b0) (empty: none).
 * O(n) in the stored ranges: a commit's cost. */
static void maps_diff(const mb_prot_map *a, const mb_prot_map *b, uint64_t max,
                      uint64_t *lo, uint64_t *hi) {
  *lo = UINT64_MAX, *hi = 0;
  for (uint64_t x = 0; x < max;) {
    uint64_t ea, eb;
    uint8_t pa = mb_prot_at(a, x, &ea), pb = mb_prot_at(b, x, &eb);
    uint64_t y = ea < eb ? ea : eb;
    if (y > max)
      y = max;
    if (pa != pb) {
      if (*lo == UINT64_MAX)
        *lo = x;
      *hi = y;
    }
    x = y;
  }
}

/* The commit's cover of what the transaction changed in VTL v (nothing: 0, no items). */
static int commit_cover(rm_state *st, rm_op *op, unsigned v) {
  uint64_t lo, hi;
  maps_diff(&st->prot[v], &st->prot_begin[v], st->cfg.max_addr, &lo, &hi);
  if (lo >= hi)
    return 0;
  rm_prot_calls *pc = &op->prot[v];
  pc->vtl = (uint8_t)v;
  int rc = mb_prot_items(&st->prot[v], lo, hi - lo, &pc->fwd, &pc->nfwd);
  return rc ? rc : mb_prot_items(&st->prot_begin[v], lo, hi - lo, &pc->inv, &pc->ninv);
}

int rm__prot_plan_commit(rm_state *st, rm_op *op, bool pm) {
  if (st->prot_begin == NULL)
    return 0;
  int rc = 0;
  for (unsigned v = 0; v < RM_VIEWS && !rc; v++) {
    if (!rm__prot_vtl_ok(st, v))
      continue;
    if (pm)
      rc = commit_cover(st, op, v);
    if (rc == 0 && op->prot[v].fwd != NULL)
      rc = plan_calls(st, op, &op->prot[v], pm);
  }
  return rc;
}

/* ---- messages, answers, publication ------------------------------------------------------- */

mb_msg *rm__prot_msg(rm_state *st, const rm_call *c, int kind) {
  (void)st;
  const rm_prot_calls *pc = &c->op->prot[c->gpa];
  bool back = kind == CALL_PM_PROTECT_BACK || kind == CALL_MM_PROTECT_BACK;
  mb_prot_item *items = back ? pc->inv : pc->fwd;
  uint32_t n = (uint32_t)(back ? pc->ninv : pc->nfwd);
  if (kind == CALL_PM_PROTECT || kind == CALL_PM_PROTECT_BACK) {
    pm_protect_msg *m = pm_protect_new();
    if (m)
      m->items = items, m->count = n;
    return m ? &m->hdr : NULL;
  }
  mm_protect_msg *m = mm_protect_new();
  if (m)
    m->vtl = pc->vtl, m->items = items, m->count = n;
  return m ? &m->hdr : NULL;
}

int rm__prot_list(rm_state *st, uint8_t vtl, void **out) {
  if (!rm__prot_vtl_ok(st, vtl))
    return MB_E_INVALID;
  const mb_prot_map *pm = &st->prot[vtl];
  size_t n = mb_prot_count(pm), i = 0;
  mb_prot_list *l = mb__malloc(sizeof *l + n * sizeof l->items[0]);
  if (l == NULL)
    return MB_ENOMEM;
  for (const mb_prot_range *r = mb_prot_first(pm, 0, UINT64_MAX); r;
       r = mb_prot_next(r, 0, UINT64_MAX))
    l->items[i++] = (mb_prot_item){r->node.start, r->node.end - r->node.start, r->access};
  l->count = i;
  *out = l;
  return 0;
}

void rm__prot_publish(rm_state *st, const rm_op *op) {
  mb_gpa_map *g = st->cfg.gpa_map;
  if (!plans_prot(op->kind) || op->kind == RM_PARTITION_ADD)
    return; /* a partition's items change nothing the guest sees */
  for (unsigned v = 0; g && v < RM_VIEWS; v++) {
    const rm_prot_calls *pc = &op->prot[v];
    if (pc->fwd == NULL)
      continue;
    for (size_t i = 0; i < pc->nfwd; i++)
      mb_gpa_map_protect(g, rm_vs(st, v, pc->fwd[i].gpa),
                         rm_vs(st, v, pc->fwd[i].gpa + pc->fwd[i].size), pc->fwd[i].access);
  }
}

MB_COLD mb_range rm__prot_span(const rm_state *st, const rm_op *op, size_t *adds) {
  const rm_protect_msg *m = rm_protect_of(op->req);
  *adds = 2; /* a range cut in three (mb_gpa_map_begin) */
  if (!rm__prot_vtl_ok(st, m->vtl) || op->prot[m->vtl].fwd == NULL)
    return (mb_range){0, 0};
  return (mb_range){rm_vs(st, m->vtl, m->gpa), rm_vs(st, m->vtl, m->gpa + m->size)};
}

MB_COLD void rm__prot_widen(const rm_state *st, const rm_op *op, mb_range *span, size_t *adds) {
  for (unsigned v = 0; v < RM_VIEWS; v++) {
    const rm_prot_calls *pc = &op->prot[v];
    if (pc->fwd == NULL || pc->nfwd == 0)
      continue;
    uint64_t a = rm_vs(st, v, pc->fwd[0].gpa);
    uint64_t b = rm_vs(st, v, pc->fwd[pc->nfwd - 1].gpa + pc->fwd[pc->nfwd - 1].size);
    if (span->start >= span->end)
      *span = (mb_range){a, b};
    span->start = a < span->start ? a : span->start;
    span->end = b > span->end ? b : span->end;
    *adds += pc->nfwd + 2;
  }
}
