/* va_reserve.c: VA reservations (see va_reserve.h).
 *
 * Invariant: between reserve and release every byte of [base, base + size) is covered by
 * some mapping of ours; each operation is one mmap(MAP_FIXED)/mprotect that replaces a range
 * atomically, and a failed MAP_FIXED (which may already have dropped the old pages) is
 * followed by a PROT_NONE replacement so the range never becomes a hole.
 */
#include "va_reserve.h"

#include <errno.h>
#include <stddef.h>
#include <sys/mman.h>

#include "fault_inject.h"
#include "mb_hot.h"
#include "mb_range.h"

/* The flags of a reserved (unmapped) range: no access, no memory committed. */
#define MB__RESERVE_FLAGS (MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)

static int prot_of(bool writable) {
  return writable ? PROT_READ | PROT_WRITE : PROT_READ;
}

void mb_va_drop_begin(mb_va *va) {
  atomic_fetch_add(&va->drops_begun, 1);
}

void mb_va_drop_end(mb_va *va) {
  atomic_fetch_add(&va->drops_ended, 1);
}

int mb_va_reserve(mb_va *va, uint64_t size) {
  return mb_va_reserve_aligned(va, size, mb_va_align_for(size));
}

/* Gives back [p, p + len) of a fresh reservation; a no-op for len 0. */
static int trim(uintptr_t p, uintptr_t len) {
  if (len == 0 || mb__sys_munmap((void *)p, len) == 0)
    return 0;
  return -errno;
}

int mb_va_reserve_aligned(mb_va *va, uint64_t size, uint64_t align) {
  va->base = NULL;
  va->size = 0;
  if (size == 0 || !mb_page_aligned(size) || align < MB_PAGE_SIZE || (align & (align - 1)))
    return -EINVAL;
  uint64_t slack = align - MB_PAGE_SIZE; /* mmap already gives page alignment */
  if (size > SIZE_MAX - slack)
    return -EINVAL;
  size_t span = (size_t)(size + slack);
  void *p = mb__sys_mmap(NULL, span, PROT_NONE, MB__RESERVE_FLAGS, -1, 0);
  if (p == MAP_FAILED)
    return -errno;
  uintptr_t lo = (uintptr_t)p;
  uintptr_t base = (lo + (align - 1)) & ~(uintptr_t)(align - 1);
  uintptr_t tail = lo + span - (base + size);
  int rc = trim(lo, base - lo);
  if (rc == 0)
    rc = trim(base + size, tail);
  if (rc != 0) { /* give everything back rather than keep a span nobody accounts for; */
    mb__sys_munmap(p, span); /* munmap of the already trimmed part is harmless */
    return rc;
  }
  va->base = (uint8_t *)base;
  va->size = size;
  atomic_init(&va->drops_begun, 0);
  atomic_init(&va->drops_ended, 0);
  return 0;
}

int mb_va_release(mb_va *va) {
  if (va->base == NULL)
    return 0;
  if (mb__sys_munmap(va->base, va->size) != 0)
    return -errno; /* still ours, all of it: the caller may retry */
  va->base = NULL;
  va->size = 0;
  return 0;
}

/* mb_va_check, inline for the map functions. */
static inline int check(const mb_va *va, uint64_t off, uint64_t len) {
  if (va->base == NULL || len == 0 || !mb_page_aligned(off | len) || off > va->size ||
      len > va->size - off)
    return -EINVAL;
  return 0;
}

int mb_va_check(const mb_va *va, uint64_t off, uint64_t len) {
  return check(va, off, len);
}

/* Puts a PROT_NONE reservation over the range (no bounds check). */
static int reserve_range(mb_va *va, uint64_t off, uint64_t len) {
  mb_va_drop_begin(va);
  void *p = mb__sys_mmap(va->base + off, len, PROT_NONE, MB__RESERVE_FLAGS | MAP_FIXED, -1, 0);
  int rc = p == MAP_FAILED ? -errno : 0;
  mb_va_drop_end(va);
  return rc;
}

/* A MAP_FIXED mmap of the range. On failure, re-reserve so the range is PROT_NONE, not a
 * hole; if even that fails the original error is still the one to report. */
static int map_fixed(mb_va *va, uint64_t off, uint64_t len, int prot, int flags, int fd,
                     uint64_t fd_off) {
  void *p = mb__sys_mmap(va->base + off, len, prot, flags | MAP_FIXED, fd, (off_t)fd_off);
  if (p == MAP_FAILED) {
    int err = -errno;
    reserve_range(va, off, len);
    return err;
  }
  return 0;
}

int mb_va_map_fd(mb_va *va, uint64_t off, uint64_t len, int fd, uint64_t fd_off,
                 bool writable) {
  return mb_va_map_fd_hint(va, off, len, fd, fd_off, writable, false);
}

/* MADV_HUGEPAGE is a hint: a kernel without THP refuses it (EINVAL) and the mapping is just
 * as good, so its result is not the map's. A new mmap is a new VMA without the flag, so
 * every map of the range (a replace too) gives it again. */
int mb_va_map_fd_hint(mb_va *va, uint64_t off, uint64_t len, int fd, uint64_t fd_off,
                      bool writable, bool thp) {
  int rc = check(va, off, len);
  if (rc != 0)
    return rc;
  if (!mb_page_aligned(fd_off) || fd_off > (uint64_t)INT64_MAX - len)
    return -EINVAL;
  rc = map_fixed(va, off, len, prot_of(writable), MAP_SHARED, fd, fd_off);
  if (rc == 0 && thp)
    (void)madvise(va->base + off, len, MADV_HUGEPAGE);
  return rc;
}

int mb_va_map_anon(mb_va *va, uint64_t off, uint64_t len, bool writable) {
  int rc = check(va, off, len);
  if (rc != 0)
    return rc;
  return map_fixed(va, off, len, prot_of(writable), MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

static int protect(mb_va *va, uint64_t off, uint64_t len, int prot) {
  int rc = check(va, off, len);
  if (rc != 0)
    return rc;
  bool drop = !(prot & PROT_WRITE);
  if (drop)
    mb_va_drop_begin(va);
  rc = mb__sys_mprotect(va->base + off, len, prot) != 0 ? -errno : 0;
  if (drop)
    mb_va_drop_end(va);
  return rc;
}

int mb_va_protect(mb_va *va, uint64_t off, uint64_t len, bool writable) {
  return protect(va, off, len, prot_of(writable));
}

int mb_va_protect_none(mb_va *va, uint64_t off, uint64_t len) {
  return protect(va, off, len, PROT_NONE);
}

MB_HOT int mb_va_unmap(mb_va *va, uint64_t off, uint64_t len) {
  int rc = check(va, off, len);
  if (rc != 0)
    return rc;
  return reserve_range(va, off, len);
}
