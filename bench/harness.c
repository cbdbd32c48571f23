/* harness.c: the registry, the interleaved measurement of a benchmark and its baseline,
 * percentiles, the table / JSON-lines / CSV output and the command line of membacking-bench.
 * The output format is a public interface: spec/bench.md. */

#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <uv.h>

/* ---- budgets ---------------------------------------------------------------------------- */

enum {
  MB_BENCH__MAX = 256,       /* registered benchmarks */
  MB_BENCH__MIN_SAMPLES = 100,
  MB_BENCH__ROUNDS_FULL = 20, /* rounds per side: baseline and measured alternate per round */
  MB_BENCH__ROUNDS_QUICK = 10,
  MB_BENCH__QUICK_DIV = 10,   /* --quick takes a tenth of the samples */
};
/* Run time of one side (measured or baseline) of one benchmark, as estimated by the warm-up;
 * rounds stop early if a side passes twice this. 32 sides * 8 s stays under 10 minutes. */
static const double side_budget_ns[2] = {8e9, 0.5e9}; /* [quick] */
static const double warm_budget_ns[2] = {0.5e9, 0.05e9};

/* ---- registry ----------------------------------------------------------------------------- */

static const mb_bench_def *registry[MB_BENCH__MAX];
static size_t registry_len;
static bool registry_overflow;

void mb_bench_register(const mb_bench_def *defs, size_t count) {
  for (size_t i = 0; i < count; i++) {
    if (registry_len == MB_BENCH__MAX) {
      registry_overflow = true;
      return;
    }
    registry[registry_len++] = &defs[i];
  }
}

static const mb_bench_def *registry_find(const char *name) {
  for (size_t i = 0; i < registry_len; i++)
    if (registry[i]->name && strcmp(registry[i]->name, name) == 0)
      return registry[i];
  return NULL;
}

static const char *unit_name(mb_bench_unit unit) { return unit == MB_BENCH_BPS ? "B/s" : "ns"; }

static bool name_ok(const char *name) {
  if (name == NULL || name[0] == '\0')
    return false;
  for (const char *p = name; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '.' || *p == '_' || *p == '-'))
      return false;
  return true;
}

/* A broken registration is a bug in a bench file: report every problem, refuse to run. */
static bool registry_check(void) {
  bool ok = !registry_overflow;
  if (registry_overflow)
    fprintf(stderr, "membacking-bench: more than %d benchmarks registered\n", MB_BENCH__MAX);
  for (size_t i = 0; i < registry_len; i++) {
    const mb_bench_def *d = registry[i];
    const char *why = NULL;
    const mb_bench_def *base = d->baseline ? registry_find(d->baseline) : NULL;
    if (!name_ok(d->name))
      why = "bad name (letters, digits, '.', '_', '-')";
    else if (registry_find(d->name) != d)
      why = "registered twice";
    else if (d->run == NULL)
      why = "no run function";
    else if (d->unit != MB_BENCH_NS && d->unit != MB_BENCH_BPS)
      why = "bad unit";
    else if (d->unit == MB_BENCH_BPS && d->bytes == 0)
      why = "unit B/s needs bytes per operation";
    else if (d->baseline && base == NULL)
      why = "baseline is not registered";
    else if (base && base->unit != d->unit)
      why = "baseline has another unit";
    if (why) {
      fprintf(stderr, "membacking-bench: benchmark \"%s\": %s\n", d->name ? d->name : "(null)",
              why);
      ok = false;
    }
  }
  return ok;
}

/* ---- one side's run ------------------------------------------------------------------------ */

struct mb_bench {
  const mb_bench_def *def;
  void *state;
  bool quick;
  bool discard; /* warm-up: mb_bench_sample drops */
  bool oom;
  double *samples; /* ns per operation */
  uint32_t *round_of;
  size_t n, cap;
  uint32_t round;
  double busy_ns;  /* wall time inside run() during measured rounds */
  double cpu_ns;   /* process CPU time (getrusage) during measured rounds */
  uint64_t prep_cpu_ns;  /* CPU of untimed preparation (mb_bench_prep_*) so far */
  uint64_t prep_from_ns; /* process CPU when the current preparation began */
  uint64_t ops;    /* operations performed during measured rounds */
  double est_ns;   /* wall time per sample, from the warm-up */
  size_t target;   /* samples wanted */
  char msg[256];   /* skip or failure reason */
};

