/* mapping_manager.c: the mapping manager actor (see mapping_manager.h).
 *
 * State: the visible mappings, one node each in an interval tree keyed by guest range (the
 * nodes never overlap), and the registered VA mappers. Every operation touches only the
 * mappings in its range: O((k + 1) log n) for k affected mappings, plus one message per
 * mapper (per run of adjacent entries for a rollback). Only a late eager mapper's replay and
 * MM_LIST walk them all.
 *
 * One operation at a time: it lives in mm_state.op. An operation launches its calls holding
 * one extra count (op_begin, then op_settle), so it moves on exactly once, when the last
 * reply is in, even if a reply ran inside mb_call. MM_RESOLVE and MM_LIST are answered (or
 * forwarded) at once and are no operation.
 *
 * A failed operation changes nothing. MM_MAP takes the batch out again and has the mappers
 * that established it unmap it. MM_UNMAP keeps what it cut out of the tree (op.cut) until
 * every mapper answered: if one failed (it left its own range as it was), the nodes go back
 * as they were and the eager mappers that did tear down get the range mapped again.
 *
 * The actor keeps its own order instead of being MB_ACTOR_SERIALIZED: a request that comes
 * while an operation is in flight waits in `waiting` (kept, in arrival order) and is taken up
 * when the operation answers, with one exception: an MM_RESOLVE passes any operation but
 * MM_MAP. A VA mapper may hold an MM_UNMAP's acknowledgement for as long as VMM code holds
 * a lock there (va_mapper.h), and a lazy fault elsewhere must not wait for that. It is safe:
 * the tree is already cut when the unmaps go out (a resolve inside the range is unmapped, as
 * it will be), and the mapper orders a forwarded resolve behind anything it still holds for
 * the same range. During an MM_MAP the batch is in the tree but may still be rolled back, so
 * resolves wait for its answer.
 *
 * Ownership: a tree node holds its own object reference. An MM_MAP's entries hand theirs to
 * the nodes the batch inserts (a rollback drops them with the nodes); its array is lent to
 * the eager mappers (VAM_MAP) until they answer, then freed. The snapshot arrays a late
 * eager mapper is replayed from hold references of their own, dropped with them.
 *
 * Mappers: the registered ones are in `mappers`; one found gone during an operation is
 * marked, and forgotten when the operation ends (its calls point into the array).
 *
 * Windows: the tree is in view space; each call to a mapper is translated into its space
 * (mapping_manager.h). An array that a window moves or clips is a copy lent to that mapper
 * (mm_mapper.sent) until it answers; otherwise op.entries itself is lent, as before.
 *
 * Protections: one mb_prot_map per protectable VTL, changed by MM_PROTECT only when every
 * protecting mapper took the change (so it never holds what a mapper refused), and read when
 * a protecting mapper is added (it gets them before any mapping).
 */
#include "mb_hot.h"
#include "mapping_manager.h"

#include <stdlib.h>
#include <string.h>

#include "fault_inject.h" /* mb__malloc, mb__calloc: MB_FI_ALLOC */
#include "grow.h"
#include "mb_errors.h"
#include "mb_vtl.h"
#include "prot_map.h"
#include "range_tree.h"
#include "va_mapper.h"

/* MM_MAP and MM_LIST carry an entry array (with object references) that is freed if the
 * runtime drops the message undelivered. */
static void mm_dispose(mb_msg *msg) {
  mm_map_msg *map = mm_map_of(msg);
  mm_list_msg *list = mm_list_of(msg);
  mm_replace_msg *repl = mm_replace_of(msg);
  if (map) mb_map_entries_free(map->entries, map->entries ? map->count : 0);
  if (list) mb_map_entries_free(list->entries, list->entries ? list->count : 0);
  if (repl) mb_map_entries_free(repl->entries, repl->entries ? repl->count : 0);
}

MB_PROTOCOL_DEFINE_DISPOSE(mm, MM_MESSAGES, mm_dispose);

typedef struct mm_node {
  mb_rtree_node node;  /* [e.gpa, e.gpa + e.size) */
  mb_map_entry e;      /* e.obj: this node's own reference */
  struct mm_node *cut; /* the next node an MM_UNMAP took out whole */
} mm_node;

/* What an MM_UNMAP took out of the tree, kept until it answers: it goes back if it fails. */
typedef struct mm_cut {
  mm_node *whole;                 /* nodes taken out whole (with their references), by `cut` */
  mm_node *left, *right;          /* nodes trimmed to their part left of a / right of b */
  uint64_t left_end, right_start; /* their bounds before */
  bool right_new;                 /* right is the spare of a node that straddled both edges */
} mm_cut;

/* A window of a mapper: view-space [start, end) shows at mapper-space off on. */
typedef struct mm_window {
  uint64_t start, end, off;
} mm_window;

/* A registered mapper, with its part in the operation in flight. */
typedef struct mm_mapper {
  mb_addr addr;
  bool eager;
  bool ok;      /* it established the operation's batch (MM_MAP), tore it down (MM_UNMAP)
                 * or took its protections (MM_PROTECT) */
  bool gone;    /* it could not answer: forgotten when the operation ends */
  bool protect; /* it enforces VTL vtl's protections */
  uint8_t vtl, nwin;
  mm_window win[2];   /* (view vtl -> 0) and, with an alias, (view 0 -> alias) */
  mb_map_entry *sent; /* a translated array lent to it until it answers (ours, without
                       * references: the operation's entries or nodes hold them) */
  uint32_t nsent;
} mm_mapper;

typedef struct mm_state mm_state;
typedef void (*mm_step_fn)(mm_state *st);

/* The operation in flight: a kept request and the calls it waits for. */
typedef struct mm_op {
  mb_msg *req;
  uint32_t pending;      /* replies due, plus one while calls are being launched */
  int status;            /* first failure */
  mm_step_fn next;       /* runs when pending drops to 0 */
  mb_map_entry *entries; /* lent to mappers while lent > 0 */
  uint32_t count;
  uint32_t lent;         /* VAM_MAP replies still due (they read `entries`) */
  bool refs_moved;       /* MM_MAP: the entries' references went to the inserted nodes */
  mm_mapper replay;      /* MM_ADD_MAPPER: the new mapper (not registered yet) */
  mm_cut cut;            /* MM_UNMAP, MM_REPLACE */
  mm_node *swapped;      /* MM_REPLACE in place: the node that took the entry */
  mb_map_entry swap_old; /* and what it held (with its reference) */
  mb_prot_item *items;   /* MM_PROTECT's (a copy), or a protecting mapper's replay: lent */
  mb_prot_item *old;     /* MM_PROTECT: the protections of its range before (the undo) */
  uint32_t nitems, nold;
} mm_op;

