/* mapping_manager.h: the mapping manager actor. It holds the set of visible mappings (what
 * the region manager decided the guest sees, cut to GPA ranges that never overlap) and keeps
 * every VA mapper up to date: it pushes mappings to eager mappers, answers lazy mappers'
 * faults, and tears mappings down, completing only when every affected mapper acknowledged.
 *
 * One request at a time, nested calls included; later requests wait in arrival order. The
 * one exception: MM_RESOLVE passes an operation in flight other than MM_MAP (a mapper may
 * hold an unmap's acknowledgement while VMM code holds a lock; see mapping_manager.c).
 *
 * Messages (all requests; the reply is the same message with status set):
 *   MM_MAP      {entries, count}   from the region manager: add visible mappings (none of
 *               them overlaps a visible mapping). Takes ownership of the array and of the
 *               object references in it, on success and on failure. Completes when every
 *               eager mapper has established them. On a mapper's failure it rolls back (the
 *               mappers that established them unmap) and answers the error.
 *   MM_UNMAP    {gpa, size}        from the region manager: remove every visible mapping byte
 *               in the range (mappings straddling an edge are split; their outside part stays)
 *               and make every mapper unmap it; completes when all acknowledged. A range
 *               with nothing visible is a no-op (mappers are still told: lazy ones may hold
 *               stale nothing, this keeps the rule simple). When a mapper fails (it kept the
 *               range), the mappings are put back as they were and the eager mappers that had
 *               torn the range down map it again before the error is answered: the failed
 *               unmap changes nothing.
 *   MM_REPLACE  {gpa, size, entries, count}  from the region manager: the visible mappings of
 *               [gpa, gpa + size) become exactly `entries` (inside it, not overlapping; taken
 *               over as MM_MAP's are), atomically for readers: every mapper gets VAM_REPLACE
 *               (one MAP_FIXED over the old pages, no hole). Completes when every mapper
 *               answered; when one failed, every mapper gets the old mappings back the same
 *               way and the error is answered: a failed replace changes nothing.
 *   MM_ADD_MAPPER {mapper, eager}  register a VA mapper actor; for an eager one, every visible
 *               mapping is pushed to it before this completes.
 *   MM_REMOVE_MAPPER {mapper}      forget a mapper (it tears its own VA down when destroyed).
 *   MM_RESOLVE  {mapper, gpa; out: entry, found}  from a lazy mapper's faulting thread
 *               (mb_call_sync). When a visible mapping contains gpa, the manager fills `entry`
 *               (with an object reference) and forwards the message to the mapper, which
 *               establishes it and replies 0; it is thus ordered with that mapper's MAP/UNMAP
 *               messages. Otherwise the manager replies MB_E_UNMAPPED.
 *   MM_LIST     {out: entries, count}  a copy of the visible mappings in ascending order
 *               (object references included; release with mb_map_entries_free).
 */
#ifndef MB_MAPPING_MANAGER_H
#define MB_MAPPING_MANAGER_H

#include "mb_backing.h"
#include "mb_protocol.h"

/* One visible mapping: guest range -> object range, with its effective access. */
typedef struct mb_map_entry {
  uint64_t gpa, size;
  mb_object *obj;   /* a reference held by whoever holds the entry */
  uint64_t obj_off;
  bool writable;    /* false when the mapping or its region is read-only */
} mb_map_entry;

/* Drop the object references of `count` entries and free the array. */
void mb_map_entries_free(mb_map_entry *entries, uint32_t count);

#define MM_MAP_FIELDS(F) F(mb_map_entry *, entries) F(uint32_t, count)
#define MM_UNMAP_FIELDS(F) F(uint64_t, gpa) F(uint64_t, size)
#define MM_REPLACE_FIELDS(F) \
  F(uint64_t, gpa) F(uint64_t, size) F(mb_map_entry *, entries) F(uint32_t, count)
#define MM_ADD_MAPPER_FIELDS(F) F(mb_addr, mapper) F(bool, eager)
#define MM_REMOVE_MAPPER_FIELDS(F) F(mb_addr, mapper)
#define MM_RESOLVE_FIELDS(F) F(mb_addr, mapper) F(uint64_t, gpa) F(mb_map_entry, entry) F(bool, found)
#define MM_LIST_FIELDS(F) F(mb_map_entry *, entries) F(uint32_t, count)
#define MM_MESSAGES(M)                                            \
  M(mm, MM_MAP, map, MM_MAP_FIELDS)                               \
  M(mm, MM_UNMAP, unmap, MM_UNMAP_FIELDS)                         \
  M(mm, MM_REPLACE, replace, MM_REPLACE_FIELDS)                   \
  M(mm, MM_ADD_MAPPER, add_mapper, MM_ADD_MAPPER_FIELDS)          \
  M(mm, MM_REMOVE_MAPPER, remove_mapper, MM_REMOVE_MAPPER_FIELDS) \
  M(mm, MM_RESOLVE, resolve, MM_RESOLVE_FIELDS)                   \
  M(mm, MM_LIST, list, MM_LIST_FIELDS)
MB_PROTOCOL_DECLARE(mm, MM_MESSAGES)

/* Create the mapping manager on `loop` (its thread). NULL on failure. */
mb_actor *mb_mapping_manager_create(mb_loop *loop);

#endif
