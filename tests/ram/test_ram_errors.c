/* test_ram_errors.c: every error of a RAM build (mb_ram.h), one case each: its code, its
 * reason, the range and sizes its message names, and that nothing is left behind (no region
 * in the manager, no fd in the process); then the documented order, where a configuration
 * breaks several rules; then failures after the checks (an object that cannot be made, a
 * region the manager refuses), undone. */
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ram_util.h"

static ru_world W;
#define MAX_ADDR (64 * GiB)

static int setup(void **state) { /* VTLs 0 and 2 */
  (void)state;
  ru_init_cfg(&W, (mb_mm_config){.max_addr = MAX_ADDR, .vtls = 0x5});
  return 0;
}

static int teardown(void **state) {
  (void)state;
  ru_fini(&W);
  return 0;
}

/* Builds cfg, expecting it to fail with code and reason and a message with both words. */
static void expect(const mb_ram_request *q, size_t n, bool legacy, int code,
                   mb_ram_reason reason, const char *w1, const char *w2) {
  int regions = ru_region_count(W.mm), fds = tu_fd_count();
  mb_ram_config cfg = {q, n, legacy};
  mb_ram_error e;
  mb_ram *ram = (mb_ram *)1;
  assert_int_equal(mb_ram_build_sync(W.mm, &cfg, &ram, &e), code);
  assert_null(ram);
  ru_expect_error(&e, code, reason, w1, w2);
  assert_int_equal(ru_region_count(W.mm), regions);
  assert_int_equal(tu_fd_count(), fds);
}

static mb_ram_range low[] = {{0, 16 * MiB}};

static void test_private_with_legacy(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_request q = {.ranges = low, .count = 1, .private_memory = true};
  expect(&q, 1, true, MB_E_INVALID, MB_RAM_PRIVATE_WITH_LEGACY, "request 0", "legacy");
}

static void test_private_with_existing(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_request ok = {.ranges = low, .count = 1};
  mb_ram_range r[] = {{32 * MiB, 16 * MiB}};
  mb_ram_request q[] = {ok, {.ranges = r, .count = 1, .private_memory = true,
                             .use_existing_fd = true, .existing_fd = 0}};
  expect(q, 2, false, MB_E_INVALID, MB_RAM_PRIVATE_WITH_EXISTING, "request 1", "existing fd");
}

static void test_numa_node(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_request q = {.ranges = low, .count = 1, .use_numa_node = true, .numa_node = 4096};
#ifdef MB_HAVE_NUMA
  expect(&q, 1, false, MB_E_INVALID, MB_RAM_NUMA_NODE, "node 4096", "request 0");
#else
  expect(&q, 1, false, MB_E_UNSUPPORTED, MB_RAM_NUMA_UNSUPPORTED, "node 4096", "libnuma");
#endif
}

static void test_hugepage_size(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_request q = {.ranges = low, .count = 1, .hugepage_size = 3 * MiB};
  expect(&q, 1, false, MB_E_INVALID, MB_RAM_HUGEPAGE_SIZE, "3 MiB", "power of two");
  q.hugepage_size = 4 * MiB;
  expect(&q, 1, false, MB_E_UNSUPPORTED, MB_RAM_HUGEPAGE_SIZE, "4 MiB", "not supported");
  q.hugepage_size = 1024;
  expect(&q, 1, false, MB_E_INVALID, MB_RAM_HUGEPAGE_SIZE, "1 KiB", "at least 4 KiB");
}

static void test_hugepage_with_private(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_request q = {.ranges = low, .count = 1, .hugepage_size = MB_HUGEPAGE_2M,
                      .private_memory = true};
  expect(&q, 1, false, MB_E_INVALID, MB_RAM_HUGEPAGE_WITH_PRIVATE, "2 MiB hugepages",
         "private");
}

static void test_hugepage_with_existing(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_request q = {.ranges = low, .count = 1, .hugepage_size = MB_HUGEPAGE_1G,
                      .use_existing_fd = true, .existing_fd = 7};
  expect(&q, 1, false, MB_E_INVALID, MB_RAM_HUGEPAGE_WITH_EXISTING, "1 GiB hugepages",
         "existing fd (7)");
}

static void test_hugepage_with_legacy(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_request q = {.ranges = low, .count = 1, .hugepage_size = MB_HUGEPAGE_2M};
  expect(&q, 1, true, MB_E_INVALID, MB_RAM_HUGEPAGE_WITH_LEGACY, "2 MiB hugepages", "legacy");
}

