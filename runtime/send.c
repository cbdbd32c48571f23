/* send.c: sending, requests and replies, routing to the receiver's loop, and what happens to
 * messages nobody can take. */
#include <stdlib.h>

#include "mb_hot.h"
#include "internal.h"

typedef struct mb__sys {
  mb_msg hdr;
  mb_exec_fn fn;
  void *arg;
  mb__waiter *waiter;
} mb__sys;

static _Atomic uint64_t sync_corr = 1;

static void run_reply_cb(mb_actor *a, mb_msg *m, mb_reply_fn cb, void *ctx) {
  mb_loop *l = a->loop;
  mb_msg *outer = l->cur;
  bool outer_taken = l->cur_taken;
  l->cur = m;
  l->cur_taken = false;
  cb(a, m, ctx);
  if (!l->cur_taken) mb__msg_release(m);
  l->cur = outer;
  l->cur_taken = outer_taken;
}

/* Delivery anywhere but to a live actor of the calling thread's loop. */
static int route_slow(mb_msg *m) {
  mb_loop *l = m->to.loop;
  if (!l) {
    mb__undeliverable(NULL, m, MB_EGONE);
    return MB_EGONE;
  }
  if (l == mb__tls_loop) {
    mb__undeliverable(l, m, l->stopping ? MB_ESTOPPED : MB_EGONE);
    return MB_EGONE;
  }
  int rc = mb__loop_push(l, m);
  if (rc) mb__undeliverable(NULL, m, rc);
  return rc;
}

static inline int route(mb_msg *m) {
  mb_loop *l = m->to.loop;
  mb_actor *a = l && l == mb__tls_loop ? mb__actor_lookup(l, m->to) : NULL;
  if (!a) return route_slow(m);
  if (a->prompt && (m->flags__ & MB__F_REPLY) && mb__actor_reply_now(a, m)) return MB_OK;
  mb__actor_deliver(a, m);
  return MB_OK;
}

void mb__route(mb_msg *m) { (void)route(m); }

static void drop(mb_loop *here, mb_msg *m) {
  if (here) here->stats.dropped++;
  if (here && (m->flags__ & MB__F_REPLY) && m->cb__ && m->to.loop == here)
    mb__loop_calls(here, -1); /* the answer to a call whose caller is gone */
  MB__TRACE(DROP, m);
  if (m->proto && m->proto->dispose) m->proto->dispose(m);
  mb__msg_release(m);
}

/* `here` is the loop whose thread runs this and which owns m->to, or NULL. */
void mb__undeliverable(mb_loop *here, mb_msg *m, int err) {
  if (m->flags__ & MB__F_REPLY) {
    drop(here, m);
  } else if (mb_msg_is_request(m)) {
    if (here) here->stats.bounced++;
    mb__bounce(m, err);
  } else {
    drop(here, m);
  }
}

MB_HOT static void reply_route(mb_msg *m, int status) {
  m->status = status;
  m->flags__ |= MB__F_REPLY;
  MB__TRACE(REPLY, m);
  if (!m->cb__ && m->reply__) {
    mb__waiter_signal(m->reply__); /* the blocked caller owns m from here on */
    return;
  }
  mb_addr requester = m->from;
  m->from = m->to;
  m->to = requester;
  (void)route(m);
}

void mb__bounce(mb_msg *m, int err) { reply_route(m, err); }

MB_HOT void mb_reply(mb_msg *m, int status) {
  mb__consume(m);
  if (!mb_msg_is_request(m) || (m->flags__ & MB__F_REPLY)) {
    mb__msg_release(m);
    return;
  }
  if (m->t_deliver__) mb__latency_record(m);
  reply_route(m, status);
}

static void prepare(mb_msg *m, mb_addr from, mb_addr to, uint64_t corr) {
  mb__consume(m);
  m->from = from;
  m->to = to;
  m->corr = corr;
  m->reply__ = NULL;
  m->cb__ = NULL;
  m->status = 0;
  m->t_deliver__ = 0;
  m->flags__ &= ~MB__F_REPLY;
}

int mb_send(mb_actor *self, mb_addr to, mb_msg *m) {
  prepare(m, (mb_addr){self->loop, self->slot, self->gen}, to, 0);
  MB__TRACE(SEND, m);
  return route(m);
}

int mb_send_from(mb_addr to, mb_msg *m) {
  prepare(m, (mb_addr){0}, to, 0);
  MB__TRACE(SEND, m);
  return route(m);
}

int mb_forward(mb_actor *self, mb_addr to, mb_msg *m) {
  (void)self;
  mb__consume(m);
  m->to = to;
  MB__TRACE(FORWARD, m);
  return route(m);
}

