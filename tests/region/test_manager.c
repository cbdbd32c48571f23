/* test_manager.c: the region manager's protocol, message by message, against fake consumers
 * (rm_fakes.h): the spec's example, ROM over RAM, the teardown/setup order, access changes,
 * partial overlays, ties, holes, splits, late partitions, every error code, rollback after a
 * failure at every nested call, and a region with 5,000 mappings. */
#include "rm_fakes.h"

#define K 1024ull
#define M (1024ull * 1024ull)
#define G (1024ull * M)
#define RW true
#define RO false

static fx *nested(int npm) { return fx_new(MB_OVERLAP_NESTED, 64 * G, npm, false); }
static fx *any(int npm) { return fx_new(MB_OVERLAP_ANY, 64 * G, npm, false); }

static uint32_t add(fx *f, const char *name, uint64_t gpa, uint64_t size, int prio) {
  int64_t id = fx_region_add(f, name, gpa, size, prio);
  assert_true(id > 0);
  return (uint32_t)id;
}

/* A region with one mapping, of obj from offset 0, over all of it. */
static uint32_t add_backed(fx *f, const char *name, uint64_t gpa, uint64_t size, int prio,
                           mb_object *obj, bool writable) {
  uint32_t id = add(f, name, gpa, size, prio);
  assert_int_equal(fx_mapping_add(f, id, 0, size, obj, 0, writable), 0);
  return id;
}

/* Position of needle in hay (asserted present). */
static size_t pos(const char *hay, const char *needle) {
  const char *p = strstr(hay, needle);
  if (p == NULL) {
    print_error("not in the log: %s\nlog: %s\n", needle ? needle : "", hay ? hay : "");
    fail();
  }
  return (size_t)(p - hay);
}

static size_t rpos(const char *hay, const char *needle) {
  size_t at = pos(hay, needle);
  for (const char *p = strstr(hay + at + 1, needle); p; p = strstr(p + 1, needle)) at = (size_t)(p - hay);
  return at;
}

/* Checks the order of one change in the log it takes: both partitions (pm0, pm1) unmap `gone`
 * before the mapping manager does, the manager unmaps it before it maps `mm_map`, and it maps
 * that before either partition maps `pm_map`. */
static void expect_swap_order(fx *f, const char *gone, const char *mm_map, const char *pm_map) {
  char *log = fx_take_log(f), line[128];
  snprintf(line, sizeof line, "mm unmap %s", gone);
  size_t mm_unmap_at = pos(log, line);
  snprintf(line, sizeof line, "mm map %s", mm_map);
  size_t mm_map_at = pos(log, line);
  for (int i = 0; i < 2; i++) {
    snprintf(line, sizeof line, "pm%d unmap %s", i, gone);
    assert_true(rpos(log, line) < mm_unmap_at);
  }
  assert_true(mm_unmap_at < mm_map_at);
  for (int i = 0; i < 2; i++) {
    snprintf(line, sizeof line, "pm%d map %s", i, pm_map);
    assert_true(mm_map_at < pos(log, line));
  }
  free(log);
}

/* ---- the spec's example ------------------------------------------------------------------ */

static void test_example(void **unused) {
  (void)unused;
  fx *f = nested(1);
  mb_object *ram_o = fx_object(f, "ram", 16 * M), *rom_o = fx_object(f, "rom", 64 * K);
  uint32_t ram = add_backed(f, "ram", 0, 16 * M, 255, ram_o, RW);
  fx_expect_log(f, "");
  assert_int_equal(fx_region_map(f, ram, RW), 0);
  fx_expect_log(f, "mm map 0x0+0x1000000:rw=ram@0x0");
  uint32_t rom = add_backed(f, "rom", 0xf0000, 64 * K, 0, rom_o, RO);
  fx_expect_log(f, "");
  assert_int_equal(fx_partition_add(f, 0), 0);
  fx_expect_log(f, "pm0 map 0x0+0x1000000:rw");
  assert_int_equal(fx_region_state(f, ram), MB_REGION_ACTIVE);
  assert_int_equal(fx_region_state(f, rom), MB_REGION_UNMAPPED);
  assert_int_equal(fx_region_remove(f, ram), 0);
  fx_expect_log(f, "pm0 unmap 0x0+0x1000000; mm unmap 0x0+0x1000000");
  assert_int_equal(fx_region_map(f, rom, RO), 0);
  fx_expect_log(f, "mm map 0xf0000+0x10000:ro=rom@0x0; pm0 map 0xf0000+0x10000:ro");
  assert_int_equal(fx_region_state(f, rom), MB_REGION_ACTIVE);
  assert_int_equal(fx_region_state(f, ram), MB_E_NOTFOUND);
  assert_int_equal(f->mm.state.n, 1);
  assert_int_equal(f->pm[0].state.n, 1);
  assert_false(f->pm[0].state.v[0].writable);
  fx_no_violations(f);
  fx_free(f);
}

/* ---- ROM over RAM, and the order of teardown and setup ----------------------------------- */

static void test_rom_over_ram(void **unused) {
  (void)unused;
  fx *f = nested(2);
  mb_object *ram_o = fx_object(f, "ram", 1 * M), *bios_o = fx_object(f, "bios", 64 * K);
  uint32_t ram = add_backed(f, "ram", 0, 1 * M, 10, ram_o, RW);
  assert_int_equal(fx_region_map(f, ram, RW), 0);
  uint32_t bios = add_backed(f, "bios", 0xf0000, 64 * K, 1, bios_o, RO);
  free(fx_take_log(f));
  assert_int_equal(fx_region_map(f, bios, RO), 0);
  fx_expect_log(f, ""); /* hidden: nothing to tell anyone */
  assert_int_equal(fx_region_state(f, bios), MB_REGION_HIDDEN);
  assert_int_equal(fx_partition_add(f, 0), 0);
  assert_int_equal(fx_partition_add(f, 1), 0);
  fx_expect_log(f, "pm0 map 0x0+0x100000:rw; pm1 map 0x0+0x100000:rw");

  /* Unmapping RAM reveals the BIOS: partitions first, then the mapping manager, then the
   * new piece's mappings, then the partitions again. */
  assert_int_equal(fx_region_unmap(f, ram), 0);
  expect_swap_order(f, "0x0+0x100000", "0xf0000+0x10000:ro=bios@0x0", "0xf0000+0x10000:ro");
  assert_int_equal(fx_region_state(f, bios), MB_REGION_ACTIVE);
  assert_int_equal(fx_region_state(f, ram), MB_REGION_UNMAPPED);

  /* Mapping RAM again hides it: only the BIOS bytes are unmapped from the VA mappers; RAM's
   * mappings are set up in one call. */
  assert_int_equal(fx_region_map(f, ram, RW), 0);
  expect_swap_order(f, "0xf0000+0x10000", "0x0+0x100000:rw=ram@0x0", "0x0+0x100000:rw");
  assert_int_equal(fx_region_state(f, bios), MB_REGION_HIDDEN);
  assert_int_equal(fx_region_state(f, ram), MB_REGION_ACTIVE);

  /* A hidden region comes and goes silently. */
  assert_int_equal(fx_region_unmap(f, bios), 0);
  assert_int_equal(fx_region_remove(f, bios), 0);
  fx_expect_log(f, "");
  fx_no_violations(f);
  fx_free(f);
}

