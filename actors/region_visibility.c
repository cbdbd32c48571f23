/* region_visibility.c: the region set and the visible map (see region_visibility.h).
 *
 * Planning a change of region r (range R) works only around R:
 *   1. candidates: the mapped regions overlapping R, r counted with its new state;
 *   2. sweep R left to right with a heap of the candidates that have started, best on top
 *      (priority, then add order); the winner can only change where a candidate starts or the
 *      current winner ends, so this costs O(k log k) for k candidates;
 *   3. old: the pieces overlapping R or touching its edges (a piece may reach beyond R, and a
 *      neighbour may merge with what R now shows);
 *   4. new: the parts of the old pieces outside R (their winners do not change), with the
 *      sweep's result between them, touching runs of one region merged into one piece;
 *   5. the diff: old and new pieces that are not identical, and the segments where the winner
 *      changes (where the VA mappers' content changes).
 */
#include "mb_hot.h"
#include "region_visibility.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

#include "fault_inject.h" /* MB_FI_ALLOC: tests fail these allocations */
#include "mb_errors.h"
#include "region_manager.h"

/* A guest range shown by one region (or by nobody, region == NULL). */
typedef struct vis_span {
  uint64_t start, end;
  mb__vis_region *region;
} vis_span;

static mb__vis_region *region_of(mb_rtree_node *n) {
  return n ? mb_rtree_entry(n, mb__vis_region, node) : NULL;
}

static mb__vis_piece *piece_of(mb_rtree_node *n) {
  return n ? mb_rtree_entry(n, mb__vis_piece, node) : NULL;
}

static uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }

void mb__vis_init(mb__vis_set *s, int overlap) {
  mb_rtree_init(&s->regions);
  mb_rtree_init(&s->pieces);
  s->next_seq = 0;
  s->overlap = overlap;
  s->buf = NULL;
  s->buf_cap = 0;
  s->ncache = 0;
}

void mb__vis_fini(mb__vis_set *s) {
  while (s->pieces.root != NULL) {
    mb__vis_piece *p = piece_of(s->pieces.root);
    mb_rtree_remove(&s->pieces, &p->node);
    free(p);
  }
  while (s->ncache > 0)
    free(s->cache[--s->ncache]);
  free(s->buf);
  s->buf = NULL;
  s->buf_cap = 0;
}

/* Makes the planning buffer hold at least n bytes (grow-only; the contents are not kept). */
MB_HOT static int reserve(mb__vis_set *s, size_t n) {
  if (n <= s->buf_cap)
    return 0;
  size_t want = s->buf_cap ? 2 * s->buf_cap : 1024;
  while (want < n) {
    if (want > SIZE_MAX / 2)
      return -ENOMEM;
    want *= 2;
  }
  void *b = mb__malloc(want);
  if (b == NULL)
    return -ENOMEM;
  free(s->buf);
  s->buf = b;
  s->buf_cap = want;
  return 0;
}

/* An unlinked piece [start, end) of region, or NULL. */
static mb__vis_piece *piece_new(mb__vis_set *s, uint64_t start, uint64_t end,
                                mb__vis_region *region) {
  mb__vis_piece *p = s->ncache > 0 ? s->cache[--s->ncache] : mb__malloc(sizeof *p);
  if (p != NULL)
    *p = (mb__vis_piece){.node = {.start = start, .end = end}, .region = region};
  return p;
}

static void piece_put(mb__vis_set *s, mb__vis_piece *p) {
  if (s->ncache < MB__VIS_PIECE_CACHE)
    s->cache[s->ncache++] = p;
  else
    free(p);
}

int mb__vis_admit(const mb__vis_set *s, uint64_t start, uint64_t end, uint8_t prio) {
  if (s->overlap == MB_OVERLAP_ANY)
    return 0;
  mb_rtree_node *n;
  mb_rtree_for_each_overlap(n, &s->regions, start, end) {
    bool ok;
    if (region_of(n)->prio < prio)
      ok = start <= n->start && n->end <= end;
    else if (region_of(n)->prio > prio)
      ok = n->start <= start && end <= n->end;
    else
      ok = n->start == start && n->end == end;
    if (!ok)
      return MB_E_OVERLAP;
  }
  return 0;
}

static void link_region(mb__vis_set *s, mb__vis_region *r, uint64_t start, uint64_t end) {
  r->visible = 0;
  r->mapped = false;
  r->overlaps = 0;
  mb_rtree_node *n;
  mb_rtree_for_each_overlap(n, &s->regions, start, end) {
    region_of(n)->overlaps++;
    r->overlaps++;
  }
  mb_rtree_insert(&s->regions, &r->node, start, end);
}