/* ---- calls -------------------------------------------------------------------------------- */

/* The reply callback and its context travel in the request (cb__, reply__): the same message
 * comes back, so a call needs no record on the caller's side. A reply whose caller is gone
 * finds no actor at its address and is dropped. corr: the caller's slot + 1 above bit 40, its
 * call count below (nonzero; distinct between the actors of a loop; sync calls set bit 63). */
MB_HOT void mb_call(mb_actor *self, mb_addr to, mb_msg *m, mb_reply_fn cb, void *ctx) {
  uint64_t corr = (uint64_t)(self->slot + 1) << 40 | (++self->corr & ((1ull << 40) - 1));
  prepare(m, (mb_addr){self->loop, self->slot, self->gen}, to, corr);
  m->cb__ = cb;
  m->reply__ = ctx;
  self->busy++;
  mb__loop_calls(self->loop, +1);
  MB__TRACE(CALL, m);
  (void)route(m);
}

void mb__dispatch_reply(mb_actor *a, mb_msg *m) {
  mb_reply_fn cb = m->cb__;
  if (!cb) { /* not an answer to a call of ours (a forged reply flag): nothing waits for it */
    mb__msg_release(m);
    return;
  }
  a->busy--;
  mb__loop_calls(a->loop, -1);
  run_reply_cb(a, m, cb, m->reply__);
  mb__actor_done_busy(a);
}

/* A handler returned without handing its message on: a request gets MB_ENOREPLY. */
void mb__finish_delivery(mb_actor *self, mb_msg *m) {
  (void)self;
  if (mb_msg_is_request(m)) mb__bounce(m, MB_ENOREPLY);
  else mb__msg_release(m);
}

int mb_call_sync(mb_addr to, mb_msg *m) {
  if (to.loop && mb_loop_is_current(to.loop)) return MB_EDEADLK;
  mb__waiter w = {0};
  prepare(m, (mb_addr){0}, to, atomic_fetch_add(&sync_corr, 1) | (1ull << 63));
  m->reply__ = &w;
  MB__TRACE(CALL, m);
  mb__route(m);
  mb__waiter_wait(&w);
  m->reply__ = NULL;
  return m->status;
}

/* ---- messages arriving on a loop --------------------------------------------------------- */

void mb__sys_run(mb_loop *l, mb_msg *m) {
  mb__sys *s = (mb__sys *)m;
  mb__waiter *w = s->waiter;
  bool held = (m->flags__ & MB__F_HELD) != 0;
  s->fn(l, s->arg);
  mb__msg_release(m);
  if (held) mb_loop_unref(l);
  if (w) mb__waiter_signal(w);
}

void mb__receive(mb_loop *l, mb_msg *m) {
  if (m->flags__ & MB__F_SYS) {
    mb__sys_run(l, m);
  } else if (m->flags__ & MB__F_STOP) {
    mb__msg_release(m);
    mb__loop_shutdown(l);
  } else {
    mb_actor *a = mb__actor_lookup(l, m->to);
    if (a) mb__actor_deliver(a, m);
    else mb__undeliverable(l, m, l->stopping ? MB_ESTOPPED : MB_EGONE);
  }
}

static int post(mb_loop *l, mb_exec_fn fn, void *arg, mb__waiter *w) {
  mb__sys *s = (mb__sys *)mb_msg_new(NULL, 0, sizeof *s);
  if (!s) return MB_ENOMEM;
  s->hdr.flags__ = MB__F_SYS;
  s->fn = fn;
  s->arg = arg;
  s->waiter = w;
  /* A closure an attached loop's own thread posts to it is work in flight, as a libuv
   * request is: it keeps the VMM's uv_run going until it has run (mb_loop_ref). */
  bool held = mb_loop_is_current(l) && !mb_loop_is_lent(l);
  if (held) {
    s->hdr.flags__ |= MB__F_HELD;
    mb_loop_ref(l);
  }
  int rc = mb__loop_push(l, &s->hdr);
  if (rc) {
    if (held) mb_loop_unref(l);
    mb__msg_release(&s->hdr);
  }
  return rc;
}

int mb_loop_post(mb_loop *l, mb_exec_fn fn, void *arg) {
  if (!l || !fn) return MB_EINVAL;
  return post(l, fn, arg, NULL);
}

int mb_loop_exec(mb_loop *l, mb_exec_fn fn, void *arg) {
  if (!l || !fn) return MB_EINVAL;
  if (mb_loop_is_current(l)) {
    fn(l, arg);
    return MB_OK;
  }
  mb__waiter w = {0};
  int rc = post(l, fn, arg, &w);
  if (!rc) mb__waiter_wait(&w);
  return rc;
}
