/* inspect_mtree.c: mb_mm_mtree, the memory map of an inspection (mb_mm_inspect's JSON) as
 * text for people, like QEMU's "info mtree". It reads the JSON text, not the manager, so that
 * a saved dump (mb_mm_inspect_on_signal, membacking-trace --mtree) prints the same.
 *
 * Reading: a small JSON parser (the whole grammar, nesting at most MAX_DEPTH deep) that builds
 * a tree of nodes in one array, strings unescaped in place in a copy of the text.
 * Printing: regions nested by containment, their mappings, the partitions' slots. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "fault_inject.h" /* MB_FI_ALLOC: tests fail these allocations */
#include "membacking.h"

/* ---- reading JSON --------------------------------------------------------------------------- */

enum { MAX_DEPTH = 32 };

/* A value. Nodes are linked by index: 0 (the root, never a child) means none. */
typedef struct jnode {
  char type;        /* '{', '[', '"', '0' (a number), 't', 'f', 'n' */
  bool is_u64;      /* a number that is a non-negative integer below 2^64: u */
  const char *key;  /* its name, in an object */
  const char *str;  /* a string's text */
  uint64_t u;
  size_t child, next;
} jnode;

typedef struct jdoc {
  char *text, *p;
  jnode *v;
  size_t n, cap;
} jdoc;

static void ws(jdoc *d) {
  while (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' || *d->p == '\r') d->p++;
}

static int add(jdoc *d, char type, const char *key, size_t *out) {
  if (d->n == d->cap) {
    size_t cap = d->cap ? 2 * d->cap : 256;
    jnode *v = mb__realloc(d->v, cap * sizeof *v);
    if (!v) return MB_ENOMEM;
    d->v = v;
    d->cap = cap;
  }
  d->v[d->n] = (jnode){.type = type, .key = key};
  *out = d->n++;
  return 0;
}

static int hex4(jdoc *d, uint32_t *out) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++, d->p++) {
    char h = *d->p;
    v <<= 4;
    if (h >= '0' && h <= '9') v |= (uint32_t)(h - '0');
    else if (h >= 'a' && h <= 'f') v |= (uint32_t)(h - 'a' + 10);
    else if (h >= 'A' && h <= 'F') v |= (uint32_t)(h - 'A' + 10);
    else return MB_E_INVALID;
  }
  *out = v;
  return 0;
}

/* Code point cp as UTF-8 at *w: at most 4 bytes for an escape of 6 or 12, so writing in place
 * never overtakes the reader. */
static void put_utf8(char **w, uint32_t cp) {
  unsigned char *o = (unsigned char *)*w;
  int n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
  static const unsigned char lead[] = {0, 0, 0xc0, 0xe0, 0xf0};
  for (int i = n - 1; i > 0; i--, cp >>= 6) o[i] = (unsigned char)(0x80 | (cp & 0x3f));
  o[0] = (unsigned char)(lead[n] | cp);
  *w = (char *)o + n;
}

/* The escape after a backslash, written at *w. */
static int escape(jdoc *d, char **w) {
  char e = *d->p++;
  const char *simple = e ? strchr("\"\\/bfnrt", e) : NULL;
  if (simple) {
    *(*w)++ = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
    return 0;
  }
  uint32_t cp, lo;
  if (e != 'u' || hex4(d, &cp)) return MB_E_INVALID;
  if (cp >= 0xd800 && cp < 0xdc00) {
    if (d->p[0] != '\\' || d->p[1] != 'u') return MB_E_INVALID;
    d->p += 2;
    if (hex4(d, &lo) || lo < 0xdc00 || lo >= 0xe000) return MB_E_INVALID;
    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
  } else if ((cp >= 0xdc00 && cp < 0xe000) || cp == 0) {
    return MB_E_INVALID; /* a lone low surrogate; a NUL would cut the string */
  }
  put_utf8(w, cp);
  return 0;
}

/* A string at d->p (its opening quote), unescaped in place and NUL-terminated. */
static int string(jdoc *d, const char **out) {
  char *w = ++d->p;
  *out = w;
  for (;;) {
    unsigned char c = (unsigned char)*d->p;
    if (c < 0x20) return MB_E_INVALID; /* the end of the text, or a raw control character */
    d->p++;
    if (c == '"') break;
    if (c != '\\') *w++ = (char)c;
    else if (escape(d, &w)) return MB_E_INVALID;
  }
  *w = '\0'; /* at most where the closing quote was */
  return 0;
}

static size_t digits(jdoc *d) {
  size_t n = strspn(d->p, "0123456789");
  d->p += n;
  return n;
}