/* ---- access changes ------------------------------------------------------------------------ */

static void test_access_change(void **unused) {
  (void)unused;
  fx *f = nested(1);
  mb_object *o = fx_object(f, "o", 1 * M);
  uint32_t r = add(f, "r", 0, 1 * M, 0);
  assert_int_equal(fx_mapping_add(f, r, 0, 512 * K, o, 0, RW), 0);
  assert_int_equal(fx_mapping_add(f, r, 512 * K, 256 * K, o, 512 * K, RO), 0);
  assert_int_equal(fx_partition_add(f, 0), 0);
  assert_int_equal(fx_region_map(f, r, RW), 0);
  fx_expect_log(f, "mm map 0x0+0x80000:rw=o@0x0 0x80000+0x40000:ro=o@0x80000; pm0 map 0x0+0x100000:rw");
  assert_int_equal(fx_region_map(f, r, RW), 0);
  fx_expect_log(f, ""); /* same access: a no-op */
  assert_int_equal(fx_region_map(f, r, RO), 0);
  /* in place: the partition's piece, then the same mappings at the new access */
  fx_expect_log(f, "pm0 access 0x0+0x100000:ro; mm replace 0x0+0x100000 0x0+0xc0000:ro=o@0x0");
  assert_int_equal(fx_region_state(f, r), MB_REGION_ACTIVE);
  /* mappings added to a read-only region are read-only for the VA mappers */
  assert_int_equal(fx_mapping_add(f, r, 768 * K, 4 * K, o, 0, RW), 0);
  fx_expect_log(f, "mm map 0xc0000+0x1000:ro=o@0x0");
  assert_int_equal(fx_region_map(f, r, RW), 0);
  fx_expect_log(f, "pm0 access 0x0+0x100000:rw; mm replace 0x0+0x100000 "
                   "0x0+0x80000:rw=o@0x0 0x80000+0x40000:ro=o@0x80000 0xc0000+0x1000:rw=o@0x0");
  fx_no_violations(f);
  fx_free(f);
}

static void test_access_change_hidden(void **unused) {
  (void)unused;
  fx *f = nested(1);
  mb_object *o = fx_object(f, "o", 1 * M);
  uint32_t big = add(f, "big", 0, 1 * M, 9);
  uint32_t small = add_backed(f, "small", 0, 64 * K, 1, o, RW);
  assert_int_equal(fx_partition_add(f, 0), 0);
  assert_int_equal(fx_region_map(f, big, RW), 0);
  assert_int_equal(fx_region_map(f, small, RW), 0);
  fx_expect_log(f, "pm0 map 0x0+0x100000:rw");
  assert_int_equal(fx_region_map(f, small, RO), 0);
  fx_expect_log(f, "");
  assert_int_equal(fx_region_unmap(f, big), 0);
  fx_expect_log(f, "pm0 unmap 0x0+0x100000; mm map 0x0+0x10000:ro=o@0x0; pm0 map 0x0+0x10000:ro");
  fx_no_violations(f);
  fx_free(f);
}

/* ---- partial overlays under overlap=any --------------------------------------------------- */

static void test_partial_any(void **unused) {
  (void)unused;
  fx *f = any(1);
  mb_object *a = fx_object(f, "a", 64 * K), *b = fx_object(f, "b", 16 * K);
  uint32_t base = add_backed(f, "base", 0, 64 * K, 1, a, RW);
  assert_int_equal(fx_region_map(f, base, RW), 0);
  uint32_t patch = add_backed(f, "patch", 16 * K, 16 * K, 2, b, RW);
  assert_int_equal(fx_partition_add(f, 0), 0);
  fx_expect_log(f, "mm map 0x0+0x10000:rw=a@0x0; pm0 map 0x0+0x10000:rw");

  assert_int_equal(fx_region_map(f, patch, RW), 0);
  /* only the covered bytes change for the VA mappers; the partition's piece is re-cut */
  fx_expect_log(f, "pm0 unmap 0x0+0x10000; mm unmap 0x4000+0x4000; mm map 0x4000+0x4000:rw=b@0x0; "
                   "pm0 map 0x0+0x4000:rw; pm0 map 0x4000+0x4000:rw; pm0 map 0x8000+0x8000:rw");
  assert_int_equal(fx_region_state(f, base), MB_REGION_PARTIAL);
  assert_int_equal(fx_region_state(f, patch), MB_REGION_ACTIVE);

  assert_int_equal(fx_region_map(f, patch, RO), 0);
  fx_expect_log(f, "pm0 access 0x4000+0x4000:ro; mm replace 0x4000+0x4000 0x4000+0x4000:ro=b@0x0");

  /* a region without mappings covers everything: a hole for the partition */
  uint32_t cover = add(f, "cover", 0, 64 * K, 3);
  assert_int_equal(fx_region_map(f, cover, RW), 0);
  fx_expect_log(f, "pm0 unmap 0x0+0x4000; pm0 unmap 0x4000+0x4000; pm0 unmap 0x8000+0x8000; "
                   "mm unmap 0x0+0x4000; mm unmap 0x4000+0x4000; mm unmap 0x8000+0x8000; "
                   "pm0 map 0x0+0x10000:rw");
  assert_int_equal(fx_region_state(f, base), MB_REGION_HIDDEN);
  assert_int_equal(fx_region_state(f, patch), MB_REGION_HIDDEN);
  assert_int_equal(f->mm.state.n, 0);

  assert_int_equal(fx_region_remove(f, cover), 0);
  fx_expect_log(f, "pm0 unmap 0x0+0x10000; "
                   "mm map 0x0+0x4000:rw=a@0x0; mm map 0x4000+0x4000:ro=b@0x0; mm map 0x8000+0x8000:rw=a@0x8000; "
                   "pm0 map 0x0+0x4000:rw; pm0 map 0x4000+0x4000:ro; pm0 map 0x8000+0x8000:rw");
  assert_int_equal(fx_region_unmap(f, patch), 0);
  fx_expect_log(f, "pm0 unmap 0x0+0x4000; pm0 unmap 0x4000+0x4000; pm0 unmap 0x8000+0x8000; "
                   "mm unmap 0x4000+0x4000; mm map 0x4000+0x4000:rw=a@0x4000; pm0 map 0x0+0x10000:rw");
  assert_int_equal(fx_region_state(f, base), MB_REGION_ACTIVE);
  assert_int_equal(fx_region_state(f, patch), MB_REGION_UNMAPPED);
  fx_list mm = fx_snapshot(f, &f->mm);
  fx_normalize(&mm);
  assert_int_equal(mm.n, 1);
  assert_int_equal(mm.v[0].size, 64 * K);
  free(mm.v);

  /* a lower region inside a higher one under any: hidden, no messages */
  uint32_t low = add(f, "low", 8 * K, 8 * K, 0);
  assert_int_equal(fx_region_map(f, low, RW), 0);
  fx_expect_log(f, "");
  assert_int_equal(fx_region_state(f, low), MB_REGION_HIDDEN);
  fx_no_violations(f);
  fx_free(f);
}

