/* test_ram_visibility.c: RAM visibility control of the legacy windows (mb_ram.h) over a ROM
 * device region, as a chipset's PAM registers switch them: what a VA mapper and a soft
 * partition see for RAM read-write, read-only (writes refused) and not RAM (the ROM below, or
 * nothing), the bytes kept across switches, wrong windows refused, and a switch of thirteen
 * windows in one call made to fail at each mmap and mprotect in turn (mem/fault_inject.h):
 * after each failure every window is as before, for the manager and for every consumer.
 *
 * Linked with the library compiled with the fault-injection seam (tests/fault's txn_fi_dep). */
#include "fault_inject.h"
#include "ram_util.h"

#define MAX_ADDR (64 * MiB)
#define ROM_BASE 0xc0000ull
#define ROM_SIZE (256 * KiB)
#define SHADOW 0x5a
#define ROM_BYTE 0xea

typedef struct vis_world {
  ru_world w;
  mb_loop *part_loop;
  mb_partition *part;
  mb_object *rom;
  mb_region_id rom_id;
  mb_ram *ram;
} vis_world;

static vis_world V;

static int setup(void **state) {
  (void)state;
  ru_init_overlap(&V.w, MAX_ADDR, MB_OVERLAP_ANY); /* one ROM under many windows */
  V.part_loop = tu_start("ram-part");
  assert_int_equal(mb_partition_add_sync(V.w.mm, &mb_partition_soft, V.part_loop, &V.part), 0);
  mb_ram_range r[] = {{0, 16 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 1};
  mb_ram_config cfg = {&q, 1, true};
  mb_ram_error e;
  assert_int_equal(mb_ram_build_sync(V.w.mm, &cfg, &V.ram, &e), 0);
  /* the BIOS and option ROMs below the PAM windows: a device region, read-only */
  V.rom = tu_memfd_byte("rom", ROM_SIZE, ROM_BYTE);
  mb_region_params rp = {"rom", ROM_BASE, ROM_SIZE, MB_DEVICE_PRIORITY, true, 0};
  assert_int_equal(mb_region_add_sync(V.w.mm, &rp, &V.rom_id), 0);
  mb_mapping_params mp = {V.rom_id, 0, ROM_SIZE, V.rom, 0, false};
  assert_int_equal(mb_mapping_add_sync(V.w.mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(V.w.mm, V.rom_id, false), 0);
  uint8_t shadow[ROM_SIZE];
  memset(shadow, SHADOW, sizeof shadow);
  assert_int_equal(mb_mapper_write(V.w.view, ROM_BASE, shadow, sizeof shadow), 0);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  assert_int_equal(mb_ram_destroy_sync(V.ram), 0);
  assert_int_equal(ru_region_count(V.w.mm), 1); /* the ROM, the VMM's own */
  ru_fini(&V.w);
  tu_stop(V.part_loop);
  mb_object_unref(V.rom);
  return 0;
}

static int set(uint64_t gpa, uint64_t size, mb_ram_visibility vis, mb_ram_error *e) {
  mb_ram_window w = {gpa, size, vis};
  return mb_ram_set_visibility_sync(V.ram, &w, 1, e);
}

static uint8_t bytes8(uint64_t v) { return (uint8_t)v; }

/* What the mapper and the partition read at gpa (status and byte), and whether each may
 * write there. */
typedef struct seen {
  int map_rd, part_rd, map_wr, part_wr;
  uint8_t map_byte, part_byte;
} seen;

static seen look(uint64_t gpa) {
  seen s = {0};
  uint64_t v = 0;
  s.map_rd = mb_mapper_read(V.w.view, gpa, &v, 8);
  s.map_byte = bytes8(v);
  v = 0;
  s.part_rd = mb_partition_access_sync(V.part, gpa, &v, 8, false);
  s.part_byte = bytes8(v);
  /* writes of what is there already: they change no byte */
  uint64_t same = s.map_rd == 0 ? 0x0101010101010101ull * s.map_byte : 0;
  s.map_wr = mb_mapper_write(V.w.view, gpa, &same, 8);
  s.part_wr = mb_partition_access_sync(V.part, gpa, &same, 8, true);
  return s;
}

static void test_rw_ro_none(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_error e;
  const uint64_t pam = 0xc4000, pam_size = 0x4000;
  seen s = look(pam); /* after the build: RAM read-write, the shadow's bytes */
  assert_int_equal(s.map_rd, 0);
  assert_int_equal(s.map_byte, SHADOW);
  assert_int_equal(s.part_rd, 0);
  assert_int_equal(s.part_byte, SHADOW);
  assert_int_equal(s.map_wr, 0);
  assert_int_equal(s.part_wr, 0);
  assert_int_equal(set(pam, pam_size, MB_RAM_RO, &e), 0);
  assert_int_equal(mb_ram_visibility_of(V.ram, pam, pam_size), MB_RAM_RO);
  s = look(pam); /* read-only RAM: reads see the shadow, writes are refused */
  assert_int_equal(s.map_rd, 0);
  assert_int_equal(s.map_byte, SHADOW);
  assert_int_equal(s.part_byte, SHADOW);
  assert_int_equal(s.map_wr, MB_E_READONLY);
  assert_int_equal(s.part_wr, MB_E_MMIO); /* the guest's write exits */
  assert_int_equal(set(pam, pam_size, MB_RAM_NONE, &e), 0);
  s = look(pam); /* not RAM: the ROM below shows, read-only */
  assert_int_equal(s.map_rd, 0);
  assert_int_equal(s.map_byte, ROM_BYTE);
  assert_int_equal(s.part_rd, 0);
  assert_int_equal(s.part_byte, ROM_BYTE);
  assert_int_equal(s.map_wr, MB_E_READONLY);
  assert_int_equal(s.part_wr, MB_E_MMIO);
  s = look(pam + pam_size); /* the next window is still RAM */
  assert_int_equal(s.map_byte, SHADOW);
  assert_int_equal(s.part_wr, 0);
  assert_int_equal(set(pam, pam_size, MB_RAM_RW, &e), 0);
  s = look(pam); /* RAM again, with the bytes it had */
  assert_int_equal(s.map_byte, SHADOW);
  assert_int_equal(s.part_byte, SHADOW);
  assert_int_equal(s.map_wr, 0);
  assert_int_equal(s.part_wr, 0);
  /* the VGA window over nothing: not RAM is a hole */
  assert_int_equal(set(0xa0000, 0x20000, MB_RAM_NONE, &e), 0);
  s = look(0xb8000);
  assert_int_equal(s.map_rd, MB_E_UNMAPPED);
  assert_int_equal(s.part_rd, MB_E_MMIO);
  assert_int_equal(set(0xa0000, 0x20000, MB_RAM_RW, &e), 0);
  assert_int_equal(look(0xb8000).part_wr, 0);
}

static void test_bad_windows(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_error e;
  assert_int_equal(set(0xc4000, 0x8000, MB_RAM_RO, &e), MB_E_INVALID);
  ru_expect_error(&e, MB_E_INVALID, MB_RAM_BAD_WINDOW, "[0xc4000, 0xcc000)", "legacy window");
  assert_int_equal(set(0xc5000, 0x4000, MB_RAM_RO, &e), MB_E_INVALID);
  ru_expect_error(&e, MB_E_INVALID, MB_RAM_BAD_WINDOW, "[0xc5000, 0xc9000)", NULL);
  assert_int_equal(set(0xc4000, 0x4000, (mb_ram_visibility)7, &e), MB_E_INVALID);
  ru_expect_error(&e, MB_E_INVALID, MB_RAM_BAD_WINDOW, "unknown visibility", NULL);
  mb_ram_window twice[] = {{0xc4000, 0x4000, MB_RAM_RO}, {0xc8000, 0x4000, MB_RAM_RO},
                           {0xc4000, 0x4000, MB_RAM_NONE}};
  assert_int_equal(mb_ram_set_visibility_sync(V.ram, twice, 3, &e), MB_E_INVALID);
  ru_expect_error(&e, MB_E_INVALID, MB_RAM_BAD_WINDOW, "listed twice", NULL);
  /* nothing changed by any of them */
  assert_int_equal(mb_ram_visibility_of(V.ram, 0xc4000, 0x4000), MB_RAM_RW);
  assert_int_equal(mb_ram_visibility_of(V.ram, 0xc8000, 0x4000), MB_RAM_RW);
  assert_int_equal(look(0xc8000).part_wr, 0);
  /* a range that is no region of the RAM has no visibility */
  assert_int_equal(mb_ram_visibility_of(V.ram, 0xc5000, 0x4000), -1);
}

/* ---- thirteen windows in one call, each mmap and mprotect made to fail in turn ------------- */

/* The chipset's mix: the option ROM windows read-only, the BIOS windows not RAM. */
static size_t pam_mix(mb_ram_window *w) {
  size_t n = 0;
  for (uint64_t g = 0xc0000; g < 0xe0000; g += 0x4000) w[n++] = (mb_ram_window){g, 0x4000, MB_RAM_RO};
  for (uint64_t g = 0xe0000; g < 0xf0000; g += 0x4000) w[n++] = (mb_ram_window){g, 0x4000, MB_RAM_NONE};
  w[n++] = (mb_ram_window){0xf0000, 0x10000, MB_RAM_NONE};
  return n;
}

/* Every window RAM read-write, as the manager, the mapper and the partition see it. */
static void expect_all_rw(const mb_ram_window *w, size_t n) {
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(mb_ram_visibility_of(V.ram, w[i].gpa, w[i].size), MB_RAM_RW);
    mb_region_id id = 0;
    for (size_t k = 0; k < mb_ram_region_count(V.ram); k++) {
      mb_ram_range g;
      mb_region_id rid;
      mb_ram_region(V.ram, k, &g, &rid);
      if (g.gpa == w[i].gpa) id = rid;
    }
    int st = -1;
    assert_int_equal(mb_region_state_sync(V.w.mm, id, &st), 0);
    assert_int_equal(st, MB_REGION_ACTIVE);
    seen s = look(w[i].gpa);
    assert_int_equal(s.map_byte, SHADOW);
    assert_int_equal(s.part_byte, SHADOW);
    assert_int_equal(s.map_wr, 0);
    assert_int_equal(s.part_wr, 0);
  }
}

static void fail_each(mb_fi_kind kind, const mb_ram_window *w, size_t n, const mb_ram_window *back) {
  int failures = 0;
  for (uint64_t nth = 1; nth < 200; nth++) {
    mb_ram_error e;
    mb_fi_reset();
    assert_int_equal(mb_fi_arm(kind, nth, ENOMEM), 0);
    int rc = mb_ram_set_visibility_sync(V.ram, w, n, &e);
    uint64_t injected = mb_fi_injected(kind);
    mb_fi_reset();
    if (rc == 0) {
      assert_int_equal(injected, 0);
      assert_int_equal(mb_ram_set_visibility_sync(V.ram, back, n, &e), 0);
      break;
    }
    failures++;
    assert_int_equal(injected, 1);
    assert_int_equal(rc, -ENOMEM);
    assert_int_equal(e.reason, MB_RAM_REGION);
    expect_all_rw(w, n);
  }
  print_message("%s: %d switches failed, each left every window as it was\n",
                mb_fi_kind_name(kind), failures);
  assert_true(failures > 0);
}

static void test_atomic_switch(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  if (!mb_fi_enabled()) skip();
  mb_ram_window w[16], back[16];
  size_t n = pam_mix(w);
  assert_int_equal(n, 13);
  for (size_t i = 0; i < n; i++) back[i] = (mb_ram_window){w[i].gpa, w[i].size, MB_RAM_RW};
  expect_all_rw(w, n);
  fail_each(MB_FI_MMAP, w, n, back);
  fail_each(MB_FI_MPROTECT, w, n, back);
  /* and the switch that succeeds moves all thirteen */
  mb_ram_error e;
  assert_int_equal(mb_ram_set_visibility_sync(V.ram, w, n, &e), 0);
  assert_int_equal(look(0xc0000).part_wr, MB_E_MMIO);
  assert_int_equal(look(0xdc000).map_wr, MB_E_READONLY);
  assert_int_equal(look(0xe0000).map_byte, ROM_BYTE);
  assert_int_equal(look(0xf8000).part_byte, ROM_BYTE);
  assert_int_equal(mb_ram_set_visibility_sync(V.ram, back, n, &e), 0);
  expect_all_rw(w, n);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rw_ro_none),
      cmocka_unit_test(test_bad_windows),
      cmocka_unit_test(test_atomic_switch),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
