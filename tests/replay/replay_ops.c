/* replay_ops.c: issuing operations. One start function per command kind: it looks up the names
 * the command uses (a missing one is answered `notfound` by the runner itself) and issues the
 * asynchronous API call with replay_op_done as its completion; an apply function updates the
 * name tables when the operation completes. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "replay.h"

typedef void (*start_fn)(replay_world *w, replay_op *op);

/* ---- completion ------------------------------------------------------------------------------ */

void replay_op_done(void *ctx, int status, uint64_t value) {
  replay_op *op = ctx;
  op->status = status;
  op->value = value;
  if (op->apply) op->apply(op);
  op->w->completions++;
  atomic_store_explicit(&op->done, true, memory_order_release);
}

void replay_op_free(replay_op *op) {
  replay_op **p = &op->w->ops;
  while (*p != op) p = &(*p)->next;
  *p = op->next;
  op->w->memory -= op->charged;
  free(op->buf);
  free(op->ranges);
  free(op->prots);
  free(op->refusal);
  replay_entry_unref(op->w, op->entry);
  replay_loop_free(op->w, op->new_loop);
  scenario_cmd_free(op->owned);
  free(op);
}

/* The named entry, referenced by op; NULL after answering notfound. */
static replay_entry *use(replay_world *w, replay_op *op, replay_ns ns, const char *name) {
  replay_entry *e = replay_name_lookup(w, ns, name);
  if (!e) replay_op_done(op, MB_E_NOTFOUND, 0);
  else if (!op->entry) op->entry = replay_entry_ref(e);
  return e;
}

/* Charge `bytes` to the file's memory (REPLAY_MEMORY_MAX); false, with the op refused and
 * done, when that would go past the limit. The op holds the charge until it is freed. */
static bool charge(replay_world *w, replay_op *op, uint64_t bytes, const char *what) {
  if (bytes > REPLAY_MEMORY_MAX - w->memory) {
    op->refusal = replay_strdupf("not run: %s needs %" PRIu64 " bytes, and the file's memory "
                                 "would pass the runner's limit of %" PRIu64 " MiB",
                                 what, bytes, REPLAY_MEMORY_MAX >> 20);
    replay_op_done(op, MB_ENOMEM, 0);
    return false;
  }
  w->memory += bytes;
  op->charged += bytes;
  return true;
}

/* Take the name off its table once a remove succeeded (a region's, inside a transaction, is
 * kept for a commit that fails). */
static void apply_region_remove(replay_op *op) {
  if (op->status != 0) return;
  replay_txn_note(op->w, op->entry, false);
  replay_name_remove(op->w, REPLAY_NS_REGION, op->entry);
}

static void apply_partition_remove(replay_op *op) {
  if (op->status == 0) replay_name_remove(op->w, REPLAY_NS_PARTITION, op->entry);
}

/* A mapper remove that answers a negative errno (not one of the runtime's or the format's
 * codes) removed the mapper all the same: only the kernel kept its VA range (membacking.h). */
static void apply_mapper_remove(replay_op *op) {
  bool errno_code = op->status < 0 && op->status > MB_EGONE;
  if (op->status == 0 || errno_code) replay_name_remove(op->w, REPLAY_NS_MAPPER, op->entry);
}

/* ---- objects --------------------------------------------------------------------------------- */

/* A fill writes every page of the object, so a filled object costs its whole size in memory
 * (or disk). The op holds the charge; an object made takes it over, to the end of the file. */
static bool object_charge(replay_world *w, replay_op *op) {
  const scenario_object *o = &op->cmd->object;
  if (o->fill == SCENARIO_FILL_BYTE && o->fill_value == 0) return true; /* nothing written */
  return charge(w, op, o->size, "filling the object");
}

/* A size the format calls invalid (zero, unaligned, beyond what a file offset holds) is answered
 * here, before anything is charged against the run's memory limit (mb_object_create would
 * answer MB_E_INVALID too). */
static bool object_size_valid(uint64_t size) {
  return size != 0 && size % SCENARIO_PAGE_SIZE == 0 && size <= (uint64_t)INT64_MAX;
}

