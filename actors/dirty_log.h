/* dirty_log.h: a manager's dirty-page tracking as its users' threads see it (spec/scenario.md,
 * "Dirty-page tracking"). Internal.
 *
 * The manager's one set of dirty pages (mem/dirty_set.h) is made by the region manager at the
 * first `dirty start` and lives as long as the manager: a writer on any thread may still hold
 * it after a stop, so it is never freed before mb_mm_destroy. While tracking is on it is
 * published here: writes through VA mappers mark it (after the bytes are in memory), and so do
 * writable locks, which are registered here while they are held, tracking on or off:
 *   - a sync marks every held page of its range before it takes the range, so every sync
 *     answers them while they are held;
 *   - an unlock marks the lock's pages once more (they are dirty "at its unlock").
 * Partitions mark the set themselves (their backends, from PM_DIRTY_START on).
 *
 * Invariant: a page written while `set` is published is marked after its write; a write racing
 * a start or a stop may or may not be counted (a start forgets what came before it). */
#ifndef MB_DIRTY_LOG_H
#define MB_DIRTY_LOG_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "dirty_set.h"

/* A writable lock's registration (lives in the lock). */
typedef struct mb_dirty_hold {
  struct mb_dirty_hold *prev, *next;
  uint64_t gpa, size;
} mb_dirty_hold;

typedef struct mb_dirty_log {
  _Atomic(mb_dirty_set *) on; /* the set while tracking is on, else NULL */
  mb_dirty_set *set;          /* made at the first start (region manager's thread) */
  pthread_mutex_t lock;       /* guards holds */
  mb_dirty_hold holds;        /* the writable locks held: a ring through this head */
} mb_dirty_log;

void mb__dirty_log_init(mb_dirty_log *l);
void mb__dirty_log_fini(mb_dirty_log *l); /* frees the set: nobody may use it any more */

/* Any thread: marks the pages [gpa, gpa + len) touches, if tracking is on. */
void mb__dirty_mark(mb_dirty_log *l, uint64_t gpa, uint64_t len);
/* Any thread: a writable lock on [gpa, gpa + size) is taken (h is the lock's), or released
 * (marking its pages when tracking is on). */
void mb__dirty_hold(mb_dirty_log *l, mb_dirty_hold *h, uint64_t gpa, uint64_t size);
void mb__dirty_release(mb_dirty_log *l, mb_dirty_hold *h);
/* The syncer: marks the held pages inside [gpa, gpa + size). */
void mb__dirty_mark_held(mb_dirty_log *l, mb_dirty_set *s, uint64_t gpa, uint64_t size);

#endif
