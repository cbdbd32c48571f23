/* va_mapper_internal.h: the VA mapper's state, shared by its files. Not installed.
 *   va_mapper.c        the actor: its requests, the jobs parked behind locks, establishing and
 *                      tearing down, accesses (and a lazy mapper's resolves), life cycle
 *   va_mapper_prot.c   VTL protections: VAM_PROTECT, the effective access every establish
 *                      gives a page, VAM_RANGES, the protection checks of locks
 *   va_mapper_locks.c  locks (any thread) and their watchdog (the actor's thread)
 *
 * A mapper is a PROT_NONE reservation in which guest address g is at base + g, plus the tree
 * of established ranges (each with the object it maps, its offset and its access), the tree
 * of held locks and the queue of requests parked behind them.
 *
 * Invariant: a range in the tree is mapped in the reservation. The actor, the only writer,
 * maps before it inserts (a replacement is one MAP_FIXED, with the old range in the tree
 * until the new one takes its place) and tears down with the PROT_NONE replacement and the
 * removal in one critical section of `lock`, so a refused replacement leaves both as they
 * were; faulting threads take `lock` to look a page up. So a faulting thread that finds its
 * page established lost a race with a change, and retrying is right; one that does not find
 * it has a real miss (eager: unmapped; lazy: ask the mapping manager, then retry).
 *
 * Locks. Invariant: a held lock covers established pages only, and none of them is torn down
 * or replaced while it is held. A locker checks and records under `lock`; the actor checks
 * for locks and unrecords (or replaces) under `lock` too, so one of them sees the other. A
 * request that finds a lock in its way is parked: it joins `jobs` (under `lock`, in the same
 * critical section as the check, so the unlock that frees it sees it queued and sends the
 * kick) and is kept unanswered. While `jobs` is not empty, every VAM_MAP and VAM_UNMAP joins
 * it behind, and so does a forwarded MM_RESOLVE that overlaps a queued request's range: the
 * actor's order of operations stays the arrival order (for every range: a resolve clear of
 * everything before it commutes with it, and runs or is retried on its own), and the actor
 * never blocks. A queued teardown `drains` its range: new locks there fail as unmapped, so
 * lockers cannot starve it.
 *
 * The kick and watch messages are allocated once per mapper: each is either home (in `kick`,
 * `watch`) or on its way, so an unlock never allocates and a wake-up is never lost (the actor
 * puts the kick back before it looks at the locks again).
 *
 * Ownership: every tree node holds its own object reference. VAM_MAP arrays stay the
 * sender's; a forwarded MM_RESOLVE's entry reference stays with the message (its requester
 * drops it). A lock belongs to its holder until mb_vam_unlock.
 */
#ifndef MB_VA_MAPPER_INTERNAL_H
#define MB_VA_MAPPER_INTERNAL_H

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include <uv.h>

#include "dirty_log.h"
#include "mb_errors.h"
#include "prot_map.h"
#include "range_tree.h"
#include "va_mapper.h"
#include "va_reserve.h"

/* Consecutive faults at one address that a retry should have cured: after this many
 * successful resolves, or this many faults on a page found established, the access fails. */
enum { VAM_MAX_RESOLVES = 2, VAM_MAX_RACES = 16 };

typedef struct vam_range {
  mb_rtree_node node; /* established guest range */
  mb_object *obj;     /* own reference */
  uint64_t obj_off;   /* object offset of node.start */
  bool writable;
} vam_range;

/* A request the actor keeps unanswered: parked behind a lock (the first one) or queued
 * behind a parked one. */
typedef struct vam_job {
  mb_msg *msg;
  uint64_t a, b;     /* the guest span it acts on (may be empty) */
  bool drains;       /* it tears down (or replaces) [a, b): new locks there fail */
  size_t at;         /* being retried: its index in jobs; else NOT_QUEUED (not stored) */
  int failed;        /* VAM_MAP: the error it answers once its undo is done (0: mapping) */
  uint32_t upto;     /* VAM_MAP: the failing entry; undo covers entries [0, upto] */
} vam_job;

struct mb_lock {
  mb_rtree_node node;    /* [gpa, gpa + size) in vam->locks */
  mb_vam *vam;
  bool writable;
  bool reported;         /* by the watchdog */
  uint64_t t_ns;         /* CLOCK_MONOTONIC when taken */
  struct timespec since; /* CLOCK_REALTIME when taken */
  mb_dirty_hold hold;    /* writable: registered with the manager's dirty log */
};

