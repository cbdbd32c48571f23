/* test_va_reserve.c: VA reservations: mapping fds and anonymous memory, unmapping back to
 * PROT_NONE, protection changes, argument checks, large and aligned reservations (large-page
 * alignment by default, with nothing but the span itself left reserved), which changes count
 * as drops. Faults are observed with mb_access_* instead of crashing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mb_access.h"
#include "mb_range.h"
#include "mem_probe.h"
#include "va_reserve.h"

#define PAGE ((uint64_t)MB_PAGE_SIZE)
#define GiB (1ull << 30)
#define MiB (1ull << 20)

/* cmocka installs its own SIGSEGV/SIGBUS handlers around each test; put ours back first. */
static void begin(void) {
  assert_int_equal(mb_access_reinstall(), 0);
}

static int make_memfd(uint64_t size) {
  int fd = memfd_create("test-va", MFD_CLOEXEC);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, (off_t)size), 0);
  return fd;
}

/* 1 if the byte at p can be read, 0 if reading faults. */
static int readable(const void *p) {
  unsigned char b;
  return mb_access_read(&b, p, 1, NULL) == 0;
}

/* 1 if the byte at p can be written (it is rewritten with its own value). */
static int writable(void *p) {
  unsigned char b;
  if (mb_access_read(&b, p, 1, NULL) != 0)
    return 0;
  return mb_access_write(p, &b, 1, NULL) == 0;
}

static void test_reserve_64g(void **state) {
  (void)state;
  begin();
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 64 * GiB), 0);
  assert_non_null(va.base);
  assert_true(va.size == 64 * GiB);
  assert_true(((uintptr_t)va.base & (PAGE - 1)) == 0);
  /* the whole span is PROT_NONE: first, middle and last page fault */
  assert_false(readable(va.base));
  assert_false(readable(va.base + 32 * GiB));
  assert_false(readable(va.base + 64 * GiB - 1));
  /* map a page at the very end and the very start */
  int fd = make_memfd(PAGE);
  assert_int_equal(mb_va_map_fd(&va, 64 * GiB - PAGE, PAGE, fd, 0, true), 0);
  assert_int_equal(mb_va_map_anon(&va, 0, PAGE, true), 0);
  va.base[64 * GiB - 1] = 0x5a;
  va.base[0] = 0x6b;
  unsigned char b = 0;
  assert_int_equal(pread(fd, &b, 1, PAGE - 1), 1);
  assert_int_equal(b, 0x5a);
  assert_int_equal(mb_va_release(&va), 0);
  assert_null(va.base);
  assert_true(va.size == 0);
  assert_int_equal(mb_va_release(&va), 0); /* releasing a released (zeroed) va is a no-op */
  close(fd);
}

static void test_reserve_aligned(void **state) {
  (void)state;
  begin();
  uint64_t aligns[] = {PAGE, 2 * MiB, GiB};
  for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
    mb_va va;
    assert_int_equal(mb_va_reserve_aligned(&va, 3 * GiB + 5 * PAGE, aligns[i]), 0);
    assert_true(((uintptr_t)va.base & (aligns[i] - 1)) == 0);
    assert_true(va.size == 3 * GiB + 5 * PAGE);
    assert_false(readable(va.base + va.size - 1));
    mb_va_release(&va);
  }
}

/* Where the kernel would put a span of len bytes now (nothing maps in between: the next
 * mmap of that length lands there too). */
static uint8_t *next_placement(uint64_t len) {
  void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  assert_true(p != MAP_FAILED);
  assert_int_equal(munmap(p, len), 0);
  return p;
}

/* Asserts that the first and last pages of [a, b) are unmapped (a == b: nothing to see). */
static void expect_unmapped(const uint8_t *a, const uint8_t *b) {
  if (a < b) {
    assert_false(mem_mapped(a));
    assert_false(mem_mapped(b - 1));
  }
}

/* mb_va_reserve aligns every span for large pages and gives the excess back: the process's
 * address space grows by exactly the span (VmSize is exact whatever lies around it), and the
 * trimmed pages on either side, where the kernel put the whole span first, are unmapped. */
