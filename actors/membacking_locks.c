/* membacking_locks.c: the public API of locks (membacking.h, "locks"): thin wrappers over the
 * VA mapper's lock table (va_mapper.h), which holds the guarantee. */
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"

int mb_mapper_lock(mb_mapper *m, uint64_t gpa, uint64_t size, bool writable, mb_lock **out) {
  /* The partitions see guest memory through the primary mapper: a lock there would keep a
   * range the guest can reach alive while its teardown waits, breaking "partitions first". */
  if (m == NULL || m == &m->mm->primary)
    return MB_E_INVALID;
  return mb_vam_lock(m->vam, gpa, size, writable, out);
}

void mb_mapper_unlock(mb_lock *lock) { mb_vam_unlock(lock); }
void *mb_lock_ptr(const mb_lock *lock) { return mb_vam_lock_ptr(lock); }
uint64_t mb_lock_gpa(const mb_lock *lock) { return mb_vam_lock_gpa(lock); }
uint64_t mb_lock_size(const mb_lock *lock) { return mb_vam_lock_size(lock); }

int mb_mapper_locks(mb_mapper *m, mb_lock_list **out) {
  mb_vam_lock_info *info;
  size_t n, waiting;
  int rc = mb_vam_locks(m->vam, &info, &n, &waiting);
  if (rc != 0)
    return rc;
  mb_lock_list *l = malloc(sizeof *l + n * sizeof l->locks[0]);
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

void mb_mapper_lock_watchdog(mb_mapper *m, uint64_t threshold_ms, mb_log_fn log, void *ctx) {
  mb_vam_set_watchdog(m->vam, threshold_ms, log, ctx);
}
