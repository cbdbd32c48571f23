/* trace.c: the message trace hook.
 *
 * When on (MEMBACKING_TRACE=path, or mb_trace_open), every send and delivery appends one JSON
 * object per line to the file:
 *   {"seq":N,"t_ns":T,"ev":EV,"loop":L,"from":A,"to":A,"kind":K,"corr":"C","status":S,"fields":F}
 *   seq     global order of the records (a total order consistent with each thread's order and
 *           with message causality; unique, not consecutive)
 *   t_ns    CLOCK_MONOTONIC nanoseconds
 *   t_interp  true when t_ns is interpolated (see t_ns below); absent when it was read
 *   ev      send | call | forward | reply | deliver | drop  (reply: a reply or an error reply
 *           leaves the replier; deliver: a handler or reply callback is about to run)
 *   loop    name of the loop whose thread records the event ("-" for other threads)
 *   from,to actor addresses "LOOP/SLOT.GEN"; "-" for a thread that is not an actor
 *   from_name, to_name  the actors' names where the recording thread can know them (actors of
 *           its own loop), else ""
 *   kind    message kind name from the protocol
 *   corr    the correlation id (0 = one-way), as a decimal string: ids use all 64 bits (the
 *           caller's slot, the top bit for a blocking call), and JSON readers that hold numbers
 *           as doubles (JavaScript) would round them above 2^53
 *   status  the reply status (0 unless ev is reply, or deliver of a reply)
 *   fields  the protocol's text formatting of the payload, "name=value ..."
 * Strings are valid UTF-8 whatever the names hold: a byte that starts no valid sequence is
 * written as \ufffd (mb_utf8.h).
 *
 * Cost. When off: one predictable branch per message. When on: a binary record appended to a
 * per-thread buffer, no lock and no formatting: a 24-byte header with the names as indexes
 * into an interned table (each actor and loop caches its own index), then the message packed
 * (64 bytes of header plus the payload, up to REC_MSG_MAX; a bigger one is formatted at
 * once); the delivery of a local message right after its send or reply was recorded is an
 * 8-byte record (R_NEXT), or stores only its addresses (R_SAME). rpc.same_loop (four events
 * per round trip) measured ~29 ns untraced and 53-57 ns traced at p50; about one run in
 * eight is slower (~80 ns; placement-dependent: never with ASLR off, and untraced runs have
 * such a mode too). The buffer (BUF_BYTES) is formatted
 * (hand-written JSON, ~2,000 instructions a record) and written in bulk when it fills, when
 * its thread exits, at mb_trace_flush, at mb_trace_close, at process exit and on a fatal
 * signal (below): that cost lands on the message that fills the buffer (p99, not p50). At a
 * sustained maximal message rate the file is the limit: ~240 bytes per event, ~2.5 us per
 * traced round trip on average here (a new file takes ~470 MB/s on this disk). Lines of one
 * thread are in seq order; chunks of different threads may interleave, so the file is not
 * globally sorted (membacking-trace sorts by seq).
 *
 * seq: a thread takes blocks of SEQ_BLOCK numbers from a global counter. An event that crosses
 * threads (its sender or receiver is not an actor of the recording thread's loop, or the thread
 * is not a loop) starts a new block, so a delivery always follows its send and everything that
 * preceded the send on the sender's thread. Events between actors of one loop use the next
 * number of the thread's block.
 * t_ns: from the TSC (x86-64; calibrated against CLOCK_MONOTONIC when the trace opens). An
 * event that crosses threads, the first event of each buffer and every TS_EVERY-th event of a
 * thread read it; the others get a time interpolated between their neighbours' when written
 * (off by at most that gap; marked t_interp). MEMBACKING_TRACE_TIMES=exact reads it at every
 * event instead: what membacking-trace --stages needs to be exact, at ~1.3x the traced cost
 * (rpc.same_loop ~77 ns against ~55 ns sampled).
 *
 * Crashes. Formatted lines go to a buffer of this file's own (OUT_BYTES), written with
 * write(2), so that a fatal signal can still write them. mb_trace_open installs, once per
 * process, a handler for SIGABRT, SIGBUS, SIGFPE, SIGILL and SIGSEGV, each where the signal's
 * action is still the default (the process would die of it: nobody else handles it). The
 * handler formats what every thread has buffered and writes it (best effort: it waits a
 * bounded time for the locks of a thread caught mid-flush, then goes ahead), then dies of the
 * signal as the default action would. The library's own SIGSEGV/SIGBUS handler (mem/access.c,
 * installed at the first mb_mm_create) chains faults that are not its own to the handler it
 * found, so a trace opened before the first manager (MEMBACKING_TRACE always is) is written on
 * any crash; one opened later is not on SIGSEGV/SIGBUS, as the handler then in place is not
 * the default one. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define HAVE_TSC 1
#else
#define HAVE_TSC 0
#endif

#include "internal.h"
#include "mb_utf8.h"

enum {
  REC_MSG_MAX = 512,        /* message bytes copied into a record */
  BUF_BYTES = 4 << 20,        /* per-thread buffer */
  SEQ_BLOCK = 1u << 12,
  TS_EVERY = 64,     /* the default; ts_every */
  NAME_LOOP = 32,
  NAME_ACTOR = 48,
};

