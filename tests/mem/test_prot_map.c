/* test_prot_map.c: one VTL's page protections (mem/prot_map.h): bad arguments, splits and
 * merges at every edge, covers and runs, allocation failures leaving everything as it was,
 * random changes against a page array, and ten thousand scattered ranges. This program compiles
 * prot_map.c with the fault-injection seam on, so MB_FI_ALLOC can fail in every build. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fault_inject.h"
#include "mb_errors.h"
#include "prot_map.h"
#include "test_util.h"

#define PG 4096ull
#define N_ MB_PROT_NONE
#define RO MB_PROT_RO
#define RW MB_PROT_RW

static void set(mb_prot_map *m, uint64_t first, uint64_t end, uint8_t access) {
  assert_int_equal(mb_prot_set(m, first * PG, (end - first) * PG, access), 0);
}

/* Checks the stored ranges against want: triples (first page, end page, access), ended by
 * a negative first page. */
static void expect(const mb_prot_map *m, const int64_t *want) {
  assert_int_equal(mb__prot_validate(m), 0);
  size_t i = 0;
  for (const mb_prot_range *r = mb_prot_first(m, 0, UINT64_MAX); r;
       r = mb_prot_next(r, 0, UINT64_MAX), i++) {
    assert_true(want[3 * i] >= 0);
    assert_int_equal(r->node.start, (uint64_t)want[3 * i] * PG);
    assert_int_equal(r->node.end, (uint64_t)want[3 * i + 1] * PG);
    assert_int_equal(r->access, want[3 * i + 2]);
  }
  assert_true(want[3 * i] < 0);
  assert_int_equal(mb_prot_count(m), i);
}

/* Checks the cover of pages [first, end) against want (triples as in expect). */
static void expect_items(const mb_prot_map *m, uint64_t first, uint64_t end,
                         const int64_t *want) {
  mb_prot_item *items = NULL;
  size_t n = 99;
  assert_int_equal(mb_prot_items(m, first * PG, (end - first) * PG, &items, &n), 0);
  size_t i = 0;
  for (; want[3 * i] >= 0; i++) {
    assert_true(i < n);
    assert_int_equal(items[i].gpa, (uint64_t)want[3 * i] * PG);
    assert_int_equal(items[i].size, (uint64_t)(want[3 * i + 1] - want[3 * i]) * PG);
    assert_int_equal(items[i].access, want[3 * i + 2]);
  }
  assert_int_equal(n, i);
  free(items);
}

static const int64_t EMPTY[] = {-1};

static void test_invalid(void **unused) {
  (void)unused;
  mb_prot_map m;
  mb_prot_init(&m);
  set(&m, 4, 8, RO);
  assert_int_equal(mb_prot_set(&m, 0, PG, 3), MB_E_INVALID);
  assert_int_equal(mb_prot_set(&m, 0, 0, 3), MB_E_INVALID);
  assert_int_equal(mb_prot_set(&m, UINT64_MAX - PG + 1, PG, N_), MB_E_INVALID); /* ends at 2^64 */
  assert_int_equal(mb_prot_set(&m, PG, UINT64_MAX, N_), MB_E_INVALID);
  assert_int_equal(mb_prot_set(&m, 5 * PG, 0, N_), 0); /* empty: nothing */
  mb_prot_item bad[] = {{0, PG, N_}, {PG, PG, 7}};
  assert_int_equal(mb_prot_set_items(&m, bad, 2), MB_E_INVALID);
  mb_prot_item wraps[] = {{0, PG, N_}, {UINT64_MAX, 2, N_}};
  assert_int_equal(mb_prot_set_items(&m, wraps, 2), MB_E_INVALID);
  expect(&m, (const int64_t[]){4, 8, RO, -1});
  mb_prot_item *items = (mb_prot_item *)&items;
  size_t n = 5;
  assert_int_equal(mb_prot_items(&m, UINT64_MAX, 2, &items, &n), MB_E_INVALID);
  assert_null(items);
  assert_int_equal(n, 0);
  assert_int_equal(mb_prot_items(&m, 0, 0, &items, &n), 0);
  assert_null(items);
  assert_int_equal(n, 0);
  assert_false(mb_prot_allows(&m, UINT64_MAX, 2, false));
  assert_true(mb_prot_allows(&m, 5 * PG, 0, true));
  assert_int_equal(mb_prot_set_items(&m, NULL, 0), 0);
  mb_prot_fini(&m);
  mb_prot_fini(&m); /* empty: fine */
}

