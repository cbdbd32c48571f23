/* fault_inject.c: the fault-injection seam's state (see fault_inject.h). Without
 * MB_FAULT_INJECTION only the stubs that tell tests to skip are compiled. */
#include "fault_inject.h"

#include <errno.h>
#include <stdatomic.h>

#include "mb_errors.h"

#ifdef MB_FAULT_INJECTION

/* Invariant: a call fails iff its number (1-based since the reset) is fire_at, or is later
 * and persist is set; fire_at == 0 means disarmed. err and persist are stored before fire_at
 * (release) and read after it (acquire), so a call that sees an armed fire_at sees its errno. */
typedef struct fi_slot {
  atomic_uint_least64_t calls, injected, fire_at;
  atomic_int err;
  atomic_bool persist;
} fi_slot;

static fi_slot slots[MB_FI_KINDS];

bool mb_fi_enabled(void) {
  return true;
}

static int arm(mb_fi_kind kind, uint64_t n, int err, bool persist) {
  if ((unsigned)kind >= MB_FI_KINDS || err <= 0)
    return MB_E_INVALID;
  fi_slot *s = &slots[kind];
  atomic_store_explicit(&s->err, err, memory_order_relaxed);
  atomic_store_explicit(&s->persist, persist, memory_order_relaxed);
  uint64_t at = n == 0 ? 0 : atomic_load(&s->calls) + n;
  atomic_store_explicit(&s->fire_at, at, memory_order_release);
  return 0;
}

int mb_fi_arm(mb_fi_kind kind, uint64_t n, int err) {
  return arm(kind, n, err, false);
}

int mb_fi_arm_persist(mb_fi_kind kind, uint64_t n, int err) {
  return arm(kind, n, err, true);
}

void mb_fi_reset(void) {
  for (int k = 0; k < MB_FI_KINDS; k++) {
    atomic_store(&slots[k].fire_at, 0);
    atomic_store(&slots[k].calls, 0);
    atomic_store(&slots[k].injected, 0);
  }
}

uint64_t mb_fi_calls(mb_fi_kind kind) {
  return (unsigned)kind < MB_FI_KINDS ? atomic_load(&slots[kind].calls) : 0;
}

uint64_t mb_fi_injected(mb_fi_kind kind) {
  return (unsigned)kind < MB_FI_KINDS ? atomic_load(&slots[kind].injected) : 0;
}

bool mb__fi_fail(mb_fi_kind kind) {
  fi_slot *s = &slots[kind];
  uint64_t n = atomic_fetch_add_explicit(&s->calls, 1, memory_order_relaxed) + 1;
  uint64_t at = atomic_load_explicit(&s->fire_at, memory_order_acquire);
  if (at == 0 || n < at || (n > at && !atomic_load_explicit(&s->persist, memory_order_relaxed)))
    return false;
  atomic_fetch_add_explicit(&s->injected, 1, memory_order_relaxed);
  errno = atomic_load_explicit(&s->err, memory_order_relaxed);
  return true;
}

#else /* !MB_FAULT_INJECTION */

bool mb_fi_enabled(void) {
  return false;
}

int mb_fi_arm(mb_fi_kind kind, uint64_t n, int err) {
  (void)kind, (void)n, (void)err;
  return MB_E_UNSUPPORTED;
}

int mb_fi_arm_persist(mb_fi_kind kind, uint64_t n, int err) {
  (void)kind, (void)n, (void)err;
  return MB_E_UNSUPPORTED;
}

void mb_fi_reset(void) {
}

uint64_t mb_fi_calls(mb_fi_kind kind) {
  (void)kind;
  return 0;
}

uint64_t mb_fi_injected(mb_fi_kind kind) {
  (void)kind;
  return 0;
}

#endif
