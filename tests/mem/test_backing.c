/* test_backing.c: backing objects: kinds and sizes, range checks, fill patterns, mapping
 * into a VA reservation, private (anonymous) memory shared by all its views, importing a
 * caller's fd (read-only ones too, and every kind of fd that cannot back memory), reference
 * counting (also across threads), and no files left behind by file-backed objects. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mb_access.h"
#include "mb_backing.h"
#include "mb_errors.h"
#include "mb_range.h"
#include "mem_probe.h"
#include "test_util.h"
#include "va_reserve.h"

#define PAGE ((uint64_t)MB_PAGE_SIZE)
#define MiB (1ull << 20)

static const mb_object_kind fd_kinds[] = {MB_OBJECT_MEMFD, MB_OBJECT_FILE};

static mb_object *create(mb_object_kind kind, uint64_t size) {
  mb_object *obj = NULL;
  assert_int_equal(mb_object_create(kind, size, "test", &obj), 0);
  assert_non_null(obj);
  return obj;
}

static void test_create_kinds(void **state) {
  (void)state;
  for (int kind = MB_OBJECT_MEMFD; kind <= MB_OBJECT_ANON; kind++) {
    mb_object *obj = create((mb_object_kind)kind, 5 * PAGE);
    assert_int_equal(mb_object_get_kind(obj), kind);
    assert_true(mb_object_size(obj) == 5 * PAGE);
    if (kind == MB_OBJECT_ANON) {
      assert_int_equal(mb_object_fd(obj), -1);
    } else {
      struct stat st;
      assert_true(mb_object_fd(obj) >= 0);
      assert_int_equal(fstat(mb_object_fd(obj), &st), 0);
      assert_true(S_ISREG(st.st_mode));
      assert_true((uint64_t)st.st_size == 5 * PAGE);
      if (kind == MB_OBJECT_FILE)
        assert_int_equal(st.st_nlink, 0); /* unlinked: nothing on disk */
      assert_true(fcntl(mb_object_fd(obj), F_GETFD) & FD_CLOEXEC);
    }
    mb_object_unref(obj);
  }
  mb_object_unref(NULL);
}

static void test_create_invalid(void **state) {
  (void)state;
  mb_object *obj = (mb_object *)1;
  assert_int_equal(mb_object_create(MB_OBJECT_MEMFD, 0, NULL, &obj), MB_E_INVALID);
  assert_null(obj);
  assert_int_equal(mb_object_create(MB_OBJECT_MEMFD, PAGE + 1, NULL, &obj), MB_E_INVALID);
  assert_int_equal(mb_object_create(MB_OBJECT_FILE, 100, NULL, &obj), MB_E_INVALID);
  assert_int_equal(mb_object_create(MB_OBJECT_ANON, 1ull << 63, NULL, &obj), MB_E_INVALID);
  assert_int_equal(mb_object_create((mb_object_kind)42, PAGE, NULL, &obj), MB_E_INVALID);
  assert_int_equal(mb_object_create(MB_OBJECT_FD, PAGE, NULL, &obj), MB_E_INVALID); /* import only */
  assert_null(obj);
}

static void test_large_sparse(void **state) {
  (void)state;
  /* size costs nothing until written */
  mb_object *obj = create(MB_OBJECT_MEMFD, 64ull << 30);
  assert_true(mb_object_size(obj) == 64ull << 30);
  assert_int_equal(mb_object_check_range(obj, (64ull << 30) - PAGE, PAGE), 0);
  mb_object_unref(obj);
}

static void test_check_range(void **state) {
  (void)state;
  mb_object *obj = create(MB_OBJECT_ANON, 8 * PAGE);
  assert_int_equal(mb_object_check_range(obj, 0, 8 * PAGE), 0);
  assert_int_equal(mb_object_check_range(obj, 7 * PAGE, PAGE), 0);
  assert_int_equal(mb_object_check_range(obj, 0, 0), -EINVAL);
  assert_int_equal(mb_object_check_range(obj, 1, PAGE), -EINVAL);
  assert_int_equal(mb_object_check_range(obj, 0, PAGE - 1), -EINVAL);
  assert_int_equal(mb_object_check_range(obj, 0, 9 * PAGE), -EINVAL);
  assert_int_equal(mb_object_check_range(obj, 8 * PAGE, PAGE), -EINVAL);
  assert_int_equal(mb_object_check_range(obj, 7 * PAGE, 2 * PAGE), -EINVAL);
  assert_int_equal(mb_object_check_range(obj, PAGE, UINT64_MAX - PAGE + 1), -EINVAL);
  assert_int_equal(mb_object_check_range(obj, UINT64_MAX - PAGE + 1, 2 * PAGE), -EINVAL);
  mb_object_unref(obj);
}

