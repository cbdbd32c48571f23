/* membacking_consumers.c: the public API for consumers: VA mappers and partitions.
 *
 * Adding or removing one takes steps on two or three loops: the consumer's actor is made or
 * destroyed on its own loop, the managers are told, and the caller's completion runs on the
 * caller's loop. The asynchronous forms chain the steps with mb_loop_post and mb_call; the
 * blocking forms run them in order with mb_loop_exec and mb_call_sync.
 *
 * Invariant (against each other and against mb_mm_destroy): a consumer is on its manager's
 * list from its commit until one party unlinks it for good, and linking and unlinking check
 * `dead` under the manager's lock, which mb_mm_destroy sets first; so exactly one party (its
 * removal, or the destroy) unlinks it, and only that party kills it, on the consumer's loop.
 * Operations name the consumer by its handle and check it on each step they run on that loop,
 * and hold a reference to the manager's struct, which so outlives mb_mm_destroy. */
#include <semaphore.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"
#include "fault_inject.h" /* MB_FI_ALLOC: tests fail these allocations */

#define LINK(head, x)                                                                          \
  do {                                                                                         \
    (x)->prev = NULL;                                                                          \
    (x)->next = (head);                                                                        \
    if (head) (head)->prev = (x);                                                              \
    (head) = (x);                                                                              \
  } while (0)
#define UNLINK(head, x)                                                                        \
  do {                                                                                         \
    if ((x)->prev) (x)->prev->next = (x)->next; else (head) = (x)->next;                       \
    if ((x)->next) (x)->next->prev = (x)->prev;                                                \
  } while (0)

static bool mm_dead(mb_mm *mm) {
  pthread_mutex_lock(&mm->lock);
  bool dead = mm->dead;
  pthread_mutex_unlock(&mm->lock);
  return dead;
}

/* ---- one consumer operation in steps ------------------------------------------------------- */

/* The largest backend configuration a partition takes (mb_kvm_attach_config fits). */
enum { CONFIG_MAX = 64 };

typedef struct step_op {
  mb_mm *mm;                                      /* a reference */
  mb_loop *caller, *target;
  struct step_op *prev, *next;                    /* on mm->steps while linked */
  bool linked;
  bool eager;
  uint8_t vtl;
  const mb_partition_ops *ops;
  const void *config;                             /* NULL, or config_copy */
  _Alignas(max_align_t) unsigned char config_copy[CONFIG_MAX];
  mb_mapper *mapper;                              /* being added */
  mb_partition *part;                             /* being added */
  mb__handle h;                                   /* being removed: claimed */
  mb__answer answer;                              /* when the target is not the caller's loop */
  int status;
  uint64_t value;
  mb_done_fn done;
  void *ctx;
} step_op;

/* On the caller's loop: the completion, and the operation's end. */
static void step_finish(step_op *op) {
  op->done(op->ctx, op->status, op->value);
  free(op);
}

static void step_posted(mb_loop *loop, void *arg) {
  (void)loop;
  step_finish(arg);
}

static void step_answered(void *arg, bool delivered) {
  if (delivered) step_finish(arg);
  else free(arg); /* the caller's loop is gone: nobody to tell */
}

/* An operation on a live manager, or one already answered MB_EGONE (op->status); NULL with
 * *rc when the calling thread runs no loop (MB_EINVAL) or memory is short (MB_ENOMEM). An
 * operation whose steps run on another loop gets its answer now: its end cannot fail. */
static step_op *step_new(mb_mm *mm, mb_loop *target, mb_done_fn done, void *ctx, int *rc) {
  mb_loop *here = mb_loop_current();
  bool txn = atomic_load(&mm->txn);
  step_op *op = here && !txn ? mb__calloc(1, sizeof *op) : NULL;
  *rc = !here ? MB_EINVAL : txn ? MB_E_INVALID : !op ? MB_ENOMEM : 0;
  if (!op) return NULL;
  op->mm = mm;
  op->caller = here;
  op->target = target ? target : mm->loop;
  op->done = done;
  op->ctx = ctx;
  if (op->target != here && (*rc = mb__answer_make(&op->answer, here, step_answered, op))) {
    free(op);
    return NULL;
  }
  mb__mm_ref(mm);
  pthread_mutex_lock(&mm->lock);
  op->status = mm->dead ? MB_EGONE : 0;
  if (!op->status) LINK(mm->steps, op);
  op->linked = !op->status;
  pthread_mutex_unlock(&mm->lock);
  return op;
}

/* The operation lets go of the manager and of what it claimed. */
static void step_release(step_op *op) {
  if (op->h) mb__h_unclaim(op->h);
  pthread_mutex_lock(&op->mm->lock);
  if (op->linked) UNLINK(op->mm->steps, op);
  pthread_mutex_unlock(&op->mm->lock);
  mb__mm_unref(op->mm);
}

/* Hand the result back to the caller's loop: through its answer, or, when every step ran on
 * the caller's loop, at once: this is a later turn of that loop (a reply, a posted step, a
 * retirement; step_start answers its own failures), so nothing can fail on the way. */
static void step_done(step_op *op, int status, uint64_t value) {
  op->status = status;
  op->value = value;
  step_release(op);
  if (op->answer.msg) mb__answer_send(&op->answer);
  else step_finish(op);
}

