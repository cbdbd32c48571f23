/* membacking.c: the public API: managers, regions, mappings, and the asynchronous and
 * blocking ways every operation is issued. Mappers and partitions: membacking_consumers.c. */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mb_hot.h"
#include "api_internal.h"
#include "fault_inject.h" /* MB_FI_ALLOC: tests fail these allocations */
#include "thread_exit.h"

/* ---- issuing requests ---------------------------------------------------------------------- */

typedef struct api_op {
  mb_mm *mm; /* a reference, when the manager records: the reply is recorded */
  mb_done_fn done;
  void *ctx;
  mb__value_fn value;
  mb_object *obj;
  struct api_op *next; /* in its thread's cache while unused */
} api_op;

/* Finished api_ops are kept for reuse, per thread (an op is taken and given back on its
 * loop's thread: the reply comes home to mb_loop_actor(here)); a thread's cache is freed when
 * it exits. */
enum { API_CACHE_MAX = 32 };
static _Thread_local api_op *api_cache;
static _Thread_local unsigned api_ncache;
static _Thread_local int api_cache_armed; /* 1: drained at thread exit; -1: cannot be; 0: not yet */

static void api_cache_drain(void *unused) {
  (void)unused;
  while (api_cache != NULL) {
    api_op *op = api_cache;
    api_cache = op->next;
    free(op);
  }
  api_ncache = 0;
  api_cache_armed = -1; /* the thread is ending: what it gives back from now on is freed */
}

static api_op *api_op_get(void) {
  api_op *op = api_cache;
  if (op == NULL)
    return mb__malloc(sizeof *op);
  api_cache = op->next;
  api_ncache--;
  return op;
}

MB_HOT static void api_op_put(api_op *op) {
  if (__builtin_expect(api_cache_armed == 0, 0)) /* once per thread */
    api_cache_armed = mb__at_thread_exit(api_cache_drain, NULL) ? 1 : -1;
  if (api_cache_armed < 0 || api_ncache >= API_CACHE_MAX) {
    free(op);
    return;
  }
  op->next = api_cache;
  api_cache = op;
  api_ncache++;
}

/* A recording is closed by mb_mm_destroy: a reply that comes back later is not recorded. */
static void record_reply(mb_mm *mm, mb_msg *reply) {
  pthread_mutex_lock(&mm->lock);
  if (!mm->dead) mb__rec_request(mm->rec, reply, reply->status);
  pthread_mutex_unlock(&mm->lock);
  mb__mm_unref(mm);
}

/* Is the reference a mapping add or replace lent the region manager still the message's
 * (the manager answered before it took it)? */
static bool lent_ref_left(mb_msg *reply) {
  rm_mapping_add_msg *m = reply->kind == RM_MAPPING_REPLACE
                              ? (rm_mapping_add_msg *)(void *)rm_mapping_replace_of(reply)
                              : rm_mapping_add_of(reply);
  return m == NULL || m->obj_ref;
}

MB_HOT static void api_op_reply(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  api_op *op = ctx;
  uint64_t v = (op->value && reply->status == 0) ? op->value(reply) : 0;
  if (op->mm) record_reply(op->mm, reply);
  if (op->obj && lent_ref_left(reply)) mb_object_unref(op->obj);
  mb_done_fn done = op->done;
  void *done_ctx = op->ctx;
  api_op_put(op);
  done(done_ctx, reply->status, v);
}

MB_HOT static void api_submit_op(api_op *op, mb_mm *mm, mb_addr to, mb_msg *msg, mb__value_fn value,
                          mb_object *obj, mb_done_fn done, void *ctx) {
  mb_loop *here = mb_loop_current();
  if (!here && op) {
    api_op_put(op);
    op = NULL;
  }
  if (!op || !msg) { /* no loop (a programming error) or no memory: the only inline answers */
    mb_msg_free(msg);
    if (op) api_op_put(op);
    done(ctx, here ? MB_ENOMEM : MB_EINVAL, 0);
    return;
  }
  if (mm && !mm->rec) mm = NULL;
  if (mm) mb__mm_ref(mm);
  if (mm) mb__rec_issue(mm->rec, msg);
  *op = (api_op){mm, done, ctx, value, obj ? mb_object_ref(obj) : NULL, NULL};
  mb_call(mb_loop_actor(here), to, msg, api_op_reply, op);
}

