/* trace_link.c: from records to actors, requests and hops (see trace.h).
 *
 * Matching. A request is keyed by (requester, corr): corr is unique per requester while the
 * request is outstanding (the runtime numbers each actor's calls), and sync calls from threads that are not actors carry corr
 * values with the top bit set, unique in the process. Walking the records in seq order:
 *   call A->B       a new request, state CALLED, on its way to B; nested in A's innermost
 *                   open hop, if A is handling a request
 *   deliver A->B    of (A, corr) CALLED towards B, of the same kind: a hop at B (HANDLING)
 *   forward A->C    of (A, corr) HANDLING: ends the hop; CALLED again, on its way to C
 *   reply A->B      of (A, corr) HANDLING (or CALLED: the runtime bounced it undelivered):
 *                   ends the hop; REPLIED (DONE for a sync call: the reply wakes the caller)
 *   deliver B->A    of (A, corr) REPLIED by B, of the same kind: the reply's delivery (DONE)
 *   drop B->A       the same, for a reply whose requester is gone
 * A deliver that matches both ways (two loops using the same corr value towards each other)
 * counts as a reply. Records of requests whose call precedes the trace start a request
 * where they stand; the rest (one-way messages) belong to no request. */
#include <stdlib.h>
#include <string.h>

#include "trace.h"

enum { ST_CALLED, ST_HANDLING, ST_REPLIED, ST_DONE };

uint64_t trace_span(const trace *t, size_t a, size_t b) {
  uint64_t ta = t->recs[a].t_ns, tb = t->recs[b].t_ns;
  return tb > ta ? tb - ta : 0;
}

const char *trace_actor_label(const trace *t, size_t actor, char *buf, size_t len) {
  if (actor == TRACE_NONE) return "-";
  const trace_actor *a = &t->actors[actor];
  if (!a->name[0]) return a->addr;
  snprintf(buf, len, "%s@%s", a->name, a->addr);
  return buf;
}

/* ---- hash tables ----------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, uint64_t h) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

/* Slots hold index + 1; 0 is empty. cap is a power of two, at least twice the entries. */
static int grow(size_t **slots, size_t *cap, size_t n, uint64_t (*key_hash)(const void *, size_t),
                const void *ctx) {
  if (2 * (n + 1) <= *cap) return 0;
  size_t ncap = *cap ? 2 * *cap : 64;
  size_t *ns = calloc(ncap, sizeof *ns);
  if (!ns) return -1;
  for (size_t i = 0; i < *cap; i++) {
    if (!(*slots)[i]) continue;
    size_t j = key_hash(ctx, (*slots)[i] - 1) & (ncap - 1);
    while (ns[j]) j = (j + 1) & (ncap - 1);
    ns[j] = (*slots)[i];
  }
  free(*slots);
  *slots = ns;
  *cap = ncap;
  return 0;
}

static uint64_t actor_hash(const void *ctx, size_t i) {
  return hash_bytes(((const trace *)ctx)->actors[i].addr, 0xcbf29ce484222325ull);
}

static void parse_addr(trace_actor *a) {
  char *slash = strrchr(a->addr, '/');
  a->loop_len = (size_t)(slash - a->addr);
  char *end;
  a->slot = (uint32_t)strtoul(slash + 1, &end, 10);
  a->gen = (uint32_t)strtoul(end + 1, NULL, 10);
}

/* *out = the actor at addr, made on first sight (TRACE_NONE for "-"). 0, or -1: no memory. */
static int actor_of(trace *t, const char *addr, size_t *out) {
  *out = TRACE_NONE;
  if (strcmp(addr, "-") == 0) return 0;
  uint64_t h = hash_bytes(addr, 0xcbf29ce484222325ull);
  size_t mask = t->actor_index_cap - 1;
  for (size_t j = h & mask; t->actor_index_cap && t->actor_index[j]; j = (j + 1) & mask) {
    if (strcmp(t->actors[t->actor_index[j] - 1].addr, addr) == 0) {
      *out = t->actor_index[j] - 1;
      return 0;
    }
  }
  if (grow(&t->actor_index, &t->actor_index_cap, t->nactors, actor_hash, t)) return -1;
  if (t->nactors == t->capactors) {
    size_t cap = t->capactors ? 2 * t->capactors : 16;
    trace_actor *p = realloc(t->actors, cap * sizeof *p);
    if (!p) return -1;
    t->actors = p;
    t->capactors = cap;
  }
  trace_actor *a = &t->actors[t->nactors];
  *a = (trace_actor){.addr = strdup(addr), .name = ""};
  if (!a->addr) return -1;
  parse_addr(a);
  mask = t->actor_index_cap - 1;
  size_t j = h & mask;
  while (t->actor_index[j]) j = (j + 1) & mask;
  t->actor_index[j] = ++t->nactors;
  *out = t->nactors - 1;
  return 0;
}

