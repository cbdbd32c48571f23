/* test_shutdown.c: stopping loops answers what is pending, closes every handle and leaks
 * nothing; the trace hook records sends and deliveries. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#include "rt_util.h"

/* Keeps every request; on destruction frees them (which answers MB_ENOREPLY). The first
 * request also holds the actor, so later ones stay queued until the loop stops. */
typedef struct keeper {
  mb_msg *kept;
} keeper;
static void keeper_handle(mb_actor *self, mb_msg *msg) {
  keeper *k = mb_actor_state(self);
  mb_msg_keep(msg);
  k->kept = msg;
  mb_actor_hold(self);
}
static void keeper_destroy(mb_actor *self) {
  keeper *k = mb_actor_state(self);
  mb_msg_free(k->kept);
}
static const mb_actor_type keeper_type = {"keeper", keeper_handle, keeper_destroy,
                                          MB_ACTOR_SERIALIZED, NULL};

typedef struct results {
  int n, enoreply, estopped;
  bool done;
} results;
static void on_result(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  results *r = ctx;
  r->n++;
  r->enoreply += reply->status == MB_ENOREPLY;
  r->estopped += reply->status == MB_ESTOPPED;
  r->done = r->n == 4;
}

static void test_stop_answers_pending(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  mb_loop *svc = tu_start("svc");
  keeper k = {0};
  mb_addr kp = rt_spawn_on(svc, &keeper_type, &k, "keeper");
  results r = {0};
  for (int i = 0; i < 4; i++) {
    t_add_msg *m = t_add_new();
    mb_call(mb_loop_actor(h.loop), kp, &m->hdr, on_result, &r);
  }
  /* Wait until the keeper holds the first request, so three are queued behind it. */
  while (mb_loop_stats_get(svc).delivered < 1) uv_run(&h.uv, UV_RUN_NOWAIT);
  tu_stop(svc);
  tu_home_run_until(&h, &r.done);
  assert_int_equal(r.enoreply, 1);
  assert_int_equal(r.estopped, 3);
  tu_home_fini(&h);
}

/* Requests still queued on an attached loop when it stops are answered too, and a blocked
 * thread calling into a loop that stops is released with an error. */
typedef struct blocked_arg {
  mb_addr to;
  int rc;
} blocked_arg;
static void *blocked_caller(void *p) {
  blocked_arg *a = p;
  t_add_msg *m = t_add_new();
  a->rc = mb_call_sync(a->to, &m->hdr);
  mb_msg_free(&m->hdr);
  return NULL;
}

static void test_stop_releases_blocked_threads(void **unused) {
  (void)unused;
  mb_loop *svc = tu_start("svc");
  keeper k = {0};
  blocked_arg a = {rt_spawn_on(svc, &keeper_type, &k, "keeper"), 1};
  blocked_arg b = a;
  pthread_t t1, t2;
  pthread_create(&t1, NULL, blocked_caller, &a);
  while (mb_loop_stats_get(svc).delivered < 1) sched_yield();
  pthread_create(&t2, NULL, blocked_caller, &b);
  /* b may be queued behind the held request or refused by the stopped loop: both end it. */
  assert_int_equal(mb_loop_stop(svc), 0);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  mb_loop_free(svc);
  assert_int_equal(a.rc, MB_ENOREPLY);
  assert_int_equal(b.rc, MB_ESTOPPED);
}

static void test_attached_stop_with_work_queued(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  keeper k = {0};
  mb_actor *kp = mb_actor_create(h.loop, &keeper_type, &k, "keeper");
  for (int i = 0; i < 3; i++) {
    t_seq_msg *m = t_seq_new();
    mb_send(mb_loop_actor(h.loop), mb_actor_addr(kp), &m->hdr);
  }
  /* Never run: stop with three one-way messages queued. They are dropped, not leaked. */
  tu_home_fini(&h);
}

/* ---- trace ---------------------------------------------------------------------------- */

static void on_traced(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self, (void)reply;
  *(bool *)ctx = true;
}

