/* va_mapper.h: the VA mapper actor and the guest-memory access through it.
 *
 * A VA mapper owns one PROT_NONE reservation of va_size bytes in which address g of its own
 * space (the mapping manager's windows: mapping_manager.h) is at base + g. Its actor, on any loop, establishes and tears down mappings as the mapping manager
 * says; VMM code reads and writes guest memory through mb_vam_read/mb_vam_write from any
 * thread, never needing a loop: a fault becomes an error, or, for a lazy mapper, a blocking
 * MM_RESOLVE to the mapping manager and a retry.
 *
 * Messages (requests from the mapping manager; the reply is the same message):
 *   VAM_MAP    {entries, count}  establish these mappings (MAP_FIXED into the reservation);
 *              the array stays the sender's. On failure, undo this batch, answer the error.
 *   VAM_UNMAP  {gpa, size}       tear down whatever is established in the range (a MAP_FIXED
 *              PROT_NONE replacement, never munmap), then answer. A refused replacement
 *              changes nothing: the range stays established, and the error is answered.
 *   VAM_REPLACE {gpa, size, entries, count}  [gpa, gpa + size) shows exactly these entries
 *              (ascending, inside it) from now on: an eager mapper establishes them over what
 *              is there (one MAP_FIXED each where the backing differs: no hole for a reader)
 *              and tears down the rest of the range; a lazy one does the same to what it has
 *              established and leaves the rest to faults. Nothing is undone on failure (the
 *              mapping manager sends the inverse). A held lock anywhere in the range parks
 *              the whole request before anything changes. The array stays the sender's.
 *   VAM_RANGES {out: ranges, count}  the established ranges in ascending order with their
 *              effective access (a malloc'd array of mb_part_range the requester frees):
 *              pages protected `none` are left out, `ro` ones are read-only.
 *   VAM_PROTECT {items, count}  the protections the mapper enforces over the range the items
 *              cover (ascending, touching, rw runs included; the array stays the sender's)
 *              become the items. Established pages change in place (mprotect; nothing is
 *              unmapped); every later establish gives each page the least of its mapping's
 *              access and its protection. All or nothing: on failure the pages and the
 *              protections are as they were. A held lock that needs a right it takes (read
 *              for any lock: an item going `none`; write for a writable one: `ro`) parks it
 *              as a teardown is parked; later requests queue behind it, and new locks that
 *              need what it takes fail MB_E_PROTECTED meanwhile.
 *   and MM_RESOLVE forwarded by the mapping manager (see mapping_manager.h): establish
 *   `entry`, answer 0.
 * and two one-way messages the mapper sends itself from threads that lock and unlock:
 *   VAM_KICK   {gpa, size}       a lock on [gpa, gpa + size) was released: retry what is parked.
 *   VAM_WATCH  {}                the first lock of a while was taken: start the watchdog.
 *
 * Locks (see "locks" below). A lock pins established pages: while it is held, nothing that
 * would tear them down takes effect. A VAM_UNMAP that overlaps a held lock (or a VAM_MAP or
 * MM_RESOLVE that would replace locked pages with another backing) is parked: kept
 * unanswered until the locks on its range are released, while the actor goes on serving
 * VAM_RANGES and forwarded MM_RESOLVEs for other ranges. Every later VAM_MAP and VAM_UNMAP,
 * and every MM_RESOLVE overlapping a parked or queued range, waits behind it in arrival
 * order, so the mapper's order of operations is kept. No loop ever blocks: an unlock while
 * something is parked sends VAM_KICK, and the actor takes up its queue again.
 */
#ifndef MB_VA_MAPPER_H
#define MB_VA_MAPPER_H

#include <time.h>

#include <stdio.h>

#include "mapping_manager.h"
#include "mb_partition.h"