static void test_reserve_large_page_aligned(void **state) {
  (void)state;
  const uint64_t sizes[] = {PAGE,       2 * MiB - PAGE, 2 * MiB,    2 * MiB + PAGE,
                            GiB - PAGE, GiB,            GiB + PAGE, 3 * GiB + 5 * PAGE,
                            64 * GiB + 3 * PAGE};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    uint64_t size = sizes[i], align = size >= GiB ? GiB : 2 * MiB;
    assert_true(mb_va_align_for(size) == align);
    uint64_t span = size + align - PAGE;
    uint64_t before = mem_vm_size();
    uint8_t *lo = next_placement(span);
    mb_va va;
    assert_int_equal(mb_va_reserve(&va, size), 0);
    uint64_t grew = mem_vm_size() - before;
    if (((uintptr_t)va.base & (align - 1)) != 0 || grew != size)
      fail_msg("size %#llx: base %p (align %#llx), address space grew by %#llx",
               (unsigned long long)size, (void *)va.base, (unsigned long long)align,
               (unsigned long long)grew);
    assert_true(va.size == size);
    assert_true(mem_mapped(va.base) && mem_mapped(va.base + size - 1));
    assert_true(va.base >= lo && va.base + size <= lo + span); /* where it was predicted */
    expect_unmapped(lo, va.base);
    expect_unmapped(va.base + size, lo + span);
    assert_int_equal(mb_va_release(&va), 0);
    assert_true(mem_vm_size() == before);
  }
}

static void test_reserve_invalid(void **state) {
  (void)state;
  mb_va va = {.base = (uint8_t *)1, .size = 1};
  assert_int_equal(mb_va_reserve(&va, 0), -EINVAL);
  assert_null(va.base);
  assert_int_equal(mb_va_reserve(&va, PAGE + 1), -EINVAL);
  assert_int_equal(mb_va_reserve(&va, 100), -EINVAL);
  assert_int_equal(mb_va_reserve_aligned(&va, PAGE, 0), -EINVAL);
  assert_int_equal(mb_va_reserve_aligned(&va, PAGE, 2048), -EINVAL);
  assert_int_equal(mb_va_reserve_aligned(&va, PAGE, 3 * PAGE), -EINVAL);
  assert_int_equal(mb_va_reserve_aligned(&va, UINT64_MAX - PAGE + 1, 2 * MiB), -EINVAL);
  /* far more than the address space: the kernel refuses */
  assert_int_equal(mb_va_reserve(&va, 1ull << 62), -ENOMEM);
  assert_null(va.base);
}

static void test_map_fd_read_write(void **state) {
  (void)state;
  begin();
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 16 * PAGE), 0);
  int fd = make_memfd(8 * PAGE);
  /* file pages 2..5 at va pages 4..7 */
  assert_int_equal(mb_va_map_fd(&va, 4 * PAGE, 4 * PAGE, fd, 2 * PAGE, true), 0);
  uint8_t *p = mb_va_ptr(&va, 4 * PAGE);
  for (uint64_t i = 0; i < 4 * PAGE; i++)
    p[i] = (uint8_t)(i * 7);
  /* shared: the file sees the writes at the right offset */
  uint8_t buf[64];
  assert_int_equal(pread(fd, buf, sizeof buf, 2 * PAGE + 100), sizeof buf);
  for (size_t i = 0; i < sizeof buf; i++)
    assert_int_equal(buf[i], (uint8_t)((100 + i) * 7));
  /* and the mapping sees writes to the file */
  uint8_t v = 0xee;
  assert_int_equal(pwrite(fd, &v, 1, 5 * PAGE + 9), 1);
  assert_int_equal(p[3 * PAGE + 9], 0xee);
  /* neighbours stay reserved */
  assert_false(readable(va.base + 4 * PAGE - 1));
  assert_false(readable(va.base + 8 * PAGE));
  /* unmap the middle two pages: PROT_NONE again, observed as a fault at the first one */
  assert_int_equal(mb_va_unmap(&va, 5 * PAGE, 2 * PAGE), 0);
  uint8_t big[4 * PAGE];
  mb_fault f;
  assert_int_equal(mb_access_read(big, p, sizeof big, &f), -EFAULT);
  assert_ptr_equal(f.addr, va.base + 5 * PAGE);
  assert_true(f.done == PAGE);
  assert_int_equal(f.signo, SIGSEGV);
  assert_int_equal(f.code, SEGV_ACCERR); /* a PROT_NONE mapping, not a hole */
  assert_true(readable(p + 3 * PAGE));
  /* the file kept its contents; mapping it again shows them */
  assert_int_equal(mb_va_map_fd(&va, 5 * PAGE, 2 * PAGE, fd, 3 * PAGE, false), 0);
  assert_int_equal(p[PAGE + 1], (uint8_t)((PAGE + 1) * 7));
  mb_va_release(&va);
  close(fd);
}