void mb__vis_insert(mb__vis_set *s, mb__vis_region *r, uint64_t start, uint64_t end,
                    uint8_t prio) {
  r->seq = s->next_seq++;
  r->prio = prio;
  link_region(s, r, start, end);
}

void mb__vis_reinsert(mb__vis_set *s, mb__vis_region *r) {
  link_region(s, r, r->node.start, r->node.end);
}

void mb__vis_remove(mb__vis_set *s, mb__vis_region *r) {
  mb_rtree_remove(&s->regions, &r->node);
  mb_rtree_node *n;
  mb_rtree_for_each_overlap(n, &s->regions, r->node.start, r->node.end)
    region_of(n)->overlaps--;
}

int mb__vis_state(const mb__vis_region *r) {
  if (!r->mapped)
    return MB_REGION_UNMAPPED;
  if (r->visible == 0)
    return MB_REGION_HIDDEN;
  if (r->visible == r->node.end - r->node.start)
    return MB_REGION_ACTIVE;
  return MB_REGION_PARTIAL;
}

/* ---- the sweep --------------------------------------------------------------------------- */

/* Does a beat b? */
static bool beats(const mb__vis_region *a, const mb__vis_region *b) {
  return a->prio > b->prio || (a->prio == b->prio && a->seq < b->seq);
}

static void heap_push(mb__vis_region **h, size_t *n, mb__vis_region *r) {
  size_t i = (*n)++;
  while (i > 0 && beats(r, h[(i - 1) / 2])) {
    h[i] = h[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  h[i] = r;
}

static void heap_pop(mb__vis_region **h, size_t *n) {
  mb__vis_region *last = h[--*n];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= *n)
      break;
    if (c + 1 < *n && beats(h[c + 1], h[c]))
      c++;
    if (!beats(h[c], last))
      break;
    h[i] = h[c];
    i = c;
  }
  if (*n > 0)
    h[i] = last;
}

static int cmp_start(const void *a, const void *b) {
  const mb__vis_region *x = *(mb__vis_region *const *)a, *y = *(mb__vis_region *const *)b;
  return x->node.start < y->node.start ? -1 : x->node.start > y->node.start;
}

/* Appends [start, end) shown by region to out, merging with a touching run of the same. */
static void span_append(vis_span *out, size_t *n, uint64_t start, uint64_t end,
                        mb__vis_region *region) {
  if (*n > 0 && out[*n - 1].region == region && out[*n - 1].end == start)
    out[*n - 1].end = end;
  else
    out[(*n)++] = (vis_span){start, end, region};
}

/* The winners over [rs, re), as spans that tile it (region NULL where nobody shows).
 * cand (n entries) is sorted here; heap has room for n. out needs 2n + 1. */
static size_t sweep(mb__vis_region **cand, size_t n, mb__vis_region **heap, uint64_t rs,
                    uint64_t re, vis_span *out) {
  if (n > 1)
    qsort(cand, n, sizeof *cand, cmp_start);
  size_t i = 0, h = 0, nout = 0;
  uint64_t pos = rs;
  while (pos < re) {
    while (i < n && max64(cand[i]->node.start, rs) <= pos)
      heap_push(heap, &h, cand[i++]);
    while (h > 0 && heap[0]->node.end <= pos)
      heap_pop(heap, &h); /* lazily: losers that ended are dropped once they surface */
    mb__vis_region *w = h > 0 ? heap[0] : NULL;
    uint64_t next = re;
    if (i < n)
      next = min64(next, cand[i]->node.start);
    if (w != NULL)
      next = min64(next, w->node.end);
    span_append(out, &nout, pos, next, w);
    pos = next;
  }
  return nout;
}

/* ---- planning ---------------------------------------------------------------------------- */

/* The pieces of the diff: old ones not in new go to removed, new ones not in old are
 * allocated into added. Both lists are ascending and disjoint, so identical pieces (same
 * start, end and region) meet at the same step. */
static int diff_pieces(mb__vis_set *s, mb__vis_diff *d, mb__vis_piece **old, size_t nold, const vis_span *nw,
                       size_t nnew) {
  size_t i = 0, j = 0;
  while (i < nold || j < nnew) {
    if (i < nold && j < nnew && old[i]->node.start == nw[j].start &&
        old[i]->node.end == nw[j].end && old[i]->region == nw[j].region) {
      i++, j++;
    } else if (j == nnew || (i < nold && old[i]->node.start <= nw[j].start)) {
      d->removed[d->nremoved++] = old[i++];
    } else {
      mb__vis_piece *p = piece_new(s, nw[j].start, nw[j].end, nw[j].region);
      if (p == NULL)
        return -ENOMEM;
      d->added[d->nadded++] = p;
      j++;
    }
  }
  return 0;
}

