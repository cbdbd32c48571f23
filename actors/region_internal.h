/* region_internal.h: the region manager's state, shared by its files: region_manager.c (the
 * actor, its requests and operations) and region_txn.c (transactions and the consumer views
 * that replaces and commits send). Not installed; on the region manager's thread only. */
#ifndef MB_REGION_INTERNAL_H
#define MB_REGION_INTERNAL_H

#include <stddef.h>

#include "mapping_manager.h"
#include "prot_map.h"
#include "range_tree.h"
#include "region_manager.h"
#include "region_visibility.h"

/* What the consumers show, as the manager's state gives it: the visible pieces (what each
 * partition maps: range and region access, ascending) and the visible mappings (what the VA
 * mappers establish: ascending, apart, touching ones of one object run merged; each entry
 * holds an object reference). */
typedef struct rm_piece {
  uint64_t start, end;
  bool writable;
} rm_piece;

typedef struct rm_view {
  rm_piece *pieces;
  size_t npieces, cap_pieces;
  mb_map_entry *entries;
  size_t nentries, cap_entries;
  bool borrowed; /* its entries hold no references: read only while the mappings they come
                  * from stand (an operation's own views, from its planning to its last call) */
} rm_view;

/* A partition: a consumer at a VTL, with VTL 0's view at the alias too (alias). */
typedef struct rm_part {
  mb_addr addr;
  uint8_t vtl;
  bool alias;
} rm_part;

typedef struct rm_undo rm_undo;

/* A transaction (region_txn.c): open from RM_TXN_BEGIN to the end of its RM_TXN_COMMIT. */
typedef struct rm_txn {
  bool open;
  rm_view old;  /* what the consumers show: the state at RM_TXN_BEGIN */
  rm_undo *log; /* how to get back there, newest first */
} rm_txn;

typedef struct rm_mapping {
  mb_rtree_node node; /* in its region's tree: the absolute guest range */
  mb_object *obj;     /* our own reference */
  uint64_t obj_off;   /* object offset of node.start */
  bool writable;
} rm_mapping;

/* A region as one view sees it. A region of VTL v has one of these per view n >= v that the
 * manager has ("shadows"), chained from its own view's up (next); the head (its own view's)
 * alone is in the manager's id tree. Each lives in view space (n * stride + guest address) in
 * view n's visibility set, with its own copy of the region's mappings; an operation on the
 * region changes every shadow together, as one operation. */
typedef struct rm_region {
  mb__vis_region vis;   /* view-space range, priority, mapped, visible bytes */
  mb_rtree_node by_id;  /* [id, id + 1): the head only */
  uint32_t id;          /* the head's, in every shadow */
  bool writable;        /* the map access, while mapped */
  bool device;
  uint8_t vtl, view;    /* the region's VTL; the view this shadow is in */
  struct rm_region *next; /* the shadow in the next view up, or NULL */
  mb_name name;
  mb_rtree mappings;    /* view space */
} rm_region;

/* One nested call of an operation, and (for undo) its inverse: kind ^ 1. MM_REPLACE sends
 * the new mapping of a mapping replace (its inverse, MM_RESTORE, the old ones), or the
 * range's entries of op->fwd for a commit (MM_RESTORE those of op->inv). */
enum { CALL_PM_MAP, CALL_PM_UNMAP, CALL_MM_MAP, CALL_MM_UNMAP, CALL_MM_REPLACE, CALL_MM_RESTORE,
       CALL_PM_ACCESS, CALL_PM_ACCESS_BACK, /* PM_ACCESS_SET to c->writable, and back */
       CALL_PM_PROTECT, CALL_PM_PROTECT_BACK, /* PM_PROTECT of op->prot.fwd, and of .inv */
       CALL_MM_PROTECT, CALL_MM_PROTECT_BACK, /* MM_PROTECT likewise */
       CALL_PM_DIRTY_START, CALL_PM_DIRTY_STOP, CALL_PM_DIRTY_COLLECT,
       CALL_NOTHING }; /* the inverse of a collect: nothing is sent */