/* Reads the whole object and checks every byte against the fill. */
static void verify(mb_object *obj, int per_page, uint8_t value) {
  uint64_t size = mb_object_size(obj);
  uint8_t *buf = malloc(MiB);
  assert_non_null(buf);
  for (uint64_t off = 0; off < size; off += MiB) {
    size_t len = size - off < MiB ? (size_t)(size - off) : MiB;
    assert_int_equal(pread(mb_object_fd(obj), buf, len, (off_t)off), (ssize_t)len);
    for (size_t i = 0; i < len; i++) {
      uint8_t want = per_page ? mb_fill_pages_byte(value, off + i) : value;
      if (buf[i] != want)
        fail_msg("offset %llu: %#x, want %#x", (unsigned long long)(off + i), buf[i], want);
    }
  }
  free(buf);
}

static void test_fills(void **state) {
  (void)state;
  for (size_t k = 0; k < 2; k++) {
    /* not a multiple of the 1 MiB fill chunk: the tail takes the short path */
    mb_object *obj = create(fd_kinds[k], 3 * MiB + 5 * PAGE);
    verify(obj, 0, 0);
    assert_int_equal(mb_object_fill_byte(obj, 0xa5), 0);
    verify(obj, 0, 0xa5);
    assert_int_equal(mb_object_fill_pages(obj, 0xfe), 0); /* wraps after 2 pages */
    verify(obj, 1, 0xfe);
    assert_int_equal(mb_object_fill_byte(obj, 0), 0); /* zeroing */
    verify(obj, 0, 0);
    assert_int_equal(mb_object_fill_pages(obj, 0), 0);
    verify(obj, 1, 0);
    assert_true(mb_object_size(obj) == 3 * MiB + 5 * PAGE); /* fills keep the size */
    mb_object_unref(obj);
  }
  assert_int_equal(mb_fill_pages_byte(0xfe, 0), 0xfe);
  assert_int_equal(mb_fill_pages_byte(0xfe, PAGE - 1), 0xfe);
  assert_int_equal(mb_fill_pages_byte(0xfe, PAGE), 0xff);
  assert_int_equal(mb_fill_pages_byte(0xfe, 2 * PAGE), 0x00);
  assert_int_equal(mb_fill_pages_byte(0x10, 256 * PAGE + 3), 0x10);
}

/* Private memory has contents of its own now: fills reach every mapping. */
static void test_fill_anon(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0);
  mb_object *obj = create(MB_OBJECT_ANON, 3 * PAGE);
  assert_int_equal(mb_object_fd(obj), -1); /* private: no fd is given out */
  assert_true(mb_object_writable(obj));
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 3 * PAGE), 0);
  assert_int_equal(mb_object_map_into(obj, &va, 0, 3 * PAGE, 0, true), 0);
  assert_int_equal(mb_object_fill_pages(obj, 0x30), 0);
  for (uint64_t i = 0; i < 3 * PAGE; i += 997)
    assert_int_equal(va.base[i], mb_fill_pages_byte(0x30, i));
  assert_int_equal(mb_object_fill_byte(obj, 0x5c), 0);
  assert_int_equal(va.base[2 * PAGE + 1], 0x5c);
  assert_int_equal(mb_object_fill_byte(obj, 0), 0);
  assert_int_equal(va.base[PAGE], 0);
  assert_int_equal(mb_va_release(&va), 0);
  mb_object_unref(obj);
}

/* F16: a byte written through one view of private memory is seen through every other view,
 * and survives an unmap and map and a read-only remap. */
