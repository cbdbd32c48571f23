/* backing.h: backing objects, the memory that guest ranges are mapped from.
 *
 * Kinds
 *   MB_OBJECT_MEMFD  a memfd (the default for RAM): shareable, mappable by any process
 *                    that receives the fd.
 *   MB_OBJECT_FILE   a regular file in a private temporary directory (mkdtemp under $TMPDIR,
 *                    else /tmp), unlinked at once: nothing is left on disk, even on a crash.
 *   MB_OBJECT_ANON   private anonymous memory: no fd, no contents of its own; every
 *                    mapping of it is fresh zeroed memory.
 *
 * Objects are reference counted and immutable after creation (size, kind and fd never
 * change), so any thread may use one it holds a reference to. The fd, if any, is closed on
 * the last unref. Sizes and offsets are 4 KiB aligned; errors are negative errno values.
 */
#ifndef MB_BACKING_H
#define MB_BACKING_H

#include <stdbool.h>
#include <stdint.h>

#include "mb_range.h"
#include "va_reserve.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mb_object_kind {
  MB_OBJECT_MEMFD,
  MB_OBJECT_FILE,
  MB_OBJECT_ANON,
} mb_object_kind;

typedef struct mb_object mb_object;

/* Creates an object of size bytes (non-zero, 4 KiB aligned, <= INT64_MAX) with one
 * reference. name labels the memfd (may be NULL). */
int mb_object_create(mb_object_kind kind, uint64_t size, const char *name, mb_object **out);
/* Adds a reference; returns obj. */
mb_object *mb_object_ref(mb_object *obj);
/* Drops a reference; the last one closes the fd and frees the object. NULL is a no-op. */
void mb_object_unref(mb_object *obj);

mb_object_kind mb_object_get_kind(const mb_object *obj);
uint64_t mb_object_size(const mb_object *obj);
/* The object's fd (owned by the object), or -1 for MB_OBJECT_ANON. */
int mb_object_fd(const mb_object *obj);

/* 0 if [off, off + len) is non-empty, aligned and inside the object, else -EINVAL. */
int mb_object_check_range(const mb_object *obj, uint64_t off, uint64_t len);

/* Contents (test scenarios). Sets every byte to `byte` / the k-th 4 KiB page to bytes of
 * value (base + k) mod 256. -ENOTSUP for MB_OBJECT_ANON, which has no contents. Not atomic
 * with respect to concurrent readers. */
int mb_object_fill_byte(mb_object *obj, uint8_t byte);
int mb_object_fill_pages(mb_object *obj, uint8_t base);

/* The byte mb_object_fill_pages(obj, base) leaves at offset off. */
static inline uint8_t mb_fill_pages_byte(uint8_t base, uint64_t off) {
  return (uint8_t)(base + off / MB_PAGE_SIZE);
}

/* Maps object bytes [obj_off, obj_off + len) at va offset va_off (shared for fd kinds,
 * fresh private memory for MB_OBJECT_ANON). */
int mb_object_map_into(const mb_object *obj, mb_va *va, uint64_t va_off, uint64_t len,
                       uint64_t obj_off, bool writable);

#ifdef __cplusplus
}
#endif

#endif /* MB_BACKING_H */
