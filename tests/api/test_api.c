/* test_api.c: the public API as a VMM uses it: blocking calls from plain threads, the
 * asynchronous forms from a loop the test runs (attach mode), consumers on loops of their
 * own, several managers in one process. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mb_access.h"
#include "membacking.h"
#include "test_util.h"

#define MiB (1ull << 20)

/* ---- introspection ----------------------------------------------------------------------- */

/* The state as JSON: valid (python3's parser), with every section, a held lock shown. */
static void check_inspect(mb_mm *mm, mb_mapper *m) {
  mb_lock *lock = NULL;
  assert_int_equal(mb_mapper_lock(m, 0xf0000, 4096, false, &lock), 0);
  char *json = NULL;
  assert_int_equal(mb_mm_inspect_sync(mm, &json), 0);
  mb_mapper_unlock(lock);
  const char *keys[] = {"\"regions\":", "\"visible\":", "\"pending\":", "\"stages\":",
                        "\"region_manager\":", "\"rm.region_add\":{\"samples\":", "\"mappers\":",
                        "\"established\":", "\"locks\":[{\"gpa\":983040", "\"partitions\":",
                        "\"slots\":", "\"name\":\"rom\""};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (!strstr(json, keys[i])) fail_msg("no %s in %s", keys[i], json);
  char path[] = "/tmp/mb-inspect-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
  close(fd);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "python3 -c 'import json,sys; json.load(open(sys.argv[1]))' %s", path);
  assert_int_equal(system(cmd), 0);
  unlink(path);
  free(json);
}

/* ---- blocking forms from the test thread; consumers on their own loops --------------------- */

static void test_blocking_end_to_end(void **unused) {
  (void)unused;
  /* cmocka installs its own SIGSEGV/SIGBUS handlers around each test: ours goes back in front. */
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *mgr = tu_start("mgr"), *ml = tu_start("mapper"), *pl = tu_start("part");
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = mgr};
  assert_int_equal(mb_mm_create(&cfg, &mm), 0);
  mb_object *ram = tu_memfd_byte("t", 16 * MiB, 0x11), *rom = tu_memfd_byte("t", 64 * 1024, 0xee);
  mb_region_id r_ram, r_rom;
  mb_region_params p = {"ram", 0, 16 * MiB, 255, false, 0};
  assert_int_equal(mb_region_add_sync(mm, &p, &r_ram), 0);
  mb_mapping_params mp = {r_ram, 0, 16 * MiB, ram, 0, true};
  assert_int_equal(mb_mapping_add_sync(mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(mm, r_ram, true), 0);
  p = (mb_region_params){"rom", 0xf0000, 64 * 1024, 0, true, 0};
  assert_int_equal(mb_region_add_sync(mm, &p, &r_rom), 0);
  mp = (mb_mapping_params){r_rom, 0, 64 * 1024, rom, 0, false};
  assert_int_equal(mb_mapping_add_sync(mm, &mp), 0);
  mb_mapper *m = NULL;
  mb_partition *part = NULL;
  assert_int_equal(mb_mapper_add_sync(mm, ml, true, &m), 0);
  assert_int_equal(mb_partition_add_sync(mm, &mb_partition_soft, pl, &part), 0);
  uint8_t buf[4];
  assert_int_equal(mb_mapper_read(m, 0xf0000, buf, 4), 0);
  assert_memory_equal(buf, "\x11\x11\x11\x11", 4);
  assert_int_equal(mb_mapper_base(m)[0x1000], 0x11); /* plain loads at base + gpa */
  mb_mapper *primary = mb_mm_primary_mapper(mm);  /* the partitions' view, eager */
  assert_int_equal(mb_mapper_read(primary, 0x2000, buf, 1), 0);
  assert_int_equal(buf[0], 0x11);
  assert_int_equal(mb_mapper_remove_sync(primary), MB_E_INVALID);
  mb_lock *lock = NULL;  /* locks go through mappers of one's own, never the partitions' view */
  assert_int_equal(mb_mapper_lock(primary, 0x2000, 4096, false, &lock), MB_E_INVALID);
  assert_int_equal(mb_region_remove_sync(mm, r_ram), 0);
  assert_int_equal(mb_region_map_sync(mm, r_rom, false), 0);
  int state = -1;
  assert_int_equal(mb_region_state_sync(mm, r_rom, &state), 0);
  assert_int_equal(state, MB_REGION_ACTIVE);
  assert_int_equal(mb_mapper_read(m, 0xf0000, buf, 2), 0);
  assert_int_equal(buf[0], 0xee);
  assert_int_equal(mb_mapper_write(m, 0xf0000, buf, 1), MB_E_READONLY);
  assert_int_equal(mb_partition_access_sync(part, 0xf0000, buf, 1, true), MB_E_MMIO);
  assert_int_equal(mb_partition_access_sync(part, 0x1000, buf, 1, false), MB_E_MMIO);
  mb_range_list *rl = NULL;
  assert_int_equal(mb_partition_ranges_sync(part, &rl), 0);
  assert_int_equal(rl->count, 1);
  assert_int_equal(rl->ranges[0].gpa, 0xf0000);
  assert_false(rl->ranges[0].writable);
  free(rl);
  assert_int_equal(mb_region_map_sync(mm, 999, true), MB_E_NOTFOUND);
  check_inspect(mm, m);
  assert_int_equal(mb_mapper_remove_sync(m), 0);
  mb_mm_destroy(mm); /* with the partition and regions still there */
  mb_object_unref(ram);
  mb_object_unref(rom);
  tu_stop(pl);
  tu_stop(ml);
  tu_stop(mgr);
}

