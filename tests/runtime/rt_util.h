/* rt_util.h: small helpers shared by the runtime tests (actors spawned on started loops, an
 * adder); the loops themselves come from tests/common/test_util.h. */
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
#include "test_util.h" /* tu_home, tu_start, tu_stop */

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
static const mb_actor_type rt_adder_type = {"adder", rt_adder_handle, NULL, 0, NULL};

#endif
