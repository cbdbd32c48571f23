/* va_mapper.c: the VA mapper actor, guest accesses through it, and locks (see va_mapper.h).
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
#include "va_mapper.h"

#include <uv.h>

#include "dirty_log.h"
#include "grow.h"
#include "json_out.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "mb_access.h"
#include "fault_inject.h" /* mb__malloc, mb__calloc: MB_FI_ALLOC; mb__sys_mprotect */
#include "mb_errors.h"
#include "prot_map.h"
#include "range_tree.h"
#include "va_reserve.h"

/* A VAM_RANGES reply carries a malloc'd array: freed if its requester is gone. */
static void vam_dispose(mb_msg *msg) {
  vam_ranges_msg *m = vam_ranges_of(msg);
  if (m) free(m->ranges);
}

MB_PROTOCOL_DEFINE_DISPOSE(vam, VAM_MESSAGES, vam_dispose);

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

static void lock_free(mb_lock *l);

/* A job_run result: the request is parked (in jobs), not answered. */
enum { VAM_PARKED = 1 };
#define NOT_QUEUED SIZE_MAX

/* `lock`, a futex mutex (after Drepper, "Futexes Are Tricky"): 0 free, 1 held, 2 held
 * and maybe waited for. Invariant: a thread that sleeps on it has set it to 2 first, so the
 * unlock that finds 2 wakes one, which sets 2 again before it sleeps or takes it. Uncontended,
 * taking and releasing it is one atomic each, inline: the actor takes it on every change of
 * the trees, and lockers and faulting threads rarely meet it. */
static long futex(_Atomic uint32_t *f, int op, uint32_t val) {
  return syscall(SYS_futex, (uint32_t *)f, op | FUTEX_PRIVATE_FLAG, val, NULL, NULL, 0);
}

__attribute__((noinline)) static void vam_lock_wait(mb_vam *v, uint32_t c) {
  if (c != 2)
    c = atomic_exchange_explicit(&v->lock, 2, memory_order_acquire);
  while (c != 0) {
    futex(&v->lock, FUTEX_WAIT, 2);
    c = atomic_exchange_explicit(&v->lock, 2, memory_order_acquire);
  }
}

static inline void vam_lock(mb_vam *v) {
  uint32_t c = 0;
  if (!atomic_compare_exchange_strong_explicit(&v->lock, &c, 1, memory_order_acquire,
                                               memory_order_relaxed))
    vam_lock_wait(v, c);
}

static void vam_unlock(mb_vam *v) {
  if (atomic_exchange_explicit(&v->lock, 0, memory_order_release) == 2)
    futex(&v->lock, FUTEX_WAKE, 1);
}

static vam_range *range_of(mb_rtree_node *n) {
  return mb_rtree_entry(n, vam_range, node);
}

static void range_free(vam_range *r) {
  mb_object_unref(r->obj);
  free(r);
}

/* A range from the cache, or a new one (the actor's thread). */
static vam_range *range_get(mb_vam *v) {
  return v->nrange_cache > 0 ? v->range_cache[--v->nrange_cache]
                             : mb__malloc(sizeof(vam_range));
}

/* Gives back an unlinked range holding no reference (NULL: nothing). */
static void range_put(mb_vam *v, vam_range *r) {
  if (r == NULL)
    return;
  if (v->nrange_cache < sizeof v->range_cache / sizeof v->range_cache[0])
    v->range_cache[v->nrange_cache++] = r;
  else
    free(r);
}

static int map_error(int rc) {
  return rc == -EINVAL ? MB_E_INVALID : rc;
}

/* A negative errno: the host refused (the runtime's codes start at -1001, mb_errors.h's at
 * -2001). */
static bool is_errno(int rc) {
  return rc < 0 && rc > -1000;
}

/* ---- the mapping limit ----------------------------------------------------------------------- */

/* Within this many mappings of vm.max_map_count, an ENOMEM is taken for the limit (a split
 * needs two more; other threads map and unmap meanwhile). */
enum { VAM_MAP_SLACK = 8 };

/* The process's memory mappings (lines of /proc/self/maps), or -1. No allocation: the
 * process may be out of mappings for the heap too. */
static long map_count(void) {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  char buf[16384];
  long n = 0;
  ssize_t k;
  while ((k = read(fd, buf, sizeof buf)) > 0)
    for (ssize_t i = 0; i < k; i++)
      n += buf[i] == '\n';
  close(fd);
  return k < 0 ? -1 : n;
}

/* vm.max_map_count, or -1 (no allocation either). */
static long max_map_count(void) {
  char buf[32] = "";
  int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
  ssize_t k = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
  if (fd >= 0)
    close(fd);
  return k > 0 ? strtol(buf, NULL, 10) : -1;
}

/* A map or teardown the host refused: rc. The code alone (-ENOMEM) cannot tell an operator
 * which limit was hit, so the first refusal of the process that comes with its mappings at
 * vm.max_map_count is named on stderr, with the count and what to raise (see membacking.h). */
static int host_refused(int rc) {
  static atomic_bool named;
  if (rc != -ENOMEM || atomic_load_explicit(&named, memory_order_relaxed))
    return rc;
  long max = max_map_count(), n = max > 0 ? map_count() : -1;
  if (n >= 0 && n + VAM_MAP_SLACK >= max && !atomic_exchange(&named, true))
    fprintf(stderr,
            "membacking: mmap refused (ENOMEM): the process has %ld memory mappings, "
            "vm.max_map_count is %ld; raise it (sysctl vm.max_map_count) or use fewer, larger "
            "mappings\n",
            n, max);
  return rc;
}

/* ---- jobs: requests kept behind locks (the actor's thread; `lock` held) ---------------------- */

static bool overlaps(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  return a < d && c < b;
}

static bool locked(const mb_vam *v, uint64_t a, uint64_t b) {
  return mb_rtree_first_overlap(&v->locks, a, b) != NULL;
}

/* Does a held lock need what a change of [a, b) takes? A new backing (or none) takes every
 * lock's; an access that drops to read-only takes a writable lock's; a rise takes nothing. */
static bool lock_needs(const mb_vam *v, uint64_t a, uint64_t b, bool moves, bool drops) {
  mb_rtree_node *n;
  mb_rtree_for_each_overlap(n, &v->locks, a, b) {
    if (moves || (drops && mb_rtree_entry(n, mb_lock, node)->writable))
      return true;
  }
  return false;
}

/* Would protections `it` take what a lock over [a, b) needs? Read for any lock (an item
 * going `none`), write for a writable one (an item going `ro`). */
static bool items_take(const mb_prot_item *it, uint32_t n, uint64_t a, uint64_t b,
                       bool writable) {
  for (uint32_t i = 0; i < n; i++)
    if (overlaps(a, b, it[i].gpa, it[i].gpa + it[i].size) &&
        (it[i].access == MB_PROT_NONE || (writable && it[i].access == MB_PROT_RO)))
      return true;
  return false;
}

/* Does a held lock need what protections `it` take (`lock` held)? */
static bool protect_needs_locks(const mb_vam *v, const mb_prot_item *it, uint32_t n) {
  mb_rtree_node *l;
  mb_rtree_for_each_overlap(l, &v->locks, it[0].gpa, it[n - 1].gpa + it[n - 1].size) {
    if (items_take(it, n, l->start, l->end, mb_rtree_entry(l, mb_lock, node)->writable))
      return true;
  }
  return false;
}

static bool is_resolve(const mb_msg *msg) {
  return msg->proto == &mm_protocol;
}

/* [gpa, gpa + size) lies in the reservation (the same rule as mb_va_check). */
static bool in_va(const mb_vam *v, uint64_t gpa, uint64_t size) {
  return size != 0 && mb_page_aligned(gpa | size) && gpa <= v->va.size &&
         size <= v->va.size - gpa;
}