uint64_t mb_bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t mb_bench_cpu_ns(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0)
    return 0;
  uint64_t us = (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000u +
                (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  return us * 1000u;
}

bool mb_bench_quick(const mb_bench *b) { return b->quick; }
const mb_bench_def *mb_bench_def_of(const mb_bench *b) { return b->def; }

int mb_bench_skip(mb_bench *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(b->msg, sizeof b->msg, fmt, ap);
  va_end(ap);
  return MB_BENCH_SKIPPED;
}

int mb_bench_fail(mb_bench *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(b->msg, sizeof b->msg, fmt, ap);
  va_end(ap);
  return MB_BENCH_FAILED;
}

void mb_bench_sample(mb_bench *b, double ns) {
  if (b->discard || b->oom)
    return;
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 1024;
    double *s = realloc(b->samples, cap * sizeof *s);
    if (s)
      b->samples = s;
    uint32_t *r = s ? realloc(b->round_of, cap * sizeof *r) : NULL;
    if (r)
      b->round_of = r;
    if (!s || !r) {
      b->oom = true;
      return;
    }
    b->cap = cap;
  }
  b->samples[b->n] = ns;
  b->round_of[b->n] = b->round;
  b->n++;
}

void mb_bench_prep_begin(mb_bench *b) { b->prep_from_ns = mb_bench_cpu_ns(); }

void mb_bench_prep_end(mb_bench *b) {
  b->prep_cpu_ns += mb_bench_cpu_ns() - b->prep_from_ns;
}

/* A failure without a message gets one from its code. */
static int side_failed(mb_bench *b, const char *what, int rc) {
  if (b->msg[0] == '\0') {
    if (rc < 0 && rc > -4096)
      snprintf(b->msg, sizeof b->msg, "%s: %s", what, strerror(-rc));
    else
      snprintf(b->msg, sizeof b->msg, "%s: error %d", what, rc);
  }
  return MB_BENCH_FAILED;
}

static int side_setup(mb_bench *b, const mb_bench_def *def, bool quick) {
  memset(b, 0, sizeof *b);
  b->def = def;
  b->quick = quick;
  if (def->setup == NULL)
    return 0;
  int rc = def->setup(b, &b->state);
  if (rc == MB_BENCH_SKIPPED) {
    if (b->msg[0] == '\0')
      snprintf(b->msg, sizeof b->msg, "not available here");
    return rc;
  }
  return rc == 0 ? 0 : side_failed(b, "setup", rc);
}

static void side_teardown(mb_bench *b) {
  if (b->def->teardown)
    b->def->teardown(b->state);
  b->state = NULL;
}

static void side_free(mb_bench *b) {
  free(b->samples);
  free(b->round_of);
  b->samples = NULL;
  b->round_of = NULL;
  b->n = b->cap = 0;
}

/* Take k samples. */
static int side_take(mb_bench *b, size_t k) {
  const mb_bench_def *d = b->def;
  uint64_t start = mb_bench_now_ns(), cpu_start = mb_bench_cpu_ns(), prep = b->prep_cpu_ns;
  uint64_t ops = (d->flags & MB_BENCH_SELF_TIMED) ? k : k * (d->batch ? d->batch : 1);
  int rc = 0;
  if (d->flags & MB_BENCH_SELF_TIMED) {
    size_t before = b->n;
    rc = d->run(b, b->state, (uint32_t)k);
    if (rc == 0 && !b->discard && !b->oom && b->n == before)
      return mb_bench_fail(b, "self-timed run recorded no samples");
  } else {
    uint32_t batch = d->batch ? d->batch : 1;
    for (size_t i = 0; i < k && rc == 0; i++) {
      uint64_t t0 = mb_bench_now_ns();
      rc = d->run(b, b->state, batch);
      uint64_t t1 = mb_bench_now_ns();
      mb_bench_sample(b, (double)(t1 - t0) / batch);
    }
  }
  if (rc == 0 && b->msg[0] != '\0')
    rc = MB_BENCH_FAILED; /* mb_bench_fail() from a callback or another thread */
  if (rc != 0)
    return side_failed(b, "run", rc);
  if (b->oom)
    return mb_bench_fail(b, "out of memory for samples");
  b->busy_ns += (double)(mb_bench_now_ns() - start);
  double cpu = (double)(mb_bench_cpu_ns() - cpu_start) - (double)(b->prep_cpu_ns - prep);
  b->cpu_ns += cpu > 0 ? cpu : 0; /* getrusage counts in microseconds */
  b->ops += ops;
  return 0;
}

