/* gpa_map.c: the published guest physical map (see gpa_map.h).
 *
 * Invariant: `ranges`, `busy_*` and `version` change only under the write lock, and every
 * change of either the ranges or busy bumps `version`; a reader that saw the same version
 * before and after its probe saw no operation start or end meanwhile. Ranges never overlap. */
#include "gpa_map.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "mb_access.h"
#include "range_tree.h"

typedef struct gpa_range {
  mb_rtree_node node;
  bool writable;
  struct gpa_range *next_free;
} gpa_range;

struct mb_gpa_map {
  pthread_rwlock_t lock;
  mb_rtree ranges;           /* of gpa_range */
  uint64_t busy_start, busy_end; /* the operation in flight may change this; empty: idle */
  uint64_t version;
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
  *out = m;
  return 0;
}

static gpa_range *range_of(mb_rtree_node *n) {
  return n ? mb_rtree_entry(n, gpa_range, node) : NULL;
}

void mb_gpa_map_destroy(mb_gpa_map *m) {
  if (!m)
    return;
  mb_rtree_node *n;
  while ((n = mb_rtree_first(&m->ranges)) != NULL) {
    mb_rtree_remove(&m->ranges, n);
    free(range_of(n));
  }
  while (m->free) {
    gpa_range *r = m->free;
    m->free = r->next_free;
    free(r);
  }
  pthread_rwlock_destroy(&m->lock);
  free(m);
}

/* ---- the writer ----------------------------------------------------------------------- */

int mb_gpa_map_begin(mb_gpa_map *m, uint64_t start, uint64_t end, size_t adds) {
  while (m->nfree < adds) {
    gpa_range *r = malloc(sizeof *r);
    if (!r)
      return -ENOMEM; /* what was made stays for later: nothing visible changed */
    r->next_free = m->free;
    m->free = r;
    m->nfree++;
  }
  pthread_rwlock_wrlock(&m->lock);
  m->busy_start = start;
  m->busy_end = end;
  m->version++;
  pthread_rwlock_unlock(&m->lock);
  return 0;
}

void mb_gpa_map_edit(mb_gpa_map *m) {
  pthread_rwlock_wrlock(&m->lock);
}

void mb_gpa_map_drop(mb_gpa_map *m, uint64_t start) {
  gpa_range *r = range_of(mb_rtree_find(&m->ranges, start));
  if (!r || r->node.start != start)
    return;
  mb_rtree_remove(&m->ranges, &r->node);
  r->next_free = m->free;
  m->free = r;
  m->nfree++;
}

void mb_gpa_map_add(mb_gpa_map *m, uint64_t start, uint64_t end, bool writable) {
  gpa_range *r = m->free; /* begin made room */
  m->free = r->next_free;
  m->nfree--;
  r->writable = writable;
  mb_rtree_insert(&m->ranges, &r->node, start, end);
}

void mb_gpa_map_access(mb_gpa_map *m, uint64_t start, bool writable) {
  gpa_range *r = range_of(mb_rtree_find(&m->ranges, start));
  if (r && r->node.start == start)
    r->writable = writable;
}

void mb_gpa_map_end(mb_gpa_map *m) {
  m->busy_start = m->busy_end = 0;
  m->version++;
  pthread_rwlock_unlock(&m->lock);
}

/* ---- readers -------------------------------------------------------------------------- */

/* Under the read lock: how many bytes from gpa the map lets the access reach (up to len). */
static uint64_t reachable(const mb_gpa_map *m, uint64_t gpa, uint64_t len, bool write) {
  uint64_t at = gpa, end = gpa + len;
  while (at < end) {
    gpa_range *r = range_of(mb_rtree_find(&m->ranges, at));
    if (!r || (write && !r->writable))
      break;
    at = r->node.end < end ? r->node.end : end;
  }
  return at - gpa;
}

enum { PROBE_TRIES = 4 };

int mb_gpa_map_classify(mb_gpa_map *m, uint64_t gpa, uint64_t len, bool write,
                        const uint8_t *host) {
  for (int i = 0; i < PROBE_TRIES; i++) {
    pthread_rwlock_rdlock(&m->lock);
    uint64_t n = reachable(m, gpa, len, write);
    bool busy = gpa < m->busy_end && m->busy_start < gpa + n;
    uint64_t version = m->version;
    pthread_rwlock_unlock(&m->lock);
    if (n == 0)
      return MB_GPA_MMIO;
    if (busy || !host)
      return MB_GPA_RAM; /* changing right now: the guest retries until it is done */
    mb_fault f;
    if (mb_access_probe(host + gpa, n, write, &f) == 0)
      return n == len ? MB_GPA_RAM : MB_GPA_MMIO;
    pthread_rwlock_rdlock(&m->lock);
    bool same = m->version == version;
    pthread_rwlock_unlock(&m->lock);
    if (same)
      return MB_GPA_FAULT;
  }
  return MB_GPA_RAM; /* the map keeps changing under us: let the guest try again */
}
