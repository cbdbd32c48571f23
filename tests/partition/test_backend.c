/* test_backend.c: one table of cases for the partition backends (mb_partition.h), run against
 * the backend named on the command line: `soft` or `kvm`. Each case gets a fresh instance
 * over the same guest layout (below): data, MMIO versus fault, accesses crossing pieces,
 * bad ranges, the map's bookkeeping and slot recycling. Where the backend cannot run here
 * (kvm without /dev/kvm) the program says so and exits 77, which meson counts as skipped.
 *
 * Guest layout (K = KiB), max_addr = 4 GiB + 2 MiB, host VA = reservation base + gpa:
 *   piece   gpa                 partition   host VA behind it
 *   A       [0, 64K)            rw          object pages, rw
 *   B       [64K, 128K)         rw          [64K, 96K) rw; [96K, 100K) hole; [100K, 128K) ro
 *   C       [128K, 192K)        ro          object pages, rw
 *   -       [192K, 256K)        not mapped
 *   D       [256K, 320K)        rw          hole (nothing mapped in the VA)
 *   H       [4G+64K, 4G+128K)   rw          object pages, rw (above 4 GiB)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mb_access.h"
#include "mb_backing.h"
#include "mb_partition.h"
#include "va_reserve.h"

#define K 1024ull
#define GPA_HIGH ((4ull << 30) + 64 * K)
#define MAX_ADDR ((4ull << 30) + (2ull << 20))
#define FILL_BASE 0x40
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const mb_partition_ops *ops; /* the backend under test */

typedef struct host_map {
  uint64_t gpa, len, obj_off;
  bool writable;
} host_map;

static const host_map host_maps[] = {
    {0, 96 * K, 0, true},
    {100 * K, 28 * K, 100 * K, false},
    {128 * K, 64 * K, 128 * K, true},
    {GPA_HIGH, 64 * K, 256 * K, true},
};

static const mb_part_range pieces[] = {
    {0, 64 * K, true},       {64 * K, 64 * K, true}, {128 * K, 64 * K, false},
    {256 * K, 64 * K, true}, {GPA_HIGH, 64 * K, true},
};

typedef struct fx {
  void *inst;
  mb_va va;
  mb_object *obj;
} fx;

/* ---- fixture -------------------------------------------------------------------------- */

