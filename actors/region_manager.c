/* region_manager.c: the region manager actor (see region_manager.h).
 *
 * Takes: RM_* requests (region add/map/unmap/remove/state, mapping add/remove/replace,
 * partition add/remove). Sends: MM_MAP/MM_UNMAP to the mapping manager, PM_MAP/PM_UNMAP to
 * the partition mappers.
 *
 * State: regions by id (an interval tree keyed [id, id + 1)) and by guest range with the
 * visible pieces (region_visibility.h); per region its mappings in an interval tree keyed by
 * absolute guest range (they never overlap); the partitions, in the order they were added.
 *
 * Operations. A request that needs nested calls becomes an rm_op: it is validated and planned
 * completely first (nothing is sent before everything checked out; the MM_MAP entry arrays
 * alone are built as they are sent), then runs as a list of steps. Each step is a batch of
 * calls sent together (to one or to every partition, or to the mapping manager); the next
 * step starts when all of them answered. A visibility change runs:
 *   1. PM_UNMAP the removed pieces from every partition,
 *   2. MM_UNMAP the segments whose winner changes (the old winner's mappings there),
 *   3. MM_MAP the new winners' mappings clipped to those segments,
 *   4. PM_MAP the added pieces into every partition;
 * an access change is made in place over the region's own pieces: PM_ACCESS_SET to every
 * partition, then MM_REPLACE of the same mappings at the new access (an mprotect in mappers).
 * Mapping add and remove are one step of MM_MAP / MM_UNMAP calls for the visible parts
 * (partitions map whole pieces, holes included); partition add is one step of PM_MAP calls,
 * one per piece in ascending order, all to the new partition. Nothing in the manager's own
 * state changes until every step succeeded (commit). When a call fails, the steps done so far
 * are undone in reverse (each completed call has an exact inverse, since the region's state
 * is still the old one), and the request is answered with the first error: a failed request
 * changes nothing. The actor is serialized, so at most one rm_op exists at a time.
 *
 * A partition mapper that is gone (MB_EGONE) holds nothing; calls to it count as done.
 */
#include "mb_hot.h"
#include "region_manager.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "grow.h"
#include "mapping_manager.h"
#include "mb_errors.h"
#include "partition_mapper.h"
#include <inttypes.h>
#include <stdio.h>

#include "json_out.h"
#include "range_tree.h"
#include "region_internal.h"

MB_PROTOCOL_DEFINE(rm, RM_MESSAGES);

static bool addr_eq(mb_addr a, mb_addr b) {
  return a.loop == b.loop && a.slot == b.slot && a.gen == b.gen;
}

static rm_region *region_find(rm_state *st, uint32_t id) {
  mb_rtree_node *n = mb_rtree_find(&st->ids, id);
  return n ? mb_rtree_entry(n, rm_region, by_id) : NULL;
}

static rm_mapping *first_mapping(const rm_region *r, uint64_t start, uint64_t end) {
  return mapping_of(mb_rtree_first_overlap(&r->mappings, start, end));
}

void rm__mapping_free(rm_mapping *m) {
  if (m == NULL)
    return;
  mb_object_unref(m->obj);
  free(m);
}

void rm__region_destroy(rm_region *r) {
  while (r != NULL) {
    rm_region *next = r->next;
    while (r->mappings.root != NULL) {
      rm_mapping *m = mapping_of(r->mappings.root);
      mb_rtree_remove(&r->mappings, &m->node);
      rm__mapping_free(m);
    }
    free(r);
    r = next;
  }
}

void rm__region_unlink(rm_state *st, rm_region *r) {
  for (rm_region *s = r; s != NULL; s = s->next)
    mb__vis_remove(vis_of(st, s), &s->vis);
  mb_rtree_remove(&st->ids, &r->by_id);
}

MB_COLD void rm__region_free(rm_state *st, rm_region *r) {
  rm__region_unlink(st, r);
  rm__region_destroy(r);
}

static void entries_free(mb_map_entry *e, uint32_t count) {
  mb_map_entries_free(e, count);
}


/* The entries of call c's range: the mappings from `first` on (or `first` alone: one; none
 * when NULL) clipped to it, each with its own reference, writable only where the mapping and
 * the call's access both are. */
MB_HOT static int build_entries(const rm_call *c, const rm_mapping *first, bool one,
                                mb_map_entry **out, uint32_t *count) {
  uint64_t start = c->gpa, end = c->gpa + c->size;
  size_t n = first != NULL;
  mb_rtree_node *it;
  *out = NULL;
  *count = 0;
  if (first == NULL)
    return 0;
  if (!one)
    for (it = mb_rtree_next_overlap(&first->node, start, end); it;
         it = mb_rtree_next_overlap(it, start, end))
      n++;
  if (n > UINT32_MAX)
    return MB_ENOMEM;
  mb_map_entry *e = mb_map_entries_alloc(n);
  if (e == NULL)
    return MB_ENOMEM;
  e[0] = rm__clip_entry(first, start, end, c->writable);
  size_t i = 1;
  if (!one)
    for (it = mb_rtree_next_overlap(&first->node, start, end); it;
         it = mb_rtree_next_overlap(it, start, end))
      e[i++] = rm__clip_entry(mapping_of(it), start, end, c->writable);
  for (i = 0; i < n; i++)
    mb_object_ref(e[i].obj);
  *out = e;
  *count = (uint32_t)n;
  return 0;
}

/* ---- operations: plan -------------------------------------------------------------------- */

/* The state's idle operation object, set up for req. The fields that only some requests use
 * are set by their planning (the ones op_free releases are empty already). */
static rm_op *op_new(rm_state *st, mb_msg *req, rm_region *r) {
  rm_op *op = &st->op_buf;
  op->req = req;
  op->kind = req->kind;
  op->region = r;
  op->nsh = 0;
  for (rm_region *s = r; s != NULL; s = s->next)
    op->sh[op->nsh++].region = s;
  op->ncalls = op->nsteps = op->step = op->pending = 0;
  op->undoing = false;
  op->published = false;
  op->err = 0;
  return op;
}

/* Drops m (or nothing), keeping its memory for the next mapping_new if there is room. */
static void mapping_recycle(rm_state *st, rm_mapping *m) {
  if (m != NULL && st->free_mapping == NULL) {
    mb_object_unref(m->obj);
    st->free_mapping = m;
  } else {
    rm__mapping_free(m);
  }
}

/* Releases what the operation holds (not the reusable calls array): it is idle again. */
MB_HOT static void op_free(rm_op *op) {
  for (size_t i = 0; i < op->nsh; i++) {
    rm_sh *sh = &op->sh[i];
    mb__vis_abort(&sh->diff);
    mapping_recycle(state_of(op), sh->mapping);
    mb__free(sh->spare);
    *sh = (rm_sh){0};
  }
  op->nsh = 0;
  rm__prot_op_free(op);
  if (op->fwd != NULL) { /* set before the views are filled (an access change, a commit) */
    rm__view_clear(&op->own_old); /* kept, like the calls array, for the next operation */
    rm__view_clear(&op->own_new);
    op->fwd = op->inv = NULL;
  }
  op->req = NULL;
}

static int op_grow_calls(rm_op *op) {
  rm_call *calls = mb__grow(op->calls, &op->cap, op->ncalls, sizeof *calls, 16);
  if (calls == NULL)
    return MB_ENOMEM;
  op->calls = calls;
  return 0;
}

/* Appends c to the plan: 0, or MB_ENOMEM. */
MB_HOT int rm__op_add_call(rm_op *op, rm_call c) {
  if (op->ncalls == op->cap && op_grow_calls(op) != 0)
    return MB_ENOMEM;
  c.op = op;
  op->calls[op->ncalls++] = c;
  return 0;
}

