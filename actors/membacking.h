/* membacking.h: the public API of the guest memory manager.
 *
 * A memory manager (mb_mm) is one VM's guest memory: a region manager and a mapping manager
 * (actors on the loop given at creation), VA mappers (each an actor on a loop of its own
 * choosing) and partitions (each a partition mapper actor driving a backend: soft or kvm).
 * A process may run several managers; they share nothing.
 *
 * Two forms of every operation
 *   - Asynchronous: call it on a thread that runs a runtime loop (mb_loop_current() != NULL,
 *     e.g. a VMM's own uv loop attached with mb_loop_attach). `done(ctx, status, value)` runs
 *     later on that same loop, exactly once, never inside the call, whatever the outcome (an
 *     error, a refused handle, a manager destroyed meanwhile). Two answers come inside the
 *     call instead, on the calling thread, and nothing is done: MB_EINVAL when the calling
 *     thread runs no loop (there is no loop to answer on later), and MB_ENOMEM when the
 *     request itself cannot be allocated.
 *   - Blocking (the _sync suffix): returns the status. Call it from a thread that runs none
 *     of the loops the operation may wait for: the manager's loop, its part_loop, and the
 *     loop of each of its mappers and partitions (and of one being added). On such a loop's
 *     thread a blocking call would wait for itself: it returns MB_EDEADLK at once and does
 *     nothing. (The calls about one consumer only, mb_mapper_ranges_sync and the partition
 *     access and ranges calls, need only that consumer's loop.) Threads that run no loop (a
 *     vCPU thread, a worker, main before the loops run) and loops the manager does not use
 *     may always block.
 * Operations on one manager are carried out in the order they are issued (per issuing
 * thread); an operation completes only when every consumer it affects is up to date.
 *
 * Handles and misuse
 *   mb_mapper *, mb_partition * and mb_lock * are handles, not pointers (never dereference
 *   one): a slot and a generation. Once what a handle names is gone (removed, unlocked, or
 *   destroyed with its manager), every call given it answers MB_E_INVALID (NULL, 0 or false
 *   where it returns those): a double remove, a double unlock, an access after a remove are
 *   refused, not undefined, and so is a handle of the wrong kind. A call racing with the end
 *   of its handle (a read on one thread while another removes the mapper) completes as if it
 *   came first or answers MB_E_INVALID: the removal frees nothing while such a call is inside
 *   (it waits for them without blocking any loop). The check costs a compare and two stores
 *   per call. A handle could name something again only after 2^29 reuses of its slot. The
 *   manager, mb_mm *, is a plain pointer: using it after mb_mm_destroy is undefined.
 *
 * Guest accesses through a VA mapper (mb_mapper_read/write, or plain loads and stores at
 * mb_mapper_base() + gpa) never need a loop thread. A lazy mapper's first touch of a range
 * blocks on the mapping manager, so do not access through a lazy mapper from the manager's
 * own loop thread.
 *
 * Virtual trust levels (mb_vtl.h): a manager may have VTL 0, 1 and 2. Each VTL n has its own
 * view: the regions of VTL <= n, resolved by priority among those only. Mappers and partitions
 * are made at a VTL and show its view (a VTL-2 one also VTL 0's at vtl0_alias + g); a higher
 * VTL protects a lower one's pages (mb_protect: none, ro, rw), which that VTL's mappers,
 * locks and partitions enforce. Without VTLs configured, everything is VTL 0 as before.
 *
 * Errors: 0 or a negative code: MB_E_* (mb_errors.h: the scenario format's set), MB_E* of the
 * runtime (mb_runtime.h), or a negative errno. membacking_strerror() names them all.
 *
 * The mapping limit: -ENOMEM from an operation that maps guest memory (region map, mapping
 * add, a lazy mapper's access or lock) is often not a shortage of memory but the process's
 * limit on kernel memory mappings, vm.max_map_count (65530 by default): every VA mapper
 * (the manager's own primary mapper included) needs one or two of them per established
 * mapping, so with two mappers about 16,000 small mappings reach it. -ENOMEM alone cannot
 * say which; so the first time a VA mapper is refused while the process is at the limit, it
 * says so on stderr, once per process:
 *   membacking: mmap refused (ENOMEM): the process has N memory mappings, vm.max_map_count
 *   is M; raise it (sysctl vm.max_map_count) or use fewer, larger mappings
 * The operation fails and changes nothing, as any refused one does.
 *
 * Signals: the library installs process-wide SIGSEGV and SIGBUS handlers (SA_SIGINFO |
 * SA_ONSTACK | SA_NODEFER) when the first VA mapper is made, i.e. at the first mb_mm_create
 * (or at the first mb_access_* call): they turn faults inside guest memory, and only those,
 * into errors (MB_E_UNMAPPED, MB_E_FAULT, a lazy mapper's fault-in). Every other fault goes
 * to the handler that was installed before, exactly as the kernel would have delivered it
 * (its mask, SA_SIGINFO or not), or, if that was SIG_DFL/SIG_IGN, kills the process as it
 * would have. A VMM that installs its own SIGSEGV/SIGBUS handler:
 *   - before the first mb_mm_create: nothing to do, faults not in guest memory reach it;
 *   - after: either chain (call the action sigaction() returned to you as "old" for faults
 *     that are not yours), or call mb_access_reinstall() (mb_access.h) once yours is in place,
 *     which puts ours in front again and makes yours the one we chain to.
 * Raw loads and stores through mb_mapper_base() are not covered: a fault there is the
 * VMM's own (use mb_mapper_read/write, or locks, where a range may be torn down).
 */