/* Start an operation: its first step runs on the consumer's loop. Inside the call only a
 * want of memory is answered (membacking.h); any other refusal comes later. */
static void step_start(step_op *op, mb_exec_fn first) {
  int rc = op->status ? op->status : first ? mb_loop_post(op->target, first, op) : MB_E_INVALID;
  if (rc == 0) return;
  op->status = rc;
  step_release(op);
  if (op->answer.msg) {
    mb__answer_send(&op->answer);
    return;
  }
  if (rc != MB_ENOMEM && mb_loop_post(op->caller, step_posted, op) == 0) return;
  op->status = MB_ENOMEM;
  step_finish(op);
}

typedef struct later {
  mb_done_fn done;
  void *ctx;
  int status;
} later;

static void later_run(mb_loop *loop, void *arg) {
  (void)loop;
  later *x = arg;
  x->done(x->ctx, x->status, 0);
  free(x);
}

/* Answer an asynchronous call that never started, on the caller's loop as promised (a want
 * of memory inside the call, as membacking.h allows). */
static void answer_later(mb_done_fn done, void *ctx, int status) {
  mb_loop *here = mb_loop_current();
  later *x = here && status != MB_ENOMEM ? mb__malloc(sizeof *x) : NULL;
  if (x) {
    *x = (later){done, ctx, status};
    if (mb_loop_post(here, later_run, x) == 0) return;
    free(x);
  }
  done(ctx, here ? MB_ENOMEM : MB_EINVAL, 0);
}

/* A blocking caller's wait for a consumer's kill, which may finish later on its loop. */
typedef struct kill_wait {
  sem_t done;
  int rc;
} kill_wait;

static void kill_posted(void *ctx, int rc) {
  kill_wait *w = ctx;
  w->rc = rc;
  sem_post(&w->done);
}

/* ---- the thread rule of blocking calls ------------------------------------------------------ */

/* Consumer operations also refuse to run inside a transaction (membacking.h). */
static int consumer_check(mb_mm *mm) {
  return atomic_load(&mm->txn) ? MB_E_INVALID : mb__mm_check_thread(mm);
}

int mb__mm_check_thread(mb_mm *mm) {
  mb_loop *here = mb_loop_current();
  if (!here) return 0;
  if (here == mm->loop || here == mm->part_loop) return MB_EDEADLK;
  bool used = false;
  pthread_mutex_lock(&mm->lock);
  for (mb_mapper *m = mm->mappers; m && !used; m = m->next) used = m->loop == here;
  for (mb_partition *p = mm->partitions; p && !used; p = p->next) used = p->loop == here;
  for (step_op *op = mm->steps; op && !used; op = op->next) used = op->target == here;
  pthread_mutex_unlock(&mm->lock);
  return used ? MB_EDEADLK : 0;
}

/* ---- mappers: building, committing, killing ---------------------------------------------- */

/* A mapper at a VTL: that view, VTL 0's at the alias for VTL 2, and the VTL's protections
 * when a higher VTL can set them. */
static mb_msg *add_mapper_msg(const mb_mapper *mp) {
  mm_add_mapper_msg *m = mm_add_mapper_new();
  if (!m) return NULL;
  m->mapper = mb_vam_addr(mp->vam);
  m->eager = mb_vam_eager(mp->vam);
  m->vtl = mp->vtl;
  m->protect = mp->vtl < MB_VTL_MAX && (mp->mm->vtls >> (mp->vtl + 1)) != 0;
  m->alias = mb__vtl_alias(mp->mm, mp->vtl);
  return &m->hdr;
}

static mb_msg *remove_mapper_msg(mb_addr vam) {
  mm_remove_mapper_msg *m = mm_remove_mapper_new();
  if (!m) return NULL;
  m->mapper = vam;
  return &m->hdr;
}

/* On `loop`: a mapper's parts (its VA mapper, its struct, its slot), not yet anyone's. */
static int mapper_build(mb_mm *mm, mb_loop *loop, bool eager, uint8_t vtl, mb_mapper **out) {
  if (mm_dead(mm)) return MB_EGONE;
  if (mb__vtl_span(mm, vtl) == 0) return MB_E_INVALID;
  mb_mapper *m = mb__calloc(1, sizeof *m);
  uint32_t idx = m ? mb__h_alloc() : MB__H_NONE;
  mb_vam *vam = NULL;
  int rc = idx == MB__H_NONE ? MB_ENOMEM
                             : mb_vam_create(loop, mm->mm_addr, mb__vtl_span(mm, vtl), eager,
                                             &vam);
  if (rc) {
    if (idx != MB__H_NONE) mb__h_free(idx);
    free(m);
    return rc;
  }
  mb_actor_time_requests(mb_actor_at(loop, mb_vam_addr(vam)), true);
  mb_vam_set_dirty(vam, &mm->dirty);
  *m = (mb_mapper){.mm = mm, .vam = vam, .loop = loop, .idx = idx, .vtl = vtl};
  *out = m;
  return 0;
}

/* On its loop: undo mapper_build. */
static void mapper_unbuild(mb_mapper *m) {
  mb_vam_destroy(m->vam);
  mb__h_free(m->idx);
  free(m);
}