static void test_anon_views_share(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0);
  mb_object *obj = create(MB_OBJECT_ANON, 4 * PAGE);
  mb_va a, b;
  assert_int_equal(mb_va_reserve(&a, 16 * PAGE), 0);
  assert_int_equal(mb_va_reserve(&b, 16 * PAGE), 0);
  assert_int_equal(mb_object_map_into(obj, &a, 0, 4 * PAGE, 0, true), 0);
  assert_int_equal(mb_object_map_into(obj, &b, 8 * PAGE, 4 * PAGE, 0, true), 0);
  a.base[PAGE + 1] = 0xab;
  assert_int_equal(b.base[9 * PAGE + 1], 0xab); /* another reservation, same bytes */
  b.base[11 * PAGE + 7] = 0xcd;
  assert_int_equal(a.base[3 * PAGE + 7], 0xcd);
  /* object pages 1..2 at a second place in a: an alias of the same bytes */
  assert_int_equal(mb_object_map_into(obj, &a, 12 * PAGE, 2 * PAGE, PAGE, true), 0);
  assert_int_equal(a.base[12 * PAGE + 1], 0xab);
  /* unmap and map again */
  assert_int_equal(mb_va_unmap(&a, 0, 4 * PAGE), 0);
  assert_int_equal(mb_object_map_into(obj, &a, 0, 4 * PAGE, 0, true), 0);
  assert_int_equal(a.base[PAGE + 1], 0xab);
  assert_int_equal(a.base[3 * PAGE + 7], 0xcd);
  /* a read-only remap shows what was written before */
  a.base[2 * PAGE] = 0xef;
  assert_int_equal(mb_object_map_into(obj, &a, 0, 4 * PAGE, 0, false), 0);
  assert_int_equal(a.base[2 * PAGE], 0xef);
  assert_int_equal(a.base[PAGE + 1], 0xab);
  uint8_t v = 1;
  assert_int_equal(mb_access_write(a.base, &v, 1, NULL), -EFAULT);
  /* and so does an in-place protection change */
  assert_int_equal(mb_va_protect(&b, 8 * PAGE, 4 * PAGE, false), 0);
  assert_int_equal(b.base[10 * PAGE], 0xef);
  /* the memory outlives the last reference while mapped, and still is one memory */
  mb_object_unref(obj);
  assert_int_equal(mb_va_protect(&b, 8 * PAGE, 4 * PAGE, true), 0);
  b.base[8 * PAGE] = 0x11;
  assert_int_equal(a.base[0], 0x11);
  assert_int_equal(mb_va_release(&a), 0);
  assert_int_equal(mb_va_release(&b), 0);
}

static void test_map_into(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0);
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 32 * PAGE), 0);
  for (size_t k = 0; k < 2; k++) {
    mb_object *obj = create(fd_kinds[k], 8 * PAGE);
    assert_int_equal(mb_object_fill_pages(obj, 0x40), 0);
    /* object pages 2..5 at va pages 10..13, read-only */
    assert_int_equal(mb_object_map_into(obj, &va, 10 * PAGE, 4 * PAGE, 2 * PAGE, false), 0);
    for (uint64_t i = 0; i < 4 * PAGE; i += 511)
      assert_int_equal(va.base[10 * PAGE + i], mb_fill_pages_byte(0x40, 2 * PAGE + i));
    uint8_t b = 0;
    assert_int_equal(mb_access_write(va.base + 10 * PAGE, &b, 1, NULL), -EFAULT);
    /* writable: writes reach the object */
    assert_int_equal(mb_object_map_into(obj, &va, 10 * PAGE, PAGE, 7 * PAGE, true), 0);
    va.base[10 * PAGE + 3] = 0x99;
    assert_int_equal(pread(mb_object_fd(obj), &b, 1, 7 * PAGE + 3), 1);
    assert_int_equal(b, 0x99);
    /* outside the object */
    assert_int_equal(mb_object_map_into(obj, &va, 0, 2 * PAGE, 7 * PAGE, true), -EINVAL);
    assert_int_equal(mb_object_map_into(obj, &va, 0, PAGE, 1, true), -EINVAL);
    /* outside the reservation */
    assert_int_equal(mb_object_map_into(obj, &va, 32 * PAGE, PAGE, 0, true), -EINVAL);
    /* the mapping keeps the memory alive after the last reference (the kernel holds it) */
    mb_object_unref(obj);
    assert_int_equal(va.base[10 * PAGE + 3], 0x99);
    assert_int_equal(mb_va_unmap(&va, 0, 32 * PAGE), 0);
  }
  mb_object *anon = create(MB_OBJECT_ANON, 4 * PAGE);
  assert_int_equal(mb_object_map_into(anon, &va, 0, 4 * PAGE, 0, true), 0);
  assert_int_equal(va.base[4 * PAGE - 1], 0);
  va.base[4 * PAGE - 1] = 7;
  assert_int_equal(mb_object_map_into(anon, &va, 0, 4 * PAGE, PAGE, true), -EINVAL);
  mb_object_unref(anon);
  assert_int_equal(mb_va_release(&va), 0);
}

