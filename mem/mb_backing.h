/* mb_backing.h: backing objects, the memory that guest ranges are mapped from.
 *
 * Kinds
 *   MB_OBJECT_MEMFD  a memfd (the default for RAM): shareable, mappable by any process
 *                    that receives the fd.
 *   MB_OBJECT_FILE   a regular file in a private temporary directory (mkdtemp under $TMPDIR,
 *                    else /tmp), unlinked at once: nothing is left on disk, even on a crash.
 *   MB_OBJECT_ANON   private memory: contents of its own, like a memfd, but no fd is ever
 *                    given out (mb_object_fd is -1), so no other process can map it. It is
 *                    an internal memfd: every mapping of it, in every VA reservation,
 *                    shows the same bytes, and bytes survive unmap/map and access changes
 *                    for as long as the object lives. (A forked child shares its mapped
 *                    pages, as for every kind.)
 *   MB_OBJECT_FD     a descriptor the VMM already holds (a DAX file, a memfd shared with a
 *                    vhost-user device, a snapshot file), imported by mb_object_import_fd.
 *
 * Every kind is mapped shared (MAP_SHARED), so all views of an object are one memory.
 *
 * Objects are reference counted and immutable after creation (size, kind, fd and
 * writability never change), so any thread may use one it holds a reference to. The
 * object's fd is its own and is closed on the last unref. Sizes and offsets are 4 KiB
 * aligned; errors are negative errno values, or the codes of mb_errors.h where noted.
 */
#ifndef MB_BACKING_H
#define MB_BACKING_H

#include <stdbool.h>
#include <stdint.h>

#include "mb_errors.h"
#include "mb_range.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mb_object_kind {
  MB_OBJECT_MEMFD,
  MB_OBJECT_FILE,
  MB_OBJECT_ANON,
  MB_OBJECT_FD,
} mb_object_kind;

typedef struct mb_object mb_object;

/* Creates an object of size bytes (non-zero, 4 KiB aligned, <= INT64_MAX) with one
 * reference, all zero. name labels the memfd (may be NULL). A bad size or kind (MB_OBJECT_FD:
 * use mb_object_import_fd) is MB_E_INVALID; what the host refuses, a negative errno. */
int mb_object_create(mb_object_kind kind, uint64_t size, const char *name, mb_object **out);
/* Imports fd as an MB_OBJECT_FD object of size bytes with one reference. The object keeps
 * a duplicate of fd (F_DUPFD_CLOEXEC) and closes only that: the caller keeps fd and may
 * close it at once. size 0 takes the file's size (a regular file, a memfd, a block device);
 * a character device must be given its size. The size must be a non-zero multiple of
 * 4 KiB, at most INT64_MAX and at most the file's size. Guest memory is mapped in 4 KiB
 * pages, so what only maps in larger ones (hugetlbfs files, device DAX) is MB_E_INVALID.
 * The object is read-only (mb_object_writable false) when fd was opened O_RDONLY or is a
 * memfd sealed with F_SEAL_WRITE or F_SEAL_FUTURE_WRITE (or the kernel refuses a writable
 * shared mapping of it for another reason); its mappings and fills are MB_E_READONLY.
 * This is decided at import: sealing later makes writable mappings fail with -EPERM.
 * The caller must not shrink the file below size: access beyond its end faults (SIGBUS,
 * seen as a fault by mb_access_*).
 * MB_E_INVALID: fd is not open, or not mappable (a pipe, socket, directory, eventfd,
 * O_WRONLY or O_PATH fd, /dev/zero (each mapping would be separate memory), a procfs or
 * sysfs file: decided by mapping a page for a moment), or the size is bad. Resource limits
 * are -errno (-EMFILE, -ENOMEM). On any error nothing is kept and *out is NULL. */
int mb_object_import_fd(int fd, uint64_t size, mb_object **out);
/* ---- options: huge pages, THP, a host NUMA node, prefetch (the RAM builder's, mb_ram.h) --- */

#define MB_HUGEPAGE_2M (2ull << 20)
#define MB_HUGEPAGE_1G (1ull << 30)