static void test_split_inside(void **unused) {
  (void)unused;
  mb_prot_map m;
  mb_prot_init(&m);
  expect(&m, EMPTY);
  set(&m, 0, 10, RO);
  set(&m, 3, 5, N_);
  expect(&m, (const int64_t[]){0, 3, RO, 3, 5, N_, 5, 10, RO, -1});
  set(&m, 3, 5, RW); /* back to read-write: a hole */
  expect(&m, (const int64_t[]){0, 3, RO, 5, 10, RO, -1});
  set(&m, 3, 5, RO); /* fills it: one range again */
  expect(&m, (const int64_t[]){0, 10, RO, -1});
  set(&m, 2, 6, RO); /* already so */
  expect(&m, (const int64_t[]){0, 10, RO, -1});
  set(&m, 0, 1, N_); /* at the start */
  set(&m, 9, 10, N_); /* at the end */
  expect(&m, (const int64_t[]){0, 1, N_, 1, 9, RO, 9, 10, N_, -1});
  set(&m, 1, 9, RW);
  expect(&m, (const int64_t[]){0, 1, N_, 9, 10, N_, -1});
  set(&m, 0, 10, RW);
  expect(&m, EMPTY);
  mb_prot_fini(&m);
}

static void test_span_several(void **unused) {
  (void)unused;
  mb_prot_map m;
  mb_prot_init(&m);
  set(&m, 0, 4, RO);
  set(&m, 6, 8, N_);
  set(&m, 10, 12, RO);
  set(&m, 14, 20, N_);
  set(&m, 2, 16, N_); /* cuts the first, swallows two, merges with the last */
  expect(&m, (const int64_t[]){0, 2, RO, 2, 20, N_, -1});
  set(&m, 1, 19, RO); /* merges left, cuts right */
  expect(&m, (const int64_t[]){0, 19, RO, 19, 20, N_, -1});
  set(&m, 5, 30, RW); /* cuts left, deletes the rest */
  expect(&m, (const int64_t[]){0, 5, RO, -1});
  set(&m, 7, 9, N_);
  set(&m, 11, 13, RO);
  set(&m, 0, 100, N_); /* everything, one range */
  expect(&m, (const int64_t[]){0, 100, N_, -1});
  mb_prot_fini(&m);
}

static void test_exact_edges(void **unused) {
  (void)unused;
  mb_prot_map m;
  mb_prot_init(&m);
  set(&m, 2, 4, RO);
  set(&m, 4, 6, RO); /* touches on the right: merged */
  expect(&m, (const int64_t[]){2, 6, RO, -1});
  set(&m, 0, 2, RO); /* on the left: merged */
  expect(&m, (const int64_t[]){0, 6, RO, -1});
  set(&m, 6, 8, N_); /* touching, other access: separate */
  set(&m, 8, 9, RO);
  expect(&m, (const int64_t[]){0, 6, RO, 6, 8, N_, 8, 9, RO, -1});
  set(&m, 6, 8, RO); /* exactly one range, to its neighbours' access: all three merge */
  expect(&m, (const int64_t[]){0, 9, RO, -1});
  set(&m, 0, 9, N_); /* exactly the range */
  expect(&m, (const int64_t[]){0, 9, N_, -1});
  set(&m, 0, 9, RW); /* exactly the range, deleted */
  expect(&m, EMPTY);
  /* the ends of the address space */
  assert_int_equal(mb_prot_set(&m, UINT64_MAX - PG, PG, RO), 0);
  uint64_t end = 0;
  assert_int_equal(mb_prot_at(&m, UINT64_MAX - 1, &end), RO);
  assert_int_equal(end, UINT64_MAX);
  assert_int_equal(mb_prot_at(&m, UINT64_MAX, &end), RW);
  assert_int_equal(end, UINT64_MAX);
  assert_int_equal(mb_prot_at(&m, 0, &end), RW);
  assert_int_equal(end, UINT64_MAX - PG);
  assert_int_equal(mb_prot_set(&m, 0, UINT64_MAX, N_), 0);
  assert_int_equal(mb_prot_count(&m), 1);
  assert_int_equal(mb_prot_set(&m, 0, PG, RW), 0);
  assert_int_equal(mb_prot_set(&m, UINT64_MAX - 1, 1, RO), 0);
  assert_int_equal(mb_prot_at(&m, 0, &end), RW);
  assert_int_equal(end, PG);
  assert_int_equal(mb_prot_at(&m, PG, &end), N_);
  assert_int_equal(end, UINT64_MAX - 1);
  assert_int_equal(mb__prot_validate(&m), 0);
  assert_int_equal(mb_prot_count(&m), 2);
  mb_prot_fini(&m);
}

