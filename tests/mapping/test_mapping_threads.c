/* test_mapping_threads.c: the mapping manager and VA mappers on started loops, with the test
 * thread (and threads of its own) playing the region manager and the VMM code that reads
 * guest memory: lazy mappers resolving on access, mappers on several loops, readers racing
 * unmaps, concurrent first touches. Iteration counts are fixed; nothing is timed. */
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "mp_util.h"

#define R(gpa, size, w) {(gpa), (size), (w)}

static int fds_before;

static void begin(void) {
  assert_int_equal(mb_access_reinstall(), 0); /* cmocka puts its handlers in front per test */
  fds_before = tu_fd_count();
}

static void end(void) {
  assert_int_equal(tu_fd_count(), fds_before); /* every object reference was dropped */
}

/* ---- one lazy mapper: the manager on loop "mm", the mapper on a loop of its own ---------- */

typedef struct lazy_rig {
  mb_loop *lm, *lv;
  mb_addr mm;
  mb_vam *lazy;
} lazy_rig;

static void rig_open(lazy_rig *r, const char *lv_name, uint64_t max_addr) {
  begin();
  r->lm = tu_start("mm");
  r->lv = tu_start(lv_name);
  r->mm = mp_mm_create(r->lm);
  r->lazy = mp_vam_add(r->lv, r->mm, max_addr, false);
}

static void rig_close(lazy_rig *r) {
  mp_vam_drop(r->lv, r->mm, r->lazy);
  tu_stop(r->lv);
  tu_stop(r->lm);
  end();
}

/* ---- a lazy mapper --------------------------------------------------------------------------- */

typedef struct on_loop_read {
  mb_vam *v;
  uint64_t gpa;
  int rc;
} on_loop_read;

static void read_on_loop(mb_loop *l, void *arg) {
  (void)l;
  on_loop_read *r = arg;
  uint8_t b;
  r->rc = mb_vam_read(r->v, r->gpa, &b, 1);
}

