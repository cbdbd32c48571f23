/* test_messaging.c: same-loop delivery, ordering, requests and their errors, on a loop that
 * the test thread runs itself (attach mode). */
#include "rt_util.h"

/* ---- a receiver that checks per-sender FIFO --------------------------------------------- */

enum { SENDERS = 4, PER_SENDER = 20000 };

typedef struct order_state {
  uint64_t next[SENDERS];
  uint64_t total;
  bool done;
} order_state;

static void order_handle(mb_actor *self, mb_msg *msg) {
  order_state *st = mb_actor_state(self);
  t_seq_msg *m = t_seq_of(msg);
  assert_non_null(m);
  assert_int_equal(m->seq, st->next[m->sender]);
  st->next[m->sender]++;
  if (++st->total == SENDERS * PER_SENDER) st->done = true;
}
static const mb_actor_type order_type = {"order", order_handle, NULL, 0, NULL};

static void send_seq(mb_actor *from, mb_addr to, uint32_t sender, uint64_t seq) {
  t_seq_msg *m = t_seq_new();
  m->sender = sender;
  m->seq = seq;
  assert_int_equal(mb_send(from, to, &m->hdr), MB_OK);
}

static void test_same_loop_fifo_per_sender(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  order_state st = {0};
  mb_actor *rx = mb_actor_create(h.loop, &order_type, &st, "rx");
  mb_actor *tx[SENDERS];
  for (int s = 0; s < SENDERS; s++) tx[s] = mb_actor_create(h.loop, &order_type, NULL, "tx");
  for (uint64_t i = 0; i < PER_SENDER; i++)
    for (uint32_t s = 0; s < SENDERS; s++) send_seq(tx[s], mb_actor_addr(rx), s, i);
  tu_home_run_until(&h, &st.done);
  assert_int_equal(mb_loop_stats_get(h.loop).delivered, SENDERS * PER_SENDER);
  tu_home_fini(&h);
}

/* ---- requests ---------------------------------------------------------------------------- */

typedef struct call_log {
  int calls, replies, last_status;
  int64_t last_sum;
  bool done;
} call_log;

static void on_reply(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  call_log *log = ctx;
  log->replies++;
  log->last_status = reply->status;
  t_add_msg *m = t_add_of(reply);
  if (m) log->last_sum = m->sum;
  log->done = log->replies == log->calls;
}

static void call_add(mb_actor *self, mb_addr to, int64_t a, int64_t b, call_log *log) {
  t_add_msg *m = t_add_new();
  m->a = a;
  m->b = b;
  log->calls++;
  mb_call(self, to, &m->hdr, on_reply, log);
}

static void test_request_reply(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  mb_actor *adder = mb_actor_create(h.loop, &rt_adder_type, NULL, "adder");
  call_log log = {0};
  call_add(mb_loop_actor(h.loop), mb_actor_addr(adder), 40, 2, &log);
  assert_int_equal(log.replies, 0); /* never answered inside mb_call */
  tu_home_run_until(&h, &log.done);
  assert_int_equal(log.replies, 1);
  assert_int_equal(log.last_status, MB_OK);
  assert_int_equal(log.last_sum, 42);
  tu_home_fini(&h);
}

static void test_dead_actor(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  mb_actor *adder = mb_actor_create(h.loop, &rt_adder_type, NULL, "adder");
  mb_addr gone = mb_actor_addr(adder);
  mb_actor_destroy(adder);
  /* The slot is reused by a new actor: the old address must still not reach it. */
  mb_actor *other = mb_actor_create(h.loop, &rt_adder_type, NULL, "other");
  assert_int_equal(mb_actor_addr(other).slot, gone.slot);
  call_log log = {0};
  call_add(mb_loop_actor(h.loop), gone, 1, 2, &log);
  tu_home_run_until(&h, &log.done);
  assert_int_equal(log.last_status, MB_EGONE);
  t_seq_msg *m = t_seq_new();
  assert_int_equal(mb_send(mb_loop_actor(h.loop), gone, &m->hdr), MB_EGONE);
  assert_int_equal(mb_loop_stats_get(h.loop).dropped, 1);
  m = t_seq_new();
  assert_int_equal(mb_send(mb_loop_actor(h.loop), (mb_addr){0}, &m->hdr), MB_EGONE);
  tu_home_fini(&h);
}

/* A handler that forgets to answer, and one that keeps the request and frees it. */
static void silent_handle(mb_actor *self, mb_msg *msg) { (void)self, (void)msg; }
static void keep_free_handle(mb_actor *self, mb_msg *msg) {
  (void)self;
  mb_msg_keep(msg);
  mb_msg_free(msg);
}
static const mb_actor_type silent_type = {"silent", silent_handle, NULL, 0, NULL};
static const mb_actor_type keep_free_type = {"keepfree", keep_free_handle, NULL, 0, NULL};

static void test_unanswered_request_gets_error(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  const mb_actor_type *types[] = {&silent_type, &keep_free_type};
  for (int i = 0; i < 2; i++) {
    mb_actor *a = mb_actor_create(h.loop, types[i], NULL, "x");
    call_log log = {0};
    call_add(mb_loop_actor(h.loop), mb_actor_addr(a), 1, 1, &log);
    tu_home_run_until(&h, &log.done);
    assert_int_equal(log.replies, 1);
    assert_int_equal(log.last_status, MB_ENOREPLY);
  }
  tu_home_fini(&h);
}

/* ---- a deferred reply: kept now, answered on a later message --------------------------- */

typedef struct defer_state {
  mb_msg *kept;
} defer_state;

