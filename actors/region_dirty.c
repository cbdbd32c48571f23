/* region_dirty.c: the region manager's dirty-page tracking (RM_DIRTY_START/SYNC/STOP). The
 * manager's set (dirty_log.h) is made at the first start; partitions mark it (PM_DIRTY_*),
 * users' threads through dirty_log.h. A sync collects from every partition (one step), then
 * takes the range from the set on this thread, the set's only taker. */
#include <stdlib.h>

#include "dirty_log.h"
#include "fault_inject.h"
#include "mb_hot.h"
#include "partition_mapper.h"
#include "region_internal.h"

enum { PAGE_SHIFT = 12 };

/* A call to every partition over guest [gpa, gpa + size), and over the alias's copy of it
 * for a partition that shows VTL 0 there. */
static int plan_all(rm_state *st, rm_op *op, int kind, uint64_t gpa, uint64_t size) {
  int rc = 0;
  for (size_t i = 0; i < st->nparts && !rc; i++) {
    const rm_part *p = &st->parts[i];
    rc = rm__op_add_call(op, (rm_call){.kind = (uint8_t)kind, .to = p->addr, .gpa = gpa,
                                       .size = size});
    if (rc == 0 && p->alias && size > 0)
      rc = rm__op_add_call(op, (rm_call){.kind = (uint8_t)kind, .to = p->addr,
                                         .gpa = st->cfg.geom.alias + gpa, .size = size});
  }
  rm__op_end_step(op);
  return rc;
}

/* The set's size: guest addresses, and VTL 0's again at the alias (writes there are marked
 * there, and folded onto their guest pages at each sync). */
static uint64_t set_size(const rm_state *st) {
  return st->cfg.geom.alias ? st->cfg.geom.alias + st->cfg.max_addr : st->cfg.max_addr;
}

/* Moves the marks of the alias's copy of [gpa, gpa + size) onto the guest pages, in chunks
 * of a stack bitmap (no memory needed: a mark is never lost). */
static void fold_alias(const rm_state *st, mb_dirty_set *s, uint64_t gpa, uint64_t size) {
  enum { WORDS = 64, CHUNK = (uint64_t)WORDS * 64 << PAGE_SHIFT };
  uint64_t bits[WORDS];
  for (uint64_t at = gpa; st->cfg.geom.alias && at < gpa + size; at += CHUNK) {
    uint64_t n = gpa + size - at < CHUNK ? gpa + size - at : CHUNK;
    if (mb_dirty_set_take_bitmap(s, st->cfg.geom.alias + at, n, bits) <= 0)
      continue;
    for (uint64_t i = 0; i < n >> PAGE_SHIFT; i++)
      if (bits[i / 64] >> (i % 64) & 1)
        (void)mb_dirty_set_mark_range(s, at + (i << PAGE_SHIFT), 1u << PAGE_SHIFT);
  }
}

/* A sync's range: page aligned, non-empty, inside the set. */
static int sync_range(const rm_state *st, const rm_dirty_sync_msg *m) {
  mb_range r;
  if (mb_range_make(m->gpa, m->size, &r) != 0 || r.end > st->cfg.max_addr)
    return MB_E_INVALID;
  return 0;
}

MB_COLD int rm__dirty_plan(rm_state *st, rm_op *op) {
  mb_dirty_log *l = st->cfg.dirty;
  if (l == NULL)
    return MB_E_UNSUPPORTED;
  switch (op->kind) {
  case RM_DIRTY_START:
    if (st->dirty_on)
      return MB_E_INVALID;
    if (l->set == NULL) {
      int rc = mb_dirty_set_create(set_size(st), &l->set);
      if (rc != 0)
        return rc == MB_E_INVALID ? MB_E_INVALID : MB_ENOMEM;
    }
    mb_dirty_set_clear(l->set); /* a start forgets what a racing write left after a stop */
    return plan_all(st, op, CALL_PM_DIRTY_START, 0, 0);
  case RM_DIRTY_STOP:
    return st->dirty_on ? plan_all(st, op, CALL_PM_DIRTY_STOP, 0, 0) : MB_E_INVALID;
  default: {
    rm_dirty_sync_msg *m = rm_dirty_sync_of(op->req);
    if (!st->dirty_on)
      return MB_E_INVALID;
    int rc = sync_range(st, m);
    return rc ? rc : plan_all(st, op, CALL_PM_DIRTY_COLLECT, m->gpa, m->size);
  }
  }
}

