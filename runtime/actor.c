/* actor.c: actor slots (addresses that outlive actors), creation, destruction and a turn of
 * one actor, including the hold-back of a serialized actor. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mb_hot.h"
#include "fault_inject.h" /* MB_FI_ALLOC: tests fail the runtime's allocations */
#include "internal.h"

#define NO_SLOT UINT32_MAX

static int grow_slots(mb_loop *l) {
  uint32_t cap = l->cap_slots ? l->cap_slots * 2 : 16;
  mb__slot *s = mb__realloc(l->slots, cap * sizeof *s);
  if (!s) return MB_ENOMEM;
  l->slots = s;
  l->cap_slots = cap;
  return MB_OK;
}

static uint32_t take_slot(mb_loop *l) {
  if (l->free_slot != NO_SLOT && l->nslots) {
    uint32_t i = l->free_slot;
    l->free_slot = l->slots[i].next_free;
    return i;
  }
  if (l->nslots == l->cap_slots && grow_slots(l)) return NO_SLOT;
  l->slots[l->nslots] = (mb__slot){NULL, 1, NO_SLOT};
  return l->nslots++;
}

mb_actor *mb_actor_create(mb_loop *l, const mb_actor_type *type, void *state, const char *name) {
  if (!l || !type || !type->handle || !mb_loop_is_current(l) || l->stopping) return NULL;
  if (!l->nslots) l->free_slot = NO_SLOT;
  mb_actor *a = mb__calloc(1, sizeof *a);
  uint32_t i = a ? take_slot(l) : NO_SLOT;
  if (i == NO_SLOT) {
    free(a);
    return NULL;
  }
  a->loop = l;
  a->type = type;
  a->handle = type->handle;
  a->serialized = (type->flags & MB_ACTOR_SERIALIZED) != 0;
  a->prompt = (type->flags & MB_ACTOR_PROMPT_REPLIES) != 0;
  a->state = state;
  a->slot = i;
  a->gen = l->slots[i].gen;
  snprintf(a->name, sizeof a->name, "%s", name ? name : type->name);
  l->slots[i].actor = a;
  l->stats.actors++;
  mb__loop_keepalive(l);
  return a;
}

static void drain_undeliverable(mb_loop *l, mb__queue *q) {
  mb_msg *m;
  while ((m = mb__queue_pop(q))) mb__undeliverable(l, m, l->stopping ? MB_ESTOPPED : MB_EGONE);
}

void mb_actor_destroy(mb_actor *a) {
  if (!a || a->dead) return;
  mb_loop *l = a->loop;
  a->dead = true;
  mb__slot *s = &l->slots[a->slot];
  s->actor = NULL;
  s->gen++;
  s->next_free = l->free_slot;
  l->free_slot = a->slot;
  l->stats.actors--;
  mb__loop_keepalive(l);
  if (l->loop_actor == a) l->loop_actor = NULL;
  drain_undeliverable(l, &a->held);
  drain_undeliverable(l, &a->queue);
  if (a->type->destroy) a->type->destroy(a);
  free(a->lat);
  a->lat = NULL;
  a->nlat = 0;
  if (!a->running && !a->ready) free(a); /* else the turn that holds it frees it */
}

void mb__actor_destroy_all(mb_loop *l) {
  for (uint32_t i = 0; i < l->nslots; i++)
    if (l->slots[i].actor) mb_actor_destroy(l->slots[i].actor);
}

static bool serialized_busy(const mb_actor *a) { return a->serialized && a->busy > 0; }

/* The next message this actor may handle now: replies always; others in order, and only
 * when a serialized actor is not in the middle of an operation. */
static mb_msg *next_message_slow(mb_actor *a) {
  if (!serialized_busy(a)) {
    mb__queue *q = a->held.head ? &a->held : &a->queue;
    return mb__queue_pop(q);
  }
  mb_msg *m;
  while ((m = mb__queue_pop(&a->queue))) {
    if (m->flags__ & MB__F_REPLY) return m;
    mb__queue_push(&a->held, m);
  }
  return NULL;
}