/* ---- ties: the earliest added wins -------------------------------------------------------- */

static void test_ties(void **unused) {
  (void)unused;
  fx *f = nested(1);
  mb_object *A = fx_object(f, "A", 64 * K), *B = fx_object(f, "B", 64 * K);
  uint32_t a = add(f, "a", 0, 64 * K, 5);
  uint32_t b = add(f, "b", 0, 64 * K, 5); /* identical range, equal priority: admitted */
  assert_int_equal(fx_mapping_add(f, a, 0, 64 * K, A, 0, RW), 0);
  assert_int_equal(fx_mapping_add(f, b, 0, 64 * K, B, 0, RW), 0);
  assert_int_equal(fx_partition_add(f, 0), 0);
  assert_int_equal(fx_region_map(f, b, RW), 0);
  fx_expect_log(f, "mm map 0x0+0x10000:rw=B@0x0; pm0 map 0x0+0x10000:rw");
  assert_int_equal(fx_region_map(f, a, RW), 0);
  fx_expect_log(f, "pm0 unmap 0x0+0x10000; mm unmap 0x0+0x10000; mm map 0x0+0x10000:rw=A@0x0; "
                   "pm0 map 0x0+0x10000:rw");
  assert_int_equal(fx_region_state(f, a), MB_REGION_ACTIVE);
  assert_int_equal(fx_region_state(f, b), MB_REGION_HIDDEN);
  assert_int_equal(fx_region_unmap(f, b), 0);
  assert_int_equal(fx_region_map(f, b, RO), 0);
  fx_expect_log(f, "");
  assert_int_equal(fx_region_unmap(f, a), 0);
  fx_expect_log(f, "pm0 unmap 0x0+0x10000; mm unmap 0x0+0x10000; mm map 0x0+0x10000:ro=B@0x0; "
                   "pm0 map 0x0+0x10000:ro");
  fx_no_violations(f);
  fx_free(f);

  /* under any, for overlapping ranges of equal priority */
  f = any(1);
  A = fx_object(f, "A", 64 * K);
  B = fx_object(f, "B", 64 * K);
  a = add(f, "a", 0, 32 * K, 1);
  b = add(f, "b", 16 * K, 32 * K, 1);
  assert_int_equal(fx_mapping_add(f, a, 0, 32 * K, A, 0, RW), 0);
  assert_int_equal(fx_mapping_add(f, b, 0, 32 * K, B, 0, RW), 0);
  assert_int_equal(fx_region_map(f, b, RW), 0);
  assert_int_equal(fx_region_map(f, a, RW), 0);
  fx_expect_log(f, "mm map 0x4000+0x8000:rw=B@0x0; mm unmap 0x4000+0x4000; mm map 0x0+0x8000:rw=A@0x0");
  assert_int_equal(fx_region_state(f, a), MB_REGION_ACTIVE);
  assert_int_equal(fx_region_state(f, b), MB_REGION_PARTIAL);
  assert_int_equal(fx_partition_add(f, 0), 0);
  fx_expect_log(f, "pm0 map 0x0+0x8000:rw; pm0 map 0x8000+0x4000:rw");
  fx_no_violations(f);
  fx_free(f);
}

/* ---- holes ----------------------------------------------------------------------------------- */

static void test_holes(void **unused) {
  (void)unused;
  fx *f = nested(1);
  mb_object *o = fx_object(f, "o", 64 * K);
  assert_int_equal(fx_partition_add(f, 0), 0);
  uint32_t r = add(f, "r", 0, 64 * K, 0);
  assert_int_equal(fx_mapping_add(f, r, 16 * K, 16 * K, o, 0, RW), 0);
  assert_int_equal(fx_region_map(f, r, RW), 0);
  fx_expect_log(f, "mm map 0x4000+0x4000:rw=o@0x0; pm0 map 0x0+0x10000:rw");
  uint32_t empty = add(f, "empty", 1 * M, 64 * K, 0);
  assert_int_equal(fx_region_map(f, empty, RW), 0);
  fx_expect_log(f, "pm0 map 0x100000+0x10000:rw");
  assert_int_equal(fx_region_unmap(f, empty), 0);
  fx_expect_log(f, "pm0 unmap 0x100000+0x10000");
  assert_int_equal(fx_region_state(f, empty), MB_REGION_UNMAPPED);
  fx_no_violations(f);
  fx_free(f);
}

/* ---- splits ---------------------------------------------------------------------------------- */

