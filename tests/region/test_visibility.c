/* test_visibility.c: region_visibility against a brute-force model. Random adds, maps, unmaps
 * and removes (fixed seeds) under both overlap policies; after each step the piece map, the
 * region states, the diff (removed, added, changed segments) and the trees are compared with
 * a per-page computation of the winners. Plans that are aborted must change nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "mb_errors.h"
#include "region_manager.h"
#include "region_visibility.h"
#include "rm_model.h"
#include "test_util.h"

#define PG 4096u
#define NPAGES 96
#define NREG 48

typedef struct mregion {
  mb__vis_region vis;
  bool live;
  uint64_t start, end; /* pages */
  uint8_t prio;
  uint64_t order;      /* model add order */
  bool mapped;
} mregion;

typedef struct model {
  mb__vis_set set;
  mregion r[NREG];
  uint64_t order;
  uint64_t rng;
  int overlap;
} model;

static uint64_t rnd(model *m) { return tu_xorshift(&m->rng); }

static uint64_t below(model *m, uint64_t n) { return rnd(m) % n; }

static mregion *mr_of(mb__vis_region *v) {
  return v ? mb_rtree_entry(v, mregion, vis) : NULL;
}

/* The model's winner at page pg (NULL: nobody), with region `chg` taken as mapped=`as`. */
static mregion *winner(model *m, uint64_t pg, const mregion *chg, bool as) {
  mregion *w = NULL;
  for (int i = 0; i < NREG; i++) {
    mregion *r = &m->r[i];
    bool mapped = r == chg ? as : r->mapped;
    if (!r->live || !mapped || pg < r->start || pg >= r->end) continue;
    if (!w || r->prio > w->prio || (r->prio == w->prio && r->order < w->order)) w = r;
  }
  return w;
}

static int model_admit(model *m, uint64_t s, uint64_t e, uint8_t prio) {
  if (m->overlap == MB_OVERLAP_ANY) return 0;
  for (int i = 0; i < NREG; i++) {
    mregion *o = &m->r[i];
    if (!o->live || o->end <= s || e <= o->start) continue;
    if (!rm_model_nests(o->start, o->end, o->prio, s, e, prio)) return MB_E_OVERLAP;
  }
  return 0;
}

/* Compares the set's pieces and states with the model. */
static void check(model *m) {
  assert_int_equal(mb__rtree_validate(&m->set.regions), 0);
  assert_int_equal(mb__rtree_validate(&m->set.pieces), 0);
  mregion *win[NPAGES];
  for (uint64_t p = 0; p < NPAGES; p++) win[p] = winner(m, p, NULL, false);
  /* expected pieces: maximal runs of one winner */
  mb__vis_piece *pc = mb__vis_first_piece(&m->set, 0, UINT64_MAX);
  for (uint64_t p = 0; p < NPAGES;) {
    uint64_t q = p + 1;
    while (q < NPAGES && win[q] == win[p]) q++;
    if (win[p] != NULL) {
      assert_non_null(pc);
      assert_int_equal(pc->node.start, p * PG);
      assert_int_equal(pc->node.end, q * PG);
      assert_ptr_equal(mr_of(pc->region), win[p]);
      pc = mb__vis_next_piece(pc, 0, UINT64_MAX);
    }
    p = q;
  }
  assert_null(pc);
  for (int i = 0; i < NREG; i++) {
    mregion *r = &m->r[i];
    if (!r->live) continue;
    uint64_t won = 0;
    for (uint64_t p = r->start; p < r->end; p++) won += win[p] == r;
    int want = !r->mapped ? MB_REGION_UNMAPPED
               : won == 0 ? MB_REGION_HIDDEN
               : won == r->end - r->start ? MB_REGION_ACTIVE
                                          : MB_REGION_PARTIAL;
    assert_int_equal(mb__vis_state(&r->vis), want);
    assert_int_equal(r->vis.visible, won * PG);
    uint32_t overlaps = 0;
    for (int j = 0; j < NREG; j++)
      overlaps += j != i && m->r[j].live && m->r[j].start < r->end && r->start < m->r[j].end;
    assert_int_equal(r->vis.overlaps, overlaps);
    if (m->overlap == MB_OVERLAP_NESTED) assert_int_not_equal(want, MB_REGION_PARTIAL);
    /* a region's own pieces, as the region manager walks them */
    uint64_t seen = 0;
    for (mb__vis_piece *q = mb__vis_first_piece_of(&m->set, &r->vis, r->start * PG, r->end * PG); q;
         q = mb__vis_next_piece_of(q, &r->vis, r->start * PG, r->end * PG)) {
      assert_ptr_equal(q->region, &r->vis);
      seen += q->node.end - q->node.start;
    }
    assert_int_equal(seen, won * PG);
  }
}