/* Closes the step being planned (empty steps are dropped). */
void rm__op_end_step(rm_op *op) {
  if (op->ncalls == op->step_at[op->nsteps])
    return;
  assert(op->nsteps < RM_MAX_STEPS);
  op->step_at[++op->nsteps] = op->ncalls;
}

/* Where a partition shows view-space address vs (inside view `view`): its own address, or
 * UINT64_MAX when it does not show that view. */
static uint64_t part_addr(const rm_state *st, const rm_part *p, unsigned view, uint64_t vs) {
  uint64_t g = vs - rm_vs(st, view, 0);
  if (p->vtl == view)
    return g;
  return p->alias && view == 0 ? st->cfg.geom.alias + g : UINT64_MAX;
}

/* A call over view-space [vs, vs + size) to partition p, in its own addresses (none when it
 * does not show that view). */
MB_HOT int rm__plan_pm_one(rm_state *st, rm_op *op, const rm_part *p, int kind,
                           uint64_t vs, uint64_t size, bool writable) {
  unsigned view = rm_view_at(st, vs);
  uint64_t at = part_addr(st, p, view, vs);
  if (at == UINT64_MAX)
    return 0;
  uint8_t *base = st->cfg.primary ? st->cfg.primary[view] : NULL;
  return rm__op_add_call(op, (rm_call){.kind = (uint8_t)kind, .writable = writable,
                                       .to = p->addr, .gpa = at, .size = size,
                                       .host = base ? base + (vs - rm_vs(st, view, 0)) : NULL});
}

int rm__plan_pm(rm_state *st, rm_op *op, int kind, uint64_t gpa, uint64_t size,
                bool writable) {
  for (size_t i = 0; i < st->nparts; i++) {
    int rc = rm__plan_pm_one(st, op, &st->parts[i], kind, gpa, size, writable);
    if (rc)
      return rc;
  }
  return 0;
}

/* An MM call over [start, end) for src's mappings, when it has any there. */
static int plan_mm(rm_state *st, rm_op *op, int kind, uint64_t start, uint64_t end,
                   rm_region *src, bool writable) {
  rm_mapping *maps = src ? first_mapping(src, start, end) : NULL;
  if (maps == NULL)
    return 0;
  return rm__op_add_call(op, (rm_call){.kind = (uint8_t)kind, .writable = writable,
                                   .to = st->cfg.mapping_manager, .gpa = start,
                                   .size = end - start, .maps = maps});
}

/* The access a region shows with once the operation is done. */
static bool new_access(const rm_op *op, const rm_region *r) {
  return op->region && r->id == op->region->id && op->kind == RM_REGION_MAP ? op->writable
                                                                           : r->writable;
}

static mb__vis_region *seg_winner(const mb__vis_seg *seg, bool new_one) {
  return new_one ? seg->new_winner : seg->old_winner;
}

/* The end (exclusive index) of the run of touching segments from i with i's old or new
 * winner. */
static size_t seg_run(const mb__vis_diff *d, size_t i, bool new_one) {
  size_t j = i + 1;
  while (j < d->nsegs && d->segs[j].start == d->segs[j - 1].end &&
         seg_winner(&d->segs[j], new_one) == seg_winner(&d->segs[i], new_one))
    j++;
  return j;
}

/* PM calls for a diff's removed (add false) or added pieces. */
static int plan_pieces(rm_state *st, rm_op *op, const mb__vis_diff *d, bool add) {
  int rc = 0;
  size_t n = add ? d->nadded : d->nremoved;
  for (size_t i = 0; i < n && !rc; i++) {
    mb__vis_piece *p = add ? d->added[i] : d->removed[i];
    rm_region *r = region_of_vis(p->region);
    rc = rm__plan_pm(st, op, add ? CALL_PM_MAP : CALL_PM_UNMAP, p->node.start,
                     p->node.end - p->node.start, add ? new_access(op, r) : r->writable);
  }
  return rc;
}

/* MM calls for a diff's segments: each covers a run of touching segments with one old
 * (unmap) or one new (map) winner. */
static int plan_segs(rm_state *st, rm_op *op, const mb__vis_diff *d, bool map) {
  int rc = 0;
  for (size_t i = 0, j; i < d->nsegs && !rc; i = j) {
    j = seg_run(d, i, map);
    rm_region *r = region_of_vis(seg_winner(&d->segs[i], map));
    if (r != NULL)
      rc = plan_mm(st, op, map ? CALL_MM_MAP : CALL_MM_UNMAP, d->segs[i].start,
                   d->segs[j - 1].end, r, map ? new_access(op, r) : r->writable);
  }
  return rc;
}

/* The four steps of a visibility change (every shadow's diff in each step). */
static int plan_visibility(rm_state *st, rm_op *op) {
  int rc = 0;
  for (int step = 0; step < 4; step++) {
    for (size_t k = 0; k < op->nsh && !rc; k++) {
      const mb__vis_diff *d = &op->sh[k].diff;
      rc = step == 0 || step == 3 ? plan_pieces(st, op, d, step == 3)
                                  : plan_segs(st, op, d, step == 2);
    }
    rm__op_end_step(op);
  }
  return rc;
}

/* The mappings r shows in [s, e), at its old access (own_old) and at the new (own_new). */
static int access_entries(rm_op *op, rm_region *r, uint64_t s, uint64_t e) {
  int rc = rm__view_push_mappings(&op->own_old, r, s, e, r->writable);
  return rc ? rc : rm__view_push_mappings(&op->own_new, r, s, e, op->writable);
}

/* One step of an access change for shadow r: its pieces in every partition, or (mm) its
 * mappings in the mappers. */
static int plan_access_of(rm_state *st, rm_op *op, rm_region *r, bool mm) {
  const mb__vis_set *v = vis_of(st, r);
  uint64_t s = r_start(r), e = r_end(r);
  int rc = 0;
  mb__vis_piece *p;
  for (p = mb__vis_first_piece_of(v, &r->vis, s, e); p && !rc;
       p = mb__vis_next_piece_of(p, &r->vis, s, e)) {
    uint64_t ps = p->node.start, pe = p->node.end;
    if (!mm) {
      rc = rm__plan_pm(st, op, CALL_PM_ACCESS, ps, pe - ps, op->writable);
    } else if (first_mapping(r, ps, pe) != NULL) {
      rc = access_entries(op, r, ps, pe);
      if (rc == 0)
        rc = rm__op_add_call(op, (rm_call){.kind = CALL_MM_REPLACE,
                                           .to = st->cfg.mapping_manager, .gpa = ps,
                                           .size = pe - ps});
    }
  }
  return rc;
}

/* An access change of a mapped region, in place (nothing is unmapped): each of its pieces
 * changes access in every partition (one request each: a KVM slot's delete and add), then in
 * the mappers (MM_REPLACE by the same mappings at the new access: an mprotect in each mapper,
 * which waits only for the locks that need the access it takes away). */
static int plan_access(rm_state *st, rm_op *op) {
  int rc = 0;
  op->fwd = &op->own_new;
  op->inv = &op->own_old;
  for (int mm = 0; mm < 2; mm++) {
    for (size_t k = 0; k < op->nsh && !rc; k++)
      rc = plan_access_of(st, op, op->sh[k].region, mm);
    rm__op_end_step(op);
  }
  return rc;
}

/* ---- operations: run, undo, finish ------------------------------------------------------- */

static void op_next(mb_actor *self, rm_state *st);

