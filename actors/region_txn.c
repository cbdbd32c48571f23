/* region_txn.c: the region manager's transactions (region_manager.h: RM_TXN_BEGIN and
 * RM_TXN_COMMIT) and the consumer views that replaces and commits send.
 *
 * A transaction captures, at its begin, what the consumers show (rm_view: the visible pieces
 * and mappings). Inside it, each region or mapping request changes the manager's state at
 * once and pushes its inverse on an undo log, holding whatever the inverse needs (a removed
 * region or the mapping nodes a request took out stay alive, unlinked). The commit captures
 * the view again and plans the consumer calls from the difference, as QEMU renders and diffs
 * its flat views: the partitions unmap the pieces that are gone or changed, the mapping
 * manager replaces each maximal guest range whose pages show something else (object, offset
 * or access), and the partitions map the new pieces. The operation machinery of
 * region_manager.c runs these calls and undoes the completed ones when one fails; then the
 * undo log, popped newest first, puts the state back as it was at the begin. Every undo
 * step but one needs no memory; re-planning a region's visibility does, and waits for it.
 */
#include <stdlib.h>
#include <time.h>

#include "mb_hot.h"
#include "fault_inject.h" /* mb__malloc, mb__calloc: MB_FI_ALLOC */
#include "grow.h"
#include "mb_errors.h"
#include "region_internal.h"

/* ---- views ----------------------------------------------------------------------------------- */

void rm__view_clear(rm_view *v) {
  for (size_t i = 0; i < v->nentries && !v->borrowed; i++)
    mb_object_unref(v->entries[i].obj);
  v->nentries = v->npieces = 0;
}

void rm__view_free(rm_view *v) {
  rm__view_clear(v);
  free(v->entries);
  free(v->pieces);
  *v = (rm_view){.borrowed = v->borrowed};
}

static bool continues(const mb_map_entry *a, const mb_map_entry *b) {
  return a->gpa + a->size == b->gpa && a->obj == b->obj && a->writable == b->writable &&
         a->obj_off + a->size == b->obj_off;
}

MB_HOT int rm__view_push(rm_view *v, mb_map_entry e) {
  if (v->nentries > 0 && continues(&v->entries[v->nentries - 1], &e)) {
    v->entries[v->nentries - 1].size += e.size;
    return 0;
  }
  mb_map_entry *n = mb__grow(v->entries, &v->cap_entries, v->nentries, sizeof *n, 8);
  if (n == NULL)
    return MB_ENOMEM;
  v->entries = n;
  v->entries[v->nentries++] = v->borrowed ? e : (mb_map_entry){e.gpa, e.size,
                                      mb_object_ref(e.obj), e.obj_off, e.writable};
  return 0;
}

static int push_piece(rm_view *v, rm_piece p) {
  rm_piece *n = mb__grow(v->pieces, &v->cap_pieces, v->npieces, sizeof *n, 8);
  if (n == NULL)
    return MB_ENOMEM;
  v->pieces = n;
  v->pieces[v->npieces++] = p;
  return 0;
}

MB_HOT int rm__view_push_mappings(rm_view *v, const rm_region *r, uint64_t s, uint64_t e, bool writable) {
  int rc = 0;
  mb_rtree_node *n;
  for (n = mb_rtree_first_overlap(&r->mappings, s, e); n && !rc; n = mb_rtree_next_overlap(n, s, e))
    rc = rm__view_push(v, rm__clip_entry(mapping_of(n), s, e, writable));
  return rc;
}

/* A piece of r and r's mappings in it. */
static int capture_piece(rm_view *v, const rm_region *r, uint64_t s, uint64_t e) {
  int rc = push_piece(v, (rm_piece){s, e, r->writable});
  return rc ? rc : rm__view_push_mappings(v, r, s, e, r->writable);
}

int rm__view_capture(rm_state *st, rm_view *v) {
  rm__view_clear(v);
  int rc = 0;
  mb__vis_piece *p;
  for (unsigned view = 0; view < RM_VIEWS; view++) /* view space: ascending */
    for (p = mb__vis_first_piece(&st->vis[view], 0, UINT64_MAX); p && !rc;
         p = mb__vis_next_piece(p, 0, UINT64_MAX))
      rc = capture_piece(v, region_of_vis(p->region), p->node.start, p->node.end);
  if (rc)
    rm__view_clear(v);
  return rc;
}

