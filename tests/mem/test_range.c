/* test_range.c: mb_range construction and arithmetic. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mb_range.h"

static void test_make_valid(void **state) {
  (void)state;
  mb_range r;
  assert_int_equal(mb_range_make(0, MB_PAGE_SIZE, &r), 0);
  assert_true(r.start == 0 && r.end == MB_PAGE_SIZE);
  assert_int_equal(mb_range_make(1ull << 40, 1ull << 30, &r), 0);
  assert_true(mb_range_size(r) == 1ull << 30);
  /* the highest page: end is the last representable page-aligned value */
  uint64_t top = UINT64_MAX - MB_PAGE_MASK;
  assert_int_equal(mb_range_make(top - MB_PAGE_SIZE, MB_PAGE_SIZE, &r), 0);
  assert_true(r.end == top);
  assert_int_equal(mb_range_make_bounds(8192, 16384, &r), 0);
  assert_true(r.start == 8192 && r.end == 16384);
}

static void test_make_invalid(void **state) {
  (void)state;
  mb_range r = {7, 7};
  assert_int_equal(mb_range_make(0, 0, &r), -EINVAL);
  assert_int_equal(mb_range_make(1, MB_PAGE_SIZE, &r), -EINVAL);
  assert_int_equal(mb_range_make(0, MB_PAGE_SIZE + 1, &r), -EINVAL);
  assert_int_equal(mb_range_make(MB_PAGE_SIZE, 100, &r), -EINVAL);
  uint64_t top = UINT64_MAX - MB_PAGE_MASK; /* highest aligned address */
  assert_int_equal(mb_range_make(top, MB_PAGE_SIZE, &r), -EINVAL); /* end would be 2^64 */
  assert_int_equal(mb_range_make(top, top, &r), -EINVAL);
  assert_int_equal(mb_range_make_bounds(8192, 8192, &r), -EINVAL);
  assert_int_equal(mb_range_make_bounds(8192, 4096, &r), -EINVAL);
  assert_int_equal(mb_range_make_bounds(8192, 8193, &r), -EINVAL);
  assert_true(r.start == 7 && r.end == 7); /* untouched on error */
}

static void test_predicates(void **state) {
  (void)state;
  mb_range a = {0x1000, 0x3000}, b = {0x2000, 0x4000}, c = {0x3000, 0x5000};
  mb_range empty = {0x2000, 0x2000};
  assert_true(mb_range_overlaps(a, b));
  assert_true(mb_range_overlaps(b, a));
  assert_false(mb_range_overlaps(a, c)); /* touching is not overlapping */
  assert_false(mb_range_overlaps(a, empty));
  assert_true(mb_range_contains(a, (mb_range){0x1000, 0x2000}));
  assert_true(mb_range_contains(a, a));
  assert_false(mb_range_contains(a, b));
  assert_true(mb_range_contains_addr(a, 0x1000));
  assert_true(mb_range_contains_addr(a, 0x2fff));
  assert_false(mb_range_contains_addr(a, 0x3000));
  assert_false(mb_range_contains_addr(a, 0xfff));
  assert_true(mb_range_is_empty(empty));
  assert_false(mb_range_is_empty(a));
  assert_true(mb_page_aligned(0) && mb_page_aligned(0x5000) && !mb_page_aligned(0x5001));
}

static void test_intersect(void **state) {
  (void)state;
  mb_range a = {0x1000, 0x3000}, b = {0x2000, 0x4000}, c = {0x5000, 0x6000};
  mb_range i = mb_range_intersect(a, b);
  assert_true(i.start == 0x2000 && i.end == 0x3000);
  i = mb_range_intersect(b, a);
  assert_true(i.start == 0x2000 && i.end == 0x3000);
  i = mb_range_intersect(a, c);
  assert_true(mb_range_is_empty(i));
  assert_true(mb_range_size(i) == 0);
  i = mb_range_intersect(a, (mb_range){0, UINT64_MAX});
  assert_true(i.start == a.start && i.end == a.end);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_make_valid),
      cmocka_unit_test(test_make_invalid),
      cmocka_unit_test(test_predicates),
      cmocka_unit_test(test_intersect),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
