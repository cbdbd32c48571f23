/* region_visibility.h: which region shows where. Pure bookkeeping for the region manager: no
 * actors, no messages, no objects; unit-tested on its own (tests/region/test_visibility.c).
 *
 * A set holds regions (guest ranges with a priority, mapped or not; they may overlap) in an
 * interval tree, and the visible map: disjoint "pieces", each a maximal guest range shown by one
 * region, in a second interval tree. At each address the winner is, among the mapped regions
 * containing it, the highest priority, then the earliest added (lowest seq).
 *
 * Invariants
 *   - pieces never overlap, and two touching pieces never belong to the same region;
 *   - a piece lies inside its region's range, and its region is the winner on every byte of it;
 *   - r->visible is the total size of r's pieces, so a region's state is O(1);
 *   - r->overlaps counts the other regions overlapping r, so "r overlaps nothing" is O(1).
 *
 * A change of one region's mapped state only changes winners inside that region's range R. It
 * goes in two stages so the region manager can make its nested calls in between and still
 * change nothing when they fail:
 *   mb__vis_plan()   computes the diff without touching the set: the pieces to remove (old
 *                    ones overlapping or touching R), the pieces to add, and the byte segments
 *                    whose winner changes. O(log n + k) for the k regions and pieces around R;
 *                    O(log n) for a region that overlaps no other (its whole range appears or
 *                    disappears), the common case.
 *   mb__vis_commit() applies it; mb__vis_abort() drops it. Nothing else may change the set in
 *                    between (the region manager is serialized).
 * A piece that changes in any way is removed whole and added anew; pieces that come out
 * identical are in neither list.
 */
#ifndef MB_REGION_VISIBILITY_H
#define MB_REGION_VISIBILITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "range_tree.h"

typedef struct mb__vis_region {
  mb_rtree_node node; /* in the set's region tree: [start, end) is the guest range */
  uint64_t seq;       /* add order; among equal priorities the lower seq wins */
  uint64_t visible;   /* bytes shown: the total size of its pieces */
  uint8_t prio;
  bool mapped;
  uint32_t overlaps;  /* how many other regions overlap its range (ids are 32-bit: no wrap) */
} mb__vis_region;

typedef struct mb__vis_piece {
  mb_rtree_node node; /* in the set's piece tree */
  mb__vis_region *region;
} mb__vis_piece;

/* A byte range whose winner changes (either may be NULL: nothing shown). */
typedef struct mb__vis_seg {
  uint64_t start, end;
  mb__vis_region *old_winner, *new_winner;
} mb__vis_seg;

enum { MB__VIS_PIECE_CACHE = 16 };

typedef struct mb__vis_set {
  mb_rtree regions;
  mb_rtree pieces;
  uint64_t next_seq;
  int overlap; /* MB_OVERLAP_NESTED or MB_OVERLAP_ANY */
  /* A grow-only planning buffer, reused by every plan (a diff points into it, so at most one
   * diff of a set exists at a time), and unlinked pieces kept for reuse. */
  void *buf;
  size_t buf_cap; /* bytes */
  struct mb__vis_piece *cache[MB__VIS_PIECE_CACHE];
  size_t ncache;
} mb__vis_set;

typedef struct mb__vis_diff {
  mb__vis_set *set;        /* whose planning buffer the arrays point into */
  mb__vis_region *region;  /* the region changing, and its new mapped state */
  bool mapped;
  mb__vis_piece **removed; /* linked pieces, ascending (removed, added and segs point into
                            * the set's planning buffer: one diff per set at a time) */
  size_t nremoved;
  mb__vis_piece **added;   /* unlinked pieces (allocated by plan), ascending */
  size_t nadded;
  mb__vis_seg *segs;       /* ascending, disjoint, old_winner != new_winner */
  size_t nsegs;
} mb__vis_diff;

void mb__vis_init(mb__vis_set *s, int overlap);
/* Frees the pieces and the planning buffers (the regions belong to the caller). */
void mb__vis_fini(mb__vis_set *s);

/* 0 if a region [start, end) of priority prio may join the set under its policy, else
 * MB_E_OVERLAP. Under nested: every region it overlaps must be of lower priority and inside
 * it, of higher priority and around it, or of equal priority and identical. */
int mb__vis_admit(const mb__vis_set *s, uint64_t start, uint64_t end, uint8_t prio);
/* Links r, unmapped, as the latest added; start < end. */
void mb__vis_insert(mb__vis_set *s, mb__vis_region *r, uint64_t start, uint64_t end,
                    uint8_t prio);
/* Links r again, unmapped, as it was before mb__vis_remove (its range, priority and add
 * order kept): a transaction's rollback of a region's removal. */
void mb__vis_reinsert(mb__vis_set *s, mb__vis_region *r);
/* Unlinks r, which must be unmapped. */
void mb__vis_remove(mb__vis_set *s, mb__vis_region *r);

/* MB_REGION_UNMAPPED, _HIDDEN, _ACTIVE or _PARTIAL. */
int mb__vis_state(const mb__vis_region *r);

/* The diff of setting r's mapped state to `mapped` (an unchanged state gives an empty diff).
 * 0, or -ENOMEM (d is then empty and needs no abort). */
int mb__vis_plan(mb__vis_set *s, mb__vis_region *r, bool mapped, mb__vis_diff *d);
/* Applies d: sets the mapped state, swaps the pieces, updates the visible counts. Releases d. */
void mb__vis_commit(mb__vis_set *s, mb__vis_diff *d);
/* Releases d without applying it. */
void mb__vis_abort(mb__vis_diff *d);

/* Pieces overlapping [start, end) in ascending order, of any region. */
mb__vis_piece *mb__vis_first_piece(const mb__vis_set *s, uint64_t start, uint64_t end);
mb__vis_piece *mb__vis_next_piece(const mb__vis_piece *p, uint64_t start, uint64_t end);
/* r's own pieces overlapping [start, end), ascending (skips other regions' pieces). */
mb__vis_piece *mb__vis_first_piece_of(const mb__vis_set *s, const mb__vis_region *r,
                                      uint64_t start, uint64_t end);
mb__vis_piece *mb__vis_next_piece_of(const mb__vis_piece *p, const mb__vis_region *r,
                                     uint64_t start, uint64_t end);

#endif