/* The index of the first entry of v that ends after a. */
static size_t first_after(const rm_view *v, uint64_t a) {
  size_t lo = 0, hi = v->nentries;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (v->entries[mid].gpa + v->entries[mid].size <= a)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

int rm__view_clip(const rm_view *v, uint64_t a, uint64_t b, mb_map_entry **out, uint32_t *n) {
  size_t i = first_after(v, a), j = i;
  while (j < v->nentries && v->entries[j].gpa < b)
    j++;
  *n = 0;
  *out = j > i ? mb_map_entries_alloc(j - i) : NULL;
  if (j > i && *out == NULL)
    return MB_ENOMEM;
  for (; i < j; i++) {
    const mb_map_entry *e = &v->entries[i];
    uint64_t s = max64(e->gpa, a), t = min64(e->gpa + e->size, b);
    (*out)[(*n)++] = (mb_map_entry){s, t - s, mb_object_ref(e->obj), e->obj_off + (s - e->gpa),
                                    e->writable};
  }
  return 0;
}

/* ---- the undo log ---------------------------------------------------------------------------- */

enum { U_ADDED, U_MAPPED, U_REMOVED, U_MAPPINGS };

struct rm_undo {
  rm_undo *next;
  uint8_t kind;
  bool mapped, writable;  /* U_MAPPED: the region's state before */
  rm_region *region;
  rm_mapping *added[3];   /* U_MAPPINGS: the nodes the request linked (NULL: none) */
  size_t ntaken;
  rm_mapping *taken[];    /* U_MAPPINGS: the nodes it unlinked, intact */
};

static rm_undo *undo_new(uint8_t kind, rm_region *r, size_t ntaken) {
  rm_undo *u = mb__calloc(1, sizeof *u + ntaken * sizeof u->taken[0]);
  if (u != NULL) {
    u->kind = kind;
    u->region = r;
    u->ntaken = ntaken;
  }
  return u;
}

static void undo_push(rm_state *st, rm_undo *u) {
  u->next = st->txn.log;
  st->txn.log = u;
}

/* Sets r's mapped state through a visibility diff: 0 or MB_ENOMEM (nothing changed). */
static int set_mapped(rm_state *st, rm_region *r, bool mapped) {
  mb__vis_diff d;
  if (r->vis.mapped == mapped)
    return 0;
  if (mb__vis_plan(vis_of(st, r), &r->vis, mapped, &d) != 0)
    return MB_ENOMEM;
  mb__vis_commit(vis_of(st, r), &d);
  return 0;
}

/* An undo cannot give up: it waits for memory. */
static void set_mapped_must(rm_state *st, rm_region *r, bool mapped) {
  while (set_mapped(st, r, mapped) != 0)
    nanosleep(&(struct timespec){0, 1000000}, NULL);
}

static void undo_one(rm_state *st, rm_undo *u) {
  rm_region *r = u->region;
  switch (u->kind) {
  case U_ADDED:
    rm__region_free(st, r);
    break;
  case U_MAPPED:
    set_mapped_must(st, r, u->mapped);
    r->writable = u->writable;
    break;
  case U_REMOVED:
    for (rm_region *s = r; s != NULL; s = s->next)
      mb__vis_reinsert(vis_of(st, s), &s->vis);
    mb_rtree_insert(&st->ids, &r->by_id, r->id, (uint64_t)r->id + 1);
    break;
  default:
    for (int i = 0; i < 3; i++) {
      if (u->added[i] != NULL) {
        mb_rtree_remove(&r->mappings, &u->added[i]->node);
        rm__mapping_free(u->added[i]);
      }
    }
    for (size_t i = 0; i < u->ntaken; i++)
      mb_rtree_insert(&r->mappings, &u->taken[i]->node, u->taken[i]->node.start,
                      u->taken[i]->node.end);
    break;
  }
}

/* The transaction is kept: what the log held to go back goes. */
static void discard_one(rm_undo *u) {
  if (u->kind == U_REMOVED)
    rm__region_destroy(u->region);
  for (size_t i = 0; u->kind == U_MAPPINGS && i < u->ntaken; i++)
    rm__mapping_free(u->taken[i]);
}

MB_COLD void rm__txn_end(rm_state *st, bool ok) {
  for (rm_undo *u = st->txn.log, *next; u != NULL; u = next) {
    next = u->next;
    if (ok)
      discard_one(u);
    else
      undo_one(st, u);
    free(u);
  }
  st->txn.log = NULL;
  rm__prot_txn_end(st, ok);
  rm__view_free(&st->txn.old);
  st->txn.open = false;
}

/* ---- changes inside a transaction ------------------------------------------------------------ */

int rm__txn_begin(rm_state *st) {
  int rc = rm__view_capture(st, &st->txn.old);
  st->txn.open = rc == 0;
  return rc;
}

int rm__txn_region_added(rm_state *st, rm_region *r) {
  rm_undo *u = undo_new(U_ADDED, r, 0);
  if (u == NULL)
    return MB_ENOMEM;
  undo_push(st, u);
  return 0;
}

int rm__txn_region_mapped(rm_state *st, rm_region *r, bool mapped, bool writable) {
  rm_undo *u = undo_new(U_MAPPED, r, 0);
  if (u == NULL)
    return MB_ENOMEM;
  u->mapped = r->vis.mapped;
  u->writable = r->writable;
  if (set_mapped(st, r, mapped) != 0) {
    free(u);
    return MB_ENOMEM;
  }
  if (mapped)
    r->writable = writable;
  undo_push(st, u);
  return 0;
}

rm_undo *rm__txn_mark(rm_state *st) {
  return st->txn.log;
}

void rm__txn_undo_to(rm_state *st, rm_undo *mark) {
  while (st->txn.log != mark) {
    rm_undo *u = st->txn.log;
    st->txn.log = u->next;
    undo_one(st, u);
    free(u);
  }
}

/* Every shadow unmapped first (its own undo step), then unlinked but kept until the
 * transaction ends. */
int rm__txn_region_remove(rm_state *st, rm_region *r) {
  rm_undo *mark = rm__txn_mark(st);
  rm_undo *u = undo_new(U_REMOVED, r, 0);
  int rc = u == NULL ? MB_ENOMEM : 0;
  for (rm_region *s = r; s != NULL && rc == 0; s = s->next)
    rc = rm__txn_region_mapped(st, s, false, s->writable);
  if (rc != 0) {
    free(u);
    rm__txn_undo_to(st, mark);
    return rc;
  }
  rm__region_unlink(st, r);
  undo_push(st, u);
  return 0;
}

/* The part of m outside [a, b) on one side (left: before a), as a new node. */
static rm_mapping *mapping_rest(const rm_mapping *m, uint64_t a, uint64_t b, bool left) {
  rm_mapping *n = mb__calloc(1, sizeof *n);
  if (n == NULL)
    return NULL;
  *n = (rm_mapping){.obj = mb_object_ref(m->obj), .obj_off = m->obj_off,
                    .writable = m->writable};
  n->node.start = left ? m->node.start : b;
  n->node.end = left ? a : m->node.end;
  if (!left)
    n->obj_off += b - m->node.start;
  return n;
}

int rm__txn_mappings(rm_state *st, rm_region *r, uint64_t a, uint64_t b, rm_mapping *nm) {
  size_t n = 0;
  mb_rtree_node *it;
  mb_rtree_for_each_overlap(it, &r->mappings, a, b)
    n++;
  rm_undo *u = undo_new(U_MAPPINGS, r, n);
  if (u == NULL)
    return MB_ENOMEM;
  n = 0;
  mb_rtree_for_each_overlap(it, &r->mappings, a, b)
    u->taken[n++] = mapping_of(it);
  rm_mapping *first = n ? u->taken[0] : NULL, *last = n ? u->taken[n - 1] : NULL;
  if (first && first->node.start < a)
    u->added[0] = mapping_rest(first, a, b, true);
  if (last && last->node.end > b)
    u->added[1] = mapping_rest(last, a, b, false);
  if ((first && first->node.start < a && !u->added[0]) ||
      (last && last->node.end > b && !u->added[1])) {
    rm__mapping_free(u->added[0]);
    rm__mapping_free(u->added[1]);
    free(u);
    return MB_ENOMEM;
  }
  for (size_t i = 0; i < n; i++)
    mb_rtree_remove(&r->mappings, &u->taken[i]->node);
  u->added[2] = nm;
  for (int i = 0; i < 3; i++)
    if (u->added[i] != NULL)
      mb_rtree_insert(&r->mappings, &u->added[i]->node, u->added[i]->node.start,
                      u->added[i]->node.end);
  undo_push(st, u);
  return 0;
}

/* ---- the commit ------------------------------------------------------------------------------ */

static bool same_piece(const rm_piece *a, const rm_piece *b) {
  return a->start == b->start && a->end == b->end && a->writable == b->writable;
}

void rm__txn_each_piece(const rm_op *op, void (*fn)(void *ctx, const rm_piece *p, bool add),
                        void *ctx) {
  const rm_view *o = op->inv, *n = op->fwd;
  size_t i = 0, j = 0;
  while (i < o->npieces || j < n->npieces) {
    const rm_piece *p = i < o->npieces ? &o->pieces[i] : NULL;
    const rm_piece *q = j < n->npieces ? &n->pieces[j] : NULL;
    if (p && q && same_piece(p, q)) {
      i++, j++;
    } else if (p && (!q || p->start <= q->start)) {
      fn(ctx, p, false), i++;
    } else {
      fn(ctx, q, true), j++;
    }
  }
}

/* Do two entries (either may be NULL: nothing there) show the same at address x? */
static bool same_at(const mb_map_entry *o, const mb_map_entry *n, uint64_t x) {
  if (o == NULL || n == NULL)
    return o == n;
  return o->obj == n->obj && o->writable == n->writable &&
         o->obj_off + (x - o->gpa) == n->obj_off + (x - n->gpa);
}

/* The entry of v[*i..] that covers x (NULL: none), moving *i past those that end by x; and
 * the next boundary after x that v has (UINT64_MAX: none). */
static const mb_map_entry *entry_at(const rm_view *v, size_t *i, uint64_t x, uint64_t *next) {
  while (*i < v->nentries && v->entries[*i].gpa + v->entries[*i].size <= x)
    (*i)++;
  const mb_map_entry *e = *i < v->nentries ? &v->entries[*i] : NULL;
  if (e == NULL) {
    *next = UINT64_MAX;
    return NULL;
  }
  *next = e->gpa > x ? e->gpa : e->gpa + e->size;
  return e->gpa > x ? NULL : e;
}

/* Calls fn for each maximal guest range in which the two views' pages show differently. */
static int each_change(const rm_view *o, const rm_view *n,
                       int (*fn)(void *ctx, uint64_t a, uint64_t b), void *ctx) {
  size_t i = 0, j = 0;
  uint64_t x = 0, run = UINT64_MAX; /* run: the start of the changed range being built */
  int rc = 0;
  while (rc == 0 && x < UINT64_MAX) {
    uint64_t no, nn;
    const mb_map_entry *oe = entry_at(o, &i, x, &no), *ne = entry_at(n, &j, x, &nn);
    uint64_t y = min64(no, nn);
    bool same = same_at(oe, ne, x);
    if (!same && run == UINT64_MAX)
      run = x;
    if (same && run != UINT64_MAX)
      rc = fn(ctx, run, x), run = UINT64_MAX;
    x = y;
  }
  if (rc == 0 && run != UINT64_MAX)
    rc = fn(ctx, run, UINT64_MAX);
  return rc;
}

static int plan_replace(void *ctx, uint64_t a, uint64_t b) {
  rm_op *op = ctx;
  return rm__op_add_call(op, (rm_call){.kind = CALL_MM_REPLACE,
                                       .to = state_of(op)->cfg.mapping_manager, .gpa = a,
                                       .size = b - a});
}

typedef struct piece_plan {
  rm_op *op;
  bool add; /* the pieces this pass plans: added ones (PM_MAP) or dropped ones (PM_UNMAP) */
  int rc;
} piece_plan;

static void plan_piece(void *ctx, const rm_piece *p, bool add) {
  piece_plan *pp = ctx;
  if (pp->rc == 0 && add == pp->add)
    pp->rc = rm__plan_pm(state_of(pp->op), pp->op, add ? CALL_PM_MAP : CALL_PM_UNMAP, p->start,
                         p->end - p->start, p->writable);
}

MB_COLD int rm__txn_plan_commit(rm_state *st, rm_op *op) {
  int rc = rm__view_capture(st, &op->own_new);
  op->fwd = &op->own_new;
  op->inv = &st->txn.old;
  piece_plan pp = {op, false, rc};
  rm__txn_each_piece(op, plan_piece, &pp);
  if (pp.rc == 0) /* partitions first */
    pp.rc = rm__prot_plan_commit(st, op, true);
  rm__op_end_step(op);
  if (pp.rc == 0)
    pp.rc = each_change(op->inv, op->fwd, plan_replace, op);
  if (pp.rc == 0)
    pp.rc = rm__prot_plan_commit(st, op, false);
  rm__op_end_step(op);
  pp.add = true;
  rm__txn_each_piece(op, plan_piece, &pp);
  rm__op_end_step(op);
  return pp.rc;
}

typedef struct span_acc {
  mb_range span;
  size_t adds;
} span_acc;

static void widen(span_acc *s, uint64_t a, uint64_t b) {
  if (s->span.start >= s->span.end)
    s->span = (mb_range){a, b};
  s->span.start = min64(s->span.start, a);
  s->span.end = max64(s->span.end, b);
}

static void span_piece(void *ctx, const rm_piece *p, bool add) {
  span_acc *s = ctx;
  widen(s, p->start, p->end);
  s->adds += add;
}

MB_COLD mb_range rm__txn_span(const rm_op *op, size_t *adds) {
  span_acc s = {{0, 0}, 0};
  if (op->fwd != NULL)
    rm__txn_each_piece(op, span_piece, &s);
  *adds = s.adds;
  return s.span;
}
