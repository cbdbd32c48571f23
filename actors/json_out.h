/* json_out.h: the few helpers introspection needs to write JSON to a stdio stream. */
#ifndef MB_JSON_OUT_H
#define MB_JSON_OUT_H

#include <stdio.h>

/* Writes s as a JSON string, quotes included. */
static inline void mb__json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', f);
    if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
    else fputc(*s, f);
  }
  fputc('"', f);
}

/* A comma before every element of a list but the first. */
static inline void mb__json_sep(FILE *f, bool *first) {
  if (!*first) fputc(',', f);
  *first = false;
}

#endif
