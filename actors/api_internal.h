/* api_internal.h: what the public API's files (membacking.c, membacking_consumers.c,
 * membacking_locks.c, handles.c, inspect.c, record.c) share: the manager, its consumers, their
 * handles, and the two ways of issuing a request.
 *
 * A public mb_mapper *, mb_partition * or mb_lock * is a handle (handles.c), never a pointer
 * to one of the structs below: the public functions turn it into the struct, and the library's
 * own code (the lists, recording, introspection) holds the structs themselves. */
#ifndef MB_API_INTERNAL_H
#define MB_API_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include <uv.h>

#include "dirty_log.h"
#include "mapping_manager.h"
#include "membacking.h"
#include "partition_mapper.h"
#include "region_manager.h"
#include "record.h"
#include "va_mapper.h"

/* ---- handles (handles.c) ---------------------------------------------------------------- */

typedef uintptr_t mb__handle; /* tag << 32 | (slot index + 1); 0 names nothing */
typedef enum mb__hkind { MB__H_MAPPER = 1, MB__H_PARTITION = 2, MB__H_LOCK = 3 } mb__hkind;
typedef struct mb__hslot mb__hslot;
typedef struct mb__rs mb__rs;
enum { MB__H_NONE = UINT32_MAX };

/* A slot for a new object, not yet valid as a handle: its index, or MB__H_NONE (no memory). */
uint32_t mb__h_alloc(void);
/* Makes the slot live for obj: its handle. */
mb__handle mb__h_publish(uint32_t idx, mb__hkind kind, void *obj);
/* A lock's slot, before it is published: its mapper's slot and what mb_lock_ptr and co read. */
void mb__h_set_lock(uint32_t idx, uint32_t owner, uint8_t *ptr, uint64_t gpa, uint64_t size);
/* Back to the free list: a slot never published, or one killed and retired. */
void mb__h_free(uint32_t idx);
uint32_t mb__h_index(mb__handle h);
/* The object while h is live and of `kind`, else NULL. Safe to use only inside a section on
 * h (mb__h_enter), or where its owner keeps it alive. */
void *mb__h_obj(mb__handle h, mb__hkind kind);
/* Makes h invalid for every later check: true for the one caller that did it. */
bool mb__h_kill(mb__handle h);
/* A removal owns h's object until it unclaims it or kills h; false if another one does (or
 * h is not live). Unclaiming a handle that was killed meanwhile does nothing. */
bool mb__h_claim(mb__handle h);
void mb__h_unclaim(mb__handle h);
/* Is h live? A sequentially consistent read (see mb_mapper_lock). */
bool mb__h_alive(mb__handle h);

/* A lock's slot, read without entering its mapper (false if h is not a live lock). */
typedef struct mb__hlock {
  uint32_t owner;
  void *obj;
  uint8_t *ptr;
  uint64_t gpa, size;
} mb__hlock;
bool mb__h_lock_peek(mb__handle h, mb__hlock *out);
/* Kills and frees every live lock handle whose mapper slot is `owner`: how many. */
unsigned mb__h_kill_locks(uint32_t owner);

/* Reader sections: any thread, never blocking, never failing. mb__h_enter opens one on h's
 * slot and returns its object (NULL: refused); close it with mb__rs_leave whatever it
 * returned. While it is open, what h names is not freed. */
void *mb__h_enter(mb__handle h, mb__hkind kind, mb__rs **rs);
mb__rs *mb__rs_enter(uint32_t idx);
void mb__rs_leave(mb__rs *rs);
/* After mb__h_kill: fn(arg), then the slot freed, once no section that saw h live is open.
 * On `loop`'s thread this never blocks (it may finish later, from a timer on that loop);
 * elsewhere it waits. */
void mb__h_retire(uint32_t idx, mb_loop *loop, void (*fn)(void *), void *arg);

/* ---- consumers and the manager ------------------------------------------------------------ */

typedef void (*mb__kill_cb)(void *ctx, int rc);

struct mb_mapper {
  mb_mm *mm;
  mb_vam *vam;
  mb_loop *loop;
  uint8_t vtl;              /* the view it shows (and VTL 0's at the alias, for VTL 2) */
  mb_mapper *prev, *next;
  mb__handle h;             /* its public handle (0 for the primary before creation ends) */
  uint32_t idx;             /* its slot */
  _Atomic bool had_locks;   /* a lock was taken through it: its destruction looks for them */
  mb__kill_cb killed;       /* after its destruction: the VA release's result */
  void *killed_ctx;
};

struct mb_partition {
  mb_mm *mm;
  const mb_partition_ops *ops;
  uint8_t vtl;
  mb_actor *actor;
  mb_loop *loop;
  mb_partition *prev, *next;
  mb__handle h;
  uint32_t idx;
  mb_addr addr;             /* the partition mapper's */
  mb__kill_cb killed;
  void *killed_ctx;
};