/* A registered mapper joins its live manager and gets its handle; MB_EGONE if it died. */
static int mapper_commit(mb_mapper *m, bool eager, int status) {
  mb_mm *mm = m->mm;
  pthread_mutex_lock(&mm->lock);
  int rc = status ? status : mm->dead ? MB_EGONE : 0;
  if (!rc) {
    m->h = mb__h_publish(m->idx, MB__H_MAPPER, m);
    LINK(mm->mappers, m);
  }
  if (!mm->dead) mb__rec_mapper(mm->rec, true, rc ? NULL : m, eager, rc);
  pthread_mutex_unlock(&mm->lock);
  return rc;
}

/* A removal that the mapping manager agreed to takes the mapper off its live manager's list
 * (MB_EGONE: the manager's destruction has it); a refused one is recorded as such. */
static int mapper_unlink(mb_mapper *m, int status) {
  mb_mm *mm = m->mm;
  pthread_mutex_lock(&mm->lock);
  int rc = mm->dead ? MB_EGONE : status;
  if (!rc) UNLINK(mm->mappers, m);
  if (!mm->dead) mb__rec_mapper(mm->rec, false, m, false, status);
  pthread_mutex_unlock(&mm->lock);
  return rc;
}

static void mapper_reap(void *arg) {
  mb_mapper *m = arg;
  mb_mm *mm = m->mm;
  int rc = mb_vam_destroy(m->vam);
  if (m->killed) m->killed(m->killed_ctx, rc);
  if (m != &mm->primary) free(m);
  mb__mm_unref(mm);
}

void mb__mapper_kill(mb_mapper *m) {
  mb__h_kill(m->h);
  unsigned n = atomic_load(&m->had_locks) ? mb__h_kill_locks(m->idx) : 0;
  if (n)
    fprintf(stderr, "membacking: mb_mm_destroy: %u lock(s) still held through a mapper were "
                    "released; their handles are invalid now\n", n);
  mb__mm_ref(m->mm);
  mb__h_retire(m->idx, m->loop, mapper_reap, m);
}

mb_vam *mb__mapper_vam(mb_mapper *handle) {
  mb_mapper *m = mb__h_obj((mb__handle)handle, MB__H_MAPPER);
  return m ? m->vam : NULL;
}

/* ---- mappers: the asynchronous forms ------------------------------------------------------- */

static void mapper_registered(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  step_op *op = ctx;
  mb_mapper *m = op->mapper;
  int rc = mapper_commit(m, op->eager, reply->status);
  uint64_t value = rc ? 0 : (uint64_t)m->h;
  if (rc) mapper_unbuild(m);
  step_done(op, rc, value);
}

static void mapper_add_step(mb_loop *loop, void *arg) {
  step_op *op = arg;
  int rc = mb_loop_stopping(loop) ? MB_ESTOPPED
                                  : mapper_build(op->mm, loop, op->eager, op->vtl, &op->mapper);
  mb_msg *msg = rc ? NULL : add_mapper_msg(op->mapper);
  if (!msg) {
    if (!rc) mapper_unbuild(op->mapper);
    step_done(op, rc ? rc : MB_ENOMEM, 0);
    return;
  }
  mb_call(mb_loop_actor(loop), op->mm->mm_addr, msg, mapper_registered, op);
}

void mb_mapper_add_vtl(mb_mm *mm, mb_loop *loop, bool eager, uint8_t vtl, mb_done_fn done,
                       void *ctx) {
  int rc;
  step_op *op = step_new(mm, loop, done, ctx, &rc);
  if (!op) {
    done(ctx, rc, 0);
    return;
  }
  op->eager = eager;
  op->vtl = vtl;
  step_start(op, mapper_add_step);
}

void mb_mapper_add(mb_mm *mm, mb_loop *loop, bool eager, mb_done_fn done, void *ctx) {
  mb_mapper_add_vtl(mm, loop, eager, 0, done, ctx);
}

static void mapper_remove_killed(void *ctx, int rc) { step_done(ctx, rc, 0); }

static void mapper_removed(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  step_op *op = ctx;
  mb_mapper *m = mb__h_obj(op->h, MB__H_MAPPER); /* killed only on this loop */
  int rc = m ? mapper_unlink(m, reply->status) : MB_EGONE;
  if (m && reply->status) mb_vam_unretire(m->vam);
  if (rc) {
    step_done(op, rc, 0);
    return;
  }
  op->h = 0; /* the kill consumes the claim */
  m->killed = mapper_remove_killed;
  m->killed_ctx = op;
  mb__mapper_kill(m);
}

/* A mapper that holds locks is not removed (MB_E_INVALID); once retired it takes no more. */
static void mapper_remove_step(mb_loop *loop, void *arg) {
  step_op *op = arg;
  mb_mapper *m = mb_loop_stopping(loop) ? NULL : mb__h_obj(op->h, MB__H_MAPPER);
  int rc = m ? mb_vam_retire(m->vam) : mb_loop_stopping(loop) ? MB_ESTOPPED : MB_EGONE;
  mb_msg *msg = rc ? NULL : remove_mapper_msg(mb_vam_addr(m->vam));
  if (!msg) {
    if (!rc) mb_vam_unretire(m->vam);
    step_done(op, rc ? rc : MB_ENOMEM, 0);
    return;
  }
  mb_call(mb_loop_actor(loop), op->mm->mm_addr, msg, mapper_removed, op);
}

