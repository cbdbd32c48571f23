/* home.h: what the memory benchmarks (bench_map.c, bench_txn.c) share: the home loop, waiting
 * for completions on it, and measured operations chained on it.
 *
 * The home loop is a uv_loop_t that the harness thread runs, with the runtime attached to it
 * (mb_loop_attach): the VMM's main loop. A benchmark's managers live on it (or on loops of
 * their own, map.spread) and the benchmark is a requester on it, issuing every step with the
 * asynchronous API. It is shared by every benchmark set up at the same time (a measured side
 * and its interleaved baseline each have a manager of their own): a thread runs at most one
 * runtime loop.
 *
 * A measured operation is a fixed sequence of asynchronous steps (map.soft: region map, region
 * unmap; txn.pam: a begin, 13 maps, a commit, ...), each issued from the previous one's
 * completion callback, so the requester is on the loop like every actor, and timed from just
 * before its first call to its last completion (MB_BENCH_SELF_TIMED). Why chain in the
 * callbacks instead of running uv_run until each step completes: every uv_run iteration polls
 * (epoll_wait), and a system call costs ~1 us in this machine's nested guest (an empty uv_run
 * iteration measured 1.3 us here), which no VMM issuing its memory operations from its own loop
 * pays per step; here the loop only goes back to libuv once per turn budget (runtime/loop.c,
 * TURN_BUDGET deliveries), which shows in p99, not p50.
 */
#ifndef MB_BENCH_HOME_H
#define MB_BENCH_HOME_H

#include <stdbool.h>
#include <stdint.h>

#include "harness.h"
#include "membacking.h"

/* One more user of the home loop; the first sets it up. 0 or a failure (mb_bench_fail). */
int mb_bench_home_get(mb_bench *b);
/* One user less: first lets the loop finish with the actors the user destroyed; the last
 * user tears the loop down. */
void mb_bench_home_put(void);
mb_loop *mb_bench_home_loop(void);

/* Completions counted down on the home loop. */
typedef struct mb_bench_done {
  int pending;    /* completions still due */
  int status;     /* the first failure */
  uint64_t value; /* of the last completion */
} mb_bench_done;

/* An mb_done_fn for an mb_bench_done *ctx. */
void mb_bench_on_done(void *ctx, int status, uint64_t value);
/* Run the home loop until every completion of d came in; returns d->status. The actors it
 * waits for are on the home loop or on loops that wake it when they answer. */
int mb_bench_pump(mb_bench_done *d);

/* Set-up steps, issued from the home loop and waited for (0 or the operation's error). */
int mb_bench_region_add(mb_mm *mm, const mb_region_params *p, mb_region_id *id);
int mb_bench_region_map(mb_mm *mm, mb_region_id id, bool writable);
int mb_bench_mapping_add(mb_mm *mm, const mb_mapping_params *p);
/* A partition of `ops` on `loop` (NULL: the manager's). A backend that answers
 * MB_E_UNSUPPORTED (kvm without /dev/kvm) makes it mb_bench_skip(), any other error
 * mb_bench_fail(). */
int mb_bench_partition_add(mb_bench *b, mb_mm *mm, const mb_partition_ops *ops, mb_loop *loop,
                           mb_partition **out);

/* A measured operation: `steps` asynchronous calls. */
typedef struct mb_bench_op {
  uint32_t steps;
  /* Issue step `step` (0 .. steps-1) on `state`; it completes with done(ctx, ...). */
  void (*issue)(void *state, uint32_t step, mb_done_fn done, void *ctx);
  /* What step `step` is, for a failure's message ("region map"). */
  const char *(*name)(const void *state, uint32_t step);
} mb_bench_op;

/* n operations, chained on the home loop, each reported with mb_bench_sample(). A step that
 * fails stops the run and fails it ("STEP: ERROR"). For a MB_BENCH_SELF_TIMED run(). */
int mb_bench_chain(mb_bench *b, const mb_bench_op *op, void *state, uint32_t n);

#endif
