/* rm_fakes.h: a harness for the region manager's protocol tests. The region manager runs on a
 * loop the test thread runs itself (attached); a fake mapping manager and fake partition
 * mappers (on that loop, or each on a started loop of its own) record every MM_MAP, MM_UNMAP,
 * PM_MAP and PM_UNMAP, keep the state those messages build (the visible mappings, the mapped
 * pieces), check the contracts the region manager must keep (MM_MAP never over a visible
 * mapping, PM_UNMAP only of a mapped piece, ...), and answer 0 or an injected error. */
#ifndef MB_TEST_RM_FAKES_H
#define MB_TEST_RM_FAKES_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapping_manager.h"
#include "mb_errors.h"
#include "partition_mapper.h"
#include "region_manager.h"
#include "test_util.h"

#define FX_MAXP 4
#define FX_MAXOBJ 8
#define FX_LOG 65536

enum { FAKE_MM = -1 };

/* One visible mapping as the fake mapping manager holds it (no reference: the test owns the
 * objects for the whole test). */
typedef struct fx_ent {
  uint64_t gpa, size;
  mb_object *obj;
  uint64_t obj_off;
  bool writable;
} fx_ent;

typedef struct fx_list {
  fx_ent *v;
  size_t n, cap;
} fx_list;

typedef struct fx fx;

typedef struct fx_fake {
  fx *f;
  int who;        /* FAKE_MM, or the partition's index */
  fx_list state;  /* MM: visible mappings; PM: mapped pieces (obj NULL), both ascending */
} fx_fake;

struct fx {
  tu_home home; /* the test thread runs it: the region manager and the fakes live here */
  mb_actor *rm;
  mb_addr rm_addr;
  fx_fake mm;
  mb_addr mm_addr;
  fx_fake pm[FX_MAXP];
  mb_addr pm_addr[FX_MAXP];
  mb_loop *pm_loop[FX_MAXP]; /* NULL: the home loop */
  mb_actor *pm_actor[FX_MAXP];
  int npm;
  mb_object *obj[FX_MAXOBJ];
  const char *obj_name[FX_MAXOBJ];
  int nobj;
  pthread_mutex_t lock; /* the fields below, and the fakes' states */
  char *log;            /* "; "-separated records */
  size_t log_len;
  size_t nrec;          /* records so far (every message the fakes got) */
  long fail_at;         /* the message with this record number fails (-1: none) */
  int fail_err;
  int failed;           /* injected failures that happened */
  int violations;
  char violation[256];
  bool hold_next;       /* keep the next message unanswered, in `held` */
  mb_msg *held;
  mb_gpa_map *gpa_map;  /* the region manager publishes its visible map here */
};

/* Answers msg with rc, or keeps it unanswered when the test asked for that. */
static inline void fx_answer(fx *f, mb_msg *msg, int rc) {
  pthread_mutex_lock(&f->lock);
  bool hold = f->hold_next;
  if (hold) {
    f->hold_next = false;
    f->held = msg;
  }
  pthread_mutex_unlock(&f->lock);
  if (hold) mb_msg_keep(msg);
  else mb_reply(msg, rc);
}

/* ---- the fakes' state -------------------------------------------------------------------- */

static inline void fx_list_insert(fx_list *l, fx_ent e) {
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 64;
    l->v = realloc(l->v, l->cap * sizeof *l->v);
    assert_non_null(l->v);
  }
  size_t i = l->n;
  while (i > 0 && l->v[i - 1].gpa > e.gpa) i--;
  memmove(&l->v[i + 1], &l->v[i], (l->n - i) * sizeof *l->v);
  l->v[i] = e;
  l->n++;
}

static inline bool fx_list_overlaps(const fx_list *l, uint64_t gpa, uint64_t size) {
  for (size_t i = 0; i < l->n; i++)
    if (l->v[i].gpa < gpa + size && gpa < l->v[i].gpa + l->v[i].size) return true;
  return false;
}