/* Warm up (caches, page tables, threads, branch predictors) and estimate the cost of one
 * sample, then decide how many samples this side takes. */
static int side_warm(mb_bench *b) {
  size_t target = b->def->samples ? b->def->samples : MB_BENCH_DEFAULT_SAMPLES;
  if (b->quick)
    target = target / MB_BENCH__QUICK_DIV ? target / MB_BENCH__QUICK_DIV : 1;
  size_t want = target / 10 ? target / 10 : 1, done = 0, chunk = 1;
  uint64_t t0 = mb_bench_now_ns();
  double elapsed = 0;
  b->discard = true;
  while (done < want && elapsed < warm_budget_ns[b->quick]) {
    size_t k = chunk < want - done ? chunk : want - done;
    int rc = side_take(b, k);
    if (rc != 0)
      return rc;
    done += k;
    chunk *= 2;
    elapsed = (double)(mb_bench_now_ns() - t0);
  }
  b->discard = false;
  b->busy_ns = b->cpu_ns = 0;
  b->ops = 0;
  b->est_ns = elapsed / (double)done;

  size_t fit = b->est_ns > 0 ? (size_t)(side_budget_ns[b->quick] / b->est_ns) : target;
  size_t floor = target < MB_BENCH__MIN_SAMPLES ? target : MB_BENCH__MIN_SAMPLES;
  b->target = fit < target ? fit : target;
  if (b->target < floor)
    b->target = floor;
  return 0;
}

/* ---- statistics ------------------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef struct stats {
  size_t n;
  double p50, p99; /* in the benchmark's unit */
  double cpu_ns;   /* process CPU per operation */
} stats;

/* Nearest-rank percentiles of the per-operation times, converted to the unit. */
static int side_stats(mb_bench *b, stats *out) {
  if (b->n == 0)
    return mb_bench_fail(b, "no samples");
  double *sorted = malloc(b->n * sizeof *sorted);
  if (sorted == NULL)
    return mb_bench_fail(b, "out of memory for statistics");
  memcpy(sorted, b->samples, b->n * sizeof *sorted);
  qsort(sorted, b->n, sizeof *sorted, cmp_double);
  size_t i50 = (b->n * 50 + 99) / 100, i99 = (b->n * 99 + 99) / 100;
  double t50 = sorted[i50 - 1], t99 = sorted[i99 - 1];
  free(sorted);
  out->n = b->n;
  out->cpu_ns = b->ops ? b->cpu_ns / (double)b->ops : 0;
  if (b->def->unit == MB_BENCH_NS) {
    out->p50 = t50;
    out->p99 = t99;
    return 0;
  }
  if (t50 <= 0 || t99 <= 0)
    return mb_bench_fail(b, "operation too short to time (set batch)");
  out->p50 = (double)b->def->bytes * 1e9 / t50;
  out->p99 = (double)b->def->bytes * 1e9 / t99;
  return 0;
}

/* ---- leak check ---------------------------------------------------------------------------- */

typedef struct footprint {
  int fds, memfd_maps;
} footprint;

static footprint footprint_now(void) {
  footprint f = {0, 0};
  DIR *dir = opendir("/proc/self/fd");
  if (dir) {
    for (struct dirent *e; (e = readdir(dir)) != NULL;)
      f.fds += e->d_name[0] != '.';
    closedir(dir);
  }
  FILE *maps = fopen("/proc/self/maps", "r");
  if (maps) {
    char line[512];
    while (fgets(line, sizeof line, maps))
      f.memfd_maps += strstr(line, "/memfd:") != NULL;
    fclose(maps);
  }
  return f;
}

/* ---- output ------------------------------------------------------------------------------------ */

enum { MB_BENCH__MAX_FILTERS = 32 };

typedef struct config {
  bool json, quick, list;
  const char *filters[MB_BENCH__MAX_FILTERS]; /* a benchmark matching any one is selected */
  size_t nfilters;
  const char *csv_dir;
} config;