struct mm_state {
  mb_actor *self;
  mb_mm_geom geom;
  mb_prot_map prot[MB_VTL_MAX]; /* per protectable VTL (0, 1), in its guest space */
  mb_rtree maps;                /* in view space */
  mm_mapper *mappers;
  uint32_t nmappers;
  size_t cap_mappers;
  uint32_t ngone;          /* mappers marked gone during the operation */
  bool busy;
  mm_op op;
  mm_node *node_cache[16]; /* unlinked nodes kept for reuse */
  uint32_t nnode_cache;
  mb_msg **waiting;        /* requests that came during the operation, in arrival order */
  size_t wait_head, nwaiting, cap_waiting; /* a ring */
  bool pumping;            /* taking up `waiting` (op_finish may run inside) */
};

/* ---- helpers --------------------------------------------------------------------------------- */

static bool addr_eq(mb_addr a, mb_addr b) {
  return a.loop == b.loop && a.slot == b.slot && a.gen == b.gen;
}

/* A mapper that cannot answer any more counts as having acknowledged. */
static bool is_gone(int status) {
  return status == MB_EGONE || status == MB_ESTOPPED;
}

/* A node from the cache, or a new one. */
static mm_node *node_get(mm_state *st) {
  return st->nnode_cache > 0 ? st->node_cache[--st->nnode_cache] : mb__malloc(sizeof(mm_node));
}

/* Gives back an unlinked node whose entry holds no reference. */
static void node_put(mm_state *st, mm_node *n) {
  if (st->nnode_cache < sizeof st->node_cache / sizeof st->node_cache[0])
    st->node_cache[st->nnode_cache++] = n;
  else
    free(n);
}

static mm_node *node_of(mb_rtree_node *n) {
  return mb_rtree_entry(n, mm_node, node);
}

static void node_free(mm_node *n) {
  mb_object_unref(n->e.obj);
  free(n);
}

static mm_mapper *find_mapper(mm_state *st, mb_addr addr) {
  for (uint32_t i = 0; i < st->nmappers; i++)
    if (!st->mappers[i].gone && addr_eq(st->mappers[i].addr, addr))
      return &st->mappers[i];
  return NULL;
}

static void drop_mapper(mm_state *st, mb_addr addr) {
  mm_mapper *m = find_mapper(st, addr);
  if (m != NULL)
    *m = st->mappers[--st->nmappers];
}

/* Forgets the mappers marked gone (between operations: no call points at one). */
static void sweep_mappers(mm_state *st) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < st->nmappers; i++)
    if (!st->mappers[i].gone)
      st->mappers[n++] = st->mappers[i];
  st->nmappers = n;
  st->ngone = 0;
}

/* Room for one more mapper (taken before a replay, so registering after it cannot fail). */
static int reserve_mapper(mm_state *st) {
  mm_mapper *m = mb__grow(st->mappers, &st->cap_mappers, st->nmappers, sizeof *m, 8);
  if (m == NULL)
    return MB_ENOMEM;
  st->mappers = m;
  return 0;
}

static int add_mapper(mm_state *st, const mm_mapper *t) {
  int rc = reserve_mapper(st);
  if (rc == 0) {
    st->mappers[st->nmappers] = *t;
    st->mappers[st->nmappers++].sent = NULL;
  }
  return rc;
}

/* ---- windows: view space -> mapper space ------------------------------------------------------
 *
 * A request never straddles a view slice (checked), and a mapper's windows are over distinct
 * views, so a request's range meets at most one window of a mapper. */

static bool in_one_slice(const mm_state *st, uint64_t gpa, uint64_t size) {
  return gpa / st->geom.stride == (gpa + size - 1) / st->geom.stride;
}

static void set_windows(const mm_state *st, mm_mapper *t, bool alias) {
  uint64_t base = t->vtl * st->geom.stride, max = st->geom.max_addr;
  t->win[0] = (mm_window){base, base + max, 0};
  t->nwin = 1;
  if (alias)
    t->win[t->nwin++] = (mm_window){0, max, st->geom.alias};
}

/* t's window over view-space [a, b), or NULL. */
static const mm_window *window_over(const mm_mapper *t, uint64_t a, uint64_t b) {
  for (uint8_t i = 0; i < t->nwin; i++)
    if (a < t->win[i].end && t->win[i].start < b)
      return &t->win[i];
  return NULL;
}

/* t's window that shows mapper-space address x, or NULL. */
static const mm_window *window_at(const mm_mapper *t, uint64_t x) {
  for (uint8_t i = 0; i < t->nwin; i++)
    if (x >= t->win[i].off && x - t->win[i].off < t->win[i].end - t->win[i].start)
      return &t->win[i];
  return NULL;
}

/* [*a, *b) clipped to w and moved to mapper space (w overlaps it). */
static void xlate_range(const mm_window *w, uint64_t *a, uint64_t *b) {
  uint64_t s = *a > w->start ? *a : w->start, t = *b < w->end ? *b : w->end;
  *a = s - w->start + w->off;
  *b = t - w->start + w->off;
}

/* e's part in w, in mapper space (sharing e's reference): false if it has none. */
static bool xlate_entry(const mm_window *w, const mb_map_entry *e, mb_map_entry *out) {
  uint64_t s = e->gpa > w->start ? e->gpa : w->start;
  uint64_t t = e->gpa + e->size < w->end ? e->gpa + e->size : w->end;
  if (s >= t)
    return false;
  *out = (mb_map_entry){s - w->start + w->off, t - s, e->obj, e->obj_off + (s - e->gpa),
                        e->writable};
  return true;
}

/* Does every entry lie in a window of t that does not move it? (The common case: a VTL-0
 * mapper, whose mapper space is view 0.) */
static bool xlate_is_identity(const mm_mapper *t, const mb_map_entry *e, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    const mm_window *w = window_over(t, e[i].gpa, e[i].gpa + e[i].size);
    if (w == NULL || w->off != w->start || e[i].gpa < w->start || e[i].gpa + e[i].size > w->end)
      return false;
  }
  return true;
}

/* The operation's entries as t sees them: op.entries itself, or a translated copy (t->sent),
 * or nothing (*n = 0). 0 or MB_ENOMEM. */
