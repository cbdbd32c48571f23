/* va_mapper_locks.c: a VA mapper's locks (va_mapper.h: "locks"; any thread) and their
 * watchdog (the actor's thread). The state and its invariants: va_mapper_internal.h.
 */
#include "va_mapper_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "fault_inject.h" /* mb__malloc, mb__calloc */

/* Now on `clock`, in nanoseconds. */
static uint64_t now_ns(clockid_t clock) {
  struct timespec t;
  clock_gettime(clock, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* ---- locks (any thread) ---------------------------------------------------------------------- */

/* A lock_check result: *missing is the first page of the range that is not established. */
enum { VAM_MISSING = 1 };

/* Can [a, b) be locked now? (`lock` held.) The first problem in address order decides, as it
 * would for an access, and on one page: unmapped, then read-only, then protected. A range
 * whose teardown is parked or queued is unmapped already. */
static int lock_check(const mb_vam *v, uint64_t a, uint64_t b, bool writable, uint64_t *missing) {
  if (v->retired)
    return MB_E_INVALID;
  for (size_t i = 0; i < v->njobs; i++)
    if (v->jobs[i].drains && overlaps(a, b, v->jobs[i].a, v->jobs[i].b))
      return MB_E_UNMAPPED;
  uint64_t cur = a, q = vam__first_protected(v, a, b, writable);
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
void vam__lock_free(mb_lock *l) {
  lock_release_dirty(l);
  free(l);
}

int mb_vam_lock(mb_vam *v, uint64_t gpa, uint64_t size, bool writable, mb_lock **out) {
  if (out == NULL)
    return MB_E_INVALID;
  *out = NULL;
  if (!in_va(v, gpa, size))
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
    int r = vam__resolve(v, missing);
    if (r != 0) {
      rc = vam__resolve_failure(r);
      break;
    }
    vam_count(&v->resolved);
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

/* What a snapshot or the watchdog reports of a lock (`lock` held, and now read under it, so
 * never before the lock was taken): only the fields written under `lock` (its dirty hold is
 * written by its taker after it is visible here). */
static mb_vam_lock_info lock_info(const mb_lock *l, uint64_t now) {
  return (mb_vam_lock_info){l->node.start, l->node.end - l->node.start, l->writable,
                            l->reported, now - l->t_ns, l->since};
}

int mb_vam_locks(mb_vam *v, mb_vam_lock_info **out, size_t *count_out, size_t *waiting) {
  *out = NULL;
  *count_out = 0;
  vam_lock(v);
  uint64_t now = now_ns(CLOCK_MONOTONIC);
  size_t n = mb_rtree_count(&v->locks);
  mb_vam_lock_info *info = n ? mb__malloc(n * sizeof *info) : NULL;
  if (n == 0 || info != NULL) {
    size_t i = 0;
    mb_rtree_node *it;
    mb_rtree_for_each(it, &v->locks)
      info[i++] = lock_info(mb_rtree_entry(it, mb_lock, node), now);
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

/* ---- the watchdog (the actor's thread) ------------------------------------------------------- */

/* How often the timer looks: a quarter of the threshold, within [1 ms, 1 s]. */
static uint64_t watch_period(uint64_t threshold_ms) {
  uint64_t p = threshold_ms / 4;
  return p < 1 ? 1 : p > 1000 ? 1000 : p;
}

static void log_line(mb_vam *v, mb_vam_log_fn log, void *ctx, const mb_vam_lock_info *l) {
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
           l->held_ns / 1000000, mb_loop_name(v->addr.loop), v->addr.slot, v->addr.gen,
           v->eager ? "eager" : "lazy", l->gpa, l->gpa + l->size, l->writable ? "rw" : "ro",
           since);
  if (log != NULL)
    log(ctx, line);
  else
    fprintf(stderr, "%s\n", line);
}

enum { WATCH_BATCH = 16 }; /* locks reported per look under `lock` (no allocation) */

/* Up to WATCH_BATCH locks past the limit and not reported yet, marked reported, into due
 * (`lock` held): how many. The clock is read here, under `lock`: a lock taken after a read
 * made before would have been held for a negative time. */
static size_t due_locks(mb_vam *v, uint64_t limit, mb_vam_lock_info *due) {
  uint64_t now = now_ns(CLOCK_MONOTONIC);
  size_t k = 0;
  mb_rtree_node *it;
  mb_rtree_for_each(it, &v->locks) {
    mb_lock *l = mb_rtree_entry(it, mb_lock, node);
    if (k < WATCH_BATCH && !l->reported && now - l->t_ns >= limit) {
      l->reported = true;
      due[k++] = lock_info(l, now);
    }
  }
  return k;
}

/* Reports each lock past the threshold once. The locks due are copied under `lock`, a batch
 * at a time, and reported after it (a log function may take its time, or lock and unlock
 * itself). */
static void on_watch_timer(uv_timer_t *t) {
  mb_vam *v = t->data;
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
  mb_vam_lock_info due[WATCH_BATCH];
  size_t k = due_locks(v, limit, due);
  vam_unlock(v);
  while (k > 0) {
    for (size_t i = 0; i < k; i++)
      log_line(v, log, ctx, &due[i]);
    if (k < WATCH_BATCH)
      break;
    vam_lock(v);
    k = due_locks(v, limit, due);
    vam_unlock(v);
  }
}

/* VAM_WATCH: the message goes home and the timer starts (unreferenced). */
void vam__on_watch(mb_vam *v, mb_msg *msg) {
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
