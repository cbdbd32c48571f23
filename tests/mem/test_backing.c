/* test_backing.c: backing objects: kinds and sizes, range checks, fill patterns, mapping
 * into a VA reservation, reference counting (also across threads), and no files left
 * behind by file-backed objects. */
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
#include <sys/stat.h>
#include <unistd.h>

#include "access.h"
#include "backing.h"
#include "mb_range.h"
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
  assert_int_equal(mb_object_create(MB_OBJECT_MEMFD, 0, NULL, &obj), -EINVAL);
  assert_null(obj);
  assert_int_equal(mb_object_create(MB_OBJECT_MEMFD, PAGE + 1, NULL, &obj), -EINVAL);
  assert_int_equal(mb_object_create(MB_OBJECT_FILE, 100, NULL, &obj), -EINVAL);
  assert_int_equal(mb_object_create(MB_OBJECT_ANON, 1ull << 63, NULL, &obj), -EINVAL);
  assert_int_equal(mb_object_create((mb_object_kind)42, PAGE, NULL, &obj), -EINVAL);
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

static void test_fill_anon_unsupported(void **state) {
  (void)state;
  mb_object *obj = create(MB_OBJECT_ANON, PAGE);
  assert_int_equal(mb_object_fill_byte(obj, 1), -ENOTSUP);
  assert_int_equal(mb_object_fill_pages(obj, 1), -ENOTSUP);
  mb_object_unref(obj);
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
  mb_va_release(&va);
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
      cmocka_unit_test(test_fill_anon_unsupported),
      cmocka_unit_test(test_map_into),
      cmocka_unit_test(test_refcount),
      cmocka_unit_test(test_refcount_threads),
      cmocka_unit_test(test_file_leaves_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
