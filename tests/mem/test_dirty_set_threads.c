/* test_dirty_set_threads.c: the set of dirty pages under concurrency (also run under TSan).
 * Three threads write and mark pages while this thread takes random ranges, as ranges (a
 * small array, so takes stop midway and put bits back) or as bitmaps; then one last take of
 * everything. A "write" is an increment of the page's version (an atomic counter standing for
 * its bytes), made before the mark, as every writer of guest memory does.
 *
 * What is checked, for every page p, over all the answers of all the takes:
 *   - answered at least once if and only if it was marked at least once (nothing lost,
 *     nothing invented);
 *   - answered at most as often as it was marked (each answer needs a mark after the take
 *     before it: a single mark is never answered twice);
 *   - the versions seen at its answers (read right after the take) never go down, and the
 *     last one is the page's final version: its last write was answered after it was made;
 *   - at the end of each of PHASES phases (the writers wait while this thread looks), a page
 *     whose version moved since its last answer is dirty in the set: a write whose mark was
 *     lost is found even when a later write of the same page would have hidden it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dirty_set.h"
#include "test_util.h"

#define PG 4096ull
#define BLOCK 32768                /* pages of one bit of the set's summary (128 MiB) */
#define PAGES (3 * BLOCK + 1000)   /* 3 blocks and a part of one */
#define WRITERS 3
#define PHASES 300
#define WRITES 3000 /* per writer and phase */

typedef struct shared {
  mb_dirty_set *s;
  _Atomic uint32_t version[PAGES];
  uint32_t marks[WRITERS][PAGES]; /* each writer's own counts */
  atomic_int done;                /* writers at the end of the phase */
  pthread_barrier_t next;         /* the writers and this thread: the next phase begins */
} shared;

typedef struct writer {
  shared *sh;
  int id;
} writer;

/* Pages to write: a hot word shared by every writer (pages 0..63), the edges of blocks, or
 * anywhere; sometimes a run of several pages marked in one call. */
static uint64_t pick(uint64_t r) {
  switch (r % 4) {
  case 0: return (r >> 8) % 64;
  case 1: return (1 + (r >> 8) % 3) * BLOCK - 32 + (r >> 16) % 64;
  default: return (r >> 8) % PAGES;
  }
}

static void *write_loop(void *arg) {
  writer *w = arg;
  shared *sh = w->sh;
  uint64_t rng = 0x1234567ull * (uint64_t)(w->id + 1);
  for (int i = 0; i < PHASES * WRITES; i++) {
    if (i % WRITES == 0 && i > 0) {
      atomic_fetch_add(&sh->done, 1);
      pthread_barrier_wait(&sh->next);
    }
    uint64_t r = tu_xorshift(&rng);
    uint64_t first = pick(r);
    uint64_t n = r % 16 == 1 ? 1 + (r >> 32) % 100 : 1;
    if (first + n > PAGES)
      n = PAGES - first;
    for (uint64_t p = first; p < first + n; p++) {
      atomic_fetch_add_explicit(&sh->version[p], 1, memory_order_relaxed);
      w->sh->marks[w->id][p]++;
    }
    if (mb_dirty_set_mark_range(sh->s, first * PG + (r >> 40) % PG, (n - 1) * PG + 1) != 0)
      abort(); /* not cmocka's assert: this is not the test's thread */
  }
  atomic_fetch_add(&sh->done, 1);
  return NULL;
}

typedef struct tally {
  uint32_t answers[PAGES];
  uint32_t seen[PAGES]; /* the version seen at the last answer */
} tally;

static void answer(shared *sh, tally *t, uint64_t p) {
  /* seq_cst: a mark that found its bit set only fenced its write (dirty_set.c), and the C11
   * rules order that fence before a seq_cst load after the take, not before a relaxed one */
  uint32_t v = atomic_load(&sh->version[p]);
  assert_true(v >= 1);          /* never answered before its first write */
  assert_true(v >= t->seen[p]); /* versions never go down */
  t->seen[p] = v;
  t->answers[p]++;
}

