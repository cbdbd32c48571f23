/* test_vtl_protect_stress.c: writers race protection changes (suite 'concurrent', run under
 * TSan). Writer threads write unique sentinels into pages of a protecting VTL-0 mapper, with
 * mb_vam_write and through writable locks, while the test thread protects one page at a time
 * through the mapping manager (`none` or `ro`) and opens it again. After each protect has
 * completed, the page's bytes are read through a mapper that enforces nothing:
 *   - every sentinel there was written by a write that returned 0 and that started before
 *     the test thread looked (its sequence number is below the writer's count read right
 *     after the protect completed);
 *   - after every writer made more attempts, the page is unchanged: nothing landed after.
 * Writers run in bounded bursts the test thread hands out, so nothing is timed. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "mp_util.h"

enum {
  WRITERS = 3,
  PAGES = 4,
  ROUNDS = 48,
  BURST = 600,       /* attempts per writer handed out around each protect */
  AFTER = 40,        /* attempts each writer makes after a protect, before the second look */
  MAXSEQ = 1 << 17,  /* attempts per writer at most (ROUNDS * (BURST + AFTER) fit) */
  PENDING = 1,       /* a write not answered yet (rcs are 0 or negative) */
};

typedef struct writer {
  pthread_t thread;
  int id;
  mb_vam *v;
  _Atomic uint32_t next;   /* attempts started (the next one's sequence number) */
  _Atomic uint32_t target; /* attempts allowed so far */
  _Atomic int rc[MAXSEQ];  /* each attempt's answer, PENDING until it returned */
  _Atomic uint32_t refused; /* attempts answered MB_E_PROTECTED */
} writer;

static atomic_bool stop;

/* Slot (writer, mode) of a page: 8 bytes at (id * 2 + mode) * 8. Mode 0: mb_vam_write; 1: a
 * store through a writable lock. */
static uint64_t slot_off(int id, int mode) {
  return (uint64_t)(id * 2 + mode) * 8;
}

static uint64_t sentinel(int id, int mode, uint32_t seq) {
  return ((uint64_t)(id + 1) << 56) | ((uint64_t)mode << 48) | seq;
}

static uint32_t rand_next(uint32_t *s) {
  *s = *s * 1103515245u + 12345u;
  return *s >> 8;
}

static int attempt(writer *w, uint32_t seq, uint32_t *rnd) {
  uint64_t page = (rand_next(rnd) % PAGES) * PAGE;
  int mode = (int)(seq & 1);
  uint64_t val = sentinel(w->id, mode, seq);
  if (mode == 0)
    return mb_vam_write(w->v, page + slot_off(w->id, 0), &val, sizeof val);
  mb_lock *l;
  int rc = mb_vam_lock(w->v, page, PAGE, true, &l);
  if (rc == 0) {
    __atomic_store_n((uint64_t *)(void *)(mb_vam_lock_ptr(l) + slot_off(w->id, 1)), val,
                     __ATOMIC_RELAXED);
    mb_vam_unlock(l);
  }
  return rc;
}

static void *writer_main(void *arg) {
  writer *w = arg;
  uint32_t rnd = 77u + (uint32_t)w->id * 1000u;
  while (!atomic_load(&stop)) {
    uint32_t seq = atomic_load(&w->next);
    if (seq >= atomic_load(&w->target) || seq >= MAXSEQ) {
      sched_yield();
      continue;
    }
    atomic_store(&w->next, seq + 1); /* started */
    int rc = attempt(w, seq, &rnd);
    if (rc == MB_E_PROTECTED)
      atomic_fetch_add(&w->refused, 1);
    atomic_store(&w->rc[seq], rc);
  }
  return NULL;
}

static void allow(writer *ws, uint32_t more) {
  for (int i = 0; i < WRITERS; i++)
    atomic_store(&ws[i].target, atomic_load(&ws[i].next) + more);
}

/* Waits until every writer has started `count[i]` attempts (the bursts allow them). */
static void wait_started(writer *ws, const uint32_t *count) {
  for (int i = 0; i < WRITERS; i++)
    while (atomic_load(&ws[i].next) < count[i])
      sched_yield();
}

/* Every sentinel on the page was written by an attempt that returned 0 and started before
 * `started` was read (after the protect completed). */