/* R_SAME: a delivery whose message is the one of the thread's previous record (a local message
 * delivered right after its send or reply was recorded: nothing can change it in between): the body holds only its from and to slot and
 * generation (2 x 2 x 4 bytes), which a reply swaps in between. */
/* R_NEXT: an 8-byte record (len, flags, ev only): the delivery of the previous record's local
 * message, with the next seq; its addresses and names are the previous record's, swapped when
 * that was the reply (recorded before the reply turns round). */
enum { R_LOCAL = 1, R_TEXT = 2, R_TS = 4, R_NOLOOP = 8, R_SAME = 16, R_NEXT = 32 };

/* A record: this header, then R_TS: the TSC read at the event (8 bytes); unless R_LOCAL: the
 * interned names of the sender's and receiver's loops (2 x 4 bytes); then the message (packed,
 * see copy_msg), or R_TEXT: an mb_msg then its fields' text. */
typedef struct rec {
  uint16_t len;      /* bytes of the record, a multiple of 8 */
  uint8_t flags;
  uint8_t ev;        /* index in ev_names */
  uint32_t loop;     /* interned names; 0 = "" */
  uint32_t from_name, to_name;
  uint64_t seq;
  _Alignas(8) unsigned char body[];
} rec;

/* Indexed by MB__EV_*. */
static const char *const ev_names[] = {"send", "call", "forward", "reply", "deliver", "drop"};

static size_t rec_ext(unsigned flags) {
  return ((flags & R_TS) ? 8 : 0) + ((flags & R_LOCAL) ? 0 : 8);
}
static const unsigned char *rec_msg(const rec *r) { return r->body + rec_ext(r->flags); }
static uint64_t rec_tsc(const rec *r) {
  uint64_t t;
  memcpy(&t, r->body, 8);
  return t;
}
static uint32_t rec_loop_name(const rec *r, int which) { /* 0: sender's, 1: receiver's */
  uint32_t v;
  if (r->flags & R_LOCAL) return r->loop;
  memcpy(&v, r->body + ((r->flags & R_TS) ? 8 : 0) + 4 * which, 4);
  return v;
}

/* ---- interned names ---------------------------------------------------------------------
 * Loop and actor names are copied once into a global append-only table; a record holds their
 * index. Each thread keeps a small cache from an object's address to the index, checked
 * against the object's current name (an address may be reused by another loop or actor). */
enum { NAME_MAX_ = 48, CHUNK = 1024, CHUNKS = 4096, HCAP_MIN = 1024 };
typedef struct name_ent { char s[NAME_MAX_]; } name_ent;
static name_ent *name_chunks[CHUNKS];
static uint32_t name_count = 1;  /* 0 is "" */
static uint32_t *name_hash;      /* open addressing on content: index + 1, 0 = free */
static uint32_t name_hcap;
static pthread_mutex_t name_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *name_of(uint32_t id) {
  if (!id) return "";
  return name_chunks[id / CHUNK][id % CHUNK].s;
}

