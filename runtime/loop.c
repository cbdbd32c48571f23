/* loop.c: loops (started or attached), their wake-up, their scheduler turn and shutdown. */
#include <errno.h>
#include <stdio.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "mb_hot.h"
#include "fault_inject.h" /* MB_FI_ALLOC: tests fail the runtime's allocations */
#include "internal.h"

_Thread_local mb_loop *mb__tls_loop;

enum { TURN_BUDGET = 4096 }; /* deliveries per turn before libuv gets the thread back */
/* After a turn whose messages went to a loop that was running, watch the inbox up to this long
 * before sleeping: a reply that comes back within it costs no wake-up on either side (a
 * cross-CPU wake costs ~25 us on a VM). mb_loop_set_linger changes it per loop. */
enum { LINGER_NS = 20000, LINGER_BACKOFF_MAX = 6 };

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Spin until the inbox has something or max_ns passed. True when something arrived. */
static bool spin(mb_loop *l, uint32_t max_ns) {
  uint64_t end = now_ns() + max_ns;
  for (;;) {
    for (int i = 0; i < 64; i++) {
      if (mb__inbox_peek(&l->inbox)) return true;
      __builtin_ia32_pause();
    }
    if (now_ns() >= end) return false;
  }
}

/* Linger only while it pays: each watch that found nothing doubles the number of turns that
 * skip the next one (up to 2^6), so a loop whose peers answer slowly (asleep, or sharing its
 * CPU) stops burning a core that another thread needs; a watch that found something resets
 * it. The turn asks only when it sent to a loop that was running (turn, "crossed"). */
static bool linger(mb_loop *l) {
  uint32_t max = atomic_load_explicit(&l->linger_ns, memory_order_relaxed);
  if (!max) return false;
  if (l->linger_skip) {
    l->linger_skip--;
    return false;
  }
  l->stats.lingers++;
  if (spin(l, max)) {
    l->stats.linger_hits++;
    l->linger_miss = 0;
    return true;
  }
  if (l->linger_miss < LINGER_BACKOFF_MAX) l->linger_miss++;
  l->linger_skip = (1u << l->linger_miss) - 1;
  return false;
}

void mb_loop_set_linger(mb_loop *l, uint32_t max_ns) {
  if (l) atomic_store_explicit(&l->linger_ns, max_ns, memory_order_relaxed);
}

/* ---- the registry of live loops --------------------------------------------------------------
 * For code that meets a loop pointer it does not own (the trace names the sender's loop of a
 * reply that may arrive after that loop was freed): a copy of each live loop's name. */
typedef struct live_loop {
  const mb_loop *loop;
  char name[32];
} live_loop;
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static live_loop *live;
static size_t nlive, cap_live;

static void live_add(const mb_loop *l) {
  pthread_mutex_lock(&live_lock);
  if (nlive == cap_live) {
    size_t cap = cap_live ? cap_live * 2 : 16;
    live_loop *p = realloc(live, cap * sizeof *p);
    if (p) live = p, cap_live = cap;
  }
  if (nlive < cap_live) {
    live[nlive].loop = l;
    snprintf(live[nlive].name, sizeof live[nlive].name, "%s", l->name);
    nlive++;
  }
  pthread_mutex_unlock(&live_lock);
}

static void live_remove(const mb_loop *l) {
  pthread_mutex_lock(&live_lock);
  for (size_t i = 0; i < nlive; i++)
    if (live[i].loop == l) live[i] = live[--nlive];
  if (!nlive) {
    free(live);
    live = NULL;
    cap_live = 0;
  }
  pthread_mutex_unlock(&live_lock);
}

bool mb__loop_name_copy(const mb_loop *l, char out[32]) {
  bool found = false;
  pthread_mutex_lock(&live_lock);
  for (size_t i = 0; i < nlive && !found; i++)
    if (live[i].loop == l) {
      memcpy(out, live[i].name, 32);
      found = true;
    }
  pthread_mutex_unlock(&live_lock);
  return found;
}

static void loop_actor_handle(mb_actor *self, mb_msg *msg) { (void)self, (void)msg; }
static const mb_actor_type loop_actor_type = {"loop", loop_actor_handle, NULL, 0, NULL};

static void turn(mb_loop *l);

