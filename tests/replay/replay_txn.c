/* replay_txn.c: transactions (spec "Transactions"). `txn begin` and `txn commit` go to the
 * library (mb_txn_begin, mb_txn_commit), which refuses a commit outside a transaction and, inside
 * one, consumer commands and locks. The rules that concern the script's own sequencing are the
 * runner's: a begin inside a transaction, or while an async operation is not yet awaited, and
 * an async inside a transaction, are `error:invalid` without reaching the library (replay_exec.c
 * applies the last one). A label not yet awaited is the "pending" operation: whether an async
 * has completed is a matter of timing, whether it was awaited is not.
 *
 * The names follow the manager: a commit that fails returns it to the state of the begin, so
 * the region names defined inside the transaction go, and those removed come back. */
#include <stdlib.h>

#include "replay.h"

static bool table_push(replay_table *t, replay_entry *e) {
  if (t->n == t->cap) {
    size_t cap = t->cap ? 2 * t->cap : 8;
    replay_entry **p = realloc(t->items, cap * sizeof *p);
    if (!p) return false;
    t->items = p;
    t->cap = cap;
  }
  t->items[t->n++] = replay_entry_ref(e);
  return true;
}

static bool table_has(const replay_table *t, const replay_entry *e) {
  for (size_t i = 0; i < t->n; i++)
    if (t->items[i] == e) return true;
  return false;
}

static void table_clear(replay_world *w, replay_table *t) {
  for (size_t i = 0; i < t->n; i++) replay_entry_unref(w, t->items[i]);
  free(t->items);
  *t = (replay_table){NULL, 0, 0};
}

/* Out of memory, the name is not kept: a commit that fails would then leave it as it is. */
void replay_txn_note(replay_world *w, replay_entry *e, bool added) {
  if (w->txn.open) (void)table_push(added ? &w->txn.added : &w->txn.removed, e);
}

void replay_txn_fini(replay_world *w) {
  table_clear(w, &w->txn.added);
  table_clear(w, &w->txn.removed);
  w->txn.open = false;
}

/* The names of the state at the begin: those defined inside go, those removed come back. */
static void names_roll_back(replay_world *w) {
  replay_txn *t = &w->txn;
  for (size_t i = 0; i < t->added.n; i++) replay_name_remove(w, REPLAY_NS_REGION, t->added.items[i]);
  for (size_t i = 0; i < t->removed.n; i++)
    if (!table_has(&t->added, t->removed.items[i]))
      (void)replay_name_restore(w, REPLAY_NS_REGION, t->removed.items[i]);
}

static bool async_pending(const replay_world *w, const replay_op *self) {
  for (const replay_op *o = w->ops; o; o = o->next)
    if (o != self && o->label) return true;
  return false;
}

static void apply_begin(replay_op *op) {
  if (op->status != 0) op->w->txn.open = false;
}

/* Open from the moment it is issued, as the library's consumer commands see it. */
void replay_txn_begin(replay_world *w, replay_op *op) {
  if (w->txn.open || async_pending(w, op)) {
    replay_op_done(op, MB_E_INVALID, 0);
    return;
  }
  w->txn.open = true;
  w->txn.line = op->cmd->line;
  op->apply = apply_begin;
  mb_txn_begin(w->mm, replay_op_done, op);
}

/* A commit ends the transaction whatever it answers: a failed one rolled it back. */
static void apply_commit(replay_op *op) {
  replay_world *w = op->w;
  if (!w->txn.open) return; /* no transaction: the library answered invalid */
  if (op->status != 0) names_roll_back(w);
  replay_txn_fini(w);
}

void replay_txn_commit(replay_world *w, replay_op *op) {
  op->apply = apply_commit;
  mb_txn_commit(w->mm, replay_op_done, op);
}