static void test_lazy_establishes_on_access(void **state) {
  (void)state;
  lazy_rig rig;
  rig_open(&rig, "vam", 64 * MiB);
  mb_object *a = tu_memfd_pages("mp", 16 * PAGE, 40), *b = tu_memfd_pages("mp", 16 * PAGE, 140);
  assert_int_equal(mp_map1(rig.mm, a, 0x100000, 8 * PAGE, 2 * PAGE, true), 0);
  assert_int_equal(mp_map1(rig.mm, b, 0x200000, 4 * PAGE, 0, false), 0);
  MP_EXPECT_NO_RANGES(rig.lazy);

  /* the first read resolves the whole mapping; later ones do not fault */
  mp_expect_bytes(rig.lazy, 0x100000 + PAGE + 5, 100, 0x100000, 2 * PAGE, 40);
  MP_EXPECT_RANGES(rig.lazy, R(0x100000, 8 * PAGE, true));
  mp_expect_bytes(rig.lazy, 0x100000, 8 * PAGE, 0x100000, 2 * PAGE, 40);
  mb_vam_stats s = mb_vam_stats_get(rig.lazy);
  assert_int_equal(s.faults, 1);
  assert_int_equal(s.resolved, 1);
  assert_int_equal(s.unmapped, 0);

  /* a write to a read-only mapping: resolved (read-only), then readonly */
  uint8_t buf[2 * PAGE] = {0};
  assert_int_equal(mb_vam_write(rig.lazy, 0x200000 + PAGE, buf, 4), MB_E_READONLY);
  MP_EXPECT_RANGES(rig.lazy, R(0x100000, 8 * PAGE, true), R(0x200000, 4 * PAGE, false));
  mp_expect_bytes(rig.lazy, 0x200000, 4 * PAGE, 0x200000, 0, 140);
  /* holes: unmapped, after asking */
  assert_int_equal(mb_vam_read(rig.lazy, 0x100000 + 7 * PAGE, buf, 2 * PAGE), MB_E_UNMAPPED);
  assert_int_equal(mb_vam_write(rig.lazy, 0x300000, buf, 1), MB_E_UNMAPPED);
  s = mb_vam_stats_get(rig.lazy);
  assert_int_equal(s.resolved, 2);
  assert_int_equal(s.unmapped, 2);

  /* unmapped: torn down in the lazy mapper too, and its next access finds nothing */
  assert_int_equal(mp_unmap(rig.mm, 0x100000, 8 * PAGE), 0);
  MP_EXPECT_RANGES(rig.lazy, R(0x200000, 4 * PAGE, false));
  assert_int_equal(mb_vam_read(rig.lazy, 0x100000, buf, 1), MB_E_UNMAPPED);
  /* mapped again with other contents: the next access resolves the new mapping */
  assert_int_equal(mp_map1(rig.mm, b, 0x100000, 8 * PAGE, 8 * PAGE, true), 0);
  mp_expect_bytes(rig.lazy, 0x100000, 8 * PAGE, 0x100000, 8 * PAGE, 140);
  memset(buf, 0x5a, PAGE);
  assert_int_equal(mb_vam_write(rig.lazy, 0x100000 + 3 * PAGE, buf, PAGE), 0);

  /* never block a loop that has to answer */
  on_loop_read r = {rig.lazy, 0x180000, 0};
  assert_int_equal(mb_loop_exec(rig.lv, read_on_loop, &r), 0);
  assert_int_equal(r.rc, MB_EDEADLK);
  r.rc = 0;
  assert_int_equal(mb_loop_exec(rig.lm, read_on_loop, &r), 0);
  assert_int_equal(r.rc, MB_EDEADLK);
  r.gpa = 0x100000; /* established: no question to ask */
  assert_int_equal(mb_loop_exec(rig.lv, read_on_loop, &r), 0);
  assert_int_equal(r.rc, 0);

  /* resolved, but the backing cannot serve it: bounded retries, then fault */
  mb_object *c = tu_memfd_pages("mp", 4 * PAGE, 1);
  assert_int_equal(mp_map1(rig.mm, c, 0x400000, 4 * PAGE, 0, true), 0);
  assert_int_equal(ftruncate(mb_object_fd(c), PAGE), 0);
  assert_int_equal(mb_vam_read(rig.lazy, 0x400000 + 2 * PAGE, buf, 1), MB_E_FAULT);
  mp_expect_bytes(rig.lazy, 0x400000, PAGE, 0x400000, 0, 1);
  mb_object_unref(c);

  mb_object_unref(a);
  mb_object_unref(b);
  rig_close(&rig);
}

/* ---- mappers on different loops -------------------------------------------------------------- */