static void check_sentinels(writer *ws, const uint8_t *page, const uint32_t *started) {
  for (int id = 0; id < WRITERS; id++)
    for (int mode = 0; mode < 2; mode++) {
      uint64_t v;
      memcpy(&v, page + slot_off(id, mode), sizeof v);
      if (v == 0)
        continue;
      uint32_t seq = (uint32_t)(v & 0xffffffffu);
      assert_int_equal(v, sentinel(id, mode, seq));
      assert_true(seq < started[id]);
      while (atomic_load(&ws[id].rc[seq]) == PENDING)
        sched_yield(); /* it landed: its answer is on its way */
      assert_int_equal(atomic_load(&ws[id].rc[seq]), 0);
    }
}

static void read_page(mb_vam *obs, uint64_t gpa, uint8_t *buf) {
  assert_int_equal(mb_vam_read(obs, gpa, buf, 2 * WRITERS * 8), 0);
}

static void test_writers_race_protections(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0);
  int fds = tu_fd_count();
  mb_loop *lm = tu_start("mm"), *lv = tu_start("vam");
  mb_addr mm = mp_mm_create_geom(lm, 64 * MiB, 0, 0x3);
  mb_vam *p = mp_vam_create(lv, mm, 64 * MiB, true), *obs = mp_vam_create(lv, mm, 64 * MiB, true);
  assert_int_equal(mp_add_mapper_vtl(mm, p, true, 0, true, false), 0);
  assert_int_equal(mp_add_mapper_vtl(mm, obs, true, 0, false, false), 0);
  mb_object *a = tu_memfd_pages("stress", PAGES * PAGE, 1);
  assert_int_equal(mp_map1(mm, a, 0, PAGES * PAGE, 0, true), 0);
  uint8_t zero[2 * WRITERS * 8] = {0};
  for (int i = 0; i < PAGES; i++)
    assert_int_equal(mb_vam_write(obs, i * PAGE, zero, sizeof zero), 0);

  writer *ws = calloc(WRITERS, sizeof *ws);
  assert_non_null(ws);
  atomic_store(&stop, false);
  for (int i = 0; i < WRITERS; i++) {
    ws[i].id = i;
    ws[i].v = p;
    for (uint32_t k = 0; k < MAXSEQ; k++)
      atomic_init(&ws[i].rc[k], PENDING);
    assert_int_equal(pthread_create(&ws[i].thread, NULL, writer_main, &ws[i]), 0);
  }

  for (int round = 0; round < ROUNDS; round++) {
    uint64_t gpa = (uint64_t)(round % PAGES) * PAGE;
    uint8_t access = (round / PAGES) % 2 ? MB_PROT_RO : MB_PROT_NONE;
    allow(ws, BURST); /* writers run while the protection changes */
    assert_int_equal(mp_protect1(mm, 0, gpa, PAGE, access), 0);
    uint32_t started[WRITERS], later[WRITERS];
    for (int i = 0; i < WRITERS; i++)
      started[i] = atomic_load(&ws[i].next);
    uint8_t first[2 * WRITERS * 8], second[2 * WRITERS * 8];
    read_page(obs, gpa, first);
    check_sentinels(ws, first, started);
    for (int i = 0; i < WRITERS; i++) {
      later[i] = started[i] + AFTER;
      if (atomic_load(&ws[i].target) < later[i])
        atomic_store(&ws[i].target, later[i]);
    }
    wait_started(ws, later);
    for (int i = 0; i < WRITERS; i++) /* the attempts started must have returned too */
      while (atomic_load(&ws[i].rc[later[i] - 1]) == PENDING)
        sched_yield();
    read_page(obs, gpa, second);
    assert_memory_equal(first, second, sizeof first);
    assert_int_equal(mp_protect1(mm, 0, gpa, PAGE, MB_PROT_RW), 0);
  }
  atomic_store(&stop, true);
  uint32_t refused = 0;
  for (int i = 0; i < WRITERS; i++) {
    pthread_join(ws[i].thread, NULL);
    refused += atomic_load(&ws[i].refused);
  }
  assert_true(refused > 0); /* the writers did meet protected pages */
  free(ws);
  mb_object_unref(a);
  mp_vam_drop(lv, mm, p);
  mp_vam_drop(lv, mm, obs);
  tu_stop(lv);
  tu_stop(lm);
  assert_int_equal(tu_fd_count(), fds);
}

int main(void) {
  mp_warm_up();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_writers_race_protections),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