/* Claim a consumer for removal (not the primary mapper): the operation, or NULL with *rc. */
static step_op *claim_step(mb__handle h, mb__hkind kind, mb_done_fn done, void *ctx, int *rc) {
  mb__rs *rs;
  void *obj = mb__h_enter(h, kind, &rs);
  mb_mm *mm = !obj ? NULL : kind == MB__H_MAPPER ? ((mb_mapper *)obj)->mm
                                                 : ((mb_partition *)obj)->mm;
  mb_loop *loop = !obj ? NULL : kind == MB__H_MAPPER ? ((mb_mapper *)obj)->loop
                                                     : ((mb_partition *)obj)->loop;
  bool ok = obj && obj != (void *)&mm->primary && mb__h_claim(h);
  *rc = MB_E_INVALID;
  step_op *op = ok ? step_new(mm, loop, done, ctx, rc) : NULL;
  mb__rs_leave(rs);
  if (ok && !op) mb__h_unclaim(h);
  if (op) op->h = h;
  return op;
}

void mb_mapper_remove(mb_mapper *handle, mb_done_fn done, void *ctx) {
  int rc;
  step_op *op = claim_step((mb__handle)handle, MB__H_MAPPER, done, ctx, &rc);
  if (op) step_start(op, mapper_remove_step);
  else answer_later(done, ctx, rc);
}

/* ---- mappers: the blocking forms ------------------------------------------------------------ */

typedef struct mapper_make {
  mb_mm *mm;
  bool eager;
  uint8_t vtl;
  mb_mapper *m;
  int rc;
} mapper_make;

static void mapper_make_fn(mb_loop *loop, void *arg) {
  mapper_make *v = arg;
  v->rc = mapper_build(v->mm, loop, v->eager, v->vtl, &v->m);
}

static void mapper_unbuild_fn(mb_loop *loop, void *arg) {
  (void)loop;
  mapper_unbuild(arg);
}

static int mapper_add_sync(mb_mm *mm, mb_loop *loop, bool eager, uint8_t vtl,
                           mb_mapper **out) {
  int rc = consumer_check(mm);
  if (rc || mb_loop_is_current(loop)) return rc ? rc : MB_EDEADLK;
  mapper_make v = {mm, eager, vtl, NULL, 0};
  rc = mb_loop_exec(loop, mapper_make_fn, &v);
  if (rc || (rc = v.rc)) return rc;
  rc = mb__api_call(NULL, mm->mm_addr, add_mapper_msg(v.m), NULL, NULL);
  rc = mapper_commit(v.m, eager, rc);
  if (rc) mb__exec_must(loop, mapper_unbuild_fn, v.m);
  else *out = (mb_mapper *)v.m->h;
  return rc;
}

int mb_mapper_add_vtl_sync(mb_mm *mm, mb_loop *loop, bool eager, uint8_t vtl,
                           mb_mapper **out) {
  mb__mm_ref(mm);
  int rc = mapper_add_sync(mm, loop ? loop : mm->loop, eager, vtl, out);
  mb__mm_unref(mm);
  return rc;
}

int mb_mapper_add_sync(mb_mm *mm, mb_loop *loop, bool eager, mb_mapper **out) {
  return mb_mapper_add_vtl_sync(mm, loop, eager, 0, out);
}

typedef struct remove_end {
  mb__handle h;
  int status;          /* in: the manager's answer; out: the removal's */
  kill_wait *wait;
} remove_end;

/* On the mapper's loop, after the mapping manager answered. */
static void mapper_remove_end(mb_loop *loop, void *arg) {
  (void)loop;
  remove_end *e = arg;
  mb_mapper *m = mb__h_obj(e->h, MB__H_MAPPER);
  int rc = m ? mapper_unlink(m, e->status) : MB_EGONE;
  if (m && e->status) {
    mb_vam_unretire(m->vam);
    mb__h_unclaim(e->h);
  }
  e->status = rc;
  if (rc) return;
  m->killed = kill_posted;
  m->killed_ctx = e->wait;
  mb__mapper_kill(m);
}

/* Claimed, its manager referenced, its VA mapper retired: the rest of a blocking remove. */
static int mapper_remove_sync(mb_mm *mm, mb__handle h, mb_loop *loop, mb_addr vam) {
  remove_end e = {h, mb__api_call(NULL, mm->mm_addr, remove_mapper_msg(vam), NULL, NULL), NULL};
  kill_wait w;
  sem_init(&w.done, 0, 0);
  e.wait = &w;
  int rc = mb__exec_must(loop, mapper_remove_end, &e);
  if (rc) mb__h_unclaim(h); /* its loop is gone */
  if (!rc && !(rc = e.status)) {
    while (sem_wait(&w.done) != 0) continue;
    rc = w.rc;
  }
  sem_destroy(&w.done);
  return rc;
}

int mb_mapper_remove_sync(mb_mapper *handle) {
  mb__handle h = (mb__handle)handle;
  mb__rs *rs;
  mb_mapper *m = mb__h_enter(h, MB__H_MAPPER, &rs);
  mb_mm *mm = m ? m->mm : NULL;
  bool claimed = m && m != &mm->primary && mb__h_claim(h);
  int rc = claimed ? consumer_check(mm) : MB_E_INVALID;
  if (!rc) rc = mb_vam_retire(m->vam);
  if (claimed && rc) mb__h_unclaim(h);
  mb_loop *loop = rc ? NULL : m->loop;
  mb_addr vam = rc ? (mb_addr){0} : mb_vam_addr(m->vam);
  if (!rc) mb__mm_ref(mm);
  mb__rs_leave(rs);
  if (rc) return rc;
  rc = mapper_remove_sync(mm, h, loop, vam);
  mb__mm_unref(mm);
  return rc;
}