MB_HOT static int xlate_entries(mm_state *st, mm_mapper *t, mb_map_entry **out, uint32_t *n) {
  const mm_op *op = &st->op;
  *out = NULL;
  *n = 0;
  if (op->count == 0 || xlate_is_identity(t, op->entries, op->count)) {
    *out = op->entries;
    *n = op->count;
    return 0;
  }
  mb_map_entry *a = mb__malloc(op->count * sizeof *a);
  if (a == NULL)
    return MB_ENOMEM;
  uint32_t k = 0;
  for (uint32_t i = 0; i < op->count; i++) {
    const mm_window *w = window_over(t, op->entries[i].gpa,
                                     op->entries[i].gpa + op->entries[i].size);
    if (w != NULL && xlate_entry(w, &op->entries[i], &a[k]))
      k++;
  }
  if (k == 0) {
    free(a);
    return 0;
  }
  t->sent = a;
  t->nsent = k;
  *out = a;
  *n = k;
  return 0;
}

/* Every visible mapping, in order, with references; *out is NULL when there are none. */
static int snapshot(mm_state *st, mb_map_entry **out, uint32_t *count) {
  size_t n = mb_rtree_count(&st->maps);
  *out = NULL;
  *count = 0;
  if (n == 0)
    return 0;
  if (n > UINT32_MAX)
    return MB_ENOMEM;
  mb_map_entry *a = mb__malloc(n * sizeof *a);
  if (a == NULL)
    return MB_ENOMEM;
  size_t i = 0;
  mb_rtree_node *it;
  mb_rtree_for_each(it, &st->maps) {
    a[i] = node_of(it)->e;
    mb_object_ref(a[i].obj);
    i++;
  }
  *out = a;
  *count = (uint32_t)n;
  return 0;
}

/* ---- the operation in flight -----------------------------------------------------------------
 *
 * A call's context is the mapper it went to: an element of `mappers`, or op.replay. Neither
 * moves during an operation: `mappers` only grows before a replay's calls, and a mapper found
 * gone is only marked, and forgotten when the operation ends. */

static void op_begin(mm_state *st, mm_step_fn next) {
  st->op.next = next;
  st->op.pending = 1;
}

static void op_settle(mm_state *st) {
  if (--st->op.pending == 0)
    st->op.next(st);
}

static void op_fail(mm_state *st, int status) {
  if (st->op.status == 0)
    st->op.status = status;
}

static void pump(mm_state *st);

/* Answers the request, forgets the operation and takes up the requests that waited. */
MB_HOT static void op_finish(mm_state *st, int status) {
  mm_op *op = &st->op;
  mb_msg *req = op->req;
  if (op->refs_moved)
    mb_map_entries_drop(op->entries, op->count);
  else
    mb_map_entries_free(op->entries, op->count);
  if (st->ngone > 0)
    sweep_mappers(st);
  /* What the next operation reads before it sets it (pending and lent are 0 again). */
  op->status = 0;
  op->entries = NULL;
  op->count = 0;
  op->refs_moved = false;
  op->cut = (mm_cut){0};
  op->swapped = NULL;
  mb__free(op->items);
  mb__free(op->old);
  op->items = op->old = NULL;
  op->nitems = op->nold = 0;
  st->busy = false;
  mb_reply(req, status);
  if (st->nwaiting > 0)
    pump(st);
}

/* It cannot answer: it counts as having acknowledged, and is forgotten when the operation
 * ends (a replay's mapper is not registered: nothing to forget). */
static void mark_gone(mm_state *st, mm_mapper *m) {
  if (m != &st->op.replay && !m->gone) {
    m->gone = true;
    st->ngone++;
  }
}

/* ---- calls to the mappers -------------------------------------------------------------------- */

/* What a translated array lent to t was for is answered: it goes. */
static void unlend(mm_state *st, mm_mapper *t) {
  st->op.lent--;
  mb__free(t->sent);
  t->sent = NULL;
}

/* A mapper's answer to a call of the operation: done, gone (it holds nothing), or the
 * operation's failure; then the operation moves on once every answer is in. */
static void mapper_answered(mm_state *st, mm_mapper *m, int status) {
  if (status == 0)
    m->ok = true;
  else if (is_gone(status))
    mark_gone(st, m);
  else
    op_fail(st, status);
  op_settle(st);
}

MB_HOT static void on_vam_map(mb_actor *self, mb_msg *reply, void *ctx) {
  mm_state *st = mb_actor_state(self);
  mm_mapper *m = ctx;
  unlend(st, m);
  mapper_answered(st, m, reply->status);
}

/* VAM_MAP of entries (mapper space, lent: op.entries or t->sent) to mapper t. */
MB_HOT static void call_map_raw(mm_state *st, mm_mapper *t, mb_map_entry *e, uint32_t n) {
  vam_map_msg *m = vam_map_new();
  if (m == NULL) {
    free(t->sent);
    t->sent = NULL;
    op_fail(st, MB_ENOMEM);
    return;
  }
  m->entries = e;
  m->count = n;
  st->op.pending++;
  st->op.lent++;
  mb_call(st->self, t->addr, &m->hdr, on_vam_map, t);
}

/* VAM_MAP of the operation's entries (view space) to mapper t, translated; nothing when none
 * of them is in its windows. */
MB_HOT static void call_map(mm_state *st, mm_mapper *t) {
  mb_map_entry *e;
  uint32_t n;
  if (xlate_entries(st, t, &e, &n) != 0)
    op_fail(st, MB_ENOMEM);
  else if (n > 0)
    call_map_raw(st, t, e, n);
}

MB_HOT static void on_vam_unmap(mb_actor *self, mb_msg *reply, void *ctx) {
  mm_state *st = mb_actor_state(self);
  mm_mapper *m = ctx;
  mapper_answered(st, m, reply->status);
}

/* VAM_UNMAP of view-space [gpa, gpa + size) to mapper t, translated; nothing when it is in
 * none of its windows. */
MB_HOT static void call_unmap(mm_state *st, mm_mapper *t, uint64_t gpa, uint64_t size) {
  uint64_t a = gpa, b = gpa + size;
  const mm_window *w = window_over(t, a, b);
  if (w == NULL)
    return;
  xlate_range(w, &a, &b);
  vam_unmap_msg *m = vam_unmap_new();
  if (m == NULL) {
    op_fail(st, MB_ENOMEM);
    return;
  }
  m->gpa = a;
  m->size = b - a;
  st->op.pending++;
  mb_call(st->self, t->addr, &m->hdr, on_vam_unmap, t);
}

/* ---- MM_MAP ---------------------------------------------------------------------------------- */

static int cmp_entry(const void *a, const void *b) {
  uint64_t x = ((const mb_map_entry *)a)->gpa, y = ((const mb_map_entry *)b)->gpa;
  return x < y ? -1 : x > y;
}

/* A view-space range: non-empty, aligned, not wrapping, in one view slice. */
static bool valid_range(const mm_state *st, uint64_t gpa, uint64_t size) {
  return size != 0 && mb_page_aligned(gpa | size) && size <= UINT64_MAX - gpa &&
         in_one_slice(st, gpa, size);
}

