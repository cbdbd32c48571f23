/* test_dirty_set.c: the set of dirty pages (mem/dirty_set.h) on one thread: bad arguments, page
 * and word edges, merged ranges, bitmaps at any page offset, ranges taken in several calls,
 * a 1 TiB set costing almost no memory, and random operations against a plain model. The
 * concurrent rules are test_dirty_set_threads.c's. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dirty_set.h"
#include "mb_errors.h"
#include "mem_probe.h"
#include "test_util.h"

#define PG 4096ull
#define GiB (1ull << 30)
#define TiB (1ull << 40)

static mb_dirty_set *new_set(uint64_t max_addr) {
  mb_dirty_set *s = NULL;
  assert_int_equal(mb_dirty_set_create(max_addr, &s), 0);
  assert_non_null(s);
  return s;
}

/* Takes [gpa, gpa + size) as ranges (room for 64) and checks them against want (pairs of page
 * numbers [first, end), terminated by a negative first). */
static void expect_ranges(mb_dirty_set *s, uint64_t gpa, uint64_t size, const int64_t *want) {
  mb_range out[64];
  uint64_t next = 0;
  int64_t n = mb_dirty_set_take_ranges(s, gpa, size, out, 64, &next);
  assert_int_equal(next, gpa + size);
  int64_t i = 0;
  for (; want[2 * i] >= 0; i++) {
    assert_true(i < n);
    assert_int_equal(out[i].start, (uint64_t)want[2 * i] * PG);
    assert_int_equal(out[i].end, (uint64_t)want[2 * i + 1] * PG);
  }
  assert_int_equal(n, i);
}

static const int64_t NONE[] = {-1};

static void test_create(void **unused) {
  (void)unused;
  mb_dirty_set *s = (mb_dirty_set *)&s;
  assert_int_equal(mb_dirty_set_create(0, &s), MB_E_INVALID);
  assert_null(s);
  assert_int_equal(mb_dirty_set_create(PG + 1, &s), MB_E_INVALID);
  assert_int_equal(mb_dirty_set_create((1ull << 52) + PG, &s), MB_E_INVALID);
  s = new_set(PG); /* one page */
  assert_int_equal(mb_dirty_set_max_addr(s), PG);
  assert_int_equal(mb_dirty_set_mark_range(s, 0, PG), 0);
  assert_int_equal(mb_dirty_set_mark_range(s, 0, PG + 1), MB_E_INVALID);
  assert_int_equal(mb_dirty_set_mark_range(s, PG, 1), MB_E_INVALID);
  assert_int_equal(mb_dirty_set_mark_range(s, PG, 0), 0); /* empty, at the end */
  expect_ranges(s, 0, PG, (const int64_t[]){0, 1, -1});
  mb_dirty_set_destroy(s);
  mb_dirty_set_destroy(NULL);
}

static void test_mark_edges(void **unused) {
  (void)unused;
  mb_dirty_set *s = new_set(GiB);
  /* unaligned: every page a byte range touches */
  assert_int_equal(mb_dirty_set_mark_range(s, 5 * PG - 1, 2), 0);  /* pages 4 and 5 */
  assert_int_equal(mb_dirty_set_mark_range(s, 10 * PG + 7, 1), 0); /* page 10 */
  assert_int_equal(mb_dirty_set_mark_range(s, 20 * PG, 0), 0);     /* nothing */
  assert_int_equal(mb_dirty_set_mark_range(s, 30 * PG + 1, PG), 0); /* 30 and 31 */
  assert_false(mb_dirty_set_any(s, 20 * PG, PG));
  assert_true(mb_dirty_set_any(s, 0, GiB));
  assert_false(mb_dirty_set_any(s, 1, PG)); /* unaligned: false */
  expect_ranges(s, 0, GiB, (const int64_t[]){4, 6, 10, 11, 30, 32, -1});
  expect_ranges(s, 0, GiB, NONE); /* taken */
  /* wraps and past the end: nothing marked */
  assert_int_equal(mb_dirty_set_mark_range(s, GiB - PG, 2 * PG), MB_E_INVALID);
  assert_int_equal(mb_dirty_set_mark_range(s, UINT64_MAX - 5, 10), MB_E_INVALID);
  assert_int_equal(mb_dirty_set_mark_range(s, GiB - 1, 1), 0); /* the last byte */
  expect_ranges(s, 0, GiB, (const int64_t[]){GiB / PG - 1, GiB / PG, -1});
  mb_dirty_set_destroy(s);
}

