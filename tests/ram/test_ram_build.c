/* test_ram_build.c: the RAM builder's requests and layouts (mb_ram.h): a shared memfd (the
 * default), private memory, an existing fd reused with its contents, prefetch, the THP hint,
 * a host NUMA node, the x86 legacy split (16 regions, bounds, priorities), VTL 2's RAM,
 * destroy, and the asynchronous forms from a loop thread. */
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#ifdef MB_HAVE_NUMA
#include <numa.h>
#include <numaif.h>
#endif

#include "ram_util.h"

static ru_world W;

static int setup(void **state) {
  (void)state;
  ru_init(&W, 64 * GiB);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  ru_fini(&W);
  return 0;
}

static mb_ram *build(const mb_ram_request *q, size_t n, bool legacy) {
  mb_ram_config cfg = {q, n, legacy};
  mb_ram_error e;
  mb_ram *ram = NULL;
  int rc = mb_ram_build_sync(W.mm, &cfg, &ram, &e);
  if (rc) print_error("build: %s\n", e.message);
  assert_int_equal(rc, 0);
  assert_int_equal(e.code, 0);
  assert_string_equal(e.message, "");
  return ram;
}

static void write_read(mb_mapper *m, uint64_t gpa, uint64_t v) {
  uint64_t got = 0;
  assert_int_equal(mb_mapper_write(m, gpa, &v, sizeof v), 0);
  assert_int_equal(mb_mapper_read(m, gpa, &got, sizeof got), 0);
  assert_int_equal(got, v);
}

/* fds of the process whose link names a memfd of this label. */
static int memfd_count(const char *label) {
  char path[64], link[256];
  int n = 0;
  for (int fd = 0; fd < 1024; fd++) {
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(path, link, sizeof link - 1);
    if (len <= 0) continue;
    link[len] = '\0';
    n += strstr(link, label) != NULL;
  }
  return n;
}