static void on_wake(uv_poll_t *p, int status, int events) {
  (void)status, (void)events;
  mb_loop *l = p->data;
  uint64_t v;
  if (read(l->efd, &v, sizeof v) == sizeof v) l->stats.wakeups++;
  turn(l);
}

static void on_idle(uv_idle_t *h) { turn(h->data); }

static void on_close(uv_handle_t *h) {
  mb_loop *l = h->data;
  if (h == (uv_handle_t *)&l->poll) close(l->efd);
  if (--l->open_handles == 0 && l->free_pending) mb_loop_free(l);
}

static void set_idle(mb_loop *l, bool on) {
  if (on == l->idle_on || l->stopped) return;
  l->idle_on = on;
  if (on) uv_idle_start(&l->idle, on_idle);
  else uv_idle_stop(&l->idle);
}

void mb__loop_kick(mb_loop *l) {
  if (!l->in_turn) set_idle(l, true);
}

/* An attached loop follows libuv's convention: its wake-up handle is referenced (keeps the
 * VMM's uv_run going) only while the loop has something to serve or to wait for: an actor
 * besides its own built-in one (a manager's, a mapper's: like a libuv server handle), or a
 * call from one of its actors (an async API call included) whose reply has not run (like a
 * libuv request). A started loop's handle is always referenced: its thread runs until stopped. */
MB_HOT void mb__loop_keepalive(mb_loop *l) {
  bool want = l->calls_out > 0 || l->stats.actors > 1;
  if (l->owned || l->stopping || !l->open_handles || want == l->refd) return;
  l->refd = want;
  if (want) uv_ref((uv_handle_t *)&l->poll);
  else uv_unref((uv_handle_t *)&l->poll);
}

void mb_loop_ref(mb_loop *l) { mb__loop_calls(l, +1); }
void mb_loop_unref(mb_loop *l) {
  if (l->calls_out) mb__loop_calls(l, -1);
}

static void stop_now(mb_loop *l);

/* An attached loop's mb_loop_stop from a handler or callback of this turn takes effect here,
 * once that handler or callback has returned. */
static bool stop_deferred(mb_loop *l) {
  if (!l->stop_after_turn) return false;
  stop_now(l);
  return true;
}

static mb_actor *pop_ready(mb_loop *l) {
  mb_actor *a = l->ready_head;
  if (a && !(l->ready_head = a->ready_next)) l->ready_tail = NULL;
  if (a) a->ready = false;
  return a;
}

/* ---- lending: a sleeping loop's turn run by the thread that wakes it -------------------------
 * Invariant: one thread at a time runs a loop's turn or touches its loop-local state (actors,
 * their queues, the ready list, the inbox's consumer end, stats): the holder of the loop's
 * token. Its own thread takes it for each turn (and mb_loop_enter outside turns); a thread
 * that runs another loop and whose push found this MB_LOOP_LEND loop asleep may take it instead of
 * waking the loop, and then runs the turn itself (mb__tls_loop set to this loop) for lendable
 * messages only, never touching the loop's libuv handles. Takes are try-only for borrowers
 * (never a wait, so never a deadlock); a turn the owner could not take is flagged WANTED and
 * the borrower wakes the owner on release, as it does when it left work behind. The token's
 * acquire and release hand the loop state over between threads. */
enum { TOK_FREE = 0, TOK_OWNER = 1, TOK_LENT = 2, TOK_WANTED = 4 };
enum { LEND_BUDGET = 256, LEND_DEPTH = 3 };
static _Thread_local unsigned lend_depth;

static bool take_owner(mb_loop *l) {
  if (!l->lend) return true;
  uint32_t t = atomic_load_explicit(&l->token, memory_order_relaxed);
  for (;;) {
    if (t == TOK_FREE) {
      if (atomic_compare_exchange_weak_explicit(&l->token, &t, TOK_OWNER, memory_order_acquire,
                                                memory_order_relaxed))
        return true;
    } else if ((t & TOK_WANTED) || atomic_compare_exchange_weak_explicit(
                                      &l->token, &t, t | TOK_WANTED, memory_order_relaxed,
                                      memory_order_relaxed)) {
      return false;
    }
  }
}

static void release_owner(mb_loop *l) {
  if (l->lend) atomic_store_explicit(&l->token, TOK_FREE, memory_order_release);
}

static void wake(mb_loop *l) {
  uint64_t one = 1;
  ssize_t n = write(l->efd, &one, sizeof one);
  (void)n; /* EAGAIN means the counter is saturated: the loop is awake anyway */
}

