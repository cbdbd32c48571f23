/* trace.c: the message trace hook.
 *
 * When on (MEMBACKING_TRACE=path, or mb_trace_open), every send and delivery appends one JSON
 * object per line to the file:
 *   {"seq":N,"t_ns":T,"ev":EV,"loop":L,"from":A,"to":A,"kind":K,"corr":C,"status":S,"fields":F}
 *   seq     global order of the records (a total order consistent with each thread's order)
 *   t_ns    CLOCK_MONOTONIC nanoseconds
 *   ev      send | call | forward | reply | deliver | drop  (reply: a reply or an error reply
 *           leaves the replier; deliver: a handler or reply callback is about to run)
 *   loop    name of the loop whose thread records the event ("-" for other threads)
 *   from,to actor addresses "LOOP/SLOT.GEN"; "-" for a thread that is not an actor
 *   from_name, to_name  the actors' names where the recording thread can know them (actors of
 *           its own loop), else ""
 *   kind    message kind name from the protocol; corr the correlation id (0 = one-way)
 *   status  the reply status (0 unless ev is reply, or deliver of a reply)
 *   fields  the protocol's text formatting of the payload, "name=value ..."
 * When off, the cost is one predictable branch per message. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

_Atomic bool mb__trace_on;
static FILE *trace_file;
static pthread_mutex_t trace_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t trace_seq;

int mb_trace_open(const char *path) {
  FILE *f = path ? fopen(path, "w") : NULL;
  if (path && !f) return MB_EINVAL;
  pthread_mutex_lock(&trace_lock);
  if (trace_file) fclose(trace_file);
  trace_file = f;
  atomic_store(&mb__trace_on, f != NULL);
  pthread_mutex_unlock(&trace_lock);
  return MB_OK;
}

void mb_trace_close(void) { (void)mb_trace_open(NULL); }

static void env_open(void) {
  const char *p = getenv("MEMBACKING_TRACE");
  if (p && *p) (void)mb_trace_open(p);
}

void mb__trace_env_init(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, env_open);
}

static void addr_text(char *buf, size_t len, mb_addr a) {
  if (!a.loop) snprintf(buf, len, "-");
  else snprintf(buf, len, "%s/%" PRIu32 ".%" PRIu32, mb_loop_name(a.loop), a.slot, a.gen);
}

/* The name of an actor of the calling thread's loop; "" for any other. */
static const char *actor_name(mb_addr a) {
  mb_loop *l = mb__tls_loop;
  mb_actor *actor = (l && a.loop == l) ? mb__actor_lookup(l, a) : NULL;
  return actor ? mb_actor_name(actor) : "";
}

/* Writes s as the body of a JSON string. */
static void put_json(FILE *f, const char *s) {
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', f);
    if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
    else fputc(*s, f);
  }
}

void mb__trace_event(const char *ev, const mb_msg *m) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  char from[64], to[64], fields[512];
  addr_text(from, sizeof from, m->from);
  addr_text(to, sizeof to, m->to);
  mb_msg_format(m, fields, sizeof fields);
  mb_loop *l = mb__tls_loop;
  pthread_mutex_lock(&trace_lock);
  if (trace_file) {
    fprintf(trace_file,
            "{\"seq\":%" PRIu64 ",\"t_ns\":%" PRIu64 ",\"ev\":\"%s\",\"loop\":\"%s\",\"from\":\"%s\","
            "\"to\":\"%s\",\"kind\":\"",
            atomic_fetch_add(&trace_seq, 1), (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec,
            ev, l ? l->name : "-", from, to);
    put_json(trace_file, mb_msg_kind_name(m));
    fputs("\",\"from_name\":\"", trace_file);
    put_json(trace_file, actor_name(m->from));
    fputs("\",\"to_name\":\"", trace_file);
    put_json(trace_file, actor_name(m->to));
    fprintf(trace_file, "\",\"corr\":%" PRIu64 ",\"status\":%" PRId32 ",\"fields\":\"", m->corr,
            m->status);
    put_json(trace_file, fields[0] == ' ' ? fields + 1 : fields);
    fputs("\"}\n", trace_file);
  }
  pthread_mutex_unlock(&trace_lock);
}