/* ---- importing a caller's fd ------------------------------------------------------------- */

static int make_memfd(unsigned flags, uint64_t size) {
  int fd = memfd_create("test-import", MFD_CLOEXEC | flags);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, (off_t)size), 0);
  return fd;
}

/* fd opened again through /proc with other flags (its own open file description). */
static int reopen(int fd, int flags) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  int r = open(path, flags | O_CLOEXEC);
  assert_true(r >= 0);
  return r;
}

static mb_object *import(int fd, uint64_t size) {
  mb_object *obj = NULL;
  assert_int_equal(mb_object_import_fd(fd, size, &obj), 0);
  assert_non_null(obj);
  assert_int_equal(mb_object_get_kind(obj), MB_OBJECT_FD);
  return obj;
}

/* The caller's writes through its fd show in the mapping and the mapping's in the fd; the
 * object's own fd outlives the caller's. */
static void test_import_memfd(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0);
  int base = tu_fd_count();
  int fd = make_memfd(0, 8 * PAGE);
  mb_object *obj = import(fd, 0); /* the memfd's own size */
  assert_true(mb_object_size(obj) == 8 * PAGE);
  assert_true(mb_object_writable(obj));
  int own = mb_object_fd(obj);
  assert_true(own >= 0 && own != fd);
  assert_true(fcntl(own, F_GETFD) & FD_CLOEXEC);
  assert_int_equal(tu_fd_count(), base + 2);
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 8 * PAGE), 0);
  assert_int_equal(mb_object_map_into(obj, &va, 0, 8 * PAGE, 0, true), 0);
  uint8_t b = 0x3c;
  assert_int_equal(pwrite(fd, &b, 1, 5 * PAGE + 2), 1);
  assert_int_equal(va.base[5 * PAGE + 2], 0x3c);
  va.base[7 * PAGE + 9] = 0x4d;
  assert_int_equal(pread(fd, &b, 1, 7 * PAGE + 9), 1);
  assert_int_equal(b, 0x4d);
  /* the caller closes its fd: the object and its mappings go on */
  assert_int_equal(close(fd), 0);
  assert_int_equal(tu_fd_count(), base + 1);
  assert_true(fcntl(own, F_GETFD) >= 0);
  va.base[0] = 0x5e;
  assert_int_equal(pread(own, &b, 1, 0), 1);
  assert_int_equal(b, 0x5e);
  assert_int_equal(mb_object_map_into(obj, &va, PAGE, PAGE, 7 * PAGE, false), 0);
  assert_int_equal(va.base[PAGE + 9], 0x4d);
  /* fills write the caller's memory */
  assert_int_equal(mb_object_fill_pages(obj, 0x70), 0);
  assert_int_equal(va.base[3 * PAGE], mb_fill_pages_byte(0x70, 3 * PAGE));
  mb_object_unref(obj);
  assert_int_equal(tu_fd_count(), base);
  assert_int_equal(mb_va_release(&va), 0);
}

