/* access_signals.h (internal): installing the SIGSEGV/SIGBUS handler of access.c and
 * passing the faults it does not own on to the handlers that were there before. */
#ifndef MB_ACCESS_SIGNALS_H
#define MB_ACCESS_SIGNALS_H

#include <signal.h>
#include <stdatomic.h>

/* The handler, defined in access.c. */
void mb__access_on_fault(int sig, siginfo_t *si, void *uc);

/* True once mb_access_init has installed the handler (acquire: the chained handlers
 * recorded before it are visible). */
extern atomic_bool mb__access_ready;

/* Passes a fault that is not inside a copy to the previous handler of sig, or takes the
 * default action. Async-signal-safe; preserves errno. */
void mb__access_chain(int sig, siginfo_t *si, void *uc);

#endif /* MB_ACCESS_SIGNALS_H */
