/* inbox.c: the MPSC inbox of a loop.
 *
 * Invariant: the consumer sleeps only after leaving a mark that the next producer is bound to
 * see. Two marks exist, one per way the queue can look empty:
 *   - truly empty (tail == sentinel == head): the consumer tags head's low bit with a CAS; the next
 *     producer's exchange of head returns the tagged pointer;
 *   - a producer in progress (it swapped head but has not linked prev->next yet): the consumer
 *     CASes tail->next from NULL to STALLED; that producer links with an exchange and sees it.
 * Both marks are single-word read-modify-writes on the word the producer also swaps, so the
 * producer and the consumer cannot both miss each other. Producers never spin and neither
 * does the consumer. */
#include "inbox.h"

#include <stdint.h>

#define STALLED ((mb_msg *)(uintptr_t)1)
#define TAG ((uintptr_t)1)

static inline mb_msg *untag(mb_msg *p) { return (mb_msg *)((uintptr_t)p & ~TAG); }
static inline bool tagged(mb_msg *p) { return ((uintptr_t)p & TAG) != 0; }

void mb__inbox_init(mb__inbox *q) {
  atomic_init(&q->sentinel.next__, NULL);
  atomic_init(&q->head, &q->sentinel);
  q->tail = &q->sentinel;
}

bool mb__inbox_push(mb__inbox *q, mb_msg *m) {
  atomic_store_explicit(&m->next__, NULL, memory_order_relaxed);
  mb_msg *prev = atomic_exchange_explicit(&q->head, m, memory_order_acq_rel);
  bool asleep = tagged(prev);
  mb_msg *old = atomic_exchange_explicit(&untag(prev)->next__, m, memory_order_acq_rel);
  return asleep || old == STALLED;
}

static inline mb_msg *next_of(mb_msg *n) {
  mb_msg *next = atomic_load_explicit(&n->next__, memory_order_acquire);
  return next == STALLED ? NULL : next;
}

mb_msg *mb__inbox_pop(mb__inbox *q) {
  mb_msg *tail = q->tail;
  mb_msg *next = next_of(tail);
  if (tail == &q->sentinel) {
    if (!next) return NULL;
    q->tail = tail = next;
    next = next_of(next);
  }
  if (next) {
    q->tail = next;
    return tail;
  }
  if (tail != untag(atomic_load_explicit(&q->head, memory_order_acquire))) return NULL;
  mb__inbox_push(q, &q->sentinel);
  next = next_of(tail);
  if (!next) return NULL;
  q->tail = next;
  return tail;
}

bool mb__inbox_sleep(mb__inbox *q) {
  mb_msg *tail = q->tail;
  mb_msg *next = atomic_load_explicit(&tail->next__, memory_order_acquire);
  if (next == STALLED) return true;
  if (next) return false;
  mb_msg *head = atomic_load_explicit(&q->head, memory_order_acquire);
  if (untag(head) == tail) {
    if (tail != &q->sentinel) return false; /* pop must re-insert the sentinel first */
    if (tagged(head)) return true;
    return atomic_compare_exchange_strong_explicit(&q->head, &head, (mb_msg *)((uintptr_t)tail | TAG),
                                                   memory_order_acq_rel, memory_order_acquire);
  }
  /* A producer swapped head and has yet to link tail->next: leave it the STALLED mark. */
  mb_msg *expect = NULL;
  return atomic_compare_exchange_strong_explicit(&tail->next__, &expect, STALLED,
                                                 memory_order_acq_rel, memory_order_acquire);
}

bool mb__inbox_peek(mb__inbox *q) {
  mb_msg *tail = q->tail;
  if (next_of(tail)) return true;
  return untag(atomic_load_explicit(&q->head, memory_order_acquire)) != tail;
}

mb_msg *mb__inbox_front(mb__inbox *q) {
  mb_msg *tail = q->tail;
  return tail == &q->sentinel ? next_of(tail) : tail;
}