/* ---- asynchronous forms from a loop the test runs ------------------------------------------ */


static void wait_done(uv_loop_t *uv, tu_done *d) {
  while (d->calls == 0) uv_run(uv, UV_RUN_ONCE);
  assert_int_equal(d->calls, 1);
}

/* On the test's loop (the manager's too, so asynchronous calls only): a manager with a mapped
 * 64 MiB device region at 64 MiB and an eager mapper. */
static mb_mapper *async_dax_setup(tu_home *h, mb_mm **mm, mb_region_id *id) {
  /* cmocka installs its own SIGSEGV/SIGBUS handlers around each test: ours goes back in front. */
  assert_int_equal(mb_access_reinstall(), 0);
  tu_home_init(h, "vmm");
  mb_mm_config cfg = {.max_addr = 1ull << 30, .loop = h->loop};
  assert_int_equal(mb_mm_create(&cfg, mm), 0); /* inline: on the loop's own thread */
  tu_done d = {0};
  mb_region_params p = {"dax", 64 * MiB, 64 * MiB, 0, true, 0};
  mb_region_add(*mm, &p, tu_on_done, &d);
  assert_int_equal(d.calls, 0); /* never completes inside the call */
  wait_done(&h->uv, &d);
  assert_int_equal(d.status, 0);
  *id = (mb_region_id)d.value;
  d = (tu_done){0};
  mb_region_map(*mm, *id, true, tu_on_done, &d);
  wait_done(&h->uv, &d);
  d = (tu_done){0};
  mb_mapper_add(*mm, NULL, true, tu_on_done, &d);
  wait_done(&h->uv, &d);
  assert_int_equal(d.status, 0);
  return (mb_mapper *)(uintptr_t)d.value;
}

static void test_async_attached(void **unused) {
  (void)unused;
  tu_home h;
  mb_mm *mm = NULL;
  mb_region_id id;
  mb_mapper *m = async_dax_setup(&h, &mm, &id);
  mb_object *o = tu_memfd_byte("t", 2 * MiB, 0x5a);
  tu_done d = {0};
  mb_mapping_params mp = {id, 2 * MiB, 2 * MiB, o, 0, true};
  mb_mapping_add(mm, &mp, tu_on_done, &d);
  wait_done(&h.uv, &d);
  assert_int_equal(d.status, 0);
  assert_int_equal(mb_mapper_base(m)[64 * MiB + 2 * MiB], 0x5a);
  d = (tu_done){0};
  mb_mapping_add(mm, &mp, tu_on_done, &d);
  wait_done(&h.uv, &d);
  assert_int_equal(d.status, MB_E_OVERLAP);
  d = (tu_done){0};
  mb_mapping_remove(mm, id, 2 * MiB, 1 * MiB, tu_on_done, &d);
  wait_done(&h.uv, &d);
  uint8_t b;
  assert_int_equal(mb_mapper_read(m, 64 * MiB + 2 * MiB, &b, 1), MB_E_UNMAPPED);
  assert_int_equal(mb_mapper_read(m, 64 * MiB + 3 * MiB, &b, 1), 0);
  d = (tu_done){0};
  mb_mapper_remove(m, tu_on_done, &d);
  wait_done(&h.uv, &d);
  assert_int_equal(d.status, 0);
  mb_mm_destroy(mm);
  mb_object_unref(o);
  tu_home_fini(&h);
}

/* The caller's object reference may go as soon as an asynchronous mapping add or replace is
 * issued: the request carries one for the manager, which keeps it with the mapping (or drops
 * it when it refuses the request: ASan's leak check sees any reference left behind). */