/* The default: one shared memfd for all the ranges of a request, laid back to back. */
static void test_memfd(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  int fds = tu_fd_count();
  mb_ram_range r[] = {{0, 16 * MiB}, {32 * MiB, 16 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 2};
  mb_ram *ram = build(&q, 1, false);
  assert_int_equal(tu_fd_count(), fds + 1);
  assert_int_equal(memfd_count("memfd:membacking:guest-ram"), 1);
  assert_int_equal(mb_ram_region_count(ram), 2);
  assert_int_equal(ru_region_count(W.mm), 2);
  assert_true(ru_has_region(W.mm, 32 * MiB, 16 * MiB, MB_RAM_PRIORITY, false));
  write_read(W.view, 0, 0x1111);
  write_read(W.view, 40 * MiB, 0x2222);
  uint64_t hole = 0;
  assert_int_equal(mb_mapper_read(W.view, 20 * MiB, &hole, 8), MB_E_UNMAPPED);
  /* a second mapper shows the same memory */
  mb_mapper *other = NULL;
  assert_int_equal(mb_mapper_add_sync(W.mm, NULL, true, &other), 0);
  uint64_t got = 0;
  assert_int_equal(mb_mapper_read(other, 40 * MiB, &got, 8), 0);
  assert_int_equal(got, 0x2222);
  assert_int_equal(mb_mapper_remove_sync(other), 0);
  assert_int_equal(mb_ram_destroy_sync(ram), 0);
  assert_int_equal(ru_region_count(W.mm), 0);
  assert_int_equal(tu_fd_count(), fds);
}

/* RAM of VTL 2 (a paravisor's private memory) in a manager with VTLs 0 and 2: VTL 0's mappers
 * do not see it, VTL 2's see it and VTL 0's RAM too; destroy takes both. */
static void test_vtl2_memory(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  ru_world v;
  ru_init_cfg(&v, (mb_mm_config){.max_addr = 4 * GiB, .vtls = 0x5});
  mb_ram_range r0[] = {{0, 16 * MiB}}, r2[] = {{1 * GiB, 16 * MiB}};
  mb_ram_request q[] = {{.ranges = r0, .count = 1}, {.ranges = r2, .count = 1, .vtl = 2}};
  mb_ram_config cfg = {q, 2, true};
  mb_ram *ram = NULL;
  assert_int_equal(mb_ram_build_sync(v.mm, &cfg, &ram, NULL), 0);
  mb_mapper *vtl2 = NULL;
  assert_int_equal(mb_mapper_add_vtl_sync(v.mm, NULL, true, 2, &vtl2), 0);
  write_read(vtl2, 1 * GiB + 8, 0x2222);
  write_read(vtl2, 0x200000, 0x3333);
  uint64_t got = 0;
  assert_int_equal(mb_mapper_read(v.view, 1 * GiB + 8, &got, 8), MB_E_UNMAPPED);
  assert_int_equal(mb_mapper_read(v.view, 0x200000, &got, 8), 0);
  assert_int_equal(got, 0x3333);
  assert_int_equal(mb_ram_region_count(ram), 17); /* the legacy split's 16 and VTL 2's one */
  assert_int_equal(mb_mapper_remove_sync(vtl2), 0);
  assert_int_equal(mb_ram_destroy_sync(ram), 0);
  assert_int_equal(ru_region_count(v.mm), 0);
  ru_fini(&v);
}

/* Private memory: no fd given out, same bytes in every mapper, none of the memfd label. */
static void test_private(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_range r[] = {{0, 8 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 1, .private_memory = true};
  mb_ram *ram = build(&q, 1, false);
  write_read(W.view, 4 * MiB, 0x3333);
  mb_mapper *other = NULL;
  assert_int_equal(mb_mapper_add_sync(W.mm, NULL, true, &other), 0);
  uint64_t got = 0;
  assert_int_equal(mb_mapper_read(other, 4 * MiB, &got, 8), 0);
  assert_int_equal(got, 0x3333);
  assert_int_equal(mb_mapper_remove_sync(other), 0);
  assert_int_equal(mb_ram_destroy_sync(ram), 0);
}

/* The restore path: a memfd the VMM holds, its contents visible through a mapper at the
 * offsets the back-to-back layout gives; writes reach the caller's file. */
static void test_existing_fd(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  int fd = memfd_create("saved-ram", MFD_CLOEXEC);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, 16 * MiB), 0);
  uint64_t a = 0xaaaa0000, b = 0xbbbb0000;
  assert_int_equal(pwrite(fd, &a, 8, 0x1000), 8);
  assert_int_equal(pwrite(fd, &b, 8, 8 * MiB + 0x2000), 8);
  int fds = tu_fd_count();
  mb_ram_range r[] = {{0, 8 * MiB}, {16 * MiB, 8 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 2, .use_existing_fd = true, .existing_fd = fd};
  mb_ram *ram = build(&q, 1, false);
  uint64_t got = 0;
  assert_int_equal(mb_mapper_read(W.view, 0x1000, &got, 8), 0);
  assert_int_equal(got, a);
  assert_int_equal(mb_mapper_read(W.view, 16 * MiB + 0x2000, &got, 8), 0);
  assert_int_equal(got, b);
  uint64_t c = 0xcccc0000;
  assert_int_equal(mb_mapper_write(W.view, 16 * MiB + 0x3000, &c, 8), 0);
  assert_int_equal(pread(fd, &got, 8, 8 * MiB + 0x3000), 8);
  assert_int_equal(got, c);
  assert_int_equal(mb_ram_destroy_sync(ram), 0);
  assert_int_equal(tu_fd_count(), fds); /* the object's duplicate is gone, the VMM's fd stays */
  close(fd);
}

/* Pages resident in the mapper's view of [gpa, gpa + size) (page cache residency: mincore). */
static size_t resident(uint64_t gpa, uint64_t size) {
  size_t pages = size / MB_PAGE_SIZE, n = 0;
  unsigned char *vec = malloc(pages);
  assert_int_equal(mincore(mb_mapper_base(W.view) + gpa, size, vec), 0);
  for (size_t i = 0; i < pages; i++) n += vec[i] & 1;
  free(vec);
  return n;
}

static void test_prefetch(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_range r[] = {{0, 8 * MiB}}, s[] = {{16 * MiB, 8 * MiB}};
  mb_ram_request q[] = {{.ranges = r, .count = 1, .prefetch = true},
                        {.ranges = s, .count = 1}};
  mb_ram *ram = build(q, 2, false);
  assert_int_equal(resident(0, 8 * MiB), 8 * MiB / MB_PAGE_SIZE);
  assert_int_equal(resident(16 * MiB, 8 * MiB), 0); /* no prefetch: nothing allocated yet */
  assert_int_equal(mb_ram_destroy_sync(ram), 0);
  /* private memory too */
  mb_ram_request p = {.ranges = r, .count = 1, .prefetch = true, .private_memory = true};
  ram = build(&p, 1, false);
  assert_int_equal(resident(0, 8 * MiB), 8 * MiB / MB_PAGE_SIZE);
  assert_int_equal(mb_ram_destroy_sync(ram), 0);
}

/* The THP hint: every mapping of the backing carries MADV_HUGEPAGE ("hg" in VmFlags), in
 * each mapper; without it, none does. */
static bool hinted(mb_mapper *m, uint64_t gpa) {
  char flags[256];
  uint8_t *p = mb_mapper_base(m) + gpa;
  ru_smaps_sum(p, p + MB_PAGE_SIZE, NULL, 0, flags, sizeof flags);
  assert_true(flags[0] != '\0');
  return strstr(flags, " hg") != NULL;
}

static void test_thp_hint(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_range r[] = {{0, 8 * MiB}}, s[] = {{16 * MiB, 8 * MiB}};
  mb_ram_request q[] = {{.ranges = r, .count = 1, .transparent_hugepages = true},
                        {.ranges = s, .count = 1}};
  mb_ram *ram = build(q, 2, false);
  mb_mapper *other = NULL;
  assert_int_equal(mb_mapper_add_sync(W.mm, NULL, true, &other), 0);
  assert_true(hinted(W.view, 0));
  assert_true(hinted(other, 4 * MiB));
  assert_false(hinted(W.view, 16 * MiB));
  assert_int_equal(mb_mapper_remove_sync(other), 0);
  assert_int_equal(mb_ram_destroy_sync(ram), 0);
}

/* NUMA: node 0 works (its pages are there, once prefetched); a node the host lacks is a
 * clear error. Other nodes only where the host has them. */
static void test_numa(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  mb_ram_range r[] = {{0, 8 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 1, .use_numa_node = true, .numa_node = 0,
                      .prefetch = true};
  mb_ram_config cfg = {&q, 1, false};
  mb_ram_error e;
  mb_ram *ram = NULL;
#ifdef MB_HAVE_NUMA
  if (numa_available() < 0) {
    assert_int_equal(mb_ram_build_sync(W.mm, &cfg, &ram, &e), MB_E_UNSUPPORTED);
    ru_expect_error(&e, MB_E_UNSUPPORTED, MB_RAM_NUMA_UNSUPPORTED, "NUMA node 0", NULL);
    skip(); /* "the host has no NUMA support": the error above is what it gets */
  }
  int last = numa_max_node();
  for (int node = 0; node <= last; node++) {
    if (!numa_bitmask_isbitset(numa_all_nodes_ptr, (unsigned)node)) continue;
    q.numa_node = (uint32_t)node;
    assert_int_equal(mb_ram_build_sync(W.mm, &cfg, &ram, &e), 0);
    write_read(W.view, 0x1000, 0x4444);
    int where = -1;
    assert_int_equal(get_mempolicy(&where, NULL, 0, mb_mapper_base(W.view) + 0x1000,
                                   MPOL_F_NODE | MPOL_F_ADDR), 0);
    assert_int_equal(where, node);
    assert_int_equal(mb_ram_destroy_sync(ram), 0);
  }
  int fds = tu_fd_count();
  q.numa_node = (uint32_t)last + 1;
  assert_int_equal(mb_ram_build_sync(W.mm, &cfg, &ram, &e), MB_E_INVALID);
  char node[32];
  snprintf(node, sizeof node, "node %d does not exist", last + 1);
  ru_expect_error(&e, MB_E_INVALID, MB_RAM_NUMA_NODE, node, "request 0");
  assert_int_equal(tu_fd_count(), fds);
  if (last == 0) print_message("one NUMA node here: only node 0 and a missing node tested\n");
#else
  assert_int_equal(mb_ram_build_sync(W.mm, &cfg, &ram, &e), MB_E_UNSUPPORTED);
  ru_expect_error(&e, MB_E_UNSUPPORTED, MB_RAM_NUMA_UNSUPPORTED, "no libnuma", NULL);
  print_message("built without libnuma: a NUMA request is MB_E_UNSUPPORTED\n");
  skip();
#endif
}

/* The x86 legacy split: 16 regions at the PC's bounds, all RAM at priority 255, each backed
 * at its own guest address's offset. */
static void test_legacy_split(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  static const uint64_t bounds[] = {0,       0xa0000, 0xc0000, 0xc4000, 0xc8000, 0xcc000,
                                    0xd0000, 0xd4000, 0xd8000, 0xdc000, 0xe0000, 0xe4000,
                                    0xe8000, 0xec000, 0xf0000, 0x100000, 64 * MiB};
  mb_ram_range r[] = {{0, 64 * MiB}, {4 * GiB, 64 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 2};
  mb_ram *ram = build(&q, 1, true);
  assert_int_equal(mb_ram_region_count(ram), 17);
  assert_int_equal(ru_region_count(W.mm), 17);
  for (size_t i = 0; i < 16; i++) {
    mb_ram_range g;
    mb_region_id id;
    assert_true(mb_ram_region(ram, i, &g, &id));
    assert_int_equal(g.gpa, bounds[i]);
    assert_int_equal(g.size, bounds[i + 1] - bounds[i]);
    assert_true(ru_has_region(W.mm, g.gpa, g.size, 255, false));
    int st = -1;
    assert_int_equal(mb_region_state_sync(W.mm, id, &st), 0);
    assert_int_equal(st, MB_REGION_ACTIVE);
    write_read(W.view, g.gpa, 0x5500 + i); /* contiguous backing: one object, offset = gpa */
  }
  assert_true(ru_has_region(W.mm, 4 * GiB, 64 * MiB, 255, false));
  assert_false(mb_ram_region(ram, 17, NULL, NULL));
  assert_int_equal(MB_DEVICE_PRIORITY, 0);
  assert_int_equal(mb_ram_destroy_sync(ram), 0);
  assert_int_equal(ru_region_count(W.mm), 0);
}

/* ---- the asynchronous forms, from a loop thread ------------------------------------------- */

static void test_async(void **state) {
  (void)state;
  RU_TEST_BEGIN();
  tu_home h;
  tu_home_init(&h, "vmm");
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 64 * MiB, .loop = h.loop};
  assert_int_equal(mb_mm_create(&cfg, &mm), 0);
  mb_ram_range r[] = {{0, 16 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 1};
  mb_ram_config rc = {&q, 1, true};
  mb_ram_error e;
  tu_done d = {0};
  volatile bool done = false;
  mb_ram_build(mm, &rc, &e, tu_on_done, &d);
  assert_int_equal(d.calls, 0); /* never inside the call */
  while (d.calls == 0) uv_run(&h.uv, UV_RUN_ONCE);
  assert_int_equal(d.status, 0);
  mb_ram *ram = (mb_ram *)(uintptr_t)d.value;
  assert_int_equal(mb_ram_region_count(ram), 16);
  /* a window switch, asynchronously */
  mb_ram_window w = {0xf0000, 0x10000, MB_RAM_NONE};
  d = (tu_done){0};
  mb_ram_set_visibility(ram, &w, 1, &e, tu_on_done, &d);
  assert_int_equal(d.calls, 0);
  while (d.calls == 0) uv_run(&h.uv, UV_RUN_ONCE);
  assert_int_equal(d.status, 0);
  assert_int_equal(mb_ram_visibility_of(ram, 0xf0000, 0x10000), MB_RAM_NONE);
  /* an error, asynchronously, never inside the call either */
  w.gpa = 0xf1000;
  d = (tu_done){0};
  mb_ram_set_visibility(ram, &w, 1, &e, tu_on_done, &d);
  assert_int_equal(d.calls, 0);
  while (d.calls == 0) uv_run(&h.uv, UV_RUN_ONCE);
  assert_int_equal(d.status, MB_E_INVALID);
  assert_int_equal(e.reason, MB_RAM_BAD_WINDOW);
  q.private_memory = true; /* private + legacy */
  d = (tu_done){0};
  mb_ram_build(mm, &rc, &e, tu_on_done, &d);
  assert_int_equal(d.calls, 0);
  while (d.calls == 0) uv_run(&h.uv, UV_RUN_ONCE);
  assert_int_equal(d.status, MB_E_INVALID);
  assert_int_equal(e.reason, MB_RAM_PRIVATE_WITH_LEGACY);
  d = (tu_done){0};
  mb_ram_destroy(ram, tu_on_done, &d);
  assert_int_equal(d.calls, 0);
  while (d.calls == 0) uv_run(&h.uv, UV_RUN_ONCE);
  assert_int_equal(d.status, 0);
  (void)done;
  mb_mm_destroy(mm);
  tu_home_fini(&h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_memfd),          cmocka_unit_test(test_private),
      cmocka_unit_test(test_existing_fd),    cmocka_unit_test(test_prefetch),
      cmocka_unit_test(test_thp_hint),       cmocka_unit_test(test_numa),
      cmocka_unit_test(test_legacy_split),   cmocka_unit_test(test_async),
      cmocka_unit_test(test_vtl2_memory),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