MB_HOT void mb__api_submit(mb_mm *mm, mb_addr to, mb_msg *msg, mb__value_fn value, mb_object *obj,
                    mb_done_fn done, void *ctx) {
  api_submit_op(mb_loop_current() ? api_op_get() : NULL, mm, to, msg, value, obj, done, ctx);
}

int mb__api_call(mb__rec *rec, mb_addr to, mb_msg *msg, mb__value_fn value_fn, uint64_t *value) {
  if (!msg) return MB_ENOMEM;
  mb__rec_issue(rec, msg);
  int rc = mb_call_sync(to, msg);
  if (rc == 0 && value_fn && value) *value = value_fn(msg);
  mb__rec_request(rec, msg, rc);
  mb_msg_free(msg);
  return rc;
}

/* ---- answers and steps that must run --------------------------------------------------------- */

static void answer_dispose(mb_msg *msg) {
  api_answer_msg *m = api_answer_of(msg);
  if (m) m->fn(m->arg, false); /* its loop is gone: the operation is released there */
}

MB_PROTOCOL_DEFINE_DISPOSE(api, API_MESSAGES, answer_dispose);

/* An answer's actor lives for one message. */
static void answer_handle(mb_actor *self, mb_msg *msg) {
  api_answer_msg *m = api_answer_of(msg);
  mb_actor_destroy(self);
  if (m) m->fn(m->arg, true);
}

static const mb_actor_type answer_type = {"answer", answer_handle, NULL, 0, NULL};

int mb__answer_make(mb__answer *a, mb_loop *here, mb__answer_fn fn, void *arg) {
  if (mb_loop_stopping(here)) return MB_ESTOPPED;
  api_answer_msg *m = api_answer_new();
  mb_actor *actor = m ? mb_actor_create(here, &answer_type, NULL, "answer") : NULL;
  if (!actor) {
    mb_msg_free(m ? &m->hdr : NULL);
    return MB_ENOMEM;
  }
  m->fn = fn;
  m->arg = arg;
  *a = (mb__answer){mb_actor_addr(actor), &m->hdr};
  return 0;
}

void mb__answer_send(mb__answer *a) {
  mb_msg *m = a->msg;
  a->msg = NULL;
  (void)mb_send_from(a->to, m); /* undeliverable: dropped, and answer_dispose runs */
}

void mb__answer_cancel(mb__answer *a) {
  if (!a->msg) return;
  mb_actor_destroy(mb_actor_at(a->to.loop, a->to));
  mb_msg_free(a->msg);
  a->msg = NULL;
}

int mb__exec_must(mb_loop *loop, mb_exec_fn fn, void *arg) {
  int rc;
  while ((rc = mb_loop_exec(loop, fn, arg)) == MB_ENOMEM)
    nanosleep(&(struct timespec){0, 1000000}, NULL);
  return rc;
}

/* A blocking request to the region manager: refused on a loop thread the request needs. */
int mb__rm_call(mb_mm *mm, mb_msg *msg, mb__value_fn value_fn, uint64_t *value) {
  int rc = mb__mm_check_thread(mm);
  if (rc) {
    mb_msg_free(msg);
    return rc;
  }
  return mb__api_call(mm->rec, mm->rm_addr, msg, value_fn, value);
}

/* ---- managers ---------------------------------------------------------------------------- */

typedef struct mm_build {
  mb_mm *mm;
  const mb_mm_config *cfg;
  int rc;
} mm_build;

static void mm_build_managers(mb_loop *loop, void *arg) {
  mm_build *b = arg;
  mb_mm *mm = b->mm;
  mb_mm_geom geom = {mm->max_addr, mb_mm_stride(mm->max_addr), mm->alias, mm->vtls};
  mm->mm = mb_mapping_manager_create(loop, &geom);
  mb_rm_config rc = {.geom = geom, .max_addr = mm->max_addr, .overlap = b->cfg->overlap,
                     .mapping_manager = mm->mm ? mb_actor_addr(mm->mm) : (mb_addr){0},
                     .gpa_map = mm->gpa_map, .dirty = &mm->dirty, .primary = mm->view_base};
  b->mm->rm = b->mm->mm ? mb_region_manager_create(loop, &rc) : NULL;
  b->rc = b->mm->rm ? 0 : MB_ENOMEM;
  if (b->rc) return;
  b->mm->rm_addr = mb_actor_addr(b->mm->rm);
  b->mm->mm_addr = mb_actor_addr(b->mm->mm);
  mb_actor_time_requests(b->mm->rm, true); /* stage latency, for introspection */
  mb_actor_time_requests(b->mm->mm, true);
}