static int number(jdoc *d, jnode *v) {
  const char *s = d->p;
  bool neg = *d->p == '-';
  d->p += neg;
  if (*d->p == '0' && d->p[1] >= '0' && d->p[1] <= '9') return MB_E_INVALID;
  size_t n = digits(d);
  if (!n) return MB_E_INVALID;
  bool integer = true;
  if (*d->p == '.') {
    d->p++;
    integer = false;
    if (!digits(d)) return MB_E_INVALID;
  }
  if (*d->p == 'e' || *d->p == 'E') {
    d->p++;
    d->p += *d->p == '+' || *d->p == '-';
    integer = false;
    if (!digits(d)) return MB_E_INVALID;
  }
  v->is_u64 = integer && !neg && n <= 20;
  for (const char *q = s; v->is_u64 && q < s + n; q++) {
    unsigned dg = (unsigned)(*q - '0');
    v->is_u64 = v->u <= (UINT64_MAX - dg) / 10;
    v->u = v->u * 10 + dg;
  }
  return 0;
}

static int value(jdoc *d, const char *key, int depth, size_t *out);

/* The members of an object or the elements of an array, after its opening bracket. */
static int members(jdoc *d, size_t self, char close, int depth) {
  size_t prev = 0;
  ws(d);
  if (*d->p == close) {
    d->p++;
    return 0;
  }
  for (;;) {
    const char *key = NULL;
    size_t k;
    ws(d);
    if (close == '}') {
      if (*d->p != '"' || string(d, &key)) return MB_E_INVALID;
      ws(d);
      if (*d->p++ != ':') return MB_E_INVALID;
    }
    int rc = value(d, key, depth + 1, &k);
    if (rc) return rc;
    if (prev) d->v[prev].next = k;
    else d->v[self].child = k;
    prev = k;
    ws(d);
    char c = *d->p++;
    if (c == close) return 0;
    if (c != ',') return MB_E_INVALID;
  }
}

static int value(jdoc *d, const char *key, int depth, size_t *out) {
  static const char *const words[] = {"true", "false", "null"};
  ws(d);
  char c = *d->p;
  char type = c && strchr("{[\"tfn", c) ? c : '0';
  if (depth > MAX_DEPTH) return MB_E_INVALID;
  int rc = add(d, type, key, out);
  if (rc) return rc;
  if (c == '{' || c == '[') {
    d->p++;
    return members(d, *out, c == '{' ? '}' : ']', depth);
  }
  if (c == '"') return string(d, &d->v[*out].str);
  for (size_t i = 0; i < 3; i++) {
    size_t n = strlen(words[i]);
    if (c == words[i][0]) {
      if (strncmp(d->p, words[i], n) != 0) return MB_E_INVALID;
      d->p += n;
      return 0;
    }
  }
  return number(d, &d->v[*out]);
}

static int jparse(jdoc *d, const char *json) {
  size_t root;
  *d = (jdoc){0};
  size_t len = strlen(json) + 1;
  if (!(d->text = mb__malloc(len))) return MB_ENOMEM;
  memcpy(d->text, json, len);
  d->p = d->text;
  int rc = value(d, NULL, 0, &root);
  ws(d);
  return rc ? rc : *d->p ? MB_E_INVALID : 0;
}

static void jfree(jdoc *d) {
  free(d->text);
  free(d->v);
}

/* The member `key` of object node obj, or 0. */
static size_t jget(const jdoc *d, size_t obj, const char *key) {
  if (d->v[obj].type != '{') return 0;
  for (size_t i = d->v[obj].child; i; i = d->v[i].next)
    if (strcmp(d->v[i].key, key) == 0) return i;
  return 0;
}

static bool jnum(const jdoc *d, size_t obj, const char *key, uint64_t *out) {
  size_t i = jget(d, obj, key);
  if (!i || !d->v[i].is_u64) return false;
  *out = d->v[i].u;
  return true;
}

static const char *jstr(const jdoc *d, size_t obj, const char *key) {
  size_t i = jget(d, obj, key);
  return i && d->v[i].type == '"' ? d->v[i].str : NULL;
}

/* The array member `key` of obj (0 if absent or not an array). */
static size_t jarr(const jdoc *d, size_t obj, const char *key) {
  size_t i = jget(d, obj, key);
  return i && d->v[i].type == '[' ? i : 0;
}

/* ---- the tree of regions ------------------------------------------------------------------- */

typedef struct mt_region {
  uint64_t id, start, end, prio;
  const char *name, *type, *state, *access;
  size_t mappings; /* its "mappings" array, 0 if none */
  size_t parent;   /* index + 1 of the smallest region containing it; 0: top level */
  size_t child, next; /* index + 1 of its first child and next sibling, by priority */
} mt_region;

typedef struct mtree {
  jdoc d;
  FILE *out;
  int width;          /* hex digits of an address */
  mt_region *r;
  size_t nr;
  const char **objects; /* the objects seen, numbered from 1 in order of appearance */
  size_t nobjects;
  bool nomem;           /* an object could not be numbered: the map is not complete */
} mtree;

