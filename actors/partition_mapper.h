/* partition_mapper.h: the partition mapper actor: one per partition. It maps each visible
 * region piece the region manager gives it into its backend (mb_partition.h), by host VA, and
 * enforces the protections of the partition's VTL (mb_vtl.h) there: each piece goes into the
 * backend as sub-ranges split by effective access (backends/part_view.h): a `none` range is
 * not mapped, a `ro` one is mapped read-only, the rest with the piece's access.
 *
 * Messages (requests; the reply is the same message). Every request is all or nothing: on
 * failure the backend is as before and the error is answered (-ENOSPC: out of KVM slots).
 *   PM_MAP    {gpa, size, writable, host}  map a visible piece (holes included); host: the
 *             host VA of gpa (NULL: the va_base given at creation + gpa)
 *   PM_UNMAP  {gpa, size}            unmap exactly a piece mapped before
 *   PM_ACCESS_SET {gpa, size, writable}  change the access of exactly a piece mapped before, in
 *             one request (the backend's unmap and map: a KVM slot's delete and add of each
 *             sub-range whose access changes)
 *   PM_PROTECT {items, count}        the VTL's protections for one range: items ascending,
 *             together exactly that range, rw runs included, in partition space (= the VTL's
 *             guest space); the array stays the sender's and is read while it is handled.
 *             Only sub-ranges that change are unmapped and mapped; back to rw, a piece is one
 *             sub-range (one slot) again. MB_E_INVALID for a malformed list.
 *   PM_RANGES {out: ranges, count}   the effective map (malloc'd mb_part_range array): `none`
 *             ranges absent, `ro` ones read-only
 *   PM_ACCESS {gpa, buf, len, write} a guest access through the partition's own view, decided
 *             at the first failing byte: MB_E_MMIO (no piece, or a write to a read-only
 *             region), MB_E_PROTECTED (protection none, or a write to protection ro), else
 *             the backend's answer (MB_E_FAULT: a hole...); bytes before it are accessed
 *             (written and marked dirty) as a CPU would. 0 when all are (buf stays the
 *             requester's)
 *   PM_DIRTY_START {set}             dirty tracking on, into the manager's set; a backend
 *             that cannot track: MB_E_UNSUPPORTED
 *   PM_DIRTY_COLLECT {gpa, size}     what the backend logged in the range, into the set
 *   PM_DIRTY_STOP {}                 tracking off (its inverse: start again, into set)
 * A sub-range deleted by a map change while tracking is on has its log moved into the set
 * first (mb_partition.h), so a protection change loses no dirty page.
 *
 * KVM slot budget: one slot per sub-range: a piece costs one, plus up to two more for each
 * protected range inside it; a piece wholly `none` costs none.
 */
#ifndef MB_PARTITION_MAPPER_H
#define MB_PARTITION_MAPPER_H

#include "mb_protocol.h"
#include "mb_partition.h"
#include "mb_vtl.h"

#define PM_MAP_FIELDS(F) F(uint64_t, gpa) F(uint64_t, size) F(bool, writable) F(uint8_t *, host)
#define PM_UNMAP_FIELDS(F) F(uint64_t, gpa) F(uint64_t, size)
#define PM_ACCESS_SET_FIELDS(F) F(uint64_t, gpa) F(uint64_t, size) F(bool, writable)
#define PM_PROTECT_FIELDS(F) F(mb_prot_item *, items) F(uint32_t, count)
#define PM_RANGES_FIELDS(F) F(mb_part_range *, ranges) F(uint32_t, count)
#define PM_ACCESS_FIELDS(F) F(uint64_t, gpa) F(void *, buf) F(uint64_t, len) F(bool, write)
#define PM_DIRTY_FIELDS(F) F(struct mb_dirty_set *, set) F(uint64_t, gpa) F(uint64_t, size)
#define PM_MESSAGES(M)                         \
  M(pm, PM_MAP, map, PM_MAP_FIELDS)            \
  M(pm, PM_UNMAP, unmap, PM_UNMAP_FIELDS)      \
  M(pm, PM_ACCESS_SET, access_set, PM_ACCESS_SET_FIELDS) \
  M(pm, PM_RANGES, ranges, PM_RANGES_FIELDS)   \
  M(pm, PM_ACCESS, access, PM_ACCESS_FIELDS)   \
  M(pm, PM_DIRTY_START, dirty_start, PM_DIRTY_FIELDS) \
  M(pm, PM_DIRTY_COLLECT, dirty_collect, PM_DIRTY_FIELDS) \
  M(pm, PM_DIRTY_STOP, dirty_stop, PM_DIRTY_FIELDS) \
  M(pm, PM_PROTECT, protect, PM_PROTECT_FIELDS)
MB_PROTOCOL_DECLARE(pm, PM_MESSAGES)

/* Create on `loop` (its thread): a backend instance for guest addresses below max_addr (the
 * partition's space: alias + max_addr for a VTL-2 partition with an alias), with the
 * backend's configuration (mb_partition.h). va_base may be NULL: it is only the fallback
 * host of a PM_MAP without one (va_base + gpa; MB_E_INVALID when both are NULL), kept while
 * senders move to PM_MAP's host. 0, or the backend's error (MB_E_UNSUPPORTED). */
int mb_partition_mapper_create(mb_loop *loop, const mb_partition_ops *ops, const void *config,
                               uint64_t max_addr, uint8_t *va_base, mb_actor **out);
/* The actor's destruction (mb_actor_destroy) destroys the backend instance. */

/* On the partition mapper's thread only (a direct call, not a message): its mapped ranges as
 * PM_RANGES gives them. */
int mb__partition_mapper_ranges(mb_actor *pm, mb_part_range **out, uint32_t *count);

#endif