/* ---- mappers: access ----------------------------------------------------------------------- */

uint8_t *mb_mapper_base(const mb_mapper *handle) {
  mb__rs *rs;
  mb_mapper *m = mb__h_enter((mb__handle)handle, MB__H_MAPPER, &rs);
  uint8_t *base = m ? mb_vam_base(m->vam) : NULL;
  mb__rs_leave(rs);
  return base;
}

bool mb_mapper_eager(const mb_mapper *handle) {
  mb__rs *rs;
  mb_mapper *m = mb__h_enter((mb__handle)handle, MB__H_MAPPER, &rs);
  bool eager = m && mb_vam_eager(m->vam);
  mb__rs_leave(rs);
  return eager;
}

int mb_mapper_read(mb_mapper *handle, uint64_t gpa, void *buf, size_t len) {
  mb__rs *rs;
  mb_mapper *m = mb__h_enter((mb__handle)handle, MB__H_MAPPER, &rs);
  int rc = __builtin_expect(m != NULL, 1) ? mb_vam_read(m->vam, gpa, buf, len) : MB_E_INVALID;
  mb__rs_leave(rs);
  return rc;
}

int mb_mapper_write(mb_mapper *handle, uint64_t gpa, const void *buf, size_t len) {
  mb__rs *rs;
  mb_mapper *m = mb__h_enter((mb__handle)handle, MB__H_MAPPER, &rs);
  int rc = __builtin_expect(m != NULL, 1) ? mb_vam_write(m->vam, gpa, buf, len) : MB_E_INVALID;
  mb__rs_leave(rs);
  return rc;
}

/* ---- ranges -------------------------------------------------------------------------------- */

mb_range_list *mb__range_list(mb_part_range *ranges, uint32_t count) {
  mb_range_list *l = mb__malloc(sizeof *l + (size_t)count * sizeof l->ranges[0]);
  if (l) {
    l->count = count;
    if (count) memcpy(l->ranges, ranges, (size_t)count * sizeof l->ranges[0]);
  }
  free(ranges);
  return l;
}

/* A ranges reply's list (an asynchronous caller then gets MB_ENOMEM when there is none). */
static uint64_t ranges_value(mb_msg *reply, mb_part_range **ranges, uint32_t count) {
  mb_range_list *l = mb__range_list(*ranges, count);
  *ranges = NULL;
  if (!l) reply->status = MB_ENOMEM;
  return (uint64_t)(uintptr_t)l;
}

static uint64_t vam_ranges_value(mb_msg *m) {
  vam_ranges_msg *r = vam_ranges_of(m);
  return ranges_value(m, &r->ranges, r->count);
}

static uint64_t pm_ranges_value(mb_msg *m) {
  pm_ranges_msg *r = pm_ranges_of(m);
  return ranges_value(m, &r->ranges, r->count);
}

/* The requests (NULL when out of memory). */
static mb_msg *vam_ranges_request(void) {
  vam_ranges_msg *m = vam_ranges_new();
  return m ? &m->hdr : NULL;
}

static mb_msg *pm_ranges_request(void) {
  pm_ranges_msg *m = pm_ranges_new();
  return m ? &m->hdr : NULL;
}

/* The actor address behind a live handle (zero when it is not one). */
static mb_addr actor_of(mb__handle h, mb__hkind kind) {
  mb__rs *rs;
  void *obj = mb__h_enter(h, kind, &rs);
  mb_addr a = !obj ? (mb_addr){0} : kind == MB__H_MAPPER ? mb_vam_addr(((mb_mapper *)obj)->vam)
                                                         : ((mb_partition *)obj)->addr;
  mb__rs_leave(rs);
  return a;
}

static void submit_to(mb_addr to, mb_msg *msg, mb__value_fn fn, mb_done_fn done, void *ctx) {
  if (to.loop) {
    mb__api_submit(NULL, to, msg, fn, NULL, done, ctx);
    return;
  }
  mb_msg_free(msg);
  answer_later(done, ctx, MB_E_INVALID);
}

void mb_mapper_ranges(mb_mapper *m, mb_done_fn done, void *ctx) {
  submit_to(actor_of((mb__handle)m, MB__H_MAPPER), vam_ranges_request(), vam_ranges_value,
            done, ctx);
}

static int ranges_sync(mb_addr to, mb_msg *msg, mb__value_fn fn, mb_range_list **out) {
  if (!to.loop) {
    mb_msg_free(msg);
    return MB_E_INVALID;
  }
  uint64_t v = 0;
  int rc = mb__api_call(NULL, to, msg, fn, &v);
  if (!rc && !v) rc = MB_ENOMEM;
  if (!rc) *out = (mb_range_list *)(uintptr_t)v;
  return rc;
}

int mb_mapper_ranges_sync(mb_mapper *m, mb_range_list **out) {
  return ranges_sync(actor_of((mb__handle)m, MB__H_MAPPER), vam_ranges_request(),
                     vam_ranges_value, out);
}

/* ---- partitions: building, committing, killing ---------------------------------------------- */

