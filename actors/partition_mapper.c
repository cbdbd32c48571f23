/* partition_mapper.c: the partition mapper actor (see partition_mapper.h). It owns one backend
 * instance and its view (backends/part_view.h: the pieces, the VTL's protections, the
 * sub-ranges they make in the backend) and turns each request into calls of the view or the
 * backend on its loop thread. Its destruction destroys the instance, which unmaps
 * everything. */
#include "partition_mapper.h"

#include <stdlib.h>

#include "fault_inject.h"
#include "mb_hot.h"
#include "part_view.h" /* MB_FI_ALLOC: tests fail these allocations */

/* A PM_RANGES reply carries a malloc'd array: freed if its requester is gone. */
static void pm_dispose(mb_msg *msg) {
  pm_ranges_msg *m = pm_ranges_of(msg);
  if (m) free(m->ranges);
}

MB_PROTOCOL_DEFINE_DISPOSE(pm, PM_MESSAGES, pm_dispose);

typedef struct pm_state {
  const mb_partition_ops *ops;
  void *inst;
  uint8_t *va_base; /* PM_MAP's fallback host (NULL: none) */
  mb_pview view;
} pm_state;

static int pm_do_map(pm_state *s, pm_map_msg *m) {
  uint8_t *host = m->host;
  if (!host) {
    if (!s->va_base || m->gpa > UINTPTR_MAX - (uintptr_t)s->va_base)
      return MB_E_INVALID;
    host = s->va_base + m->gpa;
  }
  return mb_pview_map(&s->view, m->gpa, m->size, host, m->writable);
}

/* The backend's ranges (the effective map), adjacent ones with the same access merged, in a
 * malloc'd array the requester frees (NULL when there are none). */
static int merged_ranges(pm_state *s, mb_part_range **out, uint32_t *count) {
  *out = NULL;
  *count = 0;
  size_t total = s->ops->ranges(s->inst, NULL, 0);
  if (total == 0)
    return 0;
  mb_part_range *r = mb__malloc(total * sizeof *r);
  if (!r)
    return MB_ENOMEM;
  total = s->ops->ranges(s->inst, r, total);
  size_t n = 0;
  for (size_t i = 0; i < total; i++) {
    mb_part_range *last = n ? &r[n - 1] : NULL;
    if (last && last->gpa + last->size == r[i].gpa && last->writable == r[i].writable)
      last->size += r[i].size;
    else
      r[n++] = r[i];
  }
  *out = r;
  *count = (uint32_t)n;
  return 0;
}

static int pm_do_ranges(pm_state *s, pm_ranges_msg *m) {
  return merged_ranges(s, &m->ranges, &m->count);
}

int mb__partition_mapper_ranges(mb_actor *pm, mb_part_range **out, uint32_t *count) {
  return merged_ranges(mb_actor_state(pm), out, count);
}

/* PM_DIRTY_*: a backend without the dirty calls cannot track (its guest writes would be
 * missed), so starting is refused; stopping and collecting then have nothing to do. */
static int pm_do_dirty(pm_state *s, mb_msg *msg) {
  if (s->ops->dirty_start == NULL)
    return msg->kind == PM_DIRTY_START ? MB_E_UNSUPPORTED : 0;
  if (msg->kind == PM_DIRTY_START)
    return s->ops->dirty_start(s->inst, pm_dirty_start_of(msg)->set);
  if (msg->kind == PM_DIRTY_COLLECT) {
    pm_dirty_collect_msg *m = pm_dirty_collect_of(msg);
    return s->ops->dirty_collect(s->inst, m->gpa, m->size);
  }
  s->ops->dirty_stop(s->inst);
  return 0;
}

static int pm_dispatch(pm_state *s, mb_msg *msg) {
  switch ((enum pm_kind)msg->kind) {
  case PM_MAP:
    return pm_do_map(s, pm_map_of(msg));
  case PM_UNMAP: {
    pm_unmap_msg *m = pm_unmap_of(msg);
    return mb_pview_unmap(&s->view, m->gpa, m->size);
  }
  case PM_ACCESS_SET: {
    pm_access_set_msg *m = pm_access_set_of(msg);
    return mb_pview_access_set(&s->view, m->gpa, m->size, m->writable);
  }
  case PM_PROTECT: {
    pm_protect_msg *m = pm_protect_of(msg);
    return mb_pview_protect(&s->view, m->items, m->count);
  }
  case PM_RANGES:
    return pm_do_ranges(s, pm_ranges_of(msg));
  case PM_ACCESS: {
    pm_access_msg *m = pm_access_of(msg);
    if (m->len > SIZE_MAX)
      return MB_E_INVALID;
    return mb_pview_access(&s->view, m->gpa, m->buf, (size_t)m->len, m->write);
  }
  case PM_DIRTY_START:
  case PM_DIRTY_COLLECT:
  case PM_DIRTY_STOP:
    return pm_do_dirty(s, msg);
  default:
    return MB_EINVAL;
  }
}

MB_HOT static void pm_handle(mb_actor *self, mb_msg *msg) {
  pm_state *s = mb_actor_state(self);
  int rc = msg->proto == &pm_protocol ? pm_dispatch(s, msg) : MB_EINVAL;
  mb_reply(msg, rc); /* a one-way message is simply released */
}

static void pm_destroy(mb_actor *self) {
  pm_state *s = mb_actor_state(self);
  s->ops->destroy(s->inst);
  mb_pview_fini(&s->view);
  free(s);
}

/* Backends map and unmap from any thread (one at a time): all of it may run on a thread
 * lending the partition's loop (MB_LOOP_LEND). */
static bool pm_lendable(const mb_msg *m) { return (void)m, true; }
static const mb_actor_type pm_type = {"partition_mapper", pm_handle, pm_destroy, 0, pm_lendable};

int mb_partition_mapper_create(mb_loop *loop, const mb_partition_ops *ops, const void *config,
                               uint64_t max_addr, uint8_t *va_base, mb_actor **out) {
  if (!loop || !ops || !out || !mb_loop_is_current(loop))
    return MB_EINVAL;
  if (mb_loop_stopping(loop))
    return MB_ESTOPPED;
  pm_state *s = mb__calloc(1, sizeof *s);
  if (!s)
    return MB_ENOMEM;
  s->ops = ops;
  s->va_base = va_base;
  int rc = ops->create(max_addr, config, &s->inst);
  if (rc != 0) {
    free(s);
    return rc;
  }
  mb_pview_init(&s->view, ops, s->inst, max_addr);
  mb_actor *a = mb_actor_create(loop, &pm_type, s, ops->name);
  if (!a) { /* checked above: only allocation can fail here */
    ops->destroy(s->inst);
    free(s);
    return MB_ENOMEM;
  }
  *out = a;
  return 0;
}
