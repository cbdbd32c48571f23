/* soft.c: the in-process partition backend. It records its guest physical address map as an
 * interval tree of pieces (gpa range -> host VA, writable) and performs a guest access by
 * following that map piece by piece, copying with the fault-tolerant mb_access_* functions.
 *
 * Outcome of an access, decided at the first byte that cannot be served (as a CPU would,
 * so bytes before it may already have been copied):
 *   no piece there, or a write to a read-only piece   MB_E_MMIO  (the guest would exit)
 *   the host VA faults (a hole, a read-only page)     MB_E_FAULT
 * Invariant: pieces never overlap (map() refuses an overlapping range with -EEXIST).
 *
 * Dirty tracking: while it is on, a write access marks the pages it wrote in the set as it
 * makes them (after the bytes are written, up to the failing byte); nothing is logged
 * anywhere else, so a collect has nothing to move and an unmap nothing to save. */
#include <errno.h>
#include <stdlib.h>

#include "dirty_set.h"
#include "mb_hot.h"
#include "mb_range.h"
#include "mb_partition.h"
#include "pieces.h"
#include "range_tree.h"

enum { SOFT_SPARES = 8 };

typedef struct soft_part {
  uint64_t max_addr;
  mb_rtree pieces; /* of mb_piece, host set */
  mb_piece *spare[SOFT_SPARES]; /* unlinked pieces kept for reuse: a map after an unmap
                                 * allocates nothing */
  unsigned nspare;
  mb_dirty_set *dirty; /* while tracking: the set writes are marked in */
} soft_part;

static int soft_create(uint64_t max_addr, const void *config, void **inst) {
  if (max_addr == 0 || !mb_page_aligned(max_addr))
    return -EINVAL;
  if (config != NULL)
    return MB_E_INVALID; /* the soft partition has nothing to configure */
  soft_part *p = calloc(1, sizeof *p);
  if (!p)
    return -ENOMEM;
  p->max_addr = max_addr;
  mb_rtree_init(&p->pieces);
  *inst = p;
  return 0;
}

static void soft_destroy(void *inst) {
  soft_part *p = inst;
  if (!p)
    return;
  mb_pieces_clear(&p->pieces, NULL, NULL);
  while (p->nspare > 0)
    free(p->spare[--p->nspare]);
  free(p);
}

MB_HOT static int soft_map(void *inst, uint64_t gpa, uint64_t size, void *host_va, bool writable) {
  soft_part *p = inst;
  mb_piece *pc = p->nspare > 0 ? p->spare[--p->nspare] : malloc(sizeof *pc);
  if (!pc) { /* a bad or overlapping range is still reported as such */
    int rc = mb_pieces_check_map(&p->pieces, p->max_addr, gpa, size, host_va);
    return rc ? rc : -ENOMEM;
  }
  int rc = mb_pieces_link(&p->pieces, pc, p->max_addr, gpa, size, host_va, writable, 0);
  if (rc != 0)
    p->spare[p->nspare++] = pc; /* it came from there, or there was room */
  return rc;
}

MB_HOT static int soft_unmap(void *inst, uint64_t gpa, uint64_t size) {
  soft_part *p = inst;
  mb_piece *pc = mb_pieces_exact(&p->pieces, gpa, size);
  if (!pc)
    return -ENOENT;
  mb_rtree_remove(&p->pieces, &pc->node);
  if (p->nspare < SOFT_SPARES)
    p->spare[p->nspare++] = pc;
  else
    free(pc);
  return 0;
}

static int soft_access(void *inst, uint64_t gpa, void *buf, size_t len, bool write) {
  soft_part *p = inst;
  return mb_pieces_access(&p->pieces, p->max_addr, gpa, buf, len, write, p->dirty);
}

static size_t soft_ranges(void *inst, mb_part_range *out, size_t max) {
  return mb_pieces_ranges(&((soft_part *)inst)->pieces, out, max);
}

static int soft_dirty_start(void *inst, mb_dirty_set *set) {
  soft_part *p = inst;
  if (p->dirty || !set)
    return MB_E_INVALID;
  p->dirty = set;
  return 0;
}

static int soft_dirty_collect(void *inst, uint64_t gpa, uint64_t size) {
  soft_part *p = inst;
  bool ok = p->dirty && mb_page_aligned(gpa | size) && size <= p->max_addr &&
            gpa <= p->max_addr - size;
  return ok ? 0 : MB_E_INVALID; /* every write is in the set already */
}

static void soft_dirty_stop(void *inst) {
  ((soft_part *)inst)->dirty = NULL;
}

const mb_partition_ops mb_partition_soft = {
    .name = "soft",
    .create = soft_create,
    .destroy = soft_destroy,
    .map = soft_map,
    .unmap = soft_unmap,
    .access = soft_access,
    .ranges = soft_ranges,
    .dirty_start = soft_dirty_start,
    .dirty_collect = soft_dirty_collect,
    .dirty_stop = soft_dirty_stop,
};
