/* test_gpa_protect.c: the published protections of the guest physical map (gpa_map.h:
 * mb_gpa_map_protect, mb_gpa_map_classify_vtl): the answer order at the first failing byte
 * (MMIO, then PROTECTED, then FAULT or RAM), protections ignored when not asked for, merged
 * and split ranges within the room begin makes, and readers on several threads while the
 * writer keeps changing protections (run under TSan: suite 'concurrent'). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "gpa_map.h"
#include "mb_access.h"
#include "mb_backing.h"
#include "mb_vtl.h"
#include "test_util.h"
#include "va_reserve.h"

#define K 1024ull
#define SPAN (1ull << 20)
#define BACKED (512 * K) /* host memory of [0, BACKED) is there; the rest is a hole */

typedef struct bench {
  mb_va va;
  mb_object *obj;
  mb_gpa_map *m;
} bench;

/* The map: [0, 256K) rw and [256K, 768K) ro (its upper half a hole). */
static void bench_open(bench *b) {
  assert_int_equal(mb_access_reinstall(), 0);
  assert_int_equal(mb_va_reserve(&b->va, SPAN), 0);
  b->obj = tu_memfd_pages("gp", BACKED, 0x40);
  assert_int_equal(mb_object_map_into(b->obj, &b->va, 0, BACKED, 0, true), 0);
  assert_int_equal(mb_gpa_map_create(&b->m), 0);
  assert_int_equal(mb_gpa_map_begin(b->m, 0, SPAN, 2), 0);
  mb_gpa_map_add(b->m, 0, 256 * K, true);
  mb_gpa_map_add(b->m, 256 * K, 768 * K, false);
  mb_gpa_map_end(b->m);
}

static void bench_close(bench *b) {
  mb_gpa_map_destroy(b->m);
  mb_va_release(&b->va);
  mb_object_unref(b->obj);
}

/* One operation that sets [gpa, gpa + size) to access, with the room begin is told of. */
static void protect(bench *b, uint64_t gpa, uint64_t size, uint8_t access) {
  assert_int_equal(mb_gpa_map_begin(b->m, gpa, gpa + size, 2), 0);
  mb_gpa_map_protect(b->m, gpa, gpa + size, access);
  mb_gpa_map_end(b->m);
}

static int ask(bench *b, uint64_t gpa, uint64_t len, bool write) {
  return mb_gpa_map_classify_vtl(b->m, gpa, len, write, b->va.base, true);
}

static void test_order(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b);
  protect(&b, 64 * K, 64 * K, MB_PROT_NONE);
  protect(&b, 128 * K, 64 * K, MB_PROT_RO);
  protect(&b, 288 * K, 32 * K, MB_PROT_NONE);  /* inside the ro range */
  protect(&b, 576 * K, 64 * K, MB_PROT_NONE);  /* inside the hole */
  protect(&b, 896 * K, 64 * K, MB_PROT_NONE);  /* nothing mapped there */
  assert_int_equal(ask(&b, 64 * K, 4, false), MB_GPA_PROTECTED);
  assert_int_equal(ask(&b, 128 * K, 4, false), MB_GPA_RAM);
  assert_int_equal(ask(&b, 128 * K, 4, true), MB_GPA_PROTECTED);
  assert_int_equal(ask(&b, 288 * K, 4, false), MB_GPA_PROTECTED);
  assert_int_equal(ask(&b, 288 * K, 4, true), MB_GPA_MMIO);   /* a read-only range first */
  assert_int_equal(ask(&b, 896 * K, 4, false), MB_GPA_MMIO);  /* nothing there first */
  assert_int_equal(ask(&b, 576 * K, 4, false), MB_GPA_PROTECTED); /* before the hole */
  assert_int_equal(ask(&b, 544 * K, 4, false), MB_GPA_FAULT);
  /* the first failing byte decides */
  assert_int_equal(ask(&b, 64 * K - 8, 16, false), MB_GPA_PROTECTED);
  assert_int_equal(ask(&b, 192 * K - 8, 16, true), MB_GPA_PROTECTED);
  assert_int_equal(ask(&b, 192 * K - 8, 16, false), MB_GPA_RAM);
  assert_int_equal(ask(&b, 256 * K - 8, 16, true), MB_GPA_MMIO);
  assert_int_equal(ask(&b, 576 * K - 8, 16, false), MB_GPA_FAULT); /* the hole before */
  assert_int_equal(ask(&b, 512 * K - 8, 16, false), MB_GPA_FAULT);
  /* without protections (the VTL-2 alias), and the plain classify */
  assert_int_equal(mb_gpa_map_classify_vtl(b.m, 64 * K, 4, true, b.va.base, false),
                   MB_GPA_RAM);
  assert_int_equal(mb_gpa_map_classify(b.m, 64 * K, 4, true, b.va.base), MB_GPA_RAM);
  assert_int_equal(mb_gpa_map_classify(b.m, 544 * K, 4, false, b.va.base), MB_GPA_FAULT);
  assert_int_equal(mb_gpa_map_classify_vtl(b.m, 60 * K, 8 * K, false, NULL, true),
                   MB_GPA_PROTECTED); /* no probe: the map alone */
  /* busy: a page that may change is RAM meanwhile; after the change, its new answer */
  assert_int_equal(mb_gpa_map_begin(b.m, 0, 64 * K, 2), 0);
  assert_int_equal(ask(&b, 0, 4, true), MB_GPA_RAM);
  mb_gpa_map_protect(b.m, 0, 64 * K, MB_PROT_RO);
  mb_gpa_map_end(b.m);
  assert_int_equal(ask(&b, 0, 4, true), MB_GPA_PROTECTED);
  /* back to rw */
  protect(&b, 0, SPAN, MB_PROT_RW);
  assert_int_equal(ask(&b, 64 * K, 4, true), MB_GPA_RAM);
  assert_int_equal(ask(&b, 288 * K, 4, false), MB_GPA_RAM);
  assert_int_equal(ask(&b, 576 * K, 4, false), MB_GPA_FAULT);
  bench_close(&b);
}

