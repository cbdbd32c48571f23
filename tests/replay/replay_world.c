/* replay_world.c: the world a scenario runs in: the client loop, the loops of the layout, the
 * memory manager, and the name tables; its set-up and its teardown. */
#include <stdlib.h>
#include <string.h>

#include "replay.h"

/* ---- started loops ------------------------------------------------------------------------- */

static int started_push(replay_world *w, mb_loop *loop) {
  if (w->nstarted == w->capstarted) {
    size_t cap = w->capstarted ? 2 * w->capstarted : 8;
    mb_loop **p = realloc(w->started, cap * sizeof *p);
    if (!p) return MB_ENOMEM;
    w->started = p;
    w->capstarted = cap;
  }
  w->started[w->nstarted++] = loop;
  return 0;
}

static mb_loop *loop_start(replay_world *w, const char *name, int *err) {
  mb_loop *loop = mb_loop_start_flags(name, MB_LOOP_LEND, err);
  if (loop && (*err = started_push(w, loop))) {
    mb_loop_stop(loop);
    mb_loop_free(loop);
    loop = NULL;
  }
  return loop;
}

mb_loop *replay_loop_new(replay_world *w, const char *what, const char *name, int *err) {
  *err = 0;
  if (w->layout == REPLAY_SINGLE) return NULL;
  char label[SCENARIO_NAME_SIZE + 16];
  snprintf(label, sizeof label, "%s %s", what, name);
  return loop_start(w, label, err);
}

void replay_loop_free(replay_world *w, mb_loop *loop) {
  if (!loop) return;
  for (size_t i = 0; i < w->nstarted; i++) {
    if (w->started[i] == loop) {
      w->started[i] = w->started[--w->nstarted];
      break;
    }
  }
  mb_loop_stop(loop);
  mb_loop_free(loop);
}

/* ---- names --------------------------------------------------------------------------------- */

replay_entry *replay_name_lookup(replay_world *w, replay_ns ns, const char *name) {
  replay_table *t = &w->tables[ns];
  for (size_t i = 0; i < t->n; i++)
    if (!t->items[i]->shadowed && strcmp(t->items[i]->name, name) == 0) return t->items[i];
  return NULL;
}

/* Room for one more entry; false when out of memory. */
static bool table_room(replay_table *t) {
  if (t->n < t->cap) return true;
  size_t cap = t->cap ? 2 * t->cap : 16;
  replay_entry **p = realloc(t->items, cap * sizeof *p);
  if (!p) return false;
  t->items = p;
  t->cap = cap;
  return true;
}

replay_entry *replay_name_add(replay_world *w, replay_ns ns, const char *name) {
  replay_table *t = &w->tables[ns];
  if (!table_room(t)) return NULL;
  replay_entry *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  /* Only under --fault-check (the parser refuses it otherwise): the old one's remove failed.
   * It stays in the table, unnamed, as the manager keeps it. */
  replay_entry *old = replay_name_lookup(w, ns, name);
  if (old) old->shadowed = true;
  snprintf(e->name, sizeof e->name, "%s", name);
  e->refs = 1;
  e->live = true;
  t->items[t->n++] = e;
  return e;
}

void replay_name_remove(replay_world *w, replay_ns ns, replay_entry *e) {
  replay_table *t = &w->tables[ns];
  if (!e->live) return;
  for (size_t i = 0; i < t->n; i++) {
    if (t->items[i] == e) {
      t->items[i] = t->items[--t->n];
      break;
    }
  }
  e->live = false;
  replay_entry_unref(w, e);
}

replay_entry *replay_name_restore(replay_world *w, replay_ns ns, replay_entry *e) {
  replay_table *t = &w->tables[ns];
  if (e->live) return e;
  if (!table_room(t)) return NULL;
  e->live = true;
  t->items[t->n++] = replay_entry_ref(e);
  return e;
}

replay_entry *replay_entry_ref(replay_entry *e) {
  if (e) e->refs++;
  return e;
}

/* The last reference goes once the thing is gone from the manager (removed, or the manager
 * destroyed): its loop can stop. */
void replay_entry_unref(replay_world *w, replay_entry *e) {
  if (!e || --e->refs > 0) return;
  mb_mapper_unlock(e->lock); /* NULL unless the world goes with the lock held */
  replay_entry_unref(w, e->owner);
  mb_object_unref(e->object);
  replay_loop_free(w, e->loop);
  free(e);
}