/* Removes every byte in [gpa, gpa + size), splitting entries at the edges. */
static inline void fx_list_cut(fx_list *l, uint64_t gpa, uint64_t size) {
  uint64_t a = gpa, b = gpa + size;
  for (size_t i = 0; i < l->n;) {
    fx_ent e = l->v[i];
    uint64_t s = e.gpa, t = e.gpa + e.size;
    if (t <= a || s >= b) { i++; continue; }
    memmove(&l->v[i], &l->v[i + 1], (l->n - i - 1) * sizeof *l->v);
    l->n--;
    if (s < a) { fx_ent left = e; left.size = a - s; fx_list_insert(l, left); }
    if (t > b) {
      fx_ent right = e;
      right.gpa = b;
      right.size = t - b;
      right.obj_off = e.obj_off + (b - s);
      fx_list_insert(l, right);
    }
    /* entries before position i are unchanged; rescan from the start is simplest */
    i = 0;
    while (i < l->n && l->v[i].gpa + l->v[i].size <= a) i++;
  }
}

/* ---- the log ----------------------------------------------------------------------------- */

static inline const char *fx_obj_name(fx *f, mb_object *o) {
  for (int i = 0; i < f->nobj; i++)
    if (f->obj[i] == o) return f->obj_name[i];
  return "?";
}

static inline void fx_logf(fx *f, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof buf) n = sizeof buf - 1;
  if (f->log_len + (size_t)n + 1 >= FX_LOG) return; /* long runs: keep the head */
  memcpy(f->log + f->log_len, buf, (size_t)n);
  f->log_len += (size_t)n;
  f->log[f->log_len] = '\0';
}

static inline void fx_violation(fx *f, const char *what) {
  if (f->violations++ == 0) snprintf(f->violation, sizeof f->violation, "%s", what);
}

static inline void fx_range(char *buf, size_t len, uint64_t gpa, uint64_t size) {
  snprintf(buf, len, "0x%" PRIx64 "+0x%" PRIx64, gpa, size);
}

/* Logs the message and decides whether it fails: returns 0 or the injected error. */
static inline int fx_record(fx *f, int who, const char *what) {
  if (f->log_len > 0) fx_logf(f, "; ");
  if (who == FAKE_MM) fx_logf(f, "mm %s", what);
  else fx_logf(f, "pm%d %s", who, what);
  long nrec = (long)f->nrec++;
  if (nrec == f->fail_at) {
    f->failed++;
    return f->fail_err;
  }
  return 0;
}

/* "what RANGE:ACCESS=OBJ@OFF ..." for an entry array. */
static inline void fx_entries_text(fx *f, char *buf, size_t len, const char *what,
                                   const mb_map_entry *e, uint32_t count) {
  char r[64];
  size_t n = (size_t)snprintf(buf, len, "%s", what);
  for (uint32_t i = 0; i < count && n < len; i++) {
    fx_range(r, sizeof r, e[i].gpa, e[i].size);
    n += (size_t)snprintf(buf + n, len - n, " %s:%s=%s@0x%" PRIx64, r,
                          e[i].writable ? "rw" : "ro", fx_obj_name(f, e[i].obj), e[i].obj_off);
  }
}

/* MM_REPLACE: the range shows exactly the entries from now on (entries inside it, apart). */
static inline void fake_mm_replace(fx *f, fx_fake *k, mm_replace_msg *m, char *buf, size_t len,
                                   int *rc) {
  char r[64];
  fx_range(r, sizeof r, m->gpa, m->size);
  char what[80];
  snprintf(what, sizeof what, "replace %s", r);
  fx_entries_text(f, buf, len, what, m->entries, m->count);
  *rc = fx_record(f, FAKE_MM, buf);
  for (uint32_t i = 0; i < m->count; i++) {
    mb_map_entry *e = &m->entries[i];
    if (e->gpa < m->gpa || e->gpa + e->size > m->gpa + m->size ||
        (i > 0 && m->entries[i - 1].gpa + m->entries[i - 1].size > e->gpa))
      fx_violation(f, "MM_REPLACE: entries outside the range or overlapping");
  }
  if (*rc == 0) {
    fx_list_cut(&k->state, m->gpa, m->size);
    for (uint32_t i = 0; i < m->count; i++) {
      mb_map_entry *e = &m->entries[i];
      fx_list_insert(&k->state, (fx_ent){e->gpa, e->size, e->obj, e->obj_off, e->writable});
    }
  }
  mb_map_entries_free(m->entries, m->count);
  m->entries = NULL;
  m->count = 0;
}

