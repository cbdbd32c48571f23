/* json_out.h: the few helpers introspection needs to write JSON to a stdio stream. */
#ifndef MB_JSON_OUT_H
#define MB_JSON_OUT_H

#include <stdbool.h>
#include <stdio.h>

#include "mb_utf8.h"

/* Writes s as a JSON string, quotes included: always valid JSON, whatever the bytes (a byte
 * that starts no valid UTF-8 sequence becomes U+FFFD, as in runtime/trace.c). */
static inline void mb__json_str(FILE *f, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  fputc('"', f);
  while (*p) {
    size_t n = mb__utf8_len(p);
    if (n == 0) {
      fputs("\\ufffd", f);
      p++;
      continue;
    }
    if (*p == '"' || *p == '\\') fputc('\\', f);
    if (*p < 0x20) fprintf(f, "\\u%04x", *p);
    else fwrite(p, 1, n, f);
    p += n;
  }
  fputc('"', f);
}

/* A comma before every element of a list but the first. */
static inline void mb__json_sep(FILE *f, bool *first) {
  if (!*first) fputc(',', f);
  *first = false;
}

#endif
