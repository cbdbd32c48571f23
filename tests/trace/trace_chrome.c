/* trace_chrome.c: --chrome, the trace as Chrome trace-event JSON ({"traceEvents": [...]}),
 * which chrome://tracing and Perfetto (ui.perfetto.dev) open.
 *
 * Tracks: a process per loop (pid in order of first appearance, named "loop NAME"), a thread
 * per actor (tid = its slot, named "NAME LOOP/SLOT.GEN"), plus one process for threads that
 * are not actors (blocking calls from vCPU or test threads). Events:
 *   X "handle"  one per hop: an actor's handling of a request, from its delivery to its reply
 *               (or to the forward that hands it on; to the trace's end if unanswered)
 *   X "call"    one per top-level request (made outside any handling): the requester's wait,
 *               from the call to the delivery of its reply (to the reply for a blocking call)
 *   s/f         a flow per hop, from the call (or the forward) to the delivery; both ends bind
 *               to the enclosing slice ("bp":"e"): the caller's handling or wait, the
 *               receiver's handling
 *   i           one-way messages delivered, and dropped messages, as instants
 * The X slices of one track must nest; an actor that handles requests whose spans overlap
 * without nesting (it keeps one and goes on) gets extra tracks, tid + 1000000 * lane, named
 * "... (overlap N)". Times are microseconds since the trace's first record. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

typedef struct slice {
  size_t actor; /* TRACE_NONE: the track of threads that are not actors */
  uint64_t start, end;
  size_t req, hop; /* hop TRACE_NONE: a wait slice */
  size_t track;
} slice;

typedef struct track {
  size_t actor;
  unsigned lane;
  int pid;
  uint64_t tid;
} track;

typedef struct chrome {
  const trace *t;
  FILE *out;
  slice *slices;
  size_t nslices;
  size_t *hop_slice, *req_slice; /* per hop, per request: its slice or TRACE_NONE */
  track *tracks;
  size_t ntracks, captracks;
  int *actor_pid;
  int thread_pid; /* pid of threads that are not actors */
  const char **loops; /* loop names by pid - 1 */
  size_t *loop_lens;
  int nloops;
  bool first;
} chrome;

/* ---- JSON output ------------------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s (no overlongs, no surrogates, at most
 * U+10FFFF), 0 if it is not one. */
static size_t utf8_len(const unsigned char s[4]) {
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf; /* the range of the second byte */
  if (s[0] >= 0xc2 && s[0] <= 0xdf) n = 2;
  else if (s[0] >= 0xe0 && s[0] <= 0xef) n = 3;
  else if (s[0] >= 0xf0 && s[0] <= 0xf4) n = 4;
  else return 0;
  if (s[0] == 0xe0) lo = 0xa0;
  if (s[0] == 0xed) hi = 0x9f;
  if (s[0] == 0xf0) lo = 0x90;
  if (s[0] == 0xf4) hi = 0x8f;
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < n; i++)
    if ((s[i] & 0xc0) != 0x80) return 0;
  return n;
}

/* s as a JSON string; bytes that are not UTF-8 become U+FFFD. */
static void put_str(FILE *out, const char *s, size_t len) {
  fputc('"', out);
  const unsigned char *p = (const unsigned char *)s, *end = p + len;
  while (p < end) {
    if (*p == '"' || *p == '\\') {
      fputc('\\', out);
      fputc(*p++, out);
    } else if (*p < 0x20) {
      fprintf(out, "\\u%04x", *p++);
    } else if (*p < 0x80) {
      fputc(*p++, out);
    } else {
      unsigned char next[4] = {0}; /* zeros past the end fail as continuation bytes */
      memcpy(next, p, (size_t)(end - p) < 4 ? (size_t)(end - p) : 4);
      size_t n = utf8_len(next);
      if (n) fwrite(p, 1, n, out);
      else fputs("\\ufffd", out);
      p += n ? n : 1;
    }
  }
  fputc('"', out);
}