#ifndef MEMBACKING_H
#define MEMBACKING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "mb_access.h"
#include "mb_backing.h"
#include "mb_errors.h"
#include "mb_kvm_exit.h"
#include "mb_partition.h"
#include "mb_runtime.h"
#include "mb_vtl.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mb_mm mb_mm;
typedef struct mb_mapper mb_mapper;
typedef struct mb_partition mb_partition;
typedef uint32_t mb_region_id;

/* mb_region_params.overlap; region states (mb_region_state). */
enum { MB_OVERLAP_NESTED = 0, MB_OVERLAP_ANY = 1 };
enum { MB_REGION_UNMAPPED = 0, MB_REGION_HIDDEN = 1, MB_REGION_ACTIVE = 2, MB_REGION_PARTIAL = 3 };

/* value: the new region id, the region state, or a pointer (mb_mapper *, mb_partition *). */
typedef void (*mb_done_fn)(void *ctx, int status, uint64_t value);

typedef struct mb_mm_config {
  uint64_t max_addr;   /* highest guest physical address + 1; 0 means 64 GiB */
  int overlap;         /* MB_OVERLAP_NESTED (default) or MB_OVERLAP_ANY */
  mb_loop *loop;       /* runs the region manager and the mapping manager (required) */
  mb_loop *part_loop;  /* runs the partitions' own eager VA mappers; NULL: `loop` */
  /* Virtual trust levels (mb_vtl.h): a bit mask of the VM's VTLs (bit n: VTL n); it must
   * include VTL 0; 0 means VTL 0 alone. vtl0_alias (with VTL 2 only; 0: none): VTL 2 also
   * sees VTL 0's view at vtl0_alias + g; a 4 KiB multiple at or above max_addr, with
   * vtl0_alias + max_addr at most 2^46 (a VTL-2 mapper reserves that much VA). MB_E_INVALID
   * otherwise. */
  uint8_t vtls;
  uint64_t vtl0_alias;
} mb_mm_config;

/* Create a manager. Any thread; blocks while its actors are created on their loops. Called on
 * the manager's own loop thread, it cannot wait for the mapping manager to register the
 * partitions' mapper: operations on the manager then wait until it has. */
int mb_mm_create(const mb_mm_config *cfg, mb_mm **out);
/* Destroy a manager with everything it has: partitions, mappers, regions. Any thread; blocks
 * while the actors are destroyed on their loops. Handles of its mappers, partitions and locks
 * become invalid (MB_E_INVALID). Operations in flight are not waited for; each still ends
 * exactly once, on its caller's loop: a mapper or partition add or remove that had not
 * finished answers MB_EGONE (or 0 if it finished first: the handle it gave is invalid all the
 * same), a region or mapping operation its result or the runtime's error for the gone actors
 * (MB_EGONE, MB_ESTOPPED). A recording stops at the destroy. Locks still held are released
 * (a line on stderr says how many): their pages are torn down under their holders, whose
 * pointers may then fault, and mb_mapper_unlock answers MB_E_INVALID; release them first.
 * A reader inside a call on one of its mappers delays only the freeing of that mapper's VA,
 * which then completes on the mapper's loop. It cannot fail halfway: a step on a loop that
 * the runtime has no memory for is tried again until it has. Calling it twice is
 * undefined. */
void mb_mm_destroy(mb_mm *mm);
uint64_t mb_mm_max_addr(const mb_mm *mm);
/* The manager's VTLs, a bit mask (bit n: VTL n; 1 for a manager made without VTLs). */
uint8_t mb_mm_vtls(const mb_mm *mm);
/* Record every region, mapping, mapper and partition operation issued on this manager, with
 * its result, to `path` in the scenario format, and at mb_mm_destroy the final region states
 * and partition maps as `expect` lines: a recording that membacking-replay replays. With
 * MEMBACKING_RECORD=path in the environment every manager records from its creation (the
 * first to path, later ones to path.1, path.2, ...). Objects are recorded by size only. */
int mb_mm_record(mb_mm *mm, const char *path);
/* The manager's primary VA mapper: eager, created with the manager on part_loop; partitions
 * map guest memory by its VA (as KVM memslots do), and VMM code may access guest memory
 * through it like through any mapper. It lives as long as the manager (mb_mapper_remove on
 * it answers MB_E_INVALID); its handle is invalid after mb_mm_destroy. */
mb_mapper *mb_mm_primary_mapper(mb_mm *mm);

/* ---- regions ------------------------------------------------------------------------------ */

