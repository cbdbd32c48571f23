/* test_attach.c: an attached loop's lifecycle as libuv's own handles have it. With nothing of
 * the runtime's to serve or wait for, the VMM's uv_run(UV_RUN_DEFAULT) returns by itself; a
 * call in flight, an mb_loop_ref and an actor on the loop keep it running; mb_loop_stop works
 * from a reply callback on the loop itself (it takes effect once the callback returns) and
 * from a plain libuv callback. */
#include <unistd.h>

#include "rt_util.h"

/* An adder that takes its time, so that a reply is surely still out when uv_run would end. */
static void slow_adder_handle(mb_actor *self, mb_msg *msg) {
  usleep(20000);
  rt_adder_handle(self, msg);
}
static const mb_actor_type slow_adder_type = {"slow-adder", slow_adder_handle, NULL, 0, NULL};

typedef struct call_rec {
  int replies;
  int64_t sum;
  bool stop_in_cb;
  int stop_rc;
  mb_loop *loop;
  bool loop_usable_after_stop; /* the callback still ran on a loop it had stopped */
} call_rec;

static void on_sum(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  call_rec *r = ctx;
  r->replies++;
  r->sum = reply->status ? -1 : t_add_of(reply)->sum;
  if (!r->stop_in_cb) return;
  r->stop_rc = mb_loop_stop(r->loop);
  r->loop_usable_after_stop = mb_loop_is_current(r->loop) && !mb_loop_stopping(r->loop);
  mb_loop_free(r->loop); /* completes once its handles have closed */
}

static void call_adder(mb_loop *home, mb_addr to, int64_t a, call_rec *r) {
  t_add_msg *m = t_add_new();
  assert_non_null(m);
  m->a = a;
  m->b = 1;
  mb_call(mb_loop_actor(home), to, &m->hdr, on_sum, r);
}

static void test_idle_loop_lets_uv_run_return(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  assert_int_equal(uv_run(&h.uv, UV_RUN_DEFAULT), 0);
  assert_false(uv_loop_alive(&h.uv));
  tu_home_fini(&h);
}

static void test_call_in_flight_keeps_loop_running(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  mb_loop *far = tu_start("far");
  mb_addr adder = rt_spawn_on(far, &slow_adder_type, NULL, "adder");
  call_rec r = {0};
  call_adder(h.loop, adder, 41, &r);
  call_adder(h.loop, adder, 1, &r);
  assert_true(uv_loop_alive(&h.uv));
  uv_run(&h.uv, UV_RUN_DEFAULT); /* returns by itself once both replies have run */
  assert_int_equal(r.replies, 2);
  assert_int_equal(r.sum, 2);
  assert_false(uv_loop_alive(&h.uv));
  tu_stop(far);
  tu_home_fini(&h);
}

typedef struct held_op {
  mb_loop *home;
  int ran;
} held_op;

static void on_post(mb_loop *l, void *arg) {
  held_op *op = arg;
  op->ran++;
  mb_loop_unref(l);
}

/* A VMM's own operation that runs elsewhere and finishes on home, held with mb_loop_ref. */
static void post_from(mb_loop *l, void *arg) {
  (void)l;
  held_op *op = arg;
  usleep(20000);
  assert_int_equal(mb_loop_post(op->home, on_post, op), 0);
}

static void test_ref_keeps_loop_running(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  mb_loop *far = tu_start("far");
  held_op op = {h.loop, 0};
  mb_loop_ref(h.loop);
  assert_true(uv_loop_alive(&h.uv));
  assert_int_equal(mb_loop_post(far, post_from, &op), 0);
  uv_run(&h.uv, UV_RUN_DEFAULT); /* returns once on_post has run and let go */
  assert_int_equal(op.ran, 1);
  assert_false(uv_loop_alive(&h.uv));
  tu_stop(far);
  tu_home_fini(&h);
}

static void count_post(mb_loop *l, void *arg) {
  (void)l;
  (*(int *)arg)++;
}

/* A closure the loop's own thread posts to it is work in flight too. */
static void test_self_post_keeps_loop_running(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  int ran = 0;
  assert_int_equal(mb_loop_post(h.loop, count_post, &ran), 0);
  assert_true(uv_loop_alive(&h.uv));
  uv_run(&h.uv, UV_RUN_DEFAULT);
  assert_int_equal(ran, 1);
  assert_false(uv_loop_alive(&h.uv));
  tu_home_fini(&h);
}

static void test_actor_keeps_loop_running(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  mb_actor *a = mb_actor_create(h.loop, &rt_adder_type, NULL, "adder");
  assert_non_null(a);
  assert_true(uv_loop_alive(&h.uv)); /* it may be sent to from any thread */
  mb_actor_destroy(a);
  assert_false(uv_loop_alive(&h.uv));
  assert_int_equal(uv_run(&h.uv, UV_RUN_DEFAULT), 0);
  tu_home_fini(&h);
}

static void test_stop_from_reply_callback(void **unused) {
  (void)unused;
  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  int err = 0;
  mb_loop *home = mb_loop_attach(&uv, "home", &err);
  assert_non_null(home);
  mb_loop *far = tu_start("far");
  mb_addr adder = rt_spawn_on(far, &slow_adder_type, NULL, "adder");
  call_rec r = {.stop_in_cb = true, .loop = home};
  call_adder(home, adder, 1, &r);
  uv_run(&uv, UV_RUN_DEFAULT);
  assert_int_equal(r.replies, 1);
  assert_int_equal(r.stop_rc, 0);
  assert_true(r.loop_usable_after_stop);
  assert_null(mb_loop_current());
  assert_int_equal(uv_loop_close(&uv), 0); /* handles closed, loop freed */
  tu_stop(far);
}

static void on_timer_stop(uv_timer_t *t) {
  call_rec *r = t->data;
  r->stop_rc = mb_loop_stop(r->loop);
  r->loop_usable_after_stop = mb_loop_stopping(r->loop);
  uv_close((uv_handle_t *)t, NULL);
}

static void test_stop_from_libuv_callback(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  mb_actor *a = mb_actor_create(h.loop, &rt_adder_type, NULL, "adder");
  assert_non_null(a); /* would keep the loop running until stopped */
  uv_timer_t t;
  call_rec r = {.loop = h.loop, .stop_rc = -1};
  t.data = &r;
  uv_timer_init(&h.uv, &t);
  uv_timer_start(&t, on_timer_stop, 1, 0);
  uv_run(&h.uv, UV_RUN_DEFAULT);
  assert_int_equal(r.stop_rc, 0);
  assert_true(r.loop_usable_after_stop); /* stopped at once: not inside a turn */
  mb_loop_free(h.loop);
  assert_int_equal(uv_loop_close(&h.uv), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_idle_loop_lets_uv_run_return),
      cmocka_unit_test(test_call_in_flight_keeps_loop_running),
      cmocka_unit_test(test_ref_keeps_loop_running),
      cmocka_unit_test(test_self_post_keeps_loop_running),
      cmocka_unit_test(test_actor_keeps_loop_running),
      cmocka_unit_test(test_stop_from_reply_callback),
      cmocka_unit_test(test_stop_from_libuv_callback),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
