/* va_mapper_prot.c: the VTL protections a VA mapper enforces (va_mapper.h: VAM_PROTECT;
 * the state and its invariants: va_mapper_internal.h, `prot`).
 *
 * An established page has the least of its range's access and its protection: `none` pages
 * are PROT_NONE (the reservation or a PROT_NONE mapping of their bytes: accesses cannot tell),
 * `ro` ones read-only. Every map gives each page its final access at once, so no access ever
 * passes a protection, not even for an instant. */
#include "mb_hot.h"
#include "va_mapper_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "fault_inject.h" /* mb__malloc */
#include "json_out.h"

/* ---- the effective access of established pages (the actor's thread) -------------------------- */

static uint8_t eff_access(bool writable, uint8_t prot) {
  uint8_t m = writable ? MB_PROT_RW : MB_PROT_RO;
  return prot < m ? prot : m;
}

/* The protection at x, and in *end the end of its run, at most `limit`. */
static uint8_t prot_run(const mb_vam *v, uint64_t x, uint64_t limit, uint64_t *end) {
  uint8_t p = mb_prot_at(&v->prot, x, end);
  if (*end > limit)
    *end = limit;
  return p;
}

static bool unprotected(const mb_vam *v, uint64_t a, uint64_t b) {
  return mb_prot_first(&v->prot, a, b) == NULL;
}

/* Maps object bytes at [start, end) (over old pages with `over`) run by run of protection,
 * each with its effective access: `none` runs get the reservation. On failure what it mapped
 * is torn down again (best effort) and the failing run is PROT_NONE. */
static int map_runs(mb_vam *v, uint64_t start, uint64_t end, const mb_object *obj,
                    uint64_t obj_off, bool writable, bool over) {
  uint64_t x = start, y;
  for (; x < end; x = y) {
    uint8_t e = eff_access(writable, prot_run(v, x, end, &y));
    int rc = e != MB_PROT_NONE ? map_object(v, x, y, obj, obj_off + (x - start),
                                            e == MB_PROT_RW)
             : over ? mb_va_unmap(&v->va, x, y - x) : 0;
    if (rc != 0) {
      if (x > start)
        mb_va_unmap(&v->va, start, x - start);
      return rc;
    }
  }
  return 0;
}

/* Over old pages, a run that gets fewer rights than they had is a drop (va_reserve.h). */
MB_HOT int vam__map_prot(mb_vam *v, uint64_t start, uint64_t end, const mb_object *obj,
                  uint64_t obj_off, bool writable, bool over) {
  if (unprotected(v, start, end) && (writable || !over))
    return map_object(v, start, end, obj, obj_off, writable);
  if (over)
    mb_va_drop_begin(&v->va);
  int rc = map_runs(v, start, end, obj, obj_off, writable, over);
  if (over)
    mb_va_drop_end(&v->va);
  return rc;
}

/* Changes the access of established [start, end) (same bytes) to `writable`, run by run of
 * protection: `none` runs stay PROT_NONE. */