typedef struct result {
  const mb_bench_def *def;
  bool skipped;        /* not measured: skip_reason says why */
  bool failed;         /* ... because of an error */
  char skip_reason[320];
  stats st;
  unsigned rounds;
  const char *baseline; /* name or NULL */
  bool has_base;
  stats base;
  char base_skipped[320]; /* empty, or why the baseline could not run */
  bool has_ratio;
  double ratio;
  char error[320]; /* empty, or what went wrong after measuring (left fds behind, CSV) */
} result;

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(f, "\\%c", *p);
    else if (*p < 0x20)
      fprintf(f, "\\u%04x", *p);
    else
      fputc(*p, f);
  }
  fputc('"', f);
}

static void json_number(FILE *f, bool present, double v, const char *fmt) {
  if (present)
    fprintf(f, fmt, v);
  else
    fputs("null", f);
}

static void print_json(const result *r) {
  FILE *f = stdout;
  bool m = !r->skipped;
  fputs("{\"bench\":", f);
  json_string(f, r->def->name);
  fprintf(f, ",\"unit\":\"%s\",\"n\":%zu,\"p50\":", unit_name(r->def->unit), m ? r->st.n : 0);
  json_number(f, m, r->st.p50, "%.10g");
  fputs(",\"p99\":", f);
  json_number(f, m, r->st.p99, "%.10g");
  fputs(",\"baseline\":", f);
  if (r->baseline)
    json_string(f, r->baseline);
  else
    fputs("null", f);
  fputs(",\"baseline_p50\":", f);
  json_number(f, m && r->has_base, r->base.p50, "%.10g");
  fputs(",\"ratio\":", f);
  json_number(f, m && r->has_ratio, r->ratio, "%.6g");
  if (r->def->flags & MB_BENCH_CPU) {
    fputs(",\"cpu_ns\":", f);
    json_number(f, m, r->st.cpu_ns, "%.10g");
    fputs(",\"baseline_cpu_ns\":", f);
    json_number(f, m && r->has_base, r->base.cpu_ns, "%.10g");
  }
  if (m && r->has_base) {
    fputs(",\"baseline_p99\":", f);
    json_number(f, true, r->base.p99, "%.10g");
    fprintf(f, ",\"baseline_n\":%zu", r->base.n);
  }
  if (m)
    fprintf(f, ",\"rounds\":%u", r->rounds);
  if (m && r->base_skipped[0]) {
    fputs(",\"baseline_skipped\":", f);
    json_string(f, r->base_skipped);
  }
  if (r->skipped) {
    fputs(",\"skipped\":", f);
    json_string(f, r->skip_reason);
  }
  if (r->error[0]) {
    fputs(",\"error\":", f);
    json_string(f, r->error);
  }
  if (r->failed)
    fputs(",\"failed\":true", f);
  fputs("}\n", f);
  fflush(f);
}

static void human(char *buf, size_t size, mb_bench_unit unit, double v) {
  static const char *const ns_units[] = {"ns", "us", "ms", "s"};
  static const char *const bps_units[] = {"B/s", "kB/s", "MB/s", "GB/s", "TB/s"};
  const char *const *units = unit == MB_BENCH_NS ? ns_units : bps_units;
  int last = unit == MB_BENCH_NS ? 3 : 4, i = 0;
  while (i < last && v >= 1000) {
    v /= 1000;
    i++;
  }
  snprintf(buf, size, v < 10 ? "%.2f %s" : v < 100 ? "%.1f %s" : "%.0f %s", v, units[i]);
}

static int name_width;

static void print_table_header(const config *cfg) {
  printf("# membacking-bench%s (spec/bench.md version 2): p50/p99 per operation; baselines\n"
         "# measured in the same run, interleaved round by round; ratio = cost over the floor\n"
         "# (1.00x = none, lower is better); cpu/op = CPU of the whole process (all threads,\n"
         "# getrusage) per operation, and its baseline's (version 2 rows)\n",
         cfg->quick ? " --quick" : "");
  printf("%-*s %8s %11s %11s  %-*s %11s %8s %10s %10s\n", name_width, "bench", "n", "p50",
         "p99", name_width, "baseline", "base p50", "ratio", "cpu/op", "base cpu");
}