static uint32_t name_hashfn(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

static uint32_t name_intern(const char *src, size_t n) {
  char s[NAME_MAX_] = {0};
  size_t k = strnlen(src, n);
  if (k >= NAME_MAX_) k = NAME_MAX_ - 1;
  memcpy(s, src, k);
  if (!k) return 0;
  pthread_mutex_lock(&name_lock);
  if ((name_count + 1) * 2 > name_hcap) {
    uint32_t cap = name_hcap ? name_hcap * 2 : HCAP_MIN;
    uint32_t *h = calloc(cap, sizeof *h);
    if (!h) goto fail;
    for (uint32_t i = 0; i < name_hcap; i++) {
      if (!name_hash[i]) continue;
      uint32_t j = name_hashfn(name_of(name_hash[i] - 1)) & (cap - 1);
      while (h[j]) j = (j + 1) & (cap - 1);
      h[j] = name_hash[i];
    }
    free(name_hash);
    name_hash = h;
    name_hcap = cap;
  }
  uint32_t j = name_hashfn(s) & (name_hcap - 1), id;
  for (; name_hash[j]; j = (j + 1) & (name_hcap - 1)) {
    id = name_hash[j] - 1;
    if (!strcmp(name_of(id), s)) goto out;
  }
  id = name_count;
  if (id / CHUNK >= CHUNKS) goto fail;
  if (!name_chunks[id / CHUNK] && !(name_chunks[id / CHUNK] = calloc(CHUNK, sizeof(name_ent))))
    goto fail;
  memcpy(name_chunks[id / CHUNK][id % CHUNK].s, s, NAME_MAX_);
  name_count++;
  name_hash[j] = id + 1;
out:
  pthread_mutex_unlock(&name_lock);
  return id;
fail:
  pthread_mutex_unlock(&name_lock);
  return 0;
}

enum { NCACHE = 64 };
typedef struct name_cache_ent {
  const void *key;
  uint32_t id;
  uint64_t raw[NAME_MAX_ / 8];
} name_cache_ent;

static inline uint64_t load8(const char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* The index of the name of object key whose name buffer (n bytes, a multiple of 8) is src. */
static inline __attribute__((always_inline)) uint32_t name_cached(name_cache_ent *c,
                                                                  const void *key,
                                                                  const char *src, size_t n) {
  name_cache_ent *e = &c[((uint64_t)(uintptr_t)key * 0x9e3779b97f4a7c15u) >> 58]; /* NCACHE 64 */
  uint64_t d = (uint64_t)(uintptr_t)e->key ^ (uint64_t)(uintptr_t)key;
  for (size_t i = 0; i < n / 8; i++) d |= load8(src + 8 * i) ^ e->raw[i];
  if (__builtin_expect(!d, 1)) return e->id;
  e->key = key;
  memcpy(e->raw, src, n);
  e->id = name_intern(src, n);
  return e->id;
}

/* The interned name of an actor or loop of the calling thread's loop (names never change once
 * made), cached in the object itself. */
static inline uint32_t own_name(uint32_t *cache, const char *name, size_t n) {
  if (__builtin_expect(!*cache, 0)) *cache = name_intern(name, n) + 1;
  return *cache - 1;
}

/* A loop of another thread may be gone (a reply from a loop since stopped and freed): its
 * name comes from the registry of live loops, never from the loop itself. */
static uint32_t foreign_loop_name(name_cache_ent *nc, const mb_loop *l) {
  _Alignas(8) char name[NAME_LOOP] = {0};
  if (!l) return 0;
  if (!mb__loop_name_copy(l, name)) snprintf(name, sizeof name, "?");
  return name_cached(nc, l, name, NAME_LOOP);
}

typedef struct tbuf {
  pthread_mutex_t lock;  /* the owner's and another thread's flush */
  _Atomic size_t used;   /* written by the owner only (release), records below are complete */
  size_t flushed;        /* under lock */
  uint64_t gen;          /* the trace the records belong to; under lock for flushers */
  uint64_t seq_next, seq_end;
  uint32_t ts_count;
  uint64_t last_tsc;     /* the last sampled TSC already written; under lock */
  struct tbuf *prev, *next; /* registry */
  unsigned char *data;
  const mb_msg *last_msg; /* the owner's: the message of its last record (NULL: none usable) */
  uint64_t last_seq;      /* the owner's: the seq of its last record */
  struct rec_view {       /* under lock: the header of the last record written out */
    uint64_t seq;
    uint32_t loop, from_loop, to_loop, from_name, to_name;
    uint8_t ev, flags;
  } shown;
  union {                 /* under lock: the message of the last record written out */
    mb_msg m;
    unsigned char b[sizeof(mb_msg) + REC_MSG_MAX];
  } last;
  name_cache_ent names[NCACHE]; /* the owner's */
} tbuf;

_Atomic bool mb__trace_on;
/* Lock order: reg_lock, then a tbuf's lock, then trace_lock (a crash takes them in another
 * order, but only ever tries them). */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;   /* registry */
static pthread_mutex_t trace_lock = PTHREAD_MUTEX_INITIALIZER; /* out, calibration */
/* The file and its formatted lines not yet written; under trace_lock. Lines enter whole
 * (n moves past a line once it is complete) and leave from `done`, so a crash that interrupts
 * either can carry on from where they stand. */
enum { OUT_BYTES = 1 << 20 };
static struct trace_out {
  int fd;     /* -1: no trace open */
  int err;    /* the first write error since the last mb_trace_flush (negative errno) */
  char *buf;  /* OUT_BYTES, allocated at the first open */
  size_t n, done;
} out = {.fd = -1};
static _Atomic uint64_t trace_seq;
static _Atomic uint64_t trace_gen;
static tbuf *registry;
static pthread_key_t tb_key;
static pthread_once_t tb_once = PTHREAD_ONCE_INIT;
static _Thread_local tbuf *tls_tb;
static uint64_t cal_tsc, cal_ns;
static double cal_ns_per_tick = 1.0;

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t ticks(void) {
#if HAVE_TSC
  return __rdtsc();
#else
  return mono_ns();
#endif
}

static void calibrate(void) {
#if HAVE_TSC
  uint64_t n0 = mono_ns(), t0 = ticks(), n1, t1;
  do {
    n1 = mono_ns();
    t1 = ticks();
  } while (n1 - n0 < 2000000);
  cal_ns_per_tick = (double)(n1 - n0) / (double)(t1 - t0);
  cal_tsc = t1;
  cal_ns = n1;
#else
  cal_tsc = cal_ns = 0;
  cal_ns_per_tick = 1.0;
#endif
}

static uint64_t tsc_to_ns(uint64_t t) {
  double d = (double)(int64_t)(t - cal_tsc) * cal_ns_per_tick;
  return (uint64_t)((int64_t)cal_ns + (int64_t)d);
}

/* A message in a record: its header without the runtime's links (to .. corr, status and
 * flags), then its payload. */
#define HDR_A offsetof(mb_msg, to)
#define HDR_A_END offsetof(mb_msg, reply__)
#define HDR_B offsetof(mb_msg, status)
#define HDR_B_END (offsetof(mb_msg, flags__) + sizeof(uint32_t))
#define PACKED_HDR ((HDR_A_END - HDR_A) + (HDR_B_END - HDR_B))
_Static_assert(PACKED_HDR % 8 == 0, "packed header");

static inline void copy_msg(unsigned char *dst, const mb_msg *m, size_t n) {
  const unsigned char *src = (const unsigned char *)m;
  memcpy(dst, src + HDR_A, HDR_A_END - HDR_A);
  memcpy(dst + (HDR_A_END - HDR_A), src + HDR_B, HDR_B_END - HDR_B);
  dst += PACKED_HDR;
  size_t i = sizeof(mb_msg), k = 0;
  for (; i + 16 <= n; i += 16, k += 16) memcpy(dst + k, src + i, 16);
  for (; i < n; i++, k++) dst[k] = src[i];
}

/* The message of a record back in a buffer of sizeof(mb_msg) + REC_MSG_MAX bytes. */
static void unpack_msg(mb_msg *out, const unsigned char *p) {
  unsigned char *dst = (unsigned char *)out;
  memset(out, 0, sizeof *out);
  memcpy(dst + HDR_A, p, HDR_A_END - HDR_A);
  memcpy(dst + HDR_B, p + (HDR_A_END - HDR_A), HDR_B_END - HDR_B);
  if (out->size > sizeof(mb_msg))
    memcpy(dst + sizeof(mb_msg), p + PACKED_HDR, out->size - sizeof(mb_msg));
}

/* ---- writing ------------------------------------------------------------------------- */

/* Line building, without stdio per field. A line is at most ~5 KB (every string escaped at
 * 6 bytes a character: fields 512, names 48, loop names 32, kind names), so appends need
 * no bounds checks. */
typedef struct line {
  char buf[8192];
  size_t n;
} line;

#define PUT_LIT(ln, lit) (memcpy((ln)->buf + (ln)->n, lit, sizeof lit - 1), (ln)->n += sizeof lit - 1)

static void put_u64(line *ln, uint64_t v) {
  char t[20];
  size_t k = sizeof t;
  do {
    t[--k] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (k < sizeof t) ln->buf[ln->n++] = t[k++];
}

/* Appends s (its first 512 bytes at most, and the rest of a sequence that starts within
 * them) as the body of a JSON string; a byte that starts no valid UTF-8 sequence becomes
 * U+FFFD, so the line is valid JSON whatever the names and fields hold. */
static void put_json(line *ln, const char *s) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)s, *end = p + 512;
  while (*p && p < end) {
    unsigned char c = *p;
    char *o = ln->buf + ln->n;
    size_t k = c >= 0x80 ? mb__utf8_len(p) : 1;
    if (k == 0) {
      memcpy(o, "\\ufffd", 6);
      ln->n += 6;
      k = 1;
    } else if (c >= 0x20 && c != '"' && c != '\\') {
      memcpy(o, p, k);
      ln->n += k;
    } else if (c < 0x20) {
      memcpy(o, "\\u00", 4);
      o[4] = hex[c >> 4];
      o[5] = hex[c & 15];
      ln->n += 6;
    } else {
      o[0] = '\\';
      o[1] = (char)c;
      ln->n += 2;
    }
    p += k;
  }
}

/* An actor address "LOOP/SLOT.GEN", or "-". */
static void put_addr(line *ln, const char *loop, mb_addr a) {
  if (!a.loop) {
    PUT_LIT(ln, "-");
    return;
  }
  put_json(ln, loop);
  PUT_LIT(ln, "/");
  put_u64(ln, a.slot);
  PUT_LIT(ln, ".");
  put_u64(ln, a.gen);
}

/* The message of record r: unpacked into b->last (which R_SAME records reuse). */
static const mb_msg *rec_message(tbuf *b, const rec *r) {
  if (r->flags & R_TEXT) return (const mb_msg *)(const void *)rec_msg(r);
  if (r->flags & R_SAME) {
    uint32_t a[4];
    memcpy(a, rec_msg(r), sizeof a);
    b->last.m.from.slot = a[0], b->last.m.from.gen = a[1];
    b->last.m.to.slot = a[2], b->last.m.to.gen = a[3];
  } else {
    unpack_msg(&b->last.m, rec_msg(r)); /* size <= REC_MSG_MAX: else R_TEXT */
  }
  return &b->last.m;
}

/* The header of record r (kept in b->shown): R_NEXT derives it from the previous one. */
static struct rec_view rec_view_of(tbuf *b, const rec *r) {
  struct rec_view v = b->shown;
  if (r->flags & R_NEXT) {
    v.seq++;
    v.ev = MB__EV_DELIVER;
    if (b->shown.ev == MB__EV_REPLY) {
      mb_addr a = b->last.m.from;
      b->last.m.from = b->last.m.to;
      b->last.m.to = a;
      v.from_name = b->shown.to_name, v.to_name = b->shown.from_name;
      v.from_loop = b->shown.to_loop, v.to_loop = b->shown.from_loop;
    }
  } else {
    v = (struct rec_view){r->seq, r->loop, rec_loop_name(r, 0), rec_loop_name(r, 1),
                          r->from_name, r->to_name, r->ev, r->flags};
  }
  b->shown = v;
  return v;
}

/* Writes out's pending lines to the file; under trace_lock. A failed write drops them (the
 * error is kept for mb_trace_flush): a full disk must not stop the traced program. */
static void out_drain(void) {
  while (out.done < out.n) {
    ssize_t k = write(out.fd, out.buf + out.done, out.n - out.done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      if (!out.err) out.err = k < 0 ? -errno : -EIO;
      break;
    }
    out.done += (size_t)k;
  }
  out.n = out.done = 0;
}

static void out_put(const char *s, size_t n) {
  if (out.n + n > OUT_BYTES) out_drain();
  memcpy(out.buf + out.n, s, n);
  out.n += n;
}

/* Formats record r of b as one line into out; under trace_lock. */
static void write_rec(tbuf *b, const rec *r, uint64_t t_ns, bool interp) {
  struct rec_view v = rec_view_of(b, r);
  const mb_msg *m = (r->flags & R_NEXT) ? &b->last.m : rec_message(b, r);
  char fields[512];
  const char *fx = fields;
  if (r->flags & R_TEXT) fx = (const char *)rec_msg(r) + sizeof(mb_msg);
  else mb_msg_format(m, fields, sizeof fields);
  static line ln; /* under trace_lock too (not per thread: the threads' TLS stays small) */
  ln.n = 0;
  PUT_LIT(&ln, "{\"seq\":");
  put_u64(&ln, v.seq);
  PUT_LIT(&ln, ",\"t_ns\":");
  put_u64(&ln, t_ns);
  if (interp) PUT_LIT(&ln, ",\"t_interp\":true");
  PUT_LIT(&ln, ",\"ev\":\"");
  put_json(&ln, ev_names[v.ev]);
  PUT_LIT(&ln, "\",\"loop\":\"");
  put_json(&ln, (v.flags & R_NOLOOP) ? "-" : name_of(v.loop));
  PUT_LIT(&ln, "\",\"from\":\"");
  put_addr(&ln, name_of(v.from_loop), m->from);
  PUT_LIT(&ln, "\",\"to\":\"");
  put_addr(&ln, name_of(v.to_loop), m->to);
  PUT_LIT(&ln, "\",\"kind\":\"");
  put_json(&ln, mb_msg_kind_name(m));
  PUT_LIT(&ln, "\",\"from_name\":\"");
  put_json(&ln, name_of(v.from_name));
  PUT_LIT(&ln, "\",\"to_name\":\"");
  put_json(&ln, name_of(v.to_name));
  PUT_LIT(&ln, "\",\"corr\":\"");
  put_u64(&ln, m->corr);
  PUT_LIT(&ln, "\",\"status\":");
  if (m->status < 0) PUT_LIT(&ln, "-");
  put_u64(&ln, m->status < 0 ? (uint64_t)0 - (uint64_t)(int64_t)m->status : (uint64_t)m->status);
  PUT_LIT(&ln, ",\"fields\":\"");
  put_json(&ln, fx[0] == ' ' ? fx + 1 : fx);
  PUT_LIT(&ln, "\"}\n");
  out_put(ln.buf, ln.n);
}

/* The end of the run of unsampled records from b->flushed (the offset of the next sampled
 * record, or used), how many it holds, and the TSC that closes it (that record's, or now). */
static size_t run_of(const tbuf *b, size_t used, uint32_t *n, uint64_t *next) {
  size_t end = b->flushed;
  for (*n = 0; end < used; ++*n) {
    const rec *r = (const rec *)(const void *)(b->data + end);
    if (r->flags & R_TS) {
      *next = rec_tsc(r);
      return end;
    }
    end += r->len;
  }
  *next = ticks();
  return end;
}

/* Writes b's records from b->flushed to used, each unsampled one at a time interpolated
 * between the sampled ones around it; under trace_lock. b->flushed and b->last_tsc move with
 * every record, so that a crash that interrupts a flush carries on after its last line. */
static void write_records(tbuf *b, size_t used) {
  while (b->flushed < used) {
    uint32_t n;
    uint64_t next;
    size_t run_end = run_of(b, used, &n, &next);
    uint64_t prev = b->last_tsc == 0 || b->last_tsc > next ? next : b->last_tsc;
    for (uint32_t i = 0; b->flushed < run_end; i++) {
      const rec *r = (const rec *)(const void *)(b->data + b->flushed);
      write_rec(b, r, tsc_to_ns(prev + (next - prev) * (i + 1) / (n + 1)), true);
      b->flushed += r->len;
    }
    if (b->flushed < used) {
      const rec *r = (const rec *)(const void *)(b->data + b->flushed);
      write_rec(b, r, tsc_to_ns(rec_tsc(r)), false);
      b->last_tsc = rec_tsc(r);
      b->flushed += r->len;
    }
  }
}

/* Writes b's complete records not yet written; trace_lock held, and b->lock but in a crash.
 * Records of a trace that was closed meanwhile are dropped. */
static void drain(tbuf *b) {
  size_t used = atomic_load_explicit(&b->used, memory_order_acquire);
  if (out.fd >= 0 && b->gen == atomic_load_explicit(&trace_gen, memory_order_relaxed))
    write_records(b, used);
  b->flushed = used;
}

/* b->lock held. */
static void flush_locked(tbuf *b) {
  if (b->flushed == atomic_load_explicit(&b->used, memory_order_acquire)) return;
  pthread_mutex_lock(&trace_lock);
  drain(b);
  pthread_mutex_unlock(&trace_lock);
}

/* The owner's flush: afterwards the buffer is empty. */
static void flush_own(tbuf *b) {
  pthread_mutex_lock(&b->lock);
  flush_locked(b);
  atomic_store_explicit(&b->used, 0, memory_order_relaxed);
  b->flushed = 0;
  pthread_mutex_unlock(&b->lock);
}

static void tb_exit(void *arg) {
  tbuf *b = arg;
  flush_own(b);
  pthread_mutex_lock(&reg_lock);
  if (b->prev) b->prev->next = b->next;
  else registry = b->next;
  if (b->next) b->next->prev = b->prev;
  pthread_mutex_unlock(&reg_lock);
  pthread_mutex_destroy(&b->lock);
  free(b->data);
  free(b);
  tls_tb = NULL;
}

static void tb_key_make(void) { pthread_key_create(&tb_key, tb_exit); }

/* Writes every thread's complete records (of the current trace) to the file; the first write
 * error since the last call, or 0. */
static int flush_all(void) {
  pthread_mutex_lock(&reg_lock);
  for (tbuf *b = registry; b; b = b->next) {
    pthread_mutex_lock(&b->lock);
    flush_locked(b);
    pthread_mutex_unlock(&b->lock);
  }
  pthread_mutex_unlock(&reg_lock);
  pthread_mutex_lock(&trace_lock);
  if (out.fd >= 0) out_drain();
  int err = out.err;
  out.err = 0;
  pthread_mutex_unlock(&trace_lock);
  return err;
}

static void at_exit(void) { (void)flush_all(); }

/* ---- fatal signals ------------------------------------------------------------------------
 * Only the default action is ever replaced (see the top of the file), so the handler ends by
 * restoring it: a fault then recurs when the handler returns, a sent signal is sent again. */

static const int crash_signals[] = {SIGABRT, SIGBUS, SIGFPE, SIGILL, SIGSEGV};
static _Atomic int crash_state; /* 0, 1 while a thread flushes, 2 once it is done */

/* Takes m if it comes free within ~200 ms (a thread caught mid-flush never frees it). */
static bool lock_briefly(pthread_mutex_t *m) {
  struct timespec ms = {0, 1000000};
  for (int i = 0; i < 200; i++) {
    if (pthread_mutex_trylock(m) == 0) return true;
    nanosleep(&ms, NULL);
  }
  return false;
}

/* Formats and writes what every thread has buffered, with no allocation and no stdio. */
static void crash_flush(void) {
  bool reg = lock_briefly(&reg_lock), tr = lock_briefly(&trace_lock);
  if (out.fd >= 0) {
    for (tbuf *b = registry; b; b = b->next) {
      bool held = lock_briefly(&b->lock);
      drain(b);
      if (held) pthread_mutex_unlock(&b->lock);
    }
    out_drain();
  }
  if (tr) pthread_mutex_unlock(&trace_lock);
  if (reg) pthread_mutex_unlock(&reg_lock);
}

static void on_crash(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  int saved_errno = errno, idle = 0;
  struct timespec ms = {0, 1000000};
  if (atomic_compare_exchange_strong(&crash_state, &idle, 1)) {
    crash_flush();
    atomic_store(&crash_state, 2);
  } else {
    /* Another thread crashed first: let its flush finish before this one ends the process. */
    for (int i = 0; i < 2000 && atomic_load(&crash_state) == 1; i++) nanosleep(&ms, NULL);
  }
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, NULL);
  if (si == NULL || si->si_code <= 0) raise(sig); /* sent (abort, kill): pending until we return */
  errno = saved_errno;
}