enum { MB_REGION_NAME_MAX = 63 }; /* bytes of a region name, its NUL not counted */
typedef struct mb_region_params {
  const char *name;    /* for traces and introspection; may be NULL; at most 63 bytes
                        * (MB_REGION_NAME_MAX): a longer one is MB_E_INVALID, never cut */
  uint64_t gpa, size;  /* 4 KiB multiples, within max_addr */
  uint8_t priority;    /* 0-255, higher wins */
  bool device;         /* type=device (else ram) */
  uint8_t vtl;         /* the VTL whose memory it is: seen by that VTL and higher ones (a VTL
                        * the manager does not have: MB_E_INVALID) */
} mb_region_params;

void mb_region_add(mb_mm *mm, const mb_region_params *p, mb_done_fn done, void *ctx);
int mb_region_add_sync(mb_mm *mm, const mb_region_params *p, mb_region_id *id);
/* Map (make visible) with the given access; on a mapped region, change its access, in place:
 * each partition changes the region's pieces in one request (KVM: a slot's delete and add, as
 * KVM_MEM_READONLY needs), then each VA mapper with one mprotect, so nothing is unmapped and
 * private memory keeps its contents. Only a drop to read-only under a writable lock waits for
 * that lock (the partitions are read-only meanwhile); a rise, or a drop under read-only locks,
 * waits for nothing. */
void mb_region_map(mb_mm *mm, mb_region_id id, bool writable, mb_done_fn done, void *ctx);
int mb_region_map_sync(mb_mm *mm, mb_region_id id, bool writable);
void mb_region_unmap(mb_mm *mm, mb_region_id id, mb_done_fn done, void *ctx);
int mb_region_unmap_sync(mb_mm *mm, mb_region_id id);
void mb_region_remove(mb_mm *mm, mb_region_id id, mb_done_fn done, void *ctx);
int mb_region_remove_sync(mb_mm *mm, mb_region_id id);
/* value / *state: MB_REGION_UNMAPPED, _HIDDEN, _ACTIVE or _PARTIAL. */
void mb_region_state(mb_mm *mm, mb_region_id id, mb_done_fn done, void *ctx);
int mb_region_state_sync(mb_mm *mm, mb_region_id id, int *state);

/* ---- mappings inside a region -------------------------------------------------------------- */

typedef struct mb_mapping_params {
  mb_region_id region;
  uint64_t offset, size; /* relative to the region's start */
  mb_object *obj;        /* the manager takes its own reference */
  uint64_t obj_offset;
  bool writable;
} mb_mapping_params;

void mb_mapping_add(mb_mm *mm, const mb_mapping_params *p, mb_done_fn done, void *ctx);
int mb_mapping_add_sync(mb_mm *mm, const mb_mapping_params *p);
/* Remove every mapped byte in [offset, offset+size) of the region, splitting mappings that
 * straddle an edge. A range with nothing mapped is a no-op. */
void mb_mapping_remove(mb_mm *mm, mb_region_id region, uint64_t offset, uint64_t size,
                       mb_done_fn done, void *ctx);
int mb_mapping_remove_sync(mb_mm *mm, mb_region_id region, uint64_t offset, uint64_t size);
/* Replace whatever is mapped in [offset, offset+size) of the region (splitting mappings that
 * straddle an edge; the range may be partly or wholly unmapped before) by the object's bytes,
 * atomically: no reader through any VA mapper or partition sees a hole or anything but the old
 * or the new bytes at any page meanwhile (one MAP_FIXED over the old pages in each mapper;
 * partitions, which map the partitions' mapper's VA, need no slot change: KVM follows host VA
 * changes). Errors as for mb_mapping_add, except that mappings in the range are no overlap.
 * Waits for locks on pages whose backing changes, as a remove does. */
void mb_mapping_replace(mb_mm *mm, const mb_mapping_params *p, mb_done_fn done, void *ctx);
int mb_mapping_replace_sync(mb_mm *mm, const mb_mapping_params *p);

/* ---- transactions ---------------------------------------------------------------------------
 * Between mb_txn_begin and mb_txn_commit, region and mapping operations are checked and applied
 * to the manager's own state at once, each with its own result (mb_region_state sees it), and
 * no VA mapper or partition changes: accesses still see the state from before the begin. The
 * commit brings every consumer from that state to the new one in one operation, changing only
 * what differs page by page (what a page shows: object, offset, access; not which region shows
 * it), so a region unmapped and mapped again costs nothing and a partition piece (a KVM slot)
 * that ends as it began is not touched. If the commit fails (a host mmap, a KVM ioctl, the
 * slot budget), every consumer and the manager's state return to the state from before the
 * begin, and the commit answers the error. QEMU's memory_region_transaction_begin/commit, with
 * the rollback QEMU lacks. A commit waits for locks its teardowns touch, as any operation does.
 * MB_E_INVALID: a begin inside a transaction, a commit outside one, and inside one: mapper and
 * partition add and remove, and mb_mapper_lock (accesses and unlocks are allowed). A begin
 * makes its commit's request too, so a commit is never refused for memory: whatever it
 * answers, the transaction is over (committed, or rolled back). A VMM issues
 * a transaction and its operations from one thread, as QEMU does under its BQL. A commit costs
 * the manager O(visible pieces + mappings), as QEMU's re-rendering does (and, if it protected
 * pages, O(protected ranges)); consumers pay for the differences only. */
