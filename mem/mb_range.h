/* mb_range.h: half-open, 4 KiB-aligned address ranges [start, end) and their arithmetic.
 *
 * Every guest-physical, region, mapping and VA-offset range in membacking is an mb_range.
 * A range made by mb_range_make() is page aligned and never wraps; end == start is the empty
 * range. The helpers below accept any range with start <= end (aligned or not).
 * All functions are pure and may be called from any thread.
 */
#ifndef MB_RANGE_H
#define MB_RANGE_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MB_PAGE_SIZE 4096u
#define MB_PAGE_MASK ((uint64_t)MB_PAGE_SIZE - 1)

typedef struct mb_range {
  uint64_t start, end; /* half-open: start <= end */
} mb_range;

static inline bool mb_page_aligned(uint64_t x) {
  return (x & MB_PAGE_MASK) == 0;
}

/* [start, start + size): -EINVAL on zero size, unaligned start or size, or wrap past 2^64. */
static inline int mb_range_make(uint64_t start, uint64_t size, mb_range *out) {
  if (size == 0 || !mb_page_aligned(start) || !mb_page_aligned(size))
    return -EINVAL;
  if (size > UINT64_MAX - start)
    return -EINVAL;
  out->start = start;
  out->end = start + size;
  return 0;
}

/* [start, end): -EINVAL unless both are aligned and start < end. */
static inline int mb_range_make_bounds(uint64_t start, uint64_t end, mb_range *out) {
  if (end <= start)
    return -EINVAL;
  return mb_range_make(start, end - start, out);
}

static inline uint64_t mb_range_size(mb_range r) {
  return r.end - r.start;
}

static inline bool mb_range_is_empty(mb_range r) {
  return r.end == r.start;
}

/* True when the ranges share at least one byte (empty ranges overlap nothing). */
static inline bool mb_range_overlaps(mb_range a, mb_range b) {
  return a.start < b.end && b.start < a.end && a.start < a.end && b.start < b.end;
}

/* True when every byte of inner lies in outer (an empty inner is contained if its start is). */
static inline bool mb_range_contains(mb_range outer, mb_range inner) {
  return inner.start >= outer.start && inner.end <= outer.end;
}

static inline bool mb_range_contains_addr(mb_range r, uint64_t addr) {
  return addr >= r.start && addr < r.end;
}

/* The common part of a and b; empty (start == end) when they do not overlap. */
static inline mb_range mb_range_intersect(mb_range a, mb_range b) {
  mb_range r;
  r.start = a.start > b.start ? a.start : b.start;
  r.end = a.end < b.end ? a.end : b.end;
  if (r.end < r.start)
    r.end = r.start;
  return r;
}

#ifdef __cplusplus
}
#endif

#endif /* MB_RANGE_H */