struct mb_vam {
  mb_va va;           /* size == max_addr */
  bool eager;
  mb_loop *loop;
  mb_actor *actor;    /* NULL once destroyed (by mb_vam_destroy or its loop stopping) */
  mb_addr addr, mm;
  _Atomic uint32_t lock; /* guards the trees, jobs and the fields below it (vam_lock) */
  mb_rtree ranges;
  mb_rtree locks;     /* held locks (they may overlap) */
  vam_job *jobs;      /* jobs[0] is parked; the others wait behind it, in arrival order */
  size_t njobs, capjobs;
  bool retired;       /* being removed: no new locks */
  mb_msg *kick, *watch; /* home while not on their way */
  bool watching;      /* the watchdog timer runs, or VAM_WATCH is on its way to start it */
  uint64_t watch_ms;
  mb_vam_log_fn log;
  void *log_ctx;
  uv_timer_t *timer;  /* the watchdog's: made with the mapper, so that starting it cannot
                       * fail; a libuv handle once timer_live (the actor's thread only) */
  bool timer_live;
  _Atomic uint64_t faults, resolved, unmapped, parked;
  vam_range *range_cache[8]; /* unlinked ranges kept for reuse (the actor's thread only) */
  unsigned nrange_cache;
  mb_dirty_log *dirty;  /* writes and writable locks are marked there (NULL: not tracked) */
  /* The protections this mapper enforces (VAM_PROTECT; empty for one that enforces none).
   * Invariant: the actor changes it, and the pages it covers, in one critical section of
   * `lock`, so a faulting thread or a locker (which read it under `lock`) finds every page
   * with exactly the access the map and its range give it; the actor reads it without. */
  mb_prot_map prot;
};

/* A job_run result: the request is parked (in jobs), not answered. */
enum { VAM_PARKED = 1 };
#define NOT_QUEUED SIZE_MAX

/* `lock`, a futex mutex (after Drepper, "Futexes Are Tricky"): 0 free, 1 held, 2 held
 * and maybe waited for. Invariant: a thread that sleeps on it has set it to 2 first, so the
 * unlock that finds 2 wakes one, which sets 2 again before it sleeps or takes it. Uncontended,
 * taking and releasing it is one atomic each, inline: the actor takes it on every change of
 * the trees, and lockers and faulting threads rarely meet it. */
void vam__lock_wait(mb_vam *v, uint32_t c); /* va_mapper.c: the contended cases */
void vam__lock_wake(mb_vam *v);

static inline void vam_lock(mb_vam *v) {
  uint32_t c = 0;
  if (!atomic_compare_exchange_strong_explicit(&v->lock, &c, 1, memory_order_acquire,
                                               memory_order_relaxed))
    vam__lock_wait(v, c);
}

static inline void vam_unlock(mb_vam *v) {
  if (atomic_exchange_explicit(&v->lock, 0, memory_order_release) == 2)
    vam__lock_wake(v);
}

static inline vam_range *range_of(mb_rtree_node *n) {
  return mb_rtree_entry(n, vam_range, node);
}

static inline bool overlaps(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  return a < d && c < b;
}

static inline int map_error(int rc) {
  return rc == -EINVAL ? MB_E_INVALID : rc;
}

/* [gpa, gpa + size) lies in the reservation (the same rule as mb_va_check). */
static inline bool in_va(const mb_vam *v, uint64_t gpa, uint64_t size) {
  return size != 0 && mb_page_aligned(gpa | size) && gpa <= v->va.size &&
         size <= v->va.size - gpa;
}

/* Maps object bytes at [start, end). Through mb_object_map_into, which knows each kind's fd
 * (MB_OBJECT_ANON's is internal) and refuses a writable mapping of a read-only object
 * (MB_E_READONLY) before anything changes. */
static inline int map_object(mb_vam *v, uint64_t start, uint64_t end, const mb_object *obj,
                             uint64_t obj_off, bool writable) {
  return mb_object_map_into(obj, &v->va, start, end - start, obj_off, writable);
}

/* Does protection p forbid an access (a write, or a read)? */
static inline bool prot_forbids(uint8_t p, bool write) {
  return p == MB_PROT_NONE || (write && p == MB_PROT_RO);
}

static inline void vam_count(_Atomic uint64_t *c) {
  atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* ---- va_mapper.c ---- */
int vam__host_refused(int rc); /* rc; names the first refusal at vm.max_map_count */
int vam__park(mb_vam *v, vam_job *job); /* `lock` held: VAM_PARKED, or MB_ENOMEM */
int vam__resolve(mb_vam *v, uint64_t page); /* a lazy mapper's blocking MM_RESOLVE */
int vam__resolve_failure(int rc); /* what a failed resolve means for an access or a lock */

/* ---- va_mapper_prot.c (the actor's thread, but vam__first_protected) ---- */
int vam__check_protect(const mb_vam *v, const vam_protect_msg *m);
/* Map object bytes at [start, end) (over old pages with `over`), or change the access of the
 * established [start, end), giving each page its effective access. */
int vam__map_prot(mb_vam *v, uint64_t start, uint64_t end, const mb_object *obj,
                  uint64_t obj_off, bool writable, bool over);
int vam__protect_prot(mb_vam *v, uint64_t start, uint64_t end, bool writable);
int vam__handle_protect(mb_vam *v, const vam_protect_msg *m, vam_job *job);
int vam__handle_ranges(mb_vam *v, vam_ranges_msg *m);
/* Any thread, `lock` held: the first page of [a, b) a lock of that access may not take. */
uint64_t vam__first_protected(const mb_vam *v, uint64_t a, uint64_t b, bool writable);
void vam__inspect_prot(const mb_vam *v, FILE *f);

/* ---- va_mapper_locks.c ---- */
void vam__lock_free(mb_lock *l); /* an unlinked lock */
void vam__on_watch(mb_vam *v, mb_msg *msg); /* VAM_WATCH */

#endif