static inline mb_msg *next_message(mb_actor *a) {
  mb_msg *m = a->queue.head;
  if (__builtin_expect(a->held.head != NULL || (m && serialized_busy(a)), 0))
    return next_message_slow(a);
  if (m && !(a->queue.head = m->qnext__)) a->queue.tail = NULL;
  return m;
}

static bool runnable(const mb_actor *a) {
  return a->queue.head || (a->held.head && !serialized_busy(a));
}

MB_HOT void mb__actor_done_busy(mb_actor *a) {
  if (!a->dead && runnable(a)) mb__loop_make_ready(a->loop, a);
}

void mb_actor_hold(mb_actor *self) { self->busy++; }

void mb_actor_release(mb_actor *self) {
  if (self->busy && --self->busy == 0) mb__actor_done_busy(self);
}

MB_HOT static void handle_one(mb_actor *a, mb_msg *m) {
  mb_loop *l = a->loop;
  l->stats.delivered++;
  MB__TRACE(DELIVER, m);
  if (m->flags__ & MB__F_REPLY) {
    mb__dispatch_reply(a, m);
    return;
  }
  if (__builtin_expect(a->timing, 0) && mb_msg_is_request(m) &&
      (a->timed++ & (MB_LATENCY_SAMPLE - 1)) == 0)
    m->t_deliver__ = mb__now_ns();
  l->cur = m;
  l->cur_taken = false;
  a->handle(a, m);
  l->cur = NULL;
  if (!l->cur_taken) mb__finish_delivery(a, m);
  l->cur_taken = false;
}

/* Prompt replies (MB_ACTOR_PROMPT_REPLIES). Invariant: a reply runs inside its sender's
 * handler only for an actor of the turn's own loop that is idle (not running, not on the
 * ready list, nothing queued, so its order of messages cannot change), in the owner's turn
 * (a borrowed one runs lendable handlers only) and at most PROMPT_DEPTH deep; the actor
 * counts as running meanwhile, so nothing reenters it and its destruction waits. */
enum { PROMPT_DEPTH = 4 };

MB_HOT bool mb__actor_reply_now(mb_actor *a, mb_msg *m) {
  mb_loop *l = a->loop;
  if (a->running || a->ready || a->queue.head || !l->in_turn || l->lent ||
      l->prompt_depth >= PROMPT_DEPTH)
    return false;
  l->prompt_depth++;
  a->running = true;
  handle_one(a, m); /* a reply: its callback, with the outer message kept (run_reply_cb) */
  a->running = false;
  l->prompt_depth--;
  if (a->dead && !a->ready) free(a);
  return true;
}

MB_HOT uint32_t mb__actor_run(mb_actor *a) {
  if (a->dead) {
    free(a);
    return 0;
  }
  a->running = true;
  mb_msg *m;
  uint32_t n = 0;
  while ((m = next_message(a))) {
    handle_one(a, m);
    if (++n == MB_BATCH || a->dead) break;
  }
  a->running = false;
  if (a->dead) {
    if (!a->ready) free(a); /* else popping it from the ready list frees it */
  } else if (runnable(a)) {
    mb__loop_make_ready(a->loop, a);
  }
  return n;
}

mb_actor *mb_actor_at(mb_loop *l, mb_addr addr) {
  return l && addr.loop == l && mb_loop_is_current(l) ? mb__actor_lookup(l, addr) : NULL;
}

mb_addr mb_actor_addr(const mb_actor *a) {
  return a ? (mb_addr){a->loop, a->slot, a->gen} : (mb_addr){NULL, 0, 0};
}
void *mb_actor_state(const mb_actor *a) { return a->state; }
mb_loop *mb_actor_loop(const mb_actor *a) { return a->loop; }
const char *mb_actor_name(const mb_actor *a) { return a->name; }
