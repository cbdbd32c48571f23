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
 */
#include "mapping_manager.h"

#include <stdlib.h>
#include <string.h>

#include "fault_inject.h" /* mb__malloc, mb__calloc: MB_FI_ALLOC */
#include "grow.h"
#include "mb_errors.h"
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

/* A registered mapper, with its part in the operation in flight. */
typedef struct mm_mapper {
  mb_addr addr;
  bool eager;
  bool ok;   /* it established the operation's batch (MM_MAP) or tore it down (MM_UNMAP) */
  bool gone; /* it could not answer: forgotten when the operation ends */
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
} mm_op;

struct mm_state {
  mb_actor *self;
  mb_rtree maps;
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

void mb_map_entries_free(mb_map_entry *entries, uint32_t count) {
  if (entries == NULL)
    return;
  for (uint32_t i = 0; i < count; i++)
    mb_object_unref(entries[i].obj);
  free(entries);
}

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

static int add_mapper(mm_state *st, mb_addr addr, bool eager) {
  int rc = reserve_mapper(st);
  if (rc == 0)
    st->mappers[st->nmappers++] = (mm_mapper){addr, eager, false, false};
  return rc;
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
static void op_finish(mm_state *st, int status) {
  mm_op *op = &st->op;
  mb_msg *req = op->req;
  if (op->refs_moved)
    free(op->entries);
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

static void on_vam_map(mb_actor *self, mb_msg *reply, void *ctx) {
  mm_state *st = mb_actor_state(self);
  mm_mapper *m = ctx;
  st->op.lent--;
  if (reply->status == 0)
    m->ok = true;
  else if (is_gone(reply->status))
    mark_gone(st, m);
  else
    op_fail(st, reply->status);
  op_settle(st);
}

/* VAM_MAP of the operation's entries to mapper t. */
static void call_map(mm_state *st, mm_mapper *t) {
  vam_map_msg *m = vam_map_new();
  if (m == NULL) {
    op_fail(st, MB_ENOMEM);
    return;
  }
  m->entries = st->op.entries;
  m->count = st->op.count;
  st->op.pending++;
  st->op.lent++;
  mb_call(st->self, t->addr, &m->hdr, on_vam_map, t);
}

static void on_vam_unmap(mb_actor *self, mb_msg *reply, void *ctx) {
  mm_state *st = mb_actor_state(self);
  mm_mapper *m = ctx;
  if (reply->status == 0)
    m->ok = true;
  else if (is_gone(reply->status))
    mark_gone(st, m);
  else
    op_fail(st, reply->status);
  op_settle(st);
}

static void call_unmap(mm_state *st, mm_mapper *t, uint64_t gpa, uint64_t size) {
  vam_unmap_msg *m = vam_unmap_new();
  if (m == NULL) {
    op_fail(st, MB_ENOMEM);
    return;
  }
  m->gpa = gpa;
  m->size = size;
  st->op.pending++;
  mb_call(st->self, t->addr, &m->hdr, on_vam_unmap, t);
}

/* ---- MM_MAP ---------------------------------------------------------------------------------- */

static int cmp_entry(const void *a, const void *b) {
  uint64_t x = ((const mb_map_entry *)a)->gpa, y = ((const mb_map_entry *)b)->gpa;
  return x < y ? -1 : x > y;
}

static int check_entry(const mb_map_entry *e) {
  if (e->obj == NULL || e->size == 0 || !mb_page_aligned(e->gpa | e->size) ||
      e->size > UINT64_MAX - e->gpa)
    return MB_E_INVALID;
  return mb_object_check_range(e->obj, e->obj_off, e->size) == 0 ? 0 : MB_E_INVALID;
}

/* Sorts the batch and checks it against itself and the visible mappings. */
static int check_batch(mm_state *st, mb_map_entry *e, uint32_t count) {
  for (uint32_t i = 0; i < count; i++)
    if (check_entry(&e[i]) != 0)
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
static int insert_batch(mm_state *st) {
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
static void map_done(mm_state *st) {
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
      for (i++; i < op->count && op->entries[i].gpa == end; i++)
        end += op->entries[i].size;
      call_unmap(st, t, start, end - start);
    }
  }
  op_settle(st); /* rollback failures do not replace the cause: op->status is set */
}

static void handle_map(mm_state *st, mm_map_msg *m) {
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
static int cut_range(mm_state *st, uint64_t a, uint64_t b) {
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
static void unmap_done(mm_state *st) {
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

static void handle_unmap(mm_state *st, mm_unmap_msg *m) {
  if (m->size == 0 || !mb_page_aligned(m->gpa | m->size) || m->size > UINT64_MAX - m->gpa) {
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

static void on_vam_replace(mb_actor *self, mb_msg *reply, void *ctx) {
  mm_state *st = mb_actor_state(self);
  st->op.lent--;
  if (is_gone(reply->status))
    mark_gone(st, ctx);
  else if (reply->status != 0)
    op_fail(st, reply->status);
  op_settle(st);
}

/* VAM_REPLACE of [gpa, gpa + size) by the operation's entries to every mapper not gone. */
static void call_replace_all(mm_state *st, uint64_t gpa, uint64_t size) {
  for (mm_mapper *t = st->mappers, *past = t + st->nmappers; t < past; t++) {
    vam_replace_msg *m = t->gone ? NULL : vam_replace_new();
    if (m == NULL) {
      if (!t->gone)
        op_fail(st, MB_ENOMEM);
      continue;
    }
    m->gpa = gpa;
    m->size = size;
    m->entries = st->op.entries;
    m->count = st->op.count;
    st->op.pending++;
    st->op.lent++;
    mb_call(st->self, t->addr, &m->hdr, on_vam_replace, t);
  }
}

/* The entries are valid, ascending, apart, and inside [a, b). */
static int check_replace(mb_map_entry *e, uint32_t count, uint64_t a, uint64_t b) {
  for (uint32_t i = 0; i < count; i++)
    if (check_entry(&e[i]) != 0)
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
static void replace_done(mm_state *st) {
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
  int rc = (m->count > 0 && op->entries == NULL) || m->size == 0 ||
                   !mb_page_aligned(m->gpa | m->size) || m->size > UINT64_MAX - m->gpa
               ? MB_E_INVALID
               : check_replace(op->entries, op->count, m->gpa, m->gpa + m->size);
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

/* ---- mappers --------------------------------------------------------------------------------- */

static void add_mapper_done(mm_state *st) {
  mm_op *op = &st->op;
  int rc = op->status;
  if (rc == 0 && !op->replay.ok)
    rc = MB_EGONE; /* a replay that reached nobody registers nobody */
  if (rc == 0)
    rc = add_mapper(st, op->replay.addr, true);
  op_finish(st, rc);
}

static void handle_add_mapper(mm_state *st, mm_add_mapper_msg *m) {
  mm_op *op = &st->op;
  int rc = 0;
  if (m->mapper.loop == NULL)
    rc = MB_E_INVALID;
  else if (find_mapper(st, m->mapper) != NULL)
    rc = MB_E_INVALID;
  if (rc == 0 && (!m->eager || mb_rtree_empty(&st->maps))) {
    op_finish(st, add_mapper(st, m->mapper, m->eager));
    return;
  }
  if (rc == 0)
    rc = reserve_mapper(st);
  if (rc == 0)
    rc = snapshot(st, &op->entries, &op->count);
  if (rc != 0) {
    op_finish(st, rc);
    return;
  }
  op->replay = (mm_mapper){m->mapper, true, false, false};
  op_begin(st, add_mapper_done);
  call_map(st, &op->replay);
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
  mb_rtree_node *it = mb_rtree_find(&st->maps, m->gpa);
  if (it == NULL) {
    mb_reply(&m->hdr, MB_E_UNMAPPED);
    return;
  }
  m->entry = node_of(it)->e;
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

static void mm_handle(mb_actor *self, mb_msg *msg) {
  mm_state *st = mb_actor_state(self);
  if (mb_msg_is_request(msg) && msg->proto == &mm_protocol && !st->busy && st->nwaiting == 0)
    dispatch(st, msg);
  else
    mm_handle_other(st, msg);
}

static void dispatch(mm_state *st, mb_msg *msg) {
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
  default: op_finish(st, MB_E_INVALID); break;
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
  free(st);
}

/* Everything the mapping manager does may run on a thread lending its loop (MB_LOOP_LEND). */
static bool mm_lendable(const mb_msg *m) { return (void)m, true; }
static const mb_actor_type mm_type = {"mapping_manager", mm_handle, mm_destroy, 0, mm_lendable};

mb_actor *mb_mapping_manager_create(mb_loop *loop) {
  mm_state *st = mb__calloc(1, sizeof *st);
  if (st == NULL)
    return NULL;
  mb_rtree_init(&st->maps);
  st->self = mb_actor_create(loop, &mm_type, st, "mapping_manager");
  if (st->self == NULL) {
    free(st);
    return NULL;
  }
  return st->self;
}
