/* va_mapper.c: the VA mapper actor (see va_mapper.h): its requests, the jobs parked behind
 * locks, establishing and tearing down, guest accesses and a lazy mapper's resolves, its life
 * cycle. Protections are in va_mapper_prot.c, locks in va_mapper_locks.c; the state and its
 * invariants in va_mapper_internal.h.
 */
#include "mb_hot.h"
#include "va_mapper_internal.h"

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
#include "fault_inject.h" /* mb__malloc, mb__calloc: MB_FI_ALLOC */

/* A VAM_RANGES reply carries a malloc'd array: freed if its requester is gone. */
static void vam_dispose(mb_msg *msg) {
  vam_ranges_msg *m = vam_ranges_of(msg);
  if (m) free(m->ranges);
}

MB_PROTOCOL_DEFINE_DISPOSE(vam, VAM_MESSAGES, vam_dispose);

/* `lock`'s contended cases (its rule: va_mapper_internal.h). */
static long futex(_Atomic uint32_t *f, int op, uint32_t val) {
  return syscall(SYS_futex, (uint32_t *)f, op | FUTEX_PRIVATE_FLAG, val, NULL, NULL, 0);
}

__attribute__((noinline)) void vam__lock_wait(mb_vam *v, uint32_t c) {
  if (c != 2)
    c = atomic_exchange_explicit(&v->lock, 2, memory_order_acquire);
  while (c != 0) {
    futex(&v->lock, FUTEX_WAIT, 2);
    c = atomic_exchange_explicit(&v->lock, 2, memory_order_acquire);
  }
}

