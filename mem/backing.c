/* backing.c: backing objects (see mb_backing.h): creation of each kind (with the RAM
 * builder's options: hugetlb pages, THP, a NUMA node, prefetch), import of a caller's fd,
 * refcount, fills, mapping. Creation with options and placement (hugetlb, NUMA, prefetch)
 * are object_place.c's, which wraps its fds with mb__object_wrap. */
#include "mb_hot.h"
#include "mb_backing.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fault_inject.h"
#include "mb_range.h"
#include "object_place.h" /* mb__object_wrap, mb__object_raw_fd: declared there */
#include "va_reserve.h"

struct mb_object {
  atomic_uint refs;
  mb_object_kind kind;
  bool writable; /* false only for a read-only import */
  int fd;        /* always valid; MB_OBJECT_ANON's is never given out */
  uint64_t size;
  uint64_t page_size; /* MB_PAGE_SIZE, or a hugetlb memfd's huge page size */
  bool thp;           /* MADV_HUGEPAGE on every mapping of it */
};

/* Wraps fd (now owned) in a new object; closes fd if that fails. */
static int object_new(mb_object_kind kind, int fd, uint64_t size, bool writable,
                      mb_object **out) {
  mb_object *obj = malloc(sizeof *obj);
  if (obj == NULL) {
    close(fd);
    return -ENOMEM;
  }
  atomic_init(&obj->refs, 1);
  obj->kind = kind;
  obj->writable = writable;
  obj->fd = fd;
  obj->size = size;
  obj->page_size = MB_PAGE_SIZE;
  obj->thp = false;
  *out = obj;
  return 0;
}

/* An object for fd (now owned) with the options' properties; closes fd if that fails. */
int mb__object_wrap(mb_object_kind kind, int fd, uint64_t size, bool writable,
                    uint64_t page_size, bool thp, mb_object **out) {
  int rc = object_new(kind, fd, size, writable, out);
  if (rc == 0) {
    (*out)->page_size = page_size;
    (*out)->thp = thp;
  }
  return rc;
}

/* ---- creation -------------------------------------------------------------------------- */