static void test_protect(void **state) {
  (void)state;
  begin();
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 8 * PAGE), 0);
  int fd = make_memfd(4 * PAGE);
  assert_int_equal(mb_va_map_fd(&va, 0, 4 * PAGE, fd, 0, true), 0);
  memset(va.base, 0x11, 4 * PAGE);
  assert_int_equal(mb_va_protect(&va, PAGE, 2 * PAGE, false), 0);
  assert_true(writable(va.base));
  assert_false(writable(va.base + PAGE));
  assert_false(writable(va.base + 3 * PAGE - 1));
  assert_true(readable(va.base + 2 * PAGE));
  assert_true(writable(va.base + 3 * PAGE));
  uint8_t src[PAGE];
  memset(src, 0x22, sizeof src);
  mb_fault f;
  assert_int_equal(mb_access_write(va.base + PAGE, src, PAGE, &f), -EFAULT);
  assert_ptr_equal(f.addr, va.base + PAGE);
  assert_int_equal(f.code, SEGV_ACCERR);
  assert_int_equal(va.base[PAGE], 0x11); /* unchanged */
  assert_int_equal(mb_va_protect(&va, PAGE, 2 * PAGE, true), 0);
  assert_int_equal(mb_access_write(va.base + PAGE, src, PAGE, &f), 0);
  assert_int_equal(va.base[PAGE], 0x22);
  mb_va_release(&va);
  close(fd);
}

static void test_map_anon(void **state) {
  (void)state;
  begin();
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 8 * PAGE), 0);
  assert_int_equal(mb_va_map_anon(&va, 2 * PAGE, 2 * PAGE, true), 0);
  for (uint64_t i = 0; i < 2 * PAGE; i++)
    assert_int_equal(va.base[2 * PAGE + i], 0);
  memset(va.base + 2 * PAGE, 0x33, 2 * PAGE);
  /* re-mapping gives fresh zeroed memory */
  assert_int_equal(mb_va_map_anon(&va, 2 * PAGE, PAGE, false), 0);
  assert_int_equal(va.base[2 * PAGE], 0);
  assert_false(writable(va.base + 2 * PAGE));
  assert_int_equal(va.base[3 * PAGE], 0x33);
  assert_int_equal(mb_va_unmap(&va, 2 * PAGE, 2 * PAGE), 0);
  assert_false(readable(va.base + 3 * PAGE));
  mb_va_release(&va);
}

/* Every operation with this (off, len) must be -EINVAL and leave the mapping alone. */
static void expect_einval(mb_va *va, int fd, uint64_t off, uint64_t len) {
  assert_int_equal(mb_va_map_fd(va, off, len, fd, 0, true), -EINVAL);
  assert_int_equal(mb_va_map_anon(va, off, len, true), -EINVAL);
  assert_int_equal(mb_va_protect(va, off, len, false), -EINVAL);
  assert_int_equal(mb_va_unmap(va, off, len), -EINVAL);
  assert_int_equal(mb_va_check(va, off, len), -EINVAL);
}

static void test_bad_arguments_change_nothing(void **state) {
  (void)state;
  begin();
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 8 * PAGE), 0);
  int fd = make_memfd(8 * PAGE);
  assert_int_equal(mb_va_map_fd(&va, 0, 8 * PAGE, fd, 0, true), 0);
  memset(va.base, 0x44, 8 * PAGE);
  const uint64_t bad[][2] = {
      {0, 0},                         /* empty */
      {1, PAGE},                      /* unaligned offset */
      {0, PAGE + 1},                  /* unaligned length */
      {0, 9 * PAGE},                  /* too long */
      {8 * PAGE, PAGE},               /* starts at the end */
      {7 * PAGE, 2 * PAGE},           /* crosses the end */
      {UINT64_MAX - PAGE + 1, PAGE},  /* far outside */
      {PAGE, UINT64_MAX - PAGE + 1},  /* off + len wraps */
      {UINT64_MAX - PAGE + 1, 2 * PAGE},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_einval(&va, fd, bad[i][0], bad[i][1]);
  /* bad file offsets */
  assert_int_equal(mb_va_map_fd(&va, 0, PAGE, fd, 1, true), -EINVAL);
  assert_int_equal(mb_va_map_fd(&va, 0, PAGE, fd, UINT64_MAX - PAGE + 1, true), -EINVAL);
  assert_int_equal(mb_va_map_fd(&va, 0, 2 * PAGE, fd, (uint64_t)INT64_MAX - PAGE + 1, true),
                   -EINVAL);
  /* an unreserved va */
  mb_va none = {.base = NULL};
  assert_int_equal(mb_va_map_anon(&none, 0, PAGE, true), -EINVAL);
  assert_int_equal(mb_va_unmap(&none, 0, PAGE), -EINVAL);
  /* nothing changed: everything still mapped, writable, with its contents */
  for (uint64_t off = 0; off < 8 * PAGE; off += PAGE) {
    assert_true(writable(va.base + off));
    assert_int_equal(va.base[off + 5], 0x44);
  }
  mb_va_release(&va);
  close(fd);
}