static int check_unmap(const vam_unmap_msg *m) {
  if (m->size == 0 || !mb_page_aligned(m->gpa | m->size) || m->size > UINT64_MAX - m->gpa)
    return MB_E_INVALID;
  return 0;
}

/* A VAM_PROTECT's items: ascending, touching, each a protection, together in the VA. */
static int check_protect(const mb_vam *v, const vam_protect_msg *m) {
  if (m->count == 0 || m->items == NULL)
    return MB_E_INVALID;
  uint64_t at = m->items[0].gpa;
  for (uint32_t i = 0; i < m->count; i++) {
    const mb_prot_item *it = &m->items[i];
    if (it->gpa != at || it->access > MB_PROT_RW || !in_va(v, it->gpa, it->size))
      return MB_E_INVALID;
    at += it->size;
  }
  return 0;
}

/* A VAM_REPLACE's range is in the VA, and its entries ascending inside it. */
static int check_replace(const mb_vam *v, const vam_replace_msg *m) {
  if (!in_va(v, m->gpa, m->size) || (m->count > 0 && m->entries == NULL))
    return MB_E_INVALID;
  uint64_t at = m->gpa, end = m->gpa + m->size;
  for (uint32_t i = 0; i < m->count; i++) {
    const mb_map_entry *e = &m->entries[i];
    if (e->gpa < at || e->size == 0 || e->size > end - e->gpa)
      return MB_E_INVALID;
    at = e->gpa + e->size;
  }
  return 0;
}

/* Sets the guest span a job acts on (it may be empty), and whether it drains it. Only a job
 * that is queued, or compared with queued ones, needs it. */
static void job_span(const mb_vam *v, vam_job *job) {
  mb_msg *msg = job->msg;
  job->a = job->b = 0;
  if (is_resolve(msg)) {
    const mm_resolve_msg *res = mm_resolve_of(msg);
    if (res->found && res->entry.size <= UINT64_MAX - res->entry.gpa) {
      job->a = res->entry.gpa;
      job->b = res->entry.gpa + res->entry.size;
    }
  } else if (msg->kind == VAM_UNMAP) {
    const vam_unmap_msg *u = vam_unmap_of(msg);
    job->drains = true;
    if (check_unmap(u) == 0 && u->gpa < v->va.size) {
      job->a = u->gpa;
      job->b = u->size < v->va.size - u->gpa ? u->gpa + u->size : v->va.size;
    }
  } else if (msg->kind == VAM_REPLACE) {
    const vam_replace_msg *r = vam_replace_of(msg);
    job->drains = true;
    if (check_replace(v, r) == 0) {
      job->a = r->gpa;
      job->b = r->gpa + r->size;
    }
  } else if (msg->kind == VAM_PROTECT) {
    const vam_protect_msg *p = vam_protect_of(msg);
    if (check_protect(v, p) == 0) {
      job->a = p->items[0].gpa;
      job->b = p->items[p->count - 1].gpa + p->items[p->count - 1].size;
    }
  } else {
    const vam_map_msg *m = vam_map_of(msg);
    for (uint32_t i = 0; m->entries != NULL && i < m->count; i++) {
      const mb_map_entry *e = &m->entries[i];
      uint64_t end = e->size <= UINT64_MAX - e->gpa ? e->gpa + e->size : UINT64_MAX;
      if (job->a == job->b || e->gpa < job->a)
        job->a = e->gpa;
      if (end > job->b)
        job->b = end;
    }
  }
}

/* Queues `job` (its span set) at the back: VAM_PARKED, or MB_ENOMEM. */
static int enqueue(mb_vam *v, const vam_job *job) {
  vam_job *j = mb__grow(v->jobs, &v->capjobs, v->njobs, sizeof *j, 4);
  if (j == NULL)
    return MB_ENOMEM;
  v->jobs = j;
  v->jobs[v->njobs] = *job;
  v->jobs[v->njobs++].at = NOT_QUEUED;
  return VAM_PARKED;
}

/* Parks `job` (a lock is in its way), draining its span (a protection change drains nothing:
 * lock_check asks its items instead): it joins the queue (whose head it is, unless it is a
 * resolve that passed the queue), or stays where it was when it was retried from there. */
static int park(mb_vam *v, vam_job *job) {
  bool drains = job->msg->proto != &vam_protocol || job->msg->kind != VAM_PROTECT;
  if (job->at == NOT_QUEUED) {
    job_span(v, job);
    job->drains = drains;
    atomic_fetch_add_explicit(&v->parked, 1, memory_order_relaxed);
    return enqueue(v, job);
  }
  job->drains = drains;
  size_t at = job->at;
  v->jobs[at] = *job;
  v->jobs[at].at = NOT_QUEUED;
  return VAM_PARKED;
}

/* ---- establishing and tearing down (the actor's thread) -------------------------------------- */

/* Unrecords every established byte of [a, b) (the caller holds `lock`), from `it`, the first
 * range overlapping it, splitting ranges that straddle an edge; one straddling both takes
 * *spare (set to NULL then). Ranges never overlap, so the walk ends at the first one that
 * reaches b. */
static void unrecord(mb_vam *v, mb_rtree_node *it, uint64_t a, uint64_t b, vam_range **spare) {
  while (it != NULL) {
    vam_range *r = range_of(it);
    uint64_t start = it->start, end = it->end;
    mb_rtree_node *next = end < b ? mb_rtree_next_overlap(it, a, b) : NULL;
    mb_rtree_remove(&v->ranges, it);
    if (start < a && end > b) {
      vam_range *s = *spare;
      *spare = NULL;
      *s = (vam_range){.obj = mb_object_ref(r->obj), .obj_off = r->obj_off + (b - start),
                       .writable = r->writable};
      mb_rtree_insert(&v->ranges, &s->node, b, end);
    }
    if (start < a) {
      mb_rtree_insert(&v->ranges, &r->node, start, a);
    } else if (end > b) {
      r->obj_off += b - start;
      mb_rtree_insert(&v->ranges, &r->node, b, end);
    } else {
      mb_object_unref(r->obj);
      range_put(v, r);
    }
    it = next;
  }
}

/* From the first to the last established byte of [a, b), `it` the first range overlapping
 * it (ranges never overlap: the last is the one before the first that starts at b or later). */
static mb_range established_span(const mb_vam *v, mb_rtree_node *it, uint64_t a, uint64_t b) {
  mb_rtree_node *past = mb_rtree_lower_bound(&v->ranges, b);
  mb_rtree_node *last = past != NULL ? mb_rtree_prev(past) : mb_rtree_last(&v->ranges);
  return (mb_range){it->start > a ? it->start : a, last->end < b ? last->end : b};
}

/* Maps object bytes at [start, end). Through mb_object_map_into, which knows each kind's fd
 * (MB_OBJECT_ANON's is internal) and refuses a writable mapping of a read-only object
 * (MB_E_READONLY) before anything changes. */
static int map_object(mb_vam *v, uint64_t start, uint64_t end, const mb_object *obj,
                      uint64_t obj_off, bool writable) {
  return mb_object_map_into(obj, &v->va, start, end - start, obj_off, writable);
}

/* ---- protections: the effective access of established pages ---------------------------------
 *
 * An established page has the least of its range's access and its protection: `none` pages
 * are PROT_NONE (the reservation or a PROT_NONE mapping of their bytes: accesses cannot tell),
 * `ro` ones read-only. Every map gives each page its final access at once, so no access ever
 * passes a protection, not even for an instant. */

static uint8_t eff_access(bool writable, uint8_t prot) {
  uint8_t m = writable ? MB_PROT_RW : MB_PROT_RO;
  return prot < m ? prot : m;
}

/* The protection at x, and in *end the end of its run, at most `limit`. */
static uint8_t prot_run(const mb_vam *v, uint64_t x, uint64_t limit, uint64_t *end) {
  uint8_t p = mb_prot_at(&v->prot, x, end);
  if (*end > limit)
    *end = limit;
  return p;
}

