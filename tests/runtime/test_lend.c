/* test_lend.c: lending (MB_LOOP_LEND). A loop that sleeps may have its turn run by the thread
 * that sends to it, for lendable messages only: non-lendable messages and closures still run
 * on the loop's own thread, every message is handled in the order it was sent, a chain of
 * calls through several lending loops is answered exactly once each, and stopping the loops
 * while senders lend them loses nothing. Runs under TSan (the token's hand-over is what makes
 * the loop state race-free). */
#include <pthread.h>
#include <stdatomic.h>

#include "rt_util.h"

enum { LOOPS = 3, LOG_MAX = 1 << 16 };

/* A loop's shared log: appended by its actors, so its order is the order they handled in. */
typedef struct lend_loop {
  mb_loop *loop;
  pthread_t owner;       /* the loop's own thread */
  mb_addr relay, keeper; /* a lendable actor and a non-lendable one */
  mb_addr next;          /* the next loop's relay, or nobody */
  uint32_t log[LOG_MAX];
  uint32_t nlog;
  uint64_t on_other_thread; /* relay messages handled on a thread not the owner's */
  uint64_t keeper_wrong;    /* keeper messages handled elsewhere than the owner (must be 0) */
} lend_loop;

static bool always(const mb_msg *m) { return (void)m, true; }

/* Entries: sender << 24 | actor (0 relay, 1 keeper) << 23 | sequence number. */
static void log_seq(lend_loop *ll, mb_msg *msg, uint32_t actor) {
  t_seq_msg *s = t_seq_of(msg);
  if (s && ll->nlog < LOG_MAX) ll->log[ll->nlog++] = s->sender << 24 | actor << 23 | (uint32_t)s->seq;
}

static void on_next_sum(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  mb_msg *req = ctx;
  t_add_of(req)->sum = reply->status ? -1000000 : t_add_of(reply)->sum + 1;
  mb_reply(req, reply->status);
}

/* T_ADD: answers a + b + (hops left in the chain); T_SEQ: logged. */
static void relay_handle(mb_actor *self, mb_msg *msg) {
  lend_loop *ll = mb_actor_state(self);
  if (!pthread_equal(pthread_self(), ll->owner)) ll->on_other_thread++;
  t_add_msg *m = t_add_of(msg);
  if (!m) {
    log_seq(ll, msg, 0);
    return;
  }
  if (!ll->next.loop) {
    m->sum = m->a + m->b;
    mb_reply(msg, MB_OK);
    return;
  }
  t_add_msg *fwd = t_add_new();
  if (!fwd) {
    mb_reply(msg, MB_ENOMEM);
    return;
  }
  fwd->a = m->a;
  fwd->b = m->b;
  mb_msg_keep(msg);
  mb_call(self, ll->next, &fwd->hdr, on_next_sum, msg);
}

static void keeper_handle(mb_actor *self, mb_msg *msg) {
  lend_loop *ll = mb_actor_state(self);
  if (!pthread_equal(pthread_self(), ll->owner)) ll->keeper_wrong++;
  log_seq(ll, msg, 1);
}

static const mb_actor_type relay_type = {"relay", relay_handle, NULL, 0, always};
static const mb_actor_type keeper_type = {"keeper", keeper_handle, NULL, 0, NULL};

static void note_owner(mb_loop *l, void *arg) {
  (void)l;
  *(pthread_t *)arg = pthread_self();
}

/* chain: each relay forwards to the next loop's (else each answers at once). */
static void lend_loops_start(lend_loop *ll, bool chain) {
  for (int i = LOOPS - 1; i >= 0; i--) {
    int err = 0;
    ll[i].loop = mb_loop_start_flags("lend", getenv("NOLEND") ? 0 : MB_LOOP_LEND, &err);
    assert_non_null(ll[i].loop);
    assert_int_equal(mb_loop_exec(ll[i].loop, note_owner, &ll[i].owner), 0);
    ll[i].next = chain && i + 1 < LOOPS ? ll[i + 1].relay : (mb_addr){0};
    ll[i].relay = rt_spawn_on(ll[i].loop, &relay_type, &ll[i], "relay");
    ll[i].keeper = rt_spawn_on(ll[i].loop, &keeper_type, &ll[i], "keeper");
  }
}

