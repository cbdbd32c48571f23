/* partition_mapper.h: the partition mapper actor: one per partition. It maps each visible
 * region piece the region manager gives it into its backend (mb_partition.h), by host VA: the
 * piece's guest range is backed by the partition VA mapper's range at base + gpa.
 *
 * Messages (requests; the reply is the same message):
 *   PM_MAP    {gpa, size, writable}  map a visible piece (holes included)
 *   PM_UNMAP  {gpa, size}            unmap exactly a piece mapped before
 *   PM_ACCESS_SET {gpa, size, writable}  change the access of exactly a piece mapped before, in
 *             one request (the backend's unmap and map: a KVM slot's delete and add); on
 *             failure the piece is mapped back with the other access
 *   PM_RANGES {out: ranges, count}   the mapped ranges (malloc'd mb_part_range array)
 *   PM_ACCESS {gpa, buf, len, write} a guest access through the partition's own view:
 *             0, MB_E_MMIO or MB_E_FAULT (buf stays the requester's)
 *   PM_DIRTY_START {set}             dirty tracking on, into the manager's set; a backend
 *             that cannot track: MB_E_UNSUPPORTED
 *   PM_DIRTY_COLLECT {gpa, size}     what the backend logged in the range, into the set
 *   PM_DIRTY_STOP {}                 tracking off (its inverse: start again, into set)
 */
#ifndef MB_PARTITION_MAPPER_H
#define MB_PARTITION_MAPPER_H

#include "mb_protocol.h"
#include "mb_partition.h"

#define PM_MAP_FIELDS(F) F(uint64_t, gpa) F(uint64_t, size) F(bool, writable)
#define PM_UNMAP_FIELDS(F) F(uint64_t, gpa) F(uint64_t, size)
#define PM_ACCESS_SET_FIELDS(F) F(uint64_t, gpa) F(uint64_t, size) F(bool, writable)
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
  M(pm, PM_DIRTY_STOP, dirty_stop, PM_DIRTY_FIELDS)
MB_PROTOCOL_DECLARE(pm, PM_MESSAGES)

/* Create on `loop` (its thread): a backend instance for guest addresses below max_addr, with
 * the backend's configuration (mb_partition.h), whose host memory for gpa is at va_base + gpa. 0, or the backend's error (MB_E_UNSUPPORTED). */
int mb_partition_mapper_create(mb_loop *loop, const mb_partition_ops *ops, const void *config,
                               uint64_t max_addr, uint8_t *va_base, mb_actor **out);
/* The actor's destruction (mb_actor_destroy) destroys the backend instance. */

/* On the partition mapper's thread only (a direct call, not a message): its mapped ranges as
 * PM_RANGES gives them. */
int mb__partition_mapper_ranges(mb_actor *pm, mb_part_range **out, uint32_t *count);

#endif
