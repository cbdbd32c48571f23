/* part_view.c: a partition's map with protections enforced in its backend (part_view.h).
 *
 * Invariant: the backend instance maps exactly the sub-ranges of every piece, computed from
 * the pieces and the protections as they are now. So a change is planned as two sorted lists,
 * the sub-ranges before and after it over the pieces it touches; the ones in both stay as
 * they are, the others are unmapped (all of them first: that frees KVM slots) and mapped,
 * and the first failure undoes the done calls in reverse order. The new protections are
 * planned as an overlay (the items over the map) and stored only once the backend took them,
 * so a failure has nothing to put back in the map. */
#include "part_view.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fault_inject.h"
#include "mb_hot.h"
#include "mb_range.h"
#include "pieces.h"

typedef struct pv_piece {
  mb_rtree_node node; /* [gpa, gpa + size) */
  uint8_t *host;      /* host VA of gpa */
  bool writable;      /* the region's access */
} pv_piece;

static pv_piece *piece_of(mb_rtree_node *n) {
  return n ? mb_rtree_entry(n, pv_piece, node) : NULL;
}

static uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* ---- sub-range lists: a few inline, more on the heap ------------------------------------ */

enum { PV_INLINE = 4 };

typedef struct pv_sub {
  uint64_t gpa, size;
  uint8_t *host;
  uint8_t access; /* MB_PROT_RO or MB_PROT_RW */
} pv_sub;

typedef struct pv_list {
  pv_sub *v; /* small, or malloc'd */
  size_t n, cap;
  pv_sub small[PV_INLINE];
} pv_list;

static void list_init(pv_list *l) {
  l->v = l->small;
  l->n = 0;
  l->cap = PV_INLINE;
}

static void list_fini(pv_list *l) {
  if (l->v != l->small)
    free(l->v);
}

static int list_push(pv_list *l, pv_sub s) {
  if (l->n == l->cap) {
    pv_sub *v = mb__malloc(2 * l->cap * sizeof *v);
    if (!v)
      return MB_ENOMEM;
    memcpy(v, l->v, l->n * sizeof *v);
    list_fini(l);
    l->v = v;
    l->cap *= 2;
  }
  l->v[l->n++] = s;
  return 0;
}

/* ---- a piece's sub-ranges ----------------------------------------------------------------- */

/* New protections not stored yet: items covering [lo, hi) (n == 0: none). */
typedef struct pv_overlay {
  const mb_prot_item *items;
  size_t n;
  uint64_t lo, hi;
} pv_overlay;

static uint8_t effective(bool writable, uint8_t prot) {
  return writable || prot == MB_PROT_NONE ? prot : MB_PROT_RO;
}

/* Appends [a, b) of pc under protection prot to l: merged into the last sub-range when that
 * is of the same piece (index >= from), ends at a and has the same access; none is left out. */
static int emit(pv_list *l, size_t from, const pv_piece *pc, uint64_t a, uint64_t b,
                uint8_t prot) {
  uint8_t access = effective(pc->writable, prot);
  if (a >= b || access == MB_PROT_NONE)
    return 0;
  pv_sub *last = l->n > from ? &l->v[l->n - 1] : NULL;
  if (last && last->gpa + last->size == a && last->access == access) {
    last->size += b - a;
    return 0;
  }
  return list_push(l, (pv_sub){a, b - a, pc->host + (a - pc->node.start), access});
}

/* The runs of [a, b) of pc under the stored protections. */
static int map_runs(const mb_prot_map *m, pv_list *l, size_t from, const pv_piece *pc,
                    uint64_t a, uint64_t b) {
  uint64_t pos = a;
  int rc = 0;
  for (const mb_prot_range *r = mb_prot_first(m, a, b); r && rc == 0;
       r = mb_prot_next(r, a, b)) {
    uint64_t s = max64(r->node.start, a), e = min64(r->node.end, b);
    rc = emit(l, from, pc, pos, s, MB_PROT_RW);
    if (rc == 0)
      rc = emit(l, from, pc, s, e, r->access);
    pos = e;
  }
  return rc ? rc : emit(l, from, pc, pos, b, MB_PROT_RW);
}

/* The runs of [a, b) (inside the overlay) of pc under the overlay's items. */
static int item_runs(const pv_overlay *o, pv_list *l, size_t from, const pv_piece *pc,
                     uint64_t a, uint64_t b) {
  size_t lo = 0, hi = o->n; /* the first item that ends after a */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (o->items[mid].gpa + o->items[mid].size <= a)
      lo = mid + 1;
    else
      hi = mid;
  }
  int rc = 0;
  for (size_t i = lo; i < o->n && o->items[i].gpa < b && rc == 0; i++) {
    const mb_prot_item *it = &o->items[i];
    rc = emit(l, from, pc, max64(it->gpa, a), min64(it->gpa + it->size, b), it->access);
  }
  return rc;
}

