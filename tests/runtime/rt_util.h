/* rt_util.h: small helpers shared by the runtime tests (a loop run by the test thread). */
#ifndef MB_RT_UTIL_H
#define MB_RT_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "mb_runtime.h"
#include "test_proto.h"

/* A loop attached to a uv loop that the test thread itself runs. */
typedef struct rt_home {
  uv_loop_t uv;
  mb_loop *loop;
} rt_home;

static inline void rt_home_init(rt_home *h) {
  assert_int_equal(uv_loop_init(&h->uv), 0);
  int err = 0;
  h->loop = mb_loop_attach(&h->uv, "home", &err);
  assert_non_null(h->loop);
}

/* Run the test's loop until *flag is true (the loop never blocks forever: callers make sure
 * work is pending or arrives from other threads). */
static inline void rt_home_run_until(rt_home *h, const volatile bool *flag) {
  while (!*flag) uv_run(&h->uv, UV_RUN_ONCE);
}

static inline void rt_home_fini(rt_home *h) {
  assert_int_equal(mb_loop_stop(h->loop), 0);
  uv_run(&h->uv, UV_RUN_DEFAULT);
  mb_loop_free(h->loop);
  assert_int_equal(uv_loop_close(&h->uv), 0);
}

static inline mb_loop *rt_start(const char *name) {
  int err = 0;
  mb_loop *l = mb_loop_start(name, &err);
  assert_non_null(l);
  return l;
}

static inline void rt_stop(mb_loop *l) {
  assert_int_equal(mb_loop_stop(l), 0); /* uv_loop_close() == 0 on its thread */
  mb_loop_free(l);
}

/* Create an actor on a started loop from the test thread. */
typedef struct rt_spawn {
  const mb_actor_type *type;
  void *state;
  const char *name;
  mb_actor *actor;
} rt_spawn;

static inline void rt_spawn_fn(mb_loop *l, void *arg) {
  rt_spawn *s = arg;
  s->actor = mb_actor_create(l, s->type, s->state, s->name);
}

static inline mb_addr rt_spawn_on(mb_loop *l, const mb_actor_type *type, void *state, const char *name) {
  rt_spawn s = {type, state, name, NULL};
  assert_int_equal(mb_loop_exec(l, rt_spawn_fn, &s), 0);
  assert_non_null(s.actor);
  return mb_actor_addr(s.actor);
}

/* An adder: answers T_ADD requests with sum = a + b. */
static inline void rt_adder_handle(mb_actor *self, mb_msg *msg) {
  (void)self;
  t_add_msg *m = t_add_of(msg);
  if (!m) return;
  m->sum = m->a + m->b;
  mb_reply(msg, MB_OK);
}
static const mb_actor_type rt_adder_type = {"adder", rt_adder_handle, NULL, 0};

#endif
