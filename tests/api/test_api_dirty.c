/* test_api_dirty.c: dirty-page tracking through the public API (membacking.h), as a VMM's
 * migration code uses it: start, writes from every source (a soft partition's guest, VA
 * mappers, writable locks), syncs as a bitmap and as ranges, stop; the request rules; a write
 * a protection change refused after it wrote part of its page. (The
 * random model test: test_dirty_random.c; KVM: tests/partition/test_kvm_dirty*.c.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mb_access.h"
#include "membacking.h"
#include "test_util.h"

#define MiB (1ull << 20)
#define KiB (1ull << 10)
#define PG (4 * KiB)

typedef struct world {
  mb_loop *mgr, *ml, *pl;
  mb_mm *mm;
  mb_mapper *eager, *lazy;
  mb_partition *part;
  mb_object *ram;
  mb_region_id r;
} world;

/* 16 MiB of RAM at 0 (4 MiB..8 MiB of it a second region's, at 8 MiB), mapped rw; the VM has
 * VTLs 0 and 1 (VTL 0's pages can be protected; nothing is until a test says so). */
static void world_init(world *w) {
  assert_int_equal(mb_access_reinstall(), 0);
  w->mgr = tu_start("mgr");
  w->ml = tu_start("mappers");
  w->pl = tu_start("part");
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = w->mgr, .vtls = 0x3};
  assert_int_equal(mb_mm_create(&cfg, &w->mm), 0);
  w->ram = tu_memfd_byte("ram", 16 * MiB, 0);
  assert_int_equal(mb_mapper_add_sync(w->mm, w->ml, true, &w->eager), 0);
  assert_int_equal(mb_mapper_add_sync(w->mm, w->ml, false, &w->lazy), 0);
  assert_int_equal(mb_partition_add_sync(w->mm, &mb_partition_soft, w->pl, &w->part), 0);
  mb_region_params p = {"ram", 0, 16 * MiB, 0, false, 0};
  assert_int_equal(mb_region_add_sync(w->mm, &p, &w->r), 0);
  mb_mapping_params m = {w->r, 0, 16 * MiB, w->ram, 0, true};
  assert_int_equal(mb_mapping_add_sync(w->mm, &m), 0);
  assert_int_equal(mb_region_map_sync(w->mm, w->r, true), 0);
}

static void world_fini(world *w) {
  mb_mm_destroy(w->mm);
  mb_object_unref(w->ram);
  tu_stop(w->mgr);
  tu_stop(w->ml);
  tu_stop(w->pl);
}

/* The dirty pages of [gpa, gpa + size) as "GPA+SIZE ..." in KiB ("none": none). */
static char *synced(world *w, uint64_t gpa, uint64_t size) {
  static char buf[4096];
  mb_range_list *l = NULL;
  assert_int_equal(mb_dirty_sync_ranges_sync(w->mm, gpa, size, &l), 0);
  size_t at = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < l->count; i++)
    at += (size_t)snprintf(buf + at, sizeof buf - at, "%s%lluK+%lluK", i ? " " : "",
                           (unsigned long long)(l->ranges[i].gpa / KiB),
                           (unsigned long long)(l->ranges[i].size / KiB));
  size_t n = l->count;
  free(l);
  return n ? buf : strcpy(buf, "none");
}

static void guest_write(world *w, uint64_t gpa, size_t len) {
  uint8_t b[3 * PG];
  memset(b, 0x5a, len);
  assert_int_equal(mb_partition_access_sync(w->part, gpa, b, len, true), 0);
}