/* Only the part of a manager that has no loop of its own to wait for: its VA mappers, one
 * per view, which partitions map from (VTL 0's is part_vam). Their bases are written here,
 * before any request reaches the region manager, which reads them (view_base). */
static void mm_build_part_vams(mb_loop *loop, void *arg) {
  mm_build *b = arg;
  mb_mm *mm = b->mm;
  for (unsigned v = 0; v <= MB_VTL_MAX && !b->rc; v++) {
    if (!((mm->vtls >> v) & 1)) continue;
    b->rc = mb_vam_create(loop, mm->mm_addr, mm->max_addr, true, &mm->view_vam[v]);
    if (b->rc) return;
    mm->view_base[v] = mb_vam_base(mm->view_vam[v]);
    mb_vam_set_dirty(mm->view_vam[v], &mm->dirty);
    mb_actor_time_requests(mb_actor_at(loop, mb_vam_addr(mm->view_vam[v])), true);
  }
  mm->part_vam = mm->view_vam[0];
  mm->part_base = mm->view_base[0];
}

static void destroy_managers(mb_loop *loop, void *arg);

/* On the manager's loop: the registration was answered. A refusal leaves the manager unusable:
 * its managers go, so that every operation answers MB_EGONE (those held back included), and
 * stderr says why; mb_mm_destroy is still the caller's to call. */
static void primary_registered(mb_actor *self, mb_msg *reply, void *ctx) {
  mb_mm *mm = ctx;
  if (mm->rm && reply->status) {
    fprintf(stderr, "membacking: mb_mm_create: the mapping manager refused the partitions' "
                    "mapper (%s): every operation on this manager fails\n",
            membacking_strerror(reply->status));
    destroy_managers(mb_actor_loop(self), mm);
  } else if (mm->rm) {
    mb_actor_release(mm->rm);
  }
  mb__mm_unref(mm);
}

/* The partitions' mapper is registered before any request of the caller can reach the
 * mapping manager. A creator that does not run the manager's loop waits for the answer, and
 * fails with it. On that loop's own thread nobody can wait: the region manager, where every
 * operation that makes memory visible starts, is held until the registration is answered
 * (mapper adds may pass it: with nothing visible they have nothing to miss). */
static int register_view(mb_mm *mm, unsigned v) {
  mm_add_mapper_msg *m = mm_add_mapper_new();
  if (!m) return MB_ENOMEM;
  m->mapper = mb_vam_addr(mm->view_vam[v]);
  m->eager = true;
  m->vtl = (uint8_t)v; /* partitions enforce protections themselves: no protect, no alias */
  if (!mb_loop_is_current(mm->loop)) {
    int rc = mb_call_sync(mm->mm_addr, &m->hdr);
    mb_msg_free(&m->hdr);
    return rc;
  }
  mb_actor_hold(mm->rm);
  mb__mm_ref(mm);
  mb_call(mb_loop_actor(mm->loop), mm->mm_addr, &m->hdr, primary_registered, mm);
  return 0;
}

static int register_primary(mb_mm *mm) {
  int rc = 0;
  for (unsigned v = 0; v <= MB_VTL_MAX && !rc; v++)
    if ((mm->vtls >> v) & 1) rc = register_view(mm, v);
  return rc;
}

static int check_config(const mb_mm_config *cfg) {
  if (!cfg || !cfg->loop) return MB_E_INVALID;
  if (cfg->overlap != MB_OVERLAP_NESTED && cfg->overlap != MB_OVERLAP_ANY) return MB_E_INVALID;
  uint64_t max = cfg->max_addr ? cfg->max_addr : 64ull << 30;
  if (!mb_page_aligned(max) || max > (1ull << 46)) return MB_E_INVALID;
  uint8_t vtls = cfg->vtls ? cfg->vtls : 1;
  if (!(vtls & 1) || vtls >> (MB_VTL_MAX + 1)) return MB_E_INVALID;
  uint64_t a = cfg->vtl0_alias;
  if (a && (!(vtls & 4) || !mb_page_aligned(a) || a < max || a > (1ull << 46) - max))
    return MB_E_INVALID; /* a VTL-2 mapper reserves alias + max_addr bytes of VA */
  return 0;
}

