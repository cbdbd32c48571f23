/* handles.c: the handles the public API gives out for mappers, partitions and locks, and the
 * reader sections that let any thread use what a handle names while another destroys it.
 *
 * A handle is not a pointer: it packs a slot index and the slot's tag (a generation and a
 * kind) into the pointer's bits. Slots live in chunks that are never freed, so any handle can
 * be checked without touching freed memory: once what it named is gone the slot's tag has
 * moved on, and the handle is refused (a double remove, a double unlock, a use after remove
 * or destroy) even after the slot was reused. A tag repeats after 2^29 reuses of one slot.
 *
 * Reader sections. A thread that uses a handle's object (a mapper's VA mapper, a partition's
 * manager) announces the slot in its own record (a hazard) before it checks the tag, and
 * withdraws it when done. Whoever destroys the object first kills the tag, then waits until no
 * record names the slot (mb__h_retire), and only then frees it.
 * Invariant: a reader that saw the tag live has its hazard visible to the destroyer's scan.
 * The reader's hazard store and its tag load are ordered for the destroyer by membarrier
 * (every running thread of the process passes a full barrier between the tag's kill and the
 * scan), so a reader pays two plain stores and no fence; where membarrier is missing readers
 * take a slow path that fences. */
#include <errno.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "api_internal.h"
#include "fault_inject.h" /* MB_FI_ALLOC: tests fail these allocations */

/* ---- the table --------------------------------------------------------------------------- */

enum { CHUNK = 1024, CHUNKS = 4096, TAG_DEAD = 0 };

struct mb__hslot {
  _Atomic uint32_t tag;     /* gen << 2 | kind; gen odd while live, even while free or dead */
  _Atomic uint32_t claimed; /* a removal in progress owns the object */
  _Atomic uint32_t owner;   /* a lock's mapper slot */
  uint32_t next_free;
  _Atomic(void *) obj;
  _Atomic(uint8_t *) ptr;   /* a lock's pointer and range, readable without its mapper */
  _Atomic uint64_t gpa, size;
};

