/* test_fault_inject.c: every system call mem/ makes, made to fail (mem/fault_inject.h): the
 * error reaches the caller, nothing leaks (no fd, no byte of address space), nothing is left
 * half-done. Built from mem/'s sources with MB_FAULT_INJECTION (tests/mem/meson.build), so it
 * runs in every build; without injection (a build that links it otherwise) it is skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mb_access.h"
#include "mb_backing.h"
#include "fault_inject.h"
#include "mb_errors.h"
#include "mb_range.h"
#include "mem_probe.h"
#include "test_util.h"
#include "va_reserve.h"

#define PAGE ((uint64_t)MB_PAGE_SIZE)
#define MiB (1ull << 20)

static int setup(void **state) {
  (void)state;
  mb_fi_reset();
  return 0;
}

/* 1 if the byte at p can be read, 0 if reading faults. */
static int readable(const void *p) {
  unsigned char b;
  return mb_access_read(&b, p, 1, NULL) == 0;
}

static void test_arm_and_count(void **state) {
  (void)state;
  assert_true(mb_fi_enabled());
  assert_int_equal(mb_fi_arm(MB_FI_KINDS, 1, ENOMEM), MB_E_INVALID);
  assert_int_equal(mb_fi_arm((mb_fi_kind)-1, 1, ENOMEM), MB_E_INVALID);
  assert_int_equal(mb_fi_arm(MB_FI_MMAP, 1, 0), MB_E_INVALID);
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 8 * PAGE), 0);
  assert_true(mb_fi_calls(MB_FI_MMAP) == 1);
  /* the third map from now fails, once */
  assert_int_equal(mb_fi_arm(MB_FI_MMAP, 3, EAGAIN), 0);
  assert_int_equal(mb_va_map_anon(&va, 0, PAGE, true), 0);
  assert_int_equal(mb_va_map_anon(&va, PAGE, PAGE, true), 0);
  assert_int_equal(mb_va_map_anon(&va, 2 * PAGE, PAGE, true), -EAGAIN);
  assert_int_equal(mb_va_map_anon(&va, 2 * PAGE, PAGE, true), 0);
  assert_true(mb_fi_injected(MB_FI_MMAP) == 1);
  /* persistent: the next and every later one, until disarmed */
  assert_int_equal(mb_fi_arm_persist(MB_FI_MPROTECT, 1, EACCES), 0);
  assert_int_equal(mb_va_protect(&va, 0, PAGE, false), -EACCES);
  assert_int_equal(mb_va_protect(&va, 0, PAGE, false), -EACCES);
  assert_int_equal(mb_fi_arm(MB_FI_MPROTECT, 0, EACCES), 0);
  assert_int_equal(mb_va_protect(&va, 0, PAGE, false), 0);
  assert_true(mb_fi_calls(MB_FI_MPROTECT) == 3 && mb_fi_injected(MB_FI_MPROTECT) == 2);
  assert_int_equal(mb_va_release(&va), 0);
  mb_fi_reset();
  assert_true(mb_fi_calls(MB_FI_MMAP) == 0 && mb_fi_injected(MB_FI_MPROTECT) == 0);
}

/* F13: a failed munmap in mb_va_release is reported, and the span stays whole and usable. */
static void test_release_failure(void **state) {
  (void)state;
  uint64_t vm = mem_vm_size();
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 64 * MiB), 0);
  assert_int_equal(mb_va_map_anon(&va, 0, PAGE, true), 0);
  va.base[5] = 0x42;
  mb_va saved = va;
  assert_int_equal(mb_fi_arm(MB_FI_MUNMAP, 1, ENOMEM), 0);
  assert_int_equal(mb_va_release(&va), -ENOMEM);
  assert_ptr_equal(va.base, saved.base);
  assert_true(va.size == saved.size);
  assert_true(mem_vm_size() == vm + 64 * MiB);
  assert_int_equal(va.base[5], 0x42);
  assert_true(mem_mapped(va.base + 64 * MiB - 1));
  assert_int_equal(mb_va_release(&va), 0); /* a retry gives it all back */
  assert_null(va.base);
  assert_true(mem_vm_size() == vm);
}

/* The reservation's own mmap, and each munmap that trims it, fail in turn: an error, a
 * zeroed va, and not a page of address space kept. */
