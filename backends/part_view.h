/* part_view.h: a partition's guest map with a VTL's protections enforced in its backend: the
 * pieces the region manager gave the partition mapper (gpa range, host VA, the region's
 * access) and the protections it was given (an mb_prot_map), kept mapped in one backend
 * instance as sub-ranges split by effective access. The partition mapper actor
 * (actors/partition_mapper.h) owns one; pure bookkeeping plus backend calls, one thread.
 *
 * A piece's sub-ranges are the maximal runs of its effective access, min(piece access,
 * protection): a `none` run is not mapped, a `ro` run is mapped read-only, the rest with the
 * piece's access. They are a function of the pieces and the protections, so the backend's
 * rule (unmap exactly what map mapped) always holds. Every call is all or nothing: the
 * backend calls it makes are undone in reverse order at the first failure, whose error it
 * answers (-ENOSPC: a KVM partition out of memory slots).
 *
 * KVM slot budget: one slot per sub-range. A piece costs one slot, plus up to two more for
 * each protected range inside it (a `ro` range in the middle of a rw piece: three slots in
 * all; a `none` one: two); a piece wholly `none` costs none. Back to rw, they merge again.
 *
 * Cost: a change touches the pieces it overlaps and, in each, re-plans the runs of the
 * protections stored inside that piece (O(log n + k) for those k); only the sub-ranges that
 * differ are unmapped and mapped. */
#ifndef MB_PART_VIEW_H
#define MB_PART_VIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mb_partition.h"
#include "mb_vtl.h"
#include "prot_map.h"
#include "range_tree.h"

typedef struct mb_pview {
  const mb_partition_ops *ops;
  void *inst;
  uint64_t max_addr;
  mb_rtree pieces;   /* of the pieces mapped (disjoint), in partition space */
  mb_prot_map prot;  /* the VTL's protections: rw where nothing is stored */
  struct pv_piece *spare; /* an unlinked piece kept for the next map */
} mb_pview;

void mb_pview_init(mb_pview *v, const mb_partition_ops *ops, void *inst, uint64_t max_addr);
/* Forgets the pieces and protections (the backend instance stays the caller's). */
void mb_pview_fini(mb_pview *v);

/* A piece [gpa, gpa + size) at host (host VA of gpa), writable or not. MB_E_INVALID (empty,
 * unaligned, past max_addr, no host), -EEXIST (it overlaps a piece), MB_ENOMEM, or the
 * backend's error. */
int mb_pview_map(mb_pview *v, uint64_t gpa, uint64_t size, uint8_t *host, bool writable);
/* Exactly a piece mapped before (-ENOENT if not), all its sub-ranges. */
int mb_pview_unmap(mb_pview *v, uint64_t gpa, uint64_t size);
/* Exactly a piece mapped before gets the access (-ENOENT if not). */
int mb_pview_access_set(mb_pview *v, uint64_t gpa, uint64_t size, bool writable);
/* Protections: items ascending, each non-empty and page aligned, together exactly one range
 * below max_addr (rw runs included), else MB_E_INVALID. */
int mb_pview_protect(mb_pview *v, const mb_prot_item *items, size_t n);
/* A guest access, decided at the first failing byte: MB_E_MMIO (no piece, or a write to a
 * piece that is not writable), MB_E_PROTECTED (protection none, or a write to protection ro),
 * else the backend's answer for the bytes up to there (MB_E_FAULT: a hole...). Bytes before
 * the failing one are accessed (written, and marked dirty by the backend). MB_E_INVALID when
 * gpa + len wraps or exceeds max_addr. */
int mb_pview_access(mb_pview *v, uint64_t gpa, void *buf, size_t len, bool write);

#endif