static void name_actor(trace *t, size_t actor, const char *name, FILE *err) {
  if (actor == TRACE_NONE || !name[0]) return;
  trace_actor *a = &t->actors[actor];
  if (!a->name[0]) {
    a->name = name;
  } else if (strcmp(a->name, name) != 0 && !a->name_conflict) {
    a->name_conflict = true;
    fprintf(err, "%s: warning: address \"%s\" names both %s and %s (loop names not unique?)\n",
            t->path, a->addr, a->name, name);
  }
}

/* ---- the linking pass ------------------------------------------------------------------------ */

typedef struct open_list {
  size_t *hops;
  size_t n, cap;
} open_list;

typedef struct linker {
  trace *t;
  size_t *req_index; /* (requester, corr) -> request */
  size_t req_index_cap;
  open_list *open;   /* per actor: its open hops, in delivery order */
  size_t nopen;
} linker;

static uint64_t req_key_hash(size_t requester, uint64_t corr) {
  return mix(corr ^ mix((uint64_t)requester + 1));
}

static uint64_t req_hash(const void *ctx, size_t i) {
  const trace_req *r = &((const trace *)ctx)->reqs[i];
  return req_key_hash(r->requester, r->corr);
}

/* The slot of (requester, corr): holding it, or the empty slot where it would go. */
static size_t *req_slot(linker *l, size_t requester, uint64_t corr) {
  size_t mask = l->req_index_cap - 1;
  size_t j = req_key_hash(requester, corr) & mask;
  for (; l->req_index[j]; j = (j + 1) & mask) {
    const trace_req *r = &l->t->reqs[l->req_index[j] - 1];
    if (r->requester == requester && r->corr == corr) break;
  }
  return &l->req_index[j];
}

static size_t req_find(linker *l, size_t requester, uint64_t corr, const char *kind, int state) {
  if (!l->req_index_cap) return TRACE_NONE;
  size_t s = *req_slot(l, requester, corr);
  if (!s) return TRACE_NONE;
  const trace_req *r = &l->t->reqs[s - 1];
  return r->state == state && strcmp(r->kind, kind) == 0 ? s - 1 : TRACE_NONE;
}

static size_t req_new(linker *l, size_t requester, uint64_t corr, const char *kind) {
  trace *t = l->t;
  if (grow(&l->req_index, &l->req_index_cap, t->nreqs, req_hash, t)) return TRACE_NONE;
  if (t->nreqs == t->capreqs) {
    size_t cap = t->capreqs ? 2 * t->capreqs : 256;
    trace_req *p = realloc(t->reqs, cap * sizeof *p);
    if (!p) return TRACE_NONE;
    t->reqs = p;
    t->capreqs = cap;
  }
  size_t r = t->nreqs++;
  t->reqs[r] = (trace_req){requester, corr, kind, TRACE_NONE, TRACE_NONE, TRACE_NONE,
                           TRACE_NONE, TRACE_NONE, TRACE_NONE, TRACE_NONE, 0, ST_CALLED};
  *req_slot(l, requester, corr) = r + 1; /* a newer request takes the key over */
  return r;
}

static int hop_open(linker *l, size_t req, size_t rec) {
  trace *t = l->t;
  size_t actor = t->recs[rec].to_actor;
  open_list *o = &l->open[actor];
  if (o->n == o->cap) {
    size_t cap = o->cap ? 2 * o->cap : 4;
    size_t *p = realloc(o->hops, cap * sizeof *p);
    if (!p) return -1;
    o->hops = p;
    o->cap = cap;
  }
  if (t->nhops == t->caphops) {
    size_t cap = t->caphops ? 2 * t->caphops : 256;
    trace_hop *p = realloc(t->hops, cap * sizeof *p);
    if (!p) return -1;
    t->hops = p;
    t->caphops = cap;
  }
  size_t h = t->nhops++;
  t->hops[h] = (trace_hop){req, actor, rec, TRACE_NONE, TRACE_NONE};
  trace_req *r = &t->reqs[req];
  if (r->last_hop != TRACE_NONE) t->hops[r->last_hop].next = h;
  else r->first_hop = h;
  r->last_hop = h;
  r->state = ST_HANDLING;
  o->hops[o->n++] = h;
  return 0;
}

static void hop_close(linker *l, size_t req, size_t rec) {
  trace *t = l->t;
  size_t h = t->reqs[req].last_hop;
  t->hops[h].end = rec;
  open_list *o = &l->open[t->hops[h].actor];
  for (size_t i = o->n; i-- > 0;) {
    if (o->hops[i] == h) {
      memmove(o->hops + i, o->hops + i + 1, (o->n - i - 1) * sizeof *o->hops);
      o->n--;
      break;
    }
  }
}

