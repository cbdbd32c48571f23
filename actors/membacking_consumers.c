/* membacking_consumers.c: the public API for consumers: VA mappers and partitions.
 *
 * Adding or removing one takes steps on two or three loops: the consumer's actor is made or
 * destroyed on its own loop, the managers are told, and the caller's completion runs on the
 * caller's loop. The asynchronous forms chain the steps with mb_loop_post and mb_call; the
 * blocking forms run them in order with mb_loop_exec and mb_call_sync. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"

/* ---- the managers' lists ------------------------------------------------------------------- */

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

static mb_mapper *mapper_new(mb_mm *mm, mb_vam *vam, mb_loop *loop) {
  mb_mapper *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  *m = (mb_mapper){mm, vam, loop, NULL, NULL};
  pthread_mutex_lock(&mm->lock);
  LINK(mm->mappers, m);
  pthread_mutex_unlock(&mm->lock);
  return m;
}

static void mapper_forget(mb_mapper *m) {
  pthread_mutex_lock(&m->mm->lock);
  UNLINK(m->mm->mappers, m);
  pthread_mutex_unlock(&m->mm->lock);
  free(m);
}

static mb_partition *partition_new(mb_mm *mm, const mb_partition_ops *ops, mb_actor *actor,
                                   mb_loop *loop) {
  mb_partition *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  *p = (mb_partition){mm, ops, actor, loop, NULL, NULL};
  pthread_mutex_lock(&mm->lock);
  LINK(mm->partitions, p);
  pthread_mutex_unlock(&mm->lock);
  return p;
}

static void partition_forget(mb_partition *p) {
  pthread_mutex_lock(&p->mm->lock);
  UNLINK(p->mm->partitions, p);
  pthread_mutex_unlock(&p->mm->lock);
  free(p);
}

/* ---- one consumer operation in steps ------------------------------------------------------- */

/* The largest backend configuration a partition takes (mb_kvm_attach_config fits). */
enum { CONFIG_MAX = 64 };

typedef struct step_op {
  mb_mm *mm;
  mb_loop *caller, *target;
  bool eager;
  const mb_partition_ops *ops;
  const void *config;                             /* NULL, or config_copy */
  _Alignas(max_align_t) unsigned char config_copy[CONFIG_MAX];
  mb_vam *vam;
  mb_actor *actor;
  mb_mapper *mapper;
  mb_partition *part;
  int status;
  uint64_t value;
  mb_done_fn done;
  void *ctx;
} step_op;

static step_op *step_new(mb_mm *mm, mb_loop *target, mb_done_fn done, void *ctx) {
  step_op *op = calloc(1, sizeof *op);
  if (!op) return NULL;
  op->mm = mm;
  op->caller = mb_loop_current();
  op->target = target ? target : mm->loop;
  op->done = done;
  op->ctx = ctx;
  return op;
}

static void step_finish(mb_loop *loop, void *arg) {
  (void)loop;
  step_op *op = arg;
  op->done(op->ctx, op->status, op->value);
  free(op);
}

/* Hand the result back to the caller's loop. */
static void step_done(step_op *op, int status, uint64_t value) {
  op->status = status;
  op->value = value;
  if (mb_loop_post(op->caller, step_finish, op)) free(op); /* the caller's loop is gone */
}

/* Start an operation: its first step runs on the consumer's loop (no step: refused). */
static void step_start(step_op *op, mb_exec_fn first, mb_done_fn done, void *ctx) {
  if (!op || !op->caller) {
    done(ctx, op ? MB_EINVAL : MB_ENOMEM, 0); /* not on a loop: a programming error */
    free(op);
    return;
  }
  int rc = first ? mb_loop_post(op->target, first, op) : MB_E_INVALID;
  if (rc) step_done(op, rc, 0);
}

/* ---- mappers ------------------------------------------------------------------------------- */

