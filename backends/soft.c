/* soft.c: the in-process partition backend. It records its guest physical address map as an
 * interval tree of pieces (gpa range -> host VA, writable) and performs a guest access by
 * following that map piece by piece, copying with the fault-tolerant mb_access_* functions.
 *
 * Outcome of an access, decided at the first byte that cannot be served (as a CPU would,
 * so bytes before it may already have been copied):
 *   no piece there, or a write to a read-only piece   MB_E_MMIO  (the guest would exit)
 *   the host VA faults (a hole, a read-only page)     MB_E_FAULT
 * Invariant: pieces never overlap (map() refuses an overlapping range with -EEXIST). */
#include <errno.h>
#include <stdlib.h>

#include "access.h"
#include "mb_range.h"
#include "partition.h"
#include "range_tree.h"

typedef struct soft_piece {
  mb_rtree_node node; /* [gpa, gpa + size) */
  uint8_t *host;      /* host VA of the piece's first byte */
  bool writable;
} soft_piece;

typedef struct soft_part {
  uint64_t max_addr;
  mb_rtree pieces;
} soft_part;

static soft_piece *piece_of(mb_rtree_node *n) {
  return n ? mb_rtree_entry(n, soft_piece, node) : NULL;
}

/* MB_E_INVALID unless [gpa, gpa + size) is a non-empty aligned range below max_addr. */
static int check_map_range(const soft_part *p, uint64_t gpa, uint64_t size, const void *host) {
  mb_range r;
  if (mb_range_make(gpa, size, &r) != 0 || r.end > p->max_addr)
    return MB_E_INVALID;
  if (host == NULL || !mb_page_aligned((uintptr_t)host))
    return MB_E_INVALID;
  return 0;
}

static int soft_create(uint64_t max_addr, void **inst) {
  if (max_addr == 0 || !mb_page_aligned(max_addr))
    return -EINVAL;
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
  mb_rtree_node *n;
  while ((n = mb_rtree_first(&p->pieces)) != NULL) {
    mb_rtree_remove(&p->pieces, n);
    free(piece_of(n));
  }
  free(p);
}

static int soft_map(void *inst, uint64_t gpa, uint64_t size, void *host_va, bool writable) {
  soft_part *p = inst;
  int rc = check_map_range(p, gpa, size, host_va);
  if (rc != 0)
    return rc;
  if (mb_rtree_first_overlap(&p->pieces, gpa, gpa + size) != NULL)
    return -EEXIST;
  soft_piece *pc = calloc(1, sizeof *pc);
  if (!pc)
    return -ENOMEM;
  pc->host = host_va;
  pc->writable = writable;
  mb_rtree_insert(&p->pieces, &pc->node, gpa, gpa + size);
  return 0;
}

static int soft_unmap(void *inst, uint64_t gpa, uint64_t size) {
  soft_part *p = inst;
  soft_piece *pc = piece_of(mb_rtree_find(&p->pieces, gpa));
  if (!pc || pc->node.start != gpa || size != pc->node.end - gpa)
    return -ENOENT;
  mb_rtree_remove(&p->pieces, &pc->node);
  free(pc);
  return 0;
}

/* Copies len bytes between buf and the piece's host memory at gpa (inside the piece). */
static int copy_piece(const soft_piece *pc, uint64_t gpa, void *buf, size_t len, bool write) {
  uint8_t *host = pc->host + (gpa - pc->node.start);
  int rc = write ? mb_access_write(host, buf, len, NULL) : mb_access_read(buf, host, len, NULL);
  if (rc == -EFAULT)
    return MB_E_FAULT;
  return rc;
}

static int soft_access(void *inst, uint64_t gpa, void *buf, size_t len, bool write) {
  soft_part *p = inst;
  if (len > p->max_addr || gpa > p->max_addr - len)
    return MB_E_INVALID;
  uint8_t *b = buf;
  while (len > 0) {
    soft_piece *pc = piece_of(mb_rtree_find(&p->pieces, gpa));
    if (!pc || (write && !pc->writable))
      return MB_E_MMIO;
    uint64_t avail = pc->node.end - gpa;
    size_t n = avail < len ? (size_t)avail : len;
    int rc = copy_piece(pc, gpa, b, n, write);
    if (rc != 0)
      return rc;
    gpa += n;
    b += n;
    len -= n;
  }
  return 0;
}

static size_t soft_ranges(void *inst, mb_part_range *out, size_t max) {
  soft_part *p = inst;
  size_t i = 0;
  mb_rtree_node *n;
  mb_rtree_for_each(n, &p->pieces) {
    if (i < max)
      out[i] = (mb_part_range){n->start, n->end - n->start, piece_of(n)->writable};
    i++;
  }
  return i;
}

const mb_partition_ops mb_partition_soft = {
    .name = "soft",
    .create = soft_create,
    .destroy = soft_destroy,
    .map = soft_map,
    .unmap = soft_unmap,
    .access = soft_access,
    .ranges = soft_ranges,
};
