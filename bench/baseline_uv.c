/* baseline_uv.c: uv_async.pingpong, the floor of rpc.cross_thread (spec/bench.md).
 *
 * Two raw libuv loops on two threads bounce one uv_async_send each way; one operation is one
 * round trip. Loop A runs on the harness thread, inside run(), so the harness times each
 * round trip alone; loop B runs on a thread of its own. Nothing else is on either loop.
 *
 * Debian 12's libuv 1.44.2 spins in uv_async_send / uv__async_io (removed in 1.45.0, libuv
 * PR #3879): that is deliberate here, this is the floor the runtime's own wake-up must beat
 * (reference/actor-runtime-anchors.md, 2.1-2.2).
 */

#include "areas.h"
#include "harness.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct pingpong {
  uv_loop_t loop_a;    /* harness thread */
  uv_loop_t loop_b;    /* thread_b */
  uv_async_t pong;     /* on loop A, sent by B */
  uv_async_t ping;     /* on loop B, sent by A */
  pthread_t thread_b;
  atomic_bool stop;    /* set before the last ping: B closes its handle instead of answering */
  bool ponged;         /* loop A's thread only */
} pingpong;

static void on_ping(uv_async_t *ping) {
  pingpong *pp = ping->data;
  if (atomic_load_explicit(&pp->stop, memory_order_acquire))
    uv_close((uv_handle_t *)ping, NULL); /* loop B then has nothing left and returns */
  else
    uv_async_send(&pp->pong);
}

static void on_pong(uv_async_t *pong) {
  pingpong *pp = pong->data;
  pp->ponged = true;
}

static void *thread_b_main(void *arg) {
  pingpong *pp = arg;
  uv_run(&pp->loop_b, UV_RUN_DEFAULT);
  return NULL;
}

/* Close an async handle of a loop that is not running, and the loop. */
static void close_loop(uv_loop_t *loop, uv_async_t *handle) {
  if (handle)
    uv_close((uv_handle_t *)handle, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
}

static int pingpong_setup(mb_bench *b, void **state) {
  pingpong *pp = calloc(1, sizeof *pp);
  if (pp == NULL)
    return -ENOMEM;
  int rc = uv_loop_init(&pp->loop_a);
  if (rc != 0) {
    free(pp);
    return mb_bench_fail(b, "uv_loop_init: %s", uv_strerror(rc));
  }
  const char *what = "uv_loop_init";
  rc = uv_loop_init(&pp->loop_b);
  if (rc != 0)
    goto fail_a;
  what = "uv_async_init";
  rc = uv_async_init(&pp->loop_a, &pp->pong, on_pong);
  if (rc != 0)
    goto fail_b;
  rc = uv_async_init(&pp->loop_b, &pp->ping, on_ping);
  if (rc != 0)
    goto fail_pong;
  pp->pong.data = pp->ping.data = pp;
  /* Both loops are fully set up before thread B starts: pthread_create orders it. */
  what = "pthread_create";
  rc = -pthread_create(&pp->thread_b, NULL, thread_b_main, pp);
  if (rc != 0) {
    close_loop(&pp->loop_b, &pp->ping);
    close_loop(&pp->loop_a, &pp->pong);
    goto fail;
  }
  *state = pp;
  return 0;

fail_pong:
  close_loop(&pp->loop_a, &pp->pong);
  close_loop(&pp->loop_b, NULL);
  goto fail;
fail_b:
  close_loop(&pp->loop_b, NULL);
fail_a:
  close_loop(&pp->loop_a, NULL);
fail:
  free(pp);
  return mb_bench_fail(b, "%s: %s", what, uv_strerror(rc));
}

static int pingpong_run(mb_bench *b, void *state, uint32_t n) {
  pingpong *pp = state;
  for (uint32_t i = 0; i < n; i++) {
    pp->ponged = false;
    int rc = uv_async_send(&pp->ping);
    if (rc != 0)
      return mb_bench_fail(b, "uv_async_send: %s", uv_strerror(rc));
    while (!pp->ponged)
      uv_run(&pp->loop_a, UV_RUN_ONCE);
  }
  return 0;
}

/* No round trip is in flight here: run() always waits for its pong. */
static void pingpong_teardown(void *state) {
  pingpong *pp = state;
  atomic_store_explicit(&pp->stop, true, memory_order_release);
  uv_async_send(&pp->ping);
  pthread_join(pp->thread_b, NULL);
  uv_loop_close(&pp->loop_b); /* its only handle closed inside on_ping */
  close_loop(&pp->loop_a, &pp->pong);
  free(pp);
}

static const mb_bench_def uv_benches[] = {
    {
        .name = "uv_async.pingpong",
        .unit = MB_BENCH_NS,
        .setup = pingpong_setup,
        .run = pingpong_run,
        .teardown = pingpong_teardown,
        .doc = "one uv_async_send round trip between two raw libuv loops on two threads",
    },
};

void mb_bench_area_baseline_uv(void) { MB_BENCH_REGISTER_ALL(uv_benches); }