#define VAM_MAP_FIELDS(F) F(mb_map_entry *, entries) F(uint32_t, count)
#define VAM_UNMAP_FIELDS(F) F(uint64_t, gpa) F(uint64_t, size)
#define VAM_REPLACE_FIELDS(F) \
  F(uint64_t, gpa) F(uint64_t, size) F(mb_map_entry *, entries) F(uint32_t, count)
#define VAM_RANGES_FIELDS(F) F(mb_part_range *, ranges) F(uint32_t, count)
#define VAM_PROTECT_FIELDS(F) F(const mb_prot_item *, items) F(uint32_t, count)
#define VAM_KICK_FIELDS(F) F(uint64_t, gpa) F(uint64_t, size)
#define VAM_WATCH_FIELDS(F)
#define VAM_MESSAGES(M)                          \
  M(vam, VAM_MAP, map, VAM_MAP_FIELDS)           \
  M(vam, VAM_UNMAP, unmap, VAM_UNMAP_FIELDS)     \
  M(vam, VAM_REPLACE, replace, VAM_REPLACE_FIELDS) \
  M(vam, VAM_RANGES, ranges, VAM_RANGES_FIELDS)  \
  M(vam, VAM_KICK, kick, VAM_KICK_FIELDS)        \
  M(vam, VAM_WATCH, watch, VAM_WATCH_FIELDS)      \
  M(vam, VAM_PROTECT, protect, VAM_PROTECT_FIELDS)
MB_PROTOCOL_DECLARE(vam, VAM_MESSAGES)

typedef struct mb_vam mb_vam; /* the mapper: its reservation, its actor, its state */

/* Create a mapper on `loop` (call on that loop's thread): reserves va_size bytes of VA (the
 * manager's max_addr, or alias + max_addr for a VTL-2 mapper with an alias window). It does
 * not register with the mapping manager (the caller sends MM_ADD_MAPPER). */
int mb_vam_create(mb_loop *loop, mb_addr mapping_manager, uint64_t va_size, bool eager,
                  mb_vam **out);
/* Destroy: call on its loop's thread after MM_REMOVE_MAPPER completed; releases the VA. 0, or
 * the -errno of a failed release (mb_va_release): the mapper is gone all the same, but its
 * span stays reserved (leaked). NULL is a no-op (0). */
int mb_vam_destroy(mb_vam *vam);
mb_addr mb_vam_addr(const mb_vam *vam);
uint8_t *mb_vam_base(const mb_vam *vam);
bool mb_vam_eager(const mb_vam *vam);

/* Any thread, no loop needed (a lazy mapper's fault blocks on the mapping manager, so never
 * call it from the mapping manager's loop thread or the mapper's own: MB_EDEADLK). 0,
 * MB_E_UNMAPPED, MB_E_READONLY (the mapping or its region), MB_E_PROTECTED (the page's
 * protection: `none`, or `ro` for a write), the first failing byte deciding (the bytes before
 * it are copied), MB_E_INVALID (beyond va_size), MB_E_FAULT (the page is
 * established but keeps faulting: its backing cannot serve it), or, for a lazy mapper whose
 * fault-in the host refused, that refusal: the mapper's negative errno (-ENOMEM at
 * vm.max_map_count, named once on stderr: see membacking.h) or MB_ENOMEM. */
int mb_vam_read(mb_vam *vam, uint64_t gpa, void *buf, size_t len);
int mb_vam_write(mb_vam *vam, uint64_t gpa, const void *buf, size_t len);
/* Dirty tracking: writes and writable locks are marked in `log` (dirty_log.h) from now on. Set
 * once, before the mapper is used (its creator's thread). */
struct mb_dirty_log;
void mb_vam_set_dirty(mb_vam *vam, struct mb_dirty_log *log);

/* Counters (approximate when read from another thread): faults taken by accesses, resolves
 * that established a mapping (for accesses and locks), accesses that failed as unmapped, and
 * requests parked behind held locks. */