static void test_reserve_failures(void **state) {
  (void)state;
  uint64_t vm = mem_vm_size();
  mb_va va;
  assert_int_equal(mb_fi_arm(MB_FI_MMAP, 1, ENOMEM), 0);
  assert_int_equal(mb_va_reserve(&va, 4 * MiB), -ENOMEM);
  assert_null(va.base);
  assert_true(mem_vm_size() == vm);
  for (uint64_t n = 1;; n++) {
    uint64_t injected = mb_fi_injected(MB_FI_MUNMAP);
    assert_int_equal(mb_fi_arm(MB_FI_MUNMAP, n, ENOMEM), 0);
    int rc = mb_va_reserve_aligned(&va, 4 * MiB, 2 * MiB);
    assert_int_equal(mb_fi_arm(MB_FI_MUNMAP, 0, ENOMEM), 0);
    if (mb_fi_injected(MB_FI_MUNMAP) == injected) { /* past the last munmap: it worked */
      assert_int_equal(rc, 0);
      assert_true(n >= 2); /* 2 MiB alignment leaves excess on at least one side */
      assert_int_equal(mb_va_release(&va), 0);
      break;
    }
    assert_int_equal(rc, -ENOMEM);
    assert_null(va.base);
    assert_true(va.size == 0);
    assert_true(mem_vm_size() == vm);
  }
  assert_true(mem_vm_size() == vm);
}

/* Failed maps leave the range reserved (PROT_NONE), a failed protect or unmap leaves it as it
 * was; each reports the error. */
static void test_map_failures(void **state) {
  (void)state;
  assert_int_equal(mb_access_reinstall(), 0); /* cmocka's handlers were installed after setup */
  mb_object *obj = NULL;
  assert_int_equal(mb_object_create(MB_OBJECT_ANON, 4 * PAGE, "fi", &obj), 0);
  mb_va va;
  assert_int_equal(mb_va_reserve(&va, 8 * PAGE), 0);
  uint64_t vm = mem_vm_size();
  assert_int_equal(mb_fi_arm(MB_FI_MMAP, 1, ENOMEM), 0);
  assert_int_equal(mb_object_map_into(obj, &va, 0, 4 * PAGE, 0, true), -ENOMEM);
  assert_false(readable(va.base));
  assert_true(mem_mapped(va.base)); /* reserved, not a hole */
  assert_int_equal(mb_object_map_into(obj, &va, 0, 4 * PAGE, 0, true), 0);
  va.base[PAGE] = 0x17;
  assert_int_equal(mb_fi_arm(MB_FI_MPROTECT, 1, ENOMEM), 0);
  assert_int_equal(mb_va_protect(&va, 0, 4 * PAGE, false), -ENOMEM);
  va.base[PAGE] = 0x18; /* still writable */
  assert_int_equal(mb_fi_arm(MB_FI_MMAP, 1, ENOMEM), 0);
  assert_int_equal(mb_va_unmap(&va, 0, 4 * PAGE), -ENOMEM);
  assert_int_equal(va.base[PAGE], 0x18); /* still mapped, with its bytes */
  assert_int_equal(mb_va_unmap(&va, 0, 4 * PAGE), 0);
  assert_false(readable(va.base + PAGE));
  assert_int_equal(mb_object_map_into(obj, &va, 4 * PAGE, 4 * PAGE, 0, false), 0);
  assert_int_equal(va.base[5 * PAGE], 0x18); /* private memory kept its bytes throughout */
  assert_true(mem_vm_size() == vm);
  assert_int_equal(mb_va_release(&va), 0);
  mb_object_unref(obj);
}

/* memfd_create and ftruncate fail for every kind that makes a file: the error, no fd left. */
static void test_create_failures(void **state) {
  (void)state;
  const mb_object_kind kinds[] = {MB_OBJECT_MEMFD, MB_OBJECT_FILE, MB_OBJECT_ANON};
  int fds = tu_fd_count();
  for (size_t i = 0; i < 3; i++) {
    mb_object *obj = (mb_object *)1;
    if (kinds[i] != MB_OBJECT_FILE) {
      assert_int_equal(mb_fi_arm(MB_FI_MEMFD_CREATE, 1, EMFILE), 0);
      assert_int_equal(mb_object_create(kinds[i], PAGE, "fi", &obj), -EMFILE);
      assert_null(obj);
      assert_int_equal(tu_fd_count(), fds);
    }
    assert_int_equal(mb_fi_arm(MB_FI_FTRUNCATE, 1, ENOSPC), 0);
    assert_int_equal(mb_object_create(kinds[i], PAGE, "fi", &obj), -ENOSPC);
    assert_null(obj);
    assert_int_equal(tu_fd_count(), fds);
  }
  assert_true(mb_fi_injected(MB_FI_MEMFD_CREATE) == 2 && mb_fi_injected(MB_FI_FTRUNCATE) == 3);
}