static mb_msg *partition_msg(bool add, const mb_partition *p) {
  rm_partition_add_msg *m = add ? rm_partition_add_new()
                                : (rm_partition_add_msg *)(void *)rm_partition_remove_new();
  if (!m) return NULL;
  m->partition = p->addr;
  if (add) {
    m->vtl = p->vtl;
    m->alias = mb__vtl_alias(p->mm, p->vtl);
  }
  return &m->hdr;
}

/* On `loop`: a partition's parts (its partition mapper, its struct, its slot). */
static int partition_build(mb_mm *mm, mb_loop *loop, const mb_partition_params *pp,
                           mb_partition **out) {
  if (mm_dead(mm)) return MB_EGONE;
  if (mb__vtl_span(mm, pp->vtl) == 0) return MB_E_INVALID;
  mb_partition *p = mb__calloc(1, sizeof *p);
  uint32_t idx = p ? mb__h_alloc() : MB__H_NONE;
  mb_actor *actor = NULL;
  int rc = idx == MB__H_NONE ? MB_ENOMEM
                             : mb_partition_mapper_create(loop, pp->ops, pp->config,
                                                          mb__vtl_span(mm, pp->vtl),
                                                          mm->part_base, &actor);
  if (rc) {
    if (idx != MB__H_NONE) mb__h_free(idx);
    free(p);
    return rc;
  }
  mb_actor_time_requests(actor, true);
  *p = (mb_partition){.mm = mm, .ops = pp->ops, .actor = actor, .loop = loop, .idx = idx,
                      .addr = mb_actor_addr(actor), .vtl = pp->vtl};
  *out = p;
  return 0;
}

static void partition_unbuild(mb_partition *p) {
  mb_actor_destroy(p->actor);
  mb__h_free(p->idx);
  free(p);
}

static int partition_commit(mb_partition *p, int status) {
  mb_mm *mm = p->mm;
  pthread_mutex_lock(&mm->lock);
  int rc = status ? status : mm->dead ? MB_EGONE : 0;
  if (!rc) {
    p->h = mb__h_publish(p->idx, MB__H_PARTITION, p);
    LINK(mm->partitions, p);
  }
  if (!mm->dead) mb__rec_partition(mm->rec, true, rc ? NULL : p, p->ops->name, rc);
  pthread_mutex_unlock(&mm->lock);
  return rc;
}

static int partition_unlink(mb_partition *p, int status) {
  mb_mm *mm = p->mm;
  pthread_mutex_lock(&mm->lock);
  int rc = mm->dead ? MB_EGONE : status;
  if (!rc) UNLINK(mm->partitions, p);
  if (!mm->dead) mb__rec_partition(mm->rec, false, p, NULL, status);
  pthread_mutex_unlock(&mm->lock);
  return rc;
}

static void partition_reap(void *arg) {
  mb_partition *p = arg;
  mb_mm *mm = p->mm;
  if (p->killed) p->killed(p->killed_ctx, 0);
  free(p);
  mb__mm_unref(mm);
}

void mb__partition_kill(mb_partition *p) {
  mb__h_kill(p->h);
  mb_actor_destroy(p->actor);
  mb__mm_ref(p->mm);
  mb__h_retire(p->idx, p->loop, partition_reap, p);
}

/* ---- partitions: the asynchronous forms ------------------------------------------------------ */

static void partition_registered(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  step_op *op = ctx;
  mb_partition *p = op->part;
  int rc = partition_commit(p, reply->status);
  uint64_t value = rc ? 0 : (uint64_t)p->h;
  if (rc) partition_unbuild(p);
  step_done(op, rc, value);
}

static void partition_add_step(mb_loop *loop, void *arg) {
  step_op *op = arg;
  int rc = mb_loop_stopping(loop) ? MB_ESTOPPED
                                  : partition_build(op->mm, loop,
                                                    &(mb_partition_params){.ops = op->ops,
                                                      .config = op->config, .vtl = op->vtl},
                                                    &op->part);
  mb_msg *msg = rc ? NULL : partition_msg(true, op->part);
  if (!msg) {
    if (!rc) partition_unbuild(op->part);
    step_done(op, rc ? rc : MB_ENOMEM, 0);
    return;
  }
  mb_call(mb_loop_actor(loop), op->mm->rm_addr, msg, partition_registered, op);
}

/* MB_E_INVALID unless the parameters name a backend and a configuration it can take. */
static int check_params(const mb_partition_params *p) {
  if (!p || !p->ops || !p->ops->create) return MB_E_INVALID;
  if (p->config && (p->ops->config_size == 0 || p->ops->config_size > CONFIG_MAX))
    return MB_E_INVALID;
  return 0;
}

void mb_partition_attach(mb_mm *mm, const mb_partition_params *p, mb_done_fn done, void *ctx) {
  int rc = check_params(p);
  if (rc) {
    answer_later(done, ctx, rc);
    return;
  }
  step_op *op = step_new(mm, p->loop, done, ctx, &rc);
  if (!op) {
    done(ctx, rc, 0);
    return;
  }
  op->ops = p->ops;
  op->vtl = p->vtl;
  if (p->config) op->config = memcpy(op->config_copy, p->config, p->ops->config_size);
  step_start(op, partition_add_step);
}