typedef struct rm_call {
  struct rm_op *op;
  uint8_t *host;      /* PM_MAP: the host VA of gpa (its view's primary mapper) */
  uint8_t kind;
  bool writable;      /* PM_MAP: the piece's access; PM_UNMAP: the access its undo restores;
                       * MM_*: the access of the mappings in the range */
  bool done;          /* answered 0 on the way forward */
  bool one;           /* MM_MAP of `maps` alone: a new mapping, in no tree yet (mapping add) */
  mb_addr to;
  uint64_t gpa, size;
  rm_mapping *maps;   /* MM_*: the first of a region's mappings that fill [gpa, gpa + size)
                       * (the region's tree stays as it is until commit); a mapping replace's
                       * MM_REPLACE: the new mapping (MM_REPLACE of a commit: NULL, the views) */
  rm_mapping *old;    /* a mapping replace's: the first of the region's mappings in the range
                       * before it (NULL: none), what its inverse puts back */
} rm_call;

enum { RM_MAX_STEPS = 4, RM_VIEWS = MB_VTL_MAX + 1 };

/* One shadow's part of an operation on a region. */
typedef struct rm_sh {
  rm_region *region;
  mb__vis_diff diff;
  rm_mapping *mapping;    /* mapping add and replace: the new mapping */
  rm_mapping *spare;      /* mapping remove and replace: the right part of a mapping split in two */
} rm_sh;

/* The protection items an operation sends (a protect, a partition add, a commit): forward
 * and back, each a complete cover of one guest range of VTL vtl, ascending. */
typedef struct rm_prot_calls {
  uint8_t vtl;
  mb_prot_item *fwd, *inv;
  size_t nfwd, ninv;
} rm_prot_calls;

typedef struct rm_op {
  mb_msg *req;
  uint32_t kind;          /* the request's kind */
  rm_region *region;      /* the head of the region it changes, or NULL */
  rm_sh sh[RM_VIEWS];     /* the region's shadows, own view first */
  size_t nsh;
  rm_call *calls;
  size_t ncalls, cap;
  size_t step_at[RM_MAX_STEPS + 1]; /* step i is calls [step_at[i], step_at[i + 1]); [0] = 0 */
  size_t nsteps;
  size_t step;            /* forward: the next step to send; undoing: the last one undone */
  size_t pending;         /* replies due, plus one while a step is being sent */
  bool undoing;
  int err;                /* the first failure */
  /* what commit applies */
  bool writable;          /* region map: the new access */
  uint64_t start, end;    /* mapping remove and replace: the guest range (own view) */
  rm_part partition;      /* partition add */
  bool published;         /* the gpa map shows this operation as busy */
  /* transaction commit: what MM_REPLACE calls send (fwd) and undo (inv) */
  const rm_view *fwd, *inv;
  rm_view own_old, own_new;
  rm_prot_calls prot[RM_VIEWS]; /* by VTL: protect, partition add and commit */
} rm_op;

typedef struct rm_state {
  mb_rm_config cfg;
  mb__vis_set vis[RM_VIEWS]; /* per view the manager has (cfg.geom.vtls) */
  mb_rtree ids;
  uint32_t next_id;
  rm_part *parts;
  size_t nparts, cap_parts;
  rm_txn txn;
  rm_op *op;              /* the operation in flight: NULL or &op_buf */
  rm_op op_buf;           /* reused by every operation (serialized: one at a time); its
                           * calls array is grow-only and kept between operations. Idle, it
                           * holds nothing: no request, mapping or spare, an empty diff */
  rm_mapping *free_mapping; /* a mapping's memory for the next add or replace (one replace
                             * in place frees one and takes one: no allocation) */
  bool dirty_on;          /* dirty tracking (region_dirty.c) */
  mb_prot_map prot[RM_VIEWS]; /* per VTL that can be protected (region_protect.c) */
  mb_prot_map *prot_begin;    /* inside a transaction that protected: every VTL's map as it
                               * was at the begin (NULL: nothing protected yet) */
} rm_state;

static inline rm_state *state_of(rm_op *op) {
  return (rm_state *)(void *)((char *)op - offsetof(rm_state, op_buf));
}