/* The CPU columns of a measured row: cpu_ns and baseline_cpu_ns, for MB_BENCH_CPU rows. */
static void cpu_columns(const result *r, char *cpu, char *base_cpu, size_t size) {
  snprintf(cpu, size, "-");
  snprintf(base_cpu, size, "-");
  if (!(r->def->flags & MB_BENCH_CPU))
    return;
  human(cpu, size, MB_BENCH_NS, r->st.cpu_ns);
  if (r->has_base)
    human(base_cpu, size, MB_BENCH_NS, r->base.cpu_ns);
}

static void print_measured_row(const result *r) {
  enum { W = 32 };
  char p50[W], p99[W], bp50[W] = "-", ratio[W] = "-", cpu[W], base_cpu[W];
  human(p50, W, r->def->unit, r->st.p50);
  human(p99, W, r->def->unit, r->st.p99);
  if (r->has_base)
    human(bp50, W, r->def->unit, r->base.p50);
  else if (r->base_skipped[0])
    snprintf(bp50, W, "skipped");
  if (r->has_ratio)
    snprintf(ratio, W, "%.2fx", r->ratio);
  cpu_columns(r, cpu, base_cpu, W);
  printf("%-*s %8zu %11s %11s  %-*s %11s %8s %10s %10s\n", name_width, r->def->name, r->st.n,
         p50, p99, name_width, r->baseline ? r->baseline : "-", bp50, ratio, cpu, base_cpu);
  if (r->base_skipped[0])
    printf("%-*s   (baseline %s: %s)\n", name_width, "", r->baseline, r->base_skipped);
}

static void print_row(const result *r) {
  if (r->skipped)
    printf("%-*s %s: %s\n", name_width, r->def->name, r->failed ? "FAILED" : "skipped",
           r->skip_reason);
  else
    print_measured_row(r);
  if (r->error[0])
    printf("%-*s   FAILED: %s\n", name_width, "", r->error);
  fflush(stdout);
}

static void csv_rows(FILE *f, const mb_bench *b) {
  for (size_t i = 0; i < b->n; i++) {
    fprintf(f, "%s,%u,%.10g", b->def->name, b->round_of[i], b->samples[i]);
    if (b->def->unit == MB_BENCH_BPS)
      fprintf(f, ",%.10g", b->samples[i] > 0 ? (double)b->def->bytes * 1e9 / b->samples[i] : 0);
    fputc('\n', f);
  }
}

/* DIR/NAME.csv: every sample of the benchmark and of its interleaved baseline. */
static bool write_csv(const config *cfg, const mb_bench *m, const mb_bench *base, result *r) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.csv", cfg->csv_dir, m->def->name);
  FILE *f = fopen(path, "w");
  if (f == NULL) {
    snprintf(r->error, sizeof r->error, "--csv: %.256s: %s", path, strerror(errno));
    return false;
  }
  fputs(m->def->unit == MB_BENCH_BPS ? "bench,round,ns,bytes_per_sec\n" : "bench,round,ns\n", f);
  csv_rows(f, m);
  if (base)
    csv_rows(f, base);
  if (ferror(f) | fclose(f)) {
    snprintf(r->error, sizeof r->error, "--csv: %.256s: %s", path, strerror(errno));
    return false;
  }
  return true;
}

/* ---- running one benchmark ------------------------------------------------------------------ */

/* Rounds: the baseline (if any) and the benchmark alternate, B M M B B M ..., each taking
 * target / rounds samples per round, so drift of the machine hits both sides alike.
 * Returns the side that failed, or NULL. */
static mb_bench *run_rounds(const config *cfg, mb_bench *m, mb_bench *base, unsigned *done) {
  mb_bench *sides[2] = {base ? base : m, m};
  size_t nsides = base ? 2 : 1;
  unsigned rounds = cfg->quick ? MB_BENCH__ROUNDS_QUICK : MB_BENCH__ROUNDS_FULL;
  for (size_t s = 0; s < nsides; s++)
    if (sides[s]->target < rounds)
      rounds = (unsigned)sides[s]->target;
  *done = 0;
  for (unsigned r = 0; r < rounds; r++) {
    bool over = false;
    for (size_t k = 0; k < nsides; k++) {
      mb_bench *b = sides[(r % 2) ? nsides - 1 - k : k];
      b->round = r;
      if (side_take(b, (b->target + rounds - 1) / rounds) != 0)
        return b;
      over |= b->busy_ns > 2 * side_budget_ns[cfg->quick];
    }
    *done = r + 1;
    if (over) /* the warm-up's estimate was far off: keep the run within its budget */
      break;
  }
  return NULL;
}

