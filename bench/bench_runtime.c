/* bench_runtime.c: benchmarks of the actor runtime (spec/bench.md): msg.same_loop,
 * rpc.same_loop and rpc.cross_thread (against the kernel's wake floor, eventfd.pingpong, since
 * the spec's version 2; raw libuv's uv_async.pingpong is still a row of its own).
 *
 * The harness thread drives a loop attached to a uv_loop_t of the benchmark's state; the
 * cross-thread peer lives on a started loop. */
#include <stdlib.h>

#include <uv.h>

#include "areas.h"
#include "harness.h"
#include "mb_protocol.h"
#include "mb_runtime.h"

#define BN_GO_FIELDS(F) F(uint32_t, count)
#define BN_ADD_FIELDS(F) F(uint64_t, a) F(uint64_t, sum)
#define BN_MESSAGES(M)                \
  M(bn, BN_GO, go, BN_GO_FIELDS)      \
  M(bn, BN_ADD, add, BN_ADD_FIELDS)
MB_PROTOCOL_DECLARE(bn, BN_MESSAGES)
MB_PROTOCOL_DEFINE(bn, BN_MESSAGES);

/* The home loop, attached to a uv loop this thread runs: shared by the benchmarks set up at
 * the same time (a measured side and its baseline), since a thread runs one runtime loop. */
static struct {
  uv_loop_t uv;
  mb_loop *loop;
  unsigned users;
} home;

static int home_get(void) {
  if (home.users++ > 0) return 0;
  int err = uv_loop_init(&home.uv);
  if (!err) home.loop = mb_loop_attach(&home.uv, "bench", &err);
  if (!err) return 0;
  if (!home.loop) uv_loop_close(&home.uv);
  home.users = 0;
  return err;
}

static void home_put(void) {
  if (--home.users > 0) return;
  mb_loop_stop(home.loop);
  uv_run(&home.uv, UV_RUN_DEFAULT);
  mb_loop_free(home.loop);
  uv_loop_close(&home.uv);
  home.loop = NULL;
}

typedef struct rt_bench {
  mb_bench *b;
  mb_loop *peer_loop;
  mb_actor *driver;
  mb_addr sink;          /* counts messages, or answers BN_ADD */
  uint64_t handled;      /* by the sink, when it is on the home loop */
  uint32_t calls_left;
  uint64_t t0;
  bool timed;            /* sample each round trip (cross-thread) */
  bool done;
} rt_bench;

static void sink_handle(mb_actor *self, mb_msg *msg) {
  bn_add_msg *m = bn_add_of(msg);
  if (m) {
    m->sum = m->a + 1;
    mb_reply(msg, MB_OK);
    return;
  }
  rt_bench *st = mb_actor_state(self);
  if (st) st->handled++;
}
static const mb_actor_type sink_type = {.name = "sink", .handle = sink_handle};

static void next_call(mb_actor *self, rt_bench *st);

static void on_add(mb_actor *self, mb_msg *reply, void *ctx) {
  rt_bench *st = ctx;
  if (st->timed) mb_bench_sample(st->b, (double)(mb_bench_now_ns() - st->t0));
  if (reply->status) mb_bench_fail(st->b, "call failed: %s", mb_strerror(reply->status));
  next_call(self, st);
}

static void next_call(mb_actor *self, rt_bench *st) {
  if (st->calls_left == 0) {
    st->done = true;
    return;
  }
  st->calls_left--;
  bn_add_msg *m = bn_add_new();
  m->a = st->calls_left;
  if (st->timed) st->t0 = mb_bench_now_ns();
  mb_call(self, st->sink, &m->hdr, on_add, st);
}

/* The driver: BN_GO{count} either sends `count` messages to the sink or makes `count`
 * calls to it one after another. */
static void driver_handle(mb_actor *self, mb_msg *msg) {
  rt_bench *st = mb_actor_state(self);
  bn_go_msg *go = bn_go_of(msg);
  if (!go) return;
  if (st->calls_left == UINT32_MAX) { /* one-way mode */
    for (uint32_t i = 0; i < go->count; i++) mb_send(self, st->sink, &bn_go_new()->hdr);
    st->done = true;
    return;
  }
  st->calls_left = go->count;
  next_call(self, st);
}
static const mb_actor_type driver_type = {.name = "driver", .handle = driver_handle};

static void spawn_sink(mb_loop *l, void *arg) {
  rt_bench *st = arg;
  st->sink = mb_actor_addr(mb_actor_create(l, &sink_type, NULL, "sink"));
}