static void test_mappers_on_different_loops(void **state) {
  (void)state;
  begin();
  mb_loop *l[4] = {tu_start("mm"), tu_start("m1"), tu_start("m2"), tu_start("m3")};
  mb_addr mm = mp_mm_create(l[0]);
  mb_object *a = tu_memfd_pages("mp", 64 * PAGE, 90);
  assert_int_equal(mp_map1(mm, a, 0, 4 * PAGE, 0, true), 0);
  mb_vam *e[3];
  for (int i = 0; i < 3; i++) {
    e[i] = mp_vam_add(l[i + 1], mm, 64 * MiB, true);
    MP_EXPECT_RANGES(e[i], R(0, 4 * PAGE, true)); /* replayed */
  }
  mb_vam *lazy = mp_vam_add(l[3], mm, 64 * MiB, false);
  mb_vam *small = mp_vam_add(l[2], mm, 1 * MiB, true);

  mb_map_entry batch[] = {
      {0x10000, 4 * PAGE, a, 8 * PAGE, true},
      {0x14000, 4 * PAGE, a, 16 * PAGE, false},
      {0x200000, 4 * PAGE, a, 24 * PAGE, true}, /* beyond `small` */
  };
  assert_int_equal(mp_map(mm, batch, 3), MB_E_INVALID);
  for (int i = 0; i < 3; i++)
    MP_EXPECT_RANGES(e[i], R(0, 4 * PAGE, true));
  MP_EXPECT_RANGES(small, R(0, 4 * PAGE, true));
  assert_int_equal(mp_map(mm, batch, 2), 0);
  for (int i = 0; i < 3; i++) {
    MP_EXPECT_RANGES(e[i], R(0, 4 * PAGE, true), R(0x10000, 4 * PAGE, true),
                     R(0x14000, 4 * PAGE, false));
    mp_expect_bytes(e[i], 0x10000, 4 * PAGE, 0x10000, 8 * PAGE, 90);
    mp_expect_bytes(e[i], 0x14000, 4 * PAGE, 0x14000, 16 * PAGE, 90);
  }
  mp_expect_bytes(lazy, 0x14000, 4 * PAGE, 0x14000, 16 * PAGE, 90);
  /* a write through one loop's mapper is read through another's */
  uint8_t in[8] = {1, 2, 3, 4, 5, 6, 7, 8}, out[8] = {0};
  assert_int_equal(mb_vam_write(e[0], 0x10000 + 2 * PAGE + 4092, in, 8), 0);
  assert_int_equal(mb_vam_read(e[2], 0x10000 + 2 * PAGE + 4092, out, 8), 0);
  assert_memory_equal(in, out, 8);
  memset(out, 0, 8);
  assert_int_equal(mb_vam_read(lazy, 0x10000 + 2 * PAGE + 4092, out, 8), 0);
  assert_memory_equal(in, out, 8);
  assert_int_equal(mb_vam_write(e[1], 0x10000 + 3 * PAGE + 4092, in, 8), MB_E_READONLY);
  assert_int_equal(mb_vam_write(lazy, 0x10000 + 3 * PAGE + 4092, in, 8), MB_E_READONLY);

  assert_int_equal(mp_unmap(mm, 0x12000, 0x4000), 0);
  mb_vam *all[] = {e[0], e[1], e[2], small};
  for (int i = 0; i < 4; i++)
    MP_EXPECT_RANGES(all[i], R(0, 4 * PAGE, true), R(0x10000, 2 * PAGE, true),
                     R(0x16000, 2 * PAGE, false));
  MP_EXPECT_RANGES(lazy, R(0x10000, 2 * PAGE, true), R(0x16000, 2 * PAGE, false));
  mp_expect_bytes(e[1], 0x16000, 2 * PAGE, 0x14000, 16 * PAGE, 90);

  mb_object_unref(a);
  for (int i = 0; i < 3; i++) {
    mp_vam_drop(l[i + 1], mm, e[i]);
  }
  /* the loops stop with `lazy` and `small` still registered; they are freed afterwards */
  for (int i = 3; i >= 0; i--)
    tu_stop(l[i]);
  mb_vam_destroy(lazy);
  mb_vam_destroy(small);
  end();
}

/* ---- readers racing unmaps ------------------------------------------------------------------- */

/* 64 pages of guest memory at BASE show obj[gpa - BASE]: however the test cuts and re-maps
 * them, a byte read is either the object's or the access fails unmapped. */
enum { BASE = 0x100000, SPAN_PAGES = 64, READERS = 3, READS = 5000, CHURN = 1000 };

typedef struct reader {
  mb_vam *v;
  atomic_bool *churning;
  uint32_t seed;
  uint64_t ok, unmapped;
  const char *error;
  pthread_t thread;
} reader;