/* Checks a plan for r -> mapped against the model (before it is applied). */
static void check_diff(model *m, mregion *r, bool mapped, const mb__vis_diff *d) {
  mregion *before[NPAGES], *after[NPAGES];
  for (uint64_t p = 0; p < NPAGES; p++) {
    before[p] = winner(m, p, NULL, false);
    after[p] = winner(m, p, r, mapped);
  }
  /* segments: exactly the pages whose winner changes, with the right winners */
  bool in_seg[NPAGES] = {0};
  for (size_t i = 0; i < d->nsegs; i++) {
    const mb__vis_seg *s = &d->segs[i];
    assert_true(s->start < s->end);
    assert_true(s->old_winner != s->new_winner);
    if (i > 0) assert_true(d->segs[i - 1].end <= s->start);
    for (uint64_t a = s->start; a < s->end; a += PG) {
      uint64_t p = a / PG;
      assert_ptr_equal(mr_of(s->old_winner), before[p]);
      assert_ptr_equal(mr_of(s->new_winner), after[p]);
      in_seg[p] = true;
    }
  }
  for (uint64_t p = 0; p < NPAGES; p++) assert_int_equal(in_seg[p], before[p] != after[p]);
  /* removed pieces are linked, ascending; added ones are new, ascending, maximal runs */
  for (size_t i = 0; i < d->nremoved; i++) {
    mb__vis_piece *p = d->removed[i];
    assert_non_null(mb__vis_first_piece(&m->set, p->node.start, p->node.end));
    if (i > 0) assert_true(d->removed[i - 1]->node.end <= p->node.start);
  }
  for (size_t i = 0; i < d->nadded; i++) {
    mb__vis_piece *p = d->added[i];
    uint64_t s = p->node.start / PG, e = p->node.end / PG;
    for (uint64_t q = s; q < e; q++) assert_ptr_equal(after[q], mr_of(p->region));
    assert_true(s == 0 || after[s - 1] != after[s]);
    assert_true(e == NPAGES || after[e] != after[s]);
    if (i > 0) assert_true(d->added[i - 1]->node.end <= p->node.start);
  }
}

/* A region that overlaps no other takes a fast path: its diff must equal the general one's
 * (forced by overstating r's overlaps, which only bounds the general planner's buffers). */
static void check_alone(model *m, mregion *r, bool mapped) {
  if (r->vis.overlaps != 0 || r->mapped == mapped)
    return;
  mb__vis_diff d;
  assert_int_equal(mb__vis_plan(&m->set, &r->vis, mapped, &d), 0);
  assert_int_equal(d.nremoved + d.nadded, 1);
  assert_int_equal(d.nsegs, 1);
  mb__vis_seg seg = d.segs[0];
  mb__vis_piece *removed = d.nremoved ? d.removed[0] : NULL;
  mb__vis_piece added = d.nadded ? *d.added[0] : (mb__vis_piece){0};
  mb__vis_abort(&d);
  r->vis.overlaps = 1;
  assert_int_equal(mb__vis_plan(&m->set, &r->vis, mapped, &d), 0);
  r->vis.overlaps = 0;
  assert_int_equal(d.nsegs, 1);
  assert_memory_equal(&d.segs[0], &seg, sizeof seg);
  assert_int_equal(d.nremoved, removed != NULL);
  if (removed != NULL)
    assert_ptr_equal(d.removed[0], removed);
  assert_int_equal(d.nadded, added.region != NULL);
  if (added.region != NULL) {
    assert_int_equal(d.added[0]->node.start, added.node.start);
    assert_int_equal(d.added[0]->node.end, added.node.end);
    assert_ptr_equal(d.added[0]->region, added.region);
  }
  mb__vis_abort(&d);
}