static void test_no_legacy_ram(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_range r[] = {{0, 512 * KiB}, {1 * MiB, 16 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 2};
  expect(&q, 1, true, MB_E_INVALID, MB_RAM_NO_LEGACY_RAM, "starts at 0", "1 MiB");
}

static void test_vtl(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_range r[] = {{32 * MiB, 16 * MiB}};
  mb_ram_request q[] = {{.ranges = low, .count = 1}, {.ranges = r, .count = 1, .vtl = 1}};
  expect(q, 2, false, MB_E_INVALID, MB_RAM_VTL, "request 1", "VTL 1");
  q[1].vtl = 3;
  expect(q, 2, false, MB_E_INVALID, MB_RAM_VTL, "request 1", "VTL 3");
  /* the legacy windows are VTL 0's */
  mb_ram_request l[] = {{.ranges = r, .count = 1}, {.ranges = low, .count = 1, .vtl = 2}};
  expect(l, 2, true, MB_E_INVALID, MB_RAM_NO_LEGACY_RAM, "request 1 range 0", "VTL 2");
}

static void test_hugepage_align(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_range r[] = {{0, 4 * MiB}, {6 * MiB, 3 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 2, .hugepage_size = MB_HUGEPAGE_2M};
  expect(&q, 1, false, MB_E_INVALID, MB_RAM_HUGEPAGE_ALIGN, "range 1 [0x600000, +3 MiB)",
         "hugepage size 2 MiB");
  r[1] = (mb_ram_range){7 * MiB, 2 * MiB};
  expect(&q, 1, false, MB_E_INVALID, MB_RAM_HUGEPAGE_ALIGN, "[0x700000, +2 MiB)", "2 MiB");
}

static void test_overlap(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_range a[] = {{0, 16 * MiB}}, b[] = {{32 * MiB, 4 * MiB}, {8 * MiB, 4 * MiB}};
  mb_ram_request q[] = {{.ranges = a, .count = 1}, {.ranges = b, .count = 2}};
  expect(q, 2, false, MB_E_OVERLAP, MB_RAM_OVERLAP, "request 0 range 0 [0x0, 0x1000000)",
         "request 1 range 1 [0x800000, 0xc00000)");
  mb_ram_range c[] = {{0, 16 * MiB}, {15 * MiB, 4 * MiB}}; /* inside one request */
  mb_ram_request one = {.ranges = c, .count = 2};
  expect(&one, 1, false, MB_E_OVERLAP, MB_RAM_OVERLAP, "request 0 range 0",
         "request 0 range 1 [0xf00000, 0x1300000)");
}

static void test_past_max(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_range r[] = {{0, 16 * MiB}, {63 * GiB, 2 * GiB}};
  mb_ram_request q = {.ranges = r, .count = 2};
  expect(&q, 1, false, MB_E_INVALID, MB_RAM_PAST_MAX, "range 1 [0xfc0000000, +2 GiB)",
         "max address 0x1000000000 (64 GiB)");
  r[1] = (mb_ram_range){UINT64_MAX - 4095, 8192}; /* wraps */
  expect(&q, 1, false, MB_E_INVALID, MB_RAM_PAST_MAX, "range 1", "max address");
}

static void test_empty_or_unaligned(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_range r[] = {{0, 16 * MiB}, {32 * MiB, 0}};
  mb_ram_request q = {.ranges = r, .count = 2};
  expect(&q, 1, false, MB_E_INVALID, MB_RAM_EMPTY_OR_UNALIGNED, "range 1 [0x2000000, +0x0 bytes)",
         "empty");
  r[1] = (mb_ram_range){32 * MiB, 6000};
  expect(&q, 1, false, MB_E_INVALID, MB_RAM_EMPTY_OR_UNALIGNED, "+0x1770 bytes",
         "not 4 KiB aligned");
  r[1] = (mb_ram_range){32 * MiB + 512, 4096};
  expect(&q, 1, false, MB_E_INVALID, MB_RAM_EMPTY_OR_UNALIGNED, "[0x2000200", "aligned");
  mb_ram_request none[] = {{.ranges = r, .count = 1}, {.ranges = NULL, .count = 3}};
  expect(none, 2, false, MB_E_INVALID, MB_RAM_EMPTY_OR_UNALIGNED, "request 1 has no ranges",
         NULL);
  expect(NULL, 0, false, MB_E_INVALID, MB_RAM_EMPTY_OR_UNALIGNED, "no backing requests", NULL);
}

/* ---- the order ------------------------------------------------------------------------------ */

static void test_order(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  /* request 0 breaks a later rule, request 1 an earlier one: per request, in order */
  mb_ram_range a[] = {{0, 16 * MiB}}, b[] = {{32 * MiB, 16 * MiB}};
  mb_ram_request q[] = {{.ranges = a, .count = 1, .hugepage_size = MB_HUGEPAGE_2M},
                        {.ranges = b, .count = 1, .private_memory = true}};
  expect(q, 2, true, MB_E_INVALID, MB_RAM_HUGEPAGE_WITH_LEGACY, "request 0", NULL);
  /* private + legacy before private + existing before NUMA before the hugepage rules */
  mb_ram_request all = {.ranges = a, .count = 1, .private_memory = true, .use_existing_fd = true,
                        .use_numa_node = true, .numa_node = 4096, .hugepage_size = 3 * MiB};
  expect(&all, 1, true, MB_E_INVALID, MB_RAM_PRIVATE_WITH_LEGACY, NULL, NULL);
  expect(&all, 1, false, MB_E_INVALID, MB_RAM_PRIVATE_WITH_EXISTING, NULL, NULL);
  all.private_memory = false;
#ifdef MB_HAVE_NUMA
  expect(&all, 1, false, MB_E_INVALID, MB_RAM_NUMA_NODE, NULL, NULL);
#endif
  all.use_numa_node = false;
  expect(&all, 1, false, MB_E_INVALID, MB_RAM_HUGEPAGE_SIZE, NULL, NULL);
  all.hugepage_size = MB_HUGEPAGE_2M;
  all.private_memory = false;
  all.vtl = 1;
  expect(&all, 1, true, MB_E_INVALID, MB_RAM_HUGEPAGE_WITH_EXISTING, NULL, NULL);
  /* the VTL after the options, before the layout */
  mb_ram_request v = {.ranges = a, .count = 1, .vtl = 1};
  expect(&v, 1, true, MB_E_INVALID, MB_RAM_VTL, NULL, NULL);
  /* the layout rules: legacy RAM, then hugepage alignment, overlap, bounds, shape */
  mb_ram_range bad[] = {{1 * MiB, 3 * MiB}, {2 * MiB, 4 * MiB}, {70 * GiB, 0}};
  mb_ram_request h = {.ranges = bad, .count = 3, .hugepage_size = MB_HUGEPAGE_2M};
  mb_ram_request p = {.ranges = bad, .count = 3};
  expect(&p, 1, true, MB_E_INVALID, MB_RAM_NO_LEGACY_RAM, NULL, NULL);
  expect(&h, 1, false, MB_E_INVALID, MB_RAM_HUGEPAGE_ALIGN, NULL, NULL);
  expect(&p, 1, false, MB_E_OVERLAP, MB_RAM_OVERLAP, NULL, NULL);
  bad[1].gpa = 8 * MiB;
  bad[2].size = 4096;
  expect(&p, 1, false, MB_E_INVALID, MB_RAM_PAST_MAX, NULL, NULL);
  bad[2] = (mb_ram_range){16 * MiB, 100};
  expect(&p, 1, false, MB_E_INVALID, MB_RAM_EMPTY_OR_UNALIGNED, NULL, NULL);
}

/* ---- after the checks: allocation and the manager, undone ---------------------------------- */

/* An existing fd too small for its request: the first request's object is made, then the
 * second's import fails: the first goes too. */
static void test_alloc_undone(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  int fd = memfd_create("small", MFD_CLOEXEC);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, 4 * MiB), 0);
  mb_ram_range a[] = {{0, 16 * MiB}}, b[] = {{32 * MiB, 8 * MiB}};
  mb_ram_request q[] = {{.ranges = a, .count = 1},
                        {.ranges = b, .count = 1, .use_existing_fd = true, .existing_fd = fd}};
  expect(q, 2, false, MB_E_INVALID, MB_RAM_ALLOC, "request 1: existing fd", "8 MiB");
  close(fd);
}