/* The entries of an MM_MAP or MM_REPLACE answered without being delivered: still ours. */
static void entries_back(mb_msg *reply) {
  mm_map_msg *mm = mm_map_of(reply);
  mm_replace_msg *mr = mm_replace_of(reply);
  if (reply->status != MB_EGONE && reply->status != MB_ESTOPPED)
    return;
  if (mm != NULL && mm->entries != NULL)
    entries_free(mm->entries, mm->count), mm->entries = NULL;
  if (mr != NULL && mr->entries != NULL)
    entries_free(mr->entries, mr->count), mr->entries = NULL;
}

MB_HOT static void on_call_reply(mb_actor *self, mb_msg *reply, void *ctx) {
  rm_call *c = ctx;
  rm_op *op = c->op;
  int status = reply->status;
  if (status != 0) {
    entries_back(reply);
    if (reply->proto == &pm_protocol && status == MB_EGONE && op->kind != RM_PARTITION_ADD)
      status = 0;
  }
  if (!op->undoing) {
    if (status == 0)
      c->done = true;
    else if (op->err == 0)
      op->err = status;
  }
  if (--op->pending == 0)
    op_next(self, state_of(op));
}

/* The MM_MAP or MM_REPLACE message of a call of that kind, with its entries (NULL: *rc). */
MB_HOT static mb_msg *entries_msg(const rm_call *c, int kind, int *rc) {
  mb_map_entry *e;
  uint32_t n;
  mb_msg *msg = NULL;
  if (kind == CALL_MM_MAP) {
    *rc = build_entries(c, c->maps, c->one, &e, &n);
    mm_map_msg *m = *rc == 0 ? mm_map_new() : NULL;
    if (m)
      m->entries = e, m->count = n, msg = &m->hdr;
  } else {
    if (c->maps != NULL) /* a mapping replace: the new mapping, or back to the old ones */
      *rc = kind == CALL_MM_REPLACE ? build_entries(c, c->maps, true, &e, &n)
                                    : build_entries(c, c->old, false, &e, &n);
    else /* a commit: the views */
      *rc = rm__view_clip(kind == CALL_MM_REPLACE ? c->op->fwd : c->op->inv, c->gpa,
                          c->gpa + c->size, &e, &n);
    mm_replace_msg *m = *rc == 0 ? mm_replace_new() : NULL;
    if (m)
      m->gpa = c->gpa, m->size = c->size, m->entries = e, m->count = n, msg = &m->hdr;
  }
  if (msg == NULL && *rc == 0) {
    entries_free(e, n);
    *rc = MB_ENOMEM;
  }
  return msg;
}

/* Sends one call (or its inverse). */
MB_HOT static void call_send(mb_actor *self, rm_call *c, bool inverse) {
  rm_op *op = c->op;
  int kind = c->kind ^ inverse;
  mb_msg *msg = NULL;
  int rc = MB_ENOMEM;
  if (kind == CALL_PM_MAP) {
    pm_map_msg *m = pm_map_new();
    if (m)
      m->gpa = c->gpa, m->size = c->size, m->writable = c->writable, m->host = c->host,
      msg = &m->hdr;
  } else if (kind == CALL_PM_UNMAP) {
    pm_unmap_msg *m = pm_unmap_new();
    if (m)
      m->gpa = c->gpa, m->size = c->size, msg = &m->hdr;
  } else if (kind == CALL_MM_UNMAP) {
    mm_unmap_msg *m = mm_unmap_new();
    if (m)
      m->gpa = c->gpa, m->size = c->size, msg = &m->hdr;
  } else if (kind == CALL_PM_ACCESS || kind == CALL_PM_ACCESS_BACK) {
    pm_access_set_msg *m = pm_access_set_new();
    if (m)
      m->gpa = c->gpa, m->size = c->size, msg = &m->hdr,
      m->writable = kind == CALL_PM_ACCESS ? c->writable : !c->writable;
  } else if (kind == CALL_NOTHING) {
    return;
  } else if (kind >= CALL_PM_PROTECT && kind <= CALL_MM_PROTECT_BACK) {
    msg = rm__prot_msg(state_of(op), c, kind);
  } else if (kind >= CALL_PM_DIRTY_START) {
    msg = rm__dirty_msg(state_of(op), c, kind);
  } else {
    msg = entries_msg(c, kind, &rc);
  }
  if (msg == NULL) {
    if (!inverse && op->err == 0)
      op->err = rc;
    return;
  }
  op->pending++;
  mb_call(self, c->to, msg, on_call_reply, c);
}

static void op_commit(rm_state *st, rm_op *op);

/* ---- the published guest physical map (gpa_map.h) -------------------------------------- */

/* An access change of a mapped region: no piece comes or goes, all of its pieces change. */
static bool is_access_change(const rm_op *op) {
  const rm_region *r = op->region;
  return op->kind == RM_REGION_MAP && op->sh[0].diff.nremoved == 0 &&
         op->sh[0].diff.nadded == 0 && r->vis.mapped && r->writable != op->writable;
}

static void widen(mb_range *span, uint64_t a, uint64_t b) {
  if (span->start >= span->end)
    *span = (mb_range){a, b};
  span->start = min64(span->start, a);
  span->end = max64(span->end, b);
}

/* The range shadow k's part may change. */
static void sh_span(const rm_op *op, size_t k, mb_range *span) {
  const rm_sh *sh = &op->sh[k];
  const mb__vis_diff *d = &sh->diff;
  const rm_region *r = sh->region;
  if (d->nremoved > 0)
    widen(span, d->removed[0]->node.start, d->removed[d->nremoved - 1]->node.end);
  if (d->nadded > 0)
    widen(span, d->added[0]->node.start, d->added[d->nadded - 1]->node.end);
  if (d->nremoved > 0 || d->nadded > 0)
    return;
  uint64_t base = r_start(r) - r_start(op->region);
  if (op->kind == RM_MAPPING_ADD && sh->mapping)
    widen(span, sh->mapping->node.start, sh->mapping->node.end);
  else if (op->kind == RM_MAPPING_REMOVE)
    widen(span, base + op->start, base + op->end);
  else if (is_access_change(op))
    widen(span, r_start(r), r_end(r));
}

/* The view-space range the operation may change, and how many ranges it adds (none: empty). */
MB_HOT static mb_range op_span(const rm_op *op, size_t *adds) {
  if (op->kind == RM_TXN_COMMIT) {
    mb_range span = rm__txn_span(op, adds);
    rm__prot_widen(state_of((rm_op *)op), op, &span, adds); /* its protections' covers */
    return span;
  }
  if (op->kind == RM_PROTECT)
    return rm__prot_span(state_of((rm_op *)op), op, adds);
  mb_range span = {0, 0};
  *adds = 0;
  for (size_t k = 0; k < op->nsh; k++) {
    *adds += op->sh[k].diff.nadded;
    sh_span(op, k, &span);
  }
  return span;
}

/* Publishes the operation as busy before anything is sent: 0 or MB_ENOMEM. */
MB_HOT static int gpa_begin(rm_state *st, rm_op *op) {
  size_t adds;
  mb_range span = op_span(op, &adds);
  if (!st->cfg.gpa_map || span.start >= span.end)
    return 0;
  if (mb_gpa_map_begin(st->cfg.gpa_map, span.start, span.end, adds) != 0)
    return MB_ENOMEM;
  op->published = true;
  return 0;
}

typedef struct gpa_pass {
  mb_gpa_map *g;
  bool add; /* drops first, then adds */
} gpa_pass;

static void gpa_piece(void *ctx, const rm_piece *p, bool add) {
  gpa_pass *pass = ctx;
  if (add != pass->add)
    return;
  if (add)
    mb_gpa_map_add(pass->g, p->start, p->end, p->writable);
  else
    mb_gpa_map_drop(pass->g, p->start);
}