static mb_msg *add_mapper_msg(mb_vam *vam) {
  mm_add_mapper_msg *m = mm_add_mapper_new();
  if (!m) return NULL;
  m->mapper = mb_vam_addr(vam);
  m->eager = mb_vam_eager(vam);
  return &m->hdr;
}

static mb_msg *remove_mapper_msg(mb_vam *vam) {
  mm_remove_mapper_msg *m = mm_remove_mapper_new();
  if (!m) return NULL;
  m->mapper = mb_vam_addr(vam);
  return &m->hdr;
}

static void mapper_registered(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  step_op *op = ctx;
  mb_mapper *m = reply->status ? NULL : mapper_new(op->mm, op->vam, op->target);
  if (!m) mb_vam_destroy(op->vam);
  int rc = reply->status ? reply->status : m ? 0 : MB_ENOMEM;
  mb__rec_mapper(op->mm->rec, true, m, op->eager, rc);
  step_done(op, rc, (uint64_t)(uintptr_t)m);
}

static void mapper_add_step(mb_loop *loop, void *arg) {
  step_op *op = arg;
  int rc = mb_vam_create(loop, mb_actor_addr(op->mm->mm), op->mm->max_addr, op->eager, &op->vam);
  if (!rc) mb_actor_time_requests(mb_actor_at(loop, mb_vam_addr(op->vam)), true);
  mb_msg *msg = rc ? NULL : add_mapper_msg(op->vam);
  if (!msg) {
    if (!rc) mb_vam_destroy(op->vam);
    step_done(op, rc ? rc : MB_ENOMEM, 0);
    return;
  }
  mb_call(mb_loop_actor(loop), mb_actor_addr(op->mm->mm), msg, mapper_registered, op);
}

void mb_mapper_add(mb_mm *mm, mb_loop *loop, bool eager, mb_done_fn done, void *ctx) {
  step_op *op = step_new(mm, loop, done, ctx);
  if (op) op->eager = eager;
  step_start(op, mapper_add_step, done, ctx);
}

typedef struct vam_make {
  mb_mm *mm;
  bool eager;
  mb_vam *vam;
  int rc;
} vam_make;

static void vam_make_fn(mb_loop *loop, void *arg) {
  vam_make *v = arg;
  v->rc = mb_vam_create(loop, mb_actor_addr(v->mm->mm), v->mm->max_addr, v->eager, &v->vam);
  if (!v->rc) mb_actor_time_requests(mb_actor_at(loop, mb_vam_addr(v->vam)), true);
}

typedef struct vam_kill {
  mb_vam *vam;
  int rc;
} vam_kill;

static void vam_destroy_fn(mb_loop *loop, void *arg) {
  (void)loop;
  vam_kill *k = arg;
  k->rc = mb_vam_destroy(k->vam);
}

int mb_mapper_add_sync(mb_mm *mm, mb_loop *loop, bool eager, mb_mapper **out) {
  loop = loop ? loop : mm->loop;
  vam_make v = {mm, eager, NULL, 0};
  int rc = mb_loop_exec(loop, vam_make_fn, &v);
  if (rc || (rc = v.rc)) return rc;
  rc = mb__api_call(NULL, mb_actor_addr(mm->mm), add_mapper_msg(v.vam), NULL, NULL);
  mb_mapper *m = rc ? NULL : mapper_new(mm, v.vam, loop);
  if (!m) {
    mb_loop_exec(loop, vam_destroy_fn, &(vam_kill){v.vam, 0});
    rc = rc ? rc : MB_ENOMEM;
  }
  mb__rec_mapper(mm->rec, true, m, eager, rc);
  if (!rc) *out = m;
  return rc;
}

static void mapper_removed(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  step_op *op = ctx;
  int rc = reply->status;
  mb__rec_mapper(op->mm->rec, false, op->mapper, false, rc);
  if (!rc) { /* removed; a failed VA release is still the caller's to hear of */
    rc = mb_vam_destroy(op->mapper->vam);
    mapper_forget(op->mapper);
  } else {
    mb_vam_unretire(op->mapper->vam);
  }
  step_done(op, rc, 0);
}

