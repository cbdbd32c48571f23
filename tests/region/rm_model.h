/* rm_model.h: the rules the brute-force models of the region tests (test_visibility.c,
 * test_manager_random.c) compute the region manager's answers with. */
#ifndef MB_TEST_RM_MODEL_H
#define MB_TEST_RM_MODEL_H

#include <stdbool.h>
#include <stdint.h>

/* Under overlap=nested, may a region [s, e) of priority prio overlap the region [os, oe) of
 * priority oprio? A higher one must contain it, a lower one must lie inside it, an equal one
 * must be the same range. */
static inline bool rm_model_nests(uint64_t os, uint64_t oe, uint8_t oprio, uint64_t s, uint64_t e,
                                  uint8_t prio) {
  return oprio < prio   ? (s <= os && oe <= e)
         : oprio > prio ? (os <= s && e <= oe)
                        : (os == s && oe == e);
}

#endif