static inline void fake_mm_handle(mb_actor *self, mb_msg *msg) {
  fx_fake *k = mb_actor_state(self);
  fx *f = k->f;
  char buf[4096], r[64];
  int rc = 0;
  pthread_mutex_lock(&f->lock);
  mm_map_msg *map = mm_map_of(msg);
  mm_unmap_msg *unmap = mm_unmap_of(msg);
  mm_replace_msg *repl = mm_replace_of(msg);
  if (map != NULL) {
    fx_entries_text(f, buf, sizeof buf, "map", map->entries, map->count);
    rc = fx_record(f, FAKE_MM, buf);
    for (uint32_t i = 0; i < map->count; i++) {
      mb_map_entry *e = &map->entries[i];
      if (e->size == 0 || mb_object_check_range(e->obj, e->obj_off, e->size) != 0)
        fx_violation(f, "MM_MAP: entry outside its object");
      if (fx_list_overlaps(&k->state, e->gpa, e->size))
        fx_violation(f, "MM_MAP over a visible mapping");
      for (uint32_t j = 0; j < i; j++)
        if (map->entries[j].gpa < e->gpa + e->size && e->gpa < map->entries[j].gpa + map->entries[j].size)
          fx_violation(f, "MM_MAP: entries overlap each other");
    }
    if (rc == 0)
      for (uint32_t i = 0; i < map->count; i++) {
        mb_map_entry *e = &map->entries[i];
        fx_list_insert(&k->state, (fx_ent){e->gpa, e->size, e->obj, e->obj_off, e->writable});
      }
    mb_map_entries_free(map->entries, map->count); /* ours, on success and on failure */
    map->entries = NULL;
    map->count = 0;
  } else if (repl != NULL) {
    fake_mm_replace(f, k, repl, buf, sizeof buf, &rc);
  } else if (unmap != NULL) {
    fx_range(r, sizeof r, unmap->gpa, unmap->size);
    snprintf(buf, sizeof buf, "unmap %s", r);
    rc = fx_record(f, FAKE_MM, buf);
    if (rc == 0) fx_list_cut(&k->state, unmap->gpa, unmap->size);
  } else {
    fx_violation(f, "mapping manager: unexpected message");
    rc = MB_E_UNSUPPORTED;
  }
  pthread_mutex_unlock(&f->lock);
  fx_answer(f, msg, rc);
}