MB_HOT static int check_entry(const mm_state *st, const mb_map_entry *e) {
  if (e->obj == NULL || !valid_range(st, e->gpa, e->size))
    return MB_E_INVALID;
  return mb_object_check_range(e->obj, e->obj_off, e->size) == 0 ? 0 : MB_E_INVALID;
}

/* Sorts the batch and checks it against itself and the visible mappings. */
static int check_batch(mm_state *st, mb_map_entry *e, uint32_t count) {
  for (uint32_t i = 0; i < count; i++)
    if (check_entry(st, &e[i]) != 0)
      return MB_E_INVALID;
  if (count > 1)
    qsort(e, count, sizeof *e, cmp_entry);
  for (uint32_t i = 0; i < count; i++) {
    if (i > 0 && e[i - 1].gpa + e[i - 1].size > e[i].gpa)
      return MB_E_OVERLAP;
    if (mb_rtree_first_overlap(&st->maps, e[i].gpa, e[i].gpa + e[i].size) != NULL)
      return MB_E_OVERLAP;
  }
  return 0;
}

/* Takes the first n entries of the batch out of the tree again (each is exactly a node:
 * nothing else changes the tree while the batch is in). With moved references the nodes'
 * go too; otherwise the entries still hold theirs. */
static void remove_batch(mm_state *st, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    mm_node *node = node_of(mb_rtree_find(&st->maps, st->op.entries[i].gpa));
    mb_rtree_remove(&st->maps, &node->node);
    if (st->op.refs_moved)
      mb_object_unref(node->e.obj);
    node_put(st, node);
  }
}

/* Inserts the checked batch, one node per entry, each taking its entry's reference. */
MB_HOT static int insert_batch(mm_state *st) {
  mm_op *op = &st->op;
  for (uint32_t i = 0; i < op->count; i++) {
    mm_node *n = node_get(st);
    if (n == NULL) {
      remove_batch(st, i);
      return MB_ENOMEM;
    }
    n->e = op->entries[i];
    mb_rtree_insert(&st->maps, &n->node, n->e.gpa, n->e.gpa + n->e.size);
  }
  op->refs_moved = true;
  return 0;
}

static void map_rolled_back(mm_state *st) {
  remove_batch(st, st->op.count);
  op_finish(st, st->op.status);
}

/* A mapper failed: the others that established the batch unmap it, one call per run of
 * adjacent entries. */
MB_HOT static void map_done(mm_state *st) {
  mm_op *op = &st->op;
  if (op->status == 0) {
    op_finish(st, 0);
    return;
  }
  op_begin(st, map_rolled_back);
  for (mm_mapper *t = st->mappers, *past = t + st->nmappers; t < past; t++) {
    if (!t->ok)
      continue;
    for (uint32_t i = 0; i < op->count;) {
      uint64_t start = op->entries[i].gpa, end = start + op->entries[i].size;
      /* runs end at slice edges: a call never straddles a window */
      for (i++; i < op->count && op->entries[i].gpa == end && end % st->geom.stride != 0; i++)
        end += op->entries[i].size;
      call_unmap(st, t, start, end - start);
    }
  }
  op_settle(st); /* rollback failures do not replace the cause: op->status is set */
}

MB_HOT static void handle_map(mm_state *st, mm_map_msg *m) {
  mm_op *op = &st->op;
  op->entries = m->entries;
  op->count = m->entries != NULL ? m->count : 0;
  m->entries = NULL; /* ours now, on success and on failure */
  int rc = m->count > 0 && op->entries == NULL ? MB_E_INVALID : 0;
  if (rc == 0 && op->count == 0) {
    op_finish(st, 0);
    return;
  }
  if (rc == 0)
    rc = check_batch(st, op->entries, op->count);
  if (rc == 0)
    rc = insert_batch(st);
  if (rc != 0) {
    op_finish(st, rc);
    return;
  }
  op_begin(st, map_done);
  for (mm_mapper *t = st->mappers, *past = t + st->nmappers; t < past; t++) {
    t->ok = false;
    if (t->eager)
      call_map(st, t);
  }
  op_settle(st);
}

/* ---- MM_UNMAP -------------------------------------------------------------------------------- */

/* Removes every mapped byte of [a, b) into op.cut; a mapping straddling an edge keeps its
 * outside part. Only a mapping straddling both edges needs a second node, allocated before
 * anything changes. The nodes never overlap, so the walk ends at the first one reaching b. */
MB_HOT static int cut_range(mm_state *st, uint64_t a, uint64_t b) {
  mm_cut *cut = &st->op.cut;
  mb_rtree_node *it = mb_rtree_first_overlap(&st->maps, a, b);
  mm_node *spare = NULL;
  if (it != NULL && it->start < a && it->end > b && (spare = node_get(st)) == NULL)
    return MB_ENOMEM;
  while (it != NULL) {
    mm_node *n = node_of(it);
    uint64_t start = it->start, end = it->end;
    mb_rtree_node *next = end < b ? mb_rtree_next_overlap(it, a, b) : NULL;
    mb_rtree_remove(&st->maps, it);
    if (start < a && end > b) {
      spare->e = n->e;
      spare->e.gpa = b;
      spare->e.size = end - b;
      spare->e.obj_off += b - start;
      mb_object_ref(spare->e.obj);
      mb_rtree_insert(&st->maps, &spare->node, b, end);
      cut->right = spare; /* the only node in the range: nothing else is cut */
      cut->right_new = true;
    }
    if (start < a) {
      cut->left = n;
      cut->left_end = end;
      n->e.size = a - start;
      mb_rtree_insert(&st->maps, &n->node, start, a);
    } else if (end > b) {
      cut->right = n;
      cut->right_start = start;
      n->e.gpa = b;
      n->e.size = end - b;
      n->e.obj_off += b - start;
      mb_rtree_insert(&st->maps, &n->node, b, end);
    } else {
      n->cut = cut->whole;
      cut->whole = n;
    }
    it = next;
  }
  return 0;
}

/* The operation succeeded: what it took out whole goes. */
static void cut_commit(mm_state *st) {
  for (mm_node *n = st->op.cut.whole, *next; n != NULL; n = next) {
    next = n->cut;
    mb_object_unref(n->e.obj);
    node_put(st, n);
  }
}

/* The operation failed: the tree is put back as it was (nothing else changed it meanwhile:
 * operations are one at a time and resolves only read it). */