typedef struct mb_object_options {
  mb_object_kind kind;        /* MEMFD, FILE or ANON: a new object; FD: import `fd` */
  uint64_t size;              /* as for mb_object_create; for FD as for mb_object_import_fd */
  const char *name;           /* labels a memfd; may be NULL */
  int fd;                     /* FD only: the descriptor to import (the caller keeps it) */
  uint64_t hugetlb_page_size; /* 0, or MB_HUGEPAGE_2M / MB_HUGEPAGE_1G (MEMFD only, size a
                               * multiple of it): a hugetlb memfd whose pages are all
                               * allocated here (fallocate), so a short pool is -ENOSPC now,
                               * not a SIGBUS at first touch */
  bool thp;                   /* MADV_HUGEPAGE on every mapping of the object (each VA
                               * mapper's, after each mmap); ignored for hugetlb */
  bool bind_node;             /* place the pages on host NUMA node numa_node (mbind
                               * MPOL_BIND; libnuma): MB_E_UNSUPPORTED in a build without
                               * libnuma, MB_E_INVALID for a node the host lacks */
  uint32_t numa_node;
  bool prefetch;              /* allocate every page now (mb_object_prefetch) */
} mb_object_options;

/* Creates (or imports) an object with options. Errors as for mb_object_create and
 * mb_object_import_fd, plus MB_E_INVALID for options that do not go together (hugetlb for a
 * kind other than MEMFD, an unsupported huge page size, a size not a multiple of it), the
 * NUMA errors above, and the host's refusals as negative errno (-ENOSPC: the huge page pool
 * is short; -EINVAL from memfd_create: no hugetlb support for that size). Nothing is kept on
 * failure. */
int mb_object_create_opts(const mb_object_options *o, mb_object **out);
/* 0 if pages can be bound to host node `node`; MB_E_UNSUPPORTED without libnuma (or a host
 * without NUMA support), MB_E_INVALID for a node the host does not have. */
int mb_host_numa_check(uint32_t node);
/* The size of the pages the object maps in: MB_PAGE_SIZE, or a hugetlb object's huge page
 * size. Mappings of it (object offset, length, guest address) must be multiples of it. */
uint64_t mb_object_page_size(const mb_object *obj);
/* Whether its mappings get MADV_HUGEPAGE. */
bool mb_object_thp(const mb_object *obj);
/* Allocates every page of the object now: MADV_POPULATE_WRITE (READ for a read-only object)
 * through a temporary mapping, or a touch of every page on kernels without it. A no-op for
 * hugetlb objects (allocated at creation). 0 or a negative errno. */
int mb_object_prefetch(mb_object *obj);

/* Adds a reference; returns obj. */
mb_object *mb_object_ref(mb_object *obj);
/* Drops a reference; the last one closes the fd and frees the object. NULL is a no-op. */
void mb_object_unref(mb_object *obj);

mb_object_kind mb_object_get_kind(const mb_object *obj);
uint64_t mb_object_size(const mb_object *obj);
/* The object's fd (owned by the object), or -1 for MB_OBJECT_ANON (private: its fd is
 * internal). For MB_OBJECT_FD it is the object's duplicate, not the caller's fd. */
int mb_object_fd(const mb_object *obj);
/* False if only read-only mappings of the object are possible (a read-only import): a
 * writable mapping of it is MB_E_READONLY. Region and mapping managers check this before
 * accepting a writable mapping, so it is refused before anything changes. */
bool mb_object_writable(const mb_object *obj);

/* 0 if [off, off + len) is non-empty, aligned (to mb_object_page_size) and inside the object,
 * else -EINVAL. */
int mb_object_check_range(const mb_object *obj, uint64_t off, uint64_t len);

/* Contents (test scenarios). Sets every byte to `byte` / the k-th 4 KiB page to bytes of
 * value (base + k) mod 256, for every kind (MB_OBJECT_ANON too: every mapping sees it; an
 * imported fd: the caller's file is written). MB_E_READONLY for a read-only object. Not
 * atomic with respect to concurrent readers. */
int mb_object_fill_byte(mb_object *obj, uint8_t byte);
int mb_object_fill_pages(mb_object *obj, uint8_t base);

/* The byte mb_object_fill_pages(obj, base) leaves at offset off. */
static inline uint8_t mb_fill_pages_byte(uint8_t base, uint64_t off) {
  return (uint8_t)(base + off / MB_PAGE_SIZE);
}

struct mb_va; /* a VA reservation (the library's own; not part of the API) */

/* Maps object bytes [obj_off, obj_off + len) shared at va offset va_off, read-only or
 * read-write (with MADV_HUGEPAGE when mb_object_thp). -EINVAL for a range outside the object or the reservation and MB_E_READONLY
 * for writable on a read-only object, both changing nothing; a failed mmap leaves the
 * range PROT_NONE (mb_va_map_fd). */
int mb_object_map_into(const mb_object *obj, struct mb_va *va, uint64_t va_off, uint64_t len,
                       uint64_t obj_off, bool writable);

#ifdef __cplusplus
}
#endif

#endif /* MB_BACKING_H */
