/* trace_read.c: parsing trace records, one flat JSON object per line (runtime/trace.c).
 *
 * Not a general JSON parser: a record is one object whose values are strings, integers or
 * booleans. Required keys: seq, t_ns, ev, loop, from, to, kind, corr, status, fields;
 * from_name, to_name and t_interp are optional (older traces lack them, t_interp is there only
 * when true). corr is a decimal string (an integer in older traces: both are read). Other
 * keys are skipped when their value is a scalar, so that a newer writer's extra fields do not
 * break the reader. Any other deviation (a nested value, a fraction where an integer belongs,
 * a duplicate key, an unknown event, an address that is not LOOP/SLOT.GEN or "-", text after
 * the object) rejects the line. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

static const char *const ev_names[] = {"send", "call", "forward", "reply", "deliver", "drop"};

const char *trace_ev_name(trace_ev ev) {
  return (unsigned)ev < sizeof ev_names / sizeof ev_names[0] ? ev_names[ev] : NULL;
}

/* ---- one line ------------------------------------------------------------------------------ */

typedef struct cursor {
  char *start, *p, *end;
  char *err;
  size_t errlen;
} cursor;

static int fail(cursor *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = snprintf(c->err, c->errlen, "column %zu: ", (size_t)(c->p - c->start) + 1);
  if (n >= 0 && (size_t)n < c->errlen) vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
  va_end(ap);
  return -1;
}

static void skip_ws(cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r')) c->p++;
}

static int expect(cursor *c, char ch) {
  skip_ws(c);
  if (c->p >= c->end) return fail(c, "expected '%c', found the end of the line", ch);
  if (*c->p != ch) return fail(c, "expected '%c', found '%c'", ch, *c->p);
  c->p++;
  return 0;
}

static int hex4(cursor *c, uint32_t *out) {
  if (c->end - c->p < 4) return fail(c, "truncated \\u escape");
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    char h = *c->p++;
    v <<= 4;
    if (h >= '0' && h <= '9') v |= (uint32_t)(h - '0');
    else if (h >= 'a' && h <= 'f') v |= (uint32_t)(h - 'a' + 10);
    else if (h >= 'A' && h <= 'F') v |= (uint32_t)(h - 'A' + 10);
    else return fail(c, "bad hex digit '%c' in \\u escape", h);
  }
  *out = v;
  return 0;
}

/* Writes code point cp as UTF-8 at *w. At most 4 bytes; the escape it came from took 6 or 12,
 * so writing in place never overtakes the reader. */