static void op_map(model *m, mregion *r, bool mapped) {
  mb__vis_diff d;
  check_alone(m, r, mapped);
  assert_int_equal(mb__vis_plan(&m->set, &r->vis, mapped, &d), 0);
  check_diff(m, r, mapped, &d);
  if (below(m, 4) == 0) {
    mb__vis_abort(&d);
    check(m); /* nothing changed */
    return;
  }
  mb__vis_commit(&m->set, &d);
  r->mapped = mapped;
}

static void step(model *m, uint64_t maxsize) {
  int i = (int)below(m, NREG);
  mregion *r = &m->r[i];
  if (!r->live) {
    uint64_t size = 1 + below(m, maxsize), start = below(m, NPAGES - size + 1);
    if (m->overlap == MB_OVERLAP_NESTED && below(m, 2)) {
      /* buddy-aligned ranges make nesting likely */
      size = 1ull << below(m, 7);
      start = below(m, NPAGES / size) * size;
    }
    uint8_t prio = (uint8_t)below(m, 4);
    int want = model_admit(m, start, start + size, prio);
    assert_int_equal(mb__vis_admit(&m->set, start * PG, (start + size) * PG, prio), want);
    if (want) return;
    *r = (mregion){.live = true, .start = start, .end = start + size, .prio = prio, .order = m->order++};
    mb__vis_insert(&m->set, &r->vis, start * PG, (start + size) * PG, prio);
    return;
  }
  switch (below(m, 4)) {
  case 0:
  case 1:
    op_map(m, r, !r->mapped);
    break;
  case 2:
    op_map(m, r, r->mapped); /* no change: empty diff */
    break;
  default:
    if (r->mapped) op_map(m, r, false);
    if (!r->mapped) {
      mb__vis_remove(&m->set, &r->vis);
      r->live = false;
    }
    break;
  }
}

static void run(int overlap, uint64_t seed, uint64_t maxsize, int steps) {
  model *m = calloc(1, sizeof *m);
  assert_non_null(m);
  m->rng = seed;
  m->overlap = overlap;
  mb__vis_init(&m->set, overlap);
  for (int s = 0; s < steps; s++) {
    step(m, maxsize);
    check(m);
  }
  mb__vis_fini(&m->set);
  free(m);
}

static void test_random_nested(void **unused) {
  (void)unused;
  for (uint64_t seed = 1; seed <= 12; seed++) run(MB_OVERLAP_NESTED, seed * 0x9e3779b97f4a7c15ull, 64, 1500);
}

static void test_random_any(void **unused) {
  (void)unused;
  for (uint64_t seed = 1; seed <= 12; seed++) run(MB_OVERLAP_ANY, seed * 0x2545f4914f6cdd1dull, 40, 1500);
}

static void test_random_any_small(void **unused) {
  (void)unused;
  for (uint64_t seed = 1; seed <= 12; seed++) run(MB_OVERLAP_ANY, seed * 0x7a3c1b95ull + 7, 6, 1500);
}