static void take_ranges(shared *sh, tally *t, uint64_t first, uint64_t end) {
  mb_range r[3];
  uint64_t gpa = first * PG, next;
  while (gpa < end * PG) {
    int64_t n = mb_dirty_set_take_ranges(sh->s, gpa, end * PG - gpa, r, 3, &next);
    assert_true(n >= 0);
    for (int64_t i = 0; i < n; i++)
      for (uint64_t p = r[i].start / PG; p < r[i].end / PG; p++)
        answer(sh, t, p);
    gpa = next;
  }
}

static void take_bitmap(shared *sh, tally *t, uint64_t first, uint64_t end) {
  uint64_t bits[PAGES / 64 + 1];
  int64_t n = mb_dirty_set_take_bitmap(sh->s, first * PG, (end - first) * PG, bits);
  assert_true(n >= 0);
  for (uint64_t i = 0; i < end - first; i++)
    if (bits[i / 64] >> (i % 64) & 1)
      answer(sh, t, first + i);
}

/* A take of a random range: a few pages to a few blocks, as ranges or as a bitmap. */
static void take_random(shared *sh, tally *t, uint64_t *rng) {
  uint64_t r = tu_xorshift(rng);
  uint64_t first = r % 3 ? (r >> 4) % PAGES : (r >> 4) % 4 * BLOCK; /* whole blocks too */
  uint64_t len = r % 5 ? 1 + (r >> 20) % 2048 : r % 3 == 0 ? BLOCK : 1 + (r >> 20) % PAGES;
  uint64_t end = first + len < PAGES ? first + len : PAGES;
  if (r % 2)
    take_ranges(sh, t, first, end);
  else
    take_bitmap(sh, t, first, end);
}

static void test_marks_race_takes(void **unused) {
  (void)unused;
  shared *sh = calloc(1, sizeof *sh);
  tally *t = calloc(1, sizeof *t);
  assert_true(sh && t);
  assert_int_equal(mb_dirty_set_create(PAGES * PG, &sh->s), 0);
  writer w[WRITERS];
  pthread_t th[WRITERS];
  assert_int_equal(pthread_barrier_init(&sh->next, NULL, WRITERS + 1), 0);
  for (int i = 0; i < WRITERS; i++) {
    w[i] = (writer){sh, i};
    assert_int_equal(pthread_create(&th[i], NULL, write_loop, &w[i]), 0);
  }
  uint64_t rng = 77;
  long takes = 0;
  for (int phase = 0; phase < PHASES; phase++) {
    while (atomic_load(&sh->done) < WRITERS) {
      take_random(sh, t, &rng);
      takes++;
    }
    atomic_store(&sh->done, 0);
    for (uint64_t p = 0; p < PAGES; p++) /* every write not yet answered is still marked */
      if (atomic_load(&sh->version[p]) != t->seen[p] && !mb_dirty_set_any(sh->s, p * PG, PG))
        fail_msg("phase %d: page %llu written (version %u, answered %u) and not dirty", phase,
                 (unsigned long long)p, atomic_load(&sh->version[p]), t->seen[p]);
    if (phase + 1 < PHASES)
      pthread_barrier_wait(&sh->next);
  }
  for (int i = 0; i < WRITERS; i++)
    assert_int_equal(pthread_join(th[i], NULL), 0);
  take_ranges(sh, t, 0, PAGES); /* the final sync */
  assert_false(mb_dirty_set_any(sh->s, 0, PAGES * PG));
  uint64_t marked_pages = 0;
  for (uint64_t p = 0; p < PAGES; p++) {
    uint32_t marks = 0;
    for (int i = 0; i < WRITERS; i++)
      marks += sh->marks[i][p];
    marked_pages += marks > 0;
    assert_int_equal(t->answers[p] > 0, marks > 0);
    assert_true(t->answers[p] <= marks);
    assert_int_equal(t->seen[p], atomic_load(&sh->version[p]));
  }
  assert_true(marked_pages > PAGES / 3);
  print_message("%ld takes while writing; %llu pages marked\n", takes,
                (unsigned long long)marked_pages);
  pthread_barrier_destroy(&sh->next);
  mb_dirty_set_destroy(sh->s);
  free(sh);
  free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_marks_race_takes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