static void test_splits(void **unused) {
  (void)unused;
  fx *f = nested(1);
  mb_object *o = fx_object(f, "o", 64 * K), *p = fx_object(f, "p", 64 * K);
  uint32_t r = add_backed(f, "r", 0, 64 * K, 0, o, RW);
  assert_int_equal(fx_region_map(f, r, RW), 0);
  assert_int_equal(fx_partition_add(f, 0), 0);
  free(fx_take_log(f));

  assert_int_equal(fx_mapping_remove(f, r, 16 * K, 16 * K), 0); /* the middle: split in two */
  fx_expect_log(f, "mm unmap 0x4000+0x4000");
  assert_int_equal(fx_mapping_remove(f, r, 16 * K, 16 * K), 0); /* nothing there: a no-op */
  fx_expect_log(f, "");
  assert_int_equal(fx_mapping_add(f, r, 8 * K, 16 * K, p, 0, RW), MB_E_OVERLAP);
  assert_int_equal(fx_mapping_add(f, r, 16 * K, 16 * K, p, 0, RO), 0);
  fx_expect_log(f, "mm map 0x4000+0x4000:ro=p@0x0");
  /* straddles o's left part, covers p, straddles o's right part */
  assert_int_equal(fx_mapping_remove(f, r, 8 * K, 32 * K), 0);
  fx_expect_log(f, "mm unmap 0x2000+0x8000");
  /* what is left, seen through an unmap and a map: [0, 8K) and [40K, 64K) of o */
  assert_int_equal(fx_region_unmap(f, r), 0);
  fx_expect_log(f, "pm0 unmap 0x0+0x10000; mm unmap 0x0+0x10000");
  assert_int_equal(fx_region_map(f, r, RW), 0);
  fx_expect_log(f, "mm map 0x0+0x2000:rw=o@0x0 0xa000+0x6000:rw=o@0xa000; pm0 map 0x0+0x10000:rw");
  assert_int_equal(fx_mapping_remove(f, r, 0, 64 * K), 0);
  fx_expect_log(f, "mm unmap 0x0+0x2000; mm unmap 0xa000+0x6000");
  assert_int_equal(f->mm.state.n, 0);
  assert_int_equal(fx_mapping_add(f, r, 0, 64 * K, p, 0, RW), 0);
  fx_expect_log(f, "mm map 0x0+0x10000:rw=p@0x0");
  /* a split while hidden tells nobody, and shows when revealed */
  uint32_t top = add(f, "top", 0, 1 * M, 7);
  assert_int_equal(fx_region_map(f, top, RW), 0);
  free(fx_take_log(f));
  assert_int_equal(fx_mapping_remove(f, r, 4 * K, 4 * K), 0);
  fx_expect_log(f, "");
  assert_int_equal(fx_region_remove(f, top), 0);
  fx_expect_log(f, "pm0 unmap 0x0+0x100000; mm map 0x0+0x1000:rw=p@0x0 0x2000+0xe000:rw=p@0x2000; "
                   "pm0 map 0x0+0x10000:rw");
  fx_no_violations(f);
  fx_free(f);
}

/* A mapping added or removed in a partially visible region touches only its visible parts. */
static void test_mappings_partial(void **unused) {
  (void)unused;
  fx *f = any(0);
  mb_object *o = fx_object(f, "o", 64 * K);
  uint32_t base = add(f, "base", 0, 64 * K, 1);
  uint32_t mid = add(f, "mid", 16 * K, 16 * K, 2);
  assert_int_equal(fx_region_map(f, base, RW), 0);
  assert_int_equal(fx_region_map(f, mid, RW), 0);
  fx_expect_log(f, "");
  assert_int_equal(fx_mapping_add(f, base, 0, 64 * K, o, 0, RO), 0);
  fx_expect_log(f, "mm map 0x0+0x4000:ro=o@0x0; mm map 0x8000+0x8000:ro=o@0x8000");
  assert_int_equal(fx_mapping_remove(f, base, 8 * K, 32 * K), 0);
  fx_expect_log(f, "mm unmap 0x2000+0x2000; mm unmap 0x8000+0x2000");
  fx_no_violations(f);
  fx_free(f);
}

/* ---- partitions ---------------------------------------------------------------------------- */

static void test_late_partition(void **unused) {
  (void)unused;
  fx *f = any(2);
  uint32_t base = add(f, "base", 0, 64 * K, 1);
  uint32_t patch = add(f, "patch", 16 * K, 16 * K, 2);
  uint32_t far = add(f, "far", 1 * M, 64 * K, 0);
  assert_int_equal(fx_region_map(f, base, RW), 0);
  assert_int_equal(fx_region_map(f, patch, RO), 0);
  assert_int_equal(fx_region_map(f, far, RW), 0);
  assert_int_equal(fx_partition_add(f, 0), 0);
  fx_expect_log(f, "pm0 map 0x0+0x4000:rw; pm0 map 0x4000+0x4000:ro; pm0 map 0x8000+0x8000:rw; "
                   "pm0 map 0x100000+0x10000:rw");
  assert_int_equal(fx_partition_add(f, 0), MB_E_INVALID); /* already added */
  assert_int_equal(fx_partition_remove(f, 0), 0);
  fx_expect_log(f, "");
  assert_int_equal(fx_partition_remove(f, 0), MB_E_NOTFOUND);
  assert_int_equal(fx_partition_add(f, 1), 0);
  fx_expect_log(f, "pm1 map 0x0+0x4000:rw; pm1 map 0x4000+0x4000:ro; pm1 map 0x8000+0x8000:rw; "
                   "pm1 map 0x100000+0x10000:rw");
  assert_int_equal(fx_region_unmap(f, far), 0);
  fx_expect_log(f, "pm1 unmap 0x100000+0x10000"); /* pm0 was forgotten */
  fx_no_violations(f);
  fx_free(f);
}

/* A partition mapper that is gone holds nothing: teardown and setup go on without it. */
static void test_gone_partition(void **unused) {
  (void)unused;
  fx *f = nested(2);
  uint32_t r = add(f, "r", 0, 64 * K, 0);
  assert_int_equal(fx_partition_add(f, 0), 0);
  assert_int_equal(fx_partition_add(f, 1), 0);
  assert_int_equal(fx_region_map(f, r, RW), 0);
  free(fx_take_log(f));
  mb_actor_destroy(f->pm_actor[1]); /* behind the manager's back */
  assert_int_equal(fx_region_unmap(f, r), 0);
  fx_expect_log(f, "pm0 unmap 0x0+0x10000");
  assert_int_equal(fx_region_map(f, r, RO), 0);
  fx_expect_log(f, "pm0 map 0x0+0x10000:ro");
  assert_int_equal(fx_region_state(f, r), MB_REGION_ACTIVE);
  assert_int_equal(fx_partition_remove(f, 1), 0);
  /* adding a partition that is gone fails (when there is something to map) */
  assert_int_equal(fx_partition_add(f, 1), MB_EGONE);
  assert_int_equal(fx_partition_remove(f, 1), MB_E_NOTFOUND);
  fx_no_violations(f);
  fx_free(f);
}

/* ---- errors ------------------------------------------------------------------------------ */

