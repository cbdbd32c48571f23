/* trace_text.c: --text, the trace as readable lines, one per record:
 *
 *       SEQ       T_US  LOOP      EVENT    DIR KIND          FROM -> TO  [CORR]  status=S  FIELDS
 *
 * T_US is microseconds since the trace's first record. DIR is '>' for a request on its way
 * (call, its delivery, a forward), '<' for its reply (the reply, its delivery, its drop), '.'
 * for a one-way message. KIND is indented two spaces per level of nesting (a request made
 * while handling another is one level deeper). Actors are "name@LOOP/SLOT.GEN" (the name as
 * any record gives it). CORR is "HI.LO" (its two 32-bit halves) or "sync N" for a blocking
 * call from a thread that is not an actor. status is shown for replies and errors. */
#include <inttypes.h>
#include <string.h>

#include "trace.h"

static char dir_of(const trace_rec *r) {
  if (r->corr == 0) return '.';
  return r->is_reply ? '<' : '>';
}

static void corr_text(uint64_t corr, char *buf, size_t len) {
  if (corr == 0) snprintf(buf, len, "-");
  else if (corr >> 63) snprintf(buf, len, "sync %" PRIu64, corr & ~((uint64_t)1 << 63));
  else snprintf(buf, len, "%" PRIu64 ".%" PRIu64, corr >> 32, corr & 0xffffffffu);
}

int trace_write_text(const trace *t, FILE *out) {
  fprintf(out, "%9s %11s  %-8s  %-7s  %-24s  %s\n", "#SEQ", "T_US", "LOOP", "EVENT", "DIR KIND",
          "FROM -> TO  [CORR]  status=S  FIELDS");
  for (size_t i = 0; i < t->nrecs; i++) {
    const trace_rec *r = &t->recs[i];
    unsigned depth = r->req != TRACE_NONE ? t->reqs[r->req].depth : 0;
    char kind[96], from[160], to[160], corr[32];
    snprintf(kind, sizeof kind, "%*s%c %s", (int)(depth > 16 ? 32 : 2 * depth), "",
             dir_of(r), r->kind);
    corr_text(r->corr, corr, sizeof corr);
    fprintf(out, "%9" PRIu64 " %11.3f  %-8s  %-7s  %-24s  %s -> %s  [%s]", r->seq,
            (double)(r->t_ns - t->t0) / 1e3, r->loop[0] ? r->loop : "\"\"", trace_ev_name(r->ev),
            kind, trace_actor_label(t, r->from_actor, from, sizeof from),
            trace_actor_label(t, r->to_actor, to, sizeof to), corr);
    if (r->is_reply || r->status) fprintf(out, "  status=%" PRId32, r->status);
    fprintf(out, "%s%s\n", r->fields[0] ? "  " : "", r->fields);
  }
  return ferror(out) ? -1 : 0;
}
