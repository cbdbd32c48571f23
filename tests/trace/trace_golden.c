/* trace_golden.c: --golden and --check, a trace's shape without its times.
 *
 * The golden form lists, per actor (sorted by name, then address), the messages delivered to
 * it, in order:
 *   actor NAME LOOP/SLOT.GEN
 *   > KIND            a request handed to its handler
 *   < KIND STATUS     the reply to one of its own calls
 *   . KIND            a one-way message
 * Times, corr values and fields (pointers among them) are left out; the order across actors
 * is too, since only each actor's own order is meant to be stable. Lines starting with '#' and
 * blank lines are comments. --check compares a trace's golden form with a golden file. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

typedef struct gline {
  char *text;
  uint32_t trace_line; /* 0 for an actor header */
} gline;

typedef struct glines {
  gline *v;
  size_t n, cap;
} glines;

static void glines_free(glines *g) {
  for (size_t i = 0; i < g->n; i++) free(g->v[i].text);
  free(g->v);
}

static int gpush(glines *g, uint32_t trace_line, const char *text) {
  if (g->n == g->cap) {
    size_t cap = g->cap ? 2 * g->cap : 256;
    gline *p = realloc(g->v, cap * sizeof *p);
    if (!p) return -1;
    g->v = p;
    g->cap = cap;
  }
  if (!(g->v[g->n].text = strdup(text))) return -1;
  g->v[g->n++].trace_line = trace_line;
  return 0;
}

static int cmp_actor(const trace *t, size_t a, size_t b) {
  const trace_actor *x = &t->actors[a], *y = &t->actors[b];
  int c = strcmp(x->name, y->name);
  if (!c) {
    size_t n = x->loop_len < y->loop_len ? x->loop_len : y->loop_len;
    c = memcmp(x->addr, y->addr, n);
    if (!c && x->loop_len != y->loop_len) c = x->loop_len < y->loop_len ? -1 : 1;
  }
  if (!c && x->slot != y->slot) c = x->slot < y->slot ? -1 : 1;
  if (!c && x->gen != y->gen) c = x->gen < y->gen ? -1 : 1;
  return c;
}

/* Deliveries (record indices), ordered by receiving actor, then seq. */
static int cmp_delivery(const void *a, const void *b, void *ctx) {
  const trace *t = ctx;
  size_t i = *(const size_t *)a, j = *(const size_t *)b;
  int c = cmp_actor(t, t->recs[i].to_actor, t->recs[j].to_actor);
  return c ? c : (i < j ? -1 : i > j);
}

static int golden_lines(const trace *t, glines *g) {
  size_t *d = malloc((t->nrecs + 1) * sizeof *d), n = 0;
  if (!d) return -1;
  for (size_t i = 0; i < t->nrecs; i++)
    if (t->recs[i].ev == TRACE_DELIVER && t->recs[i].to_actor != TRACE_NONE) d[n++] = i;
  qsort_r(d, n, sizeof *d, cmp_delivery, (void *)t);
  int rc = 0;
  char buf[512];
  for (size_t k = 0; k < n && !rc; k++) {
    const trace_rec *r = &t->recs[d[k]];
    const trace_actor *a = &t->actors[r->to_actor];
    if (k == 0 || r->to_actor != t->recs[d[k - 1]].to_actor) {
      snprintf(buf, sizeof buf, "actor %s %s", a->name[0] ? a->name : "?", a->addr);
      if ((rc = gpush(g, 0, buf))) break;
    }
    if (r->is_reply) snprintf(buf, sizeof buf, "< %s %" PRId32, r->kind, r->status);
    else snprintf(buf, sizeof buf, "%c %s", r->corr ? '>' : '.', r->kind);
    rc = gpush(g, r->line, buf);
  }
  free(d);
  return rc;
}

int trace_write_golden(const trace *t, FILE *out) {
  glines g = {0};
  int rc = golden_lines(t, &g);
  if (!rc) {
    fputs("# membacking-trace --golden: per actor (by name, then address), the messages "
          "delivered to it.\n# '> KIND' a request, '< KIND STATUS' a reply to its call, "
          "'. KIND' a one-way message.\n", out);
    for (size_t i = 0; i < g.n; i++) fprintf(out, "%s\n", g.v[i].text);
  } else {
    fprintf(stderr, "%s: out of memory\n", t->path);
  }
  glines_free(&g);
  return rc || ferror(out) ? -1 : 0;
}

/* The next line of f that is not a comment; NULL at the end. *lineno counts every line. */
static char *next_line(FILE *f, char **buf, size_t *cap, uint32_t *lineno) {
  ssize_t n;
  while ((n = getline(buf, cap, f)) >= 0) {
    ++*lineno;
    while (n > 0 && ((*buf)[n - 1] == '\n' || (*buf)[n - 1] == '\r' || (*buf)[n - 1] == ' '))
      (*buf)[--n] = '\0';
    if (n > 0 && (*buf)[0] != '#') return *buf;
  }
  return NULL;
}

static void where(FILE *out, const trace *t, const glines *g, size_t i) {
  size_t h = i;
  while (h > 0 && g->v[h].trace_line) h--;
  if (i < g->n && g->v[i].trace_line)
    fprintf(out, " (%s, at %s:%" PRIu32 ")", g->v[h].text, t->path, g->v[i].trace_line);
}

int trace_check_golden(const trace *t, const char *path, FILE *out) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(out, "%s: %s\n", path, strerror(errno));
    return 2;
  }
  glines g = {0};
  if (golden_lines(t, &g)) {
    fprintf(out, "%s: out of memory\n", t->path);
    fclose(f);
    glines_free(&g);
    return 2;
  }
  char *buf = NULL, *want;
  size_t cap = 0, i = 0;
  uint32_t lineno = 0;
  int rc = 0;
  for (; (want = next_line(f, &buf, &cap, &lineno)); i++) {
    if (i == g.n) {
      fprintf(out, "%s:%" PRIu32 ": expected \"%s\"; the trace has no more deliveries\n", path,
              lineno, want);
      rc = 1;
      break;
    }
    if (strcmp(want, g.v[i].text) != 0) {
      fprintf(out, "%s:%" PRIu32 ": expected \"%s\"; the trace has \"%s\"", path, lineno, want,
              g.v[i].text);
      where(out, t, &g, i);
      fputc('\n', out);
      rc = 1;
      break;
    }
  }
  if (!rc && i < g.n) {
    fprintf(out, "%s:%" PRIu32 ": the golden file ends; the trace goes on with \"%s\"", path,
            lineno, g.v[i].text);
    where(out, t, &g, i);
    fputc('\n', out);
    rc = 1;
  }
  if (!rc && ferror(f)) {
    fprintf(out, "%s: %s\n", path, strerror(errno));
    rc = 2;
  }
  free(buf);
  fclose(f);
  glines_free(&g);
  return rc;
}
