/* va_mapper.c: the VA mapper actor and guest accesses through it (see va_mapper.h).
 *
 * A mapper is a PROT_NONE reservation in which guest address g is at base + g, plus the tree
 * of established ranges (each with the object it maps, its offset and its access).
 *
 * Invariant: a range in the tree is mapped in the reservation. The actor, the only writer,
 * maps before it inserts and removes before it unmaps (a replacement is one MAP_FIXED, with
 * the old range in the tree until the new one takes its place), holding `lock` only around
 * the tree change; faulting threads take `lock` to look a page up. So a faulting thread that
 * finds its page established lost a race with a change, and retrying is right; one that does
 * not find it has a real miss (eager: unmapped; lazy: ask the mapping manager, then retry).
 *
 * Ownership: every tree node holds its own object reference. VAM_MAP arrays stay the
 * sender's; a forwarded MM_RESOLVE's entry reference stays with the message (its requester
 * drops it).
 */
#include "va_mapper.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "access.h"
#include "mb_errors.h"
#include "range_tree.h"

/* A VAM_RANGES reply carries a malloc'd array: freed if its requester is gone. */
static void vam_dispose(mb_msg *msg) {
  vam_ranges_msg *m = vam_ranges_of(msg);
  if (m) free(m->ranges);
}

MB_PROTOCOL_DEFINE_DISPOSE(vam, VAM_MESSAGES, vam_dispose);

/* Consecutive faults at one address that a retry should have cured: after this many
 * successful resolves, or this many faults on a page found established, the access fails. */
enum { VAM_MAX_RESOLVES = 2, VAM_MAX_RACES = 16 };

typedef struct vam_range {
  mb_rtree_node node; /* established guest range */
  mb_object *obj;     /* own reference */
  uint64_t obj_off;   /* object offset of node.start */
  bool writable;
} vam_range;

struct mb_vam {
  mb_va va;           /* size == max_addr */
  bool eager;
  mb_loop *loop;
  mb_actor *actor;    /* NULL once destroyed (by mb_vam_destroy or its loop stopping) */
  mb_addr addr, mm;
  pthread_mutex_t lock; /* the actor's tree changes vs faulting threads' lookups */
  mb_rtree ranges;
  _Atomic uint64_t faults, resolved, unmapped;
};

static vam_range *range_of(mb_rtree_node *n) {
  return mb_rtree_entry(n, vam_range, node);
}

static void range_free(vam_range *r) {
  mb_object_unref(r->obj);
  free(r);
}

static int map_error(int rc) {
  return rc == -EINVAL ? MB_E_INVALID : rc;
}

/* ---- establishing and tearing down (the actor's thread) -------------------------------------- */

/* Unrecords every established byte of [a, b) (the caller holds `lock`), splitting ranges
 * that straddle an edge; one straddling both takes *spare (set to NULL then). Returns the
 * span from the first to the last byte unrecorded, empty if none. */
static mb_range unrecord(mb_vam *v, uint64_t a, uint64_t b, vam_range **spare) {
  mb_range span = {0, 0};
  mb_rtree_node *it;
  while ((it = mb_rtree_first_overlap(&v->ranges, a, b)) != NULL) {
    vam_range *r = range_of(it);
    uint64_t start = it->start, end = it->end;
    if (span.start == span.end)
      span.start = start > a ? start : a;
    span.end = end < b ? end : b;
    mb_rtree_remove(&v->ranges, it);
    if (start < a && end > b) {
      vam_range *s = *spare;
      *spare = NULL;
      *s = (vam_range){.obj = mb_object_ref(r->obj), .obj_off = r->obj_off + (b - start),
                       .writable = r->writable};
      mb_rtree_insert(&v->ranges, &s->node, b, end);
    }
    if (start < a) {
      mb_rtree_insert(&v->ranges, &r->node, start, a);
    } else if (end > b) {
      r->obj_off += b - start;
      mb_rtree_insert(&v->ranges, &r->node, b, end);
    } else {
      range_free(r);
    }
  }
  return span;
}

/* Maps object bytes at [start, end), replacing whatever was there in one MAP_FIXED (no hole
 * for a concurrent reader), then records them. A failed map leaves the range PROT_NONE, so
 * it is unrecorded all the same. */
