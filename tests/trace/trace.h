/* trace.h: membacking-trace's model of a message trace (the JSON lines runtime/trace.c writes).
 *
 * Reading (trace_read.c) turns each line into a trace_rec. Linking (trace_link.c) then finds
 * the actors (by address) and the requests: a request is one call, matched by (requester,
 * corr), with each receiver's handling of it (a hop: from its delivery to the reply, or to
 * the forward that hands it on) and the delivery of its reply at the requester:
 *
 *   call A->B  ..  deliver A->B (hop at B)  ..  reply A->B  ..  deliver B->A (reply at A)
 *
 * A request made while the requester is handling another (between that hop's delivery and
 * its end) is nested in that hop: its parent. The writers (text, Chrome, stages, golden)
 * read the linked model only.
 *
 * Indices are size_t; TRACE_NONE means "none". Everything is single-threaded. */
#ifndef MB_TRACE_TOOL_H
#define MB_TRACE_TOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define TRACE_NONE ((size_t)-1)

typedef enum trace_ev {
  TRACE_SEND,
  TRACE_CALL,
  TRACE_FORWARD,
  TRACE_REPLY,
  TRACE_DELIVER,
  TRACE_DROP,
} trace_ev;

/* "send", "call", ...; NULL when out of range. */
const char *trace_ev_name(trace_ev ev);

/* One line of the trace. The strings point into buf, which the record owns. */
typedef struct trace_rec {
  uint64_t seq, t_ns, corr;
  int32_t status;
  trace_ev ev;
  bool t_interp;  /* t_ns was interpolated by the runtime, not read from the clock */
  uint32_t line;  /* 1-based line in the file */
  char *loop, *from, *to, *kind, *from_name, *to_name, *fields;
  char *buf;
  /* set by trace_link */
  size_t from_actor, to_actor; /* TRACE_NONE for "-" (a thread that is not an actor) */
  size_t req;                  /* the request the record belongs to, TRACE_NONE if none */
  bool is_reply;               /* a reply, the delivery of a reply, or a dropped reply */
} trace_rec;

typedef struct trace_actor {
  char *addr;       /* "LOOP/SLOT.GEN" (owned) */
  size_t loop_len;  /* its loop's name is addr[0, loop_len) */
  uint32_t slot, gen;
  const char *name; /* the first name the trace gives it, "" when none */
  bool name_conflict; /* the trace gives this address several names */
} trace_actor;

/* One receiver's handling of a request. */
typedef struct trace_hop {
  size_t req, actor;
  size_t deliver; /* the delivery record */
  size_t end;     /* the reply or forward record that ends the handling; TRACE_NONE if none */
  size_t next;    /* the next hop of the same request (after a forward) */
} trace_hop;

typedef struct trace_req {
  size_t requester;   /* actor; TRACE_NONE for a thread that is not an actor */
  uint64_t corr;
  const char *kind;
  size_t target;      /* the actor the request is on its way to, or at */
  size_t call;        /* record indices; TRACE_NONE when not in the trace */
  size_t reply;
  size_t reply_end;   /* the delivery of the reply at the requester, or its drop */
  size_t first_hop, last_hop;
  size_t parent;      /* the hop the requester was handling when it called; TRACE_NONE */
  unsigned depth;     /* 0 at top level */
  int state;          /* trace_link's matching state */
} trace_req;

typedef struct trace {
  const char *path;
  trace_rec *recs;
  size_t nrecs, caprecs;
  trace_actor *actors;
  size_t nactors, capactors;
  trace_hop *hops;
  size_t nhops, caphops;
  trace_req *reqs;
  size_t nreqs, capreqs;
  uint64_t t0, t1; /* earliest and latest t_ns */
  size_t ninterp;  /* records whose t_ns was interpolated (a trace with sampled times) */
  size_t *actor_index; /* open-addressing hash of actors by address */
  size_t actor_index_cap;
} trace;

/* ---- trace_read.c ------------------------------------------------------------------------- */

/* Parse one line (without its newline) in place into r; the strings point into line. 0, or -1
 * with a message (with the column) in err. */
int trace_parse_line(char *line, size_t len, trace_rec *r, char *err, size_t errlen);
/* Read a whole trace ("-" is stdin) into t, sorted by seq. 0, or -1 after printing
 * "PATH:LINE: what" to err. */
int trace_read(trace *t, const char *path, FILE *err);
void trace_free(trace *t);

/* ---- trace_link.c ------------------------------------------------------------------------- */

/* Find actors, requests and hops. 0, or -1 (out of memory, printed to err). Inconsistencies
 * (a reply to a request that is not in the trace, ...) are not errors; warnings about
 * addresses the trace gives several names go to err. */
int trace_link(trace *t, FILE *err);
/* "name@addr", or addr when the name is unknown; "-" for TRACE_NONE. */
const char *trace_actor_label(const trace *t, size_t actor, char *buf, size_t len);
/* Nanoseconds from record a to record b (0 if b is earlier: clocks of different threads). */
uint64_t trace_span(const trace *t, size_t a, size_t b);

/* ---- writers -------------------------------------------------------------------------------- */

int trace_write_text(const trace *t, FILE *out);   /* trace_text.c */
int trace_write_chrome(const trace *t, FILE *out); /* trace_chrome.c */
int trace_write_stages(const trace *t, FILE *out); /* trace_stages.c */
int trace_write_golden(const trace *t, FILE *out); /* trace_golden.c */
/* Compare t with the golden file at path: 0 when they agree, 1 when not (the first
 * difference printed to out), 2 when the golden file cannot be read. */
int trace_check_golden(const trace *t, const char *path, FILE *out);

#endif