void mb_loop_enter(mb_loop *l) {
  while (l && l->lend && !take_owner(l)) sched_yield();
}
void mb_loop_leave(mb_loop *l) {
  if (l) release_owner(l);
}
bool mb_loop_is_lent(const mb_loop *l) { return l && mb__tls_loop == l && l->lent; }

/* Drain the inbox and run ready actors until both are empty or the budget is spent. The
 * inbox is marked asleep only when nothing is left, so a producer wakes us exactly when we
 * stopped looking. */
MB_HOT static void turn_body(mb_loop *l) {
  l->in_turn = true;
  l->crossed = false;
  int budget = TURN_BUDGET;
  for (;;) {
    mb_msg *m;
    while (budget > 0 && (m = mb__inbox_pop(&l->inbox))) {
      mb__receive(l, m);
      budget--;
      if (l->stopped) return;
      if (stop_deferred(l)) return;
    }
    mb_actor *a;
    while (budget > 0 && (a = pop_ready(l))) {
      budget -= (int)mb__actor_run(a);
      if (stop_deferred(l)) return;
    }
    if (budget <= 0) break;
    if (l->ready_head) continue;
    if (l->crossed && linger(l)) continue; /* only when talking to awake loops */
    if (mb__inbox_sleep(&l->inbox)) break;
  }
  l->in_turn = false;
  set_idle(l, l->ready_head != NULL || budget <= 0);
}

/* in_turn is loop state: read only with the token (a borrower's turn sets it). */
static void turn(mb_loop *l) {
  if (l->stopped || !take_owner(l)) return;
  if (!l->in_turn) turn_body(l);
  release_owner(l);
}

static bool lendable_msg(mb_loop *l, const mb_msg *m) {
  if (m->flags__ & (MB__F_SYS | MB__F_STOP)) return false;
  mb_actor *a = mb__actor_lookup(l, m->to);
  return !a || (a->type->lendable && a->type->lendable(m));
}

/* A borrowed turn: lendable messages in inbox order, then ready actors of lendable types.
 * True when it left the loop asleep with nothing for its owner to do. */
static bool lent_turn_body(mb_loop *l) {
  int budget = LEND_BUDGET;
  for (;;) {
    mb_msg *m;
    while (budget > 0 && (m = mb__inbox_front(&l->inbox)) && lendable_msg(l, m) &&
           (m = mb__inbox_pop(&l->inbox))) {
      mb__receive(l, m);
      budget--;
    }
    if (budget <= 0 || ((m = mb__inbox_front(&l->inbox)) && !lendable_msg(l, m))) return false;
    mb_actor *a;
    while (budget > 0 && (a = l->ready_head) && a->type->lendable)
      budget -= (int)mb__actor_run(pop_ready(l));
    if (l->ready_head) {
      if (budget <= 0 || !l->ready_head->type->lendable) return false;
      continue;
    }
    if (mb__inbox_sleep(&l->inbox)) return true;
  }
}

/* Instead of waking l, run its turn here (see "lending"). False when it cannot be had. */
static bool lend(mb_loop *l) {
  mb_loop *home = mb__tls_loop;
  if (!l->lend || !home || home->stopping || lend_depth >= LEND_DEPTH) return false;
  uint32_t t = TOK_FREE;
  if (!atomic_compare_exchange_strong_explicit(&l->token, &t, TOK_LENT, memory_order_acquire,
                                               memory_order_relaxed))
    return false;
  mb__tls_loop = l;
  lend_depth++;
  l->in_turn = l->lent = true;
  l->stats.lent++;
  bool asleep = lent_turn_body(l);
  l->in_turn = l->lent = false;
  lend_depth--;
  mb__tls_loop = home;
  t = atomic_exchange_explicit(&l->token, TOK_FREE, memory_order_release);
  if (!asleep || (t & TOK_WANTED)) wake(l);
  return true;
}

void mb__inbox_push_wake(mb_loop *l, mb_msg *m) {
  if (mb__inbox_push(&l->inbox, m)) wake(l);
}

/* A push that found the loop asleep lends it or wakes it (a woken loop answers no sooner than
 * a wake-up: measured, lingering for it only burns CPU); one that found it running marks the
 * sender's turn as a conversation worth lingering for. */