/* A mapper that holds locks is not removed (MB_E_INVALID); once retired it takes no more. */
static void mapper_remove_step(mb_loop *loop, void *arg) {
  step_op *op = arg;
  int rc = mb_vam_retire(op->mapper->vam);
  mb_msg *msg = rc ? NULL : remove_mapper_msg(op->mapper->vam);
  if (!msg) {
    if (!rc) mb_vam_unretire(op->mapper->vam);
    step_done(op, rc ? rc : MB_ENOMEM, 0);
    return;
  }
  mb_call(mb_loop_actor(loop), mb_actor_addr(op->mm->mm), msg, mapper_removed, op);
}

void mb_mapper_remove(mb_mapper *m, mb_done_fn done, void *ctx) {
  step_op *op = step_new(m->mm, m->loop, done, ctx);
  if (op) op->mapper = m;
  step_start(op, m == &m->mm->primary ? NULL : mapper_remove_step, done, ctx);
}

int mb_mapper_remove_sync(mb_mapper *m) {
  if (m == &m->mm->primary) return MB_E_INVALID;
  int rc = mb_vam_retire(m->vam);
  if (rc) return rc;
  rc = mb__api_call(NULL, mb_actor_addr(m->mm->mm), remove_mapper_msg(m->vam), NULL, NULL);
  if (!rc) rc = mb__mapper_destroy(m);
  else mb_vam_unretire(m->vam);
  return rc;
}

int mb__mapper_destroy(mb_mapper *m) {
  vam_kill k = {m->vam, 0};
  mb_loop_exec(m->loop, vam_destroy_fn, &k);
  mapper_forget(m);
  return k.rc;
}

uint8_t *mb_mapper_base(const mb_mapper *m) { return mb_vam_base(m->vam); }
bool mb_mapper_eager(const mb_mapper *m) { return mb_vam_eager(m->vam); }
int mb_mapper_read(mb_mapper *m, uint64_t gpa, void *buf, size_t len) {
  return mb_vam_read(m->vam, gpa, buf, len);
}
int mb_mapper_write(mb_mapper *m, uint64_t gpa, const void *buf, size_t len) {
  return mb_vam_write(m->vam, gpa, buf, len);
}

/* ---- ranges -------------------------------------------------------------------------------- */

mb_range_list *mb__range_list(mb_part_range *ranges, uint32_t count) {
  mb_range_list *l = malloc(sizeof *l + (size_t)count * sizeof l->ranges[0]);
  if (l) {
    l->count = count;
    if (count) memcpy(l->ranges, ranges, (size_t)count * sizeof l->ranges[0]);
  }
  free(ranges);
  return l;
}

static uint64_t vam_ranges_value(mb_msg *m) {
  vam_ranges_msg *r = vam_ranges_of(m);
  mb_range_list *l = mb__range_list(r->ranges, r->count);
  r->ranges = NULL;
  return (uint64_t)(uintptr_t)l;
}

static uint64_t pm_ranges_value(mb_msg *m) {
  pm_ranges_msg *r = pm_ranges_of(m);
  mb_range_list *l = mb__range_list(r->ranges, r->count);
  r->ranges = NULL;
  return (uint64_t)(uintptr_t)l;
}

void mb_mapper_ranges(mb_mapper *m, mb_done_fn done, void *ctx) {
  mb__api_submit(NULL, mb_vam_addr(m->vam), &vam_ranges_new()->hdr, vam_ranges_value, NULL, done, ctx);
}

static int ranges_sync(mb_addr to, mb_msg *msg, mb__value_fn fn, mb_range_list **out) {
  uint64_t v = 0;
  int rc = mb__api_call(NULL, to, msg, fn, &v);
  if (!rc && !v) rc = MB_ENOMEM;
  if (!rc) *out = (mb_range_list *)(uintptr_t)v;
  return rc;
}