void mb_txn_begin(mb_mm *mm, mb_done_fn done, void *ctx);
int mb_txn_begin_sync(mb_mm *mm);
void mb_txn_commit(mb_mm *mm, mb_done_fn done, void *ctx);
int mb_txn_commit_sync(mb_mm *mm);

/* ---- VA mappers ---------------------------------------------------------------------------- */

/* Add a VA mapper whose actor runs on `loop` (NULL: the manager's loop). An eager mapper has
 * every visible mapping established before this completes; a lazy one establishes on access.
 * value: the mb_mapper *. MB_EGONE when the manager was destroyed before it completed. The
 * blocking form also refuses a `loop` that is the calling thread's (MB_EDEADLK). */
void mb_mapper_add(mb_mm *mm, mb_loop *loop, bool eager, mb_done_fn done, void *ctx);
int mb_mapper_add_sync(mb_mm *mm, mb_loop *loop, bool eager, mb_mapper **out);
/* The same at a VTL (mb_mapper_add is VTL 0): the mapper shows that VTL's view, with that
 * VTL's protections in its VA (protected pages are mprotect'ed: raw pointers fault too, and
 * accesses answer MB_E_PROTECTED); a VTL-2 mapper also shows VTL 0's view, unprotected, at
 * vtl0_alias + g when the manager has an alias. A VTL the manager does not have:
 * MB_E_INVALID. */
void mb_mapper_add_vtl(mb_mm *mm, mb_loop *loop, bool eager, uint8_t vtl, mb_done_fn done,
                       void *ctx);
int mb_mapper_add_vtl_sync(mb_mm *mm, mb_loop *loop, bool eager, uint8_t vtl,
                           mb_mapper **out);
/* Remove a mapper: its VA range is released; the handle becomes invalid. MB_E_INVALID while
 * it holds locks (see "locks"), for the primary mapper, and for a handle that names no mapper
 * (already removed, or a removal of it is in flight). MB_EGONE: its manager was destroyed
 * meanwhile (the mapper went with it). A negative errno other than the runtime's: the mapper
 * was removed (the handle is invalid all the same) but the kernel refused to unmap its VA
 * range, which stays reserved. */
void mb_mapper_remove(mb_mapper *m, mb_done_fn done, void *ctx);
int mb_mapper_remove_sync(mb_mapper *m);
/* Guest address g is at base + g, for max_addr bytes (vtl0_alias + max_addr for a VTL-2
 * mapper of a manager with an alias: mb_mapper_size). NULL (false, 0) for an invalid handle. */
uint8_t *mb_mapper_base(const mb_mapper *m);
uint64_t mb_mapper_size(const mb_mapper *m);
uint8_t mb_mapper_vtl(const mb_mapper *m);
bool mb_mapper_eager(const mb_mapper *m);
/* Any thread: 0, MB_E_UNMAPPED, MB_E_READONLY, MB_E_PROTECTED (a VTL protection forbids it:
 * checked after the other two), MB_E_INVALID (beyond mb_mapper_size, or a handle that names
 * no mapper), MB_E_FAULT; for a lazy mapper whose fault-in the host refused, that refusal (a
 * negative errno such as -ENOMEM, or MB_ENOMEM): the access may succeed later. An access of
 * 1, 2, 4 or 8 bytes at a gpa that is a multiple of its size is one load or one store, as
 * the guest's own would be (a ring index, say): the guest and other threads see the old
 * value or the new one, never a mix, and a write refused under a concurrent unmap or
 * protection change leaves nothing of itself. */
int mb_mapper_read(mb_mapper *m, uint64_t gpa, void *buf, size_t len);
int mb_mapper_write(mb_mapper *m, uint64_t gpa, const void *buf, size_t len);
/* The ranges established in the mapper's VA right now (malloc'd; free() it). value of the
 * async form: a pointer to an mb_range_list the callback owns (free() it). */
typedef struct mb_range_list {
  size_t count;
  mb_part_range ranges[];
} mb_range_list;
void mb_mapper_ranges(mb_mapper *m, mb_done_fn done, void *ctx);
int mb_mapper_ranges_sync(mb_mapper *m, mb_range_list **out);