static void put_cstr(FILE *out, const char *s) { put_str(out, s, strlen(s)); }

static void put_ts(chrome *c, uint64_t t_ns) {
  uint64_t d = t_ns > c->t->t0 ? t_ns - c->t->t0 : 0;
  fprintf(c->out, "%" PRIu64 ".%03" PRIu64, d / 1000, d % 1000);
}

/* Opens an event object: {"ph":PH,"pid":..,"tid":..,"name":NAME */
static void event_open(chrome *c, const char *ph, size_t track, const char *name) {
  const struct track *k = &c->tracks[track];
  fprintf(c->out, "%s\n{\"ph\":\"%s\",\"pid\":%d,\"tid\":%" PRIu64 ",\"name\":",
          c->first ? "" : ",", ph, k->pid, k->tid);
  c->first = false;
  put_cstr(c->out, name);
}

/* ---- tracks ---------------------------------------------------------------------------------- */

static int loop_pid(chrome *c, const char *name, size_t len) {
  for (int i = 0; i < c->nloops; i++)
    if (c->loop_lens[i] == len && memcmp(c->loops[i], name, len) == 0) return i + 1;
  c->loops[c->nloops] = name;
  c->loop_lens[c->nloops] = len;
  return ++c->nloops;
}

static bool tid_taken(const chrome *c, int pid, uint64_t tid) {
  for (size_t i = 0; i < c->ntracks; i++)
    if (c->tracks[i].pid == pid && c->tracks[i].tid == tid) return true;
  return false;
}

/* The track of (actor, lane), made on first use; TRACE_NONE on no memory. */
static size_t track_of(chrome *c, size_t actor, unsigned lane) {
  for (size_t i = 0; i < c->ntracks; i++)
    if (c->tracks[i].actor == actor && c->tracks[i].lane == lane) return i;
  if (c->ntracks == c->captracks) {
    size_t cap = c->captracks ? 2 * c->captracks : 32;
    track *p = realloc(c->tracks, cap * sizeof *p);
    if (!p) return TRACE_NONE;
    c->tracks = p;
    c->captracks = cap;
  }
  int pid = actor == TRACE_NONE ? c->thread_pid : c->actor_pid[actor];
  uint64_t base = actor == TRACE_NONE ? 0 : c->t->actors[actor].slot, tid = base;
  for (uint64_t k = lane; tid_taken(c, pid, tid = base + 1000000 * k); k++) continue;
  c->tracks[c->ntracks] = (track){actor, lane, pid, tid};
  return c->ntracks++;
}

static int cmp_slices(const void *a, const void *b) {
  const slice *x = a, *y = b;
  size_t xa = x->actor + 1, ya = y->actor + 1; /* TRACE_NONE sorts first */
  if (xa != ya) return xa < ya ? -1 : 1;
  if (x->start != y->start) return x->start < y->start ? -1 : 1;
  if (x->end != y->end) return x->end > y->end ? -1 : 1; /* the longer one encloses */
  return 0;
}

