/* latency.c: per-actor request latency, by message kind, for introspection (how long each
 * stage of an operation takes). A timed actor stamps each request at delivery; mb_reply, on
 * the same loop, adds the elapsed time to the actor's record for that kind. */
#include <stdlib.h>
#include <time.h>

#include "internal.h"

uint64_t mb__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void mb_actor_time_requests(mb_actor *a, bool on) { a->timing = on; }

size_t mb_actor_latency(const mb_actor *a, const mb_latency **out) {
  *out = a->lat;
  return a->nlat;
}

/* Bucket of ns: 4 per power of two (the top two bits below the leading one pick the quarter). */
static uint32_t bucket_of(uint64_t ns) {
  if (ns < 4) return (uint32_t)ns;
  uint32_t lg = 63u - (uint32_t)__builtin_clzll(ns);
  uint32_t b = 4 * lg + (uint32_t)((ns >> (lg - 2)) & 3);
  return b < MB_LATENCY_BUCKETS ? b : MB_LATENCY_BUCKETS - 1;
}

static uint64_t bucket_top(uint32_t b) {
  if (b < 4) return b;
  uint32_t lg = b / 4;
  return ((uint64_t)(4 + b % 4 + 1) << (lg - 2)) - 1;
}

uint64_t mb_latency_quantile(const mb_latency *l, double q) {
  if (!l->count) return 0;
  uint64_t want = (uint64_t)(q * (double)(l->count - 1)) + 1, seen = 0;
  for (uint32_t b = 0; b < MB_LATENCY_BUCKETS; b++)
    if ((seen += l->buckets[b]) >= want) return bucket_top(b) < l->max_ns ? bucket_top(b) : l->max_ns;
  return l->max_ns;
}

static mb_latency *record_for(mb_actor *a, const mb_protocol *proto, uint32_t kind) {
  for (uint32_t i = 0; i < a->nlat; i++)
    if (a->lat[i].proto == proto && a->lat[i].kind == kind) return &a->lat[i];
  mb_latency *l = realloc(a->lat, (a->nlat + 1) * sizeof *l);
  if (!l) return NULL;
  a->lat = l;
  l = &a->lat[a->nlat++];
  *l = (mb_latency){.proto = proto, .kind = kind};
  return l;
}

void mb__latency_record(mb_msg *m) {
  uint64_t ns = mb__now_ns() - m->t_deliver__;
  m->t_deliver__ = 0;
  mb_loop *here = mb__tls_loop;
  mb_actor *a = here ? mb__actor_lookup(here, m->to) : NULL;
  mb_latency *l = a ? record_for(a, m->proto, m->kind) : NULL;
  if (!l) return;
  l->count++;
  l->total_ns += ns;
  if (ns > l->max_ns) l->max_ns = ns;
  l->buckets[bucket_of(ns)]++;
}
