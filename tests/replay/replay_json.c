/* replay_json.c: a recursive-descent JSON reader (see replay_json.h). Depth is bounded, so a
 * malformed document cannot exhaust the stack. */
#include "replay_json.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_DEPTH = 64 };

typedef struct reader {
  const char *p;
  int depth;
} reader;

static void skip_ws(reader *r) {
  while (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r') r->p++;
}

static bool literal(reader *r, const char *word) {
  size_t n = strlen(word);
  if (strncmp(r->p, word, n) != 0) return false;
  r->p += n;
  return true;
}

/* A string after its opening quote: escapes decoded (\uXXXX below 0x80 only; others become '?'). */
static char *string_body(reader *r) {
  size_t cap = 16, n = 0;
  char *s = malloc(cap);
  while (s && *r->p && *r->p != '"') {
    char c = *r->p++;
    if (c == '\\') {
      char e = *r->p;
      if (e) r->p++;
      switch (e) {
      case 'n': c = '\n'; break;
      case 't': c = '\t'; break;
      case 'r': c = '\r'; break;
      case 'b': c = '\b'; break;
      case 'f': c = '\f'; break;
      case 'u': {
        unsigned v = 0;
        for (int i = 0; i < 4; i++, r->p++) {
          if (!isxdigit((unsigned char)*r->p)) goto bad;
          v = v * 16 + (unsigned)(isdigit((unsigned char)*r->p) ? *r->p - '0'
                                                               : (tolower(*r->p) - 'a' + 10));
        }
        c = v < 0x80 ? (char)v : '?';
        break;
      }
      case '"': case '\\': case '/': c = e; break;
      default: goto bad;
      }
    }
    if (n + 2 > cap) {
      char *t = realloc(s, cap *= 2);
      if (!t) goto bad;
      s = t;
    }
    s[n++] = c;
  }
  if (!s || *r->p != '"') goto bad;
  r->p++;
  s[n] = '\0';
  return s;
bad:
  free(s);
  return NULL;
}

static bool value(reader *r, rjson *v);

static bool push(rjson *v, size_t *cap) {
  if (v->n == *cap) {
    size_t c = *cap ? 2 * *cap : 8;
    rjson *items = realloc(v->items, c * sizeof *items);
    if (!items) return false;
    v->items = items;
    *cap = c;
  }
  memset(&v->items[v->n++], 0, sizeof v->items[0]);
  return true;
}

/* Consume c if it comes next. */
static bool expect(reader *r, char c) {
  if (*r->p != c) return false;
  r->p++;
  return true;
}

/* An array or an object after its opening bracket. */
static bool container(reader *r, rjson *v, bool object) {
  size_t cap = 0;
  char close = object ? '}' : ']';
  skip_ws(r);
  if (expect(r, close)) return true;
  for (;;) {
    if (!push(v, &cap)) return false;
    rjson *item = &v->items[v->n - 1];
    skip_ws(r);
    if (object) {
      if (!expect(r, '"') || !(item->key = string_body(r))) return false;
      skip_ws(r);
      if (!expect(r, ':')) return false;
    }
    if (!value(r, item)) return false;
    skip_ws(r);
    if (expect(r, ',')) continue;
    return expect(r, close);
  }
}

static bool number(reader *r, rjson *v) {
  const char *start = r->p;
  char *end;
  v->type = RJSON_NUMBER;
  errno = 0;
  v->d = strtod(start, &end);
  if (end == start) return false;
  r->p = end;
  if (isdigit((unsigned char)*start) && strspn(start, "0123456789") == (size_t)(end - start)) {
    v->u = strtoull(start, NULL, 10);
    v->integer = errno == 0;
  }
  return true;
}

static bool value(reader *r, rjson *v) {
  if (++r->depth > MAX_DEPTH) return false;
  skip_ws(r);
  bool ok = true;
  switch (*r->p) {
  case '{': r->p++; v->type = RJSON_OBJECT; ok = container(r, v, true); break;
  case '[': r->p++; v->type = RJSON_ARRAY; ok = container(r, v, false); break;
  case '"':
    r->p++;
    v->type = RJSON_STRING;
    ok = (v->string = string_body(r)) != NULL;
    break;
  case 't': v->type = RJSON_BOOL; v->boolean = true; ok = literal(r, "true"); break;
  case 'f': v->type = RJSON_BOOL; ok = literal(r, "false"); break;
  case 'n': ok = literal(r, "null"); break;
  default: ok = number(r, v); break;
  }
  r->depth--;
  return ok;
}

static void release(rjson *v) {
  for (size_t i = 0; i < v->n; i++) release(&v->items[i]);
  free(v->items);
  free(v->string);
  free(v->key);
}

rjson *rjson_parse(const char *text) {
  rjson *v = calloc(1, sizeof *v);
  reader r = {text, 0};
  if (!v) return NULL;
  bool ok = value(&r, v);
  skip_ws(&r);
  if (!ok || *r.p != '\0') {
    rjson_free(v);
    return NULL;
  }
  return v;
}

void rjson_free(rjson *v) {
  if (!v) return;
  release(v);
  free(v);
}

const rjson *rjson_get(const rjson *v, const char *key) {
  if (!v || v->type != RJSON_OBJECT) return NULL;
  for (size_t i = 0; i < v->n; i++)
    if (strcmp(v->items[i].key, key) == 0) return &v->items[i];
  return NULL;
}

uint64_t rjson_u64(const rjson *v, const char *key, uint64_t dflt) {
  const rjson *m = rjson_get(v, key);
  return m && m->type == RJSON_NUMBER && m->integer ? m->u : dflt;
}

const char *rjson_str(const rjson *v, const char *key, const char *dflt) {
  const rjson *m = rjson_get(v, key);
  return m && m->type == RJSON_STRING ? m->string : dflt;
}

bool rjson_bool(const rjson *v, const char *key, bool dflt) {
  const rjson *m = rjson_get(v, key);
  return m && m->type == RJSON_BOOL ? m->boolean : dflt;
}