int mb__loop_push(mb_loop *l, mb_msg *m) {
  uint64_t s = atomic_fetch_add_explicit(&l->senders, 2, memory_order_acq_rel);
  int rc = MB_ESTOPPED;
  if (!(s & 1)) {
    if (mb__inbox_push(&l->inbox, m)) {
      if (!lend(l)) wake(l);
    } else if (mb__tls_loop) {
      mb__tls_loop->crossed = true; /* the peer is running: it may answer soon */
    }
    rc = MB_OK;
  }
  atomic_fetch_sub_explicit(&l->senders, 2, memory_order_release);
  return rc;
}

/* Everything of ours that can fail is done before the first libuv handle exists, so a failure
 * leaves nothing to close: libuv itself aborts the process when it cannot grow its watcher
 * table in uv_poll_start (mb_runtime.h, "Out of memory"). */
static int loop_init(mb_loop *l, uv_loop_t *uv, const char *name) {
  mb__trace_env_init();
  l->uv = uv;
  atomic_init(&l->linger_ns, l->owned ? LINGER_NS : 0); /* the VMM's own thread never spins */
  atomic_init(&l->token, TOK_FREE);
  if (name != l->name) snprintf(l->name, sizeof l->name, "%s", name ? name : "loop");
  mb__inbox_init(&l->inbox);
  (void)mb__inbox_sleep(&l->inbox); /* no turn has run yet: the first push must wake us */
  l->tid = pthread_self();
  mb_loop *outer = mb__tls_loop;
  mb__tls_loop = l;
  l->loop_actor = mb_actor_create(l, &loop_actor_type, NULL, "loop");
  l->efd = l->loop_actor ? eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) : -1;
  int rc = !l->loop_actor ? MB_ENOMEM : l->efd < 0 ? -errno : uv_poll_init(uv, &l->poll, l->efd);
  if (rc) {
    if (l->efd >= 0) close(l->efd);
    mb_actor_destroy(l->loop_actor);
    mb__tls_loop = outer;
    return rc;
  }
  uv_idle_init(uv, &l->idle);
  l->poll.data = l->idle.data = l;
  l->open_handles = 2;
  rc = uv_poll_start(&l->poll, UV_READABLE, on_wake);
  if (rc) {
    mb__tls_loop = outer;
    return rc; /* the caller closes the handles */
  }
  l->refd = true;
  mb__loop_keepalive(l);
  live_add(l);
  return 0;
}

/* A loop that never ran: its handles closing (on_close frees it, free_pending) or nothing. */
static void loop_discard(mb_loop *l) {
  mb_actor_destroy(l->loop_actor);
  if (l->open_handles) {
    l->free_pending = true;
    uv_close((uv_handle_t *)&l->poll, on_close);
    uv_close((uv_handle_t *)&l->idle, on_close);
    return;
  }
  mb_msg_free(l->stop_msg);
  free(l->slots);
  free(l);
}

static void loop_thread(void *arg) {
  mb_loop *l = arg;
  l->start_err = loop_init(l, &l->own_uv, l->name);
  if (l->start_err) {
    if (l->open_handles) { /* on_close must not free it: mb_loop_start does */
      uv_close((uv_handle_t *)&l->poll, on_close);
      uv_close((uv_handle_t *)&l->idle, on_close);
      uv_run(l->uv, UV_RUN_DEFAULT);
    }
    mb__waiter_signal(&l->started);
    return;
  }
  mb__waiter_signal(&l->started);
  uv_run(l->uv, UV_RUN_DEFAULT);
  l->close_rc = uv_loop_close(l->uv);
  mb__tls_loop = NULL;
}

/* The stop request is allocated here, with the loop, so that mb_loop_stop cannot fail for
 * want of memory. */
mb_loop *mb_loop_start(const char *name, int *err) { return mb_loop_start_flags(name, 0, err); }

