/* bench_idle.c: idle.cpu (spec/bench.md, version 2): what idle loops cost.
 *
 * IDLE_LOOPS runtime loops on as many started threads, one relay actor on each. One
 * operation (self-timed, MB_BENCH_SELF_TIMED):
 *   - a burst of traffic among them, untimed: one request from the harness thread
 *     (mb_call_sync) that the relays forward round the ring, loop to loop, IDLE_LAPS times
 *     (IDLE_LOOPS * IDLE_LAPS cross-thread hops), the last relay answering it; every loop has
 *     then just talked to another loop, as after a burst of guest-memory operations;
 *   - then IDLE_WINDOW_NS of idleness: the harness thread sleeps, and the CPU time the whole
 *     process (getrusage: all threads, user + system) consumed meanwhile, scaled to one second
 *     of wall time, is the sample. The harness thread's own share is its sleep call: nothing.
 * So p50 is "CPU ns per second of idleness" (target: under 1 ms, issue 14); cpu_ns is the CPU
 * of a whole operation, burst included.
 *
 * An operation takes over a second: samples = IDLE_SAMPLES (1 with --quick).
 */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "areas.h"
#include "harness.h"
#include "mb_protocol.h"
#include "mb_runtime.h"

enum { IDLE_LOOPS = 8, IDLE_LAPS = 64, IDLE_SAMPLES = 5 };
#define IDLE_WINDOW_NS 1000000000ull

#define BI_TOKEN_FIELDS(F) F(uint32_t, hops)
#define BI_MESSAGES(M) M(bi, BI_TOKEN, token, BI_TOKEN_FIELDS)
MB_PROTOCOL_DECLARE(bi, BI_MESSAGES)
MB_PROTOCOL_DEFINE(bi, BI_MESSAGES);

typedef struct idle_bench idle_bench;

typedef struct relay {
  idle_bench *st;
  uint32_t next; /* forwards to st->relays[next] */
} relay;

struct idle_bench {
  mb_loop *loops[IDLE_LOOPS];
  mb_addr relays[IDLE_LOOPS];
  relay state[IDLE_LOOPS]; /* relay i's actor state */
};

/* A token with hops left goes on to the next relay; the last hop answers the requester. */
static void relay_handle(mb_actor *self, mb_msg *msg) {
  bi_token_msg *t = bi_token_of(msg);
  if (t == NULL)
    return;
  relay *r = mb_actor_state(self);
  if (--t->hops == 0 || mb_forward(self, r->st->relays[r->next], msg) != MB_OK)
    mb_reply(msg, MB_OK);
}
static const mb_actor_type relay_type = {.name = "relay", .handle = relay_handle};

/* On loop i's thread: its relay. */
static void relay_spawn_on(mb_loop *loop, void *arg) {
  relay *r = arg;
  uint32_t i = (uint32_t)(r - r->st->state);
  mb_actor *a = mb_actor_create(loop, &relay_type, r, "relay");
  if (a)
    r->st->relays[i] = mb_actor_addr(a);
}

static void idle_teardown(void *state) {
  idle_bench *st = state;
  for (int i = IDLE_LOOPS - 1; i >= 0; i--) {
    if (st->loops[i]) {
      mb_loop_stop(st->loops[i]);
      mb_loop_free(st->loops[i]);
    }
  }
  free(st);
}

static int idle_setup(mb_bench *b, void **state) {
  idle_bench *st = calloc(1, sizeof *st);
  if (st == NULL)
    return -ENOMEM;
  for (uint32_t i = 0; i < IDLE_LOOPS; i++) {
    int err = 0;
    st->state[i] = (relay){st, (i + 1) % IDLE_LOOPS};
    st->loops[i] = mb_loop_start("idle", &err);
    if (st->loops[i] && (err = mb_loop_exec(st->loops[i], relay_spawn_on, &st->state[i])) == 0 &&
        st->relays[i].loop == NULL)
      err = MB_ENOMEM;
    if (err != 0) {
      idle_teardown(st);
      return mb_bench_fail(b, "loop %u: %s", i, mb_strerror(err));
    }
  }
  *state = st;
  return 0;
}

static int idle_burst(mb_bench *b, idle_bench *st) {
  bi_token_msg *t = bi_token_new();
  if (t == NULL)
    return mb_bench_fail(b, "out of memory");
  t->hops = IDLE_LOOPS * IDLE_LAPS;
  int rc = mb_call_sync(st->relays[0], &t->hdr);
  uint32_t left = t->hops;
  mb_msg_free(&t->hdr);
  if (rc != MB_OK || left != 0)
    return mb_bench_fail(b, "burst: %s (%u hops left)", mb_strerror(rc), left);
  return 0;
}

static void sleep_ns(uint64_t ns) {
  struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static int idle_run(mb_bench *b, void *state, uint32_t n) {
  idle_bench *st = state;
  for (uint32_t i = 0; i < n; i++) {
    int rc = idle_burst(b, st);
    if (rc != 0)
      return rc;
    uint64_t cpu0 = mb_bench_cpu_ns(), t0 = mb_bench_now_ns();
    sleep_ns(IDLE_WINDOW_NS);
    uint64_t cpu1 = mb_bench_cpu_ns(), t1 = mb_bench_now_ns();
    mb_bench_sample(b, (double)(cpu1 - cpu0) * 1e9 / (double)(t1 - t0));
  }
  return 0;
}

static const mb_bench_def idle_benches[] = {
    {.name = "idle.cpu", .unit = MB_BENCH_NS, .setup = idle_setup, .run = idle_run,
     .teardown = idle_teardown, .flags = MB_BENCH_SELF_TIMED | MB_BENCH_CPU,
     .samples = IDLE_SAMPLES,
     .doc = "CPU ns per second of idleness of 8 started loops after a burst of traffic among "
            "them"},
};

void mb_bench_area_bench_idle(void) { MB_BENCH_REGISTER_ALL(idle_benches); }