static void test_merge_both_sides(void **unused) {
  (void)unused;
  mb_prot_map m;
  mb_prot_init(&m);
  set(&m, 0, 2, RO);
  set(&m, 4, 6, RO);
  set(&m, 2, 4, RO); /* the gap between two equal ranges */
  expect(&m, (const int64_t[]){0, 6, RO, -1});
  set(&m, 2, 4, N_);
  expect(&m, (const int64_t[]){0, 2, RO, 2, 4, N_, 4, 6, RO, -1});
  set(&m, 1, 5, RO); /* overlapping both neighbours, swallowing the middle */
  expect(&m, (const int64_t[]){0, 6, RO, -1});
  set(&m, 3, 4, N_);
  set(&m, 3, 4, RO); /* a single page put back */
  expect(&m, (const int64_t[]){0, 6, RO, -1});
  mb_prot_fini(&m);
}

static void test_queries(void **unused) {
  (void)unused;
  mb_prot_map m;
  mb_prot_init(&m);
  set(&m, 2, 4, RO);
  set(&m, 4, 5, N_);
  set(&m, 8, 10, RO);
  /* covers: read-write runs included, clipped to the range */
  expect_items(&m, 0, 12, (const int64_t[]){0, 2, RW, 2, 4, RO, 4, 5, N_, 5, 8, RW,
                                            8, 10, RO, 10, 12, RW, -1});
  expect_items(&m, 3, 9, (const int64_t[]){3, 4, RO, 4, 5, N_, 5, 8, RW, 8, 9, RO, -1});
  expect_items(&m, 5, 8, (const int64_t[]){5, 8, RW, -1});
  expect_items(&m, 4, 5, (const int64_t[]){4, 5, N_, -1});
  mb_prot_item *items = NULL;
  size_t n = 0;
  assert_int_equal(mb_prot_items(&m, 2 * PG + 1, 10, &items, &n), 0); /* bytes, not pages */
  assert_int_equal(n, 1);
  assert_int_equal(items[0].gpa, 2 * PG + 1);
  assert_int_equal(items[0].size, 10);
  free(items);
  /* runs */
  uint64_t end = 0;
  assert_int_equal(mb_prot_at(&m, 0, &end), RW);
  assert_int_equal(end, 2 * PG);
  assert_int_equal(mb_prot_at(&m, 3 * PG + 5, &end), RO);
  assert_int_equal(end, 4 * PG);
  assert_int_equal(mb_prot_at(&m, 4 * PG, &end), N_);
  assert_int_equal(end, 5 * PG);
  assert_int_equal(mb_prot_at(&m, 5 * PG, NULL), RW);
  assert_int_equal(mb_prot_at(&m, 9 * PG, &end), RO);
  assert_int_equal(end, 10 * PG);
  assert_int_equal(mb_prot_at(&m, 10 * PG, &end), RW);
  assert_int_equal(end, UINT64_MAX);
  /* allows */
  assert_true(mb_prot_allows(&m, 0, 2 * PG, true));
  assert_false(mb_prot_allows(&m, 0, 2 * PG + 1, true));
  assert_true(mb_prot_allows(&m, 0, 4 * PG, false));
  assert_false(mb_prot_allows(&m, 0, 4 * PG + 1, false));
  assert_true(mb_prot_allows(&m, 5 * PG, 3 * PG, true));
  assert_true(mb_prot_allows(&m, 5 * PG, 5 * PG, false));
  assert_false(mb_prot_allows(&m, 5 * PG, 5 * PG, true));
  assert_false(mb_prot_allows(&m, 4 * PG + 7, 1, false));
  /* first/next within a window */
  const mb_prot_range *r = mb_prot_first(&m, 3 * PG, 9 * PG);
  assert_non_null(r);
  assert_int_equal(r->node.start, 2 * PG);
  r = mb_prot_next(r, 3 * PG, 9 * PG);
  assert_int_equal(r->node.start, 4 * PG);
  r = mb_prot_next(r, 3 * PG, 9 * PG);
  assert_int_equal(r->node.start, 8 * PG);
  assert_null(mb_prot_next(r, 3 * PG, 9 * PG));
  assert_null(mb_prot_first(&m, 5 * PG, 8 * PG));
  mb_prot_fini(&m);
}

