/* region_manager.h: the region manager actor. It owns the regions (fixed guest ranges with a
 * priority, mapped or not, each holding mappings), decides what is visible where, and tells
 * the others: the mapping manager gets the visible mappings (MM_MAP/MM_UNMAP), each partition
 * mapper the visible region pieces (PM_MAP/PM_UNMAP).
 *
 * Visibility (spec/scenario.md): at each guest address, among the mapped regions containing
 * it, the highest priority wins; equal priorities go to the earliest added. A "piece" is a
 * maximal guest range shown by one region; under overlap=nested every mapped region is one
 * piece or hidden, under overlap=any a region may show in several pieces.
 *
 * Order (as in the original): setup goes VA mappers (MM_MAP) first, then partitions (PM_MAP);
 * teardown goes partitions (PM_UNMAP) first, then VA mappers (MM_UNMAP). An operation that
 * changes visibility first tears down the old pieces, then sets up the new ones.
 *
 * It is serialized. Every request answers 0 or an MB_E_* code; a failed request changes no
 * state (one that fails halfway rolls back).
 *
 * Messages (requests; the reply is the same message):
 *   RM_REGION_ADD     {name, gpa, size, prio, device, vtl; out: id}  MB_E_INVALID, MB_E_OVERLAP
 *   RM_REGION_MAP     {id, writable}  map, or change the access of a mapped region
 *   RM_REGION_UNMAP   {id}
 *   RM_REGION_REMOVE  {id}            unmaps first
 *   RM_MAPPING_ADD    {id, offset, size, obj, obj_off, writable, obj_ref}  takes its own
 *                     reference on obj, or with obj_ref (the message holds one for it) takes
 *                     that one and clears obj_ref (a sender that set it drops the reference
 *                     if the reply still has it set); MB_E_INVALID (outside the region or the
 *                     object), MB_E_OVERLAP
 *   RM_MAPPING_REMOVE {id, offset, size}  removes every mapped byte in the range, splitting
 *   RM_MAPPING_REPLACE {id, offset, size, obj, obj_off, writable, obj_ref}  whatever is mapped in the
 *                     range (split at its edges) is replaced atomically (MM_REPLACE); errors
 *                     as for add, minus overlap
 *   RM_TXN_BEGIN {}   opens a transaction: later region and mapping requests change the state
 *                     at once and send nothing; partition add/remove: MB_E_INVALID
 *   RM_TXN_COMMIT {}  brings every consumer from the state at RM_TXN_BEGIN to the current one,
 *                     changing only what differs; on failure everything returns to the state
 *                     at RM_TXN_BEGIN
 *   RM_PARTITION_ADD  {partition, vtl, alias}  maps everything its view shows (and VTL 0's at
 *                     the alias if `alias`) into it before completing
 *   RM_PARTITION_REMOVE {partition}   forgets it (its actor's destruction unmaps all)
 *   RM_REGION_STATE   {id; out: state}  MB_REGION_UNMAPPED/HIDDEN/ACTIVE/PARTIAL
 *   RM_DIRTY_START {}  dirty tracking on (PM_DIRTY_START to every partition, and to each one
 *                     added while it is on); MB_E_INVALID if it is on already
 *   RM_DIRTY_SYNC  {gpa, size, bits; out: list, pages}  the dirty pages of the range (page
 *                     aligned, below max_addr), collected from the partitions, answered and
 *                     cleared: into the caller's bitmap `bits`, or (bits NULL) as a malloc'd
 *                     mb_range_list; pages: how many; MB_E_INVALID when tracking is off
 *   RM_DIRTY_STOP  {}  tracking off, the set forgotten; MB_E_INVALID if it is off
 *   RM_PROTECT {vtl, gpa, size, access}  VTL vtl's protection of the guest range becomes
 *                     access (MB_PROT_*): PM_PROTECT to the VTL's partitions, then
 *                     MM_PROTECT (the VTL's protecting mappers); inside a transaction, applied
 *                     to the state at once and sent at the commit. MB_E_INVALID for a VTL
 *                     without a higher one, a bad range or access
 *   RM_PROTECTIONS {vtl; out: list}  the VTL's protected ranges (a malloc'd mb_prot_list)
 * Views (VTLs, mb_vtl.h): a region of VTL v is seen by every view n >= v. The manager works
 * in view space (n * stride + guest address: region_internal.h); the mapping manager gets
 * view-space calls, each partition its own addresses (view n at 0, VTL 0's at the alias).
 *   Dirty requests are served inside a transaction too (they change no consumer's map).
 */
#ifndef MB_REGION_MANAGER_H
#define MB_REGION_MANAGER_H

#include <stdio.h>

#include "mb_backing.h"
#include "gpa_map.h"
#include "mapping_manager.h" /* mb_mm_geom */
#include "mb_protocol.h"
#include "membacking.h" /* MB_OVERLAP_*, MB_REGION_* */

