/* object_place.h: objects made with options (mb_object_create_opts: hugetlb pages, THP, a host
 * NUMA node, prefetch) and where their pages live: object_place.c, on top of backing.c, which
 * gives it the two internal hooks below. Internal (not installed). Any thread. */
#ifndef MB_OBJECT_PLACE_H
#define MB_OBJECT_PLACE_H

#include <stdbool.h>
#include <stdint.h>

#include "mb_backing.h"

/* backing.c: an object for fd (now owned; closed if this fails) with these properties. */
int mb__object_wrap(mb_object_kind kind, int fd, uint64_t size, bool writable,
                    uint64_t page_size, bool thp, mb_object **out);
/* backing.c: sets the THP hint of an object nobody else holds yet (objects are immutable
 * once shared). */
void mb__object_set_thp(mb_object *obj, bool thp);
/* backing.c: the object's own fd, MB_OBJECT_ANON's internal one included. */
int mb__object_raw_fd(const mb_object *obj);

#endif
