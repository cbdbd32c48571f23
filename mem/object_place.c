/* object_place.c: objects made with options (mb_backing.h, mb_object_create_opts) and where
 * their pages live: hugetlb memfds whose pages are all allocated up front, the THP hint,
 * binding to a host NUMA node, and prefetch. libnuma is optional (MB_HAVE_NUMA): without it
 * a node is MB_E_UNSUPPORTED, never silently ignored. */
#include "object_place.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef MB_HAVE_NUMA
#include <numa.h>
#include <numaif.h>
#endif

#include "fault_inject.h"
#include "mb_range.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26
#endif

/* ---- NUMA -------------------------------------------------------------------------------- */

#ifdef MB_HAVE_NUMA
int mb_host_numa_check(uint32_t node) {
  if (numa_available() < 0)
    return MB_E_UNSUPPORTED;
  if (node > (uint32_t)numa_max_node() || !numa_bitmask_isbitset(numa_all_nodes_ptr, node))
    return MB_E_INVALID;
  return 0;
}

/* A node mask with just `node` set, as mbind and set_mempolicy take it. */
static struct bitmask *node_mask(uint32_t node) {
  struct bitmask *m = numa_allocate_nodemask();
  if (m != NULL)
    numa_bitmask_setbit(m, node);
  return m;
}

/* Binds the file's pages to `node` through a temporary shared mapping: for shmem (memfd)
 * the policy is the file's own and outlives the mapping; pages already there move. */
static int bind_file(int fd, uint64_t size, bool writable, uint32_t node) {
  struct bitmask *m = node_mask(node);
  if (m == NULL)
    return -ENOMEM;
  int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  void *p = mb__sys_mmap(NULL, size, prot, MAP_SHARED, fd, 0);
  int rc = p == MAP_FAILED ? -errno : 0;
  if (rc == 0 && mbind(p, size, MPOL_BIND, m->maskp, m->size + 1, MPOL_MF_MOVE) != 0)
    rc = -errno;
  if (p != MAP_FAILED)
    munmap(p, size);
  numa_free_nodemask(m);
  return rc;
}

/* fallocate under MPOL_BIND(node) on the calling thread, its own policy put back after:
 * hugetlb's fallocate allocates by the task's policy. */
static int fallocate_on(int fd, uint64_t size, uint32_t node) {
  struct bitmask *m = node_mask(node), *old = numa_allocate_nodemask();
  int mode = MPOL_DEFAULT, rc = 0;
  if (m == NULL || old == NULL)
    rc = -ENOMEM;
  if (rc == 0 && get_mempolicy(&mode, old->maskp, old->size + 1, NULL, 0) != 0)
    rc = -errno;
  if (rc == 0 && set_mempolicy(MPOL_BIND, m->maskp, m->size + 1) != 0)
    rc = -errno;
  if (rc == 0) {
    rc = fallocate(fd, 0, 0, (off_t)size) == 0 ? 0 : -errno;
    set_mempolicy(mode, mode == MPOL_DEFAULT ? NULL : old->maskp, old->size + 1);
  }
  if (m) numa_free_nodemask(m);
  if (old) numa_free_nodemask(old);
  return rc;
}
#else
int mb_host_numa_check(uint32_t node) {
  (void)node;
  return MB_E_UNSUPPORTED;
}

static int bind_file(int fd, uint64_t size, bool writable, uint32_t node) {
  (void)fd, (void)size, (void)writable, (void)node;
  return MB_E_UNSUPPORTED;
}

static int fallocate_on(int fd, uint64_t size, uint32_t node) {
  (void)fd, (void)size, (void)node;
  return MB_E_UNSUPPORTED;
}
#endif

/* ---- prefetch ---------------------------------------------------------------------------- */

/* The fallback: a write of each page's first byte as it is (a read for a read-only object). */
static void touch_pages(volatile uint8_t *p, uint64_t size, bool writable) {
  for (uint64_t off = 0; off < size; off += MB_PAGE_SIZE) {
    uint8_t b = p[off];
    if (writable)
      p[off] = b;
  }
}

