/* msg.c: message allocation, the text formatter's field printers and error strings.
 *
 * With jemalloc (the default build) messages come from mallocx/sdallocx: the thread cache
 * serves same-thread alloc/free without locks and the sized free skips the size lookup.
 * Linking jemalloc replaces the process's malloc too (Debian's build has no prefix). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "mb_hot.h"
#include "fault_inject.h" /* MB_FI_ALLOC: a test can fail any message allocation */
#include "internal.h"
#include "thread_exit.h"

/* C++ embedders see mb_msg.next__ as a plain pointer (MB_ATOMIC_LINK): same layout. */
_Static_assert(sizeof(struct mb_msg *_Atomic) == sizeof(struct mb_msg *) &&
                   _Alignof(struct mb_msg *_Atomic) == _Alignof(struct mb_msg *),
               "mb_msg layout differs between C and C++");

#if MB_USE_JEMALLOC
#include <jemalloc/jemalloc.h>
#include <pthread.h>

/* jemalloc 5.3 dereferences NULL (SIGSEGV) when a thread's first allocation has to create an
 * arena and the host refuses the mapping for it: at vm.max_map_count, or any mmap failure
 * (arena_choose_hard returns NULL unchecked; jemalloc issue #2289). A thread needs a new
 * automatic arena only while some of the opt.narenas (4 per CPU) do not exist yet, so the
 * first message allocation of the process creates them all, while mappings are still to be
 * had; from then on no thread's first allocation maps anything for an arena. Each costs
 * about 2 MiB of address space, 125 KiB of memory and 0.3 ms, once (a process running that
 * many threads pays the same). */
static pthread_once_t arenas_once = PTHREAD_ONCE_INIT;

static void arenas_create(void) {
  size_t init[3], hooks[3], ninit = 3, nhooks = 3, len = sizeof(unsigned);
  unsigned narenas = 0;
  if (mallctl("opt.narenas", &narenas, &len, NULL, 0) != 0 ||
      mallctlnametomib("arena.0.initialized", init, &ninit) != 0 ||
      mallctlnametomib("arena.0.extent_hooks", hooks, &nhooks) != 0)
    return;
  for (unsigned i = 1; i < narenas; i++) {
    bool exists = true;
    void *h = NULL;
    size_t blen = sizeof exists, hlen = sizeof h;
    init[1] = hooks[1] = i;
    /* an absent arena's hooks read as the defaults; writing them creates it with them */
    if (mallctlbymib(init, ninit, &exists, &blen, NULL, 0) == 0 && !exists &&
        mallctlbymib(hooks, nhooks, &h, &hlen, NULL, 0) == 0)
      mallctlbymib(hooks, nhooks, NULL, NULL, &h, sizeof h);
  }
}

/* A small per-thread cache of message blocks in 64-byte classes up to 512 bytes, in front of
 * jemalloc: a same-thread send and handle then costs a list pop and push. Blocks freed on
 * another thread join that thread's cache (at most CACHE_BYTES per class). Only in the jemalloc build:
 * the libc build is the one sanitizers run, and they must see every allocation. */
enum { GRAIN = 64, CLASSES = 8, CACHE_BYTES = 128 * 1024 }; /* per class and thread */

typedef struct block { struct block *next; } block;
typedef struct msg_cache {
  block *head[CLASSES];
  uint32_t room[CLASSES]; /* how many more blocks the class may keep */
  bool registered;
} msg_cache;

static _Thread_local msg_cache tcache;

static void cache_flush(void *arg) {
  msg_cache *c = arg;
  for (int k = 0; k < CLASSES; k++) {
    for (block *b = c->head[k], *next; b; b = next) {
      next = b->next;
      sdallocx(b, (size_t)(k + 1) * GRAIN, 0);
    }
    c->head[k] = NULL;
    c->room[k] = 0; /* the thread is ending: what it frees from now on goes back at once */
  }
}
/* The most blocks a thread keeps per class: CACHE_BYTES of them, counted down in the
 * thread's own cache (no division, and no table on a page of its own to read); none when
 * the thread's exit cannot flush them. */