/* One shadow's changes of the visible map. */
MB_HOT static void gpa_end_sh(rm_state *st, rm_op *op, rm_sh *sh) {
  mb_gpa_map *g = st->cfg.gpa_map;
  const mb__vis_diff *d = &sh->diff;
  for (size_t i = 0; i < d->nremoved; i++)
    mb_gpa_map_drop(g, d->removed[i]->node.start);
  for (size_t i = 0; i < d->nadded; i++)
    mb_gpa_map_add(g, d->added[i]->node.start, d->added[i]->node.end,
                   new_access(op, region_of_vis(d->added[i]->region)));
  if (!is_access_change(op))
    return;
  rm_region *r = sh->region;
  mb__vis_piece *p;
  for (p = mb__vis_first_piece_of(vis_of(st, r), &r->vis, r_start(r), r_end(r)); p;
       p = mb__vis_next_piece_of(p, &r->vis, r_start(r), r_end(r)))
    mb_gpa_map_access(g, p->node.start, op->writable);
}

/* Publishes the operation's end: its changes of the visible map if it succeeded (before the
 * commit releases the diff), and the end of busy. */
MB_HOT static void gpa_end(rm_state *st, rm_op *op, bool ok) {
  mb_gpa_map *g = st->cfg.gpa_map;
  if (!op->published)
    return;
  for (int add = 0; ok && op->kind == RM_TXN_COMMIT && add < 2; add++)
    rm__txn_each_piece(op, gpa_piece, &(gpa_pass){g, add});
  for (size_t k = 0; ok && k < op->nsh; k++)
    gpa_end_sh(st, op, &op->sh[k]);
  if (ok)
    rm__prot_publish(st, op);
  mb_gpa_map_end(g);
  op->published = false;
}

MB_HOT static void op_finish(rm_state *st, rm_op *op, int err) {
  if (err == 0 && rm__is_dirty(op->kind))
    err = rm__dirty_end(st, op);
  if (err != 0 && op->kind == RM_PROTECT)
    rm__prot_undo(st, op);
  gpa_end(st, op, err == 0);
  if (err == 0)
    op_commit(st, op);
  if (op->kind == RM_TXN_COMMIT)
    rm__txn_end(st, err == 0); /* kept, or everything back as it was at its begin */
  mb_msg *req = op->req;
  op_free(op); /* before the reply: the operation object is free for the next request */
  st->op = NULL;
  mb_reply(req, err);
}

/* Moves the operation on once every reply of the current step is in: sends the next step
 * forward or, undoing, the inverses of the previous step's completed calls in reverse order. */
MB_HOT static void op_next(mb_actor *self, rm_state *st) {
  rm_op *op = st->op;
  do {
    if (!op->undoing && op->err != 0)
      op->undoing = true; /* op->step is one past the failed step: undo from there */
    if (op->step == (op->undoing ? 0 : op->nsteps)) {
      op_finish(st, op, op->err);
      return;
    }
    size_t step = op->undoing ? --op->step : op->step++;
    rm_call *begin = &op->calls[op->step_at[step]], *end = &op->calls[op->step_at[step + 1]];
    op->pending++; /* held while sending: replies never complete the step under our feet */
    if (op->undoing) {
      for (rm_call *c = end; c-- > begin;)
        if (c->done)
          call_send(self, c, true);
    } else {
      for (rm_call *c = begin; c < end && op->err == 0; c++)
        call_send(self, c, false);
    }
  } while (--op->pending == 0);
}

/* Starts a planned operation (rc: the planning result). */
static void op_start(mb_actor *self, rm_state *st, rm_op *op, int rc) {
  if (rc == 0)
    rc = gpa_begin(st, op);
  if (rc != 0) {
    op_finish(st, op, rc);
    return;
  }
  st->op = op;
  op_next(self, st);
}

/* ---- commit: the manager's own state, once every call succeeded ------------------------- */

/* Removes every mapped byte of r in [a, b): mappings inside go, straddlers keep their
 * outside parts (a mapping around the whole range becomes two: the spare takes the right). */
static void mappings_cut(rm_region *r, uint64_t a, uint64_t b, rm_mapping **spare) {
  mb_rtree_node *n = mb_rtree_first_overlap(&r->mappings, a, b);
  while (n != NULL) {
    mb_rtree_node *next = mb_rtree_next_overlap(n, a, b);
    rm_mapping *m = mapping_of(n);
    uint64_t s = n->start, e = n->end;
    mb_rtree_remove(&r->mappings, n);
    if (s < a && e > b) {
      rm_mapping *right = *spare;
      *spare = NULL;
      *right = (rm_mapping){.obj = mb_object_ref(m->obj), .obj_off = m->obj_off + (b - s),
                            .writable = m->writable};
      mb_rtree_insert(&r->mappings, &right->node, b, e);
      mb_rtree_insert(&r->mappings, &m->node, s, a);
    } else if (s < a) {
      mb_rtree_insert(&r->mappings, &m->node, s, a);
    } else if (e > b) {
      m->obj_off += b - s;
      mb_rtree_insert(&r->mappings, &m->node, b, e);
    } else {
      rm__mapping_free(m);
    }
    n = next;
  }
}

/* A replace of exactly one mapping's range (a DAX chunk's) changes that mapping in place:
 * the tree keeps its shape. True if it did; nm then holds the old backing. */
static bool mapping_swap(rm_region *r, rm_mapping *nm) {
  rm_mapping *m = first_mapping(r, nm->node.start, nm->node.end);
  if (m == NULL || m->node.start != nm->node.start || m->node.end != nm->node.end)
    return false;
  rm_mapping old = *m;
  m->obj = nm->obj, m->obj_off = nm->obj_off, m->writable = nm->writable;
  nm->obj = old.obj, nm->obj_off = old.obj_off, nm->writable = old.writable;
  return true;
}

/* Shadow sh's part of a mapping remove or replace ([a, b): its view-space range). */
static void commit_mappings(rm_op *op, rm_sh *sh, uint64_t a, uint64_t b) {
  rm_region *r = sh->region;
  if (op->kind == RM_MAPPING_REPLACE && mapping_swap(r, sh->mapping))
    return; /* sh->mapping holds the old one now: op_free drops it */
  mappings_cut(r, a, b, &sh->spare);
  if (op->kind == RM_MAPPING_REPLACE) {
    mb_rtree_insert(&r->mappings, &sh->mapping->node, a, b);
    sh->mapping = NULL;
  }
}

static void op_commit_sh(rm_state *st, rm_op *op, rm_sh *sh) {
  rm_region *r = sh->region;
  uint64_t base = r_start(r) - r_start(op->region);
  switch (op->kind) {
  case RM_REGION_MAP:
    r->writable = op->writable;
    /* fall through */
  case RM_REGION_UNMAP:
  case RM_REGION_REMOVE:
    mb__vis_commit(vis_of(st, r), &sh->diff);
    break;
  case RM_MAPPING_ADD:
    mb_rtree_insert(&r->mappings, &sh->mapping->node, sh->mapping->node.start,
                    sh->mapping->node.end);
    sh->mapping = NULL;
    break;
  case RM_MAPPING_REMOVE:
  case RM_MAPPING_REPLACE:
    commit_mappings(op, sh, base + op->start, base + op->end);
    break;
  default:
    break;
  }
}

static void op_commit(rm_state *st, rm_op *op) {
  for (size_t k = 0; k < op->nsh; k++)
    op_commit_sh(st, op, &op->sh[k]);
  if (op->kind == RM_REGION_REMOVE) {
    rm__region_free(st, op->region);
    op->region = NULL;
    for (; op->nsh > 0; op->nsh--)
      op->sh[op->nsh - 1] = (rm_sh){0}; /* committed, and freed with the region */
  } else if (op->kind == RM_PARTITION_ADD) {
    st->parts[st->nparts++] = op->partition; /* room reserved when planned */
  }
}