static inline void fake_pm_handle(mb_actor *self, mb_msg *msg) {
  fx_fake *k = mb_actor_state(self);
  fx *f = k->f;
  char buf[128], r[64];
  int rc = 0;
  pthread_mutex_lock(&f->lock);
  pm_map_msg *map = pm_map_of(msg);
  pm_unmap_msg *unmap = pm_unmap_of(msg);
  pm_access_set_msg *acc = pm_access_set_of(msg);
  if (acc != NULL) {
    fx_range(r, sizeof r, acc->gpa, acc->size);
    snprintf(buf, sizeof buf, "access %s:%s", r, acc->writable ? "rw" : "ro");
    rc = fx_record(f, k->who, buf);
    size_t i = 0;
    while (i < k->state.n && !(k->state.v[i].gpa == acc->gpa && k->state.v[i].size == acc->size)) i++;
    if (i == k->state.n)
      fx_violation(f, "PM_ACCESS_SET of something that is not a mapped piece");
    else if (rc == 0)
      k->state.v[i].writable = acc->writable;
  } else if (map != NULL) {
    fx_range(r, sizeof r, map->gpa, map->size);
    snprintf(buf, sizeof buf, "map %s:%s", r, map->writable ? "rw" : "ro");
    rc = fx_record(f, k->who, buf);
    if (map->size == 0 || fx_list_overlaps(&k->state, map->gpa, map->size))
      fx_violation(f, "PM_MAP over a mapped piece");
    else if (rc == 0)
      fx_list_insert(&k->state, (fx_ent){map->gpa, map->size, NULL, 0, map->writable});
  } else if (unmap != NULL) {
    fx_range(r, sizeof r, unmap->gpa, unmap->size);
    snprintf(buf, sizeof buf, "unmap %s", r);
    rc = fx_record(f, k->who, buf);
    size_t i = 0;
    while (i < k->state.n && !(k->state.v[i].gpa == unmap->gpa && k->state.v[i].size == unmap->size)) i++;
    if (i == k->state.n) {
      fx_violation(f, "PM_UNMAP of something that is not a mapped piece");
    } else if (rc == 0) {
      memmove(&k->state.v[i], &k->state.v[i + 1], (k->state.n - i - 1) * sizeof *k->state.v);
      k->state.n--;
    }
  } else {
    fx_violation(f, "partition mapper: unexpected message");
    rc = MB_E_UNSUPPORTED;
  }
  pthread_mutex_unlock(&f->lock);
  fx_answer(f, msg, rc);
}

static const mb_actor_type fake_mm_type = {"fake_mm", fake_mm_handle, NULL, 0, NULL};
static const mb_actor_type fake_pm_type = {"fake_pm", fake_pm_handle, NULL, 0, NULL};

/* ---- setup ------------------------------------------------------------------------------- */

typedef struct fx_spawn {
  fx_fake *state;
  mb_actor *actor;
} fx_spawn;

static inline void fx_spawn_pm(mb_loop *l, void *arg) {
  fx_spawn *s = arg;
  s->actor = mb_actor_create(l, &fake_pm_type, s->state, "fake_pm");
}

static inline void fx_destroy_actor(mb_loop *l, void *arg) {
  (void)l;
  mb_actor_destroy(arg);
}

/* npm partitions (not yet added to the region manager); threaded: each on its own loop. */
static inline fx *fx_new(int overlap, uint64_t max_addr, int npm, bool threaded) {
  fx *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->log = calloc(1, FX_LOG);
  assert_non_null(f->log);
  pthread_mutex_init(&f->lock, NULL);
  f->fail_at = -1;
  tu_home_init(&f->home, "home");
  f->mm = (fx_fake){f, FAKE_MM, {0}};
  f->mm_addr = mb_actor_addr(mb_actor_create(f->home.loop, &fake_mm_type, &f->mm, "fake_mm"));
  f->npm = npm;
  for (int i = 0; i < npm; i++) {
    f->pm[i] = (fx_fake){f, i, {0}};
    fx_spawn s = {&f->pm[i], NULL};
    if (threaded) {
      char name[16];
      snprintf(name, sizeof name, "pm%d", i);
      f->pm_loop[i] = tu_start(name);
      assert_int_equal(mb_loop_exec(f->pm_loop[i], fx_spawn_pm, &s), 0);
    } else {
      fx_spawn_pm(f->home.loop, &s);
    }
    assert_non_null(s.actor);
    f->pm_actor[i] = s.actor;
    f->pm_addr[i] = mb_actor_addr(s.actor);
  }
  assert_int_equal(mb_gpa_map_create(&f->gpa_map), 0);
  mb_rm_config cfg = {.max_addr = max_addr, .overlap = overlap, .mapping_manager = f->mm_addr,
                      .gpa_map = f->gpa_map};
  f->rm = mb_region_manager_create(f->home.loop, &cfg);
  assert_non_null(f->rm);
  f->rm_addr = mb_actor_addr(f->rm);
  return f;
}