static void start_object(replay_world *w, replay_op *op) {
  const scenario_object *o = &op->cmd->object;
  if (!object_size_valid(o->size)) {
    replay_op_done(op, MB_E_INVALID, 0);
    return;
  }
  if (!object_charge(w, op)) return;
  mb_object *obj = NULL;
  mb_object_kind kind = o->type == SCENARIO_OBJECT_FILE ? MB_OBJECT_FILE : MB_OBJECT_MEMFD;
  int rc = mb_object_create(kind, o->size, o->name, &obj);
  if (!rc && o->fill == SCENARIO_FILL_PAGES) rc = mb_object_fill_pages(obj, o->fill_value);
  else if (!rc && o->fill_value != 0) rc = mb_object_fill_byte(obj, o->fill_value);
  replay_entry *e = rc ? NULL : replay_name_add(w, REPLAY_NS_OBJECT, o->name);
  if (!rc && !e) rc = MB_ENOMEM;
  if (e) {
    e->object = obj;
    op->charged = 0; /* kept by the object */
  } else {
    mb_object_unref(obj);
  }
  replay_op_done(op, rc, 0);
}

/* ---- regions ----------------------------------------------------------------------------------- */

static void apply_region_add(replay_op *op) {
  if (op->status != 0) return;
  replay_entry *e = replay_name_add(op->w, REPLAY_NS_REGION, op->cmd->region.name);
  if (e) e->region = (mb_region_id)op->value;
  else op->status = MB_ENOMEM;
  if (e) replay_txn_note(op->w, e, true);
}

static void start_region_add(replay_world *w, replay_op *op) {
  const scenario_region *r = &op->cmd->region;
  mb_region_params p = {r->name, r->gpa, r->size, r->prio, r->type == SCENARIO_REGION_DEVICE,
                        r->vtl};
  op->apply = apply_region_add;
  mb_region_add(w->mm, &p, replay_op_done, op);
}

static void start_region_map(replay_world *w, replay_op *op) {
  replay_entry *e = use(w, op, REPLAY_NS_REGION, op->cmd->region.name);
  if (e) mb_region_map(w->mm, e->region, !op->cmd->region.ro, replay_op_done, op);
}

static void start_region_unmap(replay_world *w, replay_op *op) {
  replay_entry *e = use(w, op, REPLAY_NS_REGION, op->cmd->region.name);
  if (e) mb_region_unmap(w->mm, e->region, replay_op_done, op);
}

static void start_region_remove(replay_world *w, replay_op *op) {
  replay_entry *e = use(w, op, REPLAY_NS_REGION, op->cmd->region.name);
  op->apply = apply_region_remove;
  if (e) mb_region_remove(w->mm, e->region, replay_op_done, op);
}

/* ---- mappings ---------------------------------------------------------------------------------- */

static void start_mapping_add(replay_world *w, replay_op *op) {
  const scenario_mapping *m = &op->cmd->mapping;
  replay_entry *region = use(w, op, REPLAY_NS_REGION, m->region);
  replay_entry *obj = region ? replay_name_lookup(w, REPLAY_NS_OBJECT, m->object) : NULL;
  if (!region) return;
  if (!obj) {
    replay_op_done(op, MB_E_NOTFOUND, 0);
    return;
  }
  mb_mapping_params p = {region->region, m->offset, m->size, obj->object, m->obj_offset, !m->ro};
  if (op->cmd->kind == SCENARIO_MAPPING_REPLACE) mb_mapping_replace(w->mm, &p, replay_op_done, op);
  else mb_mapping_add(w->mm, &p, replay_op_done, op);
}

static void start_mapping_remove(replay_world *w, replay_op *op) {
  const scenario_mapping *m = &op->cmd->mapping;
  replay_entry *e = use(w, op, REPLAY_NS_REGION, m->region);
  if (e) mb_mapping_remove(w->mm, e->region, m->offset, m->size, replay_op_done, op);
}

/* ---- consumers --------------------------------------------------------------------------------- */

/* A mapper or partition add: the new name, on success, with the loop started for it. */
static void apply_consumer_add(replay_op *op) {
  bool mapper = op->cmd->kind == SCENARIO_MAPPER_ADD;
  if (op->status != 0) return; /* replay_op_free stops the loop */
  replay_ns ns = mapper ? REPLAY_NS_MAPPER : REPLAY_NS_PARTITION;
  replay_entry *e = replay_name_add(op->w, ns, mapper ? op->cmd->mapper.name
                                                      : op->cmd->partition.name);
  if (!e) {
    op->status = MB_ENOMEM;
    return;
  }
  if (mapper) e->mapper = (mb_mapper *)(uintptr_t)op->value;
  else e->partition = (mb_partition *)(uintptr_t)op->value;
  e->span = replay_consumer_span(op->w->sc, mapper ? op->cmd->mapper.vtl : op->cmd->partition.vtl);
  e->loop = op->new_loop;
  op->new_loop = NULL;
}