static int map_piece(mb_vam *v, uint64_t start, uint64_t end, mb_object *obj, uint64_t obj_off,
                     bool writable) {
  vam_range *r = malloc(sizeof *r), *spare = malloc(sizeof *spare);
  if (r == NULL || spare == NULL) {
    free(r);
    free(spare);
    return MB_ENOMEM;
  }
  int rc = mb_object_map_into(obj, &v->va, start, end - start, obj_off, writable);
  pthread_mutex_lock(&v->lock);
  unrecord(v, start, end, &spare);
  if (rc == 0) {
    *r = (vam_range){.obj = mb_object_ref(obj), .obj_off = obj_off, .writable = writable};
    mb_rtree_insert(&v->ranges, &r->node, start, end);
    r = NULL;
  }
  pthread_mutex_unlock(&v->lock);
  free(r);
  free(spare);
  return map_error(rc);
}

/* Tears down every established byte of [a, b): unrecorded first, then made PROT_NONE with one
 * call over the span (what lies between established pieces is PROT_NONE already). */
static int teardown(mb_vam *v, uint64_t a, uint64_t b) {
  mb_rtree_node *it = mb_rtree_first_overlap(&v->ranges, a, b);
  if (it == NULL)
    return 0;
  vam_range *spare = NULL;
  if (it->start < a && it->end > b && (spare = malloc(sizeof *spare)) == NULL)
    return MB_ENOMEM;
  pthread_mutex_lock(&v->lock);
  mb_range span = unrecord(v, a, b, &spare);
  pthread_mutex_unlock(&v->lock);
  free(spare);
  return map_error(mb_va_unmap(&v->va, span.start, span.end - span.start));
}

static bool same_backing(const vam_range *r, uint64_t at, const mb_object *obj, uint64_t obj_off,
                         bool writable) {
  return r->obj == obj && r->obj_off + (at - r->node.start) == obj_off && r->writable == writable;
}

/* Establishes obj[obj_off, +size) at gpa. Pieces already established with the same backing
 * stay as they are (re-mapping private anonymous memory would lose its contents); pieces
 * with another backing are replaced. */
static int establish(mb_vam *v, const mb_map_entry *e) {
  if (e->obj == NULL || mb_va_check(&v->va, e->gpa, e->size) != 0 ||
      mb_object_check_range(e->obj, e->obj_off, e->size) != 0)
    return MB_E_INVALID;
  uint64_t cur = e->gpa, end = e->gpa + e->size;
  while (cur < end) {
    mb_rtree_node *it = mb_rtree_first_overlap(&v->ranges, cur, end);
    uint64_t off = e->obj_off + (cur - e->gpa);
    uint64_t stop = it == NULL ? end : it->start > cur ? it->start : cur;
    int rc = 0;
    if (stop > cur) { /* a gap */
      rc = map_piece(v, cur, stop, e->obj, off, e->writable);
    } else {
      stop = it->end < end ? it->end : end;
      if (!same_backing(range_of(it), cur, e->obj, off, e->writable))
        rc = map_piece(v, cur, stop, e->obj, off, e->writable);
    }
    if (rc != 0)
      return rc;
    cur = stop;
  }
  return 0;
}

/* ---- the actor ------------------------------------------------------------------------------- */

/* On failure the batch is undone: every entry up to the failing one is torn down (an eager
 * mapper never gets a batch over what it holds, so that is exactly what the batch added). */
static int handle_map(mb_vam *v, const vam_map_msg *m) {
  if (m->count > 0 && m->entries == NULL)
    return MB_E_INVALID;
  for (uint32_t i = 0; i < m->count; i++) {
    int rc = establish(v, &m->entries[i]);
    if (rc == 0)
      continue;
    for (uint32_t j = 0; j <= i; j++) {
      const mb_map_entry *e = &m->entries[j];
      if (mb_va_check(&v->va, e->gpa, e->size) == 0)
        teardown(v, e->gpa, e->gpa + e->size);
    }
    return rc;
  }
  return 0;
}

static int handle_unmap(mb_vam *v, const vam_unmap_msg *m) {
  if (m->size == 0 || !mb_page_aligned(m->gpa) || !mb_page_aligned(m->size) ||
      m->size > UINT64_MAX - m->gpa)
    return MB_E_INVALID;
  if (m->gpa >= v->va.size)
    return 0;
  uint64_t end = m->gpa + m->size;
  return teardown(v, m->gpa, end < v->va.size ? end : v->va.size);
}