/* Every change fits in the two ranges begin made room for, however the ranges split and
 * merge (a change that took more would find no room: a crash); a cover of n items fits in
 * n + 2. */
static void test_room(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b);
  for (uint64_t p = 0; p < 64; p++) /* page by page: one merged range */
    protect(&b, p * 4 * K, 4 * K, MB_PROT_RO);
  for (uint64_t p = 1; p < 64; p += 2) /* every other page none: split */
    protect(&b, p * 4 * K, 4 * K, MB_PROT_NONE);
  for (uint64_t p = 0; p < 64; p++) {
    int want = p % 2 ? MB_GPA_PROTECTED : MB_GPA_RAM;
    assert_int_equal(ask(&b, p * 4 * K, 4, false), want);
  }
  protect(&b, 8 * K, 48 * K, MB_PROT_NONE); /* merges eleven */
  protect(&b, 20 * K, 8 * K, MB_PROT_RO);   /* cuts one in three */
  assert_int_equal(ask(&b, 16 * K, 4, false), MB_GPA_PROTECTED);
  assert_int_equal(ask(&b, 20 * K, 4, true), MB_GPA_PROTECTED);
  assert_int_equal(ask(&b, 24 * K, 4, false), MB_GPA_RAM);
  assert_int_equal(ask(&b, 28 * K, 4, false), MB_GPA_PROTECTED);
  /* a cover of five items over [0, 64K) in one operation */
  const uint8_t acc[5] = {MB_PROT_NONE, MB_PROT_RW, MB_PROT_RO, MB_PROT_NONE, MB_PROT_RW};
  assert_int_equal(mb_gpa_map_begin(b.m, 0, 80 * K, 5 + 2), 0);
  for (int i = 0; i < 5; i++)
    mb_gpa_map_protect(b.m, (uint64_t)i * 16 * K, (uint64_t)(i + 1) * 16 * K, acc[i]);
  mb_gpa_map_end(b.m);
  const int want[5] = {MB_GPA_PROTECTED, MB_GPA_RAM, MB_GPA_PROTECTED, MB_GPA_PROTECTED,
                       MB_GPA_RAM};
  for (int i = 0; i < 5; i++)
    assert_int_equal(ask(&b, (uint64_t)i * 16 * K + 4 * K, 4, true), want[i]);
  bench_close(&b);
}

/* ---- readers on several threads while the writer changes protections -------------------- */

enum { READERS = 3, ROUNDS = 2000 };

typedef struct stress {
  bench *b;
  atomic_bool stop;
  atomic_int bad;
} stress;

/* [0, 64K) is never protected (RAM throughout); [64K, 128K) flips between none and rw (RAM
 * or PROTECTED, never anything else); a write to the ro range is MMIO whatever the
 * protection says. */
static void *reader(void *arg) {
  stress *s = arg;
  while (!atomic_load(&s->stop)) {
    if (ask(s->b, 4 * K, 8, true) != MB_GPA_RAM)
      atomic_fetch_add(&s->bad, 1);
    int k = ask(s->b, 96 * K, 8, true);
    if (k != MB_GPA_RAM && k != MB_GPA_PROTECTED)
      atomic_fetch_add(&s->bad, 1);
    if (ask(s->b, 300 * K, 8, true) != MB_GPA_MMIO)
      atomic_fetch_add(&s->bad, 1);
  }
  return NULL;
}

static void test_threads(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b);
  stress s = {.b = &b};
  atomic_init(&s.stop, false);
  atomic_init(&s.bad, 0);
  pthread_t t[READERS];
  for (int i = 0; i < READERS; i++)
    assert_int_equal(pthread_create(&t[i], NULL, reader, &s), 0);
  for (int r = 0; r < ROUNDS; r++) {
    uint64_t at = 64 * K + (uint64_t)(r % 16) * 4 * K;
    protect(&b, at, 4 * K * (1 + (uint64_t)r % 3), r % 2 ? MB_PROT_RW : MB_PROT_NONE);
    protect(&b, 256 * K + (uint64_t)(r % 8) * 4 * K, 4 * K, (uint8_t)(r % 3));
  }
  atomic_store(&s.stop, true);
  for (int i = 0; i < READERS; i++)
    assert_int_equal(pthread_join(t[i], NULL), 0);
  assert_int_equal(atomic_load(&s.bad), 0);
  bench_close(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_order),
      cmocka_unit_test(test_room),
      cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests_name("gpa-protect", tests, NULL, NULL);
}