/* Consumer adds and removes reach the managers from the consumer's own loop, not through the
 * region manager's mailbox, so the library does not order them after the region and mapping
 * operations issued before them (a mapper add overtakes an `async` mapping remove still on
 * its way to the mapping manager). The format queues them behind an operation that waits
 * ("Locks"): every earlier operation is first let go as far as it can, in both layouts. */
static void settle_earlier(replay_world *w, const replay_op *self) {
  for (replay_op *o = w->ops; o; o = o->next) {
    if (o != self && !replay_op_is_done(o)) {
      replay_settle(w);
      return;
    }
  }
}

/* The loop a new consumer runs on: a fresh started one (spread) or the client loop (single). */
static mb_loop *consumer_loop(replay_world *w, replay_op *op, const char *what, const char *name) {
  int err = 0;
  op->new_loop = replay_loop_new(w, what, name, &err);
  if (err) replay_op_done(op, err, 0);
  return err ? NULL : op->new_loop ? op->new_loop : w->client;
}

static void start_mapper_add(replay_world *w, replay_op *op) {
  const scenario_mapper *m = &op->cmd->mapper;
  op->apply = apply_consumer_add;
  settle_earlier(w, op);
  mb_loop *loop = consumer_loop(w, op, "mapper", m->name);
  if (loop)
    mb_mapper_add_vtl(w->mm, loop, m->mode == SCENARIO_MAPPER_EAGER, m->vtl, replay_op_done, op);
}

static void start_mapper_remove(replay_world *w, replay_op *op) {
  settle_earlier(w, op);
  replay_entry *e = use(w, op, REPLAY_NS_MAPPER, op->cmd->mapper.name);
  op->apply = apply_mapper_remove;
  if (e) mb_mapper_remove(e->mapper, replay_op_done, op);
}

/* --partitions=kvm puts a kvm partition where the file adds a soft one. */
static void start_partition_add(replay_world *w, replay_op *op) {
  const scenario_partition *p = &op->cmd->partition;
  bool kvm = p->backend == SCENARIO_PARTITION_KVM || w->kvm_partitions;
  const mb_partition_ops *ops = kvm ? &mb_partition_kvm : &mb_partition_soft;
  op->apply = apply_consumer_add;
  settle_earlier(w, op);
  mb_loop *loop = consumer_loop(w, op, "partition", p->name);
  mb_partition_params params = {.ops = ops, .loop = loop, .vtl = p->vtl};
  if (loop) mb_partition_attach(w->mm, &params, replay_op_done, op);
}

static void start_partition_remove(replay_world *w, replay_op *op) {
  settle_earlier(w, op);
  replay_entry *e = use(w, op, REPLAY_NS_PARTITION, op->cmd->partition.name);
  op->apply = apply_partition_remove;
  if (e) mb_partition_remove(e->partition, replay_op_done, op);
}

/* ---- accesses ---------------------------------------------------------------------------------- */

/* op->buf: room for a read, or a copy of a write's bytes (the API may write through it).
 * Validity comes before the buffer (spec: validity before state): a range that ends past what
 * the consumer `e` shows (max_addr; alias + max_addr for VTL 2 with an alias), or wraps, is
 * answered invalid here, as the library would answer it, without allocating LEN bytes for it. */
static bool access_buffer(replay_world *w, replay_op *op, const replay_entry *e) {
  const scenario_io *io = &op->cmd->io;
  bool read = op->cmd->kind == SCENARIO_READ || op->cmd->kind == SCENARIO_GUEST_READ;
  uint64_t len = read ? io->len : io->data.len;
  if (len > e->span || io->gpa > e->span - len) {
    replay_op_done(op, MB_E_INVALID, 0);
    return false;
  }
  if (!charge(w, op, len, read ? "the read's buffer" : "the write's buffer")) return false;
  if (len > SIZE_MAX || !(op->buf = malloc(len ? (size_t)len : 1))) {
    replay_op_done(op, MB_ENOMEM, 0);
    return false;
  }
  op->len = (size_t)len;
  if (!read && len) memcpy(op->buf, io->data.data, op->len);
  return true;
}

/* Under the single layout an access or a lock starts only once every actor ran out of work
 * (operations still in flight have done all they can), so what it sees does not depend on
 * thread timing: that layout stays deterministic. */