static int create_memfd(const char *name) {
  char label[64];
  snprintf(label, sizeof label, "membacking:%s", name ? name : "ram");
  int fd = mb__sys_memfd_create(label, MFD_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

/* Creates, opens and unlinks a file in a fresh mkdtemp directory, then removes the
 * directory: the returned fd is the only reference left. */
static int create_tmpfile(void) {
  const char *tmp = getenv("TMPDIR");
  char dir[PATH_MAX], path[PATH_MAX];
  if (tmp == NULL || tmp[0] == '\0')
    tmp = "/tmp";
  if ((size_t)snprintf(dir, sizeof dir, "%s/membacking-XXXXXX", tmp) >= sizeof dir)
    return -ENAMETOOLONG;
  if (mkdtemp(dir) == NULL)
    return -errno;
  int fd = -ENAMETOOLONG;
  if ((size_t)snprintf(path, sizeof path, "%s/ram", dir) < sizeof path) {
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
      fd = -errno;
    else
      unlink(path);
  }
  rmdir(dir);
  return fd;
}

/* MB_OBJECT_ANON is a memfd too: one set of pages that every mapping shares, which
 * private anonymous mappings (a fresh copy per mapping) cannot give. */
static int create_fd(mb_object_kind kind, uint64_t size, const char *name) {
  int fd = kind == MB_OBJECT_FILE ? create_tmpfile() : create_memfd(name);
  if (fd < 0)
    return fd;
  if (mb__sys_ftruncate(fd, (off_t)size) != 0) {
    int err = -errno;
    close(fd);
    return err;
  }
  return fd;
}

int mb_object_create(mb_object_kind kind, uint64_t size, const char *name, mb_object **out) {
  *out = NULL;
  if (size == 0 || !mb_page_aligned(size) || size > (uint64_t)INT64_MAX)
    return MB_E_INVALID;
  if (kind != MB_OBJECT_MEMFD && kind != MB_OBJECT_FILE && kind != MB_OBJECT_ANON)
    return MB_E_INVALID;
  int fd = create_fd(kind, size, name);
  if (fd < 0)
    return fd;
  return object_new(kind, fd, size, true, out);
}

/* ---- import ---------------------------------------------------------------------------- */

/* /dev/zero: every shared mapping of it is new memory, so views would not share bytes. */
static bool is_dev_zero(const struct stat *st) {
  return S_ISCHR(st->st_mode) && major(st->st_rdev) == 1 && minor(st->st_rdev) == 5;
}

/* How many bytes fd can back, as far as the kernel says: UINT64_MAX for a character device
 * (it does not say; the trial mapping of the last page checks, as it checks that files map
 * in 4 KiB pages). MB_E_INVALID for a kind of
 * file that cannot be mapped at all (pipe, socket, directory, anonymous inode). */
static int file_size(int fd, const struct stat *st, uint64_t *out) {
  if (S_ISREG(st->st_mode)) {
    *out = (uint64_t)st->st_size;
    return 0;
  }
  if (S_ISBLK(st->st_mode))
    return ioctl(fd, BLKGETSIZE64, out) == 0 ? 0 : -errno;
  if (S_ISCHR(st->st_mode) && !is_dev_zero(st)) {
    *out = UINT64_MAX;
    return 0;
  }
  return MB_E_INVALID;
}

/* size 0 asks for the whole file (which must then have a known, aligned size). */
static int import_size(uint64_t avail, uint64_t *size) {
  if (*size == 0 && avail != UINT64_MAX)
    *size = avail;
  if (*size == 0 || !mb_page_aligned(*size) || *size > (uint64_t)INT64_MAX || *size > avail)
    return MB_E_INVALID;
  return 0;
}

/* Whether fd allows writable shared mappings, as far as its flags and seals tell. */
static bool fd_writable(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || (fl & O_ACCMODE) != O_RDWR)
    return false;
  int seals = fcntl(fd, F_GET_SEALS); /* -1 (EINVAL) for files that cannot be sealed */
  return seals < 0 || (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) == 0;
}

/* mmap failures that mean "not now" (a limit), not "not this fd". */
static bool transient(int err) {
  return err == ENOMEM || err == EAGAIN || err == ENFILE || err == EMFILE || err == EINTR;
}

/* Maps one page of fd at off as the object will be mapped, and unmaps it again: the
 * kernel's own verdict on whether fd can back guest memory. */
static int try_map(int fd, uint64_t off, bool writable) {
  int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  void *p = mb__sys_mmap(NULL, MB_PAGE_SIZE, prot, MAP_SHARED, fd, (off_t)off);
  if (p == MAP_FAILED)
    return transient(errno) ? -errno : MB_E_INVALID;
  /* A lone fresh mapping needs no split to go, so this does not fail in practice; if it
   * does, the page stays mapped and the caller hears of it. */
  return mb__sys_munmap(p, MB_PAGE_SIZE) == 0 ? 0 : -errno;
}

/* Checks the first and the last page; *writable drops to false if the kernel refuses a
 * writable mapping for a reason fd_writable cannot see (an append-only inode, say). */
static int check_mappable(int fd, uint64_t size, bool *writable) {
  int rc = try_map(fd, 0, *writable);
  if (rc == MB_E_INVALID && *writable) {
    *writable = false;
    rc = try_map(fd, 0, false);
  }
  if (rc == 0 && size > MB_PAGE_SIZE)
    rc = try_map(fd, size - MB_PAGE_SIZE, *writable);
  return rc;
}

/* Everything is checked on the caller's fd; the duplicate is made last, so a failure has
 * nothing to undo. */
int mb_object_import_fd(int fd, uint64_t size, mb_object **out) {
  if (out == NULL)
    return MB_E_INVALID;
  *out = NULL;
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0)
    return fd < 0 || errno == EBADF ? MB_E_INVALID : -errno;
  uint64_t avail = 0;
  int rc = file_size(fd, &st, &avail);
  if (rc == 0)
    rc = import_size(avail, &size);
  bool writable = fd_writable(fd);
  if (rc == 0)
    rc = check_mappable(fd, size, &writable);
  if (rc != 0)
    return rc;
  int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (own < 0)
    return -errno;
  return object_new(MB_OBJECT_FD, own, size, writable, out);
}

/* ---- references ------------------------------------------------------------------------ */

/* Invariant: refs counts the holders. A new reference is only made from an existing one,
 * so the increment can be relaxed; the decrement is acq_rel so every holder's use of the
 * object happens-before the last holder closes and frees it. */
mb_object *mb_object_ref(mb_object *obj) {
  unsigned old = atomic_fetch_add_explicit(&obj->refs, 1, memory_order_relaxed);
  assert(old > 0 && old < UINT_MAX);
  (void)old;
  return obj;
}