int mb_mm_create(const mb_mm_config *cfg, mb_mm **out) {
  int rc = check_config(cfg);
  mb_mm *mm = rc ? NULL : mb__calloc(1, sizeof *mm);
  if (!mm) return rc ? rc : MB_ENOMEM;
  mm->loop = cfg->loop;
  mm->part_loop = cfg->part_loop ? cfg->part_loop : cfg->loop;
  mm->max_addr = cfg->max_addr ? cfg->max_addr : 64ull << 30;
  mm->overlap = cfg->overlap;
  mm->vtls = cfg->vtls ? cfg->vtls : 1;
  mm->alias = cfg->vtl0_alias;
  atomic_init(&mm->refs, 1);
  pthread_mutex_init(&mm->lock, NULL);
  mb__dirty_log_init(&mm->dirty);
  mm_build b = {mm, cfg, 0};
  mm->primary = (mb_mapper){.mm = mm, .loop = mm->part_loop, .idx = mb__h_alloc()};
  rc = mm->primary.idx == MB__H_NONE || mb_gpa_map_create(&mm->gpa_map) ? MB_ENOMEM : 0;
  if (!rc) rc = mb_loop_exec(mm->loop, mm_build_managers, &b);
  if (!rc && !(rc = b.rc)) rc = mb_loop_exec(mm->part_loop, mm_build_part_vams, &b);
  if (!rc && !(rc = b.rc)) rc = register_primary(mm);
  if (rc) {
    mb_mm_destroy(mm);
    return rc;
  }
  mm->primary.vam = mm->part_vam;
  mm->primary.h = mb__h_publish(mm->primary.idx, MB__H_MAPPER, &mm->primary);
  char path[4096];
  if (mb__rec_env_path(path, sizeof path)) (void)mb_mm_record(mm, path);
  *out = mm;
  return 0;
}

int mb_mm_record(mb_mm *mm, const char *path) {
  if (mm->rec || !path) return MB_E_INVALID;
  int err = 0;
  mb__rec *rec = mb__rec_open(path, mm, mm->overlap, &err);
  pthread_mutex_lock(&mm->lock);
  mm->rec = rec;
  pthread_mutex_unlock(&mm->lock);
  return rec ? 0 : err;
}

mb_mapper *mb_mm_primary_mapper(mb_mm *mm) { return (mb_mapper *)mm->primary.h; }

void mb__mm_ref(mb_mm *mm) { atomic_fetch_add(&mm->refs, 1); }

void mb__mm_unref(mb_mm *mm) {
  if (atomic_fetch_sub(&mm->refs, 1) != 1) return;
  mb_msg_free(atomic_exchange(&mm->txn_commit, NULL));
  free(atomic_exchange(&mm->txn_op, NULL));
  mb_gpa_map_destroy(mm->gpa_map);
  mb__dirty_log_fini(&mm->dirty);
  pthread_mutex_destroy(&mm->lock);
  free(mm);
}

static void kill_on_loop(mb_loop *loop, void *arg) {
  (void)loop;
  mb__mapper_kill(arg);
}

static void kill_partition_on_loop(mb_loop *loop, void *arg) {
  (void)loop;
  mb__partition_kill(arg);
}

static void destroy_part_vams(mb_loop *loop, void *arg) {
  (void)loop;
  mb_mm *mm = arg;
  for (unsigned v = 0; v <= MB_VTL_MAX; v++) {
    mb_vam_destroy(mm->view_vam[v]);
    mm->view_vam[v] = NULL;
  }
  mm->part_vam = NULL;
}

/* On the manager's loop (where rm and mm are read and written once the manager is made). */
static void destroy_managers(mb_loop *loop, void *arg) {
  (void)loop;
  mb_mm *mm = arg;
  if (mm->rm) mb_actor_destroy(mm->rm);
  if (mm->mm) mb_actor_destroy(mm->mm);
  mm->rm = mm->mm = NULL;
}

/* The next consumer to kill, taken off its list (under the lock: a removal that has not
 * unlinked it by now never will, as the manager is dead). */
