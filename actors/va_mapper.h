/* va_mapper.h: the VA mapper actor and the guest-memory access through it.
 *
 * A VA mapper owns one PROT_NONE reservation of max_addr bytes in which guest address g is at
 * base + g. Its actor, on any loop, establishes and tears down mappings as the mapping manager
 * says; VMM code reads and writes guest memory through mb_vam_read/mb_vam_write from any
 * thread, never needing a loop: a fault becomes an error, or, for a lazy mapper, a blocking
 * MM_RESOLVE to the mapping manager and a retry.
 *
 * Messages (requests from the mapping manager; the reply is the same message):
 *   VAM_MAP    {entries, count}  establish these mappings (MAP_FIXED into the reservation);
 *              the array stays the sender's. On failure, undo this batch, answer the error.
 *   VAM_UNMAP  {gpa, size}       tear down whatever is established in the range (a MAP_FIXED
 *              PROT_NONE replacement, never munmap), then answer.
 *   VAM_RANGES {out: ranges, count}  the established ranges in ascending order with their
 *              access (a malloc'd array of mb_part_range the requester frees).
 *   and MM_RESOLVE forwarded by the mapping manager (see mapping_manager.h): establish
 *   `entry`, answer 0.
 */
#ifndef MB_VA_MAPPER_H
#define MB_VA_MAPPER_H

#include "mapping_manager.h"
#include "partition.h"

#define VAM_MAP_FIELDS(F) F(mb_map_entry *, entries) F(uint32_t, count)
#define VAM_UNMAP_FIELDS(F) F(uint64_t, gpa) F(uint64_t, size)
#define VAM_RANGES_FIELDS(F) F(mb_part_range *, ranges) F(uint32_t, count)
#define VAM_MESSAGES(M)                      \
  M(vam, VAM_MAP, map, VAM_MAP_FIELDS)       \
  M(vam, VAM_UNMAP, unmap, VAM_UNMAP_FIELDS) \
  M(vam, VAM_RANGES, ranges, VAM_RANGES_FIELDS)
MB_PROTOCOL_DECLARE(vam, VAM_MESSAGES)

typedef struct mb_vam mb_vam; /* the mapper: its reservation, its actor, its state */

/* Create a mapper on `loop` (call on that loop's thread): reserves max_addr bytes of VA. It
 * does not register with the mapping manager (the caller sends MM_ADD_MAPPER). */
int mb_vam_create(mb_loop *loop, mb_addr mapping_manager, uint64_t max_addr, bool eager,
                  mb_vam **out);
/* Destroy: call on its loop's thread after MM_REMOVE_MAPPER completed; releases the VA. */
void mb_vam_destroy(mb_vam *vam);
mb_addr mb_vam_addr(const mb_vam *vam);
uint8_t *mb_vam_base(const mb_vam *vam);
bool mb_vam_eager(const mb_vam *vam);

/* Any thread, no loop needed (a lazy mapper's fault blocks on the mapping manager, so never
 * call it from the mapping manager's loop thread or the mapper's own: MB_EDEADLK). 0,
 * MB_E_UNMAPPED, MB_E_READONLY, MB_E_INVALID (beyond max_addr), MB_E_FAULT (the page is
 * established but keeps faulting: its backing cannot serve it). */
int mb_vam_read(mb_vam *vam, uint64_t gpa, void *buf, size_t len);
int mb_vam_write(mb_vam *vam, uint64_t gpa, const void *buf, size_t len);

/* Fault counters (approximate when read from another thread). */
typedef struct mb_vam_stats {
  uint64_t faults, resolved, unmapped;
} mb_vam_stats;
mb_vam_stats mb_vam_stats_get(const mb_vam *vam);

#endif
