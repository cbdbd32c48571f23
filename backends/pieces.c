/* pieces.c: a backend's piece map (see pieces.h). */
#include "pieces.h"

#include <errno.h>
#include <stdlib.h>

#include "dirty_set.h"
#include "mb_access.h"
#include "mb_hot.h"
#include "mb_range.h"

/* The checks of mb_pieces_check_map that do not look at the map. */
static bool valid_map(uint64_t max_addr, uint64_t gpa, uint64_t size, const void *host) {
  return size != 0 && mb_page_aligned(gpa | size | (uintptr_t)host) && host != NULL &&
         size <= max_addr && gpa <= max_addr - size;
}

MB_HOT int mb_pieces_check_map(const mb_rtree *pieces, uint64_t max_addr, uint64_t gpa,
                               uint64_t size, const void *host) {
  if (!valid_map(max_addr, gpa, size, host))
    return MB_E_INVALID;
  return mb_rtree_first_overlap(pieces, gpa, gpa + size) != NULL ? -EEXIST : 0;
}

int mb_pieces_link(mb_rtree *pieces, mb_piece *pc, uint64_t max_addr, uint64_t gpa,
                   uint64_t size, void *host, bool writable, uint32_t slot) {
  if (!valid_map(max_addr, gpa, size, host))
    return MB_E_INVALID;
  pc->host = host;
  pc->writable = writable;
  pc->slot = slot;
  pc->logging = false;
  return mb_rtree_insert_disjoint(pieces, &pc->node, gpa, gpa + size);
}

mb_piece *mb_pieces_exact(const mb_rtree *pieces, uint64_t gpa, uint64_t size) {
  mb_piece *pc = mb_piece_of(mb_rtree_find(pieces, gpa));
  return pc && pc->node.start == gpa && size == pc->node.end - gpa ? pc : NULL;
}

size_t mb_pieces_ranges(const mb_rtree *pieces, mb_part_range *out, size_t max) {
  size_t i = 0;
  mb_rtree_node *n;
  for (n = max > 0 ? mb_rtree_first(pieces) : NULL; n != NULL && i < max; n = mb_rtree_next(n))
    out[i++] = (mb_part_range){n->start, n->end - n->start, mb_piece_of(n)->writable};
  return mb_rtree_count(pieces);
}

mb_piece *mb_pieces_add(mb_rtree *pieces, uint64_t gpa, uint64_t size, void *host,
                        bool writable, uint32_t slot) {
  mb_piece *pc = calloc(1, sizeof *pc);
  if (!pc)
    return NULL;
  pc->host = host;
  pc->writable = writable;
  pc->slot = slot;
  mb_rtree_insert(pieces, &pc->node, gpa, gpa + size);
  return pc;
}

void mb_pieces_drop(mb_rtree *pieces, mb_piece *pc) {
  mb_rtree_remove(pieces, &pc->node);
  free(pc);
}

void mb_pieces_clear(mb_rtree *pieces, void (*each)(mb_piece *pc, void *ctx), void *ctx) {
  mb_rtree_node *n;
  while ((n = mb_rtree_first(pieces)) != NULL) {
    if (each)
      each(mb_piece_of(n), ctx);
    mb_pieces_drop(pieces, mb_piece_of(n));
  }
}

/* Copies len bytes between buf and the piece's host memory at gpa (inside the piece); a write
 * marks the pages it wrote in dirty (when not NULL). */
static int copy_piece(const mb_piece *pc, uint64_t gpa, void *buf, size_t len, bool write,
                      mb_dirty_set *dirty) {
  uint8_t *host = pc->host + (gpa - pc->node.start);
  mb_fault f = {0};
  int rc = write ? mb_access_write(host, buf, len, &f) : mb_access_read(buf, host, len, &f);
  if (write && dirty)
    mb_dirty_set_mark_range(dirty, gpa, rc == 0 ? len : f.done);
  return rc == -EFAULT ? MB_E_FAULT : rc;
}

int mb_pieces_access(const mb_rtree *pieces, uint64_t max_addr, uint64_t gpa, void *buf,
                     size_t len, bool write, mb_dirty_set *dirty) {
  if (len > max_addr || gpa > max_addr - len)
    return MB_E_INVALID;
  uint8_t *b = buf;
  while (len > 0) {
    mb_piece *pc = mb_piece_of(mb_rtree_find(pieces, gpa));
    if (!pc || (write && !pc->writable))
      return MB_E_MMIO;
    uint64_t avail = pc->node.end - gpa;
    size_t n = avail < len ? (size_t)avail : len;
    int rc = copy_piece(pc, gpa, b, n, write, dirty);
    if (rc != 0)
      return rc;
    gpa += n;
    b += n;
    len -= n;
  }
  return 0;
}

int mb_pieces_exit_kind(const mb_rtree *pieces, uint64_t gpa, bool write) {
  mb_piece *pc = mb_piece_of(mb_rtree_find(pieces, gpa));
  return pc && (pc->writable || !write) ? MB_GPA_FAULT : MB_GPA_MMIO;
}