static void settle_first(replay_world *w) {
  if (w->layout == REPLAY_SINGLE && (!w->quiet || w->fault)) replay_settle(w);
}

/* Where an access or a lock runs. This thread runs the client loop and must never block: it
 * has to see that an operation can never complete. An eager mapper's access never blocks (a
 * fault there is an error at once): it runs here. A lazy mapper's blocks on the mapping
 * manager when it faults a page in. In single, this thread runs the mapper's loop, and the
 * library refuses that wait at once (MB_EDEADLK: it would wait for itself, membacking.h), so
 * it is tried here and goes to the worker only then; in spread it goes there at once. And
 * nothing overtakes accesses still queued on the worker. */
static bool try_here(const replay_world *w, const replay_entry *e) {
  return (w->layout == REPLAY_SINGLE || mb_mapper_eager(e->mapper)) && replay_worker_idle();
}

static void submit(replay_world *w, replay_op *op) {
  w->quiet = false; /* the worker posts its completion to the client loop */
  int rc = replay_worker_submit(op);
  if (rc) replay_op_done(op, rc, 0);
}

/* A refused attempt did nothing that the worker's does not do again: a lazy write that
 * stopped at a page to fault in is written again from its start, with the same bytes. */
static void start_mapper_access(replay_world *w, replay_op *op) {
  settle_first(w);
  replay_entry *e = use(w, op, REPLAY_NS_MAPPER, op->cmd->io.target);
  if (!e || !access_buffer(w, op, e)) return;
  int rc = MB_EDEADLK;
  uint64_t gpa = op->cmd->io.gpa;
  if (try_here(w, e))
    rc = op->cmd->kind == SCENARIO_READ ? mb_mapper_read(e->mapper, gpa, op->buf, op->len)
                                        : mb_mapper_write(e->mapper, gpa, op->buf, op->len);
  if (rc == MB_EDEADLK) submit(w, op);
  else replay_op_done(op, rc, 0);
}

static void start_guest_access(replay_world *w, replay_op *op) {
  replay_entry *e = use(w, op, REPLAY_NS_PARTITION, op->cmd->io.target);
  if (!e || !access_buffer(w, op, e)) return;
  bool write = op->cmd->kind == SCENARIO_GUEST_WRITE;
  mb_partition_access(e->partition, op->cmd->io.gpa, op->buf, op->len, write, replay_op_done, op);
}

/* ---- locks ------------------------------------------------------------------------------------- */

/* A lock taken: its name holds it (and its mapper's entry) until unlock. */
static void apply_lock(replay_op *op) {
  mb_lock *lock = (mb_lock *)(uintptr_t)op->value;
  if (op->status != 0) return;
  replay_entry *e = replay_name_add(op->w, REPLAY_NS_LOCK, op->cmd->lock.name);
  if (!e) {
    mb_mapper_unlock(lock);
    op->status = MB_ENOMEM;
    return;
  }
  e->lock = lock;
  e->owner = replay_entry_ref(op->entry);
}

/* Taken where an access would run (a lazy mapper's lock faults the range in). */
static void start_lock(replay_world *w, replay_op *op) {
  settle_first(w);
  replay_entry *e = use(w, op, REPLAY_NS_MAPPER, op->cmd->lock.mapper);
  op->apply = apply_lock;
  if (!e) return;
  const scenario_lock *l = &op->cmd->lock;
  mb_lock *lock = NULL;
  int rc = try_here(w, e) ? mb_mapper_lock(e->mapper, l->gpa, l->size, !l->ro, &lock) : MB_EDEADLK;
  if (rc == MB_EDEADLK) submit(w, op);
  else replay_op_done(op, rc, (uintptr_t)lock);
}

static void apply_unlock(replay_op *op) {
  if (op->status == 0) replay_name_remove(op->w, REPLAY_NS_LOCK, op->entry);
}

/* Never blocks: runs here. A lock still being taken under that name (async) is waited for
 * first, so `async a lock ... as L` then `unlock L` releases what a took. */
static void start_unlock(replay_world *w, replay_op *op) {
  for (replay_op *o = w->ops; o; o = o->next)
    if (o != op && o->cmd->kind == SCENARIO_LOCK && !replay_op_is_done(o) &&
        strcmp(o->cmd->lock.name, op->cmd->lock.name) == 0)
      (void)replay_wait(w, o);
  replay_entry *e = use(w, op, REPLAY_NS_LOCK, op->cmd->lock.name);
  op->apply = apply_unlock;
  if (!e) return;
  mb_mapper_unlock(e->lock);
  e->lock = NULL;
  replay_op_done(op, 0, 0);
}