static void teardown(void *state) {
  rt_bench *st = state;
  if (st->peer_loop) {
    mb_loop_stop(st->peer_loop);
    mb_loop_free(st->peer_loop);
  }
  if (st->driver) mb_actor_destroy(st->driver);
  mb_actor *sink = home.loop ? mb_actor_at(home.loop, st->sink) : NULL;
  if (sink) mb_actor_destroy(sink);
  home_put();
  free(st);
}

static int setup_common(mb_bench *b, void **state, bool cross) {
  rt_bench *st = calloc(1, sizeof *st);
  if (!st) return -12;
  st->b = b;
  int err = home_get();
  if (err) {
    free(st);
    return mb_bench_fail(b, "loop: %s", mb_strerror(err));
  }
  st->driver = mb_actor_create(home.loop, &driver_type, st, "driver");
  if (cross) {
    st->peer_loop = mb_loop_start("peer", &err);
    if (st->peer_loop) mb_loop_exec(st->peer_loop, spawn_sink, st);
  } else {
    st->sink = mb_actor_addr(mb_actor_create(home.loop, &sink_type, st, "sink"));
  }
  if (err) {
    teardown(st);
    return mb_bench_fail(b, "peer loop: %s", mb_strerror(err));
  }
  *state = st;
  return 0;
}

static int go(rt_bench *st, uint32_t n, bool oneway) {
  st->done = false;
  st->calls_left = oneway ? UINT32_MAX : 0;
  uint64_t target = st->handled + n;
  bn_go_msg *m = bn_go_new();
  m->count = n;
  mb_send(st->driver, mb_actor_addr(st->driver), &m->hdr);
  while (!st->done || (oneway && st->handled < target)) uv_run(&home.uv, UV_RUN_ONCE);
  return 0;
}

static int setup_local(mb_bench *b, void **state) { return setup_common(b, state, false); }
static int setup_cross(mb_bench *b, void **state) {
  int rc = setup_common(b, state, true);
  if (!rc) ((rt_bench *)*state)->timed = true;
  return rc;
}
static int run_msg(mb_bench *b, void *state, uint32_t n) { (void)b; return go(state, n, true); }
static int run_rpc(mb_bench *b, void *state, uint32_t n) { (void)b; return go(state, n, false); }

/* rpc.same_loop.traced: rpc.same_loop with the message trace on, side by side with the
 * untraced one in the same process (the trace is paused while the baseline runs). The trace
 * goes to /dev/null: it is recorded and formatted as always, but a full run would write
 * gigabytes, and the disk's speed is not the runtime's cost. */
static int setup_traced(mb_bench *b, void **state) {
  if (getenv("MEMBACKING_TRACE"))
    return mb_bench_skip(b, "MEMBACKING_TRACE is set: every benchmark is traced");
  int rc = setup_common(b, state, false);
  if (rc) return rc;
  if (mb_trace_open("/dev/null") != MB_OK) {
    teardown(*state);
    return mb_bench_fail(b, "trace: cannot open /dev/null");
  }
  mb_trace_pause(true);
  return 0;
}
static int run_traced(mb_bench *b, void *state, uint32_t n) {
  (void)b;
  mb_trace_pause(false);
  int rc = go(state, n, false);
  mb_trace_pause(true);
  return rc;
}
static void teardown_traced(void *state) {
  mb_trace_close();
  teardown(state);
}

static const mb_bench_def runtime_benches[] = {
    {.name = "msg.same_loop", .unit = MB_BENCH_NS, .setup = setup_local, .run = run_msg,
     .teardown = teardown, .batch = 1000,
     .doc = "one message sent and handled between two actors on one loop"},
    {.name = "rpc.same_loop", .unit = MB_BENCH_NS, .setup = setup_local, .run = run_rpc,
     .teardown = teardown, .batch = 1000,
     .doc = "a request and its reply between two actors on one loop"},
    {.name = "rpc.same_loop.traced", .unit = MB_BENCH_NS, .baseline = "rpc.same_loop",
     .setup = setup_traced, .run = run_traced, .teardown = teardown_traced, .batch = 1000,
     .doc = "rpc.same_loop with the message trace on (to /dev/null)"},
    {.name = "rpc.cross_thread", .unit = MB_BENCH_NS, .baseline = "eventfd.pingpong",
     .setup = setup_cross, .run = run_rpc, .teardown = teardown,
     .flags = MB_BENCH_SELF_TIMED | MB_BENCH_CPU,
     .doc = "a request and its reply between actors on two loops on two threads"},
};

void mb_bench_area_bench_runtime(void) { MB_BENCH_REGISTER_ALL(runtime_benches); }
