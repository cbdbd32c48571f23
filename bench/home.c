/* home.c: the memory benchmarks' home loop, waiting for completions on it, and measured
 * operations chained on it (home.h). */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "home.h"

/* ---- the home loop ------------------------------------------------------------------------- */

/* `vmm` stands for the VMM's own handles on its loop (its devices, its timers): a referenced
 * handle that is never signalled, as a VMM's loop always has some, so that
 * uv_run(UV_RUN_ONCE) waits for the runtime's wake-up even when no actor lives on the loop
 * (map.spread). It costs nothing while nothing signals it. */
static struct {
  uv_loop_t uv;
  uv_async_t vmm;
  mb_loop *loop;
  unsigned users;
} home;

static void home_vmm_signalled(uv_async_t *h) { (void)h; }

int mb_bench_home_get(mb_bench *b) {
  if (home.users++ > 0)
    return 0;
  int err = uv_loop_init(&home.uv);
  if (err != 0) {
    home.users = 0;
    return mb_bench_fail(b, "loop: %s", uv_strerror(err));
  }
  bool vmm = (err = uv_async_init(&home.uv, &home.vmm, home_vmm_signalled)) == 0;
  if (vmm)
    home.loop = mb_loop_attach(&home.uv, "bench-home", &err);
  if (err == 0)
    return 0;
  home.users = 0;
  home.loop = NULL;
  if (vmm)
    uv_close((uv_handle_t *)&home.vmm, NULL);
  uv_run(&home.uv, UV_RUN_DEFAULT); /* close callbacks, the attach's included */
  uv_loop_close(&home.uv);
  return mb_bench_fail(b, "loop: %s", mb_strerror(err));
}

void mb_bench_home_put(void) {
  uv_run(&home.uv, UV_RUN_NOWAIT); /* let the loop finish with the destroyed actors */
  if (--home.users > 0)
    return;
  mb_loop_stop(home.loop);
  uv_close((uv_handle_t *)&home.vmm, NULL);
  uv_run(&home.uv, UV_RUN_DEFAULT); /* closes the loop's handles */
  mb_loop_free(home.loop);
  uv_loop_close(&home.uv);
  home.loop = NULL;
}

mb_loop *mb_bench_home_loop(void) { return home.loop; }

/* ---- waiting for completions --------------------------------------------------------------- */

void mb_bench_on_done(void *ctx, int status, uint64_t value) {
  mb_bench_done *d = ctx;
  if (status != 0 && d->status == 0)
    d->status = status;
  d->value = value;
  d->pending--;
}

int mb_bench_pump(mb_bench_done *d) {
  while (d->pending > 0)
    uv_run(&home.uv, UV_RUN_ONCE);
  return d->status;
}

int mb_bench_region_add(mb_mm *mm, const mb_region_params *p, mb_region_id *id) {
  mb_bench_done d = {1, 0, 0};
  mb_region_add(mm, p, mb_bench_on_done, &d);
  int rc = mb_bench_pump(&d);
  *id = (mb_region_id)d.value;
  return rc;
}

int mb_bench_region_map(mb_mm *mm, mb_region_id id, bool writable) {
  mb_bench_done d = {1, 0, 0};
  mb_region_map(mm, id, writable, mb_bench_on_done, &d);
  return mb_bench_pump(&d);
}

int mb_bench_mapping_add(mb_mm *mm, const mb_mapping_params *p) {
  mb_bench_done d = {1, 0, 0};
  mb_mapping_add(mm, p, mb_bench_on_done, &d);
  return mb_bench_pump(&d);
}

int mb_bench_partition_add(mb_bench *b, mb_mm *mm, const mb_partition_ops *ops, mb_loop *loop,
                           mb_partition **out) {
  mb_bench_done d = {1, 0, 0};
  mb_partition_add(mm, ops, loop, mb_bench_on_done, &d);
  int rc = mb_bench_pump(&d);
  *out = rc == 0 ? (mb_partition *)(uintptr_t)d.value : NULL;
  if (rc == MB_E_UNSUPPORTED && access("/dev/kvm", R_OK | W_OK) != 0)
    return mb_bench_skip(b, "%s partition unsupported here: /dev/kvm: %s", ops->name,
                         strerror(errno));
  if (rc == MB_E_UNSUPPORTED)
    return mb_bench_skip(b, "%s partition unsupported here", ops->name);
  return rc ? mb_bench_fail(b, "%s partition: %s", ops->name, membacking_strerror(rc)) : 0;
}

/* ---- measured operations, chained ---------------------------------------------------------- */

typedef struct chain {
  mb_bench *b;
  mb_bench_op own; /* a copy: each step reads the chain's page only, not the op table's */
  void *state;
  uint32_t left; /* operations still to start */
  uint32_t step; /* of the operation in flight */
  uint64_t t0;   /* its start */
  bool done;
} chain;

static void chain_issue(chain *c);

static void chain_step_done(void *ctx, int status, uint64_t value) {
  (void)value;
  chain *c = ctx;
  uint64_t t1 = mb_bench_now_ns();
  if (status != 0) {
    mb_bench_fail(c->b, "%s: %s", c->own.name(c->state, c->step), membacking_strerror(status));
    c->done = true;
    return;
  }
  if (++c->step == c->own.steps) {
    mb_bench_sample(c->b, (double)(t1 - c->t0));
    c->step = 0;
    c->left--;
  }
  chain_issue(c);
}

static void chain_issue(chain *c) {
  if (c->left == 0) {
    c->done = true;
    return;
  }
  if (c->step == 0)
    c->t0 = mb_bench_now_ns();
  c->own.issue(c->state, c->step, chain_step_done, c);
}

int mb_bench_chain(mb_bench *b, const mb_bench_op *op, void *state, uint32_t n) {
  chain c = {.b = b, .own = *op, .state = state, .left = n};
  chain_issue(&c);
  while (!c.done)
    uv_run(&home.uv, UV_RUN_ONCE);
  return 0; /* a failure was reported with mb_bench_fail() */
}
