/* mapping_manager.h: the mapping manager actor. It holds the set of visible mappings (what
 * the region manager decided the guest sees, cut to GPA ranges that never overlap) and keeps
 * every VA mapper up to date: it pushes mappings to eager mappers, answers lazy mappers'
 * faults, and tears mappings down, completing only when every affected mapper acknowledged.
 *
 * View space. With VTLs (mb_vtl.h) the guest has one view per configured VTL; view n's guest
 * address g is the view-space address n * geom.stride + g (mb_mm_geom below), so one tree
 * holds every view. The region manager speaks view space; one request never straddles a
 * view slice (MB_E_INVALID). A mapper has windows: (view vtl -> 0) and, for a VTL-2 mapper
 * registered with `alias`, (view 0 -> geom.alias). Everything the manager sends a mapper is
 * in the mapper's own space: entries clipped to its windows and moved; a request with nothing
 * in a mapper's windows sends that mapper nothing. MM_LIST answers in view space.
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
 *   MM_ADD_MAPPER {mapper, eager, vtl, protect, alias}  register a VA mapper actor showing
 *               view vtl (a configured VTL) and, with alias (VTL 2 of a manager with an
 *               alias), view 0 at geom.alias. protect: it enforces VTL vtl's protections (vtl
 *               protectable: 0 with VTL 1 or 2, 1 with VTL 2); it first gets the VTL's current
 *               protections (VAM_PROTECT). Then, for an eager one, every visible mapping in
 *               its windows is pushed to it before this completes. MB_E_INVALID for a bad
 *               combination or a mapper already registered.
 *   MM_REMOVE_MAPPER {mapper}      forget a mapper (it tears its own VA down when destroyed).
 *   MM_RESOLVE  {mapper, gpa; out: entry, found}  from a lazy mapper's faulting thread
 *               (mb_call_sync); gpa and entry in the mapper's space. When a visible mapping
 *               contains gpa, the manager fills `entry` (with an object reference) and
 *               forwards the message to the mapper, which establishes it and replies 0; it is
 *               thus ordered with that mapper's MAP/UNMAP messages. Otherwise the manager
 *               replies MB_E_UNMAPPED.
 *   MM_LIST     {out: entries, count}  a copy of the visible mappings in ascending order
 *               (view space; object references included; release with mb_map_entries_free).
 *   MM_PROTECT  {vtl, items, count}  from the region manager: VTL vtl's protections of the
 *               range the items cover (guest space of that VTL; ascending, touching, rw runs
 *               included, inside [0, max_addr); the array stays the sender's) become the
 *               items. Every protecting mapper at that VTL gets VAM_PROTECT; completes when
 *               all answered. When one failed, those that took it get the old protections
 *               back and the error is answered: a failed protect changes nothing. The manager
 *               keeps its own copy per protectable VTL, for mappers added later.
 */
#ifndef MB_MAPPING_MANAGER_H
#define MB_MAPPING_MANAGER_H

#include "mb_backing.h"
#include "mb_protocol.h"
#include "mb_vtl.h"

/* One visible mapping: guest range -> object range, with its effective access. */
typedef struct mb_map_entry {
  uint64_t gpa, size;
  mb_object *obj;   /* a reference held by whoever holds the entry */
  uint64_t obj_off;
  bool writable;    /* false when the mapping or its region is read-only */
} mb_map_entry;

/* Entry arrays (map_entries.c). alloc: room for n > 0 entries, or NULL (no memory).
 * free: drops the object references of `count` entries and frees the array (NULL: nothing).
 * drop: frees the array of `count` entries whose references went elsewhere. Arrays from
 * malloc may be released by these too. */
mb_map_entry *mb_map_entries_alloc(size_t n);
void mb_map_entries_free(mb_map_entry *entries, uint32_t count);
void mb_map_entries_drop(mb_map_entry *entries, uint32_t count);

#define MM_MAP_FIELDS(F) F(mb_map_entry *, entries) F(uint32_t, count)
#define MM_UNMAP_FIELDS(F) F(uint64_t, gpa) F(uint64_t, size)
#define MM_REPLACE_FIELDS(F) \
  F(uint64_t, gpa) F(uint64_t, size) F(mb_map_entry *, entries) F(uint32_t, count)
#define MM_ADD_MAPPER_FIELDS(F) \
  F(mb_addr, mapper) F(bool, eager) F(uint8_t, vtl) F(bool, protect) F(bool, alias)
#define MM_REMOVE_MAPPER_FIELDS(F) F(mb_addr, mapper)
#define MM_RESOLVE_FIELDS(F) F(mb_addr, mapper) F(uint64_t, gpa) F(mb_map_entry, entry) F(bool, found)
#define MM_LIST_FIELDS(F) F(mb_map_entry *, entries) F(uint32_t, count)
#define MM_PROTECT_FIELDS(F) F(uint8_t, vtl) F(const mb_prot_item *, items) F(uint32_t, count)
#define MM_MESSAGES(M)                                            \
  M(mm, MM_MAP, map, MM_MAP_FIELDS)                               \
  M(mm, MM_UNMAP, unmap, MM_UNMAP_FIELDS)                         \
  M(mm, MM_REPLACE, replace, MM_REPLACE_FIELDS)                   \
  M(mm, MM_ADD_MAPPER, add_mapper, MM_ADD_MAPPER_FIELDS)          \
  M(mm, MM_REMOVE_MAPPER, remove_mapper, MM_REMOVE_MAPPER_FIELDS) \
  M(mm, MM_RESOLVE, resolve, MM_RESOLVE_FIELDS)                   \
  M(mm, MM_LIST, list, MM_LIST_FIELDS)                            \
  M(mm, MM_PROTECT, protect, MM_PROTECT_FIELDS)
MB_PROTOCOL_DECLARE(mm, MM_MESSAGES)

/* The manager's geometry ("view space", see the top of this file). max_addr: the guest
 * address space of every view; stride: the distance between view slices (mb_mm_stride); alias:
 * where a VTL-2 consumer with an alias window shows view 0 (0: none); vtls: the configured VTLs
 * as a bit mask (bit 0 always). */
typedef struct mb_mm_geom {
  uint64_t max_addr, stride, alias;
  uint8_t vtls;
} mb_mm_geom;

/* The smallest power of two >= max_addr and >= 1 GiB. */
static inline uint64_t mb_mm_stride(uint64_t max_addr) {
  uint64_t s = 1ull << 30;
  while (s < max_addr && s < (1ull << 63))
    s <<= 1;
  return s;
}

/* Create the mapping manager on `loop` (its thread) with geometry *g (copied; stride 0 means
 * mb_mm_stride(max_addr), bit 0 of vtls is implied). NULL on failure or a bad geometry
 * (max_addr 0 or unaligned, a stride below max_addr or not a power of two). */
mb_actor *mb_mapping_manager_create(mb_loop *loop, const mb_mm_geom *g);

#endif