static void *pop_consumer(mb_mm *mm, bool mapper) {
  pthread_mutex_lock(&mm->lock);
  void *c = mapper ? (void *)mm->mappers : (void *)mm->partitions;
  if (mapper && mm->mappers) {
    mm->mappers = mm->mappers->next;
    if (mm->mappers) mm->mappers->prev = NULL;
  } else if (!mapper && mm->partitions) {
    mm->partitions = mm->partitions->next;
    if (mm->partitions) mm->partitions->prev = NULL;
  }
  pthread_mutex_unlock(&mm->lock);
  return c;
}

/* The partitions' mappers: VTL 0's is the primary mapper's (killed as a mapper once its
 * handle is out), the other views' are destroyed here. */
static void destroy_primary(mb_mm *mm) {
  if (mm->primary.h) {
    mb__exec_must(mm->part_loop, kill_on_loop, &mm->primary);
    mm->view_vam[0] = NULL; /* gone with the primary mapper */
  } else if (mm->primary.idx != MB__H_NONE) {
    mb__h_free(mm->primary.idx);
  }
  mb__exec_must(mm->part_loop, destroy_part_vams, mm);
}

/* Consumer operations in flight see `dead` and end with MB_EGONE; the struct lives on until
 * they and the consumers' last readers are done (refs). Each step on a loop must run: one the
 * runtime has no memory for waits for memory (mb__exec_must); a stopped loop's actors are
 * gone with it already. */
void mb_mm_destroy(mb_mm *mm) {
  if (!mm) return;
  pthread_mutex_lock(&mm->lock);
  bool again = mm->dead;
  mm->dead = true;
  pthread_mutex_unlock(&mm->lock);
  if (again) return;
  mb__inspect_stop(mm);
  mb__rec_close(mm->rec, mm);
  mm->rec = NULL;
  mb_partition *p;
  while ((p = pop_consumer(mm, false))) mb__exec_must(p->loop, kill_partition_on_loop, p);
  mb_mapper *m;
  while ((m = pop_consumer(mm, true))) mb__exec_must(m->loop, kill_on_loop, m);
  destroy_primary(mm);
  mb__exec_must(mm->loop, destroy_managers, mm);
  mb__mm_unref(mm);
}

uint64_t mb_mm_max_addr(const mb_mm *mm) { return mm->max_addr; }
uint8_t mb_mm_vtls(const mb_mm *mm) { return mm->vtls; }

/* ---- regions ------------------------------------------------------------------------------- */

static uint64_t region_id_of(mb_msg *m) { return rm_region_add_of(m)->id; }
static uint64_t region_state_of(mb_msg *m) { return (uint64_t)rm_region_state_of(m)->state; }

static mb_msg *region_add_msg(const mb_region_params *p) {
  rm_region_add_msg *m = rm_region_add_new();
  if (!m) return NULL;
  /* a name longer than MB_REGION_NAME_MAX arrives unterminated: the region manager refuses it */
  if (p->name) memcpy(m->name, p->name, strnlen(p->name, sizeof m->name));
  m->gpa = p->gpa;
  m->size = p->size;
  m->prio = p->priority;
  m->device = p->device;
  m->vtl = p->vtl;
  return &m->hdr;
}

void mb_region_add(mb_mm *mm, const mb_region_params *p, mb_done_fn done, void *ctx) {
  mb__api_submit(mm, mm->rm_addr, region_add_msg(p), region_id_of, NULL, done, ctx);
}

int mb_region_add_sync(mb_mm *mm, const mb_region_params *p, mb_region_id *id) {
  uint64_t v = 0;
  int rc = mb__rm_call(mm, region_add_msg(p), region_id_of, &v);
  if (!rc && id) *id = (mb_region_id)v;
  return rc;
}

static mb_msg *region_map_msg(mb_region_id id, bool writable) {
  rm_region_map_msg *m = rm_region_map_new();
  if (!m) return NULL;
  m->id = id;
  m->writable = writable;
  return &m->hdr;
}

void mb_region_map(mb_mm *mm, mb_region_id id, bool writable, mb_done_fn done, void *ctx) {
  mb__api_submit(mm, mm->rm_addr, region_map_msg(id, writable), NULL, NULL, done, ctx);
}

int mb_region_map_sync(mb_mm *mm, mb_region_id id, bool writable) {
  return mb__rm_call(mm, region_map_msg(id, writable), NULL, NULL);
}