static void test_sources_and_sync(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  uint8_t x = 1;
  assert_int_equal(mb_mapper_write(w.eager, 0, &x, 1), 0); /* before start: not counted */
  assert_int_equal(mb_dirty_start_sync(w.mm), 0);
  assert_string_equal(synced(&w, 0, 16 * MiB), "none");
  guest_write(&w, 8 * KiB, 1);                       /* the guest: one page */
  assert_int_equal(mb_mapper_write(w.lazy, 64 * KiB - 1, (uint8_t[2]){0}, 2), 0); /* 2 pages */
  assert_int_equal(mb_mapper_write(w.eager, 1 * MiB, &x, 1), 0);
  assert_string_equal(synced(&w, 0, 1 * MiB), "8K+4K 60K+8K");
  assert_string_equal(synced(&w, 0, 1 * MiB), "none"); /* cleared */
  assert_string_equal(synced(&w, 1 * MiB, 4 * KiB), "1024K+4K");
  /* A write, then its page unmapped: still dirty until synced. */
  guest_write(&w, 2 * MiB, 3 * PG);
  assert_int_equal(mb_region_unmap_sync(w.mm, w.r), 0);
  uint64_t bits[4] = {~0ull, ~0ull, ~0ull, ~0ull}, pages = 0;
  assert_int_equal(mb_dirty_sync_bitmap(w.mm, 2 * MiB - 8 * PG, 256 * PG, bits, &pages), 0);
  assert_int_equal(pages, 3);
  assert_int_equal(bits[0], 0x7ull << 8);
  assert_int_equal(bits[1] | bits[2] | bits[3], 0);
  assert_int_equal(mb_dirty_stop_sync(w.mm), 0);
  world_fini(&w);
}

static void test_locks(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  mb_lock *rw, *ro;
  assert_int_equal(mb_mapper_lock(w.eager, 4 * MiB, 2 * PG, true, &rw), 0); /* before start */
  assert_int_equal(mb_mapper_lock(w.eager, 5 * MiB, PG, false, &ro), 0);
  assert_int_equal(mb_dirty_start_sync(w.mm), 0);
  /* Held writable: answered by every sync, and still dirty. */
  assert_string_equal(synced(&w, 0, 16 * MiB), "4096K+8K");
  assert_string_equal(synced(&w, 4 * MiB + PG, PG), "4100K+4K");
  assert_string_equal(synced(&w, 0, 16 * MiB), "4096K+8K");
  assert_int_equal(mb_mapper_unlock(rw), 0);
  assert_int_equal(mb_mapper_unlock(ro), 0);
  assert_string_equal(synced(&w, 0, 16 * MiB), "4096K+8K"); /* dirty at the unlock */
  assert_string_equal(synced(&w, 0, 16 * MiB), "none");
  /* A lock whose mapper goes away is released with it: its pages are dirty once more. */
  mb_mapper *m;
  assert_int_equal(mb_mapper_add_sync(w.mm, w.ml, true, &m), 0);
  assert_int_equal(mb_mapper_lock(m, 12 * MiB, PG, true, &rw), 0);
  assert_string_equal(synced(&w, 0, 16 * MiB), "12288K+4K");
  assert_int_equal(mb_mapper_unlock(rw), 0);
  assert_int_equal(mb_mapper_remove_sync(m), 0);
  assert_string_equal(synced(&w, 0, 16 * MiB), "12288K+4K");
  world_fini(&w);
}

