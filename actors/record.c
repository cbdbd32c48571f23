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
 * the line a comment.
 *
 * Locks: each `lock` with its result, a lock that
 * succeeded named L<N> (a handle maps to its name until its unlock), one refused named
 * L_failed (never live: a failed definition defines nothing); each `unlock` written before the
 * lock is released, so that an operation that waited for it is written after it. An unlock of
 * a handle that is no longer held is `unlock L<N> => error:notfound` (what the format says of
 * a name that is not live), or nothing when the recording never knew the handle. A lock
 * through a mapper the recording cannot name (the partitions' primary mapper) is not recorded.
 *
 * Requests in flight across a lock: a region-manager request is written when its reply comes,
 * which keeps the manager's order; but one that took effect and then waited (for a lock, or
 * behind one that waits) while a lock or an unlock happened would replay in the wrong order as
 * a line of its own (a lock judged against the new state would replay against the old one; an
 * operation waiting for a lock taken meanwhile would never complete). So every request is
 * noted when it is issued (mb__rec_issue), lines are kept in memory while any request is in
 * flight, and a request that a `lock` or `unlock` line crossed is written as `async aN CMD` at
 * the place of its issue and `await aN => RESULT` at its reply. The place of the issue stands
 * for the moment it took effect: a lock that ran after the issue but before the request took
 * effect (queued behind a slow one) replays against the new state; such a race has no single
 * order to record. Requests inside a transaction never wait and a commit cannot be `async`:
 * they stay lines of their own (an unlock inside a transaction is allowed, so a commit that
 * waited for it replays). */
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

/* A request issued and not yet answered: where its issue falls among the kept lines. */
typedef struct rec_flight {
  const mb_msg *msg;
  size_t pos;   /* offset in the kept lines */
  size_t cross_pos; /* where the first lock or unlock line after its issue went */
  bool crossed;     /* a lock or unlock line was written since its issue */
  bool unlocked;    /* an unlock line was, too: it likely waited for a lock */
  bool txn;         /* issued inside a transaction */
} rec_flight;

/* Text to put into the kept lines at pos when they are written out. */
typedef struct rec_insert {
  size_t pos;
  char *text;
} rec_insert;

typedef struct rec_lock {
  uintptr_t h;  /* the lock's handle */
  unsigned n;   /* its name is L<n> */
  bool live;    /* else unlocked: kept (until the slot is reused) for a second unlock */
} rec_lock;