/* The segments where old and new winners differ, merged where the pair stays the same. */
static void diff_segments(mb__vis_diff *d, mb__vis_piece **old, size_t nold, const vis_span *nw,
                          size_t nnew) {
  size_t i = 0, j = 0;
  uint64_t pos = 0;
  if (nold > 0)
    pos = old[0]->node.start;
  if (nnew > 0 && (nold == 0 || nw[0].start < pos))
    pos = nw[0].start;
  for (;;) {
    while (i < nold && old[i]->node.end <= pos)
      i++;
    while (j < nnew && nw[j].end <= pos)
      j++;
    if (i == nold && j == nnew)
      return;
    mb__vis_region *o = NULL, *n = NULL;
    uint64_t next = UINT64_MAX;
    if (i < nold) {
      if (old[i]->node.start <= pos)
        o = old[i]->region, next = old[i]->node.end;
      else
        next = old[i]->node.start;
    }
    if (j < nnew) {
      if (nw[j].start <= pos)
        n = nw[j].region, next = min64(next, nw[j].end);
      else
        next = min64(next, nw[j].start);
    }
    if (o != n) {
      mb__vis_seg *last = d->nsegs > 0 ? &d->segs[d->nsegs - 1] : NULL;
      if (last != NULL && last->end == pos && last->old_winner == o && last->new_winner == n)
        last->end = next;
      else
        d->segs[d->nsegs++] = (mb__vis_seg){pos, next, o, n};
    }
    pos = next;
  }
}

/* Steps 3-4: the new pieces around and inside R, from the old pieces near R and the sweep. */
static size_t new_tiling(mb__vis_piece **old, size_t nold, const vis_span *in, size_t nin,
                         uint64_t rs, uint64_t re, vis_span *out) {
  size_t n = 0;
  for (size_t i = 0; i < nold; i++)
    if (old[i]->node.start < rs)
      span_append(out, &n, old[i]->node.start, min64(old[i]->node.end, rs), old[i]->region);
  for (size_t i = 0; i < nin; i++)
    if (in[i].region != NULL)
      span_append(out, &n, in[i].start, in[i].end, in[i].region);
  for (size_t i = 0; i < nold; i++)
    if (old[i]->node.end > re)
      span_append(out, &n, max64(old[i]->node.start, re), old[i]->node.end, old[i]->region);
  return n;
}

/* A region that overlaps no other decides alone what shows on its range R, and no neighbour's
 * piece can merge with its own: mapped, it shows as one piece [rs, re); unmapped, R is empty.
 * So its whole range appears or disappears: the sweep's diff, found in O(log n). */
MB_HOT static int plan_alone(mb__vis_set *s, mb__vis_diff *d) {
  mb__vis_region *r = d->region;
  uint64_t rs = r->node.start, re = r->node.end;
  if (reserve(s, sizeof(mb__vis_seg) + sizeof(mb__vis_piece *)) != 0)
    return -ENOMEM;
  d->segs = s->buf;
  mb__vis_piece **one = (mb__vis_piece **)(void *)(d->segs + 1);
  if (d->mapped) {
    if ((one[0] = piece_new(s, rs, re, r)) == NULL)
      return -ENOMEM;
    d->added = one;
    d->nadded = 1;
    d->segs[0] = (mb__vis_seg){rs, re, NULL, r};
  } else {
    one[0] = piece_of(mb_rtree_find(&s->pieces, rs));
    d->removed = one;
    d->nremoved = 1;
    d->segs[0] = (mb__vis_seg){rs, re, r, NULL};
  }
  d->nsegs = 1;
  return 0;
}

