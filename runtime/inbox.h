/* inbox.h: a loop's lock-free MPSC inbox (Vyukov's intrusive queue with a sentinel node), whose
 * push tells the producer whether the consumer has gone to sleep and must be woken. */
#ifndef MB_RUNTIME_INBOX_H
#define MB_RUNTIME_INBOX_H

#include <stdatomic.h>
#include <stdbool.h>

#include "mb_runtime.h"

typedef struct mb__inbox {
  _Alignas(64) mb_msg *_Atomic head; /* producers' end; low bit set = consumer asleep */
  _Alignas(64) mb_msg *tail;         /* consumer's end */
  mb_msg sentinel;
} mb__inbox;

void mb__inbox_init(mb__inbox *q);
/* Any thread. Returns true when the consumer is asleep: the caller must wake it. */
bool mb__inbox_push(mb__inbox *q, mb_msg *m);
/* Consumer only. NULL when empty, or when a producer is between its two steps. */
mb_msg *mb__inbox_pop(mb__inbox *q);
/* Consumer only: the message pop returns next (pop may return NULL for it while its producer
 * is between its two steps), or NULL when empty. */
mb_msg *mb__inbox_front(mb__inbox *q);
/* Consumer only: is anything pushed (or being pushed) that pop has not returned? */
bool mb__inbox_peek(mb__inbox *q);
/* Consumer only, after pop returned NULL: mark the consumer asleep. Returns false when a
 * message is (about to be) available, so the consumer must pop again instead of sleeping. */
bool mb__inbox_sleep(mb__inbox *q);

#endif
