/* thread_exit.h: per-thread caches drained when their thread exits. */
#ifndef MB_THREAD_EXIT_H
#define MB_THREAD_EXIT_H

#include <stdbool.h>

/* Has drain(arg) run when the calling thread exits (after each drain registered later by the
 * same thread). A cache registers once per thread, on first use. False when it cannot be
 * (no thread key, or the thread's few places taken): the caller then keeps nothing. */
bool mb__at_thread_exit(void (*drain)(void *arg), void *arg);

#endif