/* One add(a, b) call from the loop actor to the adder, run to its reply. */
static void add_call(tu_home *h, mb_actor *adder, int a, int b) {
  t_add_msg *m = t_add_new();
  m->a = a;
  m->b = b;
  bool done = false;
  mb_call(mb_loop_actor(h->loop), mb_actor_addr(adder), &m->hdr, on_traced, &done);
  tu_home_run_until(h, &done);
}

/* Opens a trace to a new file (path: a mkstemp template), then a home loop with an adder. */
static mb_actor *trace_begin(char *path, tu_home *h) {
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(mb_trace_open(path), 0);
  tu_home_init(h, "home");
  return mb_actor_create(h->loop, &rt_adder_type, NULL, "adder");
}

/* Stops the loop and closes the trace: the trace file, open for reading. */
static FILE *trace_end(const char *path, tu_home *h) {
  tu_home_fini(h);
  mb_trace_close();
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  return f;
}

/* Runs `calls` add calls (the first `paused` of them with the trace paused), then checks the
 * trace holds exactly call, deliver, reply, deliver of the last one, in seq order. */
static void check_traced_add(int paused) {
  char path[] = "/tmp/mb-trace-XXXXXX";
  tu_home h;
  mb_actor *adder = trace_begin(path, &h);
  mb_trace_pause(paused > 0);
  for (int i = 0; i < paused; i++) add_call(&h, adder, 7, 7);
  mb_trace_pause(false);
  add_call(&h, adder, 2, 3);
  FILE *f = trace_end(path, &h);
  char line[1024];
  const char *want[] = {"\"ev\":\"call\"", "\"ev\":\"deliver\"", "\"ev\":\"reply\"",
                        "\"ev\":\"deliver\""};
  int n = 0;
  long long last = -1;
  while (fgets(line, sizeof line, f)) {
    long long seq = -1;
    assert_int_equal(sscanf(line, "{\"seq\":%lld", &seq), 1);
    assert_true(seq > last);
    last = seq;
    assert_true(n < 4);
    assert_non_null(strstr(line, want[n]));
    assert_non_null(strstr(line, "\"kind\":\"add\""));
    assert_non_null(strstr(line, n < 2 ? "a=2 b=3 sum=0" : "a=2 b=3 sum=5"));
    n++;
  }
  fclose(f);
  assert_int_equal(n, 4);
  unlink(path);
}

static void test_trace_records(void **unused) {
  (void)unused;
  check_traced_add(0);
}

/* Calls made while the trace is paused leave no record; resuming records again. */
static void test_trace_pause(void **unused) {
  (void)unused;
  check_traced_add(3);
}

/* MEMBACKING_TRACE_TIMES=exact (set in main, read when the first loop starts): every record
 * carries its own clock reading, so a pause on the test thread between two calls shows as
 * a gap between their records (interpolated times would spread it over all of them). */
static void test_trace_exact_times(void **unused) {
  (void)unused;
  char path[] = "/tmp/mb-trace-XXXXXX";
  tu_home h;
  mb_actor *adder = trace_begin(path, &h);
  add_call(&h, adder, 1, 1);
  usleep(20000);
  add_call(&h, adder, 2, 3);
  FILE *f = trace_end(path, &h);
  char line[1024];
  unsigned long long t[8];
  int n = 0;
  while (n < 8 && fgets(line, sizeof line, f)) {
    long long seq;
    assert_int_equal(sscanf(line, "{\"seq\":%lld,\"t_ns\":%llu", &seq, &t[n]), 2);
    n++;
  }
  fclose(f);
  unlink(path);
  assert_int_equal(n, 8);
  for (int i = 1; i < 8; i++) assert_true(t[i] >= t[i - 1]);
  assert_true(t[4] - t[3] >= 20000000ull); /* the pause, between the two calls */
  assert_true(t[3] - t[0] < 20000000ull && t[7] - t[4] < 20000000ull);
}

int main(void) {
  setenv("MEMBACKING_TRACE_TIMES", "exact", 1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stop_answers_pending),
      cmocka_unit_test(test_stop_releases_blocked_threads),
      cmocka_unit_test(test_attached_stop_with_work_queued),
      cmocka_unit_test(test_trace_records),
      cmocka_unit_test(test_trace_pause),
      cmocka_unit_test(test_trace_exact_times),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