static void tables_clear(replay_world *w) {
  for (int ns = 0; ns < REPLAY_NS_COUNT; ns++) {
    replay_table *t = &w->tables[ns];
    while (t->n > 0) replay_name_remove(w, (replay_ns)ns, t->items[t->n - 1]);
    free(t->items);
    t->items = NULL;
    t->cap = 0;
  }
}

/* ---- set-up ---------------------------------------------------------------------------------- */

static int init_loops(replay_world *w, char *msg, size_t msglen) {
  int err = uv_loop_init(&w->uv);
  if (err) {
    snprintf(msg, msglen, "uv_loop_init: %s", uv_strerror(err));
    return err;
  }
  w->uv_live = true;
  w->client = mb_loop_attach(&w->uv, "client", &err);
  if (!err) err = replay_stall_timer_init(w);
  if (err) {
    snprintf(msg, msglen, "attaching the client loop: %s", membacking_strerror(err));
    return err;
  }
  if (w->layout == REPLAY_SINGLE) {
    w->mgr_loop = w->part_loop = w->client;
    return 0;
  }
  w->mgr_loop = loop_start(w, "managers", &err);
  if (w->mgr_loop) w->part_loop = loop_start(w, "partition va", &err);
  if (err) snprintf(msg, msglen, "starting a loop: %s", membacking_strerror(err));
  return err;
}

int replay_world_init(replay_world *w, const scenario *sc, const replay_config *cfg, char *msg,
                      size_t msglen) {
  memset(w, 0, sizeof *w);
  w->sc = sc;
  w->layout = cfg->layout;
  w->kvm_partitions = cfg->kvm_partitions;
  int err = init_loops(w, msg, msglen);
  if (err) return err;
  mb_mm_config mm_cfg = {
      .max_addr = sc->max_addr,
      .overlap = sc->overlap == SCENARIO_OVERLAP_ANY ? MB_OVERLAP_ANY : MB_OVERLAP_NESTED,
      .loop = w->mgr_loop,
      .part_loop = w->part_loop,
      .vtls = sc->vtls,
      .vtl0_alias = sc->vtl0_alias,
  };
  err = mb_mm_create(&mm_cfg, &w->mm);
  if (err) snprintf(msg, msglen, "mb_mm_create: %s", membacking_strerror(err));
  return err;
}

/* ---- teardown ---------------------------------------------------------------------------------- */

/* Let every operation still in flight (async, never awaited) finish, unless nothing can make
 * it finish any more. */
static void drain(replay_world *w) {
  for (replay_op *op = w->ops; op; op = op->next)
    if (replay_wait(w, op) != 0) return;
}

void replay_locks_release(replay_world *w) {
  replay_table *t = &w->tables[REPLAY_NS_LOCK];
  while (t->n > 0) {
    replay_entry *e = t->items[t->n - 1];
    mb_mapper_unlock(e->lock);
    e->lock = NULL;
    replay_name_remove(w, REPLAY_NS_LOCK, e);
  }
}

/* Locks go first: what waits for one can then finish, and no lock outlives its mapper. After
 * the manager is gone: the client loop first (nothing may post to it once it stopped but the
 * loops below, whose posts then fail harmlessly), then the operations and the names they
 * hold, then the loops of the layout. */
int replay_world_fini(replay_world *w) {
  if (w->client && w->mm) {
    replay_locks_release(w); /* what waits for them can finish */
    drain(w);
    replay_locks_release(w); /* taken by what just finished */
    if (w->fault) replay_fault_unawaited(w);
  }
  mb_mm_destroy(w->mm);
  w->mm = NULL;
  if (w->client) replay_settle(w);
  replay_txn_fini(w);
  tables_clear(w);
  replay_stall_timer_close(w);
  if (w->client) {
    replay_worker_quiet();
    mb_loop_stop(w->client);
    mb_loop_free(w->client);
    w->client = NULL;
  }
  while (w->ops) replay_op_free(w->ops);
  while (w->nstarted > 0) replay_loop_free(w, w->started[w->nstarted - 1]);
  free(w->started);
  if (!w->uv_live) return 0;
  uv_run(&w->uv, UV_RUN_DEFAULT); /* the close callbacks of the client loop's handles */
  return uv_loop_close(&w->uv) == 0 ? 0 : -1;
}