/* ---- locks ---------------------------------------------------------------------------------
 *
 * A lock pins [gpa, gpa + size) of one mapper for raw pointer use (a ring buffer, a DMA
 * target, a kernel IO buffer). mb_mapper_lock establishes the range first (a lazy mapper
 * faults it in), checks that every page is mapped (MB_E_UNMAPPED), for a writable lock
 * writable (MB_E_READONLY), and allowed by the mapper's VTL protection (MB_E_PROTECTED; the
 * first failing page decides), and records the lock atomically with that check. gpa and size
 * are 4 KiB multiples within mb_mapper_size (MB_E_INVALID). Any thread, no loop needed; like an
 * access, a lazy mapper's lock may block on the manager (never take one on the manager's
 * loop thread). mb_lock_ptr() (= base + gpa) stays valid until mb_mapper_unlock.
 *
 * Guarantee: while a lock is held, its pages in that mapper are not torn down. An operation
 * that would tear them down (region unmap, remove and access change; mapping remove) runs
 *   1. partitions first: the guest can no longer reach the range;
 *   2. then it waits for the locks on the range to be released (the mapper parks its
 *      acknowledgement; no loop blocks, other messages are served);
 *   3. the mapper unmaps and acknowledges;
 *   4. the operation completes.
 * Operations issued after it wait behind it, in order. A page whose teardown is waiting
 * cannot be locked anew (MB_E_UNMAPPED). Locks are taken through mappers of your own: the
 * partitions reach guest memory through the primary mapper (a mapping remove tears the
 * range down there, not in the partitions), so a lock through it could not keep step 1, and
 * mb_mapper_lock on mb_mm_primary_mapper() answers MB_E_INVALID.
 *
 * Do not wait for a manager operation while holding a lock on a range it tears down: it
 * waits for the lock. mb_mapper_remove of a mapper that holds locks fails (MB_E_INVALID);
 * release every lock before mb_mm_destroy (which releases what is left, see there).
 *
 * mb_mapper_unlock: 0, or MB_E_INVALID for a lock that is not held any more (a double
 * unlock, or one released by mb_mm_destroy); NULL is a no-op (0). For such a handle
 * mb_lock_ptr answers NULL, mb_lock_gpa and mb_lock_size 0. */
typedef struct mb_lock mb_lock;
int mb_mapper_lock(mb_mapper *m, uint64_t gpa, uint64_t size, bool writable, mb_lock **out);
int mb_mapper_unlock(mb_lock *lock);
void *mb_lock_ptr(const mb_lock *lock);
uint64_t mb_lock_gpa(const mb_lock *lock);
uint64_t mb_lock_size(const mb_lock *lock);

/* What mb_mapper_locks reports: every held lock, and how many operations wait behind them. */
typedef struct mb_lock_info {
  uint64_t gpa, size;
  bool writable;
  bool overdue;           /* held longer than the watchdog's threshold */
  uint64_t held_ms;
  struct timespec since;  /* CLOCK_REALTIME when taken */
} mb_lock_info;
typedef struct mb_lock_list {
  size_t waiting;         /* mapper requests parked or queued behind locks */
  size_t count;
  mb_lock_info locks[];   /* ascending by gpa */
} mb_lock_list;
/* A snapshot (malloc'd; free() it). Any thread; never blocks on a loop. */
int mb_mapper_locks(mb_mapper *m, mb_lock_list **out);

/* The lock watchdog of a mapper: each lock held longer than threshold_ms is reported once,
 * on the mapper's loop thread, through log(ctx, line), or on stderr when log is NULL:
 *   membacking: lock held for N ms: mapper LOOP/SLOT.GEN (eager|lazy) range [A, B) rw|ro
 *   since YYYY-MM-DD HH:MM:SS.mmm
 * and marked overdue in mb_mapper_locks. It never forces anything. 0 turns it off; the
 * default is 10000 ms to stderr. Any thread. 0, or MB_E_INVALID for an invalid handle. */
typedef void (*mb_log_fn)(void *ctx, const char *line);
int mb_mapper_lock_watchdog(mb_mapper *m, uint64_t threshold_ms, mb_log_fn log, void *ctx);

/* ---- partitions ---------------------------------------------------------------------------- */

/* Add a partition with the given backend (&mb_partition_soft, or the kvm one) whose mapper
 * runs on `loop` (NULL: the manager's loop). Everything visible is mapped into it before this
 * completes. value: the mb_partition *. MB_E_UNSUPPORTED where the backend cannot run;
 * MB_EGONE when the manager was destroyed before it completed. */
void mb_partition_add(mb_mm *mm, const mb_partition_ops *ops, mb_loop *loop, mb_done_fn done,
                      void *ctx);
int mb_partition_add_sync(mb_mm *mm, const mb_partition_ops *ops, mb_loop *loop,
                          mb_partition **out);
/* Add a partition with a backend's configuration: mb_partition_kvm_attach with an
 * mb_kvm_attach_config manages the memory slots of a KVM VM the VMM owns (mb_partition.h). The
 * configuration is copied: it need not outlive the call. MB_E_INVALID for a bad one (not a
 * KVM VM, a slot range past the VM's limit). mb_partition_add(mm, ops, loop, ...) is the same
 * with no configuration. */
typedef struct mb_partition_params {
  const mb_partition_ops *ops;
  const void *config;  /* ops->config_size bytes, or NULL */
  mb_loop *loop;       /* runs its partition mapper; NULL: the manager's loop */
  uint8_t vtl;         /* the VTL whose view it shows (a KVM VM per VTL); a VTL-2 partition
                        * also maps VTL 0's view at vtl0_alias + g when there is an alias */
} mb_partition_params;
void mb_partition_attach(mb_mm *mm, const mb_partition_params *p, mb_done_fn done, void *ctx);
int mb_partition_attach_sync(mb_mm *mm, const mb_partition_params *p, mb_partition **out);
/* MB_E_INVALID for a handle that names no partition (already removed, or a removal of it is
 * in flight); MB_EGONE when its manager was destroyed meanwhile. */