/* ---- requests ------------------------------------------------------------------------------- */

/* The highest view the manager has: it holds every region. */
static unsigned top_view(const rm_state *st) {
  unsigned v = MB_VTL_MAX;
  while (v > 0 && !rm_has_view(st, v))
    v--;
  return v;
}

/* A region's shadows, unlinked: one per view from its VTL's up (NULL: out of memory). */
static rm_region *shadows_new(rm_state *st, const rm_region_add_msg *m) {
  rm_region *head = NULL, **at = &head;
  for (unsigned v = m->vtl; v <= MB_VTL_MAX; v++) {
    if (!rm_has_view(st, v))
      continue;
    rm_region *r = mb__calloc(1, sizeof *r);
    if (r == NULL) {
      rm__region_destroy(head);
      return NULL;
    }
    *r = (rm_region){.id = st->next_id, .device = m->device, .vtl = m->vtl, .view = (uint8_t)v};
    memcpy(r->name, m->name, sizeof r->name);
    r->name[sizeof r->name - 1] = '\0';
    mb_rtree_init(&r->mappings);
    *at = r;
    at = &r->next;
  }
  return head;
}

static int region_add(rm_state *st, rm_region_add_msg *m) {
  mb_range range;
  /* A name that fills the field without its NUL is too long (63 bytes at most): the sender
   * passes it cut to the field's size, unterminated, so that it is refused, never cut. */
  if (memchr(m->name, '\0', sizeof m->name) == NULL)
    return MB_E_INVALID;
  if (mb_range_make(m->gpa, m->size, &range) != 0 || range.end > st->cfg.max_addr ||
      m->vtl > MB_VTL_MAX || !rm_has_view(st, m->vtl))
    return MB_E_INVALID;
  unsigned top = top_view(st); /* the overlap policy holds for all regions together */
  int rc = mb__vis_admit(&st->vis[top], rm_vs(st, top, range.start), rm_vs(st, top, range.end),
                         m->prio);
  if (rc)
    return rc;
  if (st->next_id == 0)
    return MB_E_INVALID; /* every id was used once: ids are never reused */
  rm_region *r = shadows_new(st, m);
  if (r == NULL)
    return MB_ENOMEM;
  st->next_id++;
  for (rm_region *s = r; s != NULL; s = s->next)
    mb__vis_insert(vis_of(st, s), &s->vis, rm_vs(st, s->view, range.start),
                   rm_vs(st, s->view, range.end), m->prio);
  mb_rtree_insert(&st->ids, &r->by_id, r->id, (uint64_t)r->id + 1);
  if (st->txn.open && rm__txn_region_added(st, r) != 0) {
    rm__region_free(st, r);
    return MB_ENOMEM;
  }
  m->id = r->id;
  return 0;
}

/* Region map, unmap and remove. */
static int plan_region(rm_state *st, rm_op *op) {
  rm_region *r = op->region;
  if (op->kind == RM_REGION_MAP) {
    op->writable = rm_region_map_of(op->req)->writable;
    if (r->vis.mapped)
      return r->writable == op->writable ? 0 : plan_access(st, op);
  }
  for (size_t k = 0; k < op->nsh; k++) {
    rm_sh *sh = &op->sh[k];
    if (mb__vis_plan(vis_of(st, sh->region), &sh->region->vis, op->kind == RM_REGION_MAP,
                     &sh->diff) != 0)
      return MB_ENOMEM;
  }
  return plan_visibility(st, op);
}

/* The absolute guest range of [offset, offset + size) in r: MB_E_INVALID unless it is
 * non-empty, page aligned and inside the region. */
MB_HOT static int mapping_range(const rm_region *r, uint64_t offset, uint64_t size, mb_range *abs) {
  mb_range rel;
  if (mb_range_make(offset, size, &rel) != 0 || rel.end > r_end(r) - r_start(r))
    return MB_E_INVALID;
  abs->start = r_start(r) + rel.start;
  abs->end = r_start(r) + rel.end;
  return 0;
}

/* The fields of a mapping add or replace request (they have the same layout). */
static rm_mapping_add_msg *mapping_fields(mb_msg *req) {
  if (req->kind == RM_MAPPING_REPLACE)
    return (rm_mapping_add_msg *)(void *)rm_mapping_replace_of(req);
  return rm_mapping_add_of(req);
}

/* The new mapping of an add or a replace of r, checked (mappings in its range are an overlap
 * only for an add) and not linked anywhere yet. */
MB_HOT static int mapping_new(rm_state *st, rm_region *r, mb_msg *req, rm_mapping **out) {
  rm_mapping_add_msg *m = mapping_fields(req);
  mb_range abs;
  if (m->obj == NULL || mapping_range(r, m->offset, m->size, &abs) != 0 ||
      mb_object_check_range(m->obj, m->obj_off, m->size) != 0 ||
      ((abs.start | abs.end) & (mb_object_page_size(m->obj) - 1)) != 0) /* hugetlb: whole pages */
    return MB_E_INVALID;
  if (req->kind == RM_MAPPING_ADD && first_mapping(r, abs.start, abs.end))
    return MB_E_OVERLAP;
  if (m->writable && !mb_object_writable(m->obj))
    return MB_E_READONLY; /* an object only readable (a sealed memfd, an O_RDONLY file) */
  rm_mapping *nm = st->free_mapping != NULL ? st->free_mapping : mb__calloc(1, sizeof *nm);
  if (nm == NULL)
    return MB_ENOMEM;
  st->free_mapping = NULL;
  *nm = (rm_mapping){.obj = m->obj_ref ? m->obj : mb_object_ref(m->obj)};
  m->obj_ref = false; /* taken: the first shadow's */
  nm->obj_off = m->obj_off;
  nm->writable = m->writable;
  nm->node.start = abs.start;
  nm->node.end = abs.end;
  *out = nm;
  return 0;
}

/* Shadow r's MM_MAP calls for new mapping nm: its visible parts (partitions already map
 * the whole pieces). */
MB_HOT static int plan_mapping_add_of(rm_state *st, rm_op *op, rm_region *r, rm_mapping *nm) {
  mb__vis_piece *p;
  uint64_t a = nm->node.start, b = nm->node.end;
  for (p = mb__vis_first_piece_of(vis_of(st, r), &r->vis, a, b); p;
       p = mb__vis_next_piece_of(p, &r->vis, a, b)) {
    uint64_t s = max64(p->node.start, a), e = min64(p->node.end, b);
    int rc = rm__op_add_call(op, (rm_call){.kind = CALL_MM_MAP, .writable = r->writable,
                                           .to = st->cfg.mapping_manager, .gpa = s,
                                           .size = e - s, .maps = nm, .one = true});
    if (rc)
      return rc;
  }
  return 0;
}

/* Each shadow's new mapping of an add or a replace: 0, or the request's error. */
MB_HOT static int mappings_new(rm_op *op) {
  for (size_t k = 0; k < op->nsh; k++) {
    int rc = mapping_new(state_of(op), op->sh[k].region, op->req, &op->sh[k].mapping);
    if (rc)
      return rc;
  }
  op->start = op->sh[0].mapping->node.start;
  op->end = op->sh[0].mapping->node.end;
  return 0;
}

static int plan_mapping_add(rm_state *st, rm_op *op) {
  int rc = mappings_new(op);
  for (size_t k = 0; k < op->nsh && !rc; k++)
    rc = plan_mapping_add_of(st, op, op->sh[k].region, op->sh[k].mapping);
  rm__op_end_step(op);
  return rc;
}

/* Shadow r's MM_UNMAP calls for its visible mapped bytes in [a, b): its mappings clipped to
 * its pieces there. */