static _Atomic(mb__hslot *) chunks[CHUNKS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t free_head = MB__H_NONE, used; /* under table_lock */

static inline uint32_t index_of(mb__handle h) { return (uint32_t)h - 1; }
static inline uint32_t tag_of(mb__handle h) { return (uint32_t)(h >> 32); }

/* The slot at idx, or NULL when no chunk holds it. */
static inline mb__hslot *slot_at(uint32_t idx) {
  mb__hslot *c = atomic_load_explicit(&chunks[(idx / CHUNK) % CHUNKS], memory_order_acquire);
  return c ? &c[idx % CHUNK] : NULL;
}

static bool grow(void) {
  if (used / CHUNK >= CHUNKS) return false;
  mb__hslot *c = mb__calloc(CHUNK, sizeof *c);
  if (!c) return false;
  for (uint32_t i = 0; i < CHUNK; i++) atomic_init(&c[i].tag, 2u << 2); /* free, never 0 */
  atomic_store_explicit(&chunks[used / CHUNK], c, memory_order_release);
  return true;
}

uint32_t mb__h_alloc(void) {
  pthread_mutex_lock(&table_lock);
  uint32_t idx = free_head;
  if (idx != MB__H_NONE) {
    free_head = slot_at(idx)->next_free;
  } else if (used % CHUNK != 0 || grow()) {
    idx = used++;
  }
  pthread_mutex_unlock(&table_lock);
  return idx;
}

void mb__h_free(uint32_t idx) {
  mb__hslot *s = slot_at(idx);
  if (!s) return;
  atomic_store_explicit(&s->obj, NULL, memory_order_relaxed);
  atomic_store_explicit(&s->claimed, 0, memory_order_relaxed);
  pthread_mutex_lock(&table_lock);
  s->next_free = free_head;
  free_head = idx;
  pthread_mutex_unlock(&table_lock);
}

mb__handle mb__h_publish(uint32_t idx, mb__hkind kind, void *obj) {
  mb__hslot *s = slot_at(idx);
  uint32_t gen = (atomic_load_explicit(&s->tag, memory_order_relaxed) >> 2) + 1; /* odd */
  uint32_t tag = gen << 2 | (uint32_t)kind;
  atomic_store_explicit(&s->obj, obj, memory_order_relaxed);
  atomic_store(&s->tag, tag); /* seq_cst: see mb_mapper_lock */
  return (mb__handle)tag << 32 | (idx + 1);
}

void mb__h_set_lock(uint32_t idx, uint32_t owner, uint8_t *ptr, uint64_t gpa, uint64_t size) {
  mb__hslot *s = slot_at(idx);
  if (!s) return;
  atomic_store_explicit(&s->owner, owner, memory_order_relaxed);
  atomic_store_explicit(&s->ptr, ptr, memory_order_relaxed);
  atomic_store_explicit(&s->gpa, gpa, memory_order_relaxed);
  atomic_store_explicit(&s->size, size, memory_order_relaxed);
}

uint32_t mb__h_index(mb__handle h) { return index_of(h); }

/* The slot h names while h is live, else NULL. */
static inline mb__hslot *live_slot(mb__handle h) {
  mb__hslot *s = slot_at(index_of(h));
  if (__builtin_expect(!s || atomic_load(&s->tag) != tag_of(h), 0)) /* seq_cst: rs_sync */
    return NULL;
  return s;
}

void *mb__h_obj(mb__handle h, mb__hkind kind) {
  mb__hslot *s = (tag_of(h) & 3) == (uint32_t)kind ? live_slot(h) : NULL;
  return s ? atomic_load_explicit(&s->obj, memory_order_relaxed) : NULL;
}

bool mb__h_kill(mb__handle h) {
  mb__hslot *s = slot_at(index_of(h));
  uint32_t tag = tag_of(h), dead = ((tag >> 2) + 1) << 2 | TAG_DEAD;
  return s && atomic_compare_exchange_strong(&s->tag, &tag, dead);
}

/* claimed holds the claimer's tag, so a late unclaim cannot free a later incarnation's claim. */
bool mb__h_claim(mb__handle h) {
  mb__hslot *s = live_slot(h);
  uint32_t no = 0;
  return s && atomic_compare_exchange_strong(&s->claimed, &no, tag_of(h));
}

void mb__h_unclaim(mb__handle h) {
  mb__hslot *s = slot_at(index_of(h));
  uint32_t mine = tag_of(h);
  if (s) atomic_compare_exchange_strong(&s->claimed, &mine, 0);
}

bool mb__h_alive(mb__handle h) {
  mb__hslot *s = slot_at(index_of(h));
  return s && atomic_load(&s->tag) == tag_of(h);
}

/* A seqlock read: the fields were written before the tag was published and change only after
 * it was killed, so they belong to h when the tag is h's before and after. */
bool mb__h_lock_peek(mb__handle h, mb__hlock *out) {
  mb__hslot *s = (tag_of(h) & 3) == MB__H_LOCK ? live_slot(h) : NULL;
  if (!s) return false;
  /* acquire: the tag's second read cannot move before any of these */
  out->owner = atomic_load_explicit(&s->owner, memory_order_acquire);
  out->obj = atomic_load_explicit(&s->obj, memory_order_acquire);
  out->ptr = atomic_load_explicit(&s->ptr, memory_order_acquire);
  out->gpa = atomic_load_explicit(&s->gpa, memory_order_acquire);
  out->size = atomic_load_explicit(&s->size, memory_order_acquire);
  return atomic_load_explicit(&s->tag, memory_order_relaxed) == tag_of(h);
}

unsigned mb__h_kill_locks(uint32_t owner) {
  unsigned n = 0;
  pthread_mutex_lock(&table_lock);
  uint32_t count = used;
  pthread_mutex_unlock(&table_lock);
  for (uint32_t i = 0; i < count; i++) {
    mb__hslot *s = slot_at(i);
    uint32_t tag = atomic_load(&s->tag);
    if ((tag & 3) != MB__H_LOCK || !((tag >> 2) & 1) || atomic_load(&s->owner) != owner)
      continue;
    if (mb__h_kill((mb__handle)tag << 32 | (i + 1))) { /* else its unlock won: it is gone */
      mb__h_free(i);
      n++;
    }
  }
  return n;
}

/* ---- reader sections ----------------------------------------------------------------------- */

enum { RS_DEPTH = 4 }; /* nesting (a signal handler's access inside an access) */

struct mb__rs {
  _Atomic uint32_t depth;            /* sections open; beyond RS_DEPTH, hazards are not kept */
  _Atomic uint32_t hazard[RS_DEPTH]; /* slot index + 1 of each open section */
  struct mb__rs *next;
};

/* How a destroyer orders the readers' hazard stores before its scan. */
enum { RS_PRIVATE = 1, RS_GLOBAL, RS_FENCE };
static int rs_mode;
static pthread_once_t rs_once = PTHREAD_ONCE_INIT;
static pthread_key_t rs_key;
static pthread_mutex_t rs_lock = PTHREAD_MUTEX_INITIALIZER;
static mb__rs *rs_threads; /* under rs_lock */
static _Thread_local mb__rs *rs_mine;
static _Thread_local mb__rs *rs_fast; /* rs_mine when readers need no fence */

static long membarrier(int cmd) { return syscall(__NR_membarrier, cmd, 0, 0); }

static void rs_unregister(void *arg) {
  mb__rs *t = arg;
  pthread_mutex_lock(&rs_lock);
  for (mb__rs **p = &rs_threads; *p; p = &(*p)->next)
    if (*p == t) {
      *p = t->next;
      break;
    }
  pthread_mutex_unlock(&rs_lock);
  free(t);
}

static void rs_init(void) {
  long cmds = membarrier(MEMBARRIER_CMD_QUERY);
  if (cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
      membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0)
    rs_mode = RS_PRIVATE;
  else if (cmds > 0 && (cmds & MEMBARRIER_CMD_GLOBAL))
    rs_mode = RS_GLOBAL;
  else
    rs_mode = RS_FENCE;
  (void)pthread_key_create(&rs_key, rs_unregister);
}

/* Threads that could not get a record of their own (no memory) share this one: each of
 * their sections counts as a section on every slot. */
static mb__rs rs_shared;
enum { RS_ANY = RS_DEPTH + 1 };

/* This thread's record, made on its first section (NULL on no memory). */
static mb__rs *rs_register(void) {
  pthread_once(&rs_once, rs_init);
  mb__rs *t = calloc(1, sizeof *t);
  if (!t || pthread_setspecific(rs_key, t) != 0) {
    free(t);
    return NULL;
  }
  pthread_mutex_lock(&rs_lock);
  t->next = rs_threads;
  rs_threads = t;
  pthread_mutex_unlock(&rs_lock);
  rs_mine = t;
  if (rs_mode != RS_FENCE) rs_fast = t;
  return t;
}

static inline void rs_push(mb__rs *t, uint32_t idx, memory_order order) {
  uint32_t d = atomic_load_explicit(&t->depth, memory_order_relaxed);
  if (d < RS_DEPTH) atomic_store_explicit(&t->hazard[d], idx + 1, memory_order_relaxed);
  atomic_store_explicit(&t->depth, d + 1, order);
}

__attribute__((noinline, cold)) static mb__rs *rs_enter_slow(uint32_t idx) {
  mb__rs *t = rs_mine ? rs_mine : rs_register();
  if (!t) {
    t = &rs_shared;
    atomic_fetch_add(&t->depth, RS_ANY); /* seq_cst, like the tag's load after it */
  } else if (rs_mode == RS_FENCE) {
    rs_push(t, idx, memory_order_seq_cst); /* Dekker with the kill, all seq_cst */
  } else {
    rs_push(t, idx, memory_order_release);
    atomic_signal_fence(memory_order_seq_cst);
  }
  return t;
}

mb__rs *mb__rs_enter(uint32_t idx) {
  mb__rs *t = rs_fast;
  if (__builtin_expect(t == NULL, 0)) return rs_enter_slow(idx);
  rs_push(t, idx, memory_order_release);
  atomic_signal_fence(memory_order_seq_cst); /* the hazard before the tag (see the top) */
  return t;
}

void mb__rs_leave(mb__rs *t) {
  if (t == &rs_shared)
    atomic_fetch_sub_explicit(&t->depth, RS_ANY, memory_order_release);
  else
    atomic_store_explicit(&t->depth, atomic_load_explicit(&t->depth, memory_order_relaxed) - 1,
                          memory_order_release);
}

void *mb__h_enter(mb__handle h, mb__hkind kind, mb__rs **rs) {
  *rs = mb__rs_enter(index_of(h));
  return mb__h_obj(h, kind);
}

/* After a kill: make every section that saw the tag live visible to rs_busy. (A membarrier
 * command that passed QUERY, and REGISTER for the private one, does not fail later.) */
static void rs_sync(void) {
  pthread_once(&rs_once, rs_init);
  if (rs_mode == RS_PRIVATE) (void)membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
  else if (rs_mode == RS_GLOBAL) (void)membarrier(MEMBARRIER_CMD_GLOBAL);
  /* RS_FENCE: the readers' depth stores, the kill and the scan are seq_cst (Dekker) */
}

/* Is a section on idx open on another thread? (The caller's own sections do not count: it
 * does not destroy what it is reading.) */
static bool rs_busy(uint32_t idx) {
  bool busy = atomic_load_explicit(&rs_shared.depth, memory_order_acquire) != 0;
  pthread_mutex_lock(&rs_lock);
  for (mb__rs *t = rs_threads; t && !busy; t = t->next) {
    if (t == rs_mine) continue;
    uint32_t d = atomic_load(&t->depth); /* seq_cst: RS_FENCE's Dekker */
    busy = d > RS_DEPTH;
    for (uint32_t i = 0; i < d && i < RS_DEPTH && !busy; i++)
      busy = atomic_load_explicit(&t->hazard[i], memory_order_relaxed) == idx + 1;
  }
  pthread_mutex_unlock(&rs_lock);
  return busy;
}

/* ---- retiring a killed handle ------------------------------------------------------------- */

typedef struct retiree {
  uv_timer_t timer;
  mb_loop *loop;
  uint32_t idx;
  void (*fn)(void *);
  void *arg;
} retiree;

static void retiree_closed(uv_handle_t *h) { free(h->data); }

static void retiree_tick(uv_timer_t *t) {
  retiree *r = t->data;
  if (rs_busy(r->idx)) return;
  uv_timer_stop(t);
  mb_loop_enter(r->loop); /* the reaper destroys actors: not while a borrower runs the turn */
  r->fn(r->arg);
  mb_loop_leave(r->loop);
  mb__h_free(r->idx);
  uv_close((uv_handle_t *)t, retiree_closed);
}

/* A reader still inside may be waiting for this very loop (a lazy mapper's fault resolves
 * through the mapping manager and the mapper's actor), so the loop polls instead of waiting:
 * a timer, each millisecond, until the readers are gone. */
static bool retire_later(mb_loop *loop, uint32_t idx, void (*fn)(void *), void *arg) {
  retiree *r = calloc(1, sizeof *r);
  if (!r || uv_timer_init(mb_loop_uv(loop), &r->timer) != 0) {
    free(r);
    return false;
  }
  r->loop = loop;
  r->idx = idx;
  r->fn = fn;
  r->arg = arg;
  r->timer.data = r;
  uv_timer_start(&r->timer, retiree_tick, 1, 1);
  return true;
}

void mb__h_retire(uint32_t idx, mb_loop *loop, void (*fn)(void *), void *arg) {
  rs_sync();
  if (rs_busy(idx)) {
    if (loop && mb_loop_is_current(loop) && !mb_loop_is_lent(loop) &&
        retire_later(loop, idx, fn, arg))
      return;
    while (rs_busy(idx)) sched_yield(); /* not on a loop, or no memory for a timer */
  }
  fn(arg);
  mb__h_free(idx);
}
