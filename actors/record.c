/* record.c: writes what a manager's users do as a scenario (spec/scenario.md, "Recording"):
 * each region, mapping, mapper and partition operation with the result it got, then at the
 * manager's destruction `expect region` and `expect partition` lines for what is left. The
 * recording replays with membacking-replay.
 *
 * Names: a region keeps its user's name when that is a valid scenario NAME not used by another
 * live region, else it becomes region<ID> (with a suffix while that is taken); a region add
 * that failed names no live region either (a failed definition defines nothing, but defining a
 * live name is an error of the script); objects, mappers and partitions get o<N>, m<N>, p<N>.
 * Backing objects are recorded as `object memfd` of their size (their contents are not).
 * Arguments are written as the user passed them (an unaligned one replays as error:invalid);
 * what the host refused (MB_ENOMEM, a negative errno) is error:resource. A result outside the
 * format's codes (the runtime's own) is written as a comment, and so is a want of memory of the
 * recording's own (a name it could not keep: the lines after it may not replay).
 *
 * Transactions: a commit that fails returns the manager to the state of its begin, and the
 * region names with it (the names live at the begin are kept until the commit).
 *
 * Dirty-page tracking: `dirty start`, `dirty stop` with their results; a `dirty sync` that
 * succeeded without `=>` (guest and mapper writes are not recorded, so a replay cannot promise
 * the same pages) and with the pages it answered in a comment, read from the caller's bitmap or
 * list (both still the caller's when the reply is recorded: before its callback runs, or before
 * the blocking call returns); one that failed with its error.
 *
 * Virtual trust levels: `config vtls=` and `config vtl0_alias=` when they are not the default,
 * `vtl=N` on region, mapper and partition adds at a VTL other than 0, each `protect` with its
 * result, and at the end an `expect protection` line for every VTL that can be protected. A
 * VTL or an access the format cannot say (a VTL above 2, an access that is no MB_PROT_*) makes
 * the line a comment. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"
#include "fault_inject.h"     /* MB_FI_ALLOC: tests fail these allocations */
#include "record.h"

typedef struct rec_key {
  const void *key;     /* an mb_object *, mb_mapper * or mb_partition * */
  mb_object *obj_ref;  /* objects stay alive while recorded: their address is their name */
  char name[16];
  bool live;
} rec_key;

typedef struct rec_region {
  char name[64];
  bool live;
} rec_region;

struct mb__rec {
  FILE *f;
  pthread_mutex_t lock;
  rec_region *regions; /* indexed by region id */
  size_t nregions;
  rec_key *keys;
  size_t nkeys, cap;
  unsigned objects, mappers, partitions;
  bool nomem; /* said so in the recording */
  bool in_txn;             /* a transaction is open, and its begin's names are kept */
  rec_region *txn_regions; /* the regions at the transaction's begin */
  size_t txn_nregions;
  uint8_t vtls;            /* the manager's VTLs (bit mask) */
};

/* Names that could not be kept make the rest of the recording unreliable: it says so, once. */
static void rec_nomem(mb__rec *r) {
  if (!r->nomem)
    fputs("# membacking: out of memory while recording: what follows may not replay\n", r->f);
  r->nomem = true;
}

static const char *const state_names[] = {"unmapped", "hidden", "active", "partial"};

/* ---- names ---------------------------------------------------------------------------------- */