static void crash_install(void) {
  for (size_t i = 0; i < sizeof crash_signals / sizeof crash_signals[0]; i++) {
    struct sigaction cur, sa;
    /* SIG_DFL reads the same through sa_handler with SA_SIGINFO or without (a union). */
    if (sigaction(crash_signals[i], NULL, &cur) != 0 || cur.sa_handler != SIG_DFL) continue;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_crash;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK; /* SA_ONSTACK: a stack overflow still flushes */
    sigemptyset(&sa.sa_mask);
    for (size_t j = 0; j < sizeof crash_signals / sizeof crash_signals[0]; j++)
      sigaddset(&sa.sa_mask, crash_signals[j]);
    sigaction(crash_signals[i], &sa, NULL);
  }
}

/* ---- recording ----------------------------------------------------------------------- */

static tbuf *tb_new(void) {
  pthread_once(&tb_once, tb_key_make);
  tbuf *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->data = malloc(BUF_BYTES);
  if (!b->data) {
    free(b);
    return NULL;
  }
  pthread_mutex_init(&b->lock, NULL);
  pthread_mutex_lock(&reg_lock);
  b->next = registry;
  if (registry) registry->prev = b;
  registry = b;
  pthread_mutex_unlock(&reg_lock);
  pthread_setspecific(tb_key, b);
  tls_tb = b;
  return b;
}