/* set_items restores what mb_prot_items saved, whatever came between (an undo). */
static void test_set_items_undo(void **unused) {
  (void)unused;
  mb_prot_map m;
  mb_prot_init(&m);
  set(&m, 2, 4, RO);
  set(&m, 6, 9, N_);
  mb_prot_item *saved = NULL;
  size_t n = 0;
  assert_int_equal(mb_prot_items(&m, 3 * PG, 5 * PG, &saved, &n), 0); /* pages 3..8 */
  assert_int_equal(n, 3);
  set(&m, 0, 20, N_);
  set(&m, 5, 6, RO);
  assert_int_equal(mb_prot_set_items(&m, saved, n), 0);
  expect(&m, (const int64_t[]){0, 3, N_, 3, 4, RO, 6, 20, N_, -1});
  free(saved);
  mb_prot_fini(&m);
}

/* ---- allocation failures -------------------------------------------------------------------- */

typedef struct snap {
  uint64_t start[64], end[64];
  uint8_t access[64];
  size_t n;
} snap;

static void take_snap(const mb_prot_map *m, snap *s) {
  s->n = 0;
  for (const mb_prot_range *r = mb_prot_first(m, 0, UINT64_MAX); r;
       r = mb_prot_next(r, 0, UINT64_MAX), s->n++) {
    assert_true(s->n < 64);
    s->start[s->n] = r->node.start;
    s->end[s->n] = r->node.end;
    s->access[s->n] = r->access;
  }
}

static void expect_snap(const mb_prot_map *m, const snap *want) {
  snap now;
  assert_int_equal(mb__prot_validate(m), 0);
  take_snap(m, &now);
  assert_int_equal(now.n, want->n);
  for (size_t i = 0; i < now.n; i++) {
    assert_int_equal(now.start[i], want->start[i]);
    assert_int_equal(now.end[i], want->end[i]);
    assert_int_equal(now.access[i], want->access[i]);
  }
}

/* Sets pages [first, end) with the k-th allocation failing; answers what the call did. */
static int set_failing(mb_prot_map *m, uint64_t first, uint64_t end, uint8_t access,
                       uint64_t k) {
  mb_fi_reset();
  assert_int_equal(mb_fi_arm(MB_FI_ALLOC, k, ENOMEM), 0);
  int rc = mb_prot_set(m, first * PG, (end - first) * PG, access);
  mb_fi_reset();
  return rc;
}

