/* harness.h: the benchmark harness of membacking-bench (contract: spec/bench.md).
 *
 * A benchmark is a static mb_bench_def: a name, a unit, optionally the name of its baseline
 * (the floor, another registered benchmark), and setup/run/teardown functions. Each area file
 * (bench_runtime.c, baseline_uv.c, ...) keeps its benchmarks in a table and registers it from
 * one function, mb_bench_area_NAME(), listed in main.c:
 *
 *   static const mb_bench_def memcpy_benches[] = {
 *     {.name = "memcpy", .unit = MB_BENCH_BPS, .bytes = 64 * 1024,
 *      .setup = memcpy_setup, .run = memcpy_run, .teardown = memcpy_teardown,
 *      .doc = "memcpy of 64 KiB"},
 *   };
 *   void mb_bench_area_baseline_syscalls(void) { MB_BENCH_REGISTER_ALL(memcpy_benches); }
 *
 * How a benchmark is measured
 *   setup() once, warm-up, then rounds; teardown() once. A benchmark with a baseline has both
 *   set up at the same time and their rounds alternate (B M M B B M ...), each side pooling its
 *   own samples, so both see the same machine state. A selected benchmark prints one row; its
 *   baseline runs but prints a row of its own only if it is selected too (then measured alone,
 *   with baseline null). A benchmark naming itself as baseline (scale.regions.10) reports
 *   ratio 1.
 *
 *   Timing: by default the harness times every call run(b, state, batch) with CLOCK_MONOTONIC
 *   and records elapsed / batch as one sample (batch = 1: every operation timed alone; batch
 *   > 1: for operations too short to time alone, e.g. msg.same_loop). With
 *   MB_BENCH_SELF_TIMED the harness calls run(b, state, n) once per round and run times its
 *   own operations, reporting each with mb_bench_sample(): use it when an operation needs
 *   untimed preparation (re-protecting a page) or is timed on another thread; bracket
 *   preparation that costs CPU worth leaving out of cpu_ns with mb_bench_prep_begin/end.
 *
 *   Selection: --filter S (repeatable, any match) selects rows; baselines run regardless.
 *
 *   Sample counts: `samples` (default MB_BENCH_DEFAULT_SAMPLES) per side in a full run, a tenth
 *   with --quick, cut so that one side takes at most ~8 s (full) / ~0.5 s (quick) of run time
 *   as estimated in the warm-up, but never below 100 samples unless `samples` asks for fewer.
 *
 *   CPU: every side's measured rounds are also bracketed with getrusage(RUSAGE_SELF) (user +
 *   system, all threads of the process); cpu_ns = that CPU time, less that of bracketed
 *   preparation (mb_bench_prep_begin/end), / the operations performed (batch per
 *   harness-timed call, n per self-timed run()). Rows flagged MB_BENCH_CPU print it
 *   as cpu_ns, with their baseline's as baseline_cpu_ns (spec version 2).
 *
 *   Units: MB_BENCH_NS reports p50/p99 of the per-operation times. MB_BENCH_BPS reports
 *   bytes / time: p50 = bytes / p50(time), p99 = bytes / p99(time), i.e. the throughput that
 *   99% of the operations reached (so p99 <= p50, the slow tail, as for time).
 *   ratio = p50 / baseline_p50 for time, baseline_p50 / p50 for throughput: lower is better,
 *   1.0 = no overhead over the floor.
 *
 * Rules for benchmark functions
 *   - Return 0, or a negative error (errno-style or the library's codes); describe failures
 *     with mb_bench_fail(). setup() may instead return mb_bench_skip(b, "no /dev/kvm").
 *   - teardown() runs exactly when setup() returned 0, and must leave nothing behind: no files,
 *     no mappings, no fds, no threads, no KVM VMs. The harness checks fds and memfd mappings
 *     before and after each benchmark and fails the run if any were left.
 *   - Everything runs on the harness's (main) thread, one benchmark (plus its baseline) at a
 *     time; the functions may start threads of their own.
 */