static void cut_restore(mm_state *st) {
  mm_cut *cut = &st->op.cut;
  if (cut->right != NULL) {
    mm_node *r = cut->right;
    mb_rtree_remove(&st->maps, &r->node);
    if (cut->right_new) {
      mb_object_unref(r->e.obj);
      node_put(st, r);
    } else {
      r->e.obj_off -= r->e.gpa - cut->right_start;
      r->e.size += r->e.gpa - cut->right_start;
      r->e.gpa = cut->right_start;
      mb_rtree_insert(&st->maps, &r->node, r->e.gpa, r->e.gpa + r->e.size);
    }
  }
  if (cut->left != NULL) {
    mm_node *l = cut->left;
    mb_rtree_remove(&st->maps, &l->node);
    l->e.size = cut->left_end - l->e.gpa;
    mb_rtree_insert(&st->maps, &l->node, l->e.gpa, cut->left_end);
  }
  for (mm_node *n = cut->whole; n != NULL; n = n->cut)
    mb_rtree_insert(&st->maps, &n->node, n->e.gpa, n->e.gpa + n->e.size);
  cut->whole = NULL;
}

/* The visible mappings of [a, b), cut to it, with references, into op.entries. */
static int clip_entries(mm_state *st, uint64_t a, uint64_t b) {
  mm_op *op = &st->op;
  uint32_t n = 0;
  mb_rtree_node *it;
  mb_rtree_for_each_overlap(it, &st->maps, a, b)
    n++;
  if (n == 0 || (op->entries = mb__malloc(n * sizeof *op->entries)) == NULL)
    return n == 0 ? 0 : MB_ENOMEM;
  mb_rtree_for_each_overlap(it, &st->maps, a, b) {
    const mb_map_entry *e = &node_of(it)->e;
    uint64_t start = it->start > a ? it->start : a, end = it->end < b ? it->end : b;
    op->entries[op->count++] = (mb_map_entry){start, end - start, mb_object_ref(e->obj),
                                              e->obj_off + (start - e->gpa), e->writable};
  }
  return 0;
}

static void unmap_rolled_back(mm_state *st) {
  op_finish(st, st->op.status);
}

/* Every mapper answered. On a failure, the tree goes back, and the eager mappers that tore
 * the range down map it again (a mapper that failed left its range as it was; a lazy one
 * faults it in again). A failure of that rollback itself (a second refusal) leaves such a
 * mapper without the range: its accesses there then fail as unmapped. */
MB_HOT static void unmap_done(mm_state *st) {
  mm_op *op = &st->op;
  const mm_unmap_msg *m = mm_unmap_of(op->req);
  if (op->status == 0) {
    cut_commit(st);
    op_finish(st, 0);
    return;
  }
  cut_restore(st);
  op_begin(st, unmap_rolled_back);
  if (clip_entries(st, m->gpa, m->gpa + m->size) == 0 && op->count > 0)
    for (mm_mapper *t = st->mappers, *past = t + st->nmappers; t < past; t++)
      if (t->ok && t->eager && !t->gone)
        call_map(st, t);
  op_settle(st);
}

MB_HOT static void handle_unmap(mm_state *st, mm_unmap_msg *m) {
  if (!valid_range(st, m->gpa, m->size)) {
    op_finish(st, MB_E_INVALID);
    return;
  }
  int rc = cut_range(st, m->gpa, m->gpa + m->size);
  if (rc != 0) {
    op_finish(st, rc);
    return;
  }
  op_begin(st, unmap_done);
  for (mm_mapper *t = st->mappers, *past = t + st->nmappers; t < past; t++) {
    t->ok = false;
    call_unmap(st, t, m->gpa, m->size);
  }
  op_settle(st);
}

/* ---- MM_REPLACE ------------------------------------------------------------------------------ */

MB_HOT static void on_vam_replace(mb_actor *self, mb_msg *reply, void *ctx) {
  mm_state *st = mb_actor_state(self);
  unlend(st, ctx);
  if (is_gone(reply->status))
    mark_gone(st, ctx);
  else if (reply->status != 0)
    op_fail(st, reply->status);
  op_settle(st);
}

/* VAM_REPLACE of view-space [gpa, gpa + size) by the operation's entries to mapper t,
 * translated; nothing when the range is in none of its windows. */
static void call_replace(mm_state *st, mm_mapper *t, uint64_t gpa, uint64_t size) {
  uint64_t a = gpa, b = gpa + size;
  const mm_window *w = window_over(t, a, b);
  mb_map_entry *e;
  uint32_t n;
  if (w == NULL)
    return;
  xlate_range(w, &a, &b);
  vam_replace_msg *m = vam_replace_new();
  if (m == NULL || xlate_entries(st, t, &e, &n) != 0) {
    if (m != NULL)
      mb_msg_free(&m->hdr);
    op_fail(st, MB_ENOMEM);
    return;
  }
  m->gpa = a;
  m->size = b - a;
  m->entries = e;
  m->count = n;
  st->op.pending++;
  st->op.lent++;
  mb_call(st->self, t->addr, &m->hdr, on_vam_replace, t);
}

/* The same to every mapper not gone. */
MB_HOT static void call_replace_all(mm_state *st, uint64_t gpa, uint64_t size) {
  for (mm_mapper *t = st->mappers, *past = t + st->nmappers; t < past; t++)
    if (!t->gone)
      call_replace(st, t, gpa, size);
}

/* The entries are valid, ascending, apart, and inside [a, b). */
MB_HOT static int check_replace(const mm_state *st, mb_map_entry *e, uint32_t count, uint64_t a,
                         uint64_t b) {
  for (uint32_t i = 0; i < count; i++)
    if (check_entry(st, &e[i]) != 0)
      return MB_E_INVALID;
  if (count > 1)
    qsort(e, count, sizeof *e, cmp_entry);
  for (uint32_t i = 0; i < count; i++)
    if (e[i].gpa < (i > 0 ? e[i - 1].gpa + e[i - 1].size : a) || e[i].gpa + e[i].size > b)
      return MB_E_INVALID;
  return 0;
}

/* A replace of exactly one node's range by one entry: the node takes the entry in place
 * (the tree keeps its shape; a DAX chunk's replace). False: cut and insert instead. */
static bool swap_in(mm_state *st, uint64_t a, uint64_t b) {
  mm_op *op = &st->op;
  mb_rtree_node *it = mb_rtree_first_overlap(&st->maps, a, b);
  if (op->count != 1 || op->entries[0].gpa != a || op->entries[0].size != b - a ||
      it == NULL || it->start != a || it->end != b)
    return false;
  op->swapped = node_of(it);
  op->swap_old = op->swapped->e;
  op->swapped->e = op->entries[0];
  op->refs_moved = true;
  return true;
}

