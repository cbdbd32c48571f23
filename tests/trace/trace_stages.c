/* trace_stages.c: --stages, where the time of each top-level operation goes.
 *
 * An operation is a top-level request (one made outside any handling: by the loop's own actor
 * for an API caller, or by a thread that is not an actor) with every request nested in it,
 * transitively. It is named by its kind when the region manager receives it (region_map,
 * region_add, ...), else KIND@RECEIVER (add_mapper@mapping_manager, access@soft; the address
 * when the receiver has no name). Only complete operations count: each of their requests
 * answered, each reply delivered (or dropped); a request bounced undelivered has a total and
 * messaging only.
 *
 * Attribution. A hop h is an actor's handling of a request, from its delivery to its reply (or
 * to the forward that hands it on). A request nested in h is waited for from its call to the
 * delivery of its reply (to the reply itself for a blocking call). Then
 *     own(h) = the parts of [deliver(h), end(h)] outside the union of h's nested waits
 * so the time an actor spends waiting for its calls goes to whoever handles them, and waiting
 * for several calls at once counts once. A hop's stage is its actor's role:
 *     region_manager        the region manager
 *     mapping_manager       the mapping manager
 *     NAME@ADDR             a VA mapper (NAME starts with va_mapper), each one apart
 *     partition NAME@ADDR   a partition mapper (what the region manager calls, other than the
 *                           mapping manager), each one apart
 *     NAME@ADDR             any other actor
 * and a stage's sample for one operation is the sum of own() over its hops in the operation
 * (a region_map that tears down, then sets up, adds both mapping manager requests). Two more:
 *     total                 the top-level request's call -> the delivery of its reply
 *     messaging             the part of total in nobody's own time: messages in mailboxes
 *                           and in transit, including a serialized actor holding a request
 *                           back until it is free
 * Without parallel calls, the stages of an operation add up to its total exactly. With them
 * (the mapping manager asking every VA mapper at once) each mapper counts its own time in
 * full, so the stages add up to more than the total.
 *
 * Output: per (operation, stage), the number of operations with that stage and the p50 and
 * p99 of its samples (nearest rank), in microseconds. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

enum { CLASS_TOTAL, CLASS_RM, CLASS_MM, CLASS_VAM, CLASS_PARTITION, CLASS_OTHER, CLASS_MESSAGING };

typedef struct label {
  char *text;
  int cls;
} label;

typedef struct sample {
  size_t op, stage; /* labels */
  uint64_t ns;
} sample;

/* ---- intervals ------------------------------------------------------------------------------- */

/* A growable list of [lo, hi) intervals. */
typedef struct spans {
  uint64_t (*v)[2];
  size_t n, cap;
} spans;

static int spans_add(spans *l, uint64_t lo, uint64_t hi) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 16;
    uint64_t(*p)[2] = realloc(l->v, cap * sizeof *p);
    if (!p) return -1;
    l->v = p;
    l->cap = cap;
  }
  l->v[l->n][0] = lo;
  l->v[l->n][1] = hi;
  l->n++;
  return 0;
}