static int map(fx *f, uint64_t gpa, uint64_t size, bool writable) {
  return ops->map(f->inst, gpa, size, f->va.base + gpa, writable);
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(mb_va_reserve(&f->va, MAX_ADDR), 0);
  assert_int_equal(mb_object_create(MB_OBJECT_MEMFD, 512 * K, "part", &f->obj), 0);
  assert_int_equal(mb_object_fill_pages(f->obj, FILL_BASE), 0);
  for (size_t i = 0; i < ARRAY_LEN(host_maps); i++) {
    const host_map *m = &host_maps[i];
    assert_int_equal(mb_object_map_into(f->obj, &f->va, m->gpa, m->len, m->obj_off, m->writable), 0);
  }
  assert_int_equal(ops->create(MAX_ADDR, NULL, &f->inst), 0);
  for (size_t i = 0; i < ARRAY_LEN(pieces); i++)
    assert_int_equal(map(f, pieces[i].gpa, pieces[i].size, pieces[i].writable), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  ops->destroy(f->inst); /* with pieces still mapped: destroy unmaps them */
  mb_va_release(&f->va);
  mb_object_unref(f->obj);
  free(f);
  return 0;
}

/* Every case starts here: cmocka installs its own SIGSEGV handler around each test function,
 * so put the fault-tolerant copies' handler back in front. */
static fx *begin(void **state) {
  assert_int_equal(mb_access_reinstall(), 0);
  return *state;
}

/* The byte the host VA holds at gpa (which must be mapped in the VA). */
static uint8_t expected(uint64_t gpa) {
  for (size_t i = 0; i < ARRAY_LEN(host_maps); i++) {
    const host_map *m = &host_maps[i];
    if (gpa >= m->gpa && gpa < m->gpa + m->len)
      return mb_fill_pages_byte(FILL_BASE, m->obj_off + (gpa - m->gpa));
  }
  fail_msg("gpa %#llx has no host memory", (unsigned long long)gpa);
  return 0;
}

static void assert_guest_bytes(fx *f, uint64_t gpa, size_t len) {
  uint8_t *buf = malloc(len);
  assert_non_null(buf);
  assert_int_equal(ops->access(f->inst, gpa, buf, len, false), 0);
  for (size_t i = 0; i < len; i++)
    if (buf[i] != expected(gpa + i))
      fail_msg("gpa %#llx: %#x, want %#x", (unsigned long long)(gpa + i), buf[i], expected(gpa + i));
  free(buf);
}

static int rd(fx *f, uint64_t gpa, size_t len) {
  uint8_t buf[64];
  assert_true(len <= sizeof buf);
  return ops->access(f->inst, gpa, buf, len, false);
}

static int wr(fx *f, uint64_t gpa, size_t len, uint8_t byte) {
  uint8_t buf[64];
  assert_true(len <= sizeof buf);
  memset(buf, byte, len);
  return ops->access(f->inst, gpa, buf, len, true);
}

/* ---- data ----------------------------------------------------------------------------- */

static void case_read_data(void **state) {
  fx *f = begin(state);
  assert_guest_bytes(f, 0x123, 300);
  assert_guest_bytes(f, 4 * K - 1, 2);  /* across a page of A */
  assert_guest_bytes(f, 130 * K, 64);   /* a read-only piece reads */
  assert_guest_bytes(f, 100 * K, 64);   /* a read-only page reads */
  assert_guest_bytes(f, GPA_HIGH + 5 * K + 3, 100);
}

static void case_write_data(void **state) {
  fx *f = begin(state);
  uint8_t buf[200], back[200];
  for (size_t i = 0; i < sizeof buf; i++)
    buf[i] = (uint8_t)(i * 7 + 1);
  const uint64_t at[] = {0x10, 8 * K - 100, 70 * K, GPA_HIGH + 60 * K};
  for (size_t i = 0; i < ARRAY_LEN(at); i++) {
    assert_int_equal(ops->access(f->inst, at[i], buf, sizeof buf, true), 0);
    assert_memory_equal(f->va.base + at[i], buf, sizeof buf); /* the host sees it */
    memset(back, 0, sizeof back);
    assert_int_equal(ops->access(f->inst, at[i], back, sizeof back, false), 0);
    assert_memory_equal(back, buf, sizeof buf);
  }
}

static void case_cross_pieces(void **state) {
  fx *f = begin(state);
  assert_guest_bytes(f, 64 * K - 100, 200);  /* A -> B */
  assert_guest_bytes(f, 128 * K - 50, 100); /* B (ro page) -> C (ro piece) */
  uint8_t buf[64];
  memset(buf, 0x5a, sizeof buf);
  assert_int_equal(ops->access(f->inst, 64 * K - 32, buf, sizeof buf, true), 0);
  assert_memory_equal(f->va.base + 64 * K - 32, buf, sizeof buf);
}

/* More than one page-table page and more than the kvm scratch buffer (64 KiB). */
static void case_large_access(void **state) {
  fx *f = begin(state);
  assert_guest_bytes(f, 0, 96 * K);
  size_t len = 96 * K - 8;
  uint8_t *buf = malloc(len), *back = malloc(len);
  assert_non_null(buf);
  assert_non_null(back);
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)(i ^ (i >> 9));
  assert_int_equal(ops->access(f->inst, 4, buf, len, true), 0);
  assert_memory_equal(f->va.base + 4, buf, len);
  assert_int_equal(ops->access(f->inst, 4, back, len, false), 0);
  assert_memory_equal(back, buf, len);
  free(buf);
  free(back);
}

static void case_empty_access(void **state) {
  fx *f = begin(state);
  assert_int_equal(rd(f, 0, 0), 0);
  assert_int_equal(rd(f, 200 * K, 0), 0); /* nothing is touched, so nothing fails */
  assert_int_equal(wr(f, MAX_ADDR, 0, 0), 0);
}

/* ---- mmio and fault ------------------------------------------------------------------- */

