/* internal.h: the runtime's private structures, shared by its files and nothing else. */
#ifndef MB_RUNTIME_INTERNAL_H
#define MB_RUNTIME_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "inbox.h"
#include "mb_protocol.h"
#include "mb_runtime.h"
#include <uv.h>

/* mb_msg.flags__ */
enum {
  MB__F_REPLY = 1u << 0,    /* travelling back to its requester */
  MB__F_SYS = 1u << 3,      /* runtime closure (mb_loop_exec/post), not an actor message */
  MB__F_STOP = 1u << 4,     /* the stop request of a started loop */
  MB__F_HELD = 1u << 5,     /* a closure an attached loop posted to itself: it keeps it alive */
};

/* A blocked non-loop thread waiting for one reply or one closure to finish. */
typedef struct mb__waiter {
  _Atomic uint32_t done;
} mb__waiter;
void mb__waiter_wait(mb__waiter *w);
void mb__waiter_signal(mb__waiter *w);

/* A simple intrusive FIFO of messages, owned by one loop thread. */
typedef struct mb__queue {
  mb_msg *head, *tail;
} mb__queue;
static inline void mb__queue_push(mb__queue *q, mb_msg *m) {
  m->qnext__ = NULL;
  if (q->tail) q->tail->qnext__ = m; else q->head = m;
  q->tail = m;
}
static inline mb_msg *mb__queue_pop(mb__queue *q) {
  mb_msg *m = q->head;
  if (m && !(q->head = m->qnext__)) q->tail = NULL;
  return m;
}

struct mb_actor {
  mb_loop *loop;
  const mb_actor_type *type;
  mb_handler_fn handle;  /* type->handle: each delivery reads the actor, not its type's page */
  void *state;
  uint32_t slot, gen;
  mb__queue queue;       /* delivered in order */
  mb__queue held;        /* non-replies set aside while a serialized actor is busy */
  uint32_t busy;         /* outstanding calls + holds */
  uint64_t corr;         /* calls made: numbers its correlation ids (send.c) */
  bool ready;            /* on the loop's ready list */
  bool running;          /* inside a handler: destruction is deferred */
  bool dead;
  bool serialized;       /* type->flags & MB_ACTOR_SERIALIZED */
  bool prompt;           /* type->flags & MB_ACTOR_PROMPT_REPLIES */
  bool timing;           /* record request latency (mb_actor_time_requests) */
  uint32_t timed;        /* requests seen while timing: one in MB_LATENCY_SAMPLE is timed */
  mb_latency *lat;       /* one per (protocol, kind) answered while timing */
  uint32_t nlat;
  mb_actor *ready_next;
  uint32_t trace_name;   /* trace.c: interned name index + 1 once known, 0 before */
  char name[48];
};

typedef struct mb__slot {
  mb_actor *actor; /* NULL when free */
  uint32_t gen;
  uint32_t next_free;
} mb__slot;

struct mb_loop {
  mb__inbox inbox;
  /* Senders from other threads: count << 1 | closed. A sender increments before it checks
   * closed and decrements after its push, so once closed is set and the count is zero no
   * push can reach the inbox any more. */
  _Alignas(64) _Atomic uint64_t senders;
  _Alignas(64) uv_loop_t *uv;
  uv_loop_t own_uv;
  bool owned;          /* started by the runtime (own thread, own uv loop) */
  bool lend;           /* MB_LOOP_LEND: set before the loop runs, read-only after */
  _Alignas(64) _Atomic uint32_t token; /* who runs the turn (loop.c, "Lending") */
  bool lent;           /* the turn running now is a borrower's */
  uint8_t prompt_depth; /* prompt replies running now, nested (actor.c) */
  _Atomic uint32_t linger_ns; /* mb_loop_set_linger */
  uint32_t linger_skip; /* turns left without lingering after fruitless ones */
  uint32_t linger_miss; /* fruitless lingers in a row */
  uv_thread_t thread;
  pthread_t tid;
  int efd;             /* eventfd: the one wake-up mechanism of this loop */
  uv_poll_t poll;
  uv_idle_t idle;      /* keeps uv_run from blocking while work is queued */
  int open_handles;
  bool idle_on;
  bool in_turn;
  bool crossed;        /* this turn received from or sent to another thread */
  bool stopping;
  bool stopped;
  bool free_pending;
  bool stop_after_turn; /* an attached loop's mb_loop_stop from inside a turn */
  uint32_t calls_out;   /* calls from this loop's actors awaiting replies, and mb_loop_refs */
  bool refd;            /* the wake-up handle keeps uv_run going (mb__loop_keepalive) */
  mb__slot *slots;
  uint32_t nslots, cap_slots, free_slot;
  mb_actor *ready_head, *ready_tail;
  mb_actor *loop_actor;
  mb_msg *cur;         /* message whose handler or reply callback is running */
  bool cur_taken;      /* ... and the handler handed it on (reply, send, keep, free) */
  int close_rc;        /* uv_loop_close() of a started loop */
  mb_loop_stats stats;
  uint32_t trace_name;   /* trace.c: interned name index + 1 once known, 0 before */
  mb__waiter started;
  int start_err;
  mb_msg *stop_msg;    /* a started loop's stop request, made with the loop */
  char name[32];
};