int mb_mapper_ranges_sync(mb_mapper *m, mb_range_list **out) {
  return ranges_sync(mb_vam_addr(m->vam), &vam_ranges_new()->hdr, vam_ranges_value, out);
}

/* ---- partitions ---------------------------------------------------------------------------- */

static mb_msg *partition_msg(bool add, mb_actor *actor) {
  rm_partition_add_msg *m = add ? rm_partition_add_new()
                                : (rm_partition_add_msg *)(void *)rm_partition_remove_new();
  if (!m) return NULL;
  m->partition = mb_actor_addr(actor);
  return &m->hdr;
}

static void partition_registered(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  step_op *op = ctx;
  mb_partition *p = reply->status ? NULL : partition_new(op->mm, op->ops, op->actor, op->target);
  if (!p) mb_actor_destroy(op->actor);
  int rc = reply->status ? reply->status : p ? 0 : MB_ENOMEM;
  mb__rec_partition(op->mm->rec, true, p, op->ops->name, rc);
  step_done(op, rc, (uint64_t)(uintptr_t)p);
}

static void partition_add_step(mb_loop *loop, void *arg) {
  step_op *op = arg;
  int rc = mb_partition_mapper_create(loop, op->ops, op->config, op->mm->max_addr,
                                      mb_vam_base(op->mm->part_vam), &op->actor);
  if (!rc) mb_actor_time_requests(op->actor, true);
  mb_msg *msg = rc ? NULL : partition_msg(true, op->actor);
  if (!msg) {
    if (!rc) mb_actor_destroy(op->actor);
    step_done(op, rc ? rc : MB_ENOMEM, 0);
    return;
  }
  mb_call(mb_loop_actor(loop), mb_actor_addr(op->mm->rm), msg, partition_registered, op);
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
  step_op *op = rc ? NULL : step_new(mm, p->loop, done, ctx);
  if (op) {
    op->ops = p->ops;
    if (p->config) op->config = memcpy(op->config_copy, p->config, p->ops->config_size);
  }
  step_start(op, rc ? NULL : partition_add_step, done, ctx);
}

void mb_partition_add(mb_mm *mm, const mb_partition_ops *ops, mb_loop *loop, mb_done_fn done,
                      void *ctx) {
  mb_partition_attach(mm, &(mb_partition_params){ops, NULL, loop}, done, ctx);
}

typedef struct part_make {
  mb_mm *mm;
  const mb_partition_params *params;
  mb_actor *actor;
  int rc;
} part_make;

static void part_make_fn(mb_loop *loop, void *arg) {
  part_make *p = arg;
  p->rc = mb_partition_mapper_create(loop, p->params->ops, p->params->config, p->mm->max_addr,
                                     mb_vam_base(p->mm->part_vam), &p->actor);
  if (!p->rc) mb_actor_time_requests(p->actor, true);
}

static void actor_destroy_fn(mb_loop *loop, void *arg) {
  (void)loop;
  mb_actor_destroy(arg);
}

int mb_partition_attach_sync(mb_mm *mm, const mb_partition_params *params, mb_partition **out) {
  int rc = check_params(params);
  if (rc) return rc;
  const mb_partition_ops *ops = params->ops;
  mb_loop *loop = params->loop ? params->loop : mm->loop;
  part_make pm = {mm, params, NULL, 0};
  rc = mb_loop_exec(loop, part_make_fn, &pm);
  if (rc || (rc = pm.rc)) return rc;
  rc = mb__api_call(NULL, mb_actor_addr(mm->rm), partition_msg(true, pm.actor), NULL, NULL);
  mb_partition *p = rc ? NULL : partition_new(mm, ops, pm.actor, loop);
  if (!p) {
    mb_loop_exec(loop, actor_destroy_fn, pm.actor);
    rc = rc ? rc : MB_ENOMEM;
  }
  mb__rec_partition(mm->rec, true, p, ops->name, rc);
  if (!rc) *out = p;
  return rc;
}

