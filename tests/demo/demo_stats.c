/* demo_stats.c: the latency of each kind of memory operation the demo VMM issued, measured
 * from the call to its completion on the VMM's loop, printed as p50/p99. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "demo.h"

static const char *const kind_names[DEMO_OP_KINDS] = {
    "region map",      "region unmap", "access change", "mapping add", "mapping remove",
    "mapping replace", "txn commit",   "region add",
};

typedef struct samples {
  uint64_t *ns;
  size_t n, cap;
} samples;

static samples table[DEMO_OP_KINDS];

uint64_t demo_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void demo_stats_add(int kind, uint64_t ns) {
  samples *s = &table[kind];
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    uint64_t *p = realloc(s->ns, cap * sizeof *p);
    if (!p) return;
    s->ns = p;
    s->cap = cap;
  }
  s->ns[s->n++] = ns;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(const samples *s, double q) {
  size_t i = (size_t)(q * (double)(s->n - 1) + 0.5);
  return (double)s->ns[i] / 1000.0;
}

void demo_stats_print(void) {
  printf("\n%-16s %8s %12s %12s\n", "operation", "count", "p50 (us)", "p99 (us)");
  for (int k = 0; k < DEMO_OP_KINDS; k++) {
    samples *s = &table[k];
    if (!s->n) continue;
    qsort(s->ns, s->n, sizeof *s->ns, cmp_u64);
    printf("%-16s %8zu %12.1f %12.1f\n", kind_names[k], s->n, pct(s, 0.50), pct(s, 0.99));
  }
}

void demo_stats_free(void) {
  for (int k = 0; k < DEMO_OP_KINDS; k++) free(table[k].ns);
}