static void put_utf8(char **w, uint32_t cp) {
  unsigned char *o = (unsigned char *)*w;
  if (cp < 0x80) {
    *o++ = (unsigned char)cp;
  } else if (cp < 0x800) {
    *o++ = (unsigned char)(0xc0 | cp >> 6);
    *o++ = (unsigned char)(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    *o++ = (unsigned char)(0xe0 | cp >> 12);
    *o++ = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
    *o++ = (unsigned char)(0x80 | (cp & 0x3f));
  } else {
    *o++ = (unsigned char)(0xf0 | cp >> 18);
    *o++ = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
    *o++ = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
    *o++ = (unsigned char)(0x80 | (cp & 0x3f));
  }
  *w = (char *)o;
}

static int unescape(cursor *c, char **w) {
  if (c->p >= c->end) return fail(c, "unterminated string");
  char e = *c->p++;
  const char *simple = strchr("\"\\/bfnrt", e);
  if (e && simple) {
    *(*w)++ = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
    return 0;
  }
  if (e != 'u') return fail(c, "bad escape '\\%c'", e);
  uint32_t cp;
  if (hex4(c, &cp)) return -1;
  if (cp >= 0xd800 && cp < 0xdc00) {
    uint32_t lo;
    if (c->end - c->p < 2 || c->p[0] != '\\' || c->p[1] != 'u')
      return fail(c, "a high surrogate without its low half");
    c->p += 2;
    if (hex4(c, &lo)) return -1;
    if (lo < 0xdc00 || lo >= 0xe000) return fail(c, "a high surrogate without its low half");
    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
  } else if (cp >= 0xdc00 && cp < 0xe000) {
    return fail(c, "a lone low surrogate");
  }
  if (cp == 0) return fail(c, "\\u0000 in a string");
  put_utf8(w, cp);
  return 0;
}

/* A string, unescaped in place; *out points at it, NUL-terminated. */
static int parse_string(cursor *c, char **out) {
  if (expect(c, '"')) return -1;
  char *w = c->p;
  *out = w;
  for (;;) {
    if (c->p >= c->end) return fail(c, "unterminated string");
    char ch = *c->p++;
    if (ch == '"') break;
    if ((unsigned char)ch < 0x20) {
      c->p--;
      return fail(c, "control character 0x%02x in a string", (unsigned char)ch);
    }
    if (ch == '\\') {
      if (unescape(c, &w)) return -1;
    } else {
      *w++ = ch;
    }
  }
  *w = '\0'; /* w is at most at the closing quote, which is consumed */
  return 0;
}

/* An integer in [min, max] (as a two's complement pair: neg means -mag). */
static int parse_int(cursor *c, const char *key, bool allow_neg, uint64_t *mag, bool *neg) {
  skip_ws(c);
  char *s = c->p;
  *neg = c->p < c->end && *c->p == '-';
  if (*neg) c->p++;
  if (c->p >= c->end || *c->p < '0' || *c->p > '9') {
    c->p = s;
    return fail(c, "\"%s\" wants an integer", key);
  }
  if (*c->p == '0' && c->end - c->p > 1 && c->p[1] >= '0' && c->p[1] <= '9')
    return fail(c, "\"%s\": leading zero", key);
  uint64_t v = 0;
  for (; c->p < c->end && *c->p >= '0' && *c->p <= '9'; c->p++) {
    unsigned d = (unsigned)(*c->p - '0');
    if (v > (UINT64_MAX - d) / 10) {
      c->p = s;
      return fail(c, "\"%s\": integer out of range", key);
    }
    v = v * 10 + d;
  }
  if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E'))
    return fail(c, "\"%s\" wants an integer, not a fraction", key);
  if (*neg && !allow_neg) {
    c->p = s;
    return fail(c, "\"%s\" must not be negative", key);
  }
  *mag = v;
  return 0;
}

static int parse_u64(cursor *c, const char *key, uint64_t *out) {
  bool neg;
  return parse_int(c, key, false, out, &neg);
}

static int parse_i32(cursor *c, const char *key, int32_t *out) {
  uint64_t mag;
  bool neg;
  char *s = c->p;
  if (parse_int(c, key, true, &mag, &neg)) return -1;
  if (mag > (neg ? (uint64_t)INT32_MAX + 1 : (uint64_t)INT32_MAX)) {
    c->p = s;
    skip_ws(c);
    return fail(c, "\"%s\": integer out of range", key);
  }
  *out = neg ? (int32_t)(-(int64_t)mag) : (int32_t)mag;
  return 0;
}

/* corr: a string of decimal digits (what the runtime writes: JavaScript readers would round
 * an integer above 2^53), or an integer (older traces). */
static int parse_corr(cursor *c, const char *key, uint64_t *out) {
  skip_ws(c);
  if (c->p >= c->end || *c->p != '"') return parse_u64(c, key, out);
  char *s = c->p, *text;
  if (parse_string(c, &text)) return -1;
  size_t n = strspn(text, "0123456789");
  uint64_t v = 0;
  bool ok = n > 0 && text[n] == '\0' && (n == 1 || text[0] != '0');
  for (size_t i = 0; ok && i < n; i++) {
    unsigned d = (unsigned)(text[i] - '0');
    ok = v <= (UINT64_MAX - d) / 10;
    v = v * 10 + d;
  }
  if (!ok) {
    c->p = s;
    return fail(c, "\"%s\" wants a decimal string of 64 bits at most", key);
  }
  *out = v;
  return 0;
}

static int parse_bool(cursor *c, const char *key, bool *out) {
  skip_ws(c);
  size_t left = (size_t)(c->end - c->p);
  if (left >= 4 && memcmp(c->p, "true", 4) == 0) {
    c->p += 4;
    *out = true;
  } else if (left >= 5 && memcmp(c->p, "false", 5) == 0) {
    c->p += 5;
    *out = false;
  } else {
    return fail(c, "\"%s\" wants true or false", key);
  }
  return 0;
}

/* Skips decimal digits; how many. */
static size_t span_digits(cursor *c) {
  char *s = c->p;
  while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
  return (size_t)(c->p - s);
}

/* The value of a key this reader does not know: any JSON scalar. */
static int skip_value(cursor *c, const char *key) {
  skip_ws(c);
  if (c->p >= c->end) return fail(c, "\"%s\" has no value", key);
  if (*c->p == '"') {
    char *s;
    return parse_string(c, &s);
  }
  if (*c->p == '{' || *c->p == '[') return fail(c, "\"%s\": nested values are not supported", key);
  static const char *const words[] = {"true", "false", "null"};
  for (size_t i = 0; i < 3; i++) {
    size_t n = strlen(words[i]);
    if ((size_t)(c->end - c->p) >= n && memcmp(c->p, words[i], n) == 0) {
      c->p += n;
      return 0;
    }
  }
  char *s = c->p;
  if (*c->p == '-') c->p++;
  size_t digits = span_digits(c);
  if (!digits) {
    c->p = s;
    return fail(c, "\"%s\": bad value", key);
  }
  if (c->p < c->end && *c->p == '.') {
    c->p++;
    if (!span_digits(c)) return fail(c, "\"%s\": bad number", key);
  }
  if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
    c->p++;
    if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
    if (!span_digits(c)) return fail(c, "\"%s\": bad number", key);
  }
  return 0;
}

