/* mb_utf8.h (internal): UTF-8 validation for the JSON writers (runtime/trace.c,
 * actors/json_out.h). Names and fields come from users and may hold any bytes; JSON text must
 * be UTF-8, so each writer puts "\ufffd" for every byte that does not start a valid sequence. */
#ifndef MB_UTF8_H
#define MB_UTF8_H

#include <stddef.h>

/* The length (1-4) of the well-formed UTF-8 sequence at s, or 0 if s starts none: a stray
 * continuation byte, an overlong form, a surrogate, a code point above U+10FFFF, or a sequence
 * cut short (by the terminating NUL, which is never a continuation byte, so a NUL-terminated
 * string is never read past its end). Never 0 for an ASCII byte, NUL included. */
static inline size_t mb__utf8_len(const unsigned char *s) {
  unsigned c = s[0];
  size_t n;
  unsigned lo = 0x80, hi = 0xbf; /* the range of the second byte */
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) n = 2;
  else if (c >= 0xe0 && c <= 0xef) n = 3;
  else if (c >= 0xf0 && c <= 0xf4) n = 4;
  else return 0;
  if (c == 0xe0) lo = 0xa0;      /* overlong */
  else if (c == 0xed) hi = 0x9f; /* surrogates */
  else if (c == 0xf0) lo = 0x90; /* overlong */
  else if (c == 0xf4) hi = 0x8f; /* above U+10FFFF */
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < n; i++)
    if (s[i] < 0x80 || s[i] > 0xbf) return 0;
  return n;
}

#endif
