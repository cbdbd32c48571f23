/* prot_map.c: one VTL's page protections (prot_map.h) as merged, disjoint ranges in an
 * mb_rtree.
 *
 * A change of [a, b) to an access is planned before anything moves: the stored ranges it
 * touches (overlapping [a, b) or ending at a or starting at b) are replaced by at most three
 * pieces, what is left of the first one before a, [a, b) itself and what is left of the last
 * one after b, with pieces of equal access merged and a read-write piece dropped. A touched
 * range equal to a piece stays where it is; every other one is unlinked and its node reused,
 * so a change needs new nodes only when it yields more pieces than it touches (at most two).
 * Those come from a pool filled first, which is what makes a change all or nothing. */
#include "prot_map.h"

#include <assert.h>
#include <stdlib.h>

#include "fault_inject.h"
#include "mb_errors.h"

#define RANGE(n) mb_rtree_entry((n), mb_prot_range, node)

/* ---- a pool of spare nodes, linked through node.parent while unlinked ----------------------- */

typedef struct pool {
  mb_prot_range *head;
} pool;

static void pool_put(pool *p, mb_prot_range *r) {
  r->node.parent = p->head ? &p->head->node : NULL;
  p->head = r;
}

static mb_prot_range *pool_take(pool *p) {
  mb_prot_range *r = p->head;
  assert(r != NULL); /* the plan counted the nodes a change needs */
  p->head = r->node.parent ? RANGE(r->node.parent) : NULL;
  return r;
}

static void pool_drain(pool *p) {
  while (p->head)
    free(pool_take(p));
}

/* Adds n fresh nodes: 0, or MB_ENOMEM with the pool as it was. */
static int pool_fill(pool *p, size_t n) {
  pool fresh = {NULL};
  for (size_t i = 0; i < n; i++) {
    mb_prot_range *r = mb__malloc(sizeof *r);
    if (r == NULL) {
      pool_drain(&fresh);
      return MB_ENOMEM;
    }
    pool_put(&fresh, r);
  }
  while (fresh.head)
    pool_put(p, pool_take(&fresh));
  return 0;
}

/* ---- planning and applying one change ------------------------------------------------------- */

typedef struct piece {
  uint64_t start, end;
  uint8_t access;
  bool placed; /* a touched range already is this piece */
} piece;

typedef struct plan {
  mb_rtree_node *first, *last; /* the touched ranges, in order; NULL if none */
  piece pieces[3];
  size_t count;
} plan;

static bool valid(uint64_t gpa, uint64_t size, uint8_t access) {
  return access <= MB_PROT_RW && size <= UINT64_MAX - gpa;
}

/* The last stored range starting at or before x. */
static mb_rtree_node *last_starting_by(const mb_rtree *t, uint64_t x) {
  mb_rtree_node *after = x == UINT64_MAX ? NULL : mb_rtree_lower_bound(t, x + 1);
  return after ? mb_rtree_prev(after) : mb_rtree_last(t);
}

/* O(log n): the touched ranges' ends and the pieces that replace them, for a < b. */
static void make_plan(const mb_prot_map *m, uint64_t a, uint64_t b, uint8_t access, plan *pl) {
  const mb_rtree *t = &m->ranges;
  pl->first = mb_rtree_first_overlap(t, a == 0 ? 0 : a - 1, b == UINT64_MAX ? b : b + 1);
  pl->last = pl->first ? last_starting_by(t, b) : NULL;
  piece mid = {a, b, access, false}, left = {0, 0, 0, false}, right = {0, 0, 0, false};
  if (pl->first && pl->first->start < a)
    left = (piece){pl->first->start, a, RANGE(pl->first)->access, false};
  if (pl->last && pl->last->end > b)
    right = (piece){b, pl->last->end, RANGE(pl->last)->access, false};
  if (left.end && left.access == access) {
    mid.start = left.start;
    left.end = 0;
  }
  if (right.end && right.access == access) {
    mid.end = right.end;
    right.end = 0;
  }
  pl->count = 0;
  if (left.end)
    pl->pieces[pl->count++] = left;
  if (access != MB_PROT_RW)
    pl->pieces[pl->count++] = mid;
  if (right.end)
    pl->pieces[pl->count++] = right;
}

/* New nodes the plan needs: pieces beyond the touched ranges (counted up to three). */
static size_t plan_needs(const plan *pl) {
  size_t touched = 0;
  for (mb_rtree_node *n = pl->first; n && touched < pl->count; n = mb_rtree_next(n)) {
    touched++;
    if (n == pl->last)
      break;
  }
  return pl->count - touched;
}

/* Marks the piece that n already is, if any. */
static bool claim_piece(plan *pl, const mb_rtree_node *n) {
  for (size_t i = 0; i < pl->count; i++) {
    piece *p = &pl->pieces[i];
    if (!p->placed && p->start == n->start && p->end == n->end &&
        p->access == RANGE(n)->access)
      return p->placed = true;
  }
  return false;
}

/* Unlinks the touched ranges the plan does not keep (into the pool) and links the missing
 * pieces from the pool, which holds at least plan_needs() nodes. Cannot fail. */
static void apply_plan(mb_prot_map *m, plan *pl, pool *p) {
  mb_rtree_node *n = pl->first, *next;
  for (; n; n = next) {
    next = n == pl->last ? NULL : mb_rtree_next(n);
    if (!claim_piece(pl, n)) {
      mb_rtree_remove(&m->ranges, n);
      pool_put(p, RANGE(n));
    }
  }
  for (size_t i = 0; i < pl->count; i++) {
    piece *pc = &pl->pieces[i];
    if (pc->placed)
      continue;
    mb_prot_range *r = pool_take(p);
    r->access = pc->access;
    int rc = mb_rtree_insert_disjoint(&m->ranges, &r->node, pc->start, pc->end);
    assert(rc == 0); /* the pieces fill what the unlinked ranges left */
    (void)rc;
  }
}