/* The tree as it was before the replace (its entries' references go with the batch). */
static void replace_undo_tree(mm_state *st) {
  mm_op *op = &st->op;
  if (op->swapped != NULL) {
    mb_object_unref(op->swapped->e.obj);
    op->swapped->e = op->swap_old;
    op->swapped = NULL;
  } else {
    remove_batch(st, op->count);
    cut_restore(st);
  }
}

static void replace_rolled_back(mm_state *st) {
  op_finish(st, st->op.status);
}

/* Every mapper answered. On a failure the tree goes back, and every mapper gets the old
 * mappings of the range the same way (a lazy one only where it established anything). */
MB_HOT static void replace_done(mm_state *st) {
  mm_op *op = &st->op;
  const mm_replace_msg *m = mm_replace_of(op->req);
  if (op->status == 0) {
    if (op->swapped != NULL)
      mb_object_unref(op->swap_old.obj);
    cut_commit(st);
    op_finish(st, 0);
    return;
  }
  replace_undo_tree(st);
  free(op->entries);
  op->entries = NULL;
  op->count = 0;
  op->refs_moved = false;
  op_begin(st, replace_rolled_back);
  if (clip_entries(st, m->gpa, m->gpa + m->size) == 0)
    call_replace_all(st, m->gpa, m->size);
  op_settle(st); /* rollback failures do not replace the cause: op->status is set */
}

static void handle_replace(mm_state *st, mm_replace_msg *m) {
  mm_op *op = &st->op;
  op->entries = m->entries;
  op->count = m->entries != NULL ? m->count : 0;
  m->entries = NULL; /* ours now, on success and on failure */
  int rc = (m->count > 0 && op->entries == NULL) || !valid_range(st, m->gpa, m->size)
               ? MB_E_INVALID
               : check_replace(st, op->entries, op->count, m->gpa, m->gpa + m->size);
  if (rc == 0 && !swap_in(st, m->gpa, m->gpa + m->size)) {
    rc = cut_range(st, m->gpa, m->gpa + m->size);
    if (rc == 0 && (rc = insert_batch(st)) != 0)
      cut_restore(st);
  }
  if (rc != 0) {
    op_finish(st, rc);
    return;
  }
  op_begin(st, replace_done);
  call_replace_all(st, m->gpa, m->size);
  op_settle(st);
}

/* ---- protections ----------------------------------------------------------------------------- */

/* A configured VTL below a configured one. */
static bool protectable(const mm_state *st, uint8_t vtl) {
  return vtl < MB_VTL_MAX && ((st->geom.vtls >> vtl) & 1) && (st->geom.vtls >> (vtl + 1)) != 0;
}

static void on_vam_protect(mb_actor *self, mb_msg *reply, void *ctx) {
  mm_state *st = mb_actor_state(self);
  mm_mapper *m = ctx;
  st->op.lent--;
  mapper_answered(st, m, reply->status);
}

/* VAM_PROTECT of items (lent: op.items or op.old) to mapper t. */
static void call_protect(mm_state *st, mm_mapper *t, mb_prot_item *items, uint32_t n) {
  vam_protect_msg *m = vam_protect_new();
  if (m == NULL) {
    op_fail(st, MB_ENOMEM);
    return;
  }
  m->items = items;
  m->count = n;
  st->op.pending++;
  st->op.lent++;
  mb_call(st->self, t->addr, &m->hdr, on_vam_protect, t);
}

/* Items of VTL vtl's guest space: non-empty, aligned, ascending and touching, each a
 * protection, inside [0, max_addr). */
static int check_items(const mm_state *st, const mb_prot_item *it, uint32_t n) {
  if (n == 0 || it == NULL)
    return MB_E_INVALID;
  uint64_t at = it[0].gpa, max = st->geom.max_addr;
  for (uint32_t i = 0; i < n; i++) {
    if (it[i].gpa != at || it[i].size == 0 || !mb_page_aligned(it[i].gpa | it[i].size) ||
        it[i].access > MB_PROT_RW || at > max || it[i].size > max - at)
      return MB_E_INVALID;
    at += it[i].size;
  }
  return 0;
}

static void protect_rolled_back(mm_state *st) {
  op_finish(st, st->op.status);
}

/* Every protecting mapper answered. The manager's copy changes only now, so it never holds
 * what a mapper refused; when the change or a mapper failed, the mappers that took it get
 * the old protections back. */
static void protect_done(mm_state *st) {
  mm_op *op = &st->op;
  const mm_protect_msg *m = mm_protect_of(op->req);
  if (op->status == 0)
    op_fail(st, mb_prot_set_items(&st->prot[m->vtl], op->items, op->nitems));
  if (op->status == 0) {
    op_finish(st, 0);
    return;
  }
  op_begin(st, protect_rolled_back);
  for (mm_mapper *t = st->mappers, *past = t + st->nmappers; t < past; t++)
    if (t->ok && !t->gone)
      call_protect(st, t, op->old, op->nold);
  op_settle(st); /* rollback failures do not replace the cause: op->status is set */
}

static void handle_protect(mm_state *st, mm_protect_msg *m) {
  mm_op *op = &st->op;
  int rc = protectable(st, m->vtl) ? check_items(st, m->items, m->count) : MB_E_INVALID;
  size_t nold = 0;
  if (rc == 0) {
    uint64_t a = m->items[0].gpa, b = m->items[m->count - 1].gpa + m->items[m->count - 1].size;
    rc = mb_prot_items(&st->prot[m->vtl], a, b - a, &op->old, &nold);
  }
  if (rc == 0 && (op->items = mb__malloc(m->count * sizeof *op->items)) == NULL)
    rc = MB_ENOMEM;
  if (rc != 0) {
    op_finish(st, rc);
    return;
  }
  memcpy(op->items, m->items, m->count * sizeof *op->items); /* lent to mappers on any loop */
  op->nitems = m->count;
  op->nold = (uint32_t)nold;
  op_begin(st, protect_done);
  for (mm_mapper *t = st->mappers, *past = t + st->nmappers; t < past; t++) {
    t->ok = false;
    if (t->protect && t->vtl == m->vtl && !t->gone)
      call_protect(st, t, op->items, op->nitems);
  }
  op_settle(st);
}

/* ---- mappers --------------------------------------------------------------------------------- */

static void add_mapper_done(mm_state *st) {
  mm_op *op = &st->op;
  int rc = op->status;
  if (rc == 0 && !op->replay.ok)
    rc = MB_EGONE; /* a replay that reached nobody registers nobody */
  if (rc == 0)
    rc = add_mapper(st, &op->replay);
  op_finish(st, rc);
}