static void test_alloc_failure(void **unused) {
  (void)unused;
  assert_true(mb_fi_enabled());
  mb_prot_map m;
  mb_prot_init(&m);
  set(&m, 0, 10, RO);
  snap before;
  take_snap(&m, &before);
  /* a split in three needs two nodes: either failing changes nothing */
  assert_int_equal(set_failing(&m, 3, 5, N_, 1), MB_ENOMEM);
  expect_snap(&m, &before);
  assert_int_equal(set_failing(&m, 3, 5, N_, 2), MB_ENOMEM);
  expect_snap(&m, &before);
  mb_fi_reset();
  set(&m, 3, 5, N_);
  assert_int_equal(mb_fi_calls(MB_FI_ALLOC), 2);
  /* changes that only shrink, merge or replace allocate nothing */
  mb_fi_reset();
  assert_int_equal(mb_fi_arm_persist(MB_FI_ALLOC, 1, ENOMEM), 0);
  set(&m, 3, 5, RW);
  set(&m, 3, 5, RO);
  set(&m, 0, 10, N_);
  set(&m, 4, 10, RW);
  set(&m, 0, 4, RO);
  expect(&m, (const int64_t[]){0, 4, RO, -1});
  assert_int_equal(mb_fi_calls(MB_FI_ALLOC), 0);
  /* a cut in two needs one */
  take_snap(&m, &before);
  assert_int_equal(mb_prot_set(&m, 0, PG, N_), MB_ENOMEM);
  expect_snap(&m, &before);
  mb_prot_item *items = (mb_prot_item *)&items;
  size_t n = 7;
  assert_int_equal(mb_prot_items(&m, 0, 8 * PG, &items, &n), MB_ENOMEM);
  assert_null(items);
  assert_int_equal(n, 0);
  mb_fi_reset();
  set(&m, 0, 1, N_);
  assert_int_equal(mb_fi_calls(MB_FI_ALLOC), 1);
  /* set_items: every failing allocation in turn leaves everything as it was */
  mb_prot_item list[] = {{1 * PG, PG, N_}, {3 * PG, 2 * PG, N_}, {6 * PG, PG, RO},
                         {8 * PG, 4 * PG, N_}, {20 * PG, PG, RW}};
  take_snap(&m, &before);
  for (uint64_t k = 1;; k++) {
    mb_fi_reset();
    assert_int_equal(mb_fi_arm(MB_FI_ALLOC, k, ENOMEM), 0);
    int rc = mb_prot_set_items(&m, list, 5);
    bool injected = mb_fi_injected(MB_FI_ALLOC) > 0;
    mb_fi_reset();
    if (!injected) {
      assert_int_equal(rc, 0);
      break;
    }
    assert_int_equal(rc, MB_ENOMEM);
    expect_snap(&m, &before);
  }
  expect(&m, (const int64_t[]){0, 2, N_, 2, 3, RO, 3, 5, N_, 6, 7, RO, 8, 12, N_, -1});
  mb_prot_fini(&m);
}

/* ---- a model: one access per page ------------------------------------------------------------- */

typedef struct model {
  uint8_t *page;
  uint64_t pages;
} model;

static void model_set(model *md, uint64_t first, uint64_t end, uint8_t access) {
  memset(md->page + first, access, end - first);
}

/* The end of the run of page p's access (pages beyond the model are read-write). */
static uint64_t model_run_end(const model *md, uint64_t p) {
  uint64_t e = p;
  while (e < md->pages && md->page[e] == md->page[p])
    e++;
  return e;
}

static size_t model_runs(const model *md) {
  size_t runs = 0;
  for (uint64_t p = 0; p < md->pages; p = model_run_end(md, p))
    runs += md->page[p] != RW;
  return runs;
}

static void check_cover(const mb_prot_map *m, const model *md, uint64_t first, uint64_t end) {
  mb_prot_item *items = NULL;
  size_t n = 0;
  assert_int_equal(mb_prot_items(m, first * PG, (end - first) * PG, &items, &n), 0);
  size_t i = 0;
  for (uint64_t p = first; p < end; i++) {
    uint64_t e = model_run_end(md, p);
    e = e < end ? e : end;
    assert_true(i < n);
    assert_int_equal(items[i].gpa, p * PG);
    assert_int_equal(items[i].size, (e - p) * PG);
    assert_int_equal(items[i].access, md->page[p]);
    p = e;
  }
  assert_int_equal(n, i);
  free(items);
}