static void test_failed_map_leaves_prot_none(void **state) {
  (void)state;
  begin();
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 8 * PAGE), 0);
  int fd = make_memfd(4 * PAGE);
  /* a read-only fd cannot be mapped shared-writable */
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  int rofd = open(path, O_RDONLY | O_CLOEXEC);
  assert_true(rofd >= 0);
  assert_int_equal(mb_va_map_fd(&va, 0, PAGE, rofd, 0, true), -EACCES);
  assert_false(readable(va.base));
  assert_int_equal(mb_va_map_fd(&va, 0, PAGE, rofd, 0, false), 0);
  assert_true(readable(va.base));
  assert_false(writable(va.base));
  /* a failed map over a mapped range leaves it PROT_NONE, never a hole */
  assert_int_equal(mb_va_map_fd(&va, 0, PAGE, rofd, 0, true), -EACCES);
  assert_false(readable(va.base));
  assert_int_equal(mb_va_map_fd(&va, PAGE, PAGE, -1, 0, true), -EBADF);
  assert_false(readable(va.base + PAGE));
  /* protect cannot make a read-only shared mapping writable */
  assert_int_equal(mb_va_map_fd(&va, 2 * PAGE, PAGE, rofd, 0, false), 0);
  assert_int_equal(mb_va_protect(&va, 2 * PAGE, PAGE, true), -EACCES);
  assert_true(readable(va.base + 2 * PAGE));
  assert_false(writable(va.base + 2 * PAGE));
  /* the span is still ours: a fresh mapping lands exactly there */
  assert_int_equal(mb_va_map_anon(&va, 0, 2 * PAGE, true), 0);
  assert_true(writable(va.base) && writable(va.base + PAGE));
  mb_va_release(&va);
  close(rofd);
  close(fd);
}

/* Which changes count as drops (va_reserve.h): those that may take rights from mapped pages.
 * A copy that faulted asks whether one overlapped it; one in progress counts too. */
static void test_drops(void **state) {
  (void)state;
  begin();
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 4 * PAGE), 0);
  int fd = make_memfd(4 * PAGE);
  uint64_t e = mb_va_drops_ended(&va);
  assert_int_equal(mb_va_map_fd(&va, 0, PAGE, fd, 0, true), 0); /* over the reservation */
  assert_int_equal(mb_va_map_fd(&va, PAGE, PAGE, fd, 0, false), 0);
  assert_int_equal(mb_va_map_anon(&va, 2 * PAGE, PAGE, false), 0);
  assert_int_equal(mb_va_protect(&va, 0, PAGE, true), 0);
  assert_false(mb_va_dropped_since(&va, e));
  assert_int_equal(mb_va_protect(&va, 0, PAGE, false), 0); /* read-only */
  assert_true(mb_va_dropped_since(&va, e));
  e = mb_va_drops_ended(&va);
  assert_int_equal(mb_va_protect_none(&va, 0, PAGE), 0);
  assert_true(mb_va_dropped_since(&va, e));
  e = mb_va_drops_ended(&va);
  assert_int_equal(mb_va_unmap(&va, 0, PAGE), 0);
  assert_true(mb_va_dropped_since(&va, e));
  e = mb_va_drops_ended(&va);
  assert_int_equal(mb_va_map_fd(&va, 0, PAGE, -1, 0, true), -EBADF); /* re-reserved */
  assert_true(mb_va_dropped_since(&va, e));
  e = mb_va_drops_ended(&va);
  mb_va_drop_begin(&va); /* a caller's own, still in progress */
  uint64_t during = mb_va_drops_ended(&va);
  assert_true(mb_va_dropped_since(&va, e) && mb_va_dropped_since(&va, during));
  mb_va_drop_end(&va);
  assert_false(mb_va_dropped_since(&va, mb_va_drops_ended(&va)));
  mb_va_release(&va);
  close(fd);
}

static void test_unmap_whole_and_remap(void **state) {
  (void)state;
  begin();
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 64 * PAGE), 0);
  int fd = make_memfd(64 * PAGE);
  for (int round = 0; round < 50; round++) {
    uint64_t off = (uint64_t)(round % 16) * 4 * PAGE;
    assert_int_equal(mb_va_map_fd(&va, off, 4 * PAGE, fd, off, true), 0);
    va.base[off] = (uint8_t)round;
    assert_int_equal(mb_va_unmap(&va, 0, 64 * PAGE), 0);
    assert_false(readable(va.base + off));
  }
  mb_va_release(&va);
  close(fd);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reserve_64g),
      cmocka_unit_test(test_reserve_aligned),
      cmocka_unit_test(test_reserve_large_page_aligned),
      cmocka_unit_test(test_reserve_invalid),
      cmocka_unit_test(test_map_fd_read_write),
      cmocka_unit_test(test_protect),
      cmocka_unit_test(test_map_anon),
      cmocka_unit_test(test_bad_arguments_change_nothing),
      cmocka_unit_test(test_failed_map_leaves_prot_none),
      cmocka_unit_test(test_unmap_whole_and_remap),
      cmocka_unit_test(test_drops),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