static bool valid_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 63 || !((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
    return false;
  for (size_t i = 1; i < n; i++)
    if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", s[i])) return false;
  return true;
}

static bool name_live(const mb__rec *r, const char *name) {
  for (size_t i = 0; i < r->nregions; i++)
    if (r->regions[i].live && !strcmp(r->regions[i].name, name)) return true;
  return false;
}

static const char *region_name(mb__rec *r, uint32_t id, char *buf, size_t len) {
  if (id < r->nregions && r->regions[id].live) return r->regions[id].name;
  snprintf(buf, len, "region%" PRIu32, id); /* unknown: replays as error:notfound */
  return buf;
}

/* The user's name when it is a valid NAME no live region has, else `fallback`, suffixed .1,
 * .2, ... while a live region has that. */
static void region_pick_name(const mb__rec *r, const char *want, const char *fallback,
                             char out[64]) {
  if (valid_name(want) && !name_live(r, want)) {
    snprintf(out, 64, "%s", want);
    return;
  }
  snprintf(out, 64, "%s", fallback);
  for (unsigned n = 1; name_live(r, out); n++) snprintf(out, 64, "%s.%u", fallback, n);
}

static bool region_register(mb__rec *r, uint32_t id, const char *want) {
  if (id >= r->nregions) {
    size_t n = id + 1 > 2 * r->nregions ? id + 1 : 2 * r->nregions;
    rec_region *p = mb__realloc(r->regions, n * sizeof *p);
    if (!p) {
      rec_nomem(r);
      return false;
    }
    memset(p + r->nregions, 0, (n - r->nregions) * sizeof *p);
    r->regions = p;
    r->nregions = n;
  }
  rec_region *g = &r->regions[id];
  char fallback[32];
  snprintf(fallback, sizeof fallback, "region%" PRIu32, id);
  region_pick_name(r, want, fallback, g->name);
  g->live = true;
  return true;
}

static rec_key *key_find(mb__rec *r, const void *key) {
  for (size_t i = 0; i < r->nkeys; i++)
    if (r->keys[i].key == key && r->keys[i].live) return &r->keys[i];
  return NULL;
}

static rec_key *key_add(mb__rec *r, const void *key, char prefix, unsigned n) {
  if (r->nkeys == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 16;
    rec_key *p = mb__realloc(r->keys, cap * sizeof *p);
    if (!p) {
      rec_nomem(r);
      return NULL;
    }
    r->keys = p;
    r->cap = cap;
  }
  rec_key *k = &r->keys[r->nkeys++];
  *k = (rec_key){key, NULL, "", true};
  snprintf(k->name, sizeof k->name, "%c%u", prefix, n);
  return k;
}

/* ---- lines ---------------------------------------------------------------------------------- */

/* The format's code of a status: the library's own, or `resource` for what the host refused
 * (the runtime's MB_ENOMEM, a negative errno); NULL for the runtime's other codes. */
static const char *result_token(int status) { return mb_result_token(status); }

/* Ends a command line with its result; a comment when the format cannot say it. */
static void put_result(mb__rec *r, int status) {
  const char *tok = result_token(status);
  if (status == 0) fputs(" => ok\n", r->f);
  else if (tok) fprintf(r->f, " => error:%s\n", tok);
  else fprintf(r->f, " # not replayable: %s\n", membacking_strerror(status));
}

static const char *object_name(mb__rec *r, mb_object *obj) {
  rec_key *k = key_find(r, obj);
  if (k) return k->name;
  if (!(k = key_add(r, obj, 'o', ++r->objects))) return "o0";
  k->obj_ref = mb_object_ref(obj);
  fprintf(r->f, "object memfd %s 0x%" PRIx64 "\n", k->name, mb_object_size(obj));
  return k->name;
}

/* A VTL the format cannot say (above 2: the API answered invalid) makes its line a comment. */
static void put_vtl_head(mb__rec *r, uint8_t vtl) {
  if (vtl > MB_VTL_MAX) fprintf(r->f, "# not replayable (VTL %u): ", (unsigned)vtl);
}

/* " vtl=N" of an add, unless it is VTL 0 (the default). */
static void put_vtl(mb__rec *r, uint8_t vtl) {
  if (vtl != 0) fprintf(r->f, " vtl=%u", (unsigned)vtl);
}

static void rec_region_add(mb__rec *r, rm_region_add_msg *m, int status) {
  char buf[64];
  const char *name = buf;
  if (status == 0 && region_register(r, m->id, m->name)) name = r->regions[m->id].name;
  else region_pick_name(r, m->name, "region_failed", buf);
  put_vtl_head(r, m->vtl);
  fprintf(r->f, "region add %s 0x%" PRIx64 " 0x%" PRIx64 " prio=%u type=%s", name, m->gpa, m->size,
          m->prio, m->device ? "device" : "ram");
  put_vtl(r, m->vtl);
  put_result(r, status);
}

/* ---- protections ----------------------------------------------------------------------------- */

static const char *const prot_names[] = {[MB_PROT_NONE] = "none", [MB_PROT_RO] = "ro",
                                         [MB_PROT_RW] = "rw"};

static void rec_protect(mb__rec *r, const rm_protect_msg *m, int status) {
  bool sayable = m->access <= MB_PROT_RW;
  put_vtl_head(r, m->vtl);
  if (!sayable) fprintf(r->f, "# not replayable (access %u): ", (unsigned)m->access);
  fprintf(r->f, "protect %u 0x%" PRIx64 " 0x%" PRIx64 " %s", (unsigned)m->vtl, m->gpa, m->size,
          sayable ? prot_names[m->access] : "?");
  put_result(r, status);
}

/* Can VTL vtl be protected: configured, with a higher VTL configured? */
static bool protectable(uint8_t vtls, unsigned vtl) {
  return (vtls >> vtl & 1) && (vtls >> (vtl + 1)) != 0;
}

static void rec_mapping(mb__rec *r, const char *verb, rm_mapping_add_msg *m, int status) {
  char buf[32];
  const char *obj = m->obj ? object_name(r, m->obj) : "none";
  fprintf(r->f, "mapping %s %s 0x%" PRIx64 " 0x%" PRIx64 " %s 0x%" PRIx64 " %s", verb,
          region_name(r, m->id, buf, sizeof buf), m->offset, m->size, obj, m->obj_off,
          m->writable ? "rw" : "ro");
  put_result(r, status);
}

/* ---- transactions ----------------------------------------------------------------------------- */

/* Out of memory, the names are not kept: a commit that fails then leaves them as they are. */
static void txn_begin(mb__rec *r) {
  free(r->txn_regions);
  r->txn_regions = r->nregions ? mb__malloc(r->nregions * sizeof *r->regions) : NULL;
  r->txn_nregions = r->txn_regions ? r->nregions : 0;
  if (r->txn_regions) memcpy(r->txn_regions, r->regions, r->nregions * sizeof *r->regions);
  else if (r->nregions) rec_nomem(r);
  r->in_txn = r->txn_regions || !r->nregions;
}

/* A commit (or a commit refused outside a transaction: nothing to do). */
static void txn_end(mb__rec *r, bool failed) {
  if (r->in_txn && failed) {
    for (size_t id = 0; id < r->nregions; id++)
      if (id < r->txn_nregions) r->regions[id] = r->txn_regions[id];
      else r->regions[id].live = false; /* added inside: gone again */
  }
  free(r->txn_regions);
  r->txn_regions = NULL;
  r->txn_nregions = 0;
  r->in_txn = false;
}

static void rec_simple(mb__rec *r, const char *what, uint32_t id, const char *tail, int status) {
  char buf[32];
  fprintf(r->f, "region %s %s%s", what, region_name(r, id, buf, sizeof buf), tail);
  put_result(r, status);
}

/* ---- dirty-page tracking -------------------------------------------------------------------- */

enum { PAGE_SHIFT = 12, PAGES_SHOWN = 32 }; /* a sync's comment shows its first runs only */

/* One run of dirty pages of a sync's comment; *n counts the runs. */
static void put_pages_run(mb__rec *r, unsigned *n, uint64_t gpa, uint64_t size) {
  if (*n < PAGES_SHOWN) fprintf(r->f, " 0x%" PRIx64 "+0x%" PRIx64, gpa, size);
  else if (*n == PAGES_SHOWN) fputs(" ...", r->f);
  ++*n;
}

/* The runs of set bits of a sync's bitmap: bit i is page gpa + i * 4 KiB. */
static void put_bitmap_runs(mb__rec *r, const rm_dirty_sync_msg *m, unsigned *n) {
  uint64_t pages = m->size >> PAGE_SHIFT, start = 0;
  bool in_run = false;
  for (uint64_t i = 0; i <= pages; i++) {
    bool set = i < pages && (m->bits[i / 64] >> (i % 64) & 1);
    if (set && !in_run) start = i;
    if (!set && in_run)
      put_pages_run(r, n, m->gpa + (start << PAGE_SHIFT), (i - start) << PAGE_SHIFT);
    in_run = set;
    if (!set && i + 64 <= pages && i % 64 == 0 && m->bits[i / 64] == 0) i += 63; /* empty word */
  }
}

static void rec_dirty_sync(mb__rec *r, const rm_dirty_sync_msg *m, int status) {
  fprintf(r->f, "dirty sync 0x%" PRIx64 " 0x%" PRIx64, m->gpa, m->size);
  if (status != 0) {
    put_result(r, status);
    return;
  }
  const mb_range_list *l = m->list;
  unsigned n = 0;
  fprintf(r->f, " # answered %" PRIu64 " pages:", m->pages);
  if (m->bits) put_bitmap_runs(r, m, &n);
  for (size_t i = 0; !m->bits && l && i < l->count; i++)
    put_pages_run(r, &n, l->ranges[i].gpa, l->ranges[i].size);
  fputs(n ? "\n" : " none\n", r->f);
}

static void rec_dirty(mb__rec *r, mb_msg *msg, int status) {
  if (msg->kind == RM_DIRTY_SYNC) {
    rec_dirty_sync(r, rm_dirty_sync_of(msg), status);
    return;
  }
  fputs(msg->kind == RM_DIRTY_START ? "dirty start" : "dirty stop", r->f);
  put_result(r, status);
}

static void rec_locked(mb__rec *r, mb_msg *msg, int status) {
  char buf[32];
  switch (msg->kind) {
  case RM_REGION_ADD: rec_region_add(r, rm_region_add_of(msg), status); break;
  case RM_REGION_MAP:
    rec_simple(r, "map", rm_region_map_of(msg)->id, rm_region_map_of(msg)->writable ? " rw" : " ro",
               status);
    break;
  case RM_REGION_UNMAP: rec_simple(r, "unmap", rm_region_unmap_of(msg)->id, "", status); break;
  case RM_REGION_REMOVE: {
    uint32_t id = rm_region_remove_of(msg)->id;
    rec_simple(r, "remove", id, "", status);
    if (status == 0 && id < r->nregions) r->regions[id].live = false;
    break;
  }
  case RM_MAPPING_ADD: rec_mapping(r, "add", rm_mapping_add_of(msg), status); break;
  case RM_MAPPING_REPLACE:
    rec_mapping(r, "replace", (rm_mapping_add_msg *)(void *)rm_mapping_replace_of(msg), status);
    break;
  case RM_MAPPING_REMOVE: {
    rm_mapping_remove_msg *m = rm_mapping_remove_of(msg);
    fprintf(r->f, "mapping remove %s 0x%" PRIx64 " 0x%" PRIx64,
            region_name(r, m->id, buf, sizeof buf), m->offset, m->size);
    put_result(r, status);
    break;
  }
  case RM_TXN_BEGIN:
    fputs("txn begin", r->f);
    put_result(r, status);
    if (status == 0) txn_begin(r);
    break;
  case RM_TXN_COMMIT:
    fputs("txn commit", r->f);
    put_result(r, status);
    txn_end(r, status != 0);
    break;
  case RM_DIRTY_START:
  case RM_DIRTY_SYNC:
  case RM_DIRTY_STOP: rec_dirty(r, msg, status); break;
  case RM_PROTECT: rec_protect(r, rm_protect_of(msg), status); break;
  default: break; /* queries and partitions are recorded elsewhere or not at all */
  }
}

void mb__rec_request(mb__rec *r, mb_msg *msg, int status) {
  if (!r || msg->proto != &rm_protocol) return;
  pthread_mutex_lock(&r->lock);
  rec_locked(r, msg, status);
  fflush(r->f);
  pthread_mutex_unlock(&r->lock);
}

/* mapper/partition add or remove: kind is "mapper" or "partition"; vtl: an add's VTL. */
static void rec_consumer(mb__rec *r, const char *kind, bool add, const void *key,
                         const char *how, uint8_t vtl, int status) {
  bool mapper = kind[0] == 'm';
  pthread_mutex_lock(&r->lock);
  if (add) {
    rec_key *k = status ? NULL : key_add(r, key, mapper ? 'm' : 'p',
                                         mapper ? ++r->mappers : ++r->partitions);
    put_vtl_head(r, vtl);
    fprintf(r->f, "%s add %s %s", kind, k ? k->name : mapper ? "m_failed" : "p_failed", how);
    put_vtl(r, vtl);
    put_result(r, status);
  } else {
    rec_key *k = key_find(r, key);
    if (k) {
      fprintf(r->f, "%s remove %s", kind, k->name);
      put_result(r, status);
      k->live = status != 0;
    }
  }
  fflush(r->f);
  pthread_mutex_unlock(&r->lock);
}

/* The VTL of an add that succeeded is the consumer's own; one that failed is not known here
 * (a VTL the manager does not have fails before anything is recorded). */
void mb__rec_mapper(mb__rec *r, bool add, const mb_mapper *m, bool eager, int status) {
  if (r) rec_consumer(r, "mapper", add, m, eager ? "eager" : "lazy", m ? m->vtl : 0, status);
}

/* A VMM's own VM (kvm_attach) replays as a kvm partition: the scenario's VM stands in. */
void mb__rec_partition(mb__rec *r, bool add, const mb_partition *p, const char *backend,
                       int status) {
  if (backend && strncmp(backend, "kvm", 3) == 0) backend = "kvm";
  if (r) rec_consumer(r, "partition", add, p, backend, p ? p->vtl : 0, status);
}

/* ---- opening and closing -------------------------------------------------------------------- */

/* config vtls= (ascending) and vtl0_alias=, when not the default. */
static void put_vtl_config(mb__rec *r, uint8_t vtls, uint64_t alias) {
  r->vtls = vtls;
  if (vtls != 1) {
    fputs("config vtls=0", r->f);
    for (unsigned v = 1; v <= MB_VTL_MAX; v++)
      if (vtls >> v & 1) fprintf(r->f, ",%u", v);
    fputc('\n', r->f);
  }
  if (alias) fprintf(r->f, "config vtl0_alias=0x%" PRIx64 "\n", alias);
}

mb__rec *mb__rec_open(const char *path, const mb_mm *mm, int overlap, int *err) {
  mb__rec *r = mb__calloc(1, sizeof *r);
  if (r && !(r->f = fopen(path, "w"))) {
    free(r);
    *err = MB_E_INVALID;
    return NULL;
  }
  if (!r) {
    *err = MB_ENOMEM;
    return NULL;
  }
  pthread_mutex_init(&r->lock, NULL);
  fprintf(r->f, "# recorded by membacking\nconfig max_addr=0x%" PRIx64 "\nconfig overlap=%s\n",
          mb_mm_max_addr(mm), overlap == MB_OVERLAP_ANY ? "any" : "nested");
  put_vtl_config(r, mm->vtls ? mm->vtls : 1, mm->alias);
  fflush(r->f);
  return r;
}

bool mb__rec_env_path(char *buf, size_t len) {
  static _Atomic unsigned managers;
  const char *p = getenv("MEMBACKING_RECORD");
  if (!p || !*p) return false;
  unsigned n = atomic_fetch_add(&managers, 1);
  if (n) snprintf(buf, len, "%s.%u", p, n);
  else snprintf(buf, len, "%s", p);
  return true;
}

typedef struct close_ctx {
  mb__rec *r;
  mb_mm *mm;
  mb_partition *p;
  const char *name;
} close_ctx;

/* One `expect protection` line: VTL vtl's protections as the manager holds them. */
static void expect_protection(close_ctx *c, uint8_t vtl) {
  mb_prot_list *l = NULL;
  int rc = mb__region_manager_protections(c->mm->rm, vtl, &l);
  if (rc) {
    fprintf(c->r->f, "# expect protection %u: not recorded: %s\n", (unsigned)vtl,
            membacking_strerror(rc));
    return;
  }
  fprintf(c->r->f, "expect protection %u", (unsigned)vtl);
  if (!l->count) fputs(" none", c->r->f);
  for (size_t i = 0; i < l->count; i++)
    fprintf(c->r->f, " 0x%" PRIx64 "+0x%" PRIx64 ":%s", l->items[i].gpa, l->items[i].size,
            l->items[i].access == MB_PROT_NONE ? "none" : "ro");
  fputc('\n', c->r->f);
  free(l);
}

/* On the region manager's loop: its regions' states and its protections. */
static void expect_regions(mb_loop *loop, void *arg) {
  (void)loop;
  close_ctx *c = arg;
  pthread_mutex_lock(&c->r->lock);
  if (!c->mm->rm) fputs("# expect region: not recorded: the manager was unusable\n", c->r->f);
  for (size_t id = 0; c->mm->rm && id < c->r->nregions; id++) {
    if (!c->r->regions[id].live) continue;
    int st = mb__region_manager_state(c->mm->rm, (uint32_t)id);
    if (st >= 0 && st < 4)
      fprintf(c->r->f, "expect region %s %s\n", c->r->regions[id].name, state_names[st]);
  }
  for (uint8_t vtl = 0; c->mm->rm && vtl < MB_VTL_MAX; vtl++)
    if (protectable(c->r->vtls, vtl)) expect_protection(c, vtl);
  pthread_mutex_unlock(&c->r->lock);
}

static void expect_partition(mb_loop *loop, void *arg) {
  (void)loop;
  close_ctx *c = arg;
  mb_part_range *ranges = NULL;
  uint32_t n = 0;
  int rc = mb__partition_mapper_ranges(c->p->actor, &ranges, &n);
  pthread_mutex_lock(&c->r->lock);
  if (rc) {
    fprintf(c->r->f, "# expect partition %s: not recorded: %s\n", c->name, membacking_strerror(rc));
    pthread_mutex_unlock(&c->r->lock);
    return;
  }
  fprintf(c->r->f, "expect partition %s", c->name);
  if (!n) fputs(" none", c->r->f);
  for (uint32_t i = 0; i < n; i++)
    fprintf(c->r->f, " 0x%" PRIx64 "+0x%" PRIx64 ":%s", ranges[i].gpa, ranges[i].size,
            ranges[i].writable ? "rw" : "ro");
  fputc('\n', c->r->f);
  pthread_mutex_unlock(&c->r->lock);
  free(ranges);
}

void mb__rec_close(mb__rec *r, mb_mm *mm) {
  if (!r) return;
  close_ctx c = {r, mm, NULL, NULL};
  mb__exec_must(mm->loop, expect_regions, &c);
  for (mb_partition *p = mm->partitions; p; p = p->next) {
    rec_key *k = key_find(r, p);
    if (!k) continue;
    c.p = p;
    c.name = k->name;
    mb__exec_must(p->loop, expect_partition, &c);
  }
  fclose(r->f);
  for (size_t i = 0; i < r->nkeys; i++)
    if (r->keys[i].obj_ref) mb_object_unref(r->keys[i].obj_ref);
  pthread_mutex_destroy(&r->lock);
  free(r->txn_regions);
  free(r->keys);
  free(r->regions);
  free(r);
}