void vam__lock_wake(mb_vam *v) {
  futex(&v->lock, FUTEX_WAKE, 1);
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
int vam__host_refused(int rc) {
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

static bool is_resolve(const mb_msg *msg) {
  return msg->proto == &mm_protocol;
}

static int check_unmap(const vam_unmap_msg *m) {
  if (m->size == 0 || !mb_page_aligned(m->gpa | m->size) || m->size > UINT64_MAX - m->gpa)
    return MB_E_INVALID;
  return 0;
}

/* A VAM_REPLACE's range is in the VA, and its entries ascending inside it. */
MB_HOT static int check_replace(const mb_vam *v, const vam_replace_msg *m) {
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
    if (vam__check_protect(v, p) == 0) {
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
int vam__park(mb_vam *v, vam_job *job) {
  bool drains = job->msg->proto != &vam_protocol || job->msg->kind != VAM_PROTECT;
  if (job->at == NOT_QUEUED) {
    job_span(v, job);
    job->drains = drains;
    vam_count(&v->parked);
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
MB_HOT static void unrecord(mb_vam *v, mb_rtree_node *it, uint64_t a, uint64_t b,
                            vam_range **spare) {
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

/* Maps object bytes into [start, end), where nothing is established (so no lock is there
 * either), outside `lock`, then records them. */
static int map_gap(mb_vam *v, uint64_t start, uint64_t end, mb_object *obj, uint64_t obj_off,
                   bool writable) {
  vam_range *r = range_get(v);
  if (r == NULL)
    return MB_ENOMEM;
  int rc = vam__map_prot(v, start, end, obj, obj_off, writable, false);
  if (rc != 0) { /* the range is PROT_NONE, and nothing was recorded there */
    range_put(v, r);
    return vam__host_refused(map_error(rc));
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
MB_HOT static int replace_exact(mb_vam *v, vam_range *r, mb_object *obj, uint64_t obj_off,
                                bool writable, bool same, vam_job *job) {
  uint64_t start = r->node.start, end = r->node.end;
  vam_range *none = NULL;
  int rc;
  vam_lock(v);
  if (lock_needs(v, start, end, !same, !writable)) {
    rc = vam__park(v, job);
  } else {
    rc = same ? vam__protect_prot(v, start, end, writable)
              : vam__map_prot(v, start, end, obj, obj_off, writable, true);
    if (rc == 0) {
      mb_object_unref(r->obj);
      r->obj = mb_object_ref(obj), r->obj_off = obj_off, r->writable = writable;
    } else if (!same && mb_va_unmap(&v->va, start, end - start) == 0) {
      unrecord(v, &r->node, start, end, &none);
    }
  }
  vam_unlock(v);
  return vam__host_refused(map_error(rc));
}

/* `it`: the first established range overlapping [start, end) (change_piece's). */
MB_HOT static int map_replace(mb_vam *v, mb_rtree_node *it, uint64_t start, uint64_t end,
                              mb_object *obj, uint64_t obj_off, bool writable, bool same,
                              vam_job *job) {
  /* A spare only when one established range straddles both edges (then it is the only one
   * overlapping); only this thread changes the tree, so the check holds until unrecord. */
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
    rc = vam__park(v, job);
    vam_unlock(v);
    range_put(v, r);
    range_put(v, spare);
    return rc;
  }
  rc = same ? vam__protect_prot(v, start, end, writable)
            : vam__map_prot(v, start, end, obj, obj_off, writable, true);
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
  return vam__host_refused(map_error(rc));
}

/* Tears down every established byte of [a, b): made PROT_NONE with one call over the span
 * (what lies between established pieces is PROT_NONE already), then unrecorded, under `lock`
 * (a faulting thread waits the call out). A refused call leaves the ranges recorded and
 * mapped: the kernel checks the mapping count before it changes anything (a refusal that
 * left a hole, on an old kernel out of memory midway, shows as MB_E_FAULT, never as wrong
 * data). With a lock in the way nothing changes: parked (job). */
MB_HOT static int teardown(mb_vam *v, uint64_t a, uint64_t b, vam_job *job) {
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
    rc = vam__park(v, job);
  else if ((rc = mb_va_unmap(&v->va, span.start, span.end - span.start)) == 0)
    unrecord(v, it, a, b, &spare);
  vam_unlock(v);
  range_put(v, spare);
  return vam__host_refused(map_error(rc));
}

/* Are these object bytes established at `at` in r (whatever the access)? */
static bool same_place(const vam_range *r, uint64_t at, const mb_object *obj, uint64_t obj_off) {
  return r->obj == obj && r->obj_off + (at - r->node.start) == obj_off;
}

/* Makes [s, t), inside the established range `it` (the first one overlapping it), show
 * obj[off, ...) with that access. */
static int change_piece(mb_vam *v, mb_rtree_node *it, uint64_t s, uint64_t t, mb_object *obj,
                        uint64_t off, bool writable, vam_job *job) {
  const vam_range *r = range_of(it);
  bool same = same_place(r, s, obj, off);
  if (same && r->writable == writable)
    return 0;
  return map_replace(v, it, s, t, obj, off, writable, same, job);
}

/* Is e an entry this mapper can establish (an object, its range, in the VA)? */
MB_HOT static bool entry_ok(const mb_vam *v, const mb_map_entry *e) {
  return e->obj != NULL && in_va(v, e->gpa, e->size) &&
         mb_object_check_range(e->obj, e->obj_off, e->size) == 0;
}

/* Establishes obj[obj_off, +size) at gpa. Pieces already established with the same backing
 * stay as they are (re-mapping private anonymous memory would lose its contents); pieces
 * with another backing are replaced. Idempotent, so a parked request simply runs again. */
MB_HOT static int establish(mb_vam *v, const mb_map_entry *e, vam_job *job) {
  if (!entry_ok(v, e))
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
MB_HOT static int handle_map(mb_vam *v, const vam_map_msg *m, vam_job *job) {
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
  if (!entry_ok(v, e))
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

/* Is the replace one entry over exactly one established range (a DAX chunk's)? Its one
 * change then checks the locks itself, under the lock it maps with (replace_exact). */
static bool replaces_exactly(const mb_vam *v, const vam_replace_msg *m) {
  mb_rtree_node *it = mb_rtree_first_overlap(&v->ranges, m->gpa, m->gpa + m->size);
  return m->count == 1 && m->entries[0].gpa == m->gpa && m->entries[0].size == m->size &&
         it != NULL && it->start == m->gpa && it->end == m->gpa + m->size;
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
  bool held = false;
  if (!replaces_exactly(v, m)) {
    vam_lock(v);
    held = replace_needs_locks(v, m);
    if (held)
      rc = vam__park(v, job);
    vam_unlock(v);
  }
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

MB_HOT static int handle_unmap(mb_vam *v, const vam_unmap_msg *m, vam_job *job) {
  int rc = check_unmap(m);
  if (rc != 0 || m->gpa >= v->va.size)
    return rc;
  uint64_t end = m->gpa + m->size;
  return teardown(v, m->gpa, end < v->va.size ? end : v->va.size, job);
}

/* Introspection, on the mapper's thread: its established ranges and held locks, as JSON
 * members. */
void mb__vam_inspect(mb_vam *v, FILE *f) {
  vam_ranges_msg r = {0};
  bool first = true;
  fputs("\"established\":[", f);
  if (vam__handle_ranges(v, &r) == 0)
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
  vam__inspect_prot(v, f);
  fputs("]", f);
}

/* Runs a job: its answer, or VAM_PARKED. */
MB_HOT static int job_run(mb_vam *v, vam_job *job) {
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
    return vam__handle_protect(v, vam_protect_of(msg), job);
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
MB_HOT __attribute__((noinline)) static void vam_handle_any(mb_vam *v, mb_msg *msg) {
  if (msg->proto == &vam_protocol && msg->kind == VAM_KICK) {
    on_kick(v, msg);
    return;
  }
  if (msg->proto == &vam_protocol && msg->kind == VAM_WATCH) {
    vam__on_watch(v, msg);
    return;
  }
  if (!mb_msg_is_request(msg)) {
    mb_msg_free(msg);
    return;
  }
  if (!is_job(msg)) {
    vam_ranges_msg *ranges = vam_ranges_of(msg);
    mb_reply(msg, ranges != NULL ? vam__handle_ranges(v, ranges) : MB_E_INVALID);
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
MB_HOT static void vam_handle(mb_actor *self, mb_msg *msg) {
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
static const mb_actor_type vam_type = {"va_mapper", vam_handle, vam_actor_gone,
                                       MB_ACTOR_PROMPT_REPLIES, vam_lendable};
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
  rc = v->kick == NULL || v->watch == NULL || v->timer == NULL ? MB_ENOMEM
                                                               : mb_va_reserve(&v->va, max_addr);
  if (rc == 0) {
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
    vam__lock_free(mb_rtree_entry(n, mb_lock, node));
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
int vam__resolve_failure(int rc) {
  return is_errno(rc) || rc == MB_ENOMEM || rc == MB_EDEADLK ? rc : MB_E_UNMAPPED;
}

/* Asks the mapping manager to have `page`'s mapping established here (blocking). */
int vam__resolve(mb_vam *v, uint64_t page) {
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
  vam_count(&v->faults);
  if (at != r->addr)
    *r = (vam_retry){at, 0, 0};
  uint64_t page = at & ~MB_PAGE_MASK;
  uint8_t prot;
  int s = page_state(v, page, &prot);
  if (s == 1 && write)
    return MB_E_READONLY;
  if (s != 0 && prot_forbids(prot, write))
    return MB_E_PROTECTED;
  if (s != 0) /* established after the fault: a race with the actor */
    return ++r->races <= VAM_MAX_RACES ? 0 : MB_E_FAULT;
  int rc = MB_E_UNMAPPED;
  if (!v->eager && r->resolves < VAM_MAX_RESOLVES) {
    rc = vam__resolve(v, page);
    if (rc == 0) {
      vam_count(&v->resolved);
      r->resolves++;
      return 0;
    }
    if ((rc = vam__resolve_failure(rc)) != MB_E_UNMAPPED)
      return rc;
  }
  vam_count(&v->unmapped);
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

/* A write that failed after a drop overlapped it (va_reserve.h) may have written bytes past
 * its first failing byte too, in part of the page it faulted on or wherever the copy's store
 * order put them (mb_access.h): all of its pages are marked. Without one, exactly the `done`
 * bytes before the first failing byte were written. */
int mb_vam_write(mb_vam *v, uint64_t gpa, const void *buf, size_t len) {
  if (buf == NULL && len > 0)
    return MB_E_INVALID;
  uint64_t drops = mb_va_drops_ended(&v->va);
  size_t done = 0;
  int rc = vam_access(v, gpa, NULL, buf, len, &done);
  if (rc != 0 && rc != MB_E_INVALID && mb_va_dropped_since(&v->va, drops))
    done = len;
  if (v->dirty != NULL && done > 0)
    mb__dirty_mark(v->dirty, gpa, done); /* after the bytes are in memory */
  return rc;
}

void mb_vam_set_dirty(mb_vam *v, mb_dirty_log *log) { v->dirty = log; }