void mb_partition_add(mb_mm *mm, const mb_partition_ops *ops, mb_loop *loop, mb_done_fn done,
                      void *ctx) {
  mb_partition_attach(mm, &(mb_partition_params){.ops = ops, .loop = loop}, done, ctx);
}

static void partition_remove_killed(void *ctx, int rc) { step_done(ctx, rc, 0); }

static void partition_removed(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  step_op *op = ctx;
  mb_partition *p = mb__h_obj(op->h, MB__H_PARTITION); /* killed only on this loop */
  int rc = p ? partition_unlink(p, reply->status) : MB_EGONE;
  if (rc) {
    step_done(op, rc, 0);
    return;
  }
  op->h = 0;
  p->killed = partition_remove_killed;
  p->killed_ctx = op;
  mb__partition_kill(p);
}

static void partition_remove_step(mb_loop *loop, void *arg) {
  step_op *op = arg;
  mb_partition *p = mb_loop_stopping(loop) ? NULL : mb__h_obj(op->h, MB__H_PARTITION);
  mb_msg *msg = p ? partition_msg(false, p) : NULL;
  if (!msg) {
    step_done(op, p ? MB_ENOMEM : mb_loop_stopping(loop) ? MB_ESTOPPED : MB_EGONE, 0);
    return;
  }
  mb_call(mb_loop_actor(loop), op->mm->rm_addr, msg, partition_removed, op);
}

void mb_partition_remove(mb_partition *handle, mb_done_fn done, void *ctx) {
  int rc;
  step_op *op = claim_step((mb__handle)handle, MB__H_PARTITION, done, ctx, &rc);
  if (op) step_start(op, partition_remove_step);
  else answer_later(done, ctx, rc);
}

/* ---- partitions: the blocking forms --------------------------------------------------------- */

typedef struct part_make {
  mb_mm *mm;
  const mb_partition_params *params;
  mb_partition *p;
  int rc;
} part_make;

static void part_make_fn(mb_loop *loop, void *arg) {
  part_make *v = arg;
  v->rc = partition_build(v->mm, loop, v->params, &v->p);
}

static void partition_unbuild_fn(mb_loop *loop, void *arg) {
  (void)loop;
  partition_unbuild(arg);
}

static int partition_attach_sync(mb_mm *mm, const mb_partition_params *params, mb_loop *loop,
                                 mb_partition **out) {
  int rc = consumer_check(mm);
  if (rc || mb_loop_is_current(loop)) return rc ? rc : MB_EDEADLK;
  part_make v = {mm, params, NULL, 0};
  rc = mb_loop_exec(loop, part_make_fn, &v);
  if (rc || (rc = v.rc)) return rc;
  rc = mb__api_call(NULL, mm->rm_addr, partition_msg(true, v.p), NULL, NULL);
  rc = partition_commit(v.p, rc);
  if (rc) mb__exec_must(loop, partition_unbuild_fn, v.p);
  else *out = (mb_partition *)v.p->h;
  return rc;
}

int mb_partition_attach_sync(mb_mm *mm, const mb_partition_params *params, mb_partition **out) {
  int rc = check_params(params);
  if (rc) return rc;
  mb__mm_ref(mm);
  rc = partition_attach_sync(mm, params, params->loop ? params->loop : mm->loop, out);
  mb__mm_unref(mm);
  return rc;
}

int mb_partition_add_sync(mb_mm *mm, const mb_partition_ops *ops, mb_loop *loop,
                          mb_partition **out) {
  return mb_partition_attach_sync(mm, &(mb_partition_params){.ops = ops, .loop = loop}, out);
}

/* On the partition's loop, after the region manager answered. */
static void partition_remove_end(mb_loop *loop, void *arg) {
  (void)loop;
  remove_end *e = arg;
  mb_partition *p = mb__h_obj(e->h, MB__H_PARTITION);
  int rc = p ? partition_unlink(p, e->status) : MB_EGONE;
  if (p && e->status) mb__h_unclaim(e->h);
  e->status = rc;
  if (rc) return;
  p->killed = kill_posted;
  p->killed_ctx = e->wait;
  mb__partition_kill(p);
}

static int partition_remove_sync(mb_mm *mm, mb__handle h, mb_loop *loop, mb_addr actor) {
  remove_end e = {h, mb__api_call(NULL, mm->rm_addr, partition_msg(false, &(mb_partition){.addr = actor}), NULL, NULL),
                  NULL};
  kill_wait w;
  sem_init(&w.done, 0, 0);
  e.wait = &w;
  int rc = mb__exec_must(loop, partition_remove_end, &e);
  if (rc) mb__h_unclaim(h); /* its loop is gone */
  if (!rc && !(rc = e.status)) {
    while (sem_wait(&w.done) != 0) continue;
    rc = w.rc;
  }
  sem_destroy(&w.done);
  return rc;
}

int mb_partition_remove_sync(mb_partition *handle) {
  mb__handle h = (mb__handle)handle;
  mb__rs *rs;
  mb_partition *p = mb__h_enter(h, MB__H_PARTITION, &rs);
  mb_mm *mm = p ? p->mm : NULL;
  bool claimed = p && mb__h_claim(h);
  int rc = claimed ? consumer_check(mm) : MB_E_INVALID;
  if (claimed && rc) mb__h_unclaim(h);
  mb_loop *loop = rc ? NULL : p->loop;
  mb_addr actor = rc ? (mb_addr){0} : p->addr;
  if (!rc) mb__mm_ref(mm);
  mb__rs_leave(rs);
  if (rc) return rc;
  rc = partition_remove_sync(mm, h, loop, actor);
  mb__mm_unref(mm);
  return rc;
}