MB_HOT static int plan_mapping_remove_of(rm_state *st, rm_op *op, rm_region *r,
                                         uint64_t a, uint64_t b) {
  mb__vis_piece *p;
  for (p = mb__vis_first_piece_of(vis_of(st, r), &r->vis, a, b); p;
       p = mb__vis_next_piece_of(p, &r->vis, a, b)) {
    uint64_t ps = max64(p->node.start, a), pe = min64(p->node.end, b);
    mb_rtree_node *n;
    mb_rtree_for_each_overlap(n, &r->mappings, ps, pe) {
      uint64_t s = max64(n->start, ps), e = min64(n->end, pe);
      rm_call *last = op->ncalls ? &op->calls[op->ncalls - 1] : NULL;
      if (last != NULL && last->gpa + last->size == s) {
        last->size += e - s;
        continue;
      }
      int rc = rm__op_add_call(op, (rm_call){.kind = CALL_MM_UNMAP, .writable = r->writable,
                                             .to = st->cfg.mapping_manager, .gpa = s,
                                             .size = e - s, .maps = mapping_of(n)});
      if (rc)
        return rc;
    }
  }
  return 0;
}

/* A spare node per shadow whose mapping straddles both edges of [a, b) (head view space). */
MB_HOT static int spares_new(rm_op *op, uint64_t a, uint64_t b) {
  for (size_t k = 0; k < op->nsh; k++) {
    rm_region *r = op->sh[k].region;
    uint64_t base = r_start(r) - r_start(op->region);
    rm_mapping *around = first_mapping(r, base + a, base + b);
    if (around && around->node.start < base + a && around->node.end > base + b &&
        (op->sh[k].spare = mb__malloc(sizeof *op->sh[k].spare)) == NULL)
      return MB_ENOMEM;
  }
  return 0;
}

static int plan_mapping_remove(rm_state *st, rm_op *op) {
  rm_mapping_remove_msg *m = rm_mapping_remove_of(op->req);
  rm_region *r = op->region;
  mb_range abs;
  if (mapping_range(r, m->offset, m->size, &abs) != 0)
    return MB_E_INVALID;
  op->start = abs.start;
  op->end = abs.end;
  if (!first_mapping(r, abs.start, abs.end))
    return 0; /* nothing mapped there: a no-op */
  int rc = spares_new(op, abs.start, abs.end);
  for (size_t k = 0; k < op->nsh && !rc; k++) {
    rm_region *s = op->sh[k].region;
    uint64_t base = r_start(s) - r_start(r);
    rc = plan_mapping_remove_of(st, op, s, base + abs.start, base + abs.end);
  }
  rm__op_end_step(op);
  return rc;
}

/* Shadow sh's MM_REPLACE calls, one per visible piece of its range. */
static int plan_mapping_replace_of(rm_state *st, rm_op *op, rm_sh *sh) {
  rm_region *r = sh->region;
  uint64_t a = sh->mapping->node.start, b = sh->mapping->node.end;
  int rc = 0;
  mb__vis_piece *p;
  for (p = mb__vis_first_piece_of(vis_of(st, r), &r->vis, a, b); p && !rc;
       p = mb__vis_next_piece_of(p, &r->vis, a, b)) {
    uint64_t s = max64(p->node.start, a), e = min64(p->node.end, b);
    rc = rm__op_add_call(op, (rm_call){.kind = CALL_MM_REPLACE, .writable = r->writable,
                                       .to = st->cfg.mapping_manager, .gpa = s, .size = e - s,
                                       .maps = sh->mapping, .one = true,
                                       .old = first_mapping(r, s, e)});
  }
  return rc;
}

/* One step of MM_REPLACE calls, one per visible piece of the range in each view: partitions
 * map the partitions' mappers, which the mapping manager replaces too, so they need no
 * call. */
static int plan_mapping_replace(rm_state *st, rm_op *op) {
  int rc = mappings_new(op);
  if (rc == 0)
    rc = spares_new(op, op->start, op->end);
  for (size_t k = 0; k < op->nsh && !rc; k++)
    rc = plan_mapping_replace_of(st, op, &op->sh[k]);
  rm__op_end_step(op);
  return rc;
}

/* ---- a DAX chunk's replace ---------------------------------------------------------------
 *
 * The replace of exactly one mapping by one of the same range, in a region without aliases,
 * all of it visible in one piece, outside a transaction: what plan_mapping_replace plans
 * then is one MM_REPLACE call with one entry. This sends that call at once, without the
 * plan's steps, and finishes as any operation does (op_finish: the commit swaps the mapping
 * in place; a failure, where the mapping manager changed nothing, commits nothing). Every
 * other replace is planned. */

MB_HOT static void on_chunk_reply(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  entries_back(reply);
  op_finish(state_of(ctx), ctx, reply->status);
}

/* Sends the chunk's call for op (its new mapping made, [a, b) in view space). */
MB_HOT static void chunk_send(mb_actor *self, rm_state *st, rm_op *op, uint64_t a, uint64_t b) {
  rm_call c = {.kind = CALL_MM_REPLACE, .writable = op->region->writable, .gpa = a,
               .size = b - a, .maps = op->sh[0].mapping, .one = true, .op = op};
  int rc;
  mb_msg *m = entries_msg(&c, CALL_MM_REPLACE, &rc);
  if (m == NULL)
    op_finish(st, op, rc);
  else
    mb_call(self, st->cfg.mapping_manager, m, on_chunk_reply, op);
}

/* Takes msg (a replace of region r) if it is a chunk's: true once it is on its way or answered. */
MB_HOT static bool chunk_replace(mb_actor *self, rm_state *st, rm_region *r, mb_msg *msg) {
  rm_mapping_replace_msg *m = rm_mapping_replace_of(msg);
  mb_range abs;
  if (st->txn.open || r->next != NULL || mapping_range(r, m->offset, m->size, &abs) != 0)
    return false;
  rm_mapping *old = first_mapping(r, abs.start, abs.end);
  mb__vis_piece *p = mb__vis_first_piece_of(vis_of(st, r), &r->vis, abs.start, abs.end);
  if (old == NULL || old->node.start != abs.start || old->node.end != abs.end || p == NULL ||
      p->node.start > abs.start || p->node.end < abs.end)
    return false;
  rm_mapping *nm;
  int rc = mapping_new(st, r, msg, &nm); /* its errors are the planned replace's */
  if (rc != 0) {
    mb_reply(msg, rc);
    return true;
  }
  rm_op *op = op_new(st, msg, r);
  op->sh[0].mapping = nm;
  op->start = abs.start;
  op->end = abs.end;
  mb_msg_keep(msg);
  st->op = op;
  chunk_send(self, st, op, abs.start, abs.end);
  return true;
}

static bool part_eq(const rm_part *p, mb_addr a) {
  return addr_eq(p->addr, a);
}

/* PM_MAP calls of every piece of view `view` to the new partition. */
static int plan_partition_view(rm_state *st, rm_op *op, unsigned view) {
  const mb__vis_set *v = &st->vis[view];
  mb__vis_piece *p;
  for (p = mb__vis_first_piece(v, 0, UINT64_MAX); p; p = mb__vis_next_piece(p, 0, UINT64_MAX)) {
    int rc = rm__plan_pm_one(st, op, &op->partition, CALL_PM_MAP, p->node.start,
                             p->node.end - p->node.start, region_of_vis(p->region)->writable);
    if (rc)
      return rc;
  }
  return 0;
}