static int cmp_span(const void *a, const void *b) {
  const uint64_t *x = a, *y = b;
  return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* Sorts l and merges what overlaps, in place. */
static void spans_merge(spans *l) {
  if (l->n < 2) return;
  qsort(l->v, l->n, sizeof *l->v, cmp_span);
  size_t m = 0;
  for (size_t i = 0; i < l->n; i++) {
    if (m && l->v[i][0] <= l->v[m - 1][1]) {
      if (l->v[i][1] > l->v[m - 1][1]) l->v[m - 1][1] = l->v[i][1];
    } else {
      l->v[m][0] = l->v[i][0];
      l->v[m][1] = l->v[i][1];
      m++;
    }
  }
  l->n = m;
}

/* ---- state ----------------------------------------------------------------------------------- */

typedef struct stages {
  const trace *t;
  label *labels;
  size_t nlabels, caplabels;
  sample *samples;
  size_t nsamples, capsamples;
  size_t *child_head, *child_next; /* per hop: first nested request; per request: next one */
  sample *op_acc;                  /* the current operation's stage sums */
  size_t nacc, capacc;
  spans waits; /* scratch: the nested waits of one hop */
  spans own;   /* the own intervals of every hop of the current operation */
  size_t skipped;
} stages;

/* ---- labels and samples ---------------------------------------------------------------------- */

static size_t intern(stages *s, const char *text, int cls) {
  for (size_t i = 0; i < s->nlabels; i++)
    if (strcmp(s->labels[i].text, text) == 0) return i;
  if (s->nlabels == s->caplabels) {
    size_t cap = s->caplabels ? 2 * s->caplabels : 32;
    label *p = realloc(s->labels, cap * sizeof *p);
    if (!p) return TRACE_NONE;
    s->labels = p;
    s->caplabels = cap;
  }
  char *copy = strdup(text);
  if (!copy) return TRACE_NONE;
  s->labels[s->nlabels] = (label){copy, cls};
  return s->nlabels++;
}

static int push(sample **v, size_t *n, size_t *cap, sample x) {
  if (*n == *cap) {
    size_t ncap = *cap ? 2 * *cap : 64;
    sample *p = realloc(*v, ncap * sizeof *p);
    if (!p) return -1;
    *v = p;
    *cap = ncap;
  }
  (*v)[(*n)++] = x;
  return 0;
}

/* Adds ns to the current operation's sum for stage. */
static int acc_add(stages *s, size_t stage, uint64_t ns) {
  if (stage == TRACE_NONE) return -1;
  for (size_t i = 0; i < s->nacc; i++) {
    if (s->op_acc[i].stage == stage) {
      s->op_acc[i].ns += ns;
      return 0;
    }
  }
  return push(&s->op_acc, &s->nacc, &s->capacc, (sample){0, stage, ns});
}

/* ---- attribution ----------------------------------------------------------------------------- */

static const char *name_of(const trace *t, size_t actor) {
  return actor == TRACE_NONE ? "" : t->actors[actor].name;
}

static size_t stage_of(stages *s, size_t h) {
  const trace *t = s->t;
  size_t actor = t->hops[h].actor;
  const char *name = name_of(t, actor), *addr = t->actors[actor].addr;
  const char *caller = name_of(t, t->reqs[t->hops[h].req].requester);
  char buf[256];
  if (strcmp(name, "region_manager") == 0) return intern(s, name, CLASS_RM);
  if (strcmp(name, "mapping_manager") == 0) return intern(s, name, CLASS_MM);
  snprintf(buf, sizeof buf, "%s%s@%s", strcmp(caller, "region_manager") == 0 ? "partition " : "",
           name[0] ? name : "?", addr);
  if (strncmp(name, "va_mapper", 9) == 0) return intern(s, buf, CLASS_VAM);
  return intern(s, buf, strcmp(caller, "region_manager") == 0 ? CLASS_PARTITION : CLASS_OTHER);
}

/* The end of request r's wait: the delivery of its reply, or the reply (blocking call). */
static size_t wait_end(const trace *t, size_t r) {
  const trace_req *q = &t->reqs[r];
  return q->requester == TRACE_NONE ? q->reply : q->reply_end;
}

/* own(h): the parts of h's span outside its nested requests' waits, added to s->own; *out is
 * their length. */
static int own_time(stages *s, size_t h, uint64_t *out) {
  const trace *t = s->t;
  uint64_t lo = t->recs[t->hops[h].deliver].t_ns, hi = t->recs[t->hops[h].end].t_ns;
  if (hi < lo) hi = lo;
  s->waits.n = 0;
  for (size_t c = s->child_head[h]; c != TRACE_NONE; c = s->child_next[c]) {
    uint64_t a = t->recs[t->reqs[c].call].t_ns, b = t->recs[wait_end(t, c)].t_ns;
    a = a < lo ? lo : a > hi ? hi : a;
    if (spans_add(&s->waits, a, b > hi ? hi : b < a ? a : b)) return -1;
  }
  spans_merge(&s->waits);
  uint64_t at = lo;
  *out = 0;
  for (size_t i = 0; i <= s->waits.n; i++) {
    uint64_t gap_end = i < s->waits.n ? s->waits.v[i][0] : hi;
    if (gap_end > at) {
      *out += gap_end - at;
      if (spans_add(&s->own, at, gap_end)) return -1;
    }
    if (i < s->waits.n && s->waits.v[i][1] > at) at = s->waits.v[i][1];
  }
  return 0;
}

/* Is request r, with everything nested in it, complete? */
static bool complete(const stages *s, size_t r) {
  const trace *t = s->t;
  const trace_req *q = &t->reqs[r];
  if (q->call == TRACE_NONE || wait_end(t, r) == TRACE_NONE) return false;
  for (size_t h = q->first_hop; h != TRACE_NONE; h = t->hops[h].next) {
    if (t->hops[h].end == TRACE_NONE) return false;
    for (size_t c = s->child_head[h]; c != TRACE_NONE; c = s->child_next[c])
      if (!complete(s, c)) return false;
  }
  return true;
}

/* Adds the own time of request r's hops, and of everything nested in it, to their stages. */
static int attribute(stages *s, size_t r) {
  const trace *t = s->t;
  for (size_t h = t->reqs[r].first_hop; h != TRACE_NONE; h = t->hops[h].next) {
    uint64_t own;
    if (own_time(s, h, &own) || acc_add(s, stage_of(s, h), own)) return -1;
    for (size_t c = s->child_head[h]; c != TRACE_NONE; c = s->child_next[c])
      if (attribute(s, c)) return -1;
  }
  return 0;
}

/* messaging: the part of the operation's total when none of its hops is in its own time. */
static uint64_t messaging_time(stages *s, uint64_t lo, uint64_t hi) {
  spans_merge(&s->own);
  uint64_t busy = 0;
  for (size_t i = 0; i < s->own.n; i++) {
    uint64_t a = s->own.v[i][0] < lo ? lo : s->own.v[i][0];
    uint64_t b = s->own.v[i][1] > hi ? hi : s->own.v[i][1];
    if (b > a) busy += b - a;
  }
  return hi - lo > busy ? hi - lo - busy : 0;
}

static size_t op_label(stages *s, size_t r) {
  const trace *t = s->t;
  const trace_req *q = &t->reqs[r];
  size_t actor = q->first_hop != TRACE_NONE ? t->hops[q->first_hop].actor : q->target;
  const char *receiver = name_of(t, actor);
  if (strcmp(receiver, "region_manager") == 0) return intern(s, q->kind, CLASS_RM);
  char buf[256];
  snprintf(buf, sizeof buf, "%s@%s", q->kind,
           receiver[0] ? receiver : actor != TRACE_NONE ? t->actors[actor].addr : "-");
  return intern(s, buf, CLASS_OTHER);
}

static int one_operation(stages *s, size_t r, size_t total, size_t messaging) {
  const trace *t = s->t;
  if (!complete(s, r)) {
    s->skipped++;
    return 0;
  }
  s->nacc = 0;
  s->own.n = 0;
  size_t op = op_label(s, r);
  uint64_t lo = t->recs[t->reqs[r].call].t_ns, hi = t->recs[wait_end(t, r)].t_ns;
  if (hi < lo) hi = lo;
  if (op == TRACE_NONE || acc_add(s, total, hi - lo) || attribute(s, r) ||
      acc_add(s, messaging, messaging_time(s, lo, hi)))
    return -1;
  for (size_t i = 0; i < s->nacc; i++) {
    s->op_acc[i].op = op;
    if (push(&s->samples, &s->nsamples, &s->capsamples, s->op_acc[i])) return -1;
  }
  return 0;
}

/* ---- report ---------------------------------------------------------------------------------- */

static int cmp_label(const stages *s, size_t a, size_t b) {
  const label *x = &s->labels[a], *y = &s->labels[b];
  if (x->cls != y->cls) return x->cls < y->cls ? -1 : 1;
  return strcmp(x->text, y->text);
}

static int cmp_sample(const void *a, const void *b, void *ctx) {
  const sample *x = a, *y = b;
  int c = x->op != y->op ? cmp_label(ctx, x->op, y->op) : 0;
  if (!c && x->stage != y->stage) c = cmp_label(ctx, x->stage, y->stage);
  if (!c && x->ns != y->ns) c = x->ns < y->ns ? -1 : 1;
  return c;
}

static void put_us(FILE *out, uint64_t ns) {
  fprintf(out, " %10" PRIu64 ".%03" PRIu64, ns / 1000, ns % 1000);
}

static void report(stages *s, FILE *out) {
  if (s->nsamples) qsort_r(s->samples, s->nsamples, sizeof *s->samples, cmp_sample, s);
  fprintf(out, "# time per stage of each top-level operation, in microseconds (p50, p99: nearest "
               "rank)\n");
  fprintf(out, "%-26s %-40s %7s %14s %14s\n", "# operation", "stage", "count", "p50", "p99");
  for (size_t i = 0, j; i < s->nsamples; i = j) {
    for (j = i; j < s->nsamples && s->samples[j].op == s->samples[i].op &&
                s->samples[j].stage == s->samples[i].stage;
         j++)
      continue;
    size_t n = j - i;
    fprintf(out, "%-26s %-40s %7zu", s->labels[s->samples[i].op].text,
            s->labels[s->samples[i].stage].text, n);
    put_us(out, s->samples[i + (50 * n + 99) / 100 - 1].ns);
    put_us(out, s->samples[i + (99 * n + 99) / 100 - 1].ns);
    fputc('\n', out);
  }
  if (s->skipped) fprintf(out, "# %zu incomplete operations left out\n", s->skipped);
}

int trace_write_stages(const trace *t, FILE *out) {
  stages s = {.t = t};
  int rc = 0;
  s.child_head = malloc((t->nhops + 1) * sizeof *s.child_head);
  s.child_next = malloc((t->nreqs + 1) * sizeof *s.child_next);
  if (!s.child_head || !s.child_next) rc = -1;
  for (size_t h = 0; !rc && h < t->nhops; h++) s.child_head[h] = TRACE_NONE;
  for (size_t r = t->nreqs; !rc && r-- > 0;) { /* backwards: the lists come out in call order */
    size_t p = t->reqs[r].parent;
    s.child_next[r] = p != TRACE_NONE ? s.child_head[p] : TRACE_NONE;
    if (p != TRACE_NONE) s.child_head[p] = r;
  }
  size_t total = rc ? TRACE_NONE : intern(&s, "total", CLASS_TOTAL);
  size_t messaging = rc ? TRACE_NONE : intern(&s, "messaging", CLASS_MESSAGING);
  if (total == TRACE_NONE || messaging == TRACE_NONE) rc = -1;
  for (size_t r = 0; r < t->nreqs && !rc; r++)
    if (t->reqs[r].parent == TRACE_NONE) rc = one_operation(&s, r, total, messaging);
  if (!rc) report(&s, out);
  for (size_t i = 0; i < s.nlabels; i++) free(s.labels[i].text);
  free(s.labels);
  free(s.samples);
  free(s.child_head);
  free(s.child_next);
  free(s.op_acc);
  free(s.waits.v);
  free(s.own.v);
  return rc || ferror(out) ? -1 : 0;
}