/* The visible mappings in t's windows, in mapper space, with references, into op.entries. */
static int snapshot_windows(mm_state *st, const mm_mapper *t) {
  mm_op *op = &st->op;
  uint32_t n = 0;
  mb_rtree_node *it;
  for (uint8_t i = 0; i < t->nwin; i++)
    mb_rtree_for_each_overlap(it, &st->maps, t->win[i].start, t->win[i].end)
      n++;
  if (n == 0 || (op->entries = mb__malloc(n * sizeof *op->entries)) == NULL)
    return n == 0 ? 0 : MB_ENOMEM;
  for (uint8_t i = 0; i < t->nwin; i++)
    mb_rtree_for_each_overlap(it, &st->maps, t->win[i].start, t->win[i].end) {
      mb_map_entry *e = &op->entries[op->count];
      if (xlate_entry(&t->win[i], &node_of(it)->e, e)) {
        mb_object_ref(e->obj);
        op->count++;
      }
    }
  return 0;
}

/* After the protections (if any): an eager mapper gets what is visible in its windows. */
static void add_mapper_replay(mm_state *st) {
  mm_op *op = &st->op;
  if (op->status != 0 || (op->nitems > 0 && !op->replay.ok)) {
    add_mapper_done(st);
    return;
  }
  int rc = op->replay.eager ? snapshot_windows(st, &op->replay) : 0;
  if (rc != 0 || op->count == 0) {
    op_fail(st, rc);
    op->replay.ok = true;
    add_mapper_done(st);
    return;
  }
  op->replay.ok = false;
  op_begin(st, add_mapper_done);
  call_map_raw(st, &op->replay, op->entries, op->count);
  op_settle(st);
}

/* The new mapper, checked against the geometry: its VTL is configured, an alias only for a
 * VTL-2 mapper of a manager with one, protections only at a protectable VTL. */
static int new_mapper(mm_state *st, const mm_add_mapper_msg *m, mm_mapper *t) {
  if (m->mapper.loop == NULL || find_mapper(st, m->mapper) != NULL ||
      m->vtl > MB_VTL_MAX || !((st->geom.vtls >> m->vtl) & 1) ||
      (m->alias && (m->vtl != 2 || st->geom.alias == 0)) ||
      (m->protect && !protectable(st, m->vtl)))
    return MB_E_INVALID;
  *t = (mm_mapper){.addr = m->mapper, .eager = m->eager, .protect = m->protect, .vtl = m->vtl};
  set_windows(st, t, m->alias);
  return 0;
}

/* A protecting mapper first gets its VTL's protections (before any mapping: a lazy one is
 * not registered before they are in, so no resolve reaches it earlier), then an eager one
 * what is visible. */
static void handle_add_mapper(mm_state *st, mm_add_mapper_msg *m) {
  mm_op *op = &st->op;
  mm_mapper t;
  int rc = new_mapper(st, m, &t);
  if (rc == 0)
    rc = reserve_mapper(st);
  size_t n = 0;
  if (rc == 0 && t.protect && mb_prot_count(&st->prot[t.vtl]) > 0)
    rc = mb_prot_items(&st->prot[t.vtl], 0, st->geom.max_addr, &op->items, &n);
  if (rc != 0) {
    op_finish(st, rc);
    return;
  }
  op->replay = t;
  op->nitems = (uint32_t)n;
  if (n == 0) {
    add_mapper_replay(st);
    return;
  }
  op_begin(st, add_mapper_replay);
  call_protect(st, &op->replay, op->items, op->nitems);
  op_settle(st);
}

static void handle_remove_mapper(mm_state *st, mm_remove_mapper_msg *m) {
  bool known = find_mapper(st, m->mapper) != NULL;
  drop_mapper(st, m->mapper);
  op_finish(st, known ? 0 : MB_E_NOTFOUND);
}

/* ---- queries --------------------------------------------------------------------------------- */

/* Not an operation: answered at once, or forwarded to the mapper, which answers. */
static void handle_resolve(mm_state *st, mm_resolve_msg *m) {
  m->found = false;
  memset(&m->entry, 0, sizeof m->entry);
  mm_mapper *mapper = find_mapper(st, m->mapper);
  if (mapper == NULL) {
    mb_reply(&m->hdr, MB_E_NOTFOUND);
    return;
  }
  /* m->gpa is mapper space: the window that shows it says which view-space byte it is. */
  const mm_window *w = window_at(mapper, m->gpa);
  mb_rtree_node *it = w ? mb_rtree_find(&st->maps, w->start + (m->gpa - w->off)) : NULL;
  if (it == NULL || !xlate_entry(w, &node_of(it)->e, &m->entry)) {
    memset(&m->entry, 0, sizeof m->entry);
    mb_reply(&m->hdr, MB_E_UNMAPPED);
    return;
  }
  mb_object_ref(m->entry.obj);
  m->found = true;
  /* Sent after every MAP/UNMAP this manager sent the mapper before, so ordered with them. */
  mb_forward(st->self, m->mapper, &m->hdr);
}

static void handle_list(mm_state *st, mm_list_msg *m) {
  int rc = snapshot(st, &m->entries, &m->count);
  mb_reply(&m->hdr, rc);
}

/* ---- the actor ------------------------------------------------------------------------------- */

static int wait_push(mm_state *st, mb_msg *msg) {
  if (st->nwaiting == st->cap_waiting) {
    size_t cap = st->cap_waiting ? 2 * st->cap_waiting : 8;
    mb_msg **w = mb__malloc(cap * sizeof *w);
    if (w == NULL)
      return MB_ENOMEM;
    for (size_t i = 0; i < st->nwaiting; i++)
      w[i] = st->waiting[(st->wait_head + i) % st->cap_waiting];
    free(st->waiting);
    st->waiting = w;
    st->wait_head = 0;
    st->cap_waiting = cap;
  }
  st->waiting[(st->wait_head + st->nwaiting++) % st->cap_waiting] = msg;
  return 0;
}

static mb_msg *wait_pop(mm_state *st) {
  if (st->nwaiting == 0)
    return NULL;
  mb_msg *msg = st->waiting[st->wait_head];
  st->wait_head = (st->wait_head + 1) % st->cap_waiting;
  st->nwaiting--;
  return msg;
}

static void dispatch(mm_state *st, mb_msg *msg);

/* Takes up waiting requests until one starts an operation that is still in flight. */
static void pump(mm_state *st) {
  if (st->pumping)
    return; /* an op_finish inside dispatch below: the loop here goes on */
  st->pumping = true;
  mb_msg *msg;
  while (!st->busy && (msg = wait_pop(st)) != NULL)
    dispatch(st, msg);
  st->pumping = false;
}

/* May this request be handled now? */
static bool may_run(const mm_state *st, const mb_msg *msg) {
  if (!st->busy && st->nwaiting == 0)
    return true;
  return msg->kind == MM_RESOLVE && st->busy && st->op.req->kind != MM_MAP;
}