/* Puts each slice on the first lane of its actor where it nests in what is open there. */
static int assign_lanes(chrome *c) {
  size_t n = c->nslices;
  uint64_t **stacks = NULL; /* per lane: end times of the open slices */
  size_t *depth = NULL, *lane_track = NULL, nlanes = 0;
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    slice *s = &c->slices[i];
    if (i == 0 || s->actor != c->slices[i - 1].actor) /* the next actor: its lanes are empty */
      for (size_t l = 0; l < nlanes; l++) depth[l] = 0, lane_track[l] = TRACE_NONE;
    size_t lane = 0;
    for (;; lane++) {
      if (lane == nlanes) {
        uint64_t **ps = realloc(stacks, (nlanes + 1) * sizeof *ps);
        if (ps) stacks = ps;
        size_t *pd = ps ? realloc(depth, (nlanes + 1) * sizeof *pd) : NULL;
        if (pd) depth = pd;
        size_t *pt = pd ? realloc(lane_track, (nlanes + 1) * sizeof *pt) : NULL;
        if (pt) lane_track = pt;
        if (!pt || !(stacks[nlanes] = malloc(n * sizeof **stacks))) {
          rc = -1;
          break;
        }
        depth[nlanes] = 0;
        lane_track[nlanes++] = TRACE_NONE;
      }
      while (depth[lane] && stacks[lane][depth[lane] - 1] <= s->start) depth[lane]--;
      if (!depth[lane] || stacks[lane][depth[lane] - 1] >= s->end) break;
    }
    if (rc) break;
    stacks[lane][depth[lane]++] = s->end;
    if (lane_track[lane] == TRACE_NONE) lane_track[lane] = track_of(c, s->actor, (unsigned)lane);
    if ((s->track = lane_track[lane]) == TRACE_NONE) rc = -1;
  }
  for (size_t l = 0; l < nlanes; l++) free(stacks[l]);
  free(stacks);
  free(depth);
  free(lane_track);
  return rc;
}

/* ---- slices ---------------------------------------------------------------------------------- */

static uint64_t t_of(const chrome *c, size_t rec) {
  return rec == TRACE_NONE ? c->t->t1 : c->t->recs[rec].t_ns;
}

static int collect(chrome *c) {
  const trace *t = c->t;
  c->slices = malloc((t->nhops + t->nreqs + 1) * sizeof *c->slices);
  if (!c->slices) return -1;
  for (size_t h = 0; h < t->nhops; h++) {
    const trace_hop *hop = &t->hops[h];
    uint64_t s = t_of(c, hop->deliver), e = t_of(c, hop->end);
    c->slices[c->nslices++] = (slice){hop->actor, s, e > s ? e : s, hop->req, h, 0};
  }
  for (size_t r = 0; r < t->nreqs; r++) {
    const trace_req *q = &t->reqs[r];
    if (q->parent != TRACE_NONE || q->call == TRACE_NONE) continue;
    size_t end = q->reply_end != TRACE_NONE ? q->reply_end : q->reply;
    uint64_t s = t_of(c, q->call), e = t_of(c, end);
    c->slices[c->nslices++] = (slice){q->requester, s, e > s ? e : s, r, TRACE_NONE, 0};
  }
  qsort(c->slices, c->nslices, sizeof *c->slices, cmp_slices);
  for (size_t i = 0; i < c->nslices; i++) {
    if (c->slices[i].hop != TRACE_NONE) c->hop_slice[c->slices[i].hop] = i;
    else c->req_slice[c->slices[i].req] = i;
  }
  return assign_lanes(c);
}

/* ---- events ---------------------------------------------------------------------------------- */

static void put_metadata(chrome *c) {
  char name[256];
  for (int p = 1; p <= c->nloops; p++) {
    fprintf(c->out, "%s\n{\"ph\":\"M\",\"pid\":%d,\"name\":\"process_name\",\"args\":{\"name\":",
            c->first ? "" : ",", p);
    c->first = false;
    snprintf(name, sizeof name, "loop %.*s", (int)c->loop_lens[p - 1], c->loops[p - 1]);
    put_cstr(c->out, name);
    fputs("}}", c->out);
  }
  if (c->thread_pid)
    fprintf(c->out, ",\n{\"ph\":\"M\",\"pid\":%d,\"name\":\"process_name\",\"args\":{\"name\":"
                    "\"threads that are not actors\"}}", c->thread_pid);
  for (size_t i = 0; i < c->ntracks; i++) {
    const track *k = &c->tracks[i];
    const trace_actor *a = k->actor == TRACE_NONE ? NULL : &c->t->actors[k->actor];
    int n = snprintf(name, sizeof name, "%s%s%s", a ? a->name : "threads",
                     a && a->name[0] ? " " : "", a ? a->addr : "");
    if (k->lane && n >= 0 && (size_t)n < sizeof name)
      snprintf(name + n, sizeof name - (size_t)n, " (overlap %u)", k->lane);
    event_open(c, "M", i, "thread_name");
    fputs(",\"args\":{\"name\":", c->out);
    put_cstr(c->out, name);
    fputs("}}", c->out);
    event_open(c, "M", i, "thread_sort_index");
    fprintf(c->out, ",\"args\":{\"sort_index\":%zu}}", (k->actor + 1) * 64 + k->lane);
  }
}

