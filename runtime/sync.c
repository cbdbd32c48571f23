/* sync.c: one-shot waiters for threads that block without a loop (mb_call_sync,
 * mb_loop_exec), on a futex: no allocation, one system call each side at most. */
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

static long futex(_Atomic uint32_t *addr, int op, uint32_t val) {
  return syscall(SYS_futex, (uint32_t *)addr, op | FUTEX_PRIVATE_FLAG, val, NULL, NULL, 0);
}

/* Invariant: done goes 0 -> 1 once; the waiter returns only after reading 1 (acquire), so
 * everything the signaller wrote before its release store is visible to it. */
void mb__waiter_wait(mb__waiter *w) {
  while (!atomic_load_explicit(&w->done, memory_order_acquire)) futex(&w->done, FUTEX_WAIT, 0);
}

void mb__waiter_signal(mb__waiter *w) {
  atomic_store_explicit(&w->done, 1, memory_order_release);
  futex(&w->done, FUTEX_WAKE, INT_MAX);
}