/* ---- a driver: calls down the chain and sends logged messages, from a loop's turn ---------- */

typedef struct driver {
  lend_loop *ll;
  uint32_t id, calls, sent[2];
  _Atomic uint32_t answered, wrong;
} driver;

static void on_chain_sum(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  driver *d = ctx;
  t_add_msg *m = t_add_of(reply);
  if (reply->status || m->sum != m->a + m->b + (d->ll[0].next.loop ? LOOPS - 1 : 0))
    atomic_fetch_add(&d->wrong, 1);
  atomic_fetch_add(&d->answered, 1);
}

static void driver_step(mb_actor *self, driver *d, uint32_t i) {
  t_add_msg *m = t_add_new();
  assert_non_null(m);
  m->a = i;
  m->b = d->id;
  mb_call(self, d->ll[0].relay, &m->hdr, on_chain_sum, d);
  t_seq_msg *s = t_seq_new(); /* alternately to the lendable and the non-lendable actor */
  assert_non_null(s);
  s->sender = d->id;
  s->seq = d->sent[i % 2]++;
  (void)mb_send(self, i % 2 ? d->ll[0].keeper : d->ll[0].relay, &s->hdr); /* stopped: dropped */
}

static void driver_handle(mb_actor *self, mb_msg *msg) {
  driver *d = mb_actor_state(self);
  uint32_t burst = 1 + d->id % 4;
  for (uint32_t k = 0; k < burst && d->calls < 2000; k++) driver_step(self, d, d->calls++);
  if (d->calls < 2000) {
    t_note_msg *again = t_note_new();
    assert_non_null(again);
    assert_int_equal(mb_send(self, mb_actor_addr(self), &again->hdr), 0);
  }
  (void)msg;
}

static const mb_actor_type driver_type = {"driver", driver_handle, NULL, 0, NULL};

/* Each sender's messages to each actor were handled in the order sent. */
static void check_log_order(const lend_loop *ll) {
  uint32_t next[256][2] = {{0}};
  for (uint32_t i = 0; i < ll->nlog; i++) {
    uint32_t sender = ll->log[i] >> 24, actor = ll->log[i] >> 23 & 1, seq = ll->log[i] & 0x7fffff;
    if (seq != next[sender][actor])
      fail_msg("sender %u, actor %u: message %u handled before %u", sender, actor, seq,
               next[sender][actor]);
    next[sender][actor]++;
  }
}

static void test_lending_stress(void **unused) {
  (void)unused;
  static lend_loop ll[LOOPS];
  memset(ll, 0, sizeof ll);
  lend_loops_start(ll, true);
  enum { DRIVERS = 3 };
  mb_loop *dl[DRIVERS];
  static driver d[DRIVERS];
  for (uint32_t i = 0; i < DRIVERS; i++) {
    d[i] = (driver){.ll = ll, .id = i + 1};
    dl[i] = tu_start("driver");
    mb_addr a = rt_spawn_on(dl[i], &driver_type, &d[i], "driver");
    t_note_msg *go = t_note_new();
    assert_non_null(go);
    assert_int_equal(mb_send_from(a, &go->hdr), 0);
  }
  for (uint32_t i = 0; i < DRIVERS; i++)
    while (atomic_load(&d[i].answered) < 2000) sched_yield();
  for (uint32_t i = 0; i < DRIVERS; i++) {
    tu_stop(dl[i]);
    assert_int_equal(atomic_load(&d[i].wrong), 0);
  }
  uint64_t other = 0;
  for (int i = 0; i < LOOPS; i++) tu_stop(ll[i].loop); /* joins: the logs are ours to read */
  for (int i = 0; i < LOOPS; i++) {
    assert_int_equal(ll[i].keeper_wrong, 0);
    other += ll[i].on_other_thread;
  }
  assert_int_equal(ll[0].nlog, DRIVERS * 2000);
  check_log_order(&ll[0]);
  print_message("relay messages handled on a lending thread: %llu\n", (unsigned long long)other);
}