static void case_unmapped_is_mmio(void **state) {
  fx *f = begin(state);
  const uint64_t at[] = {192 * K, 200 * K + 17, 1ull << 20, 4ull << 30, MAX_ADDR - 4};
  for (size_t i = 0; i < ARRAY_LEN(at); i++) {
    assert_int_equal(rd(f, at[i], 4), MB_E_MMIO);
    assert_int_equal(wr(f, at[i], 4, 0x11), MB_E_MMIO);
  }
}

static void case_readonly_piece_write_is_mmio(void **state) {
  fx *f = begin(state);
  assert_int_equal(wr(f, 128 * K, 1, 0x99), MB_E_MMIO);
  assert_int_equal(wr(f, 150 * K + 3, 16, 0x99), MB_E_MMIO);
  assert_int_equal(f->va.base[128 * K], expected(128 * K)); /* unchanged */
  assert_guest_bytes(f, 150 * K, 32);
}

static void case_hole_is_fault(void **state) {
  fx *f = begin(state);
  assert_int_equal(rd(f, 96 * K, 1), MB_E_FAULT);
  assert_int_equal(wr(f, 99 * K, 8, 0x22), MB_E_FAULT);
  assert_int_equal(rd(f, 256 * K, 4), MB_E_FAULT);
  assert_int_equal(wr(f, 300 * K, 4, 0x22), MB_E_FAULT);
}

static void case_readonly_page_write_is_fault(void **state) {
  fx *f = begin(state);
  assert_int_equal(wr(f, 100 * K, 1, 0x33), MB_E_FAULT);
  assert_int_equal(wr(f, 127 * K, 32, 0x33), MB_E_FAULT);
  assert_guest_bytes(f, 100 * K, 16); /* unchanged, still readable */
}

/* The first byte that cannot be served decides, as on a CPU. */
static void case_first_failing_byte_decides(void **state) {
  fx *f = begin(state);
  assert_int_equal(rd(f, 96 * K - 8, 16), MB_E_FAULT);  /* data, then the hole */
  assert_int_equal(rd(f, 192 * K - 8, 16), MB_E_MMIO);  /* C, then nothing */
  assert_int_equal(wr(f, 128 * K - 8, 16, 0), MB_E_FAULT); /* ro page, then ro piece */
  uint8_t *big = calloc(1, 48 * K);
  assert_non_null(big);
  assert_int_equal(ops->access(f->inst, 64 * K - 8, big, 48 * K, true), MB_E_FAULT); /* A, B, hole */
  free(big);
  assert_int_equal(wr(f, 192 * K - 8, 16, 0), MB_E_MMIO); /* ro piece first */
  assert_int_equal(rd(f, 320 * K - 8, 16), MB_E_FAULT);  /* D's hole, then nothing */
}

static void case_access_bad_range(void **state) {
  fx *f = begin(state);
  assert_int_equal(rd(f, MAX_ADDR, 1), MB_E_INVALID);
  assert_int_equal(rd(f, MAX_ADDR - 2, 4), MB_E_INVALID);
  assert_int_equal(wr(f, UINT64_MAX - 1, 4, 0), MB_E_INVALID); /* wraps */
  uint8_t b;
  assert_int_equal(ops->access(f->inst, 0, &b, SIZE_MAX, false), MB_E_INVALID);
}

/* ---- the map -------------------------------------------------------------------------- */

static void assert_ranges(fx *f, const mb_part_range *want, size_t n) {
  mb_part_range got[16];
  assert_int_equal(ops->ranges(f->inst, got, ARRAY_LEN(got)), n);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(got[i].gpa, want[i].gpa);
    assert_int_equal(got[i].size, want[i].size);
    assert_int_equal(got[i].writable, want[i].writable);
  }
}

static void case_ranges_ascending(void **state) {
  fx *f = begin(state);
  assert_ranges(f, pieces, ARRAY_LEN(pieces)); /* as mapped: adjacent A, B stay apart */
  mb_part_range two[2] = {{0}};
  assert_int_equal(ops->ranges(f->inst, two, 2), ARRAY_LEN(pieces)); /* the total */
  assert_int_equal(two[1].gpa, 64 * K);
  assert_int_equal(ops->ranges(f->inst, NULL, 0), ARRAY_LEN(pieces));
}