static inline mb__vis_set *vis_of(rm_state *st, const rm_region *r) {
  return &st->vis[r->view];
}

/* View space: view n's guest address g. */
static inline uint64_t rm_vs(const rm_state *st, unsigned view, uint64_t g) {
  return view * st->cfg.geom.stride + g;
}
static inline unsigned rm_view_at(const rm_state *st, uint64_t vs) {
  return (unsigned)(vs / st->cfg.geom.stride);
}
static inline bool rm_has_view(const rm_state *st, unsigned view) {
  return (st->cfg.geom.vtls >> view) & 1;
}

static inline rm_region *region_of_vis(mb__vis_region *v) {
  return v ? mb_rtree_entry(v, rm_region, vis) : NULL;
}

static inline rm_mapping *mapping_of(mb_rtree_node *n) {
  return n ? mb_rtree_entry(n, rm_mapping, node) : NULL;
}

static inline uint64_t r_start(const rm_region *r) { return r->vis.node.start; }
static inline uint64_t r_end(const rm_region *r) { return r->vis.node.end; }
static inline uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }


/* A mapping's entry cut to [start, end) (no reference taken): writable only where the
 * mapping and the access both are. */
static inline mb_map_entry rm__clip_entry(const rm_mapping *m, uint64_t start, uint64_t end,
                                          bool writable) {
  uint64_t s = max64(m->node.start, start), e = min64(m->node.end, end);
  return (mb_map_entry){s, e - s, m->obj, m->obj_off + (s - m->node.start),
                        m->writable && writable};
}

/* region_manager.c */
/* A region (its head) with all its shadows. */
void rm__region_free(rm_state *st, rm_region *r);    /* unlinks it too */
void rm__region_unlink(rm_state *st, rm_region *r);  /* from the id tree and every view */
void rm__region_destroy(rm_region *r);               /* an unlinked one */
void rm__mapping_free(rm_mapping *m);
int rm__op_add_call(rm_op *op, rm_call c);
void rm__op_end_step(rm_op *op);
/* A call of `kind` over view-space [gpa, gpa + size) (inside one view) to every partition
 * that shows that view, or to p alone, each in its own addresses (rm_call.gpa; .host the
 * view's primary mapper's VA of it). */
int rm__plan_pm(rm_state *st, rm_op *op, int kind, uint64_t gpa, uint64_t size, bool writable);
int rm__plan_pm_one(rm_state *st, rm_op *op, const rm_part *p, int kind, uint64_t gpa,
                    uint64_t size, bool writable);

/* region_txn.c: views */
void rm__view_free(rm_view *v);
void rm__view_clear(rm_view *v); /* empty, its arrays kept for the next use */
/* Appends e (with a reference of its own unless v is borrowed), merged into the last entry
 * when it continues it. 0, or MB_ENOMEM. */
int rm__view_push(rm_view *v, mb_map_entry e);
/* Appends r's mappings in [s, e), cut to it, at the access `writable` allows. 0 or MB_ENOMEM. */
int rm__view_push_mappings(rm_view *v, const rm_region *r, uint64_t s, uint64_t e, bool writable);
/* The view of the manager's whole state. 0 or MB_ENOMEM (v empty). */
int rm__view_capture(rm_state *st, rm_view *v);
/* The entries of v inside [a, b), cut to it, with references of their own. */
int rm__view_clip(const rm_view *v, uint64_t a, uint64_t b, mb_map_entry **out, uint32_t *n);

/* region_txn.c: transactions. The rm__txn_* changes apply to the state at once and log
 * their inverse: 0, or MB_ENOMEM with nothing changed. */
int rm__txn_begin(rm_state *st);
int rm__txn_region_added(rm_state *st, rm_region *r);
int rm__txn_region_mapped(rm_state *st, rm_region *r, bool mapped, bool writable);
int rm__txn_region_remove(rm_state *st, rm_region *r);
/* Every mapping byte of r in [a, b) goes; nm (may be NULL) comes in. */
int rm__txn_mappings(rm_state *st, rm_region *r, uint64_t a, uint64_t b, rm_mapping *nm);
/* The undo log's newest entry, and undoing back to it: a request applied to several shadows
 * that fails on one takes back what it did to the others. */