/* unmap, remove and state carry just the id. */
#define ID_MSG(name)                                                                          \
  static mb_msg *name##_msg(mb_region_id id) {                                               \
    rm_##name##_msg *m = rm_##name##_new();                                                  \
    if (!m) return NULL;                                                                     \
    m->id = id;                                                                              \
    return &m->hdr;                                                                          \
  }
ID_MSG(region_unmap)
ID_MSG(region_remove)
ID_MSG(region_state)

void mb_region_unmap(mb_mm *mm, mb_region_id id, mb_done_fn done, void *ctx) {
  mb__api_submit(mm, mm->rm_addr, region_unmap_msg(id), NULL, NULL, done,
                 ctx);
}

int mb_region_unmap_sync(mb_mm *mm, mb_region_id id) {
  return mb__rm_call(mm, region_unmap_msg(id), NULL, NULL);
}

void mb_region_remove(mb_mm *mm, mb_region_id id, mb_done_fn done, void *ctx) {
  mb__api_submit(mm, mm->rm_addr, region_remove_msg(id), NULL, NULL, done,
                 ctx);
}

int mb_region_remove_sync(mb_mm *mm, mb_region_id id) {
  return mb__rm_call(mm, region_remove_msg(id), NULL, NULL);
}

void mb_region_state(mb_mm *mm, mb_region_id id, mb_done_fn done, void *ctx) {
  mb__api_submit(mm, mm->rm_addr, region_state_msg(id), region_state_of,
                 NULL, done, ctx);
}

int mb_region_state_sync(mb_mm *mm, mb_region_id id, int *state) {
  uint64_t v = 0;
  int rc = mb__rm_call(mm, region_state_msg(id),
                        region_state_of, &v);
  if (!rc && state) *state = (int)v;
  return rc;
}

/* ---- mappings ------------------------------------------------------------------------------
 * The caller's object reference must outlive the request: an asynchronous one lends the
 * region manager a reference of the API's own (obj_ref), which the manager keeps with the
 * mapping or the API drops at completion; a synchronous one holds its own across the call. */

MB_HOT static mb_msg *mapping_msg(const mb_mapping_params *p, bool replace, bool lend) {
  rm_mapping_add_msg *m = replace ? (rm_mapping_add_msg *)(void *)rm_mapping_replace_new()
                                  : rm_mapping_add_new();
  if (!m) return NULL;
  m->id = p->region;
  m->offset = p->offset;
  m->size = p->size;
  m->obj = p->obj;
  m->obj_off = p->obj_offset;
  m->writable = p->writable;
  m->obj_ref = lend;
  return &m->hdr;
}

static int mapping_sync(mb_mm *mm, const mb_mapping_params *p, bool replace) {
  if (!p->obj) return MB_E_NOTFOUND;
  mb_object_ref(p->obj);
  int rc = mb__rm_call(mm, mapping_msg(p, replace, false), NULL, NULL);
  mb_object_unref(p->obj);
  return rc;
}

static void mapping_async(mb_mm *mm, const mb_mapping_params *p, bool replace, mb_done_fn done,
                          void *ctx) {
  mb__api_submit(mm, mm->rm_addr, p->obj ? mapping_msg(p, replace, true) : NULL, NULL, p->obj,
                 done, ctx);
}

void mb_mapping_add(mb_mm *mm, const mb_mapping_params *p, mb_done_fn done, void *ctx) {
  mapping_async(mm, p, false, done, ctx);
}
int mb_mapping_add_sync(mb_mm *mm, const mb_mapping_params *p) { return mapping_sync(mm, p, false); }
void mb_mapping_replace(mb_mm *mm, const mb_mapping_params *p, mb_done_fn done, void *ctx) {
  mapping_async(mm, p, true, done, ctx);
}
int mb_mapping_replace_sync(mb_mm *mm, const mb_mapping_params *p) {
  return mapping_sync(mm, p, true);
}

static mb_msg *mapping_remove_msg(mb_region_id region, uint64_t offset, uint64_t size) {
  rm_mapping_remove_msg *m = rm_mapping_remove_new();
  if (!m) return NULL;
  m->id = region;
  m->offset = offset;
  m->size = size;
  return &m->hdr;
}