/* Appends pc's sub-ranges to l, under the stored protections and the overlay (NULL: none). */
static int piece_subs(const mb_pview *v, const pv_overlay *o, const pv_piece *pc, pv_list *l) {
  size_t from = l->n;
  uint64_t s = pc->node.start, e = pc->node.end;
  if (!o || o->hi <= s || e <= o->lo)
    return map_runs(&v->prot, l, from, pc, s, e);
  uint64_t a = max64(s, o->lo), b = min64(e, o->hi);
  int rc = map_runs(&v->prot, l, from, pc, s, a);
  if (rc == 0)
    rc = item_runs(o, l, from, pc, a, b);
  return rc ? rc : map_runs(&v->prot, l, from, pc, b, e);
}

/* The sub-ranges of every piece overlapping [lo, hi), in ascending order. */
static int range_subs(const mb_pview *v, const pv_overlay *o, uint64_t lo, uint64_t hi,
                      pv_list *l) {
  int rc = 0;
  for (mb_rtree_node *n = mb_rtree_first_overlap(&v->pieces, lo, hi); n && rc == 0;
       n = mb_rtree_next_overlap(n, lo, hi))
    rc = piece_subs(v, o, piece_of(n), l);
  return rc;
}

/* ---- applying a change -------------------------------------------------------------------- */

static bool same_sub(const pv_sub *a, const pv_sub *b) {
  return a->gpa == b->gpa && a->size == b->size && a->host == b->host &&
         a->access == b->access;
}

/* Drops the sub-ranges that are in both lists (each sorted, disjoint): they stay mapped. */
static void drop_common(pv_list *a, pv_list *b) {
  size_t i = 0, j = 0, na = 0, nb = 0;
  while (i < a->n || j < b->n) {
    if (i < a->n && j < b->n && same_sub(&a->v[i], &b->v[j]))
      i++, j++;
    else if (j == b->n || (i < a->n && a->v[i].gpa < b->v[j].gpa))
      a->v[na++] = a->v[i++];
    else
      b->v[nb++] = b->v[j++];
  }
  a->n = na;
  b->n = nb;
}

static int sub_map(mb_pview *v, const pv_sub *s) {
  return v->ops->map(v->inst, s->gpa, s->size, s->host, s->access == MB_PROT_RW);
}

static int sub_unmap(mb_pview *v, const pv_sub *s) {
  return v->ops->unmap(v->inst, s->gpa, s->size);
}

/* Undoes the first nrm unmaps of rm and the first nadd maps of add, latest first. */
static void undo(mb_pview *v, const pv_list *rm, size_t nrm, const pv_list *add, size_t nadd) {
  while (nadd > 0)
    (void)sub_unmap(v, &add->v[--nadd]);
  while (nrm > 0)
    (void)sub_map(v, &rm->v[--nrm]);
}

/* Unmaps rm, then maps add: 0, or the first failure with everything put back. */
static int apply(mb_pview *v, const pv_list *rm, const pv_list *add) {
  size_t i = 0, j = 0;
  int rc = 0;
  while (i < rm->n && (rc = sub_unmap(v, &rm->v[i])) == 0)
    i++;
  while (rc == 0 && j < add->n && (rc = sub_map(v, &add->v[j])) == 0)
    j++;
  if (rc != 0)
    undo(v, rm, i, add, j);
  return rc;
}

/* The change from the sub-ranges in old to those in new: drop_common, then apply. */
static int change(mb_pview *v, pv_list *old, pv_list *new) {
  drop_common(old, new);
  return apply(v, old, new);
}

/* ---- the calls ------------------------------------------------------------------------------ */

void mb_pview_init(mb_pview *v, const mb_partition_ops *ops, void *inst, uint64_t max_addr) {
  *v = (mb_pview){.ops = ops, .inst = inst, .max_addr = max_addr};
  mb_rtree_init(&v->pieces);
  mb_prot_init(&v->prot);
}

void mb_pview_fini(mb_pview *v) {
  mb_rtree_node *n;
  while ((n = mb_rtree_first(&v->pieces)) != NULL) {
    mb_rtree_remove(&v->pieces, n);
    free(piece_of(n));
  }
  free(v->spare);
  v->spare = NULL;
  mb_prot_fini(&v->prot);
}

static pv_piece *exact(const mb_pview *v, uint64_t gpa, uint64_t size) {
  pv_piece *pc = piece_of(mb_rtree_find(&v->pieces, gpa));
  return pc && pc->node.start == gpa && pc->node.end - gpa == size ? pc : NULL;
}

/* Without protections a piece is one sub-range, itself, at its own access: mapped and
 * unmapped by one backend call, without planning its runs. */
static bool unprotected(const mb_pview *v) {
  return mb_prot_count(&v->prot) == 0;
}

/* Maps (map) or unmaps pc's sub-ranges: 0, or the first failure with everything as it was. */
MB_HOT static int piece_apply(mb_pview *v, const pv_piece *pc, bool map) {
  uint64_t size = pc->node.end - pc->node.start;
  if (unprotected(v))
    return map ? v->ops->map(v->inst, pc->node.start, size, pc->host, pc->writable)
               : v->ops->unmap(v->inst, pc->node.start, size);
  pv_list subs, none;
  list_init(&subs);
  list_init(&none);
  int rc = piece_subs(v, NULL, pc, &subs);
  if (rc == 0)
    rc = map ? apply(v, &none, &subs) : apply(v, &subs, &none);
  list_fini(&subs);
  return rc;
}