static void check_model(const mb_prot_map *m, const model *md, uint64_t *rng) {
  assert_int_equal(mb__prot_validate(m), 0);
  assert_int_equal(mb_prot_count(m), model_runs(md));
  for (uint64_t p = 0; p < md->pages; p++) {
    uint64_t end = 0, e = model_run_end(md, p);
    uint64_t at = p * PG + tu_xorshift(rng) % PG;
    assert_int_equal(mb_prot_at(m, at, &end), md->page[p]);
    if (e == md->pages && md->page[p] == RW)
      assert_int_equal(end, UINT64_MAX);
    else
      assert_int_equal(end, e * PG);
  }
  for (int i = 0; i < 4; i++) {
    uint64_t a = tu_xorshift(rng) % md->pages, b = tu_xorshift(rng) % md->pages;
    check_cover(m, md, a < b ? a : b, (a < b ? b : a) + 1);
  }
}

/* A random range of pages: mostly short, some long. */
static void random_range(uint64_t *rng, uint64_t pages, uint64_t *first, uint64_t *end) {
  uint64_t len = tu_xorshift(rng) % 4 == 0 ? 1 + tu_xorshift(rng) % pages
                                           : 1 + tu_xorshift(rng) % 8;
  *first = tu_xorshift(rng) % pages;
  *end = *first + len < pages ? *first + len : pages;
}

/* One random change (a set, a list of sets, or an undo), with sometimes an allocation failure
 * armed: the model follows only what succeeded. */
static void random_step(mb_prot_map *m, model *md, uint64_t *rng) {
  uint64_t kind = tu_xorshift(rng) % 10, first, end;
  bool fail = tu_xorshift(rng) % 8 == 0;
  if (fail)
    assert_int_equal(mb_fi_arm(MB_FI_ALLOC, 1 + tu_xorshift(rng) % 4, ENOMEM), 0);
  if (kind < 7) {
    random_range(rng, md->pages, &first, &end);
    uint8_t access = (uint8_t)(tu_xorshift(rng) % 3);
    int rc = mb_prot_set(m, first * PG, (end - first) * PG, access);
    if (rc == 0)
      model_set(md, first, end, access);
    else
      assert_true(fail && rc == MB_ENOMEM);
  } else if (kind < 9) {
    mb_prot_item list[6];
    size_t n = 0;
    uint8_t copy[256];
    assert_true(md->pages <= sizeof copy);
    memcpy(copy, md->page, md->pages);
    for (uint64_t p = tu_xorshift(rng) % 16; p < md->pages && n < 6;
         p += 1 + tu_xorshift(rng) % 64) {
      uint64_t e = p + 1 + tu_xorshift(rng) % 32;
      e = e < md->pages ? e : md->pages;
      list[n] = (mb_prot_item){p * PG, (e - p) * PG, (uint8_t)(tu_xorshift(rng) % 3)};
      model_set(md, p, e, list[n++].access);
      p = e;
    }
    int rc = mb_prot_set_items(m, list, n);
    if (rc != 0) {
      assert_true(fail && rc == MB_ENOMEM);
      memcpy(md->page, copy, md->pages);
    }
  } else {
    mb_fi_reset(); /* the undo's own steps must work */
    random_range(rng, md->pages, &first, &end);
    mb_prot_item *saved = NULL;
    size_t n = 0;
    assert_int_equal(mb_prot_items(m, first * PG, (end - first) * PG, &saved, &n), 0);
    for (int i = 0; i < 3; i++) {
      uint64_t f, e;
      random_range(rng, end - first, &f, &e);
      set(m, first + f, first + e, (uint8_t)(tu_xorshift(rng) % 3));
    }
    assert_int_equal(mb_prot_set_items(m, saved, n), 0);
    free(saved);
  }
  mb_fi_reset();
}

