/* membacking_dirty.c: the public dirty-page tracking calls (membacking.h): requests to the
 * region manager (region_dirty.c), which owns the manager's set (dirty_log.h). */
#include "api_internal.h"

static mb_msg *dirty_msg(uint32_t kind, uint64_t gpa, uint64_t size, uint64_t *bits) {
  if (kind == RM_DIRTY_START) {
    rm_dirty_start_msg *m = rm_dirty_start_new();
    return m ? &m->hdr : NULL;
  }
  if (kind == RM_DIRTY_STOP) {
    rm_dirty_stop_msg *m = rm_dirty_stop_new();
    return m ? &m->hdr : NULL;
  }
  rm_dirty_sync_msg *m = rm_dirty_sync_new();
  if (m)
    m->gpa = gpa, m->size = size, m->bits = bits;
  return m ? &m->hdr : NULL;
}

static uint64_t pages_of(mb_msg *m) { return rm_dirty_sync_of(m)->pages; }
static uint64_t list_of(mb_msg *m) { return (uint64_t)(uintptr_t)rm_dirty_sync_of(m)->list; }

void mb_dirty_start(mb_mm *mm, mb_done_fn done, void *ctx) {
  mb__api_submit(mm, mm->rm_addr, dirty_msg(RM_DIRTY_START, 0, 0, NULL), NULL, NULL, done, ctx);
}

int mb_dirty_start_sync(mb_mm *mm) {
  return mb__rm_call(mm, dirty_msg(RM_DIRTY_START, 0, 0, NULL), NULL, NULL);
}

void mb_dirty_stop(mb_mm *mm, mb_done_fn done, void *ctx) {
  mb__api_submit(mm, mm->rm_addr, dirty_msg(RM_DIRTY_STOP, 0, 0, NULL), NULL, NULL, done, ctx);
}

int mb_dirty_stop_sync(mb_mm *mm) {
  return mb__rm_call(mm, dirty_msg(RM_DIRTY_STOP, 0, 0, NULL), NULL, NULL);
}

/* A bitmap form without a bitmap would be the ranges form: refused before it is sent. */
void mb_dirty_sync(mb_mm *mm, uint64_t gpa, uint64_t size, uint64_t *bitmap, mb_done_fn done,
                   void *ctx) {
  mb_msg *msg = dirty_msg(RM_DIRTY_SYNC, bitmap ? gpa : 0, bitmap ? size : 0, bitmap);
  mb__api_submit(mm, mm->rm_addr, msg, pages_of, NULL, done, ctx);
}

int mb_dirty_sync_bitmap(mb_mm *mm, uint64_t gpa, uint64_t size, uint64_t *bitmap,
                         uint64_t *pages) {
  uint64_t v = 0;
  if (bitmap == NULL)
    return MB_E_INVALID;
  int rc = mb__rm_call(mm, dirty_msg(RM_DIRTY_SYNC, gpa, size, bitmap), pages_of, &v);
  if (rc == 0 && pages)
    *pages = v;
  return rc;
}

void mb_dirty_sync_ranges(mb_mm *mm, uint64_t gpa, uint64_t size, mb_done_fn done, void *ctx) {
  mb__api_submit(mm, mm->rm_addr, dirty_msg(RM_DIRTY_SYNC, gpa, size, NULL), list_of, NULL,
                 done, ctx);
}

int mb_dirty_sync_ranges_sync(mb_mm *mm, uint64_t gpa, uint64_t size, mb_range_list **out) {
  uint64_t v = 0;
  if (out == NULL)
    return MB_E_INVALID;
  int rc = mb__rm_call(mm, dirty_msg(RM_DIRTY_SYNC, gpa, size, NULL), list_of, &v);
  if (rc == 0)
    *out = (mb_range_list *)(uintptr_t)v;
  return rc;
}