static void test_errors(void **unused) {
  (void)unused;
  fx *f = fx_new(MB_OVERLAP_NESTED, 1 * G, 1, false);
  mb_object *o = fx_object(f, "o", 64 * K);
  /* region add */
  assert_int_equal(fx_region_add(f, "x", 0x1001, 64 * K, 0), MB_E_INVALID);
  assert_int_equal(fx_region_add(f, "x", 0, 64 * K + 1, 0), MB_E_INVALID);
  assert_int_equal(fx_region_add(f, "x", 0, 0, 0), MB_E_INVALID);
  assert_int_equal(fx_region_add(f, "x", UINT64_MAX - 4095, 8 * K, 0), MB_E_INVALID);
  assert_int_equal(fx_region_add(f, "x", 1 * G - 4 * K, 8 * K, 0), MB_E_INVALID);
  uint32_t r = add(f, "r", 1 * G - 64 * K, 64 * K, 5); /* ends exactly at max_addr */
  assert_int_equal(fx_region_add(f, "x", 1 * G - 128 * K, 128 * K, 1), MB_E_OVERLAP);
  assert_int_equal(fx_region_add(f, "x", 1 * G - 64 * K, 4 * K, 6), MB_E_OVERLAP);
  assert_int_equal(fx_region_add(f, "x", 1 * G - 64 * K, 4 * K, 5), MB_E_OVERLAP);
  /* unknown ids */
  assert_int_equal(fx_region_map(f, 999, RW), MB_E_NOTFOUND);
  assert_int_equal(fx_region_map(f, 0, RW), MB_E_NOTFOUND);
  assert_int_equal(fx_region_unmap(f, 999), MB_E_NOTFOUND);
  assert_int_equal(fx_region_remove(f, 999), MB_E_NOTFOUND);
  assert_int_equal(fx_region_state(f, 999), MB_E_NOTFOUND);
  assert_int_equal(fx_mapping_add(f, 999, 0, 4 * K, o, 0, RW), MB_E_NOTFOUND);
  assert_int_equal(fx_mapping_remove(f, 999, 0, 4 * K), MB_E_NOTFOUND);
  /* mapping add */
  assert_int_equal(fx_mapping_add(f, r, 0, 4 * K, NULL, 0, RW), MB_E_INVALID);
  assert_int_equal(fx_mapping_add(f, r, 1, 4 * K, o, 0, RW), MB_E_INVALID);
  assert_int_equal(fx_mapping_add(f, r, 0, 0, o, 0, RW), MB_E_INVALID);
  assert_int_equal(fx_mapping_add(f, r, 0, 4097, o, 0, RW), MB_E_INVALID);
  assert_int_equal(fx_mapping_add(f, r, 60 * K, 8 * K, o, 0, RW), MB_E_INVALID);  /* past the region */
  assert_int_equal(fx_mapping_add(f, r, UINT64_MAX - 4095, 8 * K, o, 0, RW), MB_E_INVALID);
  assert_int_equal(fx_mapping_add(f, r, 0, 4 * K, o, 1, RW), MB_E_INVALID);
  assert_int_equal(fx_mapping_add(f, r, 0, 8 * K, o, 60 * K, RW), MB_E_INVALID); /* past the object */
  assert_int_equal(fx_mapping_add(f, r, 0, 64 * K, o, 0, RW), 0);
  assert_int_equal(fx_mapping_add(f, r, 60 * K, 4 * K, o, 0, RW), MB_E_OVERLAP);
  /* mapping remove */
  assert_int_equal(fx_mapping_remove(f, r, 0, 0), MB_E_INVALID);
  assert_int_equal(fx_mapping_remove(f, r, 4 * K, 1), MB_E_INVALID);
  assert_int_equal(fx_mapping_remove(f, r, 60 * K, 8 * K), MB_E_INVALID);
  assert_int_equal(fx_mapping_remove(f, r, UINT64_MAX - 4095, 8 * K), MB_E_INVALID);
  /* mapping replace: as add, minus overlap */
  assert_int_equal(fx_mapping_replace(f, r, 0, 4 * K, NULL, 0, RW), MB_E_INVALID);
  assert_int_equal(fx_mapping_replace(f, r, 1, 4 * K, o, 0, RW), MB_E_INVALID);
  assert_int_equal(fx_mapping_replace(f, r, 60 * K, 8 * K, o, 0, RW), MB_E_INVALID);
  assert_int_equal(fx_mapping_replace(f, 999, 0, 4 * K, o, 0, RW), MB_E_NOTFOUND);
  assert_int_equal(fx_mapping_replace(f, r, 0, 4 * K, o, 4 * K, RW), 0);
  /* partitions */
  assert_int_equal(fx_partition_add_addr(f, (mb_addr){0}), MB_E_INVALID);
  assert_int_equal(fx_partition_remove(f, 0), MB_E_NOTFOUND);
  /* ids are never reused */
  assert_int_equal(fx_region_remove(f, r), 0);
  assert_int_equal(fx_region_state(f, r), MB_E_NOTFOUND);
  assert_int_equal(fx_region_map(f, r, RW), MB_E_NOTFOUND);
  assert_int_equal(fx_mapping_add(f, r, 0, 4 * K, o, 0, RW), MB_E_NOTFOUND);
  uint32_t r2 = add(f, "r2", 1 * G - 64 * K, 64 * K, 5);
  assert_true(r2 > r);
  /* unmapping an unmapped region and removing it: fine */
  assert_int_equal(fx_region_unmap(f, r2), 0);
  assert_int_equal(fx_region_remove(f, r2), 0);
  /* a message of another protocol */
  pm_map_msg *stray = pm_map_new();
  assert_int_equal(fx_status(f, &stray->hdr), MB_E_UNSUPPORTED);
  fx_expect_log(f, ""); /* no failed request sent anything */
  fx_no_violations(f);
  fx_free(f);
}

/* ---- rollback ------------------------------------------------------------------------------ */

typedef struct rb_case {
  const char *name;
  int overlap;
  int npm;
  void (*setup)(fx *f, uint32_t *ids);
  int (*op)(fx *f, const uint32_t *ids);
} rb_case;

static mb_object *obj(fx *f, int i) { return f->obj[i]; }

static void setup_nested(fx *f, uint32_t *ids) {
  fx_object(f, "ram", 1 * M);
  fx_object(f, "bios", 64 * K);
  ids[0] = add(f, "ram", 0, 1 * M, 10);
  assert_int_equal(fx_mapping_add(f, ids[0], 0, 512 * K, obj(f, 0), 0, RW), 0);
  assert_int_equal(fx_mapping_add(f, ids[0], 768 * K, 256 * K, obj(f, 0), 768 * K, RO), 0);
  assert_int_equal(fx_region_map(f, ids[0], RW), 0);
  ids[1] = add(f, "bios", 0xf0000, 64 * K, 1);
  assert_int_equal(fx_mapping_add(f, ids[1], 0, 32 * K, obj(f, 1), 0, RO), 0);
  assert_int_equal(fx_mapping_add(f, ids[1], 48 * K, 16 * K, obj(f, 1), 48 * K, RW), 0);
  assert_int_equal(fx_region_map(f, ids[1], RO), 0);
  ids[2] = add(f, "other", 2 * M, 64 * K, 0);
  assert_int_equal(fx_region_map(f, ids[2], RW), 0);
  for (int i = 0; i < f->npm; i++) assert_int_equal(fx_partition_add(f, i), 0);
}