typedef struct mb_vam_stats {
  uint64_t faults, resolved, unmapped, parked;
} mb_vam_stats;
mb_vam_stats mb_vam_stats_get(const mb_vam *vam);
/* On the mapper's thread (a direct read, for introspection): writes the JSON members
 * "established":[...],"locks":[...],"waiting_behind_locks":N,"protections":[...]
 * (established: effective access; protections: the stored none/ro ranges). */
void mb__vam_inspect(mb_vam *vam, FILE *f);

/* ---- locks -------------------------------------------------------------------------------------
 *
 * Any thread, no loop needed (a lazy mapper's lock may block on the mapping manager, like an
 * access: never from the manager's or the mapper's loop thread, MB_EDEADLK).
 *
 * mb_vam_lock establishes [gpa, gpa + size) (a lazy mapper resolves each missing page as a
 * fault would), checks that every page is established and, for a writable lock, writable,
 * and records the lock, all under the mapper's mutex, so no VAM_UNMAP can slip in between
 * the check and the record. A page whose teardown is already parked or queued counts as
 * unmapped. Errors: MB_E_INVALID (zero size, unaligned, beyond va_size, the mapper is being
 * removed), MB_E_UNMAPPED, MB_E_READONLY, then MB_E_PROTECTED (a page's protection, or one
 * parked or queued, forbids the lock's access: read for any lock, write for a writable one),
 * MB_ENOMEM, MB_EDEADLK, a refused fault-in's errno. The pointer
 * (mb_vam_lock_ptr) to the range's first byte stays valid until mb_vam_unlock: plain loads
 * and stores through it never fault on account of the manager.
 *
 * Release every lock of a mapper before destroying it: mb_vam_destroy frees what is left,
 * and a later mb_vam_unlock of such a lock is a use after free. */
typedef struct mb_lock mb_lock;
int mb_vam_lock(mb_vam *vam, uint64_t gpa, uint64_t size, bool writable, mb_lock **out);
void mb_vam_unlock(mb_lock *lock);
uint8_t *mb_vam_lock_ptr(const mb_lock *lock);
uint64_t mb_vam_lock_gpa(const mb_lock *lock);
uint64_t mb_vam_lock_size(const mb_lock *lock);

/* Refuse new locks, as the first step of removing the mapper: MB_E_INVALID while a lock is
 * held (nothing changes then). mb_vam_unretire takes it back (the removal failed). */
int mb_vam_retire(mb_vam *vam);
void mb_vam_unretire(mb_vam *vam);

/* One held lock, for introspection. */
typedef struct mb_vam_lock_info {
  uint64_t gpa, size;
  bool writable;
  bool overdue;           /* held longer than the watchdog's threshold (and reported) */
  uint64_t held_ns;       /* for how long, at the snapshot */
  struct timespec since;  /* CLOCK_REALTIME when it was taken */
} mb_vam_lock_info;

/* A snapshot of the held locks in ascending order (malloc'd, free() it; NULL when none) and
 * of the requests parked or queued behind them. Any thread; never blocks on a loop. */
int mb_vam_locks(mb_vam *vam, mb_vam_lock_info **out, size_t *count, size_t *waiting);

/* The watchdog: reports each lock held longer than threshold_ms, once, through log(ctx,
 * line) on the mapper's loop thread (NULL: a line on stderr):
 *   membacking: lock held for N ms: mapper LOOP/SLOT.GEN (eager|lazy) range [A, B) rw|ro
 *   since YYYY-MM-DD HH:MM:SS.mmm
 * It only reports: the guarantee stands however long a lock is held. threshold_ms = 0 turns
 * it off. Default: MB_VAM_WATCHDOG_MS, stderr. Any thread. Its timer runs (unreferenced: it
 * never keeps a loop alive) only while locks are held. */
enum { MB_VAM_WATCHDOG_MS = 10000 };
typedef void (*mb_vam_log_fn)(void *ctx, const char *line);
void mb_vam_set_watchdog(mb_vam *vam, uint64_t threshold_ms, mb_vam_log_fn log, void *ctx);

#endif
