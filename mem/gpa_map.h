/* gpa_map.h: the guest physical map as the guest sees it, published for any thread, so that a
 * vCPU thread can answer "what did the guest touch?" in its exit handler without waiting for
 * a loop: RAM that the guest may access (retry the instruction), device MMIO (nothing visible
 * there, or a write to a read-only range: emulate it), or a fault of the backing (a hole, or
 * a write to a read-only mapping inside a writable range).
 *
 * One writer (the region manager's loop) keeps it equal to the committed visible map: RAM
 * ranges with their access. An operation in flight publishes the range it may change ("busy")
 * when it starts and the new ranges when it ends, both at once with clearing busy. So:
 *   - an exit that raced with an unmap is never told RAM once that unmap has completed (the
 *     end of an operation publishes before the operation's caller hears of it);
 *   - a page that is RAM before and after an operation is told RAM throughout, even while
 *     the operation deletes its memory slot and adds it again (busy and visible: retry);
 *   - a page that the operation makes RAM is MMIO until the operation completes.
 * FAULT is decided by probing the host memory behind the page (the VA mapper that partitions
 * map from: mb_access_probe), as KVM would touch it, and only when no operation changed the
 * map meanwhile.
 *
 * Addresses are the writer's (the region manager keeps the map in view space: view n's guest
 * address g at n * stride + g), and so are the published VTL protections (mb_vtl.h): ranges
 * of access none or ro (rw where none is stored), changed by edits like the ranges and
 * published with them. A reader asks with or without them (a VTL's own partition: with; the
 * VTL-2 alias of VTL 0: without).
 *
 * Threads: readers (mb_gpa_map_classify) on any thread, any number. The writer's lock is held
 * only for in-memory tree updates, O(log n) each, never across a system call or a wait; busy
 * is published by a sequence count, without it.
 */
#ifndef MB_GPA_MAP_H
#define MB_GPA_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mb_access.h" /* MB_GPA_*: mb_gpa_map_classify's answers */

typedef struct mb_gpa_map mb_gpa_map;

/* 0 or -ENOMEM. */
int mb_gpa_map_create(mb_gpa_map **out);
void mb_gpa_map_destroy(mb_gpa_map *m);

/* ---- the writer: one thread ------------------------------------------------------------- */

/* An operation starts that may change [start, end) and will add up to `adds` ranges: makes
 * room for them (so that the end cannot fail) and publishes the busy range. 0, or -ENOMEM
 * with nothing changed. Each mb_gpa_map_add needs one; protections need up to two for one
 * mb_gpa_map_protect, and up to n + 2 for n of them that cover a range in ascending order. */
int mb_gpa_map_begin(mb_gpa_map *m, uint64_t start, uint64_t end, size_t adds);
/* Edits, made right before the end: all of them are published with the end of busy (the first
 * takes the write lock, which the end lets go; an operation that failed makes none, and an
 * operation without edits takes no lock). Drop the range that starts at start; add [start,
 * end) (disjoint from the others once the drops are made; at most `adds` of them since
 * begin); change a range's access. */
void mb_gpa_map_drop(mb_gpa_map *m, uint64_t start);
void mb_gpa_map_add(mb_gpa_map *m, uint64_t start, uint64_t end, bool writable);
void mb_gpa_map_access(mb_gpa_map *m, uint64_t start, bool writable);
/* Edit: the protection of [start, end) becomes access (MB_PROT_NONE, MB_PROT_RO or
 * MB_PROT_RW); independent of the ranges (protections belong to addresses). */
void mb_gpa_map_protect(mb_gpa_map *m, uint64_t start, uint64_t end, uint8_t access);
void mb_gpa_map_end(mb_gpa_map *m);

/* ---- readers: any thread ---------------------------------------------------------------- */

/* Classifies a guest access of len bytes (len > 0, gpa + len not wrapping) at gpa, as its
 * first failing byte decides: MB_GPA_MMIO (no range there, or a write to a read-only one),
 * then, with protections, MB_GPA_PROTECTED (protection none, or a write to protection ro),
 * then MB_GPA_FAULT (the host memory of the bytes before it cannot serve the access) or
 * MB_GPA_RAM. host is the host VA of address 0 of the writer's space (so host + gpa is the
 * byte at gpa: the partitions' VA mapper of gpa's view, shifted by the view's start), whose
 * pages are probed to tell RAM from a fault; NULL skips the probe. While an operation that
 * may change the reachable bytes is in flight: MB_GPA_RAM. */
int mb_gpa_map_classify_vtl(mb_gpa_map *m, uint64_t gpa, uint64_t len, bool write,
                            const uint8_t *host, bool protections);
/* mb_gpa_map_classify_vtl without protections. */
int mb_gpa_map_classify(mb_gpa_map *m, uint64_t gpa, uint64_t len, bool write,
                        const uint8_t *host);

#endif
