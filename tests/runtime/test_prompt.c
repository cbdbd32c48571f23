/* test_prompt.c: prompt replies (MB_ACTOR_PROMPT_REPLIES). A reply from an actor of the same
 * loop to an idle prompt actor runs its callback inside the replier's mb_reply; one that
 * finds the actor's mailbox non-empty waits its turn behind it; nesting is bounded; an actor
 * may destroy itself in such a callback; and under traffic between loops every call is
 * answered exactly once and every sender's messages arrive in order. */
#include <stdatomic.h>

#include "rt_util.h"

/* ---- what happened, in order ---------------------------------------------------------------- */

static char events[64];
static size_t nevents;

static void event(char c) {
  if (nevents + 1 < sizeof events) events[nevents++] = c;
  events[nevents] = '\0';
}

/* The replier: 'a' on a request, optionally a one-way note to the requester first ('x' when
 * the requester handles it), then the reply, then 'b'. */
static bool note_first;

static void replier_handle(mb_actor *self, mb_msg *msg) {
  event('a');
  if (note_first) assert_int_equal(mb_send(self, msg->from, &t_seq_new()->hdr), MB_OK);
  t_add_of(msg)->sum = t_add_of(msg)->a + t_add_of(msg)->b;
  mb_reply(msg, MB_OK);
  event('b');
}
static const mb_actor_type replier_type = {"replier", replier_handle, NULL, 0, NULL};

/* The caller: a T_NOTE starts a call to `peer`; its reply callback notes 'c' (and destroys
 * the caller when asked to); a T_SEQ notes 'x'. */
typedef struct caller {
  mb_addr peer;
  bool destroy_in_callback, done;
  int64_t sum;
} caller;

static void on_answer(mb_actor *self, mb_msg *reply, void *ctx) {
  caller *c = ctx;
  event('c');
  c->sum = t_add_of(reply)->sum;
  c->done = true;
  if (c->destroy_in_callback) mb_actor_destroy(self);
}

static void caller_handle(mb_actor *self, mb_msg *msg) {
  caller *c = mb_actor_state(self);
  if (t_seq_of(msg)) {
    event('x');
    return;
  }
  t_add_msg *m = t_add_new();
  m->a = 40, m->b = 2;
  mb_call(self, c->peer, &m->hdr, on_answer, c);
}
static const mb_actor_type caller_type = {"caller", caller_handle, NULL, 0, NULL};
static const mb_actor_type prompt_caller_type = {"caller", caller_handle, NULL,
                                                 MB_ACTOR_PROMPT_REPLIES, NULL};

/* One call from a caller of `type` to a replier on the test's loop: the events seen. */
static void one_call(const mb_actor_type *type, bool first, bool destroy, const char *want) {
  tu_home h;
  tu_home_init(&h, "home");
  nevents = 0;
  events[0] = '\0';
  note_first = first;
  caller c = {.destroy_in_callback = destroy};
  c.peer = mb_actor_addr(mb_actor_create(h.loop, &replier_type, NULL, "replier"));
  mb_actor *a = mb_actor_create(h.loop, type, &c, "caller");
  uint32_t actors = mb_loop_stats_get(h.loop).actors;
  assert_int_equal(mb_send(mb_loop_actor(h.loop), mb_actor_addr(a), &t_note_new()->hdr), MB_OK);
  tu_home_run_until(&h, &c.done);
  assert_string_equal(events, want);
  assert_int_equal(c.sum, 42);
  assert_int_equal(mb_loop_stats_get(h.loop).actors, destroy ? actors - 1 : actors);
  tu_home_fini(&h);
}

static void test_reply_runs_inside_the_repliers_handler(void **unused) {
  (void)unused;
  one_call(&prompt_caller_type, false, false, "acb");
  one_call(&caller_type, false, false, "abc"); /* without the flag: in a turn of its own */
}

static void test_reply_waits_behind_queued_messages(void **unused) {
  (void)unused;
  one_call(&prompt_caller_type, true, false, "abxc");
  one_call(&caller_type, true, false, "abxc");
}