/* size 0 takes the file's size; a given size is at most it; either must be page aligned. */
static void test_import_sizes(void **state) {
  (void)state;
  int base = tu_fd_count();
  int fd = make_memfd(0, 8 * PAGE);
  mb_object *obj = import(fd, 3 * PAGE); /* a prefix */
  assert_true(mb_object_size(obj) == 3 * PAGE);
  assert_int_equal(mb_object_check_range(obj, 3 * PAGE, PAGE), -EINVAL);
  mb_object_unref(obj);
  obj = import(fd, 8 * PAGE);
  mb_object_unref(obj);
  const uint64_t bad[] = {9 * PAGE, PAGE + 1, 100, 1ull << 63, UINT64_MAX & ~(uint64_t)4095};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    obj = (mb_object *)1;
    assert_int_equal(mb_object_import_fd(fd, bad[i], &obj), MB_E_INVALID);
    assert_null(obj);
  }
  assert_int_equal(ftruncate(fd, 5000), 0); /* not a page multiple: size 0 cannot take it */
  assert_int_equal(mb_object_import_fd(fd, 0, &obj), MB_E_INVALID);
  obj = import(fd, PAGE); /* the whole pages of it can be imported */
  mb_object_unref(obj);
  assert_int_equal(ftruncate(fd, 0), 0); /* empty */
  assert_int_equal(mb_object_import_fd(fd, 0, &obj), MB_E_INVALID);
  assert_int_equal(mb_object_import_fd(fd, PAGE, &obj), MB_E_INVALID);
  assert_int_equal(mb_object_import_fd(fd, 0, NULL), MB_E_INVALID);
  close(fd);
  assert_int_equal(tu_fd_count(), base);
}

/* A read-only object: read-only mappings work and see the bytes; a writable one (and a fill)
 * is MB_E_READONLY and changes nothing, the mapping already there included. */
static void expect_read_only(mb_object *obj, uint8_t want) {
  assert_false(mb_object_writable(obj));
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 4 * PAGE), 0);
  assert_int_equal(mb_object_map_into(obj, &va, 0, 2 * PAGE, 0, false), 0);
  assert_int_equal(va.base[PAGE + 3], want);
  assert_int_equal(mb_object_map_into(obj, &va, 0, 2 * PAGE, 0, true), MB_E_READONLY);
  assert_int_equal(mb_object_map_into(obj, &va, 2 * PAGE, PAGE, 0, true), MB_E_READONLY);
  assert_int_equal(va.base[PAGE + 3], want); /* still mapped, as before */
  uint8_t b = 0;
  assert_int_equal(mb_access_read(&b, va.base + 2 * PAGE, 1, NULL), -EFAULT);
  assert_int_equal(mb_access_write(va.base, &b, 1, NULL), -EFAULT);
  assert_int_equal(mb_object_fill_byte(obj, 1), MB_E_READONLY);
  assert_int_equal(mb_object_fill_pages(obj, 1), MB_E_READONLY);
  assert_int_equal(va.base[PAGE + 3], want);
  assert_int_equal(mb_va_release(&va), 0);
}

static void test_import_sealed(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0);
  int base = tu_fd_count();
  const int seals[] = {F_SEAL_WRITE, F_SEAL_FUTURE_WRITE};
  for (size_t i = 0; i < 2; i++) {
    int fd = make_memfd(MFD_ALLOW_SEALING, 2 * PAGE);
    uint8_t b = 0x61;
    assert_int_equal(pwrite(fd, &b, 1, PAGE + 3), 1);
    assert_int_equal(fcntl(fd, F_ADD_SEALS, seals[i]), 0);
    mb_object *obj = import(fd, 0);
    close(fd);
    expect_read_only(obj, 0x61);
    mb_object_unref(obj);
  }
  /* sealed against resizing only: still writable */
  int fd = make_memfd(MFD_ALLOW_SEALING, 2 * PAGE);
  assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK), 0);
  mb_object *obj = import(fd, 0);
  assert_true(mb_object_writable(obj));
  mb_object_unref(obj);
  close(fd);
  assert_int_equal(tu_fd_count(), base);
}