/* The trial mappings of an import fail: a limit is reported as is, a refused writable mapping
 * makes a read-only object, a failed munmap is reported; no fd and no trial page is kept. */
static void test_import_failures(void **state) {
  (void)state;
  int fd = memfd_create("fi-import", MFD_CLOEXEC);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, 4 * PAGE), 0);
  int fds = tu_fd_count();
  uint64_t vm = mem_vm_size();
  mb_object *obj = NULL;
  for (uint64_t n = 1; n <= 2; n++) { /* the first page's trial, then the last page's */
    assert_int_equal(mb_fi_arm(MB_FI_MMAP, n, ENOMEM), 0);
    assert_int_equal(mb_object_import_fd(fd, 0, &obj), -ENOMEM);
    assert_null(obj);
    assert_int_equal(tu_fd_count(), fds);
    assert_true(mem_vm_size() == vm);
  }
  assert_int_equal(mb_fi_arm(MB_FI_MMAP, 1, EACCES), 0);
  assert_int_equal(mb_object_import_fd(fd, 0, &obj), 0);
  assert_false(mb_object_writable(obj));
  mb_object_unref(obj);
  assert_int_equal(mb_fi_arm_persist(MB_FI_MMAP, 1, ENODEV), 0); /* the read-only retry too */
  assert_int_equal(mb_object_import_fd(fd, 0, &obj), MB_E_INVALID);
  assert_int_equal(mb_fi_arm(MB_FI_MMAP, 0, ENODEV), 0);
  assert_int_equal(mb_fi_arm(MB_FI_MUNMAP, 1, EINVAL), 0);
  assert_int_equal(mb_object_import_fd(fd, PAGE, &obj), -EINVAL);
  assert_null(obj);
  assert_int_equal(tu_fd_count(), fds);
  close(fd);
}

/* One life of private memory: every step may fail; the test undoes what it made. */
static void private_life(int *errors) {
  mb_object *obj = NULL;
  mb_va va;
  int rc = mb_object_create(MB_OBJECT_ANON, 4 * PAGE, "fi", &obj);
  if (rc == 0 && (rc = mb_va_reserve(&va, 4 * MiB)) != 0)
    mb_object_unref(obj);
  if (rc != 0) {
    (*errors)++;
    return;
  }
  if (mb_object_map_into(obj, &va, 0, 4 * PAGE, 0, true) == 0) {
    va.base[PAGE] = 0x99;
    *errors += mb_va_protect(&va, 0, 4 * PAGE, false) != 0;
    *errors += mb_va_unmap(&va, 0, 4 * PAGE) != 0;
    if (mb_object_map_into(obj, &va, 2 * MiB, 4 * PAGE, 0, false) == 0)
      assert_int_equal(va.base[2 * MiB + PAGE], 0x99); /* no failure may lose a byte */
    else
      (*errors)++;
  } else {
    (*errors)++;
  }
  while (mb_va_release(&va) != 0) /* a failed release leaves it whole: retry */
    (*errors)++;
  mb_object_unref(obj);
}

/* SQLite-style: fail the n-th call of each kind, for every n the life makes. */
static void test_every_failure_point(void **state) {
  (void)state;
  int fds = tu_fd_count();
  uint64_t vm = mem_vm_size();
  for (int k = 0; k < MB_FI_KINDS; k++) {
    for (uint64_t n = 1;; n++) {
      mb_fi_reset();
      assert_int_equal(mb_fi_arm((mb_fi_kind)k, n, ENOMEM), 0);
      int errors = 0;
      private_life(&errors);
      assert_int_equal(tu_fd_count(), fds);
      assert_true(mem_vm_size() == vm);
      if (mb_fi_injected((mb_fi_kind)k) == 0) { /* n is past the life's last call */
        assert_int_equal(errors, 0);
        break;
      }
      assert_int_equal(errors, 1);
    }
  }
}

int main(void) {
  if (!mb_fi_enabled()) {
    fprintf(stderr, "built without fault injection: skipped\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_arm_and_count, setup),
      cmocka_unit_test_setup(test_release_failure, setup),
      cmocka_unit_test_setup(test_reserve_failures, setup),
      cmocka_unit_test_setup(test_map_failures, setup),
      cmocka_unit_test_setup(test_create_failures, setup),
      cmocka_unit_test_setup(test_import_failures, setup),
      cmocka_unit_test_setup(test_every_failure_point, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