__attribute__((noinline, cold)) static void cache_register(msg_cache *c) {
  bool flushed = mb__at_thread_exit(cache_flush, c);
  for (int k = 0; k < CLASSES; k++)
    c->room[k] = flushed ? CACHE_BYTES / ((uint32_t)(k + 1) * GRAIN) : 0;
  c->registered = true;
}

/* Zeroes a whole block (n a multiple of GRAIN) inline: cheaper than a memset call for the
 * few words a message has. */
static inline void *zero_words(void *p, size_t n) {
  uint64_t *w = p;
  for (size_t i = 0; i < n / 8; i += 8)
    w[i] = w[i + 1] = w[i + 2] = w[i + 3] = w[i + 4] = w[i + 5] = w[i + 6] = w[i + 7] = 0;
  return p;
}

/* A cache miss: from jemalloc, every arena made first (once per process). */
__attribute__((noinline)) static void *msg_alloc_new(size_t size) {
  pthread_once(&arenas_once, arenas_create);
  return mallocx(size, MALLOCX_ZERO);
}

static inline void *msg_alloc(size_t size) {
  size_t k = (size - 1) / GRAIN;
  if (k >= CLASSES) return msg_alloc_new(size);
  block *b = tcache.head[k];
  if (!b) return msg_alloc_new((k + 1) * GRAIN);
  tcache.head[k] = b->next;
  tcache.room[k]++;
  return zero_words(b, (k + 1) * GRAIN);
}

static inline void msg_dealloc(void *p, size_t size) {
  size_t k = (size - 1) / GRAIN;
  if (k < CLASSES && __builtin_expect(!tcache.registered, 0)) cache_register(&tcache);
  if (k >= CLASSES) {
    sdallocx(p, size, 0);
  } else if (tcache.room[k] > 0) {
    block *b = p;
    b->next = tcache.head[k];
    tcache.head[k] = b;
    tcache.room[k]--;
  } else {
    sdallocx(p, (k + 1) * GRAIN, 0);
  }
}
#else
#include <stdlib.h>
static inline void *msg_alloc(size_t size) { return calloc(1, size); }
static inline void msg_dealloc(void *p, size_t size) { (void)size; free(p); }
#endif

MB_HOT mb_msg *mb_msg_new(const mb_protocol *proto, uint32_t kind, size_t size) {
  if (size < sizeof(mb_msg) || size > UINT32_MAX || mb__fi_fail(MB_FI_ALLOC)) return NULL;
  mb_msg *m = msg_alloc(size);
  if (!m) return NULL;
  m->proto = proto;
  m->kind = kind;
  m->size = (uint32_t)size;
  return m;
}

MB_HOT void mb__msg_release(mb_msg *m) { msg_dealloc(m, m->size); }

void mb_msg_free(mb_msg *m) {
  if (!m) return;
  mb__consume(m);
  if (mb_msg_is_request(m) && !(m->flags__ & MB__F_REPLY)) {
    mb__bounce(m, MB_ENOREPLY);
    return;
  }
  mb__msg_release(m);
}

void mb_msg_keep(mb_msg *m) { mb__consume(m); }

const char *mb_msg_kind_name(const mb_msg *m) {
  if (m->flags__ & MB__F_SYS) return "exec";
  if (!m->proto || m->kind >= m->proto->nkinds) return "?";
  return m->proto->kind_names[m->kind];
}

void mb_msg_format(const mb_msg *m, char *buf, size_t len) {
  if (!len) return;
  buf[0] = '\0';
  if (m->proto && m->proto->format && m->kind < m->proto->nkinds && !(m->flags__ & MB__F_SYS))
    m->proto->format(m, buf, len);
}

/* ---- field printers (see MB__FMT_SELECT) ---------------------------------------------- */

/* Text appends without stdio (traces format every message): each writes at buf + n within
 * len bytes, keeps buf NUL-terminated, truncates, and returns n plus the full length. */
static size_t mb__app(char *buf, size_t len, size_t n, const char *s, size_t k) {
  if (n < len) {
    size_t room = len - 1 - n, c = k < room ? k : room;
    memcpy(buf + n, s, c);
    buf[n + c] = '\0';
  }
  return n + k;
}

static size_t mb__app_str(char *buf, size_t len, size_t n, const char *s) {
  return mb__app(buf, len, n, s, strlen(s));
}

