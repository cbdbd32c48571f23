/* membacking_locks.c: the public API of locks (membacking.h, "locks"): thin wrappers over the
 * VA mapper's lock table (va_mapper.h), which holds the guarantee, behind handles
 * (api_internal.h) so that a double unlock, or an unlock after the manager's destruction, is
 * refused rather than a use after free. */
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"
#include "fault_inject.h" /* MB_FI_ALLOC: tests fail these allocations */

/* In a section on m: take the lock and give it a handle. A lock taken while m is being killed
 * is handed back: the kill's sweep of m's locks (mb__h_kill_locks) and this check are ordered
 * (publish, had_locks, then m's tag here; kill m's tag, then had_locks and the sweep there,
 * all sequentially consistent), so one of the two sees the other and the lock never outlives
 * m with a live handle. */
static int lock_take(mb_mapper *m, uint64_t gpa, uint64_t size, bool writable, mb_lock **out) {
  uint32_t idx = mb__h_alloc();
  if (idx == MB__H_NONE) return MB_ENOMEM;
  mb_lock *l = NULL;
  int rc = mb_vam_lock(m->vam, gpa, size, writable, &l);
  if (rc) {
    mb__h_free(idx);
    return rc;
  }
  mb__h_set_lock(idx, m->idx, mb_vam_lock_ptr(l), gpa, size);
  mb__handle h = mb__h_publish(idx, MB__H_LOCK, l);
  atomic_store(&m->had_locks, true);
  if (!mb__h_alive(m->h)) {
    if (mb__h_kill(h)) { /* else the sweep had it: the VA mapper's destruction frees it */
      mb_vam_unlock(l);
      mb__h_free(idx);
    }
    return MB_E_INVALID;
  }
  *out = (mb_lock *)h;
  return 0;
}

int mb_mapper_lock(mb_mapper *handle, uint64_t gpa, uint64_t size, bool writable, mb_lock **out) {
  if (out == NULL) return MB_E_INVALID;
  *out = NULL;
  mb__rs *rs;
  mb_mapper *m = mb__h_enter((mb__handle)handle, MB__H_MAPPER, &rs);
  /* The partitions see guest memory through the primary mapper: a lock there would keep a
   * range the guest can reach alive while its teardown waits, breaking "partitions first". */
  int rc = !m || m == &m->mm->primary || atomic_load(&m->mm->txn)
               ? MB_E_INVALID
               : lock_take(m, gpa, size, writable, out);
  if (m) mb__rec_lock(m, gpa, size, writable, (uintptr_t)*out, rc); /* before the handle is out */
  mb__rs_leave(rs);
  return rc;
}

/* The unlock that kills the handle is the one that releases the lock; its section on the
 * mapper keeps the VA mapper alive meanwhile (the mapper's kill sweeps its locks first, then
 * waits for its readers). */
int mb_mapper_unlock(mb_lock *lock) {
  if (lock == NULL) return 0;
  mb__handle h = (mb__handle)lock;
  mb__hlock hl;
  if (!mb__h_lock_peek(h, &hl)) {
    mb__rec_unlock(h, MB_E_INVALID);
    return MB_E_INVALID;
  }
  mb__rs *rs = mb__rs_enter(hl.owner);
  int rc = mb__h_kill(h) ? 0 : MB_E_INVALID;
  mb__rec_unlock(h, rc); /* before the release: what waited for it is recorded after it */
  if (rc == 0) {
    mb_vam_unlock(hl.obj);
    mb__h_free(mb__h_index(h));
  }
  mb__rs_leave(rs);
  return rc;
}

void *mb_lock_ptr(const mb_lock *lock) {
  mb__hlock hl;
  return mb__h_lock_peek((mb__handle)lock, &hl) ? hl.ptr : NULL;
}

uint64_t mb_lock_gpa(const mb_lock *lock) {
  mb__hlock hl;
  return mb__h_lock_peek((mb__handle)lock, &hl) ? hl.gpa : 0;
}

uint64_t mb_lock_size(const mb_lock *lock) {
  mb__hlock hl;
  return mb__h_lock_peek((mb__handle)lock, &hl) ? hl.size : 0;
}

static int locks_of(mb_vam *vam, mb_lock_list **out) {
  mb_vam_lock_info *info;
  size_t n, waiting;
  int rc = mb_vam_locks(vam, &info, &n, &waiting);
  if (rc != 0)
    return rc;
  mb_lock_list *l = mb__malloc(sizeof *l + n * sizeof l->locks[0]);
  if (l == NULL) {
    free(info);
    return MB_ENOMEM;
  }
  l->waiting = waiting;
  l->count = n;
  for (size_t i = 0; i < n; i++)
    l->locks[i] = (mb_lock_info){info[i].gpa, info[i].size, info[i].writable, info[i].overdue,
                                 info[i].held_ns / 1000000, info[i].since};
  free(info);
  *out = l;
  return 0;
}

int mb_mapper_locks(mb_mapper *handle, mb_lock_list **out) {
  mb__rs *rs;
  mb_mapper *m = mb__h_enter((mb__handle)handle, MB__H_MAPPER, &rs);
  int rc = m ? locks_of(m->vam, out) : MB_E_INVALID;
  mb__rs_leave(rs);
  return rc;
}

int mb_mapper_lock_watchdog(mb_mapper *handle, uint64_t threshold_ms, mb_log_fn log, void *ctx) {
  mb__rs *rs;
  mb_mapper *m = mb__h_enter((mb__handle)handle, MB__H_MAPPER, &rs);
  if (m) mb_vam_set_watchdog(m->vam, threshold_ms, log, ctx);
  mb__rs_leave(rs);
  return m ? 0 : MB_E_INVALID;
}