static void test_import_read_only_fd(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0);
  int base = tu_fd_count();
  /* a memfd opened again read-only, and a regular file opened read-only */
  int fd = make_memfd(0, 2 * PAGE);
  uint8_t b = 0x72;
  assert_int_equal(pwrite(fd, &b, 1, PAGE + 3), 1);
  int ro = reopen(fd, O_RDONLY);
  mb_object *obj = import(ro, 0);
  close(ro);
  expect_read_only(obj, 0x72);
  mb_object_unref(obj);
  close(fd);
  char path[] = "/tmp/mb-test-import-XXXXXX";
  fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(unlink(path), 0);
  assert_int_equal(pwrite(fd, &b, 1, PAGE + 3), 1);
  assert_int_equal(ftruncate(fd, 2 * PAGE), 0);
  ro = reopen(fd, O_RDONLY);
  obj = import(ro, 0);
  close(ro);
  expect_read_only(obj, 0x72);
  mb_object_unref(obj);
  obj = import(fd, 0); /* the read-write fd of the same file */
  assert_true(mb_object_writable(obj));
  mb_object_unref(obj);
  close(fd);
  assert_int_equal(tu_fd_count(), base);
}

/* Every fd that cannot back guest memory: MB_E_INVALID, nothing kept (no fd, no VA). */
static void expect_not_mappable(int fd, uint64_t size, const char *what) {
  int fds = tu_fd_count();
  uint64_t vm = mem_vm_size();
  mb_object *obj = (mb_object *)1;
  int rc = mb_object_import_fd(fd, size, &obj);
  if (rc != MB_E_INVALID)
    fail_msg("%s: %d, want MB_E_INVALID", what, rc);
  assert_null(obj);
  assert_int_equal(tu_fd_count(), fds);
  assert_true(mem_vm_size() == vm);
}