/* Starts a fresh buffer for trace generation gen (the owner's; after a flush). */
static uint32_t ts_every = TS_EVERY; /* 1: MEMBACKING_TRACE_TIMES=exact (read once, when the
                                      * first loop starts: before any event) */

static void tb_restart(tbuf *b, uint64_t gen) {
  flush_own(b);
  b->ts_count = ts_every - 1; /* the buffer's first event reads the TSC */
  pthread_mutex_lock(&b->lock);
  if (b->gen != gen) b->last_tsc = 0;
  b->gen = gen;
  pthread_mutex_unlock(&b->lock);
  b->seq_next = b->seq_end = 0;
  b->last_msg = NULL; /* a buffer starts with a whole record */
}

/* The bytes of a record with these flags, of a message of msz bytes. */
static size_t rec_len(uint32_t flags, size_t msz) {
  size_t body = (flags & R_TEXT)   ? sizeof(mb_msg) + 512
                : (flags & R_SAME) ? 16
                                   : msz - sizeof(mb_msg) + PACKED_HDR;
  return (sizeof(rec) + rec_ext(flags) + body + 7) & ~(size_t)7;
}

/* Any event: the general path (first event of a thread, another thread's actor, a big message,
 * a full buffer, a new trace, a new seq block). */
__attribute__((noinline)) static void event_slow(int ev, const mb_msg *m) {
  tbuf *b = tls_tb;
  if (__builtin_expect(!b, 0) && !(b = tb_new())) return;
  uint64_t gen = atomic_load_explicit(&trace_gen, memory_order_acquire);
  mb_loop *l = mb__tls_loop;
  bool local = l && m->from.loop == l && m->to.loop == l;
  uint8_t evi = (uint8_t)ev;
  uint32_t flags = local ? R_LOCAL : 0;
  if (!local || ++b->ts_count >= ts_every) flags |= R_TS;
  size_t msz = m->size < sizeof(mb_msg) ? sizeof(mb_msg) : m->size;
  if (msz > REC_MSG_MAX) flags |= R_TEXT;
  else if (local && m == b->last_msg && evi == MB__EV_DELIVER) flags |= R_SAME;
  size_t len = rec_len(flags, msz);
  size_t used = atomic_load_explicit(&b->used, memory_order_relaxed);
  if (__builtin_expect(gen != b->gen || used + len > BUF_BYTES, 0)) {
    tb_restart(b, gen);
    used = 0;
    /* A buffer starts with a whole message (no R_SAME) and a time that was read. */
    flags = (flags & ~(uint32_t)R_SAME) | R_TS;
    len = rec_len(flags, msz);
  }
  if (!local || b->seq_next == b->seq_end) {
    b->seq_next = atomic_fetch_add_explicit(&trace_seq, SEQ_BLOCK, memory_order_acq_rel);
    b->seq_end = b->seq_next + SEQ_BLOCK;
  }
  rec *r = (rec *)(void *)(b->data + used);
  r->seq = b->seq_next++;
  r->ev = evi;
  unsigned char *p = r->body;
  if (flags & R_TS) {
    b->ts_count = 0;
    uint64_t t = ticks();
    memcpy(p, &t, 8);
    p += 8;
  }
  if (l) {
    r->loop = own_name(&l->trace_name, l->name, NAME_LOOP);
    mb_actor *fa = m->from.loop == l ? mb__actor_lookup(l, m->from) : NULL;
    mb_actor *ta = m->to.loop == l ? mb__actor_lookup(l, m->to) : NULL;
    r->from_name = fa ? own_name(&fa->trace_name, fa->name, NAME_ACTOR) : 0;
    r->to_name = ta ? own_name(&ta->trace_name, ta->name, NAME_ACTOR) : 0;
  } else {
    flags |= R_NOLOOP;
    r->loop = r->from_name = r->to_name = 0;
  }
  if (!local) {
    uint32_t names[2] = {foreign_loop_name(b->names, m->from.loop),
                         foreign_loop_name(b->names, m->to.loop)};
    memcpy(p, names, 8);
    p += 8;
  }
  if (flags & R_TEXT) {
    memcpy(p, m, sizeof(mb_msg));
    mb_msg_format(m, (char *)p + sizeof(mb_msg), 512);
  } else if (flags & R_SAME) {
    uint32_t a[4] = {m->from.slot, m->from.gen, m->to.slot, m->to.gen};
    memcpy(p, a, sizeof a);
  } else {
    copy_msg(p, m, msz);
  }
  b->last_msg = (flags & R_TEXT) ? NULL : m;
  b->last_seq = r->seq;
  r->flags = (uint8_t)flags;
  r->len = (uint16_t)len;
  atomic_store_explicit(&b->used, used + len, memory_order_release);
}

