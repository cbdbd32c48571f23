/* mb_errors.h: the memory manager's error codes: the closed set of the scenario format
 * (spec/scenario.md), shared by mem/, backends/ and actors/. Functions also return negative
 * errno values (system failures) and the runtime's MB_E* codes (mb_runtime.h). */
#ifndef MB_ERRORS_H
#define MB_ERRORS_H

#include "mb_runtime.h" /* MB_ENOMEM, MB_EGONE */

enum {
  MB_E_OVERLAP = -2001,     /* a region breaks the overlap policy; a mapping overlaps another */
  MB_E_INVALID = -2002,     /* malformed: unaligned, zero size, wraps, beyond max_addr, outside */
  MB_E_NOTFOUND = -2003,    /* no such region, object, mapper, partition or lock */
  MB_E_UNMAPPED = -2004,    /* a VA mapper access touched a guest address with no mapping */
  MB_E_READONLY = -2005,    /* a VA mapper write touched a read-only mapping */
  MB_E_MMIO = -2006,        /* a guest access the partition does not map (or maps read-only) */
  MB_E_FAULT = -2007,       /* a guest access the partition maps but the backing cannot serve */
  MB_E_UNSUPPORTED = -2008, /* not (yet) in this build */
  MB_E_PROTECTED = -2009,   /* an access at a VTL that the VTL's protection forbids */
};

/* The scenario token of a code ("overlap", ...), or NULL for codes outside the set. */
static inline const char *mb_error_token(int err) {
  switch (err) {
  case MB_E_OVERLAP: return "overlap";
  case MB_E_INVALID: return "invalid";
  case MB_E_NOTFOUND: return "notfound";
  case MB_E_UNMAPPED: return "unmapped";
  case MB_E_READONLY: return "readonly";
  case MB_E_MMIO: return "mmio";
  case MB_E_FAULT: return "fault";
  case MB_E_UNSUPPORTED: return "unsupported";
  case MB_E_PROTECTED: return "protected";
  default: return 0;
  }
}

/* The scenario code of any status a call answers: mb_error_token's, or "resource" for what
 * the host refused (a negative errno, or the runtime's out of memory); NULL for the runtime's
 * other codes. */
static inline const char *mb_result_token(int status) {
  const char *tok = mb_error_token(status);
  if (tok) return tok;
  return status == MB_ENOMEM || (status < 0 && status > MB_EGONE) ? "resource" : 0;
}

#endif
