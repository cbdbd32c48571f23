/* replay_worker.c: the access worker. A lazy mapper's reads, writes and locks may fault into
 * the mapping manager and block on it, so they never run on a loop thread: one long-lived
 * thread takes them one at a time, in order, while the main thread keeps pumping the client
 * loop. (An eager mapper's never block: the main thread runs those itself, replay_ops.c.)
 *
 * Hand-back: the worker stores the status, sets op->done (release), counts itself idle when
 * its queue is empty, and only then posts a no-op to the client loop, which wakes a main
 * thread that waits for the op or for the worker to be idle. Until that post returned the
 * worker is "posting": the client loop must outlive it (replay_worker_quiet). A lock is
 * done only when its posted completion ran on the client loop; the worker counts itself
 * idle once that post is queued, so a quiescent world has no lock completion in flight. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "replay.h"

static struct {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;       /* work queued, or quit */
  pthread_cond_t quiet_cv; /* a post returned */
  replay_op **queue;       /* ring of pending accesses */
  size_t head, n, cap;
  bool busy;               /* an access taken off the queue is not done yet */
  bool posting;            /* a wake-up post to a client loop is under way */
  bool quit;
  bool started;
} W = {.mu = PTHREAD_MUTEX_INITIALIZER,
       .cv = PTHREAD_COND_INITIALIZER,
       .quiet_cv = PTHREAD_COND_INITIALIZER};

static void wake_noop(mb_loop *loop, void *arg) { (void)loop, (void)arg; }

/* A lock's completion, on the client loop: the name is registered there (replay_op_done runs
 * the op's apply). When the loop is stopping the world is going: the lock is let go. */
static void lock_done(mb_loop *loop, void *arg) {
  replay_op *op = arg;
  if (!mb_loop_stopping(loop)) {
    replay_op_done(op, op->status, op->value);
    return;
  }
  mb_mapper_unlock((mb_lock *)(uintptr_t)op->value);
  atomic_store_explicit(&op->done, true, memory_order_release);
}

static int run_lock(replay_op *op) {
  const scenario_lock *l = &op->cmd->lock;
  mb_lock *lock = NULL;
  int rc = mb_mapper_lock(op->entry->mapper, l->gpa, l->size, !l->ro, &lock);
  op->value = (uintptr_t)lock;
  return rc;
}

static void run_access(replay_op *op) {
  uint64_t gpa = op->cmd->io.gpa;
  mb_mapper *m = op->entry->mapper;
  bool lock = op->cmd->kind == SCENARIO_LOCK;
  int rc = lock ? run_lock(op)
           : op->cmd->kind == SCENARIO_READ ? mb_mapper_read(m, gpa, op->buf, op->len)
                                            : mb_mapper_write(m, gpa, op->buf, op->len);
  mb_loop *client = op->w->client;
  op->status = rc;
  pthread_mutex_lock(&W.mu);
  if (!lock) { /* op may be freed from here */
    atomic_store_explicit(&op->done, true, memory_order_release);
    W.busy = false;
  }
  W.posting = true;
  pthread_mutex_unlock(&W.mu);
  int posted = 0;
  if (!lock) {
    posted = mb_loop_post(client, wake_noop, NULL); /* failed: the stall check wakes it */
  } else if ((posted = mb_loop_post(client, lock_done, op)) != 0) {
    mb_mapper_unlock((mb_lock *)(uintptr_t)op->value); /* no client loop (or no memory) */
    op->status = posted; /* the lock is not held under its name: the command failed */
    atomic_store_explicit(&op->done, true, memory_order_release);
  }
  if (posted && posted != MB_ESTOPPED) replay_runner_error("posting to the client loop", posted);
  pthread_mutex_lock(&W.mu);
  W.busy = false; /* a lock: only now, so idle implies its completion is on the client loop */
  W.posting = false;
  pthread_cond_broadcast(&W.quiet_cv);
  pthread_mutex_unlock(&W.mu);
}

static replay_op *take(void) {
  pthread_mutex_lock(&W.mu);
  while (W.n == 0 && !W.quit) pthread_cond_wait(&W.cv, &W.mu);
  replay_op *op = NULL;
  if (W.n > 0) {
    op = W.queue[W.head];
    W.head = (W.head + 1) % W.cap;
    W.n--;
    W.busy = true;
  }
  pthread_mutex_unlock(&W.mu);
  return op;
}

static void *worker_main(void *arg) {
  (void)arg;
  for (replay_op *op; (op = take());) run_access(op);
  return NULL;
}

int replay_worker_start(void) {
  if (W.started) return 0;
  int rc = pthread_create(&W.thread, NULL, worker_main, NULL);
  if (rc) return -rc;
  W.started = true;
  return 0;
}

void replay_worker_stop(void) {
  if (!W.started) return;
  pthread_mutex_lock(&W.mu);
  W.quit = true;
  pthread_cond_signal(&W.cv);
  pthread_mutex_unlock(&W.mu);
  pthread_join(W.thread, NULL);
  free(W.queue);
  W.queue = NULL;
  W.head = W.n = W.cap = 0;
  W.started = W.quit = false;
}

static int grow(void) {
  size_t cap = W.cap ? 2 * W.cap : 8;
  replay_op **q = malloc(cap * sizeof *q);
  if (!q) return MB_ENOMEM;
  for (size_t i = 0; i < W.n; i++) q[i] = W.queue[(W.head + i) % W.cap];
  free(W.queue);
  W.queue = q;
  W.head = 0;
  W.cap = cap;
  return 0;
}

int replay_worker_submit(replay_op *op) {
  pthread_mutex_lock(&W.mu);
  int rc = W.n == W.cap ? grow() : 0;
  if (!rc) {
    W.queue[(W.head + W.n) % W.cap] = op;
    W.n++;
    pthread_cond_signal(&W.cv);
  }
  pthread_mutex_unlock(&W.mu);
  return rc;
}

bool replay_worker_idle(void) {
  pthread_mutex_lock(&W.mu);
  bool idle = W.n == 0 && !W.busy;
  pthread_mutex_unlock(&W.mu);
  return idle;
}

void replay_worker_quiet(void) {
  pthread_mutex_lock(&W.mu);
  while (W.posting) pthread_cond_wait(&W.quiet_cv, &W.mu);
  pthread_mutex_unlock(&W.mu);
}
