/* gpa_map.c: the published guest physical map (see gpa_map.h).
 *
 * Invariant: `ranges` and `prots` change only under the write lock, and `busy_*` only inside
 * a sequence write (`seq` odd while it lasts, bumped by two in all); every change of the
 * ranges, the protections or busy is inside one, so a reader that saw the same even `seq`
 * before and after its probe saw no operation start or end meanwhile. An operation's edits
 * and its end are one sequence write under the write lock: a reader under the read lock sees
 * all of them or none. Its begin, and the end of one without edits (a mapping's add or
 * remove), change busy alone and take no lock. Ranges never overlap; protections never
 * overlap, are never rw, and touching ones differ in access (so a protect needs at most two
 * nodes more than it frees). */
#include "gpa_map.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "mb_access.h"
#include "mb_hot.h"
#include "mb_vtl.h"
#include "range_tree.h"

typedef struct gpa_range {
  mb_rtree_node node;
  bool writable;  /* a range of the map */
  uint8_t access; /* a protection: MB_PROT_NONE or MB_PROT_RO */
  struct gpa_range *next_free;
} gpa_range;

struct mb_gpa_map {
  pthread_rwlock_t lock;
  mb_rtree ranges;           /* of gpa_range */
  mb_rtree prots;            /* of gpa_range: the protections that are not rw */
  _Atomic uint64_t busy_start, busy_end; /* the operation in flight may change this; empty: idle */
  _Atomic uint64_t seq;      /* odd while busy changes; +2 for every change */
  bool editing;              /* the writer's own: it holds the write lock */
  gpa_range *free;           /* unlinked ranges for the next adds (the writer's own) */
  size_t nfree;
};

int mb_gpa_map_create(mb_gpa_map **out) {
  mb_gpa_map *m = calloc(1, sizeof *m);
  if (!m)
    return -ENOMEM;
  int rc = pthread_rwlock_init(&m->lock, NULL);
  if (rc != 0) {
    free(m);
    return -rc;
  }
  mb_rtree_init(&m->ranges);
  mb_rtree_init(&m->prots);
  *out = m;
  return 0;
}

static gpa_range *range_of(mb_rtree_node *n) {
  return n ? mb_rtree_entry(n, gpa_range, node) : NULL;
}

static void free_all(mb_rtree *t) {
  mb_rtree_node *n;
  while ((n = mb_rtree_first(t)) != NULL) {
    mb_rtree_remove(t, n);
    free(range_of(n));
  }
}

void mb_gpa_map_destroy(mb_gpa_map *m) {
  if (!m)
    return;
  free_all(&m->ranges);
  free_all(&m->prots);
  while (m->free) {
    gpa_range *r = m->free;
    m->free = r->next_free;
    free(r);
  }
  pthread_rwlock_destroy(&m->lock);
  free(m);
}

/* ---- the writer ----------------------------------------------------------------------- */