static bool unprotected(const mb_vam *v, uint64_t a, uint64_t b) {
  return mb_prot_first(&v->prot, a, b) == NULL;
}

/* Maps object bytes at [start, end) (over old pages with `over`) run by run of protection,
 * each with its effective access: `none` runs get the reservation. On failure what it mapped
 * is torn down again (best effort) and the failing run is PROT_NONE. */
static int map_prot(mb_vam *v, uint64_t start, uint64_t end, const mb_object *obj,
                    uint64_t obj_off, bool writable, bool over) {
  if (unprotected(v, start, end))
    return map_object(v, start, end, obj, obj_off, writable);
  uint64_t x = start, y;
  for (; x < end; x = y) {
    uint8_t e = eff_access(writable, prot_run(v, x, end, &y));
    int rc = e != MB_PROT_NONE ? map_object(v, x, y, obj, obj_off + (x - start),
                                            e == MB_PROT_RW)
             : over ? mb_va_unmap(&v->va, x, y - x) : 0;
    if (rc != 0) {
      if (x > start)
        mb_va_unmap(&v->va, start, x - start);
      return rc;
    }
  }
  return 0;
}

/* Changes the access of established [start, end) (same bytes) to `writable`, run by run of
 * protection: `none` runs stay PROT_NONE. */
