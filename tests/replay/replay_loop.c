/* replay_loop.c: waiting. The main thread pumps the client loop until an operation completed,
 * and decides, without any timing, when no actor has work left (quiescence): for
 * `expect pending`, for teardown, and to tell a wait that can never end from a slow one. */
#include <stdlib.h>
#include <string.h>

#include "replay.h"

/* How often a long wait checks for quiescence. Only when the check happens depends on it,
 * never its answer. */
enum { STALL_CHECK_MS = 250 };

static void on_stall_timer(uv_timer_t *t) {
  replay_world *w = t->data;
  w->stall_check = true;
}

int replay_stall_timer_init(replay_world *w) {
  int err = uv_timer_init(&w->uv, &w->stall_timer);
  if (err) return err;
  w->stall_timer.data = w;
  w->timer_live = true;
  return uv_timer_start(&w->stall_timer, on_stall_timer, STALL_CHECK_MS, STALL_CHECK_MS);
}

void replay_stall_timer_close(replay_world *w) {
  if (!w->timer_live) return;
  uv_timer_stop(&w->stall_timer);
  uv_close((uv_handle_t *)&w->stall_timer, NULL);
  w->timer_live = false;
}

int replay_wait(replay_world *w, replay_op *op) {
  while (!replay_op_is_done(op)) {
    if (w->stall_check) {
      w->stall_check = false;
      replay_settle(w);
      if (!replay_op_is_done(op)) return -1;
      continue;
    }
    w->quiet = false;
    uv_run(&w->uv, UV_RUN_ONCE);
  }
  return 0;
}

/* ---- quiescence ------------------------------------------------------------------------------ */

static uint64_t client_delivered(replay_world *w) {
  return mb_loop_stats_get(w->client).delivered;
}

/* Run the client loop without blocking until a pass changes nothing. */
static void pump_client(replay_world *w) {
  for (;;) {
    uint64_t delivered = client_delivered(w), completions = w->completions;
    uv_run(&w->uv, UV_RUN_NOWAIT);
    if (delivered == client_delivered(w) && completions == w->completions) return;
  }
}

/* A barrier through the loop's actor scheduling, not beside it: a request to the loop's own
 * actor, which answers nothing (the runtime bounces it with MB_ENOREPLY once it was handled).
 * It is handled after every message the loop had received before it, so the loop's delivered
 * count, read afterwards, includes them. It adds exactly one delivery. */
static bool barrier(mb_loop *loop) {
  mb_msg *m = mb_msg_new(NULL, 0, sizeof(mb_msg));
  int rc = m ? mb_call_sync(mb_actor_addr(mb_loop_actor(loop)), m) : MB_ENOMEM;
  mb_msg_free(m);
  if (rc == MB_ENOREPLY) return true;
  replay_runner_error("a barrier through a loop", rc); /* an injected failure, surely */
  return false;
}

static void delivered_here(mb_loop *loop, void *arg) {
  *(uint64_t *)arg = mb_loop_stats_get(loop).delivered;
}

/* A started loop's delivered count, read on it: mb_loop_stats_get from another thread cannot
 * say that it failed (it needs a message). False when the read failed. */
static bool delivered(mb_loop *loop, uint64_t *out) {
  int rc = mb_loop_exec(loop, delivered_here, out);
  replay_runner_error("reading a loop's statistics", rc);
  return rc == 0;
}

typedef struct counts {
  size_t n;
  uint64_t *v; /* client delivered, completions, then each started loop's delivered */
} counts;

static counts round_counts(replay_world *w) {
  while (!replay_worker_idle()) uv_run(&w->uv, UV_RUN_ONCE);
  pump_client(w);
  bool passed = true;
  for (size_t i = 0; i < w->nstarted; i++) passed &= barrier(w->started[i]);
  pump_client(w);
  counts c = {w->nstarted + 2, calloc(w->nstarted + 2, sizeof(uint64_t))};
  if (!c.v || !passed) { /* a round that proves nothing: the next one decides */
    free(c.v);
    return (counts){0, NULL};
  }
  c.v[0] = client_delivered(w);
  c.v[1] = w->completions;
  for (size_t i = 0; i < w->nstarted; i++) passed &= delivered(w->started[i], &c.v[i + 2]);
  if (!passed) {
    free(c.v);
    return (counts){0, NULL};
  }
  return c;
}

/* Nothing happened between two rounds but the second round's own barriers. */
static bool unchanged(const counts *prev, const counts *cur) {
  if (!prev->v || !cur->v || prev->n != cur->n) return false;
  if (prev->v[0] != cur->v[0] || prev->v[1] != cur->v[1]) return false;
  for (size_t i = 2; i < cur->n; i++)
    if (cur->v[i] != prev->v[i] + 1) return false;
  return true;
}

void replay_settle(replay_world *w) {
  counts prev = round_counts(w);
  for (;;) {
    counts cur = round_counts(w);
    bool done = unchanged(&prev, &cur);
    free(prev.v);
    prev = cur;
    if (done) break;
  }
  free(prev.v);
  w->quiet = true;
}