/* "-" or LOOP/SLOT.GEN with decimal SLOT and GEN. */
static bool valid_addr(const char *a) {
  if (strcmp(a, "-") == 0) return true;
  const char *slash = strrchr(a, '/');
  if (!slash) return false;
  const char *s = slash + 1;
  size_t n1 = strspn(s, "0123456789");
  if (!n1 || n1 > 10 || s[n1] != '.') return false;
  size_t n2 = strspn(s + n1 + 1, "0123456789");
  return n2 && n2 <= 10 && s[n1 + 1 + n2] == '\0';
}

enum {
  K_SEQ, K_T_NS, K_EV, K_LOOP, K_FROM, K_TO, K_KIND, K_FROM_NAME, K_TO_NAME, K_CORR, K_STATUS,
  K_FIELDS, K_T_INTERP, K_COUNT
};
static const char *const keys[K_COUNT] = {"seq",     "t_ns",   "ev",     "loop",
                                          "from",    "to",     "kind",   "from_name",
                                          "to_name", "corr",   "status", "fields",
                                          "t_interp"};
static const unsigned required =
    ~(1u << K_FROM_NAME | 1u << K_TO_NAME | 1u << K_T_INTERP) & ((1u << K_COUNT) - 1);

static int parse_value(cursor *c, trace_rec *r, int k) {
  char *ev;
  switch (k) {
  case K_SEQ: return parse_u64(c, keys[k], &r->seq);
  case K_T_NS: return parse_u64(c, keys[k], &r->t_ns);
  case K_CORR: return parse_corr(c, keys[k], &r->corr);
  case K_T_INTERP: return parse_bool(c, keys[k], &r->t_interp);
  case K_STATUS: return parse_i32(c, keys[k], &r->status);
  case K_EV:
    if (parse_string(c, &ev)) return -1;
    for (int i = 0; trace_ev_name((trace_ev)i); i++) {
      if (strcmp(ev, trace_ev_name((trace_ev)i)) == 0) {
        r->ev = (trace_ev)i;
        return 0;
      }
    }
    return fail(c, "unknown event \"%s\"", ev);
  case K_LOOP: return parse_string(c, &r->loop);
  case K_FROM:
  case K_TO: {
    char **a = k == K_FROM ? &r->from : &r->to;
    if (parse_string(c, a)) return -1;
    return valid_addr(*a) ? 0 : fail(c, "\"%s\": \"%s\" is not an address (LOOP/SLOT.GEN or -)",
                                     keys[k], *a);
  }
  case K_KIND: return parse_string(c, &r->kind);
  case K_FROM_NAME: return parse_string(c, &r->from_name);
  case K_TO_NAME: return parse_string(c, &r->to_name);
  case K_FIELDS: return parse_string(c, &r->fields);
  }
  return -1;
}

static int find_key(const char *k) {
  for (int i = 0; i < K_COUNT; i++)
    if (strcmp(k, keys[i]) == 0) return i;
  return -1;
}