static void test_rules(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  mb_range_list *l = NULL;
  uint64_t bits[1];
  assert_int_equal(mb_dirty_sync_ranges_sync(w.mm, 0, PG, &l), MB_E_INVALID); /* off */
  assert_int_equal(mb_dirty_stop_sync(w.mm), MB_E_INVALID);
  assert_int_equal(mb_dirty_start_sync(w.mm), 0);
  assert_int_equal(mb_dirty_start_sync(w.mm), MB_E_INVALID); /* on already */
  assert_int_equal(mb_dirty_sync_ranges_sync(w.mm, 1, PG, &l), MB_E_INVALID);
  assert_int_equal(mb_dirty_sync_ranges_sync(w.mm, 0, 0, &l), MB_E_INVALID);
  assert_int_equal(mb_dirty_sync_ranges_sync(w.mm, 0, (1ull << 32) + PG, &l), MB_E_INVALID);
  assert_int_equal(mb_dirty_sync_bitmap(w.mm, 0, PG, NULL, NULL), MB_E_INVALID);
  assert_int_equal(mb_dirty_sync_bitmap(w.mm, 0, 64 * PG, bits, NULL), 0);
  /* Inside a transaction: allowed. */
  assert_int_equal(mb_txn_begin_sync(w.mm), 0);
  guest_write(&w, 0, 1);
  assert_string_equal(synced(&w, 0, 16 * MiB), "0K+4K");
  assert_int_equal(mb_dirty_stop_sync(w.mm), 0);
  assert_int_equal(mb_txn_commit_sync(w.mm), 0);
  /* Stop forgets; a new start begins clean. */
  assert_int_equal(mb_dirty_start_sync(w.mm), 0);
  assert_string_equal(synced(&w, 0, 16 * MiB), "none");
  /* A partition added while on tracks from its first write. */
  mb_partition *p2;
  assert_int_equal(mb_partition_add_sync(w.mm, &mb_partition_soft, w.pl, &p2), 0);
  uint8_t x = 7;
  assert_int_equal(mb_partition_access_sync(p2, 3 * MiB, &x, 1, true), 0);
  assert_string_equal(synced(&w, 0, 16 * MiB), "3072K+4K");
  assert_int_equal(mb_partition_remove_sync(p2), 0);
  assert_int_equal(mb_dirty_stop_sync(w.mm), 0);
  world_fini(&w);
}


/* A partition that cannot track makes the start fail, and the partitions that had started are
 * stopped again: once it is gone, a start succeeds (the soft one would refuse a second start). */
static void test_start_refused(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  mb_partition_ops blind = mb_partition_soft;
  blind.name = "blind";
  blind.dirty_start = NULL, blind.dirty_collect = NULL, blind.dirty_stop = NULL;
  mb_partition *p2;
  assert_int_equal(mb_partition_add_sync(w.mm, &blind, w.pl, &p2), 0);
  assert_int_equal(mb_dirty_start_sync(w.mm), MB_E_UNSUPPORTED);
  mb_range_list *l = NULL;
  assert_int_equal(mb_dirty_sync_ranges_sync(w.mm, 0, PG, &l), MB_E_INVALID); /* still off */
  assert_int_equal(mb_partition_remove_sync(p2), 0);
  assert_int_equal(mb_dirty_start_sync(w.mm), 0);
  guest_write(&w, 0, 1);
  assert_string_equal(synced(&w, 0, 16 * MiB), "0K+4K");
  world_fini(&w);
}

/* ---- a write refused after it wrote part of its page ----------------------------------------
 *
 * A write that a protection change refuses in the middle of a page has written the start of
 * that page: the page must be dirty. Made deterministic by the write's source: the host page
 * under the middle of guest page 8 is PROT_NONE, so the copy stops there (glibc copies this
 * size forward); the test's SIGSEGV handler, which the library chains to for a fault that is
 * not a guest's, has a helper thread protect guest page 8 `none`, opens the host page and
 * returns, and the copy's next store into page 8 faults. */

enum { LANDING = 8 }; /* the guest page written in part */

static struct {
  uint8_t *stop; /* the PROT_NONE host page */
  int req[2], ack[2];
  mb_mm *mm;
} refusal;

static void on_host_fault(int sig, siginfo_t *si, void *uc) {
  (void)sig, (void)uc;
  uint8_t *a = si->si_addr, b = 0;
  if (a < refusal.stop || a >= refusal.stop + PG) {
    signal(SIGSEGV, SIG_DFL); /* not the fault this test made: retaken, the default's death */
    return;
  }
  if (write(refusal.req[1], &b, 1) != 1 || read(refusal.ack[0], &b, 1) != 1 ||
      mprotect(refusal.stop, PG, PROT_READ | PROT_WRITE) != 0)
    abort();
}

static void *protect_on_request(void *arg) {
  (void)arg;
  uint8_t b;
  if (read(refusal.req[0], &b, 1) != 1)
    return NULL;
  b = (uint8_t)mb_protect_sync(refusal.mm, 0, LANDING * PG, PG, MB_PROT_NONE);
  return write(refusal.ack[1], &b, 1) == 1 ? NULL : (void *)"ack";
}