void mb_mapping_remove(mb_mm *mm, mb_region_id region, uint64_t offset, uint64_t size,
                       mb_done_fn done, void *ctx) {
  mb__api_submit(mm, mm->rm_addr, mapping_remove_msg(region, offset, size), NULL, NULL,
                 done, ctx);
}

int mb_mapping_remove_sync(mb_mm *mm, mb_region_id region, uint64_t offset, uint64_t size) {
  return mb__rm_call(mm, mapping_remove_msg(region, offset, size), NULL,
                      NULL);
}

/* ---- transactions ---------------------------------------------------------------------------
 * The region manager decides (a begin inside one or a commit outside one is MB_E_INVALID);
 * the flag only lets consumer operations and locks refuse themselves while one is open, from
 * the moment its begin is issued to the moment its commit is. */

/* A begin's request, with its commit's made too (kept in mm until the commit): NULL when
 * there is no memory for all of them (nothing is sent then). */
static mb_msg *begin_msg(mb_mm *mm) {
  rm_txn_begin_msg *b = rm_txn_begin_new();
  rm_txn_commit_msg *c = b ? rm_txn_commit_new() : NULL;
  api_op *op = c ? mb__malloc(sizeof *op) : NULL;
  if (!op) {
    mb_msg_free(b ? &b->hdr : NULL);
    mb_msg_free(c ? &c->hdr : NULL);
    return NULL;
  }
  mb_msg *spare = NULL;
  if (!atomic_compare_exchange_strong(&mm->txn_commit, &spare, &c->hdr)) {
    mb_msg_free(&c->hdr); /* a begin inside a transaction: the first one's stay */
    free(op);
  } else {
    free(atomic_exchange(&mm->txn_op, op));
  }
  atomic_store(&mm->txn, true);
  return &b->hdr;
}

/* The commit's request: the one made at the begin, or (no begin) a new one, which the region
 * manager refuses. */
static mb_msg *commit_msg(mb_mm *mm, api_op **op) {
  mb_msg *msg = atomic_exchange(&mm->txn_commit, NULL);
  api_op *kept = atomic_exchange(&mm->txn_op, NULL);
  if (op) *op = kept ? kept : mb_loop_current() ? api_op_get() : NULL;
  else free(kept);
  if (!msg) {
    rm_txn_commit_msg *m = rm_txn_commit_new();
    msg = m ? &m->hdr : NULL;
  }
  atomic_store(&mm->txn, false);
  return msg;
}

void mb_txn_begin(mb_mm *mm, mb_done_fn done, void *ctx) {
  mb__api_submit(mm, mm->rm_addr, begin_msg(mm), NULL, NULL, done, ctx);
}

void mb_txn_commit(mb_mm *mm, mb_done_fn done, void *ctx) {
  api_op *op;
  mb_msg *msg = commit_msg(mm, &op);
  api_submit_op(op, mm, mm->rm_addr, msg, NULL, NULL, done, ctx);
}

/* A begin that failed (for memory) opened nothing: the flag goes back. */
static int txn_sync(mb_mm *mm, bool begin) {
  int rc = mb__mm_check_thread(mm);
  if (rc) return rc;
  bool was = atomic_load(&mm->txn);
  rc = mb__api_call(mm->rec, mm->rm_addr, begin ? begin_msg(mm) : commit_msg(mm, NULL), NULL,
                    NULL);
  if (begin && rc && !was) atomic_store(&mm->txn, false);
  return rc;
}

int mb_txn_begin_sync(mb_mm *mm) { return txn_sync(mm, true); }
int mb_txn_commit_sync(mb_mm *mm) { return txn_sync(mm, false); }

/* ---- errors -------------------------------------------------------------------------------- */

const char *membacking_strerror(int err) {
  switch (err) {
  case MB_E_OVERLAP: return "region or mapping overlap";
  case MB_E_INVALID: return "invalid request";
  case MB_E_NOTFOUND: return "not found";
  case MB_E_UNMAPPED: return "guest address not mapped";
  case MB_E_READONLY: return "write to read-only memory";
  case MB_E_MMIO: return "guest access outside the partition's memory (MMIO)";
  case MB_E_FAULT: return "guest access to memory with no backing";
  case MB_E_UNSUPPORTED: return "not supported in this build";
  case MB_E_PROTECTED: return "forbidden by a VTL protection";
  default: return mb_strerror(err);
  }
}