/* ---- state queries (the expect commands) ------------------------------------------------------- */

static void apply_ranges(replay_op *op) {
  if (op->status == 0) op->ranges = (mb_range_list *)(uintptr_t)op->value;
}

static void start_expect_region(replay_world *w, replay_op *op) {
  replay_entry *e = use(w, op, REPLAY_NS_REGION, op->cmd->expect_region.name);
  if (e) mb_region_state(w->mm, e->region, replay_op_done, op);
}

static void start_expect_partition(replay_world *w, replay_op *op) {
  replay_entry *e = use(w, op, REPLAY_NS_PARTITION, op->cmd->expect_ranges.name);
  op->apply = apply_ranges;
  if (e) mb_partition_ranges(e->partition, replay_op_done, op);
}

static void start_expect_mapper(replay_world *w, replay_op *op) {
  replay_entry *e = use(w, op, REPLAY_NS_MAPPER, op->cmd->expect_ranges.name);
  op->apply = apply_ranges;
  if (e) mb_mapper_ranges(e->mapper, replay_op_done, op);
}

/* ---- dispatch ---------------------------------------------------------------------------------- */

static const start_fn starters[SCENARIO_CMD_KIND_COUNT] = {
    [SCENARIO_OBJECT] = start_object,
    [SCENARIO_REGION_ADD] = start_region_add,
    [SCENARIO_REGION_MAP] = start_region_map,
    [SCENARIO_REGION_UNMAP] = start_region_unmap,
    [SCENARIO_REGION_REMOVE] = start_region_remove,
    [SCENARIO_MAPPING_ADD] = start_mapping_add,
    [SCENARIO_MAPPING_REMOVE] = start_mapping_remove,
    [SCENARIO_MAPPING_REPLACE] = start_mapping_add,
    [SCENARIO_MAPPER_ADD] = start_mapper_add,
    [SCENARIO_MAPPER_REMOVE] = start_mapper_remove,
    [SCENARIO_PARTITION_ADD] = start_partition_add,
    [SCENARIO_PARTITION_REMOVE] = start_partition_remove,
    [SCENARIO_READ] = start_mapper_access,
    [SCENARIO_WRITE] = start_mapper_access,
    [SCENARIO_GUEST_READ] = start_guest_access,
    [SCENARIO_GUEST_WRITE] = start_guest_access,
    [SCENARIO_LOCK] = start_lock,
    [SCENARIO_UNLOCK] = start_unlock,
    [SCENARIO_EXPECT_REGION] = start_expect_region,
    [SCENARIO_EXPECT_PARTITION] = start_expect_partition,
    [SCENARIO_EXPECT_MAPPER] = start_expect_mapper,
    [SCENARIO_TXN_BEGIN] = replay_txn_begin,
    [SCENARIO_TXN_COMMIT] = replay_txn_commit,
    [SCENARIO_DIRTY_START] = replay_dirty_start,
    [SCENARIO_DIRTY_SYNC] = replay_dirty_sync,
    [SCENARIO_DIRTY_STOP] = replay_dirty_stop,
    [SCENARIO_PROTECT] = replay_protect,
    [SCENARIO_EXPECT_PROTECTION] = replay_expect_protection,
};

static replay_op *op_new(replay_world *w, const scenario_cmd *cmd) {
  replay_op *op = calloc(1, sizeof *op);
  if (!op) return NULL;
  op->w = w;
  op->cmd = cmd;
  atomic_init(&op->done, false);
  op->next = w->ops;
  w->ops = op;
  return op;
}

replay_op *replay_op_start(replay_world *w, const scenario_cmd *cmd) {
  replay_op *op = op_new(w, cmd);
  if (!op) return NULL;
  if (cmd->kind != SCENARIO_READ && cmd->kind != SCENARIO_WRITE) w->quiet = false;
  start_fn start = (unsigned)cmd->kind < SCENARIO_CMD_KIND_COUNT ? starters[cmd->kind] : NULL;
  if (start) start(w, op);
  else replay_op_done(op, MB_EINVAL, 0); /* not an operation: a bug of the executor */
  return op;
}

replay_op *replay_op_answer(replay_world *w, const scenario_cmd *cmd, int status) {
  replay_op *op = op_new(w, cmd);
  if (op) replay_op_done(op, status, 0);
  return op;
}