static void test_async_mapping_keeps_the_object(void **unused) {
  (void)unused;
  tu_home h;
  mb_mm *mm = NULL;
  mb_region_id id;
  mb_mapper *m = async_dax_setup(&h, &mm, &id);
  tu_done d = {0};
  const uint8_t fills[] = {0x11, 0x22, 0x33};
  for (int i = 0; i < 3; i++) { /* an add, then two replaces, each object dropped at once */
    mb_mapping_params mp = {id, 0, 2 * MiB, tu_memfd_byte("t", 2 * MiB, fills[i]), 0, true};
    d = (tu_done){0};
    (i == 0 ? mb_mapping_add : mb_mapping_replace)(mm, &mp, tu_on_done, &d);
    mb_object_unref(mp.obj);
    wait_done(&h.uv, &d);
    assert_int_equal(d.status, 0);
    assert_int_equal(mb_mapper_base(m)[64 * MiB + 4096], fills[i]);
  }
  mb_mapping_params bad = {id, 63 * MiB, 2 * MiB, tu_memfd_byte("t", 2 * MiB, 0), 0, true};
  d = (tu_done){0};
  mb_mapping_replace(mm, &bad, tu_on_done, &d); /* past the region's end: refused */
  mb_object_unref(bad.obj);
  wait_done(&h.uv, &d);
  assert_int_equal(d.status, MB_E_INVALID);
  assert_int_equal(mb_mapper_base(m)[64 * MiB + 4096], fills[2]);
  mb_mm_destroy(mm);
  tu_home_fini(&h);
}

/* ---- several managers, used from several threads at once ---------------------------------- */

typedef struct vm_arg {
  mb_loop *loop;
  uint8_t fill;
  int rc;
} vm_arg;

static void *run_vm(void *p) {
  vm_arg *a = p;
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 1ull << 30, .loop = a->loop};
  a->rc = mb_mm_create(&cfg, &mm);
  if (a->rc) return NULL;
  mb_object *o = tu_memfd_byte("t", 1 * MiB, a->fill);
  mb_mapper *m = NULL;
  mb_region_id id;
  mb_region_params rp = {"ram", 0, 1 * MiB, 1, false, 0};
  mb_mapping_params mp = {0, 0, 1 * MiB, o, 0, true};
  for (int i = 0; i < 50 && !a->rc; i++) {
    a->rc = mb_region_add_sync(mm, &rp, &id);
    mp.region = id;
    if (!a->rc) a->rc = mb_mapping_add_sync(mm, &mp);
    if (!a->rc) a->rc = mb_region_map_sync(mm, id, true);
    if (!a->rc && !m) a->rc = mb_mapper_add_sync(mm, NULL, false, &m);
    uint8_t b = 0;
    if (!a->rc) a->rc = mb_mapper_read(m, 4096, &b, 1);
    if (!a->rc && b != a->fill) a->rc = -1;
    if (!a->rc) a->rc = mb_region_remove_sync(mm, id);
  }
  mb_mm_destroy(mm);
  mb_object_unref(o);
  return NULL;
}

static void test_several_managers(void **unused) {
  (void)unused;
  /* cmocka installs its own SIGSEGV/SIGBUS handlers around each test: ours goes back in front. */
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *shared = tu_start("shared");
  pthread_t t[3];
  vm_arg args[3];
  for (int i = 0; i < 3; i++) {
    args[i] = (vm_arg){shared, (uint8_t)(0x10 + i), 0};
    pthread_create(&t[i], NULL, run_vm, &args[i]);
  }
  for (int i = 0; i < 3; i++) {
    pthread_join(t[i], NULL);
    assert_int_equal(args[i].rc, 0);
  }
  tu_stop(shared);
}

/* A region name is kept whole or refused, never cut. */
static void test_region_names(void **unused) {
  (void)unused;
  assert_int_equal(mb_access_reinstall(), 0);
  mb_loop *l = tu_start("names");
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 1ull << 30, .loop = l};
  assert_int_equal(mb_mm_create(&cfg, &mm), 0);
  char name[MB_REGION_NAME_MAX + 2];
  memset(name, 'n', sizeof name - 1);
  name[sizeof name - 1] = '\0'; /* one byte too long */
  mb_region_params p = {name, 0, 1 << 20, 1, false, 0};
  mb_region_id id;
  assert_int_equal(mb_region_add_sync(mm, &p, &id), MB_E_INVALID);
  name[MB_REGION_NAME_MAX] = '\0'; /* exactly the limit */
  assert_int_equal(mb_region_add_sync(mm, &p, &id), 0);
  mb_mm_destroy(mm);
  tu_stop(l);
}

static void test_bad_config(void **unused) {
  (void)unused;
  /* cmocka installs its own SIGSEGV/SIGBUS handlers around each test: ours goes back in front. */
  assert_int_equal(mb_access_reinstall(), 0);
  mb_mm *mm = NULL;
  mb_mm_config cfg = {0};
  assert_int_equal(mb_mm_create(&cfg, &mm), MB_E_INVALID);
  mb_loop *l = tu_start("x");
  cfg = (mb_mm_config){.max_addr = 12345, .loop = l};
  assert_int_equal(mb_mm_create(&cfg, &mm), MB_E_INVALID);
  cfg = (mb_mm_config){.overlap = 7, .loop = l};
  assert_int_equal(mb_mm_create(&cfg, &mm), MB_E_INVALID);
  assert_null(mm);
  tu_stop(l);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_blocking_end_to_end),
      cmocka_unit_test(test_async_attached),
      cmocka_unit_test(test_async_mapping_keeps_the_object),
      cmocka_unit_test(test_several_managers),
      cmocka_unit_test(test_bad_config),
      cmocka_unit_test(test_region_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