static void test_actor_destroys_itself_in_a_prompt_callback(void **unused) {
  (void)unused;
  one_call(&prompt_caller_type, false, true, "acb"); /* ASan: freed once, after the callback */
}

/* ---- nesting: a chain of prompt actors, each calling the next and answering from its callback */

enum { LINKS = 12 };

typedef struct chain_link {
  mb_addr next;   /* none for the last */
  mb_msg *held;   /* the request it answers once the next one answered */
} chain_link;

static int depth, max_depth;

static void on_next(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  chain_link *l = ctx;
  max_depth = ++depth > max_depth ? depth : max_depth;
  t_add_of(l->held)->sum = t_add_of(reply)->sum + 1;
  mb_msg *held = l->held;
  l->held = NULL;
  mb_reply(held, MB_OK);
  depth--;
}

static void link_handle(mb_actor *self, mb_msg *msg) {
  chain_link *l = mb_actor_state(self);
  if (l->next.loop == NULL) {
    t_add_of(msg)->sum = 1;
    mb_reply(msg, MB_OK);
    return;
  }
  mb_msg_keep(msg);
  l->held = msg;
  mb_call(self, l->next, &t_add_new()->hdr, on_next, l);
}
static const mb_actor_type link_type = {"link", link_handle, NULL, MB_ACTOR_PROMPT_REPLIES, NULL};

static void on_chain(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  *(int64_t *)ctx = t_add_of(reply)->sum;
}

static void test_nesting_is_bounded(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  chain_link links[LINKS] = {0};
  mb_addr next = {0};
  for (int i = LINKS - 1; i >= 0; i--) {
    links[i].next = next;
    next = mb_actor_addr(mb_actor_create(h.loop, &link_type, &links[i], "link"));
  }
  int64_t sum = 0;
  depth = max_depth = 0;
  mb_call(mb_loop_actor(h.loop), next, &t_add_new()->hdr, on_chain, &sum);
  while (sum == 0) uv_run(&h.uv, UV_RUN_ONCE);
  assert_int_equal(sum, LINKS);
  /* prompt callbacks nested in a callback of a turn: it happened, and stopped at the bound
   * (four deep, plus the callback they started from) */
  assert_in_range(max_depth, 2, 5);
  tu_home_fini(&h);
}

/* ---- stress: prompt actors on three loops, calls and one-way messages among them ---------- */

enum { LOOPS = 3, PER_LOOP = 6, WORKERS = LOOPS * PER_LOOP, ROUNDS = 3000, HOPS = 3 };

typedef struct worker {
  uint32_t id, rounds;
  uint64_t rng;
  uint64_t sent[WORKERS];  /* T_SEQ sent to each peer */
  uint64_t seen[WORKERS];  /* T_SEQ seen from each peer */
  mb_msg *held;            /* a request answered once a nested call is */
} worker;

static mb_addr waddr[WORKERS];
static worker workers[WORKERS];
static _Atomic int finished, errors, answered, issued;
static atomic_uint_fast64_t seqs_sent, seqs_seen; /* one-way messages, in all */
static mb_loop *home; /* the test thread's: woken by each worker that finishes */

static void nothing(mb_loop *l, void *arg) { (void)l, (void)arg; }

static uint32_t pick(worker *w) {
  w->rng = w->rng * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(w->rng >> 33) % WORKERS;
}

static void round_go(mb_actor *self, worker *w);

static void on_round(mb_actor *self, mb_msg *reply, void *ctx) {
  worker *w = ctx;
  t_add_msg *m = t_add_of(reply);
  if (reply->status != MB_OK || m->sum != m->a + HOPS) atomic_fetch_add(&errors, 1);
  atomic_fetch_add(&answered, 1);
  if (++w->rounds == ROUNDS) {
    atomic_fetch_add(&finished, 1);
    if (mb_loop_post(home, nothing, NULL) != 0) atomic_fetch_add(&errors, 1);
    return;
  }
  round_go(self, w);
}

