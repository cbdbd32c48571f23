/* pieces.h: the map a partition backend keeps: non-overlapping pieces of guest range, each
 * mapped as a whole and unmapped as a whole (mb_partition.h's rules). Shared by the backends. */
#ifndef MB_PIECES_H
#define MB_PIECES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gpa_map.h"
#include "mb_partition.h"
#include "range_tree.h"

typedef struct mb_piece {
  mb_rtree_node node; /* [gpa, gpa + size) */
  uint8_t *host;      /* host VA of the piece's first byte */
  uint32_t slot;      /* the backend's handle for it (a KVM memslot) */
  bool writable;
  bool logging;       /* kvm: its slot has KVM_MEM_LOG_DIRTY_PAGES */
} mb_piece;

static inline mb_piece *mb_piece_of(mb_rtree_node *n) {
  return n ? mb_rtree_entry(n, mb_piece, node) : NULL;
}

/* May [gpa, gpa + size) be mapped at host? MB_E_INVALID (empty, unaligned, past max_addr, a
 * bad host address), -EEXIST (it overlaps a piece), or 0. */
int mb_pieces_check_map(const mb_rtree *pieces, uint64_t max_addr, uint64_t gpa, uint64_t size,
                        const void *host);
/* mb_pieces_check_map and the link in one descent, for a piece of the caller's (unlinked, its
 * other fields set here): MB_E_INVALID, -EEXIST (pc stays unlinked), or 0. */
int mb_pieces_link(mb_rtree *pieces, mb_piece *pc, uint64_t max_addr, uint64_t gpa,
                   uint64_t size, void *host, bool writable, uint32_t slot);
/* The piece that is exactly [gpa, gpa + size), or NULL. */
mb_piece *mb_pieces_exact(const mb_rtree *pieces, uint64_t gpa, uint64_t size);
/* Add [gpa, gpa + size) -> host as a piece (checked with mb_pieces_check_map first): the piece,
 * or NULL when out of memory. */
mb_piece *mb_pieces_add(mb_rtree *pieces, uint64_t gpa, uint64_t size, void *host,
                        bool writable, uint32_t slot);
/* Remove a piece from the map and free it. */
void mb_pieces_drop(mb_rtree *pieces, mb_piece *pc);
/* Drop every piece, calling each(pc, ctx) first when each is not NULL. */
void mb_pieces_clear(mb_rtree *pieces, void (*each)(mb_piece *pc, void *ctx), void *ctx);
/* mb_partition.h's access() by following the map, as the soft partition does: the first byte
 * with no piece, or written in a read-only piece, is MB_E_MMIO; host memory that faults is
 * MB_E_FAULT; MB_E_INVALID past max_addr. A write marks the pages of the bytes it wrote in
 * dirty, when not NULL (after writing them; up to the failing byte when it fails). */
int mb_pieces_access(const mb_rtree *pieces, uint64_t max_addr, uint64_t gpa, void *buf,
                     size_t len, bool write, struct mb_dirty_set *dirty);
/* What a KVM exit at gpa means for a partition that maps exactly these pieces and whose
 * vCPU the kernel could not let touch gpa: inside a piece, other than a write to a read-only
 * one, the host memory failed (MB_GPA_FAULT); else device MMIO (MB_GPA_MMIO). */
int mb_pieces_exit_kind(const mb_rtree *pieces, uint64_t gpa, bool write);
/* mb_partition.h's ranges(): up to max pieces in ascending order; returns how many there are. */
size_t mb_pieces_ranges(const mb_rtree *pieces, mb_part_range *out, size_t max);

#endif
