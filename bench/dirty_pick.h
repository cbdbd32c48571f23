/* dirty_pick.h: what dirty.sync.kvm (bench_dirty.c) and its floor syscalls.dirty_log
 * (baseline_dirty_log.c) share: the guest's random pages between two syncs, and the check
 * that a sync answered exactly those.
 *
 * Both sides draw from the same generator with the same seed, so they dirty the same
 * sequence of page sets, each set DIRTY_PAGES distinct pages of the 1 GiB RAM. */
#ifndef MB_BENCH_DIRTY_PICK_H
#define MB_BENCH_DIRTY_PICK_H

#include <stdbool.h>
#include <stdint.h>

#define DIRTY_RAM_SIZE ((uint64_t)1 << 30) /* the RAM region / slot: 1 GiB */
#define DIRTY_PAGE_SIZE ((uint64_t)4096)
#define DIRTY_SEED 0x9e3779b97f4a7c15ull
enum {
  DIRTY_PAGES = 256,                                         /* written between two syncs */
  DIRTY_RAM_PAGES = (int)(DIRTY_RAM_SIZE / DIRTY_PAGE_SIZE), /* 262,144 */
  DIRTY_WORDS = DIRTY_RAM_PAGES / 64,                        /* of a bitmap of the RAM */
};

static inline uint64_t dirty_rand(uint64_t *s) { /* xorshift64* */
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 0x2545f4914f6cdd1dull;
}

/* DIRTY_PAGES distinct random page numbers of the RAM into out; seen (DIRTY_WORDS words, all
 * zero) is scratch and is all zero again on return. */
static inline void dirty_pick(uint64_t *rng, uint64_t *seen, uint64_t *out) {
  for (int i = 0; i < DIRTY_PAGES; i++) {
    uint64_t p;
    do
      p = (dirty_rand(rng) >> 16) % DIRTY_RAM_PAGES;
    while (seen[p / 64] >> (p % 64) & 1);
    seen[p / 64] |= 1ull << (p % 64);
    out[i] = p;
  }
  for (int i = 0; i < DIRTY_PAGES; i++)
    seen[out[i] / 64] = 0;
}

/* Does the bitmap (DIRTY_WORDS words) hold exactly the pages in `pages` (n of them)? */
static inline bool dirty_bitmap_is(const uint64_t *bitmap, const uint64_t *pages, int n) {
  int bits = 0;
  for (int w = 0; w < DIRTY_WORDS; w++)
    bits += __builtin_popcountll(bitmap[w]);
  for (int i = 0; i < n; i++)
    if (!(bitmap[pages[i] / 64] >> (pages[i] % 64) & 1))
      return false;
  return bits == n;
}

#endif