rm_undo *rm__txn_mark(rm_state *st);
void rm__txn_undo_to(rm_state *st, rm_undo *mark);
/* Plans the commit into op (kind RM_TXN_COMMIT): the consumer calls from the state at begin
 * to the current one. 0 or MB_ENOMEM. */
int rm__txn_plan_commit(rm_state *st, rm_op *op);
/* The guest range the commit changes (empty: none) and how many pieces it adds; and, for
 * the published map, each piece it drops (add false) and adds (add true). */
mb_range rm__txn_span(const rm_op *op, size_t *adds);
void rm__txn_each_piece(const rm_op *op, void (*fn)(void *ctx, const rm_piece *p, bool add),
                        void *ctx);
/* Ends the transaction: kept (ok) or the state put back as it was at begin. */
void rm__txn_end(rm_state *st, bool ok);

/* ---- dirty tracking (region_dirty.c) ---------------------------------------------------- */

static inline bool rm__is_dirty(uint32_t kind) {
  return kind == RM_DIRTY_START || kind == RM_DIRTY_SYNC || kind == RM_DIRTY_STOP;
}
/* Plans an RM_DIRTY_* request: one step of calls to every partition. */
int rm__dirty_plan(rm_state *st, rm_op *op);
/* Once every call succeeded: the request's effect (a sync's answer): 0 or MB_ENOMEM. */
int rm__dirty_end(rm_state *st, rm_op *op);
/* A partition add while tracking is on starts tracking in it first. */
int rm__dirty_plan_partition(rm_state *st, rm_op *op, const rm_part *p);
/* The message of a dirty call (NULL: out of memory). */
mb_msg *rm__dirty_msg(rm_state *st, const rm_call *c, int kind);

/* ---- VTL protections (region_protect.c) ------------------------------------------------ */

void rm__prot_init(rm_state *st);
void rm__prot_fini(rm_state *st);
/* Can VTL vtl be protected (the manager has it and a higher one)? */
bool rm__prot_vtl_ok(const rm_state *st, unsigned vtl);
/* Plans an RM_PROTECT: the map changes now (MB_ENOMEM: nothing did), then PM_PROTECT to the
 * VTL's partitions and MM_PROTECT; undone (rm__prot_undo) if a call fails. */
int rm__prot_plan(rm_state *st, rm_op *op);
/* The operation failed: the maps as they were before it planned. */
void rm__prot_undo(rm_state *st, rm_op *op);
/* Frees what the operation's protection calls hold. */
void rm__prot_op_free(rm_op *op);
/* A new partition at a protectable VTL gets the VTL's protections before any piece. */
int rm__prot_plan_partition(rm_state *st, rm_op *op, const rm_part *p);
/* An RM_PROTECT inside a transaction: applied to the state at once. */
int rm__prot_txn(rm_state *st, rm_protect_msg *m);
/* A commit's protection calls: one step's PM_PROTECT (pm) or MM_PROTECT calls. */
int rm__prot_plan_commit(rm_state *st, rm_op *op, bool pm);
/* A transaction ends: kept, or the maps as they were at its begin. */
void rm__prot_txn_end(rm_state *st, bool ok);
/* The message of a protection call (NULL: out of memory). */
mb_msg *rm__prot_msg(rm_state *st, const rm_call *c, int kind);
/* RM_PROTECTIONS: the VTL's protected ranges (a malloc'd mb_prot_list). */
int rm__prot_list(rm_state *st, uint8_t vtl, void **out);
/* The view-space range a protect changes, and the gpa map ranges it may add. */
mb_range rm__prot_span(const rm_state *st, const rm_op *op, size_t *adds);
/* A commit's span and adds widened by its protections' covers. */
void rm__prot_widen(const rm_state *st, const rm_op *op, mb_range *span, size_t *adds);
/* Publishes a successful protect's change in the gpa map (between its edit and end). */
void rm__prot_publish(rm_state *st, const rm_op *op);

#endif