/* Hand-made cases: a piece splits around a higher region, merges back, ties. */
static void test_split_merge(void **unused) {
  (void)unused;
  mb__vis_set s;
  mb__vis_region a = {0}, b = {0}, c = {0};
  mb__vis_diff d;
  mb__vis_init(&s, MB_OVERLAP_ANY);
  mb__vis_insert(&s, &a, 0, 100 * PG, 1);
  mb__vis_insert(&s, &b, 40 * PG, 60 * PG, 2);
  mb__vis_insert(&s, &c, 40 * PG, 60 * PG, 2); /* equal priority, added later: loses */
  assert_int_equal(mb__vis_plan(&s, &a, true, &d), 0);
  assert_int_equal(d.nremoved, 0);
  assert_int_equal(d.nadded, 1);
  mb__vis_commit(&s, &d);
  assert_int_equal(mb__vis_state(&a), MB_REGION_ACTIVE);

  assert_int_equal(mb__vis_plan(&s, &c, true, &d), 0);
  mb__vis_commit(&s, &d);
  assert_int_equal(mb__vis_plan(&s, &b, true, &d), 0); /* b beats c: the c piece goes */
  assert_int_equal(d.nremoved, 1);
  assert_int_equal(d.nadded, 1);
  assert_int_equal(d.nsegs, 1);
  assert_ptr_equal(d.segs[0].old_winner, &c);
  assert_ptr_equal(d.segs[0].new_winner, &b);
  mb__vis_commit(&s, &d);
  assert_int_equal(mb__vis_state(&a), MB_REGION_PARTIAL);
  assert_int_equal(mb__vis_state(&b), MB_REGION_ACTIVE);
  assert_int_equal(mb__vis_state(&c), MB_REGION_HIDDEN);

  assert_int_equal(mb__vis_plan(&s, &b, false, &d), 0);
  mb__vis_commit(&s, &d);
  assert_int_equal(mb__vis_plan(&s, &c, false, &d), 0);
  /* a's two pieces and c's piece go; one piece of a comes; only [40, 60) changes winner */
  assert_int_equal(d.nremoved, 3);
  assert_int_equal(d.nadded, 1);
  assert_int_equal(d.added[0]->node.start, 0);
  assert_int_equal(d.added[0]->node.end, 100 * PG);
  assert_int_equal(d.nsegs, 1);
  assert_int_equal(d.segs[0].start, 40 * PG);
  assert_int_equal(d.segs[0].end, 60 * PG);
  mb__vis_commit(&s, &d);
  assert_int_equal(mb__vis_state(&a), MB_REGION_ACTIVE);
  assert_int_equal(mb__vis_state(&c), MB_REGION_UNMAPPED);
  mb__vis_fini(&s);
}

static void test_admit_nested(void **unused) {
  (void)unused;
  mb__vis_set s;
  mb__vis_region ram = {0};
  mb__vis_init(&s, MB_OVERLAP_NESTED);
  mb__vis_insert(&s, &ram, 0, 256 * PG, 10);
  assert_int_equal(mb__vis_admit(&s, 16 * PG, 32 * PG, 1), 0);            /* inside, lower */
  assert_int_equal(mb__vis_admit(&s, 0, 512 * PG, 20), 0);                /* around, higher */
  assert_int_equal(mb__vis_admit(&s, 0, 256 * PG, 10), 0);                /* identical, equal */
  assert_int_equal(mb__vis_admit(&s, 0, 16 * PG, 10), MB_E_OVERLAP);      /* equal, other range */
  assert_int_equal(mb__vis_admit(&s, 0, 16 * PG, 15), MB_E_OVERLAP);      /* higher, inside */
  assert_int_equal(mb__vis_admit(&s, 250 * PG, 260 * PG, 5), MB_E_OVERLAP); /* straddles */
  assert_int_equal(mb__vis_admit(&s, 0, 512 * PG, 5), MB_E_OVERLAP);      /* lower, around */
  assert_int_equal(mb__vis_admit(&s, 256 * PG, 512 * PG, 10), 0);         /* touching only */
  mb__vis_remove(&s, &ram);
  mb__vis_fini(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_admit_nested),
      cmocka_unit_test(test_split_merge),
      cmocka_unit_test(test_random_nested),
      cmocka_unit_test(test_random_any),
      cmocka_unit_test(test_random_any_small),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