static size_t mb__app_u64(char *buf, size_t len, size_t n, uint64_t v, bool hex) {
  char t[24];
  size_t k = sizeof t;
  do {
    t[--k] = "0123456789abcdef"[hex ? v & 15 : v % 10];
    v = hex ? v >> 4 : v / 10;
  } while (v);
  return mb__app(buf, len, n, t + k, sizeof t - k);
}

static size_t mb__app_i64(char *buf, size_t len, size_t n, int64_t v) {
  if (v < 0) n = mb__app(buf, len, n, "-", 1);
  return mb__app_u64(buf, len, n, v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v, false);
}

/* " name=" */
static size_t field_head(char *buf, size_t len, const char *name) {
  size_t n = mb__app(buf, len, 0, " ", 1);
  n = mb__app_str(buf, len, n, name);
  return mb__app(buf, len, n, "=", 1);
}

static size_t put(size_t len, size_t n) { return n < len ? n : len; }

static uint64_t load_uint(const void *p, size_t sz) {
  switch (sz) {
  case 1: return *(const uint8_t *)p;
  case 2: return *(const uint16_t *)p;
  case 4: return *(const uint32_t *)p;
  default: return *(const uint64_t *)p;
  }
}

size_t mb__fmt_uint(char *buf, size_t len, const char *name, const void *p, size_t sz) {
  uint64_t v = load_uint(p, sz);
  size_t n = field_head(buf, len, name);
  if (v > 0xffff) n = mb__app(buf, len, n, "0x", 2);
  return put(len, mb__app_u64(buf, len, n, v, v > 0xffff));
}

size_t mb__fmt_int(char *buf, size_t len, const char *name, const void *p, size_t sz) {
  int64_t v = 0;
  switch (sz) {
  case 1: v = *(const int8_t *)p; break;
  case 2: v = *(const int16_t *)p; break;
  case 4: v = *(const int32_t *)p; break;
  default: v = *(const int64_t *)p; break;
  }
  return put(len, mb__app_i64(buf, len, field_head(buf, len, name), v));
}

size_t mb__fmt_bool(char *buf, size_t len, const char *name, const void *p, size_t sz) {
  (void)sz;
  return put(len, mb__app_str(buf, len, field_head(buf, len, name),
                              *(const bool *)p ? "true" : "false"));
}

size_t mb__fmt_ptr(char *buf, size_t len, const char *name, const void *p, size_t sz) {
  (void)sz;
  uintptr_t v = (uintptr_t) * (void *const *)p;
  size_t n = field_head(buf, len, name);
  if (!v) return put(len, mb__app(buf, len, n, "(nil)", 5)); /* as printf's %p */
  return put(len, mb__app_u64(buf, len, mb__app(buf, len, n, "0x", 2), v, true));
}

/* Char arrays (decayed to char * in _Generic) are printed as strings; protocols have no
 * char * fields (see mb_protocol.h), so p always points at the characters. */
size_t mb__fmt_str(char *buf, size_t len, const char *name, const void *p, size_t sz) {
  const char *s = p;
  size_t n = mb__app(buf, len, field_head(buf, len, name), "\"", 1);
  n = mb__app(buf, len, n, s, strnlen(s, sz));
  return put(len, mb__app(buf, len, n, "\"", 1));
}

size_t mb__fmt_hex(char *buf, size_t len, const char *name, const void *p, size_t sz) {
  size_t n = put(len, field_head(buf, len, name));
  const uint8_t *b = p;
  for (size_t i = 0; i < sz && i < 32 && n + 3 < len; i++) {
    char h[2] = {"0123456789abcdef"[b[i] >> 4], "0123456789abcdef"[b[i] & 15]};
    n = mb__app(buf, len, n, h, 2);
  }
  return n;
}

const char *mb_strerror(int err) {
  switch (err) {
  case MB_OK: return "success";
  case MB_EGONE: return "actor gone";
  case MB_ESTOPPED: return "loop stopped";
  case MB_ENOREPLY: return "request dropped without reply";
  case MB_EDEADLK: return "blocking call on the receiver's own loop";
  case MB_ENOMEM: return "out of memory";
  case MB_EINVAL: return "invalid argument";
  default: break;
  }
  if (err < 0 && err > -4096) return strerror(-err);
  return "unknown error";
}