static inline void fx_free(fx *f) {
  mb_actor_destroy(f->rm);
  for (int i = 0; i < f->npm; i++)
    if (f->pm_loop[i] != NULL)
      tu_stop(f->pm_loop[i]); /* destroys the fake with its loop */
  tu_home_fini(&f->home);
  mb_gpa_map_destroy(f->gpa_map);
  for (int i = 0; i < f->nobj; i++) mb_object_unref(f->obj[i]);
  free(f->mm.state.v);
  for (int i = 0; i < f->npm; i++) free(f->pm[i].state.v);
  pthread_mutex_destroy(&f->lock);
  free(f->log);
  free(f);
}

static inline mb_object *fx_object(fx *f, const char *name, uint64_t size) {
  assert_true(f->nobj < FX_MAXOBJ);
  mb_object *o = NULL;
  assert_int_equal(mb_object_create(MB_OBJECT_ANON, size, name, &o), 0);
  f->obj[f->nobj] = o;
  f->obj_name[f->nobj++] = name;
  return o;
}

/* ---- calls to the region manager --------------------------------------------------------- */

typedef struct fx_wait {
  bool done;
  mb_msg *reply;
} fx_wait;

static inline void fx_on_reply(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  fx_wait *w = ctx;
  mb_msg_keep(reply);
  w->reply = reply;
  w->done = true;
}

/* Sends msg to the region manager and runs the loop until the reply; returns the reply. */
static inline mb_msg *fx_call(fx *f, mb_msg *msg) {
  fx_wait w = {0};
  assert_non_null(msg);
  mb_call(mb_loop_actor(f->home.loop), f->rm_addr, msg, fx_on_reply, &w);
  tu_home_run_until(&f->home, &w.done);
  return w.reply;
}

static inline int fx_status(fx *f, mb_msg *msg) {
  mb_msg *r = fx_call(f, msg);
  int st = r->status;
  mb_msg_free(r);
  return st;
}

/* Region add: the id (> 0), or the error (< 0). */
static inline int64_t fx_region_add(fx *f, const char *name, uint64_t gpa, uint64_t size, int prio) {
  rm_region_add_msg *m = rm_region_add_new();
  snprintf(m->name, sizeof m->name, "%s", name);
  m->gpa = gpa;
  m->size = size;
  m->prio = (uint8_t)prio;
  mb_msg *r = fx_call(f, &m->hdr);
  int64_t v = r->status ? r->status : (int64_t)rm_region_add_of(r)->id;
  mb_msg_free(r);
  return v;
}

static inline int fx_region_map(fx *f, uint32_t id, bool writable) {
  rm_region_map_msg *m = rm_region_map_new();
  m->id = id;
  m->writable = writable;
  return fx_status(f, &m->hdr);
}

static inline int fx_region_unmap(fx *f, uint32_t id) {
  rm_region_unmap_msg *m = rm_region_unmap_new();
  m->id = id;
  return fx_status(f, &m->hdr);
}

static inline int fx_region_remove(fx *f, uint32_t id) {
  rm_region_remove_msg *m = rm_region_remove_new();
  m->id = id;
  return fx_status(f, &m->hdr);
}

/* The state (>= 0) or the error. */
static inline int fx_region_state(fx *f, uint32_t id) {
  rm_region_state_msg *m = rm_region_state_new();
  m->id = id;
  mb_msg *r = fx_call(f, &m->hdr);
  int v = r->status ? r->status : rm_region_state_of(r)->state;
  mb_msg_free(r);
  return v;
}

static inline int fx_mapping_add(fx *f, uint32_t id, uint64_t off, uint64_t size, mb_object *obj,
                                 uint64_t obj_off, bool writable) {
  rm_mapping_add_msg *m = rm_mapping_add_new();
  m->id = id;
  m->offset = off;
  m->size = size;
  m->obj = obj;
  m->obj_off = obj_off;
  m->writable = writable;
  return fx_status(f, &m->hdr);
}

static inline int fx_mapping_remove(fx *f, uint32_t id, uint64_t off, uint64_t size) {
  rm_mapping_remove_msg *m = rm_mapping_remove_new();
  m->id = id;
  m->offset = off;
  m->size = size;
  return fx_status(f, &m->hdr);
}