extern _Thread_local mb_loop *mb__tls_loop;

/* loop.c */
void mb__loop_kick(mb_loop *loop);               /* same thread: make sure a turn runs */
void mb__loop_keepalive(mb_loop *loop);          /* same thread: after actors come or go */
/* Same thread: calls out, +1 or -1. Only an attached loop's reference can change, and only
 * from none to one or back. */
static inline void mb__loop_calls(mb_loop *l, int delta) {
  l->calls_out += (uint32_t)delta;
  if (l->calls_out <= 1 && !l->owned)
    mb__loop_keepalive(l);
}
static inline void mb__loop_make_ready(mb_loop *l, mb_actor *a) { /* put on the ready list */
  if (a->ready) return;
  a->ready = true;
  a->ready_next = NULL;
  if (l->ready_tail) l->ready_tail->ready_next = a; else l->ready_head = a;
  l->ready_tail = a;
  if (!l->in_turn) mb__loop_kick(l);
}
int mb__loop_push(mb_loop *loop, mb_msg *m);     /* cross-thread enqueue; MB_ESTOPPED */
void mb__inbox_push_wake(mb_loop *loop, mb_msg *m);
void mb__loop_shutdown(mb_loop *loop);            /* on its thread, senders closed */
/* Any thread: copy a live loop's name (false for a loop that was freed or never made). */
bool mb__loop_name_copy(const mb_loop *loop, char out[32]);

/* actor.c */
/* The live actor at a on loop (its thread), or NULL. */
static inline mb_actor *mb__actor_lookup(mb_loop *l, mb_addr a) {
  if (a.slot >= l->nslots) return NULL;
  mb__slot *s = &l->slots[a.slot];
  return s->gen == a.gen ? s->actor : NULL;
}
static inline void mb__actor_deliver(mb_actor *a, mb_msg *m) { /* append, schedule */
  mb__queue_push(&a->queue, m);
  mb__loop_make_ready(a->loop, a);
}
uint32_t mb__actor_run(mb_actor *a); /* one turn: up to MB_BATCH messages; how many */
bool mb__actor_reply_now(mb_actor *a, mb_msg *m); /* a prompt reply, if a may take it now */
void mb__actor_destroy_all(mb_loop *loop);
void mb__actor_done_busy(mb_actor *a);

/* send.c */
void mb__route(mb_msg *m);                        /* deliver m to m->to from any thread */
void mb__receive(mb_loop *loop, mb_msg *m);       /* on loop's thread: m arrived */
void mb__bounce(mb_msg *m, int err);              /* answer a request with an error */
void mb__finish_delivery(mb_actor *self, mb_msg *m);
void mb__dispatch_reply(mb_actor *self, mb_msg *m);
void mb__sys_run(mb_loop *loop, mb_msg *m);
void mb__undeliverable(mb_loop *here, mb_msg *m, int err);
/* The handler of the current message handed it on: the runtime must not dispose of it. */
static inline void mb__consume(mb_msg *m) {
  mb_loop *l = mb__tls_loop;
  if (l && l->cur == m) l->cur_taken = true;
}

/* latency.c */
uint64_t mb__now_ns(void);
void mb__latency_record(mb_msg *m); /* in mb_reply, for a timed request */

/* msg.c */
void mb__msg_release(mb_msg *m);                  /* free memory, no reply semantics */

/* trace.c */
extern _Atomic bool mb__trace_on;
/* Trace events (the "ev" of a record). */
enum { MB__EV_SEND, MB__EV_CALL, MB__EV_FORWARD, MB__EV_REPLY, MB__EV_DELIVER, MB__EV_DROP };
void mb__trace_event(int ev, const mb_msg *m);
void mb__trace_env_init(void);
#define MB__TRACING() __builtin_expect(atomic_load_explicit(&mb__trace_on, memory_order_relaxed), 0)
#define MB__TRACE(EV, m)                                                                       \
  do {                                                                                         \
    if (MB__TRACING()) mb__trace_event(MB__EV_##EV, m);                                        \
  } while (0)

#endif