static uint32_t next_rand(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

static void *reader_main(void *p) {
  reader *r = p;
  static _Thread_local uint8_t buf[3 * PAGE];
  /* at least READS reads, and on for as long as the churn runs */
  for (int i = 0; (i < READS || atomic_load(r->churning)) && r->error == NULL; i++) {
    size_t len = 1 + next_rand(&r->seed) % (2 * PAGE);
    uint64_t off = next_rand(&r->seed) % (SPAN_PAGES * PAGE - len);
    int rc = mb_vam_read(r->v, BASE + off, buf, len);
    if (rc == MB_E_UNMAPPED) {
      r->unmapped++;
    } else if (rc != 0) {
      r->error = "a read failed with another error";
    } else if (!mp_bytes_ok(buf, len, BASE + off, BASE, 0, 70)) {
      r->error = "a read returned wrong bytes";
    } else {
      r->ok++;
    }
  }
  return NULL;
}

static void test_lazy_reads_race_unmaps(void **state) {
  (void)state;
  begin();
  mb_loop *lm = tu_start("mm"), *l1 = tu_start("lazy"), *l2 = tu_start("eager");
  mb_addr mm = mp_mm_create(lm);
  mb_object *obj = tu_memfd_pages("mp", SPAN_PAGES * PAGE, 70);
  mb_map_entry pieces[SPAN_PAGES / 4];
  for (int i = 0; i < SPAN_PAGES / 4; i++)
    pieces[i] = (mb_map_entry){BASE + i * 4 * PAGE, 4 * PAGE, obj, i * 4 * PAGE, true};
  assert_int_equal(mp_map(mm, pieces, SPAN_PAGES / 4), 0);
  mb_vam *lazy = mp_vam_create(l1, mm, 64 * MiB, false);
  mb_vam *eager = mp_vam_create(l2, mm, 64 * MiB, true);
  assert_int_equal(mp_add_mapper(mm, lazy, false), 0);
  assert_int_equal(mp_add_mapper(mm, eager, true), 0);

  reader rd[READERS + 1];
  atomic_bool churning = true;
  for (int i = 0; i <= READERS; i++) {
    rd[i] = (reader){i < READERS ? lazy : eager, &churning, 0x9e3779b9u * (i + 1), 0, 0, NULL, 0};
    assert_int_equal(pthread_create(&rd[i].thread, NULL, reader_main, &rd[i]), 0);
  }
  /* Churn: cut a random stretch, then map it back as one mapping. */
  uint32_t seed = 12345;
  for (int i = 0; i < CHURN; i++) {
    uint64_t first = next_rand(&seed) % SPAN_PAGES;
    uint64_t n = 1 + next_rand(&seed) % (SPAN_PAGES - first);
    assert_int_equal(mp_unmap(mm, BASE + first * PAGE, n * PAGE), 0);
    assert_int_equal(mp_map1(mm, obj, BASE + first * PAGE, n * PAGE, first * PAGE, true), 0);
  }
  atomic_store(&churning, false);
  uint64_t ok = 0, unmapped = 0;
  for (int i = 0; i <= READERS; i++) {
    assert_int_equal(pthread_join(rd[i].thread, NULL), 0);
    if (rd[i].error != NULL)
      fail_msg("reader %d: %s", i, rd[i].error);
    ok += rd[i].ok;
    unmapped += rd[i].unmapped;
  }
  assert_true(ok + unmapped >= (READERS + 1) * READS);
  mb_vam_stats s = mb_vam_stats_get(lazy);
  assert_true(s.resolved >= 1);
  /* afterwards everything is mapped again: every read succeeds */
  mp_expect_bytes(lazy, BASE, SPAN_PAGES * PAGE, BASE, 0, 70);
  mp_expect_bytes(eager, BASE, SPAN_PAGES * PAGE, BASE, 0, 70);
  print_message("  reads: %llu ok, %llu unmapped; lazy faults %llu, resolved %llu\n",
                (unsigned long long)ok, (unsigned long long)unmapped,
                (unsigned long long)s.faults, (unsigned long long)s.resolved);

  mb_object_unref(obj);
  assert_int_equal(mp_remove_mapper(mm, lazy), 0);
  assert_int_equal(mp_remove_mapper(mm, eager), 0);
  mp_vam_destroy(l1, lazy);
  mp_vam_destroy(l2, eager);
  tu_stop(l2);
  tu_stop(l1);
  tu_stop(lm);
  end();
}

/* ---- concurrent first touches ---------------------------------------------------------------- */

/* Threads touch one lazy mapping of private anonymous memory at once, each writing its own
 * pages: however the resolves interleave, no write may be lost (establishing a mapping that
 * is already there must keep it, not replace it with fresh zeroed memory). */
enum { TOUCHERS = 6, TOUCH_PAGES = 4 };

typedef struct toucher {
  mb_vam *v;
  int id;
  pthread_barrier_t *go;
  const char *error;
  pthread_t thread;
} toucher;

static void *toucher_main(void *p) {
  toucher *t = p;
  uint8_t page[PAGE];
  pthread_barrier_wait(t->go);
  for (int k = 0; k < TOUCH_PAGES && t->error == NULL; k++) {
    memset(page, t->id * 16 + k + 1, PAGE);
    if (mb_vam_write(t->v, (uint64_t)(t->id * TOUCH_PAGES + k) * PAGE, page, PAGE) != 0)
      t->error = "write failed";
  }
  pthread_barrier_wait(t->go);
  for (int k = 0; k < TOUCH_PAGES && t->error == NULL; k++) {
    if (mb_vam_read(t->v, (uint64_t)(t->id * TOUCH_PAGES + k) * PAGE, page, PAGE) != 0)
      t->error = "read failed";
    else if (page[0] != t->id * 16 + k + 1 || page[PAGE - 1] != t->id * 16 + k + 1)
      t->error = "a write was lost";
  }
  return NULL;
}

static void test_concurrent_first_touch(void **state) {
  (void)state;
  lazy_rig rig;
  rig_open(&rig, "lazy", 16 * MiB);
  for (int round = 0; round < 20; round++) {
    mb_object *anon = NULL;
    assert_int_equal(mb_object_create(MB_OBJECT_ANON, TOUCHERS * TOUCH_PAGES * PAGE, NULL, &anon),
                     0);
    assert_int_equal(mp_map1(rig.mm, anon, 0, TOUCHERS * TOUCH_PAGES * PAGE, 0, true), 0);
    mb_object_unref(anon); /* the manager and the mapper hold it */
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, TOUCHERS);
    toucher t[TOUCHERS];
    for (int i = 0; i < TOUCHERS; i++) {
      t[i] = (toucher){rig.lazy, i, &go, NULL, 0};
      assert_int_equal(pthread_create(&t[i].thread, NULL, toucher_main, &t[i]), 0);
    }
    for (int i = 0; i < TOUCHERS; i++) {
      assert_int_equal(pthread_join(t[i].thread, NULL), 0);
      if (t[i].error != NULL)
        fail_msg("round %d, thread %d: %s", round, i, t[i].error);
    }
    pthread_barrier_destroy(&go);
    MP_EXPECT_RANGES(rig.lazy, R(0, TOUCHERS * TOUCH_PAGES * PAGE, true));
    assert_int_equal(mp_unmap(rig.mm, 0, TOUCHERS * TOUCH_PAGES * PAGE), 0);
    MP_EXPECT_NO_RANGES(rig.lazy);
  }
  rig_close(&rig);
}