static void test_word_edges(void **unused) {
  (void)unused;
  mb_dirty_set *s = new_set(GiB);
  /* runs across word boundaries merge; separate runs in one word do not */
  assert_int_equal(mb_dirty_set_mark_range(s, 60 * PG, 8 * PG), 0);    /* 60..67 */
  assert_int_equal(mb_dirty_set_mark_range(s, 127 * PG, 130 * PG), 0); /* 127..256 */
  assert_int_equal(mb_dirty_set_mark_range(s, 300 * PG, PG), 0);
  assert_int_equal(mb_dirty_set_mark_range(s, 302 * PG, PG), 0);
  /* a take of part of a word leaves the rest of it */
  expect_ranges(s, 62 * PG, 3 * PG, (const int64_t[]){62, 65, -1});
  expect_ranges(s, 0, 512 * PG,
                (const int64_t[]){60, 62, 65, 68, 127, 257, 300, 301, 302, 303, -1});
  /* the very last word of a set whose size is not a multiple of 64 pages */
  mb_dirty_set_destroy(s);
  s = new_set(100 * PG);
  assert_int_equal(mb_dirty_set_mark_range(s, 63 * PG, 37 * PG), 0);
  expect_ranges(s, 0, 100 * PG, (const int64_t[]){63, 100, -1});
  mb_dirty_set_destroy(s);
}

static void test_take_errors(void **unused) {
  (void)unused;
  mb_dirty_set *s = new_set(GiB);
  assert_int_equal(mb_dirty_set_mark_range(s, 0, GiB), 0);
  mb_range r[4];
  uint64_t bits[4], next = 1;
  assert_int_equal(mb_dirty_set_take_ranges(s, 1, PG, r, 4, &next), MB_E_INVALID);
  assert_int_equal(next, 1);
  assert_int_equal(mb_dirty_set_take_ranges(s, 0, PG + 1, r, 4, &next), MB_E_INVALID);
  assert_int_equal(mb_dirty_set_take_ranges(s, GiB - PG, 2 * PG, r, 4, &next), MB_E_INVALID);
  assert_int_equal(mb_dirty_set_take_bitmap(s, PG, 2 * GiB, bits), MB_E_INVALID);
  assert_int_equal(mb_dirty_set_take_bitmap(s, 7, PG, bits), MB_E_INVALID);
  assert_int_equal(mb_dirty_set_take_bitmap(s, 0, 0, bits), 0); /* empty */
  assert_int_equal(mb_dirty_set_take_ranges(s, GiB, 0, r, 4, &next), 0);
  assert_int_equal(next, GiB);
  assert_true(mb_dirty_set_any(s, 0, GiB)); /* nothing was taken */
  mb_dirty_set_clear(s);
  assert_false(mb_dirty_set_any(s, 0, GiB));
  assert_int_equal(mb_dirty_set_mark_range(s, PG, 1), 0); /* usable after a clear */
  expect_ranges(s, 0, GiB, (const int64_t[]){1, 2, -1});
  mb_dirty_set_destroy(s);
}

/* A full out array stops the take at the first range that does not fit; it and all after it
 * stay, and the next call goes on from there. */
static void test_ranges_in_parts(void **unused) {
  (void)unused;
  mb_dirty_set *s = new_set(GiB);
  for (uint64_t p = 0; p < 200; p += 3) /* runs of two pages: 0-1, 3-4, ... */
    assert_int_equal(mb_dirty_set_mark_range(s, p * PG, 2 * PG), 0);
  assert_int_equal(mb_dirty_set_mark_range(s, 62 * PG, PG), 0); /* 60-61 and 63-64 join */
  mb_range r[5];
  uint64_t gpa = 0, next, end = 256 * PG;
  int64_t total = 0, n;
  uint64_t expect_page = 0; /* page of the next run expected */
  do {
    n = mb_dirty_set_take_ranges(s, gpa, end - gpa, r, 5, &next);
    assert_true(n >= 0 && n <= 5);
    for (int64_t i = 0; i < n; i++) {
      uint64_t want_end = expect_page == 60 ? 65 : expect_page + 2;
      assert_int_equal(r[i].start, expect_page * PG);
      assert_int_equal(r[i].end, want_end * PG);
      expect_page = expect_page == 60 ? 66 : expect_page + 3;
    }
    if (next < end) {
      assert_int_equal(n, 5);
      assert_int_equal(next, expect_page * PG); /* stopped at the run that did not fit */
      assert_true(mb_dirty_set_any(s, next, PG));
    }
    total += n;
    gpa = next;
  } while (gpa < end);
  assert_int_equal(total, 67 - 1); /* 67 runs of two pages, two of them joined */
  assert_false(mb_dirty_set_any(s, 0, GiB));
  /* room for none: nothing taken, next at the first dirty page */
  assert_int_equal(mb_dirty_set_mark_range(s, 70 * PG, PG), 0);
  assert_int_equal(mb_dirty_set_take_ranges(s, 0, GiB, r, 0, &next), 0);
  assert_int_equal(next, 70 * PG);
  assert_true(mb_dirty_set_any(s, 70 * PG, PG));
  mb_dirty_set_destroy(s);
}