static int region_of(const jdoc *d, size_t node, mt_region *r) {
  uint64_t size = 0;
  *r = (mt_region){.name = jstr(d, node, "name"), .type = jstr(d, node, "type"),
                   .state = jstr(d, node, "state"), .access = jstr(d, node, "access"),
                   .mappings = jarr(d, node, "mappings")};
  bool ok = jnum(d, node, "id", &r->id) && jnum(d, node, "gpa", &r->start) &&
            jnum(d, node, "size", &size) && jnum(d, node, "priority", &r->prio) && r->name &&
            r->type && r->state && r->access && size <= UINT64_MAX - r->start;
  r->end = r->start + size;
  return ok ? 0 : MB_E_INVALID;
}

/* p outranks q: it wins where both are visible. */
static bool outranks(const mt_region *p, const mt_region *q) {
  return p->prio != q->prio ? p->prio > q->prio : p->id < q->id;
}

/* p contains q (q nests under p): a range that holds q's, larger, or the same and outranking. */
static bool contains(const mt_region *p, const mt_region *q) {
  if (p == q || p->start > q->start || q->end > p->end) return false;
  return p->start != q->start || p->end != q->end || outranks(p, q);
}

/* Siblings print in this order: priority, then address, then id. */
static int sibling_cmp(const void *a, const void *b, void *ctx) {
  const mt_region *r = ctx, *p = &r[*(const size_t *)a], *q = &r[*(const size_t *)b];
  if (p->prio != q->prio) return p->prio > q->prio ? -1 : 1;
  if (p->start != q->start) return p->start < q->start ? -1 : 1;
  return p->id < q->id ? -1 : p->id > q->id;
}

/* Each region's parent (the smallest container), then the lists of children in sibling
 * order; *head: the first top-level region (index + 1), 0 when there are none. */
static int nest(mtree *t, size_t *head) {
  for (size_t i = 0; i < t->nr; i++) {
    mt_region *q = &t->r[i], *best = NULL;
    for (size_t j = 0; j < t->nr; j++) {
      mt_region *p = &t->r[j];
      if (contains(p, q) && (!best || p->end - p->start < best->end - best->start ||
                             (p->end - p->start == best->end - best->start && contains(best, p))))
        best = p;
    }
    q->parent = best ? (size_t)(best - t->r) + 1 : 0;
  }
  size_t *order = mb__malloc((t->nr + 1) * sizeof *order);
  if (!order) return MB_ENOMEM;
  for (size_t i = 0; i < t->nr; i++) order[i] = i;
  qsort_r(order, t->nr, sizeof *order, sibling_cmp, t->r);
  for (size_t k = t->nr; k-- > 0;) { /* backwards: each list comes out in order */
    mt_region *q = &t->r[order[k]];
    if (!q->parent) continue;
    q->next = t->r[q->parent - 1].child;
    t->r[q->parent - 1].child = order[k] + 1;
  }
  *head = 0; /* the top level, linked the same way */
  for (size_t k = t->nr; k-- > 0;) {
    if (t->r[order[k]].parent) continue;
    t->r[order[k]].next = *head;
    *head = order[k] + 1;
  }
  free(order);
  return 0;
}

/* ---- printing ------------------------------------------------------------------------------- */

/* A name in double quotes; quotes, backslashes and control characters escaped. */
static void put_name(FILE *out, const char *s) {
  fputc('"', out);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(out, "\\%c", c);
    else if (c < 0x20 || c == 0x7f) fprintf(out, "\\x%02x", c);
    else fputc(c, out);
  }
  fputc('"', out);
}

static void put_range(const mtree *t, uint64_t start, uint64_t end) {
  fprintf(t->out, "[0x%0*" PRIx64 ", 0x%0*" PRIx64 ")", t->width, start, t->width, end);
}

/* The number of the object named (by address) obj, numbering it if it is new. */
static size_t object_number(mtree *t, const char *obj) {
  for (size_t i = 0; i < t->nobjects; i++)
    if (strcmp(t->objects[i], obj) == 0) return i + 1;
  const char **o = mb__realloc(t->objects, (t->nobjects + 1) * sizeof *o);
  if (!o) {
    t->nomem = true; /* printed as object 0, and the call fails */
    return 0;
  }
  t->objects = o;
  t->objects[t->nobjects++] = obj;
  return t->nobjects;
}