/* ---- partitions: access -------------------------------------------------------------------- */

static mb_msg *access_msg(uint64_t gpa, void *buf, size_t len, bool write) {
  pm_access_msg *m = pm_access_new();
  if (!m) return NULL;
  m->gpa = gpa;
  m->buf = buf;
  m->len = len;
  m->write = write;
  return &m->hdr;
}

void mb_partition_access(mb_partition *p, uint64_t gpa, void *buf, size_t len, bool write,
                         mb_done_fn done, void *ctx) {
  submit_to(actor_of((mb__handle)p, MB__H_PARTITION), access_msg(gpa, buf, len, write), NULL,
            done, ctx);
}

int mb_partition_access_sync(mb_partition *p, uint64_t gpa, void *buf, size_t len, bool write) {
  mb_addr to = actor_of((mb__handle)p, MB__H_PARTITION);
  if (!to.loop) return MB_E_INVALID;
  return mb__api_call(NULL, to, access_msg(gpa, buf, len, write), NULL, NULL);
}

void mb_partition_ranges(mb_partition *p, mb_done_fn done, void *ctx) {
  submit_to(actor_of((mb__handle)p, MB__H_PARTITION), pm_ranges_request(), pm_ranges_value,
            done, ctx);
}

int mb_partition_ranges_sync(mb_partition *p, mb_range_list **out) {
  return ranges_sync(actor_of((mb__handle)p, MB__H_PARTITION), pm_ranges_request(),
                     pm_ranges_value, out);
}

/* ---- the exit question ------------------------------------------------------------------- */

/* Classifies [x, x + len) of one view (x + len <= max_addr) in the published map, which is in
 * view space; host: the view's partitions' mapper, whose VA the partition maps. */
static int classify_view(const mb_mm *mm, unsigned view, uint64_t x, uint64_t len, bool write,
                         bool protections) {
  uint64_t base = view * mb_mm_stride(mm->max_addr);
  const uint8_t *host = (const uint8_t *)((uintptr_t)mm->view_base[view] - (uintptr_t)base);
  return mb_gpa_map_classify_vtl(mm->gpa_map, base + x, len, write, host, protections);
}

/* A partition at VTL n sees view n below max_addr (with VTL n's protections) and, at VTL 2
 * with an alias, VTL 0's view above the alias (without them); nothing in between. The
 * first failing byte decides. */
static int classify_at(const mb_mm *mm, uint8_t vtl, uint64_t gpa, uint64_t len, bool write) {
  uint64_t max = mm->max_addr;
  if (gpa < max) {
    uint64_t n = len < max - gpa ? len : max - gpa;
    int kind = classify_view(mm, vtl, gpa, n, write, true);
    return kind != MB_GPA_RAM || n == len ? kind : MB_GPA_MMIO;
  }
  if (!mb__vtl_alias(mm, vtl) || gpa < mm->alias)
    return MB_GPA_MMIO;
  return classify_view(mm, 0, gpa - mm->alias, len, write, false);
}

int mb_partition_classify(mb_partition *handle, uint64_t gpa, uint64_t len, bool write) {
  mb__rs *rs;
  mb_partition *p = mb__h_enter((mb__handle)handle, MB__H_PARTITION, &rs);
  uint64_t span = p ? mb__vtl_span(p->mm, p->vtl) : 0;
  int rc = MB_E_INVALID;
  if (p && len > 0 && len <= span && gpa <= span - len)
    rc = classify_at(p->mm, p->vtl, gpa, len, write);
  mb__rs_leave(rs);
  return rc;
}

static int classify_lookup(void *ctx, uint64_t gpa, uint64_t len, bool write) {
  int kind = mb_partition_classify(ctx, gpa, len, write);
  return kind == MB_E_INVALID ? MB_GPA_MMIO : kind; /* past max_addr: no RAM there */
}

int mb_partition_classify_exit(mb_partition *p, int rc, int err, const struct kvm_run *run,
                               mb_kvm_exit *out) {
  if (!run || !out || !mb__h_obj((mb__handle)p, MB__H_PARTITION)) return MB_E_INVALID;
  return mb__kvm_exit_classify(rc, err, run, classify_lookup, p, out);
}

/* The handle of a partition's manager's primary mapper (the partitions' view), or NULL. */
static mb_mapper *primary_of(mb_partition *handle) {
  mb__rs *rs;
  mb_partition *p = mb__h_enter((mb__handle)handle, MB__H_PARTITION, &rs);
  mb_mapper *ram = p ? (mb_mapper *)p->mm->primary.h : NULL;
  mb__rs_leave(rs);
  return ram;
}

int mb_partition_serve_exit(mb_partition *p, const mb_kvm_exit *ex, struct kvm_run *run) {
  uint8_t *data = mb__kvm_exit_mmio_data(run, ex);
  mb_mapper *ram = data ? primary_of(p) : NULL;
  if (!ram) return MB_E_INVALID;
  return ex->write ? mb_mapper_write(ram, ex->gpa, data, ex->len)
                   : mb_mapper_read(ram, ex->gpa, data, ex->len);
}