/* The general case: steps 1-5 of the file comment. */
static int plan_sweep(mb__vis_set *s, mb__vis_diff *d) {
  mb__vis_region *r = d->region;
  uint64_t rs = r->node.start, re = r->node.end;
  uint64_t lo = rs > 0 ? rs - 1 : rs, hi = re < UINT64_MAX ? re + 1 : re;

  /* Sizes from r->overlaps, without a counting walk: ncand regions overlap R (r included);
   * their starts and ends cut R into at most 2 * ncand + 1 runs of one winner, so as many
   * old pieces overlap R, plus one touching each edge. */
  size_t ncand = (size_t)r->overlaps + 1;
  size_t nspan = 2 * ncand + 1, ntile = nspan + 2, maxold = ntile;
  size_t maxsegs = 2 * (maxold + ntile) + 1;
  size_t bytes = maxsegs * sizeof(mb__vis_seg) + (nspan + ntile) * sizeof(vis_span) +
                 (maxold + ntile + 2 * ncand + maxold) * sizeof(void *);
  if (reserve(s, bytes) != 0)
    return -ENOMEM;
  d->segs = s->buf;
  vis_span *in = (vis_span *)(void *)(d->segs + maxsegs);
  vis_span *tile = in + nspan;
  d->removed = (mb__vis_piece **)(void *)(tile + ntile);
  d->added = d->removed + maxold;
  mb__vis_region **cand = (mb__vis_region **)(d->added + ntile);
  mb__vis_region **heap = cand + ncand;
  mb__vis_piece **old = (mb__vis_piece **)(heap + ncand);

  size_t k = 0;
  mb_rtree_node *n;
  mb_rtree_for_each_overlap(n, &s->regions, rs, re) {
    mb__vis_region *c = region_of(n);
    assert(k < ncand);
    if (c == r ? d->mapped : c->mapped)
      cand[k++] = c;
  }
  size_t nold = 0;
  mb_rtree_for_each_overlap(n, &s->pieces, lo, hi) {
    assert(nold < maxold);
    old[nold++] = piece_of(n);
  }

  size_t nin = sweep(cand, k, heap, rs, re, in);
  size_t nnew = new_tiling(old, nold, in, nin, rs, re, tile);
  if (diff_pieces(s, d, old, nold, tile, nnew) != 0) {
    mb__vis_abort(d);
    return -ENOMEM;
  }
  diff_segments(d, old, nold, tile, nnew);
  return 0;
}

int mb__vis_plan(mb__vis_set *s, mb__vis_region *r, bool mapped, mb__vis_diff *d) {
  *d = (mb__vis_diff){.set = s, .region = r, .mapped = mapped};
  if (r->mapped == mapped)
    return 0;
  return r->overlaps == 0 ? plan_alone(s, d) : plan_sweep(s, d);
}

static void diff_release(mb__vis_diff *d) {
  d->region = NULL;
  d->nremoved = d->nadded = d->nsegs = 0; /* the arrays are the set's */
}

MB_HOT void mb__vis_commit(mb__vis_set *s, mb__vis_diff *d) {
  for (size_t i = 0; i < d->nremoved; i++) {
    mb__vis_piece *p = d->removed[i];
    p->region->visible -= p->node.end - p->node.start;
    mb_rtree_remove(&s->pieces, &p->node);
    piece_put(s, p);
  }
  for (size_t i = 0; i < d->nadded; i++) {
    mb__vis_piece *p = d->added[i];
    p->region->visible += p->node.end - p->node.start;
    mb_rtree_insert(&s->pieces, &p->node, p->node.start, p->node.end);
  }
  if (d->region != NULL)
    d->region->mapped = d->mapped;
  diff_release(d);
}

MB_HOT void mb__vis_abort(mb__vis_diff *d) {
  for (size_t i = 0; i < d->nadded; i++)
    piece_put(d->set, d->added[i]);
  diff_release(d);
}

/* ---- iteration ---------------------------------------------------------------------------- */

mb__vis_piece *mb__vis_first_piece(const mb__vis_set *s, uint64_t start, uint64_t end) {
  return piece_of(mb_rtree_first_overlap(&s->pieces, start, end));
}

mb__vis_piece *mb__vis_next_piece(const mb__vis_piece *p, uint64_t start, uint64_t end) {
  return piece_of(mb_rtree_next_overlap(&p->node, start, end));
}

mb__vis_piece *mb__vis_first_piece_of(const mb__vis_set *s, const mb__vis_region *r,
                                      uint64_t start, uint64_t end) {
  mb__vis_piece *p = mb__vis_first_piece(s, start, end);
  while (p != NULL && p->region != r)
    p = mb__vis_next_piece(p, start, end);
  return p;
}

mb__vis_piece *mb__vis_next_piece_of(const mb__vis_piece *p, const mb__vis_region *r,
                                     uint64_t start, uint64_t end) {
  do
    p = mb__vis_next_piece(p, start, end);
  while (p != NULL && p->region != r);
  return (mb__vis_piece *)p;
}