int mb_pview_map(mb_pview *v, uint64_t gpa, uint64_t size, uint8_t *host, bool writable) {
  int rc = mb_pieces_check_map(&v->pieces, v->max_addr, gpa, size, host);
  if (rc != 0)
    return rc;
  pv_piece *pc = v->spare ? v->spare : mb__malloc(sizeof *pc);
  if (!pc)
    return MB_ENOMEM;
  v->spare = NULL;
  *pc = (pv_piece){.host = host, .writable = writable};
  pc->node.start = gpa;
  pc->node.end = gpa + size;
  rc = piece_apply(v, pc, true);
  if (rc != 0) {
    v->spare = pc;
    return rc;
  }
  return mb_rtree_insert_disjoint(&v->pieces, &pc->node, gpa, gpa + size); /* checked: 0 */
}

int mb_pview_unmap(mb_pview *v, uint64_t gpa, uint64_t size) {
  pv_piece *pc = exact(v, gpa, size);
  if (!pc)
    return -ENOENT;
  int rc = piece_apply(v, pc, false);
  if (rc != 0)
    return rc;
  mb_rtree_remove(&v->pieces, &pc->node);
  if (v->spare)
    free(pc);
  else
    v->spare = pc;
  return 0;
}

int mb_pview_access_set(mb_pview *v, uint64_t gpa, uint64_t size, bool writable) {
  pv_piece *pc = exact(v, gpa, size);
  if (!pc)
    return -ENOENT;
  bool was = pc->writable;
  pv_list old, new;
  list_init(&old);
  list_init(&new);
  int rc = piece_subs(v, NULL, pc, &old);
  pc->writable = writable;
  if (rc == 0)
    rc = piece_subs(v, NULL, pc, &new);
  if (rc == 0)
    rc = change(v, &old, &new);
  if (rc != 0)
    pc->writable = was;
  list_fini(&old);
  list_fini(&new);
  return rc;
}

/* Protect items: ascending, contiguous, non-empty, aligned, inside the partition. */
static bool valid_items(const mb_pview *v, const mb_prot_item *items, size_t n) {
  if (n == 0 || !items)
    return false;
  uint64_t at = items[0].gpa;
  for (size_t i = 0; i < n; i++) {
    const mb_prot_item *it = &items[i];
    if (it->gpa != at || it->size == 0 || !mb_page_aligned(it->gpa | it->size) ||
        it->access > MB_PROT_RW || it->gpa > v->max_addr || it->size > v->max_addr - it->gpa)
      return false;
    at += it->size;
  }
  return true;
}

int mb_pview_protect(mb_pview *v, const mb_prot_item *items, size_t n) {
  if (!valid_items(v, items, n))
    return MB_E_INVALID;
  pv_overlay o = {items, n, items[0].gpa, items[n - 1].gpa + items[n - 1].size};
  pv_list old, new;
  list_init(&old);
  list_init(&new);
  int rc = range_subs(v, NULL, o.lo, o.hi, &old);
  if (rc == 0)
    rc = range_subs(v, &o, o.lo, o.hi, &new);
  if (rc == 0)
    rc = change(v, &old, &new);
  if (rc == 0 && (rc = mb_prot_set_items(&v->prot, items, n)) != 0)
    undo(v, &old, old.n, &new, new.n); /* out of memory storing them: the backend goes back */
  list_fini(&old);
  list_fini(&new);
  return rc;
}

/* How many bytes from gpa the pieces and protections let the access reach (up to len), and
 * why it stops there: MB_E_MMIO or MB_E_PROTECTED. */
static uint64_t reachable(const mb_pview *v, uint64_t gpa, uint64_t len, bool write, int *why) {
  uint64_t at = gpa, end = gpa + len;
  while (at < end) {
    pv_piece *pc = piece_of(mb_rtree_find(&v->pieces, at));
    if (!pc || (write && !pc->writable)) {
      *why = MB_E_MMIO;
      break;
    }
    uint64_t run_end;
    uint8_t prot = mb_prot_at(&v->prot, at, &run_end);
    if (prot == MB_PROT_NONE || (write && prot == MB_PROT_RO)) {
      *why = MB_E_PROTECTED;
      break;
    }
    at = min64(min64(pc->node.end, run_end), end);
  }
  return at - gpa;
}

int mb_pview_access(mb_pview *v, uint64_t gpa, void *buf, size_t len, bool write) {
  if (len > v->max_addr || gpa > v->max_addr - len)
    return MB_E_INVALID;
  int why = 0;
  uint64_t n = reachable(v, gpa, len, write, &why);
  int rc = n > 0 ? v->ops->access(v->inst, gpa, buf, (size_t)n, write) : 0;
  return rc != 0 || n == len ? rc : why;
}