mb_loop *mb_loop_start_flags(const char *name, unsigned flags, int *err) {
  if (flags & ~(unsigned)MB_LOOP_LEND) {
    if (err) *err = MB_EINVAL;
    return NULL;
  }
  mb_loop *l = mb__calloc(1, sizeof *l);
  if (l) l->lend = (flags & MB_LOOP_LEND) != 0;
  if (l) l->stop_msg = mb_msg_new(NULL, 0, sizeof(mb_msg));
  int rc = !l || !l->stop_msg ? MB_ENOMEM : uv_loop_init(&l->own_uv);
  if (rc) goto fail;
  l->owned = true;
  snprintf(l->name, sizeof l->name, "%s", name ? name : "loop");
  rc = uv_thread_create(&l->thread, loop_thread, l);
  if (rc) {
    uv_loop_close(&l->own_uv);
    goto fail;
  }
  mb__waiter_wait(&l->started);
  if ((rc = l->start_err)) {
    uv_thread_join(&l->thread);
    uv_loop_close(&l->own_uv);
    l->open_handles = 0; /* closed on its thread */
    goto fail;
  }
  return l;
fail:
  if (l) loop_discard(l);
  if (err) *err = rc;
  return NULL;
}

mb_loop *mb_loop_attach(uv_loop_t *uv, const char *name, int *err) {
  mb_loop *l = mb__calloc(1, sizeof *l);
  int rc = l ? loop_init(l, uv, name) : MB_ENOMEM;
  if (!rc) return l;
  if (l) loop_discard(l);
  if (err) *err = rc;
  return NULL;
}

/* On the loop's thread, with no sender left: answer everything, destroy every actor, close
 * the handles. */
void mb__loop_shutdown(mb_loop *l) {
  l->stopping = true;
  mb__actor_destroy_all(l);
  mb_msg *m;
  while ((m = mb__inbox_pop(&l->inbox)) || !mb__inbox_sleep(&l->inbox)) {
    if (m) mb__receive(l, m);
  }
  mb_actor *a;
  while ((a = pop_ready(l))) mb__actor_run(a); /* frees the destroyed actors still listed */
  l->stopped = true;
  l->in_turn = false;
  uv_close((uv_handle_t *)&l->poll, on_close);
  uv_close((uv_handle_t *)&l->idle, on_close);
}

static void close_senders(mb_loop *l) {
  atomic_fetch_or_explicit(&l->senders, 1, memory_order_acq_rel);
  while (atomic_load_explicit(&l->senders, memory_order_acquire) >> 1) sched_yield();
}

int mb_loop_stop(mb_loop *l) {
  if (!l) return MB_EINVAL;
  if (l->owned) {
    if (mb_loop_is_current(l)) return MB_EDEADLK;
    if (atomic_load(&l->senders) & 1) return l->close_rc;
    close_senders(l);
    mb_msg *stop = l->stop_msg;
    l->stop_msg = NULL;
    stop->flags__ = MB__F_STOP;
    mb__inbox_push_wake(l, stop);
    uv_thread_join(&l->thread);
    return l->close_rc;
  }
  if (!mb_loop_is_current(l)) return MB_EDEADLK;
  if (l->stopping || l->stop_after_turn) return MB_OK;
  close_senders(l);
  if (l->in_turn) l->stop_after_turn = true; /* the turn stops once the callback returns */
  else stop_now(l);
  return MB_OK;
}

/* An attached loop stops on its own thread, outside any handler or callback. */
static void stop_now(mb_loop *l) {
  mb__loop_shutdown(l);
  mb__tls_loop = NULL;
}

void mb_loop_free(mb_loop *l) {
  if (!l) return;
  live_remove(l);
  if (!l->owned && l->open_handles > 0) {
    l->free_pending = true; /* the last close callback frees it */
    return;
  }
  mb_msg_free(l->stop_msg); /* a started loop that was never stopped */
  free(l->slots);
  free(l);
}

static void stats_copy(mb_loop *l, void *arg) { *(mb_loop_stats *)arg = l->stats; }

mb_loop_stats mb_loop_stats_get(const mb_loop *cl) {
  mb_loop *l = (mb_loop *)cl;
  mb_loop_stats s = {0};
  if (mb_loop_is_current(l) || l->stopped) s = l->stats;
  else mb_loop_exec(l, stats_copy, &s);
  return s;
}

mb_actor *mb_loop_actor(mb_loop *l) { return l->loop_actor; }
uv_loop_t *mb_loop_uv(mb_loop *l) { return l->uv; }
const char *mb_loop_name(const mb_loop *l) { return l->name; }
bool mb_loop_is_current(const mb_loop *l) { return l && mb__tls_loop == l; }
mb_loop *mb_loop_current(void) { return mb__tls_loop; }
bool mb_loop_stopping(const mb_loop *l) { return l->stopping; }
