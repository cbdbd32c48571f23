/* test_mapper.c: the partition mapper actor (partition_mapper.h) on a started loop, driven by
 * blocking calls from the test thread, by an actor on another loop, and by several threads
 * at once: map, unmap, merged ranges, accesses (data, MMIO, fault), errors of the backend and
 * of creation, and destruction (which destroys the backend instance). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "mb_access.h"
#include "mb_backing.h"
#include "partition_mapper.h"
#include "test_util.h"
#include "va_reserve.h"

#define K 1024ull
#define MAX_ADDR (1ull << 20)
#define FILL_BASE 0x20

/* ---- guest memory: a VA reservation with [0, 256K) backed by a memfd, the rest a hole ---- */

typedef struct guest {
  mb_va va;
  mb_object *obj;
} guest;

static void guest_open(guest *g) {
  assert_int_equal(mb_access_reinstall(), 0); /* cmocka replaced the fault handlers */
  assert_int_equal(mb_va_reserve(&g->va, MAX_ADDR), 0);
  g->obj = tu_memfd_pages("pm", 256 * K, FILL_BASE);
  assert_int_equal(mb_object_map_into(g->obj, &g->va, 0, 256 * K, 0, true), 0);
}

static void guest_close(guest *g) {
  mb_va_release(&g->va);
  mb_object_unref(g->obj);
}

/* ---- loops and the mapper ------------------------------------------------------------- */

typedef struct spawn {
  const mb_partition_ops *ops;
  uint8_t *base;
  mb_actor *actor;
  int rc;
} spawn;

static void spawn_fn(mb_loop *l, void *arg) {
  spawn *s = arg;
  s->rc = mb_partition_mapper_create(l, s->ops, NULL, MAX_ADDR, s->base, &s->actor);
}

/* Creates a mapper on l from the test thread: the actor, or NULL and the error in *rc. */
static mb_actor *spawn_mapper(mb_loop *l, const mb_partition_ops *ops, uint8_t *base, int *rc) {
  spawn s = {ops, base, NULL, -1};
  assert_int_equal(mb_loop_exec(l, spawn_fn, &s), 0);
  *rc = s.rc;
  return s.rc == 0 ? s.actor : NULL;
}

static void destroy_fn(mb_loop *l, void *arg) {
  (void)l;
  mb_actor_destroy(arg);
}

/* Every test: the guest, and a started loop "part" for the mapper. */
typedef struct bench {
  guest g;
  mb_loop *l;
} bench;

static void bench_open(bench *b) {
  guest_open(&b->g);
  b->l = tu_start("part");
}

static void bench_close(bench *b) {
  tu_stop(b->l); /* destroys the loop's actors */
  guest_close(&b->g);
}

/* A soft-backend mapper on the bench's loop, over its guest memory. */
static mb_addr soft_mapper(bench *b) {
  int rc;
  mb_actor *a = spawn_mapper(b->l, &mb_partition_soft, b->g.va.base, &rc);
  assert_int_equal(rc, 0);
  return mb_actor_addr(a);
}

/* ---- blocking requests ---------------------------------------------------------------- */