int vam__protect_prot(mb_vam *v, uint64_t start, uint64_t end, bool writable) {
  if (unprotected(v, start, end))
    return mb_va_protect(&v->va, start, end - start, writable);
  uint64_t x = start, y;
  for (; x < end; x = y) {
    uint8_t e = eff_access(writable, prot_run(v, x, end, &y));
    int rc = e == MB_PROT_NONE ? 0 : mb_va_protect(&v->va, x, y - x, e == MB_PROT_RW);
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* ---- VAM_PROTECT (the actor's thread) -------------------------------------------------------- */

/* Would protections `it` take what a lock over [a, b) needs? Read for any lock (an item
 * going `none`), write for a writable one (an item going `ro`). */
static bool items_take(const mb_prot_item *it, uint32_t n, uint64_t a, uint64_t b,
                       bool writable) {
  for (uint32_t i = 0; i < n; i++)
    if (overlaps(a, b, it[i].gpa, it[i].gpa + it[i].size) &&
        prot_forbids(it[i].access, writable))
      return true;
  return false;
}

/* Does a held lock need what protections `it` take (`lock` held)? */
static bool protect_needs_locks(const mb_vam *v, const mb_prot_item *it, uint32_t n) {
  mb_rtree_node *l;
  mb_rtree_for_each_overlap(l, &v->locks, it[0].gpa, it[n - 1].gpa + it[n - 1].size) {
    if (items_take(it, n, l->start, l->end, mb_rtree_entry(l, mb_lock, node)->writable))
      return true;
  }
  return false;
}

/* A VAM_PROTECT's items: ascending, touching, each a protection, together in the VA. */
int vam__check_protect(const mb_vam *v, const vam_protect_msg *m) {
  if (m->count == 0 || m->items == NULL)
    return MB_E_INVALID;
  uint64_t at = m->items[0].gpa;
  for (uint32_t i = 0; i < m->count; i++) {
    const mb_prot_item *it = &m->items[i];
    if (it->gpa != at || it->access > MB_PROT_RW || !in_va(v, it->gpa, it->size))
      return MB_E_INVALID;
    at += it->size;
  }
  return 0;
}

/* One established piece [x, y) of r going from protection po to pn: a drop is one mprotect
 * (nothing unmapped), a rise from `none` maps the bytes again (the piece may be the
 * reservation), another rise is one mprotect. */
static int prot_change(mb_vam *v, const vam_range *r, uint64_t x, uint64_t y, uint8_t po,
                       uint8_t pn) {
  uint8_t eo = eff_access(r->writable, po), en = eff_access(r->writable, pn);
  if (en == eo)
    return 0;
  if (en == MB_PROT_NONE)
    return mb_va_protect_none(&v->va, x, y - x);
  if (eo == MB_PROT_NONE)
    return map_object(v, x, y, r->obj, r->obj_off + (x - r->node.start), en == MB_PROT_RW);
  return mb_va_protect(&v->va, x, y - x, en == MB_PROT_RW);
}

/* The established pages of the range that `from` and `to` cover (both complete covers of it,
 * ascending) go from the protections `from` to `to`. */
static int prot_apply(mb_vam *v, const mb_prot_item *from, uint32_t nf, const mb_prot_item *to,
                      uint32_t nt) {
  uint64_t a = to[0].gpa, b = to[nt - 1].gpa + to[nt - 1].size;
  uint32_t i = 0, j = 0;
  mb_rtree_node *it;
  mb_rtree_for_each_overlap(it, &v->ranges, a, b) {
    uint64_t x = it->start > a ? it->start : a, end = it->end < b ? it->end : b;
    while (x < end) {
      while (i + 1 < nf && from[i].gpa + from[i].size <= x)
        i++;
      while (j + 1 < nt && to[j].gpa + to[j].size <= x)
        j++;
      uint64_t y = from[i].gpa + from[i].size < end ? from[i].gpa + from[i].size : end;
      if (to[j].gpa + to[j].size < y)
        y = to[j].gpa + to[j].size;
      int rc = prot_change(v, range_of(it), x, y, from[i].access, to[j].access);
      if (rc != 0)
        return vam__host_refused(map_error(rc));
      x = y;
    }
  }
  return 0;
}

/* VAM_PROTECT (va_mapper.h): all or nothing. The pages change in place and the map after
 * them, in one critical section (see `prot`); on a failure the pages go back (best effort)
 * and the map stays as it was. A held lock that needs what it takes parks it first. */
int vam__handle_protect(mb_vam *v, const vam_protect_msg *m, vam_job *job) {
  int rc = vam__check_protect(v, m);
  if (rc != 0)
    return rc;
  uint64_t a = m->items[0].gpa, b = m->items[m->count - 1].gpa + m->items[m->count - 1].size;
  mb_prot_item *old = NULL;
  size_t nold = 0;
  if ((rc = mb_prot_items(&v->prot, a, b - a, &old, &nold)) != 0)
    return rc;
  vam_lock(v);
  if (protect_needs_locks(v, m->items, m->count)) {
    rc = vam__park(v, job);
  } else {
    rc = prot_apply(v, old, (uint32_t)nold, m->items, m->count);
    if (rc == 0)
      rc = mb_prot_set_items(&v->prot, m->items, m->count);
    if (rc != 0)
      prot_apply(v, m->items, m->count, old, (uint32_t)nold);
  }
  vam_unlock(v);
  free(old);
  return rc;
}

/* ---- what the pages show --------------------------------------------------------------------- */

/* Appends [a, b) with access w to out[0..*k), merged with the last one when they touch with
 * equal access (room is there). */
static void ranges_put(mb_part_range *out, uint32_t *k, uint64_t a, uint64_t b, bool w) {
  if (*k > 0 && out[*k - 1].gpa + out[*k - 1].size == a && out[*k - 1].writable == w)
    out[*k - 1].size += b - a;
  else
    out[(*k)++] = (mb_part_range){a, b - a, w};
}

/* Established ranges with their effective access (`none` pages left out), adjacent ones with
 * equal access merged. Each stored protection splits at most one range into three more. */
int vam__handle_ranges(mb_vam *v, vam_ranges_msg *m) {
  m->ranges = NULL;
  m->count = 0;
  size_t n = mb_rtree_count(&v->ranges);
  if (n == 0)
    return 0;
  n += 3 * mb_prot_count(&v->prot);
  mb_part_range *out = mb__malloc(n * sizeof *out);
  if (out == NULL)
    return MB_ENOMEM;
  uint32_t k = 0;
  mb_rtree_node *it;
  mb_rtree_for_each(it, &v->ranges) {
    bool w = range_of(it)->writable;
    for (uint64_t x = it->start, y; x < it->end; x = y) {
      uint8_t e = eff_access(w, prot_run(v, x, it->end, &y));
      if (e != MB_PROT_NONE)
        ranges_put(out, &k, x, y, e == MB_PROT_RW);
    }
  }
  m->ranges = out;
  m->count = k;
  return 0;
}

/* ---- locks (any thread, `lock` held) --------------------------------------------------------- */

/* The first page of [a, b) whose protection, or a protection change parked or queued there,
 * forbids a lock's access (read for any lock, write for a writable one); b if none. */
uint64_t vam__first_protected(const mb_vam *v, uint64_t a, uint64_t b, bool writable) {
  uint64_t q = b;
  for (const mb_prot_range *p = mb_prot_first(&v->prot, a, b); p != NULL;
       p = mb_prot_next(p, a, b))
    if (prot_forbids(p->access, writable)) { /* the map holds `none` and `ro` only */
      q = p->node.start > a ? p->node.start : a;
      break;
    }
  for (size_t i = 0; i < v->njobs; i++) {
    const vam_protect_msg *m = vam_protect_of(v->jobs[i].msg);
    for (uint32_t k = 0; m != NULL && v->jobs[i].a < v->jobs[i].b && k < m->count; k++) {
      uint64_t s = m->items[k].gpa > a ? m->items[k].gpa : a;
      if (s < q && items_take(&m->items[k], 1, a, q, writable))
        q = s;
    }
  }
  return q;
}

/* The stored protections, as the JSON array's members (mb__vam_inspect). */
void vam__inspect_prot(const mb_vam *v, FILE *f) {
  bool first = true;
  for (const mb_prot_range *p = mb_prot_first(&v->prot, 0, UINT64_MAX); p != NULL;
       p = mb_prot_next(p, 0, UINT64_MAX)) {
    mb__json_sep(f, &first);
    fprintf(f, "{\"gpa\":%" PRIu64 ",\"size\":%" PRIu64 ",\"access\":\"%s\"}", p->node.start,
            p->node.end - p->node.start, p->access == MB_PROT_NONE ? "none" : "ro");
  }
}