static int prefetch_file(int fd, uint64_t size, bool writable) {
  int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  void *p = mb__sys_mmap(NULL, size, prot, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED)
    return -errno;
  int rc = 0;
  if (madvise(p, size, writable ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) != 0) {
    rc = -errno;
    if (rc == -EINVAL) { /* before Linux 5.14 */
      touch_pages(p, size, writable);
      rc = 0;
    }
  }
  munmap(p, size);
  return rc;
}

/* Hugetlb pages are already all allocated: populating them again would only map them. */
int mb_object_prefetch(mb_object *obj) {
  if (mb_object_page_size(obj) != MB_PAGE_SIZE)
    return 0;
  return prefetch_file(mb__object_raw_fd(obj), mb_object_size(obj), mb_object_writable(obj));
}

/* ---- creation with options --------------------------------------------------------------- */

/* log2 of a supported huge page size, or 0. */
static unsigned hugetlb_shift(uint64_t page_size) {
  return page_size == MB_HUGEPAGE_2M ? 21 : page_size == MB_HUGEPAGE_1G ? 30 : 0;
}

/* A hugetlb memfd of size bytes whose pages are all allocated now: fallocate, not the first
 * touch, is where a short pool says so (-ENOSPC), so the caller can report it at build time.
 * With bind, the pages come from that node. */
static int create_hugetlb(const mb_object_options *o) {
  char label[64];
  snprintf(label, sizeof label, "membacking:%s", o->name ? o->name : "ram");
  unsigned flags = MFD_CLOEXEC | MFD_HUGETLB;
  flags |= hugetlb_shift(o->hugetlb_page_size) << MFD_HUGE_SHIFT;
  int fd = mb__sys_memfd_create(label, flags);
  if (fd < 0)
    return -errno;
  int rc = mb__sys_ftruncate(fd, (off_t)o->size) == 0 ? 0 : -errno;
  if (rc == 0 && o->bind_node)
    rc = fallocate_on(fd, o->size, o->numa_node);
  else if (rc == 0 && fallocate(fd, 0, 0, (off_t)o->size) != 0)
    rc = -errno;
  if (rc != 0) {
    close(fd);
    return rc;
  }
  return fd;
}

static int check_options(const mb_object_options *o) {
  if (o->hugetlb_page_size != 0 &&
      (o->kind != MB_OBJECT_MEMFD || hugetlb_shift(o->hugetlb_page_size) == 0 ||
       o->size == 0 || o->size % o->hugetlb_page_size != 0))
    return MB_E_INVALID;
  return o->bind_node ? mb_host_numa_check(o->numa_node) : 0;
}

/* The object, new or imported, before placement. */
static int create_base(const mb_object_options *o, mb_object **out) {
  if (o->kind == MB_OBJECT_FD)
    return mb_object_import_fd(o->fd, o->size, out);
  if (o->hugetlb_page_size == 0)
    return mb_object_create(o->kind, o->size, o->name, out);
  int fd = create_hugetlb(o);
  if (fd < 0)
    return fd;
  return mb__object_wrap(MB_OBJECT_MEMFD, fd, o->size, true, o->hugetlb_page_size, false, out);
}

int mb_object_create_opts(const mb_object_options *o, mb_object **out) {
  *out = NULL;
  int rc = o == NULL ? MB_E_INVALID : check_options(o);
  if (rc == 0)
    rc = create_base(o, out);
  if (rc != 0)
    return rc;
  mb_object *obj = *out;
  bool small = mb_object_page_size(obj) == MB_PAGE_SIZE;
  mb__object_set_thp(obj, o->thp && small); /* hugetlb needs no THP */
  if (o->bind_node && small)
    rc = bind_file(mb__object_raw_fd(obj), mb_object_size(obj), mb_object_writable(obj),
                   o->numa_node);
  if (rc == 0 && o->prefetch)
    rc = mb_object_prefetch(obj);
  if (rc != 0) {
    mb_object_unref(obj);
    *out = NULL;
  }
  return rc;
}
