/* test_serialized.c: a serialized actor finishes one operation, nested calls included,
 * before it starts the next, while still receiving the replies to its own calls. */
#include "rt_util.h"

typedef struct ser_state {
  mb_addr worker;
  mb_msg *current;   /* the request being served */
  int depth;         /* nested calls still to make for it */
  char log[64];
  size_t n;
  int served;
} ser_state;

static void note(ser_state *st, char c) {
  if (st->n + 1 < sizeof st->log) st->log[st->n++] = c;
}

static void step(mb_actor *self, ser_state *st);

static void on_worker(mb_actor *self, mb_msg *reply, void *ctx) {
  ser_state *st = ctx;
  assert_int_equal(reply->status, MB_OK);
  note(st, 'r');
  step(self, st);
}

/* Each request makes two nested calls in sequence, then answers. */
static void step(mb_actor *self, ser_state *st) {
  if (st->depth-- > 0) {
    t_add_msg *m = t_add_new();
    mb_call(self, st->worker, &m->hdr, on_worker, st);
    return;
  }
  note(st, 'E');
  t_add_msg *req = t_add_of(st->current);
  req->sum = req->a;
  mb_reply(st->current, MB_OK);
  st->current = NULL;
  st->served++;
}

static void ser_handle(mb_actor *self, mb_msg *msg) {
  ser_state *st = mb_actor_state(self);
  assert_null(st->current); /* never two operations at once */
  note(st, 'B');
  mb_msg_keep(msg);
  st->current = msg;
  st->depth = 2;
  step(self, st);
}
static const mb_actor_type ser_type = {"ser", ser_handle, NULL, MB_ACTOR_SERIALIZED, NULL};

typedef struct replies {
  int n;
  int64_t order[3];
  bool done;
} replies;

static void on_done(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  replies *r = ctx;
  r->order[r->n++] = t_add_of(reply)->sum;
  r->done = r->n == 3;
}

static void run_case(tu_home *h, mb_loop *worker_loop) {
  ser_state st = {0};
  st.worker = worker_loop ? rt_spawn_on(worker_loop, &rt_adder_type, NULL, "w")
                          : mb_actor_addr(mb_actor_create(h->loop, &rt_adder_type, NULL, "w"));
  mb_actor *ser = mb_actor_create(h->loop, &ser_type, &st, "ser");
  replies r = {0};
  for (int64_t i = 1; i <= 3; i++) {
    t_add_msg *m = t_add_new();
    m->a = i;
    mb_call(mb_loop_actor(h->loop), mb_actor_addr(ser), &m->hdr, on_done, &r);
  }
  tu_home_run_until(h, &r.done);
  st.log[st.n] = '\0';
  assert_string_equal(st.log, "BrrEBrrEBrrE");
  assert_int_equal(r.order[0], 1);
  assert_int_equal(r.order[1], 2);
  assert_int_equal(r.order[2], 3);
  mb_actor_destroy(ser);
}

static void test_nested_same_loop(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  run_case(&h, NULL);
  tu_home_fini(&h);
}

static void test_nested_cross_loop(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  mb_loop *w = tu_start("worker");
  run_case(&h, w);
  tu_stop(w);
  tu_home_fini(&h);
}

/* An explicit hold also holds back new messages; release lets them in, in order. */
typedef struct hold_state {
  int seen;
  bool done;
} hold_state;
static void hold_handle(mb_actor *self, mb_msg *msg) {
  hold_state *st = mb_actor_state(self);
  assert_int_equal(t_seq_of(msg)->seq, (uint64_t)st->seen);
  if (st->seen++ == 0) mb_actor_hold(self);
  st->done = st->seen == 3;
}
static const mb_actor_type hold_type = {"hold", hold_handle, NULL, MB_ACTOR_SERIALIZED, NULL};

static void test_hold_release(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  hold_state st = {0};
  mb_actor *a = mb_actor_create(h.loop, &hold_type, &st, "hold");
  for (uint64_t i = 0; i < 3; i++) {
    t_seq_msg *m = t_seq_new();
    m->seq = i;
    mb_send(mb_loop_actor(h.loop), mb_actor_addr(a), &m->hdr);
  }
  for (int i = 0; i < 5; i++) uv_run(&h.uv, UV_RUN_NOWAIT);
  assert_int_equal(st.seen, 1);
  mb_actor_release(a);
  tu_home_run_until(&h, &st.done);
  tu_home_fini(&h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_nested_same_loop),
      cmocka_unit_test(test_nested_cross_loop),
      cmocka_unit_test(test_hold_release),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