static void test_bitmaps(void **unused) {
  (void)unused;
  mb_dirty_set *s = new_set(GiB);
  /* a slot's log at page 5 (not 64-page aligned): 130 pages, bits past npages ignored */
  uint64_t log[3] = {0x8000000000000001ull, 0x1ull | (1ull << 63), ~0ull};
  assert_int_equal(mb_dirty_set_mark_bitmap(s, 5 * PG, log, 130), 0);
  /* pages 5, 68, 69, 132, 133 (bits 0, 63, 64, 127, 128, 129) */
  expect_ranges(s, 0, GiB, (const int64_t[]){5, 6, 68, 70, 132, 135, -1});
  assert_int_equal(mb_dirty_set_mark_bitmap(s, 1, log, 1), MB_E_INVALID);
  assert_int_equal(mb_dirty_set_mark_bitmap(s, GiB - 64 * PG, log, 65), MB_E_INVALID);
  assert_int_equal(mb_dirty_set_mark_bitmap(s, 0, log, UINT64_MAX / 2), MB_E_INVALID);
  assert_int_equal(mb_dirty_set_mark_bitmap(s, GiB - 64 * PG, log, 64), 0); /* the last word */
  expect_ranges(s, 0, GiB, (const int64_t[]){GiB / PG - 64, GiB / PG - 63, GiB / PG - 1,
                                             GiB / PG, -1});
  /* take into a bitmap from page 3: bit i is page 3 + i */
  assert_int_equal(mb_dirty_set_mark_range(s, 3 * PG, PG), 0);
  assert_int_equal(mb_dirty_set_mark_range(s, 66 * PG, 2 * PG), 0);
  assert_int_equal(mb_dirty_set_mark_range(s, 140 * PG, PG), 0);
  assert_int_equal(mb_dirty_set_mark_range(s, 200 * PG, PG), 0); /* past the range */
  uint64_t out[3] = {~0ull, ~0ull, ~0ull};
  assert_int_equal(mb_dirty_set_take_bitmap(s, 3 * PG, 140 * PG, out), 4);
  assert_int_equal(out[0], 1ull | (1ull << 63));
  assert_int_equal(out[1], 1ull);
  assert_int_equal(out[2], 1ull << (137 - 128)); /* page 140; bits past 140 pages are 0 */
  expect_ranges(s, 0, GiB, (const int64_t[]){200, 201, -1});
  /* bitmap round trip: what was taken, marked again, is what is taken again */
  assert_int_equal(mb_dirty_set_mark_bitmap(s, 3 * PG, out, 140), 0);
  uint64_t again[3];
  assert_int_equal(mb_dirty_set_take_bitmap(s, 3 * PG, 140 * PG, again), 4);
  assert_memory_equal(out, again, sizeof out);
  mb_dirty_set_destroy(s);
}

/* The summary: one bit per 128 MiB block (32768 pages), cleared by a take that covers the whole
 * block, set again by the next mark or by bits a take puts back. */