typedef char mb_name[64];

#define RM_REGION_ADD_FIELDS(F) \
  F(mb_name, name) F(uint64_t, gpa) F(uint64_t, size) F(uint8_t, prio) F(bool, device) F(uint8_t, vtl) \
  F(uint32_t, id)
#define RM_REGION_MAP_FIELDS(F) F(uint32_t, id) F(bool, writable)
#define RM_REGION_ID_FIELDS(F) F(uint32_t, id)
#define RM_MAPPING_ADD_FIELDS(F)                                                             \
  F(uint32_t, id) F(uint64_t, offset) F(uint64_t, size) F(mb_object *, obj) F(uint64_t, obj_off) \
  F(bool, writable) F(bool, obj_ref)
#define RM_MAPPING_REMOVE_FIELDS(F) F(uint32_t, id) F(uint64_t, offset) F(uint64_t, size)
#define RM_PARTITION_FIELDS(F) F(mb_addr, partition) F(uint8_t, vtl) F(bool, alias)
#define RM_REGION_STATE_FIELDS(F) F(uint32_t, id) F(int32_t, state)
#define RM_TXN_FIELDS(F)
#define RM_DIRTY_FIELDS(F) \
  F(uint64_t, gpa) F(uint64_t, size) F(uint64_t *, bits) F(void *, list) F(uint64_t, pages)
#define RM_PROTECT_FIELDS(F) \
  F(uint8_t, vtl) F(uint64_t, gpa) F(uint64_t, size) F(uint8_t, access) F(void *, list)
#define RM_MESSAGES(M)                                                 \
  M(rm, RM_REGION_ADD, region_add, RM_REGION_ADD_FIELDS)               \
  M(rm, RM_REGION_MAP, region_map, RM_REGION_MAP_FIELDS)               \
  M(rm, RM_REGION_UNMAP, region_unmap, RM_REGION_ID_FIELDS)            \
  M(rm, RM_REGION_REMOVE, region_remove, RM_REGION_ID_FIELDS)          \
  M(rm, RM_MAPPING_ADD, mapping_add, RM_MAPPING_ADD_FIELDS)            \
  M(rm, RM_MAPPING_REMOVE, mapping_remove, RM_MAPPING_REMOVE_FIELDS)   \
  M(rm, RM_MAPPING_REPLACE, mapping_replace, RM_MAPPING_ADD_FIELDS)    \
  M(rm, RM_PARTITION_ADD, partition_add, RM_PARTITION_FIELDS)          \
  M(rm, RM_PARTITION_REMOVE, partition_remove, RM_PARTITION_FIELDS)    \
  M(rm, RM_REGION_STATE, region_state, RM_REGION_STATE_FIELDS)        \
  M(rm, RM_TXN_BEGIN, txn_begin, RM_TXN_FIELDS)                        \
  M(rm, RM_TXN_COMMIT, txn_commit, RM_TXN_FIELDS)                      \
  M(rm, RM_DIRTY_START, dirty_start, RM_DIRTY_FIELDS)                  \
  M(rm, RM_DIRTY_SYNC, dirty_sync, RM_DIRTY_FIELDS)                    \
  M(rm, RM_DIRTY_STOP, dirty_stop, RM_DIRTY_FIELDS)                    \
  M(rm, RM_PROTECT, protect, RM_PROTECT_FIELDS)                        \
  M(rm, RM_PROTECTIONS, protections, RM_PROTECT_FIELDS)
MB_PROTOCOL_DECLARE(rm, RM_MESSAGES)

typedef struct mb_rm_config {
  mb_mm_geom geom;          /* max_addr, the views (VTLs), their stride, the alias */
  uint8_t *const *primary;  /* per view: the base of its primary mapper (partitions map host
                             * VA from it); written before the first request arrives */
  uint64_t max_addr;
  int overlap;              /* MB_OVERLAP_NESTED or MB_OVERLAP_ANY */
  mb_addr mapping_manager;
  mb_gpa_map *gpa_map;      /* published at each operation's start and end; may be NULL */
  struct mb_dirty_log *dirty; /* the manager's dirty tracking (dirty_log.h); NULL: none */
} mb_rm_config;

/* On the region manager's thread only (a direct call, not a message): a region's state, or
 * MB_E_NOTFOUND. */
int mb__region_manager_state(mb_actor *rm, uint32_t id);
/* Same thread rule: VTL vtl's protected ranges (malloc'd), or MB_E_INVALID / MB_ENOMEM. */
int mb__region_manager_protections(mb_actor *rm, uint8_t vtl, mb_prot_list **out);
/* Same thread rule: writes `"regions":[...],"visible":[...],"pending":...` (JSON members). */
void mb__region_manager_inspect(mb_actor *rm, FILE *f);

/* Create the region manager on `loop` (its thread). NULL on failure. */
mb_actor *mb_region_manager_create(mb_loop *loop, const mb_rm_config *cfg);

#endif