/* The VMM's own region in the way of the second of three regions: the first region (added,
 * mapped, mapped into) is removed again and its object dropped. */
static void test_region_refused(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_region_params p = {"vmm", 15 * MiB, 2 * MiB, 3, true, 0};
  mb_region_id mine;
  assert_int_equal(mb_region_add_sync(W.mm, &p, &mine), 0);
  mb_ram_range r[] = {{0, 8 * MiB}, {8 * MiB, 8 * MiB}, {32 * MiB, 8 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 3};
  expect(&q, 1, false, MB_E_OVERLAP, MB_RAM_REGION, "[0x800000, +8 MiB)", "region add");
  assert_int_equal(ru_region_count(W.mm), 1);
  assert_int_equal(mb_region_remove_sync(W.mm, mine), 0);
  uint64_t v = 0;
  assert_int_equal(mb_mapper_read(W.view, 0, &v, 8), MB_E_UNMAPPED);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_private_with_legacy),  cmocka_unit_test(test_private_with_existing),
      cmocka_unit_test(test_numa_node),            cmocka_unit_test(test_hugepage_size),
      cmocka_unit_test(test_hugepage_with_private), cmocka_unit_test(test_hugepage_with_existing),
      cmocka_unit_test(test_hugepage_with_legacy), cmocka_unit_test(test_no_legacy_ram),
      cmocka_unit_test(test_vtl),
      cmocka_unit_test(test_hugepage_align),       cmocka_unit_test(test_overlap),
      cmocka_unit_test(test_past_max),             cmocka_unit_test(test_empty_or_unaligned),
      cmocka_unit_test(test_order),                cmocka_unit_test(test_alloc_undone),
      cmocka_unit_test(test_region_refused),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