void mb_partition_remove(mb_partition *p, mb_done_fn done, void *ctx);
int mb_partition_remove_sync(mb_partition *p);
/* A guest access through the partition's view: 0, MB_E_MMIO, MB_E_PROTECTED, MB_E_FAULT (the
 * first failing byte decides, in that order), MB_E_INVALID. The buffer must stay valid until
 * completion. */
void mb_partition_access(mb_partition *p, uint64_t gpa, void *buf, size_t len, bool write,
                         mb_done_fn done, void *ctx);
int mb_partition_access_sync(mb_partition *p, uint64_t gpa, void *buf, size_t len, bool write);
/* The guest ranges mapped into the partition (see mb_mapper_ranges for ownership). */
void mb_partition_ranges(mb_partition *p, mb_done_fn done, void *ctx);
int mb_partition_ranges_sync(mb_partition *p, mb_range_list **out);

/* ---- the exit question ---------------------------------------------------------------------
 *
 * A VMM's vCPU thread that gets an exit for a guest physical address asks what is there:
 *   MB_GPA_RAM    guest RAM the guest may access: run the vCPU again (the exit raced with a
 *                 change of the map; while an operation on that range is in flight, the
 *                 answer stays RAM and the guest may exit again until it completes);
 *   MB_GPA_MMIO   device MMIO: nothing is visible there, or it is a write to a read-only
 *                 region (ROM): the VMM's device model emulates it;
 *   MB_GPA_FAULT  a fault of the backing: a hole in a visible region (no mapping there), a
 *                 write to a read-only mapping inside a writable region, a file truncated
 *                 under its mapping. The guest touched RAM that is not there;
 *   MB_GPA_PROTECTED (a partition at a protected VTL: mb_vtl.h) RAM whose VTL protection
 *                 forbids the access (none, or a write to ro): a secure intercept for the
 *                 higher VTL that set it, never MMIO to emulate.
 * Checked at the first failing byte in that order: MMIO, PROTECTED, FAULT. A partition at a
 * VTL sees that VTL's view with its protections below max_addr and, at VTL 2 with an alias,
 * VTL 0's view without them at vtl0_alias + g (gpa + len <= vtl0_alias + max_addr); between
 * max_addr and the alias nothing is ever mapped (MMIO).
 * The answer agrees with the operations that complete: once an unmap has completed, its
 * range is never RAM; a page that stays RAM across an operation is RAM throughout, even
 * while the operation deletes its memory slot and adds it again (a piece that grows or
 * shrinks); a page an operation makes RAM is MMIO until that operation completes.
 *
 * Any thread, no loop needed, never waits for a loop: O(log n) in the visible pieces under a
 * reader lock that loops hold only for in-memory updates; RAM and FAULT are told apart by
 * touching one byte per page of the access in the partitions' VA mapper (a load, or for a
 * write a locked OR of zero, which changes no byte). len > 0; gpa + len <= max_addr, else
 * MB_E_INVALID. On a partition being removed it answers as before the removal or
 * MB_E_INVALID (once removed, always the latter). */
typedef int mb_gpa_kind; /* MB_GPA_RAM, _MMIO, _FAULT, _PROTECTED (mb_access.h) */
int mb_partition_classify(mb_partition *p, uint64_t gpa, uint64_t len, bool write);

/* The same question asked of a KVM_RUN outcome on a vCPU of the partition's VM, as each kernel
 * reports it (mb_kvm_exit.h): pass KVM_RUN's return value, its errno and the vCPU's kvm_run.
 * 0 with *out for an exit about guest memory: KVM_EXIT_MMIO (on kvm-pvm hosts also a hole or
 * a read-only page inside a slot), -1/EFAULT with KVM_EXIT_MEMORY_FAULT (gpa given), or a
 * bare -1/EFAULT (Debian's 6.1 and 6.12 on hardware virtualization: out->kind FAULT,
 * out->len 0, no address). MB_E_INVALID for any other outcome (HLT, IO, EINTR, ...).
 *
 * What to do with the answer depends on how the exit came:
 *   after KVM_EXIT_MMIO, the instruction waits half done for run->mmio:
 *     MMIO   emulate the device into run->mmio.data; the next KVM_RUN completes it;
 *     RAM    serve it from guest RAM (mb_partition_serve_exit), then KVM_RUN; if that
 *            fails, the map moved again: classify again;
 *     FAULT  the guest touched RAM that is not there: finish the pending MMIO without
 *            running guest code (KVM_RUN with immediate_exit = 1) before skipping the
 *            instruction or stopping;
 *     PROTECTED  likewise finish the pending MMIO without running guest code, then deliver
 *            the secure intercept to the higher VTL (never emulate it as MMIO);
 *   after -1/EFAULT, nothing is pending: RAM (or MMIO: the range went away) runs the vCPU
 *   again; FAULT is a fault of the backing, PROTECTED a secure intercept.
 * A bare EFAULT does not update run->exit_reason: a VMM whose kernel also reports
 * KVM_EXIT_MEMORY_FAULT clears exit_reason after handling one, so that a stale value is not
 * read as a new fault. */
