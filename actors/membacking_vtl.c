/* membacking_vtl.c: the VTL parts of the API (membacking.h, mb_vtl.h): consumers' spans,
 * protections (requests to the region manager: region_protect.c). Mappers and partitions at a
 * VTL are made in membacking_consumers.c. */
#include "api_internal.h"

uint64_t mb__vtl_span(const mb_mm *mm, uint8_t vtl) {
  if (vtl > MB_VTL_MAX || !((mm->vtls >> vtl) & 1))
    return 0;
  return mb__vtl_alias(mm, vtl) ? mm->alias + mm->max_addr : mm->max_addr;
}

uint64_t mb_mapper_size(const mb_mapper *handle) {
  mb__rs *rs;
  mb_mapper *m = mb__h_enter((mb__handle)handle, MB__H_MAPPER, &rs);
  uint64_t size = m ? mb__vtl_span(m->mm, m->vtl) : 0;
  mb__rs_leave(rs);
  return size;
}

uint8_t mb_mapper_vtl(const mb_mapper *handle) {
  mb__rs *rs;
  mb_mapper *m = mb__h_enter((mb__handle)handle, MB__H_MAPPER, &rs);
  uint8_t vtl = m ? m->vtl : 0;
  mb__rs_leave(rs);
  return vtl;
}

static mb_msg *protect_msg(uint8_t vtl, uint64_t gpa, uint64_t size, int access) {
  rm_protect_msg *m = rm_protect_new();
  if (m)
    m->vtl = vtl, m->gpa = gpa, m->size = size,
    m->access = access < 0 || access > MB_PROT_RW ? UINT8_MAX : (uint8_t)access;
  return m ? &m->hdr : NULL;
}

void mb_protect(mb_mm *mm, uint8_t vtl, uint64_t gpa, uint64_t size, int access,
                mb_done_fn done, void *ctx) {
  mb__api_submit(mm, mm->rm_addr, protect_msg(vtl, gpa, size, access), NULL, NULL, done, ctx);
}

int mb_protect_sync(mb_mm *mm, uint8_t vtl, uint64_t gpa, uint64_t size, int access) {
  return mb__rm_call(mm, protect_msg(vtl, gpa, size, access), NULL, NULL);
}

static mb_msg *protections_msg(uint8_t vtl) {
  rm_protections_msg *m = rm_protections_new();
  if (m)
    m->vtl = vtl;
  return m ? &m->hdr : NULL;
}

static uint64_t list_of(mb_msg *m) { return (uint64_t)(uintptr_t)rm_protections_of(m)->list; }

void mb_protections(mb_mm *mm, uint8_t vtl, mb_done_fn done, void *ctx) {
  mb__api_submit(mm, mm->rm_addr, protections_msg(vtl), list_of, NULL, done, ctx);
}

int mb_protections_sync(mb_mm *mm, uint8_t vtl, mb_prot_list **out) {
  uint64_t v = 0;
  if (out == NULL)
    return MB_E_INVALID;
  int rc = mb__rm_call(mm, protections_msg(vtl), list_of, &v);
  if (rc == 0)
    *out = (mb_prot_list *)(uintptr_t)v;
  return rc;
}
