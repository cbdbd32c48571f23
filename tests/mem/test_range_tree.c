/* test_range_tree.c: the interval tree against a brute-force model on random operations
 * (fixed seeds), with disjoint and with overlapping intervals, plus edge cases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>

#include "range_tree.h"
#include "test_util.h"

/* ---- model ----------------------------------------------------------------------------- */

typedef struct item {
  mb_rtree_node node;
  uint64_t start, end;
  uint64_t seq; /* insertion stamp: the tree's tiebreak for equal starts */
  int in;
} item;

#define NITEMS 400

typedef struct model {
  mb_rtree tree;
  item items[NITEMS];
  uint64_t stamp;
  uint64_t rng;
  uint64_t space; /* coordinates are drawn from [0, space) */
  int disjoint;   /* keep intervals disjoint (the common use) */
} model;

static uint64_t rnd(model *m) { return tu_xorshift(&m->rng); }

static uint64_t rnd_below(model *m, uint64_t n) {
  return rnd(m) % n;
}

static item *item_of(mb_rtree_node *n) {
  return n ? mb_rtree_entry(n, item, node) : NULL;
}

/* Model order: (start, seq). */
static int before(const item *a, const item *b) {
  return a->start < b->start || (a->start == b->start && a->seq < b->seq);
}

static int cmp_items(const void *pa, const void *pb) {
  const item *a = *(item *const *)pa, *b = *(item *const *)pb;
  return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

/* The linked items, in model order, matching pred(a, b). Returns the count. */
static size_t model_select(model *m, item **out, uint64_t a, uint64_t b, int overlap_only) {
  size_t k = 0;
  for (int i = 0; i < NITEMS; i++) {
    item *it = &m->items[i];
    if (it->in && (!overlap_only || (a < b && it->start < b && it->end > a)))
      out[k++] = it;
  }
  qsort(out, k, sizeof *out, cmp_items);
  return k;
}

static int overlaps_any(model *m, uint64_t s, uint64_t e) {
  for (int i = 0; i < NITEMS; i++)
    if (m->items[i].in && m->items[i].start < e && m->items[i].end > s)
      return 1;
  return 0;
}

/* A random interval; sometimes touching the top of the 64-bit space. */
static void random_bounds(model *m, uint64_t *s, uint64_t *e) {
  if (m->space == 0) { /* full 64-bit space, biased to the ends */
    uint64_t len = 1 + rnd_below(m, 1000);
    *s = rnd_below(m, 2) ? UINT64_MAX - len - rnd_below(m, 3000) : rnd_below(m, 3000);
    *e = *s + len;
    return;
  }
  uint64_t maxlen = m->disjoint ? m->space / 50 : m->space / 4;
  *s = rnd_below(m, m->space);
  *e = *s + 1 + rnd_below(m, maxlen);
}

static void do_insert(model *m, item *it) {
  uint64_t s, e;
  random_bounds(m, &s, &e);
  if (m->disjoint && overlaps_any(m, s, e))
    return;
  assert_int_equal(mb_rtree_insert(&m->tree, &it->node, s, e), 0);
  it->start = s;
  it->end = e;
  it->seq = m->stamp++;
  it->in = 1;
}

static void do_remove(model *m, item *it) {
  mb_rtree_remove(&m->tree, &it->node);
  it->in = 0;
  /* no hidden state: a removed node's links are cleared */
  assert_null(it->node.parent);
  assert_null(it->node.left);
  assert_null(it->node.right);
}

/* ---- checks ---------------------------------------------------------------------------- */

static item *scratch[NITEMS];

static void check_overlap(model *m, uint64_t a, uint64_t b) {
  size_t k = model_select(m, scratch, a, b, 1);
  size_t i = 0;
  mb_rtree_node *n;
  mb_rtree_for_each_overlap(n, &m->tree, a, b) {
    assert_true(i < k);
    assert_ptr_equal(item_of(n), scratch[i]);
    i++;
  }
  assert_int_equal(i, k);
}

static void check_find(model *m, uint64_t x) {
  item *want = NULL;
  for (int i = 0; i < NITEMS; i++) {
    item *it = &m->items[i];
    if (it->in && it->start <= x && x < it->end && (want == NULL || before(it, want)))
      want = it;
  }
  assert_ptr_equal(item_of(mb_rtree_find(&m->tree, x)), want);
}

static void check_lower_bound(model *m, uint64_t x) {
  item *want = NULL;
  for (int i = 0; i < NITEMS; i++) {
    item *it = &m->items[i];
    if (it->in && it->start >= x && (want == NULL || before(it, want)))
      want = it;
  }
  assert_ptr_equal(item_of(mb_rtree_lower_bound(&m->tree, x)), want);
}

/* The whole tree against the model: invariants, count, order both ways. */
static void check_all(model *m) {
  assert_int_equal(mb__rtree_validate(&m->tree), 0);
  size_t k = model_select(m, scratch, 0, 0, 0);
  assert_int_equal(mb_rtree_count(&m->tree), k);
  assert_int_equal(mb_rtree_empty(&m->tree), k == 0);
  size_t i = 0;
  mb_rtree_node *n;
  mb_rtree_for_each(n, &m->tree) {
    assert_ptr_equal(item_of(n), scratch[i]);
    i++;
  }
  assert_int_equal(i, k);
  for (n = mb_rtree_last(&m->tree); n != NULL; n = mb_rtree_prev(n))
    assert_ptr_equal(item_of(n), scratch[--i]);
  assert_int_equal(i, 0);
}

static uint64_t random_point(model *m) {
  if (m->space == 0)
    return rnd_below(m, 2) ? UINT64_MAX - rnd_below(m, 5000) : rnd_below(m, 5000);
  return rnd_below(m, m->space + m->space / 8);
}

static void random_query(model *m) {
  uint64_t a = random_point(m), b = random_point(m);
  if (a > b) {
    uint64_t t = a;
    a = b;
    b = t;
  }
  if (rnd_below(m, 8) == 0)
    b = a + 1 + rnd_below(m, 3); /* short queries: stabbing-like */
  check_overlap(m, a, b);
  check_find(m, a);
  check_lower_bound(m, a);
}

static void run_model(uint64_t seed, uint64_t space, int disjoint, int ops) {
  static model m; /* large; not on the stack */
  mb_rtree_init(&m.tree);
  for (int i = 0; i < NITEMS; i++)
    m.items[i].in = 0;
  m.stamp = 0;
  m.rng = seed * 0x9E3779B97F4A7C15ull + 1;
  m.space = space;
  m.disjoint = disjoint;
  for (int op = 0; op < ops; op++) {
    item *it = &m.items[rnd_below(&m, NITEMS)];
    unsigned r = (unsigned)rnd_below(&m, 10);
    if (!it->in) {
      do_insert(&m, it);
    } else if (r < 4) {
      do_remove(&m, it);
    } else if (r < 6) {
      do_remove(&m, it); /* move: re-insert at once with new bounds */
      do_insert(&m, it);
    }
    random_query(&m);
    if (op % 97 == 0)
      check_all(&m);
  }
  check_all(&m);
  /* drain in random order */
  for (int i = 0; i < NITEMS; i++)
    if (m.items[i].in)
      do_remove(&m, &m.items[i]);
  check_all(&m);
  assert_true(mb_rtree_empty(&m.tree));
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_model_disjoint(void **state) {
  (void)state;
  for (uint64_t seed = 1; seed <= 6; seed++)
    run_model(seed, 100000, 1, 4000);
}

static void test_model_overlapping(void **state) {
  (void)state;
  for (uint64_t seed = 11; seed <= 16; seed++)
    run_model(seed, 2000, 0, 4000);
}

static void test_model_dense_duplicates(void **state) {
  (void)state;
  /* a tiny space: many equal starts, equal intervals, nested intervals */
  for (uint64_t seed = 21; seed <= 24; seed++)
    run_model(seed, 40, 0, 4000);
}

static void test_model_extremes(void **state) {
  (void)state;
  for (uint64_t seed = 31; seed <= 33; seed++)
    run_model(seed, 0, 0, 3000);
}

static void test_empty_tree(void **state) {
  (void)state;
  mb_rtree t = MB_RTREE_INIT;
  assert_true(mb_rtree_empty(&t));
  assert_int_equal(mb_rtree_count(&t), 0);
  assert_null(mb_rtree_first(&t));
  assert_null(mb_rtree_last(&t));
  assert_null(mb_rtree_find(&t, 5));
  assert_null(mb_rtree_lower_bound(&t, 0));
  assert_null(mb_rtree_first_overlap(&t, 0, UINT64_MAX));
  assert_int_equal(mb__rtree_validate(&t), 0);
}

static void test_invalid_insert(void **state) {
  (void)state;
  mb_rtree t;
  mb_rtree_node n;
  mb_rtree_init(&t);
  assert_int_equal(mb_rtree_insert(&t, &n, 5, 5), -EINVAL);
  assert_int_equal(mb_rtree_insert(&t, &n, 6, 5), -EINVAL);
  assert_true(mb_rtree_empty(&t));
}

static void test_edges(void **state) {
  (void)state;
  mb_rtree t;
  mb_rtree_node a, b, c;
  mb_rtree_init(&t);
  assert_int_equal(mb_rtree_insert(&t, &a, 0, 0x1000), 0);
  assert_int_equal(mb_rtree_insert(&t, &b, 0x1000, 0x2000), 0);
  assert_int_equal(mb_rtree_insert(&t, &c, UINT64_MAX - 0x1000, UINT64_MAX), 0);
  /* half-open: the end is not inside */
  assert_ptr_equal(mb_rtree_find(&t, 0xfff), &a);
  assert_ptr_equal(mb_rtree_find(&t, 0x1000), &b);
  assert_null(mb_rtree_find(&t, 0x2000));
  assert_ptr_equal(mb_rtree_find(&t, UINT64_MAX - 1), &c);
  assert_null(mb_rtree_find(&t, UINT64_MAX));
  /* empty and touching queries */
  assert_null(mb_rtree_first_overlap(&t, 0x1000, 0x1000));
  assert_null(mb_rtree_first_overlap(&t, 0x2000, 0x3000));
  assert_ptr_equal(mb_rtree_first_overlap(&t, 0xfff, 0x1001), &a);
  assert_ptr_equal(mb_rtree_next_overlap(&a, 0xfff, 0x1001), &b);
  assert_null(mb_rtree_next_overlap(&b, 0xfff, 0x1001));
  assert_ptr_equal(mb_rtree_lower_bound(&t, 1), &b);
  assert_ptr_equal(mb_rtree_lower_bound(&t, 0x1001), &c);
  assert_null(mb_rtree_lower_bound(&t, UINT64_MAX));
  mb_rtree_remove(&t, &b);
  /* re-insert the same node at once, with new bounds */
  assert_int_equal(mb_rtree_insert(&t, &b, 0x800, 0x3000), 0);
  assert_ptr_equal(mb_rtree_find(&t, 0x900), &a);
  assert_ptr_equal(mb_rtree_next_overlap(&a, 0x900, 0x901), &b);
  assert_int_equal(mb__rtree_validate(&t), 0);
}

static void test_equal_starts_keep_insertion_order(void **state) {
  (void)state;
  enum { N = 64 };
  mb_rtree t;
  mb_rtree_node n[N];
  mb_rtree_init(&t);
  for (int i = 0; i < N; i++)
    assert_int_equal(mb_rtree_insert(&t, &n[i], 100, 200 + (uint64_t)((i * 37) % N)), 0);
  int i = 0;
  mb_rtree_node *p;
  mb_rtree_for_each(p, &t) assert_ptr_equal(p, &n[i++]);
  assert_int_equal(i, N);
  /* removing from the middle keeps the relative order of the rest */
  for (i = 0; i < N; i += 3)
    mb_rtree_remove(&t, &n[i]);
  int want = 1;
  mb_rtree_for_each(p, &t) {
    assert_ptr_equal(p, &n[want]);
    want += (want % 3 == 2) ? 2 : 1;
  }
  assert_int_equal(mb__rtree_validate(&t), 0);
}

static void test_sequential_large(void **state) {
  (void)state;
  /* ascending inserts (the worst case for an unbalanced tree) stay logarithmic */
  enum { N = 1 << 16 };
  mb_rtree_node *n = malloc(N * sizeof *n);
  assert_non_null(n);
  mb_rtree t;
  mb_rtree_init(&t);
  for (uint64_t i = 0; i < N; i++)
    assert_int_equal(mb_rtree_insert(&t, &n[i], i * 0x1000, (i + 1) * 0x1000), 0);
  assert_int_equal(mb__rtree_validate(&t), 0);
  assert_true(t.root->height <= 24); /* AVL: < 1.45 log2(n + 2) */
  assert_ptr_equal(mb_rtree_find(&t, 12345 * 0x1000ull + 7), &n[12345]);
  mb_rtree_node *p;
  uint64_t k = 0;
  mb_rtree_for_each_overlap(p, &t, 100 * 0x1000ull + 1, 200 * 0x1000ull) {
    assert_ptr_equal(p, &n[100 + k]);
    k++;
  }
  assert_int_equal(k, 100);
  for (uint64_t i = 0; i < N; i += 2)
    mb_rtree_remove(&t, &n[i]);
  assert_int_equal(mb__rtree_validate(&t), 0);
  assert_int_equal(mb_rtree_count(&t), N / 2);
  free(n);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty_tree),
      cmocka_unit_test(test_invalid_insert),
      cmocka_unit_test(test_edges),
      cmocka_unit_test(test_equal_starts_keep_insertion_order),
      cmocka_unit_test(test_sequential_large),
      cmocka_unit_test(test_model_disjoint),
      cmocka_unit_test(test_model_overlapping),
      cmocka_unit_test(test_model_dense_duplicates),
      cmocka_unit_test(test_model_extremes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