MB_HOT void mb_object_unref(mb_object *obj) {
  if (obj == NULL)
    return;
  unsigned old = atomic_fetch_sub_explicit(&obj->refs, 1, memory_order_acq_rel);
  assert(old > 0);
  if (old != 1)
    return;
  close(obj->fd);
  free(obj);
}

/* ---- properties ------------------------------------------------------------------------ */

mb_object_kind mb_object_get_kind(const mb_object *obj) {
  return obj->kind;
}

uint64_t mb_object_size(const mb_object *obj) {
  return obj->size;
}

int mb_object_fd(const mb_object *obj) {
  return obj->kind == MB_OBJECT_ANON ? -1 : obj->fd;
}

bool mb_object_writable(const mb_object *obj) {
  return obj->writable;
}

uint64_t mb_object_page_size(const mb_object *obj) {
  return obj->page_size;
}

bool mb_object_thp(const mb_object *obj) {
  return obj->thp;
}

int mb__object_raw_fd(const mb_object *obj) {
  return obj->fd;
}

void mb__object_set_thp(mb_object *obj, bool thp) {
  obj->thp = thp;
}

/* mb_object_check_range, inline for mb_object_map_into. A hugetlb object maps in whole huge
 * pages only. */
static inline int check_range(const mb_object *obj, uint64_t off, uint64_t len) {
  if (len == 0 || !mb_page_aligned(off | len) || off > obj->size || len > obj->size - off)
    return -EINVAL;
  if (((off | len) & (obj->page_size - 1)) != 0)
    return -EINVAL;
  return 0;
}

int mb_object_check_range(const mb_object *obj, uint64_t off, uint64_t len) {
  return check_range(obj, off, len);
}

/* ---- contents -------------------------------------------------------------------------- */

/* One 1 MiB chunk is 256 pages, one full cycle of the page pattern, so the same buffer
 * written at every 1 MiB-aligned offset produces either fill. */
#define MB__FILL_CHUNK ((size_t)256 * MB_PAGE_SIZE)

static int pwrite_all(int fd, const uint8_t *buf, size_t len, uint64_t off) {
  while (len > 0) {
    ssize_t n = pwrite(fd, buf, len, (off_t)off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    buf += n;
    len -= (size_t)n;
    off += (uint64_t)n;
  }
  return 0;
}

static int write_pattern(mb_object *obj, const uint8_t *chunk) {
  for (uint64_t off = 0; off < obj->size; off += MB__FILL_CHUNK) {
    uint64_t left = obj->size - off;
    size_t len = left < MB__FILL_CHUNK ? (size_t)left : MB__FILL_CHUNK;
    int rc = pwrite_all(obj->fd, chunk, len, off);
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* Zeroing by punching out every block is O(1) in data written and frees the memory;
 * the size is kept. Returns -EOPNOTSUPP where the file system cannot punch holes. */
static int punch_all(mb_object *obj) {
  int mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
  return fallocate(obj->fd, mode, 0, (off_t)obj->size) == 0 ? 0 : -errno;
}

static int fill(mb_object *obj, uint8_t value, bool per_page) {
  if (!obj->writable)
    return MB_E_READONLY;
  if (!per_page && value == 0) {
    int rc = punch_all(obj);
    if (rc != -EOPNOTSUPP && rc != -ENOSYS)
      return rc;
  }
  uint8_t *chunk = malloc(MB__FILL_CHUNK);
  if (chunk == NULL)
    return -ENOMEM;
  for (size_t page = 0; page < MB__FILL_CHUNK / MB_PAGE_SIZE; page++) {
    uint8_t v = per_page ? (uint8_t)(value + page) : value;
    memset(chunk + page * MB_PAGE_SIZE, v, MB_PAGE_SIZE);
  }
  int rc = write_pattern(obj, chunk);
  free(chunk);
  return rc;
}

int mb_object_fill_byte(mb_object *obj, uint8_t byte) {
  return fill(obj, byte, false);
}

int mb_object_fill_pages(mb_object *obj, uint8_t base) {
  return fill(obj, base, true);
}

/* ---- mapping --------------------------------------------------------------------------- */

MB_HOT int mb_object_map_into(const mb_object *obj, mb_va *va, uint64_t va_off, uint64_t len,
                       uint64_t obj_off, bool writable) {
  int rc = check_range(obj, obj_off, len);
  if (rc != 0)
    return rc;
  if (writable && !obj->writable)
    return MB_E_READONLY;
  return mb_va_map_fd_hint(va, va_off, len, obj->fd, obj_off, writable, obj->thp);
}