/* One call at a time from a loop's turn to a lending loop that sleeps between them: the
 * sender's thread runs the lending loop's turn (counted in its stats), and a closure posted
 * to the loop still runs on the loop's own thread. */
typedef struct serial {
  lend_loop *ll;
  uint32_t left;
  bool done;
  pthread_t closure_thread;
} serial;

static void serial_next(mb_actor *self, serial *s);

static void on_serial_sum(mb_actor *self, mb_msg *reply, void *ctx) {
  serial *s = ctx;
  assert_int_equal(reply->status, 0);
  if (--s->left) serial_next(self, s);
  else s->done = true;
}

static void serial_next(mb_actor *self, serial *s) {
  t_add_msg *m = t_add_new();
  assert_non_null(m);
  m->a = 1;
  mb_call(self, s->ll[LOOPS - 1].relay, &m->hdr, on_serial_sum, s);
}

static void test_lent_turns_and_closures(void **unused) {
  (void)unused;
  int err = 0; /* an unknown flag is refused, nothing started */
  assert_null(mb_loop_start_flags("bad", 1u << 7, &err));
  assert_int_equal(err, MB_EINVAL);
  static lend_loop ll[LOOPS];
  memset(ll, 0, sizeof ll);
  lend_loops_start(ll, true);
  tu_home h;
  tu_home_init(&h, "home");
  serial s = {.ll = ll, .left = 200};
  serial_next(mb_loop_actor(h.loop), &s);
  tu_home_run_until(&h, &s.done);
  mb_loop *last = ll[LOOPS - 1].loop;
  assert_int_equal(mb_loop_exec(last, note_owner, &s.closure_thread), 0);
  assert_true(pthread_equal(s.closure_thread, ll[LOOPS - 1].owner));
  mb_loop_stats st = mb_loop_stats_get(last);
  assert_true(st.lent > 0); /* it slept between the calls: the home thread ran its turns */
  assert_true(ll[LOOPS - 1].on_other_thread > 0);
  for (int i = 0; i < LOOPS; i++) tu_stop(ll[i].loop);
  tu_home_fini(&h);
}


/* Stopping lending loops while senders keep lending them: every call is answered once (a
 * sum or MB_ESTOPPED). The relays answer at once here: a relay that stopped with a call of
 * its own out would leave the request it forwards unanswered, a matter of the actor's own. */
static void test_stop_while_lent(void **unused) {
  (void)unused;
  for (int round = 0; round < 20; round++) {
    static lend_loop ll[LOOPS];
    memset(ll, 0, sizeof ll);
    lend_loops_start(ll, false);
    static driver d;
    d = (driver){.ll = ll, .id = 1};
    mb_loop *dl = tu_start("driver");
    mb_addr a = rt_spawn_on(dl, &driver_type, &d, "driver");
    t_note_msg *go = t_note_new();
    assert_non_null(go);
    assert_int_equal(mb_send_from(a, &go->hdr), 0);
    for (int i = 0; i < LOOPS; i++) assert_int_equal(mb_loop_stop(ll[i].loop), 0);
    while (atomic_load(&d.answered) < 2000) sched_yield();
    tu_stop(dl);
    assert_int_equal(atomic_load(&d.answered), 2000); /* and none twice */
    for (int i = 0; i < LOOPS; i++) mb_loop_free(ll[i].loop); /* nobody sends to them now */
  }
}

int main(int argc, char **argv) {
  struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lent_turns_and_closures),
      cmocka_unit_test(test_lending_stress),
      cmocka_unit_test(test_stop_while_lent),
  };
  size_t n = 0; /* with an argument, only the tests whose name contains it */
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
    if (argc < 2 || strstr(tests[i].name, argv[1])) tests[n++] = tests[i];
  return _cmocka_run_group_tests("test_lend", tests, n, NULL, NULL);
}