/* The delivery of the message of the thread's last record, right after it (an R_NEXT record);
 * the caller checked the trace generation and the room. */
static inline void next_delivery(tbuf *b) {
  size_t used = atomic_load_explicit(&b->used, memory_order_relaxed);
  rec *r = (rec *)(void *)(b->data + used);
  r->len = 8;
  r->flags = R_LOCAL | R_NEXT;
  r->ev = MB__EV_DELIVER;
  b->last_seq = b->seq_next++;
  b->ts_count++;
  b->last_msg = NULL;
  atomic_store_explicit(&b->used, used + 8, memory_order_release);
}

/* The common event, kept small: between two actors of the recording thread's loop, a message
 * that is copied (not formatted), room in the buffer and in the seq block. Anything else, and
 * every state change but the record itself, goes to event_slow. */
void mb__trace_event(int ev, const mb_msg *m) {
  tbuf *b = tls_tb;
  mb_loop *l = mb__tls_loop;
  size_t msz = m->size;
  if (__builtin_expect(!b || !l || m->from.loop != l || m->to.loop != l ||
                           msz < sizeof(mb_msg) || msz > REC_MSG_MAX ||
                           b->ts_count + 1 >= ts_every || b->seq_next == b->seq_end,
                       0)) {
    event_slow(ev, m);
    return;
  }
  uint8_t evi = (uint8_t)ev;
  bool same = m == b->last_msg && evi == MB__EV_DELIVER;
  size_t len = (sizeof(rec) + (same ? 16 : msz - sizeof(mb_msg) + PACKED_HDR) + 7) & ~(size_t)7;
  size_t used = atomic_load_explicit(&b->used, memory_order_relaxed);
  if (__builtin_expect(atomic_load_explicit(&trace_gen, memory_order_relaxed) != b->gen ||
                           used + len > BUF_BYTES,
                       0)) {
    event_slow(ev, m);
    return;
  }
  if (same && b->last_seq + 1 == b->seq_next) {
    next_delivery(b);
    return;
  }
  mb_actor *fa = mb__actor_lookup(l, m->from), *ta = mb__actor_lookup(l, m->to);
  rec *r = (rec *)(void *)(b->data + used);
  b->ts_count++;
  r->seq = b->seq_next++;
  r->ev = evi;
  r->loop = own_name(&l->trace_name, l->name, NAME_LOOP);
  r->from_name = fa ? own_name(&fa->trace_name, fa->name, NAME_ACTOR) : 0;
  r->to_name = ta ? own_name(&ta->trace_name, ta->name, NAME_ACTOR) : 0;
  if (same) {
    uint32_t a[4] = {m->from.slot, m->from.gen, m->to.slot, m->to.gen};
    memcpy(r->body, a, sizeof a);
  } else {
    copy_msg(r->body, m, msz);
  }
  b->last_msg = m;
  b->last_seq = r->seq;
  r->flags = R_LOCAL | (same ? R_SAME : 0);
  r->len = (uint16_t)len;
  atomic_store_explicit(&b->used, used + len, memory_order_release);
}

