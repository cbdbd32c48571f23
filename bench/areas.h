/* areas.h: the benchmark area files of membacking-bench, in the order their rows print.
 *
 * Each area file NAME.c (bench_runtime.c, baseline_uv.c, ...) keeps its benchmarks in a
 * static mb_bench_def table and defines mb_bench_area_NAME(), which registers the table
 * (harness.h). To add an area: add its name here and its file to meson.build. */
#ifndef MB_BENCH_AREAS_H
#define MB_BENCH_AREAS_H

#define MB_BENCH_AREAS(X) \
  X(bench_runtime)        \
  X(bench_map)            \
  X(bench_txn)            \
  X(bench_dirty)          \
  X(bench_protect)        \
  X(bench_fault)          \
  X(bench_access)         \
  X(bench_idle)           \
  X(baseline_uv)          \
  X(baseline_wake)        \
  X(baseline_syscalls)    \
  X(baseline_dirty_log)   \
  X(baseline_slot_split)

#define MB_BENCH__DECLARE_AREA(name) void mb_bench_area_##name(void);
MB_BENCH_AREAS(MB_BENCH__DECLARE_AREA)

#endif