int trace_parse_line(char *line, size_t len, trace_rec *r, char *err, size_t errlen) {
  cursor c = {line, line, line + len, err, errlen};
  static char empty[] = "";
  *r = (trace_rec){.from_name = empty, .to_name = empty};
  if (memchr(line, '\0', len)) {
    c.p = memchr(line, '\0', len);
    return fail(&c, "NUL byte in the line");
  }
  unsigned seen = 0;
  if (expect(&c, '{')) return -1;
  skip_ws(&c);
  if (c.p < c.end && *c.p == '}') return fail(&c, "empty record");
  for (;;) {
    char *key;
    skip_ws(&c);
    char *key_at = c.p;
    if (parse_string(&c, &key) || expect(&c, ':')) return -1;
    int k = find_key(key);
    if (k >= 0 && (seen & 1u << k)) {
      c.p = key_at;
      return fail(&c, "duplicate key \"%s\"", key);
    }
    if (k >= 0) seen |= 1u << k;
    if (k >= 0 ? parse_value(&c, r, k) : skip_value(&c, key)) return -1;
    skip_ws(&c);
    if (c.p < c.end && *c.p == ',') {
      c.p++;
      continue;
    }
    if (expect(&c, '}')) return -1;
    break;
  }
  skip_ws(&c);
  if (c.p != c.end) return fail(&c, "text after the record");
  for (int k = 0; k < K_COUNT; k++)
    if ((required & 1u << k) && !(seen & 1u << k)) return fail(&c, "missing \"%s\"", keys[k]);
  return 0;
}

/* ---- a file -------------------------------------------------------------------------------- */

static int by_seq(const void *a, const void *b) {
  const trace_rec *x = a, *y = b;
  if (x->seq != y->seq) return x->seq < y->seq ? -1 : 1;
  return x->line < y->line ? -1 : x->line > y->line;
}

static int push_rec(trace *t, const trace_rec *r) {
  if (t->nrecs == t->caprecs) {
    size_t cap = t->caprecs ? 2 * t->caprecs : 1024;
    trace_rec *p = realloc(t->recs, cap * sizeof *p);
    if (!p) return -1;
    t->recs = p;
    t->caprecs = cap;
  }
  t->recs[t->nrecs++] = *r;
  return 0;
}

/* Sort by seq (a file written by one process is already in order) and reject duplicates. */
static int order(trace *t, FILE *err) {
  bool sorted = true;
  for (size_t i = 1; i < t->nrecs && sorted; i++) sorted = t->recs[i - 1].seq < t->recs[i].seq;
  if (sorted) return 0;
  qsort(t->recs, t->nrecs, sizeof *t->recs, by_seq);
  for (size_t i = 1; i < t->nrecs; i++) {
    if (t->recs[i - 1].seq == t->recs[i].seq) {
      fprintf(err, "%s:%" PRIu32 ": duplicate seq %" PRIu64 " (also on line %" PRIu32 ")\n",
              t->path, t->recs[i].line, t->recs[i].seq, t->recs[i - 1].line);
      return -1;
    }
  }
  return 0;
}

int trace_read(trace *t, const char *path, FILE *err) {
  *t = (trace){.path = path};
  bool std = strcmp(path, "-") == 0;
  FILE *f = std ? stdin : fopen(path, "r");
  if (!f) {
    fprintf(err, "%s: %s\n", path, strerror(errno));
    return -1;
  }
  int rc = 0;
  uint32_t lineno = 0;
  for (;;) {
    char *line = NULL, msg[256];
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);
    if (n < 0) {
      free(line);
      if (ferror(f)) {
        fprintf(err, "%s: %s\n", path, strerror(errno));
        rc = -1;
      }
      break;
    }
    lineno++;
    size_t len = (size_t)n;
    if (len && line[len - 1] == '\n') len--;
    if (strspn(line, " \t\r") == len) { /* a blank line */
      free(line);
      continue;
    }
    trace_rec r;
    if (trace_parse_line(line, len, &r, msg, sizeof msg)) {
      fprintf(err, "%s:%" PRIu32 ": %s\n", path, lineno, msg);
      free(line);
      rc = -1;
      break;
    }
    r.line = lineno;
    r.buf = line;
    if (push_rec(t, &r)) {
      fprintf(err, "%s: out of memory\n", path);
      free(line);
      rc = -1;
      break;
    }
  }
  if (!std) fclose(f);
  if (!rc) rc = order(t, err);
  for (size_t i = 0; i < t->nrecs; i++) {
    t->ninterp += t->recs[i].t_interp;
    if (i == 0 || t->recs[i].t_ns < t->t0) t->t0 = t->recs[i].t_ns;
    if (i == 0 || t->recs[i].t_ns > t->t1) t->t1 = t->recs[i].t_ns;
  }
  return rc;
}

void trace_free(trace *t) {
  for (size_t i = 0; i < t->nrecs; i++) free(t->recs[i].buf);
  for (size_t i = 0; i < t->nactors; i++) free(t->actors[i].addr);
  free(t->recs);
  free(t->actors);
  free(t->hops);
  free(t->reqs);
  free(t->actor_index);
  *t = (trace){0};
}