/* ---- the manager's loop stops first ---------------------------------------------------------- */

static void test_manager_loop_stops_first(void **state) {
  (void)state;
  lazy_rig rig;
  rig_open(&rig, "lazy", 16 * MiB);
  mb_object *a = tu_memfd_pages("mp", 4 * PAGE, 5);
  assert_int_equal(mp_map1(rig.mm, a, 0, 4 * PAGE, 0, true), 0);
  mp_expect_bytes(rig.lazy, 0, PAGE, 0, 0, 5);
  assert_int_equal(mb_loop_stop(rig.lm), 0); /* freed only once nobody can send to it */
  /* established pages still read; anything else cannot be asked for any more */
  mp_expect_bytes(rig.lazy, PAGE, PAGE, 0, 0, 5);
  uint8_t b;
  assert_int_equal(mb_vam_read(rig.lazy, 8 * PAGE, &b, 1), MB_E_UNMAPPED);
  assert_int_equal(mb_vam_stats_get(rig.lazy).unmapped, 1);
  mb_object_unref(a);
  mp_vam_destroy(rig.lv, rig.lazy);
  tu_stop(rig.lv);
  mb_loop_free(rig.lm);
  end();
}

int main(void) {
  mp_warm_up();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lazy_establishes_on_access),
      cmocka_unit_test(test_mappers_on_different_loops),
      cmocka_unit_test(test_lazy_reads_race_unmaps),
      cmocka_unit_test(test_concurrent_first_touch),
      cmocka_unit_test(test_manager_loop_stops_first),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