static void case_map_overlap_is_eexist(void **state) {
  fx *f = begin(state);
  assert_int_equal(map(f, 0, 64 * K, true), -EEXIST);         /* the same */
  assert_int_equal(map(f, 60 * K, 8 * K, true), -EEXIST);     /* across A and B */
  assert_int_equal(map(f, 180 * K, 16 * K, false), -EEXIST);  /* C's tail */
  assert_int_equal(map(f, 192 * K, 1ull << 20, true), -EEXIST); /* containing D */
  assert_int_equal(map(f, GPA_HIGH + 4 * K, 4 * K, true), -EEXIST);
  assert_ranges(f, pieces, ARRAY_LEN(pieces));
  assert_int_equal(map(f, 192 * K, 64 * K, true), 0); /* the gap, exactly */
  assert_int_equal(map(f, 320 * K, 4 * K, true), 0);  /* right after D */
}

static void case_map_bad_range(void **state) {
  fx *f = begin(state);
  assert_int_equal(map(f, 192 * K + 1, 4 * K, true), MB_E_INVALID);
  assert_int_equal(map(f, 192 * K, 100, true), MB_E_INVALID);
  assert_int_equal(map(f, 192 * K, 0, true), MB_E_INVALID);
  assert_int_equal(map(f, MAX_ADDR, 4 * K, true), MB_E_INVALID);
  assert_int_equal(map(f, MAX_ADDR - 4 * K, 8 * K, true), MB_E_INVALID);
  assert_int_equal(ops->map(f->inst, UINT64_MAX - 4095, 8 * K, f->va.base, true), MB_E_INVALID);
  assert_int_equal(ops->map(f->inst, 192 * K, 4 * K, NULL, true), MB_E_INVALID);
  assert_int_equal(ops->map(f->inst, 192 * K, 4 * K, f->va.base + 1, true), MB_E_INVALID);
  assert_ranges(f, pieces, ARRAY_LEN(pieces));
}

static void case_unmap_not_a_piece(void **state) {
  fx *f = begin(state);
  assert_int_equal(ops->unmap(f->inst, 0, 32 * K), -ENOENT);       /* part of A */
  assert_int_equal(ops->unmap(f->inst, 4 * K, 60 * K), -ENOENT);   /* A's tail */
  assert_int_equal(ops->unmap(f->inst, 0, 128 * K), -ENOENT);      /* A and B */
  assert_int_equal(ops->unmap(f->inst, 192 * K, 64 * K), -ENOENT); /* the gap */
  assert_int_equal(ops->unmap(f->inst, 0, 0), -ENOENT);
  assert_ranges(f, pieces, ARRAY_LEN(pieces));
  assert_guest_bytes(f, 0, 16);
}

static void case_unmap_remap(void **state) {
  fx *f = begin(state);
  assert_int_equal(ops->unmap(f->inst, 64 * K, 64 * K), 0);
  const mb_part_range after[] = {pieces[0], pieces[2], pieces[3], pieces[4]};
  assert_ranges(f, after, ARRAY_LEN(after));
  assert_int_equal(rd(f, 64 * K, 4), MB_E_MMIO);
  assert_int_equal(rd(f, 64 * K - 2, 4), MB_E_MMIO); /* A, then nothing */
  assert_int_equal(ops->unmap(f->inst, 64 * K, 64 * K), -ENOENT);
  assert_int_equal(map(f, 64 * K, 64 * K, false), 0); /* back, read-only */
  assert_guest_bytes(f, 64 * K, 64);
  assert_int_equal(wr(f, 64 * K, 4, 0), MB_E_MMIO);
}

static void case_high_gpa(void **state) {
  fx *f = begin(state);
  assert_int_equal(ops->unmap(f->inst, GPA_HIGH, 64 * K), 0);
  assert_int_equal(rd(f, GPA_HIGH, 4), MB_E_MMIO);
  assert_int_equal(map(f, GPA_HIGH, 32 * K, true), 0);
  assert_int_equal(map(f, GPA_HIGH + 32 * K, 32 * K, false), 0);
  assert_guest_bytes(f, GPA_HIGH + 32 * K - 10, 20); /* across the two */
  assert_int_equal(wr(f, GPA_HIGH + 32 * K - 4, 8, 0), MB_E_MMIO);
  assert_int_equal(wr(f, GPA_HIGH + 16, 8, 0x77), 0);
  assert_int_equal(f->va.base[GPA_HIGH + 16], 0x77);
}