int rm__dirty_plan_partition(rm_state *st, rm_op *op, const rm_part *p) {
  if (!st->dirty_on)
    return 0;
  int rc = rm__op_add_call(op, (rm_call){.kind = CALL_PM_DIRTY_START, .to = p->addr});
  rm__op_end_step(op);
  return rc;
}

mb_msg *rm__dirty_msg(rm_state *st, const rm_call *c, int kind) {
  pm_dirty_start_msg *s;
  pm_dirty_collect_msg *k;
  pm_dirty_stop_msg *p;
  switch (kind) {
  case CALL_PM_DIRTY_START:
    if ((s = pm_dirty_start_new()) != NULL)
      s->set = st->cfg.dirty->set;
    return s ? &s->hdr : NULL;
  case CALL_PM_DIRTY_COLLECT:
    if ((k = pm_dirty_collect_new()) != NULL)
      k->gpa = c->gpa, k->size = c->size;
    return k ? &k->hdr : NULL;
  default:
    p = pm_dirty_stop_new();
    return p ? &p->hdr : NULL;
  }
}

/* The range's dirty pages as a list (bits NULL): taken in chunks into a growing array; out of
 * memory, what was taken is marked again (never lost) and the sync fails. */
static int take_list(mb_dirty_set *s, rm_dirty_sync_msg *m) {
  uint64_t at = m->gpa, end = m->gpa + m->size, pages = 0;
  size_t n = 0, cap = 16;
  mb_range *r = mb__malloc(cap * sizeof *r);
  while (r != NULL && at < end) {
    n += (size_t)mb_dirty_set_take_ranges(s, at, end - at, r + n, cap - n, &at);
    mb_range *more = at < end ? mb__realloc(r, (cap *= 2) * sizeof *r) : r;
    if (more == NULL)
      break;
    r = more;
  }
  mb_range_list *l = r && at == end ? mb__malloc(sizeof *l + n * sizeof l->ranges[0]) : NULL;
  for (size_t i = 0; i < n; i++) {
    if (l != NULL)
      l->ranges[i] = (mb_part_range){r[i].start, r[i].end - r[i].start, true};
    else
      (void)mb_dirty_set_mark_range(s, r[i].start, r[i].end - r[i].start);
    pages += (r[i].end - r[i].start) >> PAGE_SHIFT;
  }
  free(r);
  if (l == NULL)
    return MB_ENOMEM;
  l->count = n;
  m->list = l;
  m->pages = pages;
  return 0;
}

MB_COLD int rm__dirty_end(rm_state *st, rm_op *op) {
  mb_dirty_log *l = st->cfg.dirty;
  int rc = 0;
  if (op->kind == RM_DIRTY_START) {
    st->dirty_on = true;
    atomic_store_explicit(&l->on, l->set, memory_order_release);
  } else if (op->kind == RM_DIRTY_STOP) {
    st->dirty_on = false;
    atomic_store_explicit(&l->on, NULL, memory_order_release);
    mb_dirty_set_clear(l->set);
  } else {
    rm_dirty_sync_msg *m = rm_dirty_sync_of(op->req);
    mb__dirty_mark_held(l, l->set, m->gpa, m->size); /* held writable locks are answered by */
    if (st->cfg.geom.alias)
      mb__dirty_mark_held(l, l->set, st->cfg.geom.alias + m->gpa, m->size);
    fold_alias(st, l->set, m->gpa, m->size);
    if (m->bits != NULL)                               /* every sync: dirty until released */
      m->pages = (uint64_t)mb_dirty_set_take_bitmap(l->set, m->gpa, m->size, m->bits);
    else
      rc = take_list(l->set, m);
  }
  return rc;
}