static void setup_nested_revealed(fx *f, uint32_t *ids) {
  setup_nested(f, ids);
  assert_int_equal(fx_region_unmap(f, ids[0]), 0);
}

static void setup_any(fx *f, uint32_t *ids) {
  fx_object(f, "a", 64 * K);
  fx_object(f, "b", 64 * K);
  ids[0] = add(f, "base", 0, 64 * K, 1);
  assert_int_equal(fx_mapping_add(f, ids[0], 0, 8 * K, obj(f, 0), 0, RW), 0);
  assert_int_equal(fx_mapping_add(f, ids[0], 56 * K, 8 * K, obj(f, 0), 56 * K, RW), 0);
  assert_int_equal(fx_region_map(f, ids[0], RW), 0);
  ids[1] = add(f, "patch", 16 * K, 16 * K, 2);
  assert_int_equal(fx_mapping_add(f, ids[1], 0, 16 * K, obj(f, 1), 0, RW), 0);
  ids[2] = add(f, "right", 28 * K, 24 * K, 3);
  assert_int_equal(fx_mapping_add(f, ids[2], 4 * K, 8 * K, obj(f, 1), 16 * K, RW), 0);
  assert_int_equal(fx_region_map(f, ids[2], RW), 0);
  for (int i = 0; i < f->npm; i++) assert_int_equal(fx_partition_add(f, i), 0);
}

static int op_unmap_ram(fx *f, const uint32_t *ids) { return fx_region_unmap(f, ids[0]); }
static int op_map_ram(fx *f, const uint32_t *ids) { return fx_region_map(f, ids[0], RW); }
static int op_remove_ram(fx *f, const uint32_t *ids) { return fx_region_remove(f, ids[0]); }
static int op_ram_ro(fx *f, const uint32_t *ids) { return fx_region_map(f, ids[0], RO); }
static int op_map_patch(fx *f, const uint32_t *ids) { return fx_region_map(f, ids[1], RW); }
static int op_unmap_right(fx *f, const uint32_t *ids) { return fx_region_unmap(f, ids[2]); }
static int op_base_ro(fx *f, const uint32_t *ids) { return fx_region_map(f, ids[0], RO); }
static int op_add_mapping(fx *f, const uint32_t *ids) {
  return fx_mapping_add(f, ids[0], 8 * K, 48 * K, obj(f, 1), 0, RW); /* visible in two pieces */
}
static int op_add_mapping_ram(fx *f, const uint32_t *ids) {
  return fx_mapping_add(f, ids[0], 512 * K, 128 * K, obj(f, 0), 0, RW);
}
static int op_remove_mappings(fx *f, const uint32_t *ids) {
  return fx_mapping_remove(f, ids[0], 4 * K, 56 * K); /* straddles both, visible in two pieces */
}
static int op_remove_mappings_ram(fx *f, const uint32_t *ids) {
  return fx_mapping_remove(f, ids[0], 256 * K, 768 * K);
}
static int op_partition_add(fx *f, const uint32_t *ids) {
  (void)ids;
  return fx_partition_add(f, f->npm - 1);
}

static void setup_any_late(fx *f, uint32_t *ids) {
  int n = f->npm;
  f->npm = n - 1; /* the last partition is the one added by the operation */
  setup_any(f, ids);
  assert_int_equal(fx_region_map(f, ids[1], RO), 0);
  f->npm = n;
}

static const rb_case rb_cases[] = {
    {"unmap reveals", MB_OVERLAP_NESTED, 2, setup_nested, op_unmap_ram},
    {"remove reveals", MB_OVERLAP_NESTED, 2, setup_nested, op_remove_ram},
    {"map hides", MB_OVERLAP_NESTED, 2, setup_nested_revealed, op_map_ram},
    {"access change", MB_OVERLAP_NESTED, 2, setup_nested, op_ram_ro},
    {"mapping add", MB_OVERLAP_NESTED, 1, setup_nested, op_add_mapping_ram},
    {"mapping remove", MB_OVERLAP_NESTED, 1, setup_nested, op_remove_mappings_ram},
    {"partial map", MB_OVERLAP_ANY, 2, setup_any, op_map_patch},
    {"partial unmap", MB_OVERLAP_ANY, 2, setup_any, op_unmap_right},
    {"partial access", MB_OVERLAP_ANY, 2, setup_any, op_base_ro},
    {"partial mapping add", MB_OVERLAP_ANY, 1, setup_any, op_add_mapping},
    {"partial mapping remove", MB_OVERLAP_ANY, 1, setup_any, op_remove_mappings},
    {"partition add", MB_OVERLAP_ANY, 2, setup_any_late, op_partition_add},
};

/* For each case and each n, makes the n-th nested call fail, then checks that the request
 * answered that error and that nothing changed: the consumers' states and every region's
 * state. The loop ends at the first n past the operation's last call. */
static void test_rollback(void **unused) {
  (void)unused;
  for (size_t c = 0; c < sizeof rb_cases / sizeof rb_cases[0]; c++) {
    const rb_case *rc = &rb_cases[c];
    int total_calls = -1;
    for (long n = 0;; n++) {
      fx *f = fx_new(rc->overlap, 64 * G, rc->npm, false);
      uint32_t ids[3];
      rc->setup(f, ids);
      free(fx_take_log(f));
      fx_list mm0 = fx_snapshot(f, &f->mm), pm0[FX_MAXP];
      fx_normalize(&mm0);
      for (int i = 0; i < f->npm; i++) pm0[i] = fx_snapshot(f, &f->pm[i]);
      int st0[3];
      for (int i = 0; i < 3; i++) st0[i] = fx_region_state(f, ids[i]);
      size_t before = f->nrec;
      fx_fail_in(f, n, -ENOMEM);
      int status = rc->op(f, ids);
      fx_fail_off(f);
      if (f->failed == 0) {
        /* past the last call: the operation succeeded and must have made exactly n calls */
        if (status != 0) fail_msg("case '%s': status %d", rc->name, status);
        total_calls = (int)(f->nrec - before);
        assert_int_equal(total_calls, n);
        fx_no_violations(f);
        free(mm0.v);
        for (int i = 0; i < f->npm; i++) free(pm0[i].v);
        fx_free(f);
        break;
      }
      if (status != -ENOMEM) fail_msg("case '%s', call %ld: status %d", rc->name, n, status);
      fx_list mm1 = fx_snapshot(f, &f->mm);
      fx_normalize(&mm1);
      if (!fx_list_equal(&mm0, &mm1)) fail_msg("case '%s', call %ld: mapping manager changed", rc->name, n);
      for (int i = 0; i < f->npm; i++) {
        fx_list p1 = fx_snapshot(f, &f->pm[i]);
        if (!fx_list_equal(&pm0[i], &p1)) fail_msg("case '%s', call %ld: partition %d changed", rc->name, n, i);
        free(p1.v);
      }
      for (int i = 0; i < 3; i++) assert_int_equal(fx_region_state(f, ids[i]), st0[i]);
      fx_no_violations(f);
      /* and the same operation succeeds afterwards */
      assert_int_equal(rc->op(f, ids), 0);
      fx_no_violations(f);
      free(mm1.v);
      free(mm0.v);
      for (int i = 0; i < f->npm; i++) free(pm0[i].v);
      fx_free(f);
    }
    assert_true(total_calls > 0);
  }
}

