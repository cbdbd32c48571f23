/* test_ram_thp.c: transparent huge pages for RAM (mb_ram.h, transparent_hugepages): 64 MiB
 * of RAM built with the hint and touched through the primary mapper shows huge pages in
 * /proc/self/smaps for the mapper's range (AnonHugePages, ShmemPmdMapped or FilePmdMapped).
 * A memfd is shmem: the hint needs /sys/kernel/mm/transparent_hugepage/shmem_enabled at
 * advise (or always, within_size); the test sets advise for itself where it is not (as root)
 * and puts the old value back in its teardown and at exit. It skips, saying why, where it
 * cannot (no THP in the kernel, not root, the per-size 2 MiB shmem control off). */
#include <unistd.h>

#include "ram_util.h"

#define THP_DIR "/sys/kernel/mm/transparent_hugepage/"
#define SHMEM THP_DIR "shmem_enabled"
#define SHMEM_2M THP_DIR "hugepages-2048kB/shmem_enabled"

static char old_mode[32];
static const char *skip_reason;
static ru_world W;

/* The bracketed word of a sysfs choice ("always [never] ..."), or "". */
static void current_choice(const char *path, char *out, size_t size) {
  char buf[256];
  out[0] = '\0';
  if (!ru_read_file(path, buf, sizeof buf)) return;
  char *a = strchr(buf, '['), *b = a ? strchr(a, ']') : NULL;
  if (b) snprintf(out, size, "%.*s", (int)(b - a - 1), a + 1);
}

static void put_back(void) {
  if (old_mode[0] && !ru_write_file(SHMEM, old_mode))
    fprintf(stderr, "test-ram-thp: could not restore %s to %s\n", SHMEM, old_mode);
  old_mode[0] = '\0';
}

static bool shmem_allows(const char *mode) {
  return !strcmp(mode, "advise") || !strcmp(mode, "always") || !strcmp(mode, "within_size") ||
         !strcmp(mode, "force");
}

static int setup(void **state) {
  (void)state;
  char mode[32], per_size[32];
  current_choice(SHMEM, mode, sizeof mode);
  current_choice(SHMEM_2M, per_size, sizeof per_size);
  if (!mode[0]) {
    skip_reason = "no shmem THP in this kernel (" SHMEM " is missing)";
  } else if (per_size[0] && strcmp(per_size, "inherit") && !shmem_allows(per_size)) {
    skip_reason = "2 MiB shmem THP is off (" SHMEM_2M ")";
  } else if (!shmem_allows(mode)) {
    if (geteuid() != 0) {
      skip_reason = "shmem THP is off (" SHMEM ") and the test is not root to set advise";
    } else {
      snprintf(old_mode, sizeof old_mode, "%s", mode);
      atexit(put_back);
      if (!ru_write_file(SHMEM, "advise")) {
        old_mode[0] = '\0';
        skip_reason = "could not set " SHMEM " to advise";
      }
    }
  }
  if (!skip_reason) ru_init(&W, 64 * GiB);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (W.mm) ru_fini(&W);
  put_back();
  return 0;
}

static uint64_t huge_kb(uint8_t *lo, uint64_t size) {
  const char *keys[] = {"AnonHugePages", "ShmemPmdMapped", "FilePmdMapped"};
  return ru_smaps_sum(lo, lo + size, keys, 3, NULL, 0);
}

static void touch(uint8_t *p, uint64_t size) {
  for (uint64_t off = 0; off < size; off += MB_PAGE_SIZE) ((volatile uint8_t *)p)[off] = 1;
}

static void test_thp_smaps(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  if (skip_reason) {
    print_message("skipped: %s\n", skip_reason);
    skip();
  }
  const uint64_t size = 64 * MiB;
  mb_ram_range r[] = {{0, size}}, plain[] = {{1 * GiB, size}};
  mb_ram_request q[] = {{.ranges = r, .count = 1, .transparent_hugepages = true},
                        {.ranges = plain, .count = 1}};
  mb_ram_config cfg = {q, 2, false};
  mb_ram_error e;
  mb_ram *ram = NULL;
  assert_int_equal(mb_ram_build_sync(W.mm, &cfg, &ram, &e), 0);
  uint8_t *base = mb_mapper_base(W.view);
  assert_int_equal((uintptr_t)base % (2 * MiB), 0); /* huge pages need the aligned base */
  touch(base, size);
  touch(base + 1 * GiB, size);
  uint64_t with = huge_kb(base, size), without = huge_kb(base + 1 * GiB, size);
  print_message("huge pages in the mapper's range: %" PRIu64 " kB with the hint, %" PRIu64
                " kB without\n", with, without);
  assert_true(with > 0);
  assert_int_equal(without, 0); /* advise: only what asked for them */
  assert_int_equal(mb_ram_destroy_sync(ram), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_thp_smaps)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