static int pm_map_sync(mb_addr pm, uint64_t gpa, uint64_t size, bool writable) {
  pm_map_msg *m = pm_map_new();
  m->gpa = gpa;
  m->size = size;
  m->writable = writable;
  int rc = mb_call_sync(pm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

static int pm_unmap_sync(mb_addr pm, uint64_t gpa, uint64_t size) {
  pm_unmap_msg *m = pm_unmap_new();
  m->gpa = gpa;
  m->size = size;
  int rc = mb_call_sync(pm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

static int pm_access_sync(mb_addr pm, uint64_t gpa, void *buf, uint64_t len, bool write) {
  pm_access_msg *m = pm_access_new();
  m->gpa = gpa;
  m->buf = buf;
  m->len = len;
  m->write = write;
  int rc = mb_call_sync(pm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

/* Checks the mapper's ranges against want[0..n). */
static void assert_pm_ranges(mb_addr pm, const mb_part_range *want, size_t n) {
  pm_ranges_msg *m = pm_ranges_new();
  assert_int_equal(mb_call_sync(pm, &m->hdr), 0);
  assert_int_equal(m->count, n);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(m->ranges[i].gpa, want[i].gpa);
    assert_int_equal(m->ranges[i].size, want[i].size);
    assert_int_equal(m->ranges[i].writable, want[i].writable);
  }
  free(m->ranges);
  mb_msg_free(&m->hdr);
}

/* ---- a soft backend that counts its instances ----------------------------------------- */

static atomic_int counted_live, counted_destroyed;
static atomic_size_t counted_pieces_at_destroy;

static int counted_create(uint64_t max_addr, const void *config, void **inst) {
  int rc = mb_partition_soft.create(max_addr, config, inst);
  if (rc == 0)
    counted_live++;
  return rc;
}
static void counted_destroy(void *inst) {
  counted_pieces_at_destroy = mb_partition_soft.ranges(inst, NULL, 0);
  mb_partition_soft.destroy(inst);
  counted_live--;
  counted_destroyed++;
}
static int counted_map(void *inst, uint64_t gpa, uint64_t size, void *host_va, bool writable) {
  return mb_partition_soft.map(inst, gpa, size, host_va, writable);
}
static int counted_unmap(void *inst, uint64_t gpa, uint64_t size) {
  return mb_partition_soft.unmap(inst, gpa, size);
}
static int counted_access(void *inst, uint64_t gpa, void *buf, size_t len, bool write) {
  return mb_partition_soft.access(inst, gpa, buf, len, write);
}
static size_t counted_ranges(void *inst, mb_part_range *out, size_t max) {
  return mb_partition_soft.ranges(inst, out, max);
}
static const mb_partition_ops counted_ops = {
    .name = "counted", .create = counted_create, .destroy = counted_destroy, .map = counted_map,
    .unmap = counted_unmap, .access = counted_access, .ranges = counted_ranges};

static int unsupported_create(uint64_t max_addr, const void *config, void **inst) {
  (void)max_addr, (void)config;
  (void)inst;
  return MB_E_UNSUPPORTED;
}
static const mb_partition_ops unsupported_ops = {.name = "nope", .create = unsupported_create};

/* A message of another protocol, which the mapper refuses. */
#define TX_PING_FIELDS(F) F(uint32_t, x)
#define TX_MESSAGES(M) M(tx, TX_PING, ping, TX_PING_FIELDS)
MB_PROTOCOL_DECLARE(tx, TX_MESSAGES)
MB_PROTOCOL_DEFINE(tx, TX_MESSAGES);

/* ---- tests ---------------------------------------------------------------------------- */

/* Pieces A [0,64K) rw, B [64K,128K) rw, C [128K,192K) ro, D [192K,256K) ro, E [512K,576K) rw
 * (a hole): ranges merge A+B and C+D. */
static void map_five(mb_addr pm) {
  assert_int_equal(pm_map_sync(pm, 0, 64 * K, true), 0);
  assert_int_equal(pm_map_sync(pm, 64 * K, 64 * K, true), 0);
  assert_int_equal(pm_map_sync(pm, 128 * K, 64 * K, false), 0);
  assert_int_equal(pm_map_sync(pm, 192 * K, 64 * K, false), 0);
  assert_int_equal(pm_map_sync(pm, 512 * K, 64 * K, true), 0);
}

static void test_requests(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b);
  int rc;
  mb_actor *a = spawn_mapper(b.l, &mb_partition_soft, b.g.va.base, &rc);
  assert_int_equal(rc, 0);
  mb_addr pm = mb_actor_addr(a);
  assert_pm_ranges(pm, NULL, 0);
  map_five(pm);
  const mb_part_range merged[] = {{0, 128 * K, true}, {128 * K, 128 * K, false}, {512 * K, 64 * K, true}};
  assert_pm_ranges(pm, merged, 3);

  uint8_t buf[32];
  assert_int_equal(pm_access_sync(pm, 64 * K - 16, buf, sizeof buf, false), 0);
  for (size_t i = 0; i < sizeof buf; i++)
    assert_int_equal(buf[i], mb_fill_pages_byte(FILL_BASE, 64 * K - 16 + i));
  memset(buf, 0xab, sizeof buf);
  assert_int_equal(pm_access_sync(pm, 64 * K - 16, buf, sizeof buf, true), 0); /* A -> B */
  assert_memory_equal(b.g.va.base + 64 * K - 16, buf, sizeof buf);
  assert_int_equal(pm_access_sync(pm, 300 * K, buf, 4, false), MB_E_MMIO);
  assert_int_equal(pm_access_sync(pm, 130 * K, buf, 4, true), MB_E_MMIO);
  assert_int_equal(pm_access_sync(pm, 520 * K, buf, 4, false), MB_E_FAULT);
  assert_int_equal(pm_access_sync(pm, MAX_ADDR - 2, buf, 4, false), MB_E_INVALID);

  assert_int_equal(pm_map_sync(pm, 60 * K, 8 * K, true), -EEXIST);
  assert_int_equal(pm_map_sync(pm, 3, 4 * K, true), MB_E_INVALID);
  assert_int_equal(pm_unmap_sync(pm, 64 * K, 4 * K), -ENOENT);
  assert_int_equal(pm_unmap_sync(pm, 64 * K, 64 * K), 0);
  assert_int_equal(pm_unmap_sync(pm, 192 * K, 64 * K), 0);
  const mb_part_range after[] = {{0, 64 * K, true}, {128 * K, 64 * K, false}, {512 * K, 64 * K, true}};
  assert_pm_ranges(pm, after, 3);
  assert_int_equal(pm_access_sync(pm, 64 * K, buf, 4, false), MB_E_MMIO);

  assert_int_equal(mb_loop_exec(b.l, destroy_fn, a), 0);
  assert_int_equal(pm_map_sync(pm, 64 * K, 64 * K, true), MB_EGONE);
  bench_close(&b);
}

/* A one-way message is carried out too; a message of another protocol is refused. */
static void test_oneway_and_foreign(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b);
  mb_addr pm = soft_mapper(&b);
  pm_map_msg *m = pm_map_new();
  m->gpa = 0;
  m->size = 8 * K;
  m->writable = true;
  assert_int_equal(mb_send_from(pm, &m->hdr), 0);
  const mb_part_range one[] = {{0, 8 * K, true}}; /* same sender: handled in order */
  assert_pm_ranges(pm, one, 1);
  tx_ping_msg *t = tx_ping_new();
  assert_int_equal(mb_call_sync(pm, &t->hdr), MB_EINVAL);
  mb_msg_free(&t->hdr);
  bench_close(&b);
}

/* Destroying the actor, or stopping its loop, destroys the backend instance with its pieces. */
static void test_destroy_destroys_instance(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b);
  counted_destroyed = 0;
  int rc;
  mb_actor *a = spawn_mapper(b.l, &counted_ops, b.g.va.base, &rc);
  assert_int_equal(rc, 0);
  map_five(mb_actor_addr(a));
  assert_int_equal(counted_live, 1);
  assert_int_equal(mb_loop_exec(b.l, destroy_fn, a), 0);
  assert_int_equal(counted_live, 0);
  assert_int_equal(counted_destroyed, 1);
  assert_int_equal(counted_pieces_at_destroy, 5);

  a = spawn_mapper(b.l, &counted_ops, b.g.va.base, &rc);
  assert_int_equal(pm_map_sync(mb_actor_addr(a), 0, 4 * K, true), 0);
  bench_close(&b); /* destroys the loop's actors */
  assert_int_equal(counted_live, 0);
  assert_int_equal(counted_destroyed, 2);
  assert_int_equal(counted_pieces_at_destroy, 1);
}

/* Creation returns the backend's error and leaves no actor behind. */
static void test_create_errors(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b);
  int rc;
  uint64_t actors = mb_loop_stats_get(b.l).actors; /* the loop's own */
  assert_null(spawn_mapper(b.l, &unsupported_ops, b.g.va.base, &rc));
  assert_int_equal(rc, MB_E_UNSUPPORTED);
  assert_int_equal(mb_loop_stats_get(b.l).actors, actors);
  mb_actor *out = NULL; /* not on the loop's thread */
  assert_int_equal(mb_partition_mapper_create(b.l, &mb_partition_soft, NULL, MAX_ADDR, b.g.va.base, &out),
                   MB_EINVAL);
  /* kvm: unsupported here (no /dev/kvm); where it runs, a working mapper. */
  mb_actor *a = spawn_mapper(b.l, &mb_partition_kvm, b.g.va.base, &rc);
  if (rc == MB_E_UNSUPPORTED) {
    assert_null(a);
    assert_int_equal(mb_loop_stats_get(b.l).actors, actors);
  } else {
    assert_int_equal(rc, 0);
    assert_int_equal(pm_map_sync(mb_actor_addr(a), 0, 64 * K, true), 0);
    uint8_t byte = 0;
    assert_int_equal(pm_access_sync(mb_actor_addr(a), 5, &byte, 1, false), 0);
    assert_int_equal(byte, mb_fill_pages_byte(FILL_BASE, 5));
    assert_int_equal(mb_loop_exec(b.l, destroy_fn, a), 0);
  }
  bench_close(&b);
}

/* ---- requests from an actor on another loop -------------------------------------------- */

enum { SCRIPT_STEPS = 8 };

typedef struct script {
  int n;
  int status[SCRIPT_STEPS];
  uint32_t count[SCRIPT_STEPS];    /* PM_RANGES: how many */
  mb_part_range first[SCRIPT_STEPS]; /* PM_RANGES: the first */
  uint8_t buf[16];
  bool done;
} script;

static void on_reply(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  script *s = ctx;
  assert_true(s->n < SCRIPT_STEPS);
  s->status[s->n] = reply->status;
  pm_ranges_msg *r = pm_ranges_of(reply);
  if (r && reply->status == 0) {
    s->count[s->n] = r->count;
    if (r->count)
      s->first[s->n] = r->ranges[0];
    free(r->ranges); /* the requester owns the array */
  }
  s->done = ++s->n == SCRIPT_STEPS;
}

static void call_map(mb_actor *self, mb_addr pm, uint64_t gpa, uint64_t size, bool w, script *s) {
  pm_map_msg *m = pm_map_new();
  m->gpa = gpa;
  m->size = size;
  m->writable = w;
  mb_call(self, pm, &m->hdr, on_reply, s);
}

static void call_unmap(mb_actor *self, mb_addr pm, uint64_t gpa, uint64_t size, script *s) {
  pm_unmap_msg *m = pm_unmap_new();
  m->gpa = gpa;
  m->size = size;
  mb_call(self, pm, &m->hdr, on_reply, s);
}

static void call_ranges(mb_actor *self, mb_addr pm, script *s) {
  mb_call(self, pm, &pm_ranges_new()->hdr, on_reply, s);
}

static void call_read(mb_actor *self, mb_addr pm, uint64_t gpa, script *s) {
  pm_access_msg *m = pm_access_new();
  m->gpa = gpa;
  m->buf = s->buf;
  m->len = sizeof s->buf;
  mb_call(self, pm, &m->hdr, on_reply, s);
}

/* Eight requests issued at once from one actor are handled in order. */
static void test_from_actor(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b);
  tu_home h;
  tu_home_init(&h, "home");
  mb_addr pm = soft_mapper(&b);
  mb_actor *self = mb_loop_actor(h.loop);
  script s = {0};
  call_map(self, pm, 0, 64 * K, true, &s);          /* 0 */
  call_map(self, pm, 64 * K, 64 * K, true, &s);     /* 1 */
  call_map(self, pm, 128 * K, 64 * K, false, &s);   /* 2 */
  call_ranges(self, pm, &s);                        /* 3: 0+128K rw, 128K+64K ro */
  call_read(self, pm, 4 * K + 8, &s);               /* 4 */
  call_unmap(self, pm, 0, 64 * K, &s);              /* 5 */
  call_unmap(self, pm, 0, 64 * K, &s);              /* 6: not a piece any more */
  call_ranges(self, pm, &s);                        /* 7: 64K+64K rw, 128K+64K ro */
  tu_home_run_until(&h, &s.done);
  const int want[SCRIPT_STEPS] = {0, 0, 0, 0, 0, 0, -ENOENT, 0};
  assert_memory_equal(s.status, want, sizeof want);
  assert_int_equal(s.count[3], 2);
  assert_int_equal(s.first[3].size, 128 * K);
  assert_true(s.first[3].writable);
  assert_int_equal(s.count[7], 2);
  assert_int_equal(s.first[7].gpa, 64 * K);
  for (size_t i = 0; i < sizeof s.buf; i++)
    assert_int_equal(s.buf[i], mb_fill_pages_byte(FILL_BASE, 4 * K + 8 + i));
  bench_close(&b);
  tu_home_fini(&h);
}