static void test_refused_write_landed_in_part(void **unused) {
  (void)unused;
  struct sigaction sa = {.sa_sigaction = on_host_fault, .sa_flags = SA_SIGINFO}, old;
  assert_int_equal(sigaction(SIGSEGV, &sa, &old), 0);
  world w;
  world_init(&w); /* puts the library's handler in front of ours */
  refusal.mm = w.mm;
  assert_int_equal(pipe(refusal.req), 0);
  assert_int_equal(pipe(refusal.ack), 0);
  size_t len = 16 * PG;
  uint8_t *src = mmap(NULL, len + PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  assert_true(src != MAP_FAILED);
  memset(src, 0xc3, len + PG);
  refusal.stop = src + (LANDING + 1) * PG; /* under guest LANDING * PG + PG / 2 */
  assert_int_equal(mprotect(refusal.stop, PG, PROT_NONE), 0);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, protect_on_request, NULL), 0);
  assert_int_equal(mb_dirty_start_sync(w.mm), 0);
  assert_int_equal(mb_mapper_write(w.eager, 0, src + PG / 2, len), MB_E_PROTECTED);
  void *err;
  assert_int_equal(pthread_join(t, &err), 0);
  assert_null(err);
  uint8_t half[PG / 2], want[PG / 2];
  memset(want, 0xc3, sizeof want);
  assert_int_equal(pread(mb_object_fd(w.ram), half, sizeof half, LANDING * PG), sizeof half);
  assert_memory_equal(half, want, sizeof half); /* the start of page 8 was written */
  /* Pages 0 to 8 were written: they must be dirty. A drop overlapped the write, so the rest
   * of its pages may be reported too (va_mapper.c, mb_vam_write); nothing past them. */
  unsigned long long kib = 0;
  assert_int_equal(sscanf(synced(&w, 0, 16 * MiB), "0K+%lluK", &kib), 1);
  assert_true(kib >= (LANDING + 1) * PG / KiB && kib <= len / KiB);
  munmap(src, len + PG);
  for (int i = 0; i < 2; i++)
    close(refusal.req[i]), close(refusal.ack[i]);
  world_fini(&w);
  assert_int_equal(sigaction(SIGSEGV, &old, NULL), 0);
}

/* ---- random: a page model against writes from every source and syncs of random ranges ---- */

enum { RPAGES = 1024, RLOCKS = 4 }; /* the first 4 MiB of the RAM */

static uint64_t rng = 0x9e3779b97f4a7c15ull; /* fixed (MB_SEED overrides): failures repeat */

static int rnd(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (int)(rng >> 33);
}

typedef struct rmodel {
  bool dirty[RPAGES];
  mb_lock *lock[RLOCKS];
  uint64_t lock_gpa[RLOCKS], lock_pages[RLOCKS];
  bool lock_rw[RLOCKS];
  bool on, mapped;
} rmodel;

static void model_mark(rmodel *m, uint64_t gpa, uint64_t len) {
  if (m->on && len)
    for (uint64_t p = gpa / PG; p <= (gpa + len - 1) / PG; p++)
      m->dirty[p] = true;
}

/* A write of random bytes through a random source: a guest, the eager or the lazy mapper. */
static void rand_write(world *w, rmodel *m) {
  uint64_t gpa = (uint64_t)(rnd() % (RPAGES * (int)PG - 3 * (int)PG)), len = 1 + rnd() % (3 * PG - 1);
  uint8_t b[3 * PG];
  memset(b, rnd(), len);
  int src = rnd() % 3, rc;
  if (src == 0)
    rc = mb_partition_access_sync(w->part, gpa, b, len, true);
  else
    rc = mb_mapper_write(src == 1 ? w->eager : w->lazy, gpa, b, len);
  assert_int_equal(rc, m->mapped ? 0 : src == 0 ? MB_E_MMIO : MB_E_UNMAPPED);
  if (rc == 0)
    model_mark(m, gpa, len);
}

