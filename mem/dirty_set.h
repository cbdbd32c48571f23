/* dirty_set.h: a manager's one set of dirty guest pages, by guest physical address (4 KiB
 * pages), for dirty-page tracking (spec/scenario.md, "Dirty-page tracking"). Internal.
 *
 * Many threads mark pages (a soft partition's loop, any thread writing through a VA mapper, a
 * lock holder); one thread at a time takes them (a sync). The set is one bit per page below
 * max_addr in one anonymous MAP_NORESERVE mapping, plus a summary bit per 128 MiB of guest:
 * the parts never marked cost no memory, and takes skip them (a 1 TiB guest reserves 32 MiB of
 * address space and 1 KiB of summary; marked in three places, it holds three pages). A mark is
 * an atomic OR of a 64-bit word (skipped when the bit is already set: see dirty_set.c); a take
 * is an atomic AND of whole words, masked at the edges of the range.
 *
 * Invariant: no mark is ever lost. A mark that races a take lands either in that take's
 * answer or stays in the set for the next take; a page is answered at most once per mark, so
 * a page marked once is answered exactly once (a page marked again after a take that answered
 * it is answered again by a later take).
 *
 * Marking after the write: a writer marks a page after its bytes are in memory (as rust-vmm's
 * vm-memory does). A take that answers the page then happens after the write, so a consumer
 * that reads the page after the take sees the bytes; a write after the take is marked again.
 *
 * Threads: mark*, any* may be called from any thread at any time, concurrently with each
 * other and with a take. take_* and clear from one thread at a time (the set's syncer), and
 * destroy when nobody else uses the set. Nothing here allocates after create, takes a lock or
 * makes a system call but clear's madvise. */
#ifndef MB_DIRTY_SET_H
#define MB_DIRTY_SET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mb_range.h"

typedef struct mb_dirty_set mb_dirty_set;

/* A set for guest addresses [0, max_addr): 0, MB_E_INVALID (max_addr zero, not page aligned,
 * or above 2^52, the widest guest physical address x86-64 has), or -ENOMEM. Empty. */
int mb_dirty_set_create(uint64_t max_addr, mb_dirty_set **out);
void mb_dirty_set_destroy(mb_dirty_set *s); /* NULL is fine */
uint64_t mb_dirty_set_max_addr(const mb_dirty_set *s);

/* ---- marking (any thread) ------------------------------------------------------------- */

/* Marks every page that [gpa, gpa + len) touches (any alignment; len 0 marks nothing): 0, or
 * MB_E_INVALID, marking nothing, when the range wraps or reaches past max_addr. */
int mb_dirty_set_mark_range(mb_dirty_set *s, uint64_t gpa, uint64_t len);
/* Marks the pages of a bitmap: bit i of bits (bit i % 64 of word i / 64) is page gpa + i * 4 KiB,
 * for i < npages (bits past npages in the last word are ignored). gpa is page aligned, and not
 * 64-page aligned in general (a KVM slot's log). 0, or MB_E_INVALID, marking nothing, when gpa
 * is unaligned or the pages reach past max_addr. */
int mb_dirty_set_mark_bitmap(mb_dirty_set *s, uint64_t gpa, const uint64_t *bits,
                             uint64_t npages);
/* Whether a page of [gpa, gpa + size) (page aligned) is dirty now; false for a bad range. */
bool mb_dirty_set_any(const mb_dirty_set *s, uint64_t gpa, uint64_t size);

/* ---- taking (one thread at a time) ---------------------------------------------------------
 *
 * A take answers the dirty pages of [gpa, gpa + size) (page aligned, inside [0, max_addr)) and
 * clears them. Pages that must stay dirty after a take (those still under a writable lock:
 * the spec answers them and keeps them dirty) are simply marked again by the caller once the
 * take returns; only one thread takes, so no other take can miss them in between. */

/* Into a bitmap of the caller's: bit i (bit i % 64 of word i / 64) is page gpa + i * 4 KiB,
 * for i < size / 4 KiB; the whole words are written (bits past the range are 0). Returns the
 * number of dirty pages taken, or MB_E_INVALID (as a negative int64_t), taking nothing, for a
 * bad range. */
int64_t mb_dirty_set_take_bitmap(mb_dirty_set *s, uint64_t gpa, uint64_t size, uint64_t *bits);
/* As merged ranges: up to max of them into out, in ascending order, adjacent pages merged into
 * one range. Returns how many it wrote, and in *next where it stopped: [gpa, *next) was taken
 * entirely; *next == gpa + size when the whole range was, else out was full and *next is the
 * first page of a range that did not fit, which stays dirty with everything after it (call
 * again from *next). MB_E_INVALID, taking nothing, for a bad range. */
int64_t mb_dirty_set_take_ranges(mb_dirty_set *s, uint64_t gpa, uint64_t size, mb_range *out,
                                 size_t max, uint64_t *next);
/* Forgets every page, and gives the memory back to the kernel (tracking stopped). Marks that
 * race it may or may not survive it. */
void mb_dirty_set_clear(mb_dirty_set *s);

#endif
