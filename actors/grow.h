/* grow.h: arrays that grow by doubling (the actors' lists and plans). */
#ifndef MB_GROW_H
#define MB_GROW_H

#include <stddef.h>
#include <stdlib.h>

#include "fault_inject.h" /* mb__realloc: MB_FI_ALLOC */

/* arr (n elements of elem bytes used, room for *cap) with room for one more: arr itself when
 * there is room, else a reallocation to twice *cap (or `first`) with *cap updated. NULL when
 * out of memory: arr and *cap are then unchanged. */
static inline void *mb__grow(void *arr, size_t *cap, size_t n, size_t elem, size_t first) {
  if (n < *cap)
    return arr;
  size_t c = *cap ? 2 * *cap : first;
  void *p = mb__realloc(arr, c * elem);
  if (p != NULL)
    *cap = c;
  return p;
}

#endif
