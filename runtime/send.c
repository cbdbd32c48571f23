/* send.c: sending, requests and replies, routing to the receiver's loop, and what happens to
 * messages nobody can take. */
#include <stdlib.h>

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

int mb__route_status(mb_msg *m);

void mb__route(mb_msg *m) { (void)mb__route_status(m); }

int mb__route_status(mb_msg *m) {
  mb_loop *l = m->to.loop;
  if (!l) {
    mb__undeliverable(NULL, m, MB_EGONE);
    return MB_EGONE;
  }
  if (l == mb__tls_loop) {
    mb_actor *a = mb__actor_lookup(l, m->to);
    if (!a) {
      mb__undeliverable(l, m, l->stopping ? MB_ESTOPPED : MB_EGONE);
      return MB_EGONE;
    }
    mb__actor_deliver(a, m);
    return MB_OK;
  }
  int rc = mb__loop_push(l, m);
  if (rc) mb__undeliverable(NULL, m, rc);
  return rc;
}

static void drop(mb_loop *here, mb_msg *m) {
  if (here) here->stats.dropped++;
  MB__TRACE("drop", m);
  if (m->proto && m->proto->dispose) m->proto->dispose(m);
  mb__msg_release(m);
}

/* `here` is the loop whose thread runs this and which owns m->to, or NULL. */
void mb__undeliverable(mb_loop *here, mb_msg *m, int err) {
  if (m->flags__ & MB__F_REPLY) {
    if (here) mb__calls_release(here, m->corr);
    drop(here, m);
  } else if (mb_msg_is_request(m)) {
    if (here) here->stats.bounced++;
    mb__bounce(m, err);
  } else {
    drop(here, m);
  }
}

static void reply_route(mb_msg *m, int status) {
  m->status = status;
  m->flags__ |= MB__F_REPLY;
  MB__TRACE("reply", m);
  if (m->reply__) {
    mb__waiter_signal(m->reply__); /* the blocked caller owns m from here on */
    return;
  }
  mb_addr requester = m->from;
  m->from = m->to;
  m->to = requester;
  mb__route(m);
}

void mb__bounce(mb_msg *m, int err) { reply_route(m, err); }

void mb_reply(mb_msg *m, int status) {
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
  m->status = 0;
  m->t_deliver__ = 0;
  m->flags__ &= ~MB__F_REPLY;
}

int mb_send(mb_actor *self, mb_addr to, mb_msg *m) {
  prepare(m, mb_actor_addr(self), to, 0);
  MB__TRACE("send", m);
  return mb__route_status(m);
}

int mb_send_from(mb_addr to, mb_msg *m) {
  prepare(m, (mb_addr){0}, to, 0);
  MB__TRACE("send", m);
  return mb__route_status(m);
}

int mb_forward(mb_actor *self, mb_addr to, mb_msg *m) {
  (void)self;
  mb__consume(m);
  m->to = to;
  MB__TRACE("forward", m);
  return mb__route_status(m);
}

/* ---- calls -------------------------------------------------------------------------------- */

static uint32_t take_call(mb_loop *l) {
  if (l->free_call) {
    uint32_t i = l->free_call - 1;
    l->free_call = l->calls[i].next_free;
    return i;
  }
  if (l->ncalls == l->cap_calls) {
    uint32_t cap = l->cap_calls ? l->cap_calls * 2 : 64;
    mb__call *c = realloc(l->calls, cap * sizeof *c);
    if (!c) return UINT32_MAX;
    l->calls = c;
    l->cap_calls = cap;
  }
  l->calls[l->ncalls] = (mb__call){NULL, NULL, 1, 0};
  return l->ncalls++;
}

void mb_call(mb_actor *self, mb_addr to, mb_msg *m, mb_reply_fn cb, void *ctx) {
  mb_loop *l = self->loop;
  uint32_t i = take_call(l);
  if (i == UINT32_MAX) { /* no memory for the call record: the one exception, answered now */
    prepare(m, mb_actor_addr(self), mb_actor_addr(self), 0);
    m->status = MB_ENOMEM;
    m->flags__ |= MB__F_REPLY;
    run_reply_cb(self, m, cb, ctx);
    return;
  }
  mb__call *c = &l->calls[i];
  c->cb = cb;
  c->ctx = ctx;
  self->busy++;
  prepare(m, mb_actor_addr(self), to, (uint64_t)c->gen << 32 | (i + 1));
  MB__TRACE("call", m);
  mb__route(m);
}

void mb__calls_release(mb_loop *l, uint64_t corr) {
  uint32_t i = (uint32_t)corr - 1;
  if (i >= l->ncalls || l->calls[i].gen != (uint32_t)(corr >> 32)) return;
  mb__call *c = &l->calls[i];
  c->cb = NULL;
  c->gen++;
  c->next_free = l->free_call;
  l->free_call = i + 1;
}

void mb__dispatch_reply(mb_actor *a, mb_msg *m) {
  mb_loop *l = a->loop;
  uint32_t i = (uint32_t)m->corr - 1;
  if (i >= l->ncalls || l->calls[i].gen != (uint32_t)(m->corr >> 32)) {
    mb__msg_release(m);
    return;
  }
  mb_reply_fn cb = l->calls[i].cb;
  void *ctx = l->calls[i].ctx;
  mb__calls_release(l, m->corr);
  a->busy--;
  run_reply_cb(a, m, cb, ctx);
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
  MB__TRACE("call", m);
  mb__route(m);
  mb__waiter_wait(&w);
  m->reply__ = NULL;
  return m->status;
}

/* ---- messages arriving on a loop --------------------------------------------------------- */

void mb__sys_run(mb_loop *l, mb_msg *m) {
  mb__sys *s = (mb__sys *)m;
  mb__waiter *w = s->waiter;
  s->fn(l, s->arg);
  mb__msg_release(m);
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
  int rc = mb__loop_push(l, &s->hdr);
  if (rc) mb__msg_release(&s->hdr);
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