#define BLK 32768
static void test_blocks(void **unused) {
  (void)unused;
  mb_dirty_set *s = new_set((3 * BLK + 100) * PG); /* the last block is partial */
  const int64_t pages[] = {BLK - 1, BLK, 2 * BLK + 5, 3 * BLK + 99};
  for (int round = 0; round < 2; round++) {
    for (size_t i = 0; i < 4; i++)
      assert_int_equal(mb_dirty_set_mark_range(s, (uint64_t)pages[i] * PG, 1), 0);
    /* one range at a time: the take that covers block 2 entirely stops inside it */
    mb_range r[1];
    uint64_t gpa = 0, next, end = (3 * BLK + 100) * PG;
    int64_t got[8], n = 0;
    while (gpa < end) {
      int64_t k = mb_dirty_set_take_ranges(s, gpa, end - gpa, r, 1, &next);
      if (k == 1)
        got[n++] = (int64_t)(r[0].start / PG), got[n++] = (int64_t)(r[0].end / PG);
      if (next < end)
        assert_true(mb_dirty_set_any(s, next, PG));
      gpa = next;
    }
    assert_int_equal(n, 6);
    assert_int_equal(got[0], BLK - 1);
    assert_int_equal(got[1], BLK + 1); /* merged across the block boundary */
    assert_int_equal(got[2], 2 * BLK + 5);
    assert_int_equal(got[4], 3 * BLK + 99);
    assert_false(mb_dirty_set_any(s, 0, end));
  }
  /* a partial take of a block keeps the rest of it */
  assert_int_equal(mb_dirty_set_mark_range(s, (BLK + 10) * PG, 1), 0);
  assert_int_equal(mb_dirty_set_mark_range(s, (BLK + 20) * PG, 1), 0);
  expect_ranges(s, (BLK + 15) * PG, 100 * PG, (const int64_t[]){BLK + 20, BLK + 21, -1});
  assert_true(mb_dirty_set_any(s, 0, 3 * BLK * PG));
  expect_ranges(s, 0, 3 * BLK * PG, (const int64_t[]){BLK + 10, BLK + 11, -1});
  mb_dirty_set_destroy(s);
}

/* Kilobytes of a /proc/self/status field. */
static uint64_t status_kb(const char *field) {
  char buf[4096];
  FILE *f = fopen("/proc/self/status", "r");
  assert_non_null(f);
  uint64_t v = UINT64_MAX;
  while (fgets(buf, sizeof buf, f))
    if (strncmp(buf, field, strlen(field)) == 0)
      v = strtoull(buf + strlen(field) + 1, NULL, 10);
  fclose(f);
  assert_true(v != UINT64_MAX);
  return v;
}

/* A 1 TiB guest: 32 MiB of address space, next to no memory even after a sync of all of it. */
static void test_huge(void **unused) {
  (void)unused;
  uint64_t vm0 = mem_vm_size(), rss0 = status_kb("RssAnon:");
  mb_dirty_set *s = new_set(TiB);
  uint64_t vm1 = mem_vm_size();
  assert_true(vm1 - vm0 >= 32ull << 20 && vm1 - vm0 <= (32ull << 20) + (1ull << 20));
  assert_int_equal(mb_dirty_set_mark_range(s, 0, 1), 0);
  assert_int_equal(mb_dirty_set_mark_range(s, TiB / 2 + 77 * PG, 3 * PG), 0);
  assert_int_equal(mb_dirty_set_mark_range(s, TiB - PG, PG), 0);
  expect_ranges(s, 0, TiB, (const int64_t[]){0, 1, (int64_t)(TiB / 2 / PG) + 77,
                                             (int64_t)(TiB / 2 / PG) + 80,
                                             (int64_t)(TiB / PG) - 1, (int64_t)(TiB / PG), -1});
  uint64_t rss1 = status_kb("RssAnon:");
  print_message("rss %llu -> %llu kB\n", (unsigned long long)rss0, (unsigned long long)rss1);
  assert_true(rss1 < rss0 + 1024); /* three pages of bitmap, under 1 MiB with noise */
  mb_dirty_set_clear(s);
  mb_dirty_set_destroy(s);
  assert_int_equal(mem_vm_size(), vm0);
}

/* ---- random operations against a model --------------------------------------------------- */

#define MODEL_PAGES 1000 /* not a multiple of 64 */

typedef struct model {
  mb_dirty_set *s;
  bool dirty[MODEL_PAGES];
  uint64_t rng;
} model;

static uint64_t below(model *m, uint64_t n) {
  return tu_xorshift(&m->rng) % n;
}

/* A page range [first, end) of the model, short ones more likely. */
static void pick_pages(model *m, uint64_t *first, uint64_t *end) {
  uint64_t len = below(m, 4) == 0 ? 1 + below(m, MODEL_PAGES) : 1 + below(m, 130);
  *first = below(m, MODEL_PAGES);
  *end = *first + len > MODEL_PAGES ? MODEL_PAGES : *first + len;
}

/* Bytes from somewhere in page first to somewhere in page end - 1: exactly those pages. */
static void step_mark(model *m) {
  uint64_t first, end;
  pick_pages(m, &first, &end);
  uint64_t start = first * PG + below(m, PG);
  uint64_t last = (end - 1) * PG + below(m, PG); /* the last byte */
  if (last < start)
    last = start;
  assert_int_equal(mb_dirty_set_mark_range(m->s, start, last - start + 1), 0);
  for (uint64_t p = first; p < end; p++)
    m->dirty[p] = true;
}