static int protect_prot(mb_vam *v, uint64_t start, uint64_t end, bool writable) {
  if (unprotected(v, start, end))
    return mb_va_protect(&v->va, start, end - start, writable);
  uint64_t x = start, y;
  for (; x < end; x = y) {
    uint8_t e = eff_access(writable, prot_run(v, x, end, &y));
    int rc = e == MB_PROT_NONE ? 0 : mb_va_protect(&v->va, x, y - x, e == MB_PROT_RW);
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* Maps object bytes into [start, end), where nothing is established (so no lock is there
 * either), outside `lock`, then records them. */
static int map_gap(mb_vam *v, uint64_t start, uint64_t end, mb_object *obj, uint64_t obj_off,
                   bool writable) {
  vam_range *r = range_get(v);
  if (r == NULL)
    return MB_ENOMEM;
  int rc = map_prot(v, start, end, obj, obj_off, writable, false);
  if (rc != 0) { /* the range is PROT_NONE, and nothing was recorded there */
    range_put(v, r);
    return host_refused(map_error(rc));
  }
  r->obj = mb_object_ref(obj);
  r->obj_off = obj_off;
  r->writable = writable;
  vam_lock(v);
  mb_rtree_insert(&v->ranges, &r->node, start, end);
  vam_unlock(v);
  return 0;
}

/* Replaces what is established at [start, end) by object bytes, in one MAP_FIXED (no hole
 * for a concurrent reader), then records them. After a failed map the range is torn down
 * and unrecorded (a lazy mapper faults it in again), unless the kernel refuses that too: the
 * old pages are then still mapped, and stay recorded. When only the access changes (`same`:
 * the same object bytes are established there) it is one mprotect instead, which keeps the
 * pages (private memory's contents too) and locks that need no more than the new access. It
 * checks for locks and maps under `lock`, so no lock can be taken on the old pages in
 * between. With a lock in the way: parked (job). */
/* map_replace of exactly one established range: the range is changed in place (the tree
 * keeps its shape; a DAX chunk's replace). */
static int replace_exact(mb_vam *v, vam_range *r, mb_object *obj, uint64_t obj_off,
                         bool writable, bool same, vam_job *job) {
  uint64_t start = r->node.start, end = r->node.end;
  vam_range *none = NULL;
  int rc;
  vam_lock(v);
  if (lock_needs(v, start, end, !same, !writable)) {
    rc = park(v, job);
  } else {
    rc = same ? protect_prot(v, start, end, writable)
              : map_prot(v, start, end, obj, obj_off, writable, true);
    if (rc == 0) {
      mb_object_unref(r->obj);
      r->obj = mb_object_ref(obj), r->obj_off = obj_off, r->writable = writable;
    } else if (!same && mb_va_unmap(&v->va, start, end - start) == 0) {
      unrecord(v, &r->node, start, end, &none);
    }
  }
  vam_unlock(v);
  return host_refused(map_error(rc));
}

static int map_replace(mb_vam *v, uint64_t start, uint64_t end, mb_object *obj,
                       uint64_t obj_off, bool writable, bool same, vam_job *job) {
  /* A spare only when one established range straddles both edges (then it is the only one
   * overlapping); only this thread changes the tree, so the check holds until unrecord. */
  mb_rtree_node *it = mb_rtree_first_overlap(&v->ranges, start, end);
  if (it->start == start && it->end == end)
    return replace_exact(v, range_of(it), obj, obj_off, writable, same, job);
  bool straddles = it->start < start && it->end > end;
  vam_range *r = range_get(v), *spare = straddles ? range_get(v) : NULL;
  if (r == NULL || (straddles && spare == NULL)) {
    range_put(v, r);
    range_put(v, spare);
    return MB_ENOMEM;
  }
  int rc;
  vam_lock(v);
  if (lock_needs(v, start, end, !same, !writable)) {
    rc = park(v, job);
    vam_unlock(v);
    range_put(v, r);
    range_put(v, spare);
    return rc;
  }
  rc = same ? protect_prot(v, start, end, writable)
            : map_prot(v, start, end, obj, obj_off, writable, true);
  if (rc == 0 || (!same && mb_va_unmap(&v->va, start, end - start) == 0))
    unrecord(v, it, start, end, &spare);
  if (rc == 0) {
    *r = (vam_range){.obj = mb_object_ref(obj), .obj_off = obj_off, .writable = writable};
    mb_rtree_insert(&v->ranges, &r->node, start, end);
    r = NULL;
  }
  vam_unlock(v);
  range_put(v, r);
  range_put(v, spare);
  return host_refused(map_error(rc));
}

/* Tears down every established byte of [a, b): made PROT_NONE with one call over the span
 * (what lies between established pieces is PROT_NONE already), then unrecorded, under `lock`
 * (a faulting thread waits the call out). A refused call leaves the ranges recorded and
 * mapped: the kernel checks the mapping count before it changes anything (a refusal that
 * left a hole, on an old kernel out of memory midway, shows as MB_E_FAULT, never as wrong
 * data). With a lock in the way nothing changes: parked (job). */
static int teardown(mb_vam *v, uint64_t a, uint64_t b, vam_job *job) {
  mb_rtree_node *it = mb_rtree_first_overlap(&v->ranges, a, b);
  if (it == NULL)
    return 0;
  vam_range *spare = NULL;
  if (it->start < a && it->end > b && (spare = range_get(v)) == NULL)
    return MB_ENOMEM;
  mb_range span = established_span(v, it, a, b);
  int rc;
  vam_lock(v);
  if (locked(v, a, b))
    rc = park(v, job);
  else if ((rc = mb_va_unmap(&v->va, span.start, span.end - span.start)) == 0)
    unrecord(v, it, a, b, &spare);
  vam_unlock(v);
  range_put(v, spare);
  return host_refused(map_error(rc));
}

/* Are these object bytes established at `at` in r (whatever the access)? */
static bool same_place(const vam_range *r, uint64_t at, const mb_object *obj, uint64_t obj_off) {
  return r->obj == obj && r->obj_off + (at - r->node.start) == obj_off;
}

/* Makes [s, t), inside the established range `it`, show obj[off, ...) with that access. */
static int change_piece(mb_vam *v, mb_rtree_node *it, uint64_t s, uint64_t t, mb_object *obj,
                        uint64_t off, bool writable, vam_job *job) {
  const vam_range *r = range_of(it);
  bool same = same_place(r, s, obj, off);
  if (same && r->writable == writable)
    return 0;
  return map_replace(v, s, t, obj, off, writable, same, job);
}

/* Establishes obj[obj_off, +size) at gpa. Pieces already established with the same backing
 * stay as they are (re-mapping private anonymous memory would lose its contents); pieces
 * with another backing are replaced. Idempotent, so a parked request simply runs again. */
static int establish(mb_vam *v, const mb_map_entry *e, vam_job *job) {
  if (e->obj == NULL || !in_va(v, e->gpa, e->size) ||
      mb_object_check_range(e->obj, e->obj_off, e->size) != 0)
    return MB_E_INVALID;
  uint64_t cur = e->gpa, end = e->gpa + e->size;
  while (cur < end) {
    mb_rtree_node *it = mb_rtree_first_overlap(&v->ranges, cur, end);
    uint64_t off = e->obj_off + (cur - e->gpa);
    uint64_t stop = it == NULL ? end : it->start > cur ? it->start : cur;
    int rc = 0;
    if (stop > cur) { /* a gap */
      rc = map_gap(v, cur, stop, e->obj, off, e->writable);
    } else {
      stop = it->end < end ? it->end : end;
      rc = change_piece(v, it, cur, stop, e->obj, off, e->writable, job);
    }
    if (rc != 0)
      return rc;
    cur = stop;
  }
  return 0;
}

/* ---- the actor's requests -------------------------------------------------------------------- */

/* On failure the batch is undone: every entry up to the failing one is torn down (an eager
 * mapper never gets a batch over what it holds, so that is exactly what the batch added). A
 * lock taken meanwhile on what the batch established parks the undo, which resumes where
 * it was (job->failed, job->upto) and answers the error once done. */
static int handle_map(mb_vam *v, const vam_map_msg *m, vam_job *job) {
  if (m->count > 0 && m->entries == NULL)
    return MB_E_INVALID;
  for (uint32_t i = 0; job->failed == 0 && i < m->count; i++) {
    int rc = establish(v, &m->entries[i], job);
    if (rc == VAM_PARKED)
      return rc;
    if (rc != 0) {
      job->failed = rc;
      job->upto = i;
    }
  }
  if (job->failed == 0)
    return 0;
  for (uint32_t j = 0; j <= job->upto; j++) {
    const mb_map_entry *e = &m->entries[j];
    if (in_va(v, e->gpa, e->size) && teardown(v, e->gpa, e->gpa + e->size, job) == VAM_PARKED)
      return VAM_PARKED;
  }
  return job->failed;
}

/* A lazy mapper's part of a replace: what it established of the entry's range takes the
 * entry's backing (one MAP_FIXED per established piece whose backing differs). */
static int refresh(mb_vam *v, const mb_map_entry *e, vam_job *job) {
  if (e->obj == NULL || !in_va(v, e->gpa, e->size) ||
      mb_object_check_range(e->obj, e->obj_off, e->size) != 0)
    return MB_E_INVALID;
  uint64_t cur = e->gpa, end = e->gpa + e->size;
  mb_rtree_node *it;
  while (cur < end && (it = mb_rtree_first_overlap(&v->ranges, cur, end)) != NULL) {
    uint64_t s = it->start > cur ? it->start : cur, t = it->end < end ? it->end : end;
    int rc = change_piece(v, it, s, t, e->obj, e->obj_off + (s - e->gpa), e->writable, job);
    if (rc != 0)
      return rc;
    cur = t;
  }
  return 0;
}

/* Would the replace take what a held lock needs on some page (`lock` held)? Each
 * established piece of the range against the entry over it (or none). */
static bool replace_needs_locks(const mb_vam *v, const vam_replace_msg *m) {
  uint64_t a = m->gpa, b = m->gpa + m->size;
  uint32_t i = 0;
  mb_rtree_node *it;
  mb_rtree_for_each_overlap(it, &v->ranges, a, b) {
    const vam_range *r = range_of(it);
    uint64_t cur = it->start > a ? it->start : a, end = it->end < b ? it->end : b;
    while (cur < end) {
      while (i < m->count && m->entries[i].gpa + m->entries[i].size <= cur)
        i++;
      const mb_map_entry *e = i < m->count && m->entries[i].gpa <= cur ? &m->entries[i] : NULL;
      uint64_t stop = !e ? (i < m->count && m->entries[i].gpa < end ? m->entries[i].gpa : end)
                         : (e->gpa + e->size < end ? e->gpa + e->size : end);
      bool moves = !e || !same_place(r, cur, e->obj, e->obj_off + (cur - e->gpa));
      if (lock_needs(v, cur, stop, moves, e && r->writable && !e->writable))
        return true;
      cur = stop;
    }
  }
  return false;
}

/* VAM_REPLACE (va_mapper.h): the gaps between the entries are torn down, the entries
 * established over what is there (eager) or over what is established (lazy). Idempotent, so
 * a parked request simply runs again. */
static int handle_replace(mb_vam *v, const vam_replace_msg *m, vam_job *job) {
  int rc = check_replace(v, m);
  if (rc != 0)
    return rc;
  vam_lock(v);
  bool held = replace_needs_locks(v, m);
  if (held)
    rc = park(v, job);
  vam_unlock(v);
  uint64_t cur = m->gpa;
  for (uint32_t i = 0; !held && rc == 0 && i <= m->count; i++) {
    const mb_map_entry *e = i < m->count ? &m->entries[i] : NULL;
    uint64_t next = e ? e->gpa : m->gpa + m->size;
    if (next > cur)
      rc = teardown(v, cur, next, job);
    if (rc == 0 && e != NULL)
      rc = v->eager ? establish(v, e, job) : refresh(v, e, job);
    cur = e ? e->gpa + e->size : next;
  }
  return rc;
}

/* One established piece [x, y) of r going from protection po to pn: a drop is one mprotect
 * (nothing unmapped), a rise from `none` maps the bytes again (the piece may be the
 * reservation), another rise is one mprotect. */
static int prot_change(mb_vam *v, const vam_range *r, uint64_t x, uint64_t y, uint8_t po,
                       uint8_t pn) {
  uint8_t eo = eff_access(r->writable, po), en = eff_access(r->writable, pn);
  if (en == eo)
    return 0;
  if (en == MB_PROT_NONE)
    return mb__sys_mprotect(v->va.base + x, y - x, PROT_NONE) == 0 ? 0 : -errno;
  if (eo == MB_PROT_NONE)
    return map_object(v, x, y, r->obj, r->obj_off + (x - r->node.start), en == MB_PROT_RW);
  return mb_va_protect(&v->va, x, y - x, en == MB_PROT_RW);
}

/* The established pages of the range that `from` and `to` cover (both complete covers of it,
 * ascending) go from the protections `from` to `to`. */
static int prot_apply(mb_vam *v, const mb_prot_item *from, uint32_t nf, const mb_prot_item *to,
                      uint32_t nt) {
  uint64_t a = to[0].gpa, b = to[nt - 1].gpa + to[nt - 1].size;
  uint32_t i = 0, j = 0;
  mb_rtree_node *it;
  mb_rtree_for_each_overlap(it, &v->ranges, a, b) {
    uint64_t x = it->start > a ? it->start : a, end = it->end < b ? it->end : b;
    while (x < end) {
      while (i + 1 < nf && from[i].gpa + from[i].size <= x)
        i++;
      while (j + 1 < nt && to[j].gpa + to[j].size <= x)
        j++;
      uint64_t y = from[i].gpa + from[i].size < end ? from[i].gpa + from[i].size : end;
      if (to[j].gpa + to[j].size < y)
        y = to[j].gpa + to[j].size;
      int rc = prot_change(v, range_of(it), x, y, from[i].access, to[j].access);
      if (rc != 0)
        return host_refused(map_error(rc));
      x = y;
    }
  }
  return 0;
}

/* VAM_PROTECT (va_mapper.h): all or nothing. The pages change in place and the map after
 * them, in one critical section (see `prot`); on a failure the pages go back (best effort)
 * and the map stays as it was. A held lock that needs what it takes parks it first. */
static int handle_protect(mb_vam *v, const vam_protect_msg *m, vam_job *job) {
  int rc = check_protect(v, m);
  if (rc != 0)
    return rc;
  uint64_t a = m->items[0].gpa, b = m->items[m->count - 1].gpa + m->items[m->count - 1].size;
  mb_prot_item *old = NULL;
  size_t nold = 0;
  if ((rc = mb_prot_items(&v->prot, a, b - a, &old, &nold)) != 0)
    return rc;
  vam_lock(v);
  if (protect_needs_locks(v, m->items, m->count)) {
    rc = park(v, job);
  } else {
    rc = prot_apply(v, old, (uint32_t)nold, m->items, m->count);
    if (rc == 0)
      rc = mb_prot_set_items(&v->prot, m->items, m->count);
    if (rc != 0)
      prot_apply(v, m->items, m->count, old, (uint32_t)nold);
  }
  vam_unlock(v);
  free(old);
  return rc;
}

static int handle_unmap(mb_vam *v, const vam_unmap_msg *m, vam_job *job) {
  int rc = check_unmap(m);
  if (rc != 0 || m->gpa >= v->va.size)
    return rc;
  uint64_t end = m->gpa + m->size;
  return teardown(v, m->gpa, end < v->va.size ? end : v->va.size, job);
}

/* Appends [a, b) with access w to out[0..*k), merged with the last one when they touch with
 * equal access (room is there). */
static void ranges_put(mb_part_range *out, uint32_t *k, uint64_t a, uint64_t b, bool w) {
  if (*k > 0 && out[*k - 1].gpa + out[*k - 1].size == a && out[*k - 1].writable == w)
    out[*k - 1].size += b - a;
  else
    out[(*k)++] = (mb_part_range){a, b - a, w};
}

/* Established ranges with their effective access (`none` pages left out), adjacent ones with
 * equal access merged. Each stored protection splits at most one range into three more. */
static int handle_ranges(mb_vam *v, vam_ranges_msg *m) {
  m->ranges = NULL;
  m->count = 0;
  size_t n = mb_rtree_count(&v->ranges);
  if (n == 0)
    return 0;
  n += 3 * mb_prot_count(&v->prot);
  mb_part_range *out = mb__malloc(n * sizeof *out);
  if (out == NULL)
    return MB_ENOMEM;
  uint32_t k = 0;
  mb_rtree_node *it;
  mb_rtree_for_each(it, &v->ranges) {
    bool w = range_of(it)->writable;
    for (uint64_t x = it->start, y; x < it->end; x = y) {
      uint8_t e = eff_access(w, prot_run(v, x, it->end, &y));
      if (e != MB_PROT_NONE)
        ranges_put(out, &k, x, y, e == MB_PROT_RW);
    }
  }
  m->ranges = out;
  m->count = k;
  return 0;
}

/* Introspection, on the mapper's thread: its established ranges and held locks, as JSON
 * members. */
void mb__vam_inspect(mb_vam *v, FILE *f) {
  vam_ranges_msg r = {0};
  bool first = true;
  fputs("\"established\":[", f);
  if (handle_ranges(v, &r) == 0)
    for (uint32_t i = 0; i < r.count; i++) {
      mb__json_sep(f, &first);
      fprintf(f, "{\"gpa\":%" PRIu64 ",\"size\":%" PRIu64 ",\"access\":\"%s\"}", r.ranges[i].gpa,
              r.ranges[i].size, r.ranges[i].writable ? "rw" : "ro");
    }
  free(r.ranges);
  mb_vam_lock_info *l = NULL;
  size_t n = 0, waiting = 0;
  first = true;
  fputs("],\"locks\":[", f);
  if (mb_vam_locks(v, &l, &n, &waiting) == 0)
    for (size_t i = 0; i < n; i++) {
      mb__json_sep(f, &first);
      fprintf(f, "{\"gpa\":%" PRIu64 ",\"size\":%" PRIu64 ",\"access\":\"%s\",\"held_ms\":%" PRIu64
                 ",\"overdue\":%s,\"since\":%lld.%03ld}",
              l[i].gpa, l[i].size, l[i].writable ? "rw" : "ro", l[i].held_ns / 1000000,
              l[i].overdue ? "true" : "false", (long long)l[i].since.tv_sec,
              l[i].since.tv_nsec / 1000000);
    }
  free(l);
  fprintf(f, "],\"waiting_behind_locks\":%zu,\"protections\":[", waiting);
  first = true;
  for (const mb_prot_range *p = mb_prot_first(&v->prot, 0, UINT64_MAX); p != NULL;
       p = mb_prot_next(p, 0, UINT64_MAX)) {
    mb__json_sep(f, &first);
    fprintf(f, "{\"gpa\":%" PRIu64 ",\"size\":%" PRIu64 ",\"access\":\"%s\"}", p->node.start,
            p->node.end - p->node.start, p->access == MB_PROT_NONE ? "none" : "ro");
  }
  fputs("]", f);
}

/* Runs a job: its answer, or VAM_PARKED. */
static int job_run(mb_vam *v, vam_job *job) {
  mb_msg *msg = job->msg;
  if (is_resolve(msg)) {
    mm_resolve_msg *res = mm_resolve_of(msg);
    return res->found ? establish(v, &res->entry, job) : MB_E_UNMAPPED;
  }
  if (msg->kind == VAM_MAP)
    return handle_map(v, vam_map_of(msg), job);
  if (msg->kind == VAM_REPLACE)
    return handle_replace(v, vam_replace_of(msg), job);
  if (msg->kind == VAM_PROTECT)
    return handle_protect(v, vam_protect_of(msg), job);
  return handle_unmap(v, vam_unmap_of(msg), job);
}

/* Must this job wait behind the first `n` queued ones (its span set)? Everything that
 * changes the mapper does, except a resolve clear of all their ranges (a lazy fault
 * elsewhere need not wait for a lock it has nothing to do with). */
static bool must_wait(const mb_vam *v, const vam_job *job, size_t n) {
  if (n == 0)
    return false;
  if (!is_resolve(job->msg) || job->a == job->b)
    return true;
  for (size_t i = 0; i < n; i++)
    if (overlaps(job->a, job->b, v->jobs[i].a, v->jobs[i].b))
      return true;
  return false;
}

/* Takes up the queue: the head until it parks again, and each job that need not wait for
 * those before it (a resolve clear of them). */
static void run_jobs(mb_vam *v) {
  size_t i = 0;
  while (i < v->njobs && v->actor != NULL) {
    vam_job job = v->jobs[i];
    if (must_wait(v, &job, i)) {
      i++;
      continue;
    }
    job.at = i;
    int rc = job_run(v, &job);
    if (rc == VAM_PARKED) {
      i++;
      continue;
    }
    vam_lock(v);
    memmove(&v->jobs[i], &v->jobs[i + 1], (--v->njobs - i) * sizeof *v->jobs);
    vam_unlock(v);
    mb_reply(job.msg, rc);
  }
}

/* VAM_KICK: the kick goes home first, then the queue is looked at again (an unlock from now
 * on sends it anew, one before has been seen). */
static void on_kick(mb_vam *v, mb_msg *msg) {
  mb_msg_keep(msg);
  vam_lock(v);
  v->kick = msg;
  vam_unlock(v);
  run_jobs(v);
}

static void on_watch(mb_vam *v, mb_msg *msg);

/* Is this request a job (VAM_MAP, VAM_UNMAP, a forwarded MM_RESOLVE)? */
static bool is_job(const mb_msg *msg) {
  if (msg->proto == &vam_protocol)
    return msg->kind == VAM_MAP || msg->kind == VAM_UNMAP || msg->kind == VAM_REPLACE ||
           msg->kind == VAM_PROTECT;
  return msg->proto == &mm_protocol && msg->kind == MM_RESOLVE;
}

/* A job's end in its handler: answered, or kept while parked. */
static void job_done(mb_msg *msg, int rc) {
  if (rc == VAM_PARKED)
    mb_msg_keep(msg);
  else
    mb_reply(msg, rc);
}

/* Every message (vam_handle takes the common case itself). */
__attribute__((noinline)) static void vam_handle_any(mb_vam *v, mb_msg *msg) {
  if (msg->proto == &vam_protocol && msg->kind == VAM_KICK) {
    on_kick(v, msg);
    return;
  }
  if (msg->proto == &vam_protocol && msg->kind == VAM_WATCH) {
    on_watch(v, msg);
    return;
  }
  if (!mb_msg_is_request(msg)) {
    mb_msg_free(msg);
    return;
  }
  if (!is_job(msg)) {
    vam_ranges_msg *ranges = vam_ranges_of(msg);
    mb_reply(msg, ranges != NULL ? handle_ranges(v, ranges) : MB_E_INVALID);
    return;
  }
  vam_job job = {.msg = msg, .at = NOT_QUEUED};
  int rc;
  if (v->njobs > 0 && (job_span(v, &job), must_wait(v, &job, v->njobs))) {
    vam_lock(v);
    rc = enqueue(v, &job);
    vam_unlock(v);
  } else {
    rc = job_run(v, &job);
  }
  job_done(msg, rc);
}

/* The common case first: a VAM_MAP or VAM_UNMAP with nothing queued runs at once. */
static void vam_handle(mb_actor *self, mb_msg *msg) {
  mb_vam *v = mb_actor_state(self);
  if (msg->proto != &vam_protocol || (msg->kind != VAM_MAP && msg->kind != VAM_UNMAP) ||
      !mb_msg_is_request(msg) || v->njobs > 0) {
    vam_handle_any(v, msg);
    return;
  }
  vam_job job = {.msg = msg, .at = NOT_QUEUED};
  job_done(msg, msg->kind == VAM_MAP ? handle_map(v, vam_map_of(msg), &job)
                                     : handle_unmap(v, vam_unmap_of(msg), &job));
}

/* Whatever is parked or queued is answered as if the mapper were gone (it is). */
static void vam_actor_gone(mb_actor *self) {
  mb_vam *v = mb_actor_state(self);
  v->actor = NULL;
  vam_lock(v);
  vam_job *jobs = v->jobs;
  size_t n = v->njobs;
  v->jobs = NULL;
  v->njobs = v->capjobs = 0;
  vam_unlock(v);
  int status = mb_loop_stopping(v->loop) ? MB_ESTOPPED : MB_EGONE;
  for (size_t i = 0; i < n; i++)
    mb_reply(jobs[i].msg, status);
  free(jobs);
  if (v->timer != NULL && v->timer_live)
    uv_close((uv_handle_t *)v->timer, (uv_close_cb)free);
  else
    free(v->timer);
  v->timer = NULL;
}

/* All but the watchdog's start (a libuv timer of the mapper's loop) may run on a thread
 * lending the mapper's loop (MB_LOOP_LEND). */
static bool vam_lendable(const mb_msg *m) { return !vam_watch_of((mb_msg *)m); }
static const mb_actor_type vam_type = {"va_mapper", vam_handle, vam_actor_gone, 0, vam_lendable};

/* ---- the watchdog (the actor's thread) ------------------------------------------------------- */

static uint64_t now_ns(clockid_t clock) {
  struct timespec t;
  clock_gettime(clock, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* How often the timer looks: a quarter of the threshold, within [1 ms, 1 s]. */
static uint64_t watch_period(uint64_t threshold_ms) {
  uint64_t p = threshold_ms / 4;
  return p < 1 ? 1 : p > 1000 ? 1000 : p;
}

static void log_line(mb_vam *v, mb_vam_log_fn log, void *ctx, const mb_lock *l, uint64_t now) {
  char since[64] = "?";
  struct tm tm;
  if (localtime_r(&l->since.tv_sec, &tm) != NULL) {
    size_t n = strftime(since, sizeof since, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(since + n, sizeof since - n, ".%03ld", l->since.tv_nsec / 1000000);
  }
  char line[256];
  snprintf(line, sizeof line,
           "membacking: lock held for %" PRIu64 " ms: mapper %s/%" PRIu32 ".%" PRIu32
           " (%s) range [0x%" PRIx64 ", 0x%" PRIx64 ") %s since %s",
           (now - l->t_ns) / 1000000, mb_loop_name(v->addr.loop), v->addr.slot, v->addr.gen,
           v->eager ? "eager" : "lazy", l->node.start, l->node.end, l->writable ? "rw" : "ro",
           since);
  if (log != NULL)
    log(ctx, line);
  else
    fprintf(stderr, "%s\n", line);
}

enum { WATCH_BATCH = 16 }; /* locks reported per look under `lock` (no allocation) */

/* Up to WATCH_BATCH locks past the limit and not reported yet, marked reported, into due
 * (`lock` held): how many. */
static size_t due_locks(mb_vam *v, uint64_t now, uint64_t limit, mb_lock *due) {
  size_t k = 0;
  mb_rtree_node *it;
  mb_rtree_for_each(it, &v->locks) {
    mb_lock *l = mb_rtree_entry(it, mb_lock, node);
    if (k < WATCH_BATCH && !l->reported && now - l->t_ns >= limit) {
      l->reported = true;
      due[k++] = *l;
    }
  }
  return k;
}

/* Reports each lock past the threshold once. The locks due are copied under `lock`, a batch
 * at a time, and reported after it (a log function may take its time, or lock and unlock
 * itself). */
static void on_watch_timer(uv_timer_t *t) {
  mb_vam *v = t->data;
  uint64_t now = now_ns(CLOCK_MONOTONIC);
  vam_lock(v);
  if (mb_rtree_empty(&v->locks) || v->watch_ms == 0) {
    v->watching = false;
    vam_unlock(v);
    uv_timer_stop(t);
    return;
  }
  uv_timer_set_repeat(t, watch_period(v->watch_ms));
  uint64_t limit = v->watch_ms * 1000000u;
  mb_vam_log_fn log = v->log;
  void *ctx = v->log_ctx;
  mb_lock due[WATCH_BATCH];
  size_t k = due_locks(v, now, limit, due);
  vam_unlock(v);
  while (k > 0) {
    for (size_t i = 0; i < k; i++)
      log_line(v, log, ctx, &due[i], now);
    if (k < WATCH_BATCH)
      break;
    vam_lock(v);
    k = due_locks(v, now, limit, due);
    vam_unlock(v);
  }
}

/* VAM_WATCH: the message goes home and the timer starts (unreferenced). */
static void on_watch(mb_vam *v, mb_msg *msg) {
  mb_msg_keep(msg);
  if (!v->timer_live) {
    uv_timer_init(mb_loop_uv(v->loop), v->timer);
    uv_unref((uv_handle_t *)v->timer);
    v->timer->data = v;
    v->timer_live = true;
  }
  vam_lock(v);
  v->watch = msg;
  uint64_t period = watch_period(v->watch_ms);
  vam_unlock(v);
  uv_timer_start(v->timer, on_watch_timer, period, period);
}

/* Locks already held are watched from now on. */
void mb_vam_set_watchdog(mb_vam *v, uint64_t threshold_ms, mb_vam_log_fn log, void *ctx) {
  mb_msg *w = NULL;
  vam_lock(v);
  v->watch_ms = threshold_ms;
  v->log = log;
  v->log_ctx = ctx;
  if (threshold_ms > 0 && !v->watching && v->watch != NULL && !mb_rtree_empty(&v->locks)) {
    w = v->watch;
    v->watch = NULL;
    v->watching = true;
  }
  vam_unlock(v);
  if (w != NULL)
    mb_send_from(v->addr, w);
}

/* ---- life cycle ------------------------------------------------------------------------------ */

int mb_vam_create(mb_loop *loop, mb_addr mapping_manager, uint64_t max_addr, bool eager,
                  mb_vam **out) {
  if (out == NULL || loop == NULL)
    return MB_EINVAL;
  *out = NULL;
  if (max_addr == 0 || !mb_page_aligned(max_addr))
    return MB_E_INVALID;
  if (!mb_loop_is_current(loop))
    return MB_EINVAL;
  int rc = mb_access_init();
  if (rc != 0)
    return rc;
  mb_vam *v = mb__calloc(1, sizeof *v);
  if (v == NULL)
    return MB_ENOMEM;
  v->eager = eager;
  v->loop = loop;
  v->mm = mapping_manager;
  v->watch_ms = MB_VAM_WATCHDOG_MS;
  mb_rtree_init(&v->ranges);
  mb_rtree_init(&v->locks);
  mb_prot_init(&v->prot);
  vam_kick_msg *kick = vam_kick_new();
  vam_watch_msg *watch = vam_watch_new();
  v->kick = kick ? &kick->hdr : NULL;
  v->watch = watch ? &watch->hdr : NULL;
  v->timer = mb__malloc(sizeof *v->timer);
  if (v->kick == NULL || v->watch == NULL || v->timer == NULL) {
    mb_msg_free(v->kick);
    mb_msg_free(v->watch);
    free(v->timer);
    free(v);
    return MB_ENOMEM;
  }
  if ((rc = mb_va_reserve(&v->va, max_addr)) == 0) {
    v->actor = mb_actor_create(loop, &vam_type, v, eager ? "va_mapper.eager" : "va_mapper.lazy");
    if (v->actor == NULL) {
      mb_va_release(&v->va);
      rc = MB_ENOMEM;
    }
  }
  if (rc != 0) {
    mb_msg_free(v->kick);
    mb_msg_free(v->watch);
    free(v->timer);
    free(v);
    return rc;
  }
  v->addr = mb_actor_addr(v->actor);
  *out = v;
  return 0;
}

static void free_subtree(mb_rtree_node *n) {
  while (n != NULL) {
    free_subtree(n->left);
    mb_rtree_node *right = n->right;
    range_free(range_of(n));
    n = right;
  }
}

int mb_vam_destroy(mb_vam *v) {
  if (v == NULL)
    return 0;
  if (v->actor != NULL)
    mb_actor_destroy(v->actor);
  free_subtree(v->ranges.root);
  while (!mb_rtree_empty(&v->locks)) { /* a caller's mistake: see va_mapper.h */
    mb_rtree_node *n = v->locks.root;
    mb_rtree_remove(&v->locks, n);
    lock_free(mb_rtree_entry(n, mb_lock, node));
  }
  mb_msg_free(v->kick);
  mb_msg_free(v->watch);
  while (v->nrange_cache > 0)
    free(v->range_cache[--v->nrange_cache]);
  mb_prot_fini(&v->prot);
  int rc = mb_va_release(&v->va); /* on failure the span stays reserved: reported, not hidden */
  free(v);
  return rc;
}

mb_addr mb_vam_addr(const mb_vam *v) {
  return v->addr;
}

uint8_t *mb_vam_base(const mb_vam *v) {
  return v->va.base;
}

bool mb_vam_eager(const mb_vam *v) {
  return v->eager;
}

mb_vam_stats mb_vam_stats_get(const mb_vam *v) {
  return (mb_vam_stats){
      atomic_load_explicit(&v->faults, memory_order_relaxed),
      atomic_load_explicit(&v->resolved, memory_order_relaxed),
      atomic_load_explicit(&v->unmapped, memory_order_relaxed),
      atomic_load_explicit(&v->parked, memory_order_relaxed),
  };
}

/* ---- accesses (any thread) ------------------------------------------------------------------- */

static void count(_Atomic uint64_t *c) {
  atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* 0: not established; 1: read-only; 2: writable; and in *prot the page's protection. */
static int page_state(mb_vam *v, uint64_t page, uint8_t *prot) {
  vam_lock(v);
  mb_rtree_node *it = mb_rtree_find(&v->ranges, page);
  int s = it == NULL ? 0 : range_of(it)->writable ? 2 : 1;
  *prot = mb_prot_at(&v->prot, page, NULL);
  vam_unlock(v);
  return s;
}

/* What a failed resolve means for an access or a lock: a refusal of the host (a negative
 * errno such as -ENOMEM from the mapper's mmap, or the runtime's MB_ENOMEM) is reported as it
 * is, and so is MB_EDEADLK; anything else (nothing visible there, the mapper not registered,
 * the manager gone) means the page is unmapped. */
static int resolve_failure(int rc) {
  return is_errno(rc) || rc == MB_ENOMEM || rc == MB_EDEADLK ? rc : MB_E_UNMAPPED;
}

/* Asks the mapping manager to have `page`'s mapping established here (blocking). */
static int resolve(mb_vam *v, uint64_t page) {
  if (mb_loop_is_current(v->loop))
    return MB_EDEADLK; /* the mapper's own loop would have to answer */
  mm_resolve_msg *m = mm_resolve_new();
  if (m == NULL)
    return MB_ENOMEM;
  m->mapper = v->addr;
  m->gpa = page;
  int rc = mb_call_sync(v->mm, &m->hdr);
  mb_object_unref(m->entry.obj);
  mb_msg_free(&m->hdr);
  return rc;
}

/* Per access: the address of the last fault and how often it recurred after a retry. */
typedef struct vam_retry {
  uint64_t addr;
  unsigned resolves, races;
} vam_retry;

/* A fault at guest address `at`: 0 to retry, or the access's error. */
static int on_fault(mb_vam *v, uint64_t at, bool write, vam_retry *r) {
  count(&v->faults);
  if (at != r->addr)
    *r = (vam_retry){at, 0, 0};
  uint64_t page = at & ~MB_PAGE_MASK;
  uint8_t prot;
  int s = page_state(v, page, &prot);
  if (s == 1 && write)
    return MB_E_READONLY;
  if (s != 0 && (prot == MB_PROT_NONE || (write && prot == MB_PROT_RO)))
    return MB_E_PROTECTED;
  if (s != 0) /* established after the fault: a race with the actor */
    return ++r->races <= VAM_MAX_RACES ? 0 : MB_E_FAULT;
  int rc = MB_E_UNMAPPED;
  if (!v->eager && r->resolves < VAM_MAX_RESOLVES) {
    rc = resolve(v, page);
    if (rc == 0) {
      count(&v->resolved);
      r->resolves++;
      return 0;
    }
    if ((rc = resolve_failure(rc)) != MB_E_UNMAPPED)
      return rc;
  }
  count(&v->unmapped);
  return rc;
}

/* *done: the bytes copied before it returned (all of them on success). */
static int vam_access(mb_vam *v, uint64_t gpa, uint8_t *buf, const uint8_t *src, size_t len,
                      size_t *out_done) {
  uint64_t max = v->va.size;
  if (gpa > max || len > max - gpa)
    return MB_E_INVALID;
  bool write = src != NULL;
  vam_retry r = {UINT64_MAX, 0, 0};
  size_t done = 0;
  *out_done = 0;
  while (done < len) {
    mb_fault f;
    uint8_t *g = v->va.base + gpa + done;
    int rc = write ? mb_access_write(g, src + done, len - done, &f)
                   : mb_access_read(buf + done, g, len - done, &f);
    if (rc == 0) {
      *out_done = len;
      return 0;
    }
    *out_done = done;
    if (rc != -EFAULT)
      return map_error(rc);
    done += f.done;
    *out_done = done;
    rc = on_fault(v, gpa + done, write, &r);
    if (rc != 0)
      return rc;
  }
  return 0;
}

int mb_vam_read(mb_vam *v, uint64_t gpa, void *buf, size_t len) {
  if (buf == NULL && len > 0)
    return MB_E_INVALID;
  size_t done;
  return vam_access(v, gpa, buf, NULL, len, &done);
}

int mb_vam_write(mb_vam *v, uint64_t gpa, const void *buf, size_t len) {
  if (buf == NULL && len > 0)
    return MB_E_INVALID;
  size_t done = 0;
  int rc = vam_access(v, gpa, NULL, buf, len, &done);
  if (v->dirty != NULL && done > 0)
    mb__dirty_mark(v->dirty, gpa, done); /* after the bytes are in memory */
  return rc;
}

void mb_vam_set_dirty(mb_vam *v, mb_dirty_log *log) { v->dirty = log; }

/* ---- locks (any thread) ---------------------------------------------------------------------- */

/* A lock_check result: *missing is the first page of the range that is not established. */
enum { VAM_MISSING = 1 };

/* The first page of [a, b) whose protection, or a protection change parked or queued there,
 * forbids a lock's access (read for any lock, write for a writable one); b if none. */
static uint64_t first_protected(const mb_vam *v, uint64_t a, uint64_t b, bool writable) {
  uint64_t q = b;
  for (const mb_prot_range *p = mb_prot_first(&v->prot, a, b); p != NULL;
       p = mb_prot_next(p, a, b))
    if (p->access == MB_PROT_NONE || writable) {
      q = p->node.start > a ? p->node.start : a;
      break;
    }
  for (size_t i = 0; i < v->njobs; i++) {
    const vam_protect_msg *m = vam_protect_of(v->jobs[i].msg);
    for (uint32_t k = 0; m != NULL && v->jobs[i].a < v->jobs[i].b && k < m->count; k++) {
      uint64_t s = m->items[k].gpa > a ? m->items[k].gpa : a;
      if (s < q && items_take(&m->items[k], 1, a, q, writable))
        q = s;
    }
  }
  return q;
}

/* Can [a, b) be locked now? (`lock` held.) The first problem in address order decides, as it
 * would for an access, and on one page: unmapped, then read-only, then protected. A range
 * whose teardown is parked or queued is unmapped already. */
static int lock_check(const mb_vam *v, uint64_t a, uint64_t b, bool writable, uint64_t *missing) {
  if (v->retired)
    return MB_E_INVALID;
  for (size_t i = 0; i < v->njobs; i++)
    if (v->jobs[i].drains && overlaps(a, b, v->jobs[i].a, v->jobs[i].b))
      return MB_E_UNMAPPED;
  uint64_t cur = a, q = first_protected(v, a, b, writable);
  mb_rtree_node *it;
  mb_rtree_for_each_overlap(it, &v->ranges, a, b) {
    if (it->start > cur)
      break;
    if (writable && !range_of(it)->writable)
      return q < cur ? MB_E_PROTECTED : MB_E_READONLY;
    cur = it->end;
  }
  if (q < cur && q < b)
    return MB_E_PROTECTED;
  if (cur >= b)
    return 0;
  *missing = cur;
  return VAM_MISSING;
}

/* Records l over [a, b) (`lock` held); returns the watch message to send, if the watchdog is
 * to start. */
static mb_msg *lock_record(mb_vam *v, mb_lock *l, uint64_t a, uint64_t b) {
  clock_gettime(CLOCK_REALTIME, &l->since);
  l->t_ns = now_ns(CLOCK_MONOTONIC);
  mb_rtree_insert(&v->locks, &l->node, a, b);
  if (v->watch_ms == 0 || v->watching || v->watch == NULL)
    return NULL;
  mb_msg *w = v->watch;
  v->watch = NULL;
  v->watching = true;
  return w;
}

/* A writable lock's pages are dirty at its release. */
static void lock_release_dirty(mb_lock *l) {
  if (l->writable && l->vam->dirty != NULL)
    mb__dirty_release(l->vam->dirty, &l->hold);
}

/* Frees an unlinked lock. */
static void lock_free(mb_lock *l) {
  lock_release_dirty(l);
  free(l);
}

int mb_vam_lock(mb_vam *v, uint64_t gpa, uint64_t size, bool writable, mb_lock **out) {
  if (out == NULL)
    return MB_E_INVALID;
  *out = NULL;
  if (size == 0 || !mb_page_aligned(gpa) || !mb_page_aligned(size) || gpa > v->va.size ||
      size > v->va.size - gpa)
    return MB_E_INVALID;
  mb_lock *l = mb__calloc(1, sizeof *l);
  if (l == NULL)
    return MB_ENOMEM;
  l->vam = v;
  l->writable = writable;
  uint64_t end = gpa + size, last = UINT64_MAX;
  unsigned resolves = 0;
  int rc;
  for (;;) {
    uint64_t missing = 0;
    mb_msg *watch = NULL;
    vam_lock(v);
    rc = lock_check(v, gpa, end, writable, &missing);
    if (rc == 0)
      watch = lock_record(v, l, gpa, end);
    vam_unlock(v);
    if (rc == 0) {
      if (watch != NULL)
        mb_send_from(v->addr, watch); /* dropped (freed) only if the mapper is gone */
      if (writable && v->dirty != NULL)
        mb__dirty_hold(v->dirty, &l->hold, gpa, size);
      *out = l;
      return 0;
    }
    if (rc != VAM_MISSING)
      break;
    /* A lazy mapper faults the page in the way a read would, a bounded number of times. */
    rc = MB_E_UNMAPPED;
    if (missing != last)
      last = missing, resolves = 0;
    if (v->eager || resolves++ >= VAM_MAX_RESOLVES)
      break;
    int r = resolve(v, missing);
    if (r != 0) {
      rc = resolve_failure(r);
      break;
    }
    count(&v->resolved);
  }
  free(l);
  return rc;
}

void mb_vam_unlock(mb_lock *l) {
  if (l == NULL)
    return;
  mb_vam *v = l->vam;
  mb_msg *kick = NULL;
  vam_lock(v);
  mb_rtree_remove(&v->locks, &l->node);
  if (v->njobs > 0 && v->kick != NULL) {
    kick = v->kick;
    v->kick = NULL;
  }
  vam_unlock(v);
  lock_release_dirty(l); /* before a waiting request goes on: a sync queued behind it must
                          * not see the lock still held */
  if (kick != NULL) {
    vam_kick_msg *k = vam_kick_of(kick);
    k->gpa = l->node.start;
    k->size = l->node.end - l->node.start;
    mb_send_from(v->addr, kick);
  }
  free(l);
}

uint8_t *mb_vam_lock_ptr(const mb_lock *l) {
  return l->vam->va.base + l->node.start;
}

uint64_t mb_vam_lock_gpa(const mb_lock *l) {
  return l->node.start;
}

uint64_t mb_vam_lock_size(const mb_lock *l) {
  return l->node.end - l->node.start;
}

int mb_vam_retire(mb_vam *v) {
  vam_lock(v);
  int rc = mb_rtree_empty(&v->locks) ? 0 : MB_E_INVALID;
  if (rc == 0)
    v->retired = true;
  vam_unlock(v);
  return rc;
}

void mb_vam_unretire(mb_vam *v) {
  vam_lock(v);
  v->retired = false;
  vam_unlock(v);
}

int mb_vam_locks(mb_vam *v, mb_vam_lock_info **out, size_t *count_out, size_t *waiting) {
  *out = NULL;
  *count_out = 0;
  uint64_t now = now_ns(CLOCK_MONOTONIC);
  vam_lock(v);
  size_t n = mb_rtree_count(&v->locks);
  mb_vam_lock_info *info = n ? mb__malloc(n * sizeof *info) : NULL;
  if (n == 0 || info != NULL) {
    size_t i = 0;
    mb_rtree_node *it;
    mb_rtree_for_each(it, &v->locks) {
      const mb_lock *l = mb_rtree_entry(it, mb_lock, node);
      info[i++] = (mb_vam_lock_info){it->start, it->end - it->start, l->writable, l->reported,
                                     now - l->t_ns, l->since};
    }
  }
  if (waiting != NULL)
    *waiting = v->njobs;
  vam_unlock(v);
  if (n > 0 && info == NULL)
    return MB_ENOMEM;
  *out = info;
  *count_out = n;
  return 0;
}