/* Established ranges, adjacent ones with equal access merged. */
static int handle_ranges(mb_vam *v, vam_ranges_msg *m) {
  m->ranges = NULL;
  m->count = 0;
  size_t n = mb_rtree_count(&v->ranges);
  if (n == 0)
    return 0;
  mb_part_range *out = malloc(n * sizeof *out);
  if (out == NULL)
    return MB_ENOMEM;
  uint32_t k = 0;
  mb_rtree_node *it;
  mb_rtree_for_each(it, &v->ranges) {
    bool w = range_of(it)->writable;
    if (k > 0 && out[k - 1].gpa + out[k - 1].size == it->start && out[k - 1].writable == w)
      out[k - 1].size += it->end - it->start;
    else
      out[k++] = (mb_part_range){it->start, it->end - it->start, w};
  }
  m->ranges = out;
  m->count = k;
  return 0;
}

static void vam_handle(mb_actor *self, mb_msg *msg) {
  mb_vam *v = mb_actor_state(self);
  if (!mb_msg_is_request(msg)) {
    mb_msg_free(msg);
    return;
  }
  mm_resolve_msg *res = mm_resolve_of(msg);
  if (res != NULL) { /* forwarded by the mapping manager */
    mb_reply(msg, res->found ? establish(v, &res->entry) : MB_E_UNMAPPED);
    return;
  }
  int rc = MB_E_INVALID;
  if (msg->proto == &vam_protocol) {
    switch ((enum vam_kind)msg->kind) {
    case VAM_MAP: rc = handle_map(v, vam_map_of(msg)); break;
    case VAM_UNMAP: rc = handle_unmap(v, vam_unmap_of(msg)); break;
    case VAM_RANGES: rc = handle_ranges(v, vam_ranges_of(msg)); break;
    default: break;
    }
  }
  mb_reply(msg, rc);
}

static void vam_actor_gone(mb_actor *self) {
  mb_vam *v = mb_actor_state(self);
  v->actor = NULL;
}

static const mb_actor_type vam_type = {"va_mapper", vam_handle, vam_actor_gone, 0};

/* ---- life cycle ------------------------------------------------------------------------------ */

int mb_vam_create(mb_loop *loop, mb_addr mapping_manager, uint64_t max_addr, bool eager,
                  mb_vam **out) {
  if (out == NULL || loop == NULL)
    return MB_EINVAL;
  *out = NULL;
  if (max_addr == 0 || !mb_page_aligned(max_addr))
    return MB_E_INVALID;
  if (!mb_loop_is_current(loop))
    return MB_EINVAL;
  int rc = mb_access_init();
  if (rc != 0)
    return rc;
  mb_vam *v = calloc(1, sizeof *v);
  if (v == NULL)
    return MB_ENOMEM;
  v->eager = eager;
  v->loop = loop;
  v->mm = mapping_manager;
  mb_rtree_init(&v->ranges);
  if ((rc = pthread_mutex_init(&v->lock, NULL)) != 0) {
    free(v);
    return -rc;
  }
  if ((rc = mb_va_reserve(&v->va, max_addr)) == 0) {
    v->actor = mb_actor_create(loop, &vam_type, v, eager ? "va_mapper.eager" : "va_mapper.lazy");
    if (v->actor == NULL) {
      mb_va_release(&v->va);
      rc = MB_ENOMEM;
    }
  }
  if (rc != 0) {
    pthread_mutex_destroy(&v->lock);
    free(v);
    return rc;
  }
  v->addr = mb_actor_addr(v->actor);
  *out = v;
  return 0;
}

static void free_subtree(mb_rtree_node *n) {
  while (n != NULL) {
    free_subtree(n->left);
    mb_rtree_node *right = n->right;
    range_free(range_of(n));
    n = right;
  }
}

void mb_vam_destroy(mb_vam *v) {
  if (v == NULL)
    return;
  if (v->actor != NULL)
    mb_actor_destroy(v->actor);
  free_subtree(v->ranges.root);
  mb_va_release(&v->va);
  pthread_mutex_destroy(&v->lock);
  free(v);
}

