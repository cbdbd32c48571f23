/* main.c: membacking-bench. Registers every area's benchmarks (areas.h) and hands over to
 * the harness (harness.h); usage and output format: README.md, spec/bench.md. */

#include "areas.h"
#include "harness.h"

int main(int argc, char **argv) {
#define MB_BENCH__REGISTER_AREA(name) mb_bench_area_##name();
  MB_BENCH_AREAS(MB_BENCH__REGISTER_AREA)
  return mb_bench_main(argc, argv);
}