#ifndef MB_BENCH_HARNESS_H
#define MB_BENCH_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mb_bench mb_bench; /* one benchmark's run: passed to its functions */

typedef enum mb_bench_unit {
  MB_BENCH_NS,  /* "ns": time per operation */
  MB_BENCH_BPS, /* "B/s": throughput; set mb_bench_def.bytes */
} mb_bench_unit;

enum {
  MB_BENCH_SELF_TIMED = 1u << 0, /* run() reports its own samples with mb_bench_sample() */
  MB_BENCH_CPU = 1u << 1,        /* report cpu_ns and baseline_cpu_ns (spec version 2 rows) */
};

enum { MB_BENCH_DEFAULT_SAMPLES = 20000 };

/* Set up the benchmark's state (*state is NULL on entry). Returns 0, a negative error, or
 * mb_bench_skip(). */
typedef int (*mb_bench_setup_fn)(mb_bench *b, void **state);
/* Perform n operations. Returns 0 or a negative error. */
typedef int (*mb_bench_run_fn)(mb_bench *b, void *state, uint32_t n);
/* Release everything setup() made. */
typedef void (*mb_bench_teardown_fn)(void *state);

typedef struct mb_bench_def {
  const char *name;              /* "area.what": letters, digits, '.', '_', '-' */
  mb_bench_unit unit;
  const char *baseline;          /* name of the floor benchmark (same unit), or NULL */
  mb_bench_setup_fn setup;       /* optional */
  mb_bench_run_fn run;           /* required */
  mb_bench_teardown_fn teardown; /* optional */
  uint32_t batch;                /* harness-timed: operations per timed call; 0 means 1 */
  uint32_t flags;                /* MB_BENCH_SELF_TIMED, MB_BENCH_CPU */
  uint64_t bytes;                /* MB_BENCH_BPS: bytes per operation */
  uint32_t samples;              /* samples per side in a full run; 0 = default */
  const char *doc;               /* what one operation is, one line (--list) */
} mb_bench_def;

/* Register `count` benchmarks; `defs` must outlive the run (use a static table). Rows print
 * in registration order. Call before mb_bench_main(). */
void mb_bench_register(const mb_bench_def *defs, size_t count);
#define MB_BENCH_REGISTER_ALL(table) mb_bench_register((table), sizeof(table) / sizeof((table)[0]))

/* From setup(): mark the benchmark as unable to run here; returns the value setup() returns. */
int mb_bench_skip(mb_bench *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Describe a failure; returns MB_BENCH_FAILED for convenience. A run() during which it was
 * called (from a callback, or a thread run() waits for) fails even if run() returns 0. */
int mb_bench_fail(mb_bench *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
enum { MB_BENCH_SKIPPED = 1, MB_BENCH_FAILED = -1 };

/* MB_BENCH_SELF_TIMED: record one operation's time (or a batch's time / its size), in ns.
 * Call from run() or from a thread run() waits for; never from two threads at once. */
void mb_bench_sample(mb_bench *b, double ns);
/* MB_BENCH_SELF_TIMED: untimed preparation of an operation (the guest's writes before a dirty
 * sync): the process CPU between begin and end is left out of cpu_ns, as its time is left out
 * of the samples. Call from run()'s thread, not nested. (Its wall time still counts against
 * the side's run-time budget.) */
void mb_bench_prep_begin(mb_bench *b);
void mb_bench_prep_end(mb_bench *b);
/* CLOCK_MONOTONIC in ns: the clock the harness uses. */
uint64_t mb_bench_now_ns(void);
/* CPU time of the whole process (all threads, user + system) in ns, from getrusage. */
uint64_t mb_bench_cpu_ns(void);
/* Is this a --quick run? (To scale a benchmark's own sizes, rarely needed.) */
bool mb_bench_quick(const mb_bench *b);
const mb_bench_def *mb_bench_def_of(const mb_bench *b);

/* Parse the command line, run the selected benchmarks, print. Returns the exit status:
 * 0, 1 when a benchmark failed or left something behind, 2 on a usage or registry error. */
int mb_bench_main(int argc, char **argv);

#endif