struct kvm_run;
int mb_partition_classify_exit(mb_partition *p, int rc, int err, const struct kvm_run *run,
                               mb_kvm_exit *out);
/* Serves an MMIO exit that mb_partition_classify_exit answered MB_GPA_RAM from guest RAM, as the
 * guest's access would have: a read fills run->mmio.data, a write stores it. Any thread. 0
 * (KVM_RUN completes the instruction), MB_E_UNMAPPED or MB_E_READONLY (the map changed again:
 * classify again), MB_E_INVALID (not such an exit). */
int mb_partition_serve_exit(mb_partition *p, const mb_kvm_exit *ex, struct kvm_run *run);

/* ---- dirty-page tracking ---------------------------------------------------------------------
 *
 * What live migration and incremental snapshots need: which guest pages were written. One set
 * of dirty pages per manager, by guest physical address (4 KiB pages), fed by every source:
 *   - guest writes through partitions: soft at once; kvm/kvm_attach through the kernel's log
 *     (KVM_MEM_LOG_DIRTY_PAGES with the manual clear protocol), collected at each sync, and
 *     read before any slot is deleted (an unmap, an access change, the partition's removal);
 *     a device access through mb_partition_access is marked directly;
 *   - writes through VA mappers (mb_mapper_write): the pages of the bytes written, and for a
 *     write that failed while an unmap or a protection change took rights away in that mapper
 *     (which may stop a copy after part of a page), every page of the write;
 *   - writable locks: every page of one is dirty while it is held (each sync answers it and
 *     leaves it dirty) and once more at its unlock.
 * Writes made through a mapper's base pointer or a lock's pointer without a lock are NOT
 * tracked (the lock covers them: write under a writable lock).
 * A page written and then unmapped stays dirty until synced. A write racing a start or a stop
 * may or may not be counted. KVM may report more than was written, never less: it maps a page
 * writable at the guest's first access after a start or a sync, a read included, and logs
 * it then (measured on Linux 6.12); soft partitions report exactly the written pages. With
 * kvm partitions, what the guest writes between a slot's last log read and its deletion is
 * lost unless the VMM keeps its vCPUs out of KVM_RUN around the change (as QEMU does).
 *
 * Requests go through the region manager, in order with region requests; they are allowed
 * inside a transaction. A partition that cannot track (a backend without dirty calls) makes
 * mb_dirty_start fail with MB_E_UNSUPPORTED. Threads as for region requests. */
/* Tracking on: MB_E_INVALID if it is on already. */
void mb_dirty_start(mb_mm *mm, mb_done_fn done, void *ctx);
int mb_dirty_start_sync(mb_mm *mm);
/* Tracking off; the dirty pages are forgotten. MB_E_INVALID if it is off. */
void mb_dirty_stop(mb_mm *mm, mb_done_fn done, void *ctx);
int mb_dirty_stop_sync(mb_mm *mm);
/* The spec's `dirty sync`: answers the dirty pages of [gpa, gpa + size) (4 KiB aligned,
 * non-empty, below max_addr, else MB_E_INVALID) and clears them (those under a writable lock
 * stay dirty). Into the caller's bitmap: bit i (bit i % 64 of word i / 64) is page
 * gpa + i * 4 KiB; (size / 4 KiB + 63) / 64 words are written. value / *pages: how many pages
 * are dirty. MB_E_INVALID when tracking is off. */
void mb_dirty_sync(mb_mm *mm, uint64_t gpa, uint64_t size, uint64_t *bitmap, mb_done_fn done,
                   void *ctx);
int mb_dirty_sync_bitmap(mb_mm *mm, uint64_t gpa, uint64_t size, uint64_t *bitmap,
                         uint64_t *pages);
/* The same as ranges (ascending, adjacent pages merged; `writable` is true in each): value of
 * the async form is an mb_range_list * the callback owns (free() it). Out of memory for the
 * list: MB_ENOMEM, and the pages stay dirty. */
void mb_dirty_sync_ranges(mb_mm *mm, uint64_t gpa, uint64_t size, mb_done_fn done, void *ctx);
int mb_dirty_sync_ranges_sync(mb_mm *mm, uint64_t gpa, uint64_t size, mb_range_list **out);