/* Many pieces come and go: kvm recycles its slots (CHURN stays under the 509 slots of older
 * kernels; three rounds need more than that). */
enum { CHURN = 400 };
static void case_piece_churn(void **state) {
  fx *f = begin(state);
  const uint64_t base = 16ull << 20;
  for (int round = 0; round < 3; round++) {
    for (uint64_t i = 0; i < CHURN; i++)
      assert_int_equal(map(f, base + i * 4 * K, 4 * K, (i & 1) != 0), 0);
    assert_int_equal(ops->ranges(f->inst, NULL, 0), ARRAY_LEN(pieces) + CHURN);
    assert_int_equal(rd(f, base + 8 * K, 1), MB_E_FAULT); /* mapped, but a hole */
    for (uint64_t i = 0; i < CHURN; i++)
      assert_int_equal(ops->unmap(f->inst, base + i * 4 * K, 4 * K), 0);
    assert_int_equal(rd(f, base + 8 * K, 1), MB_E_MMIO);
  }
  assert_ranges(f, pieces, ARRAY_LEN(pieces));
}

/* Mapping until the backend runs out of slots (kvm) is an error, never a crash. */
static void case_out_of_slots(void **state) {
  fx *f = begin(state);
  const uint64_t base = 16ull << 20, tries = 40000;
  uint64_t n = 0;
  int rc = 0;
  for (; n < tries && (rc = map(f, base + n * 4 * K, 4 * K, true)) == 0; n++) {}
  if (n < tries) {
    assert_int_equal(rc, -ENOSPC);
    assert_int_equal(map(f, base + (n + 1) * 4 * K, 4 * K, true), -ENOSPC);
  }
  assert_guest_bytes(f, 0, 64); /* still working */
  assert_int_equal(ops->ranges(f->inst, NULL, 0), ARRAY_LEN(pieces) + n);
  for (uint64_t i = 0; i < n; i += 2) /* every other one */
    assert_int_equal(ops->unmap(f->inst, base + i * 4 * K, 4 * K), 0);
  assert_int_equal(map(f, base, 4 * K, false), 0); /* a freed slot is used again */
}

static const struct CMUnitTest cases[] = {
#define CASE(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    CASE(case_read_data),
    CASE(case_write_data),
    CASE(case_cross_pieces),
    CASE(case_large_access),
    CASE(case_empty_access),
    CASE(case_unmapped_is_mmio),
    CASE(case_readonly_piece_write_is_mmio),
    CASE(case_hole_is_fault),
    CASE(case_readonly_page_write_is_fault),
    CASE(case_first_failing_byte_decides),
    CASE(case_access_bad_range),
    CASE(case_ranges_ascending),
    CASE(case_map_overlap_is_eexist),
    CASE(case_map_bad_range),
    CASE(case_unmap_not_a_piece),
    CASE(case_unmap_remap),
    CASE(case_high_gpa),
    CASE(case_piece_churn),
    CASE(case_out_of_slots),
#undef CASE
};

int main(int argc, char **argv) {
  const mb_partition_ops *all[] = {&mb_partition_soft, &mb_partition_kvm};
  for (size_t i = 0; argc == 2 && i < ARRAY_LEN(all); i++)
    if (strcmp(argv[1], all[i]->name) == 0)
      ops = all[i];
  if (!ops) {
    fprintf(stderr, "usage: %s soft|kvm\n", argv[0]);
    return 2;
  }
  void *probe = NULL;
  int rc = ops->create(MAX_ADDR, NULL, &probe);
  if (rc == MB_E_UNSUPPORTED) {
    printf("SKIP: the %s partition backend cannot run here (no usable /dev/kvm); "
           "its cases were not run\n", ops->name);
    return 77;
  }
  if (rc != 0) {
    fprintf(stderr, "%s: create failed: %d\n", ops->name, rc);
    return 1;
  }
  ops->destroy(probe);
  char name[32];
  snprintf(name, sizeof name, "partition-%s", ops->name);
  return _cmocka_run_group_tests(name, cases, ARRAY_LEN(cases), NULL, NULL);
}