/* One sequence write: busy becomes [start, end). */
MB_HOT static void set_busy(mb_gpa_map *m, uint64_t start, uint64_t end) {
  uint64_t s = atomic_load_explicit(&m->seq, memory_order_relaxed);
  atomic_store_explicit(&m->seq, s + 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  atomic_store_explicit(&m->busy_start, start, memory_order_relaxed);
  atomic_store_explicit(&m->busy_end, end, memory_order_relaxed);
  atomic_store_explicit(&m->seq, s + 2, memory_order_release);
}

MB_HOT int mb_gpa_map_begin(mb_gpa_map *m, uint64_t start, uint64_t end, size_t adds) {
  while (m->nfree < adds) {
    gpa_range *r = malloc(sizeof *r);
    if (!r)
      return -ENOMEM; /* what was made stays for later: nothing visible changed */
    r->next_free = m->free;
    m->free = r;
    m->nfree++;
  }
  set_busy(m, start, end);
  return 0;
}

/* The write lock, before the first edit of an operation (the end lets it go). */
static void edit(mb_gpa_map *m) {
  if (!m->editing)
    pthread_rwlock_wrlock(&m->lock);
  m->editing = true;
}

static void unlink_range(mb_gpa_map *m, mb_rtree *t, gpa_range *r) {
  mb_rtree_remove(t, &r->node);
  r->next_free = m->free;
  m->free = r;
  m->nfree++;
}

static gpa_range *link_range(mb_gpa_map *m, mb_rtree *t, uint64_t start, uint64_t end) {
  gpa_range *r = m->free; /* begin made room */
  m->free = r->next_free;
  m->nfree--;
  mb_rtree_insert(t, &r->node, start, end);
  return r;
}

MB_HOT void mb_gpa_map_drop(mb_gpa_map *m, uint64_t start) {
  edit(m);
  gpa_range *r = range_of(mb_rtree_find(&m->ranges, start));
  if (r && r->node.start == start)
    unlink_range(m, &m->ranges, r);
}

MB_HOT void mb_gpa_map_add(mb_gpa_map *m, uint64_t start, uint64_t end, bool writable) {
  edit(m);
  link_range(m, &m->ranges, start, end)->writable = writable;
}

/* A stored protection to link again: [start, end) with access (end 0: none). */
typedef struct prot_piece {
  uint64_t start, end;
  uint8_t access;
} prot_piece;

static void link_prot(mb_gpa_map *m, prot_piece p) {
  if (p.start < p.end && p.access != MB_PROT_RW)
    link_range(m, &m->prots, p.start, p.end)->access = p.access;
}

/* The stored protections that [start, end) replaces or merges with are unlinked first (what
 * sticks out of the range keeps its access, or joins it when equal), then at most three are
 * linked: what is left before start, the range, what is left after end. */
void mb_gpa_map_protect(mb_gpa_map *m, uint64_t start, uint64_t end, uint8_t access) {
  if (start >= end || access > MB_PROT_RW)
    return;
  edit(m);
  prot_piece mid = {start, end, access}, left = {0, 0, 0}, right = {0, 0, 0};
  uint64_t a = start == 0 ? 0 : start - 1, b = end == UINT64_MAX ? end : end + 1;
  mb_rtree_node *n = mb_rtree_first_overlap(&m->prots, a, b), *next;
  for (; n; n = next) {
    next = mb_rtree_next_overlap(n, a, b);
    gpa_range *r = range_of(n);
    bool overlaps = n->start < end && n->end > start;
    if (!overlaps && r->access != access)
      continue; /* a neighbour that stays as it is */
    if (n->start < start && r->access == access)
      mid.start = n->start;
    else if (n->start < start)
      left = (prot_piece){n->start, start, r->access};
    if (n->end > end && r->access == access)
      mid.end = n->end;
    else if (n->end > end)
      right = (prot_piece){end, n->end, r->access};
    unlink_range(m, &m->prots, r);
  }
  link_prot(m, left);
  link_prot(m, mid);
  link_prot(m, right);
}

void mb_gpa_map_access(mb_gpa_map *m, uint64_t start, bool writable) {
  edit(m);
  gpa_range *r = range_of(mb_rtree_find(&m->ranges, start));
  if (r && r->node.start == start)
    r->writable = writable;
}

MB_HOT void mb_gpa_map_end(mb_gpa_map *m) {
  set_busy(m, 0, 0);
  if (m->editing)
    pthread_rwlock_unlock(&m->lock);
  m->editing = false;
}

/* ---- readers -------------------------------------------------------------------------- */

/* Under the read lock: how far from `at` (below end) the protection lets the access go
 * (at itself when it forbids the access there). */
static uint64_t prot_reach(const mb_gpa_map *m, uint64_t at, uint64_t end, bool write) {
  gpa_range *p = range_of(mb_rtree_find(&m->prots, at));
  if (p)
    return p->access == MB_PROT_NONE || write ? at : (p->node.end < end ? p->node.end : end);
  mb_rtree_node *next = mb_rtree_lower_bound(&m->prots, at);
  return next && next->start < end ? next->start : end;
}

/* Under the read lock: how many bytes from gpa the map (and the protections, when asked)
 * let the access reach (up to len), and why it stops there: MB_GPA_MMIO or MB_GPA_PROTECTED. */
static uint64_t reachable(const mb_gpa_map *m, uint64_t gpa, uint64_t len, bool write,
                          bool protections, int *why) {
  uint64_t at = gpa, end = gpa + len;
  while (at < end) {
    gpa_range *r = range_of(mb_rtree_find(&m->ranges, at));
    if (!r || (write && !r->writable)) {
      *why = MB_GPA_MMIO;
      break;
    }
    uint64_t stop = r->node.end < end ? r->node.end : end;
    if (protections && (stop = prot_reach(m, at, stop, write)) == at) {
      *why = MB_GPA_PROTECTED;
      break;
    }
    at = stop;
  }
  return at - gpa;
}

enum { PROBE_TRIES = 4 };

/* Whether busy overlaps [start, end), and the even `seq` it was read at. */
static bool read_busy(mb_gpa_map *m, uint64_t start, uint64_t end, uint64_t *seq) {
  for (;;) {
    uint64_t s = atomic_load_explicit(&m->seq, memory_order_acquire);
    if (s & 1) {
      sched_yield(); /* a begin or an end between two stores */
      continue;
    }
    uint64_t a = atomic_load_explicit(&m->busy_start, memory_order_relaxed);
    uint64_t b = atomic_load_explicit(&m->busy_end, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&m->seq, memory_order_relaxed) == s) {
      *seq = s;
      return start < b && a < end;
    }
  }
}

static uint64_t read_seq(mb_gpa_map *m) {
  uint64_t s;
  read_busy(m, 0, 0, &s);
  return s;
}

int mb_gpa_map_classify_vtl(mb_gpa_map *m, uint64_t gpa, uint64_t len, bool write,
                            const uint8_t *host, bool protections) {
  for (int i = 0; i < PROBE_TRIES; i++) {
    int why = MB_GPA_RAM;
    uint64_t version;
    pthread_rwlock_rdlock(&m->lock);
    uint64_t n = reachable(m, gpa, len, write, protections, &why);
    bool busy = read_busy(m, gpa, gpa + n, &version);
    pthread_rwlock_unlock(&m->lock);
    if (n == 0)
      return why;
    if (busy)
      return MB_GPA_RAM; /* changing right now: the guest retries until it is done */
    if (!host)
      return n == len ? MB_GPA_RAM : why;
    mb_fault f;
    if (mb_access_probe(host + gpa, n, write, &f) == 0)
      return n == len ? MB_GPA_RAM : why;
    if (read_seq(m) == version)
      return MB_GPA_FAULT;
  }
  return MB_GPA_RAM; /* the map keeps changing under us: let the guest try again */
}

int mb_gpa_map_classify(mb_gpa_map *m, uint64_t gpa, uint64_t len, bool write,
                        const uint8_t *host) {
  return mb_gpa_map_classify_vtl(m, gpa, len, write, host, false);
}