static void test_import_not_mappable(void **state) {
  (void)state;
  int base = tu_fd_count();
  int p[2], sv[2];
  assert_int_equal(pipe(p), 0);
  expect_not_mappable(p[0], 0, "pipe (read end)");
  expect_not_mappable(p[1], PAGE, "pipe (write end)");
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  expect_not_mappable(sv[0], PAGE, "socket");
  int dir = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  assert_true(dir >= 0);
  expect_not_mappable(dir, 0, "directory");
  expect_not_mappable(dir, PAGE, "directory");
  int efd = eventfd(0, EFD_CLOEXEC);
  assert_true(efd >= 0);
  expect_not_mappable(efd, PAGE, "eventfd");
  expect_not_mappable(-1, PAGE, "-1");
  int closed = dup(efd);
  assert_int_equal(close(closed), 0);
  expect_not_mappable(closed, PAGE, "a closed fd");
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  assert_true(null >= 0);
  expect_not_mappable(null, PAGE, "/dev/null");
  int zero = open("/dev/zero", O_RDWR | O_CLOEXEC);
  assert_true(zero >= 0);
  expect_not_mappable(zero, PAGE, "/dev/zero");
  int mfd = make_memfd(0, PAGE);
  int wo = reopen(mfd, O_WRONLY);
  expect_not_mappable(wo, 0, "an O_WRONLY memfd");
  int path = reopen(mfd, O_PATH);
  expect_not_mappable(path, 0, "an O_PATH fd");
  int status = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  assert_true(status >= 0);
  expect_not_mappable(status, 0, "a procfs file");
  int sys = open("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY | O_CLOEXEC);
  if (sys >= 0) /* a sysfs file with a size of 4096 that cannot be mapped */
    expect_not_mappable(sys, PAGE, "a sysfs file");
  int fds[] = {p[0], p[1], sv[0], sv[1], dir, efd, null, zero, mfd, wo, path, status, sys};
  for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
    if (fds[i] >= 0)
      close(fds[i]);
  assert_int_equal(tu_fd_count(), base);
}

static void test_refcount(void **state) {
  (void)state;
  mb_object *obj = create(MB_OBJECT_MEMFD, PAGE);
  int fd = mb_object_fd(obj);
  assert_ptr_equal(mb_object_ref(obj), obj);
  assert_ptr_equal(mb_object_ref(obj), obj);
  mb_object_unref(obj);
  mb_object_unref(obj);
  assert_true(fcntl(fd, F_GETFD) >= 0); /* still open: one reference left */
  mb_object_unref(obj);
  errno = 0;
  assert_int_equal(fcntl(fd, F_GETFD), -1); /* closed by the last unref */
  assert_int_equal(errno, EBADF);
}

#define REF_THREADS 4
#define REF_ROUNDS 20000

static void *ref_worker(void *arg) {
  mb_object *obj = arg;
  for (int i = 0; i < REF_ROUNDS; i++) {
    mb_object *a = mb_object_ref(obj);
    mb_object *b = mb_object_ref(a);
    if (mb_object_size(b) != PAGE)
      abort();
    mb_object_unref(a);
    mb_object_unref(b);
  }
  mb_object_unref(obj); /* each worker owns one reference and drops it */
  return NULL;
}

static void test_refcount_threads(void **state) {
  (void)state;
  mb_object *obj = create(MB_OBJECT_MEMFD, PAGE);
  int fd = mb_object_fd(obj);
  pthread_t t[REF_THREADS];
  for (int i = 0; i < REF_THREADS; i++)
    assert_int_equal(pthread_create(&t[i], NULL, ref_worker, mb_object_ref(obj)), 0);
  mb_object_unref(obj); /* the workers now hold the only references */
  for (int i = 0; i < REF_THREADS; i++)
    assert_int_equal(pthread_join(t[i], NULL), 0);
  errno = 0;
  assert_int_equal(fcntl(fd, F_GETFD), -1);
  assert_int_equal(errno, EBADF);
}

static int dir_entries(const char *path) {
  DIR *d = opendir(path);
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
      n++;
  closedir(d);
  return n;
}

static void test_file_leaves_nothing(void **state) {
  (void)state;
  const char *old = getenv("TMPDIR");
  char *saved = old ? strdup(old) : NULL;
  char dir[] = "/tmp/mb-test-backing-XXXXXX";
  assert_non_null(mkdtemp(dir));
  assert_int_equal(setenv("TMPDIR", dir, 1), 0);
  mb_object *objs[4];
  for (int i = 0; i < 4; i++) {
    objs[i] = create(MB_OBJECT_FILE, 4 * PAGE);
    assert_int_equal(mb_object_fill_byte(objs[i], (uint8_t)i), 0);
  }
  assert_int_equal(dir_entries(dir), 0); /* nothing visible while in use */
  for (int i = 0; i < 4; i++)
    mb_object_unref(objs[i]);
  assert_int_equal(dir_entries(dir), 0);
  /* errors are reported and leave nothing either */
  mb_object *obj = NULL;
  char missing[sizeof dir + 16];
  snprintf(missing, sizeof missing, "%s/missing", dir);
  assert_int_equal(setenv("TMPDIR", missing, 1), 0);
  assert_int_equal(mb_object_create(MB_OBJECT_FILE, PAGE, NULL, &obj), -ENOENT);
  char *longdir = malloc(5000);
  assert_non_null(longdir);
  memset(longdir, 'x', 4999);
  longdir[0] = '/';
  longdir[4999] = '\0';
  assert_int_equal(setenv("TMPDIR", longdir, 1), 0);
  assert_int_equal(mb_object_create(MB_OBJECT_FILE, PAGE, NULL, &obj), -ENAMETOOLONG);
  free(longdir);
  assert_null(obj);
  assert_int_equal(dir_entries(dir), 0);
  assert_int_equal(rmdir(dir), 0);
  if (saved) {
    setenv("TMPDIR", saved, 1);
    free(saved);
  } else {
    unsetenv("TMPDIR");
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_create_kinds),
      cmocka_unit_test(test_create_invalid),
      cmocka_unit_test(test_large_sparse),
      cmocka_unit_test(test_check_range),
      cmocka_unit_test(test_fills),
      cmocka_unit_test(test_fill_anon),
      cmocka_unit_test(test_anon_views_share),
      cmocka_unit_test(test_map_into),
      cmocka_unit_test(test_import_memfd),
      cmocka_unit_test(test_import_sizes),
      cmocka_unit_test(test_import_sealed),
      cmocka_unit_test(test_import_read_only_fd),
      cmocka_unit_test(test_import_not_mappable),
      cmocka_unit_test(test_refcount),
      cmocka_unit_test(test_refcount_threads),
      cmocka_unit_test(test_file_leaves_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
