/* test_ram_hugetlb.c: RAM on hugetlb pages (mb_ram.h, hugepage_size). The test reserves a
 * few 2 MiB pages for itself in /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages (the
 * per-size form of /proc/sys/vm/nr_hugepages; CI runs as root) and puts the old value back
 * in its teardown and at exit, whatever happened. It builds RAM on them and checks the bytes
 * through two mappers and that the pages were taken at build time; asks for more than the
 * pool and expects the build to fail then, with the sizes in the message and nothing left;
 * and checks that mappings of a hugetlb object must be whole huge pages. It skips, saying
 * why, where it cannot reserve pages (not root, no hugetlb support, no memory for them). */
#include <errno.h>
#include <unistd.h>

#include "ram_util.h"

#define NR "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
#define FREE "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"
#define WANT 4

static long old_nr = -1;
static const char *skip_reason;
static ru_world W;

static long read_long(const char *path) {
  char buf[64];
  return ru_read_file(path, buf, sizeof buf) ? strtol(buf, NULL, 10) : -1;
}

static void give_back(void) {
  if (old_nr < 0) return;
  char buf[32];
  snprintf(buf, sizeof buf, "%ld\n", old_nr);
  if (!ru_write_file(NR, buf)) fprintf(stderr, "test-ram-hugetlb: could not restore %s\n", NR);
  old_nr = -1;
}

static int setup(void **state) {
  (void)state;
  if (geteuid() != 0) {
    skip_reason = "not root: cannot reserve huge pages in " NR;
    return 0;
  }
  long nr = read_long(NR);
  if (nr < 0) {
    skip_reason = "no 2 MiB hugetlb support on this host (" NR " is missing)";
    return 0;
  }
  char buf[32];
  snprintf(buf, sizeof buf, "%ld\n", nr + WANT);
  old_nr = nr;
  atexit(give_back);
  if (!ru_write_file(NR, buf) || read_long(FREE) < 2) {
    give_back();
    skip_reason = "the kernel would not reserve 2 huge pages of 2 MiB (memory too fragmented?)";
    return 0;
  }
  ru_init(&W, 64 * MiB);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (W.mm) ru_fini(&W);
  give_back();
  return 0;
}

#define SKIP_IF_CANNOT()                                                                        \
  do {                                                                                          \
    if (skip_reason) {                                                                          \
      print_message("skipped: %s\n", skip_reason);                                              \
      skip();                                                                                   \
    }                                                                                           \
  } while (0)