/* ---- several threads at once ---------------------------------------------------------- */

enum { THREADS = 4, ROUNDS = 300 };

typedef struct worker {
  mb_addr pm;
  int index;
  int failures;
} worker;

/* Each thread writes and reads back its own page of A through the mapper. */
static void *worker_main(void *arg) {
  worker *w = arg;
  for (uint32_t r = 0; r < ROUNDS; r++) {
    uint32_t out[4] = {(uint32_t)w->index, r, ~r, 0x5eed}, in[4] = {0};
    uint64_t gpa = (uint64_t)w->index * 4 * K + 12;
    if (pm_access_sync(w->pm, gpa, out, sizeof out, true) != 0 ||
        pm_access_sync(w->pm, gpa, in, sizeof in, false) != 0 || memcmp(in, out, sizeof in) != 0)
      w->failures++;
  }
  return NULL;
}

static void test_concurrent_access(void **unused) {
  (void)unused;
  bench b;
  bench_open(&b);
  mb_addr pm = soft_mapper(&b);
  assert_int_equal(pm_map_sync(pm, 0, 64 * K, true), 0);
  pthread_t t[THREADS];
  worker w[THREADS];
  for (int i = 0; i < THREADS; i++) {
    w[i] = (worker){pm, i, 0};
    assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
  }
  for (int i = 0; i < 100; i++) { /* meanwhile, the map changes elsewhere */
    assert_int_equal(pm_map_sync(pm, 512 * K, 8 * K, (i & 1) != 0), 0);
    assert_int_equal(pm_unmap_sync(pm, 512 * K, 8 * K), 0);
  }
  for (int i = 0; i < THREADS; i++) {
    assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(w[i].failures, 0);
    uint32_t last[4];
    memcpy(last, b.g.va.base + (uint64_t)i * 4 * K + 12, sizeof last);
    assert_int_equal(last[0], (uint32_t)i);
    assert_int_equal(last[1], ROUNDS - 1);
  }
  bench_close(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_requests),
      cmocka_unit_test(test_oneway_and_foreign),
      cmocka_unit_test(test_destroy_destroys_instance),
      cmocka_unit_test(test_create_errors),
      cmocka_unit_test(test_from_actor),
      cmocka_unit_test(test_concurrent_access),
  };
  return cmocka_run_group_tests_name("partition-mapper", tests, NULL, NULL);
}