mb_addr mb_vam_addr(const mb_vam *v) {
  return v->addr;
}

uint8_t *mb_vam_base(const mb_vam *v) {
  return v->va.base;
}

bool mb_vam_eager(const mb_vam *v) {
  return v->eager;
}

mb_vam_stats mb_vam_stats_get(const mb_vam *v) {
  return (mb_vam_stats){
      atomic_load_explicit(&v->faults, memory_order_relaxed),
      atomic_load_explicit(&v->resolved, memory_order_relaxed),
      atomic_load_explicit(&v->unmapped, memory_order_relaxed),
  };
}

/* ---- accesses (any thread) ------------------------------------------------------------------- */

static void count(_Atomic uint64_t *c) {
  atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* 0: not established; 1: read-only; 2: writable. */
static int page_state(mb_vam *v, uint64_t page) {
  pthread_mutex_lock(&v->lock);
  mb_rtree_node *it = mb_rtree_find(&v->ranges, page);
  int s = it == NULL ? 0 : range_of(it)->writable ? 2 : 1;
  pthread_mutex_unlock(&v->lock);
  return s;
}

/* Asks the mapping manager to have `page`'s mapping established here (blocking). */
static int resolve(mb_vam *v, uint64_t page) {
  if (mb_loop_is_current(v->loop))
    return MB_EDEADLK; /* the mapper's own loop would have to answer */
  mm_resolve_msg *m = mm_resolve_new();
  if (m == NULL)
    return MB_ENOMEM;
  m->mapper = v->addr;
  m->gpa = page;
  int rc = mb_call_sync(v->mm, &m->hdr);
  mb_object_unref(m->entry.obj);
  mb_msg_free(&m->hdr);
  return rc;
}

/* Per access: the address of the last fault and how often it recurred after a retry. */
typedef struct vam_retry {
  uint64_t addr;
  unsigned resolves, races;
} vam_retry;

/* A fault at guest address `at`: 0 to retry, or the access's error. */
static int on_fault(mb_vam *v, uint64_t at, bool write, vam_retry *r) {
  count(&v->faults);
  if (at != r->addr)
    *r = (vam_retry){at, 0, 0};
  uint64_t page = at & ~MB_PAGE_MASK;
  int s = page_state(v, page);
  if (s == 1 && write)
    return MB_E_READONLY;
  if (s != 0) /* established after the fault: a race with the actor */
    return ++r->races <= VAM_MAX_RACES ? 0 : MB_E_FAULT;
  int rc = MB_E_UNMAPPED;
  if (!v->eager && r->resolves < VAM_MAX_RESOLVES) {
    rc = resolve(v, page);
    if (rc == 0) {
      count(&v->resolved);
      r->resolves++;
      return 0;
    }
    if (rc == MB_EDEADLK)
      return rc;
    rc = MB_E_UNMAPPED;
  }
  count(&v->unmapped);
  return rc;
}

static int vam_access(mb_vam *v, uint64_t gpa, uint8_t *buf, const uint8_t *src, size_t len) {
  uint64_t max = v->va.size;
  if (gpa > max || len > max - gpa)
    return MB_E_INVALID;
  bool write = src != NULL;
  vam_retry r = {UINT64_MAX, 0, 0};
  size_t done = 0;
  while (done < len) {
    mb_fault f;
    uint8_t *g = v->va.base + gpa + done;
    int rc = write ? mb_access_write(g, src + done, len - done, &f)
                   : mb_access_read(buf + done, g, len - done, &f);
    if (rc == 0)
      return 0;
    if (rc != -EFAULT)
      return map_error(rc);
    done += f.done;
    rc = on_fault(v, gpa + done, write, &r);
    if (rc != 0)
      return rc;
  }
  return 0;
}

int mb_vam_read(mb_vam *v, uint64_t gpa, void *buf, size_t len) {
  if (buf == NULL && len > 0)
    return MB_E_INVALID;
  return vam_access(v, gpa, buf, NULL, len);
}

int mb_vam_write(mb_vam *v, uint64_t gpa, const void *buf, size_t len) {
  if (buf == NULL && len > 0)
    return MB_E_INVALID;
  return vam_access(v, gpa, NULL, buf, len);
}