static void put_slice(chrome *c, const slice *s) {
  const trace *t = c->t;
  const trace_req *q = &t->reqs[s->req];
  char name[128], label[160];
  size_t first = s->hop != TRACE_NONE ? t->hops[s->hop].deliver : q->call;
  const trace_rec *r = &t->recs[first];
  size_t end = s->hop != TRACE_NONE ? t->hops[s->hop].end
                                    : (q->reply_end != TRACE_NONE ? q->reply_end : q->reply);
  snprintf(name, sizeof name, "%s%s", s->hop != TRACE_NONE ? "" : "call ", r->kind);
  event_open(c, "X", s->track, name);
  fprintf(c->out, ",\"cat\":\"%s\",\"ts\":", s->hop != TRACE_NONE ? "handle" : "call");
  put_ts(c, s->start);
  uint64_t dur = s->end - s->start;
  fprintf(c->out, ",\"dur\":%" PRIu64 ".%03" PRIu64 ",\"args\":{\"from\":", dur / 1000, dur % 1000);
  put_cstr(c->out, trace_actor_label(t, q->requester, label, sizeof label));
  fputs(",\"to\":", c->out);
  put_cstr(c->out, trace_actor_label(t, s->hop != TRACE_NONE ? t->hops[s->hop].actor : q->target,
                                     label, sizeof label));
  /* corr as a string, as in the trace: JavaScript viewers would round it above 2^53 */
  fprintf(c->out, ",\"corr\":\"%" PRIu64 "\",\"seq\":%" PRIu64 ",\"end\":\"%s\"", r->corr, r->seq,
          end == TRACE_NONE ? "unanswered" : trace_ev_name(t->recs[end].ev));
  if (end != TRACE_NONE) fprintf(c->out, ",\"status\":%" PRId32, t->recs[end].status);
  fputs(",\"fields\":", c->out);
  put_cstr(c->out, r->fields);
  fputs("}}", c->out);
}

/* A flow from record `from` (on slice src's track) to the delivery that starts hop h. */
static void put_flow(chrome *c, uint64_t id, size_t from, size_t src, size_t h) {
  const trace *t = c->t;
  const slice *dst = &c->slices[c->hop_slice[h]];
  event_open(c, "s", c->slices[src].track, t->recs[from].kind);
  fprintf(c->out, ",\"cat\":\"request\",\"id\":%" PRIu64 ",\"ts\":", id);
  put_ts(c, t->recs[from].t_ns);
  fputs("}", c->out);
  event_open(c, "f", dst->track, t->recs[from].kind);
  fprintf(c->out, ",\"cat\":\"request\",\"bp\":\"e\",\"id\":%" PRIu64 ",\"ts\":", id);
  put_ts(c, dst->start);
  fputs("}", c->out);
}

static void put_flows(chrome *c) {
  const trace *t = c->t;
  uint64_t id = 0;
  for (size_t r = 0; r < t->nreqs; r++) {
    const trace_req *q = &t->reqs[r];
    size_t src = q->parent != TRACE_NONE ? c->hop_slice[q->parent] : c->req_slice[r];
    size_t from = q->call;
    for (size_t h = q->first_hop; h != TRACE_NONE; h = t->hops[h].next) {
      if (from != TRACE_NONE && src != TRACE_NONE) put_flow(c, ++id, from, src, h);
      from = t->hops[h].end;
      src = c->hop_slice[h];
    }
  }
}