/* ---- the API ---------------------------------------------------------------------------------- */

void mb_prot_init(mb_prot_map *m) {
  mb_rtree_init(&m->ranges);
}

/* Frees every node bottom-up without rebalancing: O(n). */
void mb_prot_fini(mb_prot_map *m) {
  mb_rtree_node *n = m->ranges.root;
  while (n) {
    if (n->left) {
      n = n->left;
    } else if (n->right) {
      n = n->right;
    } else {
      mb_rtree_node *parent = n->parent;
      if (parent)
        *(parent->left == n ? &parent->left : &parent->right) = NULL;
      free(RANGE(n));
      n = parent;
    }
  }
  mb_rtree_init(&m->ranges);
}

int mb_prot_set(mb_prot_map *m, uint64_t gpa, uint64_t size, uint8_t access) {
  if (!valid(gpa, size, access))
    return MB_E_INVALID;
  if (size == 0)
    return 0;
  plan pl;
  make_plan(m, gpa, gpa + size, access, &pl);
  pool p = {NULL};
  if (pool_fill(&p, plan_needs(&pl)) != 0)
    return MB_ENOMEM;
  apply_plan(m, &pl, &p);
  pool_drain(&p);
  return 0;
}

/* Each change needs at most two new nodes, whatever the ones before it did (nodes they
 * unlinked go back to the pool), so 2 * n up front is enough. */
int mb_prot_set_items(mb_prot_map *m, const mb_prot_item *items, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!valid(items[i].gpa, items[i].size, items[i].access))
      return MB_E_INVALID;
  if (n > SIZE_MAX / 2)
    return MB_ENOMEM;
  pool p = {NULL};
  if (pool_fill(&p, 2 * n) != 0)
    return MB_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    if (items[i].size == 0)
      continue;
    plan pl;
    make_plan(m, items[i].gpa, items[i].gpa + items[i].size, items[i].access, &pl);
    apply_plan(m, &pl, &p);
  }
  pool_drain(&p);
  return 0;
}

uint8_t mb_prot_at(const mb_prot_map *m, uint64_t gpa, uint64_t *end) {
  const mb_rtree_node *n = mb_rtree_find(&m->ranges, gpa);
  if (n) {
    if (end)
      *end = n->end; /* neighbours of equal access are merged: the run ends here */
    return RANGE(n)->access;
  }
  if (end) {
    const mb_rtree_node *next = mb_rtree_lower_bound(&m->ranges, gpa);
    *end = next ? next->start : UINT64_MAX;
  }
  return MB_PROT_RW;
}

/* Writes the cover of [a, b) to out (when not NULL) and answers its length. */
static size_t cover(const mb_prot_map *m, uint64_t a, uint64_t b, mb_prot_item *out) {
  size_t k = 0;
  uint64_t pos = a;
  const mb_rtree_node *n;
  mb_rtree_for_each_overlap(n, &m->ranges, a, b) {
    uint64_t s = n->start > a ? n->start : a, e = n->end < b ? n->end : b;
    if (s > pos && out)
      out[k] = (mb_prot_item){pos, s - pos, MB_PROT_RW};
    k += s > pos;
    if (out)
      out[k] = (mb_prot_item){s, e - s, RANGE(n)->access};
    k++;
    pos = e;
  }
  if (pos < b && out)
    out[k] = (mb_prot_item){pos, b - pos, MB_PROT_RW};
  return k + (pos < b);
}

int mb_prot_items(const mb_prot_map *m, uint64_t gpa, uint64_t size, mb_prot_item **out,
                  size_t *n) {
  *out = NULL;
  *n = 0;
  if (size > UINT64_MAX - gpa)
    return MB_E_INVALID;
  if (size == 0)
    return 0;
  size_t count = cover(m, gpa, gpa + size, NULL);
  mb_prot_item *items = mb__malloc(count * sizeof *items);
  if (items == NULL)
    return MB_ENOMEM;
  cover(m, gpa, gpa + size, items);
  *out = items;
  *n = count;
  return 0;
}

bool mb_prot_allows(const mb_prot_map *m, uint64_t gpa, uint64_t size, bool write) {
  if (size > UINT64_MAX - gpa)
    return false;
  const mb_rtree_node *n;
  mb_rtree_for_each_overlap(n, &m->ranges, gpa, gpa + size) {
    if (write || RANGE(n)->access == MB_PROT_NONE)
      return false;
  }
  return true;
}

const mb_prot_range *mb_prot_first(const mb_prot_map *m, uint64_t a, uint64_t b) {
  const mb_rtree_node *n = mb_rtree_first_overlap(&m->ranges, a, b);
  return n ? RANGE(n) : NULL;
}

const mb_prot_range *mb_prot_next(const mb_prot_range *r, uint64_t a, uint64_t b) {
  const mb_rtree_node *n = mb_rtree_next_overlap(&r->node, a, b);
  return n ? RANGE(n) : NULL;
}

size_t mb_prot_count(const mb_prot_map *m) {
  return mb_rtree_count(&m->ranges);
}

int mb__prot_validate(const mb_prot_map *m) {
  if (mb__rtree_validate(&m->ranges) != 0)
    return -1;
  const mb_rtree_node *n, *prev = NULL;
  mb_rtree_for_each(n, &m->ranges) {
    uint8_t access = RANGE(n)->access;
    if (access != MB_PROT_NONE && access != MB_PROT_RO)
      return -1;
    if (prev && (prev->end > n->start ||
                 (prev->end == n->start && RANGE(prev)->access == access)))
      return -1;
    prev = n;
  }
  return 0;
}