struct mb_mm {
  mb_loop *loop;          /* region manager and mapping manager */
  mb_actor *rm, *mm;      /* valid until mb_mm_destroy */
  mb_addr rm_addr, mm_addr; /* valid for ever: requests after destroy get MB_EGONE */
  uint64_t max_addr;
  mb_loop *part_loop;
  mb_vam *part_vam;       /* the partitions' eager VA mapper (VTL 0's view) */
  uint8_t *part_base;     /* its base */
  mb_vam *view_vam[MB_VTL_MAX + 1]; /* per VTL the manager has: its view's partitions'
                           * mapper ([0] is part_vam) */
  uint8_t *view_base[MB_VTL_MAX + 1];
  uint8_t vtls;           /* the VTLs (bit mask) */
  uint64_t alias;         /* VTL 0's view for VTL 2 at alias + g (0: none) */
  mb_mapper primary;      /* the internal side of part_vam (never on the mappers list) */
  mb_gpa_map *gpa_map;    /* the visible map, published for exit handlers (classify) */
  pthread_mutex_t lock;   /* guards the lists, steps, dead and rec against destroy */
  mb_mapper *mappers;
  mb_partition *partitions;
  struct step_op *steps;  /* consumer operations in flight (membacking_consumers.c) */
  bool dead;              /* mb_mm_destroy has begun */
  _Atomic uint32_t refs;  /* the manager's own, in-flight operations', dying consumers' */
  int overlap;
  _Atomic bool txn;       /* a transaction is open: set when its begin is issued, cleared
                           * when its commit is (consumer operations and locks: MB_E_INVALID) */
  _Atomic(mb_msg *) txn_commit; /* the commit's request and its asynchronous answer, made */
  _Atomic(void *) txn_op;        /* when its begin is: a commit is never refused for memory */
  mb__rec *rec;           /* NULL unless recording */
  mb_dirty_log dirty;     /* dirty-page tracking (dirty_log.h) */
  void *insp_signal;      /* the dump-on-signal handle, on `loop` */
  int signum;
};

/* The span of a consumer at VTL vtl: max_addr, or alias + max_addr for VTL 2 with an alias;
 * 0 for a VTL the manager does not have. */
uint64_t mb__vtl_span(const mb_mm *mm, uint8_t vtl);
/* Does a VTL-vtl consumer show VTL 0's view at the alias? */
static inline bool mb__vtl_alias(const mb_mm *mm, uint8_t vtl) {
  return vtl == 2 && mm->alias != 0;
}

/* The manager's struct outlives mb_mm_destroy while someone holds a reference. */
void mb__mm_ref(mb_mm *mm);
void mb__mm_unref(mb_mm *mm);
/* MB_EDEADLK when the calling thread runs a loop that an operation on the manager may need
 * (its loop, part_loop, a consumer's, or the target of an add in flight), else 0. */
int mb__mm_check_thread(mb_mm *mm);

/* ---- answers, and steps that must run (membacking.c) --------------------------------------
 * An asynchronous operation whose steps end on other loops answers its caller through an
 * answer made on the caller's loop when it starts: a small actor there and the message that
 * will wake it, so that completing, later and from any thread, allocates nothing and cannot
 * fail. */
typedef void (*mb__answer_fn)(void *arg, bool delivered);
#define API_ANSWER_FIELDS(F) F(mb__answer_fn, fn) F(void *, arg)
#define API_MESSAGES(M) M(api, API_ANSWER, answer, API_ANSWER_FIELDS)
MB_PROTOCOL_DECLARE(api, API_MESSAGES)

typedef struct mb__answer {
  mb_addr to;  /* its actor */
  mb_msg *msg; /* NULL once sent or cancelled */
} mb__answer;

/* On `here`'s thread: 0, or MB_ENOMEM or MB_ESTOPPED with nothing made. */
int mb__answer_make(mb__answer *a, mb_loop *here, mb__answer_fn fn, void *arg);
/* Any thread, once: fn(arg, true) runs on the answer's loop, later (never inside this call);
 * if that loop stopped meanwhile, fn(arg, false) runs instead, on whichever thread the runtime
 * drops the message, to release arg. */
void mb__answer_send(mb__answer *a);
/* On the answer's loop, for one not sent: fn never runs. */
void mb__answer_cancel(mb__answer *a);

/* mb_loop_exec for a step that must run (a teardown, an undo): a refusal for want of memory
 * is retried (every millisecond) until the runtime has memory for it; the only other refusal
 * is a stopped loop's (MB_ESTOPPED), whose actors are gone already. */
int mb__exec_must(mb_loop *loop, mb_exec_fn fn, void *arg);

/* ---- issuing requests -------------------------------------------------------------------- */

/* Reads the operation's value out of its reply (a region id, a state, ...). */
typedef uint64_t (*mb__value_fn)(mb_msg *reply);

/* Asynchronous form: send `msg` as a request from the calling thread's loop; done() runs there
 * with the status and value. `obj`, if not NULL, is the object of a mapping add or replace
 * (`msg`, its obj_ref set): a reference is taken here for the message to lend the region
 * manager, and released after completion unless the manager took it.
 * `mm`, if not NULL, records the completed request when it is recording. */
void mb__api_submit(mb_mm *mm, mb_addr to, mb_msg *msg, mb__value_fn value, mb_object *obj,
                    mb_done_fn done, void *ctx);
/* Blocking form: the status; *value filled when value_fn and value are given. */
int mb__api_call(mb__rec *rec, mb_addr to, mb_msg *msg, mb__value_fn value_fn, uint64_t *value);
/* A blocking request to the manager's region manager, after the thread check (msg is freed). */
int mb__rm_call(mb_mm *mm, mb_msg *msg, mb__value_fn value_fn, uint64_t *value);

/* Kill a consumer that was unlinked from its manager, on its loop: its handle becomes invalid
 * at once, its actor goes, its memory once no reader is in it; then killed(killed_ctx, rc)
 * if set (a mapper's rc: 0 or mb_vam_destroy's error). */
void mb__mapper_kill(mb_mapper *m);
void mb__partition_kill(mb_partition *p);

/* The VA mapper behind a public mapper handle (tests), or NULL. */
mb_vam *mb__mapper_vam(mb_mapper *handle);

/* Close the dump-on-signal handle, if any (inspect.c). */
void mb__inspect_stop(mb_mm *mm);

/* Turn a ranges reply (a malloc'd mb_part_range array) into an mb_range_list. */
mb_range_list *mb__range_list(mb_part_range *ranges, uint32_t count);

#endif