/* Warm up both sides, take the rounds, compute the statistics. Returns the side that
 * failed, or NULL. */
static mb_bench *measure(const config *cfg, mb_bench *m, mb_bench *base, result *r) {
  if (side_warm(m) != 0)
    return m;
  if (base && side_warm(base) != 0)
    return base;
  mb_bench *bad = run_rounds(cfg, m, base, &r->rounds);
  if (bad)
    return bad;
  if (side_stats(m, &r->st) != 0)
    return m;
  if (base && side_stats(base, &r->base) != 0)
    return base;
  return NULL;
}

static void result_ratio(result *r) {
  if (!r->has_base)
    return;
  bool time = r->def->unit == MB_BENCH_NS;
  double num = time ? r->st.p50 : r->base.p50, den = time ? r->base.p50 : r->st.p50;
  r->has_ratio = den > 0;
  r->ratio = r->has_ratio ? num / den : 0;
}

/* Measure def (and its baseline, interleaved) into *r. Returns false when something failed;
 * a skip is not a failure. */
static bool run_sides(const config *cfg, const mb_bench_def *def, result *r) {
  const mb_bench_def *bdef = def->baseline ? registry_find(def->baseline) : NULL;
  mb_bench m, base, *bp = NULL;

  int rc = side_setup(&m, def, cfg->quick);
  if (rc != 0) {
    r->skipped = true;
    r->failed = rc < 0;
    snprintf(r->skip_reason, sizeof r->skip_reason, "%s", m.msg);
    return !r->failed;
  }
  if (bdef && bdef != def) {
    rc = side_setup(&base, bdef, cfg->quick);
    if (rc == 0)
      bp = &base;
    else
      snprintf(r->base_skipped, sizeof r->base_skipped, "%s%s", rc < 0 ? "failed: " : "",
               base.msg);
    r->failed = rc < 0;
  }

  mb_bench *bad = measure(cfg, &m, bp, r);
  if (bad) {
    r->skipped = r->failed = true;
    snprintf(r->skip_reason, sizeof r->skip_reason, "%s%s%s", bad == bp ? "baseline " : "",
             bad == bp ? bdef->name : "", bad == bp ? ": " : "");
    size_t len = strlen(r->skip_reason);
    snprintf(r->skip_reason + len, sizeof r->skip_reason - len, "%s", bad->msg);
  }
  if (bp)
    side_teardown(bp);
  side_teardown(&m);

  if (!bad) {
    if (bp) {
      r->has_base = true;
    } else if (bdef == def) { /* its own floor */
      r->has_base = true;
      r->base = r->st;
    }
    result_ratio(r);
    if (cfg->csv_dir && !write_csv(cfg, &m, bp, r))
      r->failed = true;
  }
  side_free(&m);
  if (bp)
    side_free(bp);
  return !r->failed;
}

/* run_sides, then check that the benchmark (and its baseline) left no fds and no memfd
 * mappings behind: memfds, KVM VMs, eventfds and epoll fds all show up as fds. */
static bool run_one(const config *cfg, const mb_bench_def *def, result *r) {
  memset(r, 0, sizeof *r);
  r->def = def;
  r->baseline = def->baseline;
  footprint before = footprint_now();
  bool ok = run_sides(cfg, def, r);
  footprint after = footprint_now();
  if (after.fds > before.fds || after.memfd_maps > before.memfd_maps) {
    size_t len = strlen(r->error);
    snprintf(r->error + len, sizeof r->error - len, "%sleft %d fd(s), %d memfd mapping(s) behind",
             len ? "; " : "", after.fds - before.fds, after.memfd_maps - before.memfd_maps);
    r->failed = true;
    ok = false;
  }
  return ok;
}

/* ---- command line -------------------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f, "usage: membacking-bench [--json] [--quick] [--filter SUBSTRING] [--csv DIR] "
             "[--list]\n"
             "  --json          one JSON object per line per benchmark (spec/bench.md)\n"
             "  --quick         fewer samples: the whole run takes well under a minute\n"
             "  --filter S      only benchmarks whose name contains S (baselines still run);\n"
             "                  repeat it to select the benchmarks matching any of them\n"
             "  --csv DIR       also write every sample to DIR/NAME.csv\n"
             "  --list          list the benchmarks and exit\n");
}

/* Is argv[*i] the option `name` ("--name VALUE" or "--name=VALUE")? *value is NULL when the
 * value is missing. */