static void test_bytes(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  SKIP_IF_CANNOT();
  long free0 = read_long(FREE);
  mb_ram_range r[] = {{0, 2 * MiB}, {8 * MiB, 2 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 2, .hugepage_size = MB_HUGEPAGE_2M};
  mb_ram_config cfg = {&q, 1, false};
  mb_ram_error e;
  mb_ram *ram = NULL;
  int rc = mb_ram_build_sync(W.mm, &cfg, &ram, &e);
  if (rc) print_error("%s\n", e.message);
  assert_int_equal(rc, 0);
  assert_int_equal(read_long(FREE), free0 - 2); /* taken at build time, not at first touch */
  mb_mapper *other = NULL;
  assert_int_equal(mb_mapper_add_sync(W.mm, NULL, true, &other), 0);
  for (uint64_t gpa = 0; gpa < 10 * MiB; gpa += 256 * KiB) {
    if (gpa >= 2 * MiB && gpa < 8 * MiB) continue;
    uint64_t v = 0x4855474500000000ull | gpa, got = 0;
    assert_int_equal(mb_mapper_write(W.view, gpa, &v, 8), 0);
    assert_int_equal(mb_mapper_read(other, gpa, &got, 8), 0);
    assert_int_equal(got, v);
  }
  const char *keys[] = {"Hugetlb", "Private_Hugetlb", "Shared_Hugetlb"};
  uint8_t *base = mb_mapper_base(W.view);
  assert_true(ru_smaps_sum(base, base + 2 * MiB, keys, 3, NULL, 0) >= 2048);
  assert_int_equal(mb_mapper_remove_sync(other), 0);
  assert_int_equal(mb_ram_destroy_sync(ram), 0);
  assert_int_equal(read_long(FREE), free0); /* given back to the pool */
}

static void test_short_pool(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  SKIP_IF_CANNOT();
  long free0 = read_long(FREE);
  int fds = tu_fd_count();
  uint64_t pages = (uint64_t)free0 + 3;
  mb_ram_range r[] = {{0, pages * 2 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 1, .hugepage_size = MB_HUGEPAGE_2M};
  mb_ram_config cfg = {&q, 1, false};
  mb_ram_error e;
  mb_ram *ram = NULL;
  assert_int_equal(mb_ram_build_sync(W.mm, &cfg, &ram, &e), -ENOSPC);
  char want[96], size[32];
  snprintf(size, sizeof size, "%" PRIu64 " MiB", pages * 2);
  snprintf(want, sizeof want, "hugetlb backing of %s (%" PRIu64 " pages of 2 MiB)", size, pages);
  ru_expect_error(&e, -ENOSPC, MB_RAM_ALLOC, want, "request 0");
  print_message("the build said: %s\n", e.message);
  assert_int_equal(ru_region_count(W.mm), 0);
  assert_int_equal(tu_fd_count(), fds);
  assert_int_equal(read_long(FREE), free0);
}

/* Whole huge pages only: object offset and size (checked before anything changes). */
static void test_whole_pages(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  SKIP_IF_CANNOT();
  mb_object_options o = {.kind = MB_OBJECT_MEMFD, .size = 2 * MiB,
                         .hugetlb_page_size = MB_HUGEPAGE_2M};
  mb_object *obj = NULL;
  assert_int_equal(mb_object_create_opts(&o, &obj), 0);
  assert_int_equal(mb_object_page_size(obj), 2 * MiB);
  mb_region_params rp = {"r", 4 * MiB, 4 * MiB, 1, false, 0};
  mb_region_id id;
  assert_int_equal(mb_region_add_sync(W.mm, &rp, &id), 0);
  mb_mapping_params mp = {id, 0, MiB, obj, 0, true};
  assert_int_equal(mb_mapping_add_sync(W.mm, &mp), MB_E_INVALID);
  mp = (mb_mapping_params){id, 0, 2 * MiB, obj, 4096, true};
  assert_int_equal(mb_mapping_add_sync(W.mm, &mp), MB_E_INVALID);
  mp = (mb_mapping_params){id, 4096, 2 * MiB, obj, 0, true}; /* a guest address off a page */
  assert_int_equal(mb_mapping_add_sync(W.mm, &mp), MB_E_INVALID);
  mb_region_params up = {"u", 12 * MiB + 4096, 4 * MiB, 1, false, 0};
  mb_region_id uid;
  assert_int_equal(mb_region_add_sync(W.mm, &up, &uid), 0); /* a region itself off a page */
  mp = (mb_mapping_params){uid, 0, 2 * MiB, obj, 0, true};
  assert_int_equal(mb_mapping_add_sync(W.mm, &mp), MB_E_INVALID);
  assert_int_equal(mb_region_remove_sync(W.mm, uid), 0);
  mp = (mb_mapping_params){id, 2 * MiB, 2 * MiB, obj, 0, true};
  assert_int_equal(mb_mapping_add_sync(W.mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(W.mm, id, true), 0);
  uint64_t v = 0x77, got = 0;
  assert_int_equal(mb_mapper_write(W.view, 6 * MiB + 8, &v, 8), 0);
  assert_int_equal(mb_mapper_read(W.view, 6 * MiB + 8, &got, 8), 0);
  assert_int_equal(got, v);
  assert_int_equal(mb_region_remove_sync(W.mm, id), 0);
  mb_object_unref(obj);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bytes),
      cmocka_unit_test(test_short_pool),
      cmocka_unit_test(test_whole_pages),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