/* A failure with nothing done yet: the first partition's unmap. The manager answers at once
 * and sends nothing more. */
static void test_rollback_first_call(void **unused) {
  (void)unused;
  fx *f = nested(1);
  uint32_t r = add(f, "r", 0, 64 * K, 0);
  assert_int_equal(fx_partition_add(f, 0), 0);
  assert_int_equal(fx_region_map(f, r, RW), 0);
  free(fx_take_log(f));
  fx_fail_in(f, 0, MB_E_FAULT);
  assert_int_equal(fx_region_unmap(f, r), MB_E_FAULT);
  fx_expect_log(f, "pm0 unmap 0x0+0x10000");
  assert_int_equal(fx_region_state(f, r), MB_REGION_ACTIVE);
  /* a failing MM_MAP of a mapping add: the mapping is not added */
  mb_object *o = fx_object(f, "o", 64 * K);
  fx_fail_in(f, 0, -ENOMEM);
  assert_int_equal(fx_mapping_add(f, r, 0, 64 * K, o, 0, RW), -ENOMEM);
  fx_expect_log(f, "mm map 0x0+0x10000:rw=o@0x0");
  assert_int_equal(fx_mapping_add(f, r, 0, 64 * K, o, 0, RW), 0); /* no overlap with a ghost */
  fx_expect_log(f, "mm map 0x0+0x10000:rw=o@0x0");
  /* the failing step's calls that succeeded are undone: MM_MAP ok, PM_MAP fails */
  assert_int_equal(fx_region_unmap(f, r), 0);
  free(fx_take_log(f));
  fx_fail_in(f, 1, -ENOMEM);
  assert_int_equal(fx_region_map(f, r, RO), -ENOMEM);
  fx_expect_log(f, "mm map 0x0+0x10000:ro=o@0x0; pm0 map 0x0+0x10000:ro; mm unmap 0x0+0x10000");
  assert_int_equal(fx_region_state(f, r), MB_REGION_UNMAPPED);
  assert_int_equal(f->mm.state.n, 0);
  assert_int_equal(f->pm[0].state.n, 0);
  fx_no_violations(f);
  fx_free(f);
}

/* ---- destruction with an operation in flight ---------------------------------------------- */

typedef struct pending {
  bool done;
  int status;
} pending;

static void on_pending(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  pending *p = ctx;
  p->status = reply->status;
  p->done = true;
}

/* The manager goes while it waits for a consumer: the request is answered MB_EGONE, the late
 * reply is dropped, and nothing leaks (the sanitizer build checks). */
static void test_destroy_in_flight(void **unused) {
  (void)unused;
  for (int which = 0; which < 4; which++) {
    fx *f = nested(1);
    mb_object *o = fx_object(f, "o", 64 * K);
    uint32_t r = add_backed(f, "r", 0, 64 * K, 0, o, RW);
    assert_int_equal(fx_partition_add(f, 0), 0);
    if (which >= 2) assert_int_equal(fx_region_map(f, r, RW), 0);
    f->hold_next = true;
    pending p = {0};
    mb_msg *m;
    if (which == 0) { /* held: the MM_MAP of a region map */
      rm_region_map_msg *rm = rm_region_map_new();
      rm->id = r;
      rm->writable = true;
      m = &rm->hdr;
    } else if (which == 1) { /* held: the PM_MAP of a late partition add */
      f->hold_next = false;
      assert_int_equal(fx_partition_remove(f, 0), 0);
      assert_int_equal(fx_region_map(f, r, RW), 0);
      f->hold_next = true;
      rm_partition_add_msg *pa = rm_partition_add_new();
      pa->partition = f->pm_addr[0];
      m = &pa->hdr;
    } else if (which == 2) { /* held: the PM_UNMAP of a region remove */
      rm_region_remove_msg *rr = rm_region_remove_new();
      rr->id = r;
      m = &rr->hdr;
    } else { /* held: the MM_REPLACE of a chunk's replace */
      rm_mapping_replace_msg *mr = rm_mapping_replace_new();
      mr->id = r, mr->offset = 0, mr->size = 64 * K, mr->obj = o, mr->writable = true;
      m = &mr->hdr;
    }
    mb_call(mb_loop_actor(f->home.loop), f->rm_addr, m, on_pending, &p);
    while (f->held == NULL) uv_run(&f->home.uv, UV_RUN_ONCE);
    assert_false(p.done);
    mb_actor_destroy(f->rm);
    tu_home_run_until(&f->home, &p.done);
    assert_int_equal(p.status, MB_EGONE);
    mb_reply(f->held, 0); /* to a manager that is gone: dropped */
    uv_run(&f->home.uv, UV_RUN_NOWAIT);
    f->rm = mb_region_manager_create(f->home.loop, &(mb_rm_config){.max_addr = 64 * G, .overlap = MB_OVERLAP_NESTED, .mapping_manager = f->mm_addr, .gpa_map = f->gpa_map});
    assert_non_null(f->rm); /* fx_free destroys this one */
    fx_no_violations(f);
    fx_free(f);
  }
}

/* A DAX chunk's replace: of exactly one mapping, all of it visible (the region manager's short
 * path). It makes the one call a planned replace makes and changes the mapping in place;
 * refused, it changes nothing; one over a partly hidden mapping, or over more than one
 * mapping, is planned: a call per visible piece, the gaps torn down. */