int mb_partition_add_sync(mb_mm *mm, const mb_partition_ops *ops, mb_loop *loop,
                          mb_partition **out) {
  return mb_partition_attach_sync(mm, &(mb_partition_params){ops, NULL, loop}, out);
}

static void partition_removed(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  step_op *op = ctx;
  int rc = reply->status;
  mb__rec_partition(op->mm->rec, false, op->part, NULL, rc);
  if (!rc) {
    mb_actor_destroy(op->part->actor);
    partition_forget(op->part);
  }
  step_done(op, rc, 0);
}

static void partition_remove_step(mb_loop *loop, void *arg) {
  step_op *op = arg;
  mb_msg *msg = partition_msg(false, op->part->actor);
  if (!msg) {
    step_done(op, MB_ENOMEM, 0);
    return;
  }
  mb_call(mb_loop_actor(loop), mb_actor_addr(op->mm->rm), msg, partition_removed, op);
}

void mb_partition_remove(mb_partition *p, mb_done_fn done, void *ctx) {
  step_op *op = step_new(p->mm, p->loop, done, ctx);
  if (op) op->part = p;
  step_start(op, partition_remove_step, done, ctx);
}

int mb_partition_remove_sync(mb_partition *p) {
  int rc = mb__api_call(NULL, mb_actor_addr(p->mm->rm), partition_msg(false, p->actor), NULL, NULL);
  mb__rec_partition(p->mm->rec, false, p, NULL, rc);
  if (!rc) mb__partition_destroy(p);
  return rc;
}

void mb__partition_destroy(mb_partition *p) {
  mb_loop_exec(p->loop, actor_destroy_fn, p->actor);
  partition_forget(p);
}

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
  mb__api_submit(NULL, mb_actor_addr(p->actor), access_msg(gpa, buf, len, write), NULL, NULL, done,
                 ctx);
}

int mb_partition_access_sync(mb_partition *p, uint64_t gpa, void *buf, size_t len, bool write) {
  return mb__api_call(NULL, mb_actor_addr(p->actor), access_msg(gpa, buf, len, write), NULL, NULL);
}

void mb_partition_ranges(mb_partition *p, mb_done_fn done, void *ctx) {
  mb__api_submit(NULL, mb_actor_addr(p->actor), &pm_ranges_new()->hdr, pm_ranges_value, NULL, done, ctx);
}

int mb_partition_ranges_sync(mb_partition *p, mb_range_list **out) {
  return ranges_sync(mb_actor_addr(p->actor), &pm_ranges_new()->hdr, pm_ranges_value, out);
}

/* ---- the exit question ------------------------------------------------------------------- */

int mb_partition_classify(mb_partition *p, uint64_t gpa, uint64_t len, bool write) {
  uint64_t max = p->mm->max_addr;
  if (len == 0 || len > max || gpa > max - len) return MB_E_INVALID;
  return mb_gpa_map_classify(p->mm->gpa_map, gpa, len, write, mb_vam_base(p->mm->part_vam));
}

static int classify_lookup(void *ctx, uint64_t gpa, uint64_t len, bool write) {
  int kind = mb_partition_classify(ctx, gpa, len, write);
  return kind == MB_E_INVALID ? MB_GPA_MMIO : kind; /* past max_addr: no RAM there */
}

int mb_partition_classify_exit(mb_partition *p, int rc, int err, const struct kvm_run *run,
                               mb_kvm_exit *out) {
  if (!run || !out) return MB_E_INVALID;
  return mb__kvm_exit_classify(rc, err, run, classify_lookup, p, out);
}

int mb_partition_serve_exit(mb_partition *p, const mb_kvm_exit *ex, struct kvm_run *run) {
  uint8_t *data = mb__kvm_exit_mmio_data(run, ex);
  if (!data) return MB_E_INVALID;
  mb_mapper *ram = &p->mm->primary;
  return ex->write ? mb_mapper_write(ram, ex->gpa, data, ex->len)
                   : mb_mapper_read(ram, ex->gpa, data, ex->len);
}