/* ---- VTL protections (mb_vtl.h) -------------------------------------------------------------
 *
 * What a higher VTL asks of the hypervisor for a lower VTL's pages (Hyper-V's
 * HvCallModifyVtlProtectionMask, without execute rights): access MB_PROT_NONE, MB_PROT_RO or
 * MB_PROT_RW (the default of every page) for [gpa, gpa + size) of VTL vtl's view. Only a VTL
 * with a higher one in the manager can be protected (VTL 0, and VTL 1 below VTL 2); another
 * VTL, an unaligned or empty range, or one past max_addr: MB_E_INVALID. Protections belong to
 * guest pages, not to regions or mappings: they outlive unmaps. They are enforced in the VTL's
 * own mappers (mprotect: accesses answer MB_E_PROTECTED, raw pointers fault, a lock fails with
 * MB_E_PROTECTED), in its partitions (soft: by its map; kvm: memory slots, so a `none` range
 * has no slot and a `ro` one a read-only slot; an access answers MB_E_PROTECTED and
 * mb_partition_classify MB_GPA_PROTECTED), never through the VTL-2 alias. The change completes
 * when every consumer enforces it; one that takes a right a held lock needs waits for that lock,
 * partitions first, as an access change does. A failure (a KVM slot budget: -ENOSPC) changes
 * nothing. Requests go through the region manager, in order with region requests, and are
 * allowed inside a transaction (applied at its commit). Cost: O(log n + k) in the manager for
 * the k protected ranges the change touches; on KVM each protected range inside a visible
 * piece costs up to two more memory slots. */
void mb_protect(mb_mm *mm, uint8_t vtl, uint64_t gpa, uint64_t size, int access,
                mb_done_fn done, void *ctx);
int mb_protect_sync(mb_mm *mm, uint8_t vtl, uint64_t gpa, uint64_t size, int access);
/* The ranges of VTL vtl whose protection is not rw, ascending, touching ones of one access
 * merged (malloc'd; free() it; the async form's value is the mb_prot_list * the callback
 * owns). MB_E_INVALID for a VTL that cannot be protected. */
typedef struct mb_prot_list {
  size_t count;
  mb_prot_item items[];
} mb_prot_list;
void mb_protections(mb_mm *mm, uint8_t vtl, mb_done_fn done, void *ctx);
int mb_protections_sync(mb_mm *mm, uint8_t vtl, mb_prot_list **out);

/* ---- introspection ------------------------------------------------------------------------- */

/* The manager's whole state as one JSON object (malloc'd; free() it): "regions" (state,
 * priority, access, mappings), "visible" (the visible map: pieces and the mappings they
 * show), "pending" (the operation in flight), "stages" (request latency of the region and
 * mapping managers, per message kind: samples, p50_ns, p99_ns, max_ns), "mappers" (each VA
 * mapper's established ranges, fault counters, held locks and latency), "partitions" (each
 * one's slots and latency). Latency is sampled: one request in MB_LATENCY_SAMPLE (16) of
 * each kind is timed, and "samples" counts those, not the requests handled. Strings are
 * valid UTF-8 whatever a name holds (a byte that is not becomes U+FFFD). It is read on each
 * actor's loop in turn: the blocking form waits for each of those loops (mb_loop_exec), so
 * a call from a loop thread briefly waits for the others; the asynchronous form posts each
 * part to its loop and never blocks the loop that asks. A mapper or partition removed while
 * an inspection runs is left out; its loop must not be stopped meanwhile. The async form's
 * value is the char *. An inspection is whole or an error (MB_ENOMEM, MB_EGONE when the
 * manager is destroyed meanwhile), never part of one. */
void mb_mm_inspect(mb_mm *mm, mb_done_fn done, void *ctx);
int mb_mm_inspect_sync(mb_mm *mm, char **json);
/* Dump it to `path` (NULL: stderr) whenever the process gets `signum` (e.g. SIGUSR1). */
int mb_mm_inspect_on_signal(mb_mm *mm, int signum, const char *path);
/* The memory map of an inspection (the JSON of mb_mm_inspect, e.g. a saved dump) as text
 * for people, like QEMU's "info mtree": the address space and the operation in flight (if
 * any), then the regions as a tree, each under the smallest region that contains it,
 * siblings by priority (highest first), then address; each with [start, end) in hex,
 * priority, ram or device, access (rw, ro, or - while unmapped), state (active, partial,
 * hidden, unmapped), name and id, then its mappings ("mapping [start, end) object N +OFFSET
 * rw|ro": objects are numbered in order of appearance, as the dump names them by address
 * only); then each partition's slots. Any thread. 0, MB_E_INVALID when `json` is not an
 * inspection, MB_ENOMEM, or a negative errno when writing fails. The format (see
 * tests/trace/golden/mtree.txt):
 *   memory map [0x00000000, 0x100000000), overlap nested
 *   region [0x00000000, 0x01000000) prio 255 ram rw active "ram" (id 1)
 *     mapping [0x00000000, 0x01000000) object 1 +0x0 rw
 *     region [0x000a0000, 0x000c0000) prio 1 device - unmapped "vga" (id 2)
 *   partition 0 (soft): 1 slot
 *     slot [0x00000000, 0x01000000) rw */
int mb_mm_mtree(const char *json, FILE *out);

/* ---- errors -------------------------------------------------------------------------------- */

const char *membacking_strerror(int err);

#ifdef __cplusplus
}
#endif

/* Guest RAM built the way a VMM describes it, in one call (backing requests, hugetlb, THP,
 * NUMA, prefetch, the x86 legacy split) and its PAM windows' visibility: mb_ram.h. */
#include "mb_ram.h"

#endif