MB_COLD static int plan_partition_add(rm_state *st, rm_op *op) {
  rm_partition_add_msg *m = rm_partition_add_of(op->req);
  if (m->partition.loop == NULL || m->vtl > MB_VTL_MAX || !rm_has_view(st, m->vtl) ||
      (m->alias && (m->vtl != 2 || st->cfg.geom.alias == 0)))
    return MB_E_INVALID;
  for (size_t i = 0; i < st->nparts; i++)
    if (part_eq(&st->parts[i], m->partition))
      return MB_E_INVALID; /* already added */
  rm_part *parts = mb__grow(st->parts, &st->cap_parts, st->nparts, sizeof *parts, 4);
  if (parts == NULL)
    return MB_ENOMEM;
  st->parts = parts;
  op->partition = (rm_part){m->partition, m->vtl, m->alias};
  int rc = rm__dirty_plan_partition(st, op, &op->partition);
  if (rc == 0)
    rc = rm__prot_plan_partition(st, op, &op->partition);
  if (rc == 0 && m->alias)
    rc = plan_partition_view(st, op, 0);
  if (rc == 0)
    rc = plan_partition_view(st, op, m->vtl);
  rm__op_end_step(op);
  return rc;
}

static int partition_remove(rm_state *st, mb_addr pa) {
  for (size_t i = 0; i < st->nparts; i++) {
    if (part_eq(&st->parts[i], pa)) {
      memmove(&st->parts[i], &st->parts[i + 1], (st->nparts - i - 1) * sizeof *st->parts);
      st->nparts--;
      return 0;
    }
  }
  return MB_E_NOTFOUND;
}

/* The id of a request that names a region (0 for the others). */
static uint32_t request_region_id(mb_msg *msg) {
  switch (msg->kind) {
  case RM_REGION_MAP: return rm_region_map_of(msg)->id;
  case RM_REGION_UNMAP: return rm_region_unmap_of(msg)->id;
  case RM_REGION_REMOVE: return rm_region_remove_of(msg)->id;
  case RM_MAPPING_ADD: return rm_mapping_add_of(msg)->id;
  case RM_MAPPING_REMOVE: return rm_mapping_remove_of(msg)->id;
  case RM_MAPPING_REPLACE: return rm_mapping_replace_of(msg)->id;
  default: return 0;
  }
}

/* A mapping add, remove or replace inside a transaction, for shadow r. */
static int txn_mapping(rm_state *st, rm_region *r, mb_msg *msg) {
  rm_mapping *nm = NULL;
  mb_range abs;
  int rc;
  if (msg->kind == RM_MAPPING_REMOVE) {
    rm_mapping_remove_msg *m = rm_mapping_remove_of(msg);
    if ((rc = mapping_range(r, m->offset, m->size, &abs)) != 0)
      return rc;
    if (!first_mapping(r, abs.start, abs.end))
      return 0;
  } else {
    if ((rc = mapping_new(st, r, msg, &nm)) != 0)
      return rc;
    abs = (mb_range){nm->node.start, nm->node.end};
  }
  rc = rm__txn_mappings(st, r, abs.start, abs.end, nm);
  if (rc)
    rm__mapping_free(nm);
  return rc;
}

/* A region or mapping request inside a transaction, for one shadow. */
static int txn_apply_one(rm_state *st, rm_region *r, mb_msg *msg) {
  switch (msg->kind) {
  case RM_REGION_MAP:
    return rm__txn_region_mapped(st, r, true, rm_region_map_of(msg)->writable);
  case RM_REGION_UNMAP:
    return rm__txn_region_mapped(st, r, false, r->writable);
  default:
    return txn_mapping(st, r, msg);
  }
}

/* A region or mapping request inside a transaction: applied to the state at once, to every
 * shadow of the region or (a failure) to none. */
MB_COLD static int txn_apply(rm_state *st, rm_region *r, mb_msg *msg) {
  if (msg->kind == RM_REGION_REMOVE)
    return rm__txn_region_remove(st, r);
  if (msg->kind == RM_PROTECT)
    return rm__prot_txn(st, rm_protect_of(msg));
  rm_undo *mark = rm__txn_mark(st);
  int rc = 0;
  for (rm_region *s = r; s != NULL && rc == 0; s = s->next)
    rc = txn_apply_one(st, s, msg);
  if (rc)
    rm__txn_undo_to(st, mark);
  return rc;
}

/* Requests that may need nested calls: plan, then run. */
MB_HOT static void handle_op(mb_actor *self, rm_state *st, mb_msg *msg) {
  rm_region *r = NULL;
  bool dirty = rm__is_dirty(msg->kind);
  if (msg->kind != RM_PARTITION_ADD && msg->kind != RM_TXN_COMMIT && !dirty &&
      msg->kind != RM_PROTECT) {
    r = region_find(st, request_region_id(msg));
    if (r == NULL) {
      mb_reply(msg, MB_E_NOTFOUND);
      return;
    }
  }
  if (st->txn.open && msg->kind != RM_TXN_COMMIT && !dirty) {
    mb_reply(msg, msg->kind == RM_PARTITION_ADD ? MB_E_INVALID : txn_apply(st, r, msg));
    return;
  }
  if (msg->kind == RM_REGION_REMOVE && !r->vis.mapped) {
    rm__region_free(st, r);
    mb_reply(msg, 0);
    return;
  }
  if (msg->kind == RM_MAPPING_REPLACE && chunk_replace(self, st, r, msg))
    return;
  rm_op *op = op_new(st, msg, r);
  mb_msg_keep(msg);
  int rc;
  switch (msg->kind) {
  case RM_MAPPING_ADD: rc = plan_mapping_add(st, op); break;
  case RM_MAPPING_REMOVE: rc = plan_mapping_remove(st, op); break;
  case RM_MAPPING_REPLACE: rc = plan_mapping_replace(st, op); break;
  case RM_PARTITION_ADD: rc = plan_partition_add(st, op); break;
  case RM_TXN_COMMIT: rc = rm__txn_plan_commit(st, op); break;
  case RM_PROTECT: rc = rm__prot_plan(st, op); break;
  case RM_DIRTY_START:
  case RM_DIRTY_SYNC:
  case RM_DIRTY_STOP: rc = rm__dirty_plan(st, op); break;
  default: rc = plan_region(st, op); break;
  }
  op_start(self, st, op, rc);
}

MB_HOT static void rm_handle(mb_actor *self, mb_msg *msg) {
  rm_state *st = mb_actor_state(self);
  assert(st->op == NULL); /* serialized: one operation at a time */
  if (msg->proto != &rm_protocol) {
    mb_reply(msg, MB_E_UNSUPPORTED);
    return;
  }
  switch (msg->kind) {
  case RM_REGION_ADD:
    mb_reply(msg, region_add(st, rm_region_add_of(msg)));
    return;
  case RM_TXN_BEGIN:
    mb_reply(msg, st->txn.open ? MB_E_INVALID : rm__txn_begin(st));
    return;
  case RM_REGION_STATE: {
    rm_region_state_msg *m = rm_region_state_of(msg);
    rm_region *r = region_find(st, m->id);
    if (r != NULL)
      m->state = mb__vis_state(&r->vis);
    mb_reply(msg, r ? 0 : MB_E_NOTFOUND);
    return;
  }
  case RM_PARTITION_REMOVE:
    mb_reply(msg, st->txn.open ? MB_E_INVALID
                               : partition_remove(st, rm_partition_remove_of(msg)->partition));
    return;
  case RM_TXN_COMMIT:
    if (!st->txn.open) {
      mb_reply(msg, MB_E_INVALID);
      return;
    }
    handle_op(self, st, msg);
    return;
  case RM_PROTECTIONS:
    mb_reply(msg, rm__prot_list(st, rm_protections_of(msg)->vtl, &rm_protections_of(msg)->list));
    return;
  case RM_PROTECT:
  case RM_MAPPING_REPLACE:
  case RM_DIRTY_START:
  case RM_DIRTY_SYNC:
  case RM_DIRTY_STOP:
  case RM_REGION_MAP:
  case RM_REGION_UNMAP:
  case RM_REGION_REMOVE:
  case RM_MAPPING_ADD:
  case RM_MAPPING_REMOVE:
  case RM_PARTITION_ADD:
    handle_op(self, st, msg);
    return;
  default:
    mb_reply(msg, MB_E_UNSUPPORTED);
    return;
  }
}