static void test_chunk_replace(void **unused) {
  (void)unused;
  fx *f = any(1);
  mb_object *a = fx_object(f, "a", 64 * K), *b = fx_object(f, "b", 64 * K);
  uint32_t r = add(f, "r", 0, 64 * K, 1);
  assert_int_equal(fx_mapping_add(f, r, 16 * K, 16 * K, a, 0, RW), 0);
  assert_int_equal(fx_partition_add(f, 0), 0);
  assert_int_equal(fx_region_map(f, r, RW), 0);
  free(fx_take_log(f));
  assert_int_equal(fx_mapping_replace(f, r, 16 * K, 16 * K, b, 4 * K, RW), 0);
  fx_expect_log(f, "mm replace 0x4000+0x4000 0x4000+0x4000:rw=b@0x1000");
  fx_fail_in(f, 0, MB_E_FAULT);
  assert_int_equal(fx_mapping_replace(f, r, 16 * K, 16 * K, a, 0, RW), MB_E_FAULT);
  fx_expect_log(f, "mm replace 0x4000+0x4000 0x4000+0x4000:rw=a@0x0");
  /* an access change shows the region's mappings: still b's */
  assert_int_equal(fx_region_map(f, r, RO), 0);
  fx_expect_log(f, "pm0 access 0x0+0x10000:ro; mm replace 0x0+0x10000 0x4000+0x4000:ro=b@0x1000");
  /* in a read-only region the chunk is read-only for the mappers */
  assert_int_equal(fx_mapping_replace(f, r, 16 * K, 16 * K, a, 0, RW), 0);
  fx_expect_log(f, "mm replace 0x4000+0x4000 0x4000+0x4000:ro=a@0x0");
  assert_int_equal(fx_region_map(f, r, RW), 0);
  free(fx_take_log(f));
  /* partly hidden by a region above it: a call per visible piece */
  uint32_t top = add(f, "top", 20 * K, 4 * K, 2);
  assert_int_equal(fx_region_map(f, top, RW), 0);
  free(fx_take_log(f));
  assert_int_equal(fx_mapping_replace(f, r, 16 * K, 16 * K, b, 0, RW), 0);
  fx_expect_log(f, "mm replace 0x4000+0x1000 0x4000+0x1000:rw=b@0x0; "
                   "mm replace 0x6000+0x2000 0x6000+0x2000:rw=b@0x2000");
  assert_int_equal(fx_region_unmap(f, top), 0);
  free(fx_take_log(f));
  /* more than the mapping: the rest of the range gains the new backing too */
  assert_int_equal(fx_mapping_replace(f, r, 16 * K, 32 * K, a, 0, RW), 0);
  fx_expect_log(f, "mm replace 0x4000+0x8000 0x4000+0x8000:rw=a@0x0");
  assert_int_equal(fx_region_map(f, r, RO), 0);
  fx_expect_log(f, "pm0 access 0x0+0x10000:ro; mm replace 0x0+0x10000 0x4000+0x8000:ro=a@0x0");
  fx_no_violations(f);
  fx_free(f);
}

static void test_create_config(void **unused) {
  (void)unused;
  fx *f = nested(0);
  mb_rm_config bad = {.max_addr = 64 * G, .overlap = 7, .mapping_manager = f->mm_addr};
  assert_null(mb_region_manager_create(f->home.loop, &bad));
  assert_null(mb_region_manager_create(f->home.loop, NULL));
  assert_null(mb_region_manager_create(NULL, &bad));
  fx_free(f);
}

/* ---- many mappings in one region --------------------------------------------------------- */

static void test_many_mappings(void **unused) {
  (void)unused;
  enum { N = 5000 };
  fx *f = nested(1);
  mb_object *o = fx_object(f, "o", (uint64_t)N * 4 * K);
  uint32_t r = add(f, "r", 0, (uint64_t)N * 8 * K, 0);
  assert_int_equal(fx_region_map(f, r, RW), 0);
  assert_int_equal(fx_partition_add(f, 0), 0);
  free(fx_take_log(f));
  size_t n0 = f->nrec;
  for (uint64_t i = 0; i < N; i++) /* every other page */
    assert_int_equal(fx_mapping_add(f, r, i * 8 * K, 4 * K, o, i * 4 * K, i % 2 ? RO : RW), 0);
  assert_int_equal(f->nrec - n0, N); /* one MM_MAP each, nothing else */
  assert_int_equal(f->mm.state.n, N);
  free(fx_take_log(f));
  assert_int_equal(fx_mapping_add(f, r, 2500 * 8 * K, 8 * K, o, 0, RW), MB_E_OVERLAP);
  assert_int_equal(fx_mapping_add(f, r, 2500 * 8 * K + 4 * K, 4 * K, o, 0, RW), 0);
  fx_expect_log(f, "mm map 0x1389000+0x1000:rw=o@0x0");
  /* remove single pages, then a range with many */
  n0 = f->nrec;
  for (uint64_t i = 0; i < N; i += 2) assert_int_equal(fx_mapping_remove(f, r, i * 8 * K, 4 * K), 0);
  assert_int_equal(f->nrec - n0, N / 2);
  assert_int_equal(f->mm.state.n, N / 2 + 1);
  free(fx_take_log(f));
  assert_int_equal(fx_mapping_remove(f, r, 0, 1000 * 8 * K), 0);
  assert_int_equal(f->mm.state.n, N / 2 + 1 - 500);
  free(fx_take_log(f));
  /* the rest comes back in one MM_MAP after an unmap and a map */
  assert_int_equal(fx_region_unmap(f, r), 0);
  assert_int_equal(f->mm.state.n, 0);
  n0 = f->nrec;
  assert_int_equal(fx_region_map(f, r, RW), 0);
  assert_int_equal(f->nrec - n0, 2); /* mm map, pm0 map */
  assert_int_equal(f->mm.state.n, N / 2 + 1 - 500);
  for (size_t i = 0; i < f->mm.state.n; i++) {
    fx_ent *e = &f->mm.state.v[i];
    if (e->gpa == 2500 * 8 * K + 4 * K) continue;
    assert_int_equal(e->obj_off, e->gpa / 2);
    assert_int_equal(e->writable, (e->gpa / (8 * K)) % 2 == 0);
  }
  free(fx_take_log(f));
  fx_no_violations(f);
  fx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_example),
      cmocka_unit_test(test_rom_over_ram),
      cmocka_unit_test(test_access_change),
      cmocka_unit_test(test_access_change_hidden),
      cmocka_unit_test(test_partial_any),
      cmocka_unit_test(test_ties),
      cmocka_unit_test(test_holes),
      cmocka_unit_test(test_splits),
      cmocka_unit_test(test_mappings_partial),
      cmocka_unit_test(test_late_partition),
      cmocka_unit_test(test_gone_partition),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_rollback),
      cmocka_unit_test(test_rollback_first_call),
      cmocka_unit_test(test_destroy_in_flight),
      cmocka_unit_test(test_chunk_replace),
      cmocka_unit_test(test_create_config),
      cmocka_unit_test(test_many_mappings),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