static void step_mark_bitmap(model *m) {
  uint64_t first, end, bits[MODEL_PAGES / 64 + 1];
  pick_pages(m, &first, &end);
  for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++)
    bits[i] = tu_xorshift(&m->rng) & tu_xorshift(&m->rng); /* a quarter of the bits */
  assert_int_equal(mb_dirty_set_mark_bitmap(m->s, first * PG, bits, end - first), 0);
  for (uint64_t i = 0; i < end - first; i++)
    if (bits[i / 64] >> (i % 64) & 1)
      m->dirty[first + i] = true;
}

static void step_take_ranges(model *m) {
  uint64_t first, end;
  pick_pages(m, &first, &end);
  mb_range r[8];
  size_t max = 1 + below(m, 8);
  uint64_t gpa = first * PG, next, last_end = 0;
  while (gpa < end * PG) {
    int64_t n = mb_dirty_set_take_ranges(m->s, gpa, end * PG - gpa, r, max, &next);
    assert_true(n >= 0 && (size_t)n <= max);
    for (int64_t i = 0; i < n; i++) {
      assert_true(r[i].start < r[i].end && r[i].start >= gpa && r[i].end <= next);
      assert_true(i == 0 || r[i].start > r[i - 1].end); /* ascending, merged */
      for (uint64_t p = r[i].start / PG; p < r[i].end / PG; p++) {
        assert_true(m->dirty[p]);
        m->dirty[p] = false;
      }
    }
    /* no page left dirty in [gpa, next): all of it was taken */
    for (uint64_t p = gpa / PG; p < next / PG; p++)
      assert_false(m->dirty[p]);
    assert_true(next == end * PG || (n == (int64_t)max && m->dirty[next / PG]));
    /* a range that continues where the last call's ended would have been merged into it */
    assert_true(n == 0 || last_end == 0 || r[0].start > last_end);
    last_end = n ? r[n - 1].end : last_end;
    gpa = next;
  }
}

static void step_take_bitmap(model *m) {
  uint64_t first, end, bits[MODEL_PAGES / 64 + 1];
  pick_pages(m, &first, &end);
  int64_t n = mb_dirty_set_take_bitmap(m->s, first * PG, (end - first) * PG, bits);
  int64_t want = 0;
  for (uint64_t i = 0; i < end - first; i++) {
    bool bit = bits[i / 64] >> (i % 64) & 1;
    assert_int_equal(bit, m->dirty[first + i]);
    want += bit;
    m->dirty[first + i] = false;
  }
  assert_int_equal(n, want);
  uint64_t words = (end - first + 63) / 64;
  if ((end - first) % 64)
    assert_int_equal(bits[words - 1] >> ((end - first) % 64), 0); /* past the range: 0 */
}

static void step_any(model *m) {
  uint64_t first, end;
  pick_pages(m, &first, &end);
  bool want = false;
  for (uint64_t p = first; p < end; p++)
    want |= m->dirty[p];
  assert_int_equal(mb_dirty_set_any(m->s, first * PG, (end - first) * PG), want);
}

static void test_model(void **unused) {
  (void)unused;
  for (uint64_t seed = 1; seed <= 4; seed++) {
    model *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->rng = seed * 0x9e3779b97f4a7c15ull;
    m->s = new_set(MODEL_PAGES * PG);
    for (int step = 0; step < 5000; step++) {
      switch (below(m, 6)) {
      case 0: case 1: step_mark(m); break;
      case 2: step_mark_bitmap(m); break;
      case 3: step_take_ranges(m); break;
      case 4: step_take_bitmap(m); break;
      default: step_any(m); break;
      }
    }
    bool dirty[MODEL_PAGES];
    memcpy(dirty, m->dirty, sizeof dirty);
    uint64_t bits[MODEL_PAGES / 64 + 1];
    assert_true(mb_dirty_set_take_bitmap(m->s, 0, MODEL_PAGES * PG, bits) >= 0);
    for (uint64_t p = 0; p < MODEL_PAGES; p++)
      assert_int_equal(bits[p / 64] >> (p % 64) & 1, dirty[p]);
    mb_dirty_set_destroy(m->s);
    free(m);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_create),          cmocka_unit_test(test_mark_edges),
      cmocka_unit_test(test_word_edges),      cmocka_unit_test(test_take_errors),
      cmocka_unit_test(test_ranges_in_parts), cmocka_unit_test(test_bitmaps),
      cmocka_unit_test(test_blocks),          cmocka_unit_test(test_huge),
      cmocka_unit_test(test_model),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
