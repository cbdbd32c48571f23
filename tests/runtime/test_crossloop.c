/* test_crossloop.c: delivery between loops on different threads: per-sender FIFO, causal
 * order, blocking calls from plain threads, exec and post. */
#include <pthread.h>
#include <stdatomic.h>

#include "rt_util.h"

/* ---- per-sender FIFO from several threads into one actor -------------------------------- */

enum { THREADS = 3, PER_THREAD = 50000 };

typedef struct fifo_state {
  uint64_t next[THREADS];
  _Atomic uint64_t total;
} fifo_state;

static void fifo_handle(mb_actor *self, mb_msg *msg) {
  fifo_state *st = mb_actor_state(self);
  t_seq_msg *m = t_seq_of(msg);
  assert_int_equal(m->seq, st->next[m->sender]++);
  atomic_fetch_add(&st->total, 1);
}
static const mb_actor_type fifo_type = {"fifo", fifo_handle, NULL, 0, NULL};

typedef struct sender_arg {
  mb_addr to;
  uint32_t id;
} sender_arg;

static void *sender_thread(void *p) {
  sender_arg *a = p;
  for (uint64_t i = 0; i < PER_THREAD; i++) {
    t_seq_msg *m = t_seq_new();
    m->sender = a->id;
    m->seq = i;
    assert_int_equal(mb_send_from(a->to, &m->hdr), MB_OK);
  }
  return NULL;
}

static void test_fifo_from_threads(void **unused) {
  (void)unused;
  mb_loop *l = tu_start("rx");
  fifo_state st = {0};
  mb_addr rx = rt_spawn_on(l, &fifo_type, &st, "fifo");
  pthread_t th[THREADS];
  sender_arg args[THREADS];
  for (uint32_t i = 0; i < THREADS; i++) {
    args[i] = (sender_arg){rx, i};
    pthread_create(&th[i], NULL, sender_thread, &args[i]);
  }
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  while (atomic_load(&st.total) < THREADS * PER_THREAD) sched_yield();
  mb_loop_stats s = mb_loop_stats_get(l);
  assert_true(s.wakeups <= s.delivered); /* wake-ups only on idle-to-busy transitions */
  tu_stop(l);
}

/* ---- causal order across three loops ------------------------------------------------------
 * A (loop 1) sends m1 to C (loop 3), then m2 to B (loop 2); B relays m3 to C. C must handle
 * m1 before m3 every time. */

enum { ROUNDS = 2000 };

typedef struct causal_c {
  uint64_t direct, relayed;
  _Atomic bool done;
} causal_c;

static void c_handle(mb_actor *self, mb_msg *msg) {
  causal_c *st = mb_actor_state(self);
  t_seq_msg *m = t_seq_of(msg);
  if (m->sender == 0) {
    assert_int_equal(m->seq, st->direct++);
  } else {
    assert_true(m->seq < st->direct); /* its cause, m1 of the same round, came first */
    assert_int_equal(m->seq, st->relayed++);
    if (st->relayed == ROUNDS) atomic_store(&st->done, true);
  }
}
static void b_handle(mb_actor *self, mb_msg *msg) {
  mb_addr *c = mb_actor_state(self);
  t_seq_of(msg)->sender = 1;
  mb_send(self, *c, msg);
}
static const mb_actor_type c_type = {"c", c_handle, NULL, 0, NULL};
static const mb_actor_type b_type = {"b", b_handle, NULL, 0, NULL};

typedef struct causal_a {
  mb_addr b, c;
} causal_a;

static void a_run(mb_loop *l, void *arg) {
  causal_a *a = arg;
  mb_actor *self = mb_loop_actor(l);
  for (uint64_t i = 0; i < ROUNDS; i++) {
    t_seq_msg *m1 = t_seq_new(), *m2 = t_seq_new();
    m1->seq = m2->seq = i;
    mb_send(self, a->c, &m1->hdr);
    mb_send(self, a->b, &m2->hdr);
  }
}

static void test_causal_order(void **unused) {
  (void)unused;
  mb_loop *l1 = tu_start("l1"), *l2 = tu_start("l2"), *l3 = tu_start("l3");
  causal_c cst = {0};
  mb_addr c = rt_spawn_on(l3, &c_type, &cst, "c");
  mb_addr b = rt_spawn_on(l2, &b_type, &c, "b");
  causal_a a = {b, c};
  assert_int_equal(mb_loop_exec(l1, a_run, &a), 0);
  while (!atomic_load(&cst.done)) sched_yield();
  tu_stop(l1);
  tu_stop(l2);
  tu_stop(l3);
}

/* ---- blocking calls ------------------------------------------------------------------------ */

typedef struct caller_arg {
  mb_addr adder;
  int64_t base;
} caller_arg;

static void *caller_thread(void *p) {
  caller_arg *a = p;
  for (int64_t i = 0; i < 2000; i++) {
    t_add_msg *m = t_add_new();
    m->a = a->base;
    m->b = i;
    assert_int_equal(mb_call_sync(a->adder, &m->hdr), MB_OK);
    assert_int_equal(m->sum, a->base + i);
    mb_msg_free(&m->hdr);
  }
  return NULL;
}

static void sync_on_own_loop(mb_loop *l, void *arg) {
  (void)l;
  t_add_msg *m = t_add_new();
  *(int *)arg = mb_call_sync(*(mb_addr *)((int *)arg + 2), &m->hdr);
  mb_msg_free(&m->hdr);
}

static void test_blocking_calls(void **unused) {
  (void)unused;
  mb_loop *l = tu_start("svc");
  mb_addr adder = rt_spawn_on(l, &rt_adder_type, NULL, "adder");
  pthread_t th[4];
  caller_arg args[4];
  for (int i = 0; i < 4; i++) {
    args[i] = (caller_arg){adder, i * 1000000};
    pthread_create(&th[i], NULL, caller_thread, &args[i]);
  }
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  struct {
    int rc, pad;
    mb_addr to;
  } own = {1, 0, adder};
  assert_int_equal(mb_loop_exec(l, sync_on_own_loop, &own), 0);
  assert_int_equal(own.rc, MB_EDEADLK);
  assert_int_equal(mb_loop_stop(l), 0);
  t_add_msg *m = t_add_new();
  m->a = 1;
  assert_int_equal(mb_call_sync(adder, &m->hdr), MB_ESTOPPED); /* the loop is stopped */
  mb_msg_free(&m->hdr);
  mb_loop_free(l);
}

/* ---- exec and post --------------------------------------------------------------------- */

static void bump(mb_loop *l, void *arg) {
  assert_true(mb_loop_is_current(l));
  atomic_fetch_add((_Atomic int *)arg, 1);
}

static void test_exec_post(void **unused) {
  (void)unused;
  mb_loop *l = tu_start("x");
  _Atomic int n = 0;
  for (int i = 0; i < 100; i++) assert_int_equal(mb_loop_post(l, bump, &n), 0);
  assert_int_equal(mb_loop_exec(l, bump, &n), 0);
  assert_int_equal(atomic_load(&n), 101); /* posts ran first: one inbox, in order */
  assert_int_equal(mb_loop_stop(l), 0);
  assert_int_equal(mb_loop_post(l, bump, &n), MB_ESTOPPED);
  assert_int_equal(mb_loop_exec(l, bump, &n), MB_ESTOPPED);
  mb_loop_free(l);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fifo_from_threads),
      cmocka_unit_test(test_causal_order),
      cmocka_unit_test(test_blocking_calls),
      cmocka_unit_test(test_exec_post),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