static void put_mappings(mtree *t, const mt_region *r, int depth) {
  const jdoc *d = &t->d;
  for (size_t m = r->mappings ? d->v[r->mappings].child : 0; m; m = d->v[m].next) {
    uint64_t off = 0, size = 0, obj_off = 0;
    const char *obj = jstr(d, m, "object"), *access = jstr(d, m, "access");
    jnum(d, m, "offset", &off);
    jnum(d, m, "size", &size);
    jnum(d, m, "object_offset", &obj_off);
    fprintf(t->out, "%*smapping ", 2 * depth, "");
    put_range(t, r->start + off, r->start + off + size);
    fprintf(t->out, " object %zu +0x%" PRIx64 " %s\n", obj ? object_number(t, obj) : 0, obj_off,
            access ? access : "?");
  }
}

static void put_region(mtree *t, size_t i, int depth) {
  const mt_region *r = &t->r[i];
  fprintf(t->out, "%*sregion ", 2 * depth, "");
  put_range(t, r->start, r->end);
  fprintf(t->out, " prio %" PRIu64 " %s %s %s ", r->prio, r->type, r->access, r->state);
  put_name(t->out, r->name);
  fprintf(t->out, " (id %" PRIu64 ")\n", r->id);
  put_mappings(t, r, depth + 1);
  for (size_t c = r->child; c; c = t->r[c - 1].next) put_region(t, c - 1, depth + 1);
}

static void put_partitions(mtree *t, size_t parts) {
  const jdoc *d = &t->d;
  size_t k = 0;
  for (size_t p = parts ? d->v[parts].child : 0; p; p = d->v[p].next, k++) {
    size_t slots = jarr(d, p, "slots"), n = 0;
    const char *backend = jstr(d, p, "backend");
    for (size_t s = slots ? d->v[slots].child : 0; s; s = d->v[s].next) n++;
    fprintf(t->out, "partition %zu (%s): %zu slot%s\n", k, backend ? backend : "?", n,
            n == 1 ? "" : "s");
    for (size_t s = slots ? d->v[slots].child : 0; s; s = d->v[s].next) {
      uint64_t gpa = 0, size = 0;
      const char *access = jstr(d, s, "access");
      jnum(d, s, "gpa", &gpa);
      jnum(d, s, "size", &size);
      fputs("  slot ", t->out);
      put_range(t, gpa, gpa + size);
      fprintf(t->out, " %s\n", access ? access : "?");
    }
  }
}

static void put_header(mtree *t, uint64_t max_addr) {
  const jdoc *d = &t->d;
  const char *overlap = jstr(d, 0, "overlap");
  size_t pend = jget(d, 0, "pending");
  fputs("memory map ", t->out);
  put_range(t, 0, max_addr);
  fprintf(t->out, ", overlap %s\n", overlap ? overlap : "?");
  if (pend && d->v[pend].type == '{') {
    const char *op = jstr(d, pend, "operation");
    uint64_t region = 0, step = 0;
    jnum(d, pend, "region", &region);
    jnum(d, pend, "step", &step);
    size_t undo = jget(d, pend, "undoing");
    fprintf(t->out, "pending %s of region %" PRIu64 ", step %" PRIu64 "%s\n", op ? op : "?",
            region, step, undo && d->v[undo].type == 't' ? ", undoing" : "");
  }
}

/* The regions of the dump, checked. */
static int read_regions(mtree *t) {
  size_t regions = jarr(&t->d, 0, "regions");
  if (!regions) return MB_E_INVALID;
  for (size_t i = t->d.v[regions].child; i; i = t->d.v[i].next) t->nr++;
  t->r = mb__calloc(t->nr + 1, sizeof *t->r);
  if (!t->r) return MB_ENOMEM;
  size_t k = 0;
  for (size_t i = t->d.v[regions].child; i; i = t->d.v[i].next)
    if (region_of(&t->d, i, &t->r[k++])) return MB_E_INVALID;
  return 0;
}

static int hex_digits(uint64_t v) {
  int n = 1;
  while (v >>= 4) n++;
  return n;
}

int mb_mm_mtree(const char *json, FILE *out) {
  mtree t = {.out = out, .width = 8};
  uint64_t max_addr = 0;
  if (!json || !out) return MB_E_INVALID;
  int rc = jparse(&t.d, json);
  if (!rc && (t.d.v[0].type != '{' || !jnum(&t.d, 0, "max_addr", &max_addr))) rc = MB_E_INVALID;
  if (!rc) rc = read_regions(&t);
  size_t head = 0;
  if (!rc) rc = nest(&t, &head);
  if (!rc) {
    if (max_addr > 1 && hex_digits(max_addr - 1) > t.width) t.width = hex_digits(max_addr - 1);
    put_header(&t, max_addr);
    for (size_t c = head; c; c = t.r[c - 1].next) put_region(&t, c - 1, 0);
    put_partitions(&t, jarr(&t.d, 0, "partitions"));
    if (ferror(out)) rc = -EIO;
    else if (t.nomem) rc = MB_ENOMEM;
  }
  free(t.objects);
  free(t.r);
  jfree(&t.d);
  return rc;
}
