/* prot_map.h: one VTL's page protections, as a set of disjoint guest ranges that are not
 * read-write (read-write is the default and is not stored). Touching ranges with the same
 * access are always merged, so the set holds as few ranges as it can. Pure bookkeeping: no
 * actors, no system calls; one owner thread.
 *
 * Cost: a change over [gpa, gpa + size) is O(log n + k) for the k stored ranges it touches,
 * amortized: it walks the k ranges and links at most three, and unlinking a range (O(log n))
 * is paid by the change that linked it. Queries are O(log n + k). A change never fails half
 * way: it allocates what it needs first (MB_ENOMEM, nothing changed). Bad arguments (an access
 * above MB_PROT_RW, a range whose end wraps) answer MB_E_INVALID and change nothing. */
#ifndef MB_PROT_MAP_H
#define MB_PROT_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mb_vtl.h"
#include "range_tree.h"

typedef struct mb_prot_map {
  mb_rtree ranges; /* of mb_prot_range, disjoint, never MB_PROT_RW, neighbours merged */
} mb_prot_map;

typedef struct mb_prot_range {
  mb_rtree_node node; /* [start, end) */
  uint8_t access;     /* MB_PROT_NONE or MB_PROT_RO */
} mb_prot_range;

void mb_prot_init(mb_prot_map *m);
void mb_prot_fini(mb_prot_map *m);
/* Sets [gpa, gpa + size) to access (MB_PROT_*). 0, or MB_ENOMEM with nothing changed
 * (it allocates at most two nodes). size 0 is a no-op; gpa + size must not wrap and access
 * must be MB_PROT_* (else MB_E_INVALID, nothing changed). */
int mb_prot_set(mb_prot_map *m, uint64_t gpa, uint64_t size, uint8_t access);
/* Sets each item in turn, all or nothing: 0, or MB_ENOMEM / MB_E_INVALID (any item) with
 * nothing changed. Items are usually ascending and disjoint (a list from mb_prot_items: an
 * undo), but any order works: later items win. It reserves two nodes per item first and frees
 * the ones it did not use. */
int mb_prot_set_items(mb_prot_map *m, const mb_prot_item *items, size_t n);
/* The access at gpa; *end (may be NULL) gets the end of the run of that access from gpa
 * (the start of the next stored range, or the end of this one; UINT64_MAX past the last). */
uint8_t mb_prot_at(const mb_prot_map *m, uint64_t gpa, uint64_t *end);
/* The complete cover of [gpa, gpa + size): ascending items, read-write runs included, that
 * together are exactly the range, each a maximal run inside it (malloc'd; free() it; NULL
 * with *n = 0 for size 0). 0, MB_ENOMEM, or MB_E_INVALID if gpa + size wraps. */
int mb_prot_items(const mb_prot_map *m, uint64_t gpa, uint64_t size, mb_prot_item **out,
                  size_t *n);
/* True if every page of [gpa, gpa + size) allows the access: a read needs ro or rw, a write
 * needs rw. True for size 0; false if gpa + size wraps. */
bool mb_prot_allows(const mb_prot_map *m, uint64_t gpa, uint64_t size, bool write);
/* The stored (non-rw) ranges overlapping [a, b), ascending. */
const mb_prot_range *mb_prot_first(const mb_prot_map *m, uint64_t a, uint64_t b);
const mb_prot_range *mb_prot_next(const mb_prot_range *r, uint64_t a, uint64_t b);
/* How many ranges are stored. */
size_t mb_prot_count(const mb_prot_map *m);
/* Checks the invariants (disjoint, merged, no rw): 0 or -1. For tests. */
int mb__prot_validate(const mb_prot_map *m);

#endif