/* A round: a one-way T_SEQ to a random peer, then a call of HOPS hops through random peers. */
static void round_go(mb_actor *self, worker *w) {
  uint32_t to = pick(w);
  t_seq_msg *s = t_seq_new();
  s->sender = w->id, s->seq = w->sent[to]++;
  atomic_fetch_add(&seqs_sent, 1);
  if (mb_send(self, waddr[to], &s->hdr) != MB_OK) atomic_fetch_add(&errors, 1);
  t_add_msg *m = t_add_new();
  m->a = (int64_t)w->rounds, m->b = HOPS;
  atomic_fetch_add(&issued, 1);
  mb_call(self, waddr[pick(w)], &m->hdr, on_round, w);
}

static void on_hop(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  worker *w = ctx;
  mb_msg *held = w->held;
  w->held = NULL;
  t_add_of(held)->sum = t_add_of(reply)->sum + 1;
  mb_reply(held, reply->status);
}

static void worker_handle(mb_actor *self, mb_msg *msg) {
  worker *w = mb_actor_state(self);
  t_seq_msg *s = t_seq_of(msg);
  t_add_msg *m = t_add_of(msg);
  if (s != NULL) {
    if (s->seq != w->seen[s->sender]++) atomic_fetch_add(&errors, 1); /* per-sender order */
    atomic_fetch_add(&seqs_seen, 1);
  } else if (m != NULL && (m->b == 1 || w->held != NULL)) {
    m->sum = m->a + m->b; /* the last hop, or busy with a hop of its own: answer now */
    mb_reply(msg, MB_OK);
  } else if (m != NULL) {
    mb_msg_keep(msg);
    w->held = msg;
    t_add_msg *n = t_add_new();
    n->a = m->a, n->b = m->b - 1;
    mb_call(self, waddr[pick(w)], &n->hdr, on_hop, w);
  } else {
    round_go(self, w);
  }
}
static const mb_actor_type worker_type = {"worker", worker_handle, NULL,
                                          MB_ACTOR_PROMPT_REPLIES, NULL};

static void test_stress_across_loops(void **unused) {
  (void)unused;
  tu_home h;
  tu_home_init(&h, "home");
  mb_loop *loops[LOOPS] = {h.loop, tu_start("l1"), tu_start("l2")};
  home = h.loop;
  for (uint32_t i = 0; i < WORKERS; i++) {
    workers[i] = (worker){.id = i, .rng = 0x9e3779b97f4a7c15ull * (i + 1)};
    mb_loop *l = loops[i % LOOPS];
    waddr[i] = l == h.loop ? mb_actor_addr(mb_actor_create(l, &worker_type, &workers[i], "w"))
                           : rt_spawn_on(l, &worker_type, &workers[i], "w");
  }
  for (uint32_t i = 0; i < WORKERS; i++)
    assert_int_equal(mb_send_from(waddr[i], &t_note_new()->hdr), MB_OK);
  while (atomic_load(&finished) < WORKERS) uv_run(&h.uv, UV_RUN_ONCE);
  /* A round's one-way message may still be on its way when its call has come back (it goes
   * to another peer, maybe on another loop): every one arrives before the loops stop. */
  while (atomic_load(&seqs_seen) < atomic_load(&seqs_sent)) uv_run(&h.uv, UV_RUN_NOWAIT);
  assert_int_equal(atomic_load(&errors), 0);
  assert_int_equal(atomic_load(&answered), WORKERS * ROUNDS);
  assert_int_equal(atomic_load(&issued), WORKERS * ROUNDS);
  tu_stop(loops[1]);
  tu_stop(loops[2]);
  tu_home_fini(&h);
  uint64_t sent = 0, seen = 0;
  for (uint32_t i = 0; i < WORKERS; i++)
    for (uint32_t j = 0; j < WORKERS; j++) sent += workers[i].sent[j], seen += workers[j].seen[i];
  assert_int_equal(sent, seen); /* every one-way message arrived */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reply_runs_inside_the_repliers_handler),
      cmocka_unit_test(test_reply_waits_behind_queued_messages),
      cmocka_unit_test(test_actor_destroys_itself_in_a_prompt_callback),
      cmocka_unit_test(test_nesting_is_bounded),
      cmocka_unit_test(test_stress_across_loops),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