static void rm_destroy(mb_actor *self) {
  rm_state *st = mb_actor_state(self);
  if (st->op != NULL) {
    mb_msg *req = st->op->req;
    op_free(st->op);
    st->op = NULL;
    mb_reply(req, MB_EGONE);
  }
  if (st->txn.open)
    rm__txn_end(st, true); /* frees what it kept to go back */
  free(st->op_buf.calls);
  free(st->free_mapping);
  rm__view_free(&st->op_buf.own_old);
  rm__view_free(&st->op_buf.own_new);
  rm__view_free(&st->txn.old);
  while (st->ids.root != NULL)
    rm__region_free(st, mb_rtree_entry(st->ids.root, rm_region, by_id));
  for (unsigned v = 0; v < RM_VIEWS; v++)
    mb__vis_fini(&st->vis[v]);
  rm__prot_fini(st);
  free(st->parts);
  free(st);
}

/* Everything the region manager does may run on a thread lending its loop (MB_LOOP_LEND). */
static bool rm_lendable(const mb_msg *m) { return (void)m, true; }
static const mb_actor_type rm_type = {"region_manager", rm_handle, rm_destroy,
                                      MB_ACTOR_SERIALIZED | MB_ACTOR_PROMPT_REPLIES,
                                      rm_lendable};

/* ---- introspection (direct reads on the region manager's thread) ---------------------------- */

static const char *const state_names[] = {"unmapped", "hidden", "active", "partial"};

/* r's mappings in view-space [start, end); gpa (absolute) or offset in the region; base: the
 * view's address 0. */
static void inspect_mappings(FILE *f, const rm_region *r, uint64_t start, uint64_t end,
                             bool absolute, uint64_t base) {
  bool first = true;
  fputc('[', f);
  for (mb_rtree_node *n = mb_rtree_first_overlap(&r->mappings, start, end); n;
       n = mb_rtree_next_overlap(n, start, end)) {
    rm_mapping *m = mapping_of(n);
    uint64_t a = max64(n->start, start), b = min64(n->end, end);
    mb__json_sep(f, &first);
    fprintf(f, "{\"%s\":%" PRIu64 ",\"size\":%" PRIu64 ",\"object\":\"%p\",\"object_offset\":%" PRIu64
               ",\"access\":\"%s\"}",
            absolute ? "gpa" : "offset", absolute ? a - base : a - r_start(r), b - a, (void *)m->obj,
            m->obj_off + (a - n->start), m->writable && (!absolute || r->writable) ? "rw" : "ro");
  }
  fputc(']', f);
}

static void inspect_region(FILE *f, const rm_state *st, const rm_region *r) {
  uint64_t base = rm_vs(st, r->view, 0);
  fprintf(f, "{\"id\":%" PRIu32 ",\"name\":", r->id);
  mb__json_str(f, r->name);
  fprintf(f, ",\"gpa\":%" PRIu64 ",\"size\":%" PRIu64 ",\"priority\":%u,\"type\":\"%s\","
             "\"state\":\"%s\",\"access\":\"%s\",",
          r_start(r) - base, r_end(r) - r_start(r), r->vis.prio, r->device ? "device" : "ram",
          state_names[mb__vis_state(&r->vis) & 3], !r->vis.mapped ? "-" : r->writable ? "rw" : "ro");
  if (st->cfg.geom.vtls > 1)
    fprintf(f, "\"vtl\":%u,", r->vtl);
  fputs("\"mappings\":", f);
  inspect_mappings(f, r, r_start(r), r_end(r), false, base);
  fputc('}', f);
}

/* The visible map of one view: each piece with its region and the mappings it shows, by
 * guest address. */
static void inspect_view(FILE *f, rm_state *st, unsigned view, bool *first) {
  uint64_t base = rm_vs(st, view, 0);
  for (mb__vis_piece *p = mb__vis_first_piece(&st->vis[view], 0, UINT64_MAX); p;
       p = mb__vis_next_piece(p, 0, UINT64_MAX)) {
    rm_region *r = region_of_vis(p->region);
    mb__json_sep(f, first);
    fprintf(f, "{\"gpa\":%" PRIu64 ",\"size\":%" PRIu64 ",\"region\":%" PRIu32 ",\"access\":\"%s\","
               "\"mappings\":",
            p->node.start - base, p->node.end - p->node.start, r->id, r->writable ? "rw" : "ro");
    inspect_mappings(f, r, p->node.start, p->node.end, true, base);
    if (st->cfg.geom.vtls > 1)
      fprintf(f, ",\"vtl\":%u", view);
    fputc('}', f);
  }
}

/* The visible map of every view, VTL 0's first. */
static void inspect_visible(FILE *f, rm_state *st) {
  bool first = true;
  fputc('[', f);
  for (unsigned v = 0; v < RM_VIEWS; v++)
    if (rm_has_view(st, v))
      inspect_view(f, st, v, &first);
  fputc(']', f);
}

void mb__region_manager_inspect(mb_actor *rm, FILE *f) {
  rm_state *st = mb_actor_state(rm);
  bool first = true;
  fputs("\"regions\":[", f);
  for (mb_rtree_node *n = mb_rtree_first(&st->ids); n; n = mb_rtree_next(n)) {
    mb__json_sep(f, &first);
    inspect_region(f, st, mb_rtree_entry(n, rm_region, by_id));
  }
  fputs("],\"visible\":", f);
  inspect_visible(f, st);
  fprintf(f, ",\"pending\":");
  if (st->op) {
    fprintf(f, "{\"operation\":\"%s\",\"region\":%" PRIu32 ",\"step\":%zu,\"undoing\":%s}",
            rm_protocol.kind_names[st->op->kind], st->op->region ? st->op->region->id : 0,
            st->op->step, st->op->undoing ? "true" : "false");
  } else {
    fputs("null", f);
  }
}

/* A direct read for the manager's own files, on the region manager's thread. */
int mb__region_manager_state(mb_actor *rm, uint32_t id) {
  rm_region *r = region_find(mb_actor_state(rm), id);
  return r ? mb__vis_state(&r->vis) : MB_E_NOTFOUND;
}

int mb__region_manager_protections(mb_actor *rm, uint8_t vtl, mb_prot_list **out) {
  return rm__prot_list(mb_actor_state(rm), vtl, (void **)out);
}

mb_actor *mb_region_manager_create(mb_loop *loop, const mb_rm_config *cfg) {
  if (loop == NULL || cfg == NULL ||
      (cfg->overlap != MB_OVERLAP_NESTED && cfg->overlap != MB_OVERLAP_ANY))
    return NULL;
  rm_state *st = mb__calloc(1, sizeof *st);
  if (st == NULL)
    return NULL;
  st->cfg = *cfg;
  if (st->cfg.geom.stride == 0) /* a manager of VTL 0 alone */
    st->cfg.geom = (mb_mm_geom){cfg->max_addr, mb_mm_stride(cfg->max_addr), 0, 1};
  st->next_id = 1;
  st->op_buf.own_old.borrowed = st->op_buf.own_new.borrowed = true;
  for (unsigned v = 0; v < RM_VIEWS; v++)
    mb__vis_init(&st->vis[v], cfg->overlap);
  rm__prot_init(st);
  mb_rtree_init(&st->ids);
  mb_actor *a = mb_actor_create(loop, &rm_type, st, "region_manager");
  if (a == NULL)
    free(st);
  return a;
}