struct mb__rec {
  FILE *f;               /* where lines go: `out`, or `kept` while a request is in flight */
  FILE *out;             /* the recording */
  FILE *kept;            /* lines kept in memory (kept_text, kept_len) */
  char *kept_text;
  size_t kept_len;
  rec_flight *flights;
  size_t nflights, flights_cap;
  rec_insert *inserts;
  size_t ninserts, inserts_cap;
  unsigned labels;       /* async labels a<N> */
  bool deferring;        /* put_result keeps the result in `deferred` instead */
  bool has_deferred;
  int deferred;
  rec_lock *locks;
  size_t nlocks, locks_cap;
  unsigned lock_names;
  struct mb__rec *next_open; /* on the list of open recordings (locks find theirs there) */
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
  if (r->deferring) { /* an async line: its result goes on its await */
    r->has_deferred = true;
    r->deferred = status;
    return;
  }
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

/* ---- requests in flight --------------------------------------------------------------------- */

/* Grows *arr (of *cap elements of `size`) to hold n + 1; false (said once) without memory. */
static bool grow_for(mb__rec *r, void **arr, size_t *cap, size_t n, size_t size) {
  if (n < *cap) return true;
  size_t c = *cap ? *cap * 2 : 8;
  void *p = mb__realloc(*arr, c * size);
  if (!p) {
    rec_nomem(r);
    return false;
  }
  *arr = p;
  *cap = c;
  return true;
}

/* The kept lines' length so far (fflush updates it). */
static size_t kept_pos(mb__rec *r) {
  fflush(r->kept);
  return r->kept_len;
}

/* Writes the kept lines out, each insertion at its place (in the order they were made where
 * places are equal: requests answer in the order they were issued), and stops keeping. */
static void kept_flush(mb__rec *r) {
  if (!r->kept) return;
  size_t len = kept_pos(r), at = 0;
  for (size_t i = 1; i < r->ninserts; i++) /* stable: few, nearly sorted */
    for (size_t j = i; j > 0 && r->inserts[j - 1].pos > r->inserts[j].pos; j--) {
      rec_insert t = r->inserts[j];
      r->inserts[j] = r->inserts[j - 1];
      r->inserts[j - 1] = t;
    }
  for (size_t i = 0; i < r->ninserts; i++) {
    fwrite(r->kept_text + at, 1, r->inserts[i].pos - at, r->out);
    fputs(r->inserts[i].text, r->out);
    at = r->inserts[i].pos;
    free(r->inserts[i].text);
  }
  fwrite(r->kept_text + at, 1, len - at, r->out);
  r->ninserts = 0;
  fclose(r->kept);
  free(r->kept_text);
  r->kept = NULL;
  r->kept_text = NULL;
  r->kept_len = 0;
  r->f = r->out;
}

void mb__rec_issue(mb__rec *r, const mb_msg *msg) {
  if (!r || !msg || msg->proto != &rm_protocol) return;
  pthread_mutex_lock(&r->lock);
  if (!r->kept) {
    fflush(r->out);
    r->kept = open_memstream(&r->kept_text, &r->kept_len);
    if (r->kept) r->f = r->kept;
    else rec_nomem(r); /* written as lines of their own: a crossed one may not replay */
  }
  if (r->kept && grow_for(r, (void **)&r->flights, &r->flights_cap, r->nflights,
                          sizeof *r->flights))
    r->flights[r->nflights++] = (rec_flight){msg, kept_pos(r), 0, false, false, r->in_txn};
  pthread_mutex_unlock(&r->lock);
}

/* A lock or unlock line is about to be written: every request in flight crosses it. */
static void flights_cross(mb__rec *r, bool unlock) {
  for (size_t i = 0; i < r->nflights; i++) {
    rec_flight *fl = &r->flights[i];
    if (!fl->crossed) fl->cross_pos = kept_pos(r);
    fl->crossed = true;
    fl->unlocked |= unlock;
  }
}

/* Text at pos when the kept lines are written out (false, said once, without memory). */
static bool insert_at(mb__rec *r, size_t pos, char *text) {
  if (!text || !grow_for(r, (void **)&r->inserts, &r->inserts_cap, r->ninserts,
                         sizeof *r->inserts)) {
    free(text);
    if (!text) rec_nomem(r);
    return false;
  }
  r->inserts[r->ninserts++] = (rec_insert){pos, text};
  return true;
}

/* The request in flight that msg answers, taken off the list (false: none). */
static bool flight_take(mb__rec *r, const mb_msg *msg, rec_flight *out) {
  for (size_t i = 0; i < r->nflights; i++)
    if (r->flights[i].msg == msg) {
      *out = r->flights[i];
      r->flights[i] = r->flights[--r->nflights];
      return true;
    }
  return false;
}

/* The start of the last line of text (len > 0; a line written without its result ends without
 * its newline). */
static size_t last_line(const char *text, size_t len) {
  size_t i = len - 1;
  while (i > 0 && text[i - 1] != '\n') i--;
  return i;
}

/* `async aN CMD` at its issue (after any object lines CMD needed), `await aN => RESULT` here.
 * One that an unlock crossed likely waited for a lock (nothing else ends a wait): `expect
 * pending aN` before the first line it crossed, so that a replay, in either layout, lets it
 * take effect before that line runs, as it had. */
static void rec_async(mb__rec *r, mb_msg *msg, int status, const rec_flight *fl) {
  char *text = NULL;
  size_t len = 0;
  FILE *line = open_memstream(&text, &len), *f = r->f;
  bool room = line != NULL;
  if (room) {
    r->f = line;
    r->deferring = true;
    r->has_deferred = false;
  }
  rec_locked(r, msg, status); /* into `line`, or here as a line of its own */
  r->f = f;
  r->deferring = false;
  if (line) fclose(line);
  if (!room || len == 0 || text[last_line(text, len)] == '#') { /* nothing to make async */
    if (text) fputs(text, r->f);
    if (room && r->has_deferred) put_result(r, r->deferred);
    free(text);
    return;
  }
  unsigned n = ++r->labels;
  size_t last = last_line(text, len);
  char *ins = mb__malloc(len + 32), *pend = fl->unlocked ? mb__malloc(32) : NULL;
  if (ins)
    snprintf(ins, len + 32, "%.*sasync a%u %s%s", (int)last, text, n, text + last,
             r->has_deferred ? "\n" : "");
  if (pend) snprintf(pend, 32, "expect pending a%u\n", n);
  free(text);
  if (!insert_at(r, fl->pos, ins)) {
    free(pend);
    return;
  }
  if (fl->unlocked) insert_at(r, fl->cross_pos, pend);
  fprintf(r->f, "await a%u", n);
  if (r->has_deferred) put_result(r, r->deferred);
  else fputc('\n', r->f);
}

void mb__rec_request(mb__rec *r, mb_msg *msg, int status) {
  if (!r || msg->proto != &rm_protocol) return;
  pthread_mutex_lock(&r->lock);
  rec_flight fl;
  bool flying = flight_take(r, msg, &fl);
  bool txn_msg = msg->kind == RM_TXN_BEGIN || msg->kind == RM_TXN_COMMIT;
  if (flying && fl.crossed && !fl.txn && !txn_msg) rec_async(r, msg, status, &fl);
  else rec_locked(r, msg, status);
  if (!r->nflights) kept_flush(r);
  fflush(r->f);
  pthread_mutex_unlock(&r->lock);
}

/* ---- locks ---------------------------------------------------------------------------------- */

/* The open recordings: a lock or an unlock finds the one that names its mapper or handle. */
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static mb__rec *open_recs;
static _Atomic unsigned open_count; /* nothing to look for while no recording is open */

static void open_link(mb__rec *r) {
  pthread_mutex_lock(&open_lock);
  r->next_open = open_recs;
  open_recs = r;
  atomic_fetch_add(&open_count, 1);
  pthread_mutex_unlock(&open_lock);
}

static void open_unlink(mb__rec *r) {
  pthread_mutex_lock(&open_lock);
  for (mb__rec **p = &open_recs; *p; p = &(*p)->next_open)
    if (*p == r) {
      *p = r->next_open;
      atomic_fetch_sub(&open_count, 1);
      break;
    }
  pthread_mutex_unlock(&open_lock);
}

/* A live lock's entry for h, or (live false) the newest one unlocked, or NULL. */
static rec_lock *lock_find(mb__rec *r, uintptr_t h, bool live) {
  rec_lock *best = NULL;
  for (size_t i = 0; i < r->nlocks; i++)
    if (r->locks[i].h == h && r->locks[i].live == live && (!best || r->locks[i].n > best->n))
      best = &r->locks[i];
  return best;
}

/* A name for a new lock: an unlocked entry's slot is reused. NULL without memory. */
static rec_lock *lock_add(mb__rec *r, uintptr_t h) {
  rec_lock *l = NULL;
  for (size_t i = 0; i < r->nlocks && !l; i++)
    if (!r->locks[i].live) l = &r->locks[i];
  if (!l && grow_for(r, (void **)&r->locks, &r->locks_cap, r->nlocks, sizeof *r->locks))
    l = &r->locks[r->nlocks++];
  if (l) *l = (rec_lock){h, ++r->lock_names, true};
  return l;
}

/* A lock refused with a code of the runtime's own (MB_EDEADLK: a blocking lock on its
 * mapper's own loop) changed nothing and says nothing of the state: a comment. */
static void rec_lock_line(mb__rec *r, const char *mapper, uint64_t gpa, uint64_t size,
                          bool writable, uintptr_t h, int status) {
  bool sayable = status == 0 || result_token(status);
  rec_lock *l = status == 0 ? lock_add(r, h) : NULL;
  char name[16] = "L_failed";
  if (l) snprintf(name, sizeof name, "L%u", l->n);
  if (sayable) flights_cross(r, false);
  else fputs("# refused, not recorded: ", r->f);
  fprintf(r->f, "lock %s 0x%" PRIx64 " 0x%" PRIx64 " %s as %s", mapper, gpa, size,
          writable ? "rw" : "ro", name);
  if (sayable) put_result(r, status);
  else fprintf(r->f, " (%s)\n", membacking_strerror(status));
  fflush(r->f);
}

void mb__rec_lock(const mb_mapper *m, uint64_t gpa, uint64_t size, bool writable, uintptr_t h,
                  int status) {
  if (!atomic_load(&open_count)) return;
  pthread_mutex_lock(&open_lock);
  for (mb__rec *r = open_recs; r; r = r->next_open) {
    pthread_mutex_lock(&r->lock);
    rec_key *k = key_find(r, m);
    if (k && k->name[0] == 'm') rec_lock_line(r, k->name, gpa, size, writable, h, status);
    pthread_mutex_unlock(&r->lock);
    if (k) break;
  }
  pthread_mutex_unlock(&open_lock);
}

/* status 0: the handle was just killed and its lock is not yet released. */
static bool rec_unlock_line(mb__rec *r, uintptr_t h, int status) {
  rec_lock *l = lock_find(r, h, status == 0);
  if (!l) return false;
  flights_cross(r, status == 0);
  fprintf(r->f, "unlock L%u", l->n);
  if (status == 0) {
    fputc('\n', r->f);
    l->live = false;
  } else {
    fputs(" => error:notfound\n", r->f); /* the format's word for a name not live */
  }
  fflush(r->f);
  return true;
}

void mb__rec_unlock(uintptr_t h, int status) {
  if (!atomic_load(&open_count)) return;
  pthread_mutex_lock(&open_lock);
  bool done = false;
  for (mb__rec *r = open_recs; r && !done; r = r->next_open) {
    pthread_mutex_lock(&r->lock);
    done = rec_unlock_line(r, h, status);
    pthread_mutex_unlock(&r->lock);
  }
  pthread_mutex_unlock(&open_lock);
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
  if (r && !(r->out = r->f = fopen(path, "w"))) {
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
  open_link(r);
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
  open_unlink(r); /* no lock or unlock is written after this */
  pthread_mutex_lock(&r->lock);
  kept_flush(r); /* what was never answered is not recorded */
  r->nflights = 0;
  pthread_mutex_unlock(&r->lock);
  close_ctx c = {r, mm, NULL, NULL};
  mb__exec_must(mm->loop, expect_regions, &c);
  for (mb_partition *p = mm->partitions; p; p = p->next) {
    rec_key *k = key_find(r, p);
    if (!k) continue;
    c.p = p;
    c.name = k->name;
    mb__exec_must(p->loop, expect_partition, &c);
  }
  fclose(r->out);
  for (size_t i = 0; i < r->nkeys; i++)
    if (r->keys[i].obj_ref) mb_object_unref(r->keys[i].obj_ref);
  pthread_mutex_destroy(&r->lock);
  free(r->txn_regions);
  free(r->flights);
  free(r->inserts);
  free(r->locks);
  free(r->keys);
  free(r->regions);
  free(r);
}