/* Frees a request's entry array (MM_MAP, MM_REPLACE), as taking it over would. */
static void drop_entries(mb_msg *msg) {
  mm_dispose(msg);
  mm_map_msg *map = mm_map_of(msg);
  mm_replace_msg *repl = mm_replace_of(msg);
  if (map) map->entries = NULL, map->count = 0;
  if (repl) repl->entries = NULL, repl->count = 0;
}

/* Every message mm_handle does not dispatch at once. */
__attribute__((noinline)) static void mm_handle_other(mm_state *st, mb_msg *msg) {
  if (!mb_msg_is_request(msg)) { /* nobody to answer; an entry array is ours all the same */
    drop_entries(msg);
    mb_msg_free(msg);
    return;
  }
  if (msg->proto != &mm_protocol) {
    mb_reply(msg, MB_E_INVALID);
    return;
  }
  if (may_run(st, msg)) {
    dispatch(st, msg);
    return;
  }
  int rc = wait_push(st, msg);
  if (rc == 0) {
    mb_msg_keep(msg);
    return;
  }
  drop_entries(msg); /* refused, but its entry array was handed over all the same */
  mb_reply(msg, rc);
}

MB_HOT static void mm_handle(mb_actor *self, mb_msg *msg) {
  mm_state *st = mb_actor_state(self);
  if (mb_msg_is_request(msg) && msg->proto == &mm_protocol && !st->busy && st->nwaiting == 0)
    dispatch(st, msg);
  else
    mm_handle_other(st, msg);
}

MB_HOT static void dispatch(mm_state *st, mb_msg *msg) {
  switch ((enum mm_kind)msg->kind) {
  case MM_RESOLVE:
    handle_resolve(st, mm_resolve_of(msg));
    return;
  case MM_LIST:
    handle_list(st, mm_list_of(msg));
    return;
  default:
    break;
  }
  /* One at a time: nothing else but resolves runs until this operation answers. */
  mb_msg_keep(msg);
  st->busy = true;
  st->op.req = msg;
  switch ((enum mm_kind)msg->kind) {
  case MM_MAP: handle_map(st, mm_map_of(msg)); break;
  case MM_UNMAP: handle_unmap(st, mm_unmap_of(msg)); break;
  case MM_REPLACE: handle_replace(st, mm_replace_of(msg)); break;
  case MM_ADD_MAPPER: handle_add_mapper(st, mm_add_mapper_of(msg)); break;
  case MM_REMOVE_MAPPER: handle_remove_mapper(st, mm_remove_mapper_of(msg)); break;
  case MM_PROTECT: handle_protect(st, mm_protect_of(msg)); break;
  default: op_finish(st, MB_E_INVALID); break;
  }
}

/* The translated arrays still lent when the loop stops are left to their mappers, with
 * references of their own (as op.entries is). */
static void leave_sent(mm_state *st) {
  for (uint32_t i = 0; i <= st->nmappers; i++) {
    mm_mapper *t = i < st->nmappers ? &st->mappers[i] : &st->op.replay;
    for (uint32_t k = 0; t->sent != NULL && k < t->nsent; k++)
      mb_object_ref(t->sent[k].obj);
  }
}

/* Postorder: O(n) and no rebalancing work. The AVL height bounds the recursion. */
static void free_subtree(mb_rtree_node *n) {
  while (n != NULL) {
    free_subtree(n->left);
    mb_rtree_node *right = n->right;
    node_free(node_of(n));
    n = right;
  }
}

static void mm_destroy(mb_actor *self) {
  mm_state *st = mb_actor_state(self);
  mm_op *op = &st->op;
  for (mm_node *n = op->cut.whole, *next; n != NULL; n = next) { /* an MM_UNMAP in flight */
    next = n->cut;
    node_free(n);
  }
  if (op->swapped != NULL) /* an MM_REPLACE in place in flight: the node keeps the new */
    mb_object_unref(op->swap_old.obj);
  if (st->busy) {
    /* Mappers on other loops may still be reading a lent array: leave it to them rather than
     * free it under their feet (only when a loop stops in the middle of an operation). The
     * batch's nodes are in the tree and go with it. */
    if (op->lent == 0 && op->refs_moved)
      free(op->entries);
    else if (op->lent == 0)
      mb_map_entries_free(op->entries, op->count);
    else if (op->refs_moved) /* the array left to them needs references of its own again */
      for (uint32_t i = 0; i < op->count; i++)
        mb_object_ref(op->entries[i].obj);
    if (op->lent == 0) {
      free(op->items);
      free(op->old);
    }
    leave_sent(st);
    mb_msg_free(op->req);
  }
  while (st->nnode_cache > 0)
    free(st->node_cache[--st->nnode_cache]);
  /* Never taken up: an MM_MAP's array goes back with the answer (its sender frees it). */
  int status = mb_loop_stopping(mb_actor_loop(self)) ? MB_ESTOPPED : MB_EGONE;
  mb_msg *msg;
  while ((msg = wait_pop(st)) != NULL)
    mb_reply(msg, status);
  free(st->waiting);
  free_subtree(st->maps.root);
  free(st->mappers);
  for (int i = 0; i < MB_VTL_MAX; i++)
    mb_prot_fini(&st->prot[i]);
  free(st);
}

/* Everything the mapping manager does may run on a thread lending its loop (MB_LOOP_LEND). */
static bool mm_lendable(const mb_msg *m) { return (void)m, true; }
static const mb_actor_type mm_type = {"mapping_manager", mm_handle, mm_destroy,
                                      MB_ACTOR_PROMPT_REPLIES, mm_lendable};

mb_actor *mb_mapping_manager_create(mb_loop *loop, const mb_mm_geom *g) {
  if (g == NULL || g->max_addr == 0 || !mb_page_aligned(g->max_addr) ||
      (g->stride != 0 && (g->stride < g->max_addr || (g->stride & (g->stride - 1)) != 0)) ||
      !mb_page_aligned(g->alias))
    return NULL;
  mm_state *st = mb__calloc(1, sizeof *st);
  if (st == NULL)
    return NULL;
  st->geom = *g;
  st->geom.stride = g->stride ? g->stride : mb_mm_stride(g->max_addr);
  st->geom.vtls |= 1;
  for (int i = 0; i < MB_VTL_MAX; i++)
    mb_prot_init(&st->prot[i]);
  mb_rtree_init(&st->maps);
  st->self = mb_actor_create(loop, &mm_type, st, "mapping_manager");
  if (st->self == NULL) {
    free(st);
    return NULL;
  }
  return st->self;
}