/* ---- open and close ------------------------------------------------------------------ */

static void first_open(void) {
  out.buf = malloc(OUT_BYTES);
  atexit(at_exit);
  crash_install();
}

int mb_trace_open(const char *path) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  int fd = path ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666) : -1;
  if (path && fd < 0) return MB_EINVAL;
  if (path) pthread_once(&once, first_open);
  if (path && !out.buf) {
    close(fd);
    return MB_ENOMEM;
  }
  (void)flush_all(); /* the previous trace's records go to its file */
  pthread_mutex_lock(&trace_lock);
  if (out.fd >= 0) close(out.fd);
  out.fd = fd;
  if (fd >= 0) calibrate();
  atomic_fetch_add_explicit(&trace_gen, 1, memory_order_acq_rel);
  atomic_store(&mb__trace_on, fd >= 0);
  pthread_mutex_unlock(&trace_lock);
  return MB_OK;
}

int mb_trace_flush(void) { return flush_all(); }

void mb_trace_close(void) { (void)mb_trace_open(NULL); }

void mb_trace_pause(bool paused) {
  pthread_mutex_lock(&trace_lock);
  atomic_store(&mb__trace_on, !paused && out.fd >= 0);
  pthread_mutex_unlock(&trace_lock);
}

static void env_open(void) {
  const char *times = getenv("MEMBACKING_TRACE_TIMES");
  if (times && !strcmp(times, "exact")) ts_every = 1;
  const char *p = getenv("MEMBACKING_TRACE");
  if (p && *p) (void)mb_trace_open(p);
}

void mb__trace_env_init(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, env_open);
}
