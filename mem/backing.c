/* backing.c: backing objects (see backing.h): creation of each kind, refcount, fills. */
#include "backing.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mb_range.h"

struct mb_object {
  atomic_uint refs;
  mb_object_kind kind;
  int fd; /* -1 for MB_OBJECT_ANON */
  uint64_t size;
};

/* ---- creation -------------------------------------------------------------------------- */

static int create_memfd(const char *name) {
  char label[64];
  snprintf(label, sizeof label, "membacking:%s", name ? name : "ram");
  int fd = memfd_create(label, MFD_CLOEXEC);
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

static int create_fd(mb_object_kind kind, uint64_t size, const char *name) {
  int fd = kind == MB_OBJECT_MEMFD ? create_memfd(name) : create_tmpfile();
  if (fd < 0)
    return fd;
  if (ftruncate(fd, (off_t)size) != 0) {
    int err = -errno;
    close(fd);
    return err;
  }
  return fd;
}

int mb_object_create(mb_object_kind kind, uint64_t size, const char *name, mb_object **out) {
  *out = NULL;
  if (size == 0 || !mb_page_aligned(size) || size > (uint64_t)INT64_MAX)
    return -EINVAL;
  if (kind != MB_OBJECT_MEMFD && kind != MB_OBJECT_FILE && kind != MB_OBJECT_ANON)
    return -EINVAL;
  mb_object *obj = malloc(sizeof *obj);
  if (obj == NULL)
    return -ENOMEM;
  obj->fd = -1;
  if (kind != MB_OBJECT_ANON) {
    obj->fd = create_fd(kind, size, name);
    if (obj->fd < 0) {
      int err = obj->fd;
      free(obj);
      return err;
    }
  }
  atomic_init(&obj->refs, 1);
  obj->kind = kind;
  obj->size = size;
  *out = obj;
  return 0;
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

void mb_object_unref(mb_object *obj) {
  if (obj == NULL)
    return;
  unsigned old = atomic_fetch_sub_explicit(&obj->refs, 1, memory_order_acq_rel);
  assert(old > 0);
  if (old != 1)
    return;
  if (obj->fd >= 0)
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
  return obj->fd;
}

/* mb_object_check_range, inline for mb_object_map_into. */
static inline int check_range(const mb_object *obj, uint64_t off, uint64_t len) {
  if (len == 0 || !mb_page_aligned(off | len) || off > obj->size || len > obj->size - off)
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
  if (obj->kind == MB_OBJECT_ANON)
    return -ENOTSUP;
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

int mb_object_map_into(const mb_object *obj, mb_va *va, uint64_t va_off, uint64_t len,
                       uint64_t obj_off, bool writable) {
  int rc = check_range(obj, obj_off, len);
  if (rc != 0)
    return rc;
  if (obj->kind == MB_OBJECT_ANON)
    return mb_va_map_anon(va, va_off, len, writable);
  return mb_va_map_fd(va, va_off, len, obj->fd, obj_off, writable);
}