static bool take_option(int argc, char **argv, int *i, const char *name, const char **value) {
  size_t len = strlen(name);
  const char *a = argv[*i];
  if (strncmp(a, name, len) != 0 || (a[len] != '\0' && a[len] != '='))
    return false;
  if (a[len] == '=')
    *value = a + len + 1;
  else
    *value = *i + 1 < argc ? argv[++*i] : NULL;
  return true;
}

/* Returns -1 to go on, or an exit status. */
static int parse_args(int argc, char **argv, config *cfg) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *bad = NULL, *value = NULL;
    if (strcmp(a, "--json") == 0) {
      cfg->json = true;
    } else if (strcmp(a, "--quick") == 0) {
      cfg->quick = true;
    } else if (strcmp(a, "--list") == 0) {
      cfg->list = true;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (take_option(argc, argv, &i, "--filter", &value)) {
      if (value == NULL)
        bad = "--filter needs a value";
      else if (cfg->nfilters == MB_BENCH__MAX_FILTERS)
        bad = "too many --filter options";
      else
        cfg->filters[cfg->nfilters++] = value;
    } else if (take_option(argc, argv, &i, "--csv", &cfg->csv_dir)) {
      bad = cfg->csv_dir && cfg->csv_dir[0] ? NULL : "--csv needs a directory";
    } else {
      bad = "unknown argument";
    }
    if (bad) {
      fprintf(stderr, "membacking-bench: %s: %s\n", a, bad);
      usage(stderr);
      return 2;
    }
  }
  return -1;
}

static bool selected(const config *cfg, const mb_bench_def *d) {
  for (size_t i = 0; i < cfg->nfilters; i++)
    if (strstr(d->name, cfg->filters[i]) != NULL)
      return true;
  return cfg->nfilters == 0;
}

static int make_csv_dir(const char *dir) {
  struct stat st;
  if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
    fprintf(stderr, "membacking-bench: --csv %s: %s\n", dir, strerror(errno));
    return -1;
  }
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "membacking-bench: --csv %s: not a directory\n", dir);
    return -1;
  }
  return 0;
}

/* libuv opens a process-wide signal pipe on the first uv_loop_init; open it now so that the
 * leak check does not blame the first benchmark that uses libuv. */
static void prime_process_globals(void) {
  uv_loop_t loop;
  if (uv_loop_init(&loop) == 0)
    uv_loop_close(&loop);
}

int mb_bench_main(int argc, char **argv) {
  config cfg = {0};
  int status = parse_args(argc, argv, &cfg);
  if (status >= 0)
    return status;
  if (!registry_check())
    return 2;

  size_t count = 0;
  name_width = 24;
  for (size_t i = 0; i < registry_len; i++) {
    const mb_bench_def *d = registry[i];
    if (!selected(&cfg, d))
      continue;
    count++;
    if ((int)strlen(d->name) > name_width)
      name_width = (int)strlen(d->name);
    if (d->baseline && (int)strlen(d->baseline) > name_width)
      name_width = (int)strlen(d->baseline);
  }
  if (count == 0) {
    fprintf(stderr, "membacking-bench: no benchmark matches the --filter options\n");
    return 2;
  }
  if (cfg.list) {
    for (size_t i = 0; i < registry_len; i++) {
      const mb_bench_def *d = registry[i];
      if (selected(&cfg, d))
        printf("%-*s %-3s  baseline %-*s  %s\n", name_width, d->name, unit_name(d->unit),
               name_width, d->baseline ? d->baseline : "-", d->doc ? d->doc : "");
    }
    return 0;
  }
  if (cfg.csv_dir && make_csv_dir(cfg.csv_dir) != 0)
    return 2;

  prime_process_globals();
  if (!cfg.json)
    print_table_header(&cfg);
  status = 0;
  for (size_t i = 0; i < registry_len; i++) {
    if (!selected(&cfg, registry[i]))
      continue;
    result r;
    if (!run_one(&cfg, registry[i], &r))
      status = 1;
    if (cfg.json)
      print_json(&r);
    else
      print_row(&r);
  }
  return status;
}