static void test_random_model(void **unused) {
  (void)unused;
  uint8_t pages[256];
  model md = {pages, 256};
  memset(pages, RW, sizeof pages);
  mb_prot_map m;
  mb_prot_init(&m);
  uint64_t rng = 0x9e3779b97f4a7c15ull;
  for (int step = 0; step < 6000; step++) {
    random_step(&m, &md, &rng);
    check_model(&m, &md, &rng);
  }
  mb_prot_fini(&m);
}

/* ---- scale: ten thousand scattered ranges ------------------------------------------------------ */

static void check_scale(const mb_prot_map *m, const model *md) {
  assert_int_equal(mb__prot_validate(m), 0);
  assert_int_equal(mb_prot_count(m), model_runs(md));
}

static void scale_set(mb_prot_map *m, model *md, uint64_t first, uint64_t end, uint8_t access) {
  set(m, first, end, access);
  model_set(md, first, end, access);
}

static void test_scale(void **unused) {
  (void)unused;
  enum { COUNT = 10000, PAGES = 3 * COUNT };
  model md = {malloc(PAGES), PAGES};
  assert_non_null(md.page);
  memset(md.page, RW, PAGES);
  mb_prot_map m;
  mb_prot_init(&m);
  for (uint64_t i = 0; i < COUNT; i++) /* scattered, in a shuffled order */
    scale_set(&m, &md, 3 * ((i * 7919) % COUNT), 3 * ((i * 7919) % COUNT) + 1, i % 3 ? RO : N_);
  assert_int_equal(mb_prot_count(&m), COUNT);
  check_scale(&m, &md);
  for (uint64_t i = 0; i < COUNT; i += 2) /* fill gaps: merges where accesses agree */
    scale_set(&m, &md, 3 * i + 1, 3 * i + 3, RO);
  check_scale(&m, &md);
  for (uint64_t i = 0; i < COUNT; i += 5) /* back to read-write: splits and deletions */
    scale_set(&m, &md, 3 * i, 3 * i + 2, RW);
  check_scale(&m, &md);
  for (uint64_t i = 0; i < PAGES; i += 7)
    scale_set(&m, &md, i, i + 1, N_);
  check_scale(&m, &md);
  for (uint64_t p = 0; p < PAGES; p++)
    assert_int_equal(mb_prot_at(&m, p * PG, NULL), md.page[p]);
  mb_prot_item *saved = NULL;
  size_t n = 0;
  assert_int_equal(mb_prot_items(&m, 0, PAGES * PG, &saved, &n), 0);
  uint8_t *before = malloc(PAGES);
  assert_non_null(before);
  memcpy(before, md.page, PAGES);
  scale_set(&m, &md, 0, PAGES, N_); /* one set over all of them */
  assert_int_equal(mb_prot_count(&m), 1);
  assert_int_equal(mb_prot_set_items(&m, saved, n), 0); /* and back */
  memcpy(md.page, before, PAGES);
  free(before);
  free(saved);
  check_scale(&m, &md);
  scale_set(&m, &md, 0, PAGES, RW);
  assert_int_equal(mb_prot_count(&m), 0);
  for (uint64_t i = 0; i < COUNT; i++) /* again, left in place for fini */
    scale_set(&m, &md, 3 * i, 3 * i + 2, i % 2 ? RO : N_);
  check_scale(&m, &md);
  mb_prot_fini(&m);
  free(md.page);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_invalid),
      cmocka_unit_test(test_split_inside),
      cmocka_unit_test(test_span_several),
      cmocka_unit_test(test_exact_edges),
      cmocka_unit_test(test_merge_both_sides),
      cmocka_unit_test(test_queries),
      cmocka_unit_test(test_set_items_undo),
      cmocka_unit_test(test_alloc_failure),
      cmocka_unit_test(test_random_model),
      cmocka_unit_test(test_scale),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