static inline int fx_mapping_replace(fx *f, uint32_t id, uint64_t off, uint64_t size,
                                     mb_object *obj, uint64_t obj_off, bool writable) {
  rm_mapping_replace_msg *m = rm_mapping_replace_new();
  m->id = id;
  m->offset = off;
  m->size = size;
  m->obj = obj;
  m->obj_off = obj_off;
  m->writable = writable;
  return fx_status(f, &m->hdr);
}

static inline int fx_partition_add_addr(fx *f, mb_addr a) {
  rm_partition_add_msg *m = rm_partition_add_new();
  m->partition = a;
  return fx_status(f, &m->hdr);
}

static inline int fx_txn(fx *f, bool begin) {
  mb_msg *m = begin ? &rm_txn_begin_new()->hdr : &rm_txn_commit_new()->hdr;
  return fx_status(f, m);
}

static inline int fx_partition_add(fx *f, int i) { return fx_partition_add_addr(f, f->pm_addr[i]); }

static inline int fx_partition_remove(fx *f, int i) {
  rm_partition_remove_msg *m = rm_partition_remove_new();
  m->partition = f->pm_addr[i];
  return fx_status(f, &m->hdr);
}

/* ---- checks ------------------------------------------------------------------------------ */

/* Takes the log so far (the caller frees it) and clears it. */
static inline char *fx_take_log(fx *f) {
  pthread_mutex_lock(&f->lock);
  char *s = strdup(f->log);
  f->log_len = 0;
  f->log[0] = '\0';
  pthread_mutex_unlock(&f->lock);
  assert_non_null(s);
  return s;
}

#define fx_expect_log(f, expected)            \
  do {                                        \
    char *got__ = fx_take_log(f);             \
    assert_string_equal(got__, (expected));   \
    free(got__);                              \
  } while (0)

static inline void fx_no_violations(fx *f) {
  if (f->violations) fail_msg("fake consumers saw %d violations; first: %s", f->violations, f->violation);
}

/* Makes message number `n` from now (0: the next) fail with err. */
static inline void fx_fail_in(fx *f, long n, int err) {
  pthread_mutex_lock(&f->lock);
  f->fail_at = (long)f->nrec + n;
  f->fail_err = err;
  pthread_mutex_unlock(&f->lock);
}

static inline void fx_fail_off(fx *f) {
  pthread_mutex_lock(&f->lock);
  f->fail_at = -1;
  pthread_mutex_unlock(&f->lock);
}

/* A copy of a fake's state. */
static inline fx_list fx_snapshot(fx *f, fx_fake *k) {
  pthread_mutex_lock(&f->lock);
  fx_list c = {NULL, k->state.n, k->state.n};
  if (c.n) {
    c.v = malloc(c.n * sizeof *c.v);
    assert_non_null(c.v);
    memcpy(c.v, k->state.v, c.n * sizeof *c.v);
  }
  pthread_mutex_unlock(&f->lock);
  return c;
}

/* Merges touching entries that continue each other (same object, contiguous offsets, same
 * access): the region manager may cut one mapping into several MM entries. */
static inline void fx_normalize(fx_list *l) {
  size_t n = 0;
  for (size_t i = 0; i < l->n; i++) {
    fx_ent *last = n ? &l->v[n - 1] : NULL;
    fx_ent e = l->v[i];
    if (last && last->gpa + last->size == e.gpa && last->obj == e.obj &&
        last->obj_off + last->size == e.obj_off && last->writable == e.writable)
      last->size += e.size;
    else
      l->v[n++] = e;
  }
  l->n = n;
}

static inline bool fx_list_equal(const fx_list *a, const fx_list *b) {
  if (a->n != b->n) return false;
  for (size_t i = 0; i < a->n; i++)
    if (a->v[i].gpa != b->v[i].gpa || a->v[i].size != b->v[i].size || a->v[i].obj != b->v[i].obj ||
        a->v[i].obj_off != b->v[i].obj_off || a->v[i].writable != b->v[i].writable)
      return false;
  return true;
}

#endif