static void rand_lock(world *w, rmodel *m) {
  int i = rnd() % RLOCKS;
  if (m->lock[i] != NULL) {
    assert_int_equal(mb_mapper_unlock(m->lock[i]), 0);
    m->lock[i] = NULL;
    if (m->lock_rw[i])
      model_mark(m, m->lock_gpa[i], m->lock_pages[i] * PG);
    return;
  }
  if (!m->mapped)
    return;
  m->lock_pages[i] = 1 + (uint64_t)(rnd() % 8);
  m->lock_gpa[i] = (uint64_t)(rnd() % (RPAGES - 8)) * PG;
  m->lock_rw[i] = rnd() % 2;
  assert_int_equal(mb_mapper_lock(rnd() % 2 ? w->eager : w->lazy, m->lock_gpa[i],
                                  m->lock_pages[i] * PG, m->lock_rw[i], &m->lock[i]), 0);
}

/* Held writable locks' pages are dirty (while tracking is on). */
static void model_held(rmodel *m) {
  for (int i = 0; i < RLOCKS; i++)
    if (m->lock[i] && m->lock_rw[i])
      model_mark(m, m->lock_gpa[i], m->lock_pages[i] * PG);
}

static void rand_sync(world *w, rmodel *m) {
  uint64_t first = (uint64_t)(rnd() % RPAGES), n = 1 + (uint64_t)(rnd() % (RPAGES - first));
  uint64_t bits[RPAGES / 64 + 1], pages = 0, want = 0;
  if (!m->on) {
    assert_int_equal(mb_dirty_sync_bitmap(w->mm, first * PG, n * PG, bits, &pages), MB_E_INVALID);
    return;
  }
  model_held(m);
  assert_int_equal(mb_dirty_sync_bitmap(w->mm, first * PG, n * PG, bits, &pages), 0);
  for (uint64_t i = 0; i < n; i++) {
    bool got = (bits[i / 64] >> (i % 64)) & 1;
    assert_int_equal(got, m->dirty[first + i]);
    want += got;
    m->dirty[first + i] = false;
  }
  assert_int_equal(pages, want);
  model_held(m);
}

static void rand_state(world *w, rmodel *m) {
  bool locked = false;
  for (int i = 0; i < RLOCKS; i++)
    locked |= m->lock[i] != NULL;
  if (rnd() % 2 && !locked) { /* unmap or map again: written pages stay dirty */
    assert_int_equal(m->mapped ? mb_region_unmap_sync(w->mm, w->r)
                               : mb_region_map_sync(w->mm, w->r, true), 0);
    m->mapped = !m->mapped;
  } else { /* stop (forgets) or start (clean) */
    assert_int_equal(m->on ? mb_dirty_stop_sync(w->mm) : mb_dirty_start_sync(w->mm), 0);
    m->on = !m->on;
    memset(m->dirty, 0, sizeof m->dirty);
    model_held(m);
  }
}

static void test_random_model(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  const char *env = getenv("MB_SEED");
  if (env != NULL)
    rng = strtoull(env, NULL, 0) | 1;
  print_message("seed %#llx\n", (unsigned long long)rng);
  rmodel m = {.mapped = true};
  for (int step = 0; step < 4000; step++) {
    int k = rnd() % 20;
    if (k < 10)
      rand_write(&w, &m);
    else if (k < 14)
      rand_lock(&w, &m);
    else if (k < 19)
      rand_sync(&w, &m);
    else
      rand_state(&w, &m);
  }
  for (int i = 0; i < RLOCKS; i++)
    assert_int_equal(mb_mapper_unlock(m.lock[i]), 0);
  world_fini(&w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sources_and_sync),
      cmocka_unit_test(test_locks),
      cmocka_unit_test(test_rules),
      cmocka_unit_test(test_start_refused),
      cmocka_unit_test(test_random_model),
      cmocka_unit_test(test_refused_write_landed_in_part), /* last: the SIGSEGV chain is its */
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