static int on_call(linker *l, size_t i) {
  trace *t = l->t;
  trace_rec *rec = &t->recs[i];
  size_t r = req_new(l, rec->from_actor, rec->corr, rec->kind);
  if (r == TRACE_NONE) return -1;
  trace_req *q = &t->reqs[r];
  q->call = i;
  q->target = rec->to_actor;
  if (rec->from_actor != TRACE_NONE) {
    open_list *o = &l->open[rec->from_actor];
    if (o->n) {
      q->parent = o->hops[o->n - 1];
      q->depth = t->reqs[t->hops[q->parent].req].depth + 1;
    }
  }
  rec->req = r;
  return 0;
}

static int on_deliver(linker *l, size_t i) {
  trace *t = l->t;
  trace_rec *rec = &t->recs[i];
  size_t r = req_find(l, rec->to_actor, rec->corr, rec->kind, ST_REPLIED);
  if (r != TRACE_NONE && t->reqs[r].target == rec->from_actor) {
    t->reqs[r].reply_end = i;
    t->reqs[r].state = ST_DONE;
    rec->req = r;
    rec->is_reply = true;
    return 0;
  }
  if (rec->to_actor == TRACE_NONE) return 0;
  r = req_find(l, rec->from_actor, rec->corr, rec->kind, ST_CALLED);
  if (r == TRACE_NONE || t->reqs[r].target != rec->to_actor) {
    if (rec->status != 0) { /* the reply to a request from before the trace */
      rec->is_reply = true;
      return 0;
    }
    if ((r = req_new(l, rec->from_actor, rec->corr, rec->kind)) == TRACE_NONE) return -1;
    t->reqs[r].target = rec->to_actor;
  }
  rec->req = r;
  return hop_open(l, r, i);
}

static void on_forward(linker *l, size_t i) {
  trace *t = l->t;
  trace_rec *rec = &t->recs[i];
  size_t r = req_find(l, rec->from_actor, rec->corr, rec->kind, ST_HANDLING);
  if (r == TRACE_NONE) return;
  hop_close(l, r, i);
  t->reqs[r].target = rec->to_actor;
  t->reqs[r].state = ST_CALLED;
  rec->req = r;
}

static int on_reply(linker *l, size_t i) {
  trace *t = l->t;
  trace_rec *rec = &t->recs[i];
  rec->is_reply = true;
  size_t r = req_find(l, rec->from_actor, rec->corr, rec->kind, ST_HANDLING);
  if (r != TRACE_NONE) hop_close(l, r, i);
  else r = req_find(l, rec->from_actor, rec->corr, rec->kind, ST_CALLED);
  if (r == TRACE_NONE) { /* the request came before the trace */
    if ((r = req_new(l, rec->from_actor, rec->corr, rec->kind)) == TRACE_NONE) return -1;
    t->reqs[r].target = rec->to_actor;
  }
  trace_req *q = &t->reqs[r];
  q->reply = i;
  q->state = q->requester == TRACE_NONE ? ST_DONE : ST_REPLIED;
  rec->req = r;
  return 0;
}

static void on_drop(linker *l, size_t i) {
  trace *t = l->t;
  trace_rec *rec = &t->recs[i];
  size_t r = req_find(l, rec->to_actor, rec->corr, rec->kind, ST_REPLIED);
  if (r == TRACE_NONE || t->reqs[r].target != rec->from_actor) return;
  t->reqs[r].reply_end = i;
  t->reqs[r].state = ST_DONE;
  rec->req = r;
  rec->is_reply = true;
}

static int link_one(linker *l, size_t i) {
  trace_rec *rec = &l->t->recs[i];
  if (rec->corr == 0) return 0; /* one-way: no request */
  switch (rec->ev) {
  case TRACE_CALL: return on_call(l, i);
  case TRACE_DELIVER: return on_deliver(l, i);
  case TRACE_FORWARD: on_forward(l, i); return 0;
  case TRACE_REPLY: return on_reply(l, i);
  case TRACE_DROP: on_drop(l, i); return 0;
  case TRACE_SEND: return 0;
  }
  return 0;
}

int trace_link(trace *t, FILE *err) {
  linker l = {t, NULL, 0, NULL, 0};
  int rc = 0;
  for (size_t i = 0; i < t->nrecs && !rc; i++) {
    trace_rec *rec = &t->recs[i];
    rec->req = TRACE_NONE;
    rec->is_reply = false;
    if (actor_of(t, rec->from, &rec->from_actor) || actor_of(t, rec->to, &rec->to_actor)) rc = -1;
  }
  if (!rc && !(l.open = calloc(t->nactors + 1, sizeof *l.open))) rc = -1;
  l.nopen = l.open ? t->nactors : 0;
  for (size_t i = 0; i < t->nrecs && !rc; i++) {
    name_actor(t, t->recs[i].from_actor, t->recs[i].from_name, err);
    name_actor(t, t->recs[i].to_actor, t->recs[i].to_name, err);
  }
  for (size_t i = 0; i < t->nrecs && !rc; i++) rc = link_one(&l, i);
  for (size_t i = 0; i < l.nopen; i++) free(l.open[i].hops);
  free(l.open);
  free(l.req_index);
  if (rc) fprintf(err, "%s: out of memory\n", t->path);
  return rc;
}