static void defer_handle(mb_actor *self, mb_msg *msg) {
  defer_state *st = mb_actor_state(self);
  if (t_add_of(msg)) {
    mb_msg_keep(msg);
    st->kept = msg;
    return;
  }
  t_add_msg *m = t_add_of(st->kept); /* the T_SEQ "go" message: answer the kept request */
  m->sum = m->a * 10;
  mb_reply(st->kept, MB_OK);
  st->kept = NULL;
}
static const mb_actor_type defer_type = {"defer", defer_handle, NULL, 0, NULL};

static void test_deferred_reply(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  defer_state st = {0};
  mb_actor *d = mb_actor_create(h.loop, &defer_type, &st, "defer");
  call_log log = {0};
  call_add(mb_loop_actor(h.loop), mb_actor_addr(d), 7, 0, &log);
  while (!st.kept) uv_run(&h.uv, UV_RUN_ONCE);
  assert_int_equal(log.replies, 0);
  send_seq(mb_loop_actor(h.loop), mb_actor_addr(d), 0, 0);
  tu_home_run_until(&h, &log.done);
  assert_int_equal(log.last_status, MB_OK);
  assert_int_equal(log.last_sum, 70);
  tu_home_fini(&h);
}

/* ---- fairness: a self-feeding actor does not starve its neighbours ----------------------- */

typedef struct spin_state {
  bool *stop;
  uint64_t spins;
} spin_state;

static void spin_handle(mb_actor *self, mb_msg *msg) {
  spin_state *st = mb_actor_state(self);
  st->spins++;
  if (!*st->stop) mb_send(self, mb_actor_addr(self), msg);
}
static void flag_handle(mb_actor *self, mb_msg *msg) {
  (void)msg;
  *(bool *)mb_actor_state(self) = true;
}
static const mb_actor_type spin_type = {"spin", spin_handle, NULL, 0, NULL};
static const mb_actor_type flag_type = {"flag", flag_handle, NULL, 0, NULL};

static void test_batch_limit_fairness(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  bool flagged = false;
  spin_state st = {&flagged, 0};
  mb_actor *spin = mb_actor_create(h.loop, &spin_type, &st, "spin");
  mb_actor *flag = mb_actor_create(h.loop, &flag_type, &flagged, "flag");
  send_seq(mb_loop_actor(h.loop), mb_actor_addr(spin), 0, 0);
  send_seq(mb_loop_actor(h.loop), mb_actor_addr(spin), 0, 1);
  send_seq(mb_loop_actor(h.loop), mb_actor_addr(flag), 0, 0);
  tu_home_run_until(&h, &flagged);
  assert_true(st.spins < 4 * MB_BATCH); /* the flag actor ran after at most a few batches */
  tu_home_fini(&h);
}

/* ---- request latency -------------------------------------------------------------------- */

static void test_request_latency(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  mb_actor *adder = mb_actor_create(h.loop, &rt_adder_type, NULL, "adder");
  const mb_latency *lat = NULL;
  assert_int_equal(mb_actor_latency(adder, &lat), 0);
  mb_actor_time_requests(adder, true);
  call_log log = {0};
  for (int i = 0; i < 10; i++) call_add(mb_loop_actor(h.loop), mb_actor_addr(adder), i, 1, &log);
  tu_home_run_until(&h, &log.done);
  assert_int_equal(mb_actor_latency(adder, &lat), 1);
  assert_ptr_equal(lat[0].proto, &t_protocol);
  assert_int_equal(lat[0].kind, T_ADD);
  assert_int_equal(lat[0].count, (10 + MB_LATENCY_SAMPLE - 1) / MB_LATENCY_SAMPLE);
  assert_true(mb_latency_quantile(&lat[0], 0.5) <= mb_latency_quantile(&lat[0], 0.99));
  assert_true(mb_latency_quantile(&lat[0], 0.99) <= lat[0].max_ns);
  assert_true(lat[0].total_ns >= lat[0].max_ns);
  tu_home_fini(&h);
}

/* ---- protocol: names and formatting ----------------------------------------------------- */

static void test_protocol_format(void **unused) {
  (void)unused;
  t_note_msg *m = t_note_new();
  strcpy(m->text, "hi \"there\"");
  m->flag = true;
  m->ptr = NULL;
  m->neg = -5;
  char buf[256];
  mb_msg_format(&m->hdr, buf, sizeof buf);
  assert_string_equal(mb_msg_kind_name(&m->hdr), "note");
  assert_non_null(strstr(buf, "text=\"hi \"there\"\""));
  assert_non_null(strstr(buf, "flag=true"));
  assert_non_null(strstr(buf, "neg=-5"));
  assert_null(t_add_of(&m->hdr)); /* the downcast checks the kind */
  char small[8];
  mb_msg_format(&m->hdr, small, sizeof small); /* truncates, stays terminated */
  assert_true(strlen(small) < sizeof small);
  mb_msg_free(&m->hdr);
  t_add_msg *a = t_add_new();
  a->a = 1 << 20;
  mb_msg_format(&a->hdr, buf, sizeof buf);
  assert_string_equal(buf, " a=1048576 b=0 sum=0");
  mb_msg_free(&a->hdr);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_loop_fifo_per_sender),
      cmocka_unit_test(test_request_reply),
      cmocka_unit_test(test_dead_actor),
      cmocka_unit_test(test_unanswered_request_gets_error),
      cmocka_unit_test(test_deferred_reply),
      cmocka_unit_test(test_batch_limit_fairness),
      cmocka_unit_test(test_request_latency),
      cmocka_unit_test(test_protocol_format),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
