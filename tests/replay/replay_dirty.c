/* replay_dirty.c: dirty-page tracking (spec "Dirty-page tracking"). `dirty start`, `dirty stop`
 * and `dirty sync` go to the library (mb_dirty_start, mb_dirty_stop, mb_dirty_sync_ranges),
 * which answers every rule of the section itself: start while on, sync or stop while off, a
 * sync range that is unaligned, empty, wraps or ends past max_addr (error:invalid). They are
 * region-manager requests, so they queue behind an operation that waits, as the format says,
 * and are allowed inside a transaction. A sync's answer, a malloc'd mb_range_list, is the op's
 * `ranges` (freed with the op) and is compared with `=> PAGES` by replay_check.c. */
#include "replay.h"

static void apply_sync(replay_op *op) {
  if (op->status == 0) op->ranges = (mb_range_list *)(uintptr_t)op->value;
}

void replay_dirty_start(replay_world *w, replay_op *op) {
  mb_dirty_start(w->mm, replay_op_done, op);
}

void replay_dirty_stop(replay_world *w, replay_op *op) {
  mb_dirty_stop(w->mm, replay_op_done, op);
}

void replay_dirty_sync(replay_world *w, replay_op *op) {
  const scenario_dirty *d = &op->cmd->dirty;
  op->apply = apply_sync;
  mb_dirty_sync_ranges(w->mm, d->gpa, d->size, replay_op_done, op);
}