/* One-way deliveries and drops. */
static int put_instants(chrome *c) {
  const trace *t = c->t;
  for (size_t i = 0; i < t->nrecs; i++) {
    const trace_rec *r = &t->recs[i];
    bool oneway = r->ev == TRACE_DELIVER && r->req == TRACE_NONE && !r->is_reply;
    if (!oneway && r->ev != TRACE_DROP) continue;
    size_t k = track_of(c, r->to_actor, 0);
    if (k == TRACE_NONE) return -1;
    char name[128], label[160];
    snprintf(name, sizeof name, "%s%s", r->ev == TRACE_DROP ? "drop " : "", r->kind);
    event_open(c, "i", k, name);
    fprintf(c->out, ",\"cat\":\"%s\",\"s\":\"t\",\"ts\":", oneway ? "one-way" : "drop");
    put_ts(c, r->t_ns);
    fputs(",\"args\":{\"from\":", c->out);
    put_cstr(c->out, trace_actor_label(t, r->from_actor, label, sizeof label));
    fprintf(c->out, ",\"seq\":%" PRIu64 ",\"fields\":", r->seq);
    put_cstr(c->out, r->fields);
    fputs("}}", c->out);
  }
  return 0;
}

static int setup(chrome *c) {
  const trace *t = c->t;
  c->hop_slice = malloc((t->nhops + 1) * sizeof *c->hop_slice);
  c->req_slice = malloc((t->nreqs + 1) * sizeof *c->req_slice);
  c->actor_pid = malloc((t->nactors + 1) * sizeof *c->actor_pid);
  c->loops = malloc((t->nactors + 1) * sizeof *c->loops);
  c->loop_lens = malloc((t->nactors + 1) * sizeof *c->loop_lens);
  if (!c->hop_slice || !c->req_slice || !c->actor_pid || !c->loops || !c->loop_lens) return -1;
  for (size_t h = 0; h < t->nhops; h++) c->hop_slice[h] = TRACE_NONE;
  for (size_t r = 0; r < t->nreqs; r++) c->req_slice[r] = TRACE_NONE;
  for (size_t a = 0; a < t->nactors; a++)
    c->actor_pid[a] = loop_pid(c, t->actors[a].addr, t->actors[a].loop_len);
  bool threads = false; /* does any record involve a thread that is not an actor? */
  for (size_t i = 0; i < t->nrecs && !threads; i++)
    threads = t->recs[i].from_actor == TRACE_NONE || t->recs[i].to_actor == TRACE_NONE;
  c->thread_pid = threads ? c->nloops + 1 : 0;
  for (size_t a = 0; a < t->nactors; a++) /* every actor has a track, and first pick of tids */
    if (track_of(c, a, 0) == TRACE_NONE) return -1;
  return 0;
}

int trace_write_chrome(const trace *t, FILE *out) {
  chrome c = {.t = t, .out = out, .first = true};
  int rc = setup(&c) || collect(&c) ? -1 : 0;
  for (size_t i = 0; i < t->nrecs && !rc; i++) { /* the instants' tracks, before the metadata */
    const trace_rec *r = &t->recs[i];
    if (r->ev == TRACE_DROP || (r->ev == TRACE_DELIVER && r->req == TRACE_NONE))
      rc = track_of(&c, r->to_actor, 0) == TRACE_NONE ? -1 : 0;
  }
  if (!rc) {
    fputs("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[", out);
    put_metadata(&c);
    for (size_t i = 0; i < c.nslices; i++) put_slice(&c, &c.slices[i]);
    put_flows(&c);
    rc = put_instants(&c);
    fputs("\n]}\n", out);
  }
  free(c.slices);
  free(c.hop_slice);
  free(c.req_slice);
  free(c.tracks);
  free(c.actor_pid);
  free(c.loops);
  free(c.loop_lens);
  return rc || ferror(out) ? -1 : 0;
}
